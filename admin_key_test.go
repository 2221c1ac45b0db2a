package heron

// Verifying an admin key and what it can see (admin_key.go): a config write
// whose admin key cannot see the tracked keys, the retired-keys list, and
// how Heron's failures during verify are answered.

import (
	"context"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/hashicorp/vault/sdk/logical"
	"github.com/stretchr/testify/require"

	"github.com/heron-vault/vault-plugin-secrets-heron/herontest"
)

// Spec invariant 4: a config write whose admin key (or base_url) cannot see
// the keys the engine tracks is refused (400 with the count) unless
// force=true; then those keys are unreachable, and their revocation is never
// reported done while they are live in Heron.
//
// Subtests: another Heron user's admin key, another Heron's base_url, and
// verify=false (which checks nothing, so every tracked key counts as
// unreachable). Writing the original key back clears the mark and tidy
// finishes the deletions.
func TestConfigWrite_AdminKeyThatCannotSeeTrackedKeys(t *testing.T) {
	ctx := context.Background()

	t.Run("another user's admin key", func(t *testing.T) {
		e := getTestBackend(t)
		e.configure("development")
		e.role("r", map[string]interface{}{})
		lease := e.issue("r")
		id := lease.Data["key_id"].(string)
		foreign := e.srv.AddUser("development")
		e.adminKey["foreign-user"] = foreign

		e.badRequest(logical.UpdateOperation, "config/development", map[string]interface{}{"admin_api_key": foreign}, "cannot see 1 of the 1 keys")
		cfg, err := getConfig(ctx, e.s, "development")
		require.NoError(t, err)
		require.Equal(t, e.adminKey["development"], cfg.AdminAPIKey, "a refused write saves nothing")

		resp := e.ok(logical.UpdateOperation, "config/development", map[string]interface{}{"admin_api_key": foreign, "force": true})
		require.NotNil(t, resp)
		require.Contains(t, strings.Join(resp.Warnings, "\n"), "unreachable")
		require.True(t, trackedRecord(t, e.s, id).Unreachable, "the tracked key is marked unreachable")

		// The revocation cannot delete the key with the foreign admin key:
		// it must not report it done (invariant 4); Vault keeps retrying.
		require.ErrorContains(t, e.revoke(lease), "unreachable", "a revocation is never reported done while the key may be live")
		k, _ := e.srv.Key(id)
		require.False(t, k.Deleted)
		require.True(t, k.IsActive, "the key is still live in Heron")
		rec := trackedRecord(t, e.s, id)
		require.NotNil(t, rec, "the record stays while the key is live")
		require.Equal(t, pendingDelete, rec.Pending)

		// A cleanup pass with the foreign key proves nothing either.
		e.ok(logical.UpdateOperation, "tidy", nil)
		require.NotNil(t, trackedRecord(t, e.s, id), "a key missing from the foreign user's list is not forgotten")
		k, _ = e.srv.Key(id)
		require.False(t, k.Deleted)

		// The original user's key again: verify passes, the flag clears and
		// tidy finishes the deletion.
		e.ok(logical.UpdateOperation, "config/development", map[string]interface{}{"admin_api_key": e.adminKey["development"]})
		rec = trackedRecord(t, e.s, id)
		require.False(t, rec.Unreachable, "verify sees the key again")
		tidy := e.ok(logical.UpdateOperation, "tidy", nil)
		require.Equal(t, 1, tidy.Data["pending_revocations"])
		k, _ = e.srv.Key(id)
		require.True(t, k.Deleted, "tidy deleted the key")
		require.Nil(t, trackedRecord(t, e.s, id))
	})

	t.Run("base_url of another Heron", func(t *testing.T) {
		e := getTestBackend(t)
		e.configure("development")
		e.role("r", map[string]interface{}{})
		lease := e.issue("r")
		id := lease.Data["key_id"].(string)
		tok2 := herontest.NewKeyToken()
		srv2 := herontest.NewServer(herontest.Options{
			Environments:       map[string][]string{"development": {tok2}},
			RateLimitPerMinute: -1,
		})
		t.Cleanup(srv2.Close)
		move := map[string]interface{}{"base_url": srv2.URL, "admin_api_key": tok2}

		e.badRequest(logical.UpdateOperation, "config/development", move, "cannot see 1 of the 1 keys")
		move["force"] = true
		e.ok(logical.UpdateOperation, "config/development", move)
		require.True(t, trackedRecord(t, e.s, id).Unreachable)

		require.Error(t, e.revoke(lease))
		k, _ := e.srv.Key(id)
		require.True(t, k.IsActive && !k.Deleted, "the key is still live in the first Heron")
		require.Equal(t, pendingDelete, trackedRecord(t, e.s, id).Pending)
		require.Zero(t, srv2.CountRequests("POST", "/api/credentials/keys", ""), "nothing created in the second Heron")

		e.ok(logical.UpdateOperation, "config/development", map[string]interface{}{"base_url": e.srv.URL, "admin_api_key": e.adminKey["development"]})
		require.False(t, trackedRecord(t, e.s, id).Unreachable)
		tidy := e.ok(logical.UpdateOperation, "tidy", nil)
		require.Equal(t, 1, tidy.Data["pending_revocations"])
		k, _ = e.srv.Key(id)
		require.True(t, k.Deleted)
		require.Nil(t, trackedRecord(t, e.s, id))
	})

	t.Run("verify=false with tracked keys", func(t *testing.T) {
		e := getTestBackend(t)
		e.configure("development")
		e.role("r", map[string]interface{}{})
		lease := e.issue("r")
		id := lease.Data["key_id"].(string)
		foreign := e.srv.AddUser("development")
		e.adminKey["foreign-user"] = foreign

		e.badRequest(logical.UpdateOperation, "config/development", map[string]interface{}{"admin_api_key": foreign, "verify": false}, "1 keys")
		e.ok(logical.UpdateOperation, "config/development", map[string]interface{}{"admin_api_key": foreign, "verify": false, "force": true})
		require.True(t, trackedRecord(t, e.s, id).Unreachable, "unchecked: every tracked key is unreachable as far as the engine knows")

		// verify is write-only: a later write that sets no key does not verify.
		read := e.ok(logical.ReadOperation, "config/development", nil)
		_, stored := read.Data["verify"]
		require.False(t, stored, "verify is never stored")

		e.ok(logical.UpdateOperation, "config/development", map[string]interface{}{"admin_api_key": e.adminKey["development"]})
		require.False(t, trackedRecord(t, e.s, id).Unreachable)
		require.NoError(t, e.revoke(lease))
		k, _ := e.srv.Key(id)
		require.True(t, k.Deleted)
	})
}

