//go:build e2e

package e2e

import (
	"bufio"
	"bytes"
	"fmt"
	"net/http"
	"os"
	"strings"
	"testing"
	"time"
)

// TestRaftFailover: a 3-node cluster with integrated storage (Raft) on
// 127.0.0.1, the plugin registered once and mounted once (the catalog and
// the mount table replicate through Raft). Leases are issued through the
// active node and through both standbys (which forward to the active node:
// Community standbys are not performance standbys). The active node is then
// SIGKILLed while every lease is live. The node elected in its place
// restores the leases and must end every key: the long-ttl leases revoked by
// prefix are deleted; the short-ttl ones run out and are deactivated, then
// deleted by the new active node's own periodic pass once the role's
// expired_key_retention is over. No key the engine created is left live in
// Heron, no lease in Vault, nothing tracked by the engine; and at every
// point only the active node runs the plugin, so the periodic pass (and any
// other engine work) never runs on a standby.
func TestRaftFailover(t *testing.T) {
	// Not parallel: its Vault servers (and builds) would starve the
	// short-lease tests of CPU on a 2-core machine; Go runs it before them.
	const shortTTL = 30 * time.Second
	background := userAgent + " (background)"
	e := startEmulator(t)
	c := startRaftCluster(t, 3)
	act, standbys := c.active(30 * time.Second)
	if len(standbys) != 2 {
		t.Fatalf("%d standbys, want 2", len(standbys))
	}
	t.Logf("cluster up: active %s, standbys %s and %s", c.name(act), c.name(standbys[0]), c.name(standbys[1]))

	act.configureBoth(e)
	act.writeRole("short", "environment=development", fmt.Sprintf("ttl=%ds", int(shortTTL.Seconds())), "expired_key_retention=1s")
	act.writeRole("long", "environment=production", "ttl=1h")
	c.requirePluginOnlyOn(act)

	// Two short and two long leases through each node; the CLI through a
	// standby once too, as an operator would.
	var short, long []lease
	issuedAt := time.Now()
	for _, v := range append([]*vault{act}, standbys...) {
		short = append(short, v.mustIssue("", "short"), v.mustIssue("", "short"))
		long = append(long, v.mustIssue("", "long"), v.mustIssue("", "long"))
	}
	var viaCLI lease
	standbys[1].runJSON(&viaCLI, "read", "-format=json", "heron/creds/long")
	if viaCLI.LeaseID == "" || viaCLI.Data.KeyID == "" {
		t.Fatalf("vault read heron/creds/long through standby %s: incomplete answer (lease %q, key %q)", c.name(standbys[1]), viaCLI.LeaseID, viaCLI.Data.KeyID)
	}
	long = append(long, viaCLI)
	for _, l := range append(append([]lease{}, short...), long...) {
		e.requireWorks(t, l.Data.APIKey)
	}
	if got := len(act.leasesUnder("heron/creds/short/")); got != len(short) {
		t.Fatalf("active node holds %d short leases, want %d (standbys forward issuance to it)", got, len(short))
	}
	if got := len(act.leasesUnder("heron/creds/long/")); got != len(long) {
		t.Fatalf("active node holds %d long leases, want %d", got, len(long))
	}
	c.requirePluginOnlyOn(act)

	// Crash the active node while every lease is live.
	killed := act
	killAt := time.Now()
	c.kill(killed)
	if since := time.Since(issuedAt); since > shortTTL-5*time.Second {
		t.Fatalf("the kill came %s after issuance: too late to leave the short leases (%s) to the new active node", since, shortTTL)
	}
	for _, l := range append(append([]lease{}, short...), long...) {
		if got := stateOf(e.key(t, l.Data.KeyID)); got != stateActive {
			t.Fatalf("key %s is %s right after the kill, want active", l.Data.KeyID, got)
		}
	}

	act, standbys = c.active(60 * time.Second)
	electedAt := time.Now()
	t.Logf("failover: %s is active %s after the kill; %s is standby", c.name(act), electedAt.Sub(killAt).Round(time.Millisecond), c.name(standbys[0]))
	if len(standbys) != 1 {
		t.Fatalf("%d standbys after the kill, want 1", len(standbys))
	}
	peers := c.peers(act)
	leaderPeers := 0
	for _, p := range peers {
		if p.Leader {
			leaderPeers++
		}
	}
	if leaderPeers != 1 {
		t.Errorf("list-peers after failover: %+v, want one leader", peers)
	}

	// The new active node serves the mount, also through the surviving
	// standby; a lease issued now is revoked by the prefix below with the rest.
	var after lease
	eventually(t, 30*time.Second, "issuing through the surviving standby", func() error {
		var err error
		after, err = standbys[0].issue("", "long")
		return err
	})
	e.requireWorks(t, after.Data.APIKey)
	long = append(long, after)
	c.requirePluginOnlyOn(act)

	// Revocation: the long leases, whichever node issued them, are deleted.
	act.run("lease", "revoke", "-prefix", "heron/creds/long")
	for _, l := range long {
		e.waitState(t, l.Data.KeyID, stateDeleted, 30*time.Second)
		e.requireRejected(t, l.Data.APIKey)
		if n := e.CountRequests(http.MethodPut, "/api/credentials/keys/"+l.Data.KeyID, ""); n != 0 {
			t.Errorf("revoked key %s was deactivated %d times, want deleted only", l.Data.KeyID, n)
		}
	}
	eventually(t, 30*time.Second, "long leases gone from Vault", func() error { return act.leasesLeft("heron/creds/long/") })

	// Expiry: the short leases run out on the new active node and their
	// keys are deactivated, not deleted, and not before their end.
	for _, l := range short {
		k := e.waitState(t, l.Data.KeyID, stateDeactivated, time.Until(issuedAt.Add(shortTTL+30*time.Second)))
		if lived := k.DeactivatedAt.Sub(k.Created); lived < shortTTL-2*time.Second {
			t.Errorf("short key %s deactivated %s after creation, before its %s lease ran out", l.Data.KeyID, lived, shortTTL)
		}
		if !k.DeactivatedAt.After(killAt) {
			t.Errorf("short key %s deactivated at %s, before the kill: not by the new active node", l.Data.KeyID, k.DeactivatedAt)
		}
		e.requireRejected(t, l.Data.APIKey)
	}
	t.Logf("short keys deactivated %s after issuance", time.Since(issuedAt).Round(time.Millisecond))
	eventually(t, 30*time.Second, "short leases gone from Vault", func() error { return act.leasesLeft("heron/creds/short/") })

	// Retention (1s) is over: the new active node's periodic pass (Vault's
	// rollback, every minute) deletes the deactivated keys, with no tidy.
	for _, l := range short {
		e.waitState(t, l.Data.KeyID, stateDeleted, time.Until(electedAt.Add(100*time.Second)))
	}
	t.Logf("short keys deleted by the periodic pass %s after the new active node took over", time.Since(electedAt).Round(time.Millisecond))
	bgByKey := map[string]int{}
	for _, r := range e.engineRequests() {
		if r.Method == http.MethodDelete && r.UserAgent == background && r.Time.After(killAt) {
			bgByKey[strings.TrimPrefix(r.Path, "/api/credentials/keys/")]++
		}
	}
	for _, l := range short {
		if bgByKey[l.Data.KeyID] == 0 {
			t.Errorf("short key %s: no DELETE with User-Agent %q after the kill; was it not the periodic pass that deleted it?", l.Data.KeyID, background)
		}
		if n := e.CountRequests(http.MethodPut, "/api/credentials/keys/"+l.Data.KeyID, ""); n != 1 {
			t.Errorf("short key %s deactivated %d times, want once", l.Data.KeyID, n)
		}
	}
	for _, l := range short {
		if !act.logContains(`key_id=` + l.Data.KeyID) {
			t.Errorf("new active node's log has no line for short key %s", l.Data.KeyID)
		}
	}
	c.requirePluginOnlyOn(act)

	// Nothing left: in Heron, in Vault, in the engine.
	for _, env := range []string{"development", "production"} {
		if live := faultIssuedLive(e, env); len(live) != 0 {
			for id, k := range live {
				t.Errorf("%s: engine-created key %s (%q) still live, active=%t", env, id, k.Name, k.IsActive)
			}
		}
	}
	if tracked := act.trackedKeys(); len(tracked) != 0 {
		t.Errorf("the engine still tracks %d keys: %v", len(tracked), tracked)
	}
	if n := act.irrevocableLeases(); n != 0 {
		t.Errorf("%d irrevocable leases, want 0", n)
	}
	counts := act.tidy()
	t.Logf("tidy on the new active node after the pass: %v", counts)
	for _, env := range []string{"development", "production"} {
		if live := faultIssuedLive(e, env); len(live) != 0 {
			t.Errorf("%s: %d engine-created keys live after tidy", env, len(live))
		}
	}

	// The plugin never ran on a node while it was standby: the survivor
	// that stayed standby never mentions it, the new active node only after
	// the kill.
	for _, v := range standbys {
		if lines := engineLogLines(t, v); len(lines) != 0 {
			t.Errorf("standby %s logged %d plugin lines, first: %s", c.name(v), len(lines), lines[0])
		}
	}
	for _, line := range engineLogLines(t, act) {
		if line.at.Before(killAt) {
			t.Errorf("new active node %s logged a plugin line while it was still standby (before the kill at %s):\n%s",
				c.name(act), killAt.UTC().Format(time.RFC3339Nano), line)
		}
	}
	if lines := engineLogLines(t, killed); len(lines) == 0 {
		t.Errorf("the killed active node %s logged no engine line: the log check above would see nothing", c.name(killed))
	} else {
		t.Logf("engine log lines: %d on the killed node, %d on the new active node, 0 on the standby", len(lines), len(engineLogLines(t, act)))
	}
}

