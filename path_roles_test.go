package heron

import (
	"context"
	"strings"
	"testing"

	"github.com/hashicorp/vault/sdk/logical"
	"github.com/stretchr/testify/require"

	"github.com/heron-vault/vault-plugin-secrets-heron/herontest"
)

func TestRoles_Validation(t *testing.T) {
	e := getTestBackend(t)
	e.configure("development")
	cases := []struct {
		name string
		data map[string]interface{}
		want string
	}{
		{"missing environment", map[string]interface{}{}, "environment is required"},
		{"unknown environment", map[string]interface{}{"environment": "production"}, "environment \"production\" has no config"},
		{"ttl above max_ttl", map[string]interface{}{"environment": "development", "ttl": "2h", "max_ttl": "1h"}, "ttl (2h0m0s) must not be greater than max_ttl (1h0m0s)"},
		{"negative ttl", map[string]interface{}{"environment": "development", "ttl": -1}, "field \"ttl\""},
		{"negative max_ttl", map[string]interface{}{"environment": "development", "max_ttl": -1}, "field \"max_ttl\""},
		{"ttl not a duration", map[string]interface{}{"environment": "development", "ttl": "forever"}, "ttl"},
		{"negative max_active_keys", map[string]interface{}{"environment": "development", "max_active_keys": -2}, "max_active_keys must be 0"},
		{"negative retention", map[string]interface{}{"environment": "development", "expired_key_retention": -1}, "field \"expired_key_retention\""},
		{"template syntax", map[string]interface{}{"environment": "development", "name_template": "{{.RoleName"}, "name_template is invalid"},
		{"template unknown field", map[string]interface{}{"environment": "development", "name_template": "{{.Nope}}"}, "name_template failed to render"},
		{"template renders empty", map[string]interface{}{"environment": "development", "name_template": "{{if false}}x{{end}}"}, "name_template rendered an empty key name"},
		{"template empty", map[string]interface{}{"environment": "development", "name_template": ""}, "name_template must not be empty"},
		{"template loops", map[string]interface{}{"environment": "development", "name_template": "{{range 2000000000}}{{end}}x"}, "must not use range"},
		{"template loops inside if", map[string]interface{}{"environment": "development", "name_template": "{{if true}}{{range 9}}x{{end}}{{end}}"}, "must not use range"},
		{"template defines templates", map[string]interface{}{"environment": "development", "name_template": `{{define "a"}}x{{end}}{{template "a"}}`}, "must not define templates"},
		{"template calls a template", map[string]interface{}{"environment": "development", "name_template": `{{template "a"}}`}, "must not use range or template"},
		{"template text huge", map[string]interface{}{"environment": "development", "name_template": strings.Repeat("{{/* */}}", 500)}, "at most 4096 are allowed"},
		{"template too long", map[string]interface{}{"environment": "development", "name_template": strings.Repeat("x", 129)}, "129 characters, Heron allows at most 128"},
		{"template too long with display name", map[string]interface{}{"environment": "development", "name_template": strings.Repeat("x", 100) + "{{.DisplayName}}"}, "132 characters"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			e.badRequest(logical.CreateOperation, "roles/r1", tc.data, tc.want)
		})
	}
	resp := e.ok(logical.ListOperation, "roles/", nil)
	require.Empty(t, resp.Data["keys"])
}

func TestRoles_CRUD(t *testing.T) {
	e := getTestBackend(t)
	e.configure("development")
	e.configure("production")

	e.role("payments", map[string]interface{}{"ttl": "1h", "max_ttl": 7200, "description": "payments service"})
	resp := e.ok(logical.ReadOperation, "roles/payments", nil)
	require.Equal(t, map[string]interface{}{
		"environment":           "development",
		"ttl":                   int64(3600),
		"max_ttl":               int64(7200),
		"name_template":         defaultNameTemplate,
		"description":           "payments service",
		"max_active_keys":       0,
		"expired_key_retention": int64(72 * 3600),
	}, resp.Data)

	// Update keeps what is not sent.
	e.ok(logical.UpdateOperation, "roles/payments", map[string]interface{}{"environment": "production", "name_template": "svc-{{.RoleName}}-{{random 6}}"})
	resp = e.ok(logical.ReadOperation, "roles/payments", nil)
	require.Equal(t, "production", resp.Data["environment"])
	require.Equal(t, int64(3600), resp.Data["ttl"])
	require.Equal(t, "svc-{{.RoleName}}-{{random 6}}", resp.Data["name_template"])

	// An update that breaks ttl <= max_ttl is refused.
	e.badRequest(logical.UpdateOperation, "roles/payments", map[string]interface{}{"max_ttl": "30m"}, "must not be greater than max_ttl")

	// A ttl above the mount max is accepted with a warning.
	resp = e.ok(logical.CreateOperation, "roles/long", map[string]interface{}{"environment": "development", "ttl": "48h"})
	require.NotNil(t, resp)
	require.Contains(t, strings.Join(resp.Warnings, " "), "greater than the mount's max TTL")

	resp = e.ok(logical.ListOperation, "roles/", nil)
	require.Equal(t, []string{"long", "payments"}, resp.Data["keys"])

	e.ok(logical.DeleteOperation, "roles/long", nil)
	resp, err := e.do(logical.ReadOperation, "roles/long", nil)
	require.NoError(t, err)
	require.Nil(t, resp)
}

// Only roles with max_active_keys keep a role-keys/ index (one storage write
// less per issuance for the others); a role that starts capping later counts
// the keys it issued before.
func TestRoles_CapAddedLaterCountsEarlierKeys(t *testing.T) {
	e := getTestBackend(t)
	e.configure("development")
	e.role("r", map[string]interface{}{})
	a, b := e.issue("r"), e.issue("r")
	n, err := countActiveForRole(context.Background(), e.s, "r")
	require.NoError(t, err)
	require.Zero(t, n, "no index without a cap")
	e.ok(logical.UpdateOperation, "roles/r", map[string]interface{}{"max_active_keys": 2})
	e.badRequest(logical.ReadOperation, "creds/r", nil, "has 2 active keys and max_active_keys is 2")
	require.NoError(t, e.revoke(a))
	c := e.issue("r")
	require.NoError(t, e.revoke(b))
	require.NoError(t, e.revoke(c))
	n, err = countActiveForRole(context.Background(), e.s, "r")
	require.NoError(t, err)
	require.Zero(t, n)
}

// Spec "roles" (max_active_keys): a static role's key never counts against
// max_active_keys of a lease role of the same name.
func TestRoles_StaticKeyNotCountedForALeaseRoleOfTheSameName(t *testing.T) {
	e := getTestBackend(t)
	e.configure("development")
	e.ok(logical.CreateOperation, "static-roles/app", map[string]interface{}{"environment": "development"})
	e.srv.FailNext("PUT", "/api/credentials/keys/", 20, herontest.FaultStatus503)
	e.ok(logical.DeleteOperation, "static-roles/app", nil)
	// The orphan sweep marks the key pending while Heron still fails.
	_, err := e.do(logical.UpdateOperation, "tidy", nil)
	require.Error(t, err, "precondition: the deactivation still fails")
	n, err := countActiveForRole(context.Background(), e.s, "app")
	require.NoError(t, err)
	require.Zero(t, n, "a static key is no lease of role app")
	e.srv.ResetFaults()
	e.ok(logical.UpdateOperation, "tidy", nil)
	tidyAfterRetention(e)
}
