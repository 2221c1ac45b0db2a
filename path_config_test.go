package heron

import (
	"context"
	"fmt"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/hashicorp/vault/sdk/framework"
	"github.com/hashicorp/vault/sdk/logical"
	"github.com/hashicorp/vault/sdk/rotation"
	"github.com/stretchr/testify/require"

	"github.com/heron-vault/vault-plugin-secrets-heron/herontest"
)

func TestConfig_Validation(t *testing.T) {
	e := getTestBackend(t)
	good := func() map[string]interface{} {
		return map[string]interface{}{"admin_api_key": e.adminKey["development"], "base_url": e.srv.URL}
	}
	with := func(k string, v interface{}) map[string]interface{} {
		d := good()
		if v == nil {
			delete(d, k)
		} else {
			d[k] = v
		}
		return d
	}
	cases := []struct {
		name string
		env  string
		data map[string]interface{}
		want string
	}{
		{"missing admin key", "development", with("admin_api_key", nil), "admin_api_key is required"},
		{"short admin key", "development", with("admin_api_key", "key_abc"), "admin_api_key is malformed"},
		{"uppercase admin key", "development", with("admin_api_key", "key_"+strings.Repeat("A", 48)), "admin_api_key is malformed"},
		{"admin key without prefix", "development", with("admin_api_key", strings.Repeat("a", 52)), "admin_api_key is malformed"},
		{"uppercase environment", "Dev", good(), "environment \"Dev\" is invalid"},
		{"environment too long", strings.Repeat("a", 65), good(), "environment"},
		{"environment with underscore", "dev_1", good(), "[a-z0-9-]{1,64}"},
		{"base_url scheme", "development", with("base_url", "ftp://example.com"), "base_url must use http or https"},
		{"base_url no host", "development", with("base_url", "http://"), "base_url must include a host"},
		{"base_url garbage", "development", with("base_url", "::nope"), "base_url"},
		{"base_url query", "development", with("base_url", "http://x/?a=b"), "base_url must not carry"},
		{"request_timeout zero", "development", with("request_timeout", "0s"), "request_timeout must be between"},
		{"request_timeout huge", "development", with("request_timeout", "1h"), "request_timeout must be between"},
		{"request_timeout text", "development", with("request_timeout", "soon"), "request_timeout"},
		{"max_retries negative", "development", with("max_retries", -1), "max_retries must be between 0 and 20"},
		{"max_retries too many", "development", with("max_retries", 21), "max_retries must be between 0 and 20"},
		{"rate limit zero", "development", with("rate_limit_per_minute", 0), "rate_limit_per_minute must be between 1 and 100000"},
		{"rate limit huge", "development", with("rate_limit_per_minute", 100001), "rate_limit_per_minute must be between 1 and 100000"},
		{"old_key_retention negative", "development", with("old_key_retention", -5), "old_key_retention"},
		{"rotation_period too short", "development", with("rotation_period", "10s"), "rotation_period must be 0 (off) or at least"},
		{"rotation_period negative", "development", with("rotation_period", -60), "rotation_period"},
		{"rotation_schedule not cron", "development", with("rotation_schedule", "every tuesday"), "failed to parse provided rotation_schedule"},
		{"rotation_schedule and period", "development", func() map[string]interface{} {
			d := with("rotation_schedule", "0 3 * * *")
			d["rotation_period"] = "1h"
			return d
		}(), "mutually exclusive fields rotation_schedule and rotation_period"},
		{"rotation_window without schedule", "development", with("rotation_window", "1h"), "cannot use rotation_window without rotation_schedule"},
		{"verify fails: key unknown to Heron", "development", with("admin_api_key", herontest.NewKeyToken()), "verify: Heron refused the admin key"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			e.badRequest(logical.CreateOperation, "config/"+tc.env, tc.data, tc.want)
		})
	}
	resp, err := e.do(logical.ListOperation, "config/", nil)
	require.NoError(t, err)
	require.Empty(t, resp.Data["keys"], "no invalid config may have been stored")
}

