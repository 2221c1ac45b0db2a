package herontest

import (
	"fmt"
	"net/http"
	"testing"
	"time"
)

func TestUsers(t *testing.T) {
	f := newFixture(t, Options{})
	u := f.s.AddUser("development")
	urec, ok := f.s.KeyByToken(u)
	if !ok || urec.Environment != "development" || urec.User == "" || urec.User == DefaultUser || !urec.IsActive || urec.CreatedBy != "" {
		t.Fatalf("AddUser key = %+v", urec)
	}
	if dev, _ := f.s.KeyByToken(f.dev); dev.User != DefaultUser {
		t.Errorf("seeded key user = %q, want %q", dev.User, DefaultUser)
	}
	uk := f.create(t, u, "users-key")
	dk := f.create(t, f.dev, "default-key")
	if rec, _ := f.s.Key(uk.HeronID); rec.User != urec.User || rec.CreatedBy != urec.ID {
		t.Errorf("key created by the new user = %+v", rec)
	}
	if rec, _ := f.s.Key(dk.HeronID); rec.User != DefaultUser {
		t.Errorf("key created by the default user = %+v", rec)
	}

	ids := func(keys []listedKeyJSON) map[string]bool {
		out := map[string]bool{}
		for _, k := range keys {
			out[k.HeronID] = true
		}
		return out
	}
	if got := ids(f.list(t, u)); len(got) != 2 || !got[urec.ID] || !got[uk.HeronID] {
		t.Errorf("new user's list = %v", got)
	}
	devRec, _ := f.s.KeyByToken(f.dev)
	if got := ids(f.list(t, f.dev)); len(got) != 2 || !got[devRec.ID] || !got[dk.HeronID] {
		t.Errorf("default user's list = %v", got)
	}
	// A second key of the default user shares its list.
	if got := ids(f.list(t, f.s.AddAdminKey("development"))); len(got) != 3 || !got[dk.HeronID] {
		t.Errorf("AddAdminKey list = %v", got)
	}

	t.Run("another user's key is answered like an unknown id", func(t *testing.T) {
		unknown := f.do(t, "PUT", "/api/credentials/keys/"+newHeronID()+"/deactivate", u, nil)
		wantError(t, unknown, 404)
		for _, tc := range []struct{ token, id string }{{u, dk.HeronID}, {f.dev, uk.HeronID}} {
			for _, req := range []struct{ method, path string }{
				{"PUT", "/api/credentials/keys/" + tc.id + "/deactivate"},
				{"PUT", "/api/credentials/keys/" + tc.id + "/activate"},
				{"DELETE", "/api/credentials/keys/" + tc.id},
			} {
				r := f.do(t, req.method, req.path, tc.token, nil)
				wantError(t, r, 404)
				if string(r.body) != string(unknown.body) {
					t.Errorf("%s %s: body %s, unknown id gets %s", req.method, req.path, r.body, unknown.body)
				}
			}
			if rec, _ := f.s.Key(tc.id); !rec.IsActive || rec.Deleted {
				t.Errorf("foreign user changed key %+v", rec)
			}
		}
	})
	t.Run("own keys are managed as before", func(t *testing.T) {
		if r := f.do(t, "PUT", "/api/credentials/keys/"+uk.HeronID+"/deactivate", u, nil); r.status != 200 {
			t.Errorf("deactivate own: %d %s", r.status, r.body)
		}
		if r := f.do(t, "DELETE", "/api/credentials/keys/"+uk.HeronID, u, nil); r.status != 204 {
			t.Errorf("delete own: %d %s", r.status, r.body)
		}
	})
	t.Run("user ids", func(t *testing.T) {
		u2, _ := f.s.KeyByToken(f.s.AddUser("development"))
		p, _ := f.s.KeyByToken(f.s.AddUser("staging"))
		seen := map[string]bool{DefaultUser: true, urec.User: true}
		for _, r := range []KeyRecord{u2, p} {
			if seen[r.User] {
				t.Errorf("user id %q reused", r.User)
			}
			seen[r.User] = true
		}
		if p.Environment != "staging" || fmt.Sprint(f.s.Environments()) != "[development production staging]" {
			t.Errorf("AddUser did not create the environment: %+v %v", p, f.s.Environments())
		}
		if got := f.s.KeysOfUser("development", urec.User); len(got) != 2 || got[1].ID != uk.HeronID || !got[1].Deleted {
			t.Errorf("KeysOfUser = %+v", got)
		}
		if got := len(f.s.KeysOfUser("production", urec.User)); got != 0 {
			t.Errorf("KeysOfUser in another environment = %d", got)
		}
		if got := len(f.s.LiveKeys("development")); got != 5 {
			t.Errorf("LiveKeys spans users: got %d, want 5", got)
		}
	})
	if reqs := f.s.Requests(); reqs[0].User != urec.User {
		t.Errorf("request record user = %q", reqs[0].User)
	}
}

