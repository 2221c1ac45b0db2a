//go:build e2e

package e2e

import (
	"net/http"
	"testing"
	"time"
)

// TestUpstreamUserAgent: every request the engine sends to Heron names the
// plugin and its version; requests of the cleanup pass (tidy) add
// " (background)" so Heron-side logs can tell them from user-driven calls.
func TestUpstreamUserAgent(t *testing.T) {
	t.Parallel()
	background := userAgent + " (background)"
	e := startEmulator(t)
	v := startDevVault(t)

	// Config write: the verify call.
	v.configureBoth(e)
	reqs := e.engineRequests()
	if len(reqs) == 0 {
		t.Fatal("no upstream request on config write; is verify off?")
	}
	for _, r := range reqs {
		if r.UserAgent != userAgent {
			t.Errorf("config verify: %s, want User-Agent %q", describe(r), userAgent)
		}
	}

	// User-driven calls: issue, revoke, renew, read a key, and a lease that runs out.
	v.writeRole("app", "environment=development", "ttl=1h")
	v.writeRole("short", "environment=development", "ttl=2s", "expired_key_retention=1s")
	revoked := v.mustIssue("", "app")
	kept := v.mustIssue("", "app")
	short := v.mustIssue("", "short")
	v.renew(kept.LeaseID)
	v.run("read", "heron/keys/"+kept.Data.KeyID)
	v.run("lease", "revoke", revoked.LeaseID)
	e.waitState(t, revoked.Data.KeyID, stateDeleted, 20*time.Second)
	e.requireDeactivatedNotDeleted(t, short.Data.KeyID, short.Data.APIKey, 30*time.Second)

	methods := map[string]int{}
	for _, r := range e.engineRequests() {
		methods[r.Method]++
		switch {
		case r.UserAgent == userAgent:
		case r.UserAgent == background && r.Method == http.MethodGet:
			// Vault's periodic pass may run meanwhile; it only lists here.
		default:
			t.Errorf("user-driven phase: %s, want User-Agent %q", describe(r), userAgent)
		}
	}
	for _, m := range []string{http.MethodGet, http.MethodPost, http.MethodPut, http.MethodDelete} {
		if methods[m] == 0 {
			t.Errorf("no %s request in the user-driven phase; the check above saw %v", m, methods)
		}
	}

	// Background: tidy lists (reconcile) and deletes the expired key, whose
	// one-second retention has passed by now.
	e.ResetRequests()
	time.Sleep(time.Second)
	counts := v.tidy()
	e.waitState(t, short.Data.KeyID, stateDeleted, time.Second)
	reqs = e.engineRequests()
	if len(reqs) == 0 {
		t.Fatalf("tidy sent no upstream request (tidy said %v)", counts)
	}
	sawDelete := false
	for _, r := range reqs {
		if r.UserAgent != background {
			t.Errorf("tidy: %s, want User-Agent %q", describe(r), background)
		}
		sawDelete = sawDelete || r.Method == http.MethodDelete
	}
	if !sawDelete {
		t.Errorf("tidy did not delete the expired key (tidy said %v)", counts)
	}
}
