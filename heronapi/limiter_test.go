package heronapi

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

func (l *Limiter) pausedFor() time.Duration {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.pausedUntil.Sub(l.clock.now())
}

// pauseSet reports whether a pause was ever set (one that has ended counts).
func (l *Limiter) pauseSet() bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	return !l.pausedUntil.IsZero()
}

// countingClock is the wall clock, counting how often the limiter reads it
// and sleeps on it: "refused at once" is then "refused without sleeping",
// which does not depend on how fast the machine runs the test.
type countingClock struct {
	wallClock
	mu     sync.Mutex
	nows   int
	sleeps int
}

func (c *countingClock) now() time.Time {
	c.mu.Lock()
	c.nows++
	c.mu.Unlock()
	return time.Now()
}

func (c *countingClock) sleep(ctx context.Context, until time.Time, wake <-chan struct{}) error {
	c.mu.Lock()
	c.sleeps++
	c.mu.Unlock()
	return c.wallClock.sleep(ctx, until, wake)
}

func (c *countingClock) counts() (nows, sleeps int) {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.nows, c.sleeps
}

func TestLimiterSpacesRequests(t *testing.T) {
	t.Parallel()
	f := newFake(t, func(w http.ResponseWriter, r *http.Request, _ int) {
		writeJSON(w, 200, map[string]any{"hello": "x"})
	})
	c := newTestClient(t, f.URL(), func(c *Config) { c.Limiter = NewLimiter(600) })
	start := time.Now()
	var wg sync.WaitGroup
	for range 12 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			noErr(t, c.Hello(context.Background()))
		}()
	}
	wg.Wait()
	// Burst 1 at 10/s: the first goes at once, the other 11 are 100ms apart.
	if el := time.Since(start); el < time.Second {
		t.Fatalf("12 requests at 600/min took only %s", el)
	}
	// The k-th slot is granted no sooner than start+k*100ms, and a request
	// arrives no sooner than its slot, so the k-th arrival is no sooner than
	// that either: a bound that scheduling delays under load cannot break
	// (they only make arrivals later), unlike the gap between two arrivals.
	reqs := f.requests()
	for i := range reqs {
		if earliest := start.Add(time.Duration(i)*100*time.Millisecond - 5*time.Millisecond); reqs[i].At.Before(earliest) {
			t.Errorf("request %d arrived %s after the start, before its slot at %s", i, reqs[i].At.Sub(start), time.Duration(i)*100*time.Millisecond)
		}
	}
}

func TestLimiterWaitDeadline(t *testing.T) {
	t.Parallel()
	clk := &countingClock{}
	l := newLimiter(1, clk)
	noErr(t, l.Wait(context.Background())) // spends the only token for a minute

	// The next slot is a minute away, past the deadline: refused at once,
	// without sleeping toward the deadline.
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	_, slept := clk.counts()
	err := l.Wait(ctx)
	if !errors.Is(err, ErrRateLimited) {
		t.Fatalf("want ErrRateLimited, got %v", err)
	}
	if _, s := clk.counts(); s != slept {
		t.Errorf("refusal should be immediate, but the limiter slept %d times first", s-slept)
	}

	ctx, cancel2 := context.WithCancel(context.Background())
	cancel2()
	if err := l.Wait(ctx); !errors.Is(err, context.Canceled) || errors.Is(err, ErrRateLimited) {
		t.Fatalf("canceled ctx: want context.Canceled only, got %v", err)
	}

	// Canceled while queued for a token.
	ctx, cancel3 := context.WithCancel(context.Background())
	time.AfterFunc(20*time.Millisecond, cancel3)
	if err := l.Wait(ctx); !errors.Is(err, context.Canceled) {
		t.Fatalf("want context.Canceled, got %v", err)
	}
}

