//go:build e2e

package e2e

import (
	"bufio"
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"regexp"
	"sort"
	"strings"
	"testing"
	"time"
)

// The engine's record of every key change, read through a real Vault
// (Community): the key's history in keys/ (tombstones included), one log
// line per change in Vault's server log, and Vault events that cost nothing
// when nobody can subscribe. The engine's own unit tests (events_test.go,
// path_inventory_test.go) move its clock; here time is real, so retention
// periods are seconds and the test waits for them.

// keyRecord is `vault read -format=json heron/keys/<id>`.
type keyRecord struct {
	KeyID         string `json:"key_id"`
	KeyName       string `json:"key_name"`
	Role          string `json:"role"`
	Environment   string `json:"environment"`
	TokenPrefix   string `json:"token_prefix"`
	State         string `json:"state"`
	Kind          string `json:"kind"`
	Issued        string `json:"issued"`
	Expires       string `json:"expires"`
	LastRenewed   string `json:"last_renewed"`
	DeactivatedAt string `json:"deactivated_at"`
	DeleteAfter   string `json:"delete_after"`
	DeletedAt     string `json:"deleted_at"`
	Reason        string `json:"reason"`
	InHeron       bool   `json:"in_heron"`
}

// readKey reads heron/keys/<id> with the CLI, as an operator would, and
// checks that the answer holds no token.
func (v *vault) readKey(id string, tokens ...string) keyRecord {
	v.t.Helper()
	out := v.run("read", "-format=json", "heron/keys/"+id)
	for _, tok := range tokens {
		if strings.Contains(out, tok) {
			v.t.Fatalf("vault read heron/keys/%s shows a token", id)
		}
	}
	var r struct {
		Data keyRecord `json:"data"`
	}
	if err := json.Unmarshal([]byte(out), &r); err != nil {
		v.t.Fatalf("vault read heron/keys/%s: decoding: %v\n%s", id, err, out)
	}
	return r.Data
}

