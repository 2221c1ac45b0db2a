package herontest

import (
	"context"
	"net/http"
	"runtime"
	"strings"
	"sync/atomic"
	"testing"
	"time"
)

// waitFor polls cond for up to 5s: the late and delayed paths run on real timers.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(2 * time.Millisecond)
	}
}

func keyNamed(s *Server, name string) (KeyRecord, bool) {
	for _, k := range s.Keys() {
		if k.Name == name {
			return k, true
		}
	}
	return KeyRecord{}, false
}

func lastRequest(s *Server) RequestRecord {
	reqs := s.Requests()
	return reqs[len(reqs)-1]
}

func TestFaultModeNames(t *testing.T) {
	for m := FaultStatus500; m <= FaultProcessThen504; m++ {
		back, err := ParseFaultMode(m.String())
		if err != nil || back != m {
			t.Errorf("%d: %q -> %v, %v", m, m.String(), back, err)
		}
	}
	for name, want := range map[string]FaultMode{
		"504": FaultStatus504, "process-then-500": FaultProcessThen500, "process-then-502": FaultProcessThen502,
		"process-then-503": FaultProcessThen503, "process-then-504": FaultProcessThen504,
	} {
		if got, err := ParseFaultMode(name); err != nil || got != want {
			t.Errorf("ParseFaultMode(%q) = %v, %v", name, got, err)
		}
	}
	// The existing values keep their numbers (they may be stored or sent as ints).
	if FaultStatus500 != 0 || FaultDropBeforeProcessing != 4 {
		t.Error("existing FaultMode values were renumbered")
	}
}

func TestFaultProcessThenStatus(t *testing.T) {
	for _, tc := range []struct {
		mode FaultMode
		want int
	}{
		{FaultProcessThen500, 500}, {FaultProcessThen502, 502}, {FaultProcessThen503, 503}, {FaultProcessThen504, 504},
	} {
		t.Run(tc.mode.String(), func(t *testing.T) {
			f := newFixture(t, Options{})
			f.s.FailNext("POST", "/api/credentials/keys", 1, tc.mode)
			f.clk.Advance(time.Second)
			r := f.do(t, "POST", "/api/credentials/keys", f.dev, `{"name":"processed-anyway"}`)
			wantError(t, r, tc.want)
			if r.header.Get("X-RateLimit-Limit") == "" {
				t.Error("no rate limit headers")
			}
			k, ok := keyNamed(f.s, "processed-anyway")
			if !ok || !k.IsActive {
				t.Fatalf("the request was not processed: %+v", f.s.Keys())
			}
			if rec := lastRequest(f.s); rec.Status != tc.want || rec.Processed != 201 || !rec.Injected || rec.Dropped {
				t.Errorf("record = %+v", rec)
			}
			if dev, _ := f.s.KeyByToken(f.dev); dev.LastUsed == nil || !dev.LastUsed.Equal(storeTime(f.clk.Now())) {
				t.Errorf("last_used not updated by a processed request: %v", dev.LastUsed)
			}
			// Any method: the DELETE happens, the answer says otherwise.
			f.s.FailNext("DELETE", "", 1, tc.mode)
			wantError(t, f.do(t, "DELETE", "/api/credentials/keys/"+k.ID, f.dev, nil), tc.want)
			if rec, _ := f.s.Key(k.ID); !rec.Deleted {
				t.Error("DELETE was not processed")
			}
			// The retry the client makes sees the truth.
			wantError(t, f.do(t, "DELETE", "/api/credentials/keys/"+k.ID, f.dev, nil), 404)
		})
	}
	t.Run("504 unprocessed", func(t *testing.T) {
		f := newFixture(t, Options{})
		f.s.FailNext("POST", "", 1, FaultStatus504)
		wantError(t, f.do(t, "POST", "/api/credentials/keys", f.dev, `{"name":"never"}`), 504)
		if _, ok := keyNamed(f.s, "never"); ok {
			t.Error("an unprocessed 504 created a key")
		}
		if rec := lastRequest(f.s); rec.Processed != 0 || !rec.Injected {
			t.Errorf("record = %+v", rec)
		}
	})
}

