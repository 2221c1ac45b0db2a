//go:build e2e

package e2e

import (
	"bufio"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/heron-vault/vault-plugin-secrets-heron/herontest"
)

// The guide's blocks that need integrated storage and several nodes, marked
// <!-- walkthrough-raft: NAME --> in docs/operations.md, are run here (the
// single-server walkthrough script skips them), in the guide's order. A
// block added to, removed from, renamed or moved in the guide fails the test
// until it is run here at the right point.
var raftGuideBlocks = []string{
	"ha-upgrade-build", "ha-upgrade-node", "ha-upgrade-register", "ha-upgrade-verify", "ha-upgrade-reload",
	"backup-save", "backup-restore",
}

// TestOperatorGuideHA runs the HA and integrated-storage parts of the
// operator's guide (docs/operations.md) exactly as written, on a 3-node Raft
// cluster on 127.0.0.1 in which every node has its own plugin_directory:
//
//   - the HA upgrade: v0.1.0 installed on every node and mounted, then the
//     guide's blocks build v0.2.0, install it on every node, register it,
//     check every node's file against the catalog, tune and reload with
//     -scope=global (the "once" steps through standbys), while reads
//     through every node keep succeeding; a leader change then has the new
//     active node start v0.2.0 from its own directory; and a node elected
//     without the file behaves as the guide says, and recovers as it says;
//   - backup and restore: a snapshot is saved (through a standby, as the
//     guide's block allows); after it a lease is revoked, another issued, a
//     static role rotated, the admin key rotated and one more lease issued;
//     the snapshot is restored and the guide's recovery steps (the old admin
//     key activated again and rotated, then the inventory to delete what the
//     snapshot does not know) are followed. At the end Heron
//     holds no key that is active (or that the engine created) and that the
//     engine neither tracks nor configures, and revoking every restored lease
//     (the one revoked after the snapshot included) succeeds.
//
// Every guide command's failure fails the test.
func TestOperatorGuideHA(t *testing.T) {
	// Not parallel: its Vault servers (and builds) would starve the
	// short-lease tests of CPU on a 2-core machine; Go runs it before them.
	g := newGuideRun(t)
	e := startEmulator(t)
	g.env["HERON_BASE_URL"] = e.URL
	g.env["HERON_ADMIN_KEY"] = e.prodKey
	g.env["SNAPSHOT"] = filepath.Join(g.dir, "vault.snap")

	c := startRaftClusterAt(t, 3, "debug", raftOptions{ownPluginDirs: true})
	act, standbys := c.active(60 * time.Second)
	t.Logf("cluster up: active %s, standbys %s and %s", c.name(act), c.name(standbys[0]), c.name(standbys[1]))
	for _, v := range c.nodes {
		g.tokens[v] = v.token
	}

	// === v0.1.0 on every node, mounted: what the HA upgrade starts from ===
	// (The guide's single-server install, with the file copied to each node.)
	g.run("install-build", nil)
	old := filepath.Join(g.src, "bin", pluginName)
	var oldSHA string
	for i := range c.nodes {
		oldSHA = installFile(t, old, filepath.Join(c.pluginDirs[i], pluginName+"_v0.1.0"))
	}
	act.run("plugin", "register", "-sha256="+oldSHA, "-version=v0.1.0", "-command="+pluginName+"_v0.1.0", "secret", pluginName)
	act.run("secrets", "enable", "-path=heron", "-plugin-version=v0.1.0", pluginName)
	g.run("configure", act)
	before := g.field("configure", "lease_id")
	if before == "" {
		t.Fatal("the configure block printed no lease_id")
	}
	requireMountVersion(t, act, "v0.1.0")

	// === HA upgrade, under load through every node ===
	load := startReadLoad(c.nodes, "heron/roles/payments")
	g.run("ha-upgrade-build", nil)
	for i, v := range c.nodes {
		g.runOn("ha-upgrade-node", v, c.pluginDirs[i])
	}
	// The "once" steps through standbys: they forward to the active node.
	g.runOn("ha-upgrade-register", standbys[0], c.pluginDirs[c.index(standbys[0])])
	for i, v := range c.nodes {
		g.runOn("ha-upgrade-verify", v, c.pluginDirs[i])
	}
	out := g.runOn("ha-upgrade-reload", standbys[1], c.pluginDirs[c.index(standbys[1])])
	time.Sleep(time.Second)
	ok, failed := load.stop()
	t.Logf("reads through the three nodes during the upgrade: %d succeeded, %d failed", ok, len(failed))
	if len(failed) != 0 {
		t.Fatalf("%d reads failed during the HA upgrade, first: %v", len(failed), failed[0])
	}
	if ok < 10 {
		t.Fatalf("only %d reads during the upgrade: too few to say anything", ok)
	}
	if last := lastLine(out); last != "v0.2.0" {
		t.Fatalf("after the HA upgrade heron/ runs %q, want v0.2.0", last)
	}
	if !strings.Contains(out, "Success! Reloading plugin: "+pluginName+", reload_id: ") {
		t.Errorf("vault plugin reload -scope=global did not answer with a reload_id:\n%s", out)
	}
	c.requirePluginFile(act, filepath.Join(c.pluginDirs[c.index(act)], pluginName+"_v0.2.0"))
	for _, v := range standbys {
		if pids := v.pluginPIDs(t); len(pids) != 0 {
			t.Errorf("standby %s runs plugin processes %v", c.name(v), pids)
		}
	}
	act.renew(before)

	// A leader change: the new active node starts v0.2.0 from its own
	// plugin_directory (the file the guide installed there).
	prev := act
	act, standbys = c.stepDown(act)
	t.Logf("step-down: %s is active, %s standby", c.name(act), c.name(prev))
	var late lease
	eventually(t, 60*time.Second, "issuing on the new active node", func() error {
		var err error
		late, err = act.issue("", "payments")
		return err
	})
	e.requireWorks(t, late.Data.APIKey)
	requireMountVersion(t, act, "v0.2.0")
	c.requirePluginFile(act, filepath.Join(c.pluginDirs[c.index(act)], pluginName+"_v0.2.0"))
	eventually(t, 30*time.Second, "the old active node stops its plugin", func() error {
		if pids := prev.pluginPIDs(t); len(pids) != 0 {
			return fmt.Errorf("still runs %v", pids)
		}
		return nil
	})
	act.renew(before)

	// What the guide says of a node whose file is missing when it becomes
	// active, and its way out.
	act, standbys = requireMissingFileRecovery(t, c, act, standbys)

	// === Backup and restore (integrated storage) ===
	keep := act.mustIssue("", "payments")
	gone := act.mustIssue("", "payments")
	static0 := staticKeyID(t, act, "billing-batch")
	adminBefore := configAdminKeyID(t, act, "production")
	// Through a standby: the guide's block finds the active node itself.
	g.runOn("backup-save", standbys[0], "")
	if st, err := os.Stat(g.env["SNAPSHOT"]); err != nil || st.Size() == 0 {
		t.Fatalf("the snapshot file %s: %v (size %d)", g.env["SNAPSHOT"], err, sizeOf(st))
	}

	// After the snapshot: what the restore will forget.
	act.run("lease", "revoke", "-sync", gone.LeaseID)
	e.waitState(t, gone.Data.KeyID, stateDeleted, 30*time.Second)
	afterSnap1 := act.mustIssue("", "payments")
	act.run("write", "-f", "heron/static-roles/billing-batch/rotate")
	static1 := staticKeyID(t, act, "billing-batch")
	act.run("write", "-f", "heron/config/production/rotate")
	rotatedAdmin := configAdminKeyID(t, act, "production")
	afterSnap2 := act.mustIssue("", "payments")
	if static1 == static0 || rotatedAdmin == adminBefore {
		t.Fatalf("after the snapshot: static key %s -> %s, admin key %s -> %s: a rotation did not happen", static0, static1, adminBefore, rotatedAdmin)
	}
	if k := e.key(t, adminBefore); k.IsActive {
		t.Fatalf("the admin key %s is still active after the rotation", adminBefore)
	}
	newSince := []string{afterSnap1.Data.KeyID, afterSnap2.Data.KeyID, static1, rotatedAdmin}
	t.Logf("after the snapshot: revoked %s, issued %s and %s, rotated billing-batch to %s and the admin key to %s",
		gone.Data.KeyID, afterSnap1.Data.KeyID, afterSnap2.Data.KeyID, static1, rotatedAdmin)

	g.runOn("backup-restore", standbys[1], "")
	act, _ = c.active(60 * time.Second)
	if got := configAdminKeyID(t, act, "production"); got != adminBefore {
		t.Fatalf("after the restore config/production names admin key %s, want the snapshot's %s", got, adminBefore)
	}
	// The guide: every call to Heron fails with 401, naming the config.
	var r cliResult
	eventually(t, 60*time.Second, "the restored config's admin key refused", func() error {
		r = act.cliAs("", "read", "heron/inventory/production")
		if r.code == 0 {
			return fmt.Errorf("vault read heron/inventory/production succeeded with the rotated-out admin key")
		}
		if !strings.Contains(r.stderr, "production") {
			return fmt.Errorf("the error does not name the config: %s", r.stderr)
		}
		return nil
	})
	t.Logf("after the restore, with the snapshot's admin key: %s", oneLine(r.stderr))

	// The operator's own admin key ($HERON_ADMIN_KEY), made in Heron's
	// dashboard: the emulator's own admin, as the walkthrough script models
	// it (POST /_emulator/admin-keys).
	g.env["HERON_ADMIN_KEY"] = e.AddAdminKey("production")
	g.runOn("restore-admin-key", act, "")
	g.runOn("restore-inventory", act, "")

	for _, id := range newSince {
		if k := e.key(t, id); !k.Deleted {
			t.Errorf("key %s (%q), created after the snapshot, is not deleted after the guide's restore steps", id, k.Name)
		}
	}
	requireNothingUnknown(t, e, act, "production", g.env["HERON_ADMIN_KEY"])
	// What the snapshot knew still works: its lease renews, its static key
	// is handed out again, and new keys are issued with the new admin key.
	act.renew(keep.LeaseID)
	e.requireWorks(t, keep.Data.APIKey)
	if got := staticKeyID(t, act, "billing-batch"); got != static0 {
		t.Errorf("after the restore billing-batch hands out %s, want the snapshot's %s", got, static0)
	}
	e.requireWorks(t, act.mustIssue("", "payments").Data.APIKey)

	// Step 4: the lease revoked after the snapshot is back in Vault; its
	// key is gone from Heron, and revoking it again must succeed (Heron's 404
	// counts as done). Then every lease is revoked: no key the engine
	// created is live but the ones it manages itself (the static role's, the
	// admin key and the retired one, deleted with the config).
	act.run("lease", "revoke", "-sync", gone.LeaseID)
	act.run("lease", "revoke", "-sync", "-prefix", "heron/creds/")
	managed := map[string]bool{static0: true, configAdminKeyID(t, act, "production"): true}
	for id, k := range faultIssuedLive(e, "production") {
		if !managed[id] && k.IsActive {
			t.Errorf("after revoking every lease, the engine-created key %s (%q) is still active", id, k.Name)
		}
	}
	requireNothingUnknown(t, e, act, "production", g.env["HERON_ADMIN_KEY"])
	g.requireAllRaftBlocksRun()
}

