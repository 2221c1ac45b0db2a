package heron

import (
	"context"
	"encoding/json"
	"net/http"
	"regexp"
	"sync"
	"testing"
	"time"

	"github.com/hashicorp/vault/sdk/logical"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/heron-vault/vault-plugin-secrets-heron/heronapi"
	"github.com/heron-vault/vault-plugin-secrets-heron/herontest"
)

// handClient is a Heron client of development acting with token behind the
// engine's back (a customer's own tooling).
func handClient(t *testing.T, e *testEnv, token string) heronapi.API {
	t.Helper()
	c, err := e.b.newClient(&heronConfig{
		Environment: "development", AdminAPIKey: token, BaseURL: e.srv.URL,
		RequestTimeout: 5 * time.Second, RateLimitPerMinute: maxRateLimitPerMinute,
	}, nil)
	require.NoError(t, err)
	return c
}

// createHand creates a key in development behind the engine's back with
// token and returns it, token included (createDirect returns only the id).
func createHand(t *testing.T, e *testEnv, token, name string) *heronapi.Key {
	t.Helper()
	k, err := handClient(t, e, token).CreateKey(context.Background(), name)
	require.NoError(t, err)
	require.NotEmpty(t, k.Token)
	return k
}

// inventory reads inventory/development as it is once the short-lived list
// has expired (dropped here: the tests change Heron behind the engine's
// back between reads), and checks that it cost exactly one request to Heron,
// a list, and that no token appears anywhere in it.
func inventory(t *testing.T, e *testEnv, data map[string]interface{}, tokens []string) (map[string]map[string]interface{}, map[string]int) {
	t.Helper()
	e.b.forgetList("development")
	lists := e.srv.CountRequests(http.MethodGet, "/api/credentials/keys", "development")
	all := e.srv.CountRequests("", "", "")
	resp := e.ok(logical.ReadOperation, "inventory/development", data)
	require.Equal(t, 1, e.srv.CountRequests(http.MethodGet, "/api/credentials/keys", "development")-lists, "one list call per read")
	require.Equal(t, 1, e.srv.CountRequests("", "", "")-all, "nothing but the list call")

	raw, err := json.Marshal(resp.Data)
	require.NoError(t, err)
	require.NotRegexp(t, regexp.MustCompile(`key_[0-9a-f]{48}`), string(raw), "no token in the inventory")
	for _, tok := range tokens {
		require.NotContains(t, string(raw), tok)
	}
	require.ElementsMatch(t, []string{"keys", "counts"}, invKeys(resp.Data))

	keys := map[string]map[string]interface{}{}
	for id, v := range resp.Data["keys"].(map[string]interface{}) {
		keys[id] = v.(map[string]interface{})
	}
	counts := resp.Data["counts"].(map[string]int)
	require.ElementsMatch(t, inventoryClasses, invKeys(counts), "every class is counted")
	n := 0
	for _, c := range counts {
		n += c
	}
	require.Equal(t, len(keys), n, "counts add up to the keys returned")
	return keys, counts
}

func invKeys[V any](m map[string]V) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	return out
}

func idsOf(keys map[string]map[string]interface{}) []string { return invKeys(keys) }

