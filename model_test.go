package heron

// Model-based (state-machine) test of the engine, driven by pgregory.net/rapid.
//
// Each check builds a fresh world: one Heron emulator (herontest) behind a thin
// front handler that can answer 429 on chosen requests, one backend on
// in-memory storage wrapped by modelStorage (model_storage_test.go, which can
// fail writes before or after they commit), and a Vault-like driver that holds
// the leases, stamps their issue time, decides when they expire on a virtual
// clock (the backend's b.now) and retries failed revocations as Vault does.
// rapid draws a sequence of actions (issue, renew, revoke, expiry, tidy, WAL
// rollback, config and role changes, static roles (create, adopt, read and use
// their key, rotate, delete, the periodic pass), plugin restarts, a customer
// creating keys out of band, Heron and storage faults armed for the next
// requests); after
// every step the invariants below are checked against the emulator's own view
// of every key, and at the end the world is settled (faults cleared, plugin
// restarted, rollback and tidy until quiet, every lease revoked, retention
// waited out) and checked once more.
//
// Invariants (names usable in HERON_MODEL_INVARIANTS):
//
//	a  a lease whose revocation the engine reported successful has its key
//	   deleted in Heron when the revocation was not an expiry (decided on the
//	   first attempt, kept across Vault's retries), or at least not active when
//	   it was an expiry. A key the engine still tracks with a deferred
//	   revocation of the right kind (Pending) is accepted until the end.
//	b  a customer's key (made out of band with the customer's own key) is never
//	   deleted or deactivated by the engine.
//	c  the key of a live lease that the test never tried to revoke is never
//	   deleted or deactivated.
//	d  nothing is forgotten: every key the engine created that Heron still
//	   holds is held by a lease, tracked (keys/<id>), named by a pending
//	   write-ahead record, or is the config's current or a retired admin key.
//	e  the stored admin key of a config authenticates in Heron.
//	f  a config write that changes the admin key is refused while the new key
//	   cannot see keys the engine tracks (spec, Invariants 4; no force=true).
//	s1 static-creds returns a key that authenticates whenever Heron and
//	   storage are healthy at read time.
//	s2 a static role's previous key is not deactivated before `overlap` has
//	   passed since the rotation, unless the role was deleted or rotated again.
//	s3 every key a static role held ends deactivated (role deleted, or its
//	   overlap over and max_overlap passed) and deleted after retention.
//	s4 invariant d for static keys (current/previous of a role also counts).
//	s5 the static roles' cron rotation_schedule (UTC, with a rotation_window,
//	   on the virtual clock) fires at its time, once, and never outside its
//	   window (model_schedule_test.go).
//	q  a key whose quarantine (keys/<id>/deactivate) the engine reported done
//	   is never active in Heron again: no renewal, revocation retry, rotation,
//	   tidy or periodic pass reactivates it (the model never lifts one).
//	   (Details in the section "Static roles" below.)
//	final  after settling (static roles' overlaps run out, then the operator
//	   deletes every static role): no key the engine created is active unless it is
//	   the current admin key, every key Heron holds is tracked or belongs to
//	   the customer/seed, and once retention has passed only the current admin
//	   key is left.
//
// How to run:
//
//	go test -count=1 -run 'TestModel$' -v .                  # ~40 checks (CI), and ~40 with quarantine
//	HERON_MODEL_CHECKS=10000 go test -count=1 -run 'TestModel$' -timeout 2h .
//	go test -count=1 -run 'TestModel$' -rapid.checks=2000 -rapid.steps=60 .
//	go test -count=1 -run TestModelRegressions -v .          # minimal sequences found so far
//
// Restricting the search, to check one fix at a time:
//
//	HERON_MODEL_ACTIONS=core,storage-faults   actions or groups to use
//	HERON_MODEL_ACTIONS=all,-configOtherUser  everything but an action or group
//	HERON_MODEL_INVARIANTS=a,c,d,final        only check these invariants
//	HERON_MODEL_ROLES=app                     issue only from role app (not ci, whose
//	                                          name_template renders one constant name)
//	HERON_MODEL_LOG=1                         engine logs (warn level) to stderr
//	HERON_MODEL_LOG=info                      engine logs (info level: events) to stderr
//	HERON_MODEL_STATS=1                       counts of what the static actions reached
//	HERON_MODEL_IGNORE=s2: previous,s1: stat  go on past violations whose "<inv>: <class>"
//	                                          contains one of these (known bugs), to look past them
//
// Groups: core (issue renew revoke revokeAsync vaultRetry advance tidy rollback
// restart crash), config (configUpdate configNewKey configOtherUser configRotate
// configDelete configCreate), roles (roleWrite roleDelete), customer
// (customerKey), heron-faults (heronFault heron429 force429 latency),
// storage-faults (storageFault), static (staticCreate staticAdopt staticRead
// staticUse staticRotate staticDelete periodic). Run with -v to see each step
// and its outcome.
//
// rapid saves a failing sequence under testdata/rapid/TestModel/<actions>/ and
// replays it first on every later run with the same action set (the subtest
// name carries the action set, so restricted runs keep their own files);
// delete the directory, or pass -rapid.nofailfile, once it no longer matters.
// The minimal sequences found so far are spelled out as plain Go in
// TestModelRegressions at the bottom of this file, independent of rapid's
// encoding.
//
// Model assumptions (see also the report in the commit message):
//   - The engine's own rate limiter is left out (newClient builds clients with
//     Limiter nil): its pauses run on the wall clock and would make sequences
//     neither fast nor reproducible. Every 429 carries Retry-After: 60 and each
//     request runs under a 10 s deadline, so the client never waits one out: a
//     429 armed for "the next request" stands for Heron answering 429 through
//     all of a request's retries.
//   - The Vault clock is virtual (b.now); every step moves it one second, the
//     advance and vaultRetry actions more. Leases end where Vault would end
//     them: issue time + TTL, moved on every successful renewal to now + TTL.
//   - A revocation is an expiry when its first attempt comes at or after the
//     lease's end; within expiryGrace before the end either answer is taken.
//     A user revocation that failed and is followed by the lease's expiry may
//     end as either.

import (
	"bufio"
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/hashicorp/vault/sdk/logical"
	"pgregory.net/rapid"

	"github.com/heron-vault/vault-plugin-secrets-heron/heronapi"
	"github.com/heron-vault/vault-plugin-secrets-heron/herontest"
)

const (
	mEnv       = "development" // the engine's config name and the main Heron user
	mOtherUser = "other-user"  // a second Heron user (herontest: one user per environment)

	mReqDeadline     = 10 * time.Second // per engine request, like Vault's request timeout
	mRetryAfter      = 60 * time.Second // on every 429: never fits mReqDeadline
	mMaxRevokeTries  = 6                // Vault's attempts before a lease is irrevocable
	mConstantKeyName = "ci-ci"          // what role "ci" renders, for every lease
)

// mRoles are the roles the model writes: one whose name_template renders the
// same name every time, one with the default template.
var mRoles = map[string]map[string]interface{}{
	"ci":  {"environment": mEnv, "name_template": "ci-{{.RoleName}}", "ttl": "10m", "max_ttl": "1h"},
	"app": {"environment": mEnv, "ttl": "5m", "max_ttl": "30m"},
}

var mRoleNames = []string{"app", "ci"}

// ---------------------------------------------------------------------------
// Actions and their selection

var mActionGroups = map[string][]string{
	"core":           {"issue", "renew", "revoke", "revokeAsync", "vaultRetry", "advance", "tidy", "rollback", "restart", "crash"},
	"config":         {"configUpdate", "configNewKey", "configOtherUser", "configRotate", "configDelete", "configCreate"},
	"roles":          {"roleWrite", "roleDelete"},
	"customer":       {"customerKey"},
	"heron-faults":   {"heronFault", "heron429", "force429", "latency"},
	"storage-faults": {"storageFault"},
	"static":         {"staticCreate", "staticAdopt", "staticRead", "staticUse", "staticRotate", "staticDelete", "periodic"},
	"quarantine":     {"quarantine"},
}

// mOptInGroups are left out of "all": rapid picks an action by its index
// among the sorted names, so a new action would change what every kept
// failfile of TestModel/all replays. TestModel runs them in a subtest of
// their own (all of "all" plus these), with its own failfiles.
var mOptInGroups = map[string]bool{"quarantine": true}

func mAllActions() []string {
	var all []string
	for _, g := range mActionGroups {
		all = append(all, g...)
	}
	sort.Strings(all)
	return all
}

