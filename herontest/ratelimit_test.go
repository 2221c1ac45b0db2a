package herontest

// The emulator's rate limit (ratelimit.go): its headers, the sliding
// window, its settings and the most requests in one window.

import (
	"errors"
	"fmt"
	"strconv"
	"testing"
	"time"
)

func rateHeaders(t *testing.T, r result) (limit, remaining int, reset int64) {
	t.Helper()
	var err error
	var errs []error
	limit, err = strconv.Atoi(r.header.Get("X-RateLimit-Limit"))
	errs = append(errs, err)
	remaining, err = strconv.Atoi(r.header.Get("X-RateLimit-Remaining"))
	errs = append(errs, err)
	reset, err = strconv.ParseInt(r.header.Get("X-RateLimit-Reset"), 10, 64)
	errs = append(errs, err)
	if err := errors.Join(errs...); err != nil {
		t.Fatalf("rate limit headers %v: %v", r.header, err)
	}
	return
}

func TestRateLimit(t *testing.T) {
	f := newFixture(t, Options{RateLimitPerMinute: 5})
	start := f.clk.Now()
	wantReset := start.Add(time.Minute).Unix() + 1 // start has a fractional second: rounds up
	for i := range 5 {
		r := f.do(t, "GET", "/api/hello_world/authenticated", f.dev, nil)
		if r.status != 200 {
			t.Fatalf("request %d: %d", i+1, r.status)
		}
		limit, remaining, reset := rateHeaders(t, r)
		if limit != 5 || remaining != 4-i || reset != wantReset {
			t.Errorf("request %d: limit %d remaining %d reset %d, want 5 %d %d", i+1, limit, remaining, reset, 4-i, wantReset)
		}
		f.clk.Advance(time.Second)
	}

	t.Run("sixth is 429 and not processed", func(t *testing.T) {
		before := len(f.s.Keys())
		r := f.do(t, "POST", "/api/credentials/keys", f.dev, `{"name":"over budget"}`)
		if desc := wantError(t, r, 429); desc != "5 per 1 minute" {
			t.Errorf("description = %v", desc)
		}
		// Five seconds have passed since the oldest request; its slot frees in 55.
		if got := r.header.Get("Retry-After"); got != "55" {
			t.Errorf("Retry-After = %q, want 55", got)
		}
		if _, remaining, reset := rateHeaders(t, r); remaining != 0 || reset != wantReset {
			t.Errorf("remaining %d reset %d", remaining, reset)
		}
		if len(f.s.Keys()) != before {
			t.Error("a 429 created a key")
		}
	})
	t.Run("429s do not consume budget", func(t *testing.T) {
		for range 3 {
			wantError(t, f.do(t, "GET", "/api/credentials/keys", f.dev, nil), 429)
		}
		f.clk.Advance(55 * time.Second) // the first request leaves the window
		if r := f.do(t, "GET", "/api/hello_world/authenticated", f.dev, nil); r.status != 200 {
			t.Fatalf("after one slot freed: %d", r.status)
		}
		wantError(t, f.do(t, "GET", "/api/hello_world/authenticated", f.dev, nil), 429)
	})
	t.Run("other environments have their own budget", func(t *testing.T) {
		r := f.do(t, "GET", "/api/credentials/keys", f.prod, nil)
		if _, remaining, _ := rateHeaders(t, r); r.status != 200 || remaining != 4 {
			t.Errorf("production: %d remaining %d", r.status, remaining)
		}
	})
	t.Run("requests without a valid key are not limited", func(t *testing.T) {
		for range 10 {
			r := f.do(t, "GET", "/api/hello_world", "", nil)
			if r.status != 200 || r.header.Get("X-RateLimit-Limit") != "" {
				t.Fatalf("public: %d %v", r.status, r.header)
			}
			wantError(t, f.do(t, "GET", "/api/credentials/keys", NewKeyToken(), nil), 401)
		}
	})
	t.Run("every endpoint shares the budget", func(t *testing.T) {
		wantError(t, f.do(t, "GET", "/api/hello_world", f.dev, nil), 429)
		wantError(t, f.do(t, "GET", "/api/nope", f.dev, nil), 429)
	})
	t.Run("whole window later everything is free again", func(t *testing.T) {
		f.clk.Advance(time.Minute)
		r := f.do(t, "GET", "/api/hello_world/authenticated", f.dev, nil)
		if _, remaining, _ := rateHeaders(t, r); r.status != 200 || remaining != 4 {
			t.Errorf("%d remaining %d", r.status, remaining)
		}
	})
	if got := f.s.MaxInWindow("development", time.Minute); got < 9 {
		t.Errorf("MaxInWindow counts 429s too: got %d", got)
	}
}

