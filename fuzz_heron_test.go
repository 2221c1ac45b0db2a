package heron

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/hashicorp/vault/sdk/logical"

	"github.com/heron-vault/vault-plugin-secrets-heron/heronapi"
	"github.com/heron-vault/vault-plugin-secrets-heron/herontest"
)

// FuzzHeronAnswers puts a misbehaving gateway between the engine and Heron: the
// input decides, request by request, what the engine gets back (the emulator's
// true answer, that answer lost or replaced after Heron processed it, a
// replayed earlier answer, a status with a templated or raw body, odd
// Retry-After / X-RateLimit-* / Date headers). Once the input is spent the
// gateway is honest. The engine is driven through its public surface (Factory,
// HandleRequest): a config and two roles, creds for both, a revocation, a tidy,
// Vault's rollback tick (periodic pass, write-ahead rollback), creds again and
// the keys paths. Checked, against the emulator's own record of the truth:
//   - no panic, and no request outlives its deadline by more than a hang would;
//   - a token handed out by creds/<role> is a key Heron created under the name
//     the engine reports, rendered for that role, with the id reported, and
//     never a token already handed to anyone (a replayed 201 must not give
//     creds/ci the token created for creds/payments);
//   - nothing tracked is dropped while its key still lives in Heron, unless
//     the gateway served that step a fact the engine cannot tell from the
//     truth (a fabricated 2xx or 404, or a well-formed list);
//   - the writes of valid user input (config with verify=false, roles) succeed;
//   - at the end, after a tidy with honest answers, every live key the engine
//     made is held by a record or named by a creation record still to settle
//     (unless a fabricated fact was served: a 204 to a DELETE that never
//     reached Heron is indistinguishable from the truth).
func FuzzHeronAnswers(f *testing.F) {
	// Each answer is: op, header flags, then the op's own bytes (see serve).
	f.Add([]byte{})
	f.Add([]byte{0, 0, 4, 0})                         // payments honest, ci gets payments' 201 replayed
	f.Add([]byte{1, 0, 0, 0, 0, 0})                   // payments' POST processed, answer lost
	f.Add([]byte{0, 0, 0, 0, 0, 0, 2, 0, 0, 3})       // payments, ci, revoke honest; tidy's list is {"keys": null}
	f.Add([]byte{0, 0, 0, 0, 0, 0, 2, 0, 0, 6})       // ... tidy's list is {"keys": [{}]}
	f.Add([]byte{0, 0, 0, 0, 3, 0, 0, 0, 6, 0, 40})   // revoke's DELETE processed then 502; tidy's list cut short
	f.Add([]byte{2, 1, 7, 4, 0, 2, 0, 2, 1, 9, 0, 5}) // 429 with a far Retry-After, then a 503
	f.Add([]byte{0, 6, 1, 2, 0, 0, 0, 0, 0, 0, 5, 0, 2, 5, 'n', 'u', 'l', 'l', '!'})
	f.Add([]byte{2, 0, 1, 8, 0, 0, 0, 0, 2, 0, 3, 0}) // a 201 with an id that is no path segment
	f.Add([]byte{7, 2, 0, 7, 3, 0, 0, 0, 4, 0, 4, 0}) // low X-RateLimit-Remaining, a Date in 9999, replays
	f.Fuzz(func(t *testing.T, script []byte) {
		if len(script) > 512 {
			return // a few answers per upstream call are enough; keep runs short
		}
		runHeronAnswers(t, script)
	})
}

// fuzzStatuses and fuzzBodies are what a fabricated answer is made of.
var (
	fuzzStatuses = []int{200, 201, 204, 400, 401, 404, 409, 429, 500, 502, 503, 504}
	fuzzBodies   = []string{
		`{"code": 500, "description": "Internal Server Error", "name": "Internal Server Error"}`,
		``,
		`null`,
		`{"keys": null}`,
		`{}`,
		`{"keys": []}`,
		`{"keys": [{}]}`,
		`<html><body>maintenance</body></html>`,
		`{"heron_id": "../x", "name": "n", "token": "key_0000000000000000000000000000000000000000000000000", "token_prefix": "key_0000", "created": "2026-12-06T00:00:00Z", "is_active": true}`,
		`{"keys": [{"heron_id": "a", "created": "9999-01-01T00:00:00Z"}]}`,
		`{"keys": [{"heron_id": "a", "name": "x", "created": "2026-12-06T00:00:00Z", "is_active": true}], "keys": []}`,
		`{"heron_id": "k", "is_active": false}`,
	}
	fuzzRetryAfter = []string{"0", "-1", "soon", "Mon, 01 Jan 0001 00:00:00 GMT", "120", "Fri, 31 Dec 9999 23:59:59 GMT", "99999999999999999999"}
	fuzzDates      = []string{"Fri, 31 Dec 9999 23:59:59 GMT", "Mon, 01 Jan 0001 00:00:00 GMT", "yesterday", ""}
)

