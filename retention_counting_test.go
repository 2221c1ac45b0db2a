package heron

// Retentions count from the deactivation they follow (spec invariant 8: "a
// retention from the deactivation"), whichever path deactivated the key:
// the cleanup pass finishing a revocation it took over, or a static role's
// overlap ending.

import (
	"testing"
	"time"

	"github.com/hashicorp/vault/sdk/logical"
	"github.com/stretchr/testify/require"

	"github.com/heron-vault/vault-plugin-secrets-heron/herontest"
)

// Spec invariant 8 (a retention counts from the deactivation): a key whose
// lease Vault lost is deactivated by the cleanup pass hours after it was
// issued; expired_key_retention counts from that deactivation, not from the
// issue time, so the key is still in Heron a retention after its issue.
func TestRetention_OverdueLeaseKeyCountsFromThePassDeactivation(t *testing.T) {
	e := getTestBackend(t)
	e.configure("development")
	e.role("r", map[string]interface{}{"ttl": "1h", "expired_key_retention": "24h"})
	t0 := time.Now()
	e.atTime(t0)
	lost := e.issue("r") // no revocation will ever come
	id := lost.Data["key_id"].(string)

	t1 := t0.Add(6 * time.Hour)
	e.atTime(t1)
	e.ok(logical.UpdateOperation, "tidy", nil)
	rec := recordOf(t, e.s, id)
	require.Equal(t, keyStateDeactivated, rec.State, "precondition: deactivated by the pass")
	require.True(t, rec.DeactivatedAt.Equal(t1))
	require.True(t, rec.DeleteAfter.Equal(t1.Add(24*time.Hour)), "delete after %s, the record says %s", t1.Add(24*time.Hour), rec.DeleteAfter)

	e.atTime(t0.Add(26 * time.Hour)) // a retention after the issue, not after the deactivation
	e.ok(logical.UpdateOperation, "tidy", nil)
	require.False(t, heronKey(e, id).Deleted, "kept for expired_key_retention after its deactivation")
	e.atTime(t1.Add(24*time.Hour + time.Minute))
	e.ok(logical.UpdateOperation, "tidy", nil)
	require.True(t, heronKey(e, id).Deleted, "deleted once its retention after the deactivation is over")
}

// Spec invariant 8 and "static-roles" (retired_key_retention: a deactivated
// previous key is deleted this long after): a previous key deactivated at
// max_overlap, well after the rotation, is kept for retired_key_retention
// after that deactivation, not after the rotation.
func TestRetention_StaticPreviousKeyCountsFromTheOverlapsEnd(t *testing.T) {
	e := getTestBackend(t)
	e.configure("development")
	t0 := time.Now()
	e.atTime(t0)
	e.ok(logical.CreateOperation, "static-roles/app", map[string]interface{}{"environment": "development",
		"rotation_period": "720h", "overlap": "10m", "max_overlap": "2h", "unused_for": "10h", "retired_key_retention": "1h"})
	prev := staticCreds(e, "app")["key_id"].(string)
	e.atTime(t0.Add(time.Minute))
	e.ok(logical.UpdateOperation, "static-roles/app/rotate", nil)

	t1 := t0.Add(time.Minute + 2*time.Hour) // max_overlap
	e.atTime(t1)
	e.ok(logical.UpdateOperation, "tidy", nil)
	rec := recordOf(t, e.s, prev)
	require.Equal(t, keyStateDeactivated, rec.State, "precondition: deactivated at max_overlap")
	require.True(t, rec.DeleteAfter.Equal(t1.Add(time.Hour)), "delete after %s, the record says %s", t1.Add(time.Hour), rec.DeleteAfter)

	e.atTime(t1.Add(30 * time.Minute))
	e.ok(logical.UpdateOperation, "tidy", nil)
	require.False(t, heronKey(e, prev).Deleted, "kept for retired_key_retention after its deactivation")
	e.atTime(t1.Add(61 * time.Minute))
	e.ok(logical.UpdateOperation, "tidy", nil)
	require.True(t, heronKey(e, prev).Deleted, "deleted once retired_key_retention after the deactivation is over")
}

