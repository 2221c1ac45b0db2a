package heron

// Adversarial review of static roles, events, history (tombstones) and the
// inventory. Each TestReviewStatic_* test fails on the engine as reviewed,
// for the reason its comment gives, and names the clause of the engine's
// contract (the spec's section) it protects.
//
// The findings made by reading alone (RO1-RO7) were fixed afterwards; each
// has its test at the bottom of this file (RO1, an overlap longer than the
// time between rotations: accepted with a warning that says what the overlap
// will really be, TestStaticRole_OverlapLongerThanPeriodWarns).

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/hashicorp/vault/sdk/framework"
	"github.com/hashicorp/vault/sdk/logical"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/heron-vault/vault-plugin-secrets-heron/herontest"
)

// parkStorage parks the first Get of one key, after reading it, until the
// test lets it go: a request that read a static role is held right there,
// before it takes any lock, while the test makes something else happen.
type parkStorage struct {
	logical.Storage
	mu      sync.Mutex
	key     string
	reached chan struct{}
	proceed chan struct{}
}

func (s *parkStorage) arm(key string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.key, s.reached, s.proceed = key, make(chan struct{}), make(chan struct{})
}

func (s *parkStorage) Get(ctx context.Context, key string) (*logical.StorageEntry, error) {
	s.mu.Lock()
	park := s.key != "" && key == s.key
	var reached, proceed chan struct{}
	if park {
		s.key = ""
		reached, proceed = s.reached, s.proceed
	}
	s.mu.Unlock()
	v, err := s.Storage.Get(ctx, key)
	if park {
		close(reached)
		<-proceed
	}
	return v, err
}

// failPutKey fails the next n Puts of exactly one key (not written).
type failPutKey struct {
	logical.Storage
	mu  sync.Mutex
	key string
	n   int
}

func (s *failPutKey) Put(ctx context.Context, e *logical.StorageEntry) error {
	s.mu.Lock()
	fail := s.n > 0 && e.Key == s.key
	if fail {
		s.n--
	}
	s.mu.Unlock()
	if fail {
		return errors.New("injected storage failure")
	}
	return s.Storage.Put(ctx, e)
}

// eventsFor returns the events of one key, once the asynchronous sends of
// the operations so far have landed.
func eventsFor(e *testEnv, m *logical.MockEventSender, keyID string) []string {
	e.b.eventSends.Wait()
	m.Lock()
	defer m.Unlock()
	var out []string
	for _, ev := range m.Events {
		if ev.Event.Metadata.AsMap()["key_id"] == keyID {
			out = append(out, string(ev.Type))
		}
	}
	return out
}

func countOf(list []string, s string) int {
	n := 0
	for _, v := range list {
		if v == s {
			n++
		}
	}
	return n
}

// Invariants 1 and 4: after a forced config write the static role's key is
// marked unreachable (the new admin key cannot see it). Deleting the role
// asks the new admin key to deactivate it, gets 404, and retireStaticKey
// takes that 404 for "gone": the record becomes a tombstone (reason
// missing) and the delete reports success, while the key stays live in
// Heron and nothing tracks it any more.
// Root cause: static_role.go:retireStaticKey ignores rec.Unreachable on
// ErrNotFound (secret_api_key.go's revocation does check it).
func TestReviewStatic_UnreachableKeyForgottenOnRoleDelete(t *testing.T) {
	e := getTestBackend(t)
	e.configure("development")
	e.ok(logical.CreateOperation, "static-roles/app", map[string]interface{}{"environment": "development"})
	id := staticCreds(e, "app")["key_id"].(string)

	foreign := e.srv.AddUser("development")
	e.adminKey["foreign-user"] = foreign
	e.ok(logical.UpdateOperation, "config/development", map[string]interface{}{"admin_api_key": foreign, "force": true})
	rec, err := getTrackedKey(context.Background(), e.s, id)
	require.NoError(t, err)
	require.True(t, rec.Unreachable, "precondition: the forced write marked the static key unreachable")
	e.allowLive[id] = true

	_, _ = e.do(logical.DeleteOperation, "static-roles/app", nil)
	k := heronKey(e, id)
	require.True(t, k.IsActive && !k.Deleted, "precondition: the new admin key cannot touch the key")
	rec, err = getTrackedKey(context.Background(), e.s, id)
	require.NoError(t, err)
	assert.NotNil(t, rec, "BUG: the static key is live in Heron but the engine forgot it (tombstone 'missing') on a 404 from an admin key that cannot see it")
}