func TestRandomProcessThenErrors(t *testing.T) {
	f := newFixture(t, Options{RateLimitPerMinute: -1})
	f.s.SetFaults(Faults{ProcessThenErrorRate: 1, Seed: 11})
	seen := map[int]bool{}
	for range 40 {
		r := f.do(t, "POST", "/api/credentials/keys", f.dev, `{"name":"p"}`)
		wantError(t, r, r.status)
		seen[r.status] = true
	}
	if len(seen) != 4 || !seen[500] || !seen[502] || !seen[503] || !seen[504] {
		t.Errorf("statuses seen: %v", seen)
	}
	if n := len(f.s.LiveKeys("development")); n != 41 {
		t.Errorf("LiveKeys = %d, want 41: every request processed", n)
	}
	if r := f.do(t, "GET", "/api/hello_world", "", nil); r.status != 200 {
		t.Errorf("unauthenticated request affected: %d", r.status)
	}
	// Half the rate: some answers good, some bad, every request processed.
	f.s.SetFaults(Faults{ProcessThenErrorRate: 0.5, Seed: 12})
	bad := 0
	for range 40 {
		if r := f.do(t, "GET", "/api/credentials/keys", f.dev, nil); r.status != 200 {
			bad++
		}
	}
	if bad == 0 || bad == 40 {
		t.Errorf("%d of 40 failed at rate 0.5", bad)
	}
	for _, rec := range f.s.Requests() {
		if rec.Environment != "" && rec.Processed == 0 {
			t.Fatalf("unprocessed: %+v", rec)
		}
	}
}

func TestFailNextLate(t *testing.T) {
	f := newFixture(t, Options{})
	dev, _ := f.s.KeyByToken(f.dev)
	// An hour: nothing below depends on how fast the test runs; FlushLate
	// stands for the delay's end (the timers themselves: "processed by its
	// timer" and "dropped answer").
	f.s.FailNextLate("POST", "/api/credentials/keys", 1, 504, time.Hour)
	if f.s.PendingFailNext() != 1 {
		t.Errorf("PendingFailNext = %d", f.s.PendingFailNext())
	}
	asked := storeTime(f.clk.Now())
	wantError(t, f.do(t, "POST", "/api/credentials/keys", f.dev, `{"name":"late-key"}`), 504)
	if _, ok := keyNamed(f.s, "late-key"); ok {
		t.Fatal("the key exists when the 504 is answered")
	}
	if rec := lastRequest(f.s); rec.Status != 504 || rec.Processed != 0 || !rec.Injected {
		t.Errorf("record before processing = %+v", rec)
	}
	if n := f.s.PendingLate(); n != 1 {
		t.Errorf("PendingLate = %d", n)
	}
	// A client that lists at once does not find it: the trap of a lookup too early.
	for _, k := range f.list(t, f.dev) {
		if k.Name == "late-key" {
			t.Error("listed before processing")
		}
	}
	f.clk.Advance(7 * time.Second)
	if n := f.s.FlushLate(); n != 1 {
		t.Fatalf("FlushLate = %d, want the one late POST", n)
	}
	if n := f.s.PendingLate(); n != 0 {
		t.Errorf("PendingLate after processing = %d", n)
	}
	k, ok := keyNamed(f.s, "late-key")
	if !ok {
		t.Fatal("late processing did not create the key")
	}
	if !k.Created.Equal(storeTime(f.clk.Now())) || k.Created.Equal(asked) {
		t.Errorf("created = %v, want the processing time %v", k.Created, f.clk.Now())
	}
	if k.CreatedBy != dev.ID || k.User != DefaultUser || k.Environment != "development" || !k.IsActive {
		t.Errorf("late key = %+v", k)
	}
	if rec := f.s.Requests()[0]; rec.Status != 504 || rec.Processed != 201 {
		t.Errorf("record after processing = %+v", rec)
	}

	t.Run("processed by its timer", func(t *testing.T) {
		f.s.FailNextLate("POST", "/api/credentials/keys", 1, 504, 20*time.Millisecond)
		wantError(t, f.do(t, "POST", "/api/credentials/keys", f.dev, `{"name":"timer-key"}`), 504)
		waitFor(t, "late processing by the timer", func() bool { _, ok := keyNamed(f.s, "timer-key"); return ok && f.s.PendingLate() == 0 })
		if rec := lastRequest(f.s); rec.Status != 504 || rec.Processed != 201 {
			t.Errorf("record after processing = %+v", rec)
		}
	})
	t.Run("dropped answer", func(t *testing.T) {
		victim := f.create(t, f.dev, "victim")
		f.s.FailNextLate("DELETE", "", 1, 0, 30*time.Millisecond)
		if _, err := f.try("DELETE", "/api/credentials/keys/"+victim.HeronID, f.dev, nil, nil); !isDropped(err) {
			t.Fatalf("err = %v, want a dropped connection", err)
		}
		if rec := lastRequest(f.s); !rec.Dropped || rec.Status != 0 {
			t.Errorf("record = %+v", rec)
		}
		waitFor(t, "late delete", func() bool { k, _ := f.s.Key(victim.HeronID); return k.Deleted })
	})
	t.Run("FlushLate runs pending actions now, in due order", func(t *testing.T) {
		f.s.FailNextLate("POST", "", 1, 502, 2*time.Hour)
		f.s.FailNextLate("POST", "", 1, 503, time.Hour)
		wantError(t, f.do(t, "POST", "/api/credentials/keys", f.dev, `{"name":"second"}`), 502)
		wantError(t, f.do(t, "POST", "/api/credentials/keys", f.dev, `{"name":"first"}`), 503)
		if n := f.s.FlushLate(); n != 2 {
			t.Fatalf("FlushLate = %d", n)
		}
		keys := f.s.Keys()
		if len(keys) < 2 || keys[len(keys)-2].Name != "first" || keys[len(keys)-1].Name != "second" {
			t.Errorf("keys = %+v", keys)
		}
		if f.s.PendingLate() != 0 || f.s.FlushLate() != 0 {
			t.Error("late actions left after FlushLate")
		}
	})
	t.Run("processed even when the calling key is gone meanwhile", func(t *testing.T) {
		other := f.create(t, f.dev, "short-lived admin")
		f.s.FailNextLate("POST", "", 1, 504, time.Hour)
		wantError(t, f.do(t, "POST", "/api/credentials/keys", other.Token, `{"name":"orphan"}`), 504)
		f.do(t, "DELETE", "/api/credentials/keys/"+other.HeronID, f.dev, nil)
		f.s.FlushLate()
		if k, ok := keyNamed(f.s, "orphan"); !ok || k.CreatedBy != other.HeronID {
			t.Errorf("orphan = %+v, %v", k, ok)
		}
	})
	t.Run("a 401 or 429 does not use the rule", func(t *testing.T) {
		f.s.FailNextLate("GET", "", 1, 504, 0)
		wantError(t, f.do(t, "GET", "/api/credentials/keys", NewKeyToken(), nil), 401)
		if f.s.PendingFailNext() != 1 {
			t.Error("401 consumed the rule")
		}
		f.s.ResetFaults()
	})
	t.Run("bad answer status panics", func(t *testing.T) {
		defer func() {
			if recover() == nil {
				t.Error("no panic")
			}
		}()
		f.s.FailNextLate("", "", 1, 404, 0)
	})
}

