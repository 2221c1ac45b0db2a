package heron

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/hashicorp/vault/sdk/logical"
	"github.com/stretchr/testify/require"

	"github.com/heron-vault/vault-plugin-secrets-heron/herontest"
)

func staticCreds(e *testEnv, name string) map[string]interface{} {
	e.t.Helper()
	return e.ok(logical.ReadOperation, "static-creds/"+name, nil).Data
}

func heronKey(e *testEnv, id string) herontest.KeyRecord {
	e.t.Helper()
	k, ok := e.srv.Key(id)
	require.True(e.t, ok, "key %s unknown to Heron", id)
	return k
}

func TestStaticRoles_Validation(t *testing.T) {
	e := getTestBackend(t)
	e.configure("development")
	cases := []struct {
		name string
		data map[string]interface{}
		want string
	}{
		{"no environment", map[string]interface{}{}, "environment is required"},
		{"unknown environment", map[string]interface{}{"environment": "staging"}, `environment "staging" has no config`},
		{"period below a minute", map[string]interface{}{"environment": "development", "rotation_period": "30s"}, "rotation_period must be at least 1m"},
		{"period and schedule", map[string]interface{}{"environment": "development", "rotation_period": "1h", "rotation_schedule": "0 3 * * *"}, "mutually exclusive"},
		{"bad schedule", map[string]interface{}{"environment": "development", "rotation_schedule": "every day"}, "failed to parse provided rotation_schedule"},
		{"max_overlap below overlap", map[string]interface{}{"environment": "development", "overlap": "2h", "max_overlap": "1h"}, "max_overlap (1h0m0s) must not be less than overlap (2h0m0s)"},
		{"malformed api_key", map[string]interface{}{"environment": "development", "api_key": "nope"}, "api_key is malformed"},
		{"api_key not in Heron", map[string]interface{}{"environment": "development", "api_key": herontest.NewKeyToken()}, "no key with prefix"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			e.badRequest(logical.CreateOperation, "static-roles/app", tc.data, tc.want)
		})
	}
	resp := e.ok(logical.ListOperation, "static-roles/", nil)
	require.Empty(t, resp.Data["keys"])
	e.badRequest(logical.ReadOperation, "static-creds/nope", nil, `unknown static role "nope"`)
}

// The whole life: create, read, rotate with an overlap in which both keys
// work, retire the previous key once unused, delete it after retention.
func TestStaticRoles_RotationWithOverlap(t *testing.T) {
	e := getTestBackend(t)
	e.configure("development")
	e.ok(logical.CreateOperation, "static-roles/app", map[string]interface{}{
		"environment": "development", "rotation_period": "720h",
		"overlap": "2h", "max_overlap": "6h", "unused_for": "1h", "retired_key_retention": "24h",
	})
	first := staticCreds(e, "app")
	require.True(t, e.authenticates(first["api_key"].(string)))
	require.Regexp(t, `^vault-static-app-\d+$`, first["key_name"])
	require.InDelta(t, (720 * time.Hour).Seconds(), float64(first["ttl"].(int64)), 5)
	require.NotContains(t, first, "previous_key_id")
	list := e.ok(logical.ListOperation, "keys/", nil)
	info := list.Data["key_info"].(map[string]interface{})[first["key_id"].(string)].(map[string]interface{})
	require.Equal(t, "static", info["kind"])
	require.Equal(t, "app", info["role"])

	read := e.ok(logical.ReadOperation, "static-roles/app", nil).Data
	require.Equal(t, first["key_id"], read["key_id"])
	require.NotContains(t, read, "api_key")
	require.NotContains(t, read, "token")

	// Rotate: the new key is current, the previous one still works.
	t0 := time.Now()
	e.atTime(t0)
	e.ok(logical.UpdateOperation, "static-roles/app/rotate", nil)
	second := staticCreds(e, "app")
	require.NotEqual(t, first["key_id"], second["key_id"])
	require.Equal(t, first["key_id"], second["previous_key_id"])
	require.Equal(t, t0.Add(6*time.Hour).UTC().Format(time.RFC3339), second["previous_deactivates_at"])
	require.True(t, e.authenticates(second["api_key"].(string)))
	require.True(t, e.authenticates(first["api_key"].(string)), "the previous key works during the overlap")

	// Within the overlap it stays, used or not.
	e.atTime(t0.Add(90 * time.Minute))
	e.ok(logical.UpdateOperation, "tidy", nil)
	require.True(t, heronKey(e, first["key_id"].(string)).IsActive)

	// After the overlap, unused for unused_for (last used at t0): deactivated.
	e.atTime(t0.Add(2*time.Hour + time.Minute))
	e.ok(logical.UpdateOperation, "tidy", nil)
	prev := heronKey(e, first["key_id"].(string))
	require.False(t, prev.IsActive)
	require.False(t, prev.Deleted)
	require.False(t, e.authenticates(first["api_key"].(string)))
	require.NotContains(t, staticCreds(e, "app"), "previous_key_id")
	require.True(t, e.authenticates(second["api_key"].(string)))

	// Deleted after retired_key_retention.
	e.atTime(t0.Add(27 * time.Hour))
	e.ok(logical.UpdateOperation, "tidy", nil)
	require.True(t, heronKey(e, first["key_id"].(string)).Deleted)

	// Deleting the role deactivates its key now and deletes it after retention.
	e.ok(logical.DeleteOperation, "static-roles/app", nil)
	cur := heronKey(e, second["key_id"].(string))
	require.False(t, cur.IsActive)
	require.False(t, cur.Deleted)
	e.atTime(t0.Add(60 * time.Hour))
	e.ok(logical.UpdateOperation, "tidy", nil)
	require.True(t, heronKey(e, second["key_id"].(string)).Deleted)
}

