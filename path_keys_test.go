package heron

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/hashicorp/vault/sdk/logical"
	"github.com/stretchr/testify/require"

	"github.com/heron-vault/vault-plugin-secrets-heron/herontest"
)

var tokenRegex = regexp.MustCompile(`^key_[0-9a-f]{48}$`)

func TestCreds_Issue(t *testing.T) {
	e := getTestBackend(t)
	e.configure("development")
	e.role("payments", map[string]interface{}{"ttl": "30m", "max_ttl": "2h"})

	posts := e.srv.CountRequests("POST", "/api/credentials/keys", "development")
	resp := e.issue("payments")
	require.Equal(t, posts+1, e.srv.CountRequests("POST", "/api/credentials/keys", "development"), "exactly one upstream POST")
	require.Equal(t, 1, e.srv.CountRequests("", "", "development")-posts-countVerify(e), "exactly one upstream request for the issuance")

	token := resp.Data["api_key"].(string)
	require.Regexp(t, tokenRegex, token)
	rec, ok := e.srv.KeyByToken(token)
	require.True(t, ok)
	require.Equal(t, rec.ID, resp.Data["key_id"])
	require.Equal(t, rec.Name, resp.Data["key_name"])
	require.Equal(t, token[:8], resp.Data["token_prefix"])
	require.Equal(t, "development", resp.Data["environment"])
	require.Equal(t, "payments", resp.Data["role"])
	require.Regexp(t, `^vault-payments-token-tester-\d{10}-[A-Za-z0-9]{8}$`, rec.Name)
	require.True(t, e.authenticates(token))

	require.Equal(t, 30*time.Minute, resp.Secret.TTL)
	require.Equal(t, 2*time.Hour, resp.Secret.MaxTTL)
	require.True(t, resp.Secret.Renewable)
	require.Equal(t, secretTypeAPIKey, resp.Secret.InternalData["secret_type"])
	for k, v := range resp.Secret.InternalData {
		require.NotContains(t, fmt.Sprint(v), token, "internal data %s holds the token", k)
	}
	require.NoError(t, e.revoke(resp))
}

// countVerify is the number of requests config writes sent (the verify list).
func countVerify(e *testEnv) int {
	return e.srv.CountRequests("GET", "/api/credentials/keys", "development")
}

func TestCreds_Errors(t *testing.T) {
	e := getTestBackend(t)
	e.configure("development")
	e.role("capped", map[string]interface{}{"max_ttl": "1h"})
	e.role("long-names", map[string]interface{}{"name_template": strings.Repeat("n", 90) + "-{{.DisplayName}}"})

	t.Run("unknown role", func(t *testing.T) {
		e.badRequest(logical.ReadOperation, "creds/nope", nil, `unknown role "nope"`)
	})
	t.Run("ttl above max_ttl", func(t *testing.T) {
		e.badRequest(logical.UpdateOperation, "creds/capped", map[string]interface{}{"ttl": "2h"}, "ttl (2h0m0s) is longer than the role's max_ttl (1h0m0s)")
	})
	t.Run("name over 128 characters at issuance", func(t *testing.T) {
		before := e.srv.CountRequests("", "", "")
		resp, err := e.b.HandleRequest(context.Background(), &logical.Request{
			Operation: logical.ReadOperation, Path: "creds/long-names", Storage: e.s,
			DisplayName: strings.Repeat("d", 40),
		})
		require.NoError(t, err)
		require.True(t, resp.IsError())
		require.Contains(t, resp.Error().Error(), "131 characters, Heron allows at most 128")
		require.Equal(t, before, e.srv.CountRequests("", "", ""), "no upstream call before the name is known to fit")
	})
}

func TestCreds_TTLParam(t *testing.T) {
	e := getTestBackend(t)
	e.configure("development")
	e.role("r", map[string]interface{}{"ttl": "1h", "max_ttl": "2h"})
	resp := e.ok(logical.UpdateOperation, "creds/r", map[string]interface{}{"ttl": "10m"})
	require.Equal(t, 10*time.Minute, resp.Secret.TTL)
	require.NoError(t, e.revoke(resp))
}