// stepDown has the active node act step down and returns the node elected
// in its place and the standbys.
func (c *raftCluster) stepDown(act *vault) (*vault, []*vault) {
	c.t.Helper()
	act.run("operator", "step-down")
	eventually(c.t, 60*time.Second, "a new active node after step-down", func() error {
		if a, _ := c.active(60 * time.Second); a == act {
			return fmt.Errorf("%s is still active", c.name(a))
		}
		return nil
	})
	return c.active(60 * time.Second)
}

// requireMissingFileRecovery checks the guide's account (Restarts and HA)
// of a node that becomes active without the plugin file: Vault skips the
// mount (reads answer "No value found"); installing the file and reloading
// leaves the mount read-only ("cannot write to storage during setup"); a
// step-down sets it up again. The file is taken away from both standbys so
// that whichever is elected lacks it. It returns the active node and the
// standbys at the end, every node with its file back.
func requireMissingFileRecovery(t *testing.T, c *raftCluster, act *vault, standbys []*vault) (*vault, []*vault) {
	t.Helper()
	file := pluginName + "_v0.2.0"
	for _, v := range standbys {
		p := filepath.Join(c.pluginDirs[c.index(v)], file)
		if err := os.Rename(p, p+".away"); err != nil {
			t.Fatal(err)
		}
	}
	bad, _ := c.stepDown(act)
	if bad == act {
		t.Fatalf("%s stayed active", c.name(bad))
	}
	var r cliResult
	eventually(t, 60*time.Second, "the mount of a node without the file", func() error {
		r = bad.cliAs("", "read", "heron/roles/payments")
		if r.code == 0 || !strings.Contains(r.stderr+r.stdout, "No value found at heron/roles/payments") {
			return fmt.Errorf("vault read heron/roles/payments on %s: exit %d: %s%s", c.name(bad), r.code, r.stderr, r.stdout)
		}
		return nil
	})
	for _, want := range []string{"error verifying checksum: open " + filepath.Join(c.pluginDirs[c.index(bad)], file) + ": no such file or directory", "skipping plugin-based mount entry: path=heron/"} {
		if !bad.logContains(want) {
			t.Errorf("the log of %s, active without the plugin file, does not say %q", c.name(bad), want)
		}
	}
	t.Logf("%s active without the plugin file: %s", c.name(bad), oneLine(r.stderr+r.stdout))

	for _, v := range standbys {
		p := filepath.Join(c.pluginDirs[c.index(v)], file)
		if err := os.Rename(p+".away", p); err != nil {
			t.Fatal(err)
		}
	}
	bad.run("plugin", "reload", "-plugin="+pluginName, "-scope=global")
	if _, err := bad.issue("", "payments"); err == nil || !strings.Contains(err.Error(), "cannot write to storage during setup") {
		t.Fatalf("issuing on %s after installing the file and reloading: %v; the guide says it fails with \"cannot write to storage during setup\"", c.name(bad), err)
	} else {
		t.Logf("after installing the file and reloading on %s: %v", c.name(bad), oneLine(err.Error()))
	}
	act, standbys = c.stepDown(bad)
	eventually(t, 60*time.Second, "issuing after the step-down of "+c.name(bad), func() error {
		_, err := act.issue("", "payments")
		return err
	})
	t.Logf("after the step-down of %s, %s is active and issues", c.name(bad), c.name(act))
	return act, standbys
}