func TestInventory_Classes(t *testing.T) {
	e := getTestBackend(t)
	e.configure("development")
	e.configure("production")
	seeded := e.adminKey["development"]
	var tokens []string

	// A live lease, and one that ran out (deactivated, retained).
	e.role("app", map[string]interface{}{"ttl": "1h", "max_ttl": "2h"})
	live := e.issue("app")
	liveID := live.Data["key_id"].(string)
	e.allowLive[liveID] = true
	expired := e.issue("app")
	expiredID := expired.Data["key_id"].(string)
	e.atTime(time.Now().Add(2 * time.Hour))
	require.NoError(t, e.revoke(expired))
	require.False(t, heronKey(e, expiredID).IsActive)
	e.atTime(time.Now())
	tokens = append(tokens, live.Data["api_key"].(string), expired.Data["api_key"].(string))

	// A static role during its overlap: current and previous key.
	e.ok(logical.CreateOperation, "static-roles/svc", map[string]interface{}{"environment": "development", "overlap": "2h"})
	e.ok(logical.UpdateOperation, "static-roles/svc/rotate", nil)
	svc := staticCreds(e, "svc")
	staticID, prevID := svc["key_id"].(string), svc["previous_key_id"].(string)
	require.NotEmpty(t, prevID)
	tokens = append(tokens, svc["api_key"].(string))

	// The customer's own keys, made with the seeded admin key: one never
	// used, one to be used later, one deactivated by hand.
	unused := createHand(t, e, seeded, "customer-unused")
	used := createHand(t, e, seeded, "customer-used")
	off := createHand(t, e, seeded, "customer-off")
	require.NoError(t, handClient(t, e, seeded).DeactivateKey(context.Background(), off.ID))
	e.foreign[unused.ID], e.foreign[used.ID] = true, true
	t.Cleanup(func() {
		// Not the engine's to delete, and the leftover check would refuse
		// it: tidy up as the customer would.
		helper := e.srv.AddAdminKey("development")
		e.adminKey["inventory-cleanup"] = helper
		require.NoError(t, handClient(t, e, helper).DeleteKey(context.Background(), off.ID))
	})
	tokens = append(tokens, unused.Token, used.Token, off.Token)

	// Rotate the admin key: the seeded key is retired.
	e.ok(logical.UpdateOperation, "config/development/rotate", nil)
	cfg, err := getConfig(context.Background(), e.s, "development")
	require.NoError(t, err)
	require.Len(t, cfg.RetiredKeys, 1)
	adminID, retiredID := cfg.AdminKeyID, cfg.RetiredKeys[0].KeyID
	tokens = append(tokens, seeded, cfg.AdminAPIKey, e.adminKey["production"])

	keys, counts := inventory(t, e, nil, tokens)
	want := map[string][2]string{ // id -> class, role
		liveID:    {"lease", "app"},
		expiredID: {"retained", "app"},
		staticID:  {"static", "svc"},
		prevID:    {"static", "svc"},
		adminID:   {"admin", ""},
		retiredID: {"retired_admin", ""},
		unused.ID: {"unmanaged", ""},
		used.ID:   {"unmanaged", ""},
		off.ID:    {"unmanaged", ""},
	}
	require.ElementsMatch(t, invKeys(want), idsOf(keys), "exactly what Heron holds for the admin key's user in development")
	for id, w := range want {
		require.Equal(t, w[0], keys[id]["class"], "class of %s", id)
		require.Equal(t, w[1], keys[id]["role"], "role of %s", id)
	}
	require.Equal(t, map[string]int{
		"lease": 1, "static": 2, "admin": 1, "retired_admin": 1, "retained": 1, "unconfirmed": 0, "unmanaged": 3,
	}, counts)

	// Heron's view, as Heron lists it.
	for id, k := range keys {
		rec := heronKey(e, id)
		require.Equal(t, rec.Name, k["name"])
		require.Equal(t, rec.TokenPrefix, k["token_prefix"])
		require.Equal(t, rec.Created.UTC().Format(time.RFC3339), k["created"])
		require.Equal(t, rec.IsActive, k["is_active"])
		if id == adminID {
			// The list itself used the admin key.
			require.NotEmpty(t, k["last_used"])
			continue
		}
		if rec.LastUsed == nil {
			require.Equal(t, "", k["last_used"], "never used: %s", id)
		} else {
			require.Equal(t, rec.LastUsed.UTC().Format(time.RFC3339), k["last_used"])
		}
		_, err := time.Parse(time.RFC3339, k["created"].(string))
		require.NoError(t, err)
	}
	require.False(t, keys[off.ID]["is_active"].(bool))
	require.False(t, keys[retiredID]["is_active"].(bool))
	require.False(t, keys[expiredID]["is_active"].(bool))
	require.True(t, keys[liveID]["is_active"].(bool))

	// unused_for: right now, nothing has been unused for an hour...
	keys, counts = inventory(t, e, map[string]interface{}{"unused_for": "1h"}, tokens)
	require.Empty(t, keys)
	for _, c := range inventoryClasses {
		require.Zero(t, counts[c], c)
	}
	// ...a day from now, every key has (used or not).
	e.atTime(time.Now().Add(24 * time.Hour))
	keys, _ = inventory(t, e, map[string]interface{}{"unused_for": 3600}, tokens)
	require.ElementsMatch(t, invKeys(want), idsOf(keys))

	// Used versus never used: Heron's clock is real time, so let two
	// seconds pass, then make a fresh key and use another.
	time.Sleep(2100 * time.Millisecond)
	fresh := e.srv.AddAdminKey("development") // a never-used key of the same user
	e.adminKey["inventory-fresh"] = fresh
	freshRec, ok := e.srv.KeyByToken(fresh)
	require.True(t, ok)
	require.True(t, e.authenticates(used.Token))
	e.atTime(time.Now())
	keys, counts = inventory(t, e, map[string]interface{}{"unused_for": "2s"}, append(tokens, fresh))
	// Used just now: the customer's key, and the admin key (by the list).
	// Never used and created just now: fresh. Everything else was last
	// used, or created and never used, more than two seconds ago.
	wantIdle := []string{liveID, expiredID, staticID, prevID, retiredID, unused.ID, off.ID}
	require.ElementsMatch(t, wantIdle, idsOf(keys))
	require.NotContains(t, keys, freshRec.ID)
	require.Equal(t, map[string]int{
		"lease": 1, "static": 2, "admin": 0, "retired_admin": 1, "retained": 1, "unconfirmed": 0, "unmanaged": 2,
	}, counts)

	// Without the filter the fresh key is there, unmanaged.
	keys, counts = inventory(t, e, nil, append(tokens, fresh))
	require.Equal(t, "unmanaged", keys[freshRec.ID]["class"])
	require.Equal(t, 4, counts["unmanaged"])
	require.Equal(t, "", keys[freshRec.ID]["last_used"])
	require.NotEmpty(t, keys[used.ID]["last_used"])

	// unused_for=0 is no filter at all.
	keys, _ = inventory(t, e, map[string]interface{}{"unused_for": 0}, append(tokens, fresh))
	require.Len(t, keys, len(want)+1)
}

