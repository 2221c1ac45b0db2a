//go:build e2e

package e2e

import (
	"fmt"
	"net/http"
	"strings"
	"testing"
	"time"
)

// TestCredsRead: `vault read heron/creds/<role>` returns a key that works
// against Heron, with every documented field, in the role's environment.
func TestCredsRead(t *testing.T) {
	t.Parallel()
	e := startEmulator(t)
	v := startDevVault(t)
	v.configureBoth(e)
	v.writeRole("app-dev", "environment=development", "ttl=10m")
	v.writeRole("app-prod", "environment=production", "ttl=10m")

	for _, tc := range []struct{ role, env string }{
		{"app-dev", "development"},
		{"app-prod", "production"},
	} {
		c := v.mustIssue("", tc.role)
		e.requireWorks(t, c.Data.APIKey)

		k, ok := e.KeyByToken(c.Data.APIKey)
		if !ok {
			t.Fatalf("%s: api_key is not a key the emulator issued", tc.role)
		}
		want := map[string][2]string{
			"key_id":       {c.Data.KeyID, k.ID},
			"key_name":     {c.Data.KeyName, k.Name},
			"token_prefix": {c.Data.TokenPrefix, k.TokenPrefix},
			"environment":  {c.Data.Environment, tc.env},
			"role":         {c.Data.Role, tc.role},
		}
		for field, gw := range want {
			if gw[0] != gw[1] {
				t.Errorf("%s: %s = %q, want %q", tc.role, field, gw[0], gw[1])
			}
		}
		if k.Environment != tc.env {
			t.Errorf("%s: key created in Heron environment %q, want %q", tc.role, k.Environment, tc.env)
		}
		if !strings.HasPrefix(c.Data.APIKey, c.Data.TokenPrefix) || len(c.Data.TokenPrefix) != 8 {
			t.Errorf("%s: token_prefix %q is not the first 8 characters of api_key", tc.role, c.Data.TokenPrefix)
		}
		if !strings.HasPrefix(c.LeaseID, "heron/creds/"+tc.role+"/") {
			t.Errorf("%s: lease_id %q not under heron/creds/%s/", tc.role, c.LeaseID, tc.role)
		}
		if !c.Renewable || c.LeaseDuration != 600 {
			t.Errorf("%s: lease renewable=%t duration=%ds, want renewable and 600s", tc.role, c.Renewable, c.LeaseDuration)
		}
		if n := e.CountRequests(http.MethodPost, "/api/credentials/keys", tc.env); n != 1 {
			t.Errorf("%s: %d key creations in %s for one read, want 1", tc.role, n, tc.env)
		}
		if tk, ok := v.trackedKeys()[c.Data.KeyID]; !ok || tk["state"] != "active" {
			t.Errorf("%s: keys/ shows %v for the new key, want it tracked as active", tc.role, tk)
		}
	}
}

