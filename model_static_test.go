package heron

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/hashicorp/vault/sdk/logical"
	"pgregory.net/rapid"

	"github.com/heron-vault/vault-plugin-secrets-heron/herontest"
)

// ---------------------------------------------------------------------------
// Static roles
//
// Actions (group static): staticCreate (a fresh key), staticAdopt (adopt an
// out-of-band key of the main Heron user, with or without
// skip_import_rotation), staticRead (read static-creds and use the key it
// returns in Heron, as the application would), staticUse (the application
// uses the token it read last, maybe a previous key during an overlap),
// staticRotate, staticDelete, and periodic (the engine's periodic pass: the
// scheduled rotation and the overlap retirement run there).
//
// Invariants:
//
//	s1  static-creds returns a key that authenticates in Heron whenever
//	    Heron and storage are healthy at read time (no fault armed, the config
//	    holds a working key of the main user).
//	s2  a static role's previous key is not deactivated before `overlap` has
//	    passed since the rotation (Vault clock), unless the role was deleted
//	    or rotated again (successfully: a failed rotation that kills the
//	    previous key is reported as its own class).
//	s3  every key a static role held (or the engine tracked as a static key,
//	    adopted ones included) ends deactivated: at once when the role is
//	    deleted, and after its overlap once max_overlap has passed; and
//	    deleted once every retention has passed. Checked while settling.
//	s4  invariant d for static keys: every engine-created static key live in
//	    Heron is the current or previous key of a static role, tracked, or
//	    named by a pending write-ahead record.
//
// Heron stamps last_used on its own (wall) clock; the engine compares it with
// the Vault clock. virtualLastUsed, in front of the emulator, notes the Vault
// clock at every authenticated use and rewrites last_used in key lists to it,
// so "unused for unused_for" means the same on both sides.

const (
	mStaticOverlap    = 10 * time.Minute
	mStaticMaxOverlap = 30 * time.Minute
	mStaticUnusedFor  = 5 * time.Minute
	mStaticRetention  = time.Hour
	mStaticPeriod     = time.Hour
)

var mStaticNames = []string{"svc", "web"}

// virtualLastUsed maps Heron's last_used onto the Vault clock.
type virtualLastUsed struct {
	srv   *herontest.Server
	clock *mClock
	mu    sync.Mutex
	at    map[string]time.Time // key id -> Vault time of its last authenticated use
}

// bufWriter holds a response back so that it can be rewritten; a hijack
// (a dropped connection) goes straight to the client's connection.
type bufWriter struct {
	w        http.ResponseWriter
	header   http.Header
	status   int
	buf      strings.Builder
	hijacked bool
}

func (b *bufWriter) Header() http.Header { return b.header }
func (b *bufWriter) WriteHeader(s int) {
	if b.status == 0 {
		b.status = s
	}
}
func (b *bufWriter) Write(p []byte) (int, error) {
	if b.status == 0 {
		b.status = http.StatusOK
	}
	return b.buf.Write(p)
}
func (b *bufWriter) Hijack() (net.Conn, *bufio.ReadWriter, error) {
	b.hijacked = true
	return b.w.(http.Hijacker).Hijack()
}

func (v *virtualLastUsed) wrap(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		tok := r.Header.Get("x-api-key")
		var before *time.Time
		id := ""
		if k, ok := v.srv.KeyByToken(tok); ok && tok != "" {
			id, before = k.ID, k.LastUsed
		}
		note := func() {
			if id == "" {
				return
			}
			if k, ok := v.srv.KeyByToken(tok); ok && k.LastUsed != nil && (before == nil || !before.Equal(*k.LastUsed)) {
				v.mu.Lock()
				v.at[id] = v.clock.Now()
				v.mu.Unlock()
			}
		}
		if r.Method != http.MethodGet || r.URL.Path != "/api/credentials/keys" {
			next.ServeHTTP(w, r)
			note()
			return
		}
		bw := &bufWriter{w: w, header: http.Header{}}
		next.ServeHTTP(bw, r)
		note()
		if bw.hijacked {
			return
		}
		body := bw.buf.String()
		if bw.status == http.StatusOK {
			body = v.rewrite(body)
		}
		for k, vs := range bw.header {
			if k != "Content-Length" {
				w.Header()[k] = vs
			}
		}
		if bw.status == 0 {
			bw.status = http.StatusOK
		}
		w.WriteHeader(bw.status)
		_, _ = io.WriteString(w, body)
	})
}