func TestConfig_CRUD(t *testing.T) {
	e := getTestBackend(t)
	e.ok(logical.CreateOperation, "config/development", map[string]interface{}{
		"admin_api_key":         e.adminKey["development"],
		"base_url":              e.srv.URL + "/",
		"request_timeout":       "90s",
		"rate_limit_per_minute": 120,
	})

	resp := e.ok(logical.ReadOperation, "config/development", nil)
	adminRec, ok := e.srv.KeyByToken(e.adminKey["development"])
	require.True(t, ok)
	require.Equal(t, map[string]interface{}{
		"environment":                "development",
		"base_url":                   e.srv.URL,
		"request_timeout":            int64(90),
		"max_retries":                defaultMaxRetries,
		"rate_limit_per_minute":      120,
		"old_key_retention":          int64(86400),
		"next_rotation":              "",
		"history_retention":          int64(720 * 3600),
		"retired_keys":               []map[string]interface{}{},
		"rotation_period":            int64(0),
		"rotation_schedule":          "",
		"rotation_window":            int64(0),
		"disable_automated_rotation": false,
		"rotation_managed_by_vault":  false,
		"admin_key_prefix":           e.adminKey["development"][:8],
		"admin_key_id":               adminRec.ID,
		"last_rotated":               "",
		"last_vault_rotation":        nil,
		"next_vault_rotation":        nil,
	}, resp.Data)

	// Update changes only what is sent.
	e.ok(logical.UpdateOperation, "config/development", map[string]interface{}{"max_retries": 7})
	resp = e.ok(logical.ReadOperation, "config/development", nil)
	require.Equal(t, 7, resp.Data["max_retries"])
	require.Equal(t, 120, resp.Data["rate_limit_per_minute"])
	require.Equal(t, int64(90), resp.Data["request_timeout"])

	// A bad value on update is refused and the stored config is untouched.
	e.badRequest(logical.UpdateOperation, "config/development", map[string]interface{}{"admin_api_key": "nope"}, "admin_api_key is malformed")
	resp = e.ok(logical.ReadOperation, "config/development", nil)
	require.Equal(t, e.adminKey["development"][:8], resp.Data["admin_key_prefix"])

	// verify=false stores a key Heron would refuse, without calling Heron.
	before := e.srv.CountRequests("", "", "")
	other := herontest.NewKeyToken()
	e.ok(logical.CreateOperation, "config/staging", map[string]interface{}{"admin_api_key": other, "base_url": e.srv.URL, "verify": false})
	require.Equal(t, before, e.srv.CountRequests("", "", ""))
	resp = e.ok(logical.ReadOperation, "config/staging", nil)
	require.Equal(t, "", resp.Data["admin_key_id"])

	resp = e.ok(logical.ListOperation, "config/", nil)
	require.Equal(t, []string{"development", "staging"}, resp.Data["keys"])

	e.ok(logical.DeleteOperation, "config/staging", nil)
	resp, err := e.do(logical.ReadOperation, "config/staging", nil)
	require.NoError(t, err)
	require.Nil(t, resp)
}

func TestConfig_DeleteRefusedWhileInUse(t *testing.T) {
	e := getTestBackend(t)
	e.configure("development")
	e.role("b-role", map[string]interface{}{})
	e.role("a-role", map[string]interface{}{})
	e.badRequest(logical.DeleteOperation, "config/development", nil, "used by roles a-role, b-role")

	lease := e.issue("a-role")
	e.ok(logical.DeleteOperation, "roles/a-role", nil)
	e.ok(logical.DeleteOperation, "roles/b-role", nil)
	e.badRequest(logical.DeleteOperation, "config/development", nil, "1 active keys")
	require.NoError(t, e.revoke(lease))

	// A key deactivated at expiry and a rotated-out admin key wait out their
	// retention; without the config nothing could delete them later, so the
	// delete does it now.
	e.role("c", map[string]interface{}{})
	expiring := e.issue("c")
	e.ok(logical.DeleteOperation, "roles/c", nil)
	e.atTime(time.Now().Add(2 * time.Hour))
	require.NoError(t, e.revoke(expiring))
	e.atTime(time.Now())
	oldAdmin, _ := e.srv.KeyByToken(e.adminKey["development"])
	rotated := e.ok(logical.UpdateOperation, "config/development/rotate", nil)

	e.ok(logical.DeleteOperation, "config/development", nil)
	k, _ := e.srv.Key(expiring.Data["key_id"].(string))
	require.True(t, k.Deleted, "retained key deleted with its config")
	k, _ = e.srv.Key(oldAdmin.ID)
	require.True(t, k.Deleted, "old admin key deleted with its config")
	k, _ = e.srv.Key(rotated.Data["admin_key_id"].(string))
	require.True(t, k.Deleted, "the admin key the engine created, whose token nobody else holds, is deleted with its config")
	require.Empty(t, e.ok(logical.ListOperation, "keys/", nil).Data["keys"])
}