func TestCreds_MaxActiveKeys(t *testing.T) {
	e := getTestBackend(t)
	e.configure("development")
	e.role("capped", map[string]interface{}{"max_active_keys": 2})
	a, b := e.issue("capped"), e.issue("capped")
	e.badRequest(logical.ReadOperation, "creds/capped", nil, `role "capped" has 2 active keys and max_active_keys is 2`)
	require.NoError(t, e.revoke(a))
	c := e.issue("capped")
	require.NoError(t, e.revoke(b))
	require.NoError(t, e.revoke(c))
}

func TestLease_Renew(t *testing.T) {
	e := getTestBackend(t)
	e.configure("development")
	e.role("r", map[string]interface{}{"ttl": "60s", "max_ttl": "120s"})
	lease := e.issue("r")
	token := lease.Data["api_key"].(string)
	calls := e.srv.CountRequests("", "", "")

	renewed, err := e.renew(lease, 0)
	require.NoError(t, err)
	require.False(t, renewed.IsError())
	require.Equal(t, 60*time.Second, renewed.Secret.TTL)
	require.Equal(t, calls, e.srv.CountRequests("", "", ""), "renew makes no upstream call")
	require.True(t, e.authenticates(token), "renew keeps the same key")

	// Close to max_ttl the renewal is capped to what is left.
	lease.Secret.IssueTime = time.Now().Add(-100 * time.Second)
	renewed, err = e.renew(lease, 0)
	require.NoError(t, err)
	require.False(t, renewed.IsError())
	require.LessOrEqual(t, renewed.Secret.TTL, 21*time.Second)
	require.Greater(t, renewed.Secret.TTL, 15*time.Second)
	rec, err := getTrackedKey(context.Background(), e.s, lease.Data["key_id"].(string))
	require.NoError(t, err)
	require.WithinDuration(t, lease.Secret.IssueTime.Truncate(time.Second).Add(120*time.Second), rec.Expires, time.Second)

	// Past max_ttl renewal fails.
	lease.Secret.IssueTime = time.Now().Add(-130 * time.Second)
	_, err = e.renew(lease, 0)
	require.Error(t, err)
	code, _ := logical.RespondErrorCommon(&logical.Request{}, nil, err)
	logical.AdjustErrorStatusCode(&code, err)
	require.Equal(t, 400, code, "a 400 with a message, not a raw structure")

	// A deleted role cannot renew.
	lease.Secret.IssueTime = time.Now()
	e.ok(logical.DeleteOperation, "roles/r", nil)
	_, err = e.renew(lease, 0)
	require.ErrorContains(t, err, `role "r" no longer exists`)

	require.NoError(t, e.revoke(lease), "revocation works without the role")
}

func TestLease_RevokeBeforeExpiryDeletes(t *testing.T) {
	e := getTestBackend(t)
	e.configure("development")
	e.role("r", map[string]interface{}{"ttl": "1h"})
	lease := e.issue("r")
	id := lease.Data["key_id"].(string)
	require.NoError(t, e.revoke(lease))

	rec, _ := e.srv.Key(id)
	require.True(t, rec.Deleted, "explicit revoke deletes the key")
	require.False(t, e.authenticates(lease.Data["api_key"].(string)))
	require.Equal(t, 1, e.srv.CountRequests("DELETE", "/api/credentials/keys/"+id, "development"))
	tracked, err := getTrackedKey(context.Background(), e.s, id)
	require.NoError(t, err)
	require.Nil(t, tracked)
}

func TestLease_ExpiryDeactivatesThenTidyDeletes(t *testing.T) {
	e := getTestBackend(t)
	e.configure("development")
	e.role("r", map[string]interface{}{"ttl": "10m", "expired_key_retention": "1h"})
	lease := e.issue("r")
	id := lease.Data["key_id"].(string)
	token := lease.Data["api_key"].(string)

	// Vault revokes at the lease's end: the engine's clock says it ran out.
	e.atTime(time.Now().Add(10 * time.Minute))
	require.NoError(t, e.revoke(lease))
	rec, _ := e.srv.Key(id)
	require.False(t, rec.Deleted, "expiry deactivates, it does not delete")
	require.False(t, rec.IsActive)
	require.False(t, e.authenticates(token), "a deactivated key gets 401")

	read := e.ok(logical.ReadOperation, "keys/"+id, nil)
	require.Equal(t, keyStateDeactivated, read.Data["state"])
	require.Equal(t, false, read.Data["is_active"])
	require.Equal(t, true, read.Data["in_heron"])

	// Before retention tidy keeps it; after, it deletes it.
	resp := e.ok(logical.UpdateOperation, "tidy", nil)
	require.Equal(t, 0, resp.Data["expired_keys_deleted"])
	e.atTime(time.Now().Add(71 * time.Minute))
	resp = e.ok(logical.UpdateOperation, "tidy", nil)
	require.Equal(t, 1, resp.Data["expired_keys_deleted"])
	rec, _ = e.srv.Key(id)
	require.True(t, rec.Deleted)
	list := e.ok(logical.ListOperation, "keys/", nil)
	require.Empty(t, list.Data["keys"])
}