func TestRateLimitSlidingWindow(t *testing.T) {
	f := newFixture(t, Options{RateLimitPerMinute: 5})
	hello := func() result { return f.do(t, "GET", "/api/hello_world/authenticated", f.dev, nil) }
	for range 3 {
		hello()
	}
	f.clk.Advance(30 * time.Second)
	hello()
	hello()
	// No boundary burst: at 59.5s all five are still inside the window.
	f.clk.Advance(29500 * time.Millisecond)
	r := hello()
	wantError(t, r, 429)
	if got := r.header.Get("Retry-After"); got != "1" {
		t.Errorf("Retry-After = %q, want 1 (0.5s rounded up)", got)
	}
	f.clk.Advance(500 * time.Millisecond)
	for i := range 3 {
		if r := hello(); r.status != 200 {
			t.Fatalf("slot %d after expiry: %d", i, r.status)
		}
	}
	wantError(t, hello(), 429)
}

func TestRateLimitSettings(t *testing.T) {
	t.Run("default 500", func(t *testing.T) {
		f := newFixture(t, Options{})
		if limit, _, _ := rateHeaders(t, f.do(t, "GET", "/api/credentials/keys", f.dev, nil)); limit != 500 {
			t.Errorf("limit = %d", limit)
		}
	})
	t.Run("unlimited", func(t *testing.T) {
		f := newFixture(t, Options{RateLimitPerMinute: -1})
		for range 20 {
			r := f.do(t, "GET", "/api/credentials/keys", f.dev, nil)
			if r.status != 200 || r.header.Get("X-RateLimit-Limit") != "" {
				t.Fatalf("%d %v", r.status, r.header)
			}
		}
	})
	t.Run("SetRateLimit lowers a live budget", func(t *testing.T) {
		f := newFixture(t, Options{RateLimitPerMinute: 10})
		for range 4 {
			f.do(t, "GET", "/api/credentials/keys", f.dev, nil)
		}
		f.s.SetRateLimit(3)
		r := f.do(t, "GET", "/api/credentials/keys", f.dev, nil)
		if desc := wantError(t, r, 429); desc != "3 per 1 minute" {
			t.Errorf("description %v", desc)
		}
		if got := r.header.Get("Retry-After"); got != "60" {
			t.Errorf("Retry-After = %q, want 60", got)
		}
	})
}

func TestMaxInWindow(t *testing.T) {
	f := newFixture(t, Options{RateLimitPerMinute: -1})
	send := func(n int, token string) {
		for range n {
			f.do(t, "GET", "/api/hello_world/authenticated", token, nil)
		}
	}
	send(3, f.dev)
	f.clk.Advance(40 * time.Second)
	send(4, f.dev)
	send(2, f.prod)
	f.clk.Advance(20 * time.Second) // exactly 60s after the first three: they have left
	send(2, f.dev)
	send(1, "") // unauthenticated: environment ""

	tests := []struct {
		env    string
		window time.Duration
		want   int
	}{
		{"development", time.Minute, 7},
		{"development", 60*time.Second + 1, 9},
		{"development", 20 * time.Second, 4},
		{"development", time.Nanosecond, 4},
		{"production", time.Minute, 2},
		{"", time.Minute, 9},
		{"staging", time.Minute, 0},
		{"development", 0, 0},
	}
	for _, tc := range tests {
		t.Run(fmt.Sprintf("%s/%v", tc.env, tc.window), func(t *testing.T) {
			if got := f.s.MaxInWindow(tc.env, tc.window); got != tc.want {
				t.Errorf("MaxInWindow = %d, want %d", got, tc.want)
			}
		})
	}
}
