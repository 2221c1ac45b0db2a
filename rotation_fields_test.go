package heron

import (
	"strings"
	"testing"
	"time"

	"github.com/hashicorp/vault/sdk/framework"
	"github.com/hashicorp/vault/sdk/helper/automatedrotationutil"
	"github.com/hashicorp/vault/sdk/logical"
	"github.com/stretchr/testify/require"
)

// The rotation fields are validated as the sdk's ParseAutomatedRotationFields
// validates them, on configs and static roles alike, and the sdk's own
// messages reach the caller as 400s.
func TestRotationFields_SDKValidationMessagesAre400s(t *testing.T) {
	e := getTestBackend(t)
	e.configure("development")
	e.ok(logical.CreateOperation, "static-roles/app", map[string]interface{}{"environment": "development"})
	cases := []struct {
		name string
		data map[string]interface{}
		want string
	}{
		{"window without schedule", map[string]interface{}{"rotation_window": "1h"}, "cannot use rotation_window without rotation_schedule"},
		{"schedule and period", map[string]interface{}{"rotation_schedule": "0 3 * * *", "rotation_period": "2h"}, automatedrotationutil.ErrRotationMutuallyExclusiveFields.Error()},
		{"window with a period", map[string]interface{}{"rotation_period": "2h", "rotation_window": "1h"}, "rotation_window does not apply to period"},
		{"bad schedule", map[string]interface{}{"rotation_schedule": "every day"}, "failed to parse provided rotation_schedule"},
	}
	for _, path := range []string{"config/development", "static-roles/app"} {
		for _, tc := range cases {
			t.Run(path+"/"+tc.name, func(t *testing.T) {
				e.badRequest(logical.UpdateOperation, path, tc.data, tc.want)
			})
		}
	}
	// A window with the schedule stored before is accepted, as is a window
	// written with its schedule.
	e.ok(logical.UpdateOperation, "static-roles/app", map[string]interface{}{"rotation_schedule": "0 3 * * *", "rotation_window": "1h"})
	e.ok(logical.UpdateOperation, "config/development", map[string]interface{}{"rotation_schedule": "0 3 * * *", "rotation_window": "1h"})
}

// Static roles take the whole set of Vault's automated-rotation fields.
func TestStaticRoles_RotationWindowAndDisableAutomatedRotation(t *testing.T) {
	e := getTestBackend(t)
	e.configure("development")
	e.ok(logical.CreateOperation, "static-roles/app", map[string]interface{}{
		"environment": "development", "rotation_schedule": "0 3 * * *", "rotation_window": "2h",
	})
	read := e.ok(logical.ReadOperation, "static-roles/app", nil).Data
	require.EqualValues(t, 7200, read["rotation_window"])
	require.Equal(t, false, read["disable_automated_rotation"])
	next, err := time.Parse(time.RFC3339, read["next_vault_rotation"].(string))
	require.NoError(t, err)
	require.Equal(t, 3, next.Hour())
	require.Equal(t, read["next_rotation"], read["next_vault_rotation"])

	e.ok(logical.UpdateOperation, "static-roles/app", map[string]interface{}{"disable_automated_rotation": true})
	read = e.ok(logical.ReadOperation, "static-roles/app", nil).Data
	require.Equal(t, true, read["disable_automated_rotation"])
	require.Equal(t, "0 3 * * *", read["rotation_schedule"], "disabling keeps the schedule")
	require.Nil(t, read["next_vault_rotation"], "no rotation is scheduled")
	r, err := getStaticRole(t.Context(), e.s, "app")
	require.NoError(t, err)
	require.True(t, r.rotationSchedule().next().IsZero())

	// Setting a period clears the schedule and its window.
	e.ok(logical.UpdateOperation, "static-roles/app", map[string]interface{}{"rotation_period": "24h", "disable_automated_rotation": false})
	read = e.ok(logical.ReadOperation, "static-roles/app", nil).Data
	require.EqualValues(t, 0, read["rotation_window"])
	require.Equal(t, "", read["rotation_schedule"])
}

// Reads answer Vault's rotation info (last_vault_rotation,
// next_vault_rotation: RFC 3339 or null) beside the deprecated last_rotated
// and next_rotation.
func TestReads_ShowLastAndNextVaultRotation(t *testing.T) {
	e := getTestBackend(t)
	e.configure("development")
	read := e.ok(logical.ReadOperation, "config/development", nil).Data
	require.Contains(t, read, "last_vault_rotation")
	require.Nil(t, read["last_vault_rotation"], "never rotated")
	require.Nil(t, read["next_vault_rotation"], "no schedule")

	e.ok(logical.UpdateOperation, "rotate-root/development", nil)
	e.ok(logical.UpdateOperation, "config/development", map[string]interface{}{"rotation_period": "24h"})
	read = e.ok(logical.ReadOperation, "config/development", nil).Data
	last, err := time.Parse(time.RFC3339, read["last_vault_rotation"].(string))
	require.NoError(t, err)
	next, err := time.Parse(time.RFC3339, read["next_vault_rotation"].(string))
	require.NoError(t, err)
	require.Equal(t, 24*time.Hour, next.Sub(last))
	require.Equal(t, read["last_rotated"], read["last_vault_rotation"])
	require.Equal(t, read["next_rotation"], read["next_vault_rotation"])

	e.ok(logical.CreateOperation, "static-roles/app", map[string]interface{}{"environment": "development", "rotation_period": "2h"})
	read = e.ok(logical.ReadOperation, "static-roles/app", nil).Data
	last, err = time.Parse(time.RFC3339, read["last_vault_rotation"].(string))
	require.NoError(t, err)
	next, err = time.Parse(time.RFC3339, read["next_vault_rotation"].(string))
	require.NoError(t, err)
	require.Equal(t, 2*time.Hour, next.Sub(last))
}