func TestConfig_AdminKeyNeverReturnedOrLogged(t *testing.T) {
	e := getTestBackend(t)
	e.configure("development")
	resp := e.ok(logical.ReadOperation, "config/development", nil)
	for k, v := range resp.Data {
		require.NotContains(t, fmt.Sprint(v), e.adminKey["development"], "field %s", k)
	}
}

// `vault read heron/config` says where configs live instead of a bare 405.
func TestConfig_ReadOfTheListPathExplains(t *testing.T) {
	e := getTestBackend(t)
	e.badRequest(logical.ReadOperation, "config", nil, "read config/<environment>")
}

// Errors that say what to do (issue 14), one row per message: each names the
// cause and the next step.
func TestErrors_SayWhatToDo(t *testing.T) {
	e := getTestBackend(t)
	e.configure("development")
	e.role("r", map[string]interface{}{})
	lease := e.issue("r")

	// A schedule on a server without a rotation manager: the engine runs it.
	resp := e.ok(logical.UpdateOperation, "config/development", map[string]interface{}{"rotation_schedule": "0 3 * * *", "rotation_window": "1h"})
	require.NotNil(t, resp)
	require.Contains(t, strings.Join(resp.Warnings, "\n"), "the engine, not Vault, schedules this rotation")

	// A revoked admin key: revocation names the config and the fix (a dead
	// key cannot rotate itself).
	setActiveDirect(t, e, e.ok(logical.ReadOperation, "config/development", nil).Data["admin_key_id"].(string), false)
	err := e.revoke(lease)
	require.ErrorContains(t, err, `Heron rejected the admin key of config "development" (401): write a working admin_api_key to config/development`)
	e.badRequest(logical.UpdateOperation, "config/development/rotate", nil, "cannot create its successor: write a working admin_api_key to config/development")
	_, err = e.do(logical.ReadOperation, "creds/r", nil)
	require.ErrorContains(t, err, "write a working admin_api_key to config/development")

	// Back to a working key of the same user: the revocation goes through.
	fresh := e.srv.AddAdminKey("development")
	e.adminKey["fresh"] = fresh
	e.ok(logical.UpdateOperation, "config/development", map[string]interface{}{"admin_api_key": fresh})
	require.NoError(t, e.revoke(lease))
}

// A write of settings only (here the budget, raised in an incident) sends
// nothing to Heron, so it never waits for what does: revocations and the
// cleanup pass hold the config's read lock while they wait for budget.
func TestConfigWrite_SettingsDoNotWaitForUpstreamWork(t *testing.T) {
	e := getTestBackend(t)
	e.configure("development")
	// A revocation (or the pass) holding the config's read side, waiting
	// for budget that does not come.
	reader := e.b.configLock("development")
	reader.RLock()
	released := false
	defer func() {
		if !released {
			reader.RUnlock()
		}
	}()
	done := make(chan error, 1)
	go func() {
		_, err := e.do(logical.UpdateOperation, "config/development", map[string]interface{}{"rate_limit_per_minute": 400})
		done <- err
	}()
	var err error
	require.Eventually(t, func() bool {
		select {
		case err = <-done:
			return true
		default:
			return false
		}
	}, 30*time.Second, 10*time.Millisecond, "the settings write waited for the config's read lock")
	require.NoError(t, err)
	require.EqualValues(t, 400, e.ok(logical.ReadOperation, "config/development", nil).Data["rate_limit_per_minute"])
	reader.RUnlock()
	released = true

	// A write that sets a key or base_url still verifies under the lock.
	resp := e.ok(logical.UpdateOperation, "config/development", map[string]interface{}{"admin_api_key": e.adminKey["development"], "old_key_retention": "2h"})
	require.Nil(t, resp)
	read := e.ok(logical.ReadOperation, "config/development", nil).Data
	require.EqualValues(t, 400, read["rate_limit_per_minute"])
	require.EqualValues(t, 7200, read["old_key_retention"])
}

