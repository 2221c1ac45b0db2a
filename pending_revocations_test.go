package heron

// Revocations the cleanup pass carries out for a lease that was released
// (cleanup.go, finishPending): decided and written from a read of the
// record made under its lock, not from the pass's earlier list.

import (
	"context"
	"testing"
	"time"

	"github.com/hashicorp/vault/sdk/logical"
	"github.com/stretchr/testify/require"

	"github.com/heron-vault/vault-plugin-secrets-heron/herontest"
)

// pendingDeactivation leaves a lease's key pending deactivation: Vault never
// revoked the lease, and the pass that found it overdue could not reach
// Heron. It returns the key's id and the time the test's clock stands at.
func pendingDeactivation(t *testing.T, e *testEnv) (string, time.Time) {
	t.Helper()
	e.configure("development")
	e.role("r", map[string]interface{}{"ttl": "1h", "expired_key_retention": "24h"})
	t0 := time.Now()
	e.atTime(t0)
	id := e.issue("r").Data["key_id"].(string)
	t1 := t0.Add(3 * time.Hour)
	e.atTime(t1)
	e.srv.FailNext("PUT", "/api/credentials/keys/", 50, herontest.FaultStatus503)
	_, _ = e.do(logical.UpdateOperation, "tidy", nil)
	e.srv.ResetFaults()
	rec := recordOf(t, e.s, id)
	require.Equal(t, pendingDeactivate, rec.Pending, "precondition: the deactivation is pending")
	return id, t1
}

// The pass reads a pending key's record three times: the sweep, the list of
// retained keys (which the pass acts on), and finishPending's read under
// the record's lock. heldListRead is the second.
const heldListRead = 1

// Spec invariants 1, 7 and 8 (a second instance on the same storage; a
// retention counts from the deactivation): another instance's pass finishes
// a pending deactivation after this pass listed the key as pending. This
// pass re-reads the record under its lock and leaves the key retained: not
// deleted (as a pending deletion would be), its retention counted from the
// one deactivation.
func TestPendingRevocations_KeyFinishedByAnotherInstanceMeanwhileStaysRetained(t *testing.T) {
	var hs *holdRead
	e := newTestEnv(t, withStorage(func(s logical.Storage) logical.Storage { hs = &holdRead{Storage: s}; return hs }))
	id, t1 := pendingDeactivation(t, e)
	other := e.start()
	other.now = func() time.Time { return t1.Add(time.Minute) }
	e.atTime(t1.Add(2 * time.Minute))

	hs.arm(keyStoragePrefix+id, heldListRead)
	tidied := make(chan error, 1)
	go func() {
		_, err := e.do(logical.UpdateOperation, "tidy", nil)
		tidied <- err
	}()
	<-hs.reached // this pass has listed the key as pending
	resp, err := mountDo(other, e.s, logical.UpdateOperation, "tidy", nil)
	require.NoError(t, err)
	require.False(t, resp != nil && resp.IsError(), "%v", resp)
	first := recordOf(t, e.s, id)
	require.Equal(t, keyStateDeactivated, first.State, "precondition: the other instance finished it")
	close(hs.release)
	require.NoError(t, <-tidied)

	require.False(t, heronKey(e, id).Deleted, "an expiry's key is kept for its retention")
	rec := recordOf(t, e.s, id)
	require.NotNil(t, rec)
	require.Equal(t, keyStateDeactivated, rec.State)
	require.True(t, rec.DeleteAfter.Equal(first.DeleteAfter), "delete after %s, the record says %s", first.DeleteAfter, rec.DeleteAfter)
	tidyAfterRetention(e)
}

