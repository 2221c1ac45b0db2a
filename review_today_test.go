package heron

import (
	"context"
	"testing"
	"time"

	"github.com/hashicorp/vault/sdk/logical"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// Finding: the periodic pass decides from Heron's list (read before any
// lock) that a static role's current key is "inactive in Heron" and, under
// the role's lock, marks its record deactivated without re-checking that
// the key is still inactive and still quarantined. An operator who lifted
// the quarantine between the pass's list and replaceInactiveStatic leaves a
// key live in Heron whose record says deactivated: retireStaticKey then
// skips it at the end of the overlap, so it stays live past max_overlap
// until retired_key_retention deletes it.
func TestReviewToday_PassReplacesActivatedStaticKeyButLeavesItLive(t *testing.T) {
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
	// ... and then replaces the key it saw inactive.
	require.NoError(t, e.b.replaceInactiveStatic(context.Background(), e.s, "batch", k1))

	rec, err := getTrackedKey(context.Background(), e.s, k1)
	require.NoError(t, err)
	live := e.authenticates(token1)
	if live {
		assert.NotEqual(t, keyStateDeactivated, rec.State, "key %s is live in Heron but its record says deactivated", k1)
	}
	// max_overlap (= overlap, 1h) is a promise: past it the previous key no longer works.
	e.atTime(time.Now().Add(2 * time.Hour))
	e.ok(logical.UpdateOperation, "tidy", nil)
	require.False(t, e.authenticates(token1), "previous static key still live past max_overlap")
}

// Finding: sweepOverdue reads an overdue lease key's record and writes it
// back with Pending set, without the record's lock and without re-reading:
// a quarantine written in between is lost (quarantined=false, no
// quarantined_by), although every key change is meant to be decided under
// the record's lock (lockKey).
func TestReviewToday_SweepOverdueLosesAConcurrentQuarantine(t *testing.T) {
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

// Finding: keys/lookup never matches a rotated-out admin key. The engine
// created it (config/<env>/rotate) and still holds it in Heron
// (retired_keys, until old_key_retention ends), yet a leaked copy of it is
// answered 404 "this engine did not issue a key with this token ... it is
// no config's admin key": an incident responder is told the key is not
// the engine's.
func TestReviewToday_LookupOfRotatedOutAdminKeyIs404(t *testing.T) {
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

// Finding: the token HMAC secret is created with a read-then-write (no
// compare-and-set) and cached: two backend instances on one storage (a
// reload or failover with the old instance still serving) that both find
// it absent each create their own; the last write wins and the other
// instance keeps issuing records with HMACs under a secret nobody else
// has. Those records carry a token_hmac, so keys/lookup does not fall back
// to the prefix either: their tokens are answered 404 "this engine did not
// issue a key with this token".
func TestReviewToday_TwoInstancesCreateDifferentHMACSecrets(t *testing.T) {
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
