package heronapi

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/time/rate"
)

func (l *Limiter) pausedFor() time.Duration {
	l.mu.Lock()
	defer l.mu.Unlock()
	return time.Until(l.pausedUntil)
}

func TestLimiterSpacesRequests(t *testing.T) {
	t.Parallel()
	f := newFake(t, func(w http.ResponseWriter, r *http.Request, _ int) {
		writeJSON(w, 200, map[string]any{"hello": "x"})
	})
	c := newTestClient(t, f.URL(), func(c *Config) { c.Limiter = NewLimiter(600) })
	start := time.Now()
	var wg sync.WaitGroup
	for range 12 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			noErr(t, c.Hello(context.Background()))
		}()
	}
	wg.Wait()
	// Burst 1 at 10/s: the first goes at once, the other 11 are 100ms apart.
	if el := time.Since(start); el < time.Second {
		t.Fatalf("12 requests at 600/min took only %s", el)
	}
	// The k-th slot is granted no sooner than start+k*100ms, and a request
	// arrives no sooner than its slot, so the k-th arrival is no sooner than
	// that either: a bound that scheduling delays under load cannot break
	// (they only make arrivals later), unlike the gap between two arrivals.
	reqs := f.requests()
	for i := range reqs {
		if earliest := start.Add(time.Duration(i)*100*time.Millisecond - 5*time.Millisecond); reqs[i].At.Before(earliest) {
			t.Errorf("request %d arrived %s after the start, before its slot at %s", i, reqs[i].At.Sub(start), time.Duration(i)*100*time.Millisecond)
		}
	}
}

func TestLimiterWaitDeadline(t *testing.T) {
	t.Parallel()
	l := NewLimiter(1)
	noErr(t, l.Wait(context.Background())) // spends the only token for a minute

	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	start := time.Now()
	err := l.Wait(ctx)
	if !errors.Is(err, ErrRateLimited) {
		t.Fatalf("want ErrRateLimited, got %v", err)
	}
	if el := time.Since(start); el > 40*time.Millisecond {
		t.Errorf("refusal should be immediate, took %s", el)
	}

	ctx, cancel2 := context.WithCancel(context.Background())
	cancel2()
	if err := l.Wait(ctx); !errors.Is(err, context.Canceled) || errors.Is(err, ErrRateLimited) {
		t.Fatalf("canceled ctx: want context.Canceled only, got %v", err)
	}

	// Canceled while queued for a token.
	ctx, cancel3 := context.WithCancel(context.Background())
	time.AfterFunc(20*time.Millisecond, cancel3)
	if err := l.Wait(ctx); !errors.Is(err, context.Canceled) {
		t.Fatalf("want context.Canceled, got %v", err)
	}
}

func TestLimiterPause(t *testing.T) {
	t.Parallel()
	l := NewLimiter(60000)
	l.PauseFor(time.Hour)
	l.PauseFor(time.Millisecond) // must not shorten
	if d := l.pausedFor(); d < 59*time.Minute {
		t.Fatalf("pause shortened to %s", d)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	if err := l.Wait(ctx); !errors.Is(err, ErrRateLimited) {
		t.Fatalf("paused past the deadline: want ErrRateLimited, got %v", err)
	}

	l2 := NewLimiter(60000)
	l2.PauseFor(150 * time.Millisecond)
	start := time.Now()
	noErr(t, l2.Wait(context.Background()))
	if el := time.Since(start); el < 140*time.Millisecond {
		t.Fatalf("pause not honoured: %s", el)
	}
	ctx, cancel = context.WithCancel(context.Background())
	l2.PauseFor(time.Hour)
	time.AfterFunc(20*time.Millisecond, cancel)
	if err := l2.Wait(ctx); !errors.Is(err, context.Canceled) {
		t.Fatalf("want context.Canceled during a pause, got %v", err)
	}
}

func TestLimiterObserve(t *testing.T) {
	t.Parallel()
	hdr := func(remaining, limit int, reset time.Time) http.Header {
		h := http.Header{}
		h.Set("X-RateLimit-Remaining", strconv.Itoa(remaining))
		h.Set("X-RateLimit-Limit", strconv.Itoa(limit))
		h.Set("X-RateLimit-Reset", strconv.FormatInt(reset.Unix(), 10))
		return h
	}
	now := time.Now()
	tests := []struct {
		name     string
		h        http.Header
		min, max time.Duration
	}{
		{"plenty left", hdr(400, 500, now.Add(30*time.Second)), 0, 0},
		{"10% left is still fine", hdr(50, 500, now.Add(30*time.Second)), 0, 0},
		{"low: spread the rest", hdr(9, 500, now.Add(11*time.Second)), 900 * time.Millisecond, 1100 * time.Millisecond},
		{"none left: wait for the reset", hdr(0, 500, now.Add(3*time.Second)), 1900 * time.Millisecond, 3 * time.Second},
		{"small limit, under 5", hdr(4, 20, now.Add(6*time.Second)), 900 * time.Millisecond, 1200 * time.Millisecond},
		{"reset in the past", hdr(0, 500, now.Add(-10*time.Second)), 0, 0},
		{"reset absurdly far", hdr(0, 500, now.Add(24*time.Hour)), 59 * time.Second, time.Minute},
		{"headers missing", http.Header{}, 0, 0},
		{"garbage", http.Header{"X-Ratelimit-Remaining": {"x"}}, 0, 0},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			l := NewLimiter(250)
			l.Observe(tt.h)
			d := l.pausedFor()
			if tt.max == 0 {
				if d > 0 {
					t.Fatalf("unexpected pause %s", d)
				}
				return
			}
			if d < tt.min || d > tt.max {
				t.Fatalf("pause %s outside [%s, %s]", d, tt.min, tt.max)
			}
		})
	}
}