// A write that verifies a key keeps a setting another write stored while
// it waited on Heron, unless it sets that setting itself.
func TestConfigWrite_KeyWriteKeepsSettingsStoredMeanwhile(t *testing.T) {
	e := getTestBackend(t)
	e.configure("development")
	cfg, err := getConfig(context.Background(), e.s, "development")
	require.NoError(t, err)
	cfg.RateLimitPerMinute = 123
	final := *cfg
	final.RateLimitPerMinute = 999
	final.OldKeyRetention = time.Hour
	stored := *cfg
	stored.RateLimitPerMinute = 456
	stored.MaxRetries = 7
	var schema map[string]*framework.FieldSchema
	for _, p := range pathConfig(e.b) {
		if _, ok := p.Fields["old_key_retention"]; ok {
			schema = p.Fields
		}
	}
	d := &framework.FieldData{Raw: map[string]interface{}{"old_key_retention": "1h"}, Schema: schema}
	mergeConfigSettings(d, &final, &stored)
	require.Equal(t, 456, final.RateLimitPerMinute, "not set by this write: the stored value stands")
	require.Equal(t, 7, final.MaxRetries)
	require.Equal(t, time.Hour, final.OldKeyRetention, "set by this write: its value")
}

// Plain http carries the admin key in the clear: only a loopback host (the
// emulator) may be reached that way; a real Heron is https.
func TestConfig_PlainHTTPOnlyForLoopbackHosts(t *testing.T) {
	e := getTestBackend(t)
	for _, u := range []string{"http://example.com", "http://10.0.0.5:8080", "http://app.herondata.io", "http://[2001:db8::1]:80", "HTTP://example.com"} {
		e.badRequest(logical.CreateOperation, "config/development", map[string]interface{}{
			"admin_api_key": e.adminKey["development"], "base_url": u, "verify": false,
		}, "plain http is only for a loopback host")
	}
	require.Zero(t, e.srv.CountRequests("", "", ""), "the admin key went nowhere")
	cfg, err := getConfig(context.Background(), e.s, "development")
	require.NoError(t, err)
	require.Nil(t, cfg)

	for _, u := range []string{"http://127.0.0.1:1", "http://127.8.9.10", "http://localhost:8787", "http://[::1]:8787", "https://example.com"} {
		require.Empty(t, baseURLError(u), u)
	}
	// The emulator: http on 127.0.0.1.
	require.True(t, strings.HasPrefix(e.srv.URL, "http://127.0.0.1:"))
	e.configure("development")
	e.badRequest(logical.UpdateOperation, "config/development", map[string]interface{}{
		"admin_api_key": e.adminKey["development"], "base_url": "http://heron.example.com",
	}, "plain http is only for a loopback host")
}

// Update rights on a config must not be enough to collect its admin key: a
// write that points base_url at another scheme or host must carry
// admin_api_key too, so the stored key is never sent to the new host.
func TestConfig_NewBaseURLHostNeedsTheAdminKey(t *testing.T) {
	e := getTestBackend(t)
	e.configure("development")
	stranger := herontest.NewServer(herontest.Options{
		Environments:       map[string][]string{"development": {herontest.NewKeyToken()}},
		RateLimitPerMinute: -1,
	})
	t.Cleanup(stranger.Close)

	for _, data := range []map[string]interface{}{
		{"base_url": stranger.URL},
		{"base_url": stranger.URL, "verify": false, "force": true},
		{"base_url": strings.Replace(e.srv.URL, "127.0.0.1", "localhost", 1)},
	} {
		e.badRequest(logical.UpdateOperation, "config/development", data, "must carry admin_api_key too")
	}
	require.Zero(t, stranger.CountRequests("", "", ""), "the stored admin key never reached the new host")
	cfg, err := getConfig(context.Background(), e.s, "development")
	require.NoError(t, err)
	require.Equal(t, e.srv.URL, cfg.BaseURL)

	// The same host with a trailing slash or a path is the same host.
	e.ok(logical.UpdateOperation, "config/development", map[string]interface{}{"base_url": e.srv.URL + "/"})
	// With the key, the move is the caller's own.
	e.ok(logical.UpdateOperation, "config/development", map[string]interface{}{
		"base_url": strings.Replace(e.srv.URL, "127.0.0.1", "localhost", 1), "admin_api_key": e.adminKey["development"],
	})
	// Writing other fields leaves base_url alone and needs no key.
	e.ok(logical.UpdateOperation, "config/development", map[string]interface{}{"max_retries": 2})
}

