// Adversarial review of the creation slots (commits since c855bc8: 9936b83
// and 57301d0). Each TestReviewSlots_* below fails at HEAD 8daee00. During
// the review, uncommitted edits of wal.go/wal_slots.go appeared in the work
// tree (not the reviewer's): with them the reload subtest and
// ConfigDeleteStrandsFinishedRecord pass; the other three still fail.
//
// Status of the read-only findings below, after the fixes: RO1 fixed
// (uniqueNames renders twice; TestUniqueNames_DecidedByWhatReachesTheName);
// RO2 fixed (tidy and config writes settle another instance's record only
// once walRollbackMinAge old); RO5 fixed (drain closes the pool); RO3, RO4
// and RO6 left as written (contrived or pre-existing; RO6: Vault forwards a
// plugin's write by the text of logical.ErrReadOnly, which the wrapping
// keeps).
//
// READ-ONLY FINDINGS (code reading only, no failing test):
//
// RO1 (invariant 3, low): uniqueNames (name_template.go) counts any call of
//     random/uuid anywhere in the template, e.g. {{if false}}{{random 8}}{{end}}
//     or a random part cut off by a later pipeline stage. Such a role gets
//     keep=true and no Heron listing: its record stays in the slot after the
//     creation, and after any later crash the settle takes every untracked key
//     of that (constant) name created inside the record's window for its own.
//     Before slots the exposure was the crash window of one creation; with
//     keep it is every crash before the slot is reused. Safer: decide from
//     two renderings of the template (they differ) or require the random call
//     to reach the output unconditionally.
// RO2 (broken issuance, not invariant 1; pre-existing with Vault WALs): tidy
//     and config writes settle another instance's records with minAge 0. After
//     a failover/reload, a record whose creation is still running in the old
//     instance is settled at once: its key, not yet recorded, is deleted; the
//     old instance then records it and answers a lease whose token is dead.
// RO3 (invariant 1, contrived): createUnderWAL decrements unresolved by the
//     number of keys deleteOrphans deleted. For a constant name, a key of the
//     same name made concurrently by another instance (failover overlap, or a
//     second mount sharing the admin key) and missing from Existing is counted
//     as this creation's; unresolved can reach 0 while this creation's own late
//     key is still to appear, and the record is deleted (keep=false).
// RO4 (same class as RO3, pre-existing): two mounts sharing one admin key and
//     a constant-name role: mount A's recovery by name sees only A's storage,
//     so B's live key of that name created in A's window is deleted.
// RO5 (pool state machine): drain (Clean) does not close the pool: a busy slot
//     that finishes after Clean goes back to the free list and is reused by a
//     request still running in the old instance; this is what makes the reload
//     variant of TestReviewSlots_ForeignSettleDeletesReusedSlotRecord possible.
//     A closed flag (finish after drain frees nothing; take allocates a fresh
//     path) removes that variant.
// RO6 (performance standby, not verified against Vault core): an issuance on a
//     perf standby takes a slot, fails putCreation with ErrReadOnly, tries the
//     take-back Delete (ErrReadOnly again, logged as a warning), and returns the
//     error wrapped with %w twice; a constant-name role also spends a Heron list
//     first. Whether Vault still forwards depends on it matching ErrReadOnly
//     after the plugin's gRPC boundary; checking for ErrReadOnly before the
//     list and before take (or returning logical.ErrReadOnly bare) is safer.
//
// Checked and found sound: slotPool take/finish/claim/release/pending under
// -race (all state under one mutex; held slots never reused; a settled held
// slot is forgotten, never handed out again; concurrent settle passes of one
// instance exclude each other on held slots via slotSettling, and on foreign
// records via the name lock's TryLock, both sides reaching the same verdict);
// lock order configLock -> staticRoleLock/roleLock -> nameLock with TryLock in
// rollbacks (no cycle; hashed config lock buckets only delay); a free slot is
// marked free only after the key's record is stored (createTrackedKey,
// rotateStaticLocked, rotateAdminKeyOnce), and every path with a possible
// untracked key (unknown POST, failed undo, storage that cannot say) holds the
// slot; keys/<id> committed-but-failed is taken back out after undo; a held
// slot is settled only after its window closed; two mounts have disjoint
// storage and slot paths; the periodic pass does nothing where writesHere is
// false.

