package heron

// TestModelConcurrent: the model of TestModel (its world and its Vault-like
// driver, model_world_test.go; its invariants a, b, c, d, e, s1-s4 and final,
// model_invariants_test.go) with actors running at the same time (spec,
// Invariants 7 and 8; issue 18, "Method").
//
// A step is either a round or a sequential step. A round starts two or three
// actors at once on the model's storage, each one engine request or pass:
//
//	issue         creds/app read (Vault registers the lease when it returns)
//	revoke        Vault revokes a live lease (not an expiry: Secret.IssueTime set)
//	staticRead    static-creds/<role> read
//	staticRotate  static-roles/<role>/rotate
//	configRotate  config/<env>/rotate
//	configWrite   a config write of settings only (max_retries)
//	pass          the periodic pass (PeriodicFunc, as Vault calls it)
//	tidy          tidy (the pass on demand)
//	failover      a second backend instance (Factory's backend on the same
//	              storage, as a plugin reload or an HA failover starts it)
//	              runs its periodic pass while the old instance finishes
//	              the round's other actors; the new instance then serves
//
// Every storage operation and every Heron call of an actor parks at a gate
// (model_sched_test.go) and rapid picks which parked actor proceeds next.
// After every round the model's invariants are checked; at the end the world
// is settled and checked as TestModel does.
//
// Time (Vault's clock is virtual; sequential steps move it, set schedules,
// create static roles on rotation_period or a cron rotation_schedule): these
// invariants hold in addition to the model's:
//
//	t1  a scheduled rotation fires at its time: the pass never creates a
//	    rotation's key (admin or static) before the target is due as stored
//	    when the POST goes out (not at the first pass; not again right after
//	    a manual rotation landed).
//	t2  and once: a pass run alone, with Heron and storage healthy, leaves no
//	    target due (it rotated what was due).
//	t3  old_key_retention counts from the deactivation: a rotated-out admin
//	    key is deleted no sooner than old_key_retention after it was first
//	    seen deactivated (and never while active).
//
// How to run:
//
//	go test -count=1 -run 'TestModelConcurrent$' -v .          # ~30 checks (CI)
//	HERON_MODEL_CHECKS=2000 go test -count=1 -run 'TestModelConcurrent$' -timeout 2h .
//	HERON_MODEL_CONCURRENT_ACTORS=all,-failover                 actor kinds to use in rounds
//	HERON_MODEL_INVARIANTS, HERON_MODEL_LOG, HERON_MODEL_IGNORE as for TestModel
//	HERON_MODEL_TRACE=1                      each round's time and gate count (and t1's details) to stderr
//	HERON_MODEL_CONCURRENT_FAULTS=0          no Heron and storage faults at all: none armed between rounds, none at a gate (on by default)
//	HERON_MODEL_GATE_FAULTS=0                no faults at a gate, those armed between rounds stay (only the variant without them runs)
//	HERON_MODEL_CONCURRENT_BUDGET=1          the budget (invariant r) with an explicit actor set too
//
// The default run (no HERON_MODEL_CONCURRENT_ACTORS) uses the fixed seed of
// TestModel (mSetChecks), 30 checks, and never puts mExcludedPairs in one
// round; an explicit HERON_MODEL_CONCURRENT_ACTORS=all does.
//
// Faults inside a round: at every gate before a storage write (put or
// delete) or a Heron call, rapid may also decide that the operation fails
// (gateFault; about one such gate in 23, so that rounds still get on): a
// write refused or committed and then reported failed, a Heron 5xx, an
// answer lost before or after Heron processed the request, or a 429 with
// Retry-After: the faults armed between rounds (heronFault, heron429,
// storageFault), armed for that one operation. So a fault lands at step k
// of one actor while another is between its steps. The round a t2 pass
// runs alone in has none (t2 asks for Heron and storage healthy). The
// default run checks two variants: TestModelConcurrent/default without
// faults at gates, so that the sequences kept before these draws existed
// (the failfiles of 2026-12-06, in which the same draws would read as
// another sequence) replay as recorded, and .../default-gate-faults with
// them (failfiles of its own); a search with explicit checks runs only the
// latter, which can draw no fault, unless HERON_MODEL_GATE_FAULTS=0.
//
// rapid keeps a failing sequence under testdata/rapid/TestModelConcurrent_<actors>/
// and replays it first on later runs; the order of gates is rapid's choice,
// so a replay takes the same interleaving (as long as which actors are at a
// gate, not waiting on a lock, does not depend on timing: a replay may call
// a failure "flaky").
//
// The default run puts every actor kind in rounds (see mExcludedPairs).
// The retained-marker race it found (the pass deleting a
// retained-keys/ marker written just before its record) is fixed, and kept
// as TestCleanup_PassKeepsAMarkerWrittenJustBeforeItsRecord, with its form
// across two instances (whose key locks are their own: fixed by the
// marker's age).

