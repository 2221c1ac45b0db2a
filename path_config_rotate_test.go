package heron

import (
	"context"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/hashicorp/vault/sdk/logical"
	"github.com/hashicorp/vault/sdk/rotation"
	"github.com/stretchr/testify/require"

	"github.com/heron-vault/vault-plugin-secrets-heron/heronapi"
	"github.com/heron-vault/vault-plugin-secrets-heron/herontest"
)

func TestRotate_HeronFlow(t *testing.T) {
	e := getTestBackend(t)
	e.configure("development")
	e.ok(logical.UpdateOperation, "config/development", map[string]interface{}{"old_key_retention": "1h"})
	oldKey := e.adminKey["development"]
	oldRec, _ := e.srv.KeyByToken(oldKey)

	resp := e.ok(logical.UpdateOperation, "config/development/rotate", nil)
	newID := resp.Data["admin_key_id"].(string)
	newRec, ok := e.srv.Key(newID)
	require.True(t, ok)
	require.Regexp(t, `^vault-admin-development-\d{10}$`, newRec.Name)
	require.Equal(t, oldRec.ID, newRec.CreatedBy, "created with the current admin key")
	require.Equal(t, newRec.Token[:8], resp.Data["admin_key_prefix"])

	read := e.ok(logical.ReadOperation, "config/development", nil)
	require.Equal(t, newID, read.Data["admin_key_id"])
	require.NotEmpty(t, read.Data["last_rotated"])
	_, err := time.Parse(time.RFC3339, read.Data["last_rotated"].(string))
	require.NoError(t, err)

	require.False(t, e.authenticates(oldKey), "the old key is deactivated")
	require.True(t, e.authenticates(newRec.Token))
	oldRec, _ = e.srv.Key(oldRec.ID)
	require.False(t, oldRec.Deleted, "the old key is kept for old_key_retention")

	// The engine works with the new key.
	e.role("r", map[string]interface{}{})
	lease := e.issue("r")
	require.NoError(t, e.revoke(lease))

	resp = e.ok(logical.UpdateOperation, "tidy", nil)
	require.Equal(t, 0, resp.Data["admin_keys_deleted"])
	e.atTime(time.Now().Add(61 * time.Minute))
	resp = e.ok(logical.UpdateOperation, "tidy", nil)
	require.Equal(t, 1, resp.Data["admin_keys_deleted"])
	oldRec, _ = e.srv.Key(oldRec.ID)
	require.True(t, oldRec.Deleted, "deleted after retention")
}

func TestRotate_FailureBetweenCreateAndStore(t *testing.T) {
	e := getTestBackend(t)
	e.configure("development")
	fs := &flakyStorage{Storage: e.s}
	e.s = fs
	fs.setFailPut(func(k string) bool { return k == "config/development" })

	_, err := e.do(logical.UpdateOperation, "config/development/rotate", nil)
	require.Error(t, err)
	fs.setFailPut(nil)

	require.True(t, e.authenticates(e.adminKey["development"]), "the old key keeps working")
	cfg, _ := getConfig(context.Background(), fs, "development")
	require.Equal(t, e.adminKey["development"], cfg.AdminAPIKey)
	for _, k := range e.srv.KeysIn("development") {
		if strings.HasPrefix(k.Name, "vault-admin-") {
			require.True(t, k.Deleted, "the new key %s was rolled back", k.ID)
		}
	}
	require.Zero(t, walCount(t, e.b, fs))
}

func TestRotate_NewKeyFailsVerification(t *testing.T) {
	e := getTestBackend(t)
	e.configure("development")
	// The first GET after the POST is the new key's verification (the one
	// before it looks for keys that already have the name).
	real := e.b.newClient
	e.b.newClient = func(cfg *heronConfig, lim *heronapi.Limiter) (heronapi.API, error) {
		c, err := real(cfg, lim)
		if err != nil {
			return nil, err
		}
		return &scriptedAPI{API: c, creating: func() {
			e.srv.FailNext("GET", "/api/credentials/keys", 50, herontest.FaultStatus500)
		}}, nil
	}
	e.b.resetClient("development")
	_, err := e.do(logical.UpdateOperation, "config/development/rotate", nil)
	require.Error(t, err)
	require.Contains(t, err.Error(), "verifying the new admin key")
	e.srv.ResetFaults()

	require.True(t, e.authenticates(e.adminKey["development"]))
	for _, k := range e.srv.KeysIn("development") {
		if strings.HasPrefix(k.Name, "vault-admin-") {
			require.True(t, k.Deleted, "the unverified key %s was deleted", k.ID)
		}
	}
}

