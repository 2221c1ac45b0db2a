package heron

import (
	"context"
	"testing"
	"time"

	"github.com/hashicorp/vault/sdk/logical"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// Spec, Invariants 7 (static roles): the pass decides from a list asked
// before any lock that a static role's current key is inactive in Heron;
// under the role's lock it asks again, so a key an operator activated in
// between (a lifted quarantine) is neither replaced nor recorded as
// deactivated while it is live.
func TestStaticRole_PassReplacesOnlyAKeyStillInactive(t *testing.T) {
	e := newTestEnv(t, withoutLeftoverCheck())
	e.configure("development")
	e.ok(logical.CreateOperation, "static-roles/batch", map[string]interface{}{"environment": "development", "overlap": "1h"})
	first := e.ok(logical.ReadOperation, "static-creds/batch", nil)
	k1 := first.Data["key_id"].(string)
	token1 := first.Data["api_key"].(string)

	e.ok(logical.UpdateOperation, "keys/"+k1+"/deactivate", nil)
	// ... the periodic pass lists Heron here: k1 is inactive ...
	e.ok(logical.UpdateOperation, "keys/"+k1+"/activate", nil)
	require.True(t, e.authenticates(token1))
	// ... and then acts on the key it saw inactive: asked again under the
	// role's lock, Heron says it is active, so nothing is replaced.
	require.NoError(t, e.b.replaceInactiveStatic(context.Background(), e.s, "batch", k1))

	rec, err := getTrackedKey(context.Background(), e.s, k1)
	require.NoError(t, err)
	require.True(t, e.authenticates(token1))
	assert.Equal(t, keyStateActive, rec.State, "key %s is live in Heron: its record must not say deactivated", k1)
	assert.Equal(t, k1, staticCreds(e, "batch")["key_id"], "the activated key is still the role's current key")

	// Deactivated by hand again, and seen so by a fresh look: replaced, the
	// record deactivated.
	e.ok(logical.UpdateOperation, "keys/"+k1+"/deactivate", nil)
	require.NoError(t, e.b.replaceInactiveStatic(context.Background(), e.s, "batch", k1))
	require.NotEqual(t, k1, staticCreds(e, "batch")["key_id"])
	rec, err = getTrackedKey(context.Background(), e.s, k1)
	require.NoError(t, err)
	require.Equal(t, keyStateDeactivated, rec.State)
	require.False(t, e.authenticates(token1))
	e.atTime(time.Now().Add(2 * time.Hour))
	e.ok(logical.UpdateOperation, "tidy", nil)
	require.False(t, e.authenticates(token1), "no pass reactivates it")
}

// Spec, Invariants 7: the sweep's decision about an overdue key is made and
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

// Spec, "Who holds a key": a 404 from keys/lookup means this engine did
// not issue the key; a rotated-out admin key it created is recognised by
// its token's HMAC, kept with the retired key.
func TestKeysLookup_FindsARotatedOutAdminKey(t *testing.T) {
	e := newTestEnv(t, withoutLeftoverCheck())
	e.configure("development")
	e.ok(logical.UpdateOperation, "config/development/rotate", nil)
	cfg, err := getConfig(context.Background(), e.s, "development")
	require.NoError(t, err)
	created := cfg.AdminAPIKey // made by the engine's rotation
	e.ok(logical.UpdateOperation, "config/development/rotate", nil)
	cfg, err = getConfig(context.Background(), e.s, "development")
	require.NoError(t, err)
	require.NotEqual(t, created, cfg.AdminAPIKey)
	require.NotEmpty(t, cfg.RetiredKeys, "the engine still holds the rotated-out key in Heron")

	resp, err := e.do(logical.UpdateOperation, "keys/lookup", map[string]interface{}{"token": created})
	require.NoError(t, err, "lookup of an admin key the engine created and still holds in Heron (retired_keys)")
	require.False(t, resp.IsError(), "%v", resp.Error())
}

// Spec, Invariants 7 (a second instance): two instances that each find no
// HMAC secret and create one keep both (one entry per writer), and
// keys/lookup matches a key issued under either.
func TestKeysLookup_TwoInstancesSecretsBothMatch(t *testing.T) {
	var gs *gatedStorage
	e := newTestEnv(t, withoutLeftoverCheck(), withStorage(func(s logical.Storage) logical.Storage { gs = &gatedStorage{Storage: s}; return gs }))
	other := e.start() // a second instance on the same storage
	otherDo := func(op logical.Operation, path string, data map[string]interface{}) *logical.Response {
		resp, err := other.HandleRequest(context.Background(), &logical.Request{Operation: op, Path: path, Storage: e.s, Data: data})
		require.NoError(t, err)
		require.False(t, resp != nil && resp.IsError(), "%v", resp)
		return resp
	}

	gs.mu.Lock()
	gs.key, gs.reached, gs.release = tokenHMACStorageKey, make(chan struct{}), make(chan struct{})
	gs.mu.Unlock()
	done := make(chan struct{})
	go func() { e.configure("development"); close(done) }()
	<-gs.reached // instance 1 found no secret, and is about to create one
	otherDo(logical.CreateOperation, "config/production", map[string]interface{}{
		"admin_api_key": e.adminKey["production"], "base_url": e.srv.URL, "rate_limit_per_minute": maxRateLimitPerMinute,
	})
	close(gs.release)
	<-done
	otherDo(logical.CreateOperation, "roles/prod", map[string]interface{}{"environment": "production"})
	lease := otherDo(logical.ReadOperation, "creds/prod", nil)

	e.restart(false)
	got, err := e.do(logical.UpdateOperation, "keys/lookup", map[string]interface{}{"token": lease.Data["api_key"]})
	require.NoError(t, err, "key %s was issued by this engine, but lookup says it was not", lease.Data["key_id"])
	require.False(t, got.IsError())
}
