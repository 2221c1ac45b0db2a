package heron

import (
	"context"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/hashicorp/vault/sdk/logical"

	"github.com/heron-vault/vault-plugin-secrets-heron/heronapi"
	"github.com/heron-vault/vault-plugin-secrets-heron/herontest"
)

// passBetweenMarkerAndRecord starts the cleanup pass's read of
// retained-keys/ right after a marker is written, and lets the writer go on
// once the pass has read the record the marker indexes (still the old one):
// the moment the periodic pass can run between the two writes of
// putTrackedKey.
type passBetweenMarkerAndRecord struct {
	logical.Storage
	b     *heronBackend
	mu    sync.Mutex
	armed bool
	// reads is how many reads of the record the writer waits for: 1, the
	// pass's first read; 2, its read again under the record's lock too
	// (possible only for another instance, whose locks are its own).
	reads   int
	watch   string
	seen    chan struct{}
	passErr chan error
}

func (s *passBetweenMarkerAndRecord) Put(ctx context.Context, e *logical.StorageEntry) error {
	if err := s.Storage.Put(ctx, e); err != nil {
		return err
	}
	s.mu.Lock()
	arm := s.armed && strings.HasPrefix(e.Key, retainedKeyStoragePrefix)
	if arm {
		s.armed = false
		s.watch = keyStoragePrefix + strings.TrimPrefix(e.Key, retainedKeyStoragePrefix)
		s.seen, s.passErr = make(chan struct{}), make(chan error, 1)
	}
	s.mu.Unlock()
	if arm {
		go func() { _, err := s.b.retainedKeys(context.Background(), s); s.passErr <- err }()
		<-s.seen // the pass read the record before its write
	}
	return nil
}

func (s *passBetweenMarkerAndRecord) Get(ctx context.Context, key string) (*logical.StorageEntry, error) {
	en, err := s.Storage.Get(ctx, key)
	s.mu.Lock()
	if s.watch != "" && key == s.watch {
		if s.reads--; s.reads <= 0 {
			s.watch = ""
			close(s.seen)
		}
	}
	s.mu.Unlock()
	return en, err
}

// A static role's rotation deactivates its previous-previous key and
// indexes it under retained-keys/ (marker first, record second). The pass
// reads the marker in between, finds the record not yet retained, drops the
// marker: the key stays deactivated in Heron for ever, never deleted after
// retired_key_retention (spec, Invariants 1 and 7).
func TestCleanup_PassKeepsAMarkerWrittenJustBeforeItsRecord(t *testing.T) {
	t.Run("same instance", func(t *testing.T) { passKeepsMarker(t, false) })
	// Another instance (a reload or failover) holds none of this one's key
	// locks: the marker's age keeps it.
	t.Run("another instance", func(t *testing.T) { passKeepsMarker(t, true) })
}

func passKeepsMarker(t *testing.T, otherInstance bool) {
	admin := herontest.NewKeyToken()
	srv := herontest.NewServer(herontest.Options{Environments: map[string][]string{"development": {admin}}, RateLimitPerMinute: -1})
	defer srv.Close()
	st := &passBetweenMarkerAndRecord{Storage: &logical.InmemStorage{}}
	clock := time.Date(2030, 1, 1, 0, 0, 0, 0, time.UTC)
	conf := logical.TestBackendConfig()
	conf.StorageView = st
	conf.System = &logical.StaticSystemView{DefaultLeaseTTLVal: time.Hour, MaxLeaseTTLVal: 24 * time.Hour}
	b := backend()
	b.now = func() time.Time { return clock }
	st.b = b
	if err := b.Setup(context.Background(), conf); err != nil {
		t.Fatal(err)
	}
	if otherInstance {
		other := backend()
		if err := other.Setup(context.Background(), conf); err != nil {
			t.Fatal(err)
		}
		st.b = other
	}
	do := func(op logical.Operation, path string, data map[string]interface{}) *logical.Response {
		resp, err := b.HandleRequest(context.Background(), &logical.Request{Operation: op, Path: path, Storage: st, Data: data})
		if err != nil || (resp != nil && resp.IsError()) {
			t.Fatalf("%s %s: %v %v", op, path, err, resp)
		}
		return resp
	}
	do(logical.CreateOperation, "config/development", map[string]interface{}{"admin_api_key": admin, "base_url": srv.URL})
	do(logical.CreateOperation, "static-roles/svc", map[string]interface{}{"environment": "development",
		"rotation_period": 3600, "overlap": 600, "max_overlap": 1800, "unused_for": 300, "retired_key_retention": 3600})
	first := do(logical.ReadOperation, "static-creds/svc", nil).Data["key_id"].(string)
	clock = clock.Add(time.Second)
	do(logical.UpdateOperation, "static-roles/svc/rotate", nil)
	clock = clock.Add(time.Second)
	st.mu.Lock()
	st.armed, st.reads = true, 1
	if otherInstance {
		st.reads = 2
	}
	st.mu.Unlock()
	do(logical.UpdateOperation, "static-roles/svc/rotate", nil) // retires first
	if err := <-st.passErr; err != nil {
		t.Fatalf("the pass's read of retained keys: %v", err)
	}

	clock = clock.Add(48 * time.Hour) // every overlap and retention is over
	do(logical.UpdateOperation, "tidy", nil)
	do(logical.UpdateOperation, "tidy", nil)
	if k, _ := srv.Key(first); !k.Deleted {
		t.Fatalf("key %s, retired by the second rotation, is still in Heron (active %v) 48h later: retired_key_retention is 1h", first, k.IsActive)
	}
}

