package heron

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/hashicorp/go-hclog"
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

// newStaticKey is the one key of static role name that Heron holds, not
// deleted, other than the ids in known.
func newStaticKey(t *testing.T, e *testEnv, name string, known ...string) string {
	t.Helper()
	var found []string
	for _, k := range e.srv.Keys() {
		if k.Deleted || !strings.HasPrefix(k.Name, "vault-static-"+name+"-") || slices.Contains(known, k.ID) {
			continue
		}
		found = append(found, k.ID)
	}
	require.Len(t, found, 1, "one new key of static role %s still in Heron", name)
	return found[0]
}

// Invariants 7 and 8 (a schedule fires once; the previous key keeps its
// overlap): the pass decides a role is due from a read outside its lock, and
// a rotation by hand landing in between is not repeated.
func TestStaticRotation_PassDoesNotRepeatARotationMadeByHand(t *testing.T) {
	e := getTestBackend(t)
	e.configure("development")
	t0 := time.Now()
	e.atTime(t0)
	e.ok(logical.CreateOperation, "static-roles/app", map[string]interface{}{
		"environment": "development", "rotation_period": "1h", "overlap": "2h",
	})
	first := staticCreds(e, "app")["key_id"].(string)

	e.atTime(t0.Add(61 * time.Minute))                                   // due
	ps, done := passParkedAfterReading(e, staticRoleStoragePrefix+"app") // the pass has read the role and found it due
	e.ok(logical.UpdateOperation, "static-roles/app/rotate", nil)
	byHand := staticCreds(e, "app")["key_id"].(string)
	close(ps.proceed)
	res := <-done
	require.NoError(t, res.err)
	require.Zero(t, res.rotated, "the pass rotates nothing: the role is not due any more")

	creds := staticCreds(e, "app")
	require.Equal(t, byHand, creds["key_id"], "the rotation by hand is not repeated")
	require.Equal(t, first, creds["previous_key_id"], "the previous key keeps its overlap")
	require.True(t, heronKey(e, first).IsActive, "the previous key still works")
	require.True(t, e.authenticates(creds["api_key"].(string)))
}

// Invariant 7 (concurrency): two static-creds reads that both find the
// current key gone replace it once; the previous key keeps its overlap.
func TestStaticCreds_TwoReadersReplaceAVanishedKeyOnce(t *testing.T) {
	e := getTestBackend(t)
	e.configure("development")
	e.ok(logical.CreateOperation, "static-roles/app", map[string]interface{}{"environment": "development", "overlap": "2h"})
	first := staticCreds(e, "app")["key_id"].(string)
	e.ok(logical.UpdateOperation, "static-roles/app/rotate", nil)
	second := staticCreds(e, "app")["key_id"].(string)
	require.NoError(t, handClient(t, e, e.adminKey["development"]).DeleteKey(context.Background(), second))
	e.ok(logical.UpdateOperation, "tidy", nil) // second is gone from tracking

	ps := &parkStorage{Storage: e.s}
	e.s = ps
	ps.arm(keyStoragePrefix + second)
	type result struct {
		data map[string]interface{}
		err  error
	}
	done := make(chan result, 1)
	go func() {
		resp, err := e.do(logical.ReadOperation, "static-creds/app", nil)
		if err == nil && resp.IsError() {
			err = resp.Error()
		}
		var data map[string]interface{}
		if resp != nil {
			data = resp.Data
		}
		done <- result{data, err}
	}()
	<-ps.reached // the first reader has seen the key gone
	other := staticCreds(e, "app")
	close(ps.proceed)
	res := <-done
	require.NoError(t, res.err)

	require.NotEqual(t, second, other["key_id"])
	require.Equal(t, other["key_id"], res.data["key_id"], "one replacement, served to both readers")
	require.Equal(t, other["api_key"], res.data["api_key"])
	creds := staticCreds(e, "app")
	require.Equal(t, other["key_id"], creds["key_id"])
	require.Equal(t, first, creds["previous_key_id"], "the previous key keeps its overlap")
	require.True(t, heronKey(e, first).IsActive, "the previous key still works")
	require.True(t, e.authenticates(creds["api_key"].(string)))
}