func TestLease_RenewMovesExpiry(t *testing.T) {
	e := getTestBackend(t)
	e.configure("development")
	e.role("r", map[string]interface{}{"ttl": "10m", "max_ttl": "1h"})
	lease := e.issue("r")
	id := lease.Data["key_id"].(string)

	// Renewed 8 minutes in, the lease now ends 18 minutes after issue: a
	// revoke at minute 12 is an explicit revocation and deletes.
	start := time.Now()
	e.atTime(start.Add(8 * time.Minute))
	_, err := e.renew(lease, 0)
	require.NoError(t, err)
	e.atTime(start.Add(12 * time.Minute))
	require.NoError(t, e.revoke(lease))
	rec, _ := e.srv.Key(id)
	require.True(t, rec.Deleted)
}

func TestLease_Revoke404Succeeds(t *testing.T) {
	e := getTestBackend(t)
	e.configure("development")
	e.role("r", map[string]interface{}{})
	for _, expired := range []bool{false, true} {
		t.Run(fmt.Sprintf("expired=%v", expired), func(t *testing.T) {
			e.atTime(time.Now())
			lease := e.issue("r")
			id := lease.Data["key_id"].(string)
			deleteDirect(t, e, id)
			if expired {
				e.atTime(time.Now().Add(2 * time.Hour))
			}
			require.NoError(t, e.revoke(lease))
			tracked, err := getTrackedKey(context.Background(), e.s, id)
			require.NoError(t, err)
			require.Nil(t, tracked, "a key Heron no longer has is not tracked")
		})
	}
}

// deleteDirect deletes a key in Heron behind the engine's back.
func deleteDirect(t *testing.T, e *testEnv, id string) {
	t.Helper()
	req, _ := newHeronRequest(e, "DELETE", "/api/credentials/keys/"+id)
	res, err := httpClient.Do(req)
	require.NoError(t, err)
	res.Body.Close()
	require.Equal(t, 204, res.StatusCode)
}

func TestLease_RevokeWithBadAdminKeyFails(t *testing.T) {
	e := getTestBackend(t)
	e.configure("development")
	e.role("r", map[string]interface{}{})
	lease := e.issue("r")
	id := lease.Data["key_id"].(string)

	admin, _ := e.srv.KeyByToken(e.adminKey["development"])
	setActiveDirect(t, e, admin.ID, false)
	err := e.revoke(lease)
	require.Error(t, err)
	require.Contains(t, err.Error(), `admin key of config "development" (401)`)
	rec, _ := e.srv.Key(id)
	require.False(t, rec.Deleted)

	// Vault retries; once the admin key works again the revocation goes through.
	setActiveDirect(t, e, admin.ID, true)
	require.NoError(t, e.revoke(lease))
	rec, _ = e.srv.Key(id)
	require.True(t, rec.Deleted)
}

func TestCreds_RateLimitedRetryAfterIsWaited(t *testing.T) {
	e := getTestBackend(t)
	e.configure("development")
	e.role("r", map[string]interface{}{})
	e.srv.Force429("development", 800*time.Millisecond, time.Second)
	start := time.Now()
	lease := e.issue("r")
	require.GreaterOrEqual(t, time.Since(start), 900*time.Millisecond, "Retry-After: 1 must be waited out")
	require.True(t, e.authenticates(lease.Data["api_key"].(string)))
	require.Len(t, liveIssued(e), 1)
	require.NoError(t, e.revoke(lease))
}

