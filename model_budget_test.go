package heron

// The request budget in the model (spec, "Upstream calls" and Invariants 8):
// in any sliding 60-second window the engine sends at most
// rate_limit_per_minute requests to a Heron environment (+1 tolerated),
// across 429 pauses, Retry-After and budget changes. heronapi's own tests
// (budgetRun) check the limiter alone; here the real backend and its real
// client spend the budget, through every path that reaches Heron (issuance,
// revocation and its retries, verify, rotation, rollback, tidy, the periodic
// pass, static roles), with Heron's 429s and config writes that change the
// budget:
//
//	r  for every request Heron received from the engine, the requests Heron
//	   received from the engine for the same environment in the 60 s up to it
//	   (on the virtual clock) number at most the budget in force at it, plus
//	   one; and none of them arrived before the Retry-After of a 429 Heron
//	   answered the engine for that environment had run out. The budget in
//	   force is the stored config's rate_limit_per_minute at that moment
//	   (read when the request arrives); a lowered budget counts what was sent
//	   under the old one, as budgetRun does.
//
// It runs in TestModel/budget (the "budget" action group, opt-in like
// quarantine: HERON_MODEL_ACTIONS=all,budget), and in about half of the
// checks of TestModelConcurrent's default run. Elsewhere the limiter stays
// off (see "Model assumptions" in model_test.go).
//
// Time. The engine's limiter runs on the model's Vault clock (mClock): a
// limiter of heronapi on that clock (heronapi.NewLimiterWithClock), whose
// Sleep moves the clock straight to the slot it waits for. A sequential step
// is the only actor, and in TestModelConcurrent only one actor runs between
// gates: whoever waits in the limiter is the only one who could move time,
// so it moves it (time passes while a request waits for its slot, as it
// would). A waiter behind the head of the queue (none in these models)
// sleeps until the head is granted or gives up, as on the wall clock.
//
// Deadlines. A request's context carries a real 10 s deadline
// (mReqDeadline), which the client needs as it is (its retries and
// Retry-After checks run on the wall clock) but which the limiter cannot
// compare with virtual slots. The model also puts the deadline on the
// virtual clock into the context (mVirtualDeadline: virtual now + 10 s when
// the request starts), and the limiter's clock answers that as the
// deadline: a slot more than ~8 s of virtual time away ends in
// ErrRateLimited at once, as it would in Vault, and the total virtual time
// one request waits is bounded by its own deadline. A context without it
// has no deadline for the limiter: the model leaves it out on purpose while
// settling and for t2's pass run alone ("patient"), which wait for their
// slots however far.
//
// Which limiter. The engine takes its limiters from a registry of budgets
// (heronapi.Registry, keyed by base URL and the config's budget lineage, at
// the smallest rate of its holders; a holder moving to another lineage takes
// its record along). In production it is the plugin process's, on the wall
// clock; here every backend instance of a model run gets one registry on the
// virtual clock (heronapi.NewRegistry), which stands for the model's plugin
// process: it lives across restarts and crashes of the backend, as the
// process does in the model.

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/hashicorp/vault/sdk/logical"
	"pgregory.net/rapid"

	"github.com/heron-vault/vault-plugin-secrets-heron/heronapi"
)

// mBudgetMin and mBudgetMax bound the budgets the model draws: small, so
// that a few steps spend a minute's worth and the limiter decides often.
const (
	mBudgetMin = 3
	mBudgetMax = 30
)

// Admin keys set by hand (configNewKey, configCreate, configOtherUser) are in
// TestModel/budget's run. r found two engine gaps there, since closed
// (heronapi.Registry's Carry, verifyStoredEnvironment):
//
//   - A hand-set admin key gives the config a new budget lineage
//     (BudgetKey, path_config.go), a limiter with an empty record and no
//     pause, although Heron counts per environment. At a budget of 14:
//     configRotate, configBudget to 3, configNewKey: 5 requests in 11.6 s.
//     At a budget of 3: heron429 on an issuance's POST (Retry-After 60 s),
//     configNewKey: the new key's verify went 1 s later.
//   - The check of a key nobody holds yet (a config write's verify) ran on
//     a limiter of its own, dropped after the write: force429,
//     configOtherUser (its verify gets the 429), configOtherUser again 1 s
//     later went within the first's Retry-After.

