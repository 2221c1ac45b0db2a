package herontest

import (
	"net/http"
	"strconv"
	"time"
)

type forced429 struct {
	until      time.Time
	retryAfter time.Duration
}

// rateDecision is the limiter's verdict plus the headers every response of a
// limited environment carries.
type rateDecision struct {
	limited    bool // answer 429
	forced     bool // the 429 came from Force429
	hasHeaders bool // false when limiting is disabled
	limit      int
	remaining  int
	reset      int64 // Unix seconds
	retryAfter int   // seconds, >= 1, only when limited
}

func (d rateDecision) apply(h http.Header) {
	if d.hasHeaders {
		h.Set("X-RateLimit-Limit", strconv.Itoa(d.limit))
		h.Set("X-RateLimit-Remaining", strconv.Itoa(d.remaining))
		h.Set("X-RateLimit-Reset", strconv.FormatInt(d.reset, 10))
	}
	if d.limited {
		h.Set("Retry-After", strconv.Itoa(d.retryAfter))
	}
}

// ceilSeconds rounds a duration up to whole seconds, never below 1, because a
// Retry-After of 0 would invite an immediate retry that is certain to fail.
func ceilSeconds(d time.Duration) int {
	n := int((d + time.Second - 1) / time.Second)
	return max(n, 1)
}

// ceilUnix rounds up so that a client sleeping until Reset is never early.
func ceilUnix(t time.Time) int64 {
	sec := t.Unix()
	if t.Nanosecond() > 0 {
		sec++
	}
	return sec
}

// admitLocked decides whether a request of env arriving now is within budget and,
// if so, charges it. Callers hold s.mu.
func (s *Server) admitLocked(env string, now time.Time) rateDecision {
	if f, ok := s.activeForcedLocked(env, now); ok {
		d := rateDecision{limited: true, forced: true, retryAfter: ceilSeconds(f.retryAfter)}
		if s.limit >= 0 {
			// A forced 429 stands in for budget exhausted by someone else's
			// traffic, so the headers say exactly that.
			d.hasHeaders, d.limit, d.remaining = true, s.limit, 0
			d.reset = now.Unix() + int64(d.retryAfter)
		}
		return d
	}
	if s.limit < 0 {
		return rateDecision{}
	}
	hits := s.hits[env]
	cut := 0
	for cut < len(hits) && now.Sub(hits[cut]) >= rateWindow {
		cut++
	}
	hits = hits[cut:]
	d := rateDecision{hasHeaders: true, limit: s.limit}
	if len(hits) >= s.limit {
		// A limit lowered at run time can leave more hits than the limit; the
		// slot that matters is the one that brings the count below it.
		oldest := hits[len(hits)-s.limit]
		d.limited = true
		d.retryAfter = ceilSeconds(oldest.Add(rateWindow).Sub(now))
		d.reset = ceilUnix(hits[0].Add(rateWindow))
		s.hits[env] = hits
		return d
	}
	hits = append(hits, now)
	s.hits[env] = hits
	d.remaining = s.limit - len(hits)
	d.reset = ceilUnix(hits[0].Add(rateWindow))
	return d
}

func (s *Server) activeForcedLocked(env string, now time.Time) (forced429, bool) {
	for _, e := range []string{env, ""} {
		f, ok := s.forced[e]
		if !ok {
			continue
		}
		if now.Before(f.until) {
			return f, true
		}
		delete(s.forced, e)
	}
	return forced429{}, false
}

// Force429 makes every authenticated request of env ("" = every environment)
// get 429 with Retry-After = ceil(retryAfter) seconds (at least 1) until now+d,
// before and regardless of the sliding limiter; d <= 0 lifts it. Forced 429s do
// not consume budget.
func (s *Server) Force429(env string, d time.Duration, retryAfter time.Duration) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if d <= 0 {
		delete(s.forced, env)
		return
	}
	s.forced[env] = forced429{until: s.now().Add(d), retryAfter: retryAfter}
}

// ResetRateLimiter empties every environment's window (not the recorded requests).
func (s *Server) ResetRateLimiter() {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.hits = map[string][]time.Time{}
}
