package herontest

import (
	"fmt"
	"math/rand/v2"
	"net/http"
	"strings"
	"time"
)

// Faults configures random fault injection. The zero value injects nothing.
type Faults struct {
	// Latency is added to every API request before it is answered.
	Latency time.Duration
	// ErrorRate is the share (0..1) of authenticated API requests answered
	// 500, 502 or 503 (chosen at random) without being processed.
	ErrorRate float64
	// DropAfterPOSTRate is the share (0..1) of POST /api/credentials/keys that are
	// fully processed (the key is created) and then answered by closing the
	// connection: the lost-response case a client must reconcile.
	DropAfterPOSTRate float64
	// ProcessThenErrorRate is the share (0..1) of authenticated API requests (any
	// method and endpoint) that are fully processed and then answered 500, 502,
	// 503 or 504 (chosen at random) instead of the endpoint's answer: the
	// "did it happen or not?" case a client must reconcile.
	ProcessThenErrorRate float64
	// Seed seeds the random choices; 0 picks a time-based seed.
	Seed int64
}

// FaultMode is what FailNext does to the requests it matches.
type FaultMode int

const (
	FaultStatus500 FaultMode = iota
	FaultStatus502
	FaultStatus503
	// FaultProcessThenDrop processes the request (any method) and then closes the
	// connection without a response.
	FaultProcessThenDrop
	// FaultDropBeforeProcessing closes the connection without processing.
	FaultDropBeforeProcessing
	// FaultStatus504 answers 504 without processing (a gateway that gave up
	// before the request reached Heron).
	FaultStatus504
	// FaultProcessThen500 processes the request (any method) and then answers
	// 500 instead of the endpoint's answer; likewise 502, 503 and 504.
	FaultProcessThen500
	FaultProcessThen502
	FaultProcessThen503
	FaultProcessThen504
)

var faultModeNames = map[FaultMode]string{
	FaultStatus500:            "500",
	FaultStatus502:            "502",
	FaultStatus503:            "503",
	FaultProcessThenDrop:      "process-then-drop",
	FaultDropBeforeProcessing: "drop-before-processing",
	FaultStatus504:            "504",
	FaultProcessThen500:       "process-then-500",
	FaultProcessThen502:       "process-then-502",
	FaultProcessThen503:       "process-then-503",
	FaultProcessThen504:       "process-then-504",
}

func (m FaultMode) String() string {
	if n, ok := faultModeNames[m]; ok {
		return n
	}
	return fmt.Sprintf("FaultMode(%d)", int(m))
}

// ParseFaultMode is the inverse of FaultMode.String ("500", "502", "503", "504",
// "process-then-drop", "drop-before-processing", "process-then-500",
// "process-then-502", "process-then-503", "process-then-504").
func ParseFaultMode(s string) (FaultMode, error) {
	for m, n := range faultModeNames {
		if n == s {
			return m, nil
		}
	}
	return 0, fmt.Errorf("unknown fault mode %q", s)
}

func newRand(seed int64) *rand.Rand {
	if seed == 0 {
		seed = time.Now().UnixNano()
	}
	return rand.New(rand.NewPCG(uint64(seed), uint64(seed)>>1^0x9e3779b97f4a7c15))
}

// SetFaults replaces the random fault configuration and reseeds the random source.
func (s *Server) SetFaults(f Faults) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.faults = f
	s.rng = newRand(f.Seed)
}

// CurrentFaults returns the random fault configuration in force.
func (s *Server) CurrentFaults() Faults {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.faults
}

// FailNext makes the next n API requests matching method and pathPrefix ("" matches
// any; prefix compared with strings.HasPrefix on the path) get mode. Only requests
// that pass authentication and the rate limiter are matched, so a rule is never
// used up by a 401 or 429. Rules are consumed in the order they were added and
// take precedence over random faults.
func (s *Server) FailNext(method, pathPrefix string, n int, mode FaultMode) {
	if n <= 0 {
		return
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	s.failNext = append(s.failNext, &failRule{method: method, pathPrefix: pathPrefix, left: n, mode: mode})
}

// CancelFailNext takes back one use of the most recently armed FailNext rule
// that is still armed with exactly this method, pathPrefix and mode, and
// reports whether there was one. A test that arms a fault for one call only
// (FailNext with n = 1 just before it) cancels it after the call when the
// call never sent a matching request (refused by the client's own limiter,
// say), so that it does not strike a later call. Rules are consumed in the
// order they were added, so among identical rules the latest is the one a
// request has not used yet.
func (s *Server) CancelFailNext(method, pathPrefix string, mode FaultMode) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	for i := len(s.failNext) - 1; i >= 0; i-- {
		r := s.failNext[i]
		if r.late || r.method != method || r.pathPrefix != pathPrefix || r.mode != mode {
			continue
		}
		r.left--
		if r.left <= 0 {
			s.failNext = append(s.failNext[:i:i], s.failNext[i+1:]...)
		}
		return true
	}
	return false
}

