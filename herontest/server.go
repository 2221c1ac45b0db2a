package herontest

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"log"
	mrand "math/rand/v2"
	"net"
	"net/http"
	"regexp"
	"strings"
	"sync"
	"time"
)

// DefaultRateLimitPerMinute is Heron's documented default budget per environment.
const DefaultRateLimitPerMinute = 500

// rateWindow is Heron's sliding window ("per 1 minute"). Tests move the
// injectable clock rather than shrinking it, so the emulator is tested as shipped.
const rateWindow = time.Minute

// Options configures a Server.
type Options struct {
	// Environments maps an environment name (e.g. "development") to the admin keys
	// seeded in it (full tokens "key_"+48 lowercase hex). Each seeded key is a real,
	// active key of that environment: it appears in the list and can create, list,
	// deactivate, activate and delete keys.
	Environments map[string][]string
	// RateLimitPerMinute is the budget per environment over a sliding 60s window;
	// 0 means Heron's default of 500, a negative value disables limiting.
	RateLimitPerMinute int
	// RateLimitPerUserPerMinute is an optional second budget per user (see
	// AddUser) over the same sliding window; 0 or negative (the default) means no
	// per-user limit. When both apply, a request needs room in both, and the
	// X-RateLimit-* headers describe the one with less room (see the package doc).
	RateLimitPerUserPerMinute int
	// Logger, if set, gets one line per request (never a full token).
	Logger *log.Logger
	// Control mounts ControlHandler under /_emulator/ on Handler. It is off by
	// default so that the emulator's public surface is exactly Heron's.
	Control bool
}

// Server is a running (or ready to run) Heron emulator.
type Server struct {
	// URL is the base URL, e.g. "http://127.0.0.1:54321", once started.
	URL string

	logger  *log.Logger
	control bool
	// now is the clock for everything the API exposes or limits on; tests in this
	// package replace it before serving so that window expiry needs no sleeping.
	now func() time.Time

	mu        sync.Mutex
	keys      []*KeyRecord
	byID      map[string]*KeyRecord
	byToken   map[string]*KeyRecord
	envs      map[string]bool
	limit     int                    // <0 unlimited
	userLimit int                    // <0 no per-user limit
	hits      map[string][]time.Time // per env: admitted requests inside the window, oldest first
	userHits  map[userKey][]time.Time
	nextUser  int // AddUser counter
	forced    map[string]forced429
	requests  []*RequestRecord
	faults    Faults
	rng       *mrand.Rand
	failNext  []*failRule
	delayNext []*failRule

	lifeMu   sync.Mutex
	httpSrv  *http.Server
	started  bool
	closing  bool
	closed   chan struct{} // aborts injected latency on Close
	inflight sync.WaitGroup
	// late holds the scheduled late actions (FailNextLate) whose timers have not
	// fired; lateLeft counts those plus the ones running. Both under lifeMu.
	late     map[*lateAction]struct{}
	lateLeft int
	lateSeq  uint64
}

// userKey names one user: user ids are only unique within an environment.
type userKey struct{ env, user string }

var tokenRE = regexp.MustCompile(`^key_[0-9a-f]{48}$`)

// ValidToken reports whether s has the shape of a Heron key: "key_" + 48 lowercase hex.
func ValidToken(s string) bool { return tokenRE.MatchString(s) }

// NewKeyToken returns a random token in Heron's format, for seeding Options.Environments.
func NewKeyToken() string {
	var b [24]byte
	if _, err := rand.Read(b[:]); err != nil {
		panic(err)
	}
	return "key_" + hex.EncodeToString(b[:])
}

func newHeronID() string {
	var b [16]byte
	if _, err := rand.Read(b[:]); err != nil {
		panic(err)
	}
	// Heron documents heron_id only as an opaque string; a UUIDv4 keeps it
	// visibly different from a token so that a client mixing the two up fails.
	b[6] = b[6]&0x0f | 0x40
	b[8] = b[8]&0x3f | 0x80
	h := hex.EncodeToString(b[:])
	return h[0:8] + "-" + h[8:12] + "-" + h[12:16] + "-" + h[16:20] + "-" + h[20:32]
}

// NewServer returns a started Server listening on 127.0.0.1 on a random port.
// It panics if opts seeds a malformed or duplicate token, as httptest does on setup errors.
func NewServer(opts Options) *Server {
	s := NewUnstartedServer(opts)
	s.Start()
	return s
}

