package heron

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"strconv"
	"strings"
	"sync"
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

// armOnce arms a 429 for the next request of method alone and returns what
// takes it back when that request never came.
func (f *front429) armOnce(method string) (disarm func()) {
	f.mu.Lock()
	defer f.mu.Unlock()
	r := &front429Rule{method: method, left: 1}
	f.rules = append(f.rules, r)
	return disarmer(&f.mu, &f.rules, r)
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

	// Static roles (see "Static roles" in model_static_test.go). lu rewrites
	// Heron's last_used onto the Vault clock.
	lu       *virtualLastUsed
	useFront *httptest.Server        // the applications' way to Heron (no armed 429s)
	forced   bool                    // force429 is on
	statics  map[string]*mStaticRole // by role name: what the model knows
	sKeys    map[string]*mStaticKey  // every key a static role held (or the engine tracked as static), by id
	// lastActive is each key's activity in Heron at the previous check.
	lastActive map[string]bool
	// quarantined: keys whose quarantine the engine reported done (q).
	quarantined map[string]bool

	// budget: the engine's limiter is on, on the virtual clock, and r is
	// checked (model_budget_test.go); nil: the limiter is off.
	budget *mBudget
	// patient: requests carry no deadline on the virtual clock, so the
	// limiter lets them wait for their slot however far (settling).
	patient bool
}

// newModel builds a check's world; opts (withBudget) apply before the
// backend starts.
func newModel(t rapid.TB, invariants map[string]bool, opts ...func(*model)) *model {
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
	for _, o := range opts {
		o(m)
	}
	m.srv = herontest.NewUnstartedServer(herontest.Options{
		Environments: map[string][]string{
			mEnv:       {m.devAdmin, m.customerKey},
			mOtherUser: {m.otherAdmin},
		},
		RateLimitPerMinute: -1,
	})
	m.lu = &virtualLastUsed{srv: m.srv, clock: m.clock, at: map[string]time.Time{}}
	front := m.f429.wrap(m.lu.wrap(m.srv.Handler()))
	if m.budget != nil {
		front = m.recordBudget(front)
	}
	m.front = httptest.NewServer(front)
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
	budget := maxRateLimitPerMinute
	if m.budget != nil {
		budget = m.budget.perMinute
	}
	return map[string]interface{}{
		"admin_api_key":         adminKey,
		"base_url":              m.front.URL,
		"max_retries":           2,
		"request_timeout":       "5s",
		"rate_limit_per_minute": budget,
	}
}

// startBackend starts a backend instance on the model's storage, as Vault
// does on mount and on plugin restart: nothing in memory survives.
func (m *model) startBackend() {
	conf := logical.TestBackendConfig()
	// One mount: every instance (a restart, a failover) is the same one.
	conf.BackendUUID = "model-mount"
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
	if m.budget != nil {
		// The model's plugin process: its budgets on the virtual clock,
		// shared by every instance (model_budget_test.go).
		b.budgets = m.budget.reg
	}
	b.newClient = func(cfg *heronConfig, lim *heronapi.Limiter) (heronapi.API, error) {
		// No limiter, or the registry's on the virtual clock: see "Model
		// assumptions" and model_budget_test.go.
		return heronapi.New(b.clientConfig(cfg, m.limiterFor(lim)))
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
	if !m.patient {
		ctx = m.withVirtualDeadline(ctx, mReqDeadline)
	}
	req.Storage = m.st
	if req.DisplayName == "" {
		req.DisplayName = "token-model"
	}
	if req.Data == nil {
		req.Data = map[string]interface{}{}
	}
	resp, err := m.b.HandleRequest(ctx, req)
	if m.budgetRateLimited(outcome(resp, err)) {
		mStat("r: engine requests that failed rate limited")
	}
	return resp, err
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
