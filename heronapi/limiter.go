package heronapi

import (
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"time"

	"golang.org/x/time/rate"
)

// Limiter spends one Heron environment's request budget. Heron counts over a sliding
// minute, so a token bucket at perMinute/60 per second with a burst of 1 never sends
// more than perMinute (+1) in any 60-second window, unlike a fixed-window counter.
// On top of the bucket it holds a pause, set by 429s and by low X-RateLimit-Remaining,
// because the budget is shared with the customer's own traffic that we cannot see.
type Limiter struct {
	bucket *rate.Limiter

	mu          sync.Mutex
	pausedUntil time.Time
}

// maxObservedPause bounds a pause derived from X-RateLimit-Reset: Heron's window is
// one minute, so anything longer is a broken header, not a reason to stall the engine.
const maxObservedPause = time.Minute

// maxSlotHeadroom is the most of a caller's remaining time Wait keeps for the
// request itself and what the caller does with its answer.
const maxSlotHeadroom = 2 * time.Second

// NewLimiter returns a limiter for perMinute requests per minute. A perMinute below 1
// is treated as 1: an unset budget must fail slow, never spend Heron's whole budget.
func NewLimiter(perMinute int) *Limiter {
	return &Limiter{bucket: rate.NewLimiter(perMinuteLimit(perMinute), 1)}
}

func perMinuteLimit(n int) rate.Limit {
	if n < 1 {
		n = 1
	}
	return rate.Limit(float64(n) / 60)
}

// SetPerMinute changes the budget in place, so clients already holding this limiter
// pick up a config change without being rebuilt.
func (l *Limiter) SetPerMinute(n int) {
	l.bucket.SetLimit(perMinuteLimit(n))
}

// Wait blocks until a request may be sent: first until any pause is over, then for a
// token. It fails fast with an error wrapping ErrRateLimited when the slot would come
// after ctx's deadline (the caller can answer "rate limited" at once instead of timing
// out), and returns ctx.Err() when ctx is canceled.
func (l *Limiter) Wait(ctx context.Context) error {
	// A slot granted just before the deadline is wasted: the request would be
	// sent and its caller time out before it can record what happened. Keep a
	// little of the caller's time for that.
	if dl, ok := ctx.Deadline(); ok {
		headroom := min(maxSlotHeadroom, time.Until(dl)/4)
		var cancel context.CancelFunc
		ctx, cancel = context.WithDeadline(ctx, dl.Add(-headroom))
		defer cancel()
	}
	if err := l.waitPause(ctx); err != nil {
		return err
	}
	if err := l.bucket.Wait(ctx); err != nil {
		return l.waitErr(ctx, err)
	}
	// A 429 seen while we queued for the token pauses everyone, us included: the
	// token is spent either way, but sending now would only earn another 429.
	return l.waitPause(ctx)
}

func (l *Limiter) waitPause(ctx context.Context) error {
	for {
		l.mu.Lock()
		until := l.pausedUntil
		l.mu.Unlock()
		d := time.Until(until)
		if d <= 0 {
			return nil
		}
		if dl, ok := ctx.Deadline(); ok && until.After(dl) {
			return fmt.Errorf("heron: request budget paused for another %s, past the request deadline: %w",
				d.Round(time.Millisecond), ErrRateLimited)
		}
		t := time.NewTimer(d)
		select {
		case <-ctx.Done():
			t.Stop()
			return l.waitErr(ctx, ctx.Err())
		case <-t.C:
		}
		// Loop: the pause may have been extended while we slept.
	}
}

func (l *Limiter) waitErr(ctx context.Context, err error) error {
	switch {
	case errors.Is(ctx.Err(), context.Canceled):
		return ctx.Err()
	case ctx.Err() != nil:
		// The deadline passed while queued: still "no slot before the deadline".
		return fmt.Errorf("heron: no request slot before the deadline: %w: %w", ErrRateLimited, ctx.Err())
	default:
		// rate.Limiter refuses up front when the reservation would outlive the deadline.
		return fmt.Errorf("heron: no request slot before the deadline (%v): %w", err, ErrRateLimited)
	}
}

// PauseFor holds every request through this limiter until now+d. It only ever
// extends a pause: a short Retry-After arriving after a long one must not cut it.
func (l *Limiter) PauseFor(d time.Duration) {
	if d <= 0 {
		return
	}
	until := time.Now().Add(d)
	l.mu.Lock()
	if until.After(l.pausedUntil) {
		l.pausedUntil = until
	}
	l.mu.Unlock()
}