// FailNextLate makes the next n API requests matching method and pathPrefix (as
// for FailNext, and sharing its queue) be answered at once with answerStatus, or
// by closing the connection when answerStatus is 0, and then processed delay
// later in the background: a gateway timeout while Heron is still working. A key
// created this way appears only at processing time, with that time as created.
// answerStatus must be 0 or a 5xx status; anything else panics (a test setup
// error). Pending late actions are dropped by Close and can be run at once with
// FlushLate.
func (s *Server) FailNextLate(method, pathPrefix string, n int, answerStatus int, delay time.Duration) {
	if answerStatus != 0 && (answerStatus < 500 || answerStatus > 599) {
		panic(fmt.Sprintf("herontest: FailNextLate answer status %d is neither 0 (drop) nor 5xx", answerStatus))
	}
	if n <= 0 {
		return
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	s.failNext = append(s.failNext, &failRule{
		method: method, pathPrefix: pathPrefix, left: n,
		late: true, lateStatus: answerStatus, lateDelay: max(delay, 0),
	})
}

// DelayNext makes the next n API requests matching method and pathPrefix (as for
// FailNext, with a queue of its own) wait d after they are admitted (after
// authentication and the rate limiter) and before they are processed or get
// their fault: Heron being slow on one request. Unlike Faults.Latency, a client
// that gives up during this delay does not stop the request: it is processed
// anyway, as a server that does not watch its client would. Close aborts it.
func (s *Server) DelayNext(method, pathPrefix string, n int, d time.Duration) {
	if n <= 0 || d <= 0 {
		return
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	s.delayNext = append(s.delayNext, &failRule{method: method, pathPrefix: pathPrefix, left: n, delay: d})
}

// PendingFailNext returns how many FailNext and FailNextLate faults are still armed.
func (s *Server) PendingFailNext() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return pendingRules(s.failNext)
}

// PendingDelayNext returns how many DelayNext delays are still armed.
func (s *Server) PendingDelayNext() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return pendingRules(s.delayNext)
}

func pendingRules(rules []*failRule) int {
	n := 0
	for _, r := range rules {
		n += r.left
	}
	return n
}

// ResetFaults clears random faults, pending FailNext, FailNextLate and DelayNext
// rules and forced 429s. Late actions already scheduled are not faults any more
// but Heron's work in progress: they still happen (see FlushLate and Close).
func (s *Server) ResetFaults() {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.faults = Faults{}
	s.failNext = nil
	s.delayNext = nil
	s.forced = map[string]forced429{}
}

// fault is what the pipeline should do to one request.
type fault struct {
	status      int  // answer this status without processing
	dropBefore  bool // close without processing
	dropAfter   bool // process, then close without answering
	statusAfter int  // process, then answer this status instead
	late        bool // answer lateStatus (0: drop) now, process lateDelay later
	lateStatus  int
	lateDelay   time.Duration
}

type failRule struct {
	method, pathPrefix string
	left               int
	mode               FaultMode
	late               bool
	lateStatus         int
	lateDelay          time.Duration
	delay              time.Duration // DelayNext
}

// takeRuleLocked consumes one use of the first rule in *rules matching the request.
func takeRuleLocked(rules *[]*failRule, method, path string) *failRule {
	for i, r := range *rules {
		if (r.method != "" && r.method != method) || !strings.HasPrefix(path, r.pathPrefix) {
			continue
		}
		r.left--
		if r.left <= 0 {
			*rules = append((*rules)[:i:i], (*rules)[i+1:]...)
		}
		return r
	}
	return nil
}

// pickDelayLocked consumes a matching DelayNext rule; 0 when none matches.
func (s *Server) pickDelayLocked(method, path string) time.Duration {
	if r := takeRuleLocked(&s.delayNext, method, path); r != nil {
		return r.delay
	}
	return 0
}

var processThenCodes = [...]int{http.StatusInternalServerError, http.StatusBadGateway, http.StatusServiceUnavailable, http.StatusGatewayTimeout}

// pickFaultLocked consumes a matching FailNext rule or draws random faults.
// authenticated means an endpoint that requires a key and got a valid one.
func (s *Server) pickFaultLocked(method, path string, authenticated, isCreate bool) fault {
	if r := takeRuleLocked(&s.failNext, method, path); r != nil {
		if r.late {
			return fault{late: true, lateStatus: r.lateStatus, lateDelay: r.lateDelay}
		}
		switch r.mode {
		case FaultStatus500:
			return fault{status: http.StatusInternalServerError}
		case FaultStatus502:
			return fault{status: http.StatusBadGateway}
		case FaultStatus503:
			return fault{status: http.StatusServiceUnavailable}
		case FaultStatus504:
			return fault{status: http.StatusGatewayTimeout}
		case FaultProcessThenDrop:
			return fault{dropAfter: true}
		case FaultDropBeforeProcessing:
			return fault{dropBefore: true}
		case FaultProcessThen500:
			return fault{statusAfter: http.StatusInternalServerError}
		case FaultProcessThen502:
			return fault{statusAfter: http.StatusBadGateway}
		case FaultProcessThen503:
			return fault{statusAfter: http.StatusServiceUnavailable}
		case FaultProcessThen504:
			return fault{statusAfter: http.StatusGatewayTimeout}
		}
		return fault{}
	}
	// Each rate draws only when it is set, so that seeded runs configured before
	// a rate existed keep drawing the same faults.
	f := s.faults
	if authenticated && f.ErrorRate > 0 && s.rng.Float64() < f.ErrorRate {
		codes := [...]int{http.StatusInternalServerError, http.StatusBadGateway, http.StatusServiceUnavailable}
		return fault{status: codes[s.rng.IntN(len(codes))]}
	}
	if authenticated && f.ProcessThenErrorRate > 0 && s.rng.Float64() < f.ProcessThenErrorRate {
		return fault{statusAfter: processThenCodes[s.rng.IntN(len(processThenCodes))]}
	}
	if isCreate && f.DropAfterPOSTRate > 0 && s.rng.Float64() < f.DropAfterPOSTRate {
		return fault{dropAfter: true}
	}
	return fault{}
}
