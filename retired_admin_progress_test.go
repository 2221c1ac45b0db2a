package heron

import (
	"context"
	"testing"

	"github.com/hashicorp/vault/sdk/logical"
	"github.com/stretchr/testify/require"
)

// Spec, config/<env>/rotate ("deactivate the old key") and Invariants 1
// and 8: a rotated-out key K0, deactivated (its progress record says so),
// reactivated in Heron and written back as the admin key, with the delete
// of its progress record failing once; the next rotation retires K0 again.
// A progress record names the retirement it belongs to, so the old one does
// not describe the new: K0 is deactivated again, its retention counted anew.
func TestRetiredAdminKeys_StaleProgressRecordNeverDescribesANewRetirement(t *testing.T) {
	e := getTestBackend(t)
	e.configure("development")
	e.ok(logical.UpdateOperation, "config/development", map[string]interface{}{"old_key_retention": "1h"})
	ctx := context.Background()
	k0Token := e.adminKey["development"]

	e.ok(logical.UpdateOperation, "config/development/rotate", nil) // K0 -> K1
	c1, err := getConfig(ctx, e.s, "development")
	require.NoError(t, err)
	require.Len(t, c1.RetiredKeys, 1)
	k0 := c1.RetiredKeys[0].KeyID
	require.True(t, c1.RetiredKeys[0].Deactivated)
	oldDeleteAfter := c1.RetiredKeys[0].DeleteAfter

	// The operator reactivates K0 in Heron and writes it back; deleting
	// K0's settled progress record fails once.
	setActiveDirect(t, e, k0, true)
	fs := &prefixDeleteFailStorage{Storage: e.s, prefix: retiredProgressPrefix}
	plain := e.s
	e.s = fs
	e.ok(logical.UpdateOperation, "config/development", map[string]interface{}{"admin_api_key": k0Token})
	fs.off()
	e.s = plain

	// The next config write: a rotation K0 -> K2, which must deactivate K0.
	e.ok(logical.UpdateOperation, "config/development/rotate", nil)
	c2, err := getConfig(ctx, e.s, "development")
	require.NoError(t, err)
	rk := c2.retired(k0)
	require.NotNil(t, rk)
	k, _ := e.srv.Key(k0)
	require.False(t, k.IsActive,
		"K0 %s, rotated out again, is still active in Heron while the config says deactivated=%v (delete_after %s, the first retirement's was %s)",
		k0, rk.Deactivated, rk.DeleteAfter, oldDeleteAfter)
}