// blockingCreate holds the instance's first CreateKey, once Heron answered,
// until released.
type blockingCreate struct {
	heronapi.API
	once             sync.Once
	entered, proceed chan struct{}
}

func (b *blockingCreate) CreateKey(ctx context.Context, name string) (*heronapi.Key, error) {
	k, err := b.API.CreateKey(ctx, name)
	b.once.Do(func() {
		close(b.entered)
		<-b.proceed
	})
	return k, err
}

// Two backend instances on one storage (a reload or failover: the old one
// finishing its request) rotate the admin key at once. Spec, Invariants 1
// and 7: every key the engine creates is held, retained or deleted.
func TestRotate_TwoInstancesAtOnceForgetNoKey(t *testing.T) {
	admin := herontest.NewKeyToken()
	srv := herontest.NewServer(herontest.Options{Environments: map[string][]string{"development": {admin}}, RateLimitPerMinute: -1})
	defer srv.Close()
	storage := &logical.InmemStorage{}
	start := func() *heronBackend {
		conf := logical.TestBackendConfig()
		conf.StorageView = storage
		conf.System = &logical.StaticSystemView{DefaultLeaseTTLVal: time.Hour, MaxLeaseTTLVal: 24 * time.Hour}
		b := backend()
		if err := b.Setup(context.Background(), conf); err != nil {
			t.Fatal(err)
		}
		return b
	}
	do := func(b *heronBackend, op logical.Operation, path string, data map[string]interface{}) *logical.Response {
		resp, err := b.HandleRequest(context.Background(), &logical.Request{Operation: op, Path: path, Storage: storage, Data: data})
		if err != nil || (resp != nil && resp.IsError()) {
			t.Fatalf("%s %s: %v %v", op, path, err, resp)
		}
		return resp
	}
	oldInst, newInst := start(), start()
	do(oldInst, logical.CreateOperation, "config/development", map[string]interface{}{"admin_api_key": admin, "base_url": srv.URL})

	gate := &blockingCreate{entered: make(chan struct{}), proceed: make(chan struct{})}
	newInst.newClient = func(cfg *heronConfig, lim *heronapi.Limiter) (heronapi.API, error) {
		api, err := heronapi.New(newInst.clientConfig(cfg, lim))
		gate.API = api
		return gate, err
	}
	done := make(chan *logical.Response, 1)
	go func() {
		resp, _ := newInst.HandleRequest(context.Background(), &logical.Request{Operation: logical.UpdateOperation, Path: "config/development/rotate", Storage: storage})
		done <- resp
	}()
	<-gate.entered // the new instance created its key, not stored yet
	// The old instance's rotation sees the new one's claim and backs off,
	// creating nothing (spec, Invariant 8: rotate once).
	refused, err := oldInst.HandleRequest(context.Background(), &logical.Request{Operation: logical.UpdateOperation, Path: "config/development/rotate", Storage: storage})
	if err != nil || refused == nil || !refused.IsError() || !strings.Contains(refused.Error().Error(), "another rotation of it is running") {
		t.Fatalf("the old instance's rotation while the new one's runs: %v %v, want it refused", refused, err)
	}
	close(gate.proceed)
	second := <-done
	if second == nil || second.IsError() {
		t.Fatalf("the new instance's rotation: %v, want it done", second)
	}
	firstID := second.Data["admin_key_id"].(string)
	for _, k := range srv.Keys() {
		if strings.HasPrefix(k.Name, "vault-admin-") && k.ID != firstID {
			t.Fatalf("a second rotation's key %s (%q) was created", k.ID, k.Name)
		}
	}

	cfg := do(newInst, logical.ReadOperation, "config/development", nil)
	held := cfg.Data["admin_key_id"] == firstID
	for _, rk := range cfg.Data["retired_keys"].([]map[string]interface{}) {
		held = held || rk["key_id"] == firstID
	}
	k, _ := srv.Key(firstID)
	if !held && !k.Deleted && k.IsActive {
		t.Fatalf("admin key %s that the old instance's rotation created and stored is active in Heron, but the config neither holds nor retires it (current %v): forgotten", firstID, cfg.Data["admin_key_id"])
	}
}