// mSelectedActions parses HERON_MODEL_ACTIONS.
func mSelectedActions(spec string) (map[string]bool, error) {
	known := map[string]bool{}
	for _, a := range mAllActions() {
		known[a] = true
	}
	expand := func(name string) ([]string, error) {
		switch {
		case name == "all":
			var out []string
			for g, names := range mActionGroups {
				if !mOptInGroups[g] {
					out = append(out, names...)
				}
			}
			return out, nil
		case mActionGroups[name] != nil:
			return mActionGroups[name], nil
		case known[name]:
			return []string{name}, nil
		}
		return nil, fmt.Errorf("HERON_MODEL_ACTIONS: unknown action or group %q (groups: core, config, roles, customer, heron-faults, storage-faults, static, quarantine; actions: %s)", name, strings.Join(mAllActions(), ", "))
	}
	sel := map[string]bool{}
	spec = strings.TrimSpace(spec)
	if spec == "" {
		spec = "all"
	}
	parts := strings.Split(spec, ",")
	if strings.HasPrefix(strings.TrimSpace(parts[0]), "-") {
		parts = append([]string{"all"}, parts...)
	}
	for _, p := range parts {
		p = strings.TrimSpace(p)
		if p == "" {
			continue
		}
		neg := strings.HasPrefix(p, "-")
		names, err := expand(strings.TrimPrefix(p, "-"))
		if err != nil {
			return nil, err
		}
		for _, n := range names {
			if neg {
				delete(sel, n)
			} else {
				sel[n] = true
			}
		}
	}
	if len(sel) == 0 {
		return nil, fmt.Errorf("HERON_MODEL_ACTIONS=%q selects no action", spec)
	}
	return sel, nil
}

var mAllInvariants = []string{"a", "b", "c", "d", "e", "f", "s1", "s2", "s3", "s4", "s5", "q", "final"}

func mSelectedInvariants(spec string) (map[string]bool, error) {
	sel := map[string]bool{}
	spec = strings.TrimSpace(spec)
	if spec == "" || spec == "all" {
		for _, i := range mAllInvariants {
			sel[i] = true
		}
		return sel, nil
	}
	for _, p := range strings.Split(spec, ",") {
		p = strings.TrimSpace(p)
		ok := false
		for _, i := range mAllInvariants {
			ok = ok || i == p
		}
		if !ok {
			return nil, fmt.Errorf("HERON_MODEL_INVARIANTS: unknown invariant %q (known: %s)", p, strings.Join(mAllInvariants, ","))
		}
		sel[p] = true
	}
	return sel, nil
}

// ---------------------------------------------------------------------------
// The test

func TestModel(t *testing.T) {
	actions, err := mSelectedActions(os.Getenv("HERON_MODEL_ACTIONS"))
	if err != nil {
		t.Fatal(err)
	}
	invariants, err := mSelectedInvariants(os.Getenv("HERON_MODEL_INVARIANTS"))
	if err != nil {
		t.Fatal(err)
	}
	mSetChecks(t)

	name := "all"
	if spec := strings.TrimSpace(os.Getenv("HERON_MODEL_ACTIONS")); spec != "" && spec != "all" {
		name = "actions=" + regexp.MustCompile(`[^A-Za-z0-9,=+-]`).ReplaceAllString(spec, "_")
	}
	t.Run(name, func(t *testing.T) {
		rapid.Check(t, func(rt *rapid.T) {
			m := newModel(rt, invariants)
			defer m.close()
			rt.Repeat(m.rapidActions(actions))
			m.finish()
		})
	})
	if os.Getenv("HERON_MODEL_ACTIONS") == "" {
		// Everything, quarantine included (see mOptInGroups).
		withQuarantine, _ := mSelectedActions("all,quarantine")
		t.Run("quarantine", func(t *testing.T) {
			rapid.Check(t, func(rt *rapid.T) {
				m := newModel(rt, invariants)
				defer m.close()
				rt.Repeat(m.rapidActions(withQuarantine))
				m.finish()
			})
		})
	}
	mPrintStats(t)
}

// mDefaultSeed is the seed of the 40 sequences every plain `go test` runs.
// That run is a gate (CI lands or blocks work on it), so it replays the kept
// failfiles and the same 40 sequences every time: a gate that passed or
// failed by what a random search happened to reach would land or block work
// by chance. The search itself is HERON_MODEL_CHECKS=N (a new seed each run,
// printed by rapid), run before a stop, its findings kept in testdata/rapid.
const mDefaultSeed = "20261206"

// mSetChecks applies HERON_MODEL_CHECKS (an exploratory run: random seed), or
// the gate's default (40 sequences from mDefaultSeed), unless -rapid.checks
// (or RAPID_CHECKS) or -rapid.seed (RAPID_SEED) was given.
func mSetChecks(t *testing.T) {
	explicit := os.Getenv("RAPID_CHECKS") != ""
	seeded := os.Getenv("RAPID_SEED") != ""
	flag.Visit(func(f *flag.Flag) {
		explicit = explicit || f.Name == "rapid.checks"
		seeded = seeded || f.Name == "rapid.seed"
	})
	want := "40"
	if v := os.Getenv("HERON_MODEL_CHECKS"); v != "" {
		if _, err := strconv.Atoi(v); err != nil {
			t.Fatalf("HERON_MODEL_CHECKS=%q: %v", v, err)
		}
		want, explicit, seeded = v, false, true
	}
	if !seeded && !explicit {
		if f := flag.Lookup("rapid.seed"); f != nil {
			_ = f.Value.Set(mDefaultSeed)
		}
	}
	if explicit {
		return
	}
	if f := flag.Lookup("rapid.checks"); f != nil {
		_ = f.Value.Set(want)
	}
}

// ---------------------------------------------------------------------------
// The world of one check

type leaseState int

const (
	leaseLive        leaseState = iota
	leaseRevoking               // Vault retries a failed revocation
	leaseDone                   // the engine reported the revocation done
	leaseIrrevocable            // Vault gave up after mMaxRevokeTries
)

func (s leaseState) String() string {
	return [...]string{"live", "revoking", "done", "irrevocable"}[s]
}

// Decisions of a revocation.
const (
	decRevoke = "revoke" // not an expiry: the key must be deleted
	decExpiry = "expiry" // the key must be deactivated (or deleted)
	decEither = "either" // ambiguous timing: not active is enough
)

type mLease struct {
	n        int
	role     string
	keyID    string
	keyName  string
	secret   *logical.Secret
	end      time.Time // when Vault expires the lease
	state    leaseState
	decision string
	attempts int
	touched  bool // a revocation was attempted
}

func (l *mLease) String() string {
	return fmt.Sprintf("lease#%d(%s key=%s %q)", l.n, l.role, l.keyID, l.keyName)
}

// mClock is the Vault clock, which the backend reads as b.now.
type mClock struct {
	mu  sync.Mutex
	now time.Time
}

func (c *mClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

func (c *mClock) Advance(d time.Duration) time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.now = c.now.Add(d)
	return c.now
}

// front429 answers 429 to the next requests it is armed for, in front of
// the emulator, so that a 429 can hit exactly the request after a lost POST
// (herontest's Force429 is time based and would hit the POST first).
type front429 struct {
	mu    sync.Mutex
	rules []*front429Rule
	fired []string
}

type front429Rule struct {
	method string
	left   int
}

func (f *front429) arm(method string, n int) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.rules = append(f.rules, &front429Rule{method: method, left: n})
}

func (f *front429) clear() {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.rules = nil
}

func (f *front429) takeFired() []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	out := f.fired
	f.fired = nil
	return out
}

func (f *front429) wrap(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if strings.HasPrefix(r.URL.Path, "/api/") && f.take(r.Method, r.URL.Path) {
			w.Header().Set("Retry-After", strconv.Itoa(int(mRetryAfter.Seconds())))
			w.Header().Set("Content-Type", "application/json")
			w.WriteHeader(http.StatusTooManyRequests)
			_, _ = io.WriteString(w, `{"code": 429, "description": "500 per 1 minute", "name": "Too Many Requests"}`+"\n")
			return
		}
		next.ServeHTTP(w, r)
	})
}

func (f *front429) take(method, path string) bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	for i, r := range f.rules {
		if r.method != "" && r.method != method {
			continue
		}
		r.left--
		if r.left <= 0 {
			f.rules = append(f.rules[:i:i], f.rules[i+1:]...)
		}
		f.fired = append(f.fired, "429 "+method+" "+path)
		return true
	}
	return false
}

