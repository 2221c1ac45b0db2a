package heron

import (
	"context"
	"errors"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/hashicorp/vault/sdk/logical"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/heron-vault/vault-plugin-secrets-heron/herontest"
)

// Adversarial review tests. Each one fails on the engine as reviewed.

// failKeyPutsOnce fails the first n Puts under keys/ (not committed).
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

// R1 (invariant 4): a forced config write stores the config first and marks
// the keys the new admin key cannot see afterwards. If marking fails (storage
// error, or the plugin dies in between) the config is already switched, and
// the operator's retry of the same write no longer counts as a key change, so
// the keys are never marked. Their revocation then takes the new key's 404 as
// "gone" and reports success while the key stays live, untracked.
func TestReview_R1_UnreachableMarkLostWhenConfigWriteHalfFails(t *testing.T) {
	e := getTestBackend(t)
	e.configure("development")
	e.role("r", map[string]interface{}{})
	lease := e.issue("r")
	id := lease.Data["key_id"].(string)
	foreign := e.srv.AddUser("development")
	e.adminKey["foreign-user"] = foreign

	fs := &failKeyPuts{Storage: e.s, n: 1}
	e.s = fs
	_, err := e.do(logical.UpdateOperation, "config/development", map[string]interface{}{"admin_api_key": foreign, "force": true})
	require.Error(t, err, "marking the unreachable key failed")
	cfg, err := getConfig(context.Background(), e.s, "development")
	require.NoError(t, err)
	require.NotEqual(t, foreign, cfg.AdminAPIKey, "the marks go before the config: a failed mark keeps the old config")

	// The operator retries the same write: it succeeds.
	e.ok(logical.UpdateOperation, "config/development", map[string]interface{}{"admin_api_key": foreign, "force": true})
	rec, err := getTrackedKey(context.Background(), e.s, id)
	require.NoError(t, err)
	assert.True(t, rec.Unreachable, "BUG: the key the new admin key cannot see is not marked unreachable")

	err = e.revoke(lease)
	k, _ := e.srv.Key(id)
	require.False(t, err == nil && k.IsActive && !k.Deleted, "BUG: revocation reported success while the key is live in Heron")
	require.Error(t, err)
	e.allowLive[id] = true
}

// R2 (invariant 1, clock skew): Heron's clock lags the engine's by more than
// defaultCreatedSkew (5s). A POST is processed but its answer is lost; the
// key it made has a "created" before the record's window, so neither the
// lookup nor the rollback owns it; the record is settled after the window and
// the key stays live, untracked, forever.
func TestReview_R2_HeronClockBehindLeaksLostKey(t *testing.T) {
	e := getTestBackend(t)
	e.configure("development")
	e.role("r", map[string]interface{}{})
	// The engine's wall clock is 30s ahead of Heron's (equivalently: Heron
	// lags by 30s).
	e.b.wallNow = func() time.Time { return time.Now().Add(30 * time.Second) }

	e.srv.FailNext("POST", "/api/credentials/keys", 1, herontest.FaultProcessThenDrop)
	lease := e.issue("r")
	require.NoError(t, e.revoke(lease))

	e.b.wallNow = func() time.Time { return time.Now().Add(30*time.Second + lateKeyWindow + time.Minute) }
	e.ok(logical.UpdateOperation, "tidy", nil)
	require.Zero(t, walCount(t, e.b, e.s), "the record was settled")
	require.Empty(t, liveIssued(e), "BUG: the key of the lost answer is live and nothing names it")
}

