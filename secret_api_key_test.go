package heron

import (
	"context"
	"sync"
	"testing"
	"time"

	"github.com/hashicorp/vault/sdk/logical"
	"github.com/stretchr/testify/require"

	"github.com/heron-vault/vault-plugin-secrets-heron/herontest"
)

// Invariant 2 (the lease's end is counted from when Vault registers the
// lease): a revocation 1 s after Vault registered a 4 s lease whose record
// write took 3 s is a revocation (the key is deleted), not an expiry.
func TestLease_RevocationAfterASlowRecordWriteDeletes(t *testing.T) {
	e := getTestBackend(t)
	e.configure("development")
	e.role("r", map[string]interface{}{"ttl": "4s", "max_ttl": "1h"})
	t0 := time.Now()
	e.atTime(t0) // Heron answers, the record is stamped
	lease := e.issue("r")
	id := lease.Data["key_id"].(string)
	require.Equal(t, 4*time.Second, lease.Secret.TTL)
	lease.Secret.IssueTime = t0.Add(3 * time.Second) // Vault registers the lease after the 3 s write

	e.atTime(t0.Add(4 * time.Second)) // 1 s after Vault registered it, 3 s before its end
	require.NoError(t, e.revoke(lease))
	require.True(t, heronKey(e, id).Deleted, "an early revocation deletes the key")
	rec, err := getKeyRecord(t.Context(), e.s, id)
	require.NoError(t, err)
	require.Equal(t, reasonRevoked, rec.Reason)
}

// Invariant 2: until a renewal, when Vault ends the lease is the later of
// the record's end and Vault's own issue time plus TTL.
func TestLease_VaultLeaseEnd(t *testing.T) {
	t0 := time.Date(2030, 1, 1, 0, 0, 0, 0, time.UTC)
	rec := func(renewed bool) *trackedKey {
		k := &trackedKey{Expires: t0.Add(time.Hour)}
		if renewed {
			k.LastRenewed = t0.Add(time.Minute)
		}
		return k
	}
	secret := func(issued time.Time, ttl time.Duration) *logical.Secret {
		s := &logical.Secret{}
		s.IssueTime, s.TTL = issued, ttl
		return s
	}
	for _, tc := range []struct {
		name   string
		rec    *trackedKey
		secret *logical.Secret
		want   time.Time
	}{
		{"Vault registered the lease later", rec(false), secret(t0.Add(3*time.Second), time.Hour), t0.Add(time.Hour + 3*time.Second)},
		{"Vault's end is earlier (TTL clamped)", rec(false), secret(t0, 30*time.Minute), t0.Add(time.Hour)},
		{"renewed: the record's end", rec(true), secret(t0.Add(3*time.Second), time.Hour), t0.Add(time.Hour)},
		{"no secret", rec(false), nil, t0.Add(time.Hour)},
		{"no issue time", rec(false), secret(time.Time{}, time.Hour), t0.Add(time.Hour)},
		{"no TTL", rec(false), secret(t0.Add(3*time.Second), 0), t0.Add(time.Hour)},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got := vaultLeaseEnd(tc.rec, tc.secret)
			require.True(t, tc.want.Equal(got), "want %s, got %s", tc.want, got)
		})
	}
}

