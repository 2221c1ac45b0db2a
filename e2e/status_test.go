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
// answered.
func TestStatusCodesThroughVault(t *testing.T) {
	t.Parallel()
	e := startEmulator(t)
	v := startDevVault(t)
	v.configure("development", e.devKey, e.URL, "max_retries=0")
	v.writeRole("r", "environment=development", "max_ttl=1h")

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