// requireNothingUnknown fails if Heron holds, in env, a key that is not
// deleted and that the engine neither tracks nor will clean up: every key
// must be classified by the inventory as the config's admin key or as one
// the engine tracks (lease, static, retired_admin, retained), except keys
// made by hand (not by the engine) that are deactivated, and the operator's
// own admin key (the one made in the dashboard, token operatorKey).
func requireNothingUnknown(t *testing.T, e *emulator, v *vault, env, operatorKey string) {
	t.Helper()
	own, _ := e.KeyByToken(operatorKey)
	var inv struct {
		Data struct {
			Keys map[string]struct {
				Name     string `json:"name"`
				Class    string `json:"class"`
				IsActive bool   `json:"is_active"`
			} `json:"keys"`
			Counts map[string]int `json:"counts"`
		} `json:"data"`
	}
	v.runJSON(&inv, "read", "-format=json", "heron/inventory/"+env)
	tracked := v.trackedKeys()
	live := e.LiveKeys(env)
	for _, k := range live {
		if k.User != herontest.DefaultUser {
			continue
		}
		c, listed := inv.Data.Keys[k.ID]
		switch {
		case !listed:
			t.Errorf("%s: key %s (%q) is in Heron but not in the inventory", env, k.ID, k.Name)
		case c.Class == "admin":
		case c.Class == "unmanaged" && k.ID == own.ID:
		case c.Class == "unmanaged":
			if k.CreatedBy != "" || k.IsActive {
				t.Errorf("%s: key %s (%q, active=%t, made by the engine: %t) is unmanaged: nothing will ever delete it", env, k.ID, k.Name, k.IsActive, k.CreatedBy != "")
			}
		case c.Class == "lease" || c.Class == "static" || c.Class == "retained":
			if _, ok := tracked[k.ID]; !ok {
				t.Errorf("%s: key %s (%q) is classified %s but not in keys/", env, k.ID, k.Name, c.Class)
			}
		case c.Class == "retired_admin":
		default:
			t.Errorf("%s: key %s (%q): unknown class %q", env, k.ID, k.Name, c.Class)
		}
	}
	t.Logf("%s after the restore steps: %d keys not deleted in Heron, inventory counts %v", env, len(live), inv.Data.Counts)
}

