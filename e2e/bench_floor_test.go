//go:build e2e

package e2e

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
)

// The floor of an issuance through Vault (issue 22): e2e/floorplugin, a
// plugin built from the same Vault SDK that issues a leased Heron key with
// one storage read, two storage writes of the engine's sizes, one POST over
// plain net/http and a lease of the engine's shape, and nothing else. The
// benchmark mounts it at floor/ beside heron/ (on the dev server and on the
// Raft cluster) and reports creds_p50 / floor_p50: what the engine's own work
// (name template, limiter, locks, records, event) adds to the floor.

const (
	// benchFloorName is the floor's catalog name and file name; its comm
	// (the first 15 bytes) tells its process from the engine's.
	benchFloorName  = "heron-floor"
	benchFloorMount = "floor"
	// benchFloorUA is the User-Agent of the floor plugin's requests
	// (e2e/floorplugin).
	benchFloorUA = "heron-floor-plugin"
)

var (
	benchFloorOnce sync.Once
	benchFloorSHA  string
	benchFloorErr  error
)

// benchBuildFloor builds e2e/floorplugin into the plugin directory, once per
// run, and returns its sha256.
func benchBuildFloor(t *testing.T) string {
	t.Helper()
	benchFloorOnce.Do(func() {
		out := filepath.Join(pluginDir, benchFloorName)
		cmd := exec.Command("go", "build", "-o", out, "./e2e/floorplugin")
		cmd.Dir = repoRoot
		if b, err := cmd.CombinedOutput(); err != nil {
			benchFloorErr = fmt.Errorf("building the floor plugin: %v\n%s", err, b)
			return
		}
		f, err := os.Open(out)
		if err != nil {
			benchFloorErr = err
			return
		}
		defer f.Close()
		h := sha256.New()
		if _, err := io.Copy(h, f); err != nil {
			benchFloorErr = err
			return
		}
		benchFloorSHA = hex.EncodeToString(h.Sum(nil))
	})
	if benchFloorErr != nil {
		t.Fatal(benchFloorErr)
	}
	return benchFloorSHA
}

// benchMountFloor registers the floor plugin in v's catalog, mounts it at
// floor/ and points it at the emulator with its admin key; role is written
// with the engine's role's fields (ttl 1h).
func benchMountFloor(t *testing.T, v *vault, e *emulator, role string) {
	t.Helper()
	sha := benchBuildFloor(t)
	v.run("plugin", "register", "-sha256="+sha, "secret", benchFloorName)
	v.run("secrets", "enable", "-path="+benchFloorMount, benchFloorName)
	v.run("write", benchFloorMount+"/config", "url="+e.URL, "admin_api_key="+e.devKey)
	v.run("write", benchFloorMount+"/roles/"+role, "environment=development", "ttl=3600")
}

// issueFloor reads floor/creds/<role> as root over v.http, the request
// v.issue sends for heron/creds/<role>.
func (v *vault) issueFloor(role string) (lease, error) { return v.issueFloorPath("creds", role) }

// issueFloorPath reads floor/<path>/<role>: creds, or calls (the floor plus
// the engine's further calls to Vault).
func (v *vault) issueFloorPath(path, role string) (lease, error) {
	var l lease
	p := benchFloorMount + "/" + path + "/" + role
	if err := v.readJSON(v.token, p, &l); err != nil {
		return lease{}, err
	}
	if l.LeaseID == "" || l.Data.KeyID == "" || l.Data.APIKey == "" {
		return lease{}, fmt.Errorf("read %s: incomplete answer (lease %q, key_id %q)", p, l.LeaseID, l.Data.KeyID)
	}
	return l, nil
}

// benchFloorPID is the floor plugin's process under v.
func benchFloorPID(t *testing.T, v *vault) int {
	t.Helper()
	pids := benchChildPIDs(t, v.proc.cmd.Process.Pid, benchFloorName)
	if len(pids) != 1 {
		t.Fatalf("want one floor plugin process under Vault, found %v", pids)
	}
	return pids[0]
}

// benchChildPIDs returns the children of parent whose comm is comm (cut to
// the kernel's 15 bytes).
func benchChildPIDs(t *testing.T, parent int, comm string) []int {
	t.Helper()
	if len(comm) > 15 {
		comm = comm[:15]
	}
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
			continue
		}
		s := string(b)
		open, closing := strings.IndexByte(s, '('), strings.LastIndexByte(s, ')')
		if open < 0 || closing < open {
			continue
		}
		fields := strings.Fields(s[closing+1:])
		if len(fields) < 2 {
			continue
		}
		if ppid, _ := strconv.Atoi(fields[1]); ppid == parent && s[open+1:closing] == comm {
			pids = append(pids, pid)
		}
	}
	return pids
}