// Invariants 1 and 4: a rotation whose role write fails and whose undo
// cannot delete the new key (Heron 503) leaves that live key's record
// active, not a tombstone, and the inventory does not call it unmanaged.
func TestStaticRotation_UndoThatCannotDeleteKeepsTheKeyTracked(t *testing.T) {
	e := getTestBackend(t)
	e.configure("development")
	e.ok(logical.CreateOperation, "static-roles/app", map[string]interface{}{"environment": "development"})
	first := staticCreds(e, "app")["key_id"].(string)

	fs := &failPutKey{Storage: e.s, key: staticRoleStoragePrefix + "app", n: 1}
	e.s = fs
	e.srv.FailNext(http.MethodDelete, "/api/credentials/keys/", 20, herontest.FaultStatus503)
	resp, err := e.do(logical.UpdateOperation, "static-roles/app/rotate", nil)
	require.True(t, err != nil || resp.IsError(), "the rotation fails")
	e.srv.ResetFaults()

	created := newStaticKey(t, e, "app", first)
	require.True(t, heronKey(e, created).IsActive, "precondition: the undo could not delete the new key")
	rec, err := getKeyRecord(context.Background(), e.s, created)
	require.NoError(t, err)
	require.NotNil(t, rec, "the live key is tracked")
	require.NotEqual(t, keyStateDeleted, rec.State, "no tombstone for a key still live in Heron")
	require.Equal(t, keyStateActive, rec.State)
	keys, _ := inventory(t, e, nil, nil)
	require.NotEqual(t, "unmanaged", keys[created]["class"], "the engine's own key is not unmanaged")
	require.Equal(t, first, staticCreds(e, "app")["key_id"], "the role keeps its key")
	e.allowLive[created] = true // retired by the sweep of static keys no role holds, later
}

// Spec "Events, history and log lines": a rotation's undo that deletes the
// new key records the deletion three ways (tombstone, heron/key-delete
// event, event= log line).
func TestStaticRotation_UndoneKeyDeletionIsRecordedLikeAnyDeletion(t *testing.T) {
	events := &logical.MockEventSender{}
	logs := &syncBuffer{}
	e := newTestEnv(t, withEvents(events), withLogger(hclog.New(&hclog.LoggerOptions{Level: hclog.Info, Output: logs, JSONFormat: true})))
	e.configure("development")
	e.ok(logical.CreateOperation, "static-roles/app", map[string]interface{}{"environment": "development"})
	first := staticCreds(e, "app")["key_id"].(string)

	fs := &failPutKey{Storage: e.s, key: staticRoleStoragePrefix + "app", n: 1}
	e.s = fs
	resp, err := e.do(logical.UpdateOperation, "static-roles/app/rotate", nil)
	require.True(t, err != nil || resp.IsError(), "the rotation fails")

	var undone string
	for _, k := range e.srv.Keys() {
		if k.Deleted && strings.HasPrefix(k.Name, "vault-static-app-") {
			undone = k.ID
		}
	}
	require.NotEmpty(t, undone, "the undo deleted the new key")
	require.NotEqual(t, first, undone)
	rec, err := getKeyRecord(context.Background(), e.s, undone)
	require.NoError(t, err)
	require.NotNil(t, rec)
	require.Equal(t, keyStateDeleted, rec.State)
	require.Equal(t, reasonRollback, rec.Reason)
	require.Eventually(t, func() bool {
		events.Lock()
		defer events.Unlock()
		for _, ev := range events.Events {
			if string(ev.Type) == eventKeyDelete && ev.Event.Metadata.AsMap()["key_id"] == undone {
				return true
			}
		}
		return false
	}, 5*time.Second, 10*time.Millisecond, "a heron/key-delete event for the rolled-back key")
	var lines int
	for _, line := range strings.Split(logs.String(), "\n") {
		if strings.Contains(line, `"event":"`+eventKeyDelete+`"`) && strings.Contains(line, undone) {
			lines++
		}
	}
	require.Equal(t, 1, lines, "one event= log line for the rolled-back key")
}