// Spec invariant 2: a revocation that fails while Heron is down and is
// retried by Vault after the lease's original end still deletes the key; an
// expiry whose first attempt failed stays an expiry (the decision of the
// first attempt holds for Vault's retries, whatever the clock says).
func TestRevoke_RetryAfterLeaseEndStillDeletes(t *testing.T) {
	e := getTestBackend(t)
	e.ok(logical.CreateOperation, "config/development", map[string]interface{}{
		"admin_api_key": e.adminKey["development"], "base_url": e.srv.URL, "max_retries": 0, "rate_limit_per_minute": maxRateLimitPerMinute,
	})
	e.role("r", map[string]interface{}{"ttl": "1h"})
	lease := e.issue("r")
	id := lease.Data["key_id"].(string)

	e.srv.FailNext("DELETE", "/api/credentials/keys/", 3, herontest.FaultStatus503)
	require.Error(t, e.revoke(lease), "Heron is down: Vault will retry")
	e.srv.ResetFaults()

	// Vault's retry lands after the lease would have ended.
	e.atTime(time.Now().Add(2 * time.Hour))
	require.NoError(t, e.revoke(lease))
	k, _ := e.srv.Key(id)
	require.True(t, k.Deleted, "a revocation deletes the key, however late its retry lands")
	rec, err := getTrackedKey(context.Background(), e.s, id)
	require.NoError(t, err)
	require.Nil(t, rec)

	// And an expiry whose first attempt failed stays an expiry: the decision
	// of the first attempt holds for Vault's retries whatever the clock says.
	e.b.now = time.Now
	lease2 := e.issue("r")
	id2 := lease2.Data["key_id"].(string)
	e.atTime(time.Now().Add(2 * time.Hour))
	e.srv.FailNext("PUT", "/api/credentials/keys/", 3, herontest.FaultStatus503)
	require.Error(t, e.revoke(lease2))
	e.srv.ResetFaults()
	e.atTime(time.Now())
	require.NoError(t, e.revoke(lease2))
	k2, _ := e.srv.Key(id2)
	require.False(t, k2.Deleted)
	require.False(t, k2.IsActive, "the expiry decided on the first attempt is carried out")
	e.atTime(time.Now().Add(100 * time.Hour))
	e.ok(logical.UpdateOperation, "tidy", nil)
}

// Spec invariant 2: the lease is counted from Heron's answer (as Vault counts
// it from registering the lease), so when Heron takes two hours of the
// engine's clock to create the key, an early revocation still deletes it.
func TestRevoke_SlowCreationDoesNotMakeARevocationAnExpiry(t *testing.T) {
	e := getTestBackend(t)
	e.configure("development")
	e.role("r", map[string]interface{}{"ttl": "1h"})
	clock := time.Now()
	var mu sync.Mutex
	e.b.now = func() time.Time { mu.Lock(); defer mu.Unlock(); return clock }
	api := scripted(e)
	// The POST takes two hours of the engine's clock (a queue, Retry-After, a
	// slow network: any delay between the request and Heron's answer).
	api.creating = func() { mu.Lock(); clock = clock.Add(2 * time.Hour); mu.Unlock() }

	lease := e.issue("r")
	require.NoError(t, e.revoke(lease), "revoked at once, right after Vault registered the lease")
	k, _ := e.srv.Key(lease.Data["key_id"].(string))
	require.True(t, k.Deleted, "an early revocation deletes")
}

// Spec invariant 2 and "The lease": the first revocation attempt fails and
// stores "delete"; the revoke did not go through, so the lease lives on and
// is renewed. When it later runs out, that is an expiry: the key is
// deactivated and retained, not deleted by the stale decision.
func TestRevoke_RenewalClearsAFailedRevocationsDecision(t *testing.T) {
	e := getTestBackend(t)
	e.ok(logical.CreateOperation, "config/development", map[string]interface{}{
		"admin_api_key": e.adminKey["development"], "base_url": e.srv.URL, "max_retries": 0, "rate_limit_per_minute": maxRateLimitPerMinute,
	})
	e.role("r", map[string]interface{}{"ttl": "1h", "max_ttl": "10h"})
	lease := e.issue("r")
	id := lease.Data["key_id"].(string)

	e.srv.FailNext("DELETE", "/api/credentials/keys/", 1, herontest.FaultStatus503)
	require.Error(t, e.revoke(lease), "Heron is down: the operator's revoke fails")
	e.srv.ResetFaults()

	resp, err := e.renew(lease, time.Hour)
	require.NoError(t, err)
	require.False(t, resp.IsError())

	// The renewed lease runs out: Vault's expiry revocation.
	e.atTime(time.Now().Add(2 * time.Hour))
	require.NoError(t, e.revoke(lease))
	k, _ := e.srv.Key(id)
	require.False(t, k.Deleted, "an expiry after a renewal deactivates the key: the failed revocation's decision is stale")
	require.False(t, k.IsActive)
	e.atTime(time.Now().Add(200 * time.Hour))
	e.ok(logical.UpdateOperation, "tidy", nil)
}

