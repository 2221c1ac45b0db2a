package heron

import (
	"context"
	"errors"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/hashicorp/vault/sdk/framework"
	"github.com/hashicorp/vault/sdk/logical"
	"github.com/stretchr/testify/require"

	"github.com/heron-vault/vault-plugin-secrets-heron/herontest"
)

// flakyStorage fails the writes a test chooses.
type flakyStorage struct {
	logical.Storage
	mu        sync.Mutex
	failPut   func(key string) bool
	failWrite atomic.Int64
}

func (s *flakyStorage) Put(ctx context.Context, e *logical.StorageEntry) error {
	s.mu.Lock()
	fail := s.failPut != nil && s.failPut(e.Key)
	s.mu.Unlock()
	if fail {
		s.failWrite.Add(1)
		return errors.New("injected storage failure")
	}
	return s.Storage.Put(ctx, e)
}

func (s *flakyStorage) setFailPut(f func(string) bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.failPut = f
}

// walCount is how many write-ahead records may still name an unrecorded
// key (see pendingCreations).
func walCount(t *testing.T, b *heronBackend, s logical.Storage) int {
	t.Helper()
	entries, err := b.pendingCreations(context.Background(), s)
	require.NoError(t, err)
	return len(entries)
}

func TestFailure_StoragePutAfterPOSTLeavesNoOrphan(t *testing.T) {
	e := getTestBackend(t)
	e.configure("development")
	e.role("r", map[string]interface{}{})
	fs := &flakyStorage{Storage: e.s}
	e.s = fs

	t.Run("key deleted at once", func(t *testing.T) {
		fs.setFailPut(func(k string) bool { return strings.HasPrefix(k, keyStoragePrefix) })
		_, err := e.do(logical.ReadOperation, "creds/r", nil)
		require.Error(t, err)
		require.Positive(t, fs.failWrite.Load())
		require.Empty(t, liveIssued(e), "the created key was deleted")
		require.Zero(t, walCount(t, e.b, fs), "nothing left to roll back")
	})

	t.Run("delete fails too: rollback deletes it later", func(t *testing.T) {
		fs.setFailPut(func(k string) bool { return strings.HasPrefix(k, keyStoragePrefix) })
		e.srv.FailNext("DELETE", "/api/credentials/keys/", 100, herontest.FaultStatus503)
		_, err := e.do(logical.ReadOperation, "creds/r", nil)
		require.Error(t, err)
		require.Len(t, liveIssued(e), 1, "Heron still has the key")
		require.Equal(t, 1, walCount(t, e.b, fs), "the write-ahead record still names it")

		fs.setFailPut(nil)
		e.srv.ResetFaults()
		// Vault's own rollback (immediate: skip the minimum age).
		req := logical.RollbackRequest("")
		req.Storage = fs
		req.Data["immediate"] = true
		_, err = e.b.HandleRequest(context.Background(), req)
		require.NoError(t, err)
		require.Empty(t, liveIssued(e))
		require.Equal(t, 1, walCount(t, e.b, fs), "the record watches for late keys until its window closes")

		e.b.windowNow = func() time.Time { return time.Now().Add(lateKeyWindow + time.Minute) }
		defer func() { e.b.windowNow = time.Now }()
		_, err = e.b.HandleRequest(context.Background(), req)
		require.NoError(t, err)
		require.Zero(t, walCount(t, e.b, fs))
	})
}

func TestFailure_CrashAfterPOSTIsRolledBackByTidy(t *testing.T) {
	e := getTestBackend(t)
	e.configure("development")
	e.role("r", map[string]interface{}{})
	lease := e.issue("r")
	e.allowLive[lease.Data["key_id"].(string)] = true

	// A crash between the POST and the tracking record leaves exactly this:
	// a write-ahead record and a key Heron created under that name, twice
	// (the lost-response retry path may have created one more).
	name := "vault-r-crashed-1700000000-abcdefgh"
	_, err := framework.PutWAL(context.Background(), e.s, walKindKey, &walKeyEntry{Environment: "development", Role: "r", KeyName: name})
	require.NoError(t, err)
	createDirect(t, e, name)
	createDirect(t, e, name)
	// A tracked key that happens to share the name must survive.
	_, err = framework.PutWAL(context.Background(), e.s, walKindKey, &walKeyEntry{Environment: "development", Role: "r", KeyName: lease.Data["key_name"].(string)})
	require.NoError(t, err)

	resp := e.ok(logical.UpdateOperation, "tidy", nil)
	require.Equal(t, 2, resp.Data["rolled_back_wal"])
	require.Zero(t, walCount(t, e.b, e.s))
	for _, k := range e.srv.KeysIn("development") {
		if k.Name == name {
			require.True(t, k.Deleted, "untracked key %s must be deleted", k.ID)
		}
	}
	rec, _ := e.srv.Key(lease.Data["key_id"].(string))
	require.False(t, rec.Deleted, "a tracked key is never rolled back")
	require.True(t, rec.IsActive)
	require.NoError(t, e.revoke(lease))
}

