package heronapi

import (
	"context"
	"net/http"
	"testing"
	"time"
)

// Retry-After is honoured up to Heron's one-minute window in both of its forms;
// anything longer is a broken header, which must not stop every request to the
// environment (a 429 pauses them all) for hours or centuries.
func TestRetryAfterIsBounded(t *testing.T) {
	t.Parallel()
	now := time.Date(2026, 12, 6, 12, 0, 0, 0, time.UTC)
	date := func(t time.Time) string { return t.Format(http.TimeFormat) }
	tests := []struct {
		in   string
		want time.Duration
		ok   bool
	}{
		{"30", 30 * time.Second, true},
		{" 0 ", 0, true},
		{"60", time.Minute, true},
		{"61", time.Minute, true},
		{"86400", time.Minute, true},
		{"9223372036854775807", time.Minute, true},
		{"99999999999999999999999", time.Minute, true},
		{"-5", 0, false},
		{"-99999999999999999999999", 0, false},
		{"1e3", 0, false},
		{"soon", 0, false},
		{"", 0, false},
		{date(now.Add(20 * time.Second)), 20 * time.Second, true},
		{date(now.Add(-time.Hour)), 0, true},
		{date(now.Add(48 * time.Hour)), time.Minute, true},
		{"Fri, 31 Dec 9999 23:59:59 GMT", time.Minute, true},
		{"Mon, 01 Jan 0001 00:00:00 GMT", 0, true},
	}
	for _, tt := range tests {
		got, ok := parseRetryAfter(tt.in, now)
		if got != tt.want || ok != tt.ok {
			t.Errorf("Retry-After %q = %s, %v; want %s, %v", tt.in, got, ok, tt.want, tt.ok)
		}
	}
}

// The same bound on the way in: a 429 whose Retry-After names the year 9999
// pauses the environment's budget for a minute, and says so in the error.
func TestFarRetryAfterPausesTheBudgetAtMostAMinute(t *testing.T) {
	t.Parallel()
	f := newFake(t, func(w http.ResponseWriter, r *http.Request, _ int) {
		w.Header().Set("Retry-After", "Fri, 31 Dec 9999 23:59:59 GMT")
		heronError(w, 429, "500 per 1 minute")
	})
	l := NewLimiter(60000)
	c := newTestClient(t, f.URL(), func(c *Config) { c.Limiter, c.MaxRetries = l, 0 })
	err := c.Hello(context.Background())
	var ae *APIError
	if !asAPIError(err, &ae) || ae.StatusCode != 429 || ae.RetryAfter != time.Minute {
		t.Fatalf("want a 429 with RetryAfter 1m, got %v (%+v)", err, ae)
	}
	if d := l.pausedFor(); d > time.Minute || d <= 0 {
		t.Fatalf("paused for %s, want a pause of a minute at most", d)
	}
}

// X-RateLimit-* are used only when they make sense together; numbers out of
// their range are no information, never a pause (nor an overflow).
func TestRateLimitHeadersAreBounded(t *testing.T) {
	t.Parallel()
	now := time.Now()
	in := func(d time.Duration) string { return itoa64(now.Add(d).Unix()) }
	tests := []struct {
		name                    string
		limit, remaining, reset string
		pause                   bool
	}{
		{"low, as documented", "500", "0", in(time.Hour), true},
		{"remaining above the limit", "2", "3", in(30 * time.Second), false},
		{"limit zero", "0", "0", in(30 * time.Second), false},
		{"limit negative", "-500", "0", in(30 * time.Second), false},
		{"limit absurd", "9000000000", "1", in(30 * time.Second), false},
		{"remaining negative", "500", "-1", in(30 * time.Second), false},
		{"remaining beyond int64", "500", "99999999999999999999999", in(30 * time.Second), false},
		{"reset in the past", "500", "0", in(-30 * time.Second), false},
		{"reset near the end of int64", "500", "0", "9223372036854775807", true},
		{"reset beyond int64", "500", "0", "99999999999999999999999", false},
		{"reset negative", "500", "0", "-9223372036854775808", false},
		{"not numbers", "lots", "few", "later", false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			l := NewLimiter(250)
			h := http.Header{}
			h.Set("X-RateLimit-Limit", tt.limit)
			h.Set("X-RateLimit-Remaining", tt.remaining)
			h.Set("X-RateLimit-Reset", tt.reset)
			l.Observe(h)
			d := l.pausedFor()
			if !tt.pause && d > 0 {
				t.Fatalf("paused %s on headers that make no sense", d)
			}
			if tt.pause && (d <= 0 || d > maxObservedPause) {
				t.Fatalf("pause %s, want within (0, %s]", d, maxObservedPause)
			}
		})
	}
}

// A 503 whose Retry-After ends past the caller's deadline is answered now, as
// a 429's is, instead of sleeping out the caller's whole deadline for a retry
// that can never be sent.
func TestUnavailableWithRetryAfterPastTheDeadlineIsNotWaitedOut(t *testing.T) {
	t.Parallel()
	f := newFake(t, func(w http.ResponseWriter, r *http.Request, _ int) {
		w.Header().Set("Retry-After", "120")
		heronError(w, 503, "maintenance")
	})
	c := newTestClient(t, f.URL(), nil)
	// Long enough for a loaded machine to answer well within it; without the
	// rule the client would sleep through all of it.
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	err := c.Hello(ctx)
	var ae *APIError
	if !asAPIError(err, &ae) || ae.StatusCode != 503 || ae.RetryAfter != time.Minute {
		t.Fatalf("want the 503 itself (Retry-After 1m), got %v", err)
	}
	if n := len(f.requests()); n != 1 {
		t.Fatalf("%d requests, want 1", n)
	}
}
