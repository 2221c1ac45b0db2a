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

// window is one sliding-window budget during an admission decision.
type window struct {
	hits  []time.Time // admitted requests still inside the window, oldest first
	limit int
}

func (w *window) trim(now time.Time) {
	cut := 0
	for cut < len(w.hits) && now.Sub(w.hits[cut]) >= rateWindow {
		cut++
	}
	w.hits = w.hits[cut:]
}

// freeAt is when the slot that brings the count below the limit frees. A limit
// lowered at run time can leave more hits than the limit, so it is not always
// the oldest hit's slot. Only meaningful when the window is full.
func (w *window) freeAt() time.Time { return w.hits[len(w.hits)-w.limit].Add(rateWindow) }

// admitLocked decides whether a request of env's user arriving now is within
// budget (the environment's and, when set, the user's) and, if so, charges it to
// both. The headers describe the binding budget: on a 429 the full one whose
// slot frees last, otherwise the one with the fewest requests left (ties go to
// the smaller limit, then to the environment). Callers hold s.mu.
func (s *Server) admitLocked(env, user string, now time.Time) rateDecision {
	if f, ok := s.activeForcedLocked(env, now); ok {
		d := rateDecision{limited: true, forced: true, retryAfter: ceilSeconds(f.retryAfter)}
		limit := s.limit
		if limit < 0 {
			limit = s.userLimit
		}
		if limit >= 0 {
			// A forced 429 stands in for budget exhausted by someone else's
			// traffic, so the headers say exactly that.
			d.hasHeaders, d.limit, d.remaining = true, limit, 0
			d.reset = now.Unix() + int64(d.retryAfter)
		}
		return d
	}
	uk := userKey{env, user}
	var envW, userW *window
	var ws []*window
	if s.limit >= 0 {
		envW = &window{hits: s.hits[env], limit: s.limit}
		ws = append(ws, envW)
	}
	if s.userLimit > 0 {
		userW = &window{hits: s.userHits[uk], limit: s.userLimit}
		ws = append(ws, userW)
	}
	if len(ws) == 0 {
		return rateDecision{}
	}
	var full *window
	for _, w := range ws {
		w.trim(now)
		if len(w.hits) >= w.limit && (full == nil || w.freeAt().After(full.freeAt())) {
			full = w
		}
	}
	d := rateDecision{hasHeaders: true}
	bind := full
	if full != nil {
		d.limited = true
		d.limit = full.limit
		d.retryAfter = ceilSeconds(full.freeAt().Sub(now))
	} else {
		for _, w := range ws {
			w.hits = append(w.hits, now)
			left := w.limit - len(w.hits)
			if bind == nil || left < bind.limit-len(bind.hits) ||
				(left == bind.limit-len(bind.hits) && w.limit < bind.limit) {
				bind = w
			}
		}
		d.limit = bind.limit
		d.remaining = bind.limit - len(bind.hits)
	}
	d.reset = ceilUnix(bind.hits[0].Add(rateWindow))
	if envW != nil {
		s.hits[env] = envW.hits
	}
	if userW != nil {
		s.userHits[uk] = userW.hits
	}
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

// ResetRateLimiter empties every environment's and every user's window (not
// the recorded requests).
func (s *Server) ResetRateLimiter() {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.hits = map[string][]time.Time{}
	s.userHits = map[userKey][]time.Time{}
}