// A budget lowered while others spend it: TestModelConcurrent's rounds
// change the budget both ways. r found two engine gaps there, since closed:
//
//   - An operation in flight kept its client, and its limiter's old rate,
//     until a client was next built (a settings write let go of the
//     writer's claim; the next Acquire set the rate): a round [tidy
//     configRotate configWrite] lowering 25 to 4 let 7 requests go in 15 s.
//     A settings write now builds the client at once, and the limiter the
//     in-flight requests wait on runs at the new rate.
//   - A reload's new instance that built its client before the old
//     instance's write lowered the budget went on spending at the old rate
//     once the old instance let go ([failover configWrite]: 6 requests in
//     42 s at a stored budget of 3). Rates are now per mount's environment
//     (the registry's scope, Vault's mount id), whichever instance stated
//     them last, and refreshClient rebuilds a client whose budget changed.

// mVirtualDeadline is the context key of a request's deadline on the
// virtual clock (see "Deadlines" above).
type mVirtualDeadline struct{}

// withVirtualDeadline gives ctx a deadline d from now on the model's clock.
func (m *model) withVirtualDeadline(ctx context.Context, d time.Duration) context.Context {
	return context.WithValue(ctx, mVirtualDeadline{}, m.clock.Now().Add(d))
}

// limiterClock is the engine's limiter's time: the model's Vault clock.
type limiterClock struct{ c *mClock }

var _ heronapi.Clock = limiterClock{}

func (l limiterClock) Now() time.Time { return l.c.Now() }

// Sleep moves the clock to until: the caller is the only actor that runs
// (see "Time" above). Without a time it waits for its turn (wake) or ctx.
func (l limiterClock) Sleep(ctx context.Context, until time.Time, wake <-chan struct{}) error {
	if !until.IsZero() {
		l.c.advanceTo(until)
		return nil
	}
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-wake:
		return nil
	}
}

// Deadline is the request's deadline on the virtual clock (see "Deadlines").
func (l limiterClock) Deadline(ctx context.Context) (time.Time, bool) {
	dl, ok := ctx.Value(mVirtualDeadline{}).(time.Time)
	return dl, ok
}

// advanceTo moves the clock forward to t (never back).
func (c *mClock) advanceTo(t time.Time) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if t.After(c.now) {
		c.now = t
	}
}

// mBudget is what the model knows of the engine's budget: the twins of the
// registry's limiters, and every request Heron received from the engine.
type mBudget struct {
	clock     *mClock
	perMinute int // what the model's config writes set (configData)

	// reg is the model's plugin process's registry of budgets.
	reg *heronapi.Registry

	mu sync.Mutex
	// sent: per Heron environment, the engine's requests in arrival order.
	sent map[string][]mSent
	// checked: per environment, how many of sent r has checked, and the
	// first request inside the window of the last one checked.
	checked, lo map[string]int
	// lastBudget is the stored rate_limit_per_minute as last read (the
	// budget in force while no config is stored), lastLineage its BudgetKey.
	lastBudget int
	// byHand: admin keys the model's config writes set (not rotations').
	byHand map[string]bool
	// paused: per environment, the latest end of a 429's Retry-After.
	paused map[string]mPause
}

// mSent is one request Heron received from the engine.
type mSent struct {
	at     time.Time // virtual
	budget int       // in force when it arrived
	// lineage is the BudgetKey it was spent from (requestBudget): a hand-set
	// admin key starts a new one (a limiter of its own, see
	// a budget of its own, into which the engine carries the old one's
	// record), a rotation keeps it.
	lineage string
	what    string // method and path, for the report
	// pausedUntil is when the latest Retry-After Heron answered the engine
	// for this environment before it ends, pauseLineage the lineage of the
	// request that got it.
	pausedUntil  time.Time
	pauseLineage string
}

// mPause is a Retry-After in force for an environment.
type mPause struct {
	until   time.Time
	lineage string
}

func newMBudget(clock *mClock, perMinute int) *mBudget {
	return &mBudget{clock: clock, perMinute: perMinute, lastBudget: perMinute,
		reg: heronapi.NewRegistry(limiterClock{clock}), sent: map[string][]mSent{}, byHand: map[string]bool{}, paused: map[string]mPause{},
		checked: map[string]int{}, lo: map[string]int{}}
}

// withBudget turns the engine's limiter on at perMinute (newModel option).
func withBudget(perMinute int) func(*model) {
	return func(m *model) { m.budget = newMBudget(m.clock, perMinute) }
}

