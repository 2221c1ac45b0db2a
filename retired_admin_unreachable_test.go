package heron

// Rotated-out admin keys the current admin key cannot see (cleanup.go,
// deleteRetired; retired_admin.go): a 404 never settles them.

import (
	"testing"
	"time"

	"github.com/hashicorp/vault/sdk/logical"
	"github.com/stretchr/testify/require"
)

// Spec invariant 4 (a 404 means "gone" only when the admin key in use can
// see the keys it manages): a rotated-out admin key, deactivated by the
// rotation and due for deletion, that the current admin key (another Heron
// user's, written with force=true) cannot see is never recorded deleted on
// Heron's 404: it stays in retired_keys, live in Heron, until an admin key
// that sees it deletes it.
func TestRetiredAdminUnreachable_DueKeyIsNotDroppedOnA404(t *testing.T) {
	e := getTestBackend(t)
	e.ok(logical.CreateOperation, "config/development", map[string]interface{}{
		"admin_api_key": e.adminKey["development"], "base_url": e.srv.URL, "max_retries": 0,
		"rate_limit_per_minute": maxRateLimitPerMinute, "old_key_retention": "1h",
	})
	seeded := keyIDByToken(t, e, e.adminKey["development"])
	e.ok(logical.UpdateOperation, "config/development/rotate", nil)
	require.Equal(t, keyStateDeactivated, retiredKeyStates(t, e, "development")[seeded], "precondition: the rotation deactivated it")

	foreign := e.srv.AddUser("development")
	e.adminKey["foreign-user"] = foreign
	e.ok(logical.UpdateOperation, "config/development", map[string]interface{}{"admin_api_key": foreign, "force": true})
	rk := retiredKey(e, "development", seeded)
	require.NotNil(t, rk)
	require.Equal(t, true, rk["unreachable"], "a rotated-out admin key the new admin key cannot see is marked unreachable")

	e.atTime(time.Now().Add(100 * time.Hour)) // far past old_key_retention
	_, _ = e.do(logical.UpdateOperation, "tidy", nil)
	require.False(t, heronKey(e, seeded).Deleted, "precondition: the new admin key cannot delete it")
	require.NotNil(t, retiredKey(e, "development", seeded), "a 404 from a key that cannot see it never settles it")
}