func TestLimiterPause(t *testing.T) {
	t.Parallel()
	l := NewLimiter(60000)
	l.PauseFor(time.Hour)
	l.PauseFor(time.Millisecond) // must not shorten
	if d := l.pausedFor(); d < 59*time.Minute {
		t.Fatalf("pause shortened to %s", d)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	if err := l.Wait(ctx); !errors.Is(err, ErrRateLimited) {
		t.Fatalf("paused past the deadline: want ErrRateLimited, got %v", err)
	}

	l2 := NewLimiter(60000)
	l2.PauseFor(150 * time.Millisecond)
	start := time.Now()
	noErr(t, l2.Wait(context.Background()))
	if el := time.Since(start); el < 140*time.Millisecond {
		t.Fatalf("pause not honoured: %s", el)
	}
	ctx, cancel = context.WithCancel(context.Background())
	l2.PauseFor(time.Hour)
	time.AfterFunc(20*time.Millisecond, cancel)
	if err := l2.Wait(ctx); !errors.Is(err, context.Canceled) {
		t.Fatalf("want context.Canceled during a pause, got %v", err)
	}
}

func TestLimiterObserve(t *testing.T) {
	t.Parallel()
	hdr := func(remaining, limit int, reset time.Time) http.Header {
		h := http.Header{}
		h.Set("X-RateLimit-Remaining", strconv.Itoa(remaining))
		h.Set("X-RateLimit-Limit", strconv.Itoa(limit))
		h.Set("X-RateLimit-Reset", strconv.FormatInt(reset.Unix(), 10))
		return h
	}
	now := time.Now()
	tests := []struct {
		name     string
		h        http.Header
		min, max time.Duration
	}{
		{"plenty left", hdr(400, 500, now.Add(30*time.Second)), 0, 0},
		{"10% left is still fine", hdr(50, 500, now.Add(30*time.Second)), 0, 0},
		{"low: spread the rest", hdr(9, 500, now.Add(11*time.Second)), 900 * time.Millisecond, 1100 * time.Millisecond},
		{"none left: wait for the reset", hdr(0, 500, now.Add(3*time.Second)), 1900 * time.Millisecond, 3 * time.Second},
		{"small limit, under 5", hdr(4, 20, now.Add(6*time.Second)), 900 * time.Millisecond, 1200 * time.Millisecond},
		{"reset in the past", hdr(0, 500, now.Add(-10*time.Second)), 0, 0},
		{"reset absurdly far", hdr(0, 500, now.Add(24*time.Hour)), 59 * time.Second, time.Minute},
		{"headers missing", http.Header{}, 0, 0},
		{"garbage", http.Header{"X-Ratelimit-Remaining": {"x"}}, 0, 0},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			l := NewLimiter(250)
			l.Observe(tt.h)
			d := l.pausedFor()
			if tt.max == 0 {
				if d > 0 {
					t.Fatalf("unexpected pause %s", d)
				}
				return
			}
			if d < tt.min || d > tt.max {
				t.Fatalf("pause %s outside [%s, %s]", d, tt.min, tt.max)
			}
		})
	}
}

func TestLimiterSetPerMinute(t *testing.T) {
	t.Parallel()
	l := NewLimiter(600)
	if l.PerMinute() != 600 || l.interval != 100*time.Millisecond {
		t.Fatalf("budget %d spacing %s", l.PerMinute(), l.interval)
	}
	l.SetPerMinute(120)
	if l.PerMinute() != 120 || l.interval != 500*time.Millisecond {
		t.Fatalf("budget %d spacing %s", l.PerMinute(), l.interval)
	}
	if NewLimiter(0).PerMinute() != 1 {
		t.Fatal("a zero budget must fail slow, not unlimited")
	}
}