// model is one check's world plus what the test believes about it.
type model struct {
	t          rapid.TB
	invariants map[string]bool
	// deleting: a config delete failed part way. It deletes the keys only
	// its admin key could delete, the engine-created admin key last, before
	// the config entry; a storage failure then leaves the config naming a
	// deleted key until the operator's retry finishes (a retry that leaks
	// nothing, where the other order could). Invariant e waits for that.
	deleting bool

	srv   *herontest.Server
	front *httptest.Server
	f429  *front429
	st    *modelStorage
	clock *mClock
	b     *heronBackend
	log   hclog.Logger

	devAdmin      string // seeded admin key of the main user
	otherAdmin    string // seeded admin key of the other user
	customerKey   string // the customer's own key (main user)
	customerKeyID string

	leases []*mLease
	step   int

	// Static roles (model_static_test.go is not a file: see "Static roles"
	// below). lu rewrites Heron's last_used onto the Vault clock.
	lu       *virtualLastUsed
	useFront *httptest.Server        // the applications' way to Heron (no armed 429s)
	forced   bool                    // force429 is on
	statics  map[string]*mStaticRole // by role name: what the model knows
	sKeys    map[string]*mStaticKey  // every key a static role held (or the engine tracked as static), by id
	// lastActive is each key's activity in Heron at the previous check.
	lastActive map[string]bool
	// quarantined: keys whose quarantine the engine reported done (q).
	quarantined map[string]bool
}

func newModel(t rapid.TB, invariants map[string]bool) *model {
	t.Helper()
	m := &model{
		t:           t,
		invariants:  invariants,
		devAdmin:    herontest.NewKeyToken(),
		otherAdmin:  herontest.NewKeyToken(),
		customerKey: herontest.NewKeyToken(),
		f429:        &front429{},
		st:          newModelStorage(),
		statics:     map[string]*mStaticRole{},
		sKeys:       map[string]*mStaticKey{},
		lastActive:  map[string]bool{},
		quarantined: map[string]bool{},
		// A fixed, whole-second start: names that embed the time (rotation)
		// are the same on every replay.
		clock: &mClock{now: time.Date(2030, 1, 1, 0, 0, 0, 0, time.UTC)},
	}
	m.srv = herontest.NewUnstartedServer(herontest.Options{
		Environments: map[string][]string{
			mEnv:       {m.devAdmin, m.customerKey},
			mOtherUser: {m.otherAdmin},
		},
		RateLimitPerMinute: -1,
	})
	m.lu = &virtualLastUsed{srv: m.srv, clock: m.clock, at: map[string]time.Time{}}
	m.front = httptest.NewServer(m.f429.wrap(m.lu.wrap(m.srv.Handler())))
	m.useFront = httptest.NewServer(m.lu.wrap(m.srv.Handler()))
	k, _ := m.srv.KeyByToken(m.customerKey)
	m.customerKeyID = k.ID

	m.log = hclog.NewNullLogger()
	if os.Getenv("HERON_MODEL_LOG") != "" {
		level := hclog.Warn
		if os.Getenv("HERON_MODEL_LOG") == "info" {
			level = hclog.Info
		}
		m.log = hclog.New(&hclog.LoggerOptions{Level: level, Output: os.Stderr})
	}
	m.startBackend()

	m.mustOK(m.do(logical.CreateOperation, "config/"+mEnv, m.configData(m.devAdmin)))
	for _, r := range mRoleNames {
		m.mustOK(m.do(logical.CreateOperation, "roles/"+r, copyMap(mRoles[r])))
	}
	return m
}

func (m *model) close() {
	if m.b != nil {
		m.b.Cleanup(context.Background())
	}
	m.front.Close()
	m.useFront.Close()
	m.srv.Close()
}

func copyMap(in map[string]interface{}) map[string]interface{} {
	out := make(map[string]interface{}, len(in))
	for k, v := range in {
		out[k] = v
	}
	return out
}

func (m *model) configData(adminKey string) map[string]interface{} {
	return map[string]interface{}{
		"admin_api_key":         adminKey,
		"base_url":              m.front.URL,
		"max_retries":           2,
		"request_timeout":       "5s",
		"rate_limit_per_minute": maxRateLimitPerMinute,
	}
}

// startBackend starts a backend instance on the model's storage, as Vault
// does on mount and on plugin restart: nothing in memory survives.
func (m *model) startBackend() {
	conf := logical.TestBackendConfig()
	conf.StorageView = m.st
	conf.Logger = m.log
	conf.System = &logical.StaticSystemView{
		DefaultLeaseTTLVal: testDefaultLeaseTTL,
		MaxLeaseTTLVal:     testMaxLeaseTTL,
	}
	b := backend()
	b.retryWaitMin = time.Millisecond
	b.createdSkew = mCreatedSkew
	b.now = m.clock.Now
	b.newClient = func(cfg *heronConfig, _ *heronapi.Limiter) (heronapi.API, error) {
		// wall-clock pauses: see "Model assumptions"
		return heronapi.New(b.clientConfig(cfg, nil))
	}
	if err := b.Setup(context.Background(), conf); err != nil {
		m.t.Fatalf("backend setup: %v", err)
	}
	m.b = b
}

// do sends one request to the backend the way Vault would.
func (m *model) do(op logical.Operation, path string, data map[string]interface{}) (*logical.Response, error) {
	return m.doReq(&logical.Request{Operation: op, Path: path, Data: data})
}

func (m *model) doReq(req *logical.Request) (*logical.Response, error) {
	ctx, cancel := context.WithTimeout(context.Background(), mReqDeadline)
	defer cancel()
	req.Storage = m.st
	if req.DisplayName == "" {
		req.DisplayName = "token-model"
	}
	if req.Data == nil {
		req.Data = map[string]interface{}{}
	}
	return m.b.HandleRequest(ctx, req)
}

// outcome folds a response and error into one error (nil on success).
func outcome(resp *logical.Response, err error) error {
	if err != nil {
		return err
	}
	if resp != nil && resp.IsError() {
		return resp.Error()
	}
	return nil
}

func (m *model) mustOK(resp *logical.Response, err error) *logical.Response {
	m.t.Helper()
	if err := outcome(resp, err); err != nil {
		m.t.Fatalf("setup request failed: %v", err)
	}
	return resp
}

func short(err error) string {
	if err == nil {
		return "ok"
	}
	s := err.Error()
	if len(s) > 300 {
		s = s[:300] + "..."
	}
	return "error: " + s
}

// logStep records what a step did, with the faults that fired during it.
func (m *model) logStep(format string, args ...interface{}) {
	msg := fmt.Sprintf(format, args...)
	var fired []string
	fired = append(fired, m.f429.takeFired()...)
	for _, s := range m.st.takeInjected() {
		fired = append(fired, "storage "+s)
	}
	if len(fired) > 0 {
		msg += "   [faults fired: " + strings.Join(fired, "; ") + "]"
	}
	m.t.Logf("step %d @%s: %s", m.step, m.clock.Now().Format("15:04:05"), msg)
}

// ---------------------------------------------------------------------------
// Actions. Each takes explicit parameters so that TestModelRegressions can
// replay a sequence without rapid; rapidActions draws them.

func (m *model) tick() {
	m.step++
	m.clock.Advance(time.Second)
}

func (m *model) liveLeases() []*mLease {
	var out []*mLease
	for _, l := range m.leases {
		if l.state == leaseLive {
			out = append(out, l)
		}
	}
	return out
}

func (m *model) revokingLeases() []*mLease {
	var out []*mLease
	for _, l := range m.leases {
		if l.state == leaseRevoking {
			out = append(out, l)
		}
	}
	return out
}

func (m *model) actIssue(role string) *mLease {
	m.tick()
	resp, err := m.do(logical.ReadOperation, "creds/"+role, nil)
	if err := outcome(resp, err); err != nil || resp == nil || resp.Secret == nil {
		m.logStep("issue %s: %s", role, short(err))
		return nil
	}
	now := m.clock.Now()
	secret := resp.Secret
	// Vault registers the lease: it stamps the issue time and the end.
	secret.IssueTime = now
	secret.TTL = m.vaultTTL(secret, now)
	l := &mLease{
		n:       len(m.leases),
		role:    role,
		keyID:   resp.Data["key_id"].(string),
		keyName: resp.Data["key_name"].(string),
		secret:  secret,
		end:     now.Add(secret.TTL),
	}
	m.leases = append(m.leases, l)
	m.logStep("issue %s: %s ttl=%s", role, l, secret.TTL)
	return l
}

