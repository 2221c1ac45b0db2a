package herontest

import (
	"encoding/json"
	"net/http"
	"testing"
	"time"
)

func TestControlHandler(t *testing.T) {
	f := newFixture(t, Options{Control: true, RateLimitPerMinute: 50})
	ctl := func(method, path string, body any) result {
		t.Helper()
		return f.do(t, method, "/_emulator/"+path, "", body)
	}
	k := f.create(t, f.dev, "seen")
	f.do(t, "GET", "/api/credentials/keys", f.prod, nil)

	t.Run("keys", func(t *testing.T) {
		var keys []KeyRecord
		mustJSON(t, ctl("GET", "keys", nil).body, &keys)
		if len(keys) != 3 || keys[2].Token != k.Token || keys[2].CreatedBy == "" {
			t.Errorf("keys = %+v", keys)
		}
		mustJSON(t, ctl("GET", "keys?env=production", nil).body, &keys)
		if len(keys) != 1 || keys[0].Token != f.prod {
			t.Errorf("production keys = %+v", keys)
		}
		mustJSON(t, ctl("GET", "keys?env=nowhere", nil).body, &keys)
		if keys == nil || len(keys) != 0 {
			t.Errorf("empty env = %#v", keys)
		}
	})
	t.Run("requests are not recorded for the control surface", func(t *testing.T) {
		var reqs []RequestRecord
		mustJSON(t, ctl("GET", "requests", nil).body, &reqs)
		if len(reqs) != 2 || reqs[0].Method != "POST" || reqs[1].Environment != "production" {
			t.Errorf("requests = %+v", reqs)
		}
	})
	t.Run("stats", func(t *testing.T) {
		var st Stats
		mustJSON(t, ctl("GET", "stats?window=30s", nil).body, &st)
		if st.Total != 2 || st.MaxInWindow != 2 || st.Window != "30s" || st.RateLimit != 50 || len(st.Counts) != 2 {
			t.Errorf("stats = %+v", st)
		}
		mustJSON(t, ctl("GET", "stats?env=development", nil).body, &st)
		if st.Total != 1 || st.Counts[0].Route != "/api/credentials/keys" || st.Counts[0].ByStatus["201"] != 1 {
			t.Errorf("development stats = %+v", st)
		}
		wantError(t, ctl("GET", "stats?window=soon", nil), 400)
	})
	t.Run("faults", func(t *testing.T) {
		r := ctl("POST", "faults", `{"latency":"5ms","error_rate":0.25,"drop_after_post_rate":0.5,"seed":9}`)
		if r.status != 200 {
			t.Fatalf("%d %s", r.status, r.body)
		}
		want := Faults{Latency: 5 * time.Millisecond, ErrorRate: 0.25, DropAfterPOSTRate: 0.5, Seed: 9}
		if got := f.s.CurrentFaults(); got != want {
			t.Errorf("faults = %+v", got)
		}
		var fj FaultsJSON
		mustJSON(t, ctl("GET", "faults", nil).body, &fj)
		if fj.Latency != "5ms" || fj.Seed != 9 {
			t.Errorf("GET faults = %+v", fj)
		}
		wantError(t, ctl("POST", "faults", `{"error_rate":2}`), 400)
		wantError(t, ctl("POST", "faults", `{"latency":"fast"}`), 400)
		wantError(t, ctl("POST", "faults", `{"bogus":1}`), 400)
		if r := ctl("POST", "reset-faults", nil); r.status != 204 || f.s.CurrentFaults() != (Faults{}) {
			t.Errorf("reset-faults: %d %+v", r.status, f.s.CurrentFaults())
		}
	})
	t.Run("fail-next", func(t *testing.T) {
		r := ctl("POST", "fail-next", `{"method":"GET","path_prefix":"/api/credentials/keys","n":1,"mode":"503"}`)
		if r.status != 200 || f.s.PendingFailNext() != 1 {
			t.Fatalf("%d %s", r.status, r.body)
		}
		wantError(t, f.do(t, "GET", "/api/credentials/keys", f.dev, nil), 503)
		wantError(t, ctl("POST", "fail-next", `{"n":1,"mode":"teapot"}`), 400)
		wantError(t, ctl("POST", "fail-next", `{"n":0,"mode":"500"}`), 400)
	})
	t.Run("force429", func(t *testing.T) {
		if r := ctl("POST", "force429", `{"env":"production","duration":"10s","retry_after":"3s"}`); r.status != 204 {
			t.Fatalf("%d %s", r.status, r.body)
		}
		r := f.do(t, "GET", "/api/credentials/keys", f.prod, nil)
		wantError(t, r, 429)
		if r.header.Get("Retry-After") != "3" {
			t.Errorf("Retry-After = %q", r.header.Get("Retry-After"))
		}
		ctl("POST", "force429", `{"env":"production","duration":"0s"}`)
		if r := f.do(t, "GET", "/api/credentials/keys", f.prod, nil); r.status != 200 {
			t.Errorf("after lifting: %d", r.status)
		}
		wantError(t, ctl("POST", "force429", `{"duration":"long"}`), 400)
	})
	t.Run("rate-limit", func(t *testing.T) {
		var out map[string]int
		mustJSON(t, ctl("POST", "rate-limit", `{"per_minute":7}`).body, &out)
		if out["per_minute"] != 7 || f.s.RateLimit() != 7 {
			t.Errorf("rate-limit = %v", out)
		}
		mustJSON(t, ctl("GET", "rate-limit", nil).body, &out)
		if out["per_minute"] != 7 {
			t.Errorf("GET rate-limit = %v", out)
		}
		wantError(t, ctl("POST", "rate-limit", `{}`), 400)
		f.s.SetRateLimit(50)
	})
	t.Run("admin-keys", func(t *testing.T) {
		r := ctl("POST", "admin-keys?env=staging", nil)
		if r.status != http.StatusCreated {
			t.Fatalf("%d %s", r.status, r.body)
		}
		var out map[string]string
		mustJSON(t, r.body, &out)
		if !tokenPattern.MatchString(out["token"]) || out["environment"] != "staging" || out["heron_id"] == "" {
			t.Errorf("admin key = %v", out)
		}
		if keys := f.list(t, out["token"]); len(keys) != 1 {
			t.Errorf("staging list = %+v", keys)
		}
		wantError(t, ctl("POST", "admin-keys", nil), 400)
	})
	t.Run("reset-requests", func(t *testing.T) {
		if r := ctl("POST", "reset-requests", nil); r.status != 204 || len(f.s.Requests()) != 0 {
			t.Errorf("reset-requests: %d, %d left", r.status, len(f.s.Requests()))
		}
	})
	t.Run("errors", func(t *testing.T) {
		wantError(t, ctl("GET", "nope", nil), 404)
		r := ctl("POST", "keys", nil)
		wantError(t, r, 405)
		if r.header.Get("Allow") != "GET" {
			t.Errorf("Allow = %q", r.header.Get("Allow"))
		}
		wantError(t, ctl("DELETE", "faults", nil), 405)
	})
	// The control surface is never charged to, nor blocked by, Heron's budget.
	f.s.Force429("", time.Minute, time.Second)
	if r := ctl("GET", "keys", nil); r.status != 200 {
		t.Errorf("control blocked by forced 429: %d", r.status)
	}
}

