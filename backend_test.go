package heron

import (
	"context"
	"math"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/hashicorp/vault/sdk/logical"
	"github.com/stretchr/testify/require"

	"github.com/heron-vault/vault-plugin-secrets-heron/heronapi"
	"github.com/heron-vault/vault-plugin-secrets-heron/herontest"
)

// testEnv is one backend wired to one emulator over HTTP: the one harness of
// the root package's tests, benchmarks and fuzz targets (newTestEnv). The
// model-based test builds its own, since rapid's T is not a testing.TB.
type testEnv struct {
	t testing.TB
	b *heronBackend
	// start builds another backend on the same storage (see restart).
	start    func() *heronBackend
	s        logical.Storage
	srv      *herontest.Server
	adminKey map[string]string // environment -> seeded admin key
	// allowLive lists keys a test deliberately leaves active.
	allowLive map[string]bool
	// foreign lists keys made behind the engine's back (a customer's own
	// keys): the engine must neither track nor touch them.
	foreign map[string]bool
}

const (
	testDefaultLeaseTTL = 1 * time.Hour
	testMaxLeaseTTL     = 24 * time.Hour
)

// testSetup is what the options of newTestEnv change.
type testSetup struct {
	events    logical.EventSender
	wrap      func(logical.Storage) logical.Storage
	logger    hclog.Logger
	unlimited bool
	leftovers bool
}

// testOption changes how newTestEnv builds the environment.
type testOption func(*testSetup)

// withStorage wraps the in-memory storage (to count or fail operations).
func withStorage(wrap func(logical.Storage) logical.Storage) testOption {
	return func(c *testSetup) { c.wrap = wrap }
}

// withEvents gives the backend an event sender (logical.MockEventSender).
func withEvents(sender logical.EventSender) testOption {
	return func(c *testSetup) { c.events = sender }
}

// withLogger replaces the default (warnings, into the test log).
func withLogger(l hclog.Logger) testOption { return func(c *testSetup) { c.logger = l } }

// withUnlimitedBudget keeps the engine's limiter in the path (same code,
// same allocations) but never waiting: for benchmarks, where the engine's
// highest budget would measure the budget instead of the handler.
func withUnlimitedBudget() testOption { return func(c *testSetup) { c.unlimited = true } }

// withoutLeftoverCheck is for benchmarks and fuzz targets, which leave keys
// behind on purpose or make none.
func withoutLeftoverCheck() testOption { return func(c *testSetup) { c.leftovers = false } }

// getTestBackend is newTestEnv with the defaults, for tests.
func getTestBackend(t *testing.T) *testEnv { return newTestEnv(t) }

// newTestEnv starts an emulator with a development and a production
// environment and a backend talking to it. Unless told otherwise, at the end
// it fails if any key the test issued is still active in Heron without being
// allowed, or if any key Heron still holds is unknown to the engine.
func newTestEnv(tb testing.TB, opts ...testOption) *testEnv {
	tb.Helper()
	setup := testSetup{leftovers: true}
	for _, o := range opts {
		o(&setup)
	}
	dev, prod := herontest.NewKeyToken(), herontest.NewKeyToken()
	srv := herontest.NewServer(herontest.Options{
		Environments: map[string][]string{"development": {dev}, "production": {prod}},
		// The tests send a few hundred requests; keep the emulator's limit out
		// of the way unless a test sets it.
		RateLimitPerMinute: -1,
	})
	tb.Cleanup(srv.Close)

	conf := logical.TestBackendConfig()
	var storage logical.Storage = &logical.InmemStorage{}
	if setup.wrap != nil {
		storage = setup.wrap(storage)
	}
	conf.StorageView = storage
	conf.EventsSender = setup.events
	conf.Logger = setup.logger
	if conf.Logger == nil {
		conf.Logger = hclog.New(&hclog.LoggerOptions{Level: hclog.Warn, Output: testWriter{tb}})
	}
	conf.System = &logical.StaticSystemView{
		DefaultLeaseTTLVal: testDefaultLeaseTTL,
		MaxLeaseTTLVal:     testMaxLeaseTTL,
	}
	start := func() *heronBackend {
		b := backend()
		b.retryWaitMin = 5 * time.Millisecond
		if setup.unlimited {
			b.newClient = func(cfg *heronConfig, _ *heronapi.Limiter) (heronapi.API, error) {
				return heronapi.New(b.clientConfig(cfg, heronapi.NewLimiter(math.MaxInt32)))
			}
		}
		require.NoError(tb, b.Setup(context.Background(), conf))
		return b
	}

	e := &testEnv{
		t: tb, b: start(), start: start, s: storage, srv: srv,
		adminKey:  map[string]string{"development": dev, "production": prod},
		allowLive: map[string]bool{},
		foreign:   map[string]bool{},
	}
	if setup.leftovers {
		tb.Cleanup(e.checkNoLeftovers)
	}
	return e
}