func TestRotate_WhileIssuing(t *testing.T) {
	e := getTestBackend(t)
	e.configure("development")
	e.role("r", map[string]interface{}{})

	var wg sync.WaitGroup
	stop := make(chan struct{})
	var mu sync.Mutex
	var leases []*logical.Response
	var failures []string
	for w := 0; w < 8; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				select {
				case <-stop:
					return
				default:
				}
				resp, err := e.do(logical.ReadOperation, "creds/r", nil)
				mu.Lock()
				switch {
				case err != nil:
					failures = append(failures, err.Error())
				case resp.IsError():
					failures = append(failures, resp.Error().Error())
				default:
					leases = append(leases, resp)
				}
				mu.Unlock()
			}
		}()
	}
	// Each rotation waits for issuances made since the one before (counted,
	// not slept for), so every rotation lands among running issuances.
	issued := func() int { mu.Lock(); defer mu.Unlock(); return len(leases) + len(failures) }
	seen := 0
	for i := 0; i < 3; i++ {
		require.Eventually(t, func() bool { return issued() >= seen+2 }, 30*time.Second, time.Millisecond, "issuances go on")
		e.ok(logical.UpdateOperation, "config/development/rotate", nil)
		seen = issued()
	}
	require.Eventually(t, func() bool { return issued() >= seen+2 }, 30*time.Second, time.Millisecond, "issuances go on after the last rotation")
	close(stop)
	wg.Wait()
	require.Empty(t, failures, "no issuance fails during rotation")
	require.NotEmpty(t, leases)
	for _, l := range leases {
		require.True(t, e.authenticates(l.Data["api_key"].(string)))
		require.NoError(t, e.revoke(l))
	}
}

func TestRotate_Scheduled(t *testing.T) {
	e := getTestBackend(t)
	e.configure("development")
	e.ok(logical.UpdateOperation, "config/development", map[string]interface{}{"rotation_period": "1h"})
	start := time.Now()
	req := &logical.Request{Storage: e.s}

	e.atTime(start.Add(59 * time.Minute))
	require.NoError(t, e.b.periodicFunc(context.Background(), req))
	require.True(t, e.authenticates(e.adminKey["development"]), "not rotated before it is due")

	e.atTime(start.Add(61 * time.Minute))
	require.NoError(t, e.b.periodicFunc(context.Background(), req))
	require.False(t, e.authenticates(e.adminKey["development"]), "rotated once due")
	read := e.ok(logical.ReadOperation, "config/development", nil)
	require.NotEqual(t, e.adminKey["development"][:8], read.Data["admin_key_prefix"])

	// Background requests say so in their User-Agent.
	var bg int
	for _, r := range e.srv.Requests() {
		if !strings.HasPrefix(r.Path, "/api/credentials/") {
			continue // the test's own hello calls
		}
		if strings.HasSuffix(r.UserAgent, " (background)") {
			bg++
		}
		require.True(t, strings.HasPrefix(r.UserAgent, "vault-plugin-secrets-heron/"), r.UserAgent)
	}
	require.Positive(t, bg)

	// The next rotation counts from this one.
	e.atTime(start.Add(61*time.Minute + 59*time.Minute))
	prefix := read.Data["admin_key_prefix"]
	require.NoError(t, e.b.periodicFunc(context.Background(), req))
	read = e.ok(logical.ReadOperation, "config/development", nil)
	require.Equal(t, prefix, read.Data["admin_key_prefix"])
}

func TestRotate_UnknownAdminKeyID(t *testing.T) {
	e := getTestBackend(t)
	e.ok(logical.CreateOperation, "config/development", map[string]interface{}{
		"admin_api_key": e.adminKey["development"], "base_url": e.srv.URL, "verify": false,
	})
	read := e.ok(logical.ReadOperation, "config/development", nil)
	require.Equal(t, "", read.Data["admin_key_id"])
	// Unique prefix in Heron's list: rotation finds the id and proceeds.
	e.ok(logical.UpdateOperation, "config/development/rotate", nil)
	require.False(t, e.authenticates(e.adminKey["development"]))

	keys := []heronapi.Key{
		{ID: "a", TokenPrefix: "key_abcd", IsActive: true},
		{ID: "b", TokenPrefix: "key_abcd", IsActive: true},
		{ID: "c", TokenPrefix: "key_ffff", IsActive: false},
	}
	_, err := findKeyIDByPrefix(keys, "key_abcd")
	require.ErrorContains(t, err, "2 active keys share the prefix key_abcd (a, b)")
	_, err = findKeyIDByPrefix(keys, "key_ffff")
	require.ErrorContains(t, err, "no active key with prefix key_ffff")
}

