//go:build e2e

package e2e

import (
	"bytes"
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

// TestOperatorGuideWalkthrough runs scripts/operator-walkthrough.sh, which runs
// every command of docs/operations.md marked as a walkthrough block against a
// non-dev Vault (file storage) and the emulator: install, configure, policies,
// token TTLs, upgrade to a second version, restart, backup and restore, and
// decommissioning, failing if a guide command fails or a key the engine
// created is left live in Heron.
func TestOperatorGuideWalkthrough(t *testing.T) {
	// Not parallel: its Vault servers (and builds) would starve the
	// short-lease tests of CPU on a 2-core machine; Go runs it before them.
	vault, err := filepath.Abs(vaultBin)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()

	cmd := exec.CommandContext(ctx, "bash", filepath.Join(repoRoot, "scripts", "operator-walkthrough.sh"))
	cmd.Dir = repoRoot
	var env []string
	for _, kv := range os.Environ() {
		if strings.HasPrefix(kv, "VAULT_") || strings.HasPrefix(kv, "TMPDIR=") {
			continue
		}
		env = append(env, kv)
	}
	cmd.Env = append(env, "VAULT_BIN="+vault, "TMPDIR="+t.TempDir())
	// Its own process group, so that a timeout stops the script with SIGTERM
	// and its EXIT trap stops the Vault and the emulator it started.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	cmd.Cancel = func() error { return syscall.Kill(-cmd.Process.Pid, syscall.SIGTERM) }
	cmd.WaitDelay = 30 * time.Second
	var out bytes.Buffer
	cmd.Stdout = &out
	cmd.Stderr = &out

	start := time.Now()
	err = cmd.Run()
	text := out.String()
	lines := strings.Split(strings.TrimSpace(text), "\n")
	last := lines[len(lines)-1]
	if err != nil || !strings.HasPrefix(last, "PASS ") {
		t.Fatalf("operator walkthrough failed (%v) after %s:\n%s", err, time.Since(start).Round(time.Second), text)
	}
	t.Logf("%s", last)
}
