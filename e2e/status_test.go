//go:build e2e

package e2e

import (
	"strings"
	"testing"
	"time"
)

// TestStatusCodesThroughVault: what reaches the user through the real Vault
// and the plugin's gRPC boundary: a user mistake is a 400 naming the field and
// the rule, Heron's rate limiting after retries is a 502 saying what Heron
// answered. Every path that takes a name refuses a case variant of a stored
// name (a 400 naming the path to use, the stored name untouched: Vault's
// policies are case-sensitive) and a name with "..", which Vault's storage
// refuses as a key (a 400 naming the rule, not a 500).
func TestStatusCodesThroughVault(t *testing.T) {
	t.Parallel()
	e := startEmulator(t)
	v := startDevVault(t)
	v.configure("development", e.devKey, e.URL, "max_retries=0")
	v.writeRole("r", "environment=development", "max_ttl=1h", "description=as-written")
	v.run("write", "heron/static-roles/svc", "environment=development")
	var svc struct {
		Data struct {
			KeyID string `json:"key_id"`
		} `json:"data"`
	}
	v.runJSON(&svc, "read", "-format=json", "heron/static-roles/svc")

	for _, tc := range []struct {
		name string
		args []string
		want []string
	}{
		{"bad admin key", []string{"write", "heron/config/production", "admin_api_key=nope"}, []string{"Code: 400", "admin_api_key is malformed"}},
		{"max_retries range", []string{"write", "heron/config/development", "max_retries=50"}, []string{"Code: 400", "max_retries must be between 0 and 20"}},
		{"ttl over max_ttl", []string{"write", "heron/roles/r", "ttl=2h"}, []string{"Code: 400", "must not be greater than max_ttl"}},
		{"unknown role", []string{"read", "heron/creds/nope"}, []string{"Code: 400", `unknown role "nope"`}},
		{"creds ttl over max", []string{"write", "heron/creds/r", "ttl=3h"}, []string{"Code: 400", "longer than the role's max_ttl"}},
		{"http to a remote host", []string{"write", "heron/config/production", "admin_api_key=" + e.prodKey, "base_url=http://heron.example.com", "verify=false"}, []string{"Code: 400", "plain http is only for a loopback host"}},
		{"base_url host without the key", []string{"write", "heron/config/development", "base_url=https://heron.example.com"}, []string{"Code: 400", "must carry admin_api_key too"}},
		{"long static role name", []string{"write", "heron/static-roles/" + strings.Repeat("s", 110), "environment=development"}, []string{"Code: 400", "128 characters"}},
		{"role name off the rule", []string{"write", "heron/roles/_r", "environment=development"}, []string{"Code: 400", "[a-z0-9]([a-z0-9_.-]{0,62}[a-z0-9])?"}},
	} {
		res := v.cliAs("", tc.args...)
		if res.code == 0 {
			t.Errorf("%s: succeeded, want a 400", tc.name)
			continue
		}
		for _, w := range tc.want {
			if !strings.Contains(res.stderr, w) {
				t.Errorf("%s: stderr lacks %q:\n%s", tc.name, w, res.stderr)
			}
		}
	}

	// Case variants of stored names, on every path that takes one.
	for _, args := range [][]string{
		{"read", "heron/creds/R"},
		{"write", "heron/creds/R", "ttl=1m"},
		{"read", "heron/roles/R"},
		{"write", "heron/roles/R", "description=changed"},
		{"delete", "heron/roles/R"},
		{"read", "heron/static-creds/SVC"},
		{"read", "heron/static-roles/Svc"},
		{"write", "heron/static-roles/SVC", "overlap=1h"},
		{"delete", "heron/static-roles/SVC"},
		{"write", "-f", "heron/static-roles/SVC/rotate"},
		{"read", "heron/config/Development"},
		{"write", "heron/config/Development", "max_retries=1"},
		{"delete", "heron/config/Development"},
		{"write", "-f", "heron/config/Development/rotate"},
		{"read", "heron/inventory/Development"},
	} {
		path := args[len(args)-1]
		if strings.Contains(path, "=") {
			path = args[len(args)-2]
		}
		use := strings.ToLower(strings.TrimPrefix(path, "heron/"))
		res := v.cliAs("", args...)
		if res.code == 0 || !strings.Contains(res.stderr, "Code: 400") || !strings.Contains(res.stderr, "use "+use) {
			t.Errorf("vault %s: exit %d, want a 400 naming %s:\n%s%s", strings.Join(args, " "), res.code, use, res.stderr, res.stdout)
		}
	}
	// ".." in every name that becomes a storage key: paths and fields.
	for _, args := range [][]string{
		{"write", "heron/config/a..b", "admin_api_key=" + e.devKey, "base_url=" + e.URL},
		{"read", "heron/config/a..b"},
		{"delete", "heron/config/a..b"},
		{"write", "-f", "heron/config/a..b/rotate"},
		{"read", "heron/inventory/a..b"},
		{"write", "heron/roles/a..b", "environment=development"},
		{"read", "heron/roles/a..b"},
		{"delete", "heron/roles/a..b"},
		{"write", "heron/static-roles/a..b", "environment=development"},
		{"read", "heron/static-roles/a..b"},
		{"delete", "heron/static-roles/a..b"},
		{"write", "-f", "heron/static-roles/a..b/rotate"},
		{"read", "heron/creds/a..b"},
		{"write", "heron/creds/a..b", "ttl=1m"},
		{"read", "heron/static-creds/a..b"},
		{"read", "heron/keys/a..b"},
		{"write", "heron/roles/ok", "environment=a..b"},
		{"write", "heron/static-roles/ok", "environment=a..b"},
	} {
		res := v.cliAs("", args...)
		if res.code == 0 || !strings.Contains(res.stderr, "Code: 400") || !strings.Contains(res.stderr, "invalid") {
			t.Errorf("vault %s: exit %d, want a 400 naming the rule:\n%s%s", strings.Join(args, " "), res.code, res.stderr, res.stdout)
		}
	}
	// The stored names are as they were.
	var role struct {
		Data struct {
			Description string `json:"description"`
		} `json:"data"`
	}
	v.runJSON(&role, "read", "-format=json", "heron/roles/r")
	if role.Data.Description != "as-written" {
		t.Errorf("role r: description %q after refused writes, want as-written", role.Data.Description)
	}
	var after struct {
		Data struct {
			KeyID string `json:"key_id"`
		} `json:"data"`
	}
	v.runJSON(&after, "read", "-format=json", "heron/static-roles/svc")
	if after.Data.KeyID != svc.Data.KeyID {
		t.Errorf("static role svc: key %s, was %s: a refused path rotated it", after.Data.KeyID, svc.Data.KeyID)
	}
	for _, args := range [][]string{{"read", "heron/roles/ok"}, {"read", "heron/static-roles/ok"}, {"read", "heron/config/production"}} {
		if res := v.cliAs("", args...); res.code == 0 && strings.TrimSpace(res.stdout) != "" {
			t.Errorf("vault %s: exists after a refused write:\n%s", strings.Join(args, " "), res.stdout)
		}
	}
	v.run("delete", "heron/static-roles/svc")

	e.Force429("development", time.Minute, time.Second)
	res := v.cliAs("", "read", "heron/creds/r")
	if res.code == 0 {
		t.Fatalf("creds succeeded under a 429 storm")
	}
	for _, w := range []string{"Code: 502", "upstream rate limited", "429"} {
		if !strings.Contains(res.stderr, w) {
			t.Errorf("rate limited creds: stderr lacks %q:\n%s", w, res.stderr)
		}
	}
	for _, k := range e.Keys() {
		if !k.Deleted && strings.HasPrefix(k.Name, "vault-r-") {
			t.Errorf("a rate-limited issuance left key %s", k.ID)
		}
	}
}
