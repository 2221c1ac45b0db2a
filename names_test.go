package heron

import (
	"context"
	"strings"
	"sync"
	"testing"

	"github.com/hashicorp/vault/sdk/logical"
	"github.com/stretchr/testify/require"
)

// watchedStorage is a mount's storage as Vault hands it over (a
// logical.StorageView: keys with ".." are refused) that records, while
// watching, every key read, written, deleted or listed.
type watchedStorage struct {
	logical.Storage
	mu       sync.Mutex
	watching bool
	touched  []string
}

func (s *watchedStorage) note(op, key string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.watching {
		s.touched = append(s.touched, op+" "+key)
	}
}

func (s *watchedStorage) watch() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	touched := s.touched
	s.watching, s.touched = true, nil
	return touched
}

func (s *watchedStorage) Get(ctx context.Context, key string) (*logical.StorageEntry, error) {
	s.note("get", key)
	return s.Storage.Get(ctx, key)
}

func (s *watchedStorage) Put(ctx context.Context, e *logical.StorageEntry) error {
	s.note("put", e.Key)
	return s.Storage.Put(ctx, e)
}

func (s *watchedStorage) Delete(ctx context.Context, key string) error {
	s.note("delete", key)
	return s.Storage.Delete(ctx, key)
}

func (s *watchedStorage) List(ctx context.Context, prefix string) ([]string, error) {
	s.note("list", prefix)
	return s.Storage.List(ctx, prefix)
}

// newWatchedEnv is a test environment over a watchedStorage.
func newWatchedEnv(t *testing.T) (*testEnv, *watchedStorage) {
	var ws *watchedStorage
	e := newTestEnv(t, withStorage(func(s logical.Storage) logical.Storage {
		ws = &watchedStorage{Storage: logical.NewStorageView(s, "")}
		return ws
	}))
	return e, ws
}

// vaultDo sends a request the way Vault does: the existence check first for
// a write (which decides create or update), then the handler.
func (e *testEnv) vaultDo(op logical.Operation, path string, data map[string]interface{}) (*logical.Response, error) {
	e.t.Helper()
	req := &logical.Request{Operation: op, Path: path, Data: data, Storage: e.s, DisplayName: "token-tester"}
	if op == logical.UpdateOperation || op == logical.CreateOperation {
		found, exists, err := e.b.HandleExistenceCheck(context.Background(), req)
		if err != nil {
			return nil, err
		}
		if found && !exists {
			req.Operation = logical.CreateOperation
		} else {
			req.Operation = logical.UpdateOperation
		}
	}
	return e.b.HandleRequest(context.Background(), req)
}

// vaultBadRequest is badRequest through vaultDo.
func (e *testEnv) vaultBadRequest(op logical.Operation, path string, data map[string]interface{}, want ...string) {
	e.t.Helper()
	resp, err := e.vaultDo(op, path, data)
	require.NoError(e.t, err, "%s %s must be a user error, not an internal one", op, path)
	require.NotNil(e.t, resp, "%s %s", op, path)
	require.True(e.t, resp.IsError(), "%s %s must fail", op, path)
	code, _ := logical.RespondErrorCommon(&logical.Request{Operation: op}, resp, nil)
	require.Equal(e.t, 400, code, "%s %s", op, path)
	for _, w := range want {
		require.Contains(e.t, resp.Error().Error(), w, "%s %s", op, path)
	}
}