func TestLateActionsAndClose(t *testing.T) {
	before := runtime.NumGoroutine()
	s := NewServer(Options{Environments: map[string][]string{"development": {NewKeyToken()}}})
	tok := s.Keys()[0].Token
	tr := &http.Transport{DisableKeepAlives: true}
	c := &http.Client{Transport: tr, Timeout: 5 * time.Second}
	s.FailNextLate("POST", "", 3, 504, time.Hour) // none is due before Close, however slow the test
	for range 3 {
		f := &fixture{s: s, c: c}
		wantError(t, f.do(t, "POST", "/api/credentials/keys", tok, `{"name":"after-close"}`), 504)
	}
	if s.PendingLate() != 3 {
		t.Fatalf("PendingLate = %d", s.PendingLate())
	}
	s.lifeMu.Lock()
	dropped := make([]*lateAction, 0, len(s.late))
	for a := range s.late {
		dropped = append(dropped, a)
	}
	s.lifeMu.Unlock()
	s.Close()
	if n := s.PendingLate(); n != 0 {
		t.Errorf("PendingLate after Close = %d", n)
	}
	// A late action scheduled once Close has begun never runs.
	var ran atomic.Bool
	s.scheduleLate(0, func() { ran.Store(true) })
	if s.PendingLate() != 0 || s.FlushLate() != 0 {
		t.Error("a late action was scheduled after Close")
	}
	s.lifeMu.Lock()
	left := len(s.late)
	s.lifeMu.Unlock()
	if left != 0 {
		t.Errorf("%d late actions still scheduled after Close", left)
	}
	// A timer that fires as Close stops it (its delay ended meanwhile) finds
	// its action dropped: fire each one now, as such a timer would.
	for _, a := range dropped {
		s.fireLate(a)
	}
	if _, ok := keyNamed(s, "after-close"); ok || ran.Load() {
		t.Error("a late action ran after Close")
	}
	tr.CloseIdleConnections()
	waitFor(t, "goroutines to end", func() bool { return runtime.NumGoroutine() <= before })
}

