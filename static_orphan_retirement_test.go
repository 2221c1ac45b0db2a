package heron

// The cleanup pass's retirement of static keys no static role holds
// (cleanup.go, retireOrphanStatic): decided under the record's lock from a
// read made under it.

import (
	"context"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/hashicorp/vault/sdk/logical"
	"github.com/stretchr/testify/require"

	"github.com/heron-vault/vault-plugin-secrets-heron/herontest"
)

// orphanStaticKey leaves a static key that no static role holds: the role's
// delete could not deactivate it (Heron 503), so the key is active, tracked,
// and the cleanup pass's to retire.
func orphanStaticKey(t *testing.T, e *testEnv) string {
	t.Helper()
	e.configure("development")
	e.ok(logical.CreateOperation, "static-roles/app", map[string]interface{}{"environment": "development"})
	id := staticCreds(e, "app")["key_id"].(string)
	e.srv.FailNext("PUT", "/api/credentials/keys/", 20, herontest.FaultStatus503)
	resp := e.ok(logical.DeleteOperation, "static-roles/app", nil)
	require.NotNil(t, resp)
	require.NotEmpty(t, resp.Warnings, "precondition: the deactivation failed")
	e.srv.ResetFaults()
	rec := recordOf(t, e.s, id)
	require.Equal(t, keyStateActive, rec.State, "precondition: an active static key no role holds")
	require.Empty(t, rec.Pending, "precondition: left to the orphan sweep")
	return id
}

// holdRead holds one read of one storage key, once armed (the first read
// after skip others), until released: no time limit, the test releases it.
type holdRead struct {
	logical.Storage
	mu      sync.Mutex
	key     string
	skip    int
	reached chan struct{}
	release chan struct{}
}

func (s *holdRead) arm(key string, skip int) {
	s.mu.Lock()
	s.key, s.skip, s.reached, s.release = key, skip, make(chan struct{}), make(chan struct{})
	s.mu.Unlock()
}

func (s *holdRead) Get(ctx context.Context, key string) (*logical.StorageEntry, error) {
	s.mu.Lock()
	hold := false
	if s.key != "" && key == s.key {
		if s.skip > 0 {
			s.skip--
		} else {
			hold, s.key = true, ""
		}
	}
	s.mu.Unlock()
	en, err := s.Storage.Get(ctx, key)
	if hold {
		close(s.reached)
		<-s.release
	}
	return en, err
}

// Spec invariants 1, 7 and 8 (a second instance on the same storage; a
// retention counts from the deactivation): another instance's pass retires
// an orphan static key after this instance's pass read its record and before
// it took the record's lock. This pass re-reads the record under the lock and
// leaves the retired key alone: one heron/static-deactivate, and the
// retention counted from that one deactivation.
func TestOrphanStaticRetirement_LeavesAKeyAnotherInstanceRetiredMeanwhile(t *testing.T) {
	events := &logical.MockEventSender{}
	var hs *holdRead
	e := newTestEnv(t, withEvents(events), withStorage(func(s logical.Storage) logical.Storage { hs = &holdRead{Storage: s}; return hs }))
	id := orphanStaticKey(t, e)
	t0 := time.Now()
	e.atTime(t0.Add(2 * time.Hour))
	other := e.start()
	other.now = func() time.Time { return t0.Add(time.Hour) }

	hs.arm(keyStoragePrefix+id, 0)
	tidied := make(chan error, 1)
	go func() {
		_, err := e.do(logical.UpdateOperation, "tidy", nil)
		tidied <- err
	}()
	<-hs.reached // this pass has read the record: active, no role holds it
	resp, err := mountDo(other, e.s, logical.UpdateOperation, "tidy", nil)
	require.NoError(t, err)
	require.False(t, resp != nil && resp.IsError(), "%v", resp)
	first := recordOf(t, e.s, id)
	require.Equal(t, keyStateDeactivated, first.State, "precondition: the other instance retired it")
	close(hs.release)
	require.NoError(t, <-tidied)

	rec := recordOf(t, e.s, id)
	require.Equal(t, keyStateDeactivated, rec.State)
	require.Empty(t, rec.Pending)
	require.True(t, rec.DeactivatedAt.Equal(first.DeactivatedAt), "deactivated once, at %s; the record says %s", first.DeactivatedAt, rec.DeactivatedAt)
	require.True(t, rec.DeleteAfter.Equal(first.DeleteAfter), "the retention counts from the one deactivation: delete after %s, the record says %s", first.DeleteAfter, rec.DeleteAfter)
	got := eventsFor(e, events, id)
	require.Equal(t, 1, countOf(got, eventStaticDeactivate), "one heron/static-deactivate: %v", got)
	tidyAfterRetention(e)
}