// Spec invariant 4: the unreachable marks are written before the config, so
// a forced write whose marking fails (storage error, or the plugin dies in
// between) keeps the old config; the operator's retry then marks the keys,
// and their revocation is not taken as done on the new key's 404.
func TestConfigWrite_FailedUnreachableMarkKeepsTheOldConfig(t *testing.T) {
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
	require.True(t, rec.Unreachable, "the key the new admin key cannot see is marked unreachable")

	err = e.revoke(lease)
	k, _ := e.srv.Key(id)
	require.False(t, err == nil && k.IsActive && !k.Deleted, "a revocation is never reported done while the key is live in Heron")
	require.Error(t, err)
	e.allowLive[id] = true
}

// Spec invariant 1 (admin keys the engine created are held, retained or
// deleted): a config write keeps retired_keys true to the admin key written.
// (a) An old admin key written back by hand leaves retired_keys, so tidy
// never deletes the key in use. (b) An engine-created admin key replaced by
// hand is retired: deactivated, then deleted after old_key_retention, never
// left active with its token known only to the overwritten config.
func TestConfigWrite_RetiredKeysFollowHandWrittenAdminKeys(t *testing.T) {
	t.Run("old key written back", func(t *testing.T) {
		e := getTestBackend(t)
		e.configure("development")
		e.role("r", map[string]interface{}{})
		e.ok(logical.UpdateOperation, "config/development", map[string]interface{}{"old_key_retention": "1h"})
		oldKey := e.adminKey["development"]
		oldID := keyIDByToken(t, e, oldKey)
		rot := e.ok(logical.UpdateOperation, "config/development/rotate", nil)
		newID := rot.Data["admin_key_id"].(string)
		require.False(t, e.authenticates(oldKey))

		setActiveDirect(t, e, oldID, true)
		e.ok(logical.UpdateOperation, "config/development", map[string]interface{}{"admin_api_key": oldKey})
		retired := retiredKeyStates(t, e, "development")
		require.NotContains(t, retired, oldID, "the admin key in use is not retired")
		require.Contains(t, retired, newID, "the engine-created key it replaced is")

		e.ok(logical.UpdateOperation, "tidy", nil)
		e.atTime(time.Now().Add(61 * time.Minute))
		e.ok(logical.UpdateOperation, "tidy", nil)
		k, _ := e.srv.Key(oldID)
		require.False(t, k.Deleted, "tidy must not delete the current admin key")
		require.True(t, e.authenticates(oldKey))
		require.NoError(t, e.revoke(e.issue("r")), "issuance still works")
		k, _ = e.srv.Key(newID)
		require.True(t, k.Deleted, "the replaced engine-created key is deleted after retention")
	})

	t.Run("engine-created key replaced by hand", func(t *testing.T) {
		e := getTestBackend(t)
		e.configure("development")
		e.role("r", map[string]interface{}{})
		e.ok(logical.UpdateOperation, "config/development", map[string]interface{}{"old_key_retention": "1h"})
		rot := e.ok(logical.UpdateOperation, "config/development/rotate", nil)
		newID := rot.Data["admin_key_id"].(string)
		newRec, _ := e.srv.Key(newID)

		hand := e.srv.AddAdminKey("development")
		e.adminKey["by-hand"] = hand
		e.ok(logical.UpdateOperation, "config/development", map[string]interface{}{"admin_api_key": hand})
		retired := retiredKeyStates(t, e, "development")
		require.Contains(t, retired, newID, "the replaced engine-created key is retired")

		tidy := e.ok(logical.UpdateOperation, "tidy", nil)
		require.Equal(t, 1, tidy.Data["admin_keys_deactivated"])
		require.False(t, e.authenticates(newRec.Token), "deactivated")
		e.atTime(time.Now().Add(61 * time.Minute))
		e.ok(logical.UpdateOperation, "tidy", nil)
		k, _ := e.srv.Key(newID)
		require.True(t, k.Deleted, "deleted after retention, not left active forever")
		require.NotContains(t, retiredKeyStates(t, e, "development"), newID)
		require.True(t, e.authenticates(hand))
		require.NoError(t, e.revoke(e.issue("r")))
	})
}