// Invariants 1 and 4, with no operator action at all: after a forced config
// write, a rotation makes the unreachable key the previous one; once the
// overlap is over the cleanup pass does not find it in the new admin key's
// list ("gone from Heron"), its deactivation gets 404, and the record is
// forgotten while the key is live in Heron.
// Root cause: static_role.go:settleOverlaps treats "not listed" as gone for
// an Unreachable key, and retireStaticKey forgets it on 404.
func TestReviewStatic_UnreachablePreviousKeyForgottenByCleanup(t *testing.T) {
	e := getTestBackend(t)
	e.configure("development")
	e.ok(logical.CreateOperation, "static-roles/app", map[string]interface{}{
		"environment": "development", "overlap": "1h", "max_overlap": "1h",
	})
	id := staticCreds(e, "app")["key_id"].(string)

	foreign := e.srv.AddUser("development")
	e.adminKey["foreign-user"] = foreign
	e.ok(logical.UpdateOperation, "config/development", map[string]interface{}{"admin_api_key": foreign, "force": true})
	e.allowLive[id] = true

	t0 := time.Now()
	e.atTime(t0)
	e.ok(logical.UpdateOperation, "static-roles/app/rotate", nil)
	require.Equal(t, id, staticCreds(e, "app")["previous_key_id"])

	e.atTime(t0.Add(2 * time.Hour))
	_, _ = e.do(logical.UpdateOperation, "tidy", nil)
	k := heronKey(e, id)
	require.True(t, k.IsActive && !k.Deleted, "precondition: the new admin key cannot touch the key")
	rec, err := getTrackedKey(context.Background(), e.s, id)
	require.NoError(t, err)
	assert.NotNil(t, rec, "BUG: the previous static key is live in Heron but the cleanup pass forgot it")
}

// static-roles (rotation; Invariant 1 "held by a static role"): an update
// of a static role's settings reads the role before taking its lock and
// writes that copy back. A rotation landing in between (the periodic pass,
// Vault's rotation manager, static-roles/<name>/rotate) is undone: the role
// points at the old key again, the key the rotation made current (and that
// static-creds already handed out) is held by no role, and the orphan
// sweep deactivates it within the hour, with no overlap at all.
// Root cause: path_static_roles.go:pathStaticRolesWrite does not re-read the
// role under staticRoleLock (rotateStatic and finishOverlap do).
func TestReviewStatic_UpdateUndoesConcurrentRotation(t *testing.T) {
	e := getTestBackend(t)
	e.configure("development")
	e.ok(logical.CreateOperation, "static-roles/app", map[string]interface{}{"environment": "development"})
	first := staticCreds(e, "app")["key_id"].(string)

	ps := &parkStorage{Storage: e.s}
	e.s = ps
	ps.arm(staticRoleStoragePrefix + "app")
	done := make(chan error, 1)
	go func() {
		resp, err := e.do(logical.UpdateOperation, "static-roles/app", map[string]interface{}{"overlap": "2h", "max_overlap": "2h"})
		if err == nil && resp != nil && resp.IsError() {
			err = resp.Error()
		}
		done <- err
	}()
	<-ps.reached
	rotated, err := e.b.rotateStatic(context.Background(), e.s, "app")
	require.NoError(t, err)
	close(ps.proceed)
	require.NoError(t, <-done)

	stored, err := getStaticRole(context.Background(), e.s, "app")
	require.NoError(t, err)
	require.NotEqual(t, first, rotated.KeyID)
	assert.Equal(t, rotated.KeyID, stored.KeyID, "BUG: the update wrote back a stale copy: the rotation's key %s is held by no role (current is %s again)", rotated.KeyID, stored.KeyID)
}