func (m *model) actRenew(l *mLease, increment time.Duration) {
	m.tick()
	secret := *l.secret
	secret.Increment = increment
	resp, err := m.doReq(&logical.Request{Operation: logical.RenewOperation, Path: "creds/" + l.role, Secret: &secret})
	if err := outcome(resp, err); err != nil || resp == nil || resp.Secret == nil {
		m.logStep("renew %s +%s: %s", l, increment, short(err))
		return
	}
	// Vault clamps what the backend returns to the lease's max TTL counted
	// from its issue time (expiration manager, RenewLease).
	ttl := m.vaultTTL(resp.Secret, l.secret.IssueTime)
	if ttl > 0 {
		l.end = m.clock.Now().Add(ttl)
		l.secret.TTL = ttl
	}
	m.logStep("renew %s +%s: ok, ends %s", l, increment, l.end.Format("15:04:05"))
}

// vaultTTL is the TTL Vault registers for a secret the backend returned: the
// backend's TTL (the mount default when 0), clamped to the secret's max TTL (or the mount's) counted
// from the lease's issue time.
func (m *model) vaultTTL(s *logical.Secret, issued time.Time) time.Duration {
	// Done by hand rather than with framework.CalculateTTL, which measures
	// against the wall clock, not the model's Vault clock.
	maxTTL := testMaxLeaseTTL
	if s.MaxTTL > 0 && s.MaxTTL < maxTTL {
		maxTTL = s.MaxTTL
	}
	ttl := s.TTL
	if ttl <= 0 {
		ttl = testDefaultLeaseTTL
	}
	if limit := issued.Add(maxTTL).Sub(m.clock.Now()); ttl > limit {
		ttl = limit
	}
	return ttl
}

// decide records what the first revocation attempt of l means.
func (m *model) decide(l *mLease, expiry bool) {
	now := m.clock.Now()
	switch {
	case l.decision != "" && expiry && l.decision == decRevoke:
		// A failed user revocation, then the lease ran out.
		l.decision = decEither
	case l.decision != "":
	case !now.Before(l.end):
		l.decision = decExpiry
	case !now.Before(l.end.Add(-expiryGrace)):
		l.decision = decEither
	default:
		l.decision = decRevoke
	}
	l.touched = true
}

// sendRevoke is one revocation attempt as Vault sends it.
func (m *model) sendRevoke(l *mLease) error {
	l.attempts++
	before := m.st.injectedCount()
	resp, err := m.doReq(&logical.Request{Operation: logical.RevokeOperation, Path: "creds/" + l.role, Secret: l.secret})
	err = outcome(resp, err)
	if err != nil && l.decision == decRevoke && m.st.injectedCount() > before {
		// The engine's documented limit (README, "Decided once"): the
		// decision of a failed attempt is kept by one storage write; when
		// storage refuses that write too, a retry that lands after the
		// lease's end is taken for an expiry. A double fault: Heron and
		// storage failing in the same attempt.
		l.decision = decEither
	}
	return err
}

// actQuarantine is a security team quarantining a live lease's key
// (keys/<id>/deactivate). The lease stays live; invariant c no longer
// applies to it (its key is deactivated on purpose), q does once the engine
// reported the quarantine done.
func (m *model) actQuarantine(l *mLease) {
	m.tick()
	l.touched = true
	resp, err := m.do(logical.UpdateOperation, "keys/"+l.keyID+"/deactivate", nil)
	if err := outcome(resp, err); err != nil {
		m.logStep("quarantine %s: %s", l, short(err))
		return
	}
	m.quarantined[l.keyID] = true
	m.logStep("quarantine %s: ok", l)
}

// actRevoke is a synchronous user revocation: on failure Vault reports the
// error and the lease stays as it was (it will expire at its end).
func (m *model) actRevoke(l *mLease) {
	m.tick()
	m.decide(l, false)
	err := m.sendRevoke(l)
	if err == nil {
		l.state = leaseDone
	}
	m.logStep("revoke %s (%s): %s", l, l.decision, short(err))
}

// actRevokeAsync is a revocation Vault carries out in the background and
// retries (vaultRetry) until it succeeds or mMaxRevokeTries attempts failed.
func (m *model) actRevokeAsync(l *mLease) {
	m.tick()
	m.decide(l, false)
	l.attempts = 0
	err := m.sendRevoke(l)
	if err == nil {
		l.state = leaseDone
	} else {
		l.state = leaseRevoking
	}
	m.logStep("revoke-async %s (%s) attempt 1: %s", l, l.decision, short(err))
}

// actVaultRetry moves the clock by Vault's backoff and re-sends a failed
// revocation, possibly after the lease's original end.
func (m *model) actVaultRetry(l *mLease, backoff time.Duration) {
	m.tick()
	m.advanceClock(backoff)
	if l.state != leaseRevoking {
		return // expired meanwhile? cannot happen: revoking leases do not expire again
	}
	err := m.sendRevoke(l)
	switch {
	case err == nil:
		l.state = leaseDone
	case l.attempts >= mMaxRevokeTries:
		l.state = leaseIrrevocable
	}
	m.logStep("vault retries revocation of %s (%s) after %s, attempt %d: %s", l, l.decision, backoff, l.attempts, short(err))
}

// advanceClock moves the Vault clock and lets Vault expire every live lease
// whose time ran out (each expiry is a revocation Vault retries on failure).
func (m *model) advanceClock(d time.Duration) {
	now := m.clock.Advance(d)
	for _, l := range m.leases {
		if l.state != leaseLive || now.Before(l.end) {
			continue
		}
		m.decide(l, true)
		l.attempts = 0
		err := m.sendRevoke(l)
		if err == nil {
			l.state = leaseDone
		} else {
			l.state = leaseRevoking
		}
		m.logStep("  lease expired: %s (%s): %s", l, l.decision, short(err))
	}
}

func (m *model) actAdvance(d time.Duration) {
	m.tick()
	m.logStep("advance clock by %s", d)
	m.advanceClock(d)
}

func (m *model) actTidy() {
	m.tick()
	resp, err := m.do(logical.UpdateOperation, "tidy", nil)
	data := ""
	if resp != nil && resp.Data != nil {
		b, _ := json.Marshal(resp.Data)
		data = " " + string(b)
	}
	m.logStep("tidy: %s%s", short(outcome(resp, err)), data)
}

func (m *model) actRollback() {
	m.tick()
	req := logical.RollbackRequest("")
	req.Data["immediate"] = true
	resp, err := m.doReq(req)
	m.logStep("WAL rollback: %s", short(outcome(resp, err)))
}

func (m *model) actRestart() {
	m.tick()
	m.b.Cleanup(context.Background())
	m.startBackend()
	m.logStep("plugin restart")
}

// actCrash is the plugin process killed between requests: Vault never cleans
// the old instance up, so what it kept only in memory (which of its creation
// records are finished) is lost.
func (m *model) actCrash() {
	m.tick()
	m.startBackend()
	m.logStep("plugin crash")
}

// configWrite writes config/<env>; a changed admin key is checked against
// invariant f.
func (m *model) configWrite(what string, data map[string]interface{}) {
	before, _ := getConfig(context.Background(), m.st.inner, mEnv)
	var op logical.Operation = logical.UpdateOperation
	if before == nil {
		op = logical.CreateOperation
	}
	err := outcome(m.do(op, "config/"+mEnv, data))
	if err == nil {
		m.deleting = false
	}
	m.logStep("%s: %s", what, short(err))
	if err != nil {
		return
	}
	newKey, _ := data["admin_api_key"].(string)
	if newKey == "" || (before != nil && before.AdminAPIKey == newKey) {
		return
	}
	m.checkConfigSeesTracked(what, newKey)
}

func (m *model) actConfigUpdate(maxRetries int) {
	m.tick()
	m.configWrite(fmt.Sprintf("config update (max_retries=%d, admin key unchanged)", maxRetries),
		map[string]interface{}{"max_retries": maxRetries})
}

// actConfigNewKey writes a fresh admin key of the main Heron user, as an
// operator replacing the key by hand would.
func (m *model) actConfigNewKey() {
	m.tick()
	key := m.srv.AddAdminKey(mEnv)
	m.configWrite("config rewrite with a new admin key of the same Heron user", m.configData(key))
}