func TestLimiterSetPerMinute(t *testing.T) {
	t.Parallel()
	l := NewLimiter(600)
	if l.bucket.Limit() != 10 || l.bucket.Burst() != 1 {
		t.Fatalf("limit %v burst %d", l.bucket.Limit(), l.bucket.Burst())
	}
	l.SetPerMinute(120)
	if l.bucket.Limit() != 2 {
		t.Fatalf("limit %v", l.bucket.Limit())
	}
	if NewLimiter(0).bucket.Limit() != rate.Limit(1.0/60) {
		t.Fatal("a zero budget must fail slow, not unlimited")
	}
}

// A 429 must hold back every request of the environment, not only the one retried.
func Test429PausesWholeEnvironment(t *testing.T) {
	t.Parallel()
	got429 := make(chan time.Time, 1)
	f := newFake(t, func(w http.ResponseWriter, r *http.Request, n int) {
		if n == 0 {
			w.Header().Set("Retry-After", "1")
			heronError(w, 429, "500 per 1 minute")
			got429 <- time.Now()
			return
		}
		if r.URL.Path == keysPath {
			writeJSON(w, 200, map[string]any{"keys": []any{}})
			return
		}
		writeJSON(w, 200, map[string]any{"hello": "x"})
	})
	l := NewLimiter(60000)
	a := newTestClient(t, f.URL(), func(c *Config) { c.Limiter = l })
	b := newTestClient(t, f.URL(), func(c *Config) { c.Limiter = l }) // another mount, same environment

	start := time.Now()
	errA := make(chan error, 1)
	go func() { _, err := a.ListKeys(context.Background()); errA <- err }()
	at := <-got429
	time.Sleep(50 * time.Millisecond) // let the client see the answer
	noErr(t, b.Hello(context.Background()))
	noErr(t, <-errA)

	if el := time.Since(start); el < 950*time.Millisecond {
		t.Fatalf("finished after %s, Retry-After was 1s", el)
	}
	reqs := f.requests()
	if len(reqs) != 3 {
		t.Fatalf("want 3 requests, got %v", f.seq())
	}
	for _, r := range reqs[1:] {
		if d := r.At.Sub(at); d < 950*time.Millisecond {
			t.Errorf("%s sent %s after the 429, want >= ~1s", r, d)
		}
	}
}

func TestClientLimiterRefusal(t *testing.T) {
	t.Parallel()
	f := newFake(t, func(w http.ResponseWriter, r *http.Request, _ int) { t.Error("request sent despite the limiter") })
	l := NewLimiter(60000)
	l.PauseFor(time.Hour)
	c := newTestClient(t, f.URL(), func(c *Config) { c.Limiter = l })
	ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
	defer cancel()
	start := time.Now()
	_, err := c.ListKeys(ctx)
	if !errors.Is(err, ErrRateLimited) {
		t.Fatalf("want ErrRateLimited, got %v", err)
	}
	contains(t, err.Error(), "heron: GET /api/credentials/keys: ")
	if el := time.Since(start); el > 100*time.Millisecond {
		t.Errorf("limiter refusal should not be retried or waited on, took %s", el)
	}
	_, err = c.CreateKey(ctx, "n")
	if !errors.Is(err, ErrRateLimited) || errors.Is(err, ErrOutcomeUnknown) {
		t.Fatalf("a POST that never left is not 'may exist': %v", err)
	}
}