// static-roles "Delete: the role's current and previous keys are
// deactivated at once": the delete reads the role before its lock and
// retires the keys of that copy. A rotation landing in between leaves its
// new current key active, held by no role, until the hourly sweep.
// Root cause: path_static_roles.go:pathStaticRolesDelete does not re-read
// the role under staticRoleLock.
func TestReviewStatic_DeleteMissesConcurrentRotation(t *testing.T) {
	e := getTestBackend(t)
	e.configure("development")
	e.ok(logical.CreateOperation, "static-roles/app", map[string]interface{}{"environment": "development"})

	ps := &parkStorage{Storage: e.s}
	e.s = ps
	ps.arm(staticRoleStoragePrefix + "app")
	done := make(chan error, 1)
	go func() {
		_, err := e.do(logical.DeleteOperation, "static-roles/app", nil)
		done <- err
	}()
	<-ps.reached
	rotated, err := e.b.rotateStatic(context.Background(), e.s, "app")
	require.NoError(t, err)
	close(ps.proceed)
	require.NoError(t, <-done)

	r, err := getStaticRole(context.Background(), e.s, "app")
	require.NoError(t, err)
	require.Nil(t, r, "the role is deleted")
	assert.False(t, heronKey(e, rotated.KeyID).IsActive, "BUG: the role is deleted but its current key %s is still active", rotated.KeyID)
}

// static-creds "a failed rotation keeps the current key and retries": an
// adoption without skip_import_rotation whose rotation fails answers "the
// key was adopted, but rotating it failed (the next pass retries)". The
// next pass does not retry: KeySetAt is the adoption time, so the schedule
// says the next rotation is rotation_period (720h by default) away, and the
// adopted key, meant to be replaced at once, stays current for a month.
// Root cause: path_static_roles.go:pathStaticRolesWrite / adoptStaticKey set
// KeySetAt = now for an adopted key that is to be rotated now.
func TestReviewStatic_FailedImportRotationNotRetried(t *testing.T) {
	e := getTestBackend(t)
	e.ok(logical.CreateOperation, "config/development", map[string]interface{}{
		"admin_api_key": e.adminKey["development"], "base_url": e.srv.URL, "max_retries": 0, "rate_limit_per_minute": maxRateLimitPerMinute,
	})
	tok := e.srv.AddAdminKey("development")
	adopted, _ := e.srv.KeyByToken(tok)

	e.srv.FailNext("POST", "/api/credentials/keys", 3, herontest.FaultStatus503)
	resp := e.ok(logical.CreateOperation, "static-roles/app", map[string]interface{}{"environment": "development", "api_key": tok})
	require.NotNil(t, resp)
	require.Contains(t, strings.Join(resp.Warnings, " "), "the next pass retries")
	require.Equal(t, adopted.ID, staticCreds(e, "app")["key_id"])
	e.srv.ResetFaults()

	e.atTime(time.Now().Add(2 * time.Minute))
	req := &logical.Request{Operation: logical.RollbackOperation, Storage: e.s}
	require.NoError(t, e.b.periodicFunc(context.Background(), req))
	assert.NotEqual(t, adopted.ID, staticCreds(e, "app")["key_id"], "BUG: the next pass did not retry the failed import rotation")
}

// Invariant 3 ("Recovery by name never touches a key the engine did not
// create for that very write-ahead record ... customers name keys too"):
// static key names (vault-static-<role>-<unix_time>) have no random part,
// yet the rotation creates them as if unique: Heron is not listed before
// the POST, so after a lost answer the lookup by name takes a key of that
// name made a moment before by someone else (a customer, another mount's
// static role of the same name) for its own, and deletes it.
// Root cause: static_role.go:rotateStaticLocked passes uniqueName=true to
// createUnderWAL.
func TestReviewStatic_RecoveryDeletesSameNamedForeignKey(t *testing.T) {
	e := getTestBackend(t)
	e.configure("development")
	e.ok(logical.CreateOperation, "static-roles/app", map[string]interface{}{"environment": "development"})

	t1 := time.Now().Add(time.Hour).Truncate(time.Second)
	e.atTime(t1)
	other := createDirect(t, e, fmt.Sprintf("vault-static-app-%d", t1.Unix()))
	e.foreign[other] = true
	time.Sleep(50 * time.Millisecond) // strictly older than the rotation

	e.srv.FailNext("POST", "/api/credentials/keys", 1, herontest.FaultProcessThenDrop)
	e.ok(logical.UpdateOperation, "static-roles/app/rotate", nil)
	k := heronKey(e, other)
	assert.True(t, k.IsActive && !k.Deleted, "BUG: the recovery after a lost answer deleted a key of the same name it did not create")
}