// actConfigOtherUser writes an admin key of another Heron user, which cannot
// see the keys the engine made with the first.
func (m *model) actConfigOtherUser() {
	m.tick()
	m.configWrite("config rewrite with an admin key of ANOTHER Heron user", m.configData(m.otherAdmin))
}

func (m *model) actConfigRotate() {
	m.tick()
	err := outcome(m.do(logical.UpdateOperation, "config/"+mEnv+"/rotate", nil))
	m.logStep("config rotate: %s", short(err))
}

func (m *model) actConfigDelete() {
	m.tick()
	resp, err := m.do(logical.DeleteOperation, "config/"+mEnv, nil)
	m.deleting = err != nil
	err = outcome(resp, err)
	m.logStep("config delete: %s", short(err))
}

func (m *model) actConfigCreate() {
	m.tick()
	key := m.srv.AddAdminKey(mEnv)
	m.configWrite("config create (new admin key of the main user)", m.configData(key))
}

func (m *model) actRoleWrite(role, ttl string) {
	m.tick()
	data := copyMap(mRoles[role])
	data["ttl"] = ttl
	err := outcome(m.do(logical.UpdateOperation, "roles/"+role, data))
	m.logStep("role write %s ttl=%s: %s", role, ttl, short(err))
}

func (m *model) actRoleDelete(role string) {
	m.tick()
	err := outcome(m.do(logical.DeleteOperation, "roles/"+role, nil))
	m.logStep("role delete %s: %s", role, short(err))
}

// actCustomerKey: the customer creates a key through Heron's API with their
// own key, named as a role of the engine renders its keys.
func (m *model) actCustomerKey(name string) {
	m.tick()
	// The engine's documented limit (README, "Recovery by name"): a key named
	// exactly like one whose creation's outcome Heron left unknown, made by
	// someone else within that creation's window, is taken for the late key.
	// Names are not unique in Heron and nothing else tells the two apart, so
	// the model's customer names keys like that only outside such windows,
	// and the engine is then held to never touching them.
	if m.walNames()[name] {
		m.logStep("customer does not create %q: a creation of that name has an open window", name)
		return
	}
	req, _ := http.NewRequest(http.MethodPost, m.front.URL+"/api/credentials/keys", strings.NewReader(`{"name": `+strconv.Quote(name)+`}`))
	req.Header.Set("x-api-key", m.customerKey)
	req.Header.Set("Content-Type", "application/json")
	res, err := (&http.Client{Timeout: 5 * time.Second}).Do(req)
	status := 0
	if err == nil {
		status = res.StatusCode
		res.Body.Close()
	}
	m.logStep("customer creates key %q out of band: status %d %v", name, status, errOrEmpty(err))
	// Older than the engine's clock-skew allowance before any later creation.
	time.Sleep(2 * mCreatedSkew)
}

// mCreatedSkew is the engine's allowance for Heron's clock lagging its own,
// shrunk from 5 s so that the model's customer keys can be older than it.
const mCreatedSkew = 2 * time.Millisecond

// walNames is the key names of pending write-ahead records.
func (m *model) walNames() map[string]bool {
	out := map[string]bool{}
	entries, _ := m.b.pendingCreations(context.Background(), m.st.inner)
	for _, e := range entries {
		out[e.KeyName] = true
	}
	return out
}

func errOrEmpty(err error) string {
	if err == nil {
		return ""
	}
	return err.Error()
}

var mFaultModes = []herontest.FaultMode{
	herontest.FaultStatus500, herontest.FaultStatus502, herontest.FaultStatus503,
	herontest.FaultProcessThenDrop, herontest.FaultDropBeforeProcessing,
}

func (m *model) actHeronFault(method string, n int, mode herontest.FaultMode) {
	m.tick()
	m.srv.FailNext(method, "/api/credentials/keys", n, mode)
	m.logStep("Heron: next %d %s request(s) get %s", n, method, mode)
}

func (m *model) actHeron429(method string, n int) {
	m.tick()
	m.f429.arm(method, n)
	m.logStep("Heron: next %d %s request(s) get 429 (Retry-After %s)", n, method, mRetryAfter)
}

func (m *model) actForce429(on bool) {
	m.tick()
	m.forced = on
	if on {
		m.srv.Force429("", time.Hour, mRetryAfter)
	} else {
		m.srv.Force429("", 0, 0)
	}
	m.logStep("Heron: forced 429 on every request: %v", on)
}

func (m *model) actLatency(d time.Duration) {
	m.tick()
	m.srv.SetFaults(herontest.Faults{Latency: d})
	m.logStep("Heron: latency %s", d)
}

func (m *model) actStorageFault(f storageFault) {
	m.tick()
	m.st.arm(f)
	m.logStep("storage: next write(s) fail: %s", f.String())
}

// rapidActions draws each action's parameters.
func (m *model) rapidActions(selected map[string]bool) map[string]func(*rapid.T) {
	pickLease := func(t *rapid.T, ls []*mLease, label string) *mLease {
		if len(ls) == 0 {
			t.Skip("no " + label + " lease")
		}
		return rapid.SampledFrom(ls).Draw(t, label)
	}
	durations := func(ds ...time.Duration) *rapid.Generator[time.Duration] { return rapid.SampledFrom(ds) }
	// HERON_MODEL_ROLES=app keeps role ci (constant key name) out of the
	// actions, to look past the name-collision bugs.
	roles := mRoleNames
	if v := strings.TrimSpace(os.Getenv("HERON_MODEL_ROLES")); v != "" {
		roles = strings.Split(v, ",")
	}
	all := map[string]func(*rapid.T){
		"issue": func(t *rapid.T) { m.actIssue(rapid.SampledFrom(roles).Draw(t, "role")) },
		"renew": func(t *rapid.T) {
			l := pickLease(t, m.liveLeases(), "live")
			m.actRenew(l, durations(0, 2*time.Minute, 20*time.Minute, 2*time.Hour).Draw(t, "increment"))
		},
		"revoke":      func(t *rapid.T) { m.actRevoke(pickLease(t, m.liveLeases(), "live")) },
		"revokeAsync": func(t *rapid.T) { m.actRevokeAsync(pickLease(t, m.liveLeases(), "live")) },
		"vaultRetry": func(t *rapid.T) {
			l := pickLease(t, m.revokingLeases(), "revoking")
			m.actVaultRetry(l, durations(5*time.Second, time.Minute, 10*time.Minute, time.Hour, 3*time.Hour).Draw(t, "backoff"))
		},
		"advance": func(t *rapid.T) {
			m.actAdvance(durations(30*time.Second, 3*time.Minute, 12*time.Minute, 45*time.Minute, 4*time.Hour).Draw(t, "by"))
		},
		"tidy":            func(t *rapid.T) { m.actTidy() },
		"quarantine":      func(t *rapid.T) { m.actQuarantine(pickLease(t, m.liveLeases(), "live")) },
		"rollback":        func(t *rapid.T) { m.actRollback() },
		"restart":         func(t *rapid.T) { m.actRestart() },
		"crash":           func(t *rapid.T) { m.actCrash() },
		"configUpdate":    func(t *rapid.T) { m.actConfigUpdate(rapid.IntRange(0, 3).Draw(t, "max_retries")) },
		"configNewKey":    func(t *rapid.T) { m.actConfigNewKey() },
		"configOtherUser": func(t *rapid.T) { m.actConfigOtherUser() },
		"configRotate":    func(t *rapid.T) { m.actConfigRotate() },
		"configDelete":    func(t *rapid.T) { m.actConfigDelete() },
		"configCreate": func(t *rapid.T) {
			if cfg, _ := getConfig(context.Background(), m.st.inner, mEnv); cfg != nil {
				t.Skip("config exists")
			}
			m.actConfigCreate()
		},
		"roleWrite": func(t *rapid.T) {
			m.actRoleWrite(rapid.SampledFrom(roles).Draw(t, "role"), rapid.SampledFrom([]string{"2m", "10m", "20m"}).Draw(t, "ttl"))
		},
		"roleDelete":  func(t *rapid.T) { m.actRoleDelete(rapid.SampledFrom(roles).Draw(t, "role")) },
		"customerKey": func(t *rapid.T) { m.actCustomerKey(mConstantKeyName) },
		"heronFault": func(t *rapid.T) {
			m.actHeronFault(
				rapid.SampledFrom([]string{"POST", "GET", "PUT", "DELETE"}).Draw(t, "method"),
				rapid.IntRange(1, 4).Draw(t, "n"),
				rapid.SampledFrom(mFaultModes).Draw(t, "mode"))
		},
		"heron429": func(t *rapid.T) {
			m.actHeron429(rapid.SampledFrom([]string{"POST", "GET", "PUT", "DELETE"}).Draw(t, "method"), rapid.IntRange(1, 3).Draw(t, "n"))
		},
		"force429": func(t *rapid.T) { m.actForce429(rapid.Bool().Draw(t, "on")) },
		"latency": func(t *rapid.T) {
			m.actLatency(durations(0, 2*time.Millisecond, 15*time.Millisecond).Draw(t, "latency"))
		},
		"storageFault": func(t *rapid.T) {
			m.actStorageFault(storageFault{
				op:     rapid.SampledFrom([]string{"put", "delete", ""}).Draw(t, "op"),
				prefix: rapid.SampledFrom([]string{keyStoragePrefix, roleKeyStoragePrefix, retainedKeyStoragePrefix, configStoragePrefix, roleStoragePrefix, creatingStoragePrefix, staticRoleStoragePrefix}).Draw(t, "prefix"),
				mode:   rapid.SampledFrom([]storageFaultMode{storageFailBefore, storageFailAfter}).Draw(t, "mode"),
				left:   rapid.IntRange(1, 2).Draw(t, "n"),
			})
		},
	}
	for name, fn := range m.rapidStaticActions() {
		all[name] = fn
	}
	out := map[string]func(*rapid.T){}
	for name, fn := range all {
		if selected[name] {
			out[name] = fn
		}
	}
	out[""] = func(t *rapid.T) { m.check("after step") }
	return out
}

