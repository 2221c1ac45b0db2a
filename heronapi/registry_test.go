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
// mount whose environment moves to another budget (an admin key set by hand
// is a budget of its own, shared with the mounts holding the same key) brings
// its last minute's requests and its pause along, so the sliding window holds
// across the change.
func TestRegistry_HolderTakesItsRecordToItsNextBudget(t *testing.T) {
	c := &stepClock{t: time.Date(2030, 1, 1, 0, 0, 0, 0, time.UTC)}
	r := newRegistry(c)
	const url = "https://registry-carry.example"
	old := r.Acquire(url, "budget:old", "mount/env", 3)
	sendEvery(t, c, old, 3, 20*time.Second) // 3 requests at 0, 20 and 40 s
	r.Release(url, "budget:old", "mount/env")

	fresh := r.Acquire(url, "budget:new", "mount/env", 3)
	if fresh == old {
		t.Fatal("another identity is another budget")
	}
	if next, want := nextSlot(fresh), c.now().Add(20*time.Second); next.Before(want) {
		t.Fatalf("the new budget's next slot is %s after the last request; the window of 3 at 0..40 s keeps it until 60 s",
			next.Sub(c.now()))
	}

	// A pause (429) goes along too.
	old2 := r.Acquire(url, "budget:a", "mount/env2", 600)
	old2.PauseFor(45 * time.Second)
	r.Release(url, "budget:a", "mount/env2")
	other := r.Acquire(url, "budget:b", "mount/env2", 600)
	if next := nextSlot(other); next.Before(c.now().Add(45 * time.Second)) {
		t.Fatalf("the pause was left behind: next slot in %s", next.Sub(c.now()))
	}
	// A holder acquiring its own budget again takes nothing twice.
	again := r.Acquire(url, "budget:b", "mount/env2", 600)
	again.mu.Lock()
	n := len(again.sent)
	again.mu.Unlock()
	if again != other || n != 0 {
		t.Fatalf("re-acquiring the same budget changed its record (%d sends)", n)
	}
}

// A config check (verify) claims nothing, so a failed write changes no
// budget's rate; its request still goes to the environment: it spends the
// environment's budget when the check is of a new key for it, and a 429 it
// meets pauses that budget. A check of a config nobody holds yet is
// remembered unheld, so that the next attempt waits out the same 429.
func TestRegistry_PeekSpendsTheEnvironmentsBudget(t *testing.T) {
	c := &stepClock{t: time.Date(2030, 1, 1, 0, 0, 0, 0, time.UTC)}
	r := newRegistry(c)
	const url = "https://registry-peek.example"
	cur := r.Acquire(url, "budget:current", "mount/env", 60)
	if p := r.Peek(url, "budget:candidate", "mount/env", 1000); p != cur || cur.PerMinute() != 60 {
		t.Fatal("a check of a new key for a held environment spends that environment's budget, its rate untouched")
	}

	first := r.Peek(url, "budget:brand-new", "mount/other", 60)
	first.PauseFor(30 * time.Second) // the check met a 429
	if second := r.Peek(url, "budget:brand-new", "mount/other", 60); second != first {
		t.Fatal("the next check of the same config forgot the 429's pause")
	}
	held := r.Acquire(url, "budget:brand-new", "mount/other", 60)
	if next := nextSlot(held); held != first || next.Before(c.now().Add(30*time.Second)) {
		t.Fatal("the config stored after the check lost the pause")
	}
}