// A static rotation whose POST answer is lost: the key that appears under
// its name (not unique: a customer could use it) is reported as an
// unconfirmed static key of static-creds/<role>, not a lease's, and its
// event names that path (spec, Invariants 3 and "Events, history and log
// lines").
func TestStaticRotation_LostAnswerKeyIsReportedAsTheRolesUnconfirmedKey(t *testing.T) {
	events := &logical.MockEventSender{}
	e := newTestEnv(t, withEvents(events))
	e.configure("development")
	e.ok(logical.CreateOperation, "static-roles/app", map[string]interface{}{"environment": "development"})

	e.srv.FailNext("POST", "/api/credentials/keys", 1, herontest.FaultProcessThenDrop)
	e.ok(logical.UpdateOperation, "static-roles/app/rotate", nil)

	ids, err := e.s.List(context.Background(), unconfirmedStoragePrefix)
	require.NoError(t, err)
	require.Len(t, ids, 1, "the lost answer's key is reported unconfirmed")
	lost := ids[0]
	u, err := getJSON[unconfirmedKey](context.Background(), e.s, unconfirmedStoragePrefix+lost, "")
	require.NoError(t, err)
	assert.Equal(t, keyKindStatic, u.Kind)
	assert.Equal(t, "app", u.Role)
	k := heronKey(e, lost)
	assert.True(t, k.IsActive && !k.Deleted, "never deleted on a name match alone")

	require.Eventually(t, func() bool {
		events.Lock()
		defer events.Unlock()
		for _, ev := range events.Events {
			md := ev.Event.Metadata.AsMap()
			if md["key_id"] == lost && string(ev.Type) == eventKeyUnconfirmed {
				return md[logical.EventMetadataDataPath] == "static-creds/app"
			}
		}
		return false
	}, 10*time.Second, 10*time.Millisecond, "a heron/key-unconfirmed event with data_path static-creds/app")
}

// static-roles api_key ("adopt this existing key (found by its prefix in
// the list, checked to authenticate)"): the check proves that api_key
// authenticates, not that it is the listed key. A token of another Heron
// user (another environment's key) whose 8-char prefix matches one key of
// this environment is accepted: the role then owns that unrelated key
// (rotates, deactivates and deletes it: a customer's key) while
// static-creds hands out the other user's token under its key_id.
// Root cause: path_static_roles.go:adoptStaticKey checks Hello() with the
// token; it should list with the token and find the same key id (same
// user), which with the unique prefix proves identity.
func TestReviewStatic_AdoptionTakesAnotherUsersPrefixTwin(t *testing.T) {
	e := getTestBackend(t)
	e.configure("development")

	devByPrefix := map[string][]string{keyPrefix(e.adminKey["development"]): {"admin"}}
	for i := 0; i < 400; i++ {
		tok := e.srv.AddAdminKey("development")
		k, _ := e.srv.KeyByToken(tok)
		e.foreign[k.ID] = true
		devByPrefix[tok[:8]] = append(devByPrefix[tok[:8]], k.ID)
	}
	var prodTok, twin string
	for i := 0; i < 100000 && prodTok == ""; i++ {
		tok := e.srv.AddAdminKey("production")
		k, _ := e.srv.KeyByToken(tok)
		e.foreign[k.ID] = true
		if ids := devByPrefix[tok[:8]]; len(ids) == 1 && ids[0] != "admin" {
			prodTok, twin = tok, ids[0]
		}
	}
	require.NotEmpty(t, prodTok, "precondition: a production key shares its prefix with exactly one development key")

	resp, err := e.do(logical.CreateOperation, "static-roles/app", map[string]interface{}{
		"environment": "development", "api_key": prodTok, "skip_import_rotation": true,
	})
	require.NoError(t, err)
	if resp == nil || !resp.IsError() {
		c := staticCreds(e, "app")
		t.Errorf("BUG: adopted development key %s (a customer's key) with the token of production key %s; static-creds returns key_id=%v with that token",
			twin, func() string { k, _ := e.srv.KeyByToken(prodTok); return k.ID }(), c["key_id"])
	}
}