// testWriter sends backend logs to the test log.
type testWriter struct{ t testing.TB }

func (w testWriter) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimRight(string(p), "\n"))
	return len(p), nil
}

// checkNoLeftovers is the cleanup check every test gets.
func (e *testEnv) checkNoLeftovers() {
	t := e.t
	admin := map[string]bool{}
	for _, k := range e.adminKey {
		admin[k] = true
	}
	// Admin keys the engine made by rotation: each is a config's current
	// admin key or a rotated-out one it still owes a deletion; nothing else.
	ownAdmin := map[string]bool{}
	envs, err := e.s.List(context.Background(), configStoragePrefix)
	if err != nil {
		t.Errorf("listing configs: %v", err)
	}
	for _, env := range envs {
		cfg, err := getConfig(context.Background(), e.s, env)
		if err != nil || cfg == nil {
			continue
		}
		ownAdmin[cfg.AdminKeyID] = true
		for _, rk := range cfg.RetiredKeys {
			ownAdmin[rk.KeyID] = true
		}
	}
	// Keys a static role holds (current, or previous during its overlap)
	// are live by design.
	statics, err := listStaticRoles(context.Background(), e.s)
	if err != nil {
		t.Errorf("listing static roles: %v", err)
	}
	held := map[string]bool{}
	for _, r := range statics {
		held[r.KeyID], held[r.PreviousKeyID] = true, true
	}
	unconfirmed, err := unconfirmedKeys(context.Background(), e.s)
	if err != nil {
		t.Errorf("listing unconfirmed keys: %v", err)
	}
	for _, k := range e.srv.Keys() {
		if k.Deleted || admin[k.Token] || (held[k.ID] && k.ID != "") {
			continue
		}
		if strings.HasPrefix(k.Name, "vault-admin-") {
			if !ownAdmin[k.ID] {
				t.Errorf("leftover: admin key %s (%q, active=%v) made by a rotation is neither a config's admin key nor a retired one", k.ID, k.Name, k.IsActive)
			}
			continue
		}
		if e.foreign[k.ID] {
			if !k.IsActive {
				t.Errorf("leftover check: the engine deactivated a key it does not own: %s (%q)", k.ID, k.Name)
			}
			continue
		}
		rec, err := getTrackedKey(context.Background(), e.s, k.ID)
		if err != nil {
			t.Errorf("reading record of %s: %v", k.ID, err)
			continue
		}
		if rec == nil && unconfirmed[k.ID] {
			// Named like a creation of unknown outcome whose name is not
			// unique: reported, never deleted on the name alone.
			continue
		}
		if rec == nil {
			t.Errorf("leftover: Heron holds key %s (%q, active=%v) that the engine does not track", k.ID, k.Name, k.IsActive)
			continue
		}
		if k.IsActive && !e.allowLive[k.ID] {
			t.Errorf("leftover: key %s (%q) is still active at the end of the test", k.ID, k.Name)
		}
	}
}

// restart replaces the backend with a new instance on the same storage, as
// a plugin reload does (Vault cleans the old one up) or, with crash, as a
// plugin process killed mid-flight leaves it.
func (e *testEnv) restart(crash bool) {
	if !crash {
		e.b.Cleanup(context.Background())
	}
	e.b = e.start()
}

func (e *testEnv) do(op logical.Operation, path string, data map[string]interface{}) (*logical.Response, error) {
	e.t.Helper()
	return e.b.HandleRequest(context.Background(), &logical.Request{
		Operation:   op,
		Path:        path,
		Data:        data,
		Storage:     e.s,
		DisplayName: "token-tester",
	})
}

// ok runs a request that must succeed.
func (e *testEnv) ok(op logical.Operation, path string, data map[string]interface{}) *logical.Response {
	e.t.Helper()
	resp, err := e.do(op, path, data)
	require.NoError(e.t, err, "%s %s", op, path)
	if resp != nil {
		require.False(e.t, resp.IsError(), "%s %s: %v", op, path, resp.Error())
	}
	return resp
}

