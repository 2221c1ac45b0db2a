//go:build e2e

package e2e

import (
	"bufio"
	"fmt"
	"net/http"
	"os"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/heron-vault/vault-plugin-secrets-heron/herontest"
)

// TestFaultsHeronDownDuringSyncRevoke: while Heron cannot delete keys (the
// connection drops, it answers 503, or it rate limits every request), a
// synchronous `vault lease revoke` fails and leaves both the key and the lease
// as they were: the lease is not given up as irrevocable and can be revoked
// once Heron is back, which then deletes the key.
func TestFaultsHeronDownDuringSyncRevoke(t *testing.T) {
	t.Parallel()
	e := startEmulator(t)
	v := startDevVault(t)
	// Fewer retries keep each failing revocation to a few seconds; what is
	// under test is what the failure does, not how long retrying takes.
	v.configureBoth(e, "max_retries=2")
	v.writeRole("app", "environment=development", "ttl=1h")

	for _, tc := range []struct {
		name       string
		breakHeron func()
	}{
		{"connection dropped", func() {
			e.FailNext(http.MethodDelete, "/api/credentials/keys/", 1000, herontest.FaultDropBeforeProcessing)
		}},
		{"503", func() {
			e.FailNext(http.MethodDelete, "/api/credentials/keys/", 1000, herontest.FaultStatus503)
		}},
		{"429", func() { e.Force429("development", 10*time.Minute, time.Second) }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := v.mustIssue("", "app")
			path := "/api/credentials/keys/" + c.Data.KeyID
			before := e.CountRequests(http.MethodDelete, path, "")

			tc.breakHeron()
			r := v.cliAs("", "lease", "revoke", "-sync=true", c.LeaseID)
			attempts := e.CountRequests(http.MethodDelete, path, "") - before
			e.ResetFaults()
			if r.code == 0 {
				t.Fatalf("lease revoke -sync succeeded while Heron could not delete the key (%d DELETE attempts)", attempts)
			}
			t.Logf("revoke failed as it should (exit %d, %d DELETE attempts): %s", r.code, attempts, strings.Join(strings.Fields(r.stderr), " "))
			if attempts == 0 {
				t.Errorf("the failed revocation never sent a DELETE")
			}
			if got := stateOf(e.key(t, c.Data.KeyID)); got != stateActive {
				t.Errorf("key is %s after a failed revocation, want active", got)
			}
			if n := v.irrevocableLeases(); n != 0 {
				t.Errorf("%d irrevocable leases after a failed revocation, want 0", n)
			}
			if !faultLeaseExists(v, c.LeaseID) {
				t.Fatalf("Vault no longer knows lease %s after a failed revocation", c.LeaseID)
			}
			e.requireWorks(t, c.Data.APIKey)

			v.run("lease", "revoke", "-sync=true", c.LeaseID)
			e.waitState(t, c.Data.KeyID, stateDeleted, 10*time.Second)
			e.requireRejected(t, c.Data.APIKey)
			if faultLeaseExists(v, c.LeaseID) {
				t.Errorf("lease %s still exists after a successful revocation", c.LeaseID)
			}
			if n := v.irrevocableLeases(); n != 0 {
				t.Errorf("%d irrevocable leases, want 0", n)
			}
			if _, ok := v.trackedKeys()[c.Data.KeyID]; ok {
				t.Errorf("engine still tracks the deleted key")
			}
		})
	}
}

// TestFaultsHeronDownDuringQueuedRevoke: a revocation queued by Vault (the
// CLI's default) that fails while Heron is down is retried by Vault's
// expiration manager, and the retry after Heron is back deletes the key.
// The engine's failure must be retryable, never one that makes Vault give up.
func TestFaultsHeronDownDuringQueuedRevoke(t *testing.T) {
	t.Parallel()
	e := startEmulator(t)
	v := startDevVault(t)
	v.configureBoth(e, "max_retries=2")
	v.writeRole("app", "environment=development", "ttl=1h")

	c := v.mustIssue("", "app")
	e.FailNext(http.MethodDelete, "/api/credentials/keys/", 1000, herontest.FaultDropBeforeProcessing)
	v.run("lease", "revoke", c.LeaseID)

	// Vault logs a failed attempt it will retry; one it gives up on only
	// shows in the irrevocable count.
	eventually(t, 60*time.Second, "Vault's first revocation attempt failing", func() error {
		if faultLogHasLine(t, v, "failed to revoke lease", c.LeaseID) || faultIrrevocable(t, v) > 0 {
			return nil
		}
		return fmt.Errorf("no failed attempt for %s yet", c.LeaseID)
	})
	if got := stateOf(e.key(t, c.Data.KeyID)); got != stateActive {
		t.Fatalf("key is %s while every DELETE fails, want active", got)
	}
	if n := v.irrevocableLeases(); n != 0 {
		t.Fatalf("%d irrevocable leases after one failed attempt, want 0: the engine's error made Vault give up", n)
	}
	if !faultLeaseExists(v, c.LeaseID) {
		t.Fatalf("Vault dropped lease %s although its revocation failed", c.LeaseID)
	}

	e.ResetFaults()
	// Vault's second attempt comes 10s to 30s after the first.
	e.waitState(t, c.Data.KeyID, stateDeleted, 60*time.Second)
	eventually(t, 20*time.Second, "Vault dropping the revoked lease", func() error {
		if faultLeaseExists(v, c.LeaseID) {
			return fmt.Errorf("lease %s still exists", c.LeaseID)
		}
		return nil
	})
	if n := v.irrevocableLeases(); n != 0 {
		t.Errorf("%d irrevocable leases, want 0", n)
	}
}

// faultIrrevocable is irrevocableLeases through the API: cheap enough to poll.
func faultIrrevocable(t *testing.T, v *vault) int {
	t.Helper()
	s, err := v.api.Logical().ReadWithData("sys/leases/count", map[string][]string{"type": {"irrevocable"}})
	if err != nil {
		t.Fatalf("read sys/leases/count type=irrevocable: %v", err)
	}
	if s == nil {
		return 0
	}
	n, err := strconv.Atoi(fmt.Sprint(s.Data["lease_count"]))
	if err != nil {
		t.Fatalf("sys/leases/count: lease_count %v: %v", s.Data["lease_count"], err)
	}
	return n
}

// faultLogHasLine reports whether one line of the Vault log holds every one
// of subs.
func faultLogHasLine(t *testing.T, v *vault, subs ...string) bool {
	t.Helper()
	f, err := os.Open(v.logPath)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 64<<10), 4<<20)
	for sc.Scan() {
		line := sc.Text()
		all := true
		for _, s := range subs {
			if !strings.Contains(line, s) {
				all = false
				break
			}
		}
		if all {
			return true
		}
	}
	return false
}
