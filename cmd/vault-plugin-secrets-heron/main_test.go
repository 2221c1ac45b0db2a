package main

import (
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// TestVersionFlag builds the binary with the Version ldflag, as `make build`,
// `make release` and the e2e suite do, and checks that `-version` prints exactly
// that version and exits 0 without starting the plugin server. (No -trimpath:
// the build then shares its compiled packages with the e2e suite's.)
func TestVersionFlag(t *testing.T) {
	if testing.Short() {
		t.Skip("builds the plugin binary")
	}
	const version = "v9.8.7-test+meta"
	bin := filepath.Join(t.TempDir(), "vault-plugin-secrets-heron")
	build := exec.Command("go", "build",
		"-ldflags", "-X github.com/heron-vault/vault-plugin-secrets-heron.Version="+version,
		"-o", bin, ".")
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	for _, flag := range []string{"-version", "--version"} {
		out, err := exec.Command(bin, flag).CombinedOutput()
		if err != nil {
			t.Fatalf("%s %s: %v\n%s", bin, flag, err, out)
		}
		if got := strings.TrimSpace(string(out)); got != version {
			t.Errorf("%s prints %q, want %q", flag, got, version)
		}
	}
}

func TestVersionRequested(t *testing.T) {
	for _, tc := range []struct {
		args []string
		want bool
	}{
		{nil, false},
		{[]string{"-version"}, true},
		{[]string{"--version"}, true},
		{[]string{"-version=true"}, false},
		{[]string{"-ca-cert", "x"}, false},
		{[]string{"-ca-cert", "-version"}, false},
	} {
		if got := versionRequested(tc.args); got != tc.want {
			t.Errorf("versionRequested(%q) = %t, want %t", tc.args, got, tc.want)
		}
	}
}
