package heron

// Settling a creation record (wal_slots.go, settleCreation): storage has no
// compare-and-delete, so the record is read again before it is deleted.

import (
	"context"
	"sync"
	"testing"
	"time"

	"github.com/hashicorp/vault/sdk/logical"
	"github.com/stretchr/testify/require"
)

// rewriteOnReread writes next into path just before the second read of path
// returns: the record's writer put a new creation into the slot while a
// settle was working on the old one.
type rewriteOnReread struct {
	logical.Storage
	mu    sync.Mutex
	path  string
	reads int
	next  *creationRecord
}

func (s *rewriteOnReread) Get(ctx context.Context, key string) (*logical.StorageEntry, error) {
	s.mu.Lock()
	rewrite := false
	if key == s.path {
		s.reads++
		rewrite = s.reads == 2
	}
	s.mu.Unlock()
	if rewrite {
		if err := putCreation(ctx, s.Storage, s.path, s.next.Kind, &s.next.Entry); err != nil {
			return nil, err
		}
	}
	return s.Storage.Get(ctx, key)
}

// Spec invariants 1 and 7 (a second instance on the same storage, at any
// storage operation): a settle that finished with one creation record never
// deletes the record its writer put into the same slot meanwhile; that
// creation, whose key may be live and untracked, is rolled back on its own.
// The new record differs in its window's start, its name, or both (a role
// with a constant name creates the same name again; two creations can start
// in the same clock tick).
func TestSettleCreation_LeavesARecordRewrittenWhileItSettled(t *testing.T) {
	since := time.Now().Add(-10 * time.Minute)
	t.Run("another name, later", func(t *testing.T) { settleMeetsRewrite(t, since, "vault-r-again", time.Now()) })
	t.Run("the same name, later", func(t *testing.T) { settleMeetsRewrite(t, since, "vault-r-finished", time.Now()) })
	t.Run("another name, same start", func(t *testing.T) { settleMeetsRewrite(t, since, "vault-r-again", since) })
}

func settleMeetsRewrite(t *testing.T, since time.Time, againName string, againSince time.Time) {
	e := getTestBackend(t)
	e.configure("development")
	ctx := context.Background()
	path := creatingStoragePrefix + "another-instance.0"
	finished := &walKeyEntry{Environment: "development", Role: "r", KeyName: "vault-r-finished", Since: since}
	require.NoError(t, putCreation(ctx, e.s, path, walKindKey, finished))
	again := &creationRecord{Kind: walKindKey, Entry: walKeyEntry{Environment: "development", Role: "r", KeyName: againName, Since: againSince}}
	rs := &rewriteOnReread{Storage: e.s, path: path, next: again}

	ok, err := e.b.settleCreation(ctx, rs, path, "", 0)
	require.NoError(t, err)
	require.False(t, ok, "the record read again is another creation's: not settled")
	rec, err := getJSON[creationRecord](ctx, e.s, path, "creation record")
	require.NoError(t, err)
	require.NotNil(t, rec, "the new creation's record must stay")
	require.Equal(t, againName, rec.Entry.KeyName)
	require.True(t, rec.Entry.Since.Equal(againSince))
}

// Spec invariant 7 (a config write or delete runs at the same time as
// everything else): settling one environment's creation records (a config
// being deleted or given a new admin key, under that config's lock) leaves
// every other environment's records alone: those are settled under their
// own config's lock, by the pass.
func TestSettleCreation_OneEnvironmentsSettleLeavesOtherEnvironments(t *testing.T) {
	e := getTestBackend(t)
	e.configure("development")
	e.configure("production")
	ctx := context.Background()
	path := creatingStoragePrefix + "another-instance.0"
	old := &walKeyEntry{Environment: "production", Role: "r", KeyName: "vault-r-prod", Since: time.Now().Add(-10 * time.Minute)}
	require.NoError(t, putCreation(ctx, e.s, path, walKindKey, old))

	settled, _, err := e.b.settleCreations(ctx, e.s, "development", walRollbackMinAge)
	require.NoError(t, err)
	require.Zero(t, settled)
	require.Equal(t, []string{"another-instance.0"}, creationRecords(t, e.s), "production's record is production's to settle")

	settled, _, err = e.b.settleCreations(ctx, e.s, "production", walRollbackMinAge)
	require.NoError(t, err)
	require.Equal(t, 1, settled)
	require.Empty(t, creationRecords(t, e.s))
}

// settledAfterList deletes one record right after the first list of
// creation records: another instance settled it between this pass's list
// and its read.
type settledAfterList struct {
	logical.Storage
	once sync.Once
	path string
}

func (s *settledAfterList) List(ctx context.Context, prefix string) ([]string, error) {
	out, err := s.Storage.List(ctx, prefix)
	if err == nil && prefix == creatingStoragePrefix {
		s.once.Do(func() { err = s.Storage.Delete(ctx, s.path) })
	}
	return out, err
}

// Spec invariant 7 (a second instance on the same storage): a creation
// record of this instance's held slot that another instance settled (and
// deleted) after this pass listed it is settled here too: counted, and the
// slot released rather than held for ever.
func TestSettleCreation_RecordAnotherInstanceSettledCountsAsSettled(t *testing.T) {
	e := getTestBackend(t)
	e.configure("development")
	ctx := context.Background()
	path := e.b.slots.take("development", time.Now())
	entry := &walKeyEntry{Environment: "development", Role: "r", KeyName: "vault-r-held", Since: time.Now()}
	require.NoError(t, putCreation(ctx, e.s, path, walKindKey, entry))
	e.b.slots.finish(path, true) // outcome unknown: held for the rollback

	settled, pending, err := e.b.settleCreations(ctx, &settledAfterList{Storage: e.s, path: path}, "", walRollbackMinAge)
	require.NoError(t, err)
	require.Equal(t, 1, settled)
	require.Zero(t, pending)
	e.b.slots.mu.Lock()
	_, still := e.b.slots.state[path]
	e.b.slots.mu.Unlock()
	require.False(t, still, "the slot is released")
}