// retiredKey is config/<env>'s retired_keys entry of id, or nil.
func retiredKey(e *testEnv, env, id string) map[string]interface{} {
	e.t.Helper()
	read := e.ok(logical.ReadOperation, "config/"+env, nil).Data
	for _, rk := range read["retired_keys"].([]map[string]interface{}) {
		if rk["key_id"] == id {
			return rk
		}
	}
	return nil
}

// Invariants 1 and 4: after a forced write to another Heron user, a
// rotated-out admin key made by the engine, which the new key cannot see,
// is marked unreachable; a 404 never settles it (it stays in retired_keys
// while live in Heron), and config delete refuses while it is.
func TestConfig_RetiredAdminKeyTheNewKeyCannotSeeIsUnreachable(t *testing.T) {
	e := getTestBackend(t)
	e.ok(logical.CreateOperation, "config/development", map[string]interface{}{
		"admin_api_key": e.adminKey["development"], "base_url": e.srv.URL, "max_retries": 0,
		"rate_limit_per_minute": maxRateLimitPerMinute, "old_key_retention": "1h",
	})
	engineKey := e.ok(logical.UpdateOperation, "config/development/rotate", nil).Data["admin_key_id"].(string)

	foreign := e.srv.AddUser("development")
	e.adminKey["foreign-user"] = foreign
	e.ok(logical.UpdateOperation, "config/development", map[string]interface{}{"admin_api_key": foreign, "force": true})
	rk := retiredKey(e, "development", engineKey)
	require.NotNil(t, rk, "the engine-made admin key is rotated out")
	require.Equal(t, true, rk["unreachable"])

	e.atTime(time.Now().Add(100 * time.Hour)) // far past old_key_retention
	_, _ = e.do(logical.UpdateOperation, "tidy", nil)
	_, _ = e.do(logical.UpdateOperation, "tidy", nil)
	k := heronKey(e, engineKey)
	require.True(t, k.IsActive && !k.Deleted, "precondition: the new admin key cannot touch it")
	rk = retiredKey(e, "development", engineKey)
	require.NotNil(t, rk, "a 404 from a key that cannot see it never drops it")
	require.Equal(t, true, rk["unreachable"])
	require.NotEqual(t, keyStateDeactivated, rk["state"], "a 404 never counts as deactivated")

	e.badRequest(logical.DeleteOperation, "config/development", nil, "unreachable")
}

// Invariant 4: the same-user proof counts key records only. With U's
// rotated-out admin keys visible to a new key of U and a lease key of user
// V not, a write of that key without force is refused with the count.
func TestConfig_SameUserProofCountsOnlyKeyRecords(t *testing.T) {
	e := getTestBackend(t)
	e.configure("development")
	e.ok(logical.UpdateOperation, "config/development/rotate", nil) // U's keys: retired and current admin keys
	foreign := e.srv.AddUser("development")
	e.adminKey["foreign-user"] = foreign
	e.ok(logical.UpdateOperation, "config/development", map[string]interface{}{"admin_api_key": foreign, "force": true})
	e.role("r", map[string]interface{}{})
	lease := e.issue("r") // a key of V
	leaseKey := lease.Data["key_id"].(string)
	fRec, ok := e.srv.KeyByToken(foreign)
	require.True(t, ok)
	require.Equal(t, fRec.User, heronKey(e, leaseKey).User, "precondition: the lease's key is V's")

	back := e.srv.AddAdminKey("development") // U again
	e.adminKey["back"] = back
	e.badRequest(logical.UpdateOperation, "config/development", map[string]interface{}{"admin_api_key": back}, "cannot see 1 of the")
	rec, err := getTrackedKey(context.Background(), e.s, leaseKey)
	require.NoError(t, err)
	require.NotNil(t, rec)
	require.NoError(t, e.revoke(lease))
	require.True(t, heronKey(e, leaseKey).Deleted, "V's admin key, still the config's, deletes it")
}

