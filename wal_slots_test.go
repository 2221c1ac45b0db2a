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

	"github.com/heron-vault/vault-plugin-secrets-heron/heronapi"
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
	// reuse them: the four POSTs are held until all four are in flight (a
	// fixed delay let a loaded machine run them one after another).
	together := &createBarrier{n: 4, all: make(chan struct{})}
	real := e.b.newClient
	e.b.newClient = func(cfg *heronConfig, lim *heronapi.Limiter) (heronapi.API, error) {
		c, err := real(cfg, lim)
		if err != nil {
			return nil, err
		}
		together.API = c
		return together, nil
	}
	e.b.resetClient("development")
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
	e.b.newClient = real
	e.b.resetClient("development")
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

// Known limits of recovery by name, found by reading the code and left open
// (no test fails for them):
//   - a constant-name role: a key of the same name made concurrently by
//     another instance (failover overlap) or by a second mount sharing the
//     admin key, and missing from the record's Existing list, can be counted
//     as this creation's, so its own late key may still have to appear when
//     the record goes; likewise mount A's recovery by name sees only A's
//     storage, so B's live key of that name created in A's window can be
//     taken for A's (spec invariant 3; a unique name avoids both).
//   - on a performance standby an issuance takes a slot before its write
//     fails with ErrReadOnly; Vault forwards the request by that error's
//     text, which the wrapping keeps.

// gateDeleteStorage parks every Delete under prefix until released, then
// performs it: a settle pass that has read a record and decided to delete
// it, and is slow to get there (a Heron list, a storage round trip).
type gateDeleteStorage struct {
	logical.Storage
	prefix  string
	entered chan string
	release chan struct{}
	once    sync.Once
}

func (s *gateDeleteStorage) Delete(ctx context.Context, key string) error {
	if strings.HasPrefix(key, s.prefix) {
		parked := false
		s.once.Do(func() { parked = true })
		if parked {
			s.entered <- key
			<-s.release
		}
	}
	return s.Storage.Delete(ctx, key)
}

// holdPutStorage parks the first Put under prefix until released, then
// performs it (a slow storage write, not a failed one).
type holdPutStorage struct {
	logical.Storage
	prefix  string
	entered chan struct{}
	release chan struct{}
	once    sync.Once
}

func (s *holdPutStorage) Put(ctx context.Context, e *logical.StorageEntry) error {
	if strings.HasPrefix(e.Key, s.prefix) {
		hold := false
		s.once.Do(func() { hold = true })
		if hold {
			s.entered <- struct{}{}
			<-s.release
		}
	}
	return s.Storage.Put(ctx, e)
}

// Spec invariants 1 and 7 (a second instance on the same storage): a
// settle pass never deletes a creation record that the owning instance has
// written again into the same slot meanwhile. Two backend instances on one
// storage: the old active node (or the old instance of a reload) is still
// serving while the new one runs its periodic pass.
//
// Interleaving:
//  1. old instance issues lease A in slot creating/<old>.0; the record stays
//     (keep) and the slot is free in the old pool.
//  2. new instance starts (old not cleaned: partitioned old active node, or
//     in-flight requests of a reload); its periodic pass claims
//     creating/<old>.0 (another instance's), reads A's record, finds A's key
//     tracked, decides "settled" and goes to delete the path.
//  3. before that Delete lands, the old instance issues B, whose key record
//     fails to store and whose undo DELETE fails too, so K_B is left to the
//     rollback by B's record.
//  4. the new instance's Delete lands.
//
// logical.Storage has no compare-and-delete, so what keeps B's record is an
// age fence: an instance reuses only slots whose record is younger than
// slotReuseWithin (an older free slot is retired), and a settle deletes
// another instance's record only once it is walRollbackMinAge old; a drained
// pool (Clean) frees nothing. K_B is then deleted by the rollback.
func TestSlots_SettleNeverDeletesAReusedSlotsRecord(t *testing.T) {
	t.Run("failover: old active node still serving", func(t *testing.T) { reusedSlotScenario(t, false) })
	t.Run("reload: request in flight across Clean", func(t *testing.T) { reusedSlotScenario(t, true) })
}