// Spec "The lease": a lease whose internal data has no key_id or no
// environment can never be revoked; the answer is logical.ErrUnrecoverable
// itself (the gRPC boundary compares by identity, a wrapped one would make
// Vault retry for ever).
func TestRevoke_SecretWithoutKeyIDIsUnrecoverable(t *testing.T) {
	e := getTestBackend(t)
	e.configure("development")
	for name, internal := range map[string]map[string]interface{}{
		"no key_id":      {"secret_type": secretTypeAPIKey, "environment": "development", "role": "r"},
		"no environment": {"secret_type": secretTypeAPIKey, "key_id": "k-1", "role": "r"},
	} {
		_, err := e.b.HandleRequest(context.Background(), &logical.Request{
			Operation: logical.RevokeOperation, Path: "creds/x", Storage: e.s,
			Secret: &logical.Secret{InternalData: internal},
		})
		require.True(t, err == logical.ErrUnrecoverable, "%s: want logical.ErrUnrecoverable itself, got %#v", name, err)
	}
}

// Invariant 2 across a failed renewal: a renewal to a shorter TTL whose
// record write was stored but reported an error fails, so Vault keeps the
// lease's end where it was; a revocation after the renewal's end but before
// Vault's is a revocation (the key is deleted), not an expiry. A renewal
// that took counts from its own end as before.
func TestLease_RenewalThatFailedAfterItsWriteKeepsVaultsEnd(t *testing.T) {
	for _, took := range []bool{false, true} {
		t.Run(map[bool]string{false: "renewal failed", true: "renewal took"}[took], func(t *testing.T) {
			e := getTestBackend(t)
			e.configure("development")
			e.role("app", map[string]interface{}{"ttl": "5m", "max_ttl": "1h"})
			t0 := time.Now()
			e.atTime(t0)
			lease := e.issue("app")
			id := lease.Data["key_id"].(string)

			e.atTime(t0.Add(time.Minute))
			if took {
				resp, err := e.renew(lease, 2*time.Minute)
				require.NoError(t, err)
				lease.Secret.TTL = resp.Secret.TTL // Vault's lease now ends at +3m
			} else {
				fs := &commitFailStorage{Storage: e.s, prefix: keyStoragePrefix, commit: true}
				real := e.s
				e.s = fs
				_, err := e.renew(lease, 2*time.Minute)
				require.Error(t, err, "the renewal's write reported an error")
				e.s = real // Vault's lease still ends at +5m
			}

			e.atTime(t0.Add(4 * time.Minute)) // after the renewal's end, before the lease's original one
			require.NoError(t, e.revoke(lease))
			k := heronKey(e, id)
			if took {
				require.False(t, k.Deleted, "an expiry deactivates")
				require.False(t, k.IsActive)
				e.allowLive[id] = true
			} else {
				require.True(t, k.Deleted, "a revocation before Vault's end deletes the key")
			}
		})
	}
}

// Within renewalTTLSlack Vault's TTL cannot tell whether a renewal that
// returned nearly the same TTL took: the later of the two ends is taken, so
// that a revocation is never mistaken for an expiry.
func TestLease_VaultLeaseEndAfterARenewalWithinTheSlack(t *testing.T) {
	t0 := time.Date(2030, 1, 1, 0, 0, 0, 0, time.UTC)
	rec := &trackedKey{LastRenewed: t0, Expires: t0.Add(5 * time.Minute), EndBefore: t0.Add(5*time.Minute + time.Second), RenewedTTL: 5 * time.Minute}
	got := vaultLeaseEnd(rec, &logical.Secret{LeaseOptions: logical.LeaseOptions{TTL: 5*time.Minute + time.Second, IssueTime: t0}})
	require.Equal(t, rec.EndBefore, got)
	rec.EndBefore = t0.Add(time.Minute) // earlier: the renewal's own end stands
	got = vaultLeaseEnd(rec, &logical.Secret{LeaseOptions: logical.LeaseOptions{TTL: 5 * time.Minute, IssueTime: t0}})
	require.Equal(t, rec.Expires, got)
}