import (
	"context"
	"flag"
	"fmt"
	"os"
	"regexp"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/hashicorp/vault/sdk/logical"
	"github.com/hashicorp/vault/sdk/rotation"
	"pgregory.net/rapid"

	"github.com/heron-vault/vault-plugin-secrets-heron/heronapi"
	"github.com/heron-vault/vault-plugin-secrets-heron/herontest"
)

// mActorKinds are the actors a round draws from.
var mActorKinds = []string{"issue", "revoke", "staticRead", "staticRotate", "configRotate", "configWrite", "pass", "tidy", "failover"}

// mConcurrentExcluded are left out of the CI-sized run: empty while the
// default run passes with every kind.
var mConcurrentExcluded = []string{}

// mExcludedPairs are actor kinds the default run never puts in one round
// (an explicit HERON_MODEL_CONCURRENT_ACTORS puts them back): none now.
// Failover with rotations, the pass and tidy was left out until two
// instances could no longer both rotate one target (rotation claims,
// rotation_claim.go) and the pass no longer wrote back a config over another
// instance's rotation (rotated-out admin keys' progress in records of their
// own, retired_admin.go); the run with them back found a third case: a new
// instance's cached client holding the admin key the old one had just
// rotated out (refreshClient).
var mExcludedPairs = [][2]string{}

// mPairExcluded: may kind join a round that already has picked?
func mPairExcluded(picked []string, kind string) bool {
	for _, p := range picked {
		for _, x := range mExcludedPairs {
			if (x[0] == p && x[1] == kind) || (x[1] == p && x[0] == kind) {
				return true
			}
		}
	}
	return false
}

func mSelectedActors(spec string) (map[string]bool, error) {
	sel := map[string]bool{}
	spec = strings.TrimSpace(spec)
	if spec == "" {
		for _, k := range mActorKinds {
			sel[k] = true
		}
		for _, k := range mConcurrentExcluded {
			delete(sel, k)
		}
		return sel, nil
	}
	for _, p := range strings.Split(spec, ",") {
		p = strings.TrimSpace(p)
		neg := strings.HasPrefix(p, "-")
		p = strings.TrimPrefix(p, "-")
		names := []string{p}
		if p == "all" {
			names = mActorKinds
		} else if !contains(mActorKinds, p) {
			return nil, fmt.Errorf("HERON_MODEL_CONCURRENT_ACTORS: unknown actor %q (known: %s)", p, strings.Join(mActorKinds, ","))
		}
		for _, n := range names {
			if neg {
				delete(sel, n)
			} else {
				sel[n] = true
			}
		}
	}
	return sel, nil
}

func contains(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}

func TestModelConcurrent(t *testing.T) {
	actors, err := mSelectedActors(os.Getenv("HERON_MODEL_CONCURRENT_ACTORS"))
	if err != nil {
		t.Fatal(err)
	}
	invariants, err := mConcurrentInvariants(os.Getenv("HERON_MODEL_INVARIANTS"))
	if err != nil {
		t.Fatal(err)
	}
	explicit := os.Getenv("RAPID_CHECKS") != "" || os.Getenv("HERON_MODEL_CHECKS") != ""
	flag.Visit(func(f *flag.Flag) { explicit = explicit || f.Name == "rapid.checks" })
	mSetChecks(t)
	if !explicit {
		// Rounds cost more than TestModel's steps: 30 checks keep the gate
		// under ~30 s.
		_ = flag.Lookup("rapid.checks").Value.Set("30")
	}
	name := "default"
	if spec := strings.TrimSpace(os.Getenv("HERON_MODEL_CONCURRENT_ACTORS")); spec != "" {
		name = "actors=" + regexp.MustCompile(`[^A-Za-z0-9,=+-]`).ReplaceAllString(spec, "_")
	}
	// Two variants: without faults at gates, whose name keeps the
	// failfiles kept before those draws existed replaying as recorded, and
	// with them ("-gate-faults", its own failfiles). The default run (CI)
	// runs both; a search (explicit checks) only the one with gate faults,
	// which can draw none, unless HERON_MODEL_GATE_FAULTS=0.
	gateFaults := os.Getenv("HERON_MODEL_CONCURRENT_FAULTS") != "0" && os.Getenv("HERON_MODEL_GATE_FAULTS") != "0"
	type variant struct {
		name  string
		gates bool
	}
	var variants []variant
	if !gateFaults || !explicit {
		variants = append(variants, variant{name, false})
	}
	if gateFaults {
		variants = append(variants, variant{name + "-gate-faults", true})
	}
	for _, v := range variants {
		t.Run(v.name, func(t *testing.T) { mRunConcurrent(t, invariants, actors, v.gates) })
	}
	mPrintStats(t)
}

