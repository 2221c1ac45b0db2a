package heron

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/hashicorp/vault/sdk/logical"
	"pgregory.net/rapid"

	"github.com/heron-vault/vault-plugin-secrets-heron/herontest"
)

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
	"budget":         {"configBudget", "configBudgetLower"},
}

// mOptInGroups are left out of "all": rapid picks an action by its index
// among the sorted names, so a new action would change what every kept
// failfile of TestModel/all replays. TestModel runs them in a subtest of
// their own (all of "all" plus these), with its own failfiles.
var mOptInGroups = map[string]bool{"quarantine": true, "budget": true}

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
		return nil, fmt.Errorf("HERON_MODEL_ACTIONS: unknown action or group %q (groups: core, config, roles, customer, heron-faults, storage-faults, static, quarantine, budget; actions: %s)", name, strings.Join(mAllActions(), ", "))
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

var mAllInvariants = []string{"a", "b", "c", "d", "e", "f", "s1", "s2", "s3", "s4", "s5", "q", "r", "final"}

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
	err := m.startRevoke(l, false)
	m.logStep("revoke-async %s (%s) attempt 1: %s", l, l.decision, short(err))
}

// startRevoke is Vault's first attempt at revoking l (an expiry when
// expired): done, or left for Vault's retries.
func (m *model) startRevoke(l *mLease, expired bool) error {
	m.decide(l, expired)
	l.attempts = 0
	err := m.sendRevoke(l)
	if err == nil {
		l.state = leaseDone
	} else {
		l.state = leaseRevoking
	}
	return err
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
		err := m.startRevoke(l, true)
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
	if k, ok := data["admin_api_key"].(string); ok && m.budget != nil {
		m.budget.setByHand(k)
	}
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
	for name, fn := range m.rapidBudgetActions() {
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