func TestCreds_RateLimitedAfterRetriesIs502(t *testing.T) {
	e := getTestBackend(t)
	e.ok(logical.CreateOperation, "config/development", map[string]interface{}{
		"admin_api_key": e.adminKey["development"], "base_url": e.srv.URL, "max_retries": 0, "rate_limit_per_minute": maxRateLimitPerMinute,
	})
	e.role("r", map[string]interface{}{})
	e.srv.Force429("development", time.Minute, time.Second)
	_, err := e.do(logical.ReadOperation, "creds/r", nil)
	require.ErrorIs(t, err, logical.ErrUpstreamRateLimited)
	code, _ := logical.RespondErrorCommon(&logical.Request{}, nil, err)
	require.Equal(t, 502, code)
	var coded logical.HTTPCodedError
	require.ErrorAs(t, err, &coded, "the 502 must survive the plugin's gRPC boundary")
	require.Equal(t, 502, coded.Code())
	require.Empty(t, liveIssued(e))
	require.Zero(t, walCount(t, e.b, e.s), "a 429 was not processed: no write-ahead record is left")
}

func TestCreds_LostPOSTResponseCreatesNoDuplicate(t *testing.T) {
	e := getTestBackend(t)
	e.configure("development")
	e.role("r", map[string]interface{}{})
	for _, mode := range []herontest.FaultMode{herontest.FaultProcessThenDrop, herontest.FaultStatus502} {
		t.Run(mode.String(), func(t *testing.T) {
			e.srv.FailNext("POST", "/api/credentials/keys", 1, mode)
			lease := e.issue("r")
			name := lease.Data["key_name"].(string)
			var live []herontest.KeyRecord
			for _, k := range e.srv.KeysIn("development") {
				if k.Name == name && !k.Deleted {
					live = append(live, k)
				}
			}
			require.Len(t, live, 1, "one live key by that name")
			require.Equal(t, lease.Data["key_id"], live[0].ID)
			require.True(t, e.authenticates(lease.Data["api_key"].(string)))
			require.NoError(t, e.revoke(lease))
			wals := walCount(t, e.b, e.s)
			if mode == herontest.FaultStatus502 {
				// The lookup found nothing: Heron may still make the key
				// (a gateway answered before Heron did), so the record stays
				// until its window closes.
				require.Equal(t, 1, wals)
				e.b.windowNow = func() time.Time { return time.Now().Add(lateKeyWindow + time.Minute) }
				defer func() { e.b.windowNow = time.Now }()
				resp := e.ok(logical.UpdateOperation, "tidy", nil)
				require.Equal(t, 1, resp.Data["rolled_back_wal"])
				wals = walCount(t, e.b, e.s)
			}
			require.Zero(t, wals)
		})
	}
}

func TestStorage_NoTokenAnywhere(t *testing.T) {
	e := getTestBackend(t)
	e.configure("development")
	e.configure("production")
	e.role("r", map[string]interface{}{})
	e.role("p", map[string]interface{}{"environment": "production"})
	var tokens []string
	var leases []*logical.Response
	for _, r := range []string{"r", "p", "r"} {
		l := e.issue(r)
		leases = append(leases, l)
		tokens = append(tokens, l.Data["api_key"].(string))
	}
	rotated := e.ok(logical.UpdateOperation, "config/development/rotate", nil)
	require.NotNil(t, rotated)
	e.atTime(time.Now().Add(2 * time.Hour))
	require.NoError(t, e.revoke(leases[0]))

	cfgDev, err := getConfig(context.Background(), e.s, "development")
	require.NoError(t, err)
	require.NotEqual(t, e.adminKey["development"], cfgDev.AdminAPIKey, "the rotation stored a new admin key, so storage holds two to look for")
	require.Equal(t, cfgDev.AdminKeyID, rotated.Data["admin_key_id"])
	cfgProd, err := getConfig(context.Background(), e.s, "production")
	require.NoError(t, err)
	require.NotNil(t, cfgProd)
	keys, err := logical.CollectKeys(context.Background(), e.s)
	require.NoError(t, err)
	require.NotEmpty(t, keys)
	for _, k := range keys {
		entry, err := e.s.Get(context.Background(), k)
		require.NoError(t, err)
		for _, tok := range tokens {
			require.NotContains(t, string(entry.Value), tok, "storage entry %s holds an issued token", k)
		}
		// The only admin key in storage is each config's own current one.
		admins := []string{e.adminKey["development"], e.adminKey["production"], cfgDev.AdminAPIKey}
		for _, a := range admins {
			if (k == "config/development" && a == cfgDev.AdminAPIKey) || (k == "config/production" && a == cfgProd.AdminAPIKey) {
				continue
			}
			require.NotContains(t, string(entry.Value), a, "storage entry %s holds an admin key", k)
		}
	}
	for _, l := range leases[1:] {
		require.NoError(t, e.revoke(l))
	}
}