// ---------------------------------------------------------------------------
// Invariants

// world is one consistent snapshot of what Heron and the engine hold.
type world struct {
	keys    map[string]herontest.KeyRecord
	tracked map[string]*trackedKey
	walName map[string]bool
	// unconfirmed: keys the engine reported as possibly its own (a creation
	// of unknown outcome, a name that is not unique) and left in place.
	unconfirmed map[string]bool
	cfg         *heronConfig
	statics     map[string]*staticRole
}

func (m *model) snapshot() *world {
	ctx := context.Background()
	w := &world{keys: map[string]herontest.KeyRecord{}, tracked: map[string]*trackedKey{}, walName: map[string]bool{}}
	for _, k := range m.srv.Keys() {
		w.keys[k.ID] = k
	}
	recs, err := listTrackedKeys(ctx, m.st.inner)
	if err != nil {
		m.t.Fatalf("model: reading tracked keys: %v", err)
	}
	for _, r := range recs {
		w.tracked[r.KeyID] = r
	}
	pending, err := m.b.pendingCreations(ctx, m.st.inner)
	if err != nil {
		m.t.Fatalf("model: listing write-ahead records: %v", err)
	}
	for _, e := range pending {
		w.walName[e.KeyName] = true
	}
	if w.unconfirmed, err = unconfirmedKeys(ctx, m.st.inner); err != nil {
		m.t.Fatalf("model: listing unconfirmed keys: %v", err)
	}
	w.cfg, err = getConfig(ctx, m.st.inner, mEnv)
	if err != nil {
		m.t.Fatalf("model: reading config: %v", err)
	}
	w.statics = map[string]*staticRole{}
	roles, err := listStaticRoles(ctx, m.st.inner)
	if err != nil {
		m.t.Fatalf("model: reading static roles: %v", err)
	}
	for _, r := range roles {
		w.statics[r.Name] = r
	}
	return w
}

// engineMade reports whether the engine created k: not seeded (admin keys
// of the test) and not the customer's.
func (m *model) engineMade(k herontest.KeyRecord) bool {
	return k.CreatedBy != "" && k.CreatedBy != m.customerKeyID
}

func (m *model) isCustomer(k herontest.KeyRecord) bool {
	return k.ID == m.customerKeyID || k.CreatedBy == m.customerKeyID
}

// adminRole says whether k is the config's current or a retired admin key.
func (w *world) adminRole(k herontest.KeyRecord) string {
	if w.cfg == nil {
		return ""
	}
	if k.Token == w.cfg.AdminAPIKey || (w.cfg.AdminKeyID != "" && k.ID == w.cfg.AdminKeyID) {
		return "current"
	}
	for _, rk := range w.cfg.RetiredKeys {
		if rk.KeyID == k.ID {
			return "retired"
		}
	}
	return ""
}

func keyState(k herontest.KeyRecord, ok bool) string {
	switch {
	case !ok:
		return "unknown to Heron"
	case k.Deleted:
		return "deleted"
	case k.IsActive:
		return "ACTIVE"
	}
	return "deactivated"
}

// fail reports a violation. rapid shrinks a failure only while the message
// stays the same, so the message is a stable class (no ids, no step numbers)
// and the details go to the log just before it.
func (m *model) fail(inv, class, format string, args ...interface{}) {
	m.t.Helper()
	for _, ign := range strings.Split(os.Getenv("HERON_MODEL_IGNORE"), ",") {
		if ign = strings.TrimSpace(ign); ign != "" && strings.Contains(inv+": "+class, ign) {
			m.t.Logf("ignored (HERON_MODEL_IGNORE) violation of invariant %s at step %d: %s", inv, m.step, fmt.Sprintf(format, args...))
			return
		}
	}
	m.t.Logf("VIOLATION of invariant %s at step %d: %s", inv, m.step, fmt.Sprintf(format, args...))
	m.t.Fatalf("invariant %s violated: %s", inv, class)
}

// keyKind names what kind of key the engine made, for stable failure classes.
func keyKind(name string) string {
	switch {
	case strings.HasPrefix(name, "vault-admin-"):
		return "rotation-created admin key"
	case name == mConstantKeyName:
		return "lease key of role ci (constant name)"
	case strings.HasPrefix(name, "vault-static-"):
		return "static role key"
	}
	return "lease key"
}

func (m *model) check(when string) {
	m.t.Helper()
	w := m.snapshot()
	m.observeStatics(w)
	m.checkWorld(w, when)
	m.checkStatics(w)
	m.rememberActive(w)
}

func (m *model) checkWorld(w *world, when string) {
	m.t.Helper()
	inv := m.invariants

	if inv["a"] {
		for _, l := range m.leases {
			if l.state != leaseDone {
				continue
			}
			k, ok := w.keys[l.keyID]
			rec := w.tracked[l.keyID]
			pending := ""
			if rec != nil {
				pending = rec.Pending
			}
			switch l.decision {
			case decRevoke:
				if !(ok && k.Deleted) && pending != pendingDelete {
					m.fail("a", "revoked (non-expiry) lease's key is "+keyState(k, ok)+" after a successful revocation", "%s was revoked (not an expiry: first attempt before its end %s) and the engine reported success, but its key is %s in Heron (tracked: %v, pending %q)",
						l, l.end.Format("15:04:05"), keyState(k, ok), rec != nil, pending)
				}
			default:
				if ok && !k.Deleted && k.IsActive && pending == "" {
					m.fail("a", "expired lease's key is still active after a successful revocation", "%s ended (%s) and the engine reported success, but its key is still ACTIVE in Heron (tracked: %v)", l, l.decision, rec != nil)
				}
			}
		}
	}

	if inv["b"] {
		for _, k := range w.keys {
			if m.isCustomer(k) && (k.Deleted || !k.IsActive) {
				m.fail("b", "customer's key is "+keyState(k, true), "the customer's key %s (%q) is %s: the engine touched a key it did not create", k.ID, k.Name, keyState(k, true))
			}
		}
	}

	if inv["c"] {
		for _, l := range m.leases {
			if l.state != leaseLive || l.touched {
				continue
			}
			k, ok := w.keys[l.keyID]
			if !ok || k.Deleted || !k.IsActive {
				m.fail("c", "live lease's key is "+keyState(k, ok), "%s is live (ends %s, never revoked) but its key is %s in Heron", l, l.end.Format("15:04:05"), keyState(k, ok))
			}
		}
	}

	if inv["d"] || inv["s4"] {
		held := map[string]*mLease{}
		for _, l := range m.leases {
			if l.state != leaseDone {
				held[l.keyID] = l
			}
		}
		for _, k := range w.keys {
			if k.Deleted || !m.engineMade(k) {
				continue
			}
			static := strings.HasPrefix(k.Name, "vault-static-")
			if (static && !inv["s4"]) || (!static && !inv["d"]) {
				continue
			}
			if held[k.ID] != nil || w.tracked[k.ID] != nil || w.walName[k.Name] || w.unconfirmed[k.ID] || w.adminRole(k) != "" || w.staticHolder(k.ID) != "" {
				continue
			}
			if static {
				m.fail("s4", "forgotten "+keyState(k, true)+" "+keyKind(k.Name), "key %s (%q) that the engine created for a static role is %s in Heron, but no static role holds it (current or previous), the engine does not track it and no write-ahead record names it: it is forgotten",
					k.ID, k.Name, keyState(k, true))
			}
			m.fail("d", "forgotten "+keyState(k, true)+" "+keyKind(k.Name), "key %s (%q) that the engine created is %s in Heron, but no lease holds it, the engine does not track it, no write-ahead record names it and it is not an admin key of the config: it is forgotten",
				k.ID, k.Name, keyState(k, true))
		}
	}

	if inv["q"] {
		for id := range m.quarantined {
			if k, ok := w.keys[id]; ok && !k.Deleted && k.IsActive {
				rec := w.tracked[id]
				m.fail("q", "quarantined key is active again", "key %s was quarantined (the engine reported it done) but is ACTIVE in Heron again (tracked: %v)", id, rec != nil)
			}
		}
	}

	if inv["e"] && w.cfg != nil && !m.deleting {
		k, ok := m.srv.KeyByToken(w.cfg.AdminAPIKey)
		if !ok || k.Deleted || !k.IsActive {
			m.fail("e", "stored admin key is "+keyState(k, ok), "the stored admin key of config %q (%s, id %s) is %s in Heron: the engine is left without a working key", mEnv, keyPrefix(w.cfg.AdminAPIKey), k.ID, keyState(k, ok))
		}
	}
}