// Spec invariant 8 (a retention counts from the deactivation): a lease that
// ends by expiry deactivates its key, and expired_key_retention counts from
// that deactivation (the lease's end), not from the key's issue.
func TestRetention_ExpiredLeaseKeyCountsFromItsDeactivation(t *testing.T) {
	e := getTestBackend(t)
	e.configure("development")
	e.role("r", map[string]interface{}{"ttl": "2h", "expired_key_retention": "3h"})
	t0 := time.Now()
	e.atTime(t0)
	lease := e.issue("r")
	id := lease.Data["key_id"].(string)

	t1 := t0.Add(2*time.Hour + time.Minute) // the lease's end: Vault revokes it as an expiry
	e.atTime(t1)
	require.NoError(t, e.revoke(lease))
	rec := recordOf(t, e.s, id)
	require.Equal(t, keyStateDeactivated, rec.State, "precondition: an expiry deactivates")
	require.True(t, rec.DeleteAfter.Equal(t1.Add(3*time.Hour)), "delete after %s, the record says %s", t1.Add(3*time.Hour), rec.DeleteAfter)

	e.atTime(t0.Add(4 * time.Hour)) // a retention after the issue, before one after the deactivation
	e.ok(logical.UpdateOperation, "tidy", nil)
	require.False(t, heronKey(e, id).Deleted, "kept for expired_key_retention after its deactivation")
	e.atTime(t1.Add(3*time.Hour + time.Minute))
	e.ok(logical.UpdateOperation, "tidy", nil)
	require.True(t, heronKey(e, id).Deleted)
}

// Spec invariant 8 and "static-roles" (retired_key_retention): a static
// role's current key deactivated by hand in Heron is replaced by the pass;
// its retention counts from the deactivation the pass records, not from the
// key's issue hours before.
func TestRetention_StaticKeyDeactivatedByHandCountsFromItsDeactivation(t *testing.T) {
	e := getTestBackend(t)
	e.configure("development")
	t0 := time.Now()
	e.atTime(t0)
	e.ok(logical.CreateOperation, "static-roles/app", map[string]interface{}{"environment": "development", "retired_key_retention": "1h"})
	old := staticCreds(e, "app")["key_id"].(string)
	setActiveDirect(t, e, old, false)

	t1 := t0.Add(5 * time.Hour)
	e.atTime(t1)
	e.ok(logical.UpdateOperation, "tidy", nil)
	rec := recordOf(t, e.s, old)
	require.Equal(t, keyStateDeactivated, rec.State, "precondition: the pass replaced it")
	require.True(t, rec.DeleteAfter.Equal(t1.Add(time.Hour)), "delete after %s, the record says %s", t1.Add(time.Hour), rec.DeleteAfter)
	e.atTime(t1.Add(30 * time.Minute))
	e.ok(logical.UpdateOperation, "tidy", nil)
	require.False(t, heronKey(e, old).Deleted, "kept for retired_key_retention after its deactivation")
	e.ok(logical.DeleteOperation, "static-roles/app", nil)
	tidyAfterRetention(e)
}

// Spec "config" (rotation: deactivate the old key, delete it after
// old_key_retention) and invariant 8: a rotated-out admin key that Heron
// would not deactivate (PUT failing) is never deleted on the retention
// counted from its retirement: its retention counts from a deactivation
// that has not happened yet.
func TestRetention_RetiredAdminKeyNotYetDeactivatedIsNotDeleted(t *testing.T) {
	e := getTestBackend(t)
	e.ok(logical.CreateOperation, "config/development", map[string]interface{}{
		"admin_api_key": e.adminKey["development"], "base_url": e.srv.URL, "max_retries": 0,
		"rate_limit_per_minute": maxRateLimitPerMinute, "old_key_retention": "1h",
	})
	oldID := keyIDByToken(t, e, e.adminKey["development"])
	t0 := time.Now()
	e.atTime(t0)
	e.srv.FailNext("PUT", "/api/credentials/keys/", 1000, herontest.FaultStatus503)
	e.ok(logical.UpdateOperation, "config/development/rotate", nil)

	e.atTime(t0.Add(3 * time.Hour)) // past old_key_retention after the rotation
	_, _ = e.do(logical.UpdateOperation, "tidy", nil)
	k := heronKey(e, oldID)
	require.True(t, k.IsActive, "precondition: Heron still refuses the deactivation")
	require.False(t, k.Deleted, "never deleted before it was deactivated and kept old_key_retention")
	e.srv.ResetFaults()
	e.ok(logical.UpdateOperation, "tidy", nil)
	require.False(t, heronKey(e, oldID).IsActive)
	require.False(t, heronKey(e, oldID).Deleted, "kept old_key_retention after its deactivation")
}

// recordOf is the live (not deleted) record of key id, which must exist.
func recordOf(t *testing.T, s logical.Storage, id string) *trackedKey {
	t.Helper()
	rec := trackedRecord(t, s, id)
	require.NotNil(t, rec, "key %s has a live record", id)
	return rec
}
