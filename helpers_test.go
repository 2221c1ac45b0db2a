package heron

// Shared test helpers: storage that fails or parks on cue, a scriptable Heron
// client, a second mount, and small readers of the engine's state. The
// concern files (wal_test.go, admin_key_test.go, ...) use them; the test
// environment itself (testEnv) lives in backend_test.go.

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/hashicorp/vault/sdk/logical"
	"github.com/stretchr/testify/require"

	"github.com/heron-vault/vault-plugin-secrets-heron/heronapi"
	"github.com/heron-vault/vault-plugin-secrets-heron/herontest"
)

// ---------------------------------------------------------------------------
// Storage that fails or waits on cue.

// switchFailStorage makes writes under prefix report an error while on. With
// commit set the write is stored first ("committed, then the answer was
// lost", as Raft or Consul can do); without it nothing is stored.
type switchFailStorage struct {
	logical.Storage
	mu     sync.Mutex
	prefix string
	commit bool
	on     bool
	failed int
}

func (s *switchFailStorage) Put(ctx context.Context, e *logical.StorageEntry) error {
	s.mu.Lock()
	fail := s.on && strings.HasPrefix(e.Key, s.prefix)
	commit := s.commit
	if fail {
		s.failed++
	}
	s.mu.Unlock()
	if !fail {
		return s.Storage.Put(ctx, e)
	}
	if commit {
		if err := s.Storage.Put(ctx, e); err != nil {
			return err
		}
		return fmt.Errorf("injected: storing %s reported an error although it was committed", e.Key)
	}
	return fmt.Errorf("injected: storing %s failed (not committed)", e.Key)
}

func (s *switchFailStorage) set(on, commit bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.on, s.commit = on, commit
}

// commitFailStorage fails every Put under prefix, after writing it when
// commit is set (Raft and Consul can report an error for a committed write).
type commitFailStorage struct {
	logical.Storage
	mu       sync.Mutex
	prefix   string
	commit   bool
	disabled bool
}

func (s *commitFailStorage) off() { s.mu.Lock(); s.disabled = true; s.mu.Unlock() }

func (s *commitFailStorage) Put(ctx context.Context, e *logical.StorageEntry) error {
	s.mu.Lock()
	fail := !s.disabled && strings.HasPrefix(e.Key, s.prefix)
	commit := s.commit
	s.mu.Unlock()
	if !fail {
		return s.Storage.Put(ctx, e)
	}
	if commit {
		if err := s.Storage.Put(ctx, e); err != nil {
			return err
		}
	}
	return errors.New("injected storage failure")
}

// deleteFailStorage fails Deletes of one key, before deleting.
type deleteFailStorage struct {
	logical.Storage
	key  string
	fail bool
}

func (s *deleteFailStorage) Delete(ctx context.Context, key string) error {
	if s.fail && key == s.key {
		return errors.New("injected storage failure")
	}
	return s.Storage.Delete(ctx, key)
}

// prefixDeleteFailStorage fails every Delete under prefix without deleting,
// until off.
type prefixDeleteFailStorage struct {
	logical.Storage
	mu       sync.Mutex
	prefix   string
	disabled bool
}

func (s *prefixDeleteFailStorage) off() { s.mu.Lock(); s.disabled = true; s.mu.Unlock() }

func (s *prefixDeleteFailStorage) Delete(ctx context.Context, key string) error {
	s.mu.Lock()
	fail := !s.disabled && strings.HasPrefix(key, s.prefix)
	s.mu.Unlock()
	if fail {
		return errors.New("injected storage failure")
	}
	return s.Storage.Delete(ctx, key)
}

// failKeyPuts fails the first n Puts under keys/ (not committed).
type failKeyPuts struct {
	logical.Storage
	mu sync.Mutex
	n  int
}

func (s *failKeyPuts) Put(ctx context.Context, e *logical.StorageEntry) error {
	s.mu.Lock()
	fail := s.n > 0 && strings.HasPrefix(e.Key, keyStoragePrefix)
	if fail {
		s.n--
	}
	s.mu.Unlock()
	if fail {
		return errors.New("injected storage failure")
	}
	return s.Storage.Put(ctx, e)
}

// failPutKey fails the next n Puts of exactly one key (not written).
type failPutKey struct {
	logical.Storage
	mu  sync.Mutex
	key string
	n   int
}

