package heron

import (
	"context"
	"errors"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/hashicorp/vault/sdk/framework"
	"github.com/hashicorp/vault/sdk/logical"
	"github.com/stretchr/testify/require"

	"github.com/heron-vault/vault-plugin-secrets-heron/herontest"
)

// creationRecords lists the creation slots' records in storage.
func creationRecords(t *testing.T, s logical.Storage) []string {
	t.Helper()
	paths, err := s.List(context.Background(), creatingStoragePrefix)
	require.NoError(t, err)
	return paths
}

// periodic runs the periodic pass as Vault's rollback manager does, without
// "immediate": records younger than walRollbackMinAge are left alone.
func periodic(t *testing.T, e *testEnv) {
	t.Helper()
	require.NoError(t, e.b.periodicFunc(context.Background(), &logical.Request{Operation: logical.RollbackOperation, Storage: e.s}))
}

// An issuance writes its write-ahead record into a slot and leaves it there
// for the slot's next creation to overwrite: two writes in all, and the
// finished records never count as pending.
func TestSlots_FinishedRecordsAreOverwrittenNotDeleted(t *testing.T) {
	e := getTestBackend(t)
	e.configure("development")
	e.role("r", map[string]interface{}{})
	var leases []*logical.Response
	for range 3 {
		leases = append(leases, e.issue("r"))
	}
	require.Len(t, creationRecords(t, e.s), 1, "sequential issuances share one slot")
	require.Zero(t, walCount(t, e.b, e.s))
	ids, err := framework.ListWAL(context.Background(), e.s)
	require.NoError(t, err)
	require.Empty(t, ids, "no Vault write-ahead record is written any more")

	// Concurrent issuances each get a slot of their own, and later ones
	// reuse them.
	e.srv.DelayNext("POST", "/api/credentials/keys", 4, 300*time.Millisecond)
	var wg sync.WaitGroup
	var mu sync.Mutex
	for range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			resp, err := e.do(logical.ReadOperation, "creds/r", nil)
			if err == nil && resp != nil && !resp.IsError() {
				mu.Lock()
				leases = append(leases, resp)
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	require.Len(t, leases, 7)
	require.Len(t, creationRecords(t, e.s), 4)
	for range 3 {
		leases = append(leases, e.issue("r"))
	}
	require.Len(t, creationRecords(t, e.s), 4, "free slots are reused")
	require.Zero(t, walCount(t, e.b, e.s))

	// Settling leaves this instance's finished records alone: they are
	// not read back, and no Heron list is spent on them.
	settled, pending, err := e.b.settleCreations(context.Background(), e.s, "", 0)
	require.NoError(t, err)
	require.Zero(t, settled)
	require.Zero(t, pending)
	rollback(t, e)
	require.Len(t, creationRecords(t, e.s), 4)
	for _, l := range leases {
		require.NoError(t, e.revoke(l))
	}
}

// A plugin reload cleans the old instance up: its finished records go, so
// the next instance has nothing to settle.
func TestSlots_CleanDropsFinishedRecords(t *testing.T) {
	e := getTestBackend(t)
	e.configure("development")
	e.role("r", map[string]interface{}{})
	a, b := e.issue("r"), e.issue("r")
	require.Len(t, creationRecords(t, e.s), 1)
	e.restart(false)
	require.Empty(t, creationRecords(t, e.s))
	require.NoError(t, e.revoke(a))
	require.NoError(t, e.revoke(b))
}

// A crashed instance's finished records are settled by the next one, which
// finds their keys tracked and leaves them (and their leases) alone.
func TestSlots_CrashedInstancesFinishedRecordsAreSettled(t *testing.T) {
	e := getTestBackend(t)
	e.configure("development")
	e.role("r", map[string]interface{}{})
	a, b := e.issue("r"), e.issue("r")
	e.restart(true)
	require.Len(t, creationRecords(t, e.s), 1)
	require.Equal(t, 1, walCount(t, e.b, e.s), "another instance's record may name an unrecorded key")

	periodic(t, e)
	require.Len(t, creationRecords(t, e.s), 1, "too young: its request may still be running in the old instance")

	closeWindow(e)
	periodic(t, e)
	require.Empty(t, creationRecords(t, e.s))
	require.Len(t, liveIssued(e), 2, "tracked keys are never rolled back")
	require.NoError(t, e.revoke(a))
	require.NoError(t, e.revoke(b))
}

// blockingStorage holds every Put under prefix until released, then fails
// it without writing: a process that dies between Heron's answer and the
// key's record.
type blockingStorage struct {
	logical.Storage
	prefix  string
	entered chan struct{}
	release chan struct{}
}

func (s *blockingStorage) Put(ctx context.Context, e *logical.StorageEntry) error {
	if !strings.HasPrefix(e.Key, s.prefix) {
		return s.Storage.Put(ctx, e)
	}
	s.entered <- struct{}{}
	<-s.release
	return errors.New("the process died before this write")
}

// Invariant 1 across a crash between the POST and the key's record: the key
// is in Heron, only the creation record names it, and the instance that
// wrote it is gone. The next instance deletes the key, but not before the
// record is old enough that no request can still be running it.
func TestSlots_CrashAfterPOSTIsRolledBackByTheNextInstance(t *testing.T) {
	e := getTestBackend(t)
	e.configure("development")
	e.role("r", map[string]interface{}{})
	bs := &blockingStorage{Storage: e.s, prefix: keyStoragePrefix, entered: make(chan struct{}, 1), release: make(chan struct{})}
	e.s = bs
	done := make(chan error, 1)
	go func() {
		_, err := e.do(logical.ReadOperation, "creds/r", nil)
		done <- err
	}()
	<-bs.entered
	require.Len(t, liveIssued(e), 1)
	old := e.b
	e.s = bs.Storage
	e.restart(true)

	periodic(t, e)
	require.Len(t, liveIssued(e), 1, "the record is too young to judge")
	closeWindow(e)
	periodic(t, e)
	require.Empty(t, liveIssued(e), "the key only the record named is deleted")
	require.Empty(t, creationRecords(t, e.s))

	// The old instance's request ends (in a real crash it never does): its
	// undo finds the key gone.
	close(bs.release)
	require.Error(t, <-done)
	old.Cleanup(context.Background())
}

// A creation whose outcome stayed unknown holds its slot: the next issuance
// takes another, so the record survives for the rollback.
func TestSlots_HeldSlotIsNotReused(t *testing.T) {
	e := getTestBackend(t)
	e.configure("development")
	e.role("r", map[string]interface{}{})
	e.srv.FailNext("POST", "/api/credentials/keys", 1, herontest.FaultStatus502)
	a := e.issue("r")
	require.Equal(t, 1, walCount(t, e.b, e.s), "a late key may still appear")
	b := e.issue("r")
	require.Len(t, creationRecords(t, e.s), 2, "the held slot is not overwritten")
	require.Equal(t, 1, walCount(t, e.b, e.s))

	closeWindow(e)
	periodic(t, e)
	require.Zero(t, walCount(t, e.b, e.s))
	require.Len(t, creationRecords(t, e.s), 1, "only the free slot's record is left")
	require.NoError(t, e.revoke(a))
	require.NoError(t, e.revoke(b))
}

// Invariant 3 (found by the model test): a write-ahead record whose write
// reported an error but was stored names a creation that never happened.
// After a crash it would be settled by name and take a customer's key of
// the role's constant name, created a moment later, for its own.
func TestSlots_FailedRecordWriteLeavesNothingToSettle(t *testing.T) {
	e := getTestBackend(t)
	e.configure("development")
	e.role("ci", map[string]interface{}{"name_template": "ci-{{.RoleName}}"})
	fs := &commitFailStorage{Storage: e.s, prefix: creatingStoragePrefix, commit: true}
	e.s = fs
	_, err := e.do(logical.ReadOperation, "creds/ci", nil)
	require.Error(t, err)
	fs.off()
	customer := createDirect(t, e, "ci-ci")
	e.foreign[customer] = true
	e.restart(true)
	e.ok(logical.UpdateOperation, "tidy", nil)
	k, _ := e.srv.Key(customer)
	require.True(t, k.IsActive && !k.Deleted, "the customer's key of the same name is untouched")
	require.Empty(t, creationRecords(t, e.s))
}

// A slot idle for longer than slotReuseWithin is retired rather than reused
// (another instance may be settling its record), and the next pass deletes
// its record: records do not pile up, and none is rewritten under a settle.
func TestSlots_IdleSlotIsRetiredAndItsRecordDeleted(t *testing.T) {
	e := getTestBackend(t)
	e.configure("development")
	e.role("r", map[string]interface{}{})
	a := e.issue("r")
	first := creationRecords(t, e.s)
	require.Len(t, first, 1)
	later := time.Now().Add(slotReuseWithin + time.Second)
	e.b.wallNow = func() time.Time { return later }
	b := e.issue("r")
	recs := creationRecords(t, e.s)
	require.Len(t, recs, 2, "the idle slot was not reused")
	periodic(t, e)
	recs = creationRecords(t, e.s)
	require.Len(t, recs, 1)
	require.NotEqual(t, first[0], recs[0], "the retired slot's record is gone; the new one stays for reuse")
	require.NoError(t, e.revoke(a))
	require.NoError(t, e.revoke(b))
}
