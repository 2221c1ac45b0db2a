package heron

import (
	"context"
	"errors"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/hashicorp/vault/sdk/framework"
	"github.com/hashicorp/vault/sdk/logical"
	"github.com/stretchr/testify/require"

	"github.com/heron-vault/vault-plugin-secrets-heron/heronapi"
	"github.com/heron-vault/vault-plugin-secrets-heron/herontest"
)

// Regression tests for issue 9, cases 1-4, 7, 8 and 10: each names the
// invariant of the spec it protects and failed on the engine before the fix.

// scriptedAPI wraps the real client so a test can fail or delay one call.
type scriptedAPI struct {
	heronapi.API
	mu       sync.Mutex
	list     func() error                                                  // before ListKeys; an error replaces the answer
	create   func(ctx context.Context, name string) (*heronapi.Key, error) // replaces CreateKey when set
	creating func()                                                        // runs after a successful CreateKey
}

func (a *scriptedAPI) ListKeys(ctx context.Context) ([]heronapi.Key, error) {
	a.mu.Lock()
	f := a.list
	a.mu.Unlock()
	if f != nil {
		if err := f(); err != nil {
			return nil, err
		}
	}
	return a.API.ListKeys(ctx)
}

func (a *scriptedAPI) CreateKey(ctx context.Context, name string) (*heronapi.Key, error) {
	a.mu.Lock()
	f, after := a.create, a.creating
	a.mu.Unlock()
	if f != nil {
		return f(ctx, name)
	}
	k, err := a.API.CreateKey(ctx, name)
	if err == nil && after != nil {
		after()
	}
	return k, err
}

// scripted makes every client the backend builds from now on a scriptedAPI,
// returned for the test to program.
func scripted(e *testEnv) *scriptedAPI {
	s := &scriptedAPI{}
	real := e.b.newClient
	e.b.newClient = func(cfg *heronConfig, lim *heronapi.Limiter) (heronapi.API, error) {
		c, err := real(cfg, lim)
		if err != nil {
			return nil, err
		}
		s.mu.Lock()
		s.API = c
		s.mu.Unlock()
		return s, nil
	}
	e.b.resetClient("development")
	return s
}

var rateLimited = &heronapi.APIError{Method: "GET", Path: "/api/credentials/keys", StatusCode: http.StatusTooManyRequests, Name: "Too Many Requests"}

// closeWindow moves the write-ahead clock past every record's window.
func closeWindow(e *testEnv) {
	e.b.windowNow = func() time.Time { return time.Now().Add(lateKeyWindow + time.Minute) }
}

func rollback(t *testing.T, e *testEnv) {
	t.Helper()
	req := logical.RollbackRequest("")
	req.Storage = e.s
	req.Data["immediate"] = true
	_, err := e.b.HandleRequest(context.Background(), req)
	require.NoError(t, err)
}

// Case 1 (invariant 1): the POST is processed, its answer lost, and the
// lookup that follows gets 429s. The key may exist, so the write-ahead record
// must stay until the rollback has deleted it. Before: the lookup's 429 read
// as "the POST was not processed" and the record went, the key live forever.
func TestIssue9_Case1_LookupRateLimitedKeepsTheRecord(t *testing.T) {
	e := getTestBackend(t)
	e.configure("development")
	e.role("r", map[string]interface{}{})
	api := scripted(e)
	api.list = func() error { return rateLimited }
	e.srv.FailNext("POST", "/api/credentials/keys", 1, herontest.FaultProcessThenDrop)

	_, err := e.do(logical.ReadOperation, "creds/r", nil)
	require.Error(t, err)
	require.ErrorIs(t, err, heronapi.ErrOutcomeUnknown)
	require.Len(t, liveIssued(e), 1, "Heron made the key; its token is lost")
	require.Equal(t, 1, walCount(t, e.b, e.s), "the write-ahead record still names it")

	api.list = nil
	rollback(t, e)
	require.Empty(t, liveIssued(e), "the rollback deleted it")
	closeWindow(e)
	rollback(t, e)
	require.Zero(t, walCount(t, e.b, e.s))
}