// mRunConcurrent is one rapid search of TestModelConcurrent.
func mRunConcurrent(t *testing.T, invariants, actors map[string]bool, gateFaults bool) {
	rapid.Check(t, func(rt *rapid.T) {
		// The default run spends a small budget and checks r in about
		// half of its checks (a small budget refuses many of the
		// actors' calls; the other half keeps every interleaving for
		// the other invariants). An explicit actor set runs without the
		// limiter, as its kept failfiles were recorded (the budget is
		// one more draw), unless HERON_MODEL_CONCURRENT_BUDGET=1.
		var opts []func(*model)
		if strings.TrimSpace(os.Getenv("HERON_MODEL_CONCURRENT_ACTORS")) == "" || os.Getenv("HERON_MODEL_CONCURRENT_BUDGET") == "1" {
			if rapid.Bool().Draw(rt, "budget on") {
				opts = append(opts, withBudget(rapid.IntRange(mBudgetMin, mBudgetMax).Draw(rt, "budget")))
			}
		}
		c := newCModel(rt, invariants, actors, opts...)
		c.pairs = strings.TrimSpace(os.Getenv("HERON_MODEL_CONCURRENT_ACTORS")) == ""
		c.gateFaults = gateFaults
		defer c.close()
		rt.Repeat(c.rapidActions())
		c.finish()
	})
}

// mConcurrentInvariants is mSelectedInvariants plus this test's t1, t2, t3.
func mConcurrentInvariants(spec string) (map[string]bool, error) {
	var base, mine []string
	for _, p := range strings.Split(spec, ",") {
		if p = strings.TrimSpace(p); p == "t1" || p == "t2" || p == "t3" {
			mine = append(mine, p)
		} else if p != "" {
			base = append(base, p)
		}
	}
	all := strings.TrimSpace(spec) == "" || strings.TrimSpace(spec) == "all"
	if all {
		base, mine = nil, []string{"t1", "t2", "t3"}
	}
	sel := map[string]bool{}
	if all || len(base) > 0 {
		var err error
		if sel, err = mSelectedInvariants(strings.Join(base, ",")); err != nil {
			return nil, err
		}
	}
	for _, i := range mine {
		sel[i] = true
	}
	return sel, nil
}

// cModel is the model's world plus a scheduler for the current round.
type cModel struct {
	*model
	actors map[string]bool
	pairs  bool   // mExcludedPairs apply (the default run)
	cur    *sched // the round running now (nil between rounds)
	// gateFaults: rapid may fail the operation at any gate of a round
	// (gateFault); roundFaults: it may in the round running now.
	gateFaults, roundFaults bool

	// cronSetAt: when the model set a cron schedule on a static role (t1
	// counts a cron's first time from then, independently of the record).
	cronSetAt map[string]time.Time
	// firstInactive: Vault time each key was first seen deactivated (t3);
	// everCurrent: keys that were once the config's current admin key.
	firstInactive map[string]time.Time
	everCurrent   map[string]bool
}

func newCModel(t *rapid.T, invariants map[string]bool, actors map[string]bool, opts ...func(*model)) *cModel {
	c := &cModel{model: newModel(t, invariants, opts...), actors: actors,
		cronSetAt: map[string]time.Time{}, firstInactive: map[string]time.Time{}, everCurrent: map[string]bool{}}
	// Replace the instance newModel started by one whose Heron client parks
	// at the gates (a restart: nothing in memory survives).
	c.b.Cleanup(context.Background())
	c.b = c.newInstance()
	c.observe()
	return c
}

// newInstance starts a backend on the model's storage as startBackend does,
// with a client that parks at the current round's gates.
func (c *cModel) newInstance() *heronBackend {
	old := c.b
	c.startBackend()
	b := c.b
	c.b = old
	b.newClient = func(cfg *heronConfig, lim *heronapi.Limiter) (heronapi.API, error) {
		// The limiter runs inside the gated call, after the gate: the actor
		// the scheduler released is the only one running, and moves the
		// virtual clock to its slot (model_budget_test.go).
		api, err := heronapi.New(b.clientConfig(cfg, c.limiterFor(lim)))
		if err != nil {
			return nil, err
		}
		return &gateAPI{inner: api, s: func() *sched { return c.cur }}, nil
	}
	return b
}