// listKeysHTTP is `LIST /v1/heron/keys?<query>` with the root token, the
// request an operator sends with curl -X LIST: the keys and their key_info.
// A 404 (Vault's answer to an empty list) is an empty list.
func (v *vault) listKeysHTTP(query string) ([]string, map[string]map[string]any) {
	v.t.Helper()
	req, err := http.NewRequest("LIST", v.addr+"/v1/heron/keys?"+query, nil)
	if err != nil {
		v.t.Fatal(err)
	}
	req.Header.Set("X-Vault-Token", v.token)
	resp, err := v.http.Do(req)
	if err != nil {
		v.t.Fatalf("LIST heron/keys?%s: %v", query, err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	if resp.StatusCode == http.StatusNotFound {
		return nil, nil
	}
	if resp.StatusCode != http.StatusOK {
		v.t.Fatalf("LIST heron/keys?%s: %d %s", query, resp.StatusCode, bytes.TrimSpace(body))
	}
	var r struct {
		Data struct {
			Keys    []string                  `json:"keys"`
			KeyInfo map[string]map[string]any `json:"key_info"`
		} `json:"data"`
	}
	if err := json.Unmarshal(body, &r); err != nil {
		v.t.Fatalf("LIST heron/keys?%s: decoding: %v\n%s", query, err, body)
	}
	return r.Data.Keys, r.Data.KeyInfo
}

// parseTimes parses RFC 3339 fields of what, failing on an empty or bad one.
func parseTimes(t *testing.T, what string, fields map[string]string) map[string]time.Time {
	t.Helper()
	out := map[string]time.Time{}
	for name, s := range fields {
		if s == "" {
			t.Errorf("%s: %s is empty, want it set", what, name)
			continue
		}
		ts, err := time.Parse(time.RFC3339, s)
		if err != nil {
			t.Errorf("%s: %s = %q: %v", what, name, s, err)
			continue
		}
		out[name] = ts
	}
	return out
}

// requireInOrder checks that the named times never go backwards.
func requireInOrder(t *testing.T, what string, times map[string]time.Time, order ...string) {
	t.Helper()
	for i := 1; i < len(order); i++ {
		a, b := times[order[i-1]], times[order[i]]
		if a.IsZero() || b.IsZero() {
			continue // already reported by parseTimes
		}
		if b.Before(a) {
			t.Errorf("%s: %s %s is before %s %s", what, order[i], b.Format(time.RFC3339), order[i-1], a.Format(time.RFC3339))
		}
	}
}

func contains(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}

// TestHistoryThroughVault: a key's whole life read back from keys/<id> once
// Heron no longer has it. A lease issued, renewed, run out (deactivated) and
// deleted by tidy after expired_key_retention reads back state deleted,
// reason retention, with issued <= last_renewed <= deactivated_at <=
// deleted_at; a lease revoked with `vault lease revoke -sync` reads back
// reason revoked. Both tombstones are listed with state=deleted and neither
// in the default list.
func TestHistoryThroughVault(t *testing.T) {
	t.Parallel()
	e := startEmulator(t)
	v := startDevVault(t)
	v.configureBoth(e)
	// 6s: issuing both leases and reading the fresh key must fit in the
	// first lease's life on a loaded 2-core machine (3s did not, in CI).
	v.writeRole("hist", "environment=development", "ttl=6s", "max_ttl=1m", "expired_key_retention=2s")
	// The lease revoked by hand must not run out first, whatever the load:
	// a revoke that lands after the lease's end is an expiry.
	v.writeRole("hist-long", "environment=development", "ttl=1h", "expired_key_retention=2s")

	expiring := v.mustIssue("", "hist")
	revoked := v.mustIssue("", "hist-long")
	tokens := []string{expiring.Data.APIKey, revoked.Data.APIKey, e.devKey, e.prodKey}
	id, revokedID := expiring.Data.KeyID, revoked.Data.KeyID
	start := v.leaseIssueTime(expiring.LeaseID)

	// Live records carry their history as it happens.
	rec := v.readKey(id, tokens...)
	if rec.State != "active" || rec.Issued == "" || rec.LastRenewed != "" || rec.DeactivatedAt != "" || rec.DeletedAt != "" || rec.Reason != "" || !rec.InHeron {
		t.Fatalf("fresh key %s: %+v, want active, issued set, in Heron, no later history", id, rec)
	}

	sleepUntil(start.Add(3 * time.Second))
	if r := v.renew(expiring.LeaseID); r.LeaseDuration != 6 {
		t.Fatalf("renew: lease_duration %d, want 6", r.LeaseDuration)
	}
	if rec = v.readKey(id, tokens...); rec.LastRenewed == "" {
		t.Fatalf("after a renewal: last_renewed is empty: %+v", rec)
	}

	// The other lease is revoked by hand: deleted at once, reason revoked.
	v.run("lease", "revoke", "-sync", revoked.LeaseID)
	if got := stateOf(e.key(t, revokedID)); got != stateDeleted {
		t.Fatalf("after lease revoke -sync: key %s is %s in Heron, want deleted", revokedID, got)
	}
	rrec := v.readKey(revokedID, tokens...)
	if rrec.State != "deleted" || rrec.Reason != "revoked" || rrec.InHeron {
		t.Errorf("revoked key %s: state %q reason %q in_heron %t, want deleted, revoked, false", revokedID, rrec.State, rrec.Reason, rrec.InHeron)
	}
	rt := parseTimes(t, "revoked key", map[string]string{"issued": rrec.Issued, "deleted_at": rrec.DeletedAt})
	requireInOrder(t, "revoked key", rt, "issued", "deleted_at")
	if rrec.DeactivatedAt != "" {
		t.Errorf("revoked key: deactivated_at %q, want empty (a revocation deletes, it never deactivates)", rrec.DeactivatedAt)
	}

	// The renewed lease runs out: Vault revokes it as an expiry, the key
	// is deactivated and retained.
	e.requireDeactivatedNotDeleted(t, id, expiring.Data.APIKey, 20*time.Second)
	rec = v.readKey(id, tokens...)
	if rec.State != "deactivated" || rec.DeactivatedAt == "" || rec.DeleteAfter == "" || rec.DeletedAt != "" {
		t.Fatalf("after expiry: %+v, want deactivated with deactivated_at and delete_after set, deleted_at empty", rec)
	}
	deleteAfter, err := time.Parse(time.RFC3339, rec.DeleteAfter)
	if err != nil {
		t.Fatal(err)
	}

	// Past the retention, tidy deletes it (the periodic pass may get there
	// first; the record must say retention either way).
	sleepUntil(deleteAfter.Add(1100 * time.Millisecond))
	counts := v.tidy()
	t.Logf("tidy after retention: %v", counts)
	eventually(t, 10*time.Second, "the retained key deleted", func() error {
		if got := stateOf(e.key(t, id)); got != stateDeleted {
			v.tidy()
			return fmt.Errorf("key %s is %s in Heron", id, got)
		}
		return nil
	})

	rec = v.readKey(id, tokens...)
	if rec.State != "deleted" || rec.Reason != "retention" || rec.InHeron {
		t.Errorf("expired key %s after tidy: state %q reason %q in_heron %t, want deleted, retention, false", id, rec.State, rec.Reason, rec.InHeron)
	}
	if rec.KeyName != expiring.Data.KeyName || rec.TokenPrefix != expiring.Data.TokenPrefix || rec.Role != "hist" || rec.Environment != "development" || rec.Kind != "lease" {
		t.Errorf("tombstone %+v does not describe the issued key (%s %s hist development lease)", rec, expiring.Data.KeyName, expiring.Data.TokenPrefix)
	}
	times := parseTimes(t, "expired key", map[string]string{
		"issued": rec.Issued, "last_renewed": rec.LastRenewed, "deactivated_at": rec.DeactivatedAt, "deleted_at": rec.DeletedAt,
	})
	requireInOrder(t, "expired key", times, "issued", "last_renewed", "deactivated_at", "deleted_at")
	// Second precision on both sides: a second of slack.
	heron := e.key(t, id)
	for name, want := range map[string]time.Time{"deactivated_at": heron.DeactivatedAt, "deleted_at": heron.DeletedAt} {
		if d := times[name].Sub(want); d < -2*time.Second || d > 2*time.Second {
			t.Errorf("expired key: %s %s, Heron did it at %s", name, times[name].Format(time.RFC3339), want.Format(time.RFC3339))
		}
	}

	// Listing: tombstones only with state=deleted.
	deleted, info := v.listKeysHTTP("state=deleted")
	for _, want := range []string{id, revokedID} {
		if !contains(deleted, want) {
			t.Errorf("LIST heron/keys?state=deleted = %v, want it to hold %s", deleted, want)
		} else if info[want]["state"] != "deleted" {
			t.Errorf("LIST heron/keys?state=deleted: key_info[%s].state = %v", want, info[want]["state"])
		}
	}
	if len(deleted) != 2 {
		t.Errorf("LIST heron/keys?state=deleted = %v, want exactly the two tombstones", deleted)
	}
	if got := info[id]["reason"]; got != "retention" {
		t.Errorf("key_info[%s].reason = %v, want retention", id, got)
	}
	if got := info[revokedID]["reason"]; got != "revoked" {
		t.Errorf("key_info[%s].reason = %v, want revoked", revokedID, got)
	}
	all, _ := v.listKeysHTTP("")
	if len(all) != 0 {
		t.Errorf("default LIST heron/keys = %v, want no tombstones (nothing else is tracked)", all)
	}
	if tracked := v.trackedKeys(); len(tracked) != 0 {
		t.Errorf("vault list heron/keys holds %d keys, want none", len(tracked))
	}

	// The CLI: `vault list` takes no k=v arguments ("Too many arguments"),
	// but `vault read <path> list=true k=v` sends GET ?list=true&k=v, which
	// Vault serves as a LIST with the parameters: the operator's command.
	if r := v.cliAs("", "list", "heron/keys", "state=deleted"); r.code == 0 {
		t.Logf("this Vault's `vault list` accepts k=v: %s", r.stdout)
	}
	var cli struct {
		Data struct {
			Keys    []string                  `json:"keys"`
			KeyInfo map[string]map[string]any `json:"key_info"`
		} `json:"data"`
	}
	v.runJSON(&cli, "read", "-format=json", "heron/keys", "list=true", "state=deleted")
	sort.Strings(cli.Data.Keys)
	wantIDs := []string{id, revokedID}
	sort.Strings(wantIDs)
	if strings.Join(cli.Data.Keys, ",") != strings.Join(wantIDs, ",") || cli.Data.KeyInfo[id]["reason"] != "retention" {
		t.Errorf("vault read heron/keys list=true state=deleted: keys %v key_info %v, want %v", cli.Data.Keys, cli.Data.KeyInfo, wantIDs)
	}
	// Without list=true it is a read of keys/, which has none.
	r := v.cliAs("", "read", "-format=json", "heron/keys", "state=deleted")
	t.Logf("vault read heron/keys state=deleted (no list=true): exit %d: %s", r.code, strings.TrimSpace(r.stderr+r.stdout))

	for _, tok := range tokens {
		if bytes.Contains(mustRead(t, v.logPath), []byte(tok)) {
			t.Errorf("a token or admin key (%s...) appears in Vault's server log", prefix(tok))
		}
	}
}

func mustRead(t *testing.T, path string) []byte {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// logLines returns the lines of Vault's log holding every one of subs.
func (v *vault) logLines(subs ...string) []string {
	v.t.Helper()
	var out []string
	sc := bufio.NewScanner(bytes.NewReader(mustRead(v.t, v.logPath)))
	sc.Buffer(make([]byte, 64<<10), 4<<20)
	for sc.Scan() {
		line := sc.Text()
		all := true
		for _, s := range subs {
			if !strings.Contains(line, s) {
				all = false
				break
			}
		}
		if all {
			out = append(out, line)
		}
	}
	return out
}

// TestLogLinesInServerLog: Vault's server log, at info level (what an
// operator runs with), holds exactly one line per key change with
// event=heron/key-issue, heron/key-renew, heron/key-revoke, heron/key-expire
// and the key's key_id, role and environment, at [INFO]; no token and no
// admin key appears anywhere in it.
func TestLogLinesInServerLog(t *testing.T) {
	t.Parallel()
	e := startEmulator(t)
	v := startDevVaultAt(t, "info")
	v.configureBoth(e)
	v.writeRole("logged", "environment=development", "ttl=2s", "max_ttl=1m", "expired_key_retention=1h")
	v.writeRole("kept", "environment=production", "ttl=1h")

	expiring := v.mustIssue("", "logged")
	revoked := v.mustIssue("", "kept")
	v.renew(revoked.LeaseID)
	v.run("lease", "revoke", "-sync", revoked.LeaseID)
	e.requireDeactivatedNotDeleted(t, expiring.Data.KeyID, expiring.Data.APIKey, 20*time.Second)

	type change struct {
		event string
		l     lease
	}
	changes := []change{
		{"heron/key-issue", expiring},
		{"heron/key-expire", expiring},
		{"heron/key-issue", revoked},
		{"heron/key-renew", revoked},
		{"heron/key-revoke", revoked},
	}
	// The expiry is logged by the revoke that deactivated the key: give the
	// log a moment to get to the file.
	eventually(t, 5*time.Second, "the expiry in the log", func() error {
		if len(v.logLines("event=heron/key-expire")) == 0 {
			return fmt.Errorf("no event=heron/key-expire line yet")
		}
		return nil
	})
	for _, c := range changes {
		lines := v.logLines("event="+c.event+" ", "key_id="+c.l.Data.KeyID)
		if len(lines) != 1 {
			t.Errorf("%d log lines with event=%s key_id=%s, want exactly 1:\n%s", len(lines), c.event, c.l.Data.KeyID, strings.Join(lines, "\n"))
			continue
		}
		line := lines[0]
		if c.event == "heron/key-issue" && c.l.Data.Role == "logged" {
			t.Logf("a log line: %s", line)
		}
		for _, want := range []string{"[INFO]", "role=" + c.l.Data.Role, "environment=" + c.l.Data.Environment, "key_name=" + c.l.Data.KeyName, "token_prefix=" + c.l.Data.TokenPrefix} {
			if !strings.Contains(line, want) {
				t.Errorf("log line of %s for %s lacks %q:\n%s", c.event, c.l.Data.KeyID, want, line)
			}
		}
	}
	// Nothing else happened to these keys: no deletion, no second expiry.
	for _, ev := range []string{"heron/key-delete", "heron/key-missing"} {
		if lines := v.logLines("event=" + ev); len(lines) != 0 {
			t.Errorf("unexpected %s lines:\n%s", ev, strings.Join(lines, "\n"))
		}
	}
	if n := len(v.logLines("event=heron/key-")); n != len(changes) {
		t.Errorf("%d key change lines in the log, want %d:\n%s", n, len(changes), strings.Join(v.logLines("event=heron/key-"), "\n"))
	}

	log := mustRead(t, v.logPath)
	for what, s := range map[string]string{
		"issued api_key (expired lease)": expiring.Data.APIKey,
		"issued api_key (revoked lease)": revoked.Data.APIKey,
		"development admin key":          e.devKey,
		"production admin key":           e.prodKey,
	} {
		if bytes.Contains(log, []byte(s)) {
			t.Errorf("%s appears in Vault's server log", what)
		}
	}
	if m := regexp.MustCompile(`key_[0-9a-f]{48}`).Find(log); m != nil {
		t.Errorf("a Heron token (%s...) appears in Vault's server log", prefix(string(m)))
	}
}

// warnOrErrorLines are the [WARN] and [ERROR] lines of Vault's log that
// mention events (the event bus, or the engine's sending).
func (v *vault) warnOrErrorLines(about *regexp.Regexp) []string {
	v.t.Helper()
	var out []string
	for _, line := range strings.Split(string(mustRead(v.t, v.logPath)), "\n") {
		if (strings.Contains(line, "[WARN]") || strings.Contains(line, "[ERROR]")) && about.MatchString(line) {
			out = append(out, line)
		}
	}
	return out
}

// TestEventsWithoutSubscribersFailNothing: on Vault Community the engine's
// events go to a bus nobody can subscribe to; issue, renew, revoke (and an
// expiry) all succeed, at normal speed, and no [WARN] or [ERROR] line about
// events (or from the engine at all) appears in Vault's log.
func TestEventsWithoutSubscribersFailNothing(t *testing.T) {
	t.Parallel()
	e := startEmulator(t)
	v := startDevVault(t) // debug: also shows what a failed send costs
	v.configureBoth(e)
	v.writeRole("ev", "environment=development", "ttl=1h")
	v.writeRole("ev-short", "environment=development", "ttl=2s", "expired_key_retention=1h")

	// No subscription endpoint on Community: the CLI's subscribe must fail,
	// or this test is not testing the case it names.
	sub := v.cliAs("", "events", "subscribe", "heron/*")
	if sub.code == 0 {
		t.Fatalf("vault events subscribe heron/* succeeded: this is not Vault Community's event bus without a subscription endpoint")
	}
	t.Logf("vault events subscribe heron/*: exit %d: %s", sub.code, strings.TrimSpace(sub.stderr+sub.stdout))

	var leases []lease
	for range 5 {
		began := time.Now()
		l, err := v.issue("", "ev")
		if err != nil {
			t.Fatalf("issue with no event subscribers: %v", err)
		}
		if d := time.Since(began); d > 5*time.Second {
			t.Errorf("issue took %s: sending an event must not slow it", d)
		}
		leases = append(leases, l)
	}
	short := v.mustIssue("", "ev-short")
	for _, l := range leases {
		if r := v.renew(l.LeaseID); r.LeaseDuration <= 0 {
			t.Errorf("renew %s: lease_duration %d", l.LeaseID, r.LeaseDuration)
		}
	}
	for _, l := range leases {
		r := v.cliAs("", "lease", "revoke", "-sync", l.LeaseID)
		if r.code != 0 {
			t.Errorf("lease revoke -sync %s: exit %d: %s", l.LeaseID, r.code, r.stderr)
			continue
		}
		if got := stateOf(e.key(t, l.Data.KeyID)); got != stateDeleted {
			t.Errorf("key %s is %s after its lease was revoked, want deleted", l.Data.KeyID, got)
		}
	}
	e.requireDeactivatedNotDeleted(t, short.Data.KeyID, short.Data.APIKey, 20*time.Second)
	if n := v.irrevocableLeases(); n != 0 {
		t.Errorf("%d irrevocable leases, want 0", n)
	}
	// The changes were recorded (so the events were sent, or tried).
	eventually(t, 5*time.Second, "every change in the log", func() error {
		for ev, want := range map[string]int{"heron/key-issue": 6, "heron/key-renew": 5, "heron/key-revoke": 5, "heron/key-expire": 1} {
			if n := len(v.logLines("event=" + ev + " ")); n != want {
				return fmt.Errorf("%d %s lines, want %d", n, ev, want)
			}
		}
		return nil
	})
	// Sending runs beside the operation with a 5s bound: let any slow send
	// finish before reading the log for its failures.
	time.Sleep(time.Second)

	if bad := v.warnOrErrorLines(regexp.MustCompile(`(?i)event`)); len(bad) != 0 {
		t.Errorf("[WARN]/[ERROR] lines about events:\n%s", strings.Join(bad, "\n"))
	}
	if bad := v.warnOrErrorLines(regexp.MustCompile(pluginName)); len(bad) != 0 {
		t.Errorf("[WARN]/[ERROR] lines from the engine:\n%s", strings.Join(bad, "\n"))
	}
	if lines := v.logLines("event not sent"); len(lines) != 0 {
		// Allowed by the spec (a debug line), reported so the operator
		// knows what Community does with the events.
		t.Logf("%d \"event not sent\" debug lines, e.g.:\n%s", len(lines), lines[0])
	}
}

// heronCreate creates a key in environment env through Heron's API with
// token, as a customer's own tooling would, and returns its id and token.
func heronCreate(t *testing.T, e *emulator, token, name string) (string, string) {
	t.Helper()
	body, _ := json.Marshal(map[string]string{"name": name})
	req, err := http.NewRequest(http.MethodPost, e.URL+"/api/credentials/keys", bytes.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("x-api-key", token)
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("User-Agent", testUserAgent)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != http.StatusCreated {
		t.Fatalf("creating %q in Heron: %d %s", name, resp.StatusCode, b)
	}
	var k struct {
		ID    string `json:"heron_id"`
		Token string `json:"token"`
	}
	if err := json.Unmarshal(b, &k); err != nil || k.ID == "" || k.Token == "" {
		t.Fatalf("creating %q in Heron: answer without id or token (%v)", name, err)
	}
	return k.ID, k.Token
}

// heronDeactivate deactivates key id through Heron's API with token.
func heronDeactivate(t *testing.T, e *emulator, token, id string) {
	t.Helper()
	req, err := http.NewRequest(http.MethodPut, e.URL+"/api/credentials/keys/"+id+"/deactivate", nil)
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("x-api-key", token)
	req.Header.Set("User-Agent", testUserAgent)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("deactivating %s in Heron: %d", id, resp.StatusCode)
	}
}

// inventoryItem is one key of inventory/<env>.
type inventoryItem struct {
	Name        string `json:"name"`
	TokenPrefix string `json:"token_prefix"`
	Created     string `json:"created"`
	IsActive    bool   `json:"is_active"`
	LastUsed    string `json:"last_used"`
	Class       string `json:"class"`
	Role        string `json:"role"`
}

// readInventory is `vault read -format=json heron/inventory/<env> [args]`;
// it checks that no token appears and that counts add up to the keys.
func (v *vault) readInventory(env string, args ...string) (map[string]inventoryItem, map[string]int) {
	v.t.Helper()
	out := v.run(append([]string{"read", "-format=json", "heron/inventory/" + env}, args...)...)
	if m := regexp.MustCompile(`key_[0-9a-f]{48}`).FindString(out); m != "" {
		v.t.Fatalf("inventory/%s shows a token (%s...)", env, prefix(m))
	}
	var r struct {
		Data struct {
			Keys   map[string]inventoryItem `json:"keys"`
			Counts map[string]int           `json:"counts"`
		} `json:"data"`
	}
	if err := json.Unmarshal([]byte(out), &r); err != nil {
		v.t.Fatalf("inventory/%s: decoding: %v\n%s", env, err, out)
	}
	var classes []string
	n := 0
	for c, k := range r.Data.Counts {
		classes = append(classes, c)
		n += k
	}
	sort.Strings(classes)
	if want := []string{"admin", "lease", "retained", "retired_admin", "static", "unconfirmed", "unmanaged"}; strings.Join(classes, ",") != strings.Join(want, ",") {
		v.t.Errorf("inventory/%s %v: counts has classes %v, want every class %v", env, args, classes, want)
	}
	if n != len(r.Data.Keys) {
		v.t.Errorf("inventory/%s %v: counts add up to %d, %d keys returned", env, args, n, len(r.Data.Keys))
	}
	return r.Data.Keys, r.Data.Counts
}

// TestInventorySeededEnvironment: development holds, besides what the
// engine made, the customer's own keys made through Heron's API (one used,
// one deactivated by hand, one never used). inventory/development classifies
// each key Heron lists: a live lease (lease), an expired lease awaiting
// deletion (retained), a static role's key (static), the admin key after a
// rotation (admin) and the rotated-out one (retired_admin), the customer's
// keys (unmanaged); counts match; unused_for=1h right after seeding returns
// nothing; production's inventory is production's admin key alone.
func TestInventorySeededEnvironment(t *testing.T) {
	t.Parallel()
	e := startEmulator(t)
	v := startDevVault(t)
	v.configureBoth(e)
	v.writeRole("inv", "environment=development", "ttl=1h")
	v.writeRole("inv-short", "environment=development", "ttl=2s", "expired_key_retention=1h")

	// The customer's keys, made with the seeded admin key behind the
	// engine's back.
	usedID, usedTok := heronCreate(t, e, e.devKey, "customer-used")
	offID, offTok := heronCreate(t, e, e.devKey, "customer-off")
	unusedID, unusedTok := heronCreate(t, e, e.devKey, "customer-unused")
	e.requireWorks(t, usedTok)
	heronDeactivate(t, e, e.devKey, offID)

	live := v.mustIssue("", "inv")
	expired := v.mustIssue("", "inv-short")
	v.run("write", "heron/static-roles/svc", "environment=development")
	var static struct {
		Data struct {
			KeyID string `json:"key_id"`
		} `json:"data"`
	}
	v.runJSON(&static, "read", "-format=json", "heron/static-roles/svc")
	v.run("write", "-f", "heron/config/development/rotate")
	var cfg struct {
		Data struct {
			AdminKeyID  string `json:"admin_key_id"`
			RetiredKeys []struct {
				KeyID string `json:"key_id"`
			} `json:"retired_keys"`
		} `json:"data"`
	}
	v.runJSON(&cfg, "read", "-format=json", "heron/config/development")
	if cfg.Data.AdminKeyID == "" || len(cfg.Data.RetiredKeys) != 1 || static.Data.KeyID == "" {
		t.Fatalf("after rotation: admin_key_id %q, %d retired keys, static key %q", cfg.Data.AdminKeyID, len(cfg.Data.RetiredKeys), static.Data.KeyID)
	}
	seeded, ok := e.KeyByToken(e.devKey)
	if !ok || seeded.ID != cfg.Data.RetiredKeys[0].KeyID {
		t.Fatalf("retired key %s is not the seeded admin key %s", cfg.Data.RetiredKeys[0].KeyID, seeded.ID)
	}
	e.requireDeactivatedNotDeleted(t, expired.Data.KeyID, expired.Data.APIKey, 20*time.Second)

	tokens := []string{usedTok, offTok, unusedTok, live.Data.APIKey, expired.Data.APIKey, e.devKey, e.prodKey}
	keys, counts := v.readInventory("development")
	want := map[string][2]string{ // id -> class, role
		live.Data.KeyID:               {"lease", "inv"},
		expired.Data.KeyID:            {"retained", "inv-short"},
		static.Data.KeyID:             {"static", "svc"},
		cfg.Data.AdminKeyID:           {"admin", ""},
		cfg.Data.RetiredKeys[0].KeyID: {"retired_admin", ""},
		usedID:                        {"unmanaged", ""},
		offID:                         {"unmanaged", ""},
		unusedID:                      {"unmanaged", ""},
	}
	if len(keys) != len(want) {
		var ids []string
		for id, k := range keys {
			ids = append(ids, id+"="+k.Name+"/"+k.Class)
		}
		t.Errorf("inventory/development holds %d keys, want %d: %v", len(keys), len(want), ids)
	}
	for id, w := range want {
		k, ok := keys[id]
		if !ok {
			t.Errorf("inventory/development lacks %s (want %s)", id, w[0])
			continue
		}
		if k.Class != w[0] || k.Role != w[1] {
			t.Errorf("inventory key %s (%s): class %q role %q, want %q %q", id, k.Name, k.Class, k.Role, w[0], w[1])
		}
		h := e.key(t, id)
		if k.Name != h.Name || k.TokenPrefix != h.TokenPrefix || k.IsActive != h.IsActive || k.Created != h.Created.UTC().Format(time.RFC3339) {
			t.Errorf("inventory key %s: %+v, Heron has name %q prefix %q active %t created %s", id, k, h.Name, h.TokenPrefix, h.IsActive, h.Created.Format(time.RFC3339))
		}
	}
	wantCounts := map[string]int{"lease": 1, "retained": 1, "static": 1, "admin": 1, "retired_admin": 1, "unconfirmed": 0, "unmanaged": 3}
	for c, n := range wantCounts {
		if counts[c] != n {
			t.Errorf("counts[%s] = %d, want %d (counts %v)", c, counts[c], n, counts)
		}
	}
	for id, active := range map[string]bool{offID: false, usedID: true, unusedID: true, seeded.ID: false, expired.Data.KeyID: false, live.Data.KeyID: true} {
		if keys[id].IsActive != active {
			t.Errorf("inventory key %s (%s): is_active %t, want %t", id, keys[id].Name, keys[id].IsActive, active)
		}
	}
	if keys[usedID].LastUsed == "" {
		t.Errorf("the customer's used key: last_used empty, want set")
	}
	if keys[unusedID].LastUsed != "" {
		t.Errorf("the customer's never-used key: last_used %q, want empty", keys[unusedID].LastUsed)
	}
	if keys[cfg.Data.AdminKeyID].LastUsed == "" {
		t.Errorf("the admin key: last_used empty, but the inventory's own list used it")
	}

	// unused_for: every key here was created or used within the last
	// minutes, so an hour finds none, whatever Heron's clock does meanwhile.
	for _, arg := range []string{"unused_for=1h", "unused_for=3600"} {
		keys, counts := v.readInventory("development", arg)
		if len(keys) != 0 {
			t.Errorf("inventory/development %s: %d keys, want none", arg, len(keys))
		}
		for c, n := range counts {
			if n != 0 {
				t.Errorf("inventory/development %s: counts[%s] = %d, want 0", arg, c, n)
			}
		}
	}
	// unused_for=0 is no filter.
	if keys, _ := v.readInventory("development", "unused_for=0"); len(keys) != len(want) {
		t.Errorf("inventory/development unused_for=0: %d keys, want all %d", len(keys), len(want))
	}
	// A negative or malformed duration is a 400, not a 500.
	for _, arg := range []string{"unused_for=-1h", "unused_for=soon"} {
		r := v.cliAs("", "read", "heron/inventory/development", arg)
		if r.code == 0 || !strings.Contains(r.stderr, "unused_for") || strings.Contains(r.stderr, "Code: 500") {
			t.Errorf("inventory/development %s: exit %d, want a 400 naming unused_for:\n%s", arg, r.code, r.stderr)
		}
	}

	// Production: its admin key, nothing of development's.
	pkeys, pcounts := v.readInventory("production")
	prodAdmin, _ := e.KeyByToken(e.prodKey)
	if len(pkeys) != 1 || pkeys[prodAdmin.ID].Class != "admin" || pcounts["admin"] != 1 {
		t.Errorf("inventory/production: %v counts %v, want only the admin key %s", pkeys, pcounts, prodAdmin.ID)
	}

	out := mustRead(t, v.logPath)
	for _, tok := range tokens {
		if bytes.Contains(out, []byte(tok)) {
			t.Errorf("a token (%s...) appears in Vault's server log", prefix(tok))
		}
	}
}