// Case 2 (invariant 3): a role whose name_template renders the same name for
// every key. A lost answer must delete only the key made for that record:
// never another lease's live key, never a customer's key of that name.
func TestIssue9_Case2_DuplicateNamesRecoveryTouchesOnlyItsOwnKey(t *testing.T) {
	e := getTestBackend(t)
	e.b.createdSkew = 20 * time.Millisecond
	e.configure("development")
	e.role("ci", map[string]interface{}{"name_template": "ci-{{.RoleName}}"})

	first := e.issue("ci")
	customer := createDirect(t, e, "ci-ci")
	e.foreign[customer] = true
	time.Sleep(50 * time.Millisecond) // the customer's key is older than the next issuance

	e.srv.FailNext("POST", "/api/credentials/keys", 1, herontest.FaultProcessThenDrop)
	second := e.issue("ci")
	require.NotEqual(t, first.Data["key_id"], second.Data["key_id"])

	for _, id := range []string{first.Data["key_id"].(string), second.Data["key_id"].(string), customer} {
		k, ok := e.srv.Key(id)
		require.True(t, ok)
		require.True(t, k.IsActive && !k.Deleted, "key %s must be untouched", id)
	}
	deleted := 0
	for _, k := range e.srv.KeysIn("development") {
		if k.Name == "ci-ci" && k.Deleted {
			deleted++
		}
	}
	// The name is not unique, so the key of the lost answer cannot be told
	// from a customer's: it is left in place and reported, never deleted on
	// the name alone (spec, Invariants 3).
	require.Zero(t, deleted, "no key of a name that is not unique is deleted on a name match")
	unconfirmed, err := unconfirmedKeys(context.Background(), e.s)
	require.NoError(t, err)
	require.Len(t, unconfirmed, 1, "the key of the lost answer is reported unconfirmed")
	inv := e.ok(logical.ReadOperation, "inventory/development", nil).Data
	require.Equal(t, 1, inv["counts"].(map[string]int)[inventoryUnconfirmed])
	require.Zero(t, walCount(t, e.b, e.s))

	// Concurrent issuances of the same name never delete each other's keys.
	var wg sync.WaitGroup
	leases := make(chan *logical.Response, 8)
	e.srv.SetFaults(herontest.Faults{DropAfterPOSTRate: 0.5, Seed: 7})
	for i := 0; i < 8; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if resp, err := e.do(logical.ReadOperation, "creds/ci", nil); err == nil && resp != nil && !resp.IsError() {
				leases <- resp
			}
		}()
	}
	wg.Wait()
	close(leases)
	e.srv.ResetFaults()
	for l := range leases {
		k, _ := e.srv.Key(l.Data["key_id"].(string))
		require.True(t, k.IsActive && !k.Deleted, "a lease's key was deleted by another issuance's recovery")
		require.True(t, e.authenticates(l.Data["api_key"].(string)))
		l.Secret.IssueTime = time.Now()
		require.NoError(t, e.revoke(l))
	}
	k, _ := e.srv.Key(customer)
	require.True(t, k.IsActive && !k.Deleted, "the customer's key survives")
	require.NoError(t, e.revoke(first))
	require.NoError(t, e.revoke(second))
	closeWindow(e)
	e.ok(logical.UpdateOperation, "tidy", nil)
}

