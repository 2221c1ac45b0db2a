package heronapi

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// Limiter spends one Heron environment's request budget. Heron counts over a
// sliding minute, and the promise is that in every sliding 60-second window the
// requests granted number at most the budget, across 429 pauses, Retry-After,
// slowdowns on a low X-RateLimit-Remaining and budget changes. Two rules make
// that hold, each checked at the moment a request is let through:
//   - spacing: requests are spread evenly at window/budget apart. At budgets
//     above 1,199 a minute (beyond Heron's own 500, so only where the
//     "budget" is really "no limit", as in the benchmarks) up to a tenth of a
//     second's worth may go together: the burst-th most recent grant must be
//     burst x window/budget old. A grant every 600 us would otherwise wait on
//     a timer each time, and Go's timers sleep in whole milliseconds on an
//     idle process: half of a 100,000/min budget could never be spent. After
//     a pause the spacing is strict again for burst intervals, so nothing
//     queued through a pause goes at once when it ends;
//   - the record: the budget-th most recent grant is at least a window old.
//     The record keeps the grant times of the last window, so a lowered budget
//     counts the requests already sent under the old one.
//
// Nothing is reserved ahead of time: waiters queue in order and only the head
// waits for a time, which it computes afresh whenever it wakes. A token bucket
// with reservations made before a pause lets every reservation that fell
// inside the pause go at once when it ends (85 requests in one minute at a
// budget of 60); here a pause only moves the head's next grant later.
//
// The pause is set by 429s and by a low X-RateLimit-Remaining, because the
// budget is shared with the customer's own traffic that we cannot see.
type Limiter struct {
	clock clock

	mu        sync.Mutex
	perMinute int
	interval  time.Duration // window / perMinute: the spacing of grants
	burst     int           // grants that may go within burst x interval
	epoch     time.Time     // sent holds offsets from it (8 bytes a grant)
	sent      []time.Duration
	// sentIDs name the grants of sent (same order), so that a record taken
	// into another limiter twice counts each grant once (Registry).
	sentIDs     []uint64
	pausedUntil time.Time
	queue       []*limiterWaiter
	// changed is closed (and replaced) when the budget changes, so that a head
	// sleeping until a slot computed under the old budget computes it again.
	changed chan struct{}
	// onGrant, when set (tests), sees every grant time, under mu.
	onGrant func(time.Time)
	// joint, when set, are the limiters this one stands for together
	// (JointLimiter): its methods act on each of them instead.
	joint []*Limiter
}

// JointLimiter is a limiter for requests that count in every one of ls:
// Wait waits for a slot in each in turn (so each records the request), and
// a pause or an observation applies to all. A config check of a new admin
// key spends both the budget the stored config spends and the new one,
// which name one Heron environment while the config moves between them.
func JointLimiter(ls ...*Limiter) *Limiter {
	var parts []*Limiter
	for _, l := range ls {
		if l != nil && !slices.Contains(parts, l) {
			parts = append(parts, l)
		}
	}
	if len(parts) == 1 {
		return parts[0]
	}
	return &Limiter{joint: parts}
}

// grantIDs numbers every grant of the process (see Limiter.sentIDs).
var grantIDs atomic.Uint64

// limiterWindow is Heron's counting window.
const limiterWindow = time.Minute

type limiterWaiter struct {
	turn chan struct{} // closed when the waiter reaches the head of the queue
}

// clock is the limiter's time: the wall clock in production, a virtual one in
// tests, which must check the sliding window over many minutes.
type clock interface {
	now() time.Time
	// sleep blocks until until (never when zero), wake is closed or ctx is
	// done; only the last returns an error (ctx's).
	sleep(ctx context.Context, until time.Time, wake <-chan struct{}) error
}

// deadliner is a clock on which a ctx's deadline reads differently from the
// wall clock's (see Clock.Deadline); the limiter falls back to ctx.Deadline.
type deadliner interface {
	deadline(ctx context.Context) (time.Time, bool)
}

