package heron

import (
	"context"
	"math"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/hashicorp/vault/sdk/helper/consts"
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
	system    logical.SystemView
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

// withSystemView replaces the default (the test TTLs, no replication).
func withSystemView(sys logical.SystemView) testOption {
	return func(c *testSetup) { c.system = sys }
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
	conf.BackendUUID = mountIDOf(storage)
	conf.EventsSender = setup.events
	conf.Logger = setup.logger
	if conf.Logger == nil {
		conf.Logger = hclog.New(&hclog.LoggerOptions{Level: hclog.Warn, Output: testWriter{tb}})
	}
	conf.System = &logical.StaticSystemView{
		DefaultLeaseTTLVal: testDefaultLeaseTTL,
		MaxLeaseTTLVal:     testMaxLeaseTTL,
	}
	if setup.system != nil {
		conf.System = setup.system
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

// Spec invariant 6: two mounts in one process with the same admin key and
// Heron, at 60 and 100000 requests a minute, share one limiter at 60/min
// whichever wrote its config or built its client last; a config write whose
// verify fails (Heron 500, or 401 for the deactivated key) leaves the budget
// as it was, on either mount.
func TestBudget_MountsSharingAnAdminKeyRunAtTheSmallestRate(t *testing.T) {
	ctx := context.Background()
	e := getTestBackend(t)
	key := e.adminKey["development"]
	e.ok(logical.CreateOperation, "config/development", map[string]interface{}{
		"admin_api_key": key, "base_url": e.srv.URL, "rate_limit_per_minute": 60, "max_retries": 0,
	})
	otherStorage := &logical.InmemStorage{}
	other := newMount(t, nil, otherStorage)
	writeOther := func(data map[string]interface{}) {
		t.Helper()
		resp, err := mountDo(other, otherStorage, logical.UpdateOperation, "config/dev-copy", data)
		require.NoError(t, err)
		require.False(t, resp != nil && resp.IsError(), "%v", resp)
	}
	writeOther(map[string]interface{}{"admin_api_key": key, "base_url": e.srv.URL, "rate_limit_per_minute": maxRateLimitPerMinute, "max_retries": 0})

	shared := func() float64 {
		t.Helper()
		_, err := e.b.getClient(ctx, e.s, "development")
		require.NoError(t, err)
		_, err = other.getClient(ctx, otherStorage, "dev-copy")
		require.NoError(t, err)
		mine, err := getConfig(ctx, e.s, "development")
		require.NoError(t, err)
		theirs, err := getConfig(ctx, otherStorage, "dev-copy")
		require.NoError(t, err)
		require.Same(t, e.b.peekLimiter(mine), other.peekLimiter(theirs), "one budget")
		return limiterRate(t, e.b.peekLimiter(mine))
	}

	require.InDelta(t, 60, shared(), 0.001, "the 100000 mount wrote last")
	// The 100000 mount rebuilds its client last.
	other.resetClient("dev-copy")
	require.InDelta(t, 60, shared(), 0.001, "the 100000 mount built its client last")
	e.ok(logical.UpdateOperation, "config/development", map[string]interface{}{"max_retries": 0})
	require.InDelta(t, 60, shared(), 0.001, "the 60 mount wrote last")
	writeOther(map[string]interface{}{"max_retries": 0})
	require.InDelta(t, 60, shared(), 0.001, "the 100000 mount wrote last again")

	// A write on the 60 mount asking for 100000 with the same key, whose
	// verify fails with a 500: nothing saved, budget unchanged.
	e.srv.FailNext("GET", "/api/credentials/keys", 5, herontest.FaultStatus500)
	resp, err := e.do(logical.UpdateOperation, "config/development", map[string]interface{}{"admin_api_key": key, "rate_limit_per_minute": maxRateLimitPerMinute})
	require.Error(t, err)
	require.Equal(t, http.StatusBadGateway, vaultHTTPStatus(logical.UpdateOperation, resp, err))
	e.srv.ResetFaults()
	cfg, err := getConfig(ctx, e.s, "development")
	require.NoError(t, err)
	require.Equal(t, 60, cfg.RateLimitPerMinute)
	require.InDelta(t, 60, limiterRate(t, e.b.peekLimiter(cfg)), 0.001, "a write whose verify failed changed the budget")
	require.InDelta(t, 60, shared(), 0.001)

	// Same with Heron answering 401 (the shared key deactivated meanwhile).
	id := keyIDByToken(t, e, key)
	setActiveDirect(t, e, id, false)
	e.badRequest(logical.UpdateOperation, "config/development", map[string]interface{}{"admin_api_key": key, "rate_limit_per_minute": maxRateLimitPerMinute}, "Heron refused the admin key")
	setActiveDirect(t, e, id, true)
	cfg, err = getConfig(ctx, e.s, "development")
	require.NoError(t, err)
	require.Equal(t, 60, cfg.RateLimitPerMinute)
	require.InDelta(t, 60, limiterRate(t, e.b.peekLimiter(cfg)), 0.001, "a write refused by Heron changed the budget")
	require.InDelta(t, 60, shared(), 0.001)

	// And the other mount failing to lower its own rate changes nothing either.
	e.srv.FailNext("GET", "/api/credentials/keys", 5, herontest.FaultStatus503)
	_, err = mountDo(other, otherStorage, logical.UpdateOperation, "config/dev-copy", map[string]interface{}{"admin_api_key": key, "rate_limit_per_minute": 1})
	require.Error(t, err)
	e.srv.ResetFaults()
	require.InDelta(t, 60, shared(), 0.001)
}

// Spec invariant 7 (the periodic pass): the pass (and rotations) reach
// Heron only where this node's storage is writable: never on a performance
// standby or a DR secondary, and on a performance secondary only for a local
// mount.
func TestPeriodic_RunsOnlyWhereStorageIsWritable(t *testing.T) {
	e := getTestBackend(t)
	e.configure("development")
	e.role("r", map[string]interface{}{})
	lease := e.issue("r") // a tracked key: the cleanup pass has a list call to make

	for _, tc := range []struct {
		name  string
		state consts.ReplicationState
		local bool
		runs  bool
	}{
		{"performance standby", consts.ReplicationPerformanceStandby, false, false},
		{"performance standby, local mount", consts.ReplicationPerformanceStandby, true, false},
		{"DR secondary", consts.ReplicationDRSecondary, false, false},
		{"DR secondary, local mount", consts.ReplicationDRSecondary, true, false},
		{"performance secondary", consts.ReplicationPerformanceSecondary, false, false},
		{"performance secondary, local mount", consts.ReplicationPerformanceSecondary, true, true},
		{"primary", consts.ReplicationPerformancePrimary, false, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			b := newMount(t, &logical.StaticSystemView{
				DefaultLeaseTTLVal: testDefaultLeaseTTL, MaxLeaseTTLVal: testMaxLeaseTTL,
				ReplicationStateVal: tc.state, LocalMountVal: tc.local,
			}, e.s)
			e.srv.ResetRequests()
			require.NoError(t, b.Backend.PeriodicFunc(context.Background(), &logical.Request{Storage: e.s}))
			n := len(e.srv.Requests())
			if tc.runs {
				require.Positive(t, n, "the pass runs here")
			} else {
				require.Zero(t, n, "no request may reach Heron from this node")
			}
		})
	}
	require.NoError(t, e.revoke(lease))
}

// Vault calls Invalidate on a node for a storage entry another node wrote
// (a performance standby or secondary): the role, the config's client and
// the token HMAC secret cached from the old entry are read again, so no
// request runs on a role, admin key or secret storage no longer holds.
func TestInvalidate_EntriesWrittenElsewhereAreReadAgain(t *testing.T) {
	ctx := context.Background()
	e := getTestBackend(t)
	e.configure("development")
	e.role("app", map[string]interface{}{"ttl": "10m", "max_ttl": "1h"})
	first := e.issue("app")
	require.Equal(t, 10*time.Minute, first.Secret.TTL)

	// Another node changes the role: the cache here still has the old one.
	r, err := getRole(ctx, e.s, "app")
	require.NoError(t, err)
	r.TTL = 20 * time.Minute
	require.NoError(t, putJSON(ctx, e.s, roleStoragePrefix+"app", "role", r))
	cached := e.issue("app")
	require.Equal(t, 10*time.Minute, cached.Secret.TTL, "cached until Vault says otherwise")
	e.b.InvalidateKey(ctx, roleStoragePrefix+"app")
	reread := e.issue("app")
	require.Equal(t, 20*time.Minute, reread.Secret.TTL, "read again after Invalidate")

	// Another node rotates the admin key and deactivates the old one.
	other := e.start()
	_, _, err = other.rotateAdminKey(ctx, e.s, "development")
	require.NoError(t, err)
	e.b.InvalidateKey(ctx, configStoragePrefix+"development")
	rotated := e.issue("app") // with the stored admin key: the old one would get 401

	// The token HMAC secret: dropped and read again (keys/lookup still
	// finds a key issued before).
	e.b.InvalidateKey(ctx, tokenHMACStoragePrefix+"x")
	resp := e.ok(logical.UpdateOperation, "keys/lookup", map[string]interface{}{"token": first.Data["api_key"]})
	require.Equal(t, first.Data["key_id"], resp.Data["key_id"])

	// A static role written elsewhere is read again by the next pass.
	e.ok(logical.CreateOperation, "static-roles/svc", map[string]interface{}{"environment": "development"})
	e.b.InvalidateKey(ctx, staticRoleStoragePrefix+"svc")
	e.ok(logical.UpdateOperation, "tidy", nil)
	e.ok(logical.ReadOperation, "static-creds/svc", nil)

	for _, l := range []*logical.Response{first, cached, reread, rotated} {
		require.NoError(t, e.revoke(l))
	}
}

// countingSystemView counts Vault's answers about the mount.
type countingSystemView struct {
	logical.StaticSystemView
	mu                                  sync.Mutex
	localMount, replState, maxLeaseTTLs int
}

func (s *countingSystemView) LocalMount() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.localMount++
	return s.StaticSystemView.LocalMount()
}

func (s *countingSystemView) ReplicationState() consts.ReplicationState {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.replState++
	return s.StaticSystemView.ReplicationState()
}

func (s *countingSystemView) MaxLeaseTTL() time.Duration {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.maxLeaseTTLs++
	return s.StaticSystemView.MaxLeaseTTL()
}

func (s *countingSystemView) counts() (local, repl, maxTTL int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.localMount, s.replState, s.maxLeaseTTLs
}

// Whether a mount is local is fixed when it is enabled, and whether the node
// is a performance standby when the mount's instance is set up (a node that
// becomes active, or a cluster that becomes a performance secondary, sets its
// mounts up again); yet the SDK asks for both before every request (the
// replication state before any operation, LocalMount before those a
// performance secondary forwards, creds/<role> among them), a round trip to
// Vault each time. The answers are kept for a few seconds, then asked again
// (Vault's gRPC client answers false and no state when the call fails, which
// must not stick). The lease's TTL is still asked of Vault on every
// issuance: a tune takes effect at once.
func TestSystemView_MountFactsAskedOncePerSpell(t *testing.T) {
	sys := &countingSystemView{StaticSystemView: logical.StaticSystemView{
		DefaultLeaseTTLVal: testDefaultLeaseTTL, MaxLeaseTTLVal: testMaxLeaseTTL,
		ReplicationStateVal: consts.ReplicationPerformancePrimary,
	}}
	e := newTestEnv(t, withSystemView(sys))
	e.configure("development")
	e.role("app", map[string]interface{}{"ttl": "10m"})
	_, replBefore, _ := sys.counts()
	var leases []*logical.Response
	for range 20 {
		leases = append(leases, e.issue("app"))
	}
	local, repl, maxTTL := sys.counts()
	require.Equal(t, 1, local, "LocalMount asked once for 20 issuances")
	require.LessOrEqual(t, repl-replBefore, 1, "the replication state asked at most once for 20 issuances")
	require.GreaterOrEqual(t, maxTTL, 20, "the mount's max TTL is asked on every issuance")

	// Past localMountFor, the next request asks again.
	msv := e.b.System().(*mountSystemView)
	msv.mu.Lock()
	msv.local.at = msv.local.at.Add(-localMountFor)
	msv.repl.at = msv.repl.at.Add(-localMountFor)
	msv.mu.Unlock()
	_, replBefore, _ = sys.counts()
	leases = append(leases, e.issue("app"))
	local, repl, _ = sys.counts()
	require.Equal(t, 2, local)
	require.Equal(t, replBefore+1, repl)
	for _, l := range leases {
		require.NoError(t, e.revoke(l))
	}
}

// A reload or failover leaves two instances on one storage for a while, each
// with its own cached client; the old one lowering rate_limit_per_minute and
// then going away must not leave the new one spending the budget it had
// cached. Its next pass reads the config and rebuilds the client at the
// stored budget.
func TestRefreshClient_BudgetLoweredByAnotherInstance(t *testing.T) {
	ctx := context.Background()
	e := getTestBackend(t)
	e.configure("development")
	e.role("app", map[string]interface{}{"ttl": "1h"})
	lease := e.issue("app") // the new instance's client, at the default budget
	old := newMount(t, nil, e.s)
	resp, err := mountDo(old, e.s, logical.UpdateOperation, "config/development", map[string]interface{}{"rate_limit_per_minute": 600})
	require.NoError(t, err)
	require.False(t, resp != nil && resp.IsError(), "%v", resp)
	old.clean(ctx) // the old instance goes away, letting go of its claim

	// Both instances are the one mount: the rate its config states now is
	// the budget's, whichever instance stated it last.
	cached, err := getConfig(ctx, e.s, "development")
	require.NoError(t, err)
	require.InDelta(t, 600, limiterRate(t, e.b.peekLimiter(cached)), 0.001, "the old instance's release restored the rate it had lowered")
	e.pass()
	cfg, err := getConfig(ctx, e.s, "development")
	require.NoError(t, err)
	require.Equal(t, 600, cfg.RateLimitPerMinute)
	require.InDelta(t, 600, limiterRate(t, e.b.peekLimiter(cfg)), 0.001, "the pass rebuilt the client at the stored budget")
	require.NoError(t, e.revoke(lease))
}
