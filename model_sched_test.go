package heron

// The deterministic scheduler behind TestModelConcurrent
// (model_concurrent_test.go): several actors (goroutines running one engine
// request, revocation or periodic pass each) park at a gate before every
// storage operation and every Heron call they make, and rapid picks which
// parked actor proceeds next. Run it with
//
//	go test -count=1 -run TestModelConcurrent -v .
//
// Why gates at these two places: every decision the engine makes is a read
// of storage or of Heron followed by a write to one of them, so any two
// actors' steps can be interleaved at exactly the points where a decision
// made on a stale read can land (spec, Invariants 7).
//
// Actors that block on an engine lock (a record's or config's lock, held by
// an actor parked at a gate) are not at a gate: the scheduler tells them from
// actors still running by their goroutine's state in runtime.Stack ("sync."
// or "semacquire": waiting on a Go sync primitive; or "select" in the list
// cache's listKeys: waiting for another actor's fetch), so the choice of the
// next actor does not depend on wall-clock timing. When no actor is at a gate and
// every unfinished actor waits on such a lock, nothing can ever proceed: the
// check fails with "deadlock or engine lock held across a gate".

import (
	"bytes"
	"context"
	"fmt"
	"runtime"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/hashicorp/vault/sdk/logical"
	"pgregory.net/rapid"

	"github.com/heron-vault/vault-plugin-secrets-heron/heronapi"
)

const (
	actorRunning = iota
	actorParked
	actorDone
)

// schedStuckAfter bounds how long the scheduler waits for a running actor
// that is neither at a gate nor waiting on a lock (an upstream call in
// flight, a busy loop) before it declares the check stuck.
const schedStuckAfter = 20 * time.Second

type schedActor struct {
	id      int
	name    string
	state   int
	label   string // the gate it is parked at
	release chan struct{}
	goid    string // its goroutine's id, for runtime.Stack
	gates   int
	// after: set by the driver before it releases the actor, run by the
	// gated operation once it returned (takes back a fault armed for that
	// operation alone that it did not use up).
	after func()
}

type actorKey struct{}

// sched runs one round of actors.
type sched struct {
	mu sync.Mutex
	// aborted: the round ended early (its check failed, or rapid ran out of
	// data while shrinking); gates let every actor through (abort).
	aborted bool
	actors  []*schedActor
	changed chan struct{} // a token whenever an actor parks or finishes
	trace   []string
}

func newSched() *sched { return &sched{changed: make(chan struct{}, 1)} }

func (s *sched) notify() {
	select {
	case s.changed <- struct{}{}:
	default:
	}
}

// gate parks the calling actor (found in ctx) until the driver releases it,
// and returns what the gated operation runs once it returned (see after).
// Calls from outside any actor (the model's own bookkeeping, Vault's expiry
// of leases between rounds) pass straight through.
func (s *sched) gate(ctx context.Context, label string) (done func()) {
	done = func() {}
	if s == nil || ctx == nil {
		return done
	}
	a, _ := ctx.Value(actorKey{}).(*schedActor)
	if a == nil {
		return done
	}
	s.mu.Lock()
	if s.aborted {
		s.mu.Unlock()
		return done
	}
	a.state, a.label = actorParked, label
	a.gates++
	s.mu.Unlock()
	s.notify()
	<-a.release
	s.mu.Lock()
	if a.after != nil {
		done, a.after = a.after, nil
	}
	s.mu.Unlock()
	return done
}

// abort ends a round that stopped early: every actor runs on to its end
// without gates, so that an engine lock a parked actor holds is released
// before the model closes the backend (which would wait on it for ever). It
// waits up to schedStuckAfter for them.
func (s *sched) abort() {
	s.mu.Lock()
	s.aborted = true
	for _, a := range s.actors {
		if a.state == actorParked {
			a.state = actorRunning
			select {
			case a.release <- struct{}{}:
			default:
			}
		}
	}
	s.mu.Unlock()
	for deadline := time.Now().Add(schedStuckAfter); time.Now().Before(deadline); time.Sleep(10 * time.Millisecond) {
		s.mu.Lock()
		done := true
		for _, a := range s.actors {
			done = done && a.state == actorDone
		}
		s.mu.Unlock()
		if done {
			return
		}
	}
}

// setAfter hands a, about to be released, what its gated operation runs
// once it returned.
func (s *sched) setAfter(a *schedActor, f func()) {
	s.mu.Lock()
	defer s.mu.Unlock()
	a.after = f
}