// liveIssued lists the keys the engine issued that Heron still holds.
func liveIssued(e *testEnv) []herontest.KeyRecord {
	var out []herontest.KeyRecord
	for _, k := range e.srv.Keys() {
		if !k.Deleted && strings.HasPrefix(k.Name, "vault-") && !strings.HasPrefix(k.Name, "vault-admin-") {
			out = append(out, k)
		}
	}
	return out
}

func TestKeys_ListingMatchesHeron(t *testing.T) {
	e := getTestBackend(t)
	e.configure("development")
	e.configure("production")
	e.role("a", map[string]interface{}{})
	e.role("b", map[string]interface{}{"environment": "production"})
	la, lb := e.issue("a"), e.issue("b")

	resp := e.ok(logical.ListOperation, "keys/", nil)
	require.ElementsMatch(t, []string{la.Data["key_id"].(string), lb.Data["key_id"].(string)}, resp.Data["keys"])
	info := resp.Data["key_info"].(map[string]interface{})[lb.Data["key_id"].(string)].(map[string]interface{})
	require.Equal(t, "production", info["environment"])
	require.Equal(t, "b", info["role"])
	require.Equal(t, keyStateActive, info["state"])
	require.Equal(t, lb.Data["token_prefix"], info["token_prefix"])

	resp = e.ok(logical.ListOperation, "keys/", map[string]interface{}{"environment": "development"})
	require.Equal(t, []string{la.Data["key_id"].(string)}, resp.Data["keys"])
	resp = e.ok(logical.ListOperation, "keys/", map[string]interface{}{"state": keyStateDeactivated})
	require.Empty(t, resp.Data["keys"])

	read := e.ok(logical.ReadOperation, "keys/"+la.Data["key_id"].(string), nil)
	require.Equal(t, true, read.Data["is_active"])
	require.Equal(t, la.Data["key_name"], read.Data["key_name"])
	raw, _ := json.Marshal(read.Data)
	require.NotContains(t, string(raw), la.Data["api_key"].(string))

	require.NoError(t, e.revoke(la))
	require.NoError(t, e.revoke(lb))
	resp = e.ok(logical.ListOperation, "keys/", nil)
	require.Empty(t, resp.Data["keys"])
}

func TestTidy_ReconcilesKeysGoneFromHeron(t *testing.T) {
	e := getTestBackend(t)
	e.configure("development")
	e.configure("production")
	e.role("r", map[string]interface{}{"ttl": "1h"})
	e.role("p", map[string]interface{}{"environment": "production"})
	kept, gone, expired, prod := e.issue("r"), e.issue("r"), e.issue("r"), e.issue("p")
	e.atTime(time.Now().Add(2 * time.Hour))
	require.NoError(t, e.revoke(expired))
	e.atTime(time.Now().Add(time.Minute))
	deleteDirect(t, e, gone.Data["key_id"].(string))
	deleteDirect(t, e, expired.Data["key_id"].(string))

	resp := e.ok(logical.UpdateOperation, "tidy", nil)
	require.Equal(t, 2, resp.Data["reconciled_keys"])
	list := e.ok(logical.ListOperation, "keys/", nil)
	require.ElementsMatch(t, []string{kept.Data["key_id"].(string), prod.Data["key_id"].(string)}, list.Data["keys"])
	retained, err := e.s.List(context.Background(), retainedKeyStoragePrefix)
	require.NoError(t, err)
	require.Empty(t, retained, "no index entry outlives its record")

	// A second pass finds nothing more to do.
	resp = e.ok(logical.UpdateOperation, "tidy", nil)
	require.Equal(t, 0, resp.Data["reconciled_keys"])
	require.NoError(t, e.revoke(kept))
	require.NoError(t, e.revoke(prod))
}