// static-roles api_key / inventory "admin": an admin key of another config
// of the same mount (same Heron user, e.g. config dev-batch beside
// development) is adopted as an application's key; deleting or rotating the
// role then deactivates and deletes that config's admin key. Only the
// role's own config is checked.
// Root cause: path_static_roles.go:adoptStaticKey checks cfg.accountsFor for
// the role's config only, not every config's current and retired admin keys.
func TestReviewStatic_AdoptsAnotherConfigsAdminKey(t *testing.T) {
	e := getTestBackend(t)
	e.configure("development")
	e.adminKey["dev-batch"] = e.srv.AddAdminKey("development") // same Heron user
	e.configure("dev-batch")

	resp, err := e.do(logical.CreateOperation, "static-roles/app", map[string]interface{}{
		"environment": "development", "api_key": e.adminKey["dev-batch"], "skip_import_rotation": true,
	})
	require.NoError(t, err)
	assert.True(t, resp != nil && resp.IsError(), "BUG: the admin key of config dev-batch was adopted by a static role")
}

// inventory ("unmanaged (not created or adopted by this engine)"): with two
// configs of the same Heron user, a lease key the engine issued through one
// is classified unmanaged in the other's inventory, inviting an operator to
// delete a live lease's key as foreign.
// Root cause: path_inventory.go:classify drops the record when
// rec.Environment != env.
func TestReviewStatic_InventoryCallsOwnLeaseKeyUnmanaged(t *testing.T) {
	e := getTestBackend(t)
	e.configure("development")
	e.adminKey["dev-batch"] = e.srv.AddAdminKey("development") // same Heron user
	e.configure("dev-batch")
	e.role("batch", map[string]interface{}{"environment": "dev-batch"})
	lease := e.issue("batch")
	defer func() { require.NoError(t, e.revoke(lease)) }()
	id := lease.Data["key_id"].(string)

	inv := e.ok(logical.ReadOperation, "inventory/development", nil)
	entry, ok := inv.Data["keys"].(map[string]interface{})[id].(map[string]interface{})
	require.True(t, ok, "precondition: the development admin key sees the key")
	assert.Equal(t, inventoryLease, entry["class"], "BUG: a key this engine issued (lease of role batch) is classified %v", entry["class"])
}

// Events ("Every change of a key's life has one name"; one record per
// change): the previous key's retirement at the end of its overlap writes
// the key record, sends heron/static-deactivate, then stores the role. When
// that last write fails (or the plugin dies there), the next pass retires
// the same key again: a second static-deactivate event and log line for
// one deactivation, and its delete_after pushed back each time.
// Root cause: static_role.go:finishOverlap/retireStaticKey do not see that
// the record already says deactivated.
func TestReviewStatic_OverlapEndRetriedDuplicatesEvent(t *testing.T) {
	events := &logical.MockEventSender{}
	e := newTestEnv(t, withEvents(events))
	e.configure("development")
	e.ok(logical.CreateOperation, "static-roles/app", map[string]interface{}{
		"environment": "development", "overlap": "1h", "max_overlap": "1h",
	})
	prev := staticCreds(e, "app")["key_id"].(string)
	t0 := time.Now()
	e.atTime(t0)
	e.ok(logical.UpdateOperation, "static-roles/app/rotate", nil)

	fs := &failPutKey{Storage: e.s, key: staticRoleStoragePrefix + "app", n: 1}
	e.s = fs
	e.atTime(t0.Add(61 * time.Minute))
	_, _ = e.do(logical.UpdateOperation, "tidy", nil) // the role's write fails
	require.False(t, heronKey(e, prev).IsActive, "precondition: deactivated at the end of its overlap")
	e.atTime(t0.Add(62 * time.Minute))
	e.ok(logical.UpdateOperation, "tidy", nil)
	require.NotContains(t, staticCreds(e, "app"), "previous_key_id")

	got := eventsFor(e, events, prev)
	assert.Equal(t, 1, countOf(got, eventStaticDeactivate), "BUG: one deactivation, events %v", got)
}