// readFailStorage commits the next Put of key and reports an error, and
// fails the Gets of key that follow until the test heals it: a storage
// backend that timed out after a Raft commit and cannot read back yet.
type readFailStorage struct {
	logical.Storage
	mu       sync.Mutex
	key      string
	armed    bool
	readsBad bool
}

func (s *readFailStorage) Put(ctx context.Context, e *logical.StorageEntry) error {
	s.mu.Lock()
	fail := s.armed && e.Key == s.key
	if fail {
		s.armed, s.readsBad = false, true
	}
	s.mu.Unlock()
	if err := s.Storage.Put(ctx, e); err != nil || !fail {
		return err
	}
	return errors.New("injected storage failure after commit")
}

func (s *readFailStorage) Get(ctx context.Context, key string) (*logical.StorageEntry, error) {
	s.mu.Lock()
	bad := s.readsBad && key == s.key
	s.mu.Unlock()
	if bad {
		return nil, errors.New("injected storage read failure")
	}
	return s.Storage.Get(ctx, key)
}

func (s *readFailStorage) heal() { s.mu.Lock(); s.readsBad = false; s.mu.Unlock() }

// Invariant 1 (held by the static role): a role write that committed but
// reported an error, with storage unable to say what it holds, keeps the
// new key: not deleted in Heron, and static-creds serves a working key.
func TestStaticRotation_UnconfirmedRoleWriteKeepsTheNewKey(t *testing.T) {
	e := getTestBackend(t)
	e.configure("development")
	e.ok(logical.CreateOperation, "static-roles/app", map[string]interface{}{"environment": "development"})
	first := staticCreds(e, "app")["key_id"].(string)

	rs := &readFailStorage{Storage: e.s, key: staticRoleStoragePrefix + "app", armed: true}
	e.s = rs
	_, _ = e.do(logical.UpdateOperation, "static-roles/app/rotate", nil)
	rs.heal()

	created := newStaticKey(t, e, "app", first)
	require.True(t, heronKey(e, created).IsActive, "the new key is kept in Heron")
	creds := staticCreds(e, "app")
	require.Equal(t, created, creds["key_id"], "the stored role holds the new key")
	require.True(t, e.authenticates(creds["api_key"].(string)), "static-creds serves a working key")
}

// Invariant 1 (held by a static role): the pass replaces a static role's
// current key that Heron lists as inactive (deactivated by hand); the
// previous key keeps its overlap.
func TestStaticRotation_PassReplacesACurrentKeyDeactivatedByHand(t *testing.T) {
	e := getTestBackend(t)
	e.configure("development")
	e.ok(logical.CreateOperation, "static-roles/app", map[string]interface{}{"environment": "development", "overlap": "2h"})
	first := staticCreds(e, "app")["key_id"].(string)
	e.ok(logical.UpdateOperation, "static-roles/app/rotate", nil)
	second := staticCreds(e, "app")
	setActiveDirect(t, e, second["key_id"].(string), false)

	require.NoError(t, e.b.periodicFunc(context.Background(), &logical.Request{Storage: e.s}))

	creds := staticCreds(e, "app")
	require.NotEqual(t, second["key_id"], creds["key_id"], "the inactive key is replaced")
	require.True(t, e.authenticates(creds["api_key"].(string)), "static-creds serves a working key")
	require.Equal(t, first, creds["previous_key_id"], "the previous key keeps its overlap")
	require.True(t, heronKey(e, first).IsActive, "the previous key still works")
	rec, err := getTrackedKey(context.Background(), e.s, second["key_id"].(string))
	require.NoError(t, err)
	require.NotNil(t, rec)
	require.Equal(t, keyStateDeactivated, rec.State, "the replaced key is retained for deletion")
	require.False(t, rec.DeleteAfter.IsZero())
}

