package heron

import (
	"context"
	"fmt"
	"os"
	"sort"
	"strings"
	"time"

	"github.com/heron-vault/vault-plugin-secrets-heron/herontest"
)

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
	m.checkBudget()
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
	// In budget mode the operator's and Vault's requests wait for their
	// slot however far (the virtual clock moves there), so that a small
	// budget does not refuse what settling needs (model_budget_test.go).
	m.patient = m.budget != nil
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