func TestRotate_CronScheduleOnCommunityVault(t *testing.T) {
	e := getTestBackend(t)
	e.configure("development")
	// StaticSystemView, like Vault Community, has no rotation manager: the
	// engine falls back to its own scheduler.
	e.ok(logical.UpdateOperation, "config/development", map[string]interface{}{"rotation_schedule": "0 * * * *"})
	read := e.ok(logical.ReadOperation, "config/development", nil)
	require.Equal(t, "0 * * * *", read.Data["rotation_schedule"])
	require.Equal(t, false, read.Data["rotation_managed_by_vault"])

	cfg, _ := getConfig(context.Background(), e.s, "development")
	due := cfg.rotationSchedule().next()
	require.Equal(t, 0, due.Minute())
	require.True(t, due.After(cfg.KeySetAt))
	req := &logical.Request{Storage: e.s}

	e.atTime(due.Add(-time.Minute))
	require.NoError(t, e.b.periodicFunc(context.Background(), req))
	require.True(t, e.authenticates(e.adminKey["development"]), "not before the scheduled time")
	e.atTime(due.Add(time.Minute))
	require.NoError(t, e.b.periodicFunc(context.Background(), req))
	require.False(t, e.authenticates(e.adminKey["development"]), "rotated at the scheduled time")

	// disable_automated_rotation keeps the schedule but stops rotating.
	e.ok(logical.UpdateOperation, "config/development", map[string]interface{}{"disable_automated_rotation": true})
	cfg, _ = getConfig(context.Background(), e.s, "development")
	require.True(t, cfg.rotationSchedule().next().IsZero())
}

func TestRotate_KeepsTheEnvironmentsBudget(t *testing.T) {
	e := getTestBackend(t)
	e.configure("development")
	limiterOf := func() *heronapi.Limiter {
		_, err := e.b.getClient(context.Background(), e.s, "development")
		require.NoError(t, err)
		cfg, err := getConfig(context.Background(), e.s, "development")
		require.NoError(t, err)
		return e.b.peekLimiter(cfg)
	}
	before := limiterOf()
	e.ok(logical.UpdateOperation, "config/development/rotate", nil)
	require.Same(t, before, limiterOf(), "Heron's budget is per environment: a rotation must not open a second one")

	// A key set by hand starts its own budget.
	other := e.srv.AddAdminKey("development")
	e.adminKey["other"] = other
	e.ok(logical.UpdateOperation, "config/development", map[string]interface{}{"admin_api_key": other})
	require.NotSame(t, before, limiterOf())
}

// rotationManagerView is a SystemView with Vault Enterprise's rotation
// manager: it accepts jobs and remembers them.
type rotationManagerView struct {
	logical.StaticSystemView
	mu   sync.Mutex
	jobs map[string]*rotation.RotationJobConfigureRequest
}

func (v *rotationManagerView) RegisterRotationJob(_ context.Context, req *rotation.RotationJobConfigureRequest) (string, error) {
	v.mu.Lock()
	defer v.mu.Unlock()
	v.jobs[req.ReqPath] = req
	return "job-" + req.ReqPath, nil
}

func (v *rotationManagerView) DeregisterRotationJob(_ context.Context, req *rotation.RotationJobDeregisterRequest) error {
	v.mu.Lock()
	defer v.mu.Unlock()
	delete(v.jobs, req.ReqPath)
	return nil
}

// useRotationManager replaces e's backend by one on a server with Vault
// Enterprise's rotation manager, returned for the test to inspect.
func useRotationManager(t *testing.T, e *testEnv) *rotationManagerView {
	t.Helper()
	view := &rotationManagerView{
		StaticSystemView: logical.StaticSystemView{DefaultLeaseTTLVal: testDefaultLeaseTTL, MaxLeaseTTLVal: testMaxLeaseTTL},
		jobs:             map[string]*rotation.RotationJobConfigureRequest{},
	}
	b := backend()
	b.retryWaitMin = 5 * time.Millisecond
	conf := logical.TestBackendConfig()
	conf.StorageView = e.s
	conf.System = view
	require.NoError(t, b.Setup(context.Background(), conf))
	e.b = b
	return view
}

// hasJob reports whether the rotation manager holds a job for path.
func (v *rotationManagerView) hasJob(path string) bool {
	v.mu.Lock()
	defer v.mu.Unlock()
	_, ok := v.jobs[path]
	return ok
}

