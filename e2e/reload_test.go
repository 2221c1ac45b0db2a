//go:build e2e

package e2e

import (
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"
)

// pluginPIDs returns the ids of the heron plugin processes Vault runs now.
func (v *vault) pluginPIDs(t *testing.T) []int {
	t.Helper()
	vaultPID := v.proc.cmd.Process.Pid
	entries, err := os.ReadDir("/proc")
	if err != nil {
		t.Fatal(err)
	}
	var pids []int
	for _, ent := range entries {
		pid, err := strconv.Atoi(ent.Name())
		if err != nil {
			continue
		}
		b, err := os.ReadFile(filepath.Join("/proc", ent.Name(), "stat"))
		if err != nil {
			continue // gone meanwhile
		}
		// "pid (comm) state ppid ...": comm may hold spaces, so split after
		// its closing parenthesis. The kernel cuts comm at 15 bytes.
		s := string(b)
		open, closing := strings.IndexByte(s, '('), strings.LastIndexByte(s, ')')
		if open < 0 || closing < open {
			continue
		}
		comm := s[open+1 : closing]
		fields := strings.Fields(s[closing+1:])
		if len(fields) < 2 {
			continue
		}
		ppid, _ := strconv.Atoi(fields[1])
		if ppid == vaultPID && strings.HasPrefix(pluginName, comm) {
			pids = append(pids, pid)
		}
	}
	slices.Sort(pids)
	return pids
}

// TestPluginReload: reloading the plugin in the middle of a lease replaces
// the plugin process, and afterwards renewal, expiry (deactivate) and
// revocation (delete) of leases issued before the reload all still work.
func TestPluginReload(t *testing.T) {
	t.Parallel()
	e := startEmulator(t)
	v := startDevVault(t)
	v.configureBoth(e)
	v.writeRole("app", "environment=development", "ttl=1m")
	v.writeRole("short", "environment=development", "ttl=6s")

	c := v.mustIssue("", "app")
	short := v.mustIssue("", "short")
	before := v.pluginPIDs(t)
	if len(before) == 0 {
		t.Fatal("no plugin process found under Vault before the reload")
	}

	v.run("plugin", "reload", "-plugin="+pluginName, "-type=secret")

	r := v.renew(c.LeaseID)
	if r.LeaseDuration != 60 {
		t.Fatalf("renew after reload: lease_duration %d, want 60", r.LeaseDuration)
	}
	eventually(t, 10*time.Second, "a new plugin process serving the mount", func() error {
		after := v.pluginPIDs(t)
		if len(after) == 0 || slices.ContainsFunc(after, func(p int) bool { return slices.Contains(before, p) }) {
			return fmt.Errorf("plugin processes before %v, after %v", before, after)
		}
		return nil
	})

	e.requireDeactivatedNotDeleted(t, short.Data.KeyID, short.Data.APIKey, 30*time.Second)

	e.requireWorks(t, c.Data.APIKey)
	v.run("lease", "revoke", c.LeaseID)
	e.waitState(t, c.Data.KeyID, stateDeleted, 30*time.Second)
	e.requireRejected(t, c.Data.APIKey)
}