// static-creds tells a holder until when its key is sure to work (the next
// scheduled rotation plus overlap); a retired previous key's record says why
// it was deactivated; an unused_for that max_overlap always cuts short is
// accepted with a warning.
func TestStaticRole_HolderAndOperatorAreToldWhatToExpect(t *testing.T) {
	e := getTestBackend(t)
	e.configure("development")
	now := time.Now().Truncate(time.Second)
	e.atTime(now)
	resp := e.ok(logical.CreateOperation, "static-roles/app", map[string]interface{}{
		"environment": "development", "rotation_period": "720h", "overlap": "30s", "max_overlap": "1m", "unused_for": "1h",
	})
	require.NotNil(t, resp)
	require.Contains(t, strings.Join(resp.Warnings, " "), "unused_for (3600s) is longer than max_overlap (60s)")

	creds := e.ok(logical.ReadOperation, "static-creds/app", nil).Data
	require.Equal(t, formatTime(now.Add(720*time.Hour+30*time.Second)), creds["valid_until"])

	first := creds["key_id"].(string)
	e.ok(logical.UpdateOperation, "static-roles/app/rotate", nil)
	e.ok(logical.UpdateOperation, "static-roles/app/rotate", nil) // supersedes the first key
	rec := e.ok(logical.ReadOperation, "keys/"+first, nil).Data
	require.Equal(t, keyStateDeactivated, rec["state"])
	require.Equal(t, "superseded", rec["reason"])
	e.ok(logical.DeleteOperation, "static-roles/app", nil)
}

// Spec invariants 1 and 4: after a forced config write a rotation makes the
// unreachable key the previous one; once the overlap is over the cleanup
// pass neither takes its absence from the new admin key's list for "gone"
// nor its 404 for a deactivation: the key stays tracked while live.
func TestStaticOverlap_UnreachablePreviousKeyStaysTracked(t *testing.T) {
	e := getTestBackend(t)
	e.configure("development")
	e.ok(logical.CreateOperation, "static-roles/app", map[string]interface{}{
		"environment": "development", "overlap": "1h", "max_overlap": "1h",
	})
	id := staticCreds(e, "app")["key_id"].(string)

	foreign := e.srv.AddUser("development")
	e.adminKey["foreign-user"] = foreign
	e.ok(logical.UpdateOperation, "config/development", map[string]interface{}{"admin_api_key": foreign, "force": true})
	e.allowLive[id] = true

	t0 := time.Now()
	e.atTime(t0)
	e.ok(logical.UpdateOperation, "static-roles/app/rotate", nil)
	require.Equal(t, id, staticCreds(e, "app")["previous_key_id"])

	e.atTime(t0.Add(2 * time.Hour))
	_, err := e.do(logical.UpdateOperation, "tidy", nil)
	require.ErrorContains(t, err, "unreachable", "tidy reports the key it cannot retire")
	k := heronKey(e, id)
	require.True(t, k.IsActive && !k.Deleted, "precondition: the new admin key cannot touch the key")
	rec, err := getTrackedKey(context.Background(), e.s, id)
	require.NoError(t, err)
	require.NotNil(t, rec, "the previous static key is live in Heron: the cleanup pass must keep its record")
}

// Spec "static-roles" (max_overlap: deactivated regardless): while Heron's
// list fails, the previous key past max_overlap is still deactivated (that
// needs no list).
func TestStaticOverlap_MaxOverlapHoldsWhileTheListFails(t *testing.T) {
	e := getTestBackend(t)
	e.configure("development")
	e.ok(logical.CreateOperation, "static-roles/app", map[string]interface{}{"environment": "development", "overlap": "1h", "max_overlap": "2h"})
	a := staticCreds(e, "app")["key_id"].(string)
	t0 := time.Now()
	e.atTime(t0)
	e.ok(logical.UpdateOperation, "static-roles/app/rotate", nil)
	e.atTime(t0.Add(3 * time.Hour))
	e.srv.FailNext("GET", "/api/credentials/keys", 1000, herontest.FaultStatus503)
	_, err := e.do(logical.UpdateOperation, "tidy", nil)
	require.ErrorContains(t, err, "listing keys", "tidy reports the failed list")
	e.srv.ResetFaults()
	require.False(t, heronKey(e, a).IsActive, "past max_overlap the previous key is deactivated, list or no list")
	e.ok(logical.DeleteOperation, "static-roles/app", nil)
	e.atTime(t0.Add(100 * time.Hour))
	e.ok(logical.UpdateOperation, "tidy", nil)
}