func (v *virtualLastUsed) rewrite(body string) string {
	var list struct {
		Keys []map[string]interface{} `json:"keys"`
	}
	if err := json.Unmarshal([]byte(body), &list); err != nil {
		return body
	}
	v.mu.Lock()
	defer v.mu.Unlock()
	for _, k := range list.Keys {
		if k["last_used"] == nil {
			continue
		}
		id, _ := k["heron_id"].(string)
		if t, ok := v.at[id]; ok {
			k["last_used"] = t.UTC().Format("2006-01-02T15:04:05.000000-07:00")
		} else {
			k["last_used"] = nil
		}
	}
	out, err := json.Marshal(map[string]interface{}{"keys": list.Keys})
	if err != nil {
		return body
	}
	return string(out) + "\n"
}

// mStats counts what the static actions reached (HERON_MODEL_STATS=1), to
// see that the search gets where the invariants bite.
var mStats = struct {
	sync.Mutex
	n map[string]int
}{n: map[string]int{}}

func mStat(what string) {
	mStats.Lock()
	mStats.n[what]++
	mStats.Unlock()
}

func mPrintStats(t *testing.T) {
	if os.Getenv("HERON_MODEL_STATS") == "" {
		return
	}
	mStats.Lock()
	defer mStats.Unlock()
	names := make([]string, 0, len(mStats.n))
	for k := range mStats.n {
		names = append(names, k)
	}
	sort.Strings(names)
	for _, k := range names {
		t.Logf("stat %-60s %d", k, mStats.n[k])
	}
}

// mStaticRole is what the model knows of one static role name.
type mStaticRole struct {
	token       string    // the token the application read last
	lastCurrent string    // the role's current key at the previous check
	rotAttempts int       // rotations tried (rotate, scheduled, static-creds replacing a key)
	attemptsObs int       // rotAttempts at the previous check
	lastFired   time.Time // s5: the scheduled time the pass's last rotation served
}

// mStaticKey is a key a static role held.
type mStaticKey struct {
	id, role string
	name     string
	// s2: the key is the previous key of role, whose current key is
	// successor, until protectedUntil; a rotation attempt after attemptsAt
	// classes a deactivation differently.
	protectedUntil time.Time
	successor      string
	attemptsAt     int
}

func (m *model) static(name string) *mStaticRole {
	ms := m.statics[name]
	if ms == nil {
		ms = &mStaticRole{}
		m.statics[name] = ms
	}
	return ms
}

// staticHolder names the static role whose current or previous key id is.
func (w *world) staticHolder(id string) string {
	for _, r := range w.statics {
		if r.KeyID == id || r.PreviousKeyID == id {
			return r.Name
		}
	}
	return ""
}

// healthy: no Heron or storage fault is armed and the config holds a working
// key of the main user, so a static-creds read has every reason to succeed.
func (m *model) healthy(w *world) bool {
	m.f429.mu.Lock()
	rules := len(m.f429.rules)
	m.f429.mu.Unlock()
	m.st.mu.Lock()
	srules := len(m.st.rules)
	m.st.mu.Unlock()
	if rules > 0 || srules > 0 || m.forced || m.srv.PendingFailNext() > 0 || m.deleting {
		return false
	}
	if w.cfg == nil || w.cfg.Deleting {
		return false
	}
	k, ok := m.srv.KeyByToken(w.cfg.AdminAPIKey)
	return ok && !k.Deleted && k.IsActive && k.Environment == mEnv
}

// heronUse makes one authenticated call with token, as an application does.
func (m *model) heronUse(token string) int {
	req, _ := http.NewRequest(http.MethodGet, m.useFront.URL+"/api/hello_world/authenticated", nil)
	req.Header.Set("x-api-key", token)
	res, err := (&http.Client{Timeout: 5 * time.Second}).Do(req)
	if err != nil {
		return 0
	}
	res.Body.Close()
	return res.StatusCode
}

func (m *model) staticData() map[string]interface{} {
	return map[string]interface{}{
		"environment":           mEnv,
		"rotation_period":       int(mStaticPeriod.Seconds()),
		"overlap":               int(mStaticOverlap.Seconds()),
		"max_overlap":           int(mStaticMaxOverlap.Seconds()),
		"unused_for":            int(mStaticUnusedFor.Seconds()),
		"retired_key_retention": int(mStaticRetention.Seconds()),
	}
}

func (m *model) actStaticCreate(name string) {
	m.tick()
	err := outcome(m.do(logical.CreateOperation, "static-roles/"+name, m.staticData()))
	m.logStep("static role create %s: %s", name, short(err))
}

