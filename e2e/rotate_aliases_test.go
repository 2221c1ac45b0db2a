//go:build e2e

package e2e

import (
	"strings"
	"testing"
	"time"
)

// TestRotateThroughConventionalPaths: on a real Vault (Community), the admin
// key rotates through rotate-root/<env> and a static role through
// rotate-role/<name>; reads answer last_vault_rotation (RFC 3339) beside the
// deprecated last_rotated, static-creds answers it with the rotation period,
// the rotation fields are validated with the sdk's messages, the server log
// says each rotation was on user request, and the mount runs the version
// this tree's build reports.
func TestRotateThroughConventionalPaths(t *testing.T) {
	t.Parallel()
	e := startEmulator(t)
	v := startDevVault(t)
	v.configure("development", e.devKey, e.URL, "rate_limit_per_minute=100000")
	oldAdmin, _ := e.KeyByToken(e.devKey)

	var rotated struct {
		Data map[string]any `json:"data"`
	}
	v.runJSON(&rotated, "write", "-format=json", "-f", "heron/rotate-root/development")
	newID, _ := rotated.Data["admin_key_id"].(string)
	if newID == "" || newID == oldAdmin.ID {
		t.Fatalf("rotate-root answered %v: want a new admin_key_id", rotated.Data)
	}
	var cfg struct {
		Data map[string]any `json:"data"`
	}
	v.runJSON(&cfg, "read", "-format=json", "heron/config/development")
	last, _ := cfg.Data["last_vault_rotation"].(string)
	if _, err := time.Parse(time.RFC3339, last); err != nil {
		t.Fatalf("config read: last_vault_rotation %v is not RFC 3339: %v", cfg.Data["last_vault_rotation"], err)
	}
	if cfg.Data["last_rotated"] != last || cfg.Data["admin_key_id"] != newID {
		t.Fatalf("config read: %v, want last_rotated = last_vault_rotation and admin_key_id %s", cfg.Data, newID)
	}
	if _, present := cfg.Data["next_vault_rotation"]; !present || cfg.Data["next_vault_rotation"] != nil {
		t.Fatalf("config read: next_vault_rotation %v, want null (no schedule)", cfg.Data["next_vault_rotation"])
	}

	// The sdk's rule reaches the CLI as a 400.
	res := v.cliAs("", "write", "heron/config/development", "rotation_window=1h")
	if res.code == 0 || !strings.Contains(res.stderr, "cannot use rotation_window without rotation_schedule") {
		t.Fatalf("rotation_window alone: exit %d, %s", res.code, res.stderr)
	}
	// On Community the engine says it schedules.
	res = v.cliAs("", "write", "-format=json", "heron/config/development", "rotation_schedule=0 3 * * *", "rotation_window=1h")
	if res.code != 0 || !strings.Contains(res.stdout+res.stderr, "the engine, not Vault, schedules") {
		t.Fatalf("a schedule on Vault Community: exit %d, want the engine's scheduling warning, got %s%s", res.code, res.stdout, res.stderr)
	}

	v.run("write", "heron/static-roles/app", "environment=development", "rotation_period=2h")
	before, err := v.readStaticCreds(v.token, "app")
	if err != nil {
		t.Fatal(err)
	}
	var rr struct {
		Data map[string]any `json:"data"`
	}
	v.runJSON(&rr, "write", "-format=json", "-f", "heron/rotate-role/app")
	if rr.Data["key_id"] == before.Data.KeyID || rr.Data["previous_key_id"] != before.Data.KeyID {
		t.Fatalf("rotate-role answered %v: want a new key_id with previous_key_id %s", rr.Data, before.Data.KeyID)
	}
	var sc struct {
		Data map[string]any `json:"data"`
	}
	v.runJSON(&sc, "read", "-format=json", "heron/static-creds/app")
	scLast, _ := sc.Data["last_vault_rotation"].(string)
	if _, err := time.Parse(time.RFC3339, scLast); err != nil || sc.Data["key_id"] != rr.Data["key_id"] {
		t.Fatalf("static-creds: %v, want last_vault_rotation (RFC 3339) and the rotated key", sc.Data)
	}
	if p, _ := sc.Data["rotation_period"].(float64); p != 7200 {
		t.Fatalf("static-creds: rotation_period %v, want 7200", sc.Data["rotation_period"])
	}
	var role struct {
		Data map[string]any `json:"data"`
	}
	v.runJSON(&role, "read", "-format=json", "heron/static-roles/app")
	if role.Data["last_vault_rotation"] != scLast || role.Data["next_vault_rotation"] == nil {
		t.Fatalf("static role read: %v, want last_vault_rotation %s and a next_vault_rotation", role.Data, scLast)
	}

	// Each rotation's log line says who asked.
	if !v.logContains("on user request") {
		t.Fatalf("the server log has no rotation line saying \"on user request\"")
	}

	// The mount runs the version this tree's build reports (enableHeron
	// checked the catalog against it).
	var mounts map[string]struct {
		RunningVersion string `json:"running_plugin_version"`
	}
	v.runJSON(&mounts, "secrets", "list", "-format=json")
	if got := mounts["heron/"].RunningVersion; got != pluginVersion || !strings.HasPrefix(got, "v") {
		t.Fatalf("heron/ runs %q, want %q", got, pluginVersion)
	}
}
