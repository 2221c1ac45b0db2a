package heron

// Keys that outlived their lease with no revocation from Vault (cleanup.go,
// sweepOverdue): ended by the pass as the lease's revocation decided, from a
// read of the record made under its lock.

import (
	"context"
	"testing"
	"time"

	"github.com/hashicorp/vault/sdk/logical"
	"github.com/stretchr/testify/require"

	"github.com/heron-vault/vault-plugin-secrets-heron/herontest"
)

// Spec invariant 2 (a revocation that is not an expiry deletes the key, and
// the decision is kept): Vault's revocation of a live lease failed (Heron
// 503) and Vault gave the lease up. When the pass ends the overdue key it
// carries out that decision: the key is deleted, not deactivated and kept
// for a retention as an expiry would be.
func TestOverdueKeys_RevocationsDeleteDecisionIsCarriedOut(t *testing.T) {
	e := getTestBackend(t)
	e.configure("development")
	e.role("r", map[string]interface{}{"ttl": "1h", "expired_key_retention": "24h"})
	t0 := time.Now()
	e.atTime(t0)
	lease := e.issue("r")
	id := lease.Data["key_id"].(string)

	e.atTime(t0.Add(10 * time.Minute)) // well before the lease's end: a revocation
	e.srv.FailNext("DELETE", "/api/credentials/keys/", 20, herontest.FaultStatus503)
	require.Error(t, e.revoke(lease))
	e.srv.ResetFaults()
	require.Equal(t, pendingDelete, trackedRecord(t, e.s, id).Revoke, "precondition: the decision is recorded")

	e.atTime(t0.Add(3 * time.Hour)) // Vault gave up; the lease is long over
	resp := e.ok(logical.UpdateOperation, "tidy", nil)
	require.Equal(t, 1, resp.Data["overdue_keys"])
	require.True(t, heronKey(e, id).Deleted, "deleted as the revocation decided, not kept as an expiry")
}

// Spec invariants 1 and 7: an operator's keys/<id>/revoke that lands after
// the pass read an overdue key's record, and before it took the record's
// lock, stands: the pass re-reads the record under the lock, finds the
// tombstone, and neither counts the key as overdue nor marks the tombstone
// pending.
func TestOverdueKeys_PassLeavesAKeyRevokedAfterItReadTheRecord(t *testing.T) {
	var hs *holdRead
	e := newTestEnv(t, withStorage(func(s logical.Storage) logical.Storage { hs = &holdRead{Storage: s}; return hs }))
	e.configure("development")
	e.role("r", map[string]interface{}{"ttl": "1h", "expired_key_retention": "24h"})
	t0 := time.Now()
	e.atTime(t0)
	id := e.issue("r").Data["key_id"].(string) // no revocation will come
	e.atTime(t0.Add(3 * time.Hour))

	hs.arm(keyStoragePrefix+id, 0)
	type result struct {
		resp *logical.Response
		err  error
	}
	tidied := make(chan result, 1)
	go func() {
		resp, err := e.do(logical.UpdateOperation, "tidy", nil)
		tidied <- result{resp, err}
	}()
	<-hs.reached // the sweep has read the record: active, overdue
	resp, err := doAs(e, logical.UpdateOperation, "keys/"+id+"/revoke", nil, "ent-sec", "oidc-security-alice")
	require.NoError(t, err)
	require.False(t, resp.IsError(), "%v", resp.Error())
	close(hs.release)
	r := <-tidied
	require.NoError(t, r.err)
	require.Equal(t, 0, r.resp.Data["overdue_keys"], "the key was revoked meanwhile: nothing overdue")

	rec, err := getKeyRecord(context.Background(), e.s, id)
	require.NoError(t, err)
	require.Equal(t, keyStateDeleted, rec.State)
	require.Equal(t, reasonRevokedByOperator, rec.Reason)
	require.Empty(t, rec.Pending, "a tombstone is never pending")
}