// A 429 must hold back every request of the environment, not only the one retried.
func Test429PausesWholeEnvironment(t *testing.T) {
	t.Parallel()
	got429 := make(chan time.Time, 1)
	f := newFake(t, func(w http.ResponseWriter, r *http.Request, n int) {
		if n == 0 {
			w.Header().Set("Retry-After", "1")
			heronError(w, 429, "500 per 1 minute")
			got429 <- time.Now()
			return
		}
		if r.URL.Path == keysPath {
			writeJSON(w, 200, map[string]any{"keys": []any{}})
			return
		}
		writeJSON(w, 200, map[string]any{"hello": "x"})
	})
	l := NewLimiter(60000)
	a := newTestClient(t, f.URL(), func(c *Config) { c.Limiter = l })
	b := newTestClient(t, f.URL(), func(c *Config) { c.Limiter = l }) // another mount, same environment

	start := time.Now()
	errA := make(chan error, 1)
	go func() { _, err := a.ListKeys(context.Background()); errA <- err }()
	at := <-got429
	// Wait until the client has seen the answer (the limiter is paused), not
	// for a fixed time a loaded machine may need more of.
	for deadline := time.Now().Add(5 * time.Second); !l.pauseSet(); time.Sleep(time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("the 429 never paused the limiter")
		}
	}
	noErr(t, b.Hello(context.Background()))
	noErr(t, <-errA)

	if el := time.Since(start); el < 950*time.Millisecond {
		t.Fatalf("finished after %s, Retry-After was 1s", el)
	}
	reqs := f.requests()
	if len(reqs) != 3 {
		t.Fatalf("want 3 requests, got %v", f.seq())
	}
	for _, r := range reqs[1:] {
		if d := r.At.Sub(at); d < 950*time.Millisecond {
			t.Errorf("%s sent %s after the 429, want >= ~1s", r, d)
		}
	}
}

func TestClientLimiterRefusal(t *testing.T) {
	t.Parallel()
	f := newFake(t, func(w http.ResponseWriter, r *http.Request, _ int) { t.Error("request sent despite the limiter") })
	clk := &countingClock{}
	l := newLimiter(60000, clk)
	l.PauseFor(time.Hour)
	c := newTestClient(t, f.URL(), func(c *Config) { c.Limiter = l })
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	// What one refused Wait costs in reads of the clock, to tell a single
	// refusal from a retried one without timing anything.
	n0, _ := clk.counts()
	if err := l.Wait(ctx); !errors.Is(err, ErrRateLimited) {
		t.Fatalf("paused for an hour: want ErrRateLimited, got %v", err)
	}
	n1, _ := clk.counts()
	_, err := c.ListKeys(ctx)
	if !errors.Is(err, ErrRateLimited) {
		t.Fatalf("want ErrRateLimited, got %v", err)
	}
	contains(t, err.Error(), "heron: GET /api/credentials/keys: ")
	n2, sleeps := clk.counts()
	if sleeps != 0 {
		t.Errorf("limiter refusal should not be waited on: the limiter slept %d times", sleeps)
	}
	if one, got := n1-n0, n2-n1; got != one {
		t.Errorf("limiter refusal should not be retried: the client asked the limiter %d clock reads' worth, one Wait is %d", got, one)
	}
	_, err = c.CreateKey(ctx, "n")
	if !errors.Is(err, ErrRateLimited) || errors.Is(err, ErrOutcomeUnknown) {
		t.Fatalf("a POST that never left is not 'may exist': %v", err)
	}
}

func TestSharedLimiter(t *testing.T) {
	t.Parallel()
	const url = "https://shared-limiter-test.example"
	otherKey := "key_" + strings.Repeat("ab", 24)
	a := acquireLimiter(url, testKey, "mount-a", 250)
	defer releaseLimiter(url, testKey, "mount-a")
	if b := acquireLimiter(url, testKey, "mount-b", 250); b != a {
		t.Fatal("same (url, key) must share one limiter")
	}
	if b := acquireLimiter("HTTPS://Shared-Limiter-Test.example:443/", testKey, "mount-c", 600); b != a {
		t.Fatal("spellings of the same base URL must share one limiter")
	}
	defer releaseLimiter(url, testKey, "mount-c")
	if a.PerMinute() != 250 {
		t.Fatalf("a larger budget of another holder must not raise the shared rate: %v", a.PerMinute())
	}
	releaseLimiter(url, testKey, "mount-b")
	if b := acquireLimiter(url, otherKey, "mount-a", 250); b == a {
		t.Fatal("different keys must not share a limiter")
	}
	releaseLimiter(url, otherKey, "mount-a")
	if b := acquireLimiter(url+"/other", testKey, "mount-a", 250); b == a {
		t.Fatal("different base URLs must not share a limiter")
	}
	releaseLimiter(url+"/other", testKey, "mount-a")

	processRegistry.mu.Lock()
	defer processRegistry.mu.Unlock()
	for k := range processRegistry.entries {
		dump := fmt.Sprintf("%#v %v %x", k, k, k.keySum)
		for _, key := range []string{testKey, otherKey} {
			if strings.Contains(dump, key) || strings.Contains(dump, key[4:]) {
				t.Fatalf("registry holds a raw key: %s", dump)
			}
		}
	}
}