func TestRotate_RotationManager(t *testing.T) {
	e := getTestBackend(t)
	view := useRotationManager(t, e)
	b := e.b
	e.configure("development")

	e.ok(logical.UpdateOperation, "config/development", map[string]interface{}{"rotation_schedule": "0 3 * * SAT", "rotation_window": "1h"})
	read := e.ok(logical.ReadOperation, "config/development", nil)
	require.Equal(t, true, read.Data["rotation_managed_by_vault"])
	job := view.jobs["config/development"]
	require.NotNil(t, job, "the schedule is handed to Vault's rotation manager")
	require.Equal(t, "0 3 * * SAT", job.RotationSchedule)
	require.Equal(t, time.Hour, job.RotationWindow)

	// The engine's own scheduler stays out of the way...
	cfg, _ := getConfig(context.Background(), e.s, "development")
	require.True(t, cfg.rotationSchedule().next().IsZero())
	// ...and Vault's callback rotates.
	_, err := b.HandleRequest(context.Background(), &logical.Request{
		Operation: logical.RotationOperation, Path: "config/development", Storage: e.s,
	})
	require.NoError(t, err)
	require.False(t, e.authenticates(e.adminKey["development"]), "rotated by the rotation manager's call")

	e.ok(logical.UpdateOperation, "config/development", map[string]interface{}{"disable_automated_rotation": true})
	require.Empty(t, view.jobs, "disabling deregisters the job")
	read = e.ok(logical.ReadOperation, "config/development", nil)
	require.Equal(t, false, read.Data["rotation_managed_by_vault"])
}

// Invariants 7 and 8 (a schedule fires once): the pass decides the admin
// key is due from a read outside the config's lock; a rotation by hand
// landing in between is not repeated (the hand-made key stays current and
// active, and only the key it replaced is retired).
func TestRotate_ScheduledRotationDoesNotRepeatOneMadeByHand(t *testing.T) {
	e := getTestBackend(t)
	e.configure("development")
	t0 := time.Now()
	e.atTime(t0)
	e.ok(logical.UpdateOperation, "config/development", map[string]interface{}{"rotation_period": "1h"})
	seedID := e.ok(logical.ReadOperation, "config/development", nil).Data["admin_key_id"]

	e.atTime(t0.Add(61 * time.Minute))                                       // due
	ps, done := passParkedAfterReading(e, configStoragePrefix+"development") // the pass has read the config and found it due
	byHand := e.ok(logical.UpdateOperation, "config/development/rotate", nil).Data["admin_key_id"].(string)
	close(ps.proceed)
	res := <-done
	require.NoError(t, res.err)
	require.Zero(t, res.rotated, "the pass rotates nothing: the admin key is not due any more")

	read := e.ok(logical.ReadOperation, "config/development", nil).Data
	require.Equal(t, byHand, read["admin_key_id"], "the rotation by hand is not repeated")
	retired := read["retired_keys"].([]map[string]interface{})
	require.Len(t, retired, 1)
	require.Equal(t, seedID, retired[0]["key_id"])
	require.True(t, heronKey(e, byHand).IsActive)
}

// Invariant 8 (a retention counts from the event it names): when the
// rotation could not deactivate the old admin key, old_key_retention counts
// from the deactivation the cleanup pass made later, not from the rotation.
func TestRotate_OldKeyRetentionCountsFromTheDeactivation(t *testing.T) {
	e := getTestBackend(t)
	e.ok(logical.CreateOperation, "config/development", map[string]interface{}{
		"admin_api_key": e.adminKey["development"], "base_url": e.srv.URL, "max_retries": 0,
		"rate_limit_per_minute": maxRateLimitPerMinute, "old_key_retention": "1h",
	})
	oldID := e.ok(logical.ReadOperation, "config/development", nil).Data["admin_key_id"].(string)
	t0 := time.Now()
	e.atTime(t0)
	e.srv.FailNext("PUT", "/api/credentials/keys/", 5, herontest.FaultStatus503)
	rot := e.ok(logical.UpdateOperation, "config/development/rotate", nil)
	e.srv.ResetFaults()
	require.NotEmpty(t, rot.Warnings, "precondition: the old key could not be deactivated")
	require.True(t, heronKey(e, oldID).IsActive)

	t1 := t0.Add(2 * time.Hour)
	e.atTime(t1)
	e.ok(logical.UpdateOperation, "tidy", nil)
	k := heronKey(e, oldID)
	require.False(t, k.IsActive, "deactivated by the pass")
	require.False(t, k.Deleted, "not deleted in the pass that deactivated it")
	rk := retiredKey(e, "development", oldID)
	require.NotNil(t, rk)
	require.Equal(t, t1.UTC().Format(time.RFC3339), rk["deactivated_at"])
	require.Equal(t, t1.Add(time.Hour).UTC().Format(time.RFC3339), rk["delete_after"])

	e.atTime(t1.Add(59 * time.Minute))
	e.ok(logical.UpdateOperation, "tidy", nil)
	require.False(t, heronKey(e, oldID).Deleted, "kept for old_key_retention after its deactivation")
	e.atTime(t1.Add(61 * time.Minute))
	e.ok(logical.UpdateOperation, "tidy", nil)
	require.True(t, heronKey(e, oldID).Deleted, "deleted once old_key_retention after its deactivation is over")
}

