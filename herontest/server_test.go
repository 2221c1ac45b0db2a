package herontest

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"
)

// fakeClock lets window-expiry tests move time instead of sleeping a minute.
type fakeClock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *fakeClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

func (c *fakeClock) Advance(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.t = c.t.Add(d)
}

type fixture struct {
	s         *Server
	clk       *fakeClock
	dev, prod string // seeded admin tokens
	c         *http.Client
}

func newFixture(t *testing.T, opts Options) *fixture {
	t.Helper()
	f := &fixture{dev: NewKeyToken(), prod: NewKeyToken()}
	if opts.Environments == nil {
		opts.Environments = map[string][]string{"development": {f.dev}, "production": {f.prod}}
	}
	f.s = NewUnstartedServer(opts)
	f.clk = &fakeClock{t: time.Date(2024, 5, 1, 12, 0, 0, 123456789, time.UTC)}
	f.s.now = f.clk.Now
	f.s.Start()
	t.Cleanup(f.s.Close)
	// Fresh connections make drop tests deterministic: net/http silently retries
	// idempotent requests that fail on a reused connection.
	tr := &http.Transport{DisableKeepAlives: true}
	t.Cleanup(tr.CloseIdleConnections)
	f.c = &http.Client{Transport: tr, Timeout: 10 * time.Second}
	return f
}

type result struct {
	status int
	header http.Header
	body   []byte
}

// do sends a request; a string body is sent as application/json.
func (f *fixture) do(t *testing.T, method, path, token string, body any) result {
	t.Helper()
	r, err := f.try(method, path, token, body, nil)
	if err != nil {
		t.Fatalf("%s %s: %v", method, path, err)
	}
	return r
}

func (f *fixture) try(method, path, token string, body any, hdr map[string]string) (result, error) {
	var rd io.Reader
	switch b := body.(type) {
	case nil:
	case string:
		rd = strings.NewReader(b)
	default:
		raw, err := json.Marshal(b)
		if err != nil {
			return result{}, err
		}
		rd = bytes.NewReader(raw)
	}
	req, err := http.NewRequest(method, f.s.URL+path, rd)
	if err != nil {
		return result{}, err
	}
	if rd != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	if token != "" {
		req.Header.Set("x-api-key", token)
	}
	req.Header.Set("User-Agent", "herontest-test/1")
	for k, v := range hdr {
		req.Header.Set(k, v)
	}
	resp, err := f.c.Do(req)
	if err != nil {
		return result{}, err
	}
	defer resp.Body.Close()
	raw, err := io.ReadAll(resp.Body)
	return result{status: resp.StatusCode, header: resp.Header, body: raw}, err
}

func (f *fixture) create(t *testing.T, token, name string) createdKeyJSON {
	t.Helper()
	r := f.do(t, "POST", "/api/credentials/keys", token, map[string]string{"name": name})
	if r.status != http.StatusCreated {
		t.Fatalf("create %q: status %d body %s", name, r.status, r.body)
	}
	var k createdKeyJSON
	mustJSON(t, r.body, &k)
	return k
}

func (f *fixture) list(t *testing.T, token string) []listedKeyJSON {
	t.Helper()
	r := f.do(t, "GET", "/api/credentials/keys", token, nil)
	if r.status != http.StatusOK {
		t.Fatalf("list: status %d body %s", r.status, r.body)
	}
	var out struct {
		Keys []listedKeyJSON `json:"keys"`
	}
	mustJSON(t, r.body, &out)
	return out.Keys
}

func mustJSON(t *testing.T, raw []byte, v any) {
	t.Helper()
	dec := json.NewDecoder(bytes.NewReader(raw))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		t.Fatalf("decode %s: %v", raw, err)
	}
}

// wantError checks Heron's error shape and returns the description.
func wantError(t *testing.T, r result, status int) any {
	t.Helper()
	if r.status != status {
		t.Fatalf("status = %d, want %d; body %s", r.status, status, r.body)
	}
	if ct := r.header.Get("Content-Type"); ct != "application/json" {
		t.Errorf("Content-Type = %q, want application/json", ct)
	}
	var e struct {
		Code        int    `json:"code"`
		Description any    `json:"description"`
		Name        string `json:"name"`
	}
	mustJSON(t, r.body, &e)
	if e.Code != status || e.Name != http.StatusText(status) || e.Description == nil {
		t.Errorf("error body = %s", r.body)
	}
	return e.Description
}

