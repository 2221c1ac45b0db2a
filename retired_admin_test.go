package heron

import (
	"context"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/hashicorp/vault/sdk/logical"
	"github.com/stretchr/testify/require"
)

// onFirstWrite runs hook once, before (or with after, just after) the
// first storage write whose key has one of the prefixes: the moment another
// actor can act between a reader's read and its write, or right after it.
type onFirstWrite struct {
	logical.Storage
	mu       sync.Mutex
	prefixes []string
	after    bool
	hook     func()
}

func (s *onFirstWrite) Put(ctx context.Context, e *logical.StorageEntry) error {
	s.mu.Lock()
	var hook func()
	for _, p := range s.prefixes {
		if s.hook != nil && strings.HasPrefix(e.Key, p) {
			hook, s.hook = s.hook, nil
			break
		}
	}
	s.mu.Unlock()
	if hook == nil {
		return s.Storage.Put(ctx, e)
	}
	if !s.after {
		hook()
		return s.Storage.Put(ctx, e)
	}
	err := s.Storage.Put(ctx, e)
	hook()
	return err
}

// Spec, Invariants 1 and 7, and config/<environment>/rotate ("at no point
// can a failure leave the engine without a working stored key"): the old
// instance of a reload, finishing its cleanup pass, deletes a rotated-out
// admin key past retention while the new instance rotates. The pass records
// that in the key's own record, never by writing back the config it read,
// so the new instance's rotation (its new key, the key it retired) stands.
func TestRetiredAdminKeys_PassNeverWritesBackTheConfigOverARotation(t *testing.T) {
	e := getTestBackend(t)
	e.configure("development")
	e.ok(logical.UpdateOperation, "config/development", map[string]interface{}{"old_key_retention": "1h"})
	clock := time.Now().UTC()
	at := func(b *heronBackend) { b.now = func() time.Time { return clock } }
	old := e.b
	at(old)

	e.ok(logical.UpdateOperation, "config/development/rotate", nil) // K0 -> K1, K0 retired
	first, err := getConfig(context.Background(), e.s, "development")
	require.NoError(t, err)
	require.Len(t, first.RetiredKeys, 1)
	k0 := first.RetiredKeys[0].KeyID
	require.True(t, first.RetiredKeys[0].Deactivated)

	clock = clock.Add(2 * time.Hour) // K0's retention is over
	newer := e.start()               // a reload: the new instance on the same storage
	at(newer)
	var rotateErr error
	var rotated *heronConfig
	st := &onFirstWrite{Storage: e.s, prefixes: []string{configStoragePrefix, retiredProgressPrefix}, hook: func() {
		// Between the old pass's decision and its write: the new
		// instance rotates K1 -> K2.
		rotated, _, rotateErr = newer.rotateAdminKey(context.Background(), e.s, "development")
	}}
	_, err = old.cleanup(context.Background(), st, false)
	require.NoError(t, err)
	require.Nil(t, st.hook, "the pass wrote something after deciding")
	require.NoError(t, rotateErr)

	stored, err := getConfig(context.Background(), e.s, "development")
	require.NoError(t, err)
	require.Equal(t, rotated.AdminKeyID, stored.AdminKeyID, "the new instance's rotated-in admin key is the stored one")
	require.True(t, e.authenticates(stored.AdminAPIKey), "the stored admin key works")
	require.NotNil(t, stored.retired(first.AdminKeyID), "the key the new instance retired (K1) is still retired")
	require.Nil(t, stored.retired(k0), "K0, deleted by the old pass, is no longer retired")
	k, _ := e.srv.Key(k0)
	require.True(t, k.Deleted, "K0 is deleted in Heron")

	// The next config write folds the progress records in: none is left
	// for a key the config no longer retires.
	e.b = newer
	e.ok(logical.UpdateOperation, "config/development", map[string]interface{}{"max_retries": 2})
	left, err := e.s.List(context.Background(), retiredProgressPrefix+"development/")
	require.NoError(t, err)
	require.NotContains(t, left, k0)
}

// Spec, Invariant 1 and config/<environment>/rotate ("never leave a created
// key untracked"): two instances rotate at once and the later write of the
// config lands over the earlier one's switch (no compare-and-swap in
// Vault's storage). The earlier one's new admin key is in no config: its
// creation record, kept until the pass confirms it, has the rollback delete
// it.
func TestRotate_KeyOfAnOverwrittenSwitchIsRolledBack(t *testing.T) {
	e := getTestBackend(t)
	e.configure("development")
	older := e.b
	newer := e.start()
	before, err := getConfig(context.Background(), e.s, "development")
	require.NoError(t, err)

	// The older instance rotates; just after its switch the newer one
	// writes the config it had read before (as a write of its own landing
	// late would): the older one's new key is in no config.
	lost := ""
	st := &onFirstWrite{Storage: e.s, prefixes: []string{configStoragePrefix}, after: true, hook: func() {
		mid, err := getConfig(context.Background(), e.s, "development")
		require.NoError(t, err)
		lost = mid.AdminKeyID
		require.NoError(t, putConfig(context.Background(), e.s, before))
	}}
	_, _, err = older.rotateAdminKey(context.Background(), st, "development")
	require.NoError(t, err)
	require.NotEqual(t, before.AdminKeyID, lost)
	old, _ := e.srv.Key(before.AdminKeyID)
	require.True(t, old.IsActive, "the old key, the stored one again, is not deactivated by the rotation that lost")

	// Young, the record waits: the overwriting write may still be on its way.
	pass := &logical.Request{Operation: logical.RollbackOperation, Storage: e.s}
	require.NoError(t, older.periodicFunc(context.Background(), pass))
	k, _ := e.srv.Key(lost)
	require.False(t, k.Deleted, "judged only once walRollbackMinAge old")

	for _, b := range []*heronBackend{older, newer} {
		b.windowNow = func() time.Time { return time.Now().Add(walRollbackMinAge + time.Minute) }
	}
	require.NoError(t, older.periodicFunc(context.Background(), pass))
	k, _ = e.srv.Key(lost)
	require.True(t, k.Deleted, "the key of the overwritten switch, in no config, is deleted")
	require.Zero(t, walCount(t, older, e.s), "its record is settled")
	require.True(t, e.authenticates(before.AdminAPIKey), "the stored admin key still works")
}
