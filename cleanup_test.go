package heron

// The cleanup pass (cleanup.go): overdue keys, retained keys and their
// markers, orphan static keys, and what runs at the same time.

import (
	"context"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/hashicorp/vault/sdk/logical"
	"github.com/stretchr/testify/require"

	"github.com/heron-vault/vault-plugin-secrets-heron/herontest"
)

// Spec invariant 1 (plugin crash, Vault restart): Vault loses a lease after
// the engine answered, or gives it up as irrevocable: no revocation ever
// comes. An hour after the lease's end the cleanup pass deactivates the key
// as an expiry, and deletes it once its retention is over.
func TestCleanup_KeyOfALostLeaseEndsByItsRecord(t *testing.T) {
	e := getTestBackend(t)
	e.configure("development")
	e.role("r", map[string]interface{}{"ttl": "1h", "expired_key_retention": "24h"})
	lost := e.issue("r") // the answer never becomes a lease: no revoke will come
	id := lost.Data["key_id"].(string)

	e.atTime(time.Now().Add(90 * time.Minute)) // past the end, within the grace
	resp := e.ok(logical.UpdateOperation, "tidy", nil)
	require.Equal(t, 0, resp.Data["overdue_keys"])
	k, _ := e.srv.Key(id)
	require.True(t, k.IsActive, "Vault may still be revoking it")

	e.atTime(time.Now().Add(3 * time.Hour))
	resp = e.ok(logical.UpdateOperation, "tidy", nil)
	require.Equal(t, 1, resp.Data["overdue_keys"])
	k, _ = e.srv.Key(id)
	require.False(t, k.IsActive, "deactivated as an expiry")
	require.False(t, k.Deleted)

	e.atTime(time.Now().Add(30 * time.Hour))
	e.ok(logical.UpdateOperation, "tidy", nil)
	k, _ = e.srv.Key(id)
	require.True(t, k.Deleted, "deleted after its retention")
}

// Spec invariant 7: the sweep's decision about an overdue key is made and
// written under the record's lock from a read made under it, so a
// quarantine written after the sweep's first read is kept.
func TestCleanup_SweepKeepsAConcurrentQuarantine(t *testing.T) {
	var gs *gatedStorage
	e := newTestEnv(t, withoutLeftoverCheck(), withStorage(func(s logical.Storage) logical.Storage { gs = &gatedStorage{Storage: s}; return gs }))
	e.configure("development")
	e.role("app", map[string]interface{}{"ttl": "1h", "expired_key_retention": "24h"})
	t0 := time.Now()
	e.atTime(t0)
	lease := e.issue("app")
	id := lease.Data["key_id"].(string)

	// Vault has not revoked the lease: 3h later the pass finds it overdue.
	e.atTime(t0.Add(3 * time.Hour))
	gs.mu.Lock()
	gs.key, gs.reached, gs.release = keyStoragePrefix+id, make(chan struct{}), make(chan struct{})
	gs.mu.Unlock()
	tidied := make(chan error, 1)
	go func() {
		_, err := e.do(logical.UpdateOperation, "tidy", nil)
		tidied <- err
	}()
	<-gs.reached // the sweep has read the record
	resp, err := doAs(e, logical.UpdateOperation, "keys/"+id+"/deactivate", nil, "ent-sec", "oidc-security-alice")
	require.NoError(t, err)
	require.False(t, resp.IsError(), "%v", resp.Error())
	close(gs.release)
	require.NoError(t, <-tidied)

	rec, err := getTrackedKey(context.Background(), e.s, id)
	require.NoError(t, err)
	require.NotNil(t, rec)
	require.True(t, rec.Quarantined, "the pass's write lost the quarantine (quarantined_by=%q)", rec.QuarantinedBy)
}

// Spec "Events, history and log lines" (one name per change): a static key
// whose deactivation at role delete failed is deactivated later by the
// cleanup pass, announced as heron/static-deactivate, never as
// heron/key-expire (a lease's expiry).
func TestCleanup_OrphanStaticKeyDeactivationIsAStaticDeactivate(t *testing.T) {
	events := &logical.MockEventSender{}
	e := newTestEnv(t, withEvents(events))
	e.configure("development")
	e.ok(logical.CreateOperation, "static-roles/app", map[string]interface{}{"environment": "development"})
	id := staticCreds(e, "app")["key_id"].(string)

	e.srv.FailNext("PUT", "/api/credentials/keys/", 20, herontest.FaultStatus503)
	resp := e.ok(logical.DeleteOperation, "static-roles/app", nil)
	require.NotNil(t, resp)
	require.NotEmpty(t, resp.Warnings, "precondition: the deactivation failed")
	e.srv.ResetFaults()
	e.ok(logical.UpdateOperation, "tidy", nil)
	require.False(t, heronKey(e, id).IsActive, "precondition: the cleanup pass deactivated it")

	got := eventsFor(e, events, id)
	require.Equal(t, 1, countOf(got, eventStaticDeactivate), "one heron/static-deactivate for the static key: %v", got)
	require.Zero(t, countOf(got, eventKeyExpire), "a static key is never announced as a lease expiry: %v", got)
	tidyAfterRetention(e)
}

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

// Spec invariants 1 and 7: a static rotation deactivates the
// previous-previous key and indexes it under retained-keys/ (marker first,
// record second). A pass reading the marker in between (this instance, or
// another one holding none of its locks) keeps it, so the key is deleted
// after retired_key_retention, not left deactivated in Heron for ever.
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