// Spec invariant 4 (a 404 means gone only when the admin key can see the
// keys): after a snapshot restore some tracked keys are gone from Heron. A
// new admin key of the same Heron user (Heron lists all of a user's keys)
// proves them gone, not hidden: the write needs no force and marks nothing
// unreachable, so their leases still revoke. Another user's key is refused.
func TestConfigWrite_SameUserKeyProvesMissingKeysGone(t *testing.T) {
	e := getTestBackend(t)
	e.configure("development")
	e.role("r", map[string]interface{}{})
	kept, gone := e.issue("r"), e.issue("r")
	require.NoError(t, handClient(t, e, e.adminKey["development"]).DeleteKey(context.Background(), gone.Data["key_id"].(string)))

	hand := e.srv.AddAdminKey("development")
	e.adminKey["hand"] = hand
	resp := e.ok(logical.UpdateOperation, "config/development", map[string]interface{}{"admin_api_key": hand})
	require.NotNil(t, resp)
	require.Contains(t, strings.Join(resp.Warnings, " "), "1 tracked keys are no longer in Heron")
	marked, err := e.b.unreachableKeys(context.Background(), e.s, "development")
	require.NoError(t, err)
	require.Empty(t, marked)
	require.NoError(t, e.revoke(gone), "Heron's 404 for a key of the same user means gone")
	require.NoError(t, e.revoke(kept))

	// Another user's key still sees none of them: refused without force.
	e.issue("r")
	foreign := e.srv.AddUser("development")
	e.adminKey["foreign"] = foreign
	e.badRequest(logical.UpdateOperation, "config/development", map[string]interface{}{"admin_api_key": foreign}, "cannot see 1 of the")
	for _, k := range liveIssued(e) {
		require.NoError(t, handClient(t, e, e.adminKey["development"]).DeleteKey(context.Background(), k.ID))
	}
}