var tokenPattern = regexp.MustCompile(`^key_[0-9a-f]{48}$`)

func TestNewKeyToken(t *testing.T) {
	seen := map[string]bool{}
	for range 100 {
		tok := NewKeyToken()
		if !tokenPattern.MatchString(tok) || len(tok) != 52 {
			t.Fatalf("token %q has the wrong shape", tok)
		}
		if seen[tok] {
			t.Fatalf("duplicate token %q", tok)
		}
		seen[tok] = true
	}
}

func TestHelloWorld(t *testing.T) {
	f := newFixture(t, Options{})
	dev, _ := f.s.KeyByToken(f.dev)
	f.do(t, "PUT", "/api/credentials/keys/"+f.create(t, f.dev, "off").HeronID+"/deactivate", f.dev, nil)
	deactivated := f.s.LiveKeys("development")[1].Token
	tests := []struct {
		name, path, token string
		want              int
	}{
		{"public no key", "/api/hello_world", "", 200},
		{"public bogus key", "/api/hello_world", "key_nope", 200},
		{"authenticated", "/api/hello_world/authenticated", f.dev, 200},
		{"authenticated prod", "/api/hello_world/authenticated", f.prod, 200},
		{"missing key", "/api/hello_world/authenticated", "", 401},
		{"unknown key", "/api/hello_world/authenticated", NewKeyToken(), 401},
		{"malformed key", "/api/hello_world/authenticated", "Bearer " + f.dev, 401},
		{"prefix only", "/api/hello_world/authenticated", dev.TokenPrefix, 401},
		{"deactivated key", "/api/hello_world/authenticated", deactivated, 401},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			r := f.do(t, "GET", tc.path, tc.token, nil)
			if tc.want != 200 {
				wantError(t, r, tc.want)
				return
			}
			if r.status != 200 {
				t.Fatalf("status %d body %s", r.status, r.body)
			}
			var body map[string]string
			mustJSON(t, r.body, &body)
			if body["hello"] != "world" || len(body) != 1 {
				t.Errorf("body = %s", r.body)
			}
		})
	}
}

func TestCreateKey(t *testing.T) {
	f := newFixture(t, Options{})
	admin, _ := f.s.KeyByToken(f.dev)
	k := f.create(t, f.dev, "vault-role-a")

	if !tokenPattern.MatchString(k.Token) {
		t.Errorf("token %q does not match %s", k.Token, tokenPattern)
	}
	if k.TokenPrefix != k.Token[:8] || k.Name != "vault-role-a" || !k.IsActive || k.HeronID == "" {
		t.Errorf("created = %+v", k)
	}
	if strings.HasPrefix(k.HeronID, "key_") || k.HeronID == admin.ID {
		t.Errorf("heron_id %q should be an opaque id distinct from tokens", k.HeronID)
	}
	created, err := time.Parse(time.RFC3339Nano, k.Created)
	if err != nil {
		t.Fatalf("created %q is not RFC 3339: %v", k.Created, err)
	}
	rec, ok := f.s.Key(k.HeronID)
	if !ok {
		t.Fatal("created key not in Keys")
	}
	if !rec.Created.Equal(created) || rec.Token != k.Token || rec.Environment != "development" ||
		rec.CreatedBy != admin.ID || !rec.IsActive || rec.Deleted || rec.LastUsed != nil {
		t.Errorf("record = %+v, response %+v", rec, k)
	}
	if r := f.do(t, "GET", "/api/hello_world/authenticated", k.Token, nil); r.status != 200 {
		t.Errorf("new key cannot authenticate: %d", r.status)
	}
	// Keys created by a created key stay in the same environment.
	k2 := f.create(t, k.Token, "child")
	if rec2, _ := f.s.Key(k2.HeronID); rec2.Environment != "development" || rec2.CreatedBy != k.HeronID {
		t.Errorf("child record = %+v", rec2)
	}
	if got := len(f.s.LiveKeys("development")); got != 3 {
		t.Errorf("LiveKeys = %d, want 3", got)
	}
	if got := len(f.s.LiveKeys("production")); got != 1 {
		t.Errorf("production LiveKeys = %d, want 1", got)
	}
	// Names need not be unique.
	if dup := f.create(t, f.dev, "vault-role-a"); dup.HeronID == k.HeronID || dup.Token == k.Token {
		t.Error("duplicate name should create a distinct key")
	}
}