// Clock is a Limiter's time, for tests that run the engine on a virtual clock
// (the engine's model-based test runs the real client against an emulator
// and checks the budget over virtual minutes). Production uses NewLimiter and
// the wall clock.
type Clock interface {
	Now() time.Time
	// Sleep blocks until until (never when zero), wake is closed or ctx is
	// done; only the last returns an error (ctx's). A virtual clock must
	// release a sleeper once its time has come, or the waiter hangs.
	Sleep(ctx context.Context, until time.Time, wake <-chan struct{}) error
	// Deadline is ctx's deadline on this clock, if it has one: Wait refuses
	// a slot that comes after it (ErrRateLimited). A context's deadline is
	// wall-clock time, which a virtual clock cannot compare with its own
	// (a virtual 2030 against a real 2026 deadline would refuse every slot):
	// the test's clock says what the deadline is in its time.
	Deadline(ctx context.Context) (time.Time, bool)
}

// NewLimiterWithClock is NewLimiter on the clock c (tests that run the
// engine on a virtual clock). The rules are NewLimiter's.
func NewLimiterWithClock(perMinute int, c Clock) *Limiter {
	return newLimiter(perMinute, exportedClock{c})
}

// exportedClock adapts a Clock to the limiter's clock.
type exportedClock struct{ c Clock }

func (e exportedClock) now() time.Time { return e.c.Now() }

func (e exportedClock) sleep(ctx context.Context, until time.Time, wake <-chan struct{}) error {
	return e.c.Sleep(ctx, until, wake)
}

func (e exportedClock) deadline(ctx context.Context) (time.Time, bool) { return e.c.Deadline(ctx) }

type wallClock struct{}

func (wallClock) now() time.Time { return time.Now() }

func (wallClock) sleep(ctx context.Context, until time.Time, wake <-chan struct{}) error {
	var fire <-chan time.Time
	if !until.IsZero() {
		t := time.NewTimer(time.Until(until))
		defer t.Stop()
		fire = t.C
	}
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-fire:
	case <-wake:
	}
	return nil
}

// limiterBurstSpan is the span of budget that may go at once (see Limiter).
const limiterBurstSpan = limiterWindow / 600

// maxObservedPause bounds a pause derived from X-RateLimit-Reset: Heron's window is
// one minute, so anything longer is a broken header, not a reason to stall the engine.
const maxObservedPause = limiterWindow

// maxSlotHeadroom is the most of a caller's remaining time Wait keeps for the
// request itself and what the caller does with its answer.
const maxSlotHeadroom = 2 * time.Second

// NewLimiter returns a limiter for perMinute requests per minute. A perMinute below 1
// is treated as 1: an unset budget must fail slow, never spend Heron's whole budget.
func NewLimiter(perMinute int) *Limiter {
	return newLimiter(perMinute, wallClock{})
}

func newLimiter(perMinute int, c clock) *Limiter {
	l := &Limiter{clock: c, epoch: c.now(), changed: make(chan struct{})}
	l.setLocked(perMinute)
	return l
}

func (l *Limiter) setLocked(n int) {
	l.perMinute = max(n, 1)
	l.interval = limiterWindow / time.Duration(l.perMinute)
	l.burst = max(1, int(limiterBurstSpan/l.interval))
}