// badRequest runs a request that must be a 400 whose message contains want.
func (e *testEnv) badRequest(op logical.Operation, path string, data map[string]interface{}, want string) {
	e.t.Helper()
	resp, err := e.do(op, path, data)
	require.NoError(e.t, err, "%s %s must be a user error, not an internal one", op, path)
	require.NotNil(e.t, resp)
	require.True(e.t, resp.IsError(), "%s %s must fail", op, path)
	code, _ := logical.RespondErrorCommon(&logical.Request{Operation: op}, resp, nil)
	require.Equal(e.t, http.StatusBadRequest, code)
	require.Contains(e.t, resp.Error().Error(), want)
}

func (e *testEnv) configure(env string) {
	e.t.Helper()
	e.ok(logical.CreateOperation, "config/"+env, map[string]interface{}{
		"admin_api_key": e.adminKey[env],
		"base_url":      e.srv.URL,
		"max_retries":   3,
		// The engine's own limiter is tested on its own; here it would only
		// make the suite slow.
		"rate_limit_per_minute": maxRateLimitPerMinute,
	})
}

func (e *testEnv) role(name string, data map[string]interface{}) {
	e.t.Helper()
	if _, ok := data["environment"]; !ok {
		data["environment"] = "development"
	}
	e.ok(logical.CreateOperation, "roles/"+name, data)
}

// issue reads creds/<role> and returns the response with its lease secret.
func (e *testEnv) issue(role string) *logical.Response {
	e.t.Helper()
	resp := e.ok(logical.ReadOperation, "creds/"+role, nil)
	require.NotNil(e.t, resp.Secret)
	// Vault stamps the issue time when it registers the lease.
	resp.Secret.IssueTime = time.Now()
	return resp
}

func (e *testEnv) revoke(resp *logical.Response) error {
	e.t.Helper()
	r, err := e.b.HandleRequest(context.Background(), &logical.Request{
		Operation: logical.RevokeOperation,
		Path:      "creds/x",
		Storage:   e.s,
		Secret:    resp.Secret,
	})
	if err == nil && r != nil && r.IsError() {
		err = r.Error()
	}
	return err
}

func (e *testEnv) renew(resp *logical.Response, increment time.Duration) (*logical.Response, error) {
	e.t.Helper()
	secret := *resp.Secret
	secret.Increment = increment
	return e.b.HandleRequest(context.Background(), &logical.Request{
		Operation: logical.RenewOperation,
		Path:      "creds/x",
		Storage:   e.s,
		Secret:    &secret,
	})
}

// authenticates reports whether token is accepted by the emulator.
func (e *testEnv) authenticates(token string) bool {
	e.t.Helper()
	req, err := http.NewRequest(http.MethodGet, e.srv.URL+"/api/hello_world/authenticated", nil)
	require.NoError(e.t, err)
	req.Header.Set("x-api-key", token)
	res, err := http.DefaultClient.Do(req)
	require.NoError(e.t, err)
	res.Body.Close()
	return res.StatusCode == http.StatusOK
}

// atTime makes the backend's clock read t from now on.
func (e *testEnv) atTime(t time.Time) { e.b.now = func() time.Time { return t } }

var httpClient = &http.Client{Timeout: 10 * time.Second}

// newHeronRequest builds a request to the emulator authenticated with the
// development admin key, for tests that act on Heron behind the engine's back.
func newHeronRequest(e *testEnv, method, path string) (*http.Request, error) {
	req, err := http.NewRequest(method, e.srv.URL+path, nil)
	if err != nil {
		return nil, err
	}
	req.Header.Set("x-api-key", e.adminKey["development"])
	return req, nil
}

// setActiveDirect (de)activates a key in Heron behind the engine's back,
// authenticating with the production admin key's sibling in development: a
// fresh admin key, since the one being deactivated cannot reactivate itself.
func setActiveDirect(t *testing.T, e *testEnv, id string, active bool) {
	t.Helper()
	helper := e.srv.AddAdminKey("development")
	action := "deactivate"
	if active {
		action = "activate"
	}
	req, err := http.NewRequest(http.MethodPut, e.srv.URL+"/api/credentials/keys/"+id+"/"+action, nil)
	require.NoError(t, err)
	req.Header.Set("x-api-key", helper)
	res, err := httpClient.Do(req)
	require.NoError(t, err)
	res.Body.Close()
	require.Equal(t, http.StatusOK, res.StatusCode)
	e.adminKey["helper-"+id+action] = helper
}