// req runs one request on instance b under ctx (an actor's), on gated storage.
func (c *cModel) req(ctx context.Context, b *heronBackend, r *logical.Request) error {
	ctx, cancel := context.WithTimeout(ctx, mReqDeadline)
	defer cancel()
	ctx = c.actorDeadline(ctx)
	r.Storage = &gateStorage{inner: c.st, s: c.cur}
	if r.DisplayName == "" {
		r.DisplayName = "token-model"
	}
	if r.Data == nil {
		r.Data = map[string]interface{}{}
	}
	resp, err := b.HandleRequest(ctx, r)
	return outcome(resp, err)
}

func (c *cModel) pass(ctx context.Context, b *heronBackend) error {
	ctx, cancel := context.WithTimeout(ctx, mReqDeadline)
	defer cancel()
	ctx = c.actorDeadline(ctx)
	return b.periodicFunc(ctx, &logical.Request{Operation: logical.RollbackOperation, Storage: &gateStorage{inner: c.st, s: c.cur}})
}

func (c *cModel) rapidActions() map[string]func(*rapid.T) {
	round := func(t *rapid.T) {
		var kinds []string
		for _, k := range mActorKinds {
			if c.actors[k] {
				kinds = append(kinds, k)
			}
		}
		n := rapid.IntRange(2, 3).Draw(t, "actors")
		var picked []string
		for i := 0; i < n; i++ {
			var ok []string
			for _, k := range kinds {
				if !c.pairs || !mPairExcluded(picked, k) {
					ok = append(ok, k)
				}
			}
			picked = append(picked, rapid.SampledFrom(ok).Draw(t, "actor"))
		}
		c.round(t, picked)
	}
	// Faults armed between rounds hit whichever actor of the next rounds
	// makes that call first: a Heron answer of 5xx, 429 or a lost one, a
	// storage write that fails (before or after it lands).
	// (HERON_MODEL_CONCURRENT_FAULTS=0 leaves them out, and the faults at
	// a gate too: gateFault.) Their first long run found only the
	// documented limit of a revocation whose decision storage refused too
	// (see the revoke actor).
	faults := map[string]func(*rapid.T){}
	if os.Getenv("HERON_MODEL_CONCURRENT_FAULTS") != "0" {
		faults = c.model.rapidActions(map[string]bool{"heronFault": true, "heron429": true, "storageFault": true})
	}
	actions := map[string]func(*rapid.T){
		// Rounds are what this test is for: listed twice, drawn twice as often.
		"round":  round,
		"round2": round,
		"advance": func(t *rapid.T) {
			c.actAdvance(rapid.SampledFrom([]time.Duration{30 * time.Second, 10 * time.Minute, 50 * time.Minute, 3 * time.Hour}).Draw(t, "by"))
			c.observe()
		},
		"staticCreate": func(t *rapid.T) {
			name := rapid.SampledFrom(mStaticNames).Draw(t, "static")
			if cron := rapid.Bool().Draw(t, "cron"); cron {
				c.actStaticCron(name, rapid.SampledFrom([]string{"15 * * * *", "0 */2 * * *", "30 4 * * 1"}).Draw(t, "schedule"))
			} else {
				c.actStaticCreate(name)
			}
			c.observe()
		},
		"configSchedule": func(t *rapid.T) {
			c.actConfigSchedule(rapid.SampledFrom([]string{"off", "2h", "0 */3 * * *", "45 6 * * *"}).Draw(t, "schedule"))
			c.observe()
		},
		"passAlone": func(t *rapid.T) { c.round(t, []string{"pass"}) },
		"configBudget": func(t *rapid.T) {
			// Only present with the budget on (see below).
			c.actConfigBudget(rapid.IntRange(mBudgetMin, mBudgetMax).Draw(t, "rate_limit_per_minute"))
		},
		"": func(t *rapid.T) {
			c.check("after step")
		},
	}
	for name, fn := range faults {
		if name != "" {
			actions[name] = fn
		}
	}
	if c.budget == nil {
		// Without the budget, the action set (and so what a kept failfile
		// replays) is what it was before the budget existed.
		delete(actions, "configBudget")
	}
	return actions
}

// actStaticCron creates a static role that rotates on a cron schedule.
func (c *cModel) actStaticCron(name, schedule string) {
	c.tick()
	data := c.staticData()
	delete(data, "rotation_period")
	data["rotation_schedule"] = schedule
	before, _ := getStaticRole(context.Background(), c.st.inner, name)
	err := outcome(c.do(logical.CreateOperation, "static-roles/"+name, data))
	// Writing the schedule a role already has does not move its first time.
	if err == nil && (before == nil || before.RotationSchedule != schedule) {
		c.cronSetAt[name] = c.clock.Now()
	}
	c.logStep("static role create %s on cron %q: %s", name, schedule, short(err))
}

