package heron

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/hashicorp/vault/sdk/logical"
	"github.com/stretchr/testify/require"

	"github.com/heron-vault/vault-plugin-secrets-heron/herontest"
)

// The periodic pass runs every minute; on a mount with 100,000 tracked keys
// it must not read every record each time. These tests pin what it reads.

// seedRecords writes n tracked records of role r straight into storage, as
// n issuances would have left them (the keys themselves are not in Heron:
// the tests judge storage reads, and reconcile is kept out by the caller).
func seedRecords(t *testing.T, s logical.Storage, n int, expires time.Time) []string {
	t.Helper()
	ids := make([]string, n)
	for i := range ids {
		ids[i] = fmt.Sprintf("seed-%06d", i)
		rec := &trackedKey{KeyID: ids[i], KeyName: "vault-r-" + ids[i], Environment: "development", Role: "r",
			State: keyStateActive, Issued: expires.Add(-time.Hour), Expires: expires, NoIndex: true}
		require.NoError(t, putNewTrackedKey(context.Background(), s, rec))
	}
	return ids
}

func TestSweepShare_ReadsEveryRecordWithinACycle(t *testing.T) {
	b := backend()
	ids := make([]string, 2500)
	for i := range ids {
		ids[i] = fmt.Sprintf("k%05d", len(ids)-i) // not sorted, as List may answer
	}
	seen := map[string]int{}
	var sizes []int
	for range 3 {
		share := b.sweepShare(append([]string(nil), ids...), false)
		sizes = append(sizes, len(share))
		for _, id := range share {
			seen[id]++
		}
	}
	require.Equal(t, []int{1000, 1000, 500}, sizes)
	require.Len(t, seen, len(ids), "every record once per cycle")
	require.Len(t, b.sweepShare(append([]string(nil), ids...), false), 1000, "the next cycle starts over")

	// A cursor whose record is gone (deleted meanwhile) resumes after it.
	b.sweepCursor = "k00999x"
	share := b.sweepShare(append([]string(nil), ids...), false)
	require.Equal(t, "k01000", share[0])

	// At 100,000 records a pass reads a fortieth of them (four passes in
	// five take a share: all 40 within 50 passes); tidy reads all.
	big := make([]string, 100000)
	for i := range big {
		big[i] = fmt.Sprintf("b%06d", i)
	}
	require.Len(t, b.sweepShare(big, false), 2500)
	require.Len(t, b.sweepShare(big, true), 100000)
}

// A pass over 5,000 records reads one share of them, not all; a key that
// outlived its lease is still ended within the cycle.
func TestPeriodicPass_ReadsAShareOfTheRecords(t *testing.T) {
	var bs *benchStorage
	e := newTestEnv(t, withStorage(func(s logical.Storage) logical.Storage {
		bs = &benchStorage{Storage: s}
		return bs
	}))
	e.configure("development")
	now := time.Now()
	ids := seedRecords(t, e.s, 5000, now.Add(24*time.Hour))
	// One record outlived its lease (Vault lost it) long ago.
	overdue := ids[4321]
	rec, err := getTrackedKey(context.Background(), e.s, overdue)
	require.NoError(t, err)
	rec.Expires = now.Add(-3 * time.Hour)
	require.NoError(t, putTrackedKey(context.Background(), e.s, rec))
	// The seeded keys are not in Heron: keep reconcile from judging them.
	e.srv.FailNext("GET", "/api/credentials/keys", 1000, herontest.FaultStatus503)

	// The pass answers the injected list failure (on the passes that list
	// Heron: every passListEvery-th, the first included), and nothing else:
	// a storage error of the sweep would show here.
	pass := func() error {
		t.Helper()
		err := e.b.periodicFunc(context.Background(), &logical.Request{Operation: logical.RollbackOperation, Storage: e.s})
		if err != nil {
			require.ErrorContains(t, err, "listing keys: heron: GET /api/credentials/keys: 503")
			require.NotContains(t, err.Error(), "\n", "one error, the list's: %v", err)
		}
		return err
	}
	bs.reset()
	require.Error(t, pass(), "the first pass lists Heron")
	require.LessOrEqual(t, bs.gets.Load(), int64(1000+50), "one pass reads a share of the records, not all 5,000")

	found := false
	for range sweepSharesPerCycle {
		pass()
		r, err := getKeyRecord(context.Background(), e.s, overdue)
		require.NoError(t, err)
		if r != nil && (r.Pending != "" || r.State == keyStateDeleted) {
			found = true
			break
		}
	}
	require.True(t, found, "the overdue key is handed to the cleanup pass within one cycle")
	e.srv.ResetFaults()
	for _, id := range ids {
		require.NoError(t, deleteTrackedKey(context.Background(), e.s, &trackedKey{KeyID: id, NoIndex: true}))
	}
}

// Paging through keys/ lists the records' ids once for the whole listing,
// not once per page, and still returns every key exactly once.
func TestKeysPaging_ListsTheIDsOncePerListing(t *testing.T) {
	var bs *benchStorage
	e := newTestEnv(t, withStorage(func(s logical.Storage) logical.Storage {
		bs = &benchStorage{Storage: s}
		return bs
	}))
	ids := seedRecords(t, e.s, 2500, time.Now().Add(time.Hour))
	bs.reset()
	seen := map[string]bool{}
	after, pages := "", 0
	for {
		data := map[string]interface{}{"limit": 1000}
		if after != "" {
			data["after"] = after
		}
		resp := e.ok(logical.ListOperation, "keys/", data)
		keys, _ := resp.Data["keys"].([]string)
		if len(keys) == 0 {
			break
		}
		pages++
		for _, k := range keys {
			require.False(t, seen[k], "key %s listed twice", k)
			seen[k] = true
		}
		after = keys[len(keys)-1]
	}
	require.Equal(t, 3, pages)
	require.Len(t, seen, len(ids))
	require.EqualValues(t, 1, bs.lists.Load(), "one storage list for the whole listing")
	for _, id := range ids {
		require.NoError(t, deleteTrackedKey(context.Background(), e.s, &trackedKey{KeyID: id, NoIndex: true}))
	}
}