// Production's inventory holds only production's keys.
func TestInventory_OtherEnvironment(t *testing.T) {
	e := getTestBackend(t)
	e.configure("development")
	e.configure("production")
	e.role("app", map[string]interface{}{})
	lease := e.issue("app")
	e.allowLive[lease.Data["key_id"].(string)] = true

	lists := e.srv.CountRequests(http.MethodGet, "/api/credentials/keys", "production")
	resp := e.ok(logical.ReadOperation, "inventory/production", nil)
	require.Equal(t, 1, e.srv.CountRequests(http.MethodGet, "/api/credentials/keys", "production")-lists)
	keys := resp.Data["keys"].(map[string]interface{})
	require.Len(t, keys, 1)
	for _, k := range keys {
		require.Equal(t, "admin", k.(map[string]interface{})["class"])
	}
	require.Equal(t, 1, resp.Data["counts"].(map[string]int)["admin"])
}

// The admin key's id is not yet known (it is learnt lazily): the single
// active key with its prefix is the admin key.
func TestInventory_AdminByPrefix(t *testing.T) {
	e := getTestBackend(t)
	e.configure("development")
	cfg, err := getConfig(context.Background(), e.s, "development")
	require.NoError(t, err)
	cfg.AdminKeyID = ""
	require.NoError(t, putConfig(context.Background(), e.s, cfg))
	seeded, ok := e.srv.KeyByToken(e.adminKey["development"])
	require.True(t, ok)

	resp := e.ok(logical.ReadOperation, "inventory/development", nil)
	keys := resp.Data["keys"].(map[string]interface{})
	require.Equal(t, "admin", keys[seeded.ID].(map[string]interface{})["class"])
}