// actStaticAdopt: the customer made a key out of band (a key of the main
// Heron user) and hands it to a new static role.
func (m *model) actStaticAdopt(name string, skipRotation bool) {
	m.tick()
	tok := m.srv.AddAdminKey(mEnv)
	k, _ := m.srv.KeyByToken(tok)
	data := m.scheduledStaticData()
	data["api_key"] = tok
	data["skip_import_rotation"] = skipRotation
	err := outcome(m.do(logical.CreateOperation, "static-roles/"+name, data))
	m.logStep("static role create %s adopting key %s (skip_import_rotation=%v): %s", name, k.ID, skipRotation, short(err))
}

func (m *model) actStaticRead(name string) {
	m.tick()
	w := m.snapshot()
	healthy := m.healthy(w)
	ms := m.static(name)
	r := w.statics[name]
	if r != nil {
		if rec := w.tracked[r.KeyID]; r.KeyID == "" || rec == nil || rec.State != keyStateActive {
			ms.rotAttempts++ // static-creds replaces the key first
		}
	}
	resp, err := m.do(logical.ReadOperation, "static-creds/"+name, nil)
	if err := outcome(resp, err); err != nil {
		m.logStep("static-creds %s: %s (healthy: %v)", name, short(err), healthy)
		mStat(fmt.Sprintf("static-creds read (healthy %v): error", healthy))
		if healthy && r != nil && m.invariants["s1"] && !m.budgetRateLimited(err) {
			m.fail("s1", "static-creds failed with Heron and storage healthy", "static-creds/%s failed although Heron and storage were healthy: %v", name, err)
		}
		return
	}
	tok, _ := resp.Data["api_key"].(string)
	id, _ := resp.Data["key_id"].(string)
	status := m.heronUse(tok)
	ms.token = tok
	mStat(fmt.Sprintf("static-creds read (healthy %v): application's call %d", healthy, status))
	m.logStep("static-creds %s: key %s; the application uses it: %d (healthy: %v)", name, id, status, healthy)
	if healthy && status != http.StatusOK && m.invariants["s1"] {
		k, ok := m.srv.Key(id)
		m.fail("s1", "static-creds returned a key that does not authenticate", "static-creds/%s returned key %s, which Heron refuses (%d; the key is %s) although Heron and storage were healthy", name, id, status, keyState(k, ok))
	}
}

func (m *model) actStaticUse(name string) {
	m.tick()
	ms := m.static(name)
	if ms.token == "" {
		m.logStep("application of %s has no key yet", name)
		return
	}
	status := m.heronUse(ms.token)
	k, _ := m.srv.KeyByToken(ms.token)
	w := m.snapshot()
	held := "current"
	if r := w.statics[name]; r == nil {
		held = "role gone"
	} else if r.PreviousKeyID == k.ID {
		held = "previous"
	} else if r.KeyID != k.ID {
		held = "neither"
	}
	mStat(fmt.Sprintf("application uses its key (%s): %d", held, status))
	m.logStep("application of %s uses the key it read last (%s): %d", name, k.ID, status)
}

func (m *model) actStaticRotate(name string) {
	m.tick()
	if cur, _ := getStaticRole(context.Background(), m.st.inner, name); cur != nil {
		m.static(name).rotAttempts++
	}
	err := outcome(m.do(logical.UpdateOperation, "static-roles/"+name+"/rotate", nil))
	m.logStep("static role rotate %s: %s", name, short(err))
}

func (m *model) actStaticDelete(name string) {
	m.tick()
	// A delete deactivates the role's keys at once, also when it then fails:
	// the overlap no longer protects them (s2).
	for _, sk := range m.sKeys {
		if sk.role == name {
			sk.protectedUntil = time.Time{}
		}
	}
	err := outcome(m.do(logical.DeleteOperation, "static-roles/"+name, nil))
	m.logStep("static role delete %s: %s", name, short(err))
}

// actPeriodic is one run of the engine's periodic pass (Vault calls it every
// minute): due rotations, then the cleanup pass.
func (m *model) actPeriodic() {
	m.tick()
	now := m.clock.Now()
	before, healthy := m.beforePass(now)
	ctx, cancel := context.WithTimeout(context.Background(), mReqDeadline)
	defer cancel()
	err := m.b.periodicFunc(ctx, &logical.Request{Operation: logical.RollbackOperation, Storage: m.st})
	m.logStep("periodic pass: %s", short(err))
	m.checkScheduledRotations(before, healthy, now)
}