// A path that names a role, static role or environment in another case than
// the stored one is refused with a 400 naming the path to use, before
// anything is read, written or created: Vault's policies are case-sensitive,
// so such a path must never reach the stored name's data.
func TestNames_CaseVariantPathsReachNothing(t *testing.T) {
	e, ws := newWatchedEnv(t)
	e.configure("development")
	e.role("billing", map[string]interface{}{"description": "as written"})
	e.ok(logical.CreateOperation, "static-roles/billing-batch", map[string]interface{}{"environment": "development"})
	before := staticCreds(e, "billing-batch")
	requests := e.srv.CountRequests("", "", "")
	ws.watch()

	for _, c := range []struct {
		op   logical.Operation
		path string
		data map[string]interface{}
		use  string
	}{
		{logical.ReadOperation, "creds/BILLING", nil, "creds/billing"},
		{logical.UpdateOperation, "creds/Billing", nil, "creds/billing"},
		{logical.ReadOperation, "roles/BILLING", nil, "roles/billing"},
		{logical.UpdateOperation, "roles/BILLING", map[string]interface{}{"description": "changed"}, "roles/billing"},
		{logical.DeleteOperation, "roles/Billing", nil, "roles/billing"},
		{logical.ReadOperation, "static-creds/BILLING-BATCH", nil, "static-creds/billing-batch"},
		{logical.ReadOperation, "static-roles/Billing-Batch", nil, "static-roles/billing-batch"},
		{logical.UpdateOperation, "static-roles/BILLING-BATCH", map[string]interface{}{"overlap": "1h"}, "static-roles/billing-batch"},
		{logical.DeleteOperation, "static-roles/BILLING-BATCH", nil, "static-roles/billing-batch"},
		{logical.UpdateOperation, "static-roles/BILLING-BATCH/rotate", nil, "static-roles/billing-batch/rotate"},
		{logical.ReadOperation, "config/Development", nil, "config/development"},
		{logical.UpdateOperation, "config/DEVELOPMENT", map[string]interface{}{"max_retries": 1}, "config/development"},
		{logical.DeleteOperation, "config/Development", nil, "config/development"},
		{logical.UpdateOperation, "config/Development/rotate", nil, "config/development/rotate"},
		{logical.ReadOperation, "inventory/Development", nil, "inventory/development"},
	} {
		e.vaultBadRequest(c.op, c.path, c.data, "use "+c.use, "case-sensitive")
		require.Empty(t, ws.watch(), "%s %s touched storage", c.op, c.path)
	}
	require.Equal(t, requests, e.srv.CountRequests("", "", ""), "nothing was sent to Heron")

	// The lowercase names are as they were.
	require.Equal(t, "as written", e.ok(logical.ReadOperation, "roles/billing", nil).Data["description"])
	after := staticCreds(e, "billing-batch")
	require.Equal(t, before["key_id"], after["key_id"], "the static role was not rotated")
	e.ok(logical.DeleteOperation, "static-roles/billing-batch", nil)
}

// ".." in a name passes the path patterns, but Vault's storage refuses any
// key holding it: every path and field that becomes a storage key answers a
// 400 naming the rule, never a 500.
func TestNames_DotDotIsA400NamingTheRule(t *testing.T) {
	e, ws := newWatchedEnv(t)
	e.configure("development")
	ws.watch()
	for _, c := range []struct {
		op   logical.Operation
		path string
		data map[string]interface{}
		want string
	}{
		{logical.UpdateOperation, "config/a..b", map[string]interface{}{"admin_api_key": e.adminKey["development"], "base_url": e.srv.URL}, environmentRule},
		{logical.ReadOperation, "config/a..b", nil, environmentRule},
		{logical.DeleteOperation, "config/a..b", nil, environmentRule},
		{logical.UpdateOperation, "config/a..b/rotate", nil, environmentRule},
		{logical.ReadOperation, "inventory/a..b", nil, environmentRule},
		{logical.UpdateOperation, "roles/a..b", map[string]interface{}{"environment": "development"}, nameRule},
		{logical.ReadOperation, "roles/a..b", nil, nameRule},
		{logical.DeleteOperation, "roles/a..b", nil, nameRule},
		{logical.UpdateOperation, "static-roles/a..b", map[string]interface{}{"environment": "development"}, nameRule},
		{logical.ReadOperation, "static-roles/a..b", nil, nameRule},
		{logical.DeleteOperation, "static-roles/a..b", nil, nameRule},
		{logical.UpdateOperation, "static-roles/a..b/rotate", nil, nameRule},
		{logical.ReadOperation, "creds/a..b", nil, nameRule},
		{logical.UpdateOperation, "creds/a..b", nil, nameRule},
		{logical.ReadOperation, "static-creds/a..b", nil, nameRule},
		{logical.ReadOperation, "keys/a..b", nil, `without ".."`},
		{logical.UpdateOperation, "roles/ok", map[string]interface{}{"environment": "a..b"}, environmentRule},
		{logical.UpdateOperation, "static-roles/ok", map[string]interface{}{"environment": "a..b"}, environmentRule},
		{logical.UpdateOperation, "roles/ok", map[string]interface{}{"environment": "Development"}, environmentRule},
	} {
		e.vaultBadRequest(c.op, c.path, c.data, "invalid", c.want)
		for _, touched := range ws.watch() {
			require.NotContains(t, touched, "..", "%s %s", c.op, c.path)
			require.False(t, strings.HasPrefix(touched, "put") || strings.HasPrefix(touched, "delete"), "%s %s wrote %s", c.op, c.path, touched)
		}
	}
	require.Empty(t, e.ok(logical.ListOperation, "roles/", nil).Data["keys"])
	require.Empty(t, e.ok(logical.ListOperation, "static-roles/", nil).Data["keys"])
}