// Spec invariant 5 ("Heron's 429/5xx during verify is a 502, not key
// refused"): only a 401 is "Heron refused the admin key" (400); a 500, 503,
// a refused connection or a 429 during verify is a 502 naming what Heron
// answered, and nothing is saved in any case.
func TestVerify_HeronFailureIs502NotRefused(t *testing.T) {
	e := getTestBackend(t)
	write := func(data map[string]interface{}) (*logical.Response, error) {
		t.Helper()
		base := map[string]interface{}{"admin_api_key": e.adminKey["development"], "base_url": e.srv.URL, "max_retries": 0}
		for k, v := range data {
			base[k] = v
		}
		return e.do(logical.CreateOperation, "config/development", base)
	}
	notSaved := func() {
		t.Helper()
		cfg, err := getConfig(context.Background(), e.s, "development")
		require.NoError(t, err)
		require.Nil(t, cfg, "nothing was saved")
	}

	t.Run("401", func(t *testing.T) {
		e.badRequest(logical.CreateOperation, "config/development", map[string]interface{}{
			"admin_api_key": herontest.NewKeyToken(), "base_url": e.srv.URL,
		}, "Heron refused the admin key")
		notSaved()
	})
	for _, tc := range []struct {
		mode herontest.FaultMode
		want string
	}{{herontest.FaultStatus500, "500"}, {herontest.FaultStatus503, "503"}} {
		t.Run(tc.want, func(t *testing.T) {
			e.srv.FailNext("GET", "/api/credentials/keys", 10, tc.mode)
			defer e.srv.ResetFaults()
			resp, err := write(nil)
			require.Error(t, err, "an internal error, not a user error (resp %v)", resp)
			require.Equal(t, http.StatusBadGateway, vaultHTTPStatus(logical.CreateOperation, resp, err))
			require.Contains(t, err.Error(), tc.want, "names what Heron answered")
			require.Contains(t, err.Error(), "nothing was saved")
			require.NotContains(t, err.Error(), "refused")
			notSaved()
		})
	}
	t.Run("connection refused", func(t *testing.T) {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		require.NoError(t, err)
		closed := "http://" + ln.Addr().String()
		require.NoError(t, ln.Close())
		resp, err := write(map[string]interface{}{"base_url": closed})
		require.Error(t, err)
		require.Equal(t, http.StatusBadGateway, vaultHTTPStatus(logical.CreateOperation, resp, err))
		require.Contains(t, err.Error(), "connection refused")
		require.Contains(t, err.Error(), "nothing was saved")
		notSaved()
	})
	t.Run("429", func(t *testing.T) {
		e.srv.Force429("development", time.Minute, time.Second)
		defer e.srv.Force429("development", 0, 0)
		resp, err := write(nil)
		require.Error(t, err)
		require.ErrorIs(t, err, logical.ErrUpstreamRateLimited)
		require.Equal(t, http.StatusBadGateway, vaultHTTPStatus(logical.CreateOperation, resp, err))
		require.Contains(t, err.Error(), "nothing was saved")
		notSaved()
	})
}