func (s *failPutKey) Put(ctx context.Context, e *logical.StorageEntry) error {
	s.mu.Lock()
	fail := s.n > 0 && e.Key == s.key
	if fail {
		s.n--
	}
	s.mu.Unlock()
	if fail {
		return errors.New("injected storage failure")
	}
	return s.Storage.Put(ctx, e)
}

// parkStorage parks the first Get of one key, after reading it, until the
// test lets it go: a request that read a static role is held right there,
// before it takes any lock, while the test makes something else happen.
type parkStorage struct {
	logical.Storage
	mu      sync.Mutex
	key     string
	reached chan struct{}
	proceed chan struct{}
}

func (s *parkStorage) arm(key string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.key, s.reached, s.proceed = key, make(chan struct{}), make(chan struct{})
}

func (s *parkStorage) Get(ctx context.Context, key string) (*logical.StorageEntry, error) {
	s.mu.Lock()
	park := s.key != "" && key == s.key
	var reached, proceed chan struct{}
	if park {
		s.key = ""
		reached, proceed = s.reached, s.proceed
	}
	s.mu.Unlock()
	v, err := s.Storage.Get(ctx, key)
	if park {
		close(reached)
		<-proceed
	}
	return v, err
}

// ---------------------------------------------------------------------------
// Heron, a second mount, the write-ahead clock.

// scriptedAPI wraps the real client so a test can fail or delay one call.
type scriptedAPI struct {
	heronapi.API
	mu       sync.Mutex
	list     func() error                                                  // before ListKeys; an error replaces the answer
	create   func(ctx context.Context, name string) (*heronapi.Key, error) // replaces CreateKey when set
	creating func()                                                        // runs after a successful CreateKey
}

func (a *scriptedAPI) ListKeys(ctx context.Context) ([]heronapi.Key, error) {
	a.mu.Lock()
	f := a.list
	a.mu.Unlock()
	if f != nil {
		if err := f(); err != nil {
			return nil, err
		}
	}
	return a.API.ListKeys(ctx)
}

func (a *scriptedAPI) CreateKey(ctx context.Context, name string) (*heronapi.Key, error) {
	a.mu.Lock()
	f, after := a.create, a.creating
	a.mu.Unlock()
	if f != nil {
		return f(ctx, name)
	}
	k, err := a.API.CreateKey(ctx, name)
	if err == nil && after != nil {
		after()
	}
	return k, err
}

// scripted makes every client the backend builds from now on a scriptedAPI,
// returned for the test to program.
func scripted(e *testEnv) *scriptedAPI {
	s := &scriptedAPI{}
	real := e.b.newClient
	e.b.newClient = func(cfg *heronConfig, lim *heronapi.Limiter) (heronapi.API, error) {
		c, err := real(cfg, lim)
		if err != nil {
			return nil, err
		}
		s.mu.Lock()
		s.API = c
		s.mu.Unlock()
		return s, nil
	}
	e.b.resetClient("development")
	return s
}

// rateLimited is Heron's 429 on the list call.
var rateLimited = &heronapi.APIError{Method: "GET", Path: "/api/credentials/keys", StatusCode: http.StatusTooManyRequests, Name: "Too Many Requests"}

// closeWindow moves the write-ahead clock past every record's window.
func closeWindow(e *testEnv) {
	e.b.windowNow = func() time.Time { return time.Now().Add(lateKeyWindow + time.Minute) }
}

// rollback runs Vault's rollback (the write-ahead records' settle) now.
func rollback(t *testing.T, e *testEnv) {
	t.Helper()
	req := logical.RollbackRequest("")
	req.Storage = e.s
	req.Data["immediate"] = true
	_, err := e.b.HandleRequest(context.Background(), req)
	require.NoError(t, err)
}

