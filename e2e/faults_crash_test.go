//go:build e2e

package e2e

import (
	"fmt"
	"testing"
	"time"
)

// TestFaultsPluginKilledMidIssuance: 20 times, Heron creates the key and the
// plugin is SIGKILLed before the answer reaches it, while `read creds` is in
// flight. Each crash leaves a key nobody holds the token of, named only by the
// write-ahead record written before the POST. After tidy (which settles such
// records without waiting for Vault's 2-minute rollback age), Heron may hold
// no live key that neither the engine tracks nor a client holds a lease for,
// and every lease the clients did get must still work and revoke cleanly.
func TestFaultsPluginKilledMidIssuance(t *testing.T) {
	t.Parallel()
	const kills = 20
	e, hold := startFaultHoldingEmulator(t)
	v := startDevVault(t)
	v.configureBoth(e, "rate_limit_per_minute=100000")
	v.writeRole("crash", "environment=development", "ttl=1h")
	c := faultAPIClient(t, v)

	var (
		leases []lease
		failed int // interrupted reads that failed
		held   []heldCreate
	)
	for i := range kills {
		// Vault 1.21 rarely retries a request on a restarted plugin: the
		// request in flight and often the next one fail before one spawns
		// a new plugin process. Wait for that before the next round.
		eventually(t, 30*time.Second, "the plugin serving again", func() error {
			_, err := c.Logical().Read("heron/roles/crash")
			return err
		})
		// A lease issued between crashes must survive the cleanup below.
		l, err := v.issue("", "crash")
		if err != nil {
			t.Fatalf("round %d: issuing with no fault injected: %v", i, err)
		}
		leases = append(leases, l)

		hold.arm(1)
		type result struct {
			l   lease
			err error
		}
		done := make(chan result, 1)
		go func() {
			l, err := v.issue("", "crash")
			done <- result{l, err}
		}()

		var h heldCreate
		select {
		case h = <-hold.held:
		case r := <-done:
			t.Fatalf("round %d: read creds finished (lease %q, error %v) without its key creation being held", i, r.l.LeaseID, r.err)
		case <-time.After(60 * time.Second):
			t.Fatalf("round %d: no key creation reached Heron within 60s", i)
		}
		held = append(held, h)
		if k, ok := e.Key(h.ID); !ok || stateOf(k) != stateActive {
			t.Fatalf("round %d: held key %s is not live in Heron", i, h.ID)
		}
		pids := faultKillPlugin(t, v)

		var r result
		select {
		case r = <-done:
		case <-time.After(2 * time.Minute):
			t.Fatalf("round %d: read creds still running 2m after the plugin (pids %v) was killed", i, pids)
		}
		hold.arm(0)
		if r.err != nil {
			failed++
			continue
		}
		// A Vault that retries on a fresh plugin would answer with a lease
		// for a new key; never with the one whose answer was lost.
		if r.l.Data.KeyName == h.Name || r.l.Data.KeyID == h.ID {
			t.Fatalf("round %d: the lease returned the key whose answer never reached the plugin (%s %q)", i, h.ID, h.Name)
		}
		leases = append(leases, r.l)
	}
	t.Logf("%d reads interrupted by kill -9: %d failed, %d answered with a lease on a restarted plugin", kills, failed, kills-failed)

	// The scenario must really have happened: keys that only the write-ahead
	// records name. Vault's own rollback may have settled some already if
	// this ran for more than two minutes, so only some must still be there.
	orphaned := 0
	for _, h := range held {
		if k, ok := e.Key(h.ID); ok && !k.Deleted {
			orphaned++
		}
	}
	if orphaned == 0 {
		t.Fatalf("none of the %d keys created before a crash is live before tidy: the crashes left nothing to clean up, so the test proved nothing", kills)
	}
	t.Logf("%d of %d crash-orphaned keys live before tidy", orphaned, kills)

	// The killed instance's creation records are another instance's to the
	// restarted plugin: settled once two minutes old (its requests could
	// still be running, were it a reload), so tidy keeps at it a while.
	eventually(t, 4*time.Minute, "tidy settling every crash-interrupted issuance", func() error {
		counts := v.tidy()
		for _, h := range held {
			if k, ok := e.Key(h.ID); ok && !k.Deleted {
				return fmt.Errorf("key %s (%q) created before a crash is still live (tidy said %v)", h.ID, h.Name, counts)
			}
		}
		return nil
	})
	faultRequireNoUntracked(t, e, v, "development", leases)

	tracked := v.trackedKeys()
	live := faultIssuedLive(e, "development")
	for _, l := range leases {
		if _, ok := tracked[l.Data.KeyID]; !ok {
			t.Errorf("lease %s: key %s is not tracked by the engine", l.LeaseID, l.Data.KeyID)
		}
		if _, ok := live[l.Data.KeyID]; !ok {
			t.Errorf("lease %s: key %s is not live in Heron", l.LeaseID, l.Data.KeyID)
			continue
		}
		e.requireWorks(t, l.Data.APIKey)
	}
	if len(live) != len(leases) {
		t.Errorf("%d live issued keys in Heron for %d leases", len(live), len(leases))
	}
	if t.Failed() {
		return
	}

	v.run("lease", "revoke", "-prefix", "heron/creds/crash")
	eventually(t, 60*time.Second, "revoking every surviving lease", func() error {
		if n := len(faultIssuedLive(e, "development")); n != 0 {
			return fmt.Errorf("%d issued keys still live", n)
		}
		return v.leasesLeft("heron/creds/crash/")
	})
	if n := v.irrevocableLeases(); n != 0 {
		t.Errorf("%d irrevocable leases, want 0", n)
	}
	if tk := v.trackedKeys(); len(tk) != 0 {
		t.Errorf("engine still tracks %d keys after every lease was revoked", len(tk))
	}
}
