package heronapi

import (
	"context"
	"errors"
	"sync"
	"testing"
	"time"
)

// stepClock is a clock the test moves by hand; nothing may sleep on it.
type stepClock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *stepClock) now() time.Time { c.mu.Lock(); defer c.mu.Unlock(); return c.t }

func (c *stepClock) add(d time.Duration) { c.mu.Lock(); c.t = c.t.Add(d); c.mu.Unlock() }

func (c *stepClock) sleep(context.Context, time.Time, <-chan struct{}) error {
	return errors.New("stepClock: a Wait had to sleep")
}

// sendEvery takes n slots of l, step apart (each must be free when asked).
func sendEvery(t *testing.T, c *stepClock, l *Limiter, n int, step time.Duration) {
	t.Helper()
	for i := range n {
		if i > 0 {
			c.add(step)
		}
		if err := l.Wait(context.Background()); err != nil {
			t.Fatalf("send %d: %v", i, err)
		}
	}
}

// nextSlot is when l would let the next request go.
func nextSlot(l *Limiter) time.Time {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.nextLocked(l.clock.now())
}

// Heron counts one budget per environment, whatever admin key spends it: a
// mount's environment whose budget changes name (an admin key set by hand is
// a budget of its own, shared with the mounts holding the same key) takes
// its last minute's requests and its pause along, so the sliding window
// holds across the change; following back and forth counts nothing twice.
func TestRegistry_FollowTakesTheRecordToTheNextBudget(t *testing.T) {
	c := &stepClock{t: time.Date(2030, 1, 1, 0, 0, 0, 0, time.UTC)}
	r := newRegistry(c)
	const url = "https://registry-carry.example"
	r.Follow("mount/env", url, "budget:old", 3)
	old := r.Acquire(url, "budget:old", "instance/env", "scope:instance/env", 3)
	sendEvery(t, c, old, 3, 20*time.Second) // 3 requests at 0, 20 and 40 s
	r.Release(url, "budget:old", "instance/env")

	r.Follow("mount/env", url, "budget:new", 3)
	fresh := r.Acquire(url, "budget:new", "instance/env", "scope:instance/env", 3)
	if fresh == old {
		t.Fatal("another identity is another budget")
	}
	if next, want := nextSlot(fresh), c.now().Add(20*time.Second); next.Before(want) {
		t.Fatalf("the new budget's next slot is %s after the last request; the window of 3 at 0..40 s keeps it until 60 s",
			next.Sub(c.now()))
	}
	// Back and forth: each grant counted once.
	r.Follow("mount/env", url, "budget:old", 3)
	r.Follow("mount/env", url, "budget:new", 3)
	fresh.mu.Lock()
	n := len(fresh.sent)
	fresh.mu.Unlock()
	if n != 3 {
		t.Fatalf("the new budget counts %d grants for the 3 sent", n)
	}

	// A pause (429) goes along too, to a budget another mount holds already.
	r.Follow("mount/env2", url, "budget:a", 600)
	a := r.Acquire(url, "budget:a", "instance/env2", "scope:instance/env2", 600)
	a.PauseFor(45 * time.Second)
	other := r.Acquire(url, "budget:b", "other-mount/env", "scope:other-mount/env", 600)
	r.Follow("mount/env2", url, "budget:b", 600)
	if next := nextSlot(other); next.Before(c.now().Add(45 * time.Second)) {
		t.Fatalf("the pause was left behind: next slot in %s", next.Sub(c.now()))
	}
	// Another scope's budgets are not its.
	r.Follow("mount/env3", url, "budget:c", 3)
	if next := nextSlot(r.Peek(url, "budget:c", 3)); next.After(c.now()) {
		t.Fatal("a scope took a record that was not its own")
	}
}

// A config check (verify) claims nothing, so a failed write changes no
// budget's rate; its request still goes to the environment: the engine
// follows the checked budget before the check and the stored one after, so
// the check waits out the environment's pause and a 429 it meets pauses the
// environment. A check of a config nobody holds yet is remembered unheld,
// so that the next attempt waits out the same 429.
func TestRegistry_ChecksCountInTheEnvironmentsBudget(t *testing.T) {
	c := &stepClock{t: time.Date(2030, 1, 1, 0, 0, 0, 0, time.UTC)}
	r := newRegistry(c)
	const url = "https://registry-peek.example"
	r.Follow("mount/env", url, "budget:current", 60)
	cur := r.Acquire(url, "budget:current", "instance/env", "scope:instance/env", 60)
	cur.PauseFor(20 * time.Second) // an issuance met a 429
	r.Follow("mount/env", url, "budget:candidate", 1000)
	check := r.Peek(url, "budget:candidate", 1000)
	if check == cur || cur.PerMinute() != 60 {
		t.Fatal("the check spends the candidate's budget, the current one's rate untouched")
	}
	if next := nextSlot(check); next.Before(c.now().Add(20 * time.Second)) {
		t.Fatal("the check does not wait out the environment's pause")
	}
	check.PauseFor(45 * time.Second) // and meets a 429 itself
	r.Follow("mount/env", url, "budget:current", 60)
	if next := nextSlot(cur); next.Before(c.now().Add(45 * time.Second)) {
		t.Fatal("the environment's budget forgot the check's 429")
	}

	first := r.Peek(url, "budget:brand-new", 60)
	first.PauseFor(30 * time.Second) // the check of a new config met a 429
	if second := r.Peek(url, "budget:brand-new", 60); second != first {
		t.Fatal("the next check of the same config forgot the 429's pause")
	}
	held := r.Acquire(url, "budget:brand-new", "instance/other", "scope:instance/other", 60)
	if next := nextSlot(held); held != first || next.Before(c.now().Add(30*time.Second)) {
		t.Fatal("the config stored after the check lost the pause")
	}
}

// A request that counts in two budgets of one environment (a config check
// of a new admin key while the stored config spends the old one) waits for
// a slot in each and is recorded in each; a 429's pause reaches both.
func TestJointLimiter_RecordsInEachBudget(t *testing.T) {
	c := &stepClock{t: time.Date(2030, 1, 1, 0, 0, 0, 0, time.UTC)}
	r := newRegistry(c)
	const url = "https://joint.example"
	stored := r.Acquire(url, "budget:stored", "instance/env", "mount/env", 3)
	checked := r.Peek(url, "budget:checked", 3)
	joint := JointLimiter(stored, checked)
	if err := joint.Wait(context.Background()); err != nil {
		t.Fatal(err)
	}
	for _, l := range []*Limiter{stored, checked} {
		l.mu.Lock()
		n := len(l.sent)
		l.mu.Unlock()
		if n != 1 {
			t.Fatalf("a budget recorded %d grants for the one request", n)
		}
	}
	joint.PauseFor(30 * time.Second)
	for _, l := range []*Limiter{stored, checked} {
		if next := nextSlot(l); next.Before(c.now().Add(30 * time.Second)) {
			t.Fatal("the pause missed a budget")
		}
	}
	if JointLimiter(stored, stored) != stored || JointLimiter(nil, checked) != checked {
		t.Fatal("a joint of one budget is that budget")
	}
}