// Spec "static-roles" (overlap): the current key is deleted by hand during
// an overlap and replaced by a rotation; the previous key, the only other one
// that works, keeps its overlap and stays the previous key.
func TestStaticRotation_ReplacingAVanishedKeyKeepsThePreviousOverlap(t *testing.T) {
	e := getTestBackend(t)
	e.configure("development")
	e.ok(logical.CreateOperation, "static-roles/app", map[string]interface{}{"environment": "development", "overlap": "1h"})
	a := staticCreds(e, "app")["key_id"].(string)
	e.ok(logical.UpdateOperation, "static-roles/app/rotate", nil)
	b := staticCreds(e, "app")["key_id"].(string)
	require.NoError(t, handClient(t, e, e.adminKey["development"]).DeleteKey(context.Background(), b))
	e.ok(logical.UpdateOperation, "tidy", nil) // reconcile: b is gone from Heron

	creds := staticCreds(e, "app")
	require.NotEqual(t, b, creds["key_id"], "a new key replaces the vanished one")
	require.Equal(t, a, creds["previous_key_id"], "the previous key keeps its overlap")
	require.True(t, heronKey(e, a).IsActive, "the previous key still works")
	e.ok(logical.DeleteOperation, "static-roles/app", nil)
	tidyAfterRetention(e)
}

// Spec invariant 3: static key names (vault-static-<role>-<unix_time>) have
// no random part, so after a lost answer the recovery never deletes a key of
// that name someone else made a moment before.
func TestStaticRotation_LostAnswerNeverDeletesASameNamedForeignKey(t *testing.T) {
	e := getTestBackend(t)
	e.configure("development")
	e.ok(logical.CreateOperation, "static-roles/app", map[string]interface{}{"environment": "development"})

	t1 := time.Now().Add(time.Hour).Truncate(time.Second)
	e.atTime(t1)
	other := createDirect(t, e, fmt.Sprintf("vault-static-app-%d", t1.Unix()))
	e.foreign[other] = true
	time.Sleep(50 * time.Millisecond) // strictly older than the rotation

	e.srv.FailNext("POST", "/api/credentials/keys", 1, herontest.FaultProcessThenDrop)
	e.ok(logical.UpdateOperation, "static-roles/app/rotate", nil)
	k := heronKey(e, other)
	require.True(t, k.IsActive && !k.Deleted, "the recovery after a lost answer must not delete a key of the same name it did not create")
}