func (m *model) rapidStaticActions() map[string]func(*rapid.T) {
	name := func(t *rapid.T) string { return rapid.SampledFrom(mStaticNames).Draw(t, "static") }
	// Reads, uses, rotations and deletes go to roles that exist (or whose
	// application holds a key), so that the search spends its steps there.
	existing := func(t *rapid.T) string {
		roles, _ := listStaticRoles(context.Background(), m.st.inner)
		var names []string
		for _, r := range roles {
			names = append(names, r.Name)
		}
		if len(names) == 0 {
			t.Skip("no static role")
		}
		return rapid.SampledFrom(names).Draw(t, "static")
	}
	return map[string]func(*rapid.T){
		"staticCreate": func(t *rapid.T) { m.actStaticCreateOnSchedule(name(t)) },
		"staticAdopt": func(t *rapid.T) {
			m.actStaticAdopt(name(t), rapid.Bool().Draw(t, "skip_import_rotation"))
		},
		"staticRead": func(t *rapid.T) { m.actStaticRead(existing(t)) },
		"staticUse": func(t *rapid.T) {
			var names []string
			for _, n := range mStaticNames {
				if ms := m.statics[n]; ms != nil && ms.token != "" {
					names = append(names, n)
				}
			}
			if len(names) == 0 {
				t.Skip("no application holds a key")
			}
			m.actStaticUse(rapid.SampledFrom(names).Draw(t, "static"))
		},
		"staticRotate": func(t *rapid.T) { m.actStaticRotate(existing(t)) },
		"staticDelete": func(t *rapid.T) { m.actStaticDelete(existing(t)) },
		"periodic":     func(t *rapid.T) { m.actPeriodic() },
	}
}

// observeStatics learns, after a step, which keys static roles hold, and
// which previous keys are within their overlap (s2).
func (m *model) observeStatics(w *world) {
	add := func(id, role string) *mStaticKey {
		sk := m.sKeys[id]
		if sk == nil {
			sk = &mStaticKey{id: id, role: role}
			if k, ok := w.keys[id]; ok {
				sk.name = k.Name
			}
			m.sKeys[id] = sk
		}
		return sk
	}
	for id, rec := range w.tracked {
		if rec.Kind == keyKindStatic {
			add(id, rec.Role)
		}
	}
	for _, r := range w.statics {
		ms := m.static(r.Name)
		if r.KeyID != "" {
			add(r.KeyID, r.Name)
		}
		if r.PreviousKeyID != "" {
			add(r.PreviousKeyID, r.Name)
		}
		if a := ms.lastCurrent; a != "" && a != r.KeyID && m.lastActive[a] && ms.rotAttempts-ms.attemptsObs <= 1 &&
			(r.PreviousKeyID == a || r.PreviousKeyID == "") {
			// One rotation replaced a: it is the previous key for overlap.
			sk := add(a, r.Name)
			sk.protectedUntil = r.LastRotated.Add(r.Overlap)
			if r.PreviousKeyID == a {
				sk.protectedUntil = r.PreviousSince.Add(r.Overlap)
			}
			sk.successor, sk.attemptsAt = r.KeyID, ms.rotAttempts
			mStat("s2: a previous key protected for its overlap")
		}
		ms.lastCurrent, ms.attemptsObs = r.KeyID, ms.rotAttempts
	}
	for name, ms := range m.statics {
		if w.statics[name] == nil {
			ms.lastCurrent, ms.attemptsObs = "", ms.rotAttempts
		}
	}
}

func (m *model) checkStatics(w *world) {
	m.t.Helper()
	if !m.invariants["s2"] {
		return
	}
	now := m.clock.Now()
	ids := make([]string, 0, len(m.sKeys))
	for id := range m.sKeys {
		ids = append(ids, id)
	}
	sort.Strings(ids)
	for _, id := range ids {
		sk := m.sKeys[id]
		if sk.protectedUntil.IsZero() {
			continue
		}
		r := w.statics[sk.role]
		if !now.Before(sk.protectedUntil) || r == nil || r.KeyID != sk.successor {
			switch {
			case r == nil:
				mStat("s2: protection ended: role deleted")
			case r.KeyID != sk.successor:
				mStat("s2: protection ended: rotated again")
			default:
				mStat("s2: protection ended: overlap over")
			}
			sk.protectedUntil = time.Time{} // overlap over, role deleted, or rotated again
			continue
		}
		k, ok := w.keys[id]
		if ok && !k.Deleted && k.IsActive {
			continue
		}
		class := "previous key of a static role is " + keyState(k, ok) + " before its overlap ended"
		if m.statics[sk.role].rotAttempts > sk.attemptsAt {
			class = "previous key of a static role is " + keyState(k, ok) + " before its overlap ended, by a rotation that failed"
		}
		m.fail("s2", class, "key %s was the previous key of static role %q (current %s) and must stay active until %s, but it is %s at %s (rotation attempts since: %d)",
			id, sk.role, sk.successor, sk.protectedUntil.Format("15:04:05"), keyState(k, ok), now.Format("15:04:05"), m.statics[sk.role].rotAttempts-sk.attemptsAt)
	}
}

