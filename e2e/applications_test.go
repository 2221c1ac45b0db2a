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
	"syscall"
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
	// activeKey is an active key of goapp2 other than not.
	activeKey := func(not string) string {
		for id, k := range v.trackedKeys() {
			if k["role"] == "goapp2" && k["state"] == "active" && id != not {
				return id
			}
		}
		return ""
	}
	var first string
	eventually(t, 15*time.Second, "the client holding a key", func() error {
		if first = activeKey(""); first == "" {
			return fmt.Errorf("no active key of goapp2")
		}
		return nil
	})
	time.Sleep(4 * time.Second)
	v.run("lease", "revoke", "-prefix", "heron/creds/goapp2/")
	// The revocation runs in the background in Vault: the first key may
	// still be listed active for a moment.
	var second string
	eventually(t, 15*time.Second, "the client reading a new key after the revocation", func() error {
		if second = activeKey(first); second == "" {
			return fmt.Errorf("no active key of goapp2 but the revoked %s", first)
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

// exampleConfig reads examples/<path> and makes it runnable here: each
// replacement pair swaps the example's address, role or relative path for
// this test's.
func exampleConfig(t *testing.T, path string, replace ...string) string {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(repoRoot, "examples", path))
	if err != nil {
		t.Fatal(err)
	}
	s := string(b)
	for i := 0; i+1 < len(replace); i += 2 {
		if !strings.Contains(s, replace[i]) {
			t.Fatalf("examples/%s no longer contains %q", path, replace[i])
		}
		s = strings.ReplaceAll(s, replace[i], replace[i+1])
	}
	return s
}

// appStats sums the lines heron-app appended to path (one per run of it).
func appStats(t *testing.T, path string) (runs int, s clientStats) {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("reading heron-app's counts: %v", err)
	}
	for _, line := range strings.Split(strings.TrimSpace(string(b)), "\n") {
		var one clientStats
		if err := json.Unmarshal([]byte(line), &one); err != nil {
			t.Fatalf("heron-app counts %q: %v", line, err)
		}
		runs++
		s.Calls += one.Calls
		s.Failed += one.Failed
		s.Keys += one.Keys
	}
	return runs, s
}

// TestApplicationAgentTemplateReloadsTheApp: examples/agent-template as
// written: the agent renders the key to a file and signals heron-app,
// which re-reads it; across three lease lifetimes no call fails.
func TestApplicationAgentTemplateReloadsTheApp(t *testing.T) {
	t.Parallel()
	e := startEmulator(t)
	v := startDevVault(t)
	v.configureBoth(e)
	v.writeRole("tplapp", "environment=development", "ttl=10s", "max_ttl=10s")
	dir := filepath.Join(v.dir, "agent-template")
	if err := os.MkdirAll(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	app := buildExample(t, dir, "heron-app")
	tokenFile, keyFile, pidFile, stats := filepath.Join(dir, "vault-token"), filepath.Join(dir, "heron-api-key"), filepath.Join(dir, "heron-app.pid"), filepath.Join(dir, "stats")
	if err := os.WriteFile(tokenFile, []byte(appToken(t, v, dir, "tplapp")), 0o600); err != nil {
		t.Fatal(err)
	}
	cfg := exampleConfig(t, "agent-template/agent.hcl",
		"http://127.0.0.1:8200", v.addr,
		"heron/creds/app", "heron/creds/tplapp",
		`"vault-token"`, fmt.Sprintf("%q", tokenFile),
		`"heron-api-key"`, fmt.Sprintf("%q", keyFile),
		"heron-app.pid", pidFile)
	cfgPath := filepath.Join(dir, "agent.hcl")
	if err := os.WriteFile(cfgPath, []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}
	agent := startProc(t, "vault agent", filepath.Join(dir, "agent.log"), baseEnv(v.home), vaultBin, "agent", "-config="+cfgPath)
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("---- agent log ----\n%s", agent.logTail(60))
		}
	})
	eventually(t, 30*time.Second, "the agent rendering the key file", func() error {
		_, err := os.Stat(keyFile)
		return err
	})
	appProc := startProc(t, "heron-app", filepath.Join(dir, "app.log"), baseEnv(v.home), app,
		"-key-file", keyFile, "-pidfile", pidFile, "-stats-file", stats, "-heron-url", e.URL, "-interval", "100ms")
	time.Sleep(32 * time.Second)
	appProc.stop(syscall.SIGTERM, 10*time.Second)
	runs, s := appStats(t, stats)
	t.Logf("heron-app: %d run(s), %+v", runs, s)
	if s.Failed != 0 {
		t.Errorf("%d of %d calls to Heron failed; want none\n%s", s.Failed, s.Calls, fileTail(filepath.Join(dir, "app.log"), 40))
	}
	if s.Keys < 3 {
		t.Errorf("heron-app used %d keys across 32 s of 10 s leases; want at least 3", s.Keys)
	}
}

// TestApplicationAgentExecRestartsTheApp: examples/agent-exec as written:
// the agent starts heron-app with the key in HERON_API_KEY and restarts it
// with a new key before the old lease ends; with the guide's shortest safe
// ttl no call fails across three lease lifetimes.
func TestApplicationAgentExecRestartsTheApp(t *testing.T) {
	t.Parallel()
	e := startEmulator(t)
	v := startDevVault(t)
	v.configureBoth(e)
	v.writeRole("execapp", "environment=development", "ttl=30s", "max_ttl=30s")
	dir := filepath.Join(v.dir, "agent-exec")
	if err := os.MkdirAll(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	app := buildExample(t, dir, "heron-app")
	tokenFile, stats := filepath.Join(dir, "vault-token"), filepath.Join(dir, "stats")
	if err := os.WriteFile(tokenFile, []byte(appToken(t, v, dir, "execapp")), 0o600); err != nil {
		t.Fatal(err)
	}
	cfg := exampleConfig(t, "agent-exec/agent.hcl",
		"http://127.0.0.1:8200", v.addr,
		"heron/creds/app", "heron/creds/execapp",
		`"vault-token"`, fmt.Sprintf("%q", tokenFile),
		`"./heron-app", "-heron-url", "https://app.herondata.io"`,
		fmt.Sprintf("%q, %q, %q, %q, %q, %q, %q", app, "-heron-url", e.URL, "-stats-file", stats, "-interval", "100ms"))
	cfgPath := filepath.Join(dir, "agent.hcl")
	if err := os.WriteFile(cfgPath, []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}
	agent := startProc(t, "vault agent", filepath.Join(dir, "agent.log"), baseEnv(v.home), vaultBin, "agent", "-config="+cfgPath)
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("---- agent log ----\n%s", agent.logTail(80))
		}
	})
	time.Sleep(95 * time.Second)
	agent.stop(syscall.SIGTERM, 15*time.Second)
	runs, s := appStats(t, stats)
	t.Logf("heron-app under the agent: %d run(s), %+v", runs, s)
	if s.Failed != 0 {
		t.Errorf("%d of %d calls to Heron failed; want none\n%s", s.Failed, s.Calls, agent.logTail(60))
	}
	if runs < 3 {
		t.Errorf("the agent ran heron-app %d times in 95 s of 30 s leases; want at least 3 (a restart per new key)", runs)
	}
}