// Spec invariant 3 and "Events, history and log lines": the key that appears
// under a lost static rotation's name is reported as an unconfirmed static
// key of the role (never deleted on a name match), and its event names
// static-creds/<role>.
func TestStaticRotation_LostAnswerKeyIsReportedAsTheRolesUnconfirmedKey(t *testing.T) {
	events := &logical.MockEventSender{}
	e := newTestEnv(t, withEvents(events))
	e.configure("development")
	e.ok(logical.CreateOperation, "static-roles/app", map[string]interface{}{"environment": "development"})

	e.srv.FailNext("POST", "/api/credentials/keys", 1, herontest.FaultProcessThenDrop)
	e.ok(logical.UpdateOperation, "static-roles/app/rotate", nil)

	ids, err := e.s.List(context.Background(), unconfirmedStoragePrefix)
	require.NoError(t, err)
	require.Len(t, ids, 1, "the lost answer's key is reported unconfirmed")
	lost := ids[0]
	u, err := getJSON[unconfirmedKey](context.Background(), e.s, unconfirmedStoragePrefix+lost, "")
	require.NoError(t, err)
	require.Equal(t, keyKindStatic, u.Kind)
	require.Equal(t, "app", u.Role)
	k := heronKey(e, lost)
	require.True(t, k.IsActive && !k.Deleted, "never deleted on a name match alone")

	require.Eventually(t, func() bool {
		events.Lock()
		defer events.Unlock()
		for _, ev := range events.Events {
			md := ev.Event.Metadata.AsMap()
			if md["key_id"] == lost && string(ev.Type) == eventKeyUnconfirmed {
				return md[logical.EventMetadataDataPath] == "static-creds/app"
			}
		}
		return false
	}, 10*time.Second, 10*time.Millisecond, "a heron/key-unconfirmed event with data_path static-creds/app")
}

// Spec "Events, history and log lines" (heron/static-rotate-fail): a static
// rotation that fails after Heron created the next key (storing the role
// fails, so the new key is deleted and the current key stays) sends one
// heron/static-rotate-fail, not only a failed POST does.
func TestStaticRotation_StorageFailureSendsAFailEvent(t *testing.T) {
	events := &logical.MockEventSender{}
	e := newTestEnv(t, withEvents(events))
	e.configure("development")
	e.ok(logical.CreateOperation, "static-roles/app", map[string]interface{}{"environment": "development"})
	cur := staticCreds(e, "app")["key_id"].(string)

	e.s = &failPutKey{Storage: e.s, key: staticRoleStoragePrefix + "app", n: 1}
	_, err := e.do(logical.UpdateOperation, "static-roles/app/rotate", nil)
	require.Error(t, err, "precondition: the rotation failed")
	require.Equal(t, cur, staticCreds(e, "app")["key_id"], "precondition: the current key stays")
	require.Len(t, liveIssued(e), 1, "precondition: the key the failed rotation made was deleted")

	e.b.eventSends.Wait()
	events.Lock()
	fails := 0
	for _, ev := range events.Events {
		if string(ev.Type) == eventStaticRotateFail {
			fails++
		}
	}
	events.Unlock()
	require.Equal(t, 1, fails, "a failed static rotation sends one heron/static-rotate-fail")
}

// Spec "Events, history and log lines" (one record of every change): when
// storing the role fails after the previous key's retirement at the end of
// its overlap, the next pass's retry sends no second
// heron/static-deactivate for the same deactivation.
func TestStaticOverlap_RetriedEndSendsOneDeactivateEvent(t *testing.T) {
	events := &logical.MockEventSender{}
	e := newTestEnv(t, withEvents(events))
	e.configure("development")
	e.ok(logical.CreateOperation, "static-roles/app", map[string]interface{}{
		"environment": "development", "overlap": "1h", "max_overlap": "1h",
	})
	prev := staticCreds(e, "app")["key_id"].(string)
	t0 := time.Now()
	e.atTime(t0)
	e.ok(logical.UpdateOperation, "static-roles/app/rotate", nil)

	fs := &failPutKey{Storage: e.s, key: staticRoleStoragePrefix + "app", n: 1}
	e.s = fs
	e.atTime(t0.Add(61 * time.Minute))
	_, err := e.do(logical.UpdateOperation, "tidy", nil)
	require.ErrorContains(t, err, "injected storage failure", "precondition: the role's write fails")
	require.False(t, heronKey(e, prev).IsActive, "precondition: deactivated at the end of its overlap")
	e.atTime(t0.Add(62 * time.Minute))
	e.ok(logical.UpdateOperation, "tidy", nil)
	require.NotContains(t, staticCreds(e, "app"), "previous_key_id")

	got := eventsFor(e, events, prev)
	require.Equal(t, 1, countOf(got, eventStaticDeactivate), "one deactivation, one event: events %v", got)
}