// fuzzRateLimit is a set of X-RateLimit-* headers; reset is seconds from now.
var fuzzRateLimit = []struct {
	limit, remaining string
	reset            int64
	raw              string
}{
	{"500", "400", 30, ""},
	{"500", "0", 3600, ""},
	{"0", "0", 0, "x"},
	{"-1", "99999999999999999999", 0, "-9223372036854775808"},
	{"2", "3", 30, ""},
}

// answer is one answer the gateway served, for replays.
type answer struct {
	status int
	header http.Header
	body   []byte
	route  string
}

// heronGateway stands between the engine and the emulator.
type heronGateway struct {
	emu *herontest.Server

	mu      sync.Mutex
	script  []byte
	served  []answer
	fact    bool // this step got a fabricated answer the engine cannot tell from the truth
	anyFact bool // so did some step of this run
	answers int
	log     []string // what was asked and answered, for a failure's message
}

func (g *heronGateway) next() byte {
	if len(g.script) == 0 {
		return 0
	}
	b := g.script[0]
	g.script = g.script[1:]
	return b
}

// route names what a request is for, so that a replay answers like with like.
func route(r *http.Request) string {
	p := r.URL.Path
	switch {
	case strings.HasSuffix(p, "/deactivate"), strings.HasSuffix(p, "/activate"):
		return r.Method + " key action"
	case strings.HasPrefix(p, "/api/credentials/keys/"):
		return r.Method + " key"
	}
	return r.Method + " " + p
}

func (g *heronGateway) forward(r *http.Request, body []byte) answer {
	rec := httptest.NewRecorder()
	req := r.Clone(r.Context())
	req.Body = io.NopCloser(bytes.NewReader(body))
	g.emu.Handler().ServeHTTP(rec, req)
	return answer{status: rec.Code, header: rec.Header().Clone(), body: rec.Body.Bytes(), route: route(r)}
}

// wellFormedList is a liberal reading of "a list the client would accept":
// liberal, so that no answer the client takes for a list is missed.
func wellFormedList(body []byte) bool {
	var l struct {
		Keys *[]heronapi.Key `json:"keys"`
	}
	if json.Unmarshal(body, &l) != nil || l.Keys == nil || *l.Keys == nil {
		return false
	}
	for _, k := range *l.Keys {
		if !heronapi.ValidKeyID(k.ID) {
			return false
		}
	}
	return true
}

func (g *heronGateway) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	body, _ := io.ReadAll(r.Body)
	g.mu.Lock()
	defer g.mu.Unlock()
	g.answers++
	op, flags := g.next()%8, g.next()
	var a answer
	genuine := false
	switch op {
	case 1: // processed, then the connection drops: the answer is lost
		g.forward(r, body)
		g.log = append(g.log, fmt.Sprintf("%s %s (%s): op 1, processed, answer dropped", r.Method, r.URL.Path, r.UserAgent()))
		if hj, ok := w.(http.Hijacker); ok {
			if conn, _, err := hj.Hijack(); err == nil {
				conn.Close()
				return
			}
		}
		w.WriteHeader(http.StatusBadGateway)
		return
	case 2: // not sent to Heron: a status with a templated body
		a = answer{status: fuzzStatuses[int(g.next())%len(fuzzStatuses)], body: []byte(fuzzBodies[int(g.next())%len(fuzzBodies)]), route: route(r)}
	case 3: // processed, then a gateway's 5xx
		a = g.forward(r, body)
		a.status = []int{500, 502, 503, 504}[int(g.next())%4]
		genuine = true // not a success: nothing to take for a fact
	case 4: // an earlier answer replayed (like with like when there is one)
		idx := int(g.next())
		for i := len(g.served) - 1; i >= 0; i-- {
			if g.served[i].route == route(r) {
				a = g.served[i]
				break
			}
		}
		if a.status == 0 && len(g.served) > 0 {
			a = g.served[idx%len(g.served)]
		}
		if a.status == 0 {
			a, genuine = g.forward(r, body), true
		}
	case 5: // not sent to Heron: a status with raw bytes from the input
		n := int(g.next()) % 64
		raw := g.script[:min(n, len(g.script))]
		g.script = g.script[len(raw):]
		a = answer{status: fuzzStatuses[int(g.next())%len(fuzzStatuses)], body: bytes.Clone(raw), route: route(r)}
	case 6: // processed, the answer cut short
		a = g.forward(r, body)
		a.body = a.body[:min(int(g.next()), len(a.body))]
		genuine = true
	default: // 0, 7: the truth
		a, genuine = g.forward(r, body), true
	}
	if !genuine && a.status != 0 {
		list := r.Method == http.MethodGet && r.URL.Path == "/api/credentials/keys"
		switch {
		case list && a.status/100 == 2:
			g.fact = g.fact || wellFormedList(a.body)
		case r.Method == http.MethodPost:
			// A made-up 201 cannot name the key asked for (its name ends
			// in random characters): the engine can tell, and the token
			// check below holds it to that.
		case a.status/100 == 2, a.status == http.StatusNotFound:
			g.fact = true
		}
		g.anyFact = g.anyFact || g.fact
	}
	h := w.Header()
	for k, vs := range a.header {
		h[k] = vs
	}
	if flags&1 != 0 {
		h.Set("Retry-After", fuzzRetryAfter[int(g.next())%len(fuzzRetryAfter)])
	}
	if flags&2 != 0 {
		rl := fuzzRateLimit[int(g.next())%len(fuzzRateLimit)]
		reset := strconv.FormatInt(time.Now().Unix()+rl.reset, 10)
		if rl.raw != "" {
			reset = rl.raw
		}
		h.Set("X-RateLimit-Limit", rl.limit)
		h.Set("X-RateLimit-Remaining", rl.remaining)
		h.Set("X-RateLimit-Reset", reset)
	}
	if flags&4 != 0 {
		h.Set("Date", fuzzDates[int(g.next())%len(fuzzDates)])
	}
	h.Del("Content-Length")
	g.log = append(g.log, fmt.Sprintf("%s %s (%s): op %d, %d %.80q", r.Method, r.URL.Path, r.UserAgent(), op, a.status, a.body))
	g.served = append(g.served, a)
	w.WriteHeader(a.status)
	_, _ = w.Write(a.body)
}