// A new role or static role gets a name that follows the one rule; a static
// role's name also keeps its key names within Heron's 128 characters.
func TestNames_RuleOnCreate(t *testing.T) {
	e := getTestBackend(t)
	e.configure("development")
	long := strings.Repeat("a", 64)
	for _, name := range []string{"a", "0", "a.b", "a_b-c.d", "billing-batch", long} {
		e.ok(logical.CreateOperation, "roles/"+name, map[string]interface{}{"environment": "development"})
		e.ok(logical.DeleteOperation, "roles/"+name, nil)
	}
	for _, name := range []string{"_a", "a_", "_", "a..b", long + "a"} {
		e.vaultBadRequest(logical.UpdateOperation, "roles/"+name, map[string]interface{}{"environment": "development"}, "invalid", nameRule)
		e.vaultBadRequest(logical.UpdateOperation, "static-roles/"+name, map[string]interface{}{"environment": "development"}, "invalid", nameRule)
	}
	// A static role name too long for its key names: the limit is named.
	e.vaultBadRequest(logical.UpdateOperation, "static-roles/"+strings.Repeat("s", 110), map[string]interface{}{"environment": "development"},
		"vault-static-<name>-<unix_time>", "128 characters")
	require.Empty(t, e.ok(logical.ListOperation, "roles/", nil).Data["keys"])
	require.Empty(t, e.ok(logical.ListOperation, "static-roles/", nil).Data["keys"])
	require.Zero(t, e.srv.CountRequests("POST", "/api/credentials/keys", ""), "no key was made for a refused name")

	// The longest static role name makes a key name Heron takes.
	e.ok(logical.CreateOperation, "static-roles/"+long, map[string]interface{}{"environment": "development"})
	creds := staticCreds(e, long)
	require.LessOrEqual(t, len(creds["key_name"].(string)), maxKeyNameLength)
	e.ok(logical.DeleteOperation, "static-roles/"+long, nil)
}

// A role stored before the name rule existed (here one starting with "_",
// which the earlier pattern allowed) keeps working: read, update, issue,
// revoke and delete.
func TestNames_StoredBeforeTheRuleKeepWorking(t *testing.T) {
	e := getTestBackend(t)
	e.configure("development")
	legacy := "_legacy_"
	require.False(t, validName(legacy))
	require.NoError(t, putJSON(context.Background(), e.s, roleStoragePrefix+legacy, "role", &heronRole{
		Name: legacy, Environment: "development", ExpiredKeyRetention: defaultExpiredKeyRetention,
	}))
	require.Equal(t, "development", e.ok(logical.ReadOperation, "roles/"+legacy, nil).Data["environment"])
	e.ok(logical.UpdateOperation, "roles/"+legacy, map[string]interface{}{"description": "still here"})
	lease := e.issue(legacy)
	require.Equal(t, legacy, lease.Data["role"])
	require.NoError(t, e.revoke(lease))
	e.ok(logical.DeleteOperation, "roles/"+legacy, nil)
	require.Nil(t, e.ok(logical.ReadOperation, "roles/"+legacy, nil))
	// Once deleted it cannot be created again under that name.
	e.vaultBadRequest(logical.UpdateOperation, "roles/"+legacy, map[string]interface{}{"environment": "development"}, nameRule)
}