// Observe slows down when Heron says little of the window's budget is left (the
// customer's own traffic may be spending it): it spreads the remaining requests
// evenly until the reset instead of spending them all now and then hitting 429s.
func (l *Limiter) Observe(h http.Header) {
	remaining, err1 := strconv.Atoi(strings.TrimSpace(h.Get("X-RateLimit-Remaining")))
	limit, err2 := strconv.Atoi(strings.TrimSpace(h.Get("X-RateLimit-Limit")))
	reset, err3 := strconv.ParseInt(strings.TrimSpace(h.Get("X-RateLimit-Reset")), 10, 64)
	if err1 != nil || err2 != nil || err3 != nil || remaining < 0 {
		return
	}
	if remaining >= 5 && remaining*10 >= limit {
		return
	}
	now := time.Now()
	untilReset := time.Unix(reset, 0).Sub(now)
	if untilReset <= 0 {
		return
	}
	if untilReset > maxObservedPause {
		untilReset = maxObservedPause
	}
	l.PauseFor(untilReset / time.Duration(remaining+1))
}

// limiterKey identifies an environment's budget. The key is hashed so the registry
// (which lives as long as the plugin process) never holds a credential.
type limiterKey struct {
	baseURL string
	keySum  [sha256.Size]byte
}

// sharedLimiter is one budget and who holds it: each holder (a mount's
// environment) states its own rate_limit_per_minute, and the smallest applies,
// so that the most careful mount's budget is never overspent by another.
type sharedLimiter struct {
	l       *Limiter
	holders map[string]int
	// idleSince is when the last holder let go (zero while held). The entry
	// outlives its holders by idleLimiterTTL so that a client rebuilt after a
	// config change or rotation keeps the budget's pause and spent tokens.
	idleSince time.Time
}

// idleLimiterTTL is how long an unheld budget is remembered.
const idleLimiterTTL = 10 * time.Minute

// sweepIdleLocked forgets budgets unheld for longer than idleLimiterTTL.
func sweepIdleLocked(now time.Time) {
	for k, e := range sharedLimiters {
		if len(e.holders) == 0 && now.Sub(e.idleSince) > idleLimiterTTL {
			delete(sharedLimiters, k)
		}
	}
}

func (e *sharedLimiter) apply() {
	low := 0
	for _, n := range e.holders {
		if low == 0 || n < low {
			low = n
		}
	}
	e.l.SetPerMinute(low)
}

var (
	sharedMu       sync.Mutex
	sharedLimiters = map[limiterKey]*sharedLimiter{}
)

func sharedKey(baseURL, identity string) limiterKey {
	return limiterKey{baseURL: normalizeBaseURL(baseURL), keySum: sha256.Sum256([]byte(identity))}
}

// AcquireLimiter returns the process-wide limiter of (baseURL, identity) and
// records that holder spends it at no more than perMinute. Every mount of the
// plugin in this process draws from one bucket per environment, as Heron counts
// the budget per environment, at the smallest perMinute of its holders. A
// holder acquiring again replaces its own rate. Pair with ReleaseLimiter.
func AcquireLimiter(baseURL, identity, holder string, perMinute int) *Limiter {
	k := sharedKey(baseURL, identity)
	sharedMu.Lock()
	defer sharedMu.Unlock()
	sweepIdleLocked(time.Now())
	e, ok := sharedLimiters[k]
	if !ok {
		e = &sharedLimiter{l: NewLimiter(perMinute), holders: map[string]int{}}
		sharedLimiters[k] = e
	}
	e.holders[holder] = max(perMinute, 1)
	e.idleSince = time.Time{}
	e.apply()
	return e.l
}

// ReleaseLimiter drops holder's claim on (baseURL, identity). The rate goes
// back to the smallest of the remaining holders; the limiter is forgotten
// idleLimiterTTL after nobody holds it, so the registry does not grow with
// every admin key the process ever saw.
func ReleaseLimiter(baseURL, identity, holder string) {
	k := sharedKey(baseURL, identity)
	sharedMu.Lock()
	defer sharedMu.Unlock()
	e, ok := sharedLimiters[k]
	if !ok {
		return
	}
	delete(e.holders, holder)
	if len(e.holders) == 0 {
		e.idleSince = time.Now()
	} else {
		e.apply()
	}
	sweepIdleLocked(time.Now())
}

// PeekLimiter is for a one-off request (checking a config before it is
// stored): the shared limiter of (baseURL, identity) when someone holds it,
// its rate untouched, else a private limiter at perMinute. Nothing is
// registered, so a check that fails changes no budget.
func PeekLimiter(baseURL, identity string, perMinute int) *Limiter {
	k := sharedKey(baseURL, identity)
	sharedMu.Lock()
	defer sharedMu.Unlock()
	if e, ok := sharedLimiters[k]; ok {
		return e.l
	}
	return NewLimiter(perMinute)
}

// heldLimiterCount is how many budgets the registry holds for someone, after
// forgetting those idle since before now-idleLimiterTTL (tests).
func heldLimiterCount(now time.Time) int {
	sharedMu.Lock()
	defer sharedMu.Unlock()
	sweepIdleLocked(now)
	return len(sharedLimiters)
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
