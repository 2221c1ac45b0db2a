package heron

import (
	"context"
	"strings"
	"testing"
	"unicode/utf8"

	"github.com/hashicorp/go-hclog"
	"github.com/hashicorp/vault/sdk/logical"
)

// fuzzBackend is the test harness with one unverified config, so that the
// fuzz targets exercise parsing and validation without any network.
func fuzzBackend(f *testing.F) (*heronBackend, logical.Storage) {
	f.Helper()
	e := newTestEnv(f, withoutLeftoverCheck(), withLogger(hclog.NewNullLogger()))
	resp, err := e.b.HandleRequest(context.Background(), &logical.Request{
		Operation: logical.CreateOperation, Path: "config/development", Storage: e.s,
		Data: map[string]interface{}{"admin_api_key": "key_" + strings.Repeat("ab", 24), "verify": false},
	})
	if err != nil || resp.IsError() {
		f.Fatalf("seed config: %v %v", err, resp)
	}
	return e.b, e.s
}

// requireUserError fails unless the request either succeeded or was refused
// as a user error (400): a fuzzed input must never be an internal error.
func requireUserError(t *testing.T, resp *logical.Response, err error) {
	t.Helper()
	if err != nil {
		t.Fatalf("internal error (500) for user input: %v", err)
	}
	if resp != nil && resp.IsError() {
		code, _ := logical.RespondErrorCommon(&logical.Request{Operation: logical.UpdateOperation}, resp, nil)
		if code != 400 {
			t.Fatalf("status %d for user input: %v", code, resp.Error())
		}
	}
}

func FuzzConfigFields(f *testing.F) {
	b, s := fuzzBackend(f)
	f.Add("production", "key_"+strings.Repeat("0", 48), "http://127.0.0.1:1", "30s", "4", "250", "24h", "0")
	f.Add("Dev", "key_x", "ftp://x", "-1", "-1", "0", "-5", "10s")
	f.Add("a-b", "", "http://[::1", "1e9h", "99999999999999999999", "1.5", "soon", "1h")
	f.Fuzz(func(t *testing.T, env, key, baseURL, timeout, retries, rate, retention, rotation string) {
		data := map[string]interface{}{
			"admin_api_key": key, "base_url": baseURL, "request_timeout": timeout,
			"max_retries": retries, "rate_limit_per_minute": rate,
			"old_key_retention": retention, "rotation_period": rotation, "verify": false,
		}
		if strings.Contains(env, "/") || env == "" {
			env = "x" + strings.ReplaceAll(env, "/", "")
		}
		resp, err := b.HandleRequest(context.Background(), &logical.Request{
			Operation: logical.CreateOperation, Path: "config/" + env, Storage: s, Data: data,
		})
		requireUserError(t, resp, err)
		if err == nil && (resp == nil || !resp.IsError()) {
			cfg, err := getConfig(context.Background(), s, env)
			if err != nil || cfg == nil {
				t.Fatalf("accepted config not stored: %v", err)
			}
			if err := cfg.validate(); err != nil {
				t.Fatalf("stored an invalid config: %v", err)
			}
		}
	})
}

func FuzzRoleFields(f *testing.F) {
	b, s := fuzzBackend(f)
	f.Add("development", "1h", "2h", defaultNameTemplate, "0", "72h")
	f.Add("nope", "-1", "1", "{{.RoleName", "-3", "x")
	f.Add("development", "90", "60", "{{random 999999999}}", "1", "0")
	f.Fuzz(func(t *testing.T, env, ttl, maxTTL, tmpl, maxActive, retention string) {
		resp, err := b.HandleRequest(context.Background(), &logical.Request{
			Operation: logical.CreateOperation, Path: "roles/fuzz", Storage: s,
			Data: map[string]interface{}{
				"environment": env, "ttl": ttl, "max_ttl": maxTTL, "name_template": tmpl,
				"max_active_keys": maxActive, "expired_key_retention": retention,
			},
		})
		requireUserError(t, resp, err)
		if err == nil && (resp == nil || !resp.IsError()) {
			role, err := getRole(context.Background(), s, "fuzz")
			if err != nil || role == nil {
				t.Fatalf("accepted role not stored: %v", err)
			}
			if err := role.validate(); err != nil {
				t.Fatalf("stored an invalid role: %v", err)
			}
			_, _ = b.HandleRequest(context.Background(), &logical.Request{Operation: logical.DeleteOperation, Path: "roles/fuzz", Storage: s})
		}
	})
}

func FuzzNameTemplate(f *testing.F) {
	f.Add(defaultNameTemplate, "token-alice", "role")
	f.Add(`{{printf "%0999999999d" 1}}`, "", "r")
	f.Add(`{{printf "%*d" 1000000000 1}}`, "x", "r")
	f.Add(`{{.DisplayName | truncate 5}}-{{uuid}}-{{.EntityID}}`, "ü", "r")
	f.Add(`{{range 2000000000}}{{end}}`, "", "r")
	f.Add(`{{define "a"}}{{template "b"}}{{template "b"}}{{end}}{{template "a"}}`, "", "r")
	f.Fuzz(func(t *testing.T, tmpl, displayName, roleName string) {
		r := &heronRole{Name: roleName, Environment: "development", NameTemplate: tmpl}
		name, err := r.renderKeyName(nameTemplateData{RoleName: roleName, DisplayName: displayName, Environment: "development"})
		if err != nil {
			return
		}
		if n := utf8.RuneCountInString(name); n < 1 || n > maxKeyNameLength || strings.TrimSpace(name) == "" {
			t.Fatalf("renderKeyName accepted a name of %d characters: %q", n, name)
		}
	})
}