// spawn starts fn as a new actor; it runs until its first gate.
func (s *sched) spawn(name string, fn func(ctx context.Context)) {
	s.mu.Lock()
	a := &schedActor{id: len(s.actors), name: name, release: make(chan struct{}, 1)}
	s.actors = append(s.actors, a)
	s.mu.Unlock()
	ready := make(chan struct{})
	go func() {
		s.mu.Lock()
		a.goid = goroutineID()
		s.mu.Unlock()
		close(ready)
		defer func() {
			s.mu.Lock()
			a.state, a.label = actorDone, ""
			s.mu.Unlock()
			s.notify()
		}()
		fn(context.WithValue(context.Background(), actorKey{}, a))
	}()
	<-ready
}

func goroutineID() string {
	buf := make([]byte, 64)
	buf = buf[:runtime.Stack(buf, false)]
	f := strings.Fields(string(buf))
	if len(f) >= 2 {
		return f[1]
	}
	return ""
}

// lockWaiters returns the goroutine ids (among want) that wait on a Go sync
// primitive: an engine lock, a WaitGroup, a Cond.
func lockWaiters(want map[string]bool) map[string]bool {
	buf := make([]byte, 1<<20)
	for {
		n := runtime.Stack(buf, true)
		if n < len(buf) {
			buf = buf[:n]
			break
		}
		buf = make([]byte, 2*len(buf))
	}
	out := map[string]bool{}
	for _, g := range bytes.Split(buf, []byte("\n\n")) {
		line, _, _ := bytes.Cut(g, []byte("\n"))
		f := strings.Fields(string(line)) // goroutine 12 [sync.RWMutex.Lock, 2 minutes]:
		if len(f) < 3 || !want[f[1]] {
			continue
		}
		st := strings.TrimPrefix(strings.Join(f[2:], " "), "[")
		if strings.HasPrefix(st, "sync.") || strings.HasPrefix(st, "semacquire") {
			out[f[1]] = true
		}
		// A reader of the list cache waits on the fetch another actor is
		// making (list_cache.go, listKeys): a channel, not a lock, but as
		// much a wait on another actor. Taken for running, it kept the
		// round waiting until its request's deadline (10 s of wall clock)
		// while the fetching actor stayed parked at its gate.
		if strings.HasPrefix(st, "select") {
			if _, rest, ok := bytes.Cut(g, []byte("\n")); ok {
				if frame, _, _ := bytes.Cut(rest, []byte("\n")); bytes.Contains(frame, []byte(".(*heronBackend).listKeys(")) {
					out[f[1]] = true
				}
			}
		}
	}
	return out
}

// quiesce waits until every actor is parked, done, or waiting on a lock,
// and returns the parked ones (by id) and whether some actor is unfinished.
func (s *sched) quiesce() (parked []*schedActor, unfinished bool, stuck string) {
	deadline := time.Now().Add(schedStuckAfter)
	for {
		s.mu.Lock()
		parked = parked[:0]
		running := map[string]bool{}
		unfinished = false
		for _, a := range s.actors {
			switch a.state {
			case actorParked:
				parked = append(parked, a)
				unfinished = true
			case actorRunning:
				running[a.goid] = true
				unfinished = true
			}
		}
		s.mu.Unlock()
		if len(running) == 0 {
			return parked, unfinished, ""
		}
		// Most of the time the running actor reaches its next gate or ends
		// within microseconds; only look at stacks when it does not.
		select {
		case <-s.changed:
			continue
		case <-time.After(300 * time.Microsecond):
		}
		if len(lockWaiters(running)) == len(running) {
			// Check again after a moment: a goroutine just woken from a lock
			// may still show the lock's state.
			time.Sleep(200 * time.Microsecond)
			if len(lockWaiters(running)) == len(running) {
				s.mu.Lock()
				same := true
				for _, a := range s.actors {
					if a.state == actorRunning && !running[a.goid] {
						same = false
					}
				}
				s.mu.Unlock()
				if same {
					if len(parked) == 0 {
						// A true deadlock lasts: a lock held by a goroutine
						// that is no actor (the emulator, a logger) is let go
						// soon, though on a loaded machine not always within
						// the checks above. Only a state that outlasts
						// schedDeadlockAfter is one.
						if s.stillAllWaiting(running, schedDeadlockAfter) {
							return nil, true, "every unfinished actor waits on an engine lock and none is at a gate"
						}
						continue
					}
					return parked, true, ""
				}
			}
		}
		if time.Now().After(deadline) {
			return parked, true, fmt.Sprintf("an actor neither reached a gate nor finished within %s", schedStuckAfter)
		}
	}
}

// schedDeadlockAfter is how long every unfinished actor must wait on a lock,
// none at a gate, before the round is called deadlocked.
const schedDeadlockAfter = 2 * time.Second