// guideRun runs blocks of docs/operations.md as written, as the walkthrough
// script does: each in its own `bash -euo pipefail`, from the root of a copy
// of the repository, with `vault` on PATH and the guide's variables set.
type guideRun struct {
	t *testing.T
	// blocks are the guide's marked blocks by name; raft the walkthrough-raft
	// ones in the guide's order, next the index of the next one to run.
	blocks map[string]guideBlock
	raft   []string
	next   int
	// src is the copy of the repository, dir holds the blocks' files.
	src, dir, home, path string
	goEnv                []string
	env                  map[string]string
	tokens               map[*vault]string
	outs                 map[string]string
}

// guideBlock is one ```sh block of the guide.
type guideBlock struct {
	kind, name string
	line       int
	text       string
}

func newGuideRun(t *testing.T) *guideRun {
	t.Helper()
	blocks, err := parseGuide(filepath.Join(repoRoot, "docs", "operations.md"))
	if err != nil {
		t.Fatal(err)
	}
	g := &guideRun{t: t, blocks: map[string]guideBlock{}, env: map[string]string{}, tokens: map[*vault]string{}, outs: map[string]string{}}
	for _, b := range blocks {
		if b.name != "" {
			g.blocks[b.name] = b
		}
		if b.kind == "walkthrough-raft" {
			g.raft = append(g.raft, b.name)
		}
	}
	if strings.Join(g.raft, " ") != strings.Join(raftGuideBlocks, " ") {
		t.Fatalf("the guide's walkthrough-raft blocks are (%s), this test runs (%s)", strings.Join(g.raft, " "), strings.Join(raftGuideBlocks, " "))
	}

	dir := t.TempDir()
	g.dir, g.src, g.home, g.path = dir, filepath.Join(dir, "src"), filepath.Join(dir, "home"), filepath.Join(dir, "path")
	for _, d := range []string{g.src, g.home, g.path} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	vault, err := filepath.Abs(vaultBin)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(vault, filepath.Join(g.path, "vault")); err != nil {
		t.Fatal(err)
	}
	// The checkout the guide's commands run in: this tree as it is, without
	// build outputs, so that the guide's `make build` leaves ./bin alone.
	cp := exec.Command("bash", "-c", `tar -C "$1" --exclude=./bin --exclude=./dist --exclude=./.git -cf - . | tar -C "$2" -xf -`, "copy", repoRoot, g.src)
	if b, err := cp.CombinedOutput(); err != nil {
		t.Fatalf("copying the repository: %v\n%s", err, b)
	}
	// Go's caches stay the user's (they default to paths under HOME).
	for _, name := range []string{"GOPATH", "GOMODCACHE", "GOCACHE", "GOENV"} {
		b, err := exec.Command("go", "env", name).Output()
		if err != nil {
			t.Fatalf("go env %s: %v", name, err)
		}
		g.goEnv = append(g.goEnv, name+"="+strings.TrimSpace(string(b)))
	}
	return g
}