// NewUnstartedServer returns a Server whose Handler is ready but which is not
// listening; call Start or StartOn, or mount Handler elsewhere.
func NewUnstartedServer(opts Options) *Server {
	s := &Server{
		logger:   opts.Logger,
		control:  opts.Control,
		now:      time.Now,
		byID:     map[string]*KeyRecord{},
		byToken:  map[string]*KeyRecord{},
		envs:     map[string]bool{},
		hits:     map[string][]time.Time{},
		userHits: map[userKey][]time.Time{},
		late:     map[*lateAction]struct{}{},
		forced:   map[string]forced429{},
		closed:   make(chan struct{}),
	}
	s.limit = normLimit(opts.RateLimitPerMinute)
	s.userLimit = normUserLimit(opts.RateLimitPerUserPerMinute)
	s.rng = newRand(0)
	for env, tokens := range opts.Environments {
		if env == "" {
			panic("herontest: empty environment name")
		}
		s.envs[env] = true
		for _, tok := range tokens {
			if !ValidToken(tok) {
				panic(fmt.Sprintf("herontest: seeded key for %q is not key_+48 lowercase hex", env))
			}
			if _, dup := s.byToken[tok]; dup {
				panic(fmt.Sprintf("herontest: seeded key %s... given twice", tok[:8]))
			}
			s.addKeyLocked(env, DefaultUser, "seeded admin key", tok, "")
		}
	}
	return s
}

func normLimit(n int) int {
	switch {
	case n == 0:
		return DefaultRateLimitPerMinute
	case n < 0:
		return -1
	}
	return n
}

func normUserLimit(n int) int {
	if n <= 0 {
		return -1
	}
	return n
}

// Start starts listening on 127.0.0.1:0. It panics on failure.
func (s *Server) Start() {
	if err := s.StartOn("127.0.0.1:0"); err != nil {
		panic("herontest: " + err.Error())
	}
}

// StartOn starts listening on addr ("host:port"; port 0 picks one) and sets URL.
func (s *Server) StartOn(addr string) error {
	s.lifeMu.Lock()
	defer s.lifeMu.Unlock()
	if s.started {
		return errors.New("server already started")
	}
	if s.closing {
		return errors.New("server closed")
	}
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return err
	}
	s.started = true
	s.httpSrv = &http.Server{
		Handler:           s.Handler(),
		ReadHeaderTimeout: 10 * time.Second,
		ErrorLog:          s.logger,
	}
	s.URL = "http://" + ln.Addr().String()
	go func() { _ = s.httpSrv.Serve(ln) }()
	return nil
}

// Close closes the listener and every connection at once, aborts injected
// latency, drops the late actions (FailNextLate) not yet started, and waits for
// in-flight handlers and running late actions to return. A late action that
// would be scheduled after Close began is dropped too: nothing runs after Close.
func (s *Server) Close() {
	s.lifeMu.Lock()
	if s.closing {
		s.lifeMu.Unlock()
		return
	}
	s.closing = true
	srv := s.httpSrv
	for a := range s.late {
		// A timer that already fired finds closing set and returns at once.
		a.timer.Stop()
		delete(s.late, a)
		s.lateLeft--
	}
	s.lifeMu.Unlock()
	if srv != nil {
		_ = srv.Close()
	}
	// After srv.Close, so that aborted requests find their connection gone; the
	// channel still matters when Handler is mounted on someone else's server.
	close(s.closed)
	s.inflight.Wait()
}

// Shutdown stops accepting connections and waits, until ctx is done, for
// in-flight requests (including injected latency) to complete; then it closes,
// which drops late actions (FailNextLate) not yet started: call FlushLate first
// to have them happen.
func (s *Server) Shutdown(ctx context.Context) error {
	s.lifeMu.Lock()
	srv := s.httpSrv
	s.lifeMu.Unlock()
	var err error
	if srv != nil {
		err = srv.Shutdown(ctx)
	}
	s.Close()
	return err
}

// enter registers an in-flight request unless the server is closing; the lock
// makes every Add happen before Close's Wait, as sync.WaitGroup requires.
func (s *Server) enter() bool {
	s.lifeMu.Lock()
	defer s.lifeMu.Unlock()
	if s.closing {
		return false
	}
	s.inflight.Add(1)
	return true
}

// Handler returns the emulator's HTTP handler: Heron's API, plus /_emulator/
// when Options.Control is set.
func (s *Server) Handler() http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if s.control && strings.HasPrefix(r.URL.Path, controlPrefix) {
			s.ControlHandler().ServeHTTP(w, r)
			return
		}
		s.serveAPI(w, r)
	})
}

// SetUserRateLimit changes the per-user budget while serving (see
// Options.RateLimitPerUserPerMinute); 0 or negative turns it off. Requests
// already in a user's window keep counting.
func (s *Server) SetUserRateLimit(perMinute int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.userLimit = normUserLimit(perMinute)
}

// UserRateLimit returns the current per-user budget (-1 when off).
func (s *Server) UserRateLimit() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.userLimit
}

// SetRateLimit changes the per-environment budget while serving; 0 -> 500,
// negative -> unlimited. Requests already in the window keep counting.
func (s *Server) SetRateLimit(perMinute int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.limit = normLimit(perMinute)
}

// RateLimit returns the current per-environment budget (-1 when unlimited).
func (s *Server) RateLimit() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.limit
}

func (s *Server) logf(format string, args ...any) {
	if s.logger != nil {
		s.logger.Printf(format, args...)
	}
}