package heron

import (
	"context"
	"errors"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/hashicorp/vault/sdk/logical"
	"github.com/stretchr/testify/require"

	"github.com/heron-vault/vault-plugin-secrets-heron/herontest"
)

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

// Invariant 1 (and crash safety), HA failover / reload with requests in
// flight. Two backend instances on one storage: the old active node (or the
// old instance of a reload) is still serving while the new one runs its
// periodic pass.
//
// Interleaving:
//  1. old instance issues lease A in slot creating/<old>.0; the record stays
//     (keep) and the slot is free in the old pool.
//  2. new instance starts (old not cleaned: partitioned old active node, or
//     in-flight requests of a reload); its periodic pass claims
//     creating/<old>.0 (state 0: "another instance's"), reads A's record,
//     finds A's key tracked, decides "settled" and goes to delete the path.
//  3. before that Delete lands, the old instance issues B: take() hands out
//     the free slot creating/<old>.0 again, B's record overwrites A's, the
//     POST creates key K_B, keys/<K_B> fails to store and Heron's DELETE of
//     K_B fails too, so K_B is left to the rollback by B's record (slot held).
//  4. the new instance's Delete lands: B's record is gone.
//  5. nothing can settle K_B any more: the old instance's claim of its held
//     slot reads no record and calls it settled; the new instance lists no
//     record. K_B stays live in Heron and untracked.
//
// Root cause: settleCreation (wal_slots.go) reads a slot record and later
// deletes the slot path; the owning instance may rewrite that path between
// the two (slotPool.take reuses free slots), and logical.Storage has no
// compare-and-delete. With one Vault WAL entry per creation the ids were
// unique, so a stale delete could not hit a later creation's record. Reading
// the record again just before the Delete narrows the window but does not
// close it (the gate below sits after any such re-read): the owner must stop
// rewriting a slot once a settler may act on its record (an age fence:
// reuse only slots whose record is younger than walRollbackMinAge/2, and
// never delete another instance's record younger than walRollbackMinAge,
// tidy and config writes included), or the pool must close (see RO5).
func TestReviewSlots_ForeignSettleDeletesReusedSlotRecord(t *testing.T) {
	t.Run("failover: old active node still serving", func(t *testing.T) { reusedSlotScenario(t, false) })
	t.Run("reload: request in flight across Clean", func(t *testing.T) { reusedSlotScenario(t, true) })
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

// reusedSlotScenario: see TestReviewSlots_ForeignSettleDeletesReusedSlotRecord.
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
	if rec, _ := getJSON[creationRecord](context.Background(), e.s, oldSlot, "creation record"); rec != nil && rec.Entry.KeyName != a.Data["key_name"] {
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

// prefixDeleteFailStorage fails every Delete under prefix without deleting,
// until off.
type prefixDeleteFailStorage struct {
	logical.Storage
	mu       sync.Mutex
	prefix   string
	disabled bool
}

func (s *prefixDeleteFailStorage) off() { s.mu.Lock(); s.disabled = true; s.mu.Unlock() }

func (s *prefixDeleteFailStorage) Delete(ctx context.Context, key string) error {
	s.mu.Lock()
	fail := !s.disabled && strings.HasPrefix(key, s.prefix)
	s.mu.Unlock()
	if fail {
		return errors.New("injected storage failure")
	}
	return s.Storage.Delete(ctx, key)
}

// Invariant 3, storage error on the slot record's write AND on its take-back.
// The follow-up commit ("a write-ahead record whose write reported an error
// is taken back out") only helps when that Delete succeeds; in a storage
// outage the two fail together.
//
// Interleaving: role ci renders the constant name "ci-ci" (no random part:
// keep=false, Listed). putCreation(creating/<id>.0) is committed but reports
// an error; the take-back s.Delete fails too; createUnderWAL logs a warning,
// frees the slot and returns. No POST was sent. A customer then creates
// their own key "ci-ci". The plugin crashes (or is killed before it reuses
// or cleans that slot); the next instance's tidy settles the record by name:
// the customer's key is not in Existing (created after the list), lies
// inside [Since, Since+lateKeyWindow], is untracked: it is deleted.
//
// Root cause: wal.go createUnderWAL, the putCreation error branch: a failed
// take-back leaves a record of a creation that never happened in a slot
// marked free, indistinguishable after a crash from a real creation.
func TestReviewSlots_FailedRecordWriteAndTakeBackTakesCustomerKey(t *testing.T) {
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

// Invariant 3, crash safety: storage error on the Delete that ends a
// constant-name creation (or, equivalently, a crash between the key's record
// and that Delete). The commit's answer to the model test's finding ("a
// crashed instance's finished record of a constant name made the settle
// delete a customer's key") is that such names delete their record when
// done; that Delete is one more point where a fault leaves the record.
//
// Interleaving: role ci ("ci-ci", keep=false). Issuance: record put, Heron
// listed (no ci-ci yet: Existing empty), POST, keys/<id> stored, walGuard.end
// deletes creating/<id>.0 -> storage error (or crash right here); the slot is
// marked free and the lease is returned. A customer creates "ci-ci" a moment
// later. The instance crashes any time before that slot is reused (LIFO pool:
// an idle slot can wait for hours) or cleaned. The next instance's settle
// (tidy, or the periodic pass) lists Heron: the lease's key is tracked and
// skipped, the customer's key has the name, is not in Existing, was created
// inside the window and is untracked: deleted.
//
// Root cause: wal.go walGuard.end (keep=false) plus wal_slots.go
// settleCreation/rollbackEntry: a finished creation's record cannot be told
// from an unfinished one after a crash, and for a non-unique name recovery
// by name then takes any same-named key of the window.
func TestReviewSlots_UndeletedConstantNameRecordTakesCustomerKey(t *testing.T) {
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

// Crash safety (and invariant 5: no 500 for an operator's ordinary steps).
// A finished creation's record stays in its free slot (keep); config delete
// settles only records that claim() gives it, never this instance's free
// slots. So the record outlives its environment's config. Without a crash,
// Clean deletes it; after a crash (or a failover without Clean) the next
// instance claims it as another instance's and cannot settle it without a
// config: settleCreation -> rollbackEntry returns "config is gone ... write
// config/development again", the record is kept forever, and every tidy
// answers with that error (500) and every periodic pass logs it.
//
// Interleaving: issue (record kept in creating/<id>.0) -> revoke (key deleted
// in Heron) -> delete role -> delete config (succeeds: nothing pending) ->
// crash -> tidy.
//
// Root cause: path_config.go pathConfigDelete / wal.go rollbackStaleWALs ->
// wal_slots.go settleCreations skip this instance's free slots (their
// records are finished, but only this instance knows it) and nothing
// deletes them when their environment goes; the next instance cannot tell
// them from a creation that never finished.
func TestReviewSlots_ConfigDeleteStrandsFinishedRecord(t *testing.T) {
	e := getTestBackend(t)
	e.configure("development")
	e.role("r", map[string]interface{}{})
	require.NoError(t, e.revoke(e.issue("r")))
	e.ok(logical.DeleteOperation, "roles/r", nil)
	e.ok(logical.DeleteOperation, "config/development", nil)
	t.Logf("creation records left after the config delete: %v", creationRecords(t, e.s))

	e.restart(true)
	closeWindow(e)
	_, err := e.do(logical.UpdateOperation, "tidy", nil)
	require.NoError(t, err, "tidy fails for good after a crash: the record of a finished, revoked issuance names a deleted config")
	require.Empty(t, creationRecords(t, e.s))
}
