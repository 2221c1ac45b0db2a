package heron

import (
	"testing"
	"time"

	"github.com/hashicorp/vault/sdk/logical"
	"github.com/stretchr/testify/require"
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