// Every state of the overlap: a previous key used recently stays past
// overlap; never used, it goes once overlap and unused_for have passed; at
// max_overlap it goes regardless.
func TestStaticRoles_OverlapStates(t *testing.T) {
	e := getTestBackend(t)
	e.configure("development")
	e.ok(logical.CreateOperation, "static-roles/busy", map[string]interface{}{
		"environment": "development", "overlap": "1h", "max_overlap": "4h", "unused_for": "3h",
	})
	old := staticCreds(e, "busy")
	t0 := time.Now()
	e.atTime(t0)
	e.ok(logical.UpdateOperation, "static-roles/busy/rotate", nil)
	// Used after the rotation (Heron's last_used: now, real time).
	require.True(t, e.authenticates(old["api_key"].(string)))

	e.atTime(t0.Add(2 * time.Hour)) // past overlap, used 2h ago < unused_for
	e.ok(logical.UpdateOperation, "tidy", nil)
	require.True(t, heronKey(e, old["key_id"].(string)).IsActive, "recently used: kept past overlap")

	e.atTime(t0.Add(4*time.Hour + time.Minute)) // max_overlap
	e.ok(logical.UpdateOperation, "tidy", nil)
	require.False(t, heronKey(e, old["key_id"].(string)).IsActive, "at max_overlap regardless")

	// Never used: last_used stays null; unused since it stopped being current.
	e.ok(logical.CreateOperation, "static-roles/quiet", map[string]interface{}{
		"environment": "development", "overlap": "1h", "max_overlap": "10h", "unused_for": "2h",
	})
	q := staticCreds(e, "quiet")
	t1 := t0.Add(5 * time.Hour)
	e.atTime(t1)
	e.ok(logical.UpdateOperation, "static-roles/quiet/rotate", nil)
	e.atTime(t1.Add(90 * time.Minute)) // past overlap, idle 1.5h < 2h
	e.ok(logical.UpdateOperation, "tidy", nil)
	require.True(t, heronKey(e, q["key_id"].(string)).IsActive)
	e.atTime(t1.Add(2*time.Hour + time.Minute))
	e.ok(logical.UpdateOperation, "tidy", nil)
	require.False(t, heronKey(e, q["key_id"].(string)).IsActive, "never used for unused_for after overlap")

	// A rotation during an overlap retires the previous key at once.
	mid := staticCreds(e, "quiet")
	e.ok(logical.UpdateOperation, "static-roles/quiet/rotate", nil)
	e.ok(logical.UpdateOperation, "static-roles/quiet/rotate", nil)
	require.False(t, heronKey(e, mid["key_id"].(string)).IsActive, "two generations old: retired at once")
	for _, n := range []string{"busy", "quiet"} {
		e.ok(logical.DeleteOperation, "static-roles/"+n, nil)
	}
}

// A failed rotation keeps the current key and is retried by the next pass;
// scheduled rotation runs on the periodic pass.
func TestStaticRoles_FailedAndScheduledRotation(t *testing.T) {
	e := getTestBackend(t)
	e.ok(logical.CreateOperation, "config/development", map[string]interface{}{
		"admin_api_key": e.adminKey["development"], "base_url": e.srv.URL, "max_retries": 0, "rate_limit_per_minute": maxRateLimitPerMinute,
	})
	e.ok(logical.CreateOperation, "static-roles/app", map[string]interface{}{"environment": "development", "rotation_period": "1h", "overlap": "0s"})
	cur := staticCreds(e, "app")

	e.srv.FailNext("POST", "/api/credentials/keys", 3, herontest.FaultStatus503)
	_, err := e.do(logical.UpdateOperation, "static-roles/app/rotate", nil)
	require.Error(t, err)
	require.Equal(t, cur["key_id"], staticCreds(e, "app")["key_id"], "the current key stays")
	require.True(t, e.authenticates(cur["api_key"].(string)))

	// The schedule: an hour later the periodic pass rotates.
	e.atTime(time.Now().Add(61 * time.Minute))
	req := &logical.Request{Operation: logical.RollbackOperation, Path: "", Storage: e.s}
	require.NoError(t, e.b.periodicFunc(context.Background(), req))
	next := staticCreds(e, "app")
	require.NotEqual(t, cur["key_id"], next["key_id"], "rotated on schedule")
	e.ok(logical.DeleteOperation, "static-roles/app", nil)
	e.atTime(time.Now().Add(100 * time.Hour))
	e.ok(logical.UpdateOperation, "tidy", nil)
}