// keyEvents are the events of one key sent so far, waiting for at least n.
func keyEvents(t *testing.T, m *logical.MockEventSender, keyID string, n int) []logical.MockEvent {
	t.Helper()
	var got []logical.MockEvent
	require.Eventually(t, func() bool {
		m.Lock()
		defer m.Unlock()
		got = got[:0]
		for _, ev := range m.Events {
			if ev.Event.Metadata.AsMap()["key_id"] == keyID {
				got = append(got, ev)
			}
		}
		return len(got) >= n
	}, 5*time.Second, 10*time.Millisecond, "want %d events of key %s", n, keyID)
	return got
}

// Spec "Events, history and log lines" (every change of a key's life has
// one name): deleting a rotated-out admin key after its retention sends
// heron/key-delete and logs one event=heron/key-delete line.
func TestRotate_RetiredAdminKeyDeletionIsRecorded(t *testing.T) {
	events := &logical.MockEventSender{}
	logs := &syncBuffer{}
	e := newTestEnv(t, withEvents(events), withLogger(hclog.New(&hclog.LoggerOptions{Level: hclog.Info, Output: logs, JSONFormat: true})))
	e.ok(logical.CreateOperation, "config/development", map[string]interface{}{
		"admin_api_key": e.adminKey["development"], "base_url": e.srv.URL,
		"rate_limit_per_minute": maxRateLimitPerMinute, "old_key_retention": "1h",
	})
	oldID := e.ok(logical.ReadOperation, "config/development", nil).Data["admin_key_id"].(string)
	t0 := time.Now()
	e.atTime(t0)
	e.ok(logical.UpdateOperation, "config/development/rotate", nil)
	e.atTime(t0.Add(2 * time.Hour))
	e.ok(logical.UpdateOperation, "tidy", nil)
	require.True(t, heronKey(e, oldID).Deleted, "precondition: deleted after its retention")

	var deletes int
	for _, ev := range keyEvents(t, events, oldID, 1) {
		if string(ev.Type) == eventKeyDelete {
			deletes++
			md := ev.Event.Metadata.AsMap()
			require.Equal(t, "development", md["environment"])
			require.Equal(t, "config/development", md[logical.EventMetadataDataPath])
		}
	}
	require.Equal(t, 1, deletes, "one heron/key-delete event")
	var lines int
	for _, line := range strings.Split(logs.String(), "\n") {
		if strings.Contains(line, `"event":"`+eventKeyDelete+`"`) && strings.Contains(line, oldID) {
			lines++
		}
	}
	require.Equal(t, 1, lines, "one event=heron/key-delete log line")
}

// Invariant 1 and the config's "at no point without a working stored key":
// a config keeps at most maxRetiredAdminKeys rotated-out admin keys; beyond
// it the oldest deactivated ones are deleted (reason retired-cap), rotation
// keeps working, a fresh admin_api_key write always works, and settings
// that would exceed it are accepted with a warning.
func TestRotate_RetiredAdminKeysAreCapped(t *testing.T) {
	events := &logical.MockEventSender{}
	logs := &syncBuffer{}
	e := newTestEnv(t, withEvents(events), withLogger(hclog.New(&hclog.LoggerOptions{Level: hclog.Info, Output: logs, JSONFormat: true})))
	e.ok(logical.CreateOperation, "config/development", map[string]interface{}{
		"admin_api_key": e.adminKey["development"], "base_url": e.srv.URL,
		"rate_limit_per_minute": maxRateLimitPerMinute, "old_key_retention": "720h",
	})
	ids := []string{e.ok(logical.ReadOperation, "config/development", nil).Data["admin_key_id"].(string)}
	const extra = 3
	for range maxRetiredAdminKeys + extra {
		ids = append(ids, e.ok(logical.UpdateOperation, "config/development/rotate", nil).Data["admin_key_id"].(string))
	}
	read := e.ok(logical.ReadOperation, "config/development", nil).Data
	require.Equal(t, ids[len(ids)-1], read["admin_key_id"], "rotation keeps working")
	require.Equal(t, maxRetiredAdminKeys, len(read["retired_keys"].([]map[string]interface{})), "rotated-out admin keys kept")
	for _, id := range ids[:extra] {
		require.True(t, heronKey(e, id).Deleted, "the oldest rotated-out key %s is deleted", id)
		var deleted bool
		for _, ev := range keyEvents(t, events, id, 1) {
			deleted = deleted || string(ev.Type) == eventKeyDelete
		}
		require.True(t, deleted, "key %s: a heron/key-delete event", id)
		var lines int
		for _, line := range strings.Split(logs.String(), "\n") {
			if strings.Contains(line, `"event":"`+eventKeyDelete+`"`) && strings.Contains(line, id) && strings.Contains(line, `"reason":"`+reasonRetiredCap+`"`) {
				lines++
			}
		}
		require.Equal(t, 1, lines, "key %s: one event=heron/key-delete log line with reason %s", id, reasonRetiredCap)
	}
	for _, id := range ids[extra : len(ids)-1] {
		require.False(t, heronKey(e, id).Deleted, "the newer rotated-out key %s is kept", id)
	}

	fresh := e.srv.AddAdminKey("development")
	e.adminKey["fresh"] = fresh
	e.ok(logical.UpdateOperation, "config/development", map[string]interface{}{"admin_api_key": fresh})
	read = e.ok(logical.ReadOperation, "config/development", nil).Data
	require.Equal(t, fresh[:8], read["admin_key_prefix"], "a fresh admin key is always accepted")
	require.LessOrEqual(t, len(read["retired_keys"].([]map[string]interface{})), maxRetiredAdminKeys)
	e.ok(logical.UpdateOperation, "config/development/rotate", nil)

	resp := e.ok(logical.UpdateOperation, "config/development", map[string]interface{}{"rotation_period": "1h"})
	require.NotNil(t, resp)
	require.Contains(t, strings.Join(resp.Warnings, "\n"), fmt.Sprintf("keeps at most %d", maxRetiredAdminKeys))
}

