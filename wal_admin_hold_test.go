package heron

import (
	"context"
	"testing"
	"time"

	"github.com/hashicorp/vault/sdk/logical"
	"github.com/stretchr/testify/require"
)

// Spec, Invariants 1 and 7 (walGuard.confirmLater): the creation record of
// a rotated-in admin key K2 is held for 2 minutes, in case another
// instance's config write, read before the rotation, lands over it. A
// config write on the rotating instance within those 2 minutes leaves that
// record to the pass instead of settling it at once; so when the stale
// write lands, K2 is still named by a record, and the pass deletes it once a
// working admin key is configured.
func TestRotate_ConfigWriteOnTheRotatingInstanceKeepsTheNewKeysRecord(t *testing.T) {
	e := newTestEnv(t, withoutLeftoverCheck())
	e.configure("development")
	older := e.b
	newer := e.start()
	ctx := context.Background()
	before, err := getConfig(ctx, e.s, "development") // what the other instance read
	require.NoError(t, err)

	e.ok(logical.UpdateOperation, "config/development/rotate", nil) // K1 -> K2 on older
	rotated, err := getConfig(ctx, e.s, "development")
	require.NoError(t, err)
	k2 := rotated.AdminKeyID
	require.Equal(t, 1, walCount(t, older, e.s), "the rotation's record is held")

	// Seconds later, on the same instance, an operator writes a new key.
	k3 := e.srv.AddAdminKey("development")
	e.ok(logical.UpdateOperation, "config/development", map[string]interface{}{"admin_api_key": k3})

	// Still within the hold's 2 minutes, the other instance's write, made
	// from its read before the rotation, lands.
	require.NoError(t, putConfig(ctx, e.s, before))

	for _, b := range []*heronBackend{older, newer} {
		b.windowNow = func() time.Time { return time.Now().Add(lateKeyWindow + walRollbackMinAge + time.Minute) }
	}
	pass := &logical.Request{Operation: logical.RollbackOperation, Storage: e.s}
	for i := 0; i < 2; i++ {
		require.Error(t, older.periodicFunc(ctx, pass), "the stored admin key is the deactivated one")
		require.Error(t, newer.periodicFunc(ctx, pass), "the stored admin key is the deactivated one")
	}
	// The stale write put back the admin key the rotation deactivated: the
	// engine has no working key (storage has no compare-and-set; see the
	// README). What it must not do is forget K2: its record stays.
	require.Equal(t, 1, walCount(t, older, e.s), "the rotated-in key's creation record is kept while no working admin key can settle it")
	k, _ := e.srv.Key(k2)
	require.True(t, k.IsActive)

	// The operator writes a working admin key (the 401s say which config;
	// the write says force=true is needed, the old key being dead): the
	// next pass deletes K2, which no config accounts for.
	e.b = newer
	e.ok(logical.UpdateOperation, "config/development", map[string]interface{}{"admin_api_key": k3, "force": true})
	for i := 0; i < 2; i++ {
		require.NoError(t, older.periodicFunc(ctx, pass))
		require.NoError(t, newer.periodicFunc(ctx, pass))
	}
	stored, err := getConfig(ctx, e.s, "development")
	require.NoError(t, err)
	k, _ = e.srv.Key(k2)
	require.True(t, k.Deleted || stored.accountsFor(heronKeyByID(t, e, k2)),
		"rotated-in admin key %s (active=%v) is in no config and its creation record is gone (records left: %d): never deleted",
		k2, k.IsActive, walCount(t, older, e.s))
}