// Spec invariant 7 and "Who holds a key, quarantine" (its lease still ends
// as usual): an operator quarantines a key after the pass listed it as
// pending deactivation. The pass finishes the deactivation from the record
// read under the lock, so the record keeps the quarantine and who made it.
func TestPendingRevocations_QuarantineMadeAfterThePassListedTheKeyIsKept(t *testing.T) {
	var hs *holdRead
	e := newTestEnv(t, withStorage(func(s logical.Storage) logical.Storage { hs = &holdRead{Storage: s}; return hs }))
	id, t1 := pendingDeactivation(t, e)
	e.atTime(t1.Add(time.Minute))

	hs.arm(keyStoragePrefix+id, heldListRead)
	tidied := make(chan error, 1)
	go func() {
		_, err := e.do(logical.UpdateOperation, "tidy", nil)
		tidied <- err
	}()
	<-hs.reached
	resp, err := doAs(e, logical.UpdateOperation, "keys/"+id+"/deactivate", nil, "ent-sec", "oidc-security-alice")
	require.NoError(t, err)
	require.False(t, resp.IsError(), "%v", resp.Error())
	close(hs.release)
	require.NoError(t, <-tidied)

	rec := recordOf(t, e.s, id)
	require.NotNil(t, rec)
	require.Equal(t, keyStateDeactivated, rec.State, "the pending deactivation is finished")
	require.True(t, rec.Quarantined, "the quarantine written meanwhile is kept")
	require.Equal(t, "oidc-security-alice", rec.QuarantinedBy)
	tidyAfterRetention(e)
}

// Spec invariant 2 ("expiry or revocation" decided once, kept across Vault's
// retries) and the deferred revocation: a lease whose key the pass already
// holds as pending (deactivation decided, Heron unreachable) is revoked by
// Vault after all. The revocation succeeds without another call to Heron:
// the pass carries out the decision already taken.
func TestPendingRevocations_LeaseRevocationLeavesThePendingKeyToThePass(t *testing.T) {
	e := getTestBackend(t)
	e.configure("development")
	e.role("r", map[string]interface{}{"ttl": "1h", "expired_key_retention": "24h"})
	t0 := time.Now()
	e.atTime(t0)
	lease := e.issue("r")
	id := lease.Data["key_id"].(string)
	e.atTime(t0.Add(3 * time.Hour))
	e.srv.FailNext("PUT", "/api/credentials/keys/", 50, herontest.FaultStatus503)
	_, _ = e.do(logical.UpdateOperation, "tidy", nil)
	require.Equal(t, pendingDeactivate, recordOf(t, e.s, id).Pending, "precondition: the deactivation is pending")

	e.srv.FailNext("DELETE", "/api/credentials/keys/", 50, herontest.FaultStatus503)
	require.NoError(t, e.revoke(lease), "the revocation is the pass's to finish")
	e.srv.ResetFaults()
	require.Equal(t, pendingDeactivate, recordOf(t, e.s, id).Pending)

	e.ok(logical.UpdateOperation, "tidy", nil)
	rec := recordOf(t, e.s, id)
	require.Equal(t, keyStateDeactivated, rec.State, "the pass finishes the decision taken: an expiry")
	tidyAfterRetention(e)
}

// Spec invariant 2 (decided once, kept): the pass decided that an overdue
// key whose retention is over too is to be deleted, but could not carry it
// out (the key was marked unreachable). Vault's revocation of the lease that
// arrives then carries out that decision: the key is deleted, not
// deactivated and retained as the lease's expiry alone would say.
func TestPendingRevocations_LeaseRevocationCarriesOutThePassDeleteDecision(t *testing.T) {
	e := getTestBackend(t)
	e.configure("development")
	e.role("r", map[string]interface{}{"ttl": "1h", "expired_key_retention": "1h"})
	t0 := time.Now()
	e.atTime(t0)
	lease := e.issue("r")
	id := lease.Data["key_id"].(string)
	rec := recordOf(t, e.s, id)
	rec.Unreachable = true
	require.NoError(t, putTrackedKey(context.Background(), e.s, rec))
	e.atTime(t0.Add(5 * time.Hour)) // past the lease, the grace and the retention
	e.ok(logical.UpdateOperation, "tidy", nil)
	rec = recordOf(t, e.s, id)
	require.Equal(t, pendingDelete, rec.Pending, "precondition: the pass decided to delete it")
	require.Empty(t, rec.Revoke)

	require.NoError(t, e.revoke(lease))
	require.True(t, heronKey(e, id).Deleted, "deleted as the pass decided")
}