var (
	guideMarkerRE = regexp.MustCompile(`^<!-- (walkthrough|walkthrough-raft): ([a-z0-9-]+) -->$`)
	guideNotRunRE = regexp.MustCompile(`^<!-- not run: .+ -->$`)
)

// parseGuide returns the ```sh blocks of the guide with the rules of the
// walkthrough script: each is directly preceded by <!-- walkthrough: NAME -->
// or <!-- walkthrough-raft: NAME --> or directly followed by <!-- not run:
// REASON -->; names are unique; a marker precedes a ```sh block.
func parseGuide(path string) ([]guideBlock, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	var (
		lines []string
		blks  []guideBlock
		errs  []string
	)
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		lines = append(lines, sc.Text())
	}
	if err := sc.Err(); err != nil {
		return nil, err
	}
	seen := map[string]bool{}
	for i := 0; i < len(lines); i++ {
		if !strings.HasPrefix(lines[i], "```") {
			if guideMarkerRE.MatchString(lines[i]) && (i+1 >= len(lines) || lines[i+1] != "```sh") {
				errs = append(errs, fmt.Sprintf("line %d: a walkthrough marker must precede a ```sh block", i+1))
			}
			continue
		}
		start, lang := i, strings.TrimPrefix(lines[i], "```")
		var body []string
		for i++; i < len(lines) && lines[i] != "```"; i++ {
			body = append(body, lines[i])
		}
		if i >= len(lines) {
			errs = append(errs, fmt.Sprintf("line %d: unclosed code block", start+1))
			break
		}
		if lang != "sh" {
			continue
		}
		b := guideBlock{line: start + 1, text: strings.Join(body, "\n") + "\n"}
		if m := guideMarkerRE.FindStringSubmatch(lineAt(lines, start-1)); m != nil {
			b.kind, b.name = m[1], m[2]
			if seen[b.name] {
				errs = append(errs, fmt.Sprintf("line %d: block %s named twice", start+1, b.name))
			}
			seen[b.name] = true
		} else if guideNotRunRE.MatchString(lineAt(lines, i+1)) {
			b.kind = "not run"
		} else {
			errs = append(errs, fmt.Sprintf("line %d: the ```sh block is neither a walkthrough block nor marked <!-- not run: REASON -->", start+1))
		}
		blks = append(blks, b)
	}
	if len(errs) != 0 {
		return nil, fmt.Errorf("%s:\n%s", path, strings.Join(errs, "\n"))
	}
	return blks, nil
}