func TestCreateKeyValidation(t *testing.T) {
	f := newFixture(t, Options{})
	tests := []struct {
		name   string
		body   any
		ctype  string // "" keeps application/json
		status int
		field  string // expected key under description.json, "" for a string description
	}{
		{"name 0 chars", `{"name":""}`, "", 400, "name"},
		{"name 1 char", `{"name":"a"}`, "", 201, ""},
		{"name 128 chars", `{"name":"` + strings.Repeat("a", 128) + `"}`, "", 201, ""},
		{"name 128 runes multibyte", `{"name":"` + strings.Repeat("é", 128) + `"}`, "", 201, ""},
		{"name 129 chars", `{"name":"` + strings.Repeat("a", 129) + `"}`, "", 400, "name"},
		{"name 129 runes multibyte", `{"name":"` + strings.Repeat("é", 129) + `"}`, "", 400, "name"},
		{"missing name", `{}`, "", 400, "name"},
		{"null name", `{"name":null}`, "", 400, "name"},
		{"number name", `{"name":42}`, "", 400, "name"},
		{"unknown field", `{"name":"a","scope":"all"}`, "", 400, "scope"},
		{"malformed JSON", `{"name":`, "", 400, ""},
		{"array body", `["a"]`, "", 400, ""},
		{"null body", `null`, "", 400, ""},
		{"trailing data", `{"name":"a"}{"name":"b"}`, "", 400, ""},
		{"empty body", "", "", 400, ""},
		{"form content type", `{"name":"a"}`, "application/x-www-form-urlencoded", 400, ""},
		{"json with charset", `{"name":"a"}`, "application/json; charset=utf-8", 201, ""},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			before := len(f.s.Keys())
			hdr := map[string]string{}
			if tc.ctype != "" {
				hdr["Content-Type"] = tc.ctype
			}
			body := tc.body
			if body == "" {
				body = nil
			}
			r, err := f.try("POST", "/api/credentials/keys", f.dev, body, hdr)
			if err != nil {
				t.Fatal(err)
			}
			after := len(f.s.Keys())
			if tc.status == 201 {
				if r.status != 201 || after != before+1 {
					t.Fatalf("status %d body %s, keys %d -> %d", r.status, r.body, before, after)
				}
				return
			}
			desc := wantError(t, r, tc.status)
			if after != before {
				t.Errorf("a rejected create added a key")
			}
			if tc.field == "" {
				if _, ok := desc.(string); !ok {
					t.Errorf("description = %#v, want a string", desc)
				}
				return
			}
			obj, _ := desc.(map[string]any)
			fields, _ := obj["json"].(map[string]any)
			if msgs, _ := fields[tc.field].([]any); len(msgs) == 0 {
				t.Errorf("description = %#v, want json.%s messages", desc, tc.field)
			}
		})
	}
}