func TestFailure_TidySkipsInflightIssuance(t *testing.T) {
	e := getTestBackend(t)
	e.configure("development")
	name := "vault-inflight-1"
	_, err := framework.PutWAL(context.Background(), e.s, walKindKey, &walKeyEntry{Environment: "development", KeyName: name, Since: time.Now(), OffsetKnown: true})
	require.NoError(t, err)
	// An issuance of this name holds the name lock from before its
	// write-ahead record until its record is stored.
	lock := e.b.nameLock("development", name)
	lock.Lock()
	id := createDirect(t, e, name)

	resp := e.ok(logical.UpdateOperation, "tidy", nil)
	require.Equal(t, 0, resp.Data["rolled_back_wal"])
	rec, _ := e.srv.Key(id)
	require.False(t, rec.Deleted, "an issuance in flight is left alone")

	lock.Unlock()
	e.b.windowNow = func() time.Time { return time.Now().Add(lateKeyWindow + time.Minute) }
	resp = e.ok(logical.UpdateOperation, "tidy", nil)
	require.Equal(t, 1, resp.Data["rolled_back_wal"])
	rec, _ = e.srv.Key(id)
	require.True(t, rec.Deleted)
}

// createDirect creates a key in Heron behind the engine's back.
func createDirect(t *testing.T, e *testEnv, name string) string {
	t.Helper()
	k, err := handClient(t, e, e.adminKey["development"]).CreateKey(context.Background(), name)
	require.NoError(t, err)
	return k.ID
}

func TestFailure_FaultyHeronNoDuplicatesNoOrphans(t *testing.T) {
	e := getTestBackend(t)
	e.ok(logical.CreateOperation, "config/development", map[string]interface{}{
		"admin_api_key": e.adminKey["development"], "base_url": e.srv.URL, "max_retries": 6, "rate_limit_per_minute": maxRateLimitPerMinute,
	})
	e.role("r", map[string]interface{}{})
	e.srv.SetFaults(herontest.Faults{ErrorRate: 0.15, DropAfterPOSTRate: 0.15, Seed: 42})

	const n, workers = 500, 8
	var (
		mu     sync.Mutex
		leases []*logical.Response
		failed int
	)
	var wg sync.WaitGroup
	jobs := make(chan int)
	for w := 0; w < workers; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for range jobs {
				resp, err := e.do(logical.ReadOperation, "creds/r", nil)
				mu.Lock()
				if err != nil || resp == nil || resp.IsError() {
					failed++
				} else {
					leases = append(leases, resp)
				}
				mu.Unlock()
			}
		}()
	}
	for i := 0; i < n; i++ {
		jobs <- i
	}
	close(jobs)
	wg.Wait()
	t.Logf("%d issued, %d failed under faults", len(leases), failed)
	require.Greater(t, len(leases), n*9/10, "retries carry most issuances through")

	// Every issued lease has exactly one live key by its name, and it is the
	// one returned.
	byName := map[string][]herontest.KeyRecord{}
	for _, k := range e.srv.KeysIn("development") {
		if !k.Deleted {
			byName[k.Name] = append(byName[k.Name], k)
		}
	}
	for _, l := range leases {
		live := byName[l.Data["key_name"].(string)]
		require.Len(t, live, 1, "duplicate or missing key for %s", l.Data["key_name"])
		require.Equal(t, l.Data["key_id"], live[0].ID)
	}

	// With Heron healthy again, revocation and tidy leave nothing behind.
	e.srv.ResetFaults()
	for _, l := range leases {
		require.NoError(t, e.revoke(l))
	}
	e.ok(logical.UpdateOperation, "tidy", nil)
	require.Empty(t, liveIssued(e), "no orphan keys")
	// Records of POSTs answered 500 whose lookup found nothing watch for a
	// late key until their window closes, then go.
	e.b.windowNow = func() time.Time { return time.Now().Add(lateKeyWindow + time.Minute) }
	e.ok(logical.UpdateOperation, "tidy", nil)
	require.Zero(t, walCount(t, e.b, e.s))
}

func TestFailure_HeronUnreachableDuringRevoke(t *testing.T) {
	e := getTestBackend(t)
	e.ok(logical.CreateOperation, "config/development", map[string]interface{}{
		"admin_api_key": e.adminKey["development"], "base_url": e.srv.URL, "max_retries": 1, "rate_limit_per_minute": maxRateLimitPerMinute,
	})
	e.role("r", map[string]interface{}{})
	lease := e.issue("r")

	e.srv.FailNext("DELETE", "/api/credentials/keys/", 100, herontest.FaultDropBeforeProcessing)
	err := e.revoke(lease)
	require.Error(t, err)
	require.False(t, errors.Is(err, logical.ErrUnrecoverable) || errors.Is(err, logical.ErrInvalidRequest),
		"the error must let Vault retry, not give the lease up")
	rec, _ := e.srv.Key(lease.Data["key_id"].(string))
	require.False(t, rec.Deleted)

	e.srv.ResetFaults()
	require.NoError(t, e.revoke(lease))
	rec, _ = e.srv.Key(lease.Data["key_id"].(string))
	require.True(t, rec.Deleted)
}