// newMount is a second backend (mount) of this plugin process with its own
// storage and system view.
func newMount(t *testing.T, sys logical.SystemView, s logical.Storage) *heronBackend {
	t.Helper()
	b := backend()
	b.retryWaitMin = 5 * time.Millisecond
	conf := logical.TestBackendConfig()
	conf.StorageView = s
	conf.BackendUUID = mountIDOf(s)
	conf.Logger = hclog.New(&hclog.LoggerOptions{Level: hclog.Warn, Output: testWriter{t}})
	if sys == nil {
		sys = &logical.StaticSystemView{DefaultLeaseTTLVal: testDefaultLeaseTTL, MaxLeaseTTLVal: testMaxLeaseTTL}
	}
	conf.System = sys
	require.NoError(t, b.Setup(context.Background(), conf))
	t.Cleanup(func() { b.clean(context.Background()) })
	return b
}

// mountIDOf is Vault's id (BackendUUID) of the mount whose storage is s:
// backends on one storage are instances of one mount (a reload, a
// failover), on another storage another mount.
func mountIDOf(s logical.Storage) string { return fmt.Sprintf("test-mount-%p", s) }

// mountDo sends one request to the mount b on storage s.
func mountDo(b *heronBackend, s logical.Storage, op logical.Operation, path string, data map[string]interface{}) (*logical.Response, error) {
	return b.HandleRequest(context.Background(), &logical.Request{Operation: op, Path: path, Data: data, Storage: s, DisplayName: "token-tester"})
}

// vaultHTTPStatus is the HTTP status Vault would answer with: what its HTTP
// layer does (vault/http respondErrorCommon): logical.RespondErrorCommon,
// then logical.AdjustErrorStatusCode, which is where a
// logical.HTTPCodedError's own code applies (RespondErrorCommon alone
// ignores it and says 500).
func vaultHTTPStatus(op logical.Operation, resp *logical.Response, err error) int {
	code, newErr := logical.RespondErrorCommon(&logical.Request{Operation: op}, resp, err)
	if newErr != nil {
		logical.AdjustErrorStatusCode(&code, newErr)
	}
	return code
}

// limiterRate reads the rate a heronapi.Limiter runs at (requests per
// minute).
func limiterRate(t *testing.T, l *heronapi.Limiter) float64 {
	t.Helper()
	require.NotNil(t, l)
	return float64(l.PerMinute())
}

// ---------------------------------------------------------------------------
// Readers of the engine's and Heron's state.

// trackedRecord reads the key record of id (nil when there is none).
func trackedRecord(t *testing.T, s logical.Storage, id string) *trackedKey {
	t.Helper()
	rec, err := getTrackedKey(context.Background(), s, id)
	require.NoError(t, err)
	return rec
}

// retiredKeyStates maps each of env's retired admin keys to its state.
func retiredKeyStates(t *testing.T, e *testEnv, env string) map[string]string {
	t.Helper()
	read := e.ok(logical.ReadOperation, "config/"+env, nil)
	out := map[string]string{}
	for _, rk := range read.Data["retired_keys"].([]map[string]interface{}) {
		out[rk["key_id"].(string)] = rk["state"].(string)
	}
	return out
}

// keyIDByToken is the Heron id of the key with token.
func keyIDByToken(t *testing.T, e *testEnv, token string) string {
	t.Helper()
	k, ok := e.srv.KeyByToken(token)
	require.True(t, ok)
	return k.ID
}

func heronKeyByToken(t *testing.T, e *testEnv, token string) herontest.KeyRecord {
	t.Helper()
	k, ok := e.srv.KeyByToken(token)
	require.True(t, ok)
	return k
}

// mapKeys lists m's keys, sorted.
func mapKeys(m map[string]interface{}) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	slices.Sort(out)
	return out
}

// eventsFor returns the events of one key, once the asynchronous sends of
// the operations so far have landed.
func eventsFor(e *testEnv, m *logical.MockEventSender, keyID string) []string {
	e.b.eventSends.Wait()
	m.Lock()
	defer m.Unlock()
	var out []string
	for _, ev := range m.Events {
		if ev.Event.Metadata.AsMap()["key_id"] == keyID {
			out = append(out, string(ev.Type))
		}
	}
	return out
}

// countOf counts s in list.
func countOf(list []string, s string) int {
	n := 0
	for _, v := range list {
		if v == s {
			n++
		}
	}
	return n
}

// tidyAfterRetention runs tidy once every retention of the test is over, so
// that retired keys are deleted before the leftover check.
func tidyAfterRetention(e *testEnv) {
	e.atTime(time.Now().Add(100 * time.Hour))
	e.ok(logical.UpdateOperation, "tidy", nil)
}
