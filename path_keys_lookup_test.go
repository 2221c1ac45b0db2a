package heron

import (
	"context"
	"net/http"
	"strings"
	"testing"

	"github.com/hashicorp/vault/sdk/logical"
	"github.com/stretchr/testify/require"

	"github.com/heron-vault/vault-plugin-secrets-heron/herontest"
)

// lookup runs keys/lookup and returns the response and its HTTP status.
func lookup(e *testEnv, token string) (*logical.Response, int) {
	e.t.Helper()
	resp, err := e.do(logical.UpdateOperation, "keys/lookup", map[string]interface{}{"token": token})
	code, _ := logical.RespondErrorCommon(&logical.Request{Operation: logical.UpdateOperation}, resp, err)
	// As Vault's HTTP layer answers: a coded error names its own status.
	logical.AdjustErrorStatusCode(&code, err)
	if code == 0 {
		code = http.StatusOK
	}
	return resp, code
}

// A leaked token finds its key's record (who issued it included) by its
// keyed hash, not shadowed by keys/<key_id>; the answer never carries the
// hash or the HMAC secret.
func TestKeysLookup_FindsTheRecordOfAToken(t *testing.T) {
	e := getTestBackend(t)
	e.configure("development")
	e.role("app", map[string]interface{}{})
	lease, err := doAs(e, logical.ReadOperation, "creds/app", nil, "ent-7", "token-billing")
	require.NoError(t, err)
	lease.Secret.IssueTime = lease.Secret.IssueTime.Add(0)
	other := e.issue("app")

	resp, code := lookup(e, lease.Data["api_key"].(string))
	require.Equal(t, http.StatusOK, code, "%v", resp)
	require.Equal(t, lookupMatchHMAC, resp.Data["match"])
	require.Equal(t, lease.Data["key_id"], resp.Data["key_id"])
	require.Equal(t, "ent-7", resp.Data["entity_id"])
	require.Equal(t, "token-billing", resp.Data["display_name"])
	require.NotContains(t, resp.Data, "token_hmac")

	names, err := e.s.List(context.Background(), tokenHMACStoragePrefix)
	require.NoError(t, err)
	require.Len(t, names, 1, "one secret, written once")
	secret, err := e.s.Get(context.Background(), tokenHMACStoragePrefix+names[0])
	require.NoError(t, err)
	require.NotNil(t, secret)
	for _, v := range resp.Data {
		require.NotContains(t, strings.ToLower(toString(v)), strings.ToLower(string(secret.Value)))
	}
	require.NoError(t, e.revoke(lease))
	require.NoError(t, e.revoke(other))

	// A revoked key is still answered, from its tombstone.
	resp, code = lookup(e, lease.Data["api_key"].(string))
	require.Equal(t, http.StatusOK, code)
	require.Equal(t, keyStateDeleted, resp.Data["state"])
	require.Equal(t, reasonRevoked, resp.Data["reason"])
}

func toString(v interface{}) string {
	s, _ := v.(string)
	return s
}

// A token the engine never issued is a 404 saying so; a malformed one is a
// 400 naming the rule (and not echoing what was pasted).
func TestKeysLookup_UnknownTokenIs404AndMalformedIs400(t *testing.T) {
	e := getTestBackend(t)
	e.configure("development")
	e.role("app", map[string]interface{}{})
	lease := e.issue("app")
	defer func() { require.NoError(t, e.revoke(lease)) }()

	unknown := herontest.NewKeyToken()
	resp, code := lookup(e, unknown)
	require.Equal(t, http.StatusNotFound, code, "%v", resp)
	_, err := e.do(logical.UpdateOperation, "keys/lookup", map[string]interface{}{"token": unknown})
	require.ErrorContains(t, err, "this engine did not issue a key with this token")
	require.NotContains(t, err.Error(), unknown)

	for _, bad := range []string{"", "key_123", "KEY_" + strings.Repeat("a", 48), "key_" + strings.Repeat("A", 48), "hvs.secret-of-another-kind"} {
		resp, err := e.do(logical.UpdateOperation, "keys/lookup", map[string]interface{}{"token": bad})
		require.NoError(t, err)
		require.True(t, resp.IsError(), "%q", bad)
		code, _ := logical.RespondErrorCommon(&logical.Request{Operation: logical.UpdateOperation}, resp, nil)
		require.Equal(t, http.StatusBadRequest, code)
		if bad != "" {
			require.Contains(t, resp.Error().Error(), `"key_" followed by 48 lowercase hex characters`)
			require.NotContains(t, resp.Error().Error(), bad)
		}
	}
}