// Spec invariants 1 and 4: deleting a static role whose key the admin key
// cannot see (unreachable after a forced config write) never turns Heron's
// 404 into "gone": the key is live in Heron, so its record stays.
func TestStaticRoleDelete_KeepsAnUnreachableKeyTracked(t *testing.T) {
	e := getTestBackend(t)
	e.configure("development")
	e.ok(logical.CreateOperation, "static-roles/app", map[string]interface{}{"environment": "development"})
	id := staticCreds(e, "app")["key_id"].(string)

	foreign := e.srv.AddUser("development")
	e.adminKey["foreign-user"] = foreign
	e.ok(logical.UpdateOperation, "config/development", map[string]interface{}{"admin_api_key": foreign, "force": true})
	rec, err := getTrackedKey(context.Background(), e.s, id)
	require.NoError(t, err)
	require.True(t, rec.Unreachable, "precondition: the forced write marked the static key unreachable")
	e.allowLive[id] = true

	resp := e.ok(logical.DeleteOperation, "static-roles/app", nil)
	require.NotNil(t, resp)
	require.Contains(t, strings.Join(resp.Warnings, " "), "unreachable", "the delete says why the key is kept")
	k := heronKey(e, id)
	require.True(t, k.IsActive && !k.Deleted, "precondition: the new admin key cannot touch the key")
	rec, err = getTrackedKey(context.Background(), e.s, id)
	require.NoError(t, err)
	require.NotNil(t, rec, "the static key is live in Heron: a 404 from an admin key that cannot see it must not make its record a tombstone")
}

// Spec invariant 7 (static roles): the pass decides from a list asked before
// any lock that a static role's current key is inactive; under the role's
// lock it asks again, so a key an operator activated in between (a lifted
// quarantine) is neither replaced nor recorded as deactivated while live.
func TestStaticRole_PassReplacesOnlyAKeyStillInactive(t *testing.T) {
	e := newTestEnv(t, withoutLeftoverCheck())
	e.configure("development")
	e.ok(logical.CreateOperation, "static-roles/batch", map[string]interface{}{"environment": "development", "overlap": "1h"})
	first := e.ok(logical.ReadOperation, "static-creds/batch", nil)
	k1 := first.Data["key_id"].(string)
	token1 := first.Data["api_key"].(string)

	e.ok(logical.UpdateOperation, "keys/"+k1+"/deactivate", nil)
	// ... the periodic pass lists Heron here: k1 is inactive ...
	e.ok(logical.UpdateOperation, "keys/"+k1+"/activate", nil)
	require.True(t, e.authenticates(token1))
	// ... and then acts on the key it saw inactive: asked again under the
	// role's lock, Heron says it is active, so nothing is replaced.
	require.NoError(t, e.b.replaceInactiveStatic(context.Background(), e.s, "batch", k1))

	rec, err := getTrackedKey(context.Background(), e.s, k1)
	require.NoError(t, err)
	require.True(t, e.authenticates(token1))
	require.Equal(t, keyStateActive, rec.State, "key %s is live in Heron: its record must not say deactivated", k1)
	require.Equal(t, k1, staticCreds(e, "batch")["key_id"], "the activated key is still the role's current key")

	// Deactivated by hand again, and seen so by a fresh look: replaced, the
	// record deactivated.
	e.ok(logical.UpdateOperation, "keys/"+k1+"/deactivate", nil)
	require.NoError(t, e.b.replaceInactiveStatic(context.Background(), e.s, "batch", k1))
	require.NotEqual(t, k1, staticCreds(e, "batch")["key_id"])
	rec, err = getTrackedKey(context.Background(), e.s, k1)
	require.NoError(t, err)
	require.Equal(t, keyStateDeactivated, rec.State)
	require.False(t, e.authenticates(token1))
	e.atTime(time.Now().Add(2 * time.Hour))
	e.ok(logical.UpdateOperation, "tidy", nil)
	require.False(t, e.authenticates(token1), "no pass reactivates it")
}