func TestSharedLimiter(t *testing.T) {
	t.Parallel()
	const url = "https://shared-limiter-test.example"
	otherKey := "key_" + strings.Repeat("ab", 24)
	a := AcquireLimiter(url, testKey, "mount-a", 250)
	defer ReleaseLimiter(url, testKey, "mount-a")
	if b := AcquireLimiter(url, testKey, "mount-b", 250); b != a {
		t.Fatal("same (url, key) must share one limiter")
	}
	if b := AcquireLimiter("HTTPS://Shared-Limiter-Test.example:443/", testKey, "mount-c", 600); b != a {
		t.Fatal("spellings of the same base URL must share one limiter")
	}
	defer ReleaseLimiter(url, testKey, "mount-c")
	if a.bucket.Limit() != rate.Limit(250.0/60) {
		t.Fatalf("a larger budget of another holder must not raise the shared rate: %v", a.bucket.Limit())
	}
	ReleaseLimiter(url, testKey, "mount-b")
	if b := AcquireLimiter(url, otherKey, "mount-a", 250); b == a {
		t.Fatal("different keys must not share a limiter")
	}
	ReleaseLimiter(url, otherKey, "mount-a")
	if b := AcquireLimiter(url+"/other", testKey, "mount-a", 250); b == a {
		t.Fatal("different base URLs must not share a limiter")
	}
	ReleaseLimiter(url+"/other", testKey, "mount-a")

	sharedMu.Lock()
	defer sharedMu.Unlock()
	for k := range sharedLimiters {
		dump := fmt.Sprintf("%#v %v %x", k, k, k.keySum)
		for _, key := range []string{testKey, otherKey} {
			if strings.Contains(dump, key) || strings.Contains(dump, key[4:]) {
				t.Fatalf("registry holds a raw key: %s", dump)
			}
		}
	}
}

// TestSharedLimiterSmallestBudgetWins is issue 9 case 9: two mounts sharing
// an admin key with budgets 60 and 100000 run at 60 whichever built its client
// last; a one-off check changes nothing; the entry goes when both let go.
func TestSharedLimiterSmallestBudgetWins(t *testing.T) {
	const url = "https://smallest-budget.example"
	before := heldLimiterCount(time.Now().Add(idleLimiterTTL + time.Second))
	small := AcquireLimiter(url, testKey, "mount-small", 60)
	big := AcquireLimiter(url, testKey, "mount-big", 100000)
	if small != big || big.bucket.Limit() != 1 {
		t.Fatalf("want one limiter at 60/min, got %v", big.bucket.Limit())
	}
	// The small mount rebuilds its client (config rewrite): still the smallest.
	AcquireLimiter(url, testKey, "mount-small", 60)
	if big.bucket.Limit() != 1 {
		t.Fatalf("rate changed by a re-acquire: %v", big.bucket.Limit())
	}
	if p := PeekLimiter(url, testKey, 100000); p != big || big.bucket.Limit() != 1 {
		t.Fatal("a one-off check must use the shared limiter without changing its rate")
	}
	ReleaseLimiter(url, testKey, "mount-small")
	if big.bucket.Limit() != rate.Limit(100000.0/60) {
		t.Fatalf("after the small mount let go the rate is the remaining holder's: %v", big.bucket.Limit())
	}
	ReleaseLimiter(url, testKey, "mount-big")
	if again := AcquireLimiter(url, testKey, "mount-big", 100000); again != big {
		t.Fatal("a client rebuilt right after letting go keeps the budget (its pause and spent tokens)")
	}
	ReleaseLimiter(url, testKey, "mount-big")
	if got := heldLimiterCount(time.Now().Add(idleLimiterTTL + time.Second)); got != before {
		t.Fatalf("registry entries: %d, want %d (forgotten once unheld for a while)", got, before)
	}
	if p := PeekLimiter(url, testKey, 30); p == big || p.bucket.Limit() != rate.Limit(0.5) {
		t.Fatal("peeking a forgotten budget gives a private limiter at the asked rate")
	}
	if got := heldLimiterCount(time.Now()); got != before {
		t.Fatal("peeking must not register")
	}
}

func TestConcurrentLimiterUse(t *testing.T) {
	t.Parallel()
	// For -race: every Limiter method from many goroutines at once.
	l := AcquireLimiter("http://race.example", testKey, "race", 60000)
	defer ReleaseLimiter("http://race.example", testKey, "race")
	var wg sync.WaitGroup
	for i := range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			h := http.Header{"X-Ratelimit-Remaining": {"100"}, "X-Ratelimit-Limit": {"500"}, "X-Ratelimit-Reset": {"0"}}
			for range 20 {
				_ = l.Wait(context.Background())
				l.Observe(h)
				l.PauseFor(time.Microsecond)
				l.SetPerMinute(60000 + i)
				_ = AcquireLimiter("http://race.example", testKey, fmt.Sprint("race-", i), 60000)
				ReleaseLimiter("http://race.example", testKey, fmt.Sprint("race-", i))
			}
		}()
	}
	wg.Wait()
}