// actConfigSchedule sets the admin key's schedule ("off", a period or a
// cron), with an old_key_retention shorter than the period.
func (c *cModel) actConfigSchedule(s string) {
	c.tick()
	data := map[string]interface{}{"old_key_retention": "1h", "rotation_period": 0, "rotation_schedule": ""}
	switch {
	case s == "off":
	case strings.Contains(s, " "):
		data["rotation_schedule"] = s
	default:
		data["rotation_period"] = s
	}
	err := outcome(c.do(logical.UpdateOperation, "config/"+mEnv, data))
	c.logStep("config schedule %s: %s", s, short(err))
}

// round runs the picked actors at once and checks the world after them.
func (c *cModel) round(t *rapid.T, picked []string) {
	c.tick()
	s := newSched()
	c.cur = s
	completed := false
	defer func() {
		if !completed {
			s.abort()
		}
		c.cur = nil
		c.roundFaults = false
	}()
	if len(picked) == 1 && picked[0] == "pass" && c.budget != nil {
		// t2 asks a healthy pass run alone to rotate what is due: with the
		// budget on, it waits for its slots (the virtual clock moves to
		// them) rather than give up at its deadline, as "healthy" means.
		c.patient = true
		defer func() { c.patient = false }()
	}
	oldB := c.b
	var newB *heronBackend
	results := make([]string, len(picked))
	var after []func()

	// What each actor does is drawn before any starts (rapid draws only on
	// this goroutine).
	for i, kind := range picked {
		i, kind := i, kind
		label := fmt.Sprintf("%s#%d", kind, i)
		run := func(fn func(ctx context.Context) error) {
			s.spawn(label, func(ctx context.Context) {
				err := fn(ctx)
				if c.budgetRateLimited(err) {
					mStat("r: concurrent actors that failed rate limited")
				}
				results[i] = short(err)
			})
		}
		switch kind {
		case "issue":
			var resp *logical.Response
			run(func(ctx context.Context) error {
				var err error
				ctx2, cancel := context.WithTimeout(ctx, mReqDeadline)
				defer cancel()
				ctx2 = c.actorDeadline(ctx2)
				resp, err = oldB.HandleRequest(ctx2, &logical.Request{Operation: logical.ReadOperation, Path: "creds/app",
					Storage: &gateStorage{inner: c.st, s: s}, DisplayName: "token-model", Data: map[string]interface{}{}})
				return outcome(resp, err)
			})
			after = append(after, func() { c.registerLease(resp) })
		case "revoke":
			live := c.liveLeases()
			if len(live) == 0 {
				results[i] = "skipped (no live lease)"
				continue
			}
			l := rapid.SampledFrom(live).Draw(t, "lease")
			if l.state != leaseLive {
				results[i] = "skipped (lease already taken by this round)"
				continue
			}
			c.decide(l, false)
			l.attempts++
			l.state = leaseRevoking
			var err error
			before := c.st.injectedCount()
			run(func(ctx context.Context) error {
				err = c.req(ctx, oldB, &logical.Request{Operation: logical.RevokeOperation, Path: "creds/" + l.role, Secret: l.secret})
				return err
			})
			after = append(after, func() {
				if err == nil {
					l.state = leaseDone
				}
				if err != nil && l.decision == decRevoke && c.st.injectedCount() > before {
					// The documented limit sendRevoke names ("Decided once"
					// in the README): a failed attempt whose decision storage
					// refused too. Counted for any storage fault of the
					// round, which may have been another actor's.
					l.decision = decEither
				}
			})
			results[i] = l.String()
		case "staticRead", "staticRotate":
			roles, _ := listStaticRoles(context.Background(), c.st.inner)
			if len(roles) == 0 {
				results[i] = "skipped (no static role)"
				continue
			}
			var names []string
			for _, r := range roles {
				names = append(names, r.Name)
			}
			name := rapid.SampledFrom(names).Draw(t, "static")
			c.static(name).rotAttempts++
			if kind == "staticRead" {
				run(func(ctx context.Context) error {
					return c.req(ctx, oldB, &logical.Request{Operation: logical.ReadOperation, Path: "static-creds/" + name})
				})
			} else {
				run(func(ctx context.Context) error {
					return c.req(ctx, oldB, &logical.Request{Operation: logical.UpdateOperation, Path: "static-roles/" + name + "/rotate"})
				})
			}
		case "configRotate":
			run(func(ctx context.Context) error {
				return c.req(ctx, oldB, &logical.Request{Operation: logical.UpdateOperation, Path: "config/" + mEnv + "/rotate"})
			})
		case "configWrite":
			data := map[string]interface{}{"max_retries": rapid.IntRange(0, 3).Draw(t, "max_retries")}
			if c.budget != nil {
				// A budget change, up or down, while other actors spend
				// the budget (model_budget_test.go, "A budget lowered while
				// others spend it").
				data["rate_limit_per_minute"] = rapid.IntRange(mBudgetMin, mBudgetMax).Draw(t, "rate_limit_per_minute")
			}
			run(func(ctx context.Context) error {
				return c.req(ctx, oldB, &logical.Request{Operation: logical.UpdateOperation, Path: "config/" + mEnv, Data: data})
			})
		case "pass", "failover":
			b := oldB
			if kind == "failover" {
				if newB != nil {
					results[i] = "skipped (one failover per round)"
					continue
				}
				newB = c.newInstance()
				b = newB
			}
			for _, r := range c.snapshot().statics {
				if due := r.rotationSchedule().next(); !due.IsZero() && !c.clock.Now().Before(due) {
					c.static(r.Name).rotAttempts++
				}
			}
			run(func(ctx context.Context) error { return c.pass(ctx, b) })
		case "tidy":
			run(func(ctx context.Context) error {
				return c.req(ctx, oldB, &logical.Request{Operation: logical.UpdateOperation, Path: "tidy"})
			})
		}
	}
	var due map[string]time.Time
	if len(picked) == 1 && picked[0] == "pass" {
		due = c.dueTargets()
	}
	// t2 judges a pass run alone with Heron and storage healthy: no fault
	// strikes inside that round.
	c.roundFaults = c.gateFaults && due == nil
	started := time.Now()
	s.run(t, func(a *schedActor) {
		c.atGate(a)
		c.gateFault(t, a)
	})
	completed = true
	for _, f := range after {
		f()
	}
	if newB != nil {
		// The old instance finished its requests; Vault cleans it up and the
		// new one serves from now on.
		oldB.Cleanup(context.Background())
		c.b = newB
	}
	if os.Getenv("HERON_MODEL_TRACE") != "" {
		fmt.Fprintf(os.Stderr, "round %v: %s, %d gates\n", picked, time.Since(started).Round(time.Millisecond), len(s.trace))
	}
	for i := range picked {
		c.logStep("  actor %s#%d: %s", picked[i], i, results[i])
	}
	c.logStep("round %v (%s): %d gates: %s", picked, time.Since(started).Round(time.Millisecond), len(s.trace), strings.Join(s.trace, " | "))
	if c.budget != nil {
		if n := c.storedBudget(); n > 0 {
			c.budget.perMinute = n
		}
	}
	c.observe()
	if due != nil {
		c.checkFired(due)
	}
}

