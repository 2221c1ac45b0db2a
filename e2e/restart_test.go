//go:build e2e

package e2e

import (
	"net/http"
	"syscall"
	"testing"
	"time"
)

// TestRestartWithPendingLeases: Vault goes down while two leases are pending
// and stays down past the end of the short one. After start and unseal, the
// short lease is expired by Vault's restored expiration manager and its key
// ends deactivated (not deleted: it ran out, nobody revoked it); the long one
// still works and revoking it deletes its key. Both a graceful shutdown and a
// crash are covered, since only the second skips Vault's own shutdown path.
func TestRestartWithPendingLeases(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name string
		sig  syscall.Signal
	}{
		{"sigterm", syscall.SIGTERM},
		{"sigkill", syscall.SIGKILL},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			e := startEmulator(t)
			v := startFileVault(t)
			v.configureBoth(e)
			v.writeRole("short", "environment=development", "ttl=5s")
			v.writeRole("long", "environment=development", "ttl=1h")

			issued := time.Now()
			short := v.mustIssue("", "short")
			long := v.mustIssue("", "long")
			e.requireWorks(t, short.Data.APIKey)
			e.requireWorks(t, long.Data.APIKey)

			v.stop(tc.sig)
			if got := stateOf(e.key(t, short.Data.KeyID)); got != stateActive {
				t.Fatalf("short key %s right after stopping Vault, want still active", got)
			}
			// Stay down until well past the short lease's end, so that only the
			// restarted Vault can expire it.
			sleepUntil(issued.Add(8 * time.Second))
			if got := stateOf(e.key(t, short.Data.KeyID)); got != stateActive {
				t.Fatalf("short key %s while Vault was down, want still active", got)
			}

			v.restart()
			e.requireDeactivatedNotDeleted(t, short.Data.KeyID, short.Data.APIKey, 60*time.Second)

			e.requireWorks(t, long.Data.APIKey)
			if got := stateOf(e.key(t, long.Data.KeyID)); got != stateActive {
				t.Fatalf("long key %s after restart, want active", got)
			}
			v.run("lease", "revoke", long.LeaseID)
			e.waitState(t, long.Data.KeyID, stateDeleted, 30*time.Second)
			e.requireRejected(t, long.Data.APIKey)
			if n := e.CountRequests(http.MethodPut, "/api/credentials/keys/"+long.Data.KeyID, ""); n != 0 {
				t.Errorf("revoked long key was deactivated %d times, want deleted only", n)
			}
			if n := v.irrevocableLeases(); n != 0 {
				t.Errorf("%d irrevocable leases, want 0", n)
			}
		})
	}
}