// stillAllWaiting reports whether the running actors (by goroutine id) all
// wait on a lock, no actor changes state, for the whole of d.
func (s *sched) stillAllWaiting(running map[string]bool, d time.Duration) bool {
	end := time.Now().Add(d)
	for time.Now().Before(end) {
		select {
		case <-s.changed:
			s.notify() // the caller's loop sees it too
			return false
		case <-time.After(5 * time.Millisecond):
		}
		if len(lockWaiters(running)) != len(running) {
			return false
		}
	}
	return true
}

// run drives the round to its end: rapid draws which parked actor goes next.
// onRelease sees the actor and its gate just before it proceeds (the world
// is frozen then: every other actor is parked, done or waiting on a lock).
func (s *sched) run(t *rapid.T, onRelease func(a *schedActor)) {
	for {
		parked, unfinished, stuck := s.quiesce()
		if stuck != "" {
			s.mu.Lock()
			var states []string
			for _, a := range s.actors {
				states = append(states, fmt.Sprintf("%s: state %d at %q after %d gates", a.name, a.state, a.label, a.gates))
			}
			s.mu.Unlock()
			t.Logf("scheduler: %s; actors: %s", stuck, strings.Join(states, "; "))
			t.Fatalf("deadlock or engine lock held across a gate: %s", stuck)
		}
		if !unfinished {
			return
		}
		sort.Slice(parked, func(i, j int) bool { return parked[i].id < parked[j].id })
		a := parked[0]
		if len(parked) > 1 {
			a = parked[rapid.IntRange(0, len(parked)-1).Draw(t, "next")]
		}
		s.trace = append(s.trace, a.name+": "+a.label)
		if onRelease != nil {
			onRelease(a)
		}
		s.mu.Lock()
		a.state, a.label = actorRunning, ""
		s.mu.Unlock()
		a.release <- struct{}{}
	}
}

// gateStorage parks the actor before every storage operation.
type gateStorage struct {
	inner logical.Storage
	s     *sched
}

func (g *gateStorage) List(ctx context.Context, prefix string) ([]string, error) {
	defer g.s.gate(ctx, "storage list "+prefix)()
	return g.inner.List(ctx, prefix)
}

func (g *gateStorage) Get(ctx context.Context, key string) (*logical.StorageEntry, error) {
	defer g.s.gate(ctx, "storage get "+key)()
	return g.inner.Get(ctx, key)
}

func (g *gateStorage) Put(ctx context.Context, e *logical.StorageEntry) error {
	defer g.s.gate(ctx, "storage put "+e.Key)()
	return g.inner.Put(ctx, e)
}

func (g *gateStorage) Delete(ctx context.Context, key string) error {
	defer g.s.gate(ctx, "storage delete "+key)()
	return g.inner.Delete(ctx, key)
}

// gateAPI parks the actor before every Heron call of the engine's client.
type gateAPI struct {
	inner heronapi.API
	s     func() *sched
}

var (
	_ heronapi.API       = (*gateAPI)(nil)
	_ heronapi.KeyWalker = (*gateAPI)(nil)
)

func (g *gateAPI) CreateKey(ctx context.Context, name string) (*heronapi.Key, error) {
	defer g.s().gate(ctx, "heron create "+name)()
	return g.inner.CreateKey(ctx, name)
}

func (g *gateAPI) ListKeys(ctx context.Context) ([]heronapi.Key, error) {
	defer g.s().gate(ctx, "heron list")()
	return g.inner.ListKeys(ctx)
}

func (g *gateAPI) EachKey(ctx context.Context, fn func(heronapi.Key)) error {
	defer g.s().gate(ctx, "heron list")()
	return heronapi.EachKey(ctx, g.inner, fn)
}

func (g *gateAPI) DeactivateKey(ctx context.Context, id string) error {
	defer g.s().gate(ctx, "heron deactivate "+id)()
	return g.inner.DeactivateKey(ctx, id)
}

func (g *gateAPI) ActivateKey(ctx context.Context, id string) error {
	defer g.s().gate(ctx, "heron activate "+id)()
	return g.inner.ActivateKey(ctx, id)
}

func (g *gateAPI) DeleteKey(ctx context.Context, id string) error {
	defer g.s().gate(ctx, "heron delete "+id)()
	return g.inner.DeleteKey(ctx, id)
}

func (g *gateAPI) Hello(ctx context.Context) error {
	defer g.s().gate(ctx, "heron hello")()
	return g.inner.Hello(ctx)
}

func (g *gateAPI) ServerDate() time.Time { return g.inner.ServerDate() }

// CloseIdleConnections passes through where the client has it (the backend
// calls it on a client it swaps out).
func (g *gateAPI) CloseIdleConnections() {
	if c, ok := g.inner.(interface{ CloseIdleConnections() }); ok {
		c.CloseIdleConnections()
	}
}
