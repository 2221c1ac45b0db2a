package heron

// The cap on rotated-out admin keys (rotation.go, pruneRetired): over
// maxRetiredAdminKeys, the oldest deactivated ones are deleted early, never
// the admin key in use.

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/hashicorp/vault/sdk/logical"
	"github.com/stretchr/testify/require"
)

// Spec invariant 1 and "config" (the admin key in use is never deleted): a
// config stored by an older version lists its current admin key among the
// rotated-out ones (written back by hand), first, with the list over the
// cap. The pass deletes the next oldest entry instead; the admin key in use
// stays active.
func TestRetiredAdminCap_NeverPrunesTheAdminKeyInUse(t *testing.T) {
	e := getTestBackend(t)
	e.configure("development")
	ctx := context.Background()
	cfg, err := getConfig(ctx, e.s, "development")
	require.NoError(t, err)
	admin := keyIDByToken(t, e, e.adminKey["development"])
	now := time.Now()
	cfg.RetiredKeys = []retiredAdminKey{{KeyID: admin, TokenPrefix: keyPrefix(cfg.AdminAPIKey), RetiredAt: now.Add(-time.Hour),
		Deactivated: true, DeactivatedAt: now.Add(-time.Hour), DeleteAfter: now.Add(100 * time.Hour)}}
	for i := range maxRetiredAdminKeys {
		cfg.RetiredKeys = append(cfg.RetiredKeys, retiredAdminKey{KeyID: fmt.Sprintf("00000000-0000-4000-8000-%012d", i), TokenPrefix: "key_gone",
			RetiredAt: now, Deactivated: true, DeactivatedAt: now, DeleteAfter: now.Add(100 * time.Hour)})
	}
	require.NoError(t, putConfig(ctx, e.s, cfg))

	_, _ = e.do(logical.UpdateOperation, "tidy", nil)
	k := heronKey(e, admin)
	require.False(t, k.Deleted, "the admin key in use is never pruned")
	require.True(t, k.IsActive)
	require.True(t, e.authenticates(e.adminKey["development"]))
}