func (m *model) rememberActive(w *world) {
	for id, k := range w.keys {
		m.lastActive[id] = !k.Deleted && k.IsActive
	}
}

// settleStatics is the static part of settling: the overlaps run out, then
// the operator deletes every static role (s3).
func (m *model) settleStatics() {
	m.t.Helper()
	w := m.snapshot()
	names := make([]string, 0, len(w.statics))
	for n := range w.statics {
		names = append(names, n)
	}
	sort.Strings(names)
	s3 := m.invariants["s3"]
	if len(names) > 0 {
		m.tick()
		m.logStep("advance clock past every max_overlap")
		m.advanceClock(mStaticMaxOverlap + time.Minute)
		m.actPeriodic()
		m.check("after the overlaps ran out")
		w = m.snapshot()
		now := m.clock.Now()
		for _, n := range names {
			if r := w.statics[n]; s3 && r != nil && r.PreviousKeyID != "" && !now.Before(r.PreviousSince.Add(r.MaxOverlap)) {
				m.fail("s3", "previous key kept past max_overlap", "static role %q still holds previous key %s at %s, past max_overlap (since %s)", n, r.PreviousKeyID, now.Format("15:04:05"), r.PreviousSince.Format("15:04:05"))
			}
		}
		m.checkStaticKeysInactive(w, "after its overlap ended", true)
	}
	for _, n := range names {
		for i := 0; i < 3; i++ {
			m.actStaticDelete(n)
			if r, _ := getStaticRole(context.Background(), m.st.inner, n); r == nil {
				break
			}
		}
		if r, _ := getStaticRole(context.Background(), m.st.inner, n); r != nil && s3 {
			m.fail("s3", "static role cannot be deleted with Heron and storage healthy", "static role %q could not be deleted in three tries", n)
		}
	}
	m.check("after the static roles were deleted")
	m.checkStaticKeysInactive(m.snapshot(), "after settling (every static role deleted)", false)
}

// checkStaticKeysInactive: every key a static role held and no longer holds
// is not active (skipHeld: keys still held by a role are exempt).
func (m *model) checkStaticKeysInactive(w *world, when string, skipHeld bool) {
	m.t.Helper()
	if !m.invariants["s3"] {
		return
	}
	ids := make([]string, 0, len(m.sKeys))
	for id := range m.sKeys {
		ids = append(ids, id)
	}
	sort.Strings(ids)
	for _, id := range ids {
		k, ok := w.keys[id]
		if !ok || k.Deleted || !k.IsActive || (skipHeld && w.staticHolder(id) != "") {
			continue
		}
		sk := m.sKeys[id]
		class := "key a static role held is still active after settling"
		if skipHeld {
			class = "key a static role held is still active after the overlaps ran out"
		}
		if rec := w.tracked[id]; rec != nil && rec.State == keyStateActive && w.staticHolder(id) == "" {
			class += " (tracked as active, held by no role)"
		}
		m.fail("s3", class, "key %s (%q) of static role %q is still ACTIVE in Heron %s (tracked: %v, held by a role: %q)",
			id, k.Name, sk.role, when, w.tracked[id] != nil, w.staticHolder(id))
	}
}

// checkStaticKeysDeleted: once every retention passed, every key a static
// role held is deleted in Heron (s3).
func (m *model) checkStaticKeysDeleted(w *world) {
	m.t.Helper()
	if !m.invariants["s3"] {
		return
	}
	for id, sk := range m.sKeys {
		if k, ok := w.keys[id]; ok && !k.Deleted {
			class := "key a static role held is not deleted after retention"
			if rec := w.tracked[id]; rec != nil && rec.State == keyStateActive && w.staticHolder(id) == "" {
				class += " (tracked as active, held by no role)"
			}
			m.fail("s3", class, "key %s (%q) of static role %q is %s in Heron after every retention passed and tidy ran (tracked: %v)", id, k.Name, sk.role, keyState(k, true), w.tracked[id] != nil)
		}
	}
}