// Invariant 1 (and the config's "a working stored key"): a key the engine
// hands out and retires (a static role's key, a lease's key) is refused as
// admin_api_key with a 400.
func TestConfig_ManagedKeyIsRefusedAsAdminKey(t *testing.T) {
	e := getTestBackend(t)
	e.configure("development")
	e.ok(logical.CreateOperation, "static-roles/app", map[string]interface{}{"environment": "development"})
	static := staticCreds(e, "app")
	e.badRequest(logical.UpdateOperation, "config/development", map[string]interface{}{"admin_api_key": static["api_key"]}, "static role \"app\"")

	e.role("r", map[string]interface{}{})
	lease := e.issue("r")
	e.badRequest(logical.UpdateOperation, "config/development", map[string]interface{}{"admin_api_key": lease.Data["api_key"]}, lease.Data["key_id"].(string))
	require.True(t, e.authenticates(e.adminKey["development"]))
	read := e.ok(logical.ReadOperation, "config/development", nil).Data
	require.Equal(t, e.adminKey["development"][:8], read["admin_key_prefix"], "the admin key is unchanged")
	require.NoError(t, e.revoke(lease))
}

// Spec "config/<environment>" (delete) and invariant 8 (schedules fire
// once, at their time): deleting a config removes its job from Vault's
// rotation manager, which would otherwise call back for a config that is
// gone.
func TestConfigDelete_DeregistersTheRotationJob(t *testing.T) {
	e := getTestBackend(t)
	view := &rotationManagerView{
		StaticSystemView: logical.StaticSystemView{DefaultLeaseTTLVal: testDefaultLeaseTTL, MaxLeaseTTLVal: testMaxLeaseTTL},
		jobs:             map[string]*rotation.RotationJobConfigureRequest{},
	}
	e.b = newMount(t, view, e.s)
	e.configure("development")
	e.ok(logical.UpdateOperation, "config/development", map[string]interface{}{"rotation_schedule": "0 3 * * SAT"})
	require.Contains(t, view.jobs, "config/development")
	e.ok(logical.DeleteOperation, "config/development", nil)
	require.Empty(t, view.jobs, "deleting the config deregisters its rotation job")
}

// Spec invariant 1 (config deleted meanwhile): a config delete settles the
// write-ahead records of its environment first (rolling back what it can),
// and is refused while a key may still appear; a record whose config is gone
// anyway is kept until a config can settle it.
func TestConfigDelete_SettlesPendingCreationsFirst(t *testing.T) {
	e := getTestBackend(t)
	e.configure("development")
	name := "vault-r-crashed-1"
	_, err := framework.PutWAL(context.Background(), e.s, walKindKey, &walKeyEntry{Environment: "development", Role: "r", KeyName: name, Since: time.Now()})
	require.NoError(t, err)
	orphan := createDirect(t, e, name)

	e.badRequest(logical.DeleteOperation, "config/development", nil, "unknown outcome")
	k, _ := e.srv.Key(orphan)
	require.True(t, k.Deleted, "the delete already rolled back what it could")
	require.Equal(t, 1, walCount(t, e.b, e.s), "a late key may still appear: the record and the config stay")

	closeWindow(e)
	e.ok(logical.DeleteOperation, "config/development", nil)
	require.Zero(t, walCount(t, e.b, e.s))

	// A record whose config is gone anyway is kept, not dropped.
	_, err = framework.PutWAL(context.Background(), e.s, walKindKey, &walKeyEntry{Environment: "development", KeyName: "x", Since: time.Now()})
	require.NoError(t, err)
	rollback(t, e)
	require.Equal(t, 1, walCount(t, e.b, e.s), "without an admin key the record cannot be settled, so it stays")
	e.configure("development")
	rollback(t, e)
	require.Zero(t, walCount(t, e.b, e.s))
}