// Inventory classes ("admin": never offered as unmanaged, which invites its
// deletion): another config's admin key whose id is unknown (written with
// verify=false) is found by its prefix and classed admin.
func TestInventory_OtherConfigsAdminKeyWithUnknownIDIsAdmin(t *testing.T) {
	e := getTestBackend(t)
	e.configure("development")
	batch := e.srv.AddAdminKey("development") // the same Heron user
	e.adminKey["dev-batch"] = batch
	e.ok(logical.CreateOperation, "config/dev-batch", map[string]interface{}{
		"admin_api_key": batch, "base_url": e.srv.URL, "verify": false, "rate_limit_per_minute": maxRateLimitPerMinute,
	})
	require.Equal(t, "", e.ok(logical.ReadOperation, "config/dev-batch", nil).Data["admin_key_id"], "precondition: its id is unknown")
	batchKey, ok := e.srv.KeyByToken(batch)
	require.True(t, ok)

	keys, counts := inventory(t, e, nil, []string{batch})
	require.Contains(t, keys, batchKey.ID)
	require.Equal(t, "admin", keys[batchKey.ID]["class"])
	require.Equal(t, 2, counts["admin"], "development's admin key and dev-batch's")
	require.Zero(t, counts["unmanaged"])
}

func TestInventory_Errors(t *testing.T) {
	e := getTestBackend(t)
	e.configure("development")

	e.badRequest(logical.ReadOperation, "inventory/staging", nil, `"staging"`)
	e.badRequest(logical.ReadOperation, "inventory/Bad_Env", nil, `environment "Bad_Env" is invalid`)
	e.badRequest(logical.ReadOperation, "inventory/development", map[string]interface{}{"unused_for": "soon"}, "unused_for")
	e.badRequest(logical.ReadOperation, "inventory/development", map[string]interface{}{"unused_for": "-1h"}, "unused_for")

	// A config whose delete did not finish.
	cfg, err := getConfig(context.Background(), e.s, "development")
	require.NoError(t, err)
	cfg.Deleting = true
	require.NoError(t, putConfig(context.Background(), e.s, cfg))
	e.badRequest(logical.ReadOperation, "inventory/development", nil, "being deleted")
	cfg.Deleting = false
	require.NoError(t, putConfig(context.Background(), e.s, cfg))

	// Heron failing: the engine's error, naming the environment.
	e.srv.FailNext(http.MethodGet, "/api/credentials/keys", 100, herontest.FaultStatus503)
	resp, err := e.do(logical.ReadOperation, "inventory/development", nil)
	require.Error(t, err)
	require.Nil(t, resp)
	require.Contains(t, err.Error(), `environment "development"`)
	e.srv.ResetFaults()
}

func TestInventory_RateLimitedIs502(t *testing.T) {
	e := getTestBackend(t)
	e.ok(logical.CreateOperation, "config/development", map[string]interface{}{
		"admin_api_key": e.adminKey["development"], "base_url": e.srv.URL, "max_retries": 0, "rate_limit_per_minute": maxRateLimitPerMinute,
	})
	e.srv.Force429("development", time.Minute, time.Second)
	resp, err := e.do(logical.ReadOperation, "inventory/development", nil)
	require.ErrorIs(t, err, logical.ErrUpstreamRateLimited)
	require.Contains(t, err.Error(), `environment "development"`)
	code, _ := logical.RespondErrorCommon(&logical.Request{}, resp, err)
	require.Equal(t, http.StatusBadGateway, code)
	e.srv.Force429("development", 0, 0)
}