func TestListKeys(t *testing.T) {
	f := newFixture(t, Options{})
	admin, _ := f.s.KeyByToken(f.dev)
	a := f.create(t, f.dev, "a")
	b := f.create(t, f.dev, "b")
	f.create(t, f.prod, "prod-only")
	f.clk.Advance(time.Second)
	f.do(t, "GET", "/api/hello_world/authenticated", a.Token, nil)
	f.do(t, "PUT", "/api/credentials/keys/"+b.HeronID+"/deactivate", f.dev, nil)
	gone := f.create(t, f.dev, "gone")
	f.do(t, "DELETE", "/api/credentials/keys/"+gone.HeronID, f.dev, nil)

	r := f.do(t, "GET", "/api/credentials/keys", f.dev, nil)
	if bytes.Contains(r.body, []byte(`"token"`)) || bytes.Contains(r.body, []byte(a.Token)) {
		t.Fatalf("list leaks a token: %s", r.body)
	}
	keys := f.list(t, f.dev)
	var ids []string
	byID := map[string]listedKeyJSON{}
	for _, k := range keys {
		ids = append(ids, k.HeronID)
		byID[k.HeronID] = k
		if _, err := time.Parse(time.RFC3339Nano, k.Created); err != nil {
			t.Errorf("created %q: %v", k.Created, err)
		}
	}
	if want := []string{admin.ID, a.HeronID, b.HeronID}; fmt.Sprint(ids) != fmt.Sprint(want) {
		t.Fatalf("listed %v, want %v (seeded first, creation order, deleted excluded)", ids, want)
	}
	if lu := byID[a.HeronID].LastUsed; lu == nil {
		t.Error("a was used but last_used is null")
	} else if got, err := time.Parse(time.RFC3339Nano, *lu); err != nil || !got.Equal(storeTime(f.clk.Now())) {
		t.Errorf("last_used = %q (%v), want %v", *lu, err, f.clk.Now())
	}
	if byID[b.HeronID].LastUsed != nil || byID[b.HeronID].IsActive {
		t.Errorf("b = %+v, want never used and inactive", byID[b.HeronID])
	}
	if byID[admin.ID].LastUsed == nil || !byID[admin.ID].IsActive {
		t.Errorf("admin = %+v, want used and active", byID[admin.ID])
	}
	if !bytes.Contains(r.body, []byte(`"last_used":null`)) {
		t.Errorf("never-used key should list last_used as null: %s", r.body)
	}
	if got := f.list(t, f.prod); len(got) != 2 {
		t.Errorf("production lists %d keys, want 2", len(got))
	}
}

func TestListEmptyAfterAdminDeletesItself(t *testing.T) {
	f := newFixture(t, Options{})
	other := f.create(t, f.dev, "other")
	admin, _ := f.s.KeyByToken(f.dev)
	if r := f.do(t, "DELETE", "/api/credentials/keys/"+admin.ID, f.dev, nil); r.status != 204 {
		t.Fatalf("self-delete: %d %s", r.status, r.body)
	}
	wantError(t, f.do(t, "GET", "/api/credentials/keys", f.dev, nil), 401)
	keys := f.list(t, other.Token)
	if len(keys) != 1 || keys[0].HeronID != other.HeronID {
		t.Errorf("list = %+v", keys)
	}
}

func TestDeactivateActivate(t *testing.T) {
	f := newFixture(t, Options{})
	k := f.create(t, f.dev, "rotating")
	hello := func() int { return f.do(t, "GET", "/api/hello_world/authenticated", k.Token, nil).status }
	setActive := func(action string) activeJSON {
		t.Helper()
		r := f.do(t, "PUT", "/api/credentials/keys/"+k.HeronID+"/"+action, f.dev, nil)
		if r.status != 200 {
			t.Fatalf("%s: %d %s", action, r.status, r.body)
		}
		var out activeJSON
		mustJSON(t, r.body, &out)
		return out
	}

	if got := hello(); got != 200 {
		t.Fatalf("before: %d", got)
	}
	f.clk.Advance(time.Minute)
	if out := setActive("deactivate"); out.HeronID != k.HeronID || out.IsActive {
		t.Errorf("deactivate = %+v", out)
	}
	if got := hello(); got != 401 {
		t.Errorf("deactivated key got %d, want 401", got)
	}
	// A deactivated key can manage nothing either.
	wantError(t, f.do(t, "GET", "/api/credentials/keys", k.Token, nil), 401)
	rec, _ := f.s.Key(k.HeronID)
	if rec.IsActive || rec.DeactivatedAt.IsZero() || !rec.DeactivatedAt.Equal(storeTime(f.clk.Now())) {
		t.Errorf("record after deactivate = %+v", rec)
	}
	if out := setActive("deactivate"); out.IsActive {
		t.Errorf("repeat deactivate = %+v", out)
	}
	for _, lk := range f.list(t, f.dev) {
		if lk.HeronID == k.HeronID && lk.IsActive {
			t.Error("list shows deactivated key as active")
		}
	}
	if out := setActive("activate"); !out.IsActive {
		t.Errorf("activate = %+v", out)
	}
	if got := hello(); got != 200 {
		t.Errorf("reactivated key got %d, want 200", got)
	}
	if out := setActive("activate"); !out.IsActive {
		t.Errorf("repeat activate = %+v", out)
	}
}