func lineAt(lines []string, i int) string {
	if i < 0 || i >= len(lines) {
		return ""
	}
	return lines[i]
}

// run runs the guide's block name against v (nil: no Vault) and returns
// its output; see runOn.
func (g *guideRun) run(name string, v *vault) string {
	g.t.Helper()
	return g.runOn(name, v, "")
}

// runOn runs the guide's block name exactly as written, with VAULT_ADDR and
// VAULT_TOKEN of node v (unless nil) and PLUGIN_DIR set to pluginDir
// (unless ""), and fails the test if it fails. A walkthrough-raft block must
// be the guide's next one, or the one just run (run again on another node).
func (g *guideRun) runOn(name string, v *vault, pluginDir string) string {
	g.t.Helper()
	b, ok := g.blocks[name]
	if !ok {
		g.t.Fatalf("the guide has no block %s", name)
	}
	if b.kind == "walkthrough-raft" {
		switch {
		case g.next < len(g.raft) && g.raft[g.next] == name:
			g.next++
		case g.next > 0 && g.raft[g.next-1] == name:
		default:
			want := "<none left>"
			if g.next < len(g.raft) {
				want = g.raft[g.next]
			}
			g.t.Fatalf("the test runs %s but the guide's next walkthrough-raft block is %s", name, want)
		}
	}
	file := filepath.Join(g.dir, "block-"+name+".sh")
	if err := os.WriteFile(file, []byte(b.text), 0o644); err != nil {
		g.t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, "bash", "-euo", "pipefail", file)
	cmd.Dir = g.src
	env := append(baseEnv(g.home), g.goEnv...)
	env = append(env, "PATH="+g.path+string(os.PathListSeparator)+os.Getenv("PATH"))
	for k, val := range g.env {
		env = append(env, k+"="+val)
	}
	where := "no Vault"
	if v != nil {
		env = append(env, "VAULT_ADDR="+v.addr, "VAULT_TOKEN="+g.tokens[v])
		where = "VAULT_ADDR=" + v.addr
	}
	if pluginDir != "" {
		env = append(env, "PLUGIN_DIR="+pluginDir)
		where += " PLUGIN_DIR=" + pluginDir
	}
	cmd.Env = env
	start := time.Now()
	outb, err := cmd.CombinedOutput()
	out := string(outb)
	g.outs[name] = out
	shown := "$ " + strings.ReplaceAll(strings.TrimSuffix(b.text, "\n"), "\n", "\n$ ")
	if err != nil {
		g.t.Fatalf("docs/operations.md:%d: guide block %s failed (%v, %s) after %s:\n%s\n%s",
			b.line, name, err, where, time.Since(start).Round(time.Millisecond), shown, redactKeys(out))
	}
	g.t.Logf("docs/operations.md:%d: guide block %s (%s) in %s:\n%s\n%s", b.line, name, where,
		time.Since(start).Round(time.Millisecond), shown, redactKeys(out))
	return out
}