// Spec invariant 6 (the smallest rate_limit_per_minute of the mounts sharing
// an admin key applies): two mounts sharing an admin key with budgets 60 and
// 100000 run at 60 whichever built its client last; a one-off check changes
// nothing; the entry goes when both let go.
func TestSharedLimiterSmallestBudgetWins(t *testing.T) {
	const url = "https://smallest-budget.example"
	heldLimiterCount := processRegistry.heldCount
	before := heldLimiterCount(time.Now().Add(idleLimiterTTL + time.Second))
	small := acquireLimiter(url, testKey, "mount-small", 60)
	big := acquireLimiter(url, testKey, "mount-big", 100000)
	if small != big || big.PerMinute() != 60 {
		t.Fatalf("want one limiter at 60/min, got %v", big.PerMinute())
	}
	// The small mount rebuilds its client (config rewrite): still the smallest.
	acquireLimiter(url, testKey, "mount-small", 60)
	if big.PerMinute() != 60 {
		t.Fatalf("rate changed by a re-acquire: %v", big.PerMinute())
	}
	if p := peekLimiter(url, testKey, 100000); p != big || big.PerMinute() != 60 {
		t.Fatal("a one-off check must use the shared limiter without changing its rate")
	}
	releaseLimiter(url, testKey, "mount-small")
	if big.PerMinute() != 100000 {
		t.Fatalf("after the small mount let go the rate is the remaining holder's: %v", big.PerMinute())
	}
	releaseLimiter(url, testKey, "mount-big")
	if again := acquireLimiter(url, testKey, "mount-big", 100000); again != big {
		t.Fatal("a client rebuilt right after letting go keeps the budget (its pause and spent tokens)")
	}
	releaseLimiter(url, testKey, "mount-big")
	if got := heldLimiterCount(time.Now().Add(idleLimiterTTL + time.Second)); got != before {
		t.Fatalf("registry entries: %d, want %d (forgotten once unheld for a while)", got, before)
	}
	p := peekLimiter(url, testKey, 30)
	if p == big || p.PerMinute() != 30 {
		t.Fatal("peeking a forgotten budget gives a new limiter at the asked rate")
	}
	if got := heldLimiterCount(time.Now()); got != before+1 {
		t.Fatal("a peeked budget is remembered unheld (a 429's pause outlives a failed check)")
	}
	if again := peekLimiter(url, testKey, 30); again != p {
		t.Fatal("the next check finds it")
	}
	if got := heldLimiterCount(time.Now().Add(idleLimiterTTL + time.Second)); got != before {
		t.Fatal("and forgets it like a released one")
	}
}

