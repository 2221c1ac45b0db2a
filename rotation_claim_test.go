package heron

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/hashicorp/vault/sdk/logical"
	"github.com/stretchr/testify/require"
)

// Spec, Invariants 7 and 8 (schedules fire once): a static role's rotation
// that another instance of the plugin (a reload's old one) is running makes
// this instance's rotation of the same role back off, creating nothing; the
// periodic pass leaves it to the other.
func TestRotationClaim_AnotherInstancesStaticRotationIsNotRepeated(t *testing.T) {
	e := getTestBackend(t)
	e.configure("development")
	e.ok(logical.CreateOperation, "static-roles/svc", map[string]interface{}{"environment": "development", "rotation_period": "1h"})
	older, newer := e.b, e.start()
	due := func() time.Time { return time.Now().Add(2 * time.Hour) } // the role is due
	older.now, newer.now = due, due

	// The older instance holds a claim on the role, as its rotation does
	// between its claim and its end.
	release, err := older.claimRotation(context.Background(), e.s, "static/svc")
	require.NoError(t, err)
	before := len(e.srv.Keys())

	e.b = newer
	resp, err := e.do(logical.UpdateOperation, "static-roles/svc/rotate", nil)
	require.NoError(t, err)
	require.True(t, resp.IsError())
	require.Contains(t, resp.Error().Error(), "another rotation of it is running")

	require.NoError(t, newer.periodicFunc(context.Background(), &logical.Request{Operation: logical.RollbackOperation, Storage: e.s}))
	require.Len(t, e.srv.Keys(), before, "neither the rotation by hand nor the pass created a key")

	release()
	e.ok(logical.UpdateOperation, "static-roles/svc/rotate", nil)
	require.Len(t, e.srv.Keys(), before+1, "once released, the rotation runs")
}

// A claim left by a crashed instance stops counting after claimTTL.
func TestRotationClaim_ExpiredClaimOfACrashedInstanceIsIgnored(t *testing.T) {
	e := getTestBackend(t)
	e.configure("development")
	crashed, newer := e.b, e.start()
	_, err := crashed.claimRotation(context.Background(), e.s, "admin/development") // never released
	require.NoError(t, err)

	newer.now = func() time.Time { return time.Now().Add(claimTTL + time.Minute) }
	e.b = newer
	e.ok(logical.UpdateOperation, "config/development/rotate", nil)
	left, err := e.s.List(context.Background(), rotatingStoragePrefix+"admin/development/")
	require.NoError(t, err)
	for _, name := range left {
		require.False(t, strings.HasPrefix(name, crashed.id+"."), "the expired claim %s was deleted", name)
	}
}

// Spec, Invariant 7: the new instance of a reload caches a client with the
// admin key it read; the old instance, finishing a rotation, stores another
// and deactivates that one. The new instance's periodic pass, which reads
// the config anyway, takes the stored key instead of failing with 401.
func TestClient_PassTakesTheAdminKeyAnotherInstanceRotatedIn(t *testing.T) {
	e := getTestBackend(t)
	e.configure("development")
	e.role("app", map[string]interface{}{})
	older, newer := e.b, e.start()
	e.b = newer
	lease := e.issue("app") // newer caches a client with the current admin key
	e.b = older
	e.ok(logical.UpdateOperation, "config/development/rotate", nil) // that key is deactivated now

	pass := &logical.Request{Operation: logical.RollbackOperation, Storage: e.s}
	require.NoError(t, newer.periodicFunc(context.Background(), pass))
	e.b = newer
	require.NoError(t, e.revoke(lease), "after the pass, the new instance acts with the stored admin key")
}

// Spec, Invariants 1 and 7: a static rotation writes its new key's record,
// then the role. Another instance's cleanup pass (a reload's old one) that
// reads the role in between finds a static key no role holds; it must not
// retire it as an orphan while the rotating instance holds the role's claim.
func TestRotationClaim_OrphanSweepLeavesAKeyOfARotationInFlight(t *testing.T) {
	e := getTestBackend(t)
	e.configure("development")
	e.ok(logical.CreateOperation, "static-roles/svc", map[string]interface{}{"environment": "development", "rotation_period": "1h"})
	rotating, sweeping := e.b, e.start()

	// Between the new key's record and the role's write: the other
	// instance's tidy runs.
	var tidyErr error
	st := &onFirstWrite{Storage: e.s, prefixes: []string{staticRoleStoragePrefix + "svc"}, hook: func() {
		_, tidyErr = sweeping.cleanupWithWAL(context.Background(), &logical.Request{Operation: logical.UpdateOperation, Storage: e.s})
	}}
	rotated, err := rotating.rotateStatic(context.Background(), st, "svc")
	require.NoError(t, err)
	require.NoError(t, tidyErr)
	require.Nil(t, st.hook, "the sweep ran between the key's record and the role")

	k, ok := e.srv.Key(rotated.KeyID)
	require.True(t, ok)
	require.True(t, k.IsActive, "the rotation's new key, the role's current key, is not retired as an orphan")
	rec, err := getTrackedKey(context.Background(), e.s, rotated.KeyID)
	require.NoError(t, err)
	require.Empty(t, rec.Pending, "nor marked for deactivation")
}