// Records from before token_hmac are matched by token_prefix: every such
// record with the prefix is returned, marked as a candidate.
func TestKeysLookup_OlderRecordsAreCandidatesByPrefix(t *testing.T) {
	e := getTestBackend(t)
	e.configure("development")
	e.role("app", map[string]interface{}{})
	lease := e.issue("app")
	id := lease.Data["key_id"].(string)
	token := lease.Data["api_key"].(string)

	// The record as an earlier version wrote it: no token_hmac.
	rec, err := getTrackedKey(context.Background(), e.s, id)
	require.NoError(t, err)
	rec.TokenHMAC = ""
	require.NoError(t, putJSON(context.Background(), e.s, keyStoragePrefix+id, "key record", rec))

	resp, code := lookup(e, token)
	require.Equal(t, http.StatusOK, code, "%v", resp)
	require.Equal(t, lookupMatchPrefix, resp.Data["match"])
	require.Equal(t, []string{id}, resp.Data["key_ids"])
	require.Contains(t, resp.Data["candidates"], id)
	require.NotEmpty(t, resp.Warnings)

	// Another token with the same prefix finds the same candidate: a prefix
	// is not a proof, and the answer says so.
	resp, code = lookup(e, token[:8]+strings.Repeat("0", 44))
	require.Equal(t, http.StatusOK, code)
	require.Equal(t, lookupMatchPrefix, resp.Data["match"])
	require.NoError(t, e.revoke(lease))
}

// A leaked admin key is recognised as the config's, with what to do.
func TestKeysLookup_RecognisesAConfigsAdminKey(t *testing.T) {
	e := getTestBackend(t)
	e.configure("development")
	resp, code := lookup(e, e.adminKey["development"])
	require.Equal(t, http.StatusOK, code, "%v", resp)
	require.Equal(t, lookupMatchAdmin, resp.Data["match"])
	require.Equal(t, "development", resp.Data["environment"])
	require.Contains(t, strings.Join(resp.Warnings, " "), "config/development/rotate")
	for _, v := range resp.Data {
		require.NotEqual(t, e.adminKey["development"], v)
	}
}

// A static role's key, issued or adopted, is found by its token too.
func TestKeysLookup_FindsAStaticRolesKey(t *testing.T) {
	e := getTestBackend(t)
	e.configure("development")
	e.ok(logical.CreateOperation, "static-roles/batch", map[string]interface{}{"environment": "development"})
	creds := e.ok(logical.ReadOperation, "static-creds/batch", nil)
	resp, code := lookup(e, creds.Data["api_key"].(string))
	require.Equal(t, http.StatusOK, code, "%v", resp)
	require.Equal(t, creds.Data["key_id"], resp.Data["key_id"])
	require.Equal(t, keyKindStatic, resp.Data["kind"])
	rec, err := getTrackedKey(context.Background(), e.s, creds.Data["key_id"].(string))
	require.NoError(t, err)
	require.NotEmpty(t, rec.TokenHMAC, "a static role's key holds token_hmac")
	e.ok(logical.DeleteOperation, "static-roles/batch", nil)
}

// Spec "Who holds a key" (a 404 means this engine did not issue it): a
// rotated-out admin key the engine created is recognised by its token's
// HMAC, kept with the retired key.
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

// Spec invariant 7 (a second instance) and "Who holds a key": two instances
// that each find no HMAC secret and create one keep both (one entry per
// writer), and keys/lookup matches a key issued under either.
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