// TestLeaseExpiryDeactivatesThenTidyDeletes: a lease that runs out leaves its
// key deactivated, not deleted; once the role's expired_key_retention has
// passed, tidy deletes it (and not before).
func TestLeaseExpiryDeactivatesThenTidyDeletes(t *testing.T) {
	t.Parallel()
	const retention = 3 * time.Second
	e := startEmulator(t)
	v := startDevVault(t)
	v.configureBoth(e)
	v.writeRole("short", "environment=development", "ttl=3s", fmt.Sprintf("expired_key_retention=%ds", int(retention.Seconds())))

	c := v.mustIssue("", "short")
	if c.LeaseDuration != 3 {
		t.Fatalf("lease_duration = %d, want 3", c.LeaseDuration)
	}
	e.requireWorks(t, c.Data.APIKey)

	k := e.requireDeactivatedNotDeleted(t, c.Data.KeyID, c.Data.APIKey, 30*time.Second)
	if early := k.DeactivatedAt.Sub(k.Created); early < 2*time.Second {
		t.Errorf("key deactivated %s after creation, before its 3s lease could have run out", early)
	}
	if ls := v.leasesUnder("heron/creds/short/"); len(ls) != 0 {
		t.Errorf("Vault still holds leases %v after expiry", ls)
	}
	if tk := v.trackedKeys()[c.Data.KeyID]; tk == nil || tk["state"] != "deactivated" {
		t.Errorf("keys/ shows %v for the expired key, want it tracked as deactivated", tk)
	}

	// Before the retention has passed, tidy must leave the key alone. Judged
	// only if tidy finished in time: a loaded machine may make it late.
	counts := v.tidy()
	// Whichever tidy deletes the key reports it: on a loaded machine the
	// first one may already run past the retention.
	reported := fmt.Sprint(counts["expired_keys_deleted"]) == "1"
	if time.Now().Before(k.DeactivatedAt.Add(retention)) {
		if got := stateOf(e.key(t, c.Data.KeyID)); got != stateDeactivated {
			t.Fatalf("tidy within expired_key_retention left the key %s, want deactivated (tidy said %v)", got, counts)
		}
	} else {
		t.Logf("tidy ran past the retention; the early-tidy check was skipped")
	}

	eventually(t, 20*time.Second, "tidy deleting the expired key", func() error {
		if got := stateOf(e.key(t, c.Data.KeyID)); got == stateDeleted {
			return nil
		}
		counts = v.tidy()
		reported = reported || fmt.Sprint(counts["expired_keys_deleted"]) == "1"
		if got := stateOf(e.key(t, c.Data.KeyID)); got != stateDeleted {
			return fmt.Errorf("key is %s (tidy said %v)", got, counts)
		}
		return nil
	})
	k = e.key(t, c.Data.KeyID)
	if kept := k.DeletedAt.Sub(k.DeactivatedAt); kept < retention-100*time.Millisecond {
		t.Errorf("key deleted %s after deactivation, want at least expired_key_retention (%s)", kept, retention)
	}
	if !reported {
		t.Errorf("no tidy reported expired_keys_deleted=1 (the last said %v)", counts["expired_keys_deleted"])
	}
	if _, ok := v.trackedKeys()[c.Data.KeyID]; ok {
		t.Errorf("keys/ still lists the deleted key")
	}
}

// TestLeaseRevoke: `vault lease revoke` deletes the key; `-prefix` over 200
// leases deletes all 200 and leaves no lease behind, irrevocable or not.
func TestLeaseRevoke(t *testing.T) {
	t.Parallel()
	const bulk = 200
	e := startEmulator(t)
	v := startDevVault(t)
	// The engine's default budget (250/min) would stretch 400 upstream calls
	// over a minute and a half; the budget itself is not under test here.
	v.configureBoth(e, "rate_limit_per_minute=100000")
	v.writeRole("one", "environment=development", "ttl=1h")
	v.writeRole("bulk", "environment=development", "ttl=1h")

	c := v.mustIssue("", "one")
	e.requireWorks(t, c.Data.APIKey)
	v.run("lease", "revoke", c.LeaseID)
	e.waitState(t, c.Data.KeyID, stateDeleted, 20*time.Second)
	e.requireRejected(t, c.Data.APIKey)
	if n := e.CountRequests(http.MethodPut, "/api/credentials/keys/"+c.Data.KeyID+"/deactivate", ""); n != 0 {
		t.Errorf("revoked key was deactivated %d times; revocation should delete, not deactivate", n)
	}

	leases, errs := issueMany(t, v, "bulk", bulk, 8)
	if len(errs) > 0 {
		t.Fatalf("%d of %d bulk issuances failed, first: %v", len(errs), bulk, errs[0])
	}
	ids := keyIDs(leases)
	if n := len(v.leasesUnder("heron/creds/bulk/")); n != bulk {
		t.Fatalf("Vault lists %d leases under heron/creds/bulk/, want %d", n, bulk)
	}

	v.run("lease", "revoke", "-prefix", "heron/creds/bulk")

	eventually(t, 60*time.Second, "revoke -prefix deleting every key", func() error { return e.keysLeft(t, ids) })
	eventually(t, 30*time.Second, "Vault dropping the revoked leases", func() error { return v.leasesLeft("heron/creds/bulk/") })
	if n := v.irrevocableLeases(); n != 0 {
		t.Errorf("%d irrevocable leases, want 0", n)
	}
	if n := e.CountRequests(http.MethodPut, "", "development"); n != 0 {
		t.Errorf("%d deactivations during revocation, want 0 (revocation deletes)", n)
	}
	if live := e.LiveKeys("development"); len(live) != 1 || live[0].Token != e.devKey {
		t.Errorf("development has %d live keys after revoking everything, want only the admin key", len(live))
	}
	if tk := v.trackedKeys(); len(tk) != 0 {
		t.Errorf("engine still tracks %d keys after revoking every lease", len(tk))
	}
}