// Spec invariants 1 and 7 ("a renewal, a rotation or the pass never
// reactivates a quarantined key", nor loses its quarantine): an operator's
// keys/<id>/deactivate that lands after the pass read an orphan static key's
// record, and before the pass took the record's lock, is kept: the pass
// writes the record as read under the lock, quarantine included.
func TestOrphanStaticRetirement_KeepsAQuarantineMadeAfterThePassReadTheRecord(t *testing.T) {
	var hs *holdRead
	e := newTestEnv(t, withStorage(func(s logical.Storage) logical.Storage { hs = &holdRead{Storage: s}; return hs }))
	id := orphanStaticKey(t, e)

	hs.arm(keyStoragePrefix+id, 0)
	tidied := make(chan error, 1)
	go func() {
		_, err := e.do(logical.UpdateOperation, "tidy", nil)
		tidied <- err
	}()
	<-hs.reached // the sweep has read the record: active, no role holds it
	resp, err := doAs(e, logical.UpdateOperation, "keys/"+id+"/deactivate", nil, "ent-sec", "oidc-security-alice")
	require.NoError(t, err)
	require.False(t, resp.IsError(), "%v", resp.Error())
	close(hs.release)
	require.NoError(t, <-tidied)

	rec := recordOf(t, e.s, id)
	require.NotNil(t, rec)
	require.True(t, rec.Quarantined, "the quarantine written meanwhile is kept")
	require.Equal(t, "oidc-security-alice", rec.QuarantinedBy)
	require.False(t, heronKey(e, id).IsActive)
	tidyAfterRetention(e)
}

// Spec invariant 1 and "static-roles" (retired_key_retention, default 72h):
// an orphan static key whose record names no retention (written by a
// version before records carried one) is retained for the default
// retired_key_retention after the pass deactivates it, not deleted at once.
func TestOrphanStaticRetirement_RecordWithoutRetentionGetsTheDefault(t *testing.T) {
	e := getTestBackend(t)
	id := orphanStaticKey(t, e)
	rec := recordOf(t, e.s, id)
	rec.ExpiredKeyRetention = 0
	require.NoError(t, putTrackedKey(context.Background(), e.s, rec))

	t0 := time.Now()
	e.atTime(t0)
	e.ok(logical.UpdateOperation, "tidy", nil)
	require.False(t, heronKey(e, id).Deleted, "retained, not deleted by the pass that deactivated it")
	rec = recordOf(t, e.s, id)
	require.Equal(t, keyStateDeactivated, rec.State)
	require.Equal(t, defaultRetiredKeyRetention, rec.DeleteAfter.Sub(rec.DeactivatedAt), "retained for the default retired_key_retention")

	e.atTime(t0.Add(time.Hour))
	e.ok(logical.UpdateOperation, "tidy", nil)
	require.False(t, heronKey(e, id).Deleted, "still retained an hour after its deactivation")
	tidyAfterRetention(e)
}

// Spec invariants 1 and 7 (a second instance on the same storage): another
// instance's rotation switches the role to its new key after this pass read
// the static roles (the new key not yet held) and its record. The pass
// re-reads the role under its lock before retiring a key as an orphan, finds
// the role holding it, and leaves it: the role's current key stays active.
func TestOrphanStaticRetirement_LeavesAKeyARotationSwitchedToMeanwhile(t *testing.T) {
	var hs *holdRead
	e := newTestEnv(t, withStorage(func(s logical.Storage) logical.Storage { hs = &holdRead{Storage: s}; return hs }))
	e.configure("development")
	e.ok(logical.CreateOperation, "static-roles/app", map[string]interface{}{"environment": "development"})
	current := staticCreds(e, "app")["key_id"].(string)
	other := e.start()
	rotating := &holdRead{Storage: e.s}

	// The other instance's rotation: new key created and recorded, the
	// switch next (held at its read of the current key's record).
	rotating.arm(keyStoragePrefix+current, 0)
	rotated := make(chan error, 1)
	go func() {
		resp, err := mountDo(other, rotating, logical.UpdateOperation, "static-roles/app/rotate", nil)
		if err == nil && resp != nil && resp.IsError() {
			err = resp.Error()
		}
		rotated <- err
	}()
	<-rotating.reached
	next := ""
	for _, k := range e.srv.Keys() {
		if strings.HasPrefix(k.Name, "vault-static-app-") && k.ID != current {
			next = k.ID
		}
	}
	require.NotEmpty(t, next, "precondition: the rotation made its new key")

	// This instance's pass reads the roles (the new key not held yet) and
	// then the new key's record; held there while the rotation lands.
	hs.arm(keyStoragePrefix+next, 0)
	tidied := make(chan error, 1)
	go func() {
		_, err := e.do(logical.UpdateOperation, "tidy", nil)
		tidied <- err
	}()
	<-hs.reached
	close(rotating.release)
	require.NoError(t, <-rotated)
	close(hs.release)
	require.NoError(t, <-tidied)

	r, err := getStaticRole(context.Background(), e.s, "app")
	require.NoError(t, err)
	require.Equal(t, next, r.KeyID, "precondition: the rotation switched to the new key")
	require.True(t, heronKey(e, next).IsActive, "the role's current key is never retired as an orphan")
	rec := recordOf(t, e.s, next)
	require.Equal(t, keyStateActive, rec.State)
	require.Empty(t, rec.Pending)
	require.Equal(t, next, staticCreds(e, "app")["key_id"], "static-creds hands out the key the rotation switched to")
	e.ok(logical.DeleteOperation, "static-roles/app", nil)
	tidyAfterRetention(e)
}