// A static role's key deleted in Heron by hand: the cleanup pass drops it,
// and the next read of static-creds rotates.
func TestStaticRoles_KeyDeletedByHandIsReplaced(t *testing.T) {
	e := getTestBackend(t)
	e.configure("development")
	e.ok(logical.CreateOperation, "static-roles/app", map[string]interface{}{"environment": "development"})
	cur := staticCreds(e, "app")
	req, err := newHeronRequest(e, "DELETE", "/api/credentials/keys/"+cur["key_id"].(string))
	require.NoError(t, err)
	res, err := httpClient.Do(req)
	require.NoError(t, err)
	res.Body.Close()

	e.ok(logical.UpdateOperation, "tidy", nil)
	next := staticCreds(e, "app")
	require.NotEqual(t, cur["key_id"], next["key_id"])
	require.True(t, e.authenticates(next["api_key"].(string)))
	e.ok(logical.DeleteOperation, "static-roles/app", nil)
}

// Adoption: an existing key, found by its prefix and checked to
// authenticate, becomes the role's; rotated at once unless
// skip_import_rotation; the engine owns it from then on.
func TestStaticRoles_Adoption(t *testing.T) {
	e := getTestBackend(t)
	e.configure("development")
	tok := e.srv.AddAdminKey("development") // an application's key of the same Heron user
	adopted, _ := e.srv.KeyByToken(tok)

	e.ok(logical.CreateOperation, "static-roles/kept", map[string]interface{}{"environment": "development", "api_key": tok, "skip_import_rotation": true})
	c := staticCreds(e, "kept")
	require.Equal(t, tok, c["api_key"])
	require.Equal(t, adopted.ID, c["key_id"])

	e.badRequest(logical.CreateOperation, "static-roles/twice", map[string]interface{}{"environment": "development", "api_key": tok}, "already manages")

	tok2 := e.srv.AddAdminKey("development")
	adopted2, _ := e.srv.KeyByToken(tok2)
	e.ok(logical.CreateOperation, "static-roles/rotated", map[string]interface{}{"environment": "development", "api_key": tok2, "overlap": "1h"})
	c2 := staticCreds(e, "rotated")
	require.NotEqual(t, adopted2.ID, c2["key_id"], "rotated at once")
	require.Equal(t, adopted2.ID, c2["previous_key_id"], "the adopted key works for the overlap")

	// Deleting the roles deactivates every key they hold, adopted ones too.
	e.ok(logical.DeleteOperation, "static-roles/kept", nil)
	e.ok(logical.DeleteOperation, "static-roles/rotated", nil)
	for _, id := range []string{adopted.ID, adopted2.ID, c2["key_id"].(string)} {
		require.False(t, heronKey(e, id).IsActive, "key %s", id)
	}
	e.atTime(time.Now().Add(100 * time.Hour))
	e.ok(logical.UpdateOperation, "tidy", nil)
	for _, id := range []string{adopted.ID, adopted2.ID, c2["key_id"].(string)} {
		require.True(t, heronKey(e, id).Deleted, "key %s", id)
	}
}

// A config cannot go while a static role names it.
func TestStaticRoles_ConfigDeleteRefused(t *testing.T) {
	e := getTestBackend(t)
	e.configure("development")
	e.ok(logical.CreateOperation, "static-roles/app", map[string]interface{}{"environment": "development"})
	e.badRequest(logical.DeleteOperation, "config/development", nil, "used by static roles app")
	e.badRequest(logical.UpdateOperation, "static-roles/app", map[string]interface{}{"environment": "production"}, "cannot change")
	e.ok(logical.DeleteOperation, "static-roles/app", nil)
	e.ok(logical.DeleteOperation, "config/development", nil)
}

// An overlap longer than the time between rotations is accepted with a
// warning that says what the overlap will really be (the next rotation
// deactivates the previous key).
func TestStaticRole_OverlapLongerThanPeriodWarns(t *testing.T) {
	e := getTestBackend(t)
	e.configure("development")
	resp := e.ok(logical.CreateOperation, "static-roles/app", map[string]interface{}{"environment": "development", "rotation_period": "1h"})
	require.NotNil(t, resp)
	require.Contains(t, strings.Join(resp.Warnings, " "), "overlap (24h0m0s) is longer than the time between rotations (1h0m0s)")
	resp = e.ok(logical.UpdateOperation, "static-roles/app", map[string]interface{}{"rotation_schedule": "0 * * * *", "overlap": "2h", "max_overlap": "2h"})
	require.NotNil(t, resp)
	require.Contains(t, strings.Join(resp.Warnings, " "), "overlap (2h0m0s) is longer than the time between rotations (1h0m0s)")
	resp = e.ok(logical.UpdateOperation, "static-roles/app", map[string]interface{}{"overlap": "30m"})
	if resp != nil {
		require.Empty(t, resp.Warnings)
	}
	e.ok(logical.DeleteOperation, "static-roles/app", nil)
}