// R3 (invariant 3): a customer's key with the same name, created a moment
// (< defaultCreatedSkew) before the engine's POST, is deleted by the recovery
// after a lost answer: the skew allowance makes it look like the record's key.
func TestReview_R3_CustomerKeyJustBeforeIssuanceDeleted(t *testing.T) {
	e := getTestBackend(t)
	e.configure("development")
	e.role("ci", map[string]interface{}{"name_template": "ci-{{.RoleName}}"})

	customer := createDirect(t, e, "ci-ci")
	e.foreign[customer] = true
	time.Sleep(100 * time.Millisecond) // the customer's key is older than the issuance

	e.srv.FailNext("POST", "/api/credentials/keys", 1, herontest.FaultProcessThenDrop)
	lease := e.issue("ci")
	defer func() { _ = e.revoke(lease) }()
	k, _ := e.srv.Key(customer)
	require.True(t, k.IsActive && !k.Deleted, "BUG: the recovery deleted a customer's key it did not create")
}

// R4 (revocation decision and renewal): the first revocation attempt fails
// and stores "delete"; the operator's revoke did not go through, so the lease
// lives on and is renewed. When it later simply runs out, the stale decision
// still says "delete": the key is deleted instead of deactivated and
// retained for expired_key_retention. The decision should be cleared by a
// renewal (the lease is live again).
func TestReview_R4_RevokeDecisionSurvivesRenewal(t *testing.T) {
	e := getTestBackend(t)
	e.ok(logical.CreateOperation, "config/development", map[string]interface{}{
		"admin_api_key": e.adminKey["development"], "base_url": e.srv.URL, "max_retries": 0, "rate_limit_per_minute": maxRateLimitPerMinute,
	})
	e.role("r", map[string]interface{}{"ttl": "1h", "max_ttl": "10h"})
	lease := e.issue("r")
	id := lease.Data["key_id"].(string)

	e.srv.FailNext("DELETE", "/api/credentials/keys/", 1, herontest.FaultStatus503)
	require.Error(t, e.revoke(lease), "Heron is down: the operator's revoke fails")
	e.srv.ResetFaults()

	resp, err := e.renew(lease, time.Hour)
	require.NoError(t, err)
	require.False(t, resp.IsError())

	// The renewed lease runs out: Vault's expiry revocation.
	e.atTime(time.Now().Add(2 * time.Hour))
	require.NoError(t, e.revoke(lease))
	k, _ := e.srv.Key(id)
	require.False(t, k.Deleted, "BUG: an expiry after a renewal deleted the key (stale revocation decision)")
	require.False(t, k.IsActive)
	e.atTime(time.Now().Add(200 * time.Hour))
	e.ok(logical.UpdateOperation, "tidy", nil)
}

var _ = http.StatusOK

// R5 (invariants 1 and 4): with force=true a config write skips settling the
// pending write-ahead records (ea9798a). A key that a 504'd POST creates late
// is then invisible to the new admin key: the rollback, listing with it,
// finds nothing, settles the record after the window and the key stays live,
// not tracked, not reported as unreachable anywhere.
func TestReview_R5_ForcedConfigWriteAbandonsPendingCreation(t *testing.T) {
	e := getTestBackend(t)
	e.configure("development")
	e.role("r", map[string]interface{}{})
	e.srv.FailNextLate("POST", "/api/credentials/keys", 1, http.StatusGatewayTimeout, time.Hour)
	lease := e.issue("r")
	require.Equal(t, 1, walCount(t, e.b, e.s))
	require.NoError(t, e.revoke(lease))

	foreign := e.srv.AddUser("development")
	e.adminKey["foreign-user"] = foreign
	// While a creation's outcome is unknown the admin key cannot change,
	// force or not: only the current key is sure to see what it made.
	e.badRequest(logical.UpdateOperation, "config/development", map[string]interface{}{"admin_api_key": foreign, "force": true}, "unknown outcome")
	require.Equal(t, 1, e.srv.FlushLate(), "Heron finishes the 504'd POST")

	closeWindow(e)
	e.ok(logical.UpdateOperation, "tidy", nil)
	require.Zero(t, walCount(t, e.b, e.s))
	assert.Empty(t, liveIssued(e), "the late key was deleted with the admin key that sees it")
	e.ok(logical.UpdateOperation, "config/development", map[string]interface{}{"admin_api_key": foreign, "force": true})
}