func TestUserRateLimit(t *testing.T) {
	f := newFixture(t, Options{RateLimitPerMinute: 10, RateLimitPerUserPerMinute: 3})
	u := f.s.AddUser("development")
	hello := func(tok string) result { return f.do(t, "GET", "/api/hello_world/authenticated", tok, nil) }
	check := func(r result, status, limit, remaining int) {
		t.Helper()
		if r.status != status {
			t.Fatalf("status %d, want %d: %s", r.status, status, r.body)
		}
		if l, rem, _ := rateHeaders(t, r); l != limit || rem != remaining {
			t.Errorf("limit %d remaining %d, want %d %d", l, rem, limit, remaining)
		}
	}
	if f.s.UserRateLimit() != 3 {
		t.Fatalf("UserRateLimit = %d", f.s.UserRateLimit())
	}
	for i := range 3 {
		check(hello(f.dev), 200, 3, 2-i) // the user's budget has less room
	}
	r := hello(f.dev)
	if desc := wantError(t, r, 429); desc != "3 per 1 minute" {
		t.Errorf("description %v", desc)
	}
	check(r, 429, 3, 0)
	if got := r.header.Get("Retry-After"); got != "60" {
		t.Errorf("Retry-After = %q", got)
	}
	// Another key of the same user shares its budget; another user does not.
	wantError(t, hello(f.s.AddAdminKey("development")), 429)
	check(hello(u), 200, 3, 2)

	// The environment budget binds once it has less room: 4 admitted so far.
	f.s.SetUserRateLimit(100)
	check(hello(u), 200, 10, 5)
	for range 5 {
		hello(u)
	}
	r = hello(f.dev)
	if desc := wantError(t, r, 429); desc != "10 per 1 minute" {
		t.Errorf("description %v", desc)
	}
	check(r, 429, 10, 0)

	f.s.SetUserRateLimit(0)
	if f.s.UserRateLimit() != -1 {
		t.Errorf("UserRateLimit after off = %d", f.s.UserRateLimit())
	}
}

func TestUserRateLimitBothFull(t *testing.T) {
	f := newFixture(t, Options{RateLimitPerMinute: 3, RateLimitPerUserPerMinute: 2})
	u := f.s.AddUser("development")
	hello := func(tok string) result { return f.do(t, "GET", "/api/hello_world/authenticated", tok, nil) }
	hello(u) // t0: env 1
	f.clk.Advance(10 * time.Second)
	hello(f.dev) // t10: env 2, default user 1
	hello(f.dev) // t10: env 3, default user 2
	f.clk.Advance(10 * time.Second)
	// t20: both full. The environment frees a slot at t60, the user at t70:
	// the client must wait for the later one, and the headers say whose it is.
	r := hello(f.dev)
	wantError(t, r, 429)
	if got := r.header.Get("Retry-After"); got != "50" {
		t.Errorf("Retry-After = %q, want 50", got)
	}
	if l, rem, _ := rateHeaders(t, r); l != 2 || rem != 0 {
		t.Errorf("headers limit %d remaining %d, want the user's 2 0", l, rem)
	}
	f.clk.Advance(40 * time.Second) // t60: the environment has room, the user not
	r = hello(f.dev)
	wantError(t, r, 429)
	if got := r.header.Get("Retry-After"); got != "10" {
		t.Errorf("Retry-After = %q, want 10", got)
	}
	// The other user is held only by the environment, which has room again.
	if r := hello(u); r.status != http.StatusOK {
		t.Errorf("other user: %d", r.status)
	}
	f.clk.Advance(10 * time.Second) // t70
	if r := hello(f.dev); r.status != http.StatusOK {
		t.Errorf("after the user's slot frees: %d", r.status)
	}
}

func TestUserRateLimitOffByDefault(t *testing.T) {
	f := newFixture(t, Options{RateLimitPerMinute: 4})
	if f.s.UserRateLimit() != -1 {
		t.Errorf("UserRateLimit = %d, want -1", f.s.UserRateLimit())
	}
	for i := range 4 {
		r := f.do(t, "GET", "/api/credentials/keys", f.dev, nil)
		if l, rem, _ := rateHeaders(t, r); r.status != 200 || l != 4 || rem != 3-i {
			t.Fatalf("request %d: %d limit %d remaining %d", i, r.status, l, rem)
		}
	}
	t.Run("per-user limit alone", func(t *testing.T) {
		f := newFixture(t, Options{RateLimitPerMinute: -1, RateLimitPerUserPerMinute: 1})
		if r := f.do(t, "GET", "/api/credentials/keys", f.dev, nil); r.header.Get("X-RateLimit-Limit") != "1" {
			t.Errorf("headers %v", r.header)
		}
		wantError(t, f.do(t, "GET", "/api/credentials/keys", f.dev, nil), 429)
		f.s.ResetRateLimiter()
		if r := f.do(t, "GET", "/api/credentials/keys", f.dev, nil); r.status != 200 {
			t.Errorf("after ResetRateLimiter: %d", r.status)
		}
	})
}
