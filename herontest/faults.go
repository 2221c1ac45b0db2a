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
)

var faultModeNames = map[FaultMode]string{
	FaultStatus500:            "500",
	FaultStatus502:            "502",
	FaultStatus503:            "503",
	FaultProcessThenDrop:      "process-then-drop",
	FaultDropBeforeProcessing: "drop-before-processing",
}

func (m FaultMode) String() string {
	if n, ok := faultModeNames[m]; ok {
		return n
	}
	return fmt.Sprintf("FaultMode(%d)", int(m))
}

// ParseFaultMode is the inverse of FaultMode.String ("500", "502", "503",
// "process-then-drop", "drop-before-processing").
func ParseFaultMode(s string) (FaultMode, error) {
	for m, n := range faultModeNames {
		if n == s {
			return m, nil
		}
	}
	return 0, fmt.Errorf("unknown fault mode %q", s)
}

type failRule struct {
	method, pathPrefix string
	left               int
	mode               FaultMode
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

// PendingFailNext returns how many FailNext faults are still armed.
func (s *Server) PendingFailNext() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	n := 0
	for _, r := range s.failNext {
		n += r.left
	}
	return n
}

// ResetFaults clears random faults, pending FailNext rules and forced 429s.
func (s *Server) ResetFaults() {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.faults = Faults{}
	s.failNext = nil
	s.forced = map[string]forced429{}
}

// fault is what the pipeline should do to one request.
type fault struct {
	status     int  // answer this status without processing
	dropBefore bool // close without processing
	dropAfter  bool // process, then close without answering
}

// pickFaultLocked consumes a matching FailNext rule or draws random faults.
// authenticated means an endpoint that requires a key and got a valid one.
func (s *Server) pickFaultLocked(method, path string, authenticated, isCreate bool) fault {
	for i, r := range s.failNext {
		if (r.method != "" && r.method != method) || !strings.HasPrefix(path, r.pathPrefix) {
			continue
		}
		r.left--
		if r.left <= 0 {
			s.failNext = append(s.failNext[:i:i], s.failNext[i+1:]...)
		}
		switch r.mode {
		case FaultStatus500:
			return fault{status: http.StatusInternalServerError}
		case FaultStatus502:
			return fault{status: http.StatusBadGateway}
		case FaultStatus503:
			return fault{status: http.StatusServiceUnavailable}
		case FaultProcessThenDrop:
			return fault{dropAfter: true}
		case FaultDropBeforeProcessing:
			return fault{dropBefore: true}
		}
		return fault{}
	}
	f := s.faults
	if authenticated && f.ErrorRate > 0 && s.rng.Float64() < f.ErrorRate {
		codes := [...]int{http.StatusInternalServerError, http.StatusBadGateway, http.StatusServiceUnavailable}
		return fault{status: codes[s.rng.IntN(len(codes))]}
	}
	if isCreate && f.DropAfterPOSTRate > 0 && s.rng.Float64() < f.DropAfterPOSTRate {
		return fault{dropAfter: true}
	}
	return fault{}
}
