package herontest

// The emulator's injected faults (faults.go): FailNext statuses, drops
// before and after processing, random faults and forced 429s.

import (
	"errors"
	"fmt"
	"io"
	"strings"
	"syscall"
	"testing"
	"time"
)

func isDropped(err error) bool {
	return errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) || errors.Is(err, syscall.ECONNRESET)
}

func TestFailNextStatus(t *testing.T) {
	for _, tc := range []struct {
		mode FaultMode
		want int
	}{
		{FaultStatus500, 500}, {FaultStatus502, 502}, {FaultStatus503, 503},
	} {
		t.Run(tc.mode.String(), func(t *testing.T) {
			f := newFixture(t, Options{})
			f.s.FailNext("POST", "/api/credentials/keys", 2, tc.mode)
			before := len(f.s.Keys())
			// Rules only match requests that pass auth, so a 401 leaves them armed.
			wantError(t, f.do(t, "POST", "/api/credentials/keys", "", `{"name":"x"}`), 401)
			// And only the matching method.
			f.list(t, f.dev)
			for range 2 {
				r := f.do(t, "POST", "/api/credentials/keys", f.dev, `{"name":"x"}`)
				wantError(t, r, tc.want)
				if r.header.Get("X-RateLimit-Limit") == "" {
					t.Error("injected error lacks rate limit headers")
				}
			}
			if len(f.s.Keys()) != before {
				t.Fatal("an injected error created a key")
			}
			if f.s.PendingFailNext() != 0 {
				t.Error("rule not used up")
			}
			f.create(t, f.dev, "x")
			reqs := f.s.Requests()
			if !reqs[2].Injected || reqs[2].Status != tc.want || reqs[len(reqs)-1].Injected {
				t.Errorf("records = %+v", reqs)
			}
		})
	}
}

func TestCancelFailNextTakesBackTheLatestUnusedRule(t *testing.T) {
	f := newFixture(t, Options{})
	f.s.FailNext("POST", "/api/credentials/keys", 1, FaultStatus500)
	f.s.FailNext("POST", "/api/credentials/keys", 1, FaultStatus502)
	f.s.FailNext("POST", "/api/credentials/keys", 1, FaultStatus500)
	if f.s.CancelFailNext("POST", "/api/credentials/keys", FaultStatus503) || f.s.CancelFailNext("GET", "/api/credentials/keys", FaultStatus500) {
		t.Fatal("cancelled a rule that was never armed")
	}
	if !f.s.CancelFailNext("POST", "/api/credentials/keys", FaultStatus500) {
		t.Fatal("the armed rule was not cancelled")
	}
	if f.s.PendingFailNext() != 2 {
		t.Fatalf("pending = %d, want 2", f.s.PendingFailNext())
	}
	// The first 500 and the 502 are left, in their order.
	wantError(t, f.do(t, "POST", "/api/credentials/keys", f.dev, `{"name":"x"}`), 500)
	wantError(t, f.do(t, "POST", "/api/credentials/keys", f.dev, `{"name":"x"}`), 502)
	f.create(t, f.dev, "x")
	if f.s.CancelFailNext("POST", "/api/credentials/keys", FaultStatus500) {
		t.Fatal("cancelled a rule already used up")
	}
}

func TestFaultProcessThenDrop(t *testing.T) {
	f := newFixture(t, Options{})
	f.s.FailNext("POST", "/api/credentials/keys", 1, FaultProcessThenDrop)
	before := len(f.s.Keys())
	_, err := f.try("POST", "/api/credentials/keys", f.dev, `{"name":"lost-response"}`, nil)
	if err == nil || !isDropped(err) {
		t.Fatalf("err = %v, want a dropped connection", err)
	}
	keys := f.s.Keys()
	if len(keys) != before+1 || keys[len(keys)-1].Name != "lost-response" || !keys[len(keys)-1].IsActive {
		t.Fatalf("the key should have been created: %+v", keys)
	}
	reqs := f.s.Requests()
	if last := reqs[len(reqs)-1]; !last.Dropped || !last.Injected || last.Status != 0 {
		t.Errorf("record = %+v", last)
	}
	// The client's reconciliation path: the key is listed and can be deleted.
	found := false
	for _, k := range f.list(t, f.dev) {
		found = found || k.Name == "lost-response"
	}
	if !found {
		t.Error("dropped-but-created key not listed")
	}

	t.Run("any method", func(t *testing.T) {
		k := f.create(t, f.dev, "victim")
		f.s.FailNext("DELETE", "", 1, FaultProcessThenDrop)
		if _, err := f.try("DELETE", "/api/credentials/keys/"+k.HeronID, f.dev, nil, nil); !isDropped(err) {
			t.Fatalf("err = %v", err)
		}
		if rec, _ := f.s.Key(k.HeronID); !rec.Deleted {
			t.Error("DELETE was not processed")
		}
	})
}