// checkConfigSeesTracked is invariant f, right after a config write that
// changed the admin key succeeded.
func (m *model) checkConfigSeesTracked(what, newKey string) {
	m.t.Helper()
	if !m.invariants["f"] {
		return
	}
	nk, ok := m.srv.KeyByToken(newKey)
	if !ok {
		return
	}
	w := m.snapshot()
	var unseen []string
	for id, rec := range w.tracked {
		if rec.Environment != mEnv {
			continue
		}
		k, ok := w.keys[id]
		if ok && !k.Deleted && k.Environment != nk.Environment {
			unseen = append(unseen, id)
		}
	}
	if len(unseen) > 0 {
		sort.Strings(unseen)
		m.fail("f", "config write accepted an admin key that cannot see tracked keys", "%s was accepted although the new admin key (Heron user %q) cannot see %d key(s) the engine tracks (%s); without force=true it must be refused",
			what, nk.Environment, len(unseen), strings.Join(unseen, ", "))
	}
}

// finish settles the world and checks the end state.
func (m *model) finish() {
	m.t.Helper()
	m.step++
	m.t.Logf("--- settling: faults cleared, plugin restarted, rollback+tidy until quiet, leases revoked, retention waited out")
	m.srv.ResetFaults()
	m.f429.clear()
	m.st.clear()
	m.actRestart()
	// Every write-ahead record's window has closed by now (a late key
	// could appear for 5 minutes of real time; the model does not wait).
	m.b.windowNow = func() time.Time { return time.Now().Add(lateKeyWindow + time.Minute) }
	if m.deleting {
		// The operator does what the failed delete's error says: retry it.
		m.actConfigDelete()
	}
	m.settle()
	m.settleStatics()

	for _, l := range m.leases {
		switch l.state {
		case leaseLive:
			m.actRevoke(l)
		case leaseRevoking, leaseIrrevocable:
			m.tick()
			err := m.sendRevoke(l)
			if err == nil {
				l.state = leaseDone
			}
			m.logStep("vault retries revocation of %s (%s), attempt %d: %s", l, l.decision, l.attempts, short(err))
		}
	}
	m.actTidy()
	m.check("after settling")

	if !m.invariants["final"] {
		return
	}
	w := m.snapshot()
	for _, l := range m.leases {
		if l.state != leaseDone {
			m.fail("final", "lease not revocable when healthy", "%s could not be revoked with Heron and storage healthy (state %s)", l, l.state)
		}
	}
	leaseKeys := map[string]bool{}
	for _, l := range m.leases {
		leaseKeys[l.keyID] = true
	}
	for _, k := range w.keys {
		if k.Deleted {
			continue
		}
		role := w.adminRole(k)
		if w.unconfirmed[k.ID] && w.tracked[k.ID] == nil {
			// Reported, never deleted on a name match (spec, Invariants 3).
			continue
		}
		if rec := w.tracked[k.ID]; rec != nil && !leaseKeys[k.ID] && rec.State == keyStateActive && rec.Pending == "" &&
			m.clock.Now().Before(rec.Expires.Add(overdueGrace)) {
			// A key whose issuance failed after its record was stored (and
			// neither the undo nor the record's removal could be done): the
			// record bounds its life like a lease; the sweep ends it, below.
			continue
		}
		if m.engineMade(k) && k.IsActive && role != "current" {
			m.fail("final", "engine-created "+keyKind(k.Name)+" still active after settling", "after settling, key %s (%q) that the engine created is still ACTIVE in Heron (tracked: %v)", k.ID, k.Name, w.tracked[k.ID] != nil)
		}
		if m.engineMade(k) && w.tracked[k.ID] == nil && role == "" {
			m.fail("final", "untracked engine-created "+keyKind(k.Name)+" after settling", "after settling, Heron still holds key %s (%q, %s) that the engine created and does not track", k.ID, k.Name, keyState(k, true))
		}
	}

	// Retention passes: what is left must be the current admin key alone.
	m.tick()
	m.clock.Advance(200 * time.Hour)
	m.actTidy()
	w = m.snapshot()
	m.checkStaticKeysDeleted(w)
	for _, k := range w.keys {
		if !k.Deleted && m.engineMade(k) && w.adminRole(k) != "current" && !w.unconfirmed[k.ID] {
			m.fail("final", "engine-created "+keyKind(k.Name)+" left after retention", "after every retention passed and tidy ran, key %s (%q) that the engine created is still in Heron (%s, tracked: %v)", k.ID, k.Name, keyState(k, true), w.tracked[k.ID] != nil)
		}
	}
}

// settle runs rollback and tidy until neither changes anything (bounded).
func (m *model) settle() {
	sig := func() string {
		w := m.snapshot()
		var parts []string
		for id, k := range w.keys {
			parts = append(parts, fmt.Sprintf("%s:%v:%v", id, k.Deleted, k.IsActive))
		}
		parts = append(parts, fmt.Sprintf("tracked=%d wal=%d", len(w.tracked), len(w.walName)))
		sort.Strings(parts)
		return strings.Join(parts, ",")
	}
	for i := 0; i < 5; i++ {
		before := sig()
		m.actRollback()
		m.actTidy()
		if sig() == before {
			return
		}
	}
}

// ---------------------------------------------------------------------------
// Regressions: the minimal sequences TestModel found, spelled out without
// rapid's encoding so that they survive changes to the action set. Each
// subtest fails on the engine as of this commit and names, in its comment,
// the invariant it breaks. Run one with e.g.
//
//	go test -count=1 -run 'TestModelRegressions/lost-post-then-429-lookup' -v .