// Spec invariant 1 (storage errors): a config delete deletes the admin key
// the engine created before the config entry; when the entry's delete then
// fails, the config is marked deleting: nothing may use or rewrite it until a
// retry of the delete finishes.
func TestConfigDelete_HalfDoneIsFinishedByARetry(t *testing.T) {
	e := getTestBackend(t)
	e.configure("development")
	rotated := e.ok(logical.UpdateOperation, "config/development/rotate", nil)
	engineKey := rotated.Data["admin_key_id"].(string)
	fs := &deleteFailStorage{Storage: e.s, key: configStoragePrefix + "development", fail: true}
	e.s = fs

	_, err := e.do(logical.DeleteOperation, "config/development", nil)
	require.ErrorContains(t, err, "retry the delete")
	k, _ := e.srv.Key(engineKey)
	require.True(t, k.Deleted, "the engine-created admin key is gone already")

	e.badRequest(logical.UpdateOperation, "config/development", map[string]interface{}{"max_retries": 1}, "is being deleted")
	e.badRequest(logical.CreateOperation, "roles/r", map[string]interface{}{"environment": "development"}, "is being deleted")
	_, err = e.b.creatingClient(context.Background(), e.s, "development")
	require.ErrorContains(t, err, "is being deleted", "nothing creates keys with a config being deleted")

	fs.fail = false
	e.ok(logical.DeleteOperation, "config/development", nil)
	resp, err := e.do(logical.ReadOperation, "config/development", nil)
	require.NoError(t, err)
	require.Nil(t, resp)
}

// Spec invariants 1 and 4: a key whose revocation waits for an admin key that
// can see it (unreachable, pending delete) is never forgotten by a config
// delete: the delete is refused (400 saying why) and the record stays until
// an admin key that sees the key lets tidy delete it.
func TestConfigDelete_RefusedWhileAKeyIsUnreachable(t *testing.T) {
	e := getTestBackend(t)
	e.configure("development")
	e.role("r", map[string]interface{}{})
	lease := e.issue("r")
	id := lease.Data["key_id"].(string)
	foreign := e.srv.AddUser("development")
	e.adminKey["foreign-user"] = foreign
	e.ok(logical.UpdateOperation, "config/development", map[string]interface{}{"admin_api_key": foreign, "force": true})
	require.Error(t, e.revoke(lease))
	require.Equal(t, pendingDelete, trackedRecord(t, e.s, id).Pending)
	e.ok(logical.DeleteOperation, "roles/r", nil)

	e.badRequest(logical.DeleteOperation, "config/development", nil, "unreachable with the current admin key")
	k, _ := e.srv.Key(id)
	require.True(t, k.IsActive && !k.Deleted, "the key is still live in Heron")
	require.NotNil(t, trackedRecord(t, e.s, id), "a key live in Heron stays tracked while the admin key cannot see it")
	cfg, err := getConfig(context.Background(), e.s, "development")
	require.NoError(t, err)
	require.NotNil(t, cfg, "the refused delete keeps the config")

	// An admin key that sees the key again: tidy finishes the deletion.
	e.ok(logical.UpdateOperation, "config/development", map[string]interface{}{"admin_api_key": e.adminKey["development"]})
	tidy := e.ok(logical.UpdateOperation, "tidy", nil)
	require.Equal(t, 1, tidy.Data["pending_revocations"])
	k, _ = e.srv.Key(id)
	require.True(t, k.Deleted, "tidy deleted the key")
	require.Nil(t, trackedRecord(t, e.s, id))
}

// Spec invariants 1 and 4: while a creation's outcome is unknown the admin
// key cannot change, force or not: only the current key is sure to see what
// it made, so the rollback deletes a late key with the key that sees it.
func TestConfigWrite_AdminKeyChangeWaitsForUnknownCreations(t *testing.T) {
	e := getTestBackend(t)
	e.configure("development")
	e.role("r", map[string]interface{}{})
	e.srv.FailNextLate("POST", "/api/credentials/keys", 1, http.StatusGatewayTimeout, time.Hour)
	lease := e.issue("r")
	require.Equal(t, 1, walCount(t, e.b, e.s))
	require.NoError(t, e.revoke(lease))

	foreign := e.srv.AddUser("development")
	e.adminKey["foreign-user"] = foreign
	// While a creation's outcome is unknown the admin key cannot change,
	// force or not: only the current key is sure to see what it made.
	e.badRequest(logical.UpdateOperation, "config/development", map[string]interface{}{"admin_api_key": foreign, "force": true}, "unknown outcome")
	require.Equal(t, 1, e.srv.FlushLate(), "Heron finishes the 504'd POST")

	closeWindow(e)
	e.ok(logical.UpdateOperation, "tidy", nil)
	require.Zero(t, walCount(t, e.b, e.s))
	require.Empty(t, liveIssued(e), "the late key was deleted with the admin key that sees it")
	e.ok(logical.UpdateOperation, "config/development", map[string]interface{}{"admin_api_key": foreign, "force": true})
}