func TestNotFound(t *testing.T) {
	f := newFixture(t, Options{})
	prodKey := f.create(t, f.prod, "prod")
	deleted := f.create(t, f.dev, "deleted")
	f.do(t, "DELETE", "/api/credentials/keys/"+deleted.HeronID, f.dev, nil)
	ids := map[string]string{
		"unknown":           "00000000-0000-4000-8000-000000000000",
		"other environment": prodKey.HeronID,
		"deleted":           deleted.HeronID,
	}
	for what, id := range ids {
		for _, op := range []struct{ method, suffix string }{
			{"PUT", "/deactivate"}, {"PUT", "/activate"}, {"DELETE", ""},
		} {
			t.Run(what+" "+op.method+op.suffix, func(t *testing.T) {
				r := f.do(t, op.method, "/api/credentials/keys/"+id+op.suffix, f.dev, nil)
				if desc := wantError(t, r, 404); desc != "Key not found" {
					t.Errorf("description = %v", desc)
				}
			})
		}
	}
	if rec, _ := f.s.Key(prodKey.HeronID); !rec.IsActive || rec.Deleted {
		t.Errorf("a development key changed a production key: %+v", rec)
	}
}

func TestDelete(t *testing.T) {
	f := newFixture(t, Options{})
	k := f.create(t, f.dev, "doomed")
	r := f.do(t, "DELETE", "/api/credentials/keys/"+k.HeronID, f.dev, nil)
	if r.status != 204 || len(r.body) != 0 {
		t.Fatalf("delete: %d %q", r.status, r.body)
	}
	if ct := r.header.Get("Content-Type"); ct != "" {
		t.Errorf("204 carries Content-Type %q", ct)
	}
	wantError(t, f.do(t, "GET", "/api/hello_world/authenticated", k.Token, nil), 401)
	wantError(t, f.do(t, "DELETE", "/api/credentials/keys/"+k.HeronID, f.dev, nil), 404)
	wantError(t, f.do(t, "PUT", "/api/credentials/keys/"+k.HeronID+"/activate", f.dev, nil), 404)
	rec, ok := f.s.Key(k.HeronID)
	if !ok || !rec.Deleted || rec.DeletedAt.IsZero() {
		t.Errorf("Key after delete = %+v, %v", rec, ok)
	}
	if _, ok := f.s.KeyByToken(k.Token); !ok {
		t.Error("KeyByToken forgets deleted keys")
	}
	if n := len(f.s.KeysIn("development")); n != 2 {
		t.Errorf("KeysIn = %d, want 2 (deleted included)", n)
	}
	if n := len(f.s.LiveKeys("development")); n != 1 {
		t.Errorf("LiveKeys = %d, want 1", n)
	}
}

func TestEnvironmentIsolation(t *testing.T) {
	f := newFixture(t, Options{})
	d := f.create(t, f.dev, "same-name")
	p := f.create(t, f.prod, "same-name")
	for _, tc := range []struct {
		env, token, own, foreign string
	}{
		{"development", f.dev, d.HeronID, p.HeronID},
		{"production", f.prod, p.HeronID, d.HeronID},
	} {
		t.Run(tc.env, func(t *testing.T) {
			for _, k := range f.list(t, tc.token) {
				if k.HeronID == tc.foreign {
					t.Error("list shows another environment's key")
				}
				if rec, _ := f.s.Key(k.HeronID); rec.Environment != tc.env {
					t.Errorf("listed key of %s", rec.Environment)
				}
			}
			wantError(t, f.do(t, "PUT", "/api/credentials/keys/"+tc.foreign+"/deactivate", tc.token, nil), 404)
			wantError(t, f.do(t, "DELETE", "/api/credentials/keys/"+tc.foreign, tc.token, nil), 404)
			if r := f.do(t, "PUT", "/api/credentials/keys/"+tc.own+"/deactivate", tc.token, nil); r.status != 200 {
				t.Errorf("own deactivate: %d", r.status)
			}
		})
	}
	if got := f.s.Environments(); fmt.Sprint(got) != "[development production]" {
		t.Errorf("Environments = %v", got)
	}
}