// requirePluginOnlyOn fails unless active runs the heron plugin and no other
// live node runs any: a Community standby sets up no mount, so it can run no
// periodic pass and send nothing to Heron.
func (c *raftCluster) requirePluginOnlyOn(active *vault) {
	c.t.Helper()
	for _, v := range c.alive() {
		pids := v.pluginPIDs(c.t)
		switch {
		case v == active && len(pids) == 0:
			c.t.Errorf("active node %s runs no heron plugin process", c.name(v))
		case v != active && len(pids) != 0:
			c.t.Errorf("standby %s runs heron plugin processes %v", c.name(v), pids)
		}
	}
}

// logLine is one line of a Vault log and when it was written: its own
// timestamp, or for a continuation line that of the line it continues.
type logLine struct {
	at   time.Time
	text string
}

func (l logLine) String() string { return l.text }

// engineLogLines returns the lines of v's log that mention the heron plugin:
// its loading, its process, its own log lines (key changes, cleanup).
func engineLogLines(t *testing.T, v *vault) []logLine {
	t.Helper()
	b, err := os.ReadFile(v.logPath)
	if err != nil {
		t.Fatal(err)
	}
	var (
		out  []logLine
		last time.Time
	)
	sc := bufio.NewScanner(bytes.NewReader(b))
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		if f := strings.Fields(line); len(f) > 0 {
			if at, err := time.Parse(time.RFC3339Nano, f[0]); err == nil {
				last = at
			}
		}
		if strings.Contains(line, pluginName) || strings.Contains(line, "key change") {
			out = append(out, logLine{at: last, text: line})
		}
	}
	if err := sc.Err(); err != nil {
		t.Fatalf("reading %s: %v", v.logPath, err)
	}
	return out
}