// reusedSlotScenario: see TestSlots_SettleNeverDeletesAReusedSlotsRecord.
// reload: lease A is in flight when Vault reloads the plugin (Clean, then a
// new instance); A finishes after Clean, so its slot goes back to the old
// pool's free list after drain, and a request the old instance was already
// serving (waiting on a lock or the limiter before take) reuses it.
func reusedSlotScenario(t *testing.T, reload bool) {
	e := getTestBackend(t)
	e.configure("development")
	e.role("r", map[string]interface{}{})
	old := e.b
	oldSlot := creatingStoragePrefix + old.id + ".0"
	var a *logical.Response
	if reload {
		hs := &holdPutStorage{Storage: e.s, prefix: keyStoragePrefix, entered: make(chan struct{}, 1), release: make(chan struct{})}
		got := make(chan *logical.Response, 1)
		go func() {
			resp, err := old.HandleRequest(context.Background(), &logical.Request{
				Operation: logical.ReadOperation, Path: "creds/r", Storage: hs, DisplayName: "token-tester",
			})
			if err != nil || resp == nil || resp.IsError() {
				t.Errorf("lease A: %v %v", resp, err)
			}
			got <- resp
		}()
		<-hs.entered
		e.restart(false) // Clean (drain: no free slot yet), then the new instance
		close(hs.release)
		a = <-got
		require.NotNil(t, a)
		a.Secret.IssueTime = time.Now()
	} else {
		a = e.issue("r")
		e.restart(true) // the new active node; the old one still serves
	}
	require.Equal(t, []string{old.id + ".0"}, creationRecords(t, e.s))
	// A's record is past its window, as an idle slot's record is: A ran six
	// minutes ago, on the one clock both instances read (one machine, or NTP
	// between nodes; a skew of minutes is outside what the fence assumes).
	rec, err := getJSON[creationRecord](context.Background(), e.s, oldSlot, "creation record")
	require.NoError(t, err)
	rec.Entry.Since = rec.Entry.Since.Add(-6 * time.Minute)
	require.NoError(t, putCreation(context.Background(), e.s, oldSlot, rec.Kind, &rec.Entry))
	old.slots.mu.Lock()
	old.slots.since[oldSlot] = rec.Entry.Since
	old.slots.mu.Unlock()

	gate := &gateDeleteStorage{Storage: e.s, prefix: creatingStoragePrefix, entered: make(chan string, 1), release: make(chan struct{})}
	passDone := make(chan error, 1)
	go func() {
		passDone <- e.b.periodicFunc(context.Background(), &logical.Request{Operation: logical.RollbackOperation, Storage: gate})
	}()
	var parkedPath string
	select {
	case parkedPath = <-gate.entered:
	case <-time.After(30 * time.Second):
		t.Fatal("the new instance's periodic pass never went to delete the old instance's record")
	}
	require.Equal(t, oldSlot, parkedPath, "the new instance settled A's record and is about to delete its slot")

	// The old instance's next issuance: its free slot's record is older than
	// slotReuseWithin, so the slot is retired, not reused (the fix).
	e.srv.FailNext("DELETE", "/api/credentials/keys/", 100, herontest.FaultStatus503)
	fs := &commitFailStorage{Storage: e.s, prefix: keyStoragePrefix}
	_, err = old.HandleRequest(context.Background(), &logical.Request{
		Operation: logical.ReadOperation, Path: "creds/r", Storage: fs, DisplayName: "token-tester",
	})
	require.Error(t, err, "B's key record could not be stored")
	e.srv.ResetFaults()
	var kb string
	for _, k := range liveIssued(e) {
		if k.ID != a.Data["key_id"] {
			kb = k.ID
		}
	}
	require.NotEmpty(t, kb, "B's key is live in Heron; only B's record names it")
	if rec, err := getJSON[creationRecord](context.Background(), e.s, oldSlot, "creation record"); err != nil {
		t.Fatalf("reading %s: %v", oldSlot, err)
	} else if rec != nil && rec.Entry.KeyName != a.Data["key_name"] {
		t.Logf("B's record now sits in %s, the slot A's record was read from", oldSlot)
	}

	close(gate.release)
	require.NoError(t, <-passDone)

	// Every settle there is, on both instances, once every window closed.
	old.windowNow = func() time.Time { return time.Now().Add(lateKeyWindow + time.Minute) }
	require.NoError(t, old.periodicFunc(context.Background(), &logical.Request{Operation: logical.RollbackOperation, Storage: e.s}))
	e.ok(logical.UpdateOperation, "tidy", nil)
	periodic(t, e)

	require.NoError(t, e.revoke(a))
	k, _ := e.srv.Key(kb)
	require.True(t, k.Deleted, "invariant 1: key %s (%q) created by B is live in Heron, untracked, and no record names it any more", kb, k.Name)
}

