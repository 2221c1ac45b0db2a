package heron

import (
	"testing"
	"time"

	"github.com/hashicorp/vault/sdk/logical"
	"github.com/stretchr/testify/require"
)

// rotate-root/<env> is config/<env>/rotate under Vault's conventional name:
// same handler, same answer, same environment check.
func TestRotateRoot_RotatesTheAdminKeyLikeConfigRotate(t *testing.T) {
	e := getTestBackend(t)
	e.configure("development")
	oldKey := e.adminKey["development"]

	resp := e.ok(logical.UpdateOperation, "rotate-root/development", nil)
	newID := resp.Data["admin_key_id"].(string)
	newRec, ok := e.srv.Key(newID)
	require.True(t, ok)
	require.Regexp(t, `^vault-admin-development-\d{10}$`, newRec.Name)
	require.False(t, e.authenticates(oldKey), "the old key is deactivated")
	read := e.ok(logical.ReadOperation, "config/development", nil)
	require.Equal(t, newID, read.Data["admin_key_id"])

	e.badRequest(logical.UpdateOperation, "rotate-root/Development", nil, "use rotate-root/development")
	e.badRequest(logical.UpdateOperation, "rotate-root/staging", nil, `"staging"`)
}

// rotate-role/<name> is static-roles/<name>/rotate under Vault's
// conventional name.
func TestRotateRole_RotatesTheStaticKeyLikeStaticRoleRotate(t *testing.T) {
	e := getTestBackend(t)
	e.configure("development")
	e.ok(logical.CreateOperation, "static-roles/app", map[string]interface{}{"environment": "development"})
	first := staticCreds(e, "app")

	resp := e.ok(logical.UpdateOperation, "rotate-role/app", nil)
	require.NotEqual(t, first["key_id"], resp.Data["key_id"])
	require.Equal(t, first["key_id"], resp.Data["previous_key_id"])
	require.Equal(t, resp.Data["key_id"], staticCreds(e, "app")["key_id"])

	e.badRequest(logical.UpdateOperation, "rotate-role/App", nil, "use rotate-role/app")
	e.badRequest(logical.UpdateOperation, "rotate-role/a..b", nil, "names must match")
}

// static-creds answers like HashiCorp's engines: when the key was last
// rotated (last_vault_rotation) and on what rotation it lives beside ttl.
func TestStaticCreds_ShowsLastVaultRotationAndSchedule(t *testing.T) {
	e := getTestBackend(t)
	e.configure("development")
	e.ok(logical.CreateOperation, "static-roles/app", map[string]interface{}{"environment": "development", "rotation_period": "2h"})
	creds := staticCreds(e, "app")
	last, err := time.Parse(time.RFC3339, creds["last_vault_rotation"].(string))
	require.NoError(t, err)
	require.Equal(t, creds["last_rotated"], last.Format(time.RFC3339))
	require.Equal(t, int64(7200), creds["rotation_period"])
	require.NotContains(t, creds, "rotation_schedule")

	e.ok(logical.UpdateOperation, "static-roles/app", map[string]interface{}{"rotation_schedule": "0 3 * * *"})
	creds = staticCreds(e, "app")
	require.Equal(t, "0 3 * * *", creds["rotation_schedule"])
	require.NotContains(t, creds, "rotation_period")
}
