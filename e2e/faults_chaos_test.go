//go:build e2e

package e2e

import (
	"fmt"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/heron-vault/vault-plugin-secrets-heron/herontest"
)

// TestFaultsIssuanceUnderRandomFaults: 500 issuances through Vault by 8
// concurrent clients while Heron answers 15% of requests with a 5xx and drops
// the connection after creating the key for 15% of creations. Every lease
// must name exactly one live key (the one whose token it returned: no
// duplicate from a retried POST), and after revoking everything and a tidy
// Heron holds no key of the engine's and Vault no lease, irrevocable or not.
func TestFaultsIssuanceUnderRandomFaults(t *testing.T) {
	t.Parallel()
	const (
		issuances = 500
		workers   = 8
		// An issuance fails only when every POST it may send (max_retries+1)
		// or every retry of a lookup fails: about 0.3^5, under one in 500.
		// Far more failures mean lost answers are not being recovered.
		maxFailures = issuances / 20
	)
	e := startEmulator(t)
	v := startDevVault(t)
	// The budget is not under test here; the default would stretch the run
	// to minutes.
	v.configureBoth(e, "rate_limit_per_minute=100000")
	v.writeRole("chaos", "environment=development", "ttl=1h")

	seed := time.Now().UnixNano()
	t.Logf("fault seed %d (the goroutines' interleaving still varies between runs)", seed)
	e.SetFaults(herontest.Faults{ErrorRate: 0.15, DropAfterPOSTRate: 0.15, Seed: seed})
	start := time.Now()
	leases, errs := issueMany(t, v, "chaos", issuances, workers)
	e.ResetFaults()
	t.Logf("%d issuances in %s: %d leases, %d failures", issuances, time.Since(start).Round(time.Millisecond), len(leases), len(errs))

	injected := map[string]int{}
	for _, r := range e.Requests() {
		if r.Injected {
			status := fmt.Sprint(r.Status)
			if r.Dropped {
				status = "dropped"
			}
			injected[r.Method+" "+status]++
		}
	}
	t.Logf("faults Heron injected: %v", injected)
	if injected["POST dropped"] == 0 || injected["POST 500"]+injected["POST 502"]+injected["POST 503"] == 0 {
		t.Fatalf("no lost or failed creation was injected (%v): the run tested nothing", injected)
	}
	for i, err := range errs {
		if i == 10 {
			t.Logf("... %d more failures", len(errs)-10)
			break
		}
		t.Logf("failed issuance: %s", strings.Join(strings.Fields(err.Error()), " "))
	}
	if len(errs) > maxFailures {
		t.Errorf("%d of %d issuances failed, want at most %d", len(errs), issuances, maxFailures)
	}

	byName := map[string][]herontest.KeyRecord{}
	for _, k := range e.LiveKeys("development") {
		byName[k.Name] = append(byName[k.Name], k)
	}
	seenID, seenName := map[string]bool{}, map[string]bool{}
	for _, l := range leases {
		if seenID[l.Data.KeyID] || seenName[l.Data.KeyName] {
			t.Errorf("lease %s: key %s (%q) was returned by another lease too", l.LeaseID, l.Data.KeyID, l.Data.KeyName)
		}
		seenID[l.Data.KeyID], seenName[l.Data.KeyName] = true, true
		live := byName[l.Data.KeyName]
		if len(live) != 1 || live[0].ID != l.Data.KeyID {
			ids := make([]string, len(live))
			for i, k := range live {
				ids[i] = k.ID
			}
			t.Errorf("lease %s: %d live keys named %q (%s), want exactly the returned key %s",
				l.LeaseID, len(live), l.Data.KeyName, strings.Join(ids, ", "), l.Data.KeyID)
			continue
		}
		if live[0].Token != l.Data.APIKey || !live[0].IsActive {
			t.Errorf("lease %s: api_key is not the token of key %s, or the key is inactive", l.LeaseID, l.Data.KeyID)
		}
	}
	if t.Failed() {
		return
	}

	v.run("lease", "revoke", "-prefix", "heron/creds/chaos")
	eventually(t, 2*time.Minute, "revoke -prefix deleting every leased key", func() error {
		if err := e.keysLeft(t, keyIDs(leases)); err != nil {
			return err
		}
		return v.leasesLeft("heron/creds/chaos/")
	})
	// Keys of failed issuances are left to the write-ahead records, which
	// tidy settles.
	counts := v.tidy()
	t.Logf("tidy: %v", counts)

	if live := faultIssuedLive(e, "development"); len(live) != 0 {
		var names []string
		for id, k := range live {
			names = append(names, fmt.Sprintf("%s (%q)", id, k.Name))
		}
		t.Errorf("%d keys of the engine still live in Heron after revoking every lease and tidy:\n  %s", len(live), strings.Join(names, "\n  "))
	}
	if tk := v.trackedKeys(); len(tk) != 0 {
		t.Errorf("engine still tracks %d keys", len(tk))
	}
	if n := v.irrevocableLeases(); n != 0 {
		t.Errorf("%d irrevocable leases, want 0", n)
	}
	if n := e.CountRequests(http.MethodPut, "", "development"); n != 0 {
		t.Errorf("%d deactivations, want 0: every lease was revoked, none ran out", n)
	}
}
