//go:build e2e

package e2e

import (
	"fmt"
	"testing"
	"time"
)

// TestFaultsMassRevokeBelowVaultsDeadline: with a budget so small that most
// of Vault's queued revocations cannot get a request slot within their 90 s
// deadline, no lease may end irrevocable and no key may be forgotten. The
// engine fails the first attempts retryably, then releases the lease and
// leaves the key to its cleanup pass; raising the budget and running tidy
// must then delete every key.
func TestFaultsMassRevokeBelowVaultsDeadline(t *testing.T) {
	t.Parallel()
	const (
		n      = 40
		budget = 2 // per minute: about 3 revocations fit in Vault's 90 s window
	)
	e := startEmulator(t)
	v := startDevVault(t)
	v.configureBoth(e, "rate_limit_per_minute=100000")
	v.writeRole("starved", "environment=development", "ttl=1h")
	leases, errs := issueMany(t, v, "starved", n, 8)
	if len(errs) > 0 {
		t.Fatalf("%d of %d issuances failed, first: %v", len(errs), n, errs[0])
	}
	v.run("write", "heron/config/development", fmt.Sprintf("rate_limit_per_minute=%d", budget), "verify=false")

	v.run("lease", "revoke", "-prefix", "heron/creds/starved")
	// Vault retries a failed revocation after about 20 s and 40 s more; the
	// engine releases the lease at its third rate-limited attempt.
	eventually(t, 4*time.Minute, "Vault releasing every lease", func() error { return v.leasesLeft("heron/creds/starved/") })
	if got := v.irrevocableLeases(); got != 0 {
		t.Fatalf("%d irrevocable leases, want 0", got)
	}

	// Every key is either deleted already or tracked for the cleanup pass.
	tracked := v.trackedKeys()
	pending := 0
	for _, l := range leases {
		k := e.key(t, l.Data.KeyID)
		if stateOf(k) == stateDeleted {
			continue
		}
		info, ok := tracked[l.Data.KeyID]
		if !ok || info["pending"] != "delete" {
			t.Errorf("key %s is live in Heron but keys/ shows %v: nothing would delete it", l.Data.KeyID, info)
		}
		pending++
	}
	t.Logf("%d of %d keys deleted within Vault's attempts, %d left to the cleanup pass", n-pending, n, pending)
	if pending == 0 {
		t.Fatal("every revocation found budget: the test did not starve the engine")
	}

	v.run("write", "heron/config/development", "rate_limit_per_minute=100000", "verify=false")
	counts := v.tidy()
	// The periodic pass may have finished a few meanwhile, at the old budget.
	if fmt.Sprint(counts["pending_revocations"]) == "0" {
		t.Errorf("tidy finished no deferred revocation, %d were pending (counts %v)", pending, counts)
	}
	if live := faultIssuedLive(e, "development"); len(live) != 0 {
		t.Errorf("%d keys of the engine still live after tidy", len(live))
	}
	if tk := v.trackedKeys(); len(tk) != 0 {
		t.Errorf("engine still tracks %d keys", len(tk))
	}
}