// actorDeadline puts the actor's deadline on the virtual clock into ctx
// (model_budget_test.go, "Deadlines"), unless the round is patient.
func (c *cModel) actorDeadline(ctx context.Context) context.Context {
	if c.patient {
		return ctx
	}
	return c.withVirtualDeadline(ctx, mReqDeadline)
}

// registerLease is Vault registering the lease an issue actor got back.
func (c *cModel) registerLease(resp *logical.Response) {
	if resp == nil || resp.Secret == nil || resp.IsError() {
		return
	}
	now := c.clock.Now()
	secret := resp.Secret
	secret.IssueTime = now
	secret.TTL = c.vaultTTL(secret, now)
	keyID, _ := resp.Data["key_id"].(string)
	keyName, _ := resp.Data["key_name"].(string)
	c.leases = append(c.leases, &mLease{n: len(c.leases), role: "app", keyID: keyID, keyName: keyName, secret: secret, end: now.Add(secret.TTL)})
}

// atGate runs while every other actor is parked, done or waiting on a lock:
// the world is frozen, so t1 and t3 are checked exactly where a decision
// lands.
func (c *cModel) atGate(a *schedActor) {
	c.observe()
	name, ok := strings.CutPrefix(a.label, "heron create ")
	if !ok || !c.invariants["t1"] || !(strings.HasPrefix(a.name, "pass#") || strings.HasPrefix(a.name, "failover#")) {
		return
	}
	now := c.clock.Now()
	ctx := context.Background()
	if strings.HasPrefix(name, "vault-admin-") {
		cfg, _ := getConfig(ctx, c.st.inner, mEnv)
		if cfg == nil {
			return
		}
		due := cfg.rotationSchedule().next()
		if due.IsZero() || now.Before(due) {
			c.fail("t1", "scheduled admin rotation's key created before the config is due", "the pass (%s) creates admin key %q at %s, but the config as stored is due at %s (last_rotated %s, key set %s, period %s, schedule %q)",
				a.name, name, now.Format(time.RFC3339), fmtTime(due), fmtTime(cfg.LastRotated), fmtTime(cfg.KeySetAt), cfg.RotationPeriod, cfg.RotationSchedule)
		}
		return
	}
	rest, ok := strings.CutPrefix(name, "vault-static-")
	if !ok {
		return
	}
	for _, r := range c.snapshot().statics {
		if !strings.HasPrefix(rest, r.Name+"-") {
			continue
		}
		k, inHeron := c.srv.Key(r.KeyID)
		if r.KeyID == "" || !inHeron || k.Deleted || !k.IsActive {
			return // replacing a key that is gone: not a scheduled rotation
		}
		due := r.rotationSchedule().next()
		if r.RotationSchedule != "" {
			if set, ok := c.cronSetAt[r.Name]; ok {
				from := r.KeySetAt
				if set.After(from) {
					from = set
				}
				if sch, err := rotation.DefaultScheduler.Parse(r.RotationSchedule); err == nil {
					if mine := sch.Next(from.UTC()); mine.After(due) {
						due = mine
					}
				}
			}
		}
		if due.IsZero() || now.Before(due) {
			if os.Getenv("HERON_MODEL_TRACE") != "" {
				fmt.Fprintf(os.Stderr, "T1 static: %s at %s due %s engine-due %s role %+v trace %v\n", name, now, due, r.rotationSchedule().next(), r, c.cur.trace)
			}
			c.fail("t1", "scheduled static rotation's key created before the role is due", "the pass (%s) creates key %q for static role %q at %s, but the role is due at %s (key set %s, period %s, schedule %q)",
				a.name, name, r.Name, now.Format(time.RFC3339), fmtTime(due), fmtTime(r.KeySetAt), r.RotationPeriod, r.RotationSchedule)
		}
		return
	}
}