func TestConcurrentLimiterUse(t *testing.T) {
	t.Parallel()
	// For -race: every Limiter method from many goroutines at once; and
	// none of it loses a grant, fails a Wait, or breaks the shared entry.
	l := acquireLimiter("http://race.example", testKey, "race", 60000)
	defer releaseLimiter("http://race.example", testKey, "race")
	var grants atomic.Int64
	l.mu.Lock()
	l.onGrant = func(time.Time) { grants.Add(1) }
	l.mu.Unlock()
	var failed atomic.Int64
	var wg sync.WaitGroup
	for i := range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			h := http.Header{"X-Ratelimit-Remaining": {"100"}, "X-Ratelimit-Limit": {"500"}, "X-Ratelimit-Reset": {"0"}}
			for range 20 {
				if err := l.Wait(context.Background()); err != nil {
					failed.Add(1)
					t.Errorf("Wait without a deadline failed: %v", err)
				}
				l.Observe(h)
				l.PauseFor(time.Microsecond)
				l.SetPerMinute(60000 + i)
				_ = acquireLimiter("http://race.example", testKey, fmt.Sprint("race-", i), 60000)
				releaseLimiter("http://race.example", testKey, fmt.Sprint("race-", i))
			}
		}()
	}
	wg.Wait()
	if g, want := grants.Load(), int64(8*20)-failed.Load(); g != want {
		t.Errorf("%d grants for %d successful Waits", g, want)
	}
	if p := l.PerMinute(); p < 60000 || p > 60007 {
		t.Errorf("rate %d is none that was set (60000..60007)", p)
	}
	if again := acquireLimiter("http://race.example", testKey, "race-check", 60000); again != l {
		t.Error("the entry held by \"race\" was dropped or replaced by the others' releases")
	}
	releaseLimiter("http://race.example", testKey, "race-check")
}

// virtualClock is the limiter's clock in tests that check the budget over many
// minutes: time moves only when every worker is parked in the limiter, and then
// straight to the earliest time one of them waits for.
type virtualClock struct {
	mu       sync.Mutex
	cond     *sync.Cond
	t        time.Time
	sleepers map[*vSleeper]struct{}
}

type vSleeper struct {
	until time.Time
	wake  <-chan struct{}
	ctx   context.Context
	fire  chan struct{}
	fired bool
}

func newVirtualClock() *virtualClock {
	c := &virtualClock{t: time.Date(2030, 1, 1, 0, 0, 0, 0, time.UTC), sleepers: map[*vSleeper]struct{}{}}
	c.cond = sync.NewCond(&c.mu)
	return c
}

func (c *virtualClock) now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

func (c *virtualClock) sleep(ctx context.Context, until time.Time, wake <-chan struct{}) error {
	s := &vSleeper{until: until, wake: wake, ctx: ctx, fire: make(chan struct{})}
	c.mu.Lock()
	if !until.IsZero() && !until.After(c.t) {
		c.mu.Unlock()
		return nil
	}
	c.sleepers[s] = struct{}{}
	c.cond.Broadcast()
	c.mu.Unlock()
	var err error
	select {
	case <-ctx.Done():
		err = ctx.Err()
	case <-s.fire:
	case <-wake:
	}
	c.mu.Lock()
	delete(c.sleepers, s)
	c.cond.Broadcast()
	c.mu.Unlock()
	return err
}

// parkedLocked reports whether n goroutines sleep and none of them is about to
// wake (its wake channel closed, its context done, its time come).
func (c *virtualClock) parkedLocked(n int) bool {
	if len(c.sleepers) != n {
		return false
	}
	for s := range c.sleepers {
		if s.fired || s.ctx.Err() != nil {
			return false
		}
		select {
		case <-s.wake:
			return false
		default:
		}
	}
	return true
}

// advance waits until n goroutines are parked, then moves time to the
// earliest wake-up among them, or to limit if that comes first, and reports
// the new time. Nobody wakes before fireDue.
func (c *virtualClock) advance(t budgetT, n int, limit time.Time) time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	for !c.parkedLocked(n) {
		c.cond.Wait()
	}
	var next time.Time
	for s := range c.sleepers {
		if !s.until.IsZero() && (next.IsZero() || s.until.Before(next)) {
			next = s.until
		}
	}
	if !limit.IsZero() && (next.IsZero() || limit.Before(next)) {
		next = limit
	}
	if next.IsZero() {
		t.Fatal("every waiter sleeps with no time to wake at")
	}
	c.t = next
	return next
}

// fireDue wakes the sleepers whose time has come.
func (c *virtualClock) fireDue() {
	c.mu.Lock()
	defer c.mu.Unlock()
	for s := range c.sleepers {
		if !s.fired && !s.until.IsZero() && !s.until.After(c.t) {
			s.fired = true
			close(s.fire)
		}
	}
}

