package heron

import (
	"context"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/hashicorp/vault/sdk/logical"
	"github.com/stretchr/testify/require"

	"github.com/heron-vault/vault-plugin-secrets-heron/herontest"
)

// readLog records which key records were read and how often keys/ was
// listed.
type readLog struct {
	logical.Storage
	mu       sync.Mutex
	read     map[string]int
	keyLists int
}

func (s *readLog) Get(ctx context.Context, key string) (*logical.StorageEntry, error) {
	if id, ok := strings.CutPrefix(key, keyStoragePrefix); ok {
		s.mu.Lock()
		s.read[id]++
		s.mu.Unlock()
	}
	return s.Storage.Get(ctx, key)
}

func (s *readLog) List(ctx context.Context, prefix string) ([]string, error) {
	if prefix == keyStoragePrefix {
		s.mu.Lock()
		s.keyLists++
		s.mu.Unlock()
	}
	return s.Storage.List(ctx, prefix)
}

// The minute's pass lists every tracked key id and Heron's keys only every
// few passes (each costs about half a second at 100,000 keys), and still
// reads every record in turn: 5,000 records in shares of 1,000 are all read
// within 5 passes, with 2 lists of the ids and 1 of Heron. A pass that lists
// Heron (after the first) does nothing more of that kind.
func TestPeriodicPass_ListsEveryFewPassesAndSweepsEveryShare(t *testing.T) {
	rl := &readLog{read: map[string]int{}}
	e := newTestEnv(t, withStorage(func(s logical.Storage) logical.Storage { rl.Storage = s; return rl }))
	e.configure("development")
	ids := seedRecords(t, e.s, 5000, time.Now().Add(24*time.Hour))
	// The seeded keys are not in Heron: keep reconcile from judging them.
	e.srv.FailNext("GET", "/api/credentials/keys", 10000, herontest.FaultStatus503)
	lists := e.srv.CountRequests("GET", "/api/credentials/keys", "development")

	heronLists := func() int { return e.srv.CountRequests("GET", "/api/credentials/keys", "development") - lists }
	pass := func() {
		_ = e.b.periodicFunc(context.Background(), &logical.Request{Operation: logical.RollbackOperation, Storage: e.s})
	}
	pass()
	perList := heronLists()
	require.Positive(t, perList, "the first pass lists Heron")
	for range 4 {
		pass()
	}
	for _, id := range ids {
		require.Positive(t, rl.read[id], "record %s read within 5 passes", id)
	}
	require.Equal(t, 2, rl.keyLists, "the ids listed twice in 5 passes (passes 1 and 4)")
	require.Equal(t, perList, heronLists(), "Heron listed once in 5 passes")
	reads := func() int {
		rl.mu.Lock()
		defer rl.mu.Unlock()
		n := 0
		for _, c := range rl.read {
			n += c
		}
		return n
	}
	before, idLists := reads(), rl.keyLists
	pass() // the 6th lists Heron again, and nothing else: its list is its cost
	require.Equal(t, 2*perList, heronLists())
	require.Equal(t, before, reads(), "the pass that lists Heron reads no share of records")
	require.Equal(t, idLists, rl.keyLists, "nor lists the ids")
	e.srv.ResetFaults()
	for _, id := range ids {
		require.NoError(t, deleteTrackedKey(context.Background(), e.s, &trackedKey{KeyID: id, NoIndex: true}))
	}
}