// The config's "at no point without a working stored key, nor a created key
// untracked": when the rotated-out admin keys are at the bound and none is
// deactivated yet (so none may be deleted early), a rotation is refused with
// a 400 and its new key taken back out, while a fresh admin_api_key is
// still accepted; once the pass has deactivated them, the bound holds again
// and rotation works.
func TestRotate_RefusedWhileNoRotatedOutKeyCanBePruned(t *testing.T) {
	e := getTestBackend(t)
	e.configure("development")
	// As after maxRetiredAdminKeys rotations whose deactivations all failed
	// (the last one made the current admin key).
	e.srv.FailNext("PUT", "/api/credentials/keys/", 10, herontest.FaultStatus503)
	rot := e.ok(logical.UpdateOperation, "config/development/rotate", nil)
	e.srv.ResetFaults()
	require.NotEmpty(t, rot.Warnings, "precondition: the old key could not be deactivated")
	cfg, err := getConfig(context.Background(), e.s, "development")
	require.NoError(t, err)
	now := time.Now()
	for i := range maxRetiredAdminKeys - 1 {
		k := createHand(t, e, e.adminKey["development"], fmt.Sprintf("vault-admin-development-%d", i))
		cfg.RetiredKeys = append(cfg.RetiredKeys, retiredAdminKey{KeyID: k.ID, TokenPrefix: k.TokenPrefix, RetiredAt: now, DeleteAfter: now.Add(720 * time.Hour)})
	}
	require.NoError(t, putConfig(context.Background(), e.s, cfg))

	before := len(e.srv.Keys())
	e.badRequest(logical.UpdateOperation, "config/development/rotate", nil, fmt.Sprintf("the most it keeps is %d", maxRetiredAdminKeys))
	keys := e.srv.Keys()
	require.Len(t, keys, before+1, "one key was created")
	require.True(t, keys[len(keys)-1].Deleted, "and taken back out")
	read := e.ok(logical.ReadOperation, "config/development", nil).Data
	require.Equal(t, cfg.AdminKeyID, read["admin_key_id"], "the admin key is unchanged")
	require.Equal(t, maxRetiredAdminKeys, len(read["retired_keys"].([]map[string]interface{})))

	fresh := e.srv.AddAdminKey("development")
	e.adminKey["fresh"] = fresh
	e.ok(logical.UpdateOperation, "config/development", map[string]interface{}{"admin_api_key": fresh})
	read = e.ok(logical.ReadOperation, "config/development", nil).Data
	require.Equal(t, fresh[:8], read["admin_key_prefix"], "a fresh admin key is always accepted")
	require.NotNil(t, retiredKey(e, "development", cfg.AdminKeyID), "the engine-made admin key it replaced is retired, beyond the bound until the pass")

	e.ok(logical.UpdateOperation, "tidy", nil)
	require.LessOrEqual(t, len(e.ok(logical.ReadOperation, "config/development", nil).Data["retired_keys"].([]map[string]interface{})), maxRetiredAdminKeys)
	e.ok(logical.UpdateOperation, "config/development/rotate", nil)
	require.LessOrEqual(t, len(e.ok(logical.ReadOperation, "config/development", nil).Data["retired_keys"].([]map[string]interface{})), maxRetiredAdminKeys)
}

// passResult is what one run of the scheduled rotations did.
type passResult struct {
	rotated int
	err     error
}

