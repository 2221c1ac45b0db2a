//go:build e2e

package e2e

import (
	"net/http"
	"path/filepath"
	"testing"
	"time"
)

// sleepUntil sleeps until t, so that steps are placed on the lease's own
// timeline rather than after accumulated CLI latency.
func sleepUntil(t time.Time) { time.Sleep(time.Until(t)) }

// leaseIssueTime is when Vault issued the lease.
func (v *vault) leaseIssueTime(leaseID string) time.Time {
	v.t.Helper()
	var r struct {
		Data struct {
			IssueTime time.Time `json:"issue_time"`
		} `json:"data"`
	}
	v.runJSON(&r, "lease", "lookup", "-format=json", leaseID)
	if r.Data.IssueTime.IsZero() {
		v.t.Fatalf("lease lookup %s: no issue_time", leaseID)
	}
	return r.Data.IssueTime
}

// TestLeaseRenew: renewing extends the lease (and so the key's life) within
// max_ttl, is capped near max_ttl, and at max_ttl Vault expires the lease and
// the key ends deactivated, not deleted. A renewed lease revoked after its
// original end but before its renewed end is a revocation: deleted.
func TestLeaseRenew(t *testing.T) {
	t.Parallel()
	e := startEmulator(t)
	v := startDevVault(t)
	v.configureBoth(e)
	v.writeRole("renew", "environment=development", "ttl=4s", "max_ttl=8s")
	v.writeRole("renew-increment", "environment=development", "ttl=3s", "max_ttl=30s")

	c := v.mustIssue("", "renew")
	if c.LeaseDuration != 4 || !c.Renewable {
		t.Fatalf("lease duration %ds renewable=%t, want 4s renewable", c.LeaseDuration, c.Renewable)
	}
	revoked := v.mustIssue("", "renew-increment")
	// Vault's issue time, not the test's clock: max_ttl counts from it, and
	// the read itself can take a second on a loaded machine.
	start := v.leaseIssueTime(c.LeaseID)

	// The 3s lease first, well before its end: on a loaded machine one CLI
	// call can take a second, and a renewal that lands after the end finds
	// the lease gone.
	sleepUntil(start.Add(1500 * time.Millisecond))
	if r := v.renew(revoked.LeaseID, "-increment=10s"); r.LeaseDuration != 10 {
		t.Fatalf("renew -increment=10s of a 3s lease (max_ttl 30s): lease_duration %d, want 10", r.LeaseDuration)
	}
	sleepUntil(start.Add(2 * time.Second))
	if r := v.renew(c.LeaseID); r.LeaseDuration != 4 {
		t.Fatalf("renew 2s into a 4s lease (max_ttl 8s): lease_duration %d, want 4", r.LeaseDuration)
	}

	// Past the original ends (4s and 3s): only the renewals keep the keys alive.
	sleepUntil(start.Add(5 * time.Second))
	e.requireWorks(t, c.Data.APIKey)
	e.requireWorks(t, revoked.Data.APIKey)

	r := v.renew(c.LeaseID)
	if r.LeaseDuration < 1 || r.LeaseDuration > 3 {
		t.Fatalf("renew 5s into a lease with max_ttl 8s: lease_duration %d, want it capped to the 3s left (1..3)", r.LeaseDuration)
	}
	t.Logf("capped renewal: %ds, warnings %q", r.LeaseDuration, r.Warnings)

	// Well inside the renewed end (~12s) and past the original one (~3s): an
	// engine that forgot the renewal would take this revocation for the lease
	// running out and only deactivate.
	v.run("lease", "revoke", revoked.LeaseID)
	e.waitState(t, revoked.Data.KeyID, stateDeleted, 20*time.Second)

	k := e.requireDeactivatedNotDeleted(t, c.Data.KeyID, c.Data.APIKey, 30*time.Second)
	if lived := k.DeactivatedAt.Sub(k.Created); lived < 7*time.Second {
		t.Errorf("key deactivated %s after creation; with renewals it should live until max_ttl (8s)", lived)
	}
	if ls := v.leasesUnder("heron/creds/renew/"); len(ls) != 0 {
		t.Errorf("Vault still holds leases %v after max_ttl", ls)
	}
}

// TestMountMaxTTLClamp: with the mount tuned below the role's ttl, Vault's
// clamp is the lease's real end, and running out at that end still
// deactivates rather than deletes (the engine must know the clamped end).
func TestMountMaxTTLClamp(t *testing.T) {
	t.Parallel()
	e := startEmulator(t)
	v := startDevVault(t)
	v.configureBoth(e)
	v.run("secrets", "tune", "-max-lease-ttl=4s", "heron/")
	v.writeRole("long", "environment=development", "ttl=1h")

	c := v.mustIssue("", "long")
	if c.LeaseDuration < 3 || c.LeaseDuration > 4 {
		t.Fatalf("lease_duration %d on a mount tuned to max 4s, want 4", c.LeaseDuration)
	}
	e.requireWorks(t, c.Data.APIKey)

	k := e.requireDeactivatedNotDeleted(t, c.Data.KeyID, c.Data.APIKey, 30*time.Second)
	if lived := k.DeactivatedAt.Sub(k.Created); lived < 3*time.Second {
		t.Errorf("key deactivated %s after creation, before the 4s clamp ran out", lived)
	}
}

// TestTokenRevokeAndDisable: revoking the token that read creds deletes its
// keys (and only its keys); disabling the mount deletes every remaining key.
func TestTokenRevokeAndDisable(t *testing.T) {
	t.Parallel()
	e := startEmulator(t)
	v := startDevVault(t)
	v.configureBoth(e)
	v.writeRole("app", "environment=development", "ttl=1h")
	v.writeRole("app-prod", "environment=production", "ttl=1h")

	child := v.tokenWithPolicy("heron-creds", filepath.Join(v.dir, "heron-creds.hcl"),
		`path "heron/creds/*" { capabilities = ["read", "update"] }`)

	c1 := v.mustIssue(child, "app")
	c2 := v.mustIssue(child, "app")
	root1 := v.mustIssue("", "app")
	root2 := v.mustIssue("", "app-prod")
	for _, c := range []lease{c1, c2, root1, root2} {
		e.requireWorks(t, c.Data.APIKey)
	}

	v.run("token", "revoke", child)
	for _, c := range []lease{c1, c2} {
		e.waitState(t, c.Data.KeyID, stateDeleted, 30*time.Second)
		e.requireRejected(t, c.Data.APIKey)
	}
	e.requireWorks(t, root1.Data.APIKey)
	e.requireWorks(t, root2.Data.APIKey)

	v.run("secrets", "disable", "heron")
	for _, c := range []lease{root1, root2} {
		e.waitState(t, c.Data.KeyID, stateDeleted, 30*time.Second)
		e.requireRejected(t, c.Data.APIKey)
	}
	if n := e.CountRequests(http.MethodPut, "", ""); n != 0 {
		t.Errorf("%d deactivations, want 0: every lease here was revoked, none ran out", n)
	}
	for env, admin := range map[string]string{"development": e.devKey, "production": e.prodKey} {
		if live := e.LiveKeys(env); len(live) != 1 || live[0].Token != admin {
			t.Errorf("%s has %d live keys after disable, want only the admin key", env, len(live))
		}
	}
	if n := v.irrevocableLeases(); n != 0 {
		t.Errorf("%d irrevocable leases, want 0", n)
	}
}