// Events: a static key whose deactivation at role delete failed is
// deactivated later by the cleanup pass, which announces it as
// heron/key-expire ("deactivated at expiry": a lease's expiry) instead of
// heron/static-deactivate; no static-deactivate is ever sent for it.
// Root cause: cleanup.go:finishPending always records eventKeyExpire for a
// pending deactivation, also for the static orphans retireOrphanStatic
// hands it.
func TestReviewStatic_OrphanStaticDeactivationWrongEvent(t *testing.T) {
	events := &logical.MockEventSender{}
	e := newTestEnv(t, withEvents(events))
	e.configure("development")
	e.ok(logical.CreateOperation, "static-roles/app", map[string]interface{}{"environment": "development"})
	id := staticCreds(e, "app")["key_id"].(string)

	e.srv.FailNext("PUT", "/api/credentials/keys/", 20, herontest.FaultStatus503)
	resp := e.ok(logical.DeleteOperation, "static-roles/app", nil)
	require.NotNil(t, resp)
	require.NotEmpty(t, resp.Warnings, "precondition: the deactivation failed")
	e.srv.ResetFaults()
	e.ok(logical.UpdateOperation, "tidy", nil)
	require.False(t, heronKey(e, id).IsActive, "precondition: the cleanup pass deactivated it")

	got := eventsFor(e, events, id)
	assert.Equal(t, 1, countOf(got, eventStaticDeactivate), "BUG: events of the static key: %v", got)
	assert.Zero(t, countOf(got, eventKeyExpire), "BUG: a static key announced as a lease expiry: %v", got)
	tidyAfterRetention(e)
}

// Events ("heron/static-rotate-fail"): a static rotation that fails after
// Heron created the next key (storing the role fails, so the new key is
// deleted again and the current key stays) sends no static-rotate-fail
// event and logs no event line: only a failed POST is announced. (The key
// created and deleted meanwhile leaves no event and no tombstone either.)
// Root cause: static_role.go:rotateStaticLocked records eventStaticRotateFail
// only on createUnderWAL's error, not on its two storage failure returns.
func TestReviewStatic_RotationFailingOnStorageSendsNoFailEvent(t *testing.T) {
	events := &logical.MockEventSender{}
	e := newTestEnv(t, withEvents(events))
	e.configure("development")
	e.ok(logical.CreateOperation, "static-roles/app", map[string]interface{}{"environment": "development"})
	cur := staticCreds(e, "app")["key_id"].(string)

	e.s = &failPutKey{Storage: e.s, key: staticRoleStoragePrefix + "app", n: 1}
	_, err := e.do(logical.UpdateOperation, "static-roles/app/rotate", nil)
	require.Error(t, err, "precondition: the rotation failed")
	require.Equal(t, cur, staticCreds(e, "app")["key_id"], "precondition: the current key stays")
	require.Len(t, liveIssued(e), 1, "precondition: the key the failed rotation made was deleted")

	e.b.eventSends.Wait()
	events.Lock()
	fails := 0
	for _, ev := range events.Events {
		if string(ev.Type) == eventStaticRotateFail {
			fails++
		}
	}
	events.Unlock()
	assert.Equal(t, 1, fails, "BUG: a failed static rotation sent no heron/static-rotate-fail")
}

// ---------------------------------------------------------------------------
// The review's read-only findings (RO2-RO7), each turned into a test when it
// was fixed.

// tidyAfterRetention runs tidy once every retention of the test is over, so
// that retired keys are deleted before the leftover check.
func tidyAfterRetention(e *testEnv) {
	e.atTime(time.Now().Add(100 * time.Hour))
	e.ok(logical.UpdateOperation, "tidy", nil)
}

// RO2 (static-roles "overlap"): the current key is deleted by hand during an
// overlap; static-creds replaces it by a rotation. The previous key, the only
// other one that works, keeps its overlap: it must not be deactivated for a
// key that is gone, nor replaced as "previous" by that gone key.
func TestReviewStatic_RO2_ReplacingAVanishedKeyKeepsThePreviousOverlap(t *testing.T) {
	e := getTestBackend(t)
	e.configure("development")
	e.ok(logical.CreateOperation, "static-roles/app", map[string]interface{}{"environment": "development", "overlap": "1h"})
	a := staticCreds(e, "app")["key_id"].(string)
	e.ok(logical.UpdateOperation, "static-roles/app/rotate", nil)
	b := staticCreds(e, "app")["key_id"].(string)
	require.NoError(t, handClient(t, e, e.adminKey["development"]).DeleteKey(context.Background(), b))
	e.ok(logical.UpdateOperation, "tidy", nil) // reconcile: b is gone from Heron

	creds := staticCreds(e, "app")
	require.NotEqual(t, b, creds["key_id"], "a new key replaces the vanished one")
	require.Equal(t, a, creds["previous_key_id"], "the previous key keeps its overlap")
	require.True(t, heronKey(e, a).IsActive, "the previous key still works")
	e.ok(logical.DeleteOperation, "static-roles/app", nil)
	tidyAfterRetention(e)
}

