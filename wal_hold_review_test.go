package heron

import (
	"context"
	"testing"
	"time"

	"github.com/hashicorp/vault/sdk/logical"
	"github.com/stretchr/testify/require"
)

// Review (Invariant 1 and 7; walGuard.confirmLater): the hold on a
// rotated-in admin key's creation record is meant to outlast another
// instance's config write that may still land over the rotation. But a
// config write on the rotating instance that changes the key settles its
// own held records at once (settleCreations with env set: claimHeld, no
// minimum age), so the hold is gone within the 2 minutes. When the other
// instance's stale write then lands (inside the hold's 2 minutes), the
// rotated-in key K2 is in no config, no record and no write-ahead record:
// a live engine-made admin key nothing will ever delete.
func TestReview_ConfigWriteOnRotatingInstanceEndsTheHoldEarly(t *testing.T) {
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
		_ = older.periodicFunc(ctx, pass)
		_ = newer.periodicFunc(ctx, pass)
	}
	stored, err := getConfig(ctx, e.s, "development")
	require.NoError(t, err)
	k, _ := e.srv.Key(k2)
	require.True(t, k.Deleted || stored.accountsFor(heronKeyByID(t, e, k2)),
		"rotated-in admin key %s (active=%v) is in no config and its creation record is gone (records left: %d): never deleted",
		k2, k.IsActive, walCount(t, older, e.s))
}