// mGateFaultKinds are what may strike a Heron call at its gate: the
// between-round faults' statuses and drops (mFaultModes) and a 429 with
// Retry-After (front429).
var mGateFaultKinds = func() []string {
	var out []string
	for _, m := range mFaultModes {
		out = append(out, m.String())
	}
	return append(out, "429")
}()

// mGateFaultOdds: at a gate where a fault may strike, rapid draws from
// 0..mGateFaultOdds and the operation fails on mGateFaultOdds only (rapid's
// draws lean to both ends of a range: about one gate in 23, rather than one
// in 32; shrinking leads towards no fault).
const mGateFaultOdds = 31

// gateFault is "Faults inside a round": with the world frozen at a's gate,
// rapid may decide that the operation a is about to make fails, as an
// armed fault between rounds would make it fail (the same mechanisms: a
// storage write refused or committed-then-failed, modelStorage; a Heron
// 5xx, lost answer or 429, herontest's FailNext and front429), armed for
// that one operation and taken back once it returned if it did not use it
// up (a call the client's own limiter refused never reached Heron).
func (c *cModel) gateFault(t *rapid.T, a *schedActor) {
	if !c.roundFaults {
		return
	}
	label := a.label
	var op, key, method, path string
	switch {
	case strings.HasPrefix(label, "storage put "):
		op, key = "put", strings.TrimPrefix(label, "storage put ")
	case strings.HasPrefix(label, "storage delete "):
		op, key = "delete", strings.TrimPrefix(label, "storage delete ")
	case strings.HasPrefix(label, "heron create "):
		method, path = "POST", "/api/credentials/keys"
	case label == "heron list":
		method, path = "GET", "/api/credentials/keys"
	case strings.HasPrefix(label, "heron deactivate "), strings.HasPrefix(label, "heron activate "):
		method, path = "PUT", "/api/credentials/keys"
	case strings.HasPrefix(label, "heron delete "):
		method, path = "DELETE", "/api/credentials/keys"
	case label == "heron hello":
		method, path = "GET", "/api/hello_world"
	default:
		return // a read of storage: reads never fail (modelStorage)
	}
	if rapid.IntRange(0, mGateFaultOdds).Draw(t, "gate fault") != mGateFaultOdds {
		return
	}
	var what string
	if op != "" {
		mode := rapid.SampledFrom([]storageFaultMode{storageFailBefore, storageFailAfter}).Draw(t, "gate storage fault")
		c.cur.setAfter(a, c.st.armOnce(op, key, mode))
		what = mode.String()
	} else {
		what = rapid.SampledFrom(mGateFaultKinds).Draw(t, "gate heron fault")
		if what == "429" {
			c.cur.setAfter(a, c.f429.armOnce(method))
		} else {
			mode, err := herontest.ParseFaultMode(what)
			if err != nil {
				panic(err)
			}
			c.srv.FailNext(method, path, 1, mode)
			c.cur.setAfter(a, func() { c.srv.CancelFailNext(method, path, mode) })
		}
	}
	mStat("gate faults: " + strings.SplitN(label, " ", 3)[0] + " " + strings.SplitN(label, " ", 3)[1] + " " + what)
	c.cur.trace[len(c.cur.trace)-1] += " [fault: " + what + "]"
}