// RO3: a static role delete whose key deactivation fails still removes the
// role's job from Vault's rotation manager (the role is gone either way).
func TestReviewStatic_RO3_DeleteWithFailedDeactivationDeregistersTheJob(t *testing.T) {
	e := getTestBackend(t)
	view := useRotationManager(t, e)
	e.configure("development")
	e.ok(logical.CreateOperation, "static-roles/app", map[string]interface{}{"environment": "development"})
	require.True(t, view.hasJob("static-roles/app"), "precondition: the rotation manager runs the role's job")
	e.srv.FailNext("PUT", "/api/credentials/keys/", 20, herontest.FaultStatus503)
	resp := e.ok(logical.DeleteOperation, "static-roles/app", nil)
	require.NotEmpty(t, resp.Warnings)
	e.srv.ResetFaults()
	require.False(t, view.hasJob("static-roles/app"), "the deleted role's job is gone")
	e.ok(logical.UpdateOperation, "tidy", nil)
	tidyAfterRetention(e)
}

// RO4: an adoption that stored the key's record but not the role (a crash
// between the two writes) can be retried: the record is taken over.
func TestReviewStatic_RO4_AdoptionRetriedAfterHalfDoneAdoption(t *testing.T) {
	e := getTestBackend(t)
	e.configure("development")
	c := handClient(t, e, e.adminKey["development"])
	k, err := c.CreateKey(context.Background(), "customer-app-key")
	require.NoError(t, err)
	// What the crashed adoption left: the record, no role.
	rec := staticKeyRecord(&staticRole{Name: "app", Environment: "development", RetiredKeyRetention: time.Hour}, k.ID, k.Name, k.TokenPrefix, time.Now())
	require.NoError(t, putTrackedKey(context.Background(), e.s, rec))

	e.ok(logical.CreateOperation, "static-roles/app", map[string]interface{}{
		"environment": "development", "api_key": k.Token, "skip_import_rotation": true,
	})
	require.Equal(t, k.ID, staticCreds(e, "app")["key_id"])
	e.ok(logical.DeleteOperation, "static-roles/app", nil)
	tidyAfterRetention(e)
}

// RO5: a static key's record never counts against max_active_keys of a
// lease role that has the same name (role-keys/ is the lease roles' index).
func TestReviewStatic_RO5_StaticKeyNotCountedForALeaseRoleOfTheSameName(t *testing.T) {
	e := getTestBackend(t)
	e.configure("development")
	e.ok(logical.CreateOperation, "static-roles/app", map[string]interface{}{"environment": "development"})
	e.srv.FailNext("PUT", "/api/credentials/keys/", 20, herontest.FaultStatus503)
	e.ok(logical.DeleteOperation, "static-roles/app", nil)
	// The orphan sweep marks the key pending while Heron still fails.
	_, err := e.do(logical.UpdateOperation, "tidy", nil)
	require.Error(t, err, "precondition: the deactivation still fails")
	n, err := countActiveForRole(context.Background(), e.s, "app")
	require.NoError(t, err)
	require.Zero(t, n, "a static key is no lease of role app")
	e.srv.ResetFaults()
	e.ok(logical.UpdateOperation, "tidy", nil)
	tidyAfterRetention(e)
}

// RO6 (static-roles "max_overlap": deactivated regardless): while Heron's
// list fails, the previous key past max_overlap is still deactivated (that
// needs no list).
func TestReviewStatic_RO6_MaxOverlapHoldsWhileTheListFails(t *testing.T) {
	e := getTestBackend(t)
	e.configure("development")
	e.ok(logical.CreateOperation, "static-roles/app", map[string]interface{}{"environment": "development", "overlap": "1h", "max_overlap": "2h"})
	a := staticCreds(e, "app")["key_id"].(string)
	t0 := time.Now()
	e.atTime(t0)
	e.ok(logical.UpdateOperation, "static-roles/app/rotate", nil)
	e.atTime(t0.Add(3 * time.Hour))
	e.srv.FailNext("GET", "/api/credentials/keys", 1000, herontest.FaultStatus503)
	_, _ = e.do(logical.UpdateOperation, "tidy", nil)
	e.srv.ResetFaults()
	require.False(t, heronKey(e, a).IsActive, "past max_overlap the previous key is deactivated, list or no list")
	e.ok(logical.DeleteOperation, "static-roles/app", nil)
	e.atTime(t0.Add(100 * time.Hour))
	e.ok(logical.UpdateOperation, "tidy", nil)
}

