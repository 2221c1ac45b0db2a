//go:build e2e

package e2e

import (
	"fmt"
	"net/http"
	"os"
	"strconv"
	"testing"
	"time"
)

// massLeasesEnv sets how many leases TestFaultsMassRevokeUnderBudget revokes.
// The default of 300 keeps the package run short (about 75s of revocation at
// the budget below); HERON_E2E_MASS_LEASES=2000 is the full-size scenario and
// needs about 9 minutes, so run it with -timeout 20m:
//
//	HERON_E2E_MASS_LEASES=2000 go test ./e2e/ -count=1 -timeout 20m -run TestFaultsMassRevokeUnderBudget
const massLeasesEnv = "HERON_E2E_MASS_LEASES"

// TestFaultsMassRevokeUnderBudget: Heron allows 500 requests a minute and the
// engine's budget is 240. Revoking every lease of a role by prefix must
// delete every key without the engine ever sending more than its budget (+1,
// the token bucket's burst) in any sliding minute, and without a single
// lease given up as irrevocable: budget waits must not turn into failures
// that exhaust Vault's revocation retries.
func TestFaultsMassRevokeUnderBudget(t *testing.T) {
	t.Parallel()
	n := 300
	if s := os.Getenv(massLeasesEnv); s != "" {
		v, err := strconv.Atoi(s)
		if err != nil || v < 1 {
			t.Fatalf("%s=%q: want a positive number of leases", massLeasesEnv, s)
		}
		n = v
	}
	t.Run(fmt.Sprintf("leases=%d", n), func(t *testing.T) { faultsMassRevoke(t, n) })
}

func faultsMassRevoke(t *testing.T, n int) {
	const (
		heronLimit = 500
		budget     = 240
	)
	e := startEmulator(t)
	v := startDevVault(t)
	// Issuing is not under test: a budget this high makes it quick, and
	// the emulator stays unlimited until the revocation starts.
	v.configureBoth(e, "rate_limit_per_minute=100000")
	v.writeRole("mass", "environment=development", "ttl=1h")

	start := time.Now()
	leases, errs := issueMany(t, v, "mass", n, 8)
	if len(errs) > 0 {
		t.Fatalf("%d of %d issuances failed, first: %v", len(errs), n, errs[0])
	}
	t.Logf("issued %d leases in %s", n, time.Since(start).Round(time.Millisecond))

	e.SetRateLimit(heronLimit)
	v.run("write", "heron/config/development", fmt.Sprintf("rate_limit_per_minute=%d", budget))
	// What the window check below judges is the revocation alone: issuance
	// ran at the old budget.
	e.ResetRequests()

	start = time.Now()
	v.run("lease", "revoke", "-prefix", "heron/creds/mass")
	// At the budget the revocation cannot take less than n/budget minutes.
	deadline := time.Duration(float64(n)/budget*float64(time.Minute)) + 2*time.Minute
	ids := keyIDs(leases)
	eventually(t, deadline, "revoke -prefix deleting every key", func() error { return e.keysLeft(t, ids) })
	took := time.Since(start)
	t.Logf("revoked %d leases in %s (%.0f deletions/minute, budget %d)", n, took.Round(time.Millisecond), float64(n)/took.Minutes(), budget)

	eventually(t, 30*time.Second, "Vault dropping the revoked leases", func() error { return v.leasesLeft("heron/creds/mass/") })
	if got := e.MaxInWindow("development", time.Minute); got > budget+1 {
		t.Errorf("the engine sent %d requests to development within one minute, budget %d (+1 tolerated)", got, budget)
	} else {
		t.Logf("most requests in any sliding minute: %d (budget %d)", got, budget)
	}
	limited := 0
	for _, r := range e.Requests() {
		if r.Status == http.StatusTooManyRequests {
			limited++
		}
	}
	if limited > 0 {
		t.Errorf("Heron answered 429 %d times: at %d/min of Heron's %d the engine should never be limited", limited, budget, heronLimit)
	}
	if n := v.irrevocableLeases(); n != 0 {
		t.Errorf("%d irrevocable leases, want 0", n)
	}
	if tk := v.trackedKeys(); len(tk) != 0 {
		t.Errorf("engine still tracks %d keys after revoking every lease", len(tk))
	}
	if live := faultIssuedLive(e, "development"); len(live) != 0 {
		t.Errorf("%d keys of the engine still live in development", len(live))
	}
}