// On Vault Community (no rotation manager) a write that schedules rotation
// says that the engine, not Vault, runs the schedule.
func TestRotationWrites_WarnThatTheEngineSchedulesOnCommunity(t *testing.T) {
	e := getTestBackend(t)
	e.configure("development")
	const want = "the engine, not Vault, schedules"
	resp := e.ok(logical.UpdateOperation, "config/development", map[string]interface{}{"rotation_period": "24h"})
	require.NotNil(t, resp)
	require.Contains(t, strings.Join(resp.Warnings, "\n"), want)
	resp = e.ok(logical.CreateOperation, "static-roles/app", map[string]interface{}{"environment": "development"})
	require.NotNil(t, resp)
	require.Contains(t, strings.Join(resp.Warnings, "\n"), want)

	// With Vault's rotation manager, Vault schedules: no such warning.
	view := useRotationManager(t, e)
	resp = e.ok(logical.UpdateOperation, "static-roles/app", map[string]interface{}{"rotation_period": "48h"})
	if resp != nil {
		require.NotContains(t, strings.Join(resp.Warnings, "\n"), want)
	}
	require.True(t, view.hasJob("static-roles/app"), "static roles register with the rotation manager")
}

// The OpenAPI document describes the conventional fields and paths.
func TestOpenAPI_DescribesTheConventionalRotationFieldsAndPaths(t *testing.T) {
	b := backend()
	conf := logical.TestBackendConfig()
	conf.System = &logical.StaticSystemView{PluginEnvironment: &logical.PluginEnvironment{VaultVersion: "1.21.0"}}
	require.NoError(t, b.Setup(t.Context(), conf))
	resp, err := b.HandleRequest(t.Context(), &logical.Request{Operation: logical.HelpOperation, Storage: &logical.InmemStorage{}})
	require.NoError(t, err)
	require.NotNil(t, resp)
	doc := resp.Data["openapi"].(*framework.OASDocument)
	for _, p := range []string{"/rotate-root/{environment}", "/rotate-role/{name}"} {
		item, ok := doc.Paths[p]
		require.True(t, ok, "%s is in the OpenAPI document", p)
		require.NotNil(t, item.Post, p)
		require.NotEmpty(t, item.Description, p)
	}
	for _, p := range []string{"/config/{environment}", "/static-roles/{name}"} {
		item := doc.Paths[p]
		require.NotNil(t, item, p)
		props := item.Post.RequestBody.Content["application/json"].Schema.Ref
		schema := doc.Components.Schemas[strings.TrimPrefix(props, "#/components/schemas/")]
		require.NotNil(t, schema, p)
		for _, f := range []string{"rotation_period", "rotation_schedule", "rotation_window", "disable_automated_rotation"} {
			require.Contains(t, schema.Properties, f, "%s %s", p, f)
			require.NotEmpty(t, schema.Properties[f].Description, "%s %s", p, f)
		}
		read := item.Get.Responses[200]
		require.NotNil(t, read, p)
		rs := read.Content["application/json"].Schema
		if rs.Ref != "" {
			rs = doc.Components.Schemas[strings.TrimPrefix(rs.Ref, "#/components/schemas/")]
		}
		for _, f := range []string{"last_vault_rotation", "next_vault_rotation", "last_rotated", "next_rotation"} {
			require.Contains(t, rs.Properties, f, "%s %s", p, f)
			require.NotEmpty(t, rs.Properties[f].Description, "%s %s", p, f)
		}
		require.Contains(t, rs.Properties["last_rotated"].Description, "Deprecated")
	}
}

// Every config setting (a write of only these sends nothing to Heron) is a
// field of config/<environment>, the rotation fields among them.
func TestConfigSettings_AreConfigFieldsIncludingTheRotationFields(t *testing.T) {
	fields := pathConfig(backend())[1].Fields
	for _, f := range configSettings {
		require.Contains(t, fields, f)
	}
	for _, f := range []string{"rotation_period", "rotation_schedule", "rotation_window", "disable_automated_rotation"} {
		require.Contains(t, configSettings, f)
	}
}