// Spec invariant 3 (storage errors): the slot record's write is committed
// but reports an error, and its take-back Delete fails too (a storage
// outage). No POST was sent; a customer then creates their own key of the
// role's constant name "ci-ci". The next pass deletes the stale record
// without any lookup by name, so no later settle takes the customer's key
// for the creation's. (A crash before that pass, on top of the two storage
// faults, is the documented limit.)
func TestSlots_FailedRecordWriteAndTakeBackLeaveCustomersKey(t *testing.T) {
	e := getTestBackend(t)
	e.configure("development")
	e.role("ci", map[string]interface{}{"name_template": "ci-{{.RoleName}}"})
	cs := &commitFailStorage{Storage: e.s, prefix: creatingStoragePrefix, commit: true}
	ds := &prefixDeleteFailStorage{Storage: cs, prefix: creatingStoragePrefix}
	e.s = ds
	_, err := e.do(logical.ReadOperation, "creds/ci", nil)
	require.Error(t, err)
	require.Empty(t, liveIssued(e))
	cs.off()
	ds.off()
	require.Len(t, creationRecords(t, e.s), 1, "the record of a creation that never happened is still stored")

	customer := createDirect(t, e, "ci-ci")
	e.foreign[customer] = true
	// The fix: the slot is stale, and the next pass deletes its record
	// without any lookup by name. (A crash before that pass, on top of the
	// two storage faults, is the documented limit.)
	periodic(t, e)
	require.Empty(t, creationRecords(t, e.s))
	e.restart(true)
	closeWindow(e)
	e.ok(logical.UpdateOperation, "tidy", nil)
	k, _ := e.srv.Key(customer)
	require.True(t, k.IsActive && !k.Deleted, "invariant 3: the customer's key %s named ci-ci was deleted by the settle of a creation that never sent a POST", customer)
}

// Spec invariant 3 (storage errors, plugin crash): the Delete that ends a
// constant-name creation fails (or the plugin crashes right before it), so a
// finished creation's record stays in a free slot; a customer creates a key
// of that name a moment later. The next pass deletes the stale record
// without any lookup by name, so no settle after a restart takes the
// customer's key. (A crash between the key's record and that delete is the
// documented limit, as it was with Vault's WAL.)
func TestSlots_UndeletedConstantNameRecordLeavesCustomersKey(t *testing.T) {
	e := getTestBackend(t)
	e.configure("development")
	e.role("ci", map[string]interface{}{"name_template": "ci-{{.RoleName}}"})
	ds := &prefixDeleteFailStorage{Storage: e.s, prefix: creatingStoragePrefix}
	e.s = ds
	lease := e.issue("ci")
	ds.off()
	e.s = ds.Storage
	require.Len(t, creationRecords(t, e.s), 1, "the finished creation's record could not be deleted")

	customer := createDirect(t, e, "ci-ci")
	e.foreign[customer] = true
	// The fix: the slot is stale, and the next pass deletes the record
	// without any lookup by name. (A crash between the key's record and
	// that delete is the documented limit, as it was with Vault's WAL.)
	periodic(t, e)
	require.Empty(t, creationRecords(t, e.s))
	e.restart(true)
	closeWindow(e)
	e.ok(logical.UpdateOperation, "tidy", nil)
	require.NoError(t, e.revoke(lease))
	k, _ := e.srv.Key(customer)
	require.True(t, k.IsActive && !k.Deleted, "invariant 3: the customer's key %s named ci-ci was deleted by the settle of a creation that had finished", customer)
}

// Spec invariant 5 (no 500 for an operator's ordinary steps) and crash
// safety: a finished creation's record stays in its free slot (keep). Issue,
// revoke, delete the role, delete the config, crash: the next instance's
// tidy must not find a record naming a config that is gone (which it could
// never settle, failing every tidy for good): config delete drops its
// environment's finished records.
func TestSlots_ConfigDeleteStrandsNoFinishedRecord(t *testing.T) {
	e := getTestBackend(t)
	e.configure("development")
	e.role("r", map[string]interface{}{})
	require.NoError(t, e.revoke(e.issue("r")))
	e.ok(logical.DeleteOperation, "roles/r", nil)
	e.ok(logical.DeleteOperation, "config/development", nil)
	require.Empty(t, creationRecords(t, e.s), "config delete drops its environment's finished creation records")

	e.restart(true)
	closeWindow(e)
	resp, err := e.do(logical.UpdateOperation, "tidy", nil)
	require.NoError(t, err, "tidy must not fail for good after a crash over the record of a finished, revoked issuance naming a deleted config")
	require.False(t, resp != nil && resp.IsError(), "%v", resp)
	require.Empty(t, creationRecords(t, e.s))
}

// createBarrier holds each CreateKey until n of them are in flight.
type createBarrier struct {
	heronapi.API
	mu      sync.Mutex
	n, seen int
	all     chan struct{}
}

func (b *createBarrier) CreateKey(ctx context.Context, name string) (*heronapi.Key, error) {
	b.mu.Lock()
	b.seen++
	if b.seen == b.n {
		close(b.all)
	}
	b.mu.Unlock()
	select {
	case <-b.all:
	case <-ctx.Done():
		return nil, ctx.Err()
	}
	return b.API.CreateKey(ctx, name)
}
