package heronapi

import (
	"context"
	"errors"
	"sync"
	"testing"
	"time"
)

// jumpClock is a Clock as the engine's model test runs one: virtual time
// that a sleeper moves straight to its slot, and deadlines read from the
// context on that time.
type jumpClock struct {
	mu sync.Mutex
	t  time.Time
}

type jumpDeadline struct{}

func (c *jumpClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

func (c *jumpClock) Sleep(ctx context.Context, until time.Time, wake <-chan struct{}) error {
	if until.IsZero() {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-wake:
			return nil
		}
	}
	c.mu.Lock()
	if until.After(c.t) {
		c.t = until
	}
	c.mu.Unlock()
	return nil
}

func (c *jumpClock) Deadline(ctx context.Context) (time.Time, bool) {
	dl, ok := ctx.Value(jumpDeadline{}).(time.Time)
	return dl, ok
}

// A limiter on a virtual clock (NewLimiterWithClock) compares its slots with
// the deadline as that clock reads it, not with the context's wall-clock
// deadline: years apart, that one would refuse (or grant) every slot.
func TestLimiterWithClockKeepsToTheClocksDeadline(t *testing.T) {
	c := &jumpClock{t: time.Date(2030, 1, 1, 0, 0, 0, 0, time.UTC)}
	t0 := c.Now()
	l := NewLimiterWithClock(12, c) // a slot every 5 s

	// A real deadline (the caller's own, as the engine's requests carry
	// one) and the same 10 s on the virtual clock.
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	ctx = context.WithValue(ctx, jumpDeadline{}, t0.Add(10*time.Second))

	for i, want := range []time.Duration{0, 5 * time.Second} {
		if err := l.Wait(ctx); err != nil {
			t.Fatalf("wait %d: %v", i, err)
		}
		if got := c.Now().Sub(t0); got != want {
			t.Fatalf("wait %d granted at +%s, want +%s", i, got, want)
		}
	}
	// The next slot (+10 s) is past the virtual deadline less its headroom.
	if err := l.Wait(ctx); !errors.Is(err, ErrRateLimited) {
		t.Fatalf("a slot past the virtual deadline: got %v, want ErrRateLimited", err)
	}
	if got := c.Now().Sub(t0); got != 5*time.Second {
		t.Fatalf("a refused wait moved the clock to +%s", got)
	}

	// Without a deadline on the clock, a wait goes however far: through a
	// pause, to the first slot after it.
	l.PauseFor(time.Minute)
	if err := l.Wait(context.Background()); err != nil {
		t.Fatal(err)
	}
	if got := c.Now().Sub(t0); got != 65*time.Second {
		t.Fatalf("granted at +%s after a minute's pause from +5s, want +65s", got)
	}
}