func TestFailure_RevokeOutOfBudgetIsRetryable(t *testing.T) {
	e := getTestBackend(t)
	e.ok(logical.CreateOperation, "config/development", map[string]interface{}{
		"admin_api_key": e.adminKey["development"], "base_url": e.srv.URL, "rate_limit_per_minute": 1, "verify": false,
	})
	e.role("r", map[string]interface{}{})
	// The issuance spends this minute's single request.
	lease := e.issue("r")

	// The next slot is a minute away, past the 30 s deadline: the limiter
	// refuses before waiting (its error says when the slot would come), not
	// once the deadline ran out. The time bound only catches a wait of the
	// whole deadline, whatever the machine's load.
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	start := time.Now()
	_, err := e.b.HandleRequest(ctx, &logical.Request{
		Operation: logical.RevokeOperation, Path: "creds/x", Storage: e.s, Secret: lease.Secret,
	})
	require.Error(t, err)
	require.ErrorIs(t, err, logical.ErrUpstreamRateLimited)
	require.NotContains(t, err.Error(), context.DeadlineExceeded.Error(), "refused before waiting, not after the deadline ran out")
	require.Contains(t, err.Error(), "next in", "the limiter's refusal says when the slot would come")
	require.Less(t, time.Since(start), 15*time.Second, "a wait that cannot fit the deadline fails at once")
	e.allowLive[lease.Data["key_id"].(string)] = true
}

func TestRateLimit_MountsShareOneBudget(t *testing.T) {
	e := getTestBackend(t)
	e.configure("development")
	// A second mount of the same plugin process, configured with the same
	// admin key against the same Heron: Heron's budget is one, so is ours.
	other := backend()
	conf := logical.TestBackendConfig()
	conf.StorageView = &logical.InmemStorage{}
	require.NoError(t, other.Setup(context.Background(), conf))
	resp, err := other.HandleRequest(context.Background(), &logical.Request{
		Operation: logical.CreateOperation, Path: "config/dev-copy", Storage: conf.StorageView,
		Data: map[string]interface{}{"admin_api_key": e.adminKey["development"], "base_url": e.srv.URL + "/", "verify": false},
	})
	require.NoError(t, err)
	require.Nil(t, resp)

	mine, err := getConfig(context.Background(), e.s, "development")
	require.NoError(t, err)
	theirs, err := getConfig(context.Background(), conf.StorageView, "dev-copy")
	require.NoError(t, err)
	_, err = e.b.getClient(context.Background(), e.s, "development")
	require.NoError(t, err)
	_, err = other.getClient(context.Background(), conf.StorageView, "dev-copy")
	require.NoError(t, err)
	require.Same(t, e.b.peekLimiter(mine), other.peekLimiter(theirs))
}

func TestFailure_RevokeWithoutBudgetIsDeferredNotLost(t *testing.T) {
	e := getTestBackend(t)
	e.ok(logical.CreateOperation, "config/development", map[string]interface{}{
		"admin_api_key": e.adminKey["development"], "base_url": e.srv.URL, "rate_limit_per_minute": 1, "verify": false,
	})
	e.role("r", map[string]interface{}{})
	lease := e.issue("r") // spends this minute's only request
	id := lease.Data["key_id"].(string)

	revoke := func() error {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		_, err := e.b.HandleRequest(ctx, &logical.Request{
			Operation: logical.RevokeOperation, Path: "creds/x", Storage: e.s, Secret: lease.Secret,
		})
		return err
	}
	// Vault's first attempts get a retryable "rate limited"...
	for i := 1; i < deferRevokeAfter; i++ {
		require.ErrorIs(t, revoke(), logical.ErrUpstreamRateLimited, "attempt %d", i)
	}
	// ...then, well before Vault's sixth and last attempt, the lease is let
	// go and the key handed to the cleanup pass instead of becoming an
	// irrevocable lease with a live key.
	require.NoError(t, revoke())
	rec, err := getTrackedKey(context.Background(), e.s, id)
	require.NoError(t, err)
	require.Equal(t, pendingDelete, rec.Pending)
	list := e.ok(logical.ListOperation, "keys/", nil)
	require.Equal(t, pendingDelete, list.Data["key_info"].(map[string]interface{})[id].(map[string]interface{})["pending"])
	_, err = e.renew(lease, 0)
	require.ErrorContains(t, err, "cannot be renewed", "a released lease cannot be renewed")

	// Budget back: the cleanup pass finishes the revocation.
	e.ok(logical.UpdateOperation, "config/development", map[string]interface{}{"rate_limit_per_minute": maxRateLimitPerMinute, "verify": false})
	resp := e.ok(logical.UpdateOperation, "tidy", nil)
	require.Equal(t, 1, resp.Data["pending_revocations"])
	k, _ := e.srv.Key(id)
	require.True(t, k.Deleted)
	rec, err = getTrackedKey(context.Background(), e.s, id)
	require.NoError(t, err)
	require.Nil(t, rec)
}
