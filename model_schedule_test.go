package heron

// TestModel's static roles rotate on a cron rotation_schedule with a
// rotation_window (UTC, on the model's virtual clock), and invariant s5
// checks what the engine's periodic pass does with them (see model_test.go):
//
//	s5  a scheduled rotation fires at its time, once, and never outside its
//	    window: the pass rotates a static role (whose key is live and who
//	    owes no retry) only at a scheduled time s with from < s <= now <=
//	    s + rotation_window (from: when its key or schedule was set, as
//	    stored), never twice for one s; and a pass that runs with Heron and
//	    storage healthy rotates every role inside such a window.
//
// The model computes the window from the stored schedule with the sdk's
// cron parser, not from the engine's own next/nextAt.

import (
	"time"

	"github.com/hashicorp/vault/sdk/logical"
	"github.com/hashicorp/vault/sdk/rotation"
)

const (
	// Every half hour, each time open for ten minutes: the model's advance
	// steps (30s .. 4h) land inside some windows and past others.
	mStaticSchedule = "*/30 * * * *"
	mStaticWindow   = 10 * time.Minute
)

// scheduledStaticData is staticData on mStaticSchedule and mStaticWindow
// instead of a rotation_period.
func (m *model) scheduledStaticData() map[string]interface{} {
	data := m.staticData()
	delete(data, "rotation_period")
	data["rotation_schedule"] = mStaticSchedule
	data["rotation_window"] = int(mStaticWindow.Seconds())
	return data
}

// actStaticCreateOnSchedule is actStaticCreate on the cron schedule.
func (m *model) actStaticCreateOnSchedule(name string) {
	m.tick()
	err := outcome(m.do(logical.CreateOperation, "static-roles/"+name, m.scheduledStaticData()))
	m.logStep("static role create %s on %q, window %s: %s", name, mStaticSchedule, mStaticWindow, short(err))
}

// mWindowAt is the scheduled time whose window holds now for a role as
// stored (zero when none does): the latest cron time s <= now with
// s > from and now <= s + window. A period has no window: its time is
// from + period, late or not.
func mWindowAt(r *staticRole, now time.Time) time.Time {
	from := r.KeySetAt
	if r.ScheduleSetAt.After(from) {
		from = r.ScheduleSetAt
	}
	if r.RotationSchedule == "" {
		if r.RotationPeriod <= 0 || now.Before(r.KeySetAt.Add(r.RotationPeriod)) {
			return time.Time{}
		}
		return r.KeySetAt.Add(r.RotationPeriod)
	}
	sched, err := rotation.DefaultScheduler.Parse(r.RotationSchedule)
	if err != nil || from.IsZero() {
		return time.Time{}
	}
	if r.RotationWindow <= 0 {
		// No window: the first time after from, however late.
		if first := sched.Next(from.UTC()); !first.After(now) {
			return first
		}
		return time.Time{}
	}
	var at time.Time
	for s := sched.Next(now.Add(-r.RotationWindow).Add(-time.Nanosecond).UTC()); !s.After(now); s = sched.Next(s) {
		if s.After(from) {
			at = s
		}
	}
	return at
}

// mPassBefore is what s5 needs of one static role before a pass.
type mPassBefore struct {
	keyID    string
	at       time.Time // the scheduled time whose window holds now (zero: none)
	retry    bool      // the role owes a rotation (RetryRotation)
	keySetAt time.Time
	live     bool // its current key is active in Heron and tracked active
	// missed: a scheduled time came since the key or schedule was set, but
	// its window closed before now.
	missed bool
	// role is the role as it was before the pass.
	role *staticRole
}

// beforePass notes, before a pass at now, which static roles are due (and
// counts the attempt for s2).
func (m *model) beforePass(now time.Time) (map[string]mPassBefore, bool) {
	w := m.snapshot()
	out := map[string]mPassBefore{}
	for _, r := range w.statics {
		k, inHeron := m.srv.Key(r.KeyID)
		rec := w.tracked[r.KeyID]
		p := mPassBefore{
			keyID: r.KeyID, keySetAt: r.KeySetAt, at: mWindowAt(r, now), retry: r.RetryRotation, role: r,
			live: r.KeyID != "" && inHeron && !k.Deleted && k.IsActive && rec != nil && rec.State == keyStateActive && !rec.Quarantined,
		}
		if unwindowed := *r; p.at.IsZero() && r.RotationWindow > 0 {
			unwindowed.RotationWindow = 0
			p.missed = !mWindowAt(&unwindowed, now).IsZero()
		}
		if r.DisableAutomatedRotation || r.RotationManaged {
			p.at = time.Time{}
		}
		if !p.at.IsZero() || p.retry {
			m.static(r.Name).rotAttempts++
		}
		out[r.Name] = p
	}
	return out, m.healthy(w)
}

// checkScheduledRotations is s5, after a pass at now.
func (m *model) checkScheduledRotations(before map[string]mPassBefore, healthy bool, now time.Time) {
	m.t.Helper()
	if !m.invariants["s5"] {
		return
	}
	after := m.snapshot().statics
	for name, p := range before {
		r := after[name]
		if r == nil || !p.live || p.retry {
			continue // deleted meanwhile, a key being replaced, or a retry owed
		}
		rotated := r.KeyID != p.keyID
		ms := m.static(name)
		if rotated && r.KeySetAt.After(now) && !p.role.DisableAutomatedRotation && !p.role.RotationManaged {
			// With the budget on, the pass's waits for its slots move the
			// virtual clock: the rotation is judged at its own time.
			p.at = mWindowAt(p.role, r.KeySetAt)
		}
		switch {
		case rotated && p.at.IsZero():
			m.fail("s5", "the pass rotated a static role outside its schedule's window", "static role %q was rotated by the pass at %s (key %s -> %s), but no scheduled time of %q has its window (%s) open then (key set %s, schedule set %s)",
				name, fmtTime(now), p.keyID, r.KeyID, r.RotationSchedule, r.RotationWindow, fmtTime(p.keySetAt), fmtTime(r.ScheduleSetAt))
		case rotated && p.at.Equal(ms.lastFired):
			m.fail("s5", "the pass rotated a static role twice for one scheduled time", "static role %q was rotated by the pass at %s for its scheduled time %s, which a rotation already served", name, fmtTime(now), fmtTime(p.at))
		case rotated:
			ms.lastFired = p.at
			mStat("s5: a scheduled rotation fired within its window")
		case !p.at.IsZero() && healthy && m.clock.Now().After(p.at.Add(r.RotationWindow)):
			// With the budget on, the pass's waits for its slots moved the
			// virtual clock past the window's end: no rotation is owed then.
			mStat("s5: due, but the pass's waits for budget outlasted the window")
		case !p.at.IsZero() && healthy:
			m.fail("s5", "a static role inside its rotation window was not rotated by a healthy pass", "static role %q is inside the window of its scheduled time %s (until %s) at %s and the pass ran with Heron and storage healthy, but its key %s was not rotated",
				name, fmtTime(p.at), fmtTime(p.at.Add(r.RotationWindow)), fmtTime(now), p.keyID)
		case !p.at.IsZero():
			mStat("s5: due but the pass ran with a fault armed")
		case p.missed:
			mStat("s5: a window passed: not rotated until the next scheduled time")
		}
	}
}