// passParkedAfterReading starts the pass's scheduled rotations on storage
// that parks them right after they read key (found due, before any lock),
// and returns once they are parked there: close ps.proceed to let them go
// on, then read done.
func passParkedAfterReading(e *testEnv, key string) (*parkStorage, <-chan passResult) {
	ps := &parkStorage{Storage: e.s}
	e.s = ps
	ps.arm(key)
	done := make(chan passResult, 1)
	go func() {
		n, err := e.b.rotateDue(context.Background(), ps)
		done <- passResult{n, err}
	}()
	<-ps.reached
	return ps, done
}

// Spec invariant 1: a rotation whose config write reports an error although
// it was committed keeps the new admin key storage holds (it works, the
// write-ahead record is settled) and retires the old one: deactivated, then
// deleted after old_key_retention. When the write was not committed the new
// key is deleted and the old one stays.
func TestRotate_ConfigStoredButReportedFailedKeepsTheNewKey(t *testing.T) {
	ctx := context.Background()

	t.Run("committed, then reported failed", func(t *testing.T) {
		e := getTestBackend(t)
		e.configure("development")
		e.ok(logical.UpdateOperation, "config/development", map[string]interface{}{"old_key_retention": "1h"})
		oldKey := e.adminKey["development"]
		oldID := keyIDByToken(t, e, oldKey)
		fs := &switchFailStorage{Storage: e.s, prefix: configStoragePrefix}
		e.s = fs

		fs.set(true, true)
		resp, err := e.do(logical.UpdateOperation, "config/development/rotate", nil)
		fs.set(false, false)
		require.Positive(t, fs.failed, "the fault was hit")
		require.NoError(t, err, "storage holds the new key: the rotation is done")
		require.NotNil(t, resp)
		require.False(t, resp.IsError(), "%v", resp.Error())

		cfg, err := getConfig(ctx, fs, "development")
		require.NoError(t, err)
		require.NotEqual(t, oldKey, cfg.AdminAPIKey, "storage holds the new key")
		require.Equal(t, cfg.AdminKeyID, resp.Data["admin_key_id"], "the answer names the key storage holds")
		newRec, ok := e.srv.Key(cfg.AdminKeyID)
		require.True(t, ok)
		require.False(t, newRec.Deleted, "the engine must not delete the key storage holds")
		require.True(t, e.authenticates(cfg.AdminAPIKey), "the stored admin key works")
		// The creation record stays until the pass confirms the config
		// holds its key (see walGuard.confirmLater), then goes.
		e.b.windowNow = func() time.Time { return time.Now().Add(walRollbackMinAge + time.Minute) }
		e.ok(logical.UpdateOperation, "tidy", nil)
		e.b.windowNow = time.Now
		require.Zero(t, walCount(t, e.b, fs), "the write-ahead record is settled")
		newRec, _ = e.srv.Key(cfg.AdminKeyID)
		require.False(t, newRec.Deleted, "settling the record keeps the key the config holds")

		lease := e.issue(func() string { e.role("r", map[string]interface{}{}); return "r" }())
		require.NoError(t, e.revoke(lease))

		retired := retiredKeyStates(t, e, "development")
		require.Contains(t, retired, oldID, "the old key is in retired_keys")
		e.ok(logical.UpdateOperation, "tidy", nil)
		require.Equal(t, keyStateDeactivated, retiredKeyStates(t, e, "development")[oldID])
		require.False(t, e.authenticates(oldKey), "the old key ends deactivated")

		e.atTime(time.Now().Add(61 * time.Minute))
		tidy := e.ok(logical.UpdateOperation, "tidy", nil)
		require.Equal(t, 1, tidy.Data["admin_keys_deleted"])
		k, _ := e.srv.Key(oldID)
		require.True(t, k.Deleted, "the old key is deleted after old_key_retention")
		require.NotContains(t, retiredKeyStates(t, e, "development"), oldID)
		require.True(t, e.authenticates(cfg.AdminAPIKey))
	})

	t.Run("not committed", func(t *testing.T) {
		e := getTestBackend(t)
		e.configure("development")
		oldKey := e.adminKey["development"]
		fs := &switchFailStorage{Storage: e.s, prefix: configStoragePrefix}
		e.s = fs

		fs.set(true, false)
		resp, err := e.do(logical.UpdateOperation, "config/development/rotate", nil)
		fs.set(false, false)
		require.True(t, err != nil || (resp != nil && resp.IsError()), "the rotation fails")

		cfg, err := getConfig(ctx, fs, "development")
		require.NoError(t, err)
		require.Equal(t, oldKey, cfg.AdminAPIKey)
		require.True(t, e.authenticates(oldKey), "the old key still works")
		for _, k := range e.srv.KeysIn("development") {
			if strings.HasPrefix(k.Name, "vault-admin-") {
				require.True(t, k.Deleted, "the new key %s is deleted", k.ID)
			}
		}
		require.Zero(t, walCount(t, e.b, fs))
		e.role("r", map[string]interface{}{})
		require.NoError(t, e.revoke(e.issue("r")))
	})
}