func TestFaultDropBeforeProcessing(t *testing.T) {
	f := newFixture(t, Options{})
	f.s.FailNext("", "/api/credentials/keys", 1, FaultDropBeforeProcessing)
	before := len(f.s.Keys())
	if _, err := f.try("POST", "/api/credentials/keys", f.dev, `{"name":"never"}`, nil); !isDropped(err) {
		t.Fatalf("err = %v", err)
	}
	if len(f.s.Keys()) != before {
		t.Error("a drop-before-processing created a key")
	}
	if rec, _ := f.s.KeyByToken(f.dev); rec.LastUsed != nil {
		t.Error("an unprocessed request updated last_used")
	}
}

func TestRandomFaults(t *testing.T) {
	t.Run("error rate 1 fails every authenticated request", func(t *testing.T) {
		f := newFixture(t, Options{})
		f.s.SetFaults(Faults{ErrorRate: 1, Seed: 7})
		seen := map[int]bool{}
		for range 30 {
			r := f.do(t, "POST", "/api/credentials/keys", f.dev, `{"name":"x"}`)
			wantError(t, r, r.status)
			seen[r.status] = true
		}
		if len(seen) != 3 || !seen[500] || !seen[502] || !seen[503] {
			t.Errorf("statuses seen: %v", seen)
		}
		if len(f.s.Keys()) != 2 {
			t.Error("failed requests created keys")
		}
		if r := f.do(t, "GET", "/api/hello_world", "", nil); r.status != 200 {
			t.Errorf("public endpoint affected: %d", r.status)
		}
		wantError(t, f.do(t, "GET", "/api/credentials/keys", "", nil), 401)
	})
	t.Run("seeded choices repeat", func(t *testing.T) {
		run := func() string {
			f := newFixture(t, Options{})
			f.s.SetFaults(Faults{ErrorRate: 0.5, Seed: 42})
			var b strings.Builder
			for range 20 {
				fmt.Fprint(&b, f.do(t, "GET", "/api/credentials/keys", f.dev, nil).status, " ")
			}
			return b.String()
		}
		if a, b := run(), run(); a != b {
			t.Errorf("same seed, different faults:\n%s\n%s", a, b)
		}
	})
	t.Run("drop after POST rate 1", func(t *testing.T) {
		f := newFixture(t, Options{})
		f.s.SetFaults(Faults{DropAfterPOSTRate: 1})
		if _, err := f.try("POST", "/api/credentials/keys", f.dev, `{"name":"lost"}`, nil); !isDropped(err) {
			t.Fatalf("err = %v", err)
		}
		if n := len(f.s.LiveKeys("development")); n != 2 {
			t.Errorf("LiveKeys = %d, want 2", n)
		}
		// Other requests are untouched.
		f.list(t, f.dev)
		f.s.SetFaults(Faults{})
		f.create(t, f.dev, "fine")
	})
	t.Run("latency", func(t *testing.T) {
		f := newFixture(t, Options{})
		f.s.SetFaults(Faults{Latency: 80 * time.Millisecond})
		start := time.Now()
		f.do(t, "GET", "/api/hello_world", "", nil)
		if el := time.Since(start); el < 80*time.Millisecond {
			t.Errorf("answered after %v", el)
		}
		if got := f.s.CurrentFaults().Latency; got != 80*time.Millisecond {
			t.Errorf("CurrentFaults = %v", got)
		}
	})
}

func TestForce429(t *testing.T) {
	f := newFixture(t, Options{RateLimitPerMinute: 5})
	f.s.Force429("development", 10*time.Second, 1500*time.Millisecond)
	before := len(f.s.Keys())
	r := f.do(t, "POST", "/api/credentials/keys", f.dev, `{"name":"x"}`)
	if desc := wantError(t, r, 429); desc != "5 per 1 minute" {
		t.Errorf("description %v", desc)
	}
	if got := r.header.Get("Retry-After"); got != "2" {
		t.Errorf("Retry-After = %q, want 2", got)
	}
	if _, remaining, _ := rateHeaders(t, r); remaining != 0 {
		t.Errorf("remaining = %d", remaining)
	}
	if len(f.s.Keys()) != before {
		t.Error("forced 429 created a key")
	}
	if r := f.do(t, "GET", "/api/credentials/keys", f.prod, nil); r.status != 200 {
		t.Errorf("production affected: %d", r.status)
	}
	wantError(t, f.do(t, "GET", "/api/credentials/keys", "", nil), 401)
	if reqs := f.s.Requests(); !reqs[0].Injected {
		t.Errorf("forced 429 not marked injected: %+v", reqs[0])
	}

	f.clk.Advance(10 * time.Second)
	r = f.do(t, "GET", "/api/credentials/keys", f.dev, nil)
	if _, remaining, _ := rateHeaders(t, r); r.status != 200 || remaining != 4 {
		t.Errorf("after expiry: %d, remaining %d (forced 429s must not consume budget)", r.status, remaining)
	}

	f.s.Force429("", time.Minute, 0)
	for _, tok := range []string{f.dev, f.prod} {
		r := f.do(t, "GET", "/api/credentials/keys", tok, nil)
		wantError(t, r, 429)
		if got := r.header.Get("Retry-After"); got != "1" {
			t.Errorf("Retry-After = %q, want at least 1", got)
		}
	}
	f.s.Force429("", 0, 0)
	if r := f.do(t, "GET", "/api/credentials/keys", f.prod, nil); r.status != 200 {
		t.Errorf("lifting failed: %d", r.status)
	}
}
