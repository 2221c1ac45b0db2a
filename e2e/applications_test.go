//go:build e2e

package e2e

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// The application guide (docs/applications.md) run as written: the Go
// program in examples/heron-client, built from its own module, against a
// real Vault and the emulator.

// clientStats is the line examples/heron-client prints when it stops.
type clientStats struct {
	Calls   int `json:"calls"`
	Failed  int `json:"failed"`
	Retried int `json:"retried"`
	Keys    int `json:"keys"`
}

// buildExample builds examples/<name> (its own Go module) into dir.
func buildExample(t *testing.T, dir, name string) string {
	t.Helper()
	out := filepath.Join(dir, name)
	cmd := exec.Command("go", "build", "-o", out, "./"+name)
	cmd.Dir = filepath.Join(repoRoot, "examples")
	if b, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("building examples/%s: %v\n%s", name, err, b)
	}
	return out
}

// appToken is a token with the policy docs/applications.md gives an
// application of role.
func appToken(t *testing.T, v *vault, dir, role string) string {
	t.Helper()
	return v.tokenWithPolicy("app-"+role, filepath.Join(dir, "app-"+role+".hcl"), fmt.Sprintf(`
path "heron/creds/%s" { capabilities = ["read"] }
path "sys/leases/renew" { capabilities = ["update"] }
path "sys/leases/revoke" { capabilities = ["update"] }
`, role))
}

// runClient starts examples/heron-client for role and returns a function
// that waits for it and returns its counts.
func runClient(t *testing.T, v *vault, e *emulator, bin, dir, token, role string, d time.Duration) func() clientStats {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), d+time.Minute)
	var stdout bytes.Buffer
	logPath := filepath.Join(dir, "heron-client-"+role+".log")
	logFile, err := os.Create(logPath)
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.CommandContext(ctx, bin, "-role", role, "-heron-url", e.URL, "-duration", d.String(), "-interval", "100ms")
	cmd.Env = append(baseEnv(v.home), "VAULT_ADDR="+v.addr, "VAULT_TOKEN="+token)
	cmd.Stdout = &stdout
	cmd.Stderr = logFile
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		cancel()
		if t.Failed() {
			t.Logf("---- heron-client log ----\n%s", fileTail(logPath, 80))
		}
	})
	return func() clientStats {
		t.Helper()
		err := cmd.Wait()
		logFile.Close()
		if err != nil {
			t.Fatalf("heron-client: %v\n%s", err, fileTail(logPath, 80))
		}
		var s clientStats
		lines := strings.Split(strings.TrimSpace(stdout.String()), "\n")
		if err := json.Unmarshal([]byte(lines[len(lines)-1]), &s); err != nil {
			t.Fatalf("heron-client printed %q: %v", stdout.String(), err)
		}
		t.Logf("heron-client: %+v", s)
		return s
	}
}

// TestApplicationGoClientKeepsAKeyAcrossLeaseLifetimes: the Go program keeps
// a working key across four lease lifetimes (each key's lease reaches
// max_ttl and a new key is read before it ends) with zero failed calls to
// Heron, and its lease is revoked (the key deleted) when it stops.
func TestApplicationGoClientKeepsAKeyAcrossLeaseLifetimes(t *testing.T) {
	t.Parallel()
	e := startEmulator(t)
	v := startDevVault(t)
	v.configureBoth(e)
	v.writeRole("goapp", "environment=development", "ttl=4s", "max_ttl=8s")
	dir := filepath.Join(v.dir, "apps")
	if err := os.MkdirAll(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	bin := buildExample(t, dir, "heron-client")
	token := appToken(t, v, dir, "goapp")

	s := runClient(t, v, e, bin, dir, token, "goapp", 34*time.Second)()
	if s.Failed != 0 {
		t.Errorf("%d of %d calls to Heron failed; want none", s.Failed, s.Calls)
	}
	if s.Keys < 4 {
		t.Errorf("the client used %d keys in 34 s of 8 s leases; want at least 4 (a new key before each lease ends)", s.Keys)
	}
	if s.Calls < 200 {
		t.Errorf("only %d calls in 34 s", s.Calls)
	}
	// Revoked on exit: no lease left, its key deleted at once.
	eventually(t, 10*time.Second, "no lease left under heron/creds/goapp", func() error { return v.leasesLeft("heron/creds/goapp/") })
}

// TestApplicationGoClientSurvivesRevocationAndQuarantine: an operator
// revokes the client's leases, then quarantines its key; each time the
// client learns it from Heron's 401, reads a new key at once and retries,
// so no call fails.
func TestApplicationGoClientSurvivesRevocationAndQuarantine(t *testing.T) {
	t.Parallel()
	e := startEmulator(t)
	v := startDevVault(t)
	v.configureBoth(e)
	v.writeRole("goapp2", "environment=development", "ttl=1h", "max_ttl=2h")
	dir := filepath.Join(v.dir, "apps")
	if err := os.MkdirAll(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	bin := buildExample(t, dir, "heron-client")
	token := appToken(t, v, dir, "goapp2")

	wait := runClient(t, v, e, bin, dir, token, "goapp2", 24*time.Second)
	activeKey := func() string {
		for id, k := range v.trackedKeys() {
			if k["role"] == "goapp2" && k["state"] == "active" {
				return id
			}
		}
		return ""
	}
	eventually(t, 15*time.Second, "the client holding a key", func() error {
		if activeKey() == "" {
			return fmt.Errorf("no active key of goapp2")
		}
		return nil
	})
	time.Sleep(4 * time.Second)
	v.run("lease", "revoke", "-prefix", "heron/creds/goapp2/")
	var second string
	eventually(t, 15*time.Second, "the client reading a new key after the revocation", func() error {
		if second = activeKey(); second == "" {
			return fmt.Errorf("no active key of goapp2")
		}
		return nil
	})
	time.Sleep(4 * time.Second)
	v.run("write", "-f", "heron/keys/"+second+"/deactivate")
	s := wait()
	if s.Failed != 0 {
		t.Errorf("%d of %d calls to Heron failed; want none (a 401 reads a new key and retries)", s.Failed, s.Calls)
	}
	if s.Keys < 3 {
		t.Errorf("the client used %d keys; want 3 (first, after the revocation, after the quarantine)", s.Keys)
	}
	if s.Retried < 2 {
		t.Errorf("the client retried %d calls after a 401; want at least 2", s.Retried)
	}
}