func TestKeyRecordJSON(t *testing.T) {
	now := time.Date(2024, 1, 2, 3, 4, 5, 0, time.UTC)
	raw, err := json.Marshal(KeyRecord{ID: "i", Created: now})
	if err != nil {
		t.Fatal(err)
	}
	var m map[string]any
	if err := json.Unmarshal(raw, &m); err != nil {
		t.Fatal(err)
	}
	if _, ok := m["deleted_at"]; ok {
		t.Errorf("zero deleted_at should be omitted: %s", raw)
	}
	if v, ok := m["last_used"]; !ok || v != nil {
		t.Errorf("last_used should be null: %s", raw)
	}
}

func TestControlUsersLateAndDelays(t *testing.T) {
	f := newFixture(t, Options{Control: true})
	ctl := func(method, path string, body any) result {
		t.Helper()
		return f.do(t, method, "/_emulator/"+path, "", body)
	}
	t.Run("users", func(t *testing.T) {
		r := ctl("POST", "users?env=development", nil)
		if r.status != http.StatusCreated {
			t.Fatalf("%d %s", r.status, r.body)
		}
		var out map[string]string
		mustJSON(t, r.body, &out)
		if out["user"] == "" || out["user"] == DefaultUser || out["environment"] != "development" {
			t.Errorf("user = %v", out)
		}
		if keys := f.list(t, out["token"]); len(keys) != 1 || keys[0].HeronID != out["heron_id"] {
			t.Errorf("new user's list = %+v", keys)
		}
		wantError(t, ctl("POST", "users", nil), 400)
	})
	t.Run("fail-next process-then and late modes", func(t *testing.T) {
		if r := ctl("POST", "fail-next", `{"method":"POST","n":1,"mode":"process-then-504"}`); r.status != 200 {
			t.Fatalf("%d %s", r.status, r.body)
		}
		wantError(t, f.do(t, "POST", "/api/credentials/keys", f.dev, `{"name":"pt"}`), 504)
		if _, ok := keyNamed(f.s, "pt"); !ok {
			t.Error("process-then-504 did not process")
		}
		if r := ctl("POST", "fail-next", `{"method":"POST","n":1,"mode":"late-503","delay":"1h"}`); r.status != 200 {
			t.Fatalf("%d %s", r.status, r.body)
		}
		wantError(t, f.do(t, "POST", "/api/credentials/keys", f.dev, `{"name":"late"}`), 503)
		var late map[string]int
		mustJSON(t, ctl("GET", "late", nil).body, &late)
		if late["pending"] != 1 {
			t.Errorf("late = %v", late)
		}
		mustJSON(t, ctl("POST", "flush-late", nil).body, &late)
		if late["processed"] != 1 || late["pending"] != 0 {
			t.Errorf("flush-late = %v", late)
		}
		if _, ok := keyNamed(f.s, "late"); !ok {
			t.Error("flush-late did not process")
		}
		if r := ctl("POST", "fail-next", `{"method":"DELETE","n":1,"mode":"late-drop","delay":"1h"}`); r.status != 200 {
			t.Fatalf("%d %s", r.status, r.body)
		}
		if _, err := f.try("DELETE", "/api/credentials/keys/"+newHeronID(), f.dev, nil, nil); !isDropped(err) {
			t.Errorf("late-drop: err = %v", err)
		}
		f.s.FlushLate()
		for _, bad := range []string{
			`{"n":1,"mode":"late-404","delay":"1s"}`,
			`{"n":1,"mode":"late-soon","delay":"1s"}`,
			`{"n":1,"mode":"late-504","delay":"-1s"}`,
			`{"n":1,"mode":"500","delay":"1s"}`,
		} {
			wantError(t, ctl("POST", "fail-next", bad), 400)
		}
	})
	t.Run("delay-next", func(t *testing.T) {
		var out map[string]int
		mustJSON(t, ctl("POST", "delay-next", `{"method":"GET","n":2,"delay":"40ms"}`).body, &out)
		if out["pending"] != 2 || f.s.PendingDelayNext() != 2 {
			t.Errorf("delay-next = %v", out)
		}
		start := time.Now()
		f.list(t, f.dev)
		if time.Since(start) < 40*time.Millisecond {
			t.Error("not delayed")
		}
		wantError(t, ctl("POST", "delay-next", `{"n":1,"delay":"0s"}`), 400)
		wantError(t, ctl("POST", "delay-next", `{"n":0,"delay":"1s"}`), 400)
		ctl("POST", "reset-faults", nil)
		if f.s.PendingDelayNext() != 0 {
			t.Error("reset-faults left delay-next rules")
		}
	})
	t.Run("faults process_then_error_rate", func(t *testing.T) {
		if r := ctl("POST", "faults", `{"process_then_error_rate":0.5,"seed":3}`); r.status != 200 {
			t.Fatalf("%d %s", r.status, r.body)
		}
		if got := f.s.CurrentFaults(); got.ProcessThenErrorRate != 0.5 {
			t.Errorf("faults = %+v", got)
		}
		var fj FaultsJSON
		mustJSON(t, ctl("GET", "faults", nil).body, &fj)
		if fj.ProcessThenErrorRate != 0.5 {
			t.Errorf("GET faults = %+v", fj)
		}
		wantError(t, ctl("POST", "faults", `{"process_then_error_rate":1.5}`), 400)
		ctl("POST", "reset-faults", nil)
	})
	t.Run("per-user rate limit", func(t *testing.T) {
		var out map[string]int
		mustJSON(t, ctl("POST", "rate-limit", `{"per_user_per_minute":2}`).body, &out)
		if out["per_user_per_minute"] != 2 || out["per_minute"] != 500 || f.s.UserRateLimit() != 2 {
			t.Errorf("rate-limit = %v", out)
		}
		var st Stats
		mustJSON(t, ctl("GET", "stats", nil).body, &st)
		if st.UserRateLimit != 2 {
			t.Errorf("stats = %+v", st)
		}
		mustJSON(t, ctl("POST", "rate-limit", `{"per_minute":9,"per_user_per_minute":0}`).body, &out)
		if out["per_user_per_minute"] != -1 || out["per_minute"] != 9 {
			t.Errorf("rate-limit = %v", out)
		}
	})
}
