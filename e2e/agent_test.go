//go:build e2e

package e2e

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/heron-vault/vault-plugin-secrets-heron/herontest"
)

// TestVaultAgentTemplate: Vault Agent renders a working key from
// heron/creds/<role>; when the lease cannot be renewed any further (max_ttl
// reached) the agent fetches and renders a new key before the old lease ends,
// and the old key ends deactivated once its lease runs out.
func TestVaultAgentTemplate(t *testing.T) {
	t.Parallel()
	e := startEmulator(t)
	v := startDevVault(t)
	v.configureBoth(e)
	v.writeRole("agent", "environment=development", "ttl=6s", "max_ttl=6s")

	dir := filepath.Join(v.dir, "agent")
	if err := os.MkdirAll(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	tok := v.tokenWithPolicy("heron-agent", filepath.Join(dir, "policy.hcl"),
		`path "heron/creds/agent" { capabilities = ["read"] }`)
	tokenFile := filepath.Join(dir, "token")
	if err := os.WriteFile(tokenFile, []byte(tok), 0o600); err != nil {
		t.Fatal(err)
	}

	out := filepath.Join(dir, "heron-api-key")
	cfgPath := filepath.Join(dir, "agent.hcl")
	cfg := fmt.Sprintf(`
vault {
  address = %q
}
auto_auth {
  method "token_file" {
    config = {
      token_file_path = %q
    }
  }
}
template_config {
  exit_on_retry_failure = true
}
template {
  contents    = "{{ with secret \"heron/creds/agent\" }}{{ .Data.api_key }}{{ end }}"
  destination = %q
}
`, v.addr, tokenFile, out)
	if err := os.WriteFile(cfgPath, []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}
	logPath := filepath.Join(dir, "agent.log")
	agent := startProc(t, "vault agent", logPath, baseEnv(v.home), vaultBin, "agent", "-config="+cfgPath, "-log-level=debug")
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("---- tail of the agent log %s ----\n%s", logPath, agent.logTail(60))
		}
	})

	// rendered returns the key in the file, "" until there is one.
	rendered := func() string {
		if agent.exited() {
			t.Fatalf("vault agent exited: %v", agent.err)
		}
		b, err := os.ReadFile(out)
		if err != nil {
			return ""
		}
		return strings.TrimSpace(string(b))
	}
	var first string
	eventually(t, 30*time.Second, "the agent rendering a key", func() error {
		if first = rendered(); first == "" {
			return os.ErrNotExist
		}
		return nil
	})
	if !herontest.ValidToken(first) {
		t.Fatalf("agent rendered %q, not a Heron key", prefix(first))
	}
	e.requireWorks(t, first)
	k1, ok := e.KeyByToken(first)
	if !ok {
		t.Fatal("rendered key unknown to the emulator")
	}

	// The lease cannot outlive max_ttl (6s): the agent must fetch a new key
	// while the old one still works, not after it stopped working.
	var second string
	eventually(t, 20*time.Second, "the agent rendering a new key", func() error {
		if second = rendered(); second == first || second == "" {
			return fmt.Errorf("still the first key")
		}
		return nil
	})
	e.requireWorks(t, second)
	if st := stateOf(e.key(t, k1.ID)); st != stateActive {
		// Not fatal on its own: the agent may legitimately render late on a
		// loaded machine. What matters below is how the old key ends.
		t.Logf("first key already %s when the second was rendered", st)
	}

	e.requireDeactivatedNotDeleted(t, k1.ID, first, 30*time.Second)
	if lived := e.key(t, k1.ID).DeactivatedAt.Sub(k1.Created); lived < 5*time.Second {
		t.Errorf("first key deactivated %s after creation, before its 6s lease ran out", lived)
	}
}