func (bu *mBudget) setByHand(key string) {
	bu.mu.Lock()
	defer bu.mu.Unlock()
	bu.byHand[key] = true
}

// limiterFor is what the model's newClient gives the client: in budget mode
// the limiter the engine acquired (from the model's registry, on the
// virtual clock), else none.
func (m *model) limiterFor(lim *heronapi.Limiter) *heronapi.Limiter {
	if m.budget == nil {
		return nil
	}
	return lim
}

// recordBudget wraps the handler in front of the emulator (outermost: a
// 429 answered by the front still reached Heron) and records every request
// of the engine, with the budget in force when it arrived, and every 429's
// Retry-After. The customer's own requests (with their key) are not the
// engine's.
func (m *model) recordBudget(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		tok := r.Header.Get("x-api-key")
		if !strings.HasPrefix(r.URL.Path, "/api/") || tok == m.customerKey {
			next.ServeHTTP(w, r)
			return
		}
		env := "(unknown key)"
		if k, ok := m.srv.KeyByToken(tok); ok {
			env = k.Environment
		}
		budget, lineage := m.requestBudget(tok)
		m.budget.record(env, r.Method+" "+r.URL.Path, budget, lineage)
		sw := &statusWriter{ResponseWriter: w}
		next.ServeHTTP(sw, r)
		if sw.status == http.StatusTooManyRequests {
			if secs, err := strconv.Atoi(sw.Header().Get("Retry-After")); err == nil && secs > 0 {
				m.budget.pause(env, time.Duration(secs)*time.Second, lineage)
			}
		}
	})
}

// statusWriter remembers the status a handler answered.
type statusWriter struct {
	http.ResponseWriter
	status int
}

func (s *statusWriter) WriteHeader(code int) {
	if s.status == 0 {
		s.status = code
	}
	s.ResponseWriter.WriteHeader(code)
}

// Hijack passes on: the emulator's lost answers (FaultDropBeforeProcessing,
// FaultProcessThenDrop) hijack the connection to drop it.
func (s *statusWriter) Hijack() (net.Conn, *bufio.ReadWriter, error) {
	return s.ResponseWriter.(http.Hijacker).Hijack()
}

// storedBudget is the stored config's rate_limit_per_minute, 0 when none is
// stored.
func (m *model) storedBudget() int {
	cfg, err := getConfig(context.Background(), m.st.inner, mEnv)
	if err != nil || cfg == nil {
		return 0
	}
	return cfg.RateLimitPerMinute
}

// requestBudget is, for a request sent with admin key tok, the stored
// config's rate_limit_per_minute (0 when none is stored: the last one read
// stays in force) and the budget lineage the request was spent from (for
// the report only): the stored config's for its own key and for a key a
// rotation is verifying, the key's own for a key the operator is setting
// by hand (path_config.go: budgetKey of the new key).
func (m *model) requestBudget(tok string) (int, string) {
	cfg, err := getConfig(context.Background(), m.st.inner, mEnv)
	if err != nil || cfg == nil {
		return 0, budgetKey(tok)
	}
	m.budget.mu.Lock()
	byHand := m.budget.byHand[tok]
	m.budget.mu.Unlock()
	if cfg.AdminAPIKey != tok && byHand {
		return cfg.RateLimitPerMinute, budgetKey(tok)
	}
	return cfg.RateLimitPerMinute, cfg.BudgetKey
}

func (bu *mBudget) record(env, what string, stored int, lineage string) {
	bu.mu.Lock()
	defer bu.mu.Unlock()
	if stored > 0 {
		bu.lastBudget = stored
	}
	p := bu.paused[env]
	bu.sent[env] = append(bu.sent[env], mSent{at: bu.clock.Now(), budget: bu.lastBudget, lineage: lineage, what: what,
		pausedUntil: p.until, pauseLineage: p.lineage})
	mStat("r: requests Heron received from the engine")
}

// pause records a 429 with Retry-After d for env, answered now.
func (bu *mBudget) pause(env string, d time.Duration, lineage string) {
	bu.mu.Lock()
	defer bu.mu.Unlock()
	if until := bu.clock.Now().Add(d); until.After(bu.paused[env].until) {
		bu.paused[env] = mPause{until: until, lineage: lineage}
	}
	mStat("r: 429s with Retry-After Heron answered the engine")
}