// Case 3 (invariant 2): a revocation that fails while Heron is down and is
// retried by Vault after the lease's original end is still a revocation: the
// key is deleted, not deactivated.
func TestIssue9_Case3_RetriedRevocationAfterTheEndStillDeletes(t *testing.T) {
	e := getTestBackend(t)
	e.ok(logical.CreateOperation, "config/development", map[string]interface{}{
		"admin_api_key": e.adminKey["development"], "base_url": e.srv.URL, "max_retries": 0, "rate_limit_per_minute": maxRateLimitPerMinute,
	})
	e.role("r", map[string]interface{}{"ttl": "1h"})
	lease := e.issue("r")
	id := lease.Data["key_id"].(string)

	e.srv.FailNext("DELETE", "/api/credentials/keys/", 3, herontest.FaultStatus503)
	require.Error(t, e.revoke(lease), "Heron is down: Vault will retry")
	e.srv.ResetFaults()

	// Vault's retry lands after the lease would have ended.
	e.atTime(time.Now().Add(2 * time.Hour))
	require.NoError(t, e.revoke(lease))
	k, _ := e.srv.Key(id)
	require.True(t, k.Deleted, "a revocation deletes the key, however late its retry lands")
	rec, err := getTrackedKey(context.Background(), e.s, id)
	require.NoError(t, err)
	require.Nil(t, rec)

	// And an expiry whose first attempt failed stays an expiry: the decision
	// of the first attempt holds for Vault's retries whatever the clock says.
	e.b.now = time.Now
	lease2 := e.issue("r")
	id2 := lease2.Data["key_id"].(string)
	e.atTime(time.Now().Add(2 * time.Hour))
	e.srv.FailNext("PUT", "/api/credentials/keys/", 3, herontest.FaultStatus503)
	require.Error(t, e.revoke(lease2))
	e.srv.ResetFaults()
	e.atTime(time.Now())
	require.NoError(t, e.revoke(lease2))
	k2, _ := e.srv.Key(id2)
	require.False(t, k2.Deleted)
	require.False(t, k2.IsActive, "the expiry decided on the first attempt is carried out")
	e.atTime(time.Now().Add(100 * time.Hour))
	e.ok(logical.UpdateOperation, "tidy", nil)
}

// Case 4 (invariant 2): Heron is slow to create the key. The lease is counted
// from Heron's answer, as Vault counts it from registering the lease, so an
// early revocation deletes. Before: counted from before the POST, a creation
// slower than the TTL made every revocation an "expiry".
func TestIssue9_Case4_SlowCreationDoesNotTurnRevocationIntoExpiry(t *testing.T) {
	e := getTestBackend(t)
	e.configure("development")
	e.role("r", map[string]interface{}{"ttl": "1h"})
	clock := time.Now()
	var mu sync.Mutex
	e.b.now = func() time.Time { mu.Lock(); defer mu.Unlock(); return clock }
	api := scripted(e)
	// The POST takes two hours of the engine's clock (a queue, Retry-After, a
	// slow network: any delay between the request and Heron's answer).
	api.creating = func() { mu.Lock(); clock = clock.Add(2 * time.Hour); mu.Unlock() }

	lease := e.issue("r")
	require.NoError(t, e.revoke(lease), "revoked at once, right after Vault registered the lease")
	k, _ := e.srv.Key(lease.Data["key_id"].(string))
	require.True(t, k.Deleted, "an early revocation deletes")
}

// Case 7 (invariant 1): the key record is written but the write reports an
// error (committed or not), and the undo's DELETE fails too. The key must not
// stay live with a record but no lease: the record goes, and the rollback,
// seeing the key untracked, deletes it.
func TestIssue9_Case7_FailedTrackingWithFailedUndoIsRolledBack(t *testing.T) {
	for _, committed := range []bool{false, true} {
		t.Run(map[bool]string{false: "write failed", true: "write committed then failed"}[committed], func(t *testing.T) {
			e := getTestBackend(t)
			e.configure("development")
			e.role("r", map[string]interface{}{"max_active_keys": 5})
			fs := &commitFailStorage{Storage: e.s, prefix: keyStoragePrefix, commit: committed}
			e.s = fs
			e.srv.FailNext("DELETE", "/api/credentials/keys/", 100, herontest.FaultStatus503)
			_, err := e.do(logical.ReadOperation, "creds/r", nil)
			require.Error(t, err)
			require.Len(t, liveIssued(e), 1)
			for _, k := range liveIssued(e) {
				rec, err := getTrackedKey(context.Background(), fs.Storage, k.ID)
				require.NoError(t, err)
				require.Nil(t, rec, "no record may claim a key no lease holds")
			}
			fs.off()
			e.srv.ResetFaults()
			rollback(t, e)
			require.Empty(t, liveIssued(e))
			n, err := countActiveForRole(context.Background(), fs, "r")
			require.NoError(t, err)
			require.Zero(t, n, "the failed issuance does not count against max_active_keys")
			closeWindow(e)
			rollback(t, e)
			require.Zero(t, walCount(t, e.b, fs))
		})
	}
}