func TestDelayNext(t *testing.T) {
	f := newFixture(t, Options{})
	f.s.DelayNext("POST", "/api/credentials/keys", 1, 150*time.Millisecond)
	// Not matched: other methods and requests refused before admission.
	f.list(t, f.dev)
	wantError(t, f.do(t, "POST", "/api/credentials/keys", "", `{"name":"x"}`), 401)
	if f.s.PendingDelayNext() != 1 {
		t.Fatalf("PendingDelayNext = %d", f.s.PendingDelayNext())
	}
	start := time.Now()
	f.create(t, f.dev, "slow")
	if el := time.Since(start); el < 150*time.Millisecond {
		t.Errorf("answered after %v", el)
	}
	if f.s.PendingDelayNext() != 0 {
		t.Error("rule not used up")
	}

	t.Run("a client that gives up does not stop the processing", func(t *testing.T) {
		const delay = 300 * time.Millisecond
		f.s.DelayNext("POST", "", 1, delay)
		// The client gives up once Heron has the request (not after a
		// timeout that a slow machine could spend before sending it).
		arrived := f.s.CountRequests("POST", "", "") + 1
		ctx, cancel := context.WithCancel(context.Background())
		defer cancel()
		req, err := http.NewRequestWithContext(ctx, "POST", f.s.URL+"/api/credentials/keys", strings.NewReader(`{"name":"given-up"}`))
		if err != nil {
			t.Fatal(err)
		}
		req.Header.Set("Content-Type", "application/json")
		req.Header.Set("x-api-key", f.dev)
		start := time.Now()
		go func() {
			defer cancel() // after 5s at most; the wait for the key below then says what failed
			for deadline := time.Now().Add(5 * time.Second); time.Now().Before(deadline); time.Sleep(time.Millisecond) {
				if f.s.CountRequests("POST", "", "") >= arrived {
					return
				}
			}
		}()
		impatient := &http.Client{Transport: &http.Transport{DisableKeepAlives: true}}
		if resp, err := impatient.Do(req); err == nil {
			resp.Body.Close()
			t.Fatal("the impatient client got an answer")
		}
		// Judged only while the delay surely runs: a slow machine may get
		// here after it ended, and then the key may rightly exist.
		if _, ok := keyNamed(f.s, "given-up"); ok && time.Since(start) < delay {
			t.Fatal("created before the delay ended")
		}
		waitFor(t, "the abandoned request to be processed", func() bool { _, ok := keyNamed(f.s, "given-up"); return ok })
		waitFor(t, "its record", func() bool { return lastRequest(f.s).Processed == 201 })
	})
	t.Run("with a fault: slow, then the fault", func(t *testing.T) {
		f.s.DelayNext("POST", "", 1, 50*time.Millisecond)
		f.s.FailNext("POST", "", 1, FaultProcessThen502)
		start := time.Now()
		wantError(t, f.do(t, "POST", "/api/credentials/keys", f.dev, `{"name":"slow-502"}`), 502)
		if time.Since(start) < 50*time.Millisecond {
			t.Error("not delayed")
		}
		if _, ok := keyNamed(f.s, "slow-502"); !ok {
			t.Error("not processed")
		}
	})
	t.Run("ResetFaults clears it", func(t *testing.T) {
		f.s.DelayNext("", "", 5, time.Hour)
		f.s.ResetFaults()
		if f.s.PendingDelayNext() != 0 {
			t.Error("DelayNext rules survived ResetFaults")
		}
	})
}

func TestDelayNextAbortedByClose(t *testing.T) {
	s := NewServer(Options{Environments: map[string][]string{"development": {NewKeyToken()}}})
	tok := s.Keys()[0].Token
	s.DelayNext("POST", "", 1, time.Hour)
	f := &fixture{s: s, c: &http.Client{Transport: &http.Transport{DisableKeepAlives: true}}}
	errc := make(chan error, 1)
	go func() {
		_, err := f.try("POST", "/api/credentials/keys", tok, `{"name":"never"}`, nil)
		errc <- err
	}()
	waitFor(t, "the request to arrive", func() bool { return s.CountRequests("POST", "", "") == 1 })
	done := make(chan struct{})
	go func() { s.Close(); close(done) }()
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		t.Fatal("Close waited out DelayNext")
	}
	if err := <-errc; err == nil {
		t.Error("request answered")
	}
	if _, ok := keyNamed(s, "never"); ok {
		t.Error("processed after Close")
	}
}