// field is the value of the first "name   value" line of the last output
// of block.
func (g *guideRun) field(block, name string) string {
	for _, l := range strings.Split(g.outs[block], "\n") {
		if f := strings.Fields(l); len(f) == 2 && f[0] == name {
			return f[1]
		}
	}
	return ""
}

func (g *guideRun) requireAllRaftBlocksRun() {
	g.t.Helper()
	if g.next != len(g.raft) {
		g.t.Fatalf("ran %d of %d walkthrough-raft blocks; not run: %v", g.next, len(g.raft), g.raft[g.next:])
	}
}

var heronTokenRE = regexp.MustCompile(`key_[0-9a-f]{48}`)

// redactKeys hides Heron tokens (api_key in vault read output): test output
// ends up in CI logs.
func redactKeys(s string) string {
	return heronTokenRE.ReplaceAllStringFunc(s, func(k string) string { return k[:8] + "...<redacted>" })
}

func lastLine(s string) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	return strings.TrimSpace(lines[len(lines)-1])
}

func oneLine(s string) string { return strings.Join(strings.Fields(s), " ") }

func sizeOf(st os.FileInfo) int64 {
	if st == nil {
		return 0
	}
	return st.Size()
}

// installFile copies src to dst (mode 0755) and returns dst's sha256.
func installFile(t *testing.T, src, dst string) string {
	t.Helper()
	b, err := exec.Command("bash", "-c", `install -m 0755 "$1" "$2" && sha256sum "$2" | cut -d' ' -f1`, "install", src, dst).CombinedOutput()
	if err != nil {
		t.Fatalf("installing %s as %s: %v\n%s", src, dst, err, b)
	}
	return strings.TrimSpace(string(b))
}

func requireMountVersion(t *testing.T, v *vault, want string) {
	t.Helper()
	var m struct {
		Data struct {
			RunningVersion string `json:"running_plugin_version"`
		} `json:"data"`
	}
	v.runJSON(&m, "read", "-format=json", "sys/mounts/heron")
	if m.Data.RunningVersion != want {
		t.Fatalf("heron/ on %s runs %q, want %s", v.addr, m.Data.RunningVersion, want)
	}
}

func staticKeyID(t *testing.T, v *vault, role string) string {
	t.Helper()
	id := strings.TrimSpace(v.run("read", "-field=key_id", "heron/static-creds/"+role))
	if id == "" {
		t.Fatalf("static-creds/%s: no key_id", role)
	}
	return id
}

func configAdminKeyID(t *testing.T, v *vault, env string) string {
	t.Helper()
	id := strings.TrimSpace(v.run("read", "-field=admin_key_id", "heron/config/"+env))
	if id == "" {
		t.Fatalf("config/%s: no admin_key_id", env)
	}
	return id
}