// budgetT is what budgetRun needs of its test: a *testing.T, or the
// *rapid.T of TestLimiterBudget_AnyPausesObservationsAndChanges.
type budgetT interface {
	Fatal(args ...any)
	Fatalf(format string, args ...any)
	Logf(format string, args ...any)
}

// budgetRun drives a limiter on the virtual clock with workers that send as
// fast as it lets them, until it has granted sends requests. After its i-th
// grant a worker reacts to Heron's answer (answer), as the client's transport
// does; budget changes happen at their times.
type budgetRun struct {
	start   int
	workers int
	sends   int
	answer  func(i int, at time.Time, l *Limiter)
	changes []budgetChange
}

type budgetChange struct {
	after time.Duration
	to    int
}

// run asserts the promise over every sliding 60 s window: the sends in
// (t-60s, t] never outnumber the budget in force at t (+1, as the spec
// tolerates), and no budget change or pause's end lets a burst through: two
// sends are never closer than the spacing of the budget at the later one.
func (r budgetRun) run(t budgetT) {
	c := newVirtualClock()
	t0 := c.now()
	l := newLimiter(r.start, c)
	var mu sync.Mutex
	var grants []time.Time
	// What the limiter was told at each grant: the pause in force (the
	// latest a 429 or an observation set) and the spacing and burst of the
	// budget in force. onGrant runs under l.mu.
	type grantState struct {
		pausedUntil time.Time
		interval    time.Duration
		burst       int
	}
	var states []grantState
	l.onGrant = func(at time.Time) {
		mu.Lock()
		grants = append(grants, at)
		states = append(states, grantState{l.pausedUntil, l.interval, l.burst})
		mu.Unlock()
	}
	type change struct {
		at time.Time
		to int
	}
	history := []change{{t0, r.start}}
	for _, ch := range r.changes {
		if n := len(history); n > 1 && history[n-1].at.Equal(t0.Add(ch.after)) {
			// Two changes at one instant are one: the last (the workers
			// may be granted between two SetPerMinute calls otherwise).
			history[n-1].to = ch.to
			continue
		}
		history = append(history, change{t0.Add(ch.after), ch.to})
	}
	budgetAt := func(at time.Time) int {
		b := 0
		for _, h := range history {
			if !h.at.After(at) {
				b = h.to
			}
		}
		return b
	}

	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	for range r.workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				if err := l.Wait(ctx); err != nil {
					return
				}
				mu.Lock()
				i, at := len(grants)-1, grants[len(grants)-1]
				mu.Unlock()
				if r.answer != nil {
					r.answer(i, at, l)
				}
			}
		}()
	}
	pending := history[1:]
	for {
		mu.Lock()
		n := len(grants)
		mu.Unlock()
		if n >= r.sends {
			break
		}
		var limit time.Time
		if len(pending) > 0 {
			limit = pending[0].at
		}
		now := c.advance(t, r.workers, limit)
		// A change takes effect before anything due at the same instant goes.
		for len(pending) > 0 && !pending[0].at.After(now) {
			l.SetPerMinute(pending[0].to)
			pending = pending[1:]
		}
		c.fireDue()
	}
	cancel()
	wg.Wait()

	mu.Lock()
	defer mu.Unlock()
	lo := 0
	for i, at := range grants {
		for !grants[lo].After(at.Add(-time.Minute)) {
			lo++
		}
		b := budgetAt(at)
		if n := i - lo + 1; n > b+1 {
			t.Fatalf("%d sends in the 60 s up to %s (send %d) at a budget of %d", n, at.Sub(t0), i, b)
		}
		st := states[i]
		// The documented burst: a tenth of a second's worth of the budget, at least 1.
		if st.interval != time.Minute/time.Duration(b) || st.burst != max(1, b/600) {
			t.Fatalf("send %d at %s was spaced %s with a burst of %d, not for the budget of %d in force",
				i, at.Sub(t0), st.interval, st.burst, b)
		}
		// Spacing: any burst+1 sends in a row span burst intervals (burst
		// is 1 up to a budget of 1,199: two sends are never closer than
		// the spacing), and in the burst intervals after a pause ends,
		// sends go one interval apart: what queued through it does not
		// go at once.
		if i >= st.burst {
			if span, min := at.Sub(grants[i-st.burst]), time.Duration(st.burst)*st.interval; span < min {
				t.Fatalf("sends %d..%d up to %s spanned %s, under the %s that a burst of %d at a budget of %d takes",
					i-st.burst, i, at.Sub(t0), span, min, st.burst, b)
			}
		}
		if i > 0 && at.Before(st.pausedUntil.Add(time.Duration(st.burst)*st.interval)) {
			if gap := at.Sub(grants[i-1]); gap < st.interval {
				t.Fatalf("send %d at %s came %s after the one before, %s after a pause ended, under the %s spacing of a budget of %d",
					i, at.Sub(t0), gap, at.Sub(st.pausedUntil), st.interval, b)
			}
		}
	}
	t.Logf("%d sends over %s", len(grants), grants[len(grants)-1].Sub(t0))
}