// An auditor reading many keys/<id> in a row spends a handful of Heron
// requests, not one per key (issue 14): reads share a list for a few seconds.
func TestKeys_ReadsShareOneList(t *testing.T) {
	e := getTestBackend(t)
	e.configure("development")
	e.role("r", map[string]interface{}{})
	var leases []*logical.Response
	for i := 0; i < 5; i++ {
		leases = append(leases, e.issue("r"))
	}
	before := e.srv.CountRequests("GET", "/api/credentials/keys", "development")
	for _, l := range leases {
		resp := e.ok(logical.ReadOperation, "keys/"+l.Data["key_id"].(string), nil)
		require.Equal(t, true, resp.Data["in_heron"])
		require.Equal(t, true, resp.Data["is_active"])
	}
	require.Equal(t, 1, e.srv.CountRequests("GET", "/api/credentials/keys", "development")-before)
	for _, l := range leases {
		require.NoError(t, e.revoke(l))
	}
}

// A lease must be filed under the role's one lowercase path, or `vault lease
// revoke -prefix heron/creds/<role>/` misses it (issue 14: a revocation gap).
func TestCreds_RoleInPathMustBeLowercase(t *testing.T) {
	e := getTestBackend(t)
	e.configure("development")
	e.role("billing", map[string]interface{}{})
	before := e.srv.CountRequests("POST", "/api/credentials/keys", "")
	e.badRequest(logical.ReadOperation, "creds/Billing", nil, "creds/billing")
	e.badRequest(logical.UpdateOperation, "creds/BILLING", nil, "creds/billing")
	require.Equal(t, before, e.srv.CountRequests("POST", "/api/credentials/keys", ""), "no key is made for a refused path")
	lease := e.issue("billing")
	require.NoError(t, e.revoke(lease))
}

// Paging (Vault's convention): after and limit on keys/, roles/ and
// static-roles/; key info is built for the page only.
func TestListing_Paging(t *testing.T) {
	e := getTestBackend(t)
	e.configure("development")
	for _, n := range []string{"c", "a", "b", "d"} {
		e.role(n, map[string]interface{}{})
	}
	resp := e.ok(logical.ListOperation, "roles/", map[string]interface{}{"limit": 2})
	require.Equal(t, []string{"a", "b"}, resp.Data["keys"])
	resp = e.ok(logical.ListOperation, "roles/", map[string]interface{}{"after": "b", "limit": 2})
	require.Equal(t, []string{"c", "d"}, resp.Data["keys"])
	resp = e.ok(logical.ListOperation, "roles/", map[string]interface{}{"after": "d"})
	require.Empty(t, resp.Data["keys"])
	e.badRequest(logical.ListOperation, "roles/", map[string]interface{}{"limit": 0}, "limit must be between 1 and 10000")
	e.badRequest(logical.ListOperation, "keys/", map[string]interface{}{"limit": 10001}, "limit must be between 1 and 10000")

	var leases []*logical.Response
	for i := 0; i < 5; i++ {
		leases = append(leases, e.issue("a"))
	}
	var all []string
	after := ""
	for {
		resp := e.ok(logical.ListOperation, "keys/", map[string]interface{}{"after": after, "limit": 2})
		page, _ := resp.Data["keys"].([]string)
		if len(page) == 0 {
			break
		}
		require.LessOrEqual(t, len(page), 2)
		require.Len(t, resp.Data["key_info"], len(page), "info for the page only")
		all = append(all, page...)
		after = page[len(page)-1]
	}
	require.Len(t, all, 5)
	require.IsIncreasing(t, all)
	full := e.ok(logical.ListOperation, "keys/", nil).Data["keys"].([]string)
	require.Equal(t, full, all)
	e.ok(logical.CreateOperation, "static-roles/s1", map[string]interface{}{"environment": "development"})
	e.ok(logical.CreateOperation, "static-roles/s2", map[string]interface{}{"environment": "development"})
	resp = e.ok(logical.ListOperation, "static-roles/", map[string]interface{}{"after": "s1"})
	require.Equal(t, []string{"s2"}, resp.Data["keys"])
	for _, l := range leases {
		require.NoError(t, e.revoke(l))
	}
	e.ok(logical.DeleteOperation, "static-roles/s1", nil)
	e.ok(logical.DeleteOperation, "static-roles/s2", nil)
}