// blockingCreate holds the instance's first CreateKey, once Heron answered,
// until released.
type blockingCreate struct {
	heronapi.API
	once             sync.Once
	entered, proceed chan struct{}
}

func (b *blockingCreate) CreateKey(ctx context.Context, name string) (*heronapi.Key, error) {
	k, err := b.API.CreateKey(ctx, name)
	b.once.Do(func() {
		close(b.entered)
		<-b.proceed
	})
	return k, err
}

// Spec invariants 1 and 7: two backend instances on one storage (a reload or
// failover: the old one finishing its request) rotate the admin key at once.
// The one that starts while the other runs backs off (a rotation claim)
// and creates nothing; the key the other one stored is held or retired,
// never forgotten while active.
func TestRotate_TwoInstancesAtOnceForgetNoKey(t *testing.T) {
	admin := herontest.NewKeyToken()
	srv := herontest.NewServer(herontest.Options{Environments: map[string][]string{"development": {admin}}, RateLimitPerMinute: -1})
	defer srv.Close()
	storage := &logical.InmemStorage{}
	start := func() *heronBackend {
		conf := logical.TestBackendConfig()
		conf.StorageView = storage
		conf.System = &logical.StaticSystemView{DefaultLeaseTTLVal: time.Hour, MaxLeaseTTLVal: 24 * time.Hour}
		b := backend()
		if err := b.Setup(context.Background(), conf); err != nil {
			t.Fatal(err)
		}
		return b
	}
	do := func(b *heronBackend, op logical.Operation, path string, data map[string]interface{}) *logical.Response {
		resp, err := b.HandleRequest(context.Background(), &logical.Request{Operation: op, Path: path, Storage: storage, Data: data})
		if err != nil || (resp != nil && resp.IsError()) {
			t.Fatalf("%s %s: %v %v", op, path, err, resp)
		}
		return resp
	}
	oldInst, newInst := start(), start()
	do(oldInst, logical.CreateOperation, "config/development", map[string]interface{}{"admin_api_key": admin, "base_url": srv.URL})

	gate := &blockingCreate{entered: make(chan struct{}), proceed: make(chan struct{})}
	newInst.newClient = func(cfg *heronConfig, lim *heronapi.Limiter) (heronapi.API, error) {
		api, err := heronapi.New(newInst.clientConfig(cfg, lim))
		gate.API = api
		return gate, err
	}
	done := make(chan *logical.Response, 1)
	go func() {
		resp, err := newInst.HandleRequest(context.Background(), &logical.Request{Operation: logical.UpdateOperation, Path: "config/development/rotate", Storage: storage})
		if err != nil {
			t.Errorf("the second instance's rotation: an internal error instead of a refusal: %v", err)
		}
		done <- resp
	}()
	<-gate.entered // the new instance created its key, not stored yet
	// The old instance's rotation sees the new one's claim and backs off,
	// creating nothing (spec, Invariant 8: rotate once).
	refused, err := oldInst.HandleRequest(context.Background(), &logical.Request{Operation: logical.UpdateOperation, Path: "config/development/rotate", Storage: storage})
	if err != nil || refused == nil || !refused.IsError() || !strings.Contains(refused.Error().Error(), "another rotation of it is running") {
		t.Fatalf("the old instance's rotation while the new one's runs: %v %v, want it refused", refused, err)
	}
	close(gate.proceed)
	second := <-done
	if second == nil || second.IsError() {
		t.Fatalf("the new instance's rotation: %v, want it done", second)
	}
	firstID := second.Data["admin_key_id"].(string)
	for _, k := range srv.Keys() {
		if strings.HasPrefix(k.Name, "vault-admin-") && k.ID != firstID {
			t.Fatalf("a second rotation's key %s (%q) was created", k.ID, k.Name)
		}
	}

	cfg := do(newInst, logical.ReadOperation, "config/development", nil)
	held := cfg.Data["admin_key_id"] == firstID
	for _, rk := range cfg.Data["retired_keys"].([]map[string]interface{}) {
		held = held || rk["key_id"] == firstID
	}
	k, _ := srv.Key(firstID)
	if !held && !k.Deleted && k.IsActive {
		t.Fatalf("admin key %s that the old instance's rotation created and stored is active in Heron, but the config neither holds nor retires it (current %v): forgotten", firstID, cfg.Data["admin_key_id"])
	}
}