// commitFailStorage fails every Put under prefix, after writing it when
// commit is set (Raft and Consul can report an error for a committed write).
type commitFailStorage struct {
	logical.Storage
	mu       sync.Mutex
	prefix   string
	commit   bool
	disabled bool
}

func (s *commitFailStorage) off() { s.mu.Lock(); s.disabled = true; s.mu.Unlock() }

func (s *commitFailStorage) Put(ctx context.Context, e *logical.StorageEntry) error {
	s.mu.Lock()
	fail := !s.disabled && strings.HasPrefix(e.Key, s.prefix)
	commit := s.commit
	s.mu.Unlock()
	if !fail {
		return s.Storage.Put(ctx, e)
	}
	if commit {
		if err := s.Storage.Put(ctx, e); err != nil {
			return err
		}
	}
	return errors.New("injected storage failure")
}

// Case 8 (invariant 1): a config deleted while a write-ahead record of its
// environment is pending. Before: the rollback dropped the record ("config
// gone") and the key it named stayed live. Now the delete settles the record
// first, and refuses while a key may still appear.
func TestIssue9_Case8_ConfigDeleteSettlesPendingCreations(t *testing.T) {
	e := getTestBackend(t)
	e.configure("development")
	name := "vault-r-crashed-1"
	_, err := framework.PutWAL(context.Background(), e.s, walKindKey, &walKeyEntry{Environment: "development", Role: "r", KeyName: name, Since: time.Now()})
	require.NoError(t, err)
	orphan := createDirect(t, e, name)

	e.badRequest(logical.DeleteOperation, "config/development", nil, "unknown outcome")
	k, _ := e.srv.Key(orphan)
	require.True(t, k.Deleted, "the delete already rolled back what it could")
	require.Equal(t, 1, walCount(t, e.b, e.s), "a late key may still appear: the record and the config stay")

	closeWindow(e)
	e.ok(logical.DeleteOperation, "config/development", nil)
	require.Zero(t, walCount(t, e.b, e.s))

	// A record whose config is gone anyway is kept, not dropped.
	_, err = framework.PutWAL(context.Background(), e.s, walKindKey, &walKeyEntry{Environment: "development", KeyName: "x", Since: time.Now()})
	require.NoError(t, err)
	rollback(t, e)
	require.Equal(t, 1, walCount(t, e.b, e.s), "without an admin key the record cannot be settled, so it stays")
	e.configure("development")
	rollback(t, e)
	require.Zero(t, walCount(t, e.b, e.s))
}

// Case 10 (invariant 1): the POST times out (a gateway answers 504) while
// Heron is still creating the key; the lookup finds nothing, a second POST
// succeeds, and the first key appears later. The record stays and the
// rollback deletes the late key, never the lease's.
func TestIssue9_Case10_LateKeyAfterTheLookupIsRolledBack(t *testing.T) {
	e := getTestBackend(t)
	e.configure("development")
	e.role("r", map[string]interface{}{})
	e.srv.FailNextLate("POST", "/api/credentials/keys", 1, http.StatusGatewayTimeout, time.Hour)

	lease := e.issue("r")
	require.Equal(t, 1, walCount(t, e.b, e.s), "the first POST's outcome is unknown: its record stays")
	require.Equal(t, 1, e.srv.FlushLate(), "Heron finishes the first POST after the engine moved on")
	var late string
	for _, k := range e.srv.KeysIn("development") {
		if k.Name == lease.Data["key_name"] && k.ID != lease.Data["key_id"] {
			late = k.ID
		}
	}
	require.NotEmpty(t, late, "the late key exists")

	e.ok(logical.UpdateOperation, "tidy", nil)
	k, _ := e.srv.Key(late)
	require.True(t, k.Deleted, "the late key is rolled back")
	k, _ = e.srv.Key(lease.Data["key_id"].(string))
	require.True(t, k.IsActive && !k.Deleted, "the lease's key is not")
	require.True(t, e.authenticates(lease.Data["api_key"].(string)))

	closeWindow(e)
	e.ok(logical.UpdateOperation, "tidy", nil)
	require.Zero(t, walCount(t, e.b, e.s))
	require.NoError(t, e.revoke(lease))
}