// Inventory readers share the short-lived list that keys/<id> reads: however
// often and however many at once they read, they cost at most one list per
// listCacheTTL, so a reader of inventory alone cannot spend the
// environment's budget and starve revocations. What the engine itself
// deleted or deactivated since that list was asked is shown as it is now.
func TestInventory_ReadersShareTheShortLivedList(t *testing.T) {
	e := getTestBackend(t)
	e.configure("development")
	e.role("app", map[string]interface{}{"ttl": "1h", "max_ttl": "2h"})
	revoked, expired, live := e.issue("app"), e.issue("app"), e.issue("app")
	revokedID, expiredID, liveID := revoked.Data["key_id"].(string), expired.Data["key_id"].(string), live.Data["key_id"].(string)
	e.allowLive[liveID] = true
	lists := func() int { return e.srv.CountRequests(http.MethodGet, "/api/credentials/keys", "development") }
	read := func() map[string]interface{} {
		t.Helper()
		return e.ok(logical.ReadOperation, "inventory/development", nil).Data["keys"].(map[string]interface{})
	}

	before := lists()
	keys := read()
	require.Contains(t, keys, revokedID)
	for i := 0; i < 50; i++ {
		read()
		e.ok(logical.ReadOperation, "keys/"+liveID, nil)
	}
	require.Equal(t, 1, lists()-before, "51 inventory reads and 50 keys/<id> reads within listCacheTTL: one list")

	// The engine deletes one key (a revocation) and deactivates another (an
	// expiry): the shared list still has them as they were, the inventory
	// shows them as they are.
	require.NoError(t, e.revoke(revoked))
	e.atTime(time.Now().Add(2 * time.Hour))
	require.NoError(t, e.revoke(expired))
	e.atTime(time.Now())
	keys = read()
	require.NotContains(t, keys, revokedID, "deleted by the engine after the list")
	require.Equal(t, false, keys[expiredID].(map[string]interface{})["is_active"], "deactivated by the engine after the list")
	require.Equal(t, "retained", keys[expiredID].(map[string]interface{})["class"])
	require.Equal(t, true, keys[liveID].(map[string]interface{})["is_active"])
	require.Equal(t, 1, lists()-before, "still the same list")

	// Keys the engine created after the list are there too: an issuance and
	// a static role's key.
	fresh := e.issue("app")
	freshID := fresh.Data["key_id"].(string)
	e.allowLive[freshID] = true
	e.ok(logical.CreateOperation, "static-roles/svc", map[string]interface{}{"environment": "development"})
	staticID := staticCreds(e, "svc")["key_id"].(string)
	listsNow := lists()
	keys = read()
	require.Equal(t, listsNow, lists(), "no list for the inventory")
	require.Equal(t, "lease", keys[freshID].(map[string]interface{})["class"])
	require.Equal(t, fresh.Data["token_prefix"], keys[freshID].(map[string]interface{})["token_prefix"])
	require.Equal(t, "static", keys[staticID].(map[string]interface{})["class"])
	require.Equal(t, "svc", keys[staticID].(map[string]interface{})["role"])
	// The static role's creation listed (its key names are not unique, so
	// Heron is asked first); count from there.
	before = listsNow - 1

	// A key made behind the engine's back shows once the list has expired;
	// then 20 readers at once cost one list.
	hand := createHand(t, e, e.adminKey["development"], "customer-key")
	e.foreign[hand.ID] = true
	t.Cleanup(func() {
		helper := e.srv.AddAdminKey("development")
		e.adminKey["inventory-cleanup"] = helper
		require.NoError(t, handClient(t, e, helper).DeleteKey(context.Background(), hand.ID))
	})
	require.NotContains(t, read(), hand.ID)
	e.b.wallNow = func() time.Time { return time.Now().Add(listCacheTTL + time.Second) }
	var wg sync.WaitGroup
	for i := 0; i < 20; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			resp, err := e.do(logical.ReadOperation, "inventory/development", nil)
			if err == nil && resp.IsError() {
				err = resp.Error()
			}
			assert.NoError(t, err)
			if err == nil {
				assert.Contains(t, resp.Data["keys"], hand.ID)
			}
		}()
	}
	wg.Wait()
	require.Equal(t, 2, lists()-before, "20 readers at once after the list expired: one more list")
	e.ok(logical.DeleteOperation, "static-roles/svc", nil)
}

// Spec "inventory" (unmanaged: not created or adopted by this engine): with
// two configs of the same Heron user, a lease key issued through one is a
// lease in the other's inventory, not unmanaged.
func TestInventory_LeaseKeyOfAnotherConfigIsLease(t *testing.T) {
	e := getTestBackend(t)
	e.configure("development")
	e.adminKey["dev-batch"] = e.srv.AddAdminKey("development") // same Heron user
	e.configure("dev-batch")
	e.role("batch", map[string]interface{}{"environment": "dev-batch"})
	lease := e.issue("batch")
	defer func() { require.NoError(t, e.revoke(lease)) }()
	id := lease.Data["key_id"].(string)

	inv := e.ok(logical.ReadOperation, "inventory/development", nil)
	entry, ok := inv.Data["keys"].(map[string]interface{})[id].(map[string]interface{})
	require.True(t, ok, "precondition: the development admin key sees the key")
	require.Equal(t, inventoryLease, entry["class"], "a key this engine issued (lease of role batch) is a lease, not %v", entry["class"])
}
