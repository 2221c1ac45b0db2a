//go:build e2e

package e2e

import (
	"crypto/sha256"
	"encoding/hex"
	"flag"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

const (
	// pluginName is both the catalog name and the binary's file name, so that
	// `vault plugin register` finds the command without -command.
	pluginName = "vault-plugin-secrets-heron"
	// testUserAgent marks the suite's own calls to the emulator so they can be
	// told apart from the engine's.
	testUserAgent = "heron-e2e-test"
)

// Set once by TestMain, read-only afterwards (tests run in parallel).
var (
	// pluginVersion is stamped into the binary and registered in the
	// catalog: the version `make build` gives this tree (scripts/version.sh:
	// $VERSION, else git describe). Vault refuses to run a versioned plugin
	// that reports another version, so the two must agree.
	pluginVersion string
	// userAgent is what every upstream request of this build must carry.
	userAgent    string
	repoRoot     string
	vaultBin     string
	pluginDir    string
	pluginSHA256 string
)

func TestMain(m *testing.M) {
	os.Exit(run(m))
}

func run(m *testing.M) int {
	flag.Parse()
	raiseDefaultParallelism()

	var err error
	if repoRoot, err = findRepoRoot(); err != nil {
		fmt.Fprintln(os.Stderr, "e2e:", err)
		return 1
	}
	if vaultBin, err = findVault(repoRoot); err != nil {
		// A missing binary must fail, not skip: a skipped e2e suite reads as
		// green in CI while testing nothing.
		fmt.Fprintln(os.Stderr, "e2e:", err)
		return 1
	}

	tmp, err := os.MkdirTemp("", "heron-e2e-")
	if err != nil {
		fmt.Fprintln(os.Stderr, "e2e:", err)
		return 1
	}
	defer os.RemoveAll(tmp)

	if pluginVersion, err = buildVersion(repoRoot); err != nil {
		fmt.Fprintln(os.Stderr, "e2e:", err)
		return 1
	}
	userAgent = pluginName + "/" + pluginVersion
	pluginDir = filepath.Join(tmp, "plugins")
	if pluginSHA256, err = buildPlugin(repoRoot, pluginDir); err != nil {
		fmt.Fprintln(os.Stderr, "e2e:", err)
		return 1
	}
	return m.Run()
}

// raiseDefaultParallelism lets more tests run at once than `go test`'s default
// of GOMAXPROCS: each test mostly waits on lease timers in its own Vault, so
// on a 2-core machine the default would serialise the suite for no gain. 8,
// not more: with 16 the CLI calls of a short-lease test took seconds each
// and its leases ran out under it. An explicit -parallel wins.
func raiseDefaultParallelism() {
	explicit := false
	flag.Visit(func(f *flag.Flag) {
		if f.Name == "test.parallel" {
			explicit = true
		}
	})
	if !explicit {
		_ = flag.Set("test.parallel", "8")
	}
}

func findRepoRoot() (string, error) {
	dir, err := filepath.Abs("..")
	if err != nil {
		return "", err
	}
	if _, err := os.Stat(filepath.Join(dir, "go.mod")); err != nil {
		return "", fmt.Errorf("expected the module root (go.mod) above the e2e directory: %w", err)
	}
	return dir, nil
}

func findVault(root string) (string, error) {
	if p := os.Getenv("VAULT_BIN"); p != "" {
		if _, err := os.Stat(p); err != nil {
			return "", fmt.Errorf("VAULT_BIN=%s: %w (unset it and run `make vault` to build bin/vault)", p, err)
		}
		return p, nil
	}
	p := filepath.Join(root, "bin", "vault")
	if _, err := os.Stat(p); err != nil {
		return "", fmt.Errorf("no vault binary: VAULT_BIN is unset and %s does not exist; run the suite with `make e2e` (it picks or builds a Vault) or set VAULT_BIN", p)
	}
	return p, nil
}

// buildVersion is the version a build of the tree at root reports, as
// `make build` stamps it (scripts/version.sh).
func buildVersion(root string) (string, error) {
	cmd := exec.Command("bash", "scripts/version.sh")
	cmd.Dir = root
	cmd.Stderr = os.Stderr
	out, err := cmd.Output()
	if err != nil {
		return "", fmt.Errorf("scripts/version.sh: %v", err)
	}
	return strings.TrimSpace(string(out)), nil
}

// buildPlugin builds the plugin into dir and returns its sha256, which the
// catalog must hold: registering by checksum is what a production operator does.
func buildPlugin(root, dir string) (string, error) {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return "", err
	}
	out := filepath.Join(dir, pluginName)
	cmd := exec.Command("go", "build",
		"-ldflags", "-X github.com/heron-vault/vault-plugin-secrets-heron.Version="+pluginVersion,
		"-o", out, "./cmd/vault-plugin-secrets-heron")
	cmd.Dir = root
	if b, err := cmd.CombinedOutput(); err != nil {
		return "", fmt.Errorf("building the plugin: %v\n%s", err, b)
	}
	f, err := os.Open(out)
	if err != nil {
		return "", err
	}
	defer f.Close()
	h := sha256.New()
	if _, err := io.Copy(h, f); err != nil {
		return "", err
	}
	return hex.EncodeToString(h.Sum(nil)), nil
}