// startStep forgets what the previous step was served.
func (g *heronGateway) startStep() {
	g.mu.Lock()
	g.fact = false
	g.mu.Unlock()
}

func (g *heronGateway) servedFact() bool {
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.fact
}

// fuzzRequestTimeout is each request's deadline; fuzzHang is how far past it a
// request must still be running to count as waiting without bound.
const (
	fuzzRequestTimeout = 3 * time.Second
	fuzzHang           = time.Minute
)

func runHeronAnswers(t *testing.T, script []byte) {
	// A fresh admin key per run: the engine's budgets are shared per (base
	// URL, admin key), and a pause served to one run must not reach the next.
	admin := herontest.NewKeyToken()
	emu := herontest.NewUnstartedServer(herontest.Options{
		Environments:       map[string][]string{"development": {admin}},
		RateLimitPerMinute: -1,
	})
	g := &heronGateway{emu: emu, script: bytes.Clone(script)}
	gw := httptest.NewServer(g)
	defer gw.Close()
	defer emu.Close()

	storage := &logical.InmemStorage{}
	conf := logical.TestBackendConfig()
	conf.StorageView = storage
	conf.Logger = hclog.NewNullLogger()
	conf.System = &logical.StaticSystemView{DefaultLeaseTTLVal: time.Hour, MaxLeaseTTLVal: 24 * time.Hour}
	lb, err := Factory(context.Background(), conf)
	if err != nil {
		t.Fatal(err)
	}
	// Only to keep runs short: a 429 without Retry-After pauses the budget
	// for the backoff floor (1s by default).
	lb.(*heronBackend).retryWaitMin = time.Millisecond
	defer lb.Cleanup(context.Background())

	do := func(op logical.Operation, path string, data map[string]interface{}, secret *logical.Secret) (*logical.Response, error) {
		ctx, cancel := context.WithTimeout(context.Background(), fuzzRequestTimeout)
		defer cancel()
		type result struct {
			resp *logical.Response
			err  error
		}
		done := make(chan result, 1)
		go func() {
			resp, err := lb.HandleRequest(ctx, &logical.Request{
				Operation: op, Path: path, Data: data, Storage: storage, Secret: secret,
				DisplayName: "token-fuzz",
			})
			done <- result{resp, err}
		}()
		select {
		case r := <-done:
			return r.resp, r.err
		case <-time.After(fuzzRequestTimeout + fuzzHang):
			t.Fatalf("%s %s still running %s past its deadline", op, path, fuzzHang)
			return nil, nil
		}
	}
	mustSucceed := func(op logical.Operation, path string, data map[string]interface{}) {
		resp, err := do(op, path, data, nil)
		if err != nil || (resp != nil && resp.IsError()) {
			t.Fatalf("%s %s with valid input failed: %v %v", op, path, err, resp)
		}
	}
	tracked := func() map[string]bool {
		resp, err := lb.HandleRequest(context.Background(), &logical.Request{Operation: logical.ListOperation, Path: "keys/", Storage: storage})
		if err != nil || resp == nil || resp.IsError() {
			t.Fatalf("keys/ list: %v %v", err, resp)
		}
		ids := map[string]bool{}
		keys, _ := resp.Data["keys"].([]string)
		for _, id := range keys {
			ids[id] = true
		}
		return ids
	}
	defer func() {
		if t.Failed() {
			g.mu.Lock()
			t.Logf("answers:\n%s", strings.Join(g.log, "\n"))
			g.mu.Unlock()
		}
	}()
	handed := map[string]string{} // token -> role it went to
	// step runs one operation and checks that nothing tracked was dropped
	// while its key lives on in Heron.
	step := func(name string, run func()) {
		before := tracked()
		g.startStep()
		run()
		after := tracked()
		if g.servedFact() {
			return
		}
		for id := range before {
			if after[id] {
				continue
			}
			if k, ok := emu.Key(id); ok && !k.Deleted {
				t.Fatalf("%s: key %s (%s) dropped from tracking while it lives in Heron (active=%v)", name, id, k.Name, k.IsActive)
			}
		}
	}
	creds := func(role string) *logical.Response {
		var out *logical.Response
		step("creds/"+role, func() {
			resp, err := do(logical.ReadOperation, "creds/"+role, nil, nil)
			if err != nil || resp == nil || resp.IsError() || resp.Secret == nil {
				return
			}
			token, _ := resp.Data["api_key"].(string)
			keyID, _ := resp.Data["key_id"].(string)
			keyName, _ := resp.Data["key_name"].(string)
			if prev, ok := handed[token]; ok {
				t.Fatalf("creds/%s handed out a token already handed to creds/%s", role, prev)
			}
			handed[token] = role
			k, ok := emu.KeyByToken(token)
			switch {
			case !ok:
				t.Fatalf("creds/%s handed out a token Heron never created (key_id %s, key_name %s)", role, keyID, keyName)
			case k.Name != keyName || k.ID != keyID:
				t.Fatalf("creds/%s handed out the token of key %s (%s) as key %s (%s)", role, k.ID, k.Name, keyID, keyName)
			case !strings.HasPrefix(k.Name, "vault-"+role+"-"):
				t.Fatalf("creds/%s handed out the token of key %s, created for the name %q", role, k.ID, k.Name)
			}
			resp.Secret.IssueTime = time.Now()
			out = resp
		})
		return out
	}

	step("config", func() {
		mustSucceed(logical.CreateOperation, "config/development", map[string]interface{}{
			"admin_api_key": admin, "base_url": gw.URL, "verify": false,
			"max_retries": 2, "request_timeout": "2s", "rate_limit_per_minute": 100000,
		})
	})
	for _, role := range []string{"payments", "ci"} {
		step("roles/"+role, func() {
			mustSucceed(logical.CreateOperation, "roles/"+role, map[string]interface{}{"environment": "development"})
		})
	}
	payments := creds("payments")
	creds("ci")
	if payments != nil {
		step("revoke", func() {
			_, _ = do(logical.RevokeOperation, "creds/payments", nil, payments.Secret)
		})
	}
	step("tidy", func() {
		_, _ = do(logical.UpdateOperation, "tidy", nil, nil)
	})
	// Vault's rollback tick: the periodic pass and write-ahead rollback.
	step("rollback", func() {
		_, _ = do(logical.RollbackOperation, "", nil, nil)
	})
	creds("payments")
	for id := range tracked() {
		step("keys/"+id, func() {
			_, _ = do(logical.ReadOperation, "keys/"+id, nil, nil)
		})
	}

	// Then Heron answers honestly and a tidy runs: every key the engine made
	// is held by a record, named by a creation record still to settle, or
	// deleted (Invariant 1), whatever the answers before, unless one of them
	// was a fabricated fact (a 204 to a DELETE that never reached Heron).
	g.mu.Lock()
	g.script = nil
	lied := g.anyFact
	g.mu.Unlock()
	step("final tidy", func() {
		_, _ = do(logical.UpdateOperation, "tidy", nil, nil)
	})
	if lied {
		return
	}
	held := tracked()
	pending, err := lb.(*heronBackend).pendingCreations(context.Background(), storage)
	if err != nil {
		t.Fatal(err)
	}
	named := map[string]bool{}
	for _, e := range pending {
		named[e.KeyName] = true
	}
	for _, k := range emu.LiveKeys("development") {
		if k.Token == admin || held[k.ID] || named[k.Name] {
			continue
		}
		t.Fatalf("key %s (%s, active=%v) lives in Heron, held by no record of the engine after %d answers", k.ID, k.Name, k.IsActive, g.answers)
	}
}