// SetPerMinute changes the budget in place, so clients already holding this limiter
// pick up a config change without being rebuilt. It grants nothing by itself: a
// raised budget lets requests go sooner, spaced at the new rate; a lowered one
// counts what was sent in the last minute under the old one.
func (l *Limiter) SetPerMinute(n int) {
	if l.joint != nil {
		return // each part keeps the rate of its own budget
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	l.setLocked(n)
	close(l.changed)
	l.changed = make(chan struct{})
}

// PerMinute is the budget the limiter runs at.
func (l *Limiter) PerMinute() int {
	if l.joint != nil {
		low := 0
		for _, p := range l.joint {
			if n := p.PerMinute(); low == 0 || n < low {
				low = n
			}
		}
		return low
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.perMinute
}

// nextLocked is the earliest time the next request may go, as of now.
func (l *Limiter) nextLocked(now time.Time) time.Time {
	// Grants older than a window count in no window that holds now or later.
	cut := 0
	for cut < len(l.sent) && !l.epoch.Add(l.sent[cut]).After(now.Add(-limiterWindow)) {
		cut++
	}
	if cut > 0 {
		l.sent = l.sent[cut:]
		l.sentIDs = l.sentIDs[cut:]
	}
	t := now
	if l.pausedUntil.After(t) {
		t = l.pausedUntil
	}
	if n := len(l.sent); n > 0 {
		if n >= l.burst {
			if next := l.epoch.Add(l.sent[n-l.burst] + time.Duration(l.burst)*l.interval); next.After(t) {
				t = next
			}
		}
		// Just after a pause, one at a time (a later t is out of this rule).
		if t.Before(l.pausedUntil.Add(time.Duration(l.burst) * l.interval)) {
			if next := l.epoch.Add(l.sent[n-1] + l.interval); next.After(t) {
				t = next
			}
		}
		if n >= l.perMinute {
			// The window (t-1m, t] must hold at most perMinute-1 earlier grants.
			if next := l.epoch.Add(l.sent[n-l.perMinute] + limiterWindow); next.After(t) {
				t = next
			}
		}
	}
	return t
}

// grantLocked records a grant at now and hands the head of the queue on.
func (l *Limiter) grantLocked(w *limiterWaiter, now time.Time) {
	l.sent = append(l.sent, now.Sub(l.epoch))
	l.sentIDs = append(l.sentIDs, grantIDs.Add(1))
	if l.onGrant != nil {
		l.onGrant(now)
	}
	l.removeLocked(w)
}

func (l *Limiter) removeLocked(w *limiterWaiter) {
	i := slices.Index(l.queue, w)
	if i < 0 {
		return
	}
	l.queue = slices.Delete(l.queue, i, i+1)
	if i == 0 && len(l.queue) > 0 {
		close(l.queue[0].turn)
	}
}

// Wait blocks until a request may be sent. Callers are served in the order they
// came. It fails fast with an error wrapping ErrRateLimited when the slot would
// come after ctx's deadline (the caller can answer "rate limited" at once instead
// of timing out), and returns ctx.Err() when ctx is canceled.
func (l *Limiter) Wait(ctx context.Context) error {
	if l.joint != nil {
		for _, p := range l.joint {
			if err := p.Wait(ctx); err != nil {
				return err
			}
		}
		return nil
	}
	// A slot granted just before the deadline is wasted: the request would be
	// sent and its caller time out before it can record what happened. Keep a
	// little of the caller's time for that.
	//
	// limit is that deadline on the limiter's clock (zero: none). On the wall
	// clock it is also ctx's deadline from here on, so that waiters queued
	// behind the head wake when it passes. A virtual clock's limit is only
	// compared with the slot: it is no wall-clock time to set on ctx (its
	// waiters behind the head wake when the head is granted or gives up).
	var limit time.Time
	dl, ok := ctx.Deadline()
	d, virtual := l.clock.(deadliner)
	if virtual {
		dl, ok = d.deadline(ctx)
	}
	if ok {
		headroom := min(maxSlotHeadroom, dl.Sub(l.clock.now())/4)
		limit = dl.Add(-headroom)
		if !virtual {
			var cancel context.CancelFunc
			ctx, cancel = context.WithDeadline(ctx, limit)
			defer cancel()
		}
	}
	if err := ctx.Err(); err != nil {
		return l.waitErr(ctx, err)
	}
	w := &limiterWaiter{turn: make(chan struct{})}
	l.mu.Lock()
	l.queue = append(l.queue, w)
	if len(l.queue) == 1 {
		close(w.turn)
	}
	l.mu.Unlock()
	for {
		l.mu.Lock()
		now := l.clock.now()
		next := l.nextLocked(now)
		pos := slices.Index(l.queue, w)
		if pos == 0 && !next.After(now) {
			l.grantLocked(w, now)
			l.mu.Unlock()
			return nil
		}
		// The earliest this waiter could go: each one ahead of it takes a slot.
		earliest := next.Add(time.Duration(pos) * l.interval)
		if !limit.IsZero() && earliest.After(limit) {
			pausedUntil := l.pausedUntil
			l.removeLocked(w)
			l.mu.Unlock()
			if pausedUntil.After(limit) {
				return fmt.Errorf("heron: request budget paused for another %s, past the request deadline: %w",
					pausedUntil.Sub(now).Round(time.Millisecond), ErrRateLimited)
			}
			return fmt.Errorf("heron: no request slot before the deadline (next in %s): %w",
				earliest.Sub(now).Round(time.Millisecond), ErrRateLimited)
		}
		until, wake := time.Time{}, (<-chan struct{})(w.turn)
		if pos == 0 {
			// Woken early by a budget change; a pause only ever makes the
			// slot later, which the head finds when it wakes.
			until, wake = next, l.changed
		}
		l.mu.Unlock()
		if err := l.clock.sleep(ctx, until, wake); err != nil {
			l.mu.Lock()
			l.removeLocked(w)
			l.mu.Unlock()
			return l.waitErr(ctx, err)
		}
	}
}

func (l *Limiter) waitErr(ctx context.Context, err error) error {
	if errors.Is(err, context.Canceled) {
		return err
	}
	// The deadline passed while queued: still "no slot before the deadline".
	return fmt.Errorf("heron: no request slot before the deadline: %w: %w", ErrRateLimited, err)
}

// PauseFor holds every request through this limiter until now+d. It only ever
// extends a pause: a short Retry-After arriving after a long one must not cut it.
// A pause grants nothing when it ends: the next request is still spaced from the
// last one sent, and the record of the last minute still counts.
func (l *Limiter) PauseFor(d time.Duration) {
	if d <= 0 {
		return
	}
	if l.joint != nil {
		for _, p := range l.joint {
			p.PauseFor(d)
		}
		return
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	if until := l.clock.now().Add(d); until.After(l.pausedUntil) {
		l.pausedUntil = until
	}
}

// Observe slows down when Heron says little of the window's budget is left (the
// customer's own traffic may be spending it): it spreads the remaining requests
// evenly until the reset instead of spending them all now and then hitting 429s.
func (l *Limiter) Observe(h http.Header) {
	if l.joint != nil {
		for _, p := range l.joint {
			p.Observe(h)
		}
		return
	}
	rl, ok := parseRateLimit(h, l.clock.now())
	if !ok || !rl.low() {
		return
	}
	l.PauseFor(rl.untilReset / time.Duration(rl.remaining+1))
}

// normalizeBaseURL makes spellings of the same server ("HTTPS://Host/", "https://host")
// share one limiter.
func normalizeBaseURL(s string) string {
	s = strings.TrimSpace(s)
	u, err := url.Parse(s)
	if err != nil || u.Host == "" {
		return strings.TrimRight(s, "/")
	}
	u.Scheme = strings.ToLower(u.Scheme)
	u.Host = strings.ToLower(u.Host)
	switch u.Scheme {
	case "https":
		u.Host = strings.TrimSuffix(u.Host, ":443")
	case "http":
		u.Host = strings.TrimSuffix(u.Host, ":80")
	}
	u.Path = strings.TrimRight(u.Path, "/")
	u.RawPath = ""
	u.RawQuery, u.Fragment, u.User = "", "", nil
	return u.String()
}