// The budget is a promise over every sliding 60 s window, whatever happens in
// between: 429 pauses (Retry-After), slowdowns on a low X-RateLimit-Remaining,
// and budget changes both ways. Requests that queued during a pause must not
// all go when it ends.
func TestLimiterBudgetHoldsOverEverySlidingWindow(t *testing.T) {
	t.Parallel()
	pauseEvery := func(n int, d time.Duration) func(int, time.Time, *Limiter) {
		return func(i int, _ time.Time, l *Limiter) {
			if i%n == n-1 {
				l.PauseFor(d)
			}
		}
	}
	lowRemaining := func(i int, at time.Time, l *Limiter) {
		h := http.Header{}
		h.Set("X-RateLimit-Limit", "500")
		h.Set("X-RateLimit-Remaining", strconv.Itoa(i%7))
		h.Set("X-RateLimit-Reset", strconv.FormatInt(at.Add(40*time.Second).Unix(), 10))
		l.Observe(h)
	}
	for _, tc := range []struct {
		name string
		run  budgetRun
	}{
		{"429 pauses shorter than the window", budgetRun{start: 60, workers: 40, sends: 400, answer: pauseEvery(45, 30*time.Second)}},
		{"429 pauses longer than the window", budgetRun{start: 60, workers: 100, sends: 400, answer: pauseEvery(90, 100*time.Second)}},
		{"low X-RateLimit-Remaining", budgetRun{start: 250, workers: 20, sends: 600, answer: lowRemaining}},
		{"budget lowered", budgetRun{start: 600, workers: 30, sends: 500, changes: []budgetChange{{30 * time.Second, 60}}}},
		{"budget raised", budgetRun{start: 30, workers: 30, sends: 600, changes: []budgetChange{{90 * time.Second, 600}}}},
		{"bursts at a budget far above Heron's, with pauses", budgetRun{start: 60000, workers: 300, sends: 4000,
			answer: pauseEvery(700, 3*time.Second), changes: []budgetChange{{2 * time.Second, 3000}, {7 * time.Second, 90000}}}},
		{"budget changes both ways with pauses", budgetRun{start: 120, workers: 50, sends: 1500,
			answer: pauseEvery(70, 20*time.Second),
			changes: []budgetChange{
				{20 * time.Second, 1200}, {50 * time.Second, 60}, {3 * time.Minute, 300},
				{4 * time.Minute, 40}, {6 * time.Minute, 900}, {6*time.Minute + 5*time.Second, 120},
			}}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			tc.run.run(t)
		})
	}
}

// acquireLimiter, releaseLimiter and peekLimiter are the process registry's
// Acquire (each holder a scope of its own, as separate mounts are), Release
// and Peek.
func acquireLimiter(baseURL, identity, holder string, perMinute int) *Limiter {
	return processRegistry.Acquire(baseURL, identity, holder, holder, perMinute)
}

func releaseLimiter(baseURL, identity, holder string) {
	processRegistry.Release(baseURL, identity, holder)
}

func peekLimiter(baseURL, identity string, perMinute int) *Limiter {
	return processRegistry.Peek(baseURL, identity, perMinute)
}