func TestModelRegressions(t *testing.T) {
	all, _ := mSelectedInvariants("")
	without := func(drop ...string) map[string]bool {
		out := map[string]bool{}
		for k := range all {
			out[k] = true
		}
		for _, d := range drop {
			delete(out, d)
		}
		return out
	}
	cases := []struct {
		name       string
		invariants map[string]bool
		script     func(m *model, step func(func()))
	}{
		{
			// d: the POST's answer is lost, the lookup by name gets a 429:
			// the 429 makes the error look "not processed", the write-ahead
			// record is dropped, the created key is live and forgotten.
			name: "lost-post-then-429-lookup", invariants: all,
			script: func(m *model, step func(func())) {
				step(func() { m.actHeron429("GET", 1) })
				step(func() { m.actHeronFault("POST", 1, herontest.FaultProcessThenDrop) })
				step(func() { m.actIssue("app") })
			},
		},
		{
			// d: the same through rotation: the new admin key is forgotten.
			name: "lost-post-then-429-lookup-rotation", invariants: all,
			script: func(m *model, step func(func())) {
				step(func() { m.actHeron429("GET", 1) })
				step(func() { m.actHeronFault("POST", 1, herontest.FaultProcessThenDrop) })
				step(func() { m.actConfigRotate() })
			},
		},
		{
			// c: a 500 on the POST makes the client delete every key named
			// like the new one: another live lease's key.
			name: "constant-name-recovery-deletes-other-lease", invariants: all,
			script: func(m *model, step func(func())) {
				step(func() { m.actIssue("ci") })
				step(func() { m.actHeronFault("POST", 1, herontest.FaultStatus500) })
				step(func() { m.actIssue("ci") })
			},
		},
		{
			// b: the same recovery deletes the customer's key of that name.
			name: "constant-name-recovery-deletes-customer-key", invariants: all,
			script: func(m *model, step func(func())) {
				step(func() { m.actCustomerKey(mConstantKeyName) })
				step(func() { m.actHeronFault("POST", 1, herontest.FaultStatus500) })
				step(func() { m.actIssue("ci") })
			},
		},
		{
			// b: WAL rollback deletes every untracked key with the recorded
			// name, the customer's included (here the record outlived an
			// issuance that never reached Heron).
			name: "rollback-deletes-customer-key", invariants: all,
			script: func(m *model, step func(func())) {
				step(func() { m.actCustomerKey(mConstantKeyName) })
				step(func() {
					m.actStorageFault(storageFault{op: "put", prefix: creatingStoragePrefix, mode: storageFailAfter, left: 1})
				})
				step(func() { m.actIssue("ci") })
				step(func() { m.actRollback() })
			},
		},
		{
			// a: a revocation whose first attempt failed is retried by Vault
			// after the lease's end and taken for an expiry: deactivated.
			name: "revoke-retried-after-end-deactivates", invariants: all,
			script: func(m *model, step func(func())) {
				var l *mLease
				step(func() { l = m.actIssue("app") })
				step(func() { m.actHeronFault("DELETE", 3, herontest.FaultStatus503) })
				step(func() { m.actRevokeAsync(l) })
				step(func() { m.actVaultRetry(l, 10*time.Minute) })
			},
		},
		{
			// a: the same with 429s: the third rate-limited attempt, after the
			// lease's end, defers a deactivation instead of a deletion.
			name: "revoke-rate-limited-after-end-defers-deactivation", invariants: all,
			script: func(m *model, step func(func())) {
				var l *mLease
				step(func() { l = m.actIssue("app") })
				step(func() { m.actHeron429("", 3) })
				step(func() { m.actRevokeAsync(l) })
				step(func() { m.actVaultRetry(l, 5*time.Second) })
				step(func() { m.actVaultRetry(l, 10*time.Minute) })
			},
		},
		{
			// f: an admin key of another Heron user is accepted although it
			// cannot see the tracked key.
			name: "config-other-user-accepted", invariants: all,
			script: func(m *model, step func(func())) {
				step(func() { m.actIssue("app") })
				step(func() { m.actConfigOtherUser() })
			},
		},
		{
			// a: ...and then the revocation gets a 404, reports success, and
			// the key stays live.
			name: "config-other-user-revoke-404", invariants: without("f"),
			script: func(m *model, step func(func())) {
				var l *mLease
				step(func() { l = m.actIssue("app") })
				step(func() { m.actConfigOtherUser() })
				step(func() { m.actRevoke(l) })
			},
		},
		{
			// e: rotation's config write commits but reports an error; the
			// undo deletes the new admin key, which is now the stored one.
			name: "rotation-config-write-commits-then-fails", invariants: all,
			script: func(m *model, step func(func())) {
				step(func() {
					m.actStorageFault(storageFault{op: "put", prefix: configStoragePrefix, mode: storageFailAfter, left: 1})
				})
				step(func() { m.actConfigRotate() })
			},
		},
		{
			// final: at expiry the record is written "deactivated" but the
			// retained index is not; Vault's retry sees "deactivated" and
			// succeeds; the cleanup pass (which reads only the index) never
			// deletes the key.
			name: "expiry-retained-index-lost", invariants: all,
			script: func(m *model, step func(func())) {
				var l *mLease
				step(func() { l = m.actIssue("app") })
				step(func() {
					m.actStorageFault(storageFault{op: "put", prefix: retainedKeyStoragePrefix, mode: storageFailBefore, left: 1})
				})
				step(func() { m.actAdvance(6 * time.Minute) })
				step(func() { m.actVaultRetry(l, 5*time.Second) })
			},
		},
		{
			// d: a config deleted while a write-ahead record of it is pending:
			// the rollback finds no config, drops the record, the key lives on.
			name: "config-deleted-with-pending-wal", invariants: all,
			script: func(m *model, step func(func())) {
				step(func() { m.actHeronFault("POST", 1, herontest.FaultProcessThenDrop) })
				step(func() { m.actHeronFault("GET", 3, herontest.FaultStatus500) })
				step(func() { m.actIssue("app") })
				step(func() { m.actRoleDelete("app") })
				step(func() { m.actRoleDelete("ci") })
				step(func() { m.actConfigDelete() })
				step(func() { m.actRollback() })
			},
		},
		{
			// d: a hand-written admin key replaces one that rotation created:
			// the engine-created key (whose token only the engine had) stays
			// active in Heron, tracked nowhere.
			name: "config-rewrite-forgets-rotated-admin-key", invariants: all,
			script: func(m *model, step func(func())) {
				step(func() { m.actConfigRotate() })
				step(func() { m.actConfigNewKey() })
			},
		},
		{
			// s3: adopting a key stores its key record, then the static
			// role's write fails: the error is returned but the record stays
			// (adoptStaticKey undoes nothing). No role holds the key, nothing
			// ever deactivates or deletes it (static records are skipped by
			// the overdue sweep), and a retry of the same adoption is refused
			// ("already manages").
			name: "static-adopt-role-write-fails-leaves-tracked-key", invariants: all,
			script: func(m *model, step func(func())) {
				step(func() {
					m.actStorageFault(storageFault{op: "put", prefix: staticRoleStoragePrefix, mode: storageFailBefore, left: 1})
				})
				step(func() { m.actStaticAdopt("svc", true) })
			},
		},
		{
			// s1: a static role's delete deactivates its current key in
			// Heron, then fails to store that (or to delete the role): the
			// role stays, its record still says "active", and static-creds
			// hands out the deactivated key with Heron and storage healthy.
			name: "static-delete-fails-then-creds-returns-dead-key", invariants: all,
			script: func(m *model, step func(func())) {
				step(func() { m.actStaticCreate("svc") })
				step(func() {
					m.actStorageFault(storageFault{op: "put", prefix: keyStoragePrefix, mode: storageFailBefore, left: 1})
				})
				step(func() { m.actStaticDelete("svc") })
				step(func() { m.actStaticRead("svc") })
			},
		},
		{
			// s2: a rotation during an overlap deactivates the previous key
			// first ("superseded") and only then creates the next key; when
			// the creation fails (here Heron's 429 on the POST) the rotation
			// reports failure and keeps the current key, but the previous
			// key, still inside its overlap, is dead.
			name: "static-failed-rotation-kills-previous-key", invariants: all,
			script: func(m *model, step func(func())) {
				step(func() { m.actStaticCreate("svc") })
				step(func() { m.actStaticRotate("svc") })
				step(func() { m.actHeron429("POST", 1) })
				step(func() { m.actStaticRotate("svc") })
			},
		},
		{
			// s3: creating a static role makes its key and stores the key
			// record, then the role's write fails; the undo's DELETE gets a
			// 429 and removing the record fails too (rotateStaticLocked
			// ignores deleteTrackedKey's error). The record outlives the
			// write-ahead record (the rollback leaves tracked keys alone), no
			// role holds the key, and no pass ever ends a static record
			// without a role: the key stays active forever.
			name: "static-create-undo-fails-leaves-tracked-key", invariants: all,
			script: func(m *model, step func(func())) {
				step(func() { m.actHeron429("DELETE", 1) })
				step(func() {
					m.actStorageFault(storageFault{op: "put", prefix: staticRoleStoragePrefix, mode: storageFailBefore, left: 1})
				})
				step(func() {
					m.actStorageFault(storageFault{op: "delete", prefix: keyStoragePrefix, mode: storageFailBefore, left: 1})
				})
				step(func() { m.actStaticCreate("web") })
			},
		},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			m := newModel(t, c.invariants)
			defer m.close()
			step := func(f func()) {
				t.Helper()
				f()
				m.check("after step")
			}
			c.script(m, step)
			m.finish()
		})
	}
}

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
		if healthy && r != nil && m.invariants["s1"] {
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