// Spec invariant 5 and "Upstream calls": a config write blocked by unsettled
// creations while Heron refuses the current admin key (a snapshot restored
// from before a rotation) says what helps, since waiting does not.
func TestConfigWrite_DeadAdminKeyBlockedByCreationsSaysWhatHelps(t *testing.T) {
	e := getTestBackend(t)
	e.configure("development")
	_, err := framework.PutWAL(context.Background(), e.s, walKindKey, &walKeyEntry{Environment: "development", KeyName: "x", Since: time.Now()})
	require.NoError(t, err)
	require.NoError(t, handClient(t, e, e.adminKey["development"]).DeactivateKey(context.Background(), heronKeyByToken(t, e, e.adminKey["development"]).ID))
	hand := e.srv.AddAdminKey("development")
	e.adminKey["hand"] = hand
	e.badRequest(logical.UpdateOperation, "config/development", map[string]interface{}{"admin_api_key": hand, "verify": false, "force": false},
		"Heron refuses the current admin key (401), so they cannot be: reactivate that key in Heron's dashboard and write again, or write the new key with force=true")
	e.ok(logical.UpdateOperation, "config/development", map[string]interface{}{"admin_api_key": hand, "force": true})
}

// Spec "config/<environment>" (delete) and "static-roles" (delete): a config
// delete blocked by a static key no role holds says what helps (tidy), not
// "revoke the leases".
func TestConfigDelete_OrphanStaticKeyBlockNamesTidy(t *testing.T) {
	e := getTestBackend(t)
	e.configure("development")
	e.ok(logical.CreateOperation, "static-roles/app", map[string]interface{}{"environment": "development"})
	e.srv.FailNext("PUT", "/api/credentials/keys/", 20, herontest.FaultStatus503)
	e.ok(logical.DeleteOperation, "static-roles/app", nil)
	e.srv.ResetFaults()
	e.badRequest(logical.DeleteOperation, "config/development", nil, "vault write -f heron/tidy")
	e.ok(logical.UpdateOperation, "tidy", nil)
	tidyAfterRetention(e)
}

// A settings write that lowers rate_limit_per_minute (in an incident) takes
// effect for the requests already waiting for a slot, not only for the
// clients built after it: the limiter they wait on runs at the new budget
// as soon as the write returns.
func TestConfigSettingsWrite_NewBudgetAppliesToRequestsAlreadyWaiting(t *testing.T) {
	e := getTestBackend(t)
	e.configure("development")
	e.role("app", map[string]interface{}{"ttl": "1h"})
	lease := e.issue("app") // the client, and the limiter its requests wait on
	cfg, err := getConfig(context.Background(), e.s, "development")
	require.NoError(t, err)
	waitingOn := e.b.peekLimiter(cfg)
	// A request sent while the lowered budget is being stored must count
	// against it already: it applies before the write.
	var atWrite int
	e.s = &onFirstWrite{Storage: e.s, prefixes: []string{configStoragePrefix}, hook: func() { atWrite = waitingOn.PerMinute() }}
	e.ok(logical.UpdateOperation, "config/development", map[string]interface{}{"rate_limit_per_minute": 42})
	require.Equal(t, 42, atWrite, "the lowered budget applies before it is stored")
	require.InDelta(t, 42, limiterRate(t, waitingOn), 0.001)

	// A raised one applies once stored (until then the lower one holds).
	e.s = &onFirstWrite{Storage: e.s, prefixes: []string{configStoragePrefix}, hook: func() { atWrite = waitingOn.PerMinute() }}
	e.ok(logical.UpdateOperation, "config/development", map[string]interface{}{"rate_limit_per_minute": 600})
	require.Equal(t, 42, atWrite)
	require.InDelta(t, 600, limiterRate(t, waitingOn), 0.001)

	// So does a write that also checks the key (the full path).
	e.s = &onFirstWrite{Storage: e.s, prefixes: []string{configStoragePrefix}, hook: func() { atWrite = waitingOn.PerMinute() }}
	e.ok(logical.UpdateOperation, "config/development", map[string]interface{}{"rate_limit_per_minute": 30, "verify": true})
	require.Equal(t, 30, atWrite, "the lowered budget applies before it is stored")
	require.InDelta(t, 30, limiterRate(t, waitingOn), 0.001)
	require.NoError(t, e.revoke(lease))
}