// Invariant 1, the last gap: Vault loses a lease after the engine answered
// (a crash between the plugin's answer and the lease's storage), or gives a
// lease up as irrevocable. No revocation ever comes; the key's record bounds
// its life: an hour after its lease's end the cleanup pass deactivates it,
// and deletes it once its retention is over too.
func TestIssue9_LeaseVaultNeverRegisteredEndsByTheRecord(t *testing.T) {
	e := getTestBackend(t)
	e.configure("development")
	e.role("r", map[string]interface{}{"ttl": "1h", "expired_key_retention": "24h"})
	lost := e.issue("r") // the answer never becomes a lease: no revoke will come
	id := lost.Data["key_id"].(string)

	e.atTime(time.Now().Add(90 * time.Minute)) // past the end, within the grace
	resp := e.ok(logical.UpdateOperation, "tidy", nil)
	require.Equal(t, 0, resp.Data["overdue_keys"])
	k, _ := e.srv.Key(id)
	require.True(t, k.IsActive, "Vault may still be revoking it")

	e.atTime(time.Now().Add(3 * time.Hour))
	resp = e.ok(logical.UpdateOperation, "tidy", nil)
	require.Equal(t, 1, resp.Data["overdue_keys"])
	k, _ = e.srv.Key(id)
	require.False(t, k.IsActive, "deactivated as an expiry")
	require.False(t, k.Deleted)

	e.atTime(time.Now().Add(30 * time.Hour))
	e.ok(logical.UpdateOperation, "tidy", nil)
	k, _ = e.srv.Key(id)
	require.True(t, k.Deleted, "deleted after its retention")
}

// deleteFailStorage fails Deletes of one key, before deleting.
type deleteFailStorage struct {
	logical.Storage
	key  string
	fail bool
}

func (s *deleteFailStorage) Delete(ctx context.Context, key string) error {
	if s.fail && key == s.key {
		return errors.New("injected storage failure")
	}
	return s.Storage.Delete(ctx, key)
}

// A config delete deletes the admin key the engine created before the config
// entry (the order that leaks nothing); when the entry's delete then fails,
// the config is marked deleting: nothing may use or rewrite it (it names a
// deleted key) until a retry finishes. Found by the model test.
func TestIssue9_HalfDoneConfigDeleteIsFinishedByARetry(t *testing.T) {
	e := getTestBackend(t)
	e.configure("development")
	rotated := e.ok(logical.UpdateOperation, "config/development/rotate", nil)
	engineKey := rotated.Data["admin_key_id"].(string)
	fs := &deleteFailStorage{Storage: e.s, key: configStoragePrefix + "development", fail: true}
	e.s = fs

	_, err := e.do(logical.DeleteOperation, "config/development", nil)
	require.ErrorContains(t, err, "retry the delete")
	k, _ := e.srv.Key(engineKey)
	require.True(t, k.Deleted, "the engine-created admin key is gone already")

	e.badRequest(logical.UpdateOperation, "config/development", map[string]interface{}{"max_retries": 1}, "is being deleted")
	e.badRequest(logical.CreateOperation, "roles/r", map[string]interface{}{"environment": "development"}, "is being deleted")
	_, err = e.b.creatingClient(context.Background(), e.s, "development")
	require.ErrorContains(t, err, "is being deleted", "nothing creates keys with a config being deleted")

	fs.fail = false
	e.ok(logical.DeleteOperation, "config/development", nil)
	resp, err := e.do(logical.ReadOperation, "config/development", nil)
	require.NoError(t, err)
	require.Nil(t, resp)
}