func fmtTime(t time.Time) string {
	if t.IsZero() {
		return "never"
	}
	return t.UTC().Format(time.RFC3339)
}

// dueTargets: what is due now (admin key and static roles), before a pass.
func (c *cModel) dueTargets() map[string]time.Time {
	now := c.clock.Now()
	out := map[string]time.Time{}
	w := c.snapshot()
	if !c.healthy(w) {
		return nil
	}
	if due := w.cfg.rotationSchedule().next(); !due.IsZero() && !now.Before(due) {
		out["config"] = due
	}
	for _, r := range w.statics {
		if due := r.rotationSchedule().next(); !due.IsZero() && !now.Before(due) {
			out["static-roles/"+r.Name] = due
		}
	}
	return out
}

// checkFired is t2: a healthy pass run alone rotated every target that was due.
func (c *cModel) checkFired(before map[string]time.Time) {
	if !c.invariants["t2"] {
		return
	}
	now := c.clock.Now()
	w := c.snapshot()
	names := make([]string, 0, len(before))
	for n := range before {
		names = append(names, n)
	}
	sort.Strings(names)
	for _, n := range names {
		var due time.Time
		if n == "config" {
			if w.cfg == nil {
				continue
			}
			due = w.cfg.rotationSchedule().next()
		} else if r := w.statics[strings.TrimPrefix(n, "static-roles/")]; r != nil {
			due = r.rotationSchedule().next()
		} else {
			continue
		}
		if !due.IsZero() && !now.Before(due) {
			c.fail("t2", "a due rotation did not fire at a healthy pass", "%s was due at %s and a pass ran alone at %s with Heron and storage healthy, but it is still due (at %s)",
				n, fmtTime(before[n]), now.Format(time.RFC3339), fmtTime(due))
		}
	}
}

// observe records, for t3, which keys are deactivated since when, which
// were ever the current admin key, and checks that a rotated-out admin key
// is not deleted before old_key_retention from its deactivation.
func (c *cModel) observe() {
	now := c.clock.Now()
	cfg, _ := getConfig(context.Background(), c.st.inner, mEnv)
	if cfg != nil {
		if cfg.AdminKeyID != "" {
			c.everCurrent[cfg.AdminKeyID] = true
		}
		if k, ok := c.srv.KeyByToken(cfg.AdminAPIKey); ok {
			c.everCurrent[k.ID] = true
		}
	}
	for _, k := range c.srv.Keys() {
		if !k.Deleted && !k.IsActive {
			if _, seen := c.firstInactive[k.ID]; !seen {
				c.firstInactive[k.ID] = now
			}
			continue
		}
		if !k.Deleted || !c.everCurrent[k.ID] || !c.invariants["t3"] || cfg == nil {
			continue
		}
		if cfg.AdminKeyID == k.ID || cfg.AdminAPIKey == k.Token {
			continue // the current admin key deleted: invariant e reports it
		}
		since, seen := c.firstInactive[k.ID]
		switch {
		case !seen:
			c.fail("t3", "rotated-out admin key deleted without being deactivated first", "admin key %s (%q) was deleted at %s without ever being seen deactivated", k.ID, k.Name, now.Format(time.RFC3339))
		case now.Before(since.Add(cfg.OldKeyRetention)):
			c.fail("t3", "rotated-out admin key deleted before old_key_retention from its deactivation", "admin key %s (%q) was deactivated at %s and deleted at %s, before old_key_retention %s had passed",
				k.ID, k.Name, since.Format(time.RFC3339), now.Format(time.RFC3339), cfg.OldKeyRetention)
		}
		delete(c.everCurrent, k.ID) // reported once
	}
}

// finish settles as TestModel does, on the instance serving now.
func (c *cModel) finish() {
	c.cur = nil
	c.model.finish()
}
