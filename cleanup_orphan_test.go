package heron

import (
	"context"
	"strings"
	"testing"

	"github.com/hashicorp/vault/sdk/logical"
	"github.com/stretchr/testify/require"
)

// Spec, Invariant 7 (static roles: the role's current key works): the old
// instance of a reload rotates a static role; it stores the new key's
// record, then the role. The new instance's pass that sweeps the record in
// between does not find the key in the role yet; the rotation claim
// (rotating/static/<role>) tells it a rotation is running, so it does not
// take the key for an orphan.
func TestCleanup_OrphanSweepLeavesTheKeyOfAnotherInstancesRotation(t *testing.T) {
	e := getTestBackend(t)
	e.configure("development")
	e.ok(logical.CreateOperation, "static-roles/app", map[string]interface{}{"environment": "development"})
	older := e.b
	newer := e.start()
	ctx := context.Background()

	st := &onFirstWrite{Storage: e.s, prefixes: []string{keyStoragePrefix}, after: true}
	st.hook = func() {
		ids, err := e.s.List(ctx, keyStoragePrefix)
		require.NoError(t, err)
		_, err = newer.sweepOverdue(ctx, e.s, ids)
		require.NoError(t, err)
	}
	r, err := older.rotateStatic(ctx, st, "app")
	require.NoError(t, err)
	require.Nil(t, st.hook, "hook ran")

	pass := &logical.Request{Operation: logical.RollbackOperation, Storage: e.s}
	require.NoError(t, newer.periodicFunc(ctx, pass))

	stored, err := getStaticRole(ctx, e.s, "app")
	require.NoError(t, err)
	require.Equal(t, r.KeyID, stored.KeyID)
	k, _ := e.srv.Key(stored.KeyID)
	rec := trackedRecord(t, e.s, stored.KeyID)
	require.True(t, k.IsActive && !k.Deleted && rec.Pending == "" && !strings.EqualFold(rec.State, keyStateDeactivated),
		"the static role's current key %s is deactivated/pending (heron active=%v deleted=%v, record state=%s pending=%q)", stored.KeyID, k.IsActive, k.Deleted, rec.State, rec.Pending)
}