// index is the position of v in c.nodes.
func (c *raftCluster) index(v *vault) int {
	for i, n := range c.nodes {
		if n == v {
			return i
		}
	}
	c.t.Fatalf("%s is not a node of the cluster", v.addr)
	return -1
}

// requirePluginFile fails unless v runs exactly one heron plugin process
// and it executes path (v's own plugin_directory's file).
func (c *raftCluster) requirePluginFile(v *vault, path string) {
	c.t.Helper()
	var pids []int
	eventually(c.t, 30*time.Second, c.name(v)+" runs one plugin process", func() error {
		pids = v.pluginPIDs(c.t)
		if len(pids) != 1 {
			return fmt.Errorf("plugin processes %v", pids)
		}
		return nil
	})
	exe, err := os.Readlink(fmt.Sprintf("/proc/%d/exe", pids[0]))
	if err != nil {
		c.t.Fatal(err)
	}
	if exe != path {
		c.t.Fatalf("%s runs the plugin from %s, want %s", c.name(v), exe, path)
	}
}

// readLoad reads a path through several nodes in turn, every 100ms, until
// stopped, and counts what succeeded and what failed.
type readLoad struct {
	stopc  chan struct{}
	wg     sync.WaitGroup
	ok     atomic.Int64
	mu     sync.Mutex
	failed []error
}

func startReadLoad(nodes []*vault, path string) *readLoad {
	l := &readLoad{stopc: make(chan struct{})}
	l.wg.Add(1)
	go func() {
		defer l.wg.Done()
		for i := 0; ; i++ {
			select {
			case <-l.stopc:
				return
			case <-time.After(100 * time.Millisecond):
			}
			v := nodes[i%len(nodes)]
			var out map[string]any
			if err := v.readJSON(v.token, path, &out); err != nil {
				l.mu.Lock()
				l.failed = append(l.failed, fmt.Errorf("%s via %s at %s: %w", path, v.addr, time.Now().Format("15:04:05.000"), err))
				l.mu.Unlock()
				continue
			}
			l.ok.Add(1)
		}
	}()
	return l
}

func (l *readLoad) stop() (int64, []error) {
	close(l.stopc)
	l.wg.Wait()
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.ok.Load(), l.failed
}

// TestOperatorGuideMarkers: the test's reading of the guide applies the
// walkthrough script's rule (every ```sh block marked one way or another).
func TestOperatorGuideMarkers(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct{ name, text, wantErr string }{
		{"marked", "<!-- walkthrough: a -->\n```sh\nx\n```\n\n<!-- walkthrough-raft: b -->\n```sh\ny\n```\n\n```sh\nz\n```\n<!-- not run: why -->\n", ""},
		{"unmarked", "```sh\nx\n```\n\ntext\n", "neither a walkthrough block nor marked"},
		{"raft marker before hcl", "<!-- walkthrough-raft: b -->\n```hcl\ny\n```\n", "must precede a ```sh block"},
		{"name twice", "<!-- walkthrough: a -->\n```sh\nx\n```\n<!-- walkthrough-raft: a -->\n```sh\ny\n```\n", "named twice"},
		{"unclosed", "<!-- walkthrough: a -->\n```sh\nx\n", "unclosed"},
	} {
		path := filepath.Join(t.TempDir(), "guide.md")
		if err := os.WriteFile(path, []byte(tc.text), 0o644); err != nil {
			t.Fatal(err)
		}
		blocks, err := parseGuide(path)
		switch {
		case tc.wantErr == "" && err != nil:
			t.Errorf("%s: %v", tc.name, err)
		case tc.wantErr == "" && len(blocks) != 3:
			t.Errorf("%s: %d blocks, want 3", tc.name, len(blocks))
		case tc.wantErr != "" && (err == nil || !strings.Contains(err.Error(), tc.wantErr)):
			t.Errorf("%s: error %v, want one saying %q", tc.name, err, tc.wantErr)
		}
	}
	if _, err := parseGuide(filepath.Join(repoRoot, "docs", "operations.md")); err != nil {
		t.Errorf("the guide: %v", err)
	}
}