func TestRouting(t *testing.T) {
	f := newFixture(t, Options{})
	tests := []struct {
		method, path, token string
		want                int
		allow               string
	}{
		{"GET", "/api/nope", f.dev, 404, ""},
		{"GET", "/api/nope", "", 404, ""},
		{"GET", "/", "", 404, ""},
		{"GET", "/_emulator/keys", "", 404, ""}, // control surface is off by default
		{"GET", "/api/credentials/keys/", f.dev, 404, ""},
		{"GET", "/api/credentials/keys/x/y/z", f.dev, 404, ""},
		{"DELETE", "/api/credentials/keys", f.dev, 405, "GET, POST"},
		{"PUT", "/api/credentials/keys", "", 405, "GET, POST"},
		{"GET", "/api/credentials/keys/abc", f.dev, 405, "DELETE"},
		{"POST", "/api/credentials/keys/abc/deactivate", f.dev, 405, "PUT"},
		{"GET", "/api/credentials/keys/abc/activate", f.dev, 405, "PUT"},
		{"POST", "/api/hello_world", "", 405, "GET"},
		{"PATCH", "/api/hello_world/authenticated", f.dev, 405, "GET"},
	}
	for _, tc := range tests {
		t.Run(tc.method+" "+tc.path, func(t *testing.T) {
			r := f.do(t, tc.method, tc.path, tc.token, nil)
			wantError(t, r, tc.want)
			if got := r.header.Get("Allow"); got != tc.allow {
				t.Errorf("Allow = %q, want %q", got, tc.allow)
			}
		})
	}
	t.Run("HEAD", func(t *testing.T) {
		if r := f.do(t, "HEAD", "/api/hello_world", "", nil); r.status != 405 {
			t.Errorf("HEAD = %d", r.status)
		}
	})
}

func TestRequestRecords(t *testing.T) {
	f := newFixture(t, Options{})
	bogus := NewKeyToken()
	f.do(t, "GET", "/api/hello_world", "", nil)
	f.do(t, "GET", "/api/credentials/keys", bogus, nil)
	k := f.create(t, f.dev, "x")
	f.do(t, "PUT", "/api/credentials/keys/"+k.HeronID+"/deactivate", f.dev, nil)
	f.do(t, "GET", "/api/credentials/keys", f.prod, nil)

	reqs := f.s.Requests()
	if len(reqs) != 5 {
		t.Fatalf("%d requests recorded", len(reqs))
	}
	want := []RequestRecord{
		{Method: "GET", Path: "/api/hello_world", Route: "/api/hello_world", Status: 200, Processed: 200},
		{Method: "GET", Path: "/api/credentials/keys", Route: "/api/credentials/keys", Status: 401, KeyPrefix: bogus[:8]},
		{Method: "POST", Path: "/api/credentials/keys", Route: "/api/credentials/keys", Environment: "development", User: DefaultUser, Status: 201, Processed: 201, KeyPrefix: f.dev[:8]},
		{Method: "PUT", Path: "/api/credentials/keys/" + k.HeronID + "/deactivate", Route: "/api/credentials/keys/{heron_id}/deactivate", Environment: "development", User: DefaultUser, Status: 200, Processed: 200, KeyPrefix: f.dev[:8]},
		{Method: "GET", Path: "/api/credentials/keys", Route: "/api/credentials/keys", Environment: "production", User: DefaultUser, Status: 200, Processed: 200, KeyPrefix: f.prod[:8]},
	}
	for i, w := range want {
		got := reqs[i]
		if !got.Time.Equal(f.clk.Now()) || got.UserAgent != "herontest-test/1" {
			t.Errorf("request %d: time %v user agent %q", i, got.Time, got.UserAgent)
		}
		got.Time, got.UserAgent = time.Time{}, ""
		if got != w {
			t.Errorf("request %d = %+v\nwant %+v", i, got, w)
		}
	}
	counts := []struct {
		method, prefix, env string
		want                int
	}{
		{"", "", "", 5},
		{"GET", "", "", 3},
		{"", "/api/credentials/keys", "", 4},
		{"", "/api/credentials/keys/", "", 1},
		{"", "", "development", 2},
		{"POST", "/api/credentials", "production", 0},
	}
	for _, c := range counts {
		if got := f.s.CountRequests(c.method, c.prefix, c.env); got != c.want {
			t.Errorf("CountRequests(%q,%q,%q) = %d, want %d", c.method, c.prefix, c.env, got, c.want)
		}
	}
	f.s.ResetRequests()
	if n := len(f.s.Requests()); n != 0 {
		t.Errorf("%d requests after reset", n)
	}
}