// doAs runs a request as a caller with an entity and a token display name.
func doAs(e *testEnv, op logical.Operation, path string, data map[string]interface{}, entityID, displayName string) (*logical.Response, error) {
	e.t.Helper()
	return e.b.HandleRequest(context.Background(), &logical.Request{
		Operation: op, Path: path, Data: data, Storage: e.s,
		EntityID: entityID, DisplayName: displayName, ClientToken: "hvs.the-callers-token", ClientTokenAccessor: "the-callers-accessor",
	})
}

// Key records say who got the key (entity and display name of the issuing
// request), keys/<id> shows it, keys/ filters by it, and neither the caller's
// token, its accessor nor the key's token is stored.
func TestKeys_RecordWhoIssuedAndFilterByIt(t *testing.T) {
	e := getTestBackend(t)
	e.configure("development")
	e.role("app", map[string]interface{}{})

	var leases []*logical.Response
	issue := func(entity, display string) *logical.Response {
		resp, err := doAs(e, logical.ReadOperation, "creds/app", nil, entity, display)
		require.NoError(t, err)
		require.False(t, resp.IsError())
		resp.Secret.IssueTime = time.Now()
		leases = append(leases, resp)
		return resp
	}
	billing1 := issue("ent-billing", "token-billing")
	billing2 := issue("ent-billing", "approle-billing")
	other := issue("ent-other", "token-other")

	id := billing1.Data["key_id"].(string)
	rec := e.ok(logical.ReadOperation, "keys/"+id, nil).Data
	require.Equal(t, "ent-billing", rec["entity_id"])
	require.Equal(t, "token-billing", rec["display_name"])
	require.NotContains(t, rec, "token_hmac", "the keyed hash is never returned")

	list := e.ok(logical.ListOperation, "keys/", map[string]interface{}{"entity_id": "ent-billing"})
	require.ElementsMatch(t, []string{id, billing2.Data["key_id"].(string)}, list.Data["keys"])
	info := list.Data["key_info"].(map[string]interface{})[id].(map[string]interface{})
	require.Equal(t, "token-billing", info["display_name"])
	list = e.ok(logical.ListOperation, "keys/", map[string]interface{}{"display_name": "token-other"})
	require.Equal(t, []string{other.Data["key_id"].(string)}, list.Data["keys"])
	list = e.ok(logical.ListOperation, "keys/", map[string]interface{}{"entity_id": "ent-billing", "display_name": "approle-billing"})
	require.Equal(t, []string{billing2.Data["key_id"].(string)}, list.Data["keys"])

	raw, err := e.s.Get(context.Background(), keyStoragePrefix+id)
	require.NoError(t, err)
	for _, secret := range []string{billing1.Data["api_key"].(string), "hvs.the-callers-token", "the-callers-accessor"} {
		require.NotContains(t, string(raw.Value), secret)
	}
	require.Contains(t, string(raw.Value), `"token_hmac":"`)
	for _, l := range leases {
		require.NoError(t, e.revoke(l))
	}
}

// putCounter counts storage writes.
type putCounter struct {
	logical.Storage
	mu   sync.Mutex
	puts []string
}

func (s *putCounter) Put(ctx context.Context, en *logical.StorageEntry) error {
	s.mu.Lock()
	s.puts = append(s.puts, en.Key)
	s.mu.Unlock()
	return s.Storage.Put(ctx, en)
}

func (s *putCounter) take() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	p := s.puts
	s.puts = nil
	return p
}

