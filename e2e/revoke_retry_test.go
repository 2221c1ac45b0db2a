//go:build e2e

package e2e

import (
	"fmt"
	"net/http"
	"testing"
	"time"

	"github.com/heron-vault/vault-plugin-secrets-heron/herontest"
)

// TestRevokeRetriedAfterLeaseEndStillDeletes is the unit test
// TestRevoke_RetryAfterLeaseEndStillDeletes run through Vault's
// own asynchronous revocation and retry: `vault lease revoke` while Heron is
// failing; Vault retries with backoff, and its retry lands after the lease's
// original end. That retry is still a revocation (spec invariant 2: decided
// once, on the first attempt): the key must end deleted, never only
// deactivated (reactivatable, kept for days) during exactly the incident where
// it had to go.
func TestRevokeRetriedAfterLeaseEndStillDeletes(t *testing.T) {
	t.Parallel()
	e := startEmulator(t)
	v := startDevVault(t)
	v.configureBoth(e, "max_retries=0")
	v.writeRole("app", "environment=development", "ttl=8s", "max_ttl=8s")

	c := v.mustIssue("", "app")
	end := time.Now().Add(8 * time.Second)
	e.FailNext(http.MethodDelete, "/api/credentials/keys/", 1000, herontest.FaultStatus503)
	e.FailNext(http.MethodPut, "/api/credentials/keys/", 1000, herontest.FaultStatus503)
	v.run("lease", "revoke", "-sync=false", c.LeaseID)

	eventually(t, 60*time.Second, "Vault's first revocation attempt failing", func() error {
		if e.CountRequests(http.MethodDelete, "/api/credentials/keys/"+c.Data.KeyID, "") > 0 {
			return nil
		}
		return fmt.Errorf("no DELETE for %s yet", c.Data.KeyID)
	})
	// Heron stays down past the lease's original end, so Vault's next
	// attempt comes after it.
	sleepUntil(end.Add(3 * time.Second))
	if got := stateOf(e.key(t, c.Data.KeyID)); got != stateActive {
		t.Fatalf("key is %s while every call fails, want active", got)
	}
	e.ResetFaults()

	k := e.waitState(t, c.Data.KeyID, stateDeleted, 150*time.Second)
	if n := e.CountRequests(http.MethodPut, "/api/credentials/keys/"+c.Data.KeyID+"/deactivate", ""); n != 0 {
		t.Errorf("the engine tried to deactivate %s (%d times): a revocation is not an expiry", k.ID, n)
	}
	e.requireRejected(t, c.Data.APIKey)
	if n := v.irrevocableLeases(); n != 0 {
		t.Errorf("%d irrevocable leases, want 0", n)
	}
}