func TestAddAdminKey(t *testing.T) {
	f := newFixture(t, Options{})
	tok := f.s.AddAdminKey("staging")
	if !tokenPattern.MatchString(tok) {
		t.Fatalf("token %q", tok)
	}
	rec, ok := f.s.KeyByToken(tok)
	if !ok || rec.Environment != "staging" || rec.CreatedBy != "" || !rec.IsActive {
		t.Fatalf("record = %+v", rec)
	}
	if keys := f.list(t, tok); len(keys) != 1 || keys[0].HeronID != rec.ID {
		t.Errorf("staging list = %+v", keys)
	}
	second := f.s.AddAdminKey("development")
	if keys := f.list(t, second); len(keys) != 2 {
		t.Errorf("development list = %+v", keys)
	}
}

func TestSeedValidation(t *testing.T) {
	tok := NewKeyToken()
	for name, envs := range map[string]map[string][]string{
		"uppercase":     {"dev": {strings.ToUpper(tok)}},
		"short":         {"dev": {tok[:51]}},
		"duplicate":     {"dev": {tok}, "prod": {tok}},
		"empty env":     {"": {tok}},
		"no key prefix": {"dev": {"abc_" + tok[4:]}},
	} {
		t.Run(name, func(t *testing.T) {
			defer func() {
				if recover() == nil {
					t.Error("no panic")
				}
			}()
			NewUnstartedServer(Options{Environments: envs})
		})
	}
}

func TestLifecycle(t *testing.T) {
	s := NewUnstartedServer(Options{Environments: map[string][]string{"development": {NewKeyToken()}}})
	if err := s.StartOn("127.0.0.1:0"); err != nil {
		t.Fatal(err)
	}
	if err := s.StartOn("127.0.0.1:0"); err == nil {
		t.Error("second start succeeded")
	}
	s.SetFaults(Faults{Latency: time.Hour})
	errc := make(chan error, 1)
	go func() {
		resp, err := http.Get(s.URL + "/api/hello_world")
		if err == nil {
			resp.Body.Close()
		}
		errc <- err
	}()
	for s.CountRequests("", "", "") == 0 {
		time.Sleep(time.Millisecond)
	}
	done := make(chan struct{})
	go func() { s.Close(); close(done) }()
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		t.Fatal("Close waited out the injected latency")
	}
	if err := <-errc; err == nil {
		t.Error("request during Close succeeded")
	}
	s.Close() // idempotent

	s2 := NewServer(Options{})
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := s2.Shutdown(ctx); err != nil {
		t.Errorf("Shutdown: %v", err)
	}
}

func TestConcurrentUse(t *testing.T) {
	f := newFixture(t, Options{RateLimitPerMinute: -1})
	f.c.Transport.(*http.Transport).DisableKeepAlives = false
	f.s.SetFaults(Faults{ErrorRate: 0.2, Seed: 3})
	var wg sync.WaitGroup
	for g := range 8 {
		wg.Go(func() {
			for i := range 15 {
				tok := f.dev
				if g%2 == 1 {
					tok = f.prod
				}
				r, err := f.try("POST", "/api/credentials/keys", tok, map[string]string{"name": fmt.Sprint(g, "-", i)}, nil)
				if err != nil {
					t.Error(err)
					return
				}
				if r.status == 201 {
					var k createdKeyJSON
					if json.Unmarshal(r.body, &k) == nil {
						_, _ = f.try("PUT", "/api/credentials/keys/"+k.HeronID+"/deactivate", tok, nil, nil)
					}
				}
				_, _ = f.try("GET", "/api/credentials/keys", tok, nil, nil)
				_ = f.s.Keys()
				_ = f.s.MaxInWindow("", time.Minute)
				_ = f.s.Stats("", time.Minute)
			}
		})
	}
	wg.Go(func() {
		for range 50 {
			f.s.SetFaults(Faults{ErrorRate: 0.1})
			f.s.SetRateLimit(-1)
			f.s.FailNext("GET", "/api/credentials/keys", 1, FaultStatus503)
		}
	})
	wg.Wait()
	tokens := map[string]bool{}
	ids := map[string]bool{}
	for _, k := range f.s.Keys() {
		if tokens[k.Token] || ids[k.ID] {
			t.Fatalf("duplicate key %+v", k)
		}
		tokens[k.Token], ids[k.ID] = true, true
	}
}