// RO7: a config delete blocked by a static key that no role holds says what
// helps (tidy), not "revoke the leases".
func TestReviewStatic_RO7_ConfigDeleteNamesTidyForOrphanStaticKeys(t *testing.T) {
	e := getTestBackend(t)
	e.configure("development")
	e.ok(logical.CreateOperation, "static-roles/app", map[string]interface{}{"environment": "development"})
	e.srv.FailNext("PUT", "/api/credentials/keys/", 20, herontest.FaultStatus503)
	e.ok(logical.DeleteOperation, "static-roles/app", nil)
	e.srv.ResetFaults()
	e.badRequest(logical.DeleteOperation, "config/development", nil, "vault write -f heron/tidy")
	e.ok(logical.UpdateOperation, "tidy", nil)
	tidyAfterRetention(e)
}

// Found running the guide's restore on Raft: after a snapshot restore some
// tracked keys are gone from Heron. A new admin key of the same Heron user
// (it sees the others: Heron lists all of a user's keys) proves them gone,
// not hidden: the write needs no force and marks nothing unreachable, so
// their leases still revoke and the config can still be deleted.
func TestRestore_SameUserKeyProvesMissingKeysGone(t *testing.T) {
	e := getTestBackend(t)
	e.configure("development")
	e.role("r", map[string]interface{}{})
	kept, gone := e.issue("r"), e.issue("r")
	require.NoError(t, handClient(t, e, e.adminKey["development"]).DeleteKey(context.Background(), gone.Data["key_id"].(string)))

	hand := e.srv.AddAdminKey("development")
	e.adminKey["hand"] = hand
	resp := e.ok(logical.UpdateOperation, "config/development", map[string]interface{}{"admin_api_key": hand})
	require.NotNil(t, resp)
	require.Contains(t, strings.Join(resp.Warnings, " "), "1 tracked keys are no longer in Heron")
	marked, err := e.b.unreachableKeys(context.Background(), e.s, "development")
	require.NoError(t, err)
	require.Empty(t, marked)
	require.NoError(t, e.revoke(gone), "Heron's 404 for a key of the same user means gone")
	require.NoError(t, e.revoke(kept))

	// Another user's key still sees none of them: refused without force.
	e.issue("r")
	foreign := e.srv.AddUser("development")
	e.adminKey["foreign"] = foreign
	e.badRequest(logical.UpdateOperation, "config/development", map[string]interface{}{"admin_api_key": foreign}, "cannot see 1 of the")
	for _, k := range liveIssued(e) {
		require.NoError(t, handClient(t, e, e.adminKey["development"]).DeleteKey(context.Background(), k.ID))
	}
}

// A config write blocked by unsettled creations while Heron refuses the
// current admin key (a snapshot restored from before a rotation) says what
// helps: waiting does not.
func TestRestore_DeadAdminKeyBlockingMessageSaysWhatHelps(t *testing.T) {
	e := getTestBackend(t)
	e.configure("development")
	_, err := framework.PutWAL(context.Background(), e.s, walKindKey, &walKeyEntry{Environment: "development", KeyName: "x", Since: time.Now()})
	require.NoError(t, err)
	require.NoError(t, handClient(t, e, e.adminKey["development"]).DeactivateKey(context.Background(), heronKeyByToken(t, e, e.adminKey["development"]).ID))
	hand := e.srv.AddAdminKey("development")
	e.adminKey["hand"] = hand
	e.badRequest(logical.UpdateOperation, "config/development", map[string]interface{}{"admin_api_key": hand, "verify": false, "force": false},
		"Heron refuses the current admin key (401), so they cannot be: reactivate that key in Heron's dashboard and write again, or write the new key with force=true")
	e.ok(logical.UpdateOperation, "config/development", map[string]interface{}{"admin_api_key": hand, "force": true})
}

func heronKeyByToken(t *testing.T, e *testEnv, token string) herontest.KeyRecord {
	t.Helper()
	k, ok := e.srv.KeyByToken(token)
	require.True(t, ok)
	return k
}