// An issuance costs two storage writes (its creation record and the key's
// record) with who issued it and its token_hmac in the record: the mount's
// HMAC secret is written once, by the config write (or, on a mount whose
// config predates it, by the first issuance), and cached after.
func TestCreds_IssuanceStaysAtTwoStorageWrites(t *testing.T) {
	var pc *putCounter
	e := newTestEnv(t, withStorage(func(s logical.Storage) logical.Storage { pc = &putCounter{Storage: s}; return pc }))
	e.configure("development")
	hmacWrites := func(puts []string) int {
		n := 0
		for _, p := range puts {
			if strings.HasPrefix(p, tokenHMACStoragePrefix) {
				n++
			}
		}
		return n
	}
	require.Equal(t, 1, hmacWrites(pc.take()), "the config write creates the mount's HMAC secret")
	e.role("app", map[string]interface{}{})
	pc.take()
	first, err := doAs(e, logical.ReadOperation, "creds/app", nil, "ent-1", "token-app")
	require.NoError(t, err)
	first.Secret.IssueTime = time.Now()
	puts := pc.take()
	require.Len(t, puts, 2, "writes: %v", puts)
	require.Equal(t, keyStoragePrefix+first.Data["key_id"].(string), puts[1])

	// A mount whose config was written before token_hmac existed: its
	// first issuance writes the secret, the next ones do not.
	names, err := e.s.List(context.Background(), tokenHMACStoragePrefix)
	require.NoError(t, err)
	for _, n := range names {
		require.NoError(t, e.s.Delete(context.Background(), tokenHMACStoragePrefix+n))
	}
	e.restart(false)
	second := e.issue("app")
	require.Equal(t, 1, hmacWrites(pc.take()))
	third := e.issue("app")
	require.Len(t, pc.take(), 2)
	for _, l := range []*logical.Response{first, second, third} {
		require.NoError(t, e.revoke(l))
	}
}

// Spec invariant 4 ("those keys are reported in keys/ as unreachable"):
// after a forced config write, keys/ (key_info) and keys/<id> say so.
func TestKeys_ReportUnreachableKeys(t *testing.T) {
	e := getTestBackend(t)
	e.configure("development")
	e.role("r", map[string]interface{}{})
	lease := e.issue("r")
	id := lease.Data["key_id"].(string)
	foreign := e.srv.AddUser("development")
	e.adminKey["foreign-user"] = foreign
	e.ok(logical.UpdateOperation, "config/development", map[string]interface{}{"admin_api_key": foreign, "force": true})
	require.True(t, trackedRecord(t, e.s, id).Unreachable)

	list := e.ok(logical.ListOperation, "keys/", nil)
	info := list.Data["key_info"].(map[string]interface{})[id].(map[string]interface{})
	require.Equal(t, true, info["unreachable"], "keys/ key_info must report the key unreachable; got fields %v", mapKeys(info))
	read := e.ok(logical.ReadOperation, "keys/"+id, nil)
	require.Equal(t, true, read.Data["unreachable"], "keys/<id> must report the key unreachable; got %v", read.Data)

	// Put things back so the leftover check passes.
	e.ok(logical.UpdateOperation, "config/development", map[string]interface{}{"admin_api_key": e.adminKey["development"]})
	require.NoError(t, e.revoke(lease))
}

// Spec invariant 5 (never a 500): keys/<id> of a tracked key whose config
// entry is gone (removed from storage directly, as a replicated delete or a
// restore could leave it) still answers with the engine's record.
func TestKeys_ReadOfAKeyWhoseConfigIsGone(t *testing.T) {
	e := getTestBackend(t)
	e.configure("development")
	e.role("r", map[string]interface{}{})
	lease := e.issue("r")
	id := lease.Data["key_id"].(string)

	require.NoError(t, e.s.Delete(context.Background(), configStoragePrefix+"development"))
	e.b.invalidate(context.Background(), configStoragePrefix+"development")
	resp, err := e.do(logical.ReadOperation, "keys/"+id, nil)
	require.NotEqual(t, http.StatusInternalServerError, vaultHTTPStatus(logical.ReadOperation, resp, err), "keys/<id> of a key whose config is gone must not be a 500: %v %v", resp, err)
	require.NoError(t, err)
	require.NotNil(t, resp)
	require.False(t, resp.IsError(), "%v", resp.Error())
	require.Equal(t, id, resp.Data["key_id"], "the engine's record is still readable")
	require.Equal(t, "development", resp.Data["environment"])

	// Restore the config so the lease can be revoked.
	e.configure("development")
	require.NoError(t, e.revoke(lease))
}