// checkBudget is invariant r over the requests recorded since the last check.
func (m *model) checkBudget() {
	m.t.Helper()
	if m.budget == nil || !m.invariants["r"] {
		return
	}
	bu := m.budget
	bu.mu.Lock()
	envs := make([]string, 0, len(bu.sent))
	for env := range bu.sent {
		envs = append(envs, env)
	}
	sort.Strings(envs)
	var violation, class string
	acrossLineage := ", across an admin key set by hand (a new budget lineage)"
	for _, env := range envs {
		sent := bu.sent[env]
		lo := bu.lo[env]
		for i := bu.checked[env]; i < len(sent); i++ {
			at := sent[i].at
			for !sent[lo].at.After(at.Add(-time.Minute)) {
				lo++
			}
			if violation != "" {
				continue
			}
			if at.Before(sent[i].pausedUntil) {
				class = "request sent within a 429's Retry-After"
				if sent[i].pauseLineage != sent[i].lineage {
					class += acrossLineage
				}
				violation = fmt.Sprintf("Heron environment %q received %s at %s, but answered the engine 429 with a Retry-After that ends at %s (budget lineage %.8s, this request's %.8s)",
					env, sent[i].what, at.Format("15:04:05.000"), sent[i].pausedUntil.Format("15:04:05.000"), sent[i].pauseLineage, sent[i].lineage)
				continue
			}
			n := i - lo + 1
			switch {
			case n == sent[i].budget:
				mStat("r: a request that filled its window to the budget")
			case n == sent[i].budget+1:
				mStat("r: a request that filled its window to the budget+1")
			}
			if n > sent[i].budget+1 {
				var lines []string
				lineages := map[string]bool{}
				for j := lo; j <= i; j++ {
					lineages[sent[j].lineage] = true
					lines = append(lines, fmt.Sprintf("%s %s (budget %d, lineage %.8s)", sent[j].at.Format("15:04:05.000"), sent[j].what, sent[j].budget, sent[j].lineage))
				}
				class = "more requests in a sliding minute than the budget in force (+1)"
				if len(lineages) > 1 {
					class += acrossLineage
				}
				violation = fmt.Sprintf("Heron environment %q received %d requests from the engine in the 60 s up to %s, at a budget of %d (+1 tolerated): %s",
					env, n, at.Format("15:04:05.000"), sent[i].budget, strings.Join(lines, "; "))
			}
		}
		bu.checked[env], bu.lo[env] = len(sent), lo
	}
	bu.mu.Unlock()
	if violation != "" {
		m.fail("r", class, "%s", violation)
	}
}

// actConfigBudget is an operator changing the budget: a settings-only config
// write of rate_limit_per_minute.
func (m *model) actConfigBudget(perMinute int) {
	m.tick()
	before := m.storedBudget()
	m.configWrite(fmt.Sprintf("config update (rate_limit_per_minute %d -> %d, admin key unchanged)", before, perMinute),
		map[string]interface{}{"rate_limit_per_minute": perMinute})
	if m.storedBudget() == perMinute {
		m.budget.perMinute = perMinute
	}
}

// budgetRateLimited: err is the engine's own limiter refusing a request
// (no slot before the deadline): in budget mode a read may fail for that
// with Heron and storage healthy (s1 does not count it).
func (m *model) budgetRateLimited(err error) bool {
	if m.budget == nil || err == nil {
		return false
	}
	if errors.Is(err, logical.ErrUpstreamRateLimited) || errors.Is(err, heronapi.ErrRateLimited) {
		return true
	}
	s := err.Error()
	return strings.Contains(s, "no request slot before the deadline") || strings.Contains(s, "request budget paused")
}

// rapidBudgetActions are the "budget" group's actions.
func (m *model) rapidBudgetActions() map[string]func(*rapid.T) {
	return map[string]func(*rapid.T){
		"configBudget": func(t *rapid.T) {
			if m.budget == nil {
				t.Skip("the limiter is off (no budget drawn)")
			}
			m.actConfigBudget(rapid.IntRange(mBudgetMin, mBudgetMax).Draw(t, "rate_limit_per_minute"))
		},
		// A budget lowered while the last minute's requests (sent under the
		// higher one) still count: what the limiter's record is for.
		"configBudgetLower": func(t *rapid.T) {
			if m.budget == nil || m.budget.perMinute <= mBudgetMin {
				t.Skip("no budget to lower")
			}
			m.actConfigBudget(rapid.IntRange(mBudgetMin, m.budget.perMinute-1).Draw(t, "lower rate_limit_per_minute"))
		},
	}
}
