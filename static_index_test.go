package heron

import (
	"context"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/hashicorp/vault/sdk/logical"
	"github.com/stretchr/testify/require"
)

// The periodic pass finds static roles due by their index (static_index.go):
// a pass with nothing due reads no static role, a role the index lacks is
// still found (the full sweep of each instance's first pass, hourly, tidy),
// overlap ends never wait behind a storm of rotations, and another instance
// on the same storage finds what the first one indexed.

// prefixCountStorage counts the storage reads (Get) per key prefix.
type prefixCountStorage struct {
	logical.Storage
	mu   sync.Mutex
	gets map[string]int
}

func (s *prefixCountStorage) Get(ctx context.Context, key string) (*logical.StorageEntry, error) {
	s.mu.Lock()
	if s.gets == nil {
		s.gets = map[string]int{}
	}
	prefix, _, _ := strings.Cut(key, "/")
	s.gets[prefix+"/"]++
	s.mu.Unlock()
	return s.Storage.Get(ctx, key)
}

func (s *prefixCountStorage) reset() {
	s.mu.Lock()
	s.gets = map[string]int{}
	s.mu.Unlock()
}

func (s *prefixCountStorage) count(prefix string) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.gets[prefix]
}

// seedStaticRoles stores n static roles of env straight into storage, as a
// version without the index left them (no index entry), each with a key
// set at keySetAt and rotating every period. Their keys are not in Heron:
// the pass judges them only when one comes due.
func seedStaticRoles(tb testing.TB, s logical.Storage, env string, n int, keySetAt time.Time, period time.Duration) []string {
	tb.Helper()
	names := make([]string, n)
	for i := range names {
		names[i] = fmt.Sprintf("seed-%s-%05d", env, i)
		r := &staticRole{Name: names[i], Environment: env, RotationPeriod: period, Overlap: time.Hour, MaxOverlap: time.Hour,
			UnusedFor: time.Hour, RetiredKeyRetention: time.Hour, KeyID: "seedkey-" + names[i], KeyName: "vault-static-" + names[i],
			TokenPrefix: "key_0000", LastRotated: keySetAt, KeySetAt: keySetAt, ScheduleSetAt: keySetAt}
		require.NoError(tb, putJSON(context.Background(), s, staticRoleStoragePrefix+r.Name, "static role", r))
	}
	return names
}

func (e *testEnv) pass() {
	e.t.Helper()
	require.NoError(e.t, e.b.periodicFunc(context.Background(), &logical.Request{Operation: logical.RollbackOperation, Storage: e.s}))
}

// staticKeyOf is the current key id of a static role.
func staticKeyOf(t *testing.T, e *testEnv, name string) string {
	t.Helper()
	r, err := getStaticRole(context.Background(), e.s, name)
	require.NoError(t, err)
	require.NotNil(t, r, "static role %s", name)
	return r.KeyID
}

// A pass with nothing due reads no static role, whatever their number; a
// role that comes due is found and rotated by the next pass, reading it
// alone.
func TestStaticIndex_PassWithNothingDueReadsNoRole(t *testing.T) {
	cs := &prefixCountStorage{}
	e := newTestEnv(t, withStorage(func(s logical.Storage) logical.Storage { cs.Storage = s; return cs }))
	e.configure("development")
	t0 := time.Now()
	seedStaticRoles(t, e.s, "development", 2000, t0, 720*time.Hour)
	e.ok(logical.CreateOperation, "static-roles/app", map[string]interface{}{"environment": "development", "rotation_period": "40m"})
	first := staticKeyOf(t, e, "app")

	e.atTime(t0.Add(time.Minute))
	e.pass() // the instance's first pass: the full sweep, which builds the index
	for _, at := range []time.Duration{2 * time.Minute, 10 * time.Minute, 39 * time.Minute} {
		e.atTime(t0.Add(at))
		cs.reset()
		e.pass()
		require.Zero(t, cs.count(staticRoleStoragePrefix), "a pass at +%s with nothing due reads no static role", at)
		require.Equal(t, first, staticKeyOf(t, e, "app"))
	}

	e.atTime(t0.Add(41 * time.Minute))
	cs.reset()
	e.pass()
	require.LessOrEqual(t, cs.count(staticRoleStoragePrefix), 6, "the pass read the due role, not the other 2,000")
	require.NotEqual(t, first, staticKeyOf(t, e, "app"), "the due role is rotated")

	// Rotated once: the next passes find nothing due.
	second := staticKeyOf(t, e, "app")
	e.atTime(t0.Add(42 * time.Minute))
	cs.reset()
	e.pass()
	require.Zero(t, cs.count(staticRoleStoragePrefix))
	require.Equal(t, second, staticKeyOf(t, e, "app"), "a schedule fires once")
	e.ok(logical.DeleteOperation, "static-roles/app", nil)
	e.ok(logical.UpdateOperation, "tidy", nil)
}

// A role stored without an index entry (a version without the index, a
// failed write) is still rotated at its time: by the first pass of an
// instance, and by the hourly sweep of one that is running.
func TestStaticIndex_RoleWithoutEntryIsStillRotated(t *testing.T) {
	e := getTestBackend(t)
	e.configure("development")
	t0 := time.Now()
	e.ok(logical.CreateOperation, "static-roles/app", map[string]interface{}{"environment": "development", "rotation_period": "2h"})
	first := staticKeyOf(t, e, "app")
	dropIndex := func() {
		n := 0
		entries, _, err := staticIndexEntries(context.Background(), e.s, t0, true)
		require.NoError(t, err)
		for _, es := range entries {
			for _, k := range es {
				require.NoError(t, e.s.Delete(context.Background(), k))
				n++
			}
		}
		require.Positive(t, n, "the role was indexed")
	}

	// A running instance: its view is built, the entry is lost; the next
	// passes before the sweep do not see the role, the hourly sweep does,
	// and puts its entry back.
	e.atTime(t0.Add(time.Minute))
	e.pass()
	dropIndex()
	e.atTime(t0.Add(2*time.Hour + time.Minute))
	e.pass()
	second := staticKeyOf(t, e, "app")
	require.NotEqual(t, first, second, "rotated at its time, without an index entry")
	entries, _, err := staticIndexEntries(context.Background(), e.s, t0, true)
	require.NoError(t, err)
	require.Len(t, entries["app"], 1, "indexed again")

	// A new instance on storage that has no index at all.
	dropIndex()
	e.restart(false)
	e.atTime(t0.Add(4*time.Hour + 2*time.Minute))
	e.pass()
	require.NotEqual(t, second, staticKeyOf(t, e, "app"), "rotated by the first pass of a new instance")
	e.ok(logical.DeleteOperation, "static-roles/app", nil)
}

// A storm of rotations due at once (more than one pass rotates) never
// delays another role's max_overlap: the overlap ends in the first pass,
// before any rotation; the storm is rotated over the next passes, each role
// once.
func TestStaticIndex_OverlapEndsNotDelayedByStorm(t *testing.T) {
	e := getTestBackend(t)
	e.configure("development")
	e.b.staticRotationsPerPass = 5
	const storm = 12
	for i := range storm {
		e.ok(logical.CreateOperation, fmt.Sprintf("static-roles/storm-%02d", i), map[string]interface{}{"environment": "development", "rotation_period": "1h"})
	}
	e.ok(logical.CreateOperation, "static-roles/victim", map[string]interface{}{
		"environment": "development", "rotation_period": "24h", "overlap": "10m", "max_overlap": "10m", "unused_for": "5m",
	})
	e.ok(logical.UpdateOperation, "rotate-role/victim", nil)
	r, err := getStaticRole(context.Background(), e.s, "victim")
	require.NoError(t, err)
	prev := r.PreviousKeyID
	require.NotEmpty(t, prev)
	t0 := r.PreviousSince

	before := map[string]string{}
	for i := range storm {
		name := fmt.Sprintf("storm-%02d", i)
		before[name] = staticKeyOf(t, e, name)
	}
	e.srv.ResetRequests()
	e.atTime(t0.Add(time.Hour + time.Minute))
	e.pass()

	k, ok := e.srv.Key(prev)
	require.True(t, ok)
	require.False(t, k.IsActive, "the victim's previous key is deactivated by the first pass")
	deactivatedAt, firstPost := -1, -1
	posts := 0
	for i, req := range e.srv.Requests() {
		switch {
		case req.Method == "PUT" && strings.Contains(req.Path, prev):
			deactivatedAt = i
		case req.Method == "POST":
			posts++
			if firstPost < 0 {
				firstPost = i
			}
		}
	}
	require.GreaterOrEqual(t, deactivatedAt, 0)
	require.Less(t, deactivatedAt, firstPost, "the overlap ends before the storm's rotations start")
	require.Equal(t, 5, posts, "a pass rotates at most staticRotationsPerPass roles")

	for range 3 {
		e.pass()
	}
	for name, key := range before {
		r, err := getStaticRole(context.Background(), e.s, name)
		require.NoError(t, err)
		require.NotEqual(t, key, r.KeyID, "%s rotated", name)
		require.Equal(t, key, r.PreviousKeyID, "%s rotated once", name)
	}
	require.Equal(t, storm, e.srv.CountRequests("POST", "/api/credentials/keys", "development"), "each role of the storm rotated exactly once")
	for name := range before {
		e.ok(logical.DeleteOperation, "static-roles/"+name, nil)
	}
	e.ok(logical.DeleteOperation, "static-roles/victim", nil)
}

// Another backend instance on the same storage (a reload, a failover)
// finds the roles due by the index the first one kept, including a role
// the first one rotated after the second's full sweep, and rotates each
// once, at its time.
func TestStaticIndex_NewInstanceFindsDueRoles(t *testing.T) {
	cs := &prefixCountStorage{}
	e := newTestEnv(t, withStorage(func(s logical.Storage) logical.Storage { cs.Storage = s; return cs }))
	e.configure("development")
	t0 := time.Now()
	seedStaticRoles(t, e.s, "development", 300, t0, 720*time.Hour)
	e.ok(logical.CreateOperation, "static-roles/app", map[string]interface{}{"environment": "development", "rotation_period": "30m"})
	e.ok(logical.CreateOperation, "static-roles/other", map[string]interface{}{"environment": "development", "rotation_period": "45m"})
	a := e.b
	a.now = func() time.Time { return t0.Add(time.Minute) }
	e.pass()

	// The second instance starts (the first keeps running: a reload) and
	// sweeps; then the first rotates app by hand.
	e.restart(true)
	b := e.b
	e.atTime(t0.Add(2 * time.Minute))
	e.pass()
	e.b = a
	a.now = func() time.Time { return t0.Add(3 * time.Minute) }
	e.ok(logical.UpdateOperation, "rotate-role/app", nil)
	byHand := staticKeyOf(t, e, "app")
	e.b = b

	// At app's original time: not due any more (rotated by hand).
	e.atTime(t0.Add(31 * time.Minute))
	e.pass()
	require.Equal(t, byHand, staticKeyOf(t, e, "app"), "a rotation by hand moved the schedule")

	// app, at its new time (set by the first instance's write): found
	// through the index, not a sweep.
	e.atTime(t0.Add(34 * time.Minute))
	cs.reset()
	e.pass()
	require.NotEqual(t, byHand, staticKeyOf(t, e, "app"), "rotated at the time the other instance's write indexed")
	require.LessOrEqual(t, cs.count(staticRoleStoragePrefix), 6, "found by the index, not by reading every role")

	// other, indexed by the first instance when it was created.
	otherKey := staticKeyOf(t, e, "other")
	e.atTime(t0.Add(44 * time.Minute))
	e.pass()
	require.Equal(t, otherKey, staticKeyOf(t, e, "other"))
	e.atTime(t0.Add(46 * time.Minute))
	cs.reset()
	e.pass()
	require.NotEqual(t, otherKey, staticKeyOf(t, e, "other"), "the second instance rotates a role the first indexed")
	require.LessOrEqual(t, cs.count(staticRoleStoragePrefix), 6)
	e.ok(logical.DeleteOperation, "static-roles/app", nil)
	e.ok(logical.DeleteOperation, "static-roles/other", nil)
}

// An entry its role does not show (left by a failed write, or by another
// instance) costs a read when it comes due; it is dropped once
// staticIndexGrace past, never earlier (another instance may be writing the
// role it was put for), and never makes the role rotate early. So is the
// entry of a role that is gone.
func TestStaticIndex_LeftoverEntriesAreDroppedAfterTheirGrace(t *testing.T) {
	cs := &prefixCountStorage{}
	e := newTestEnv(t, withStorage(func(s logical.Storage) logical.Storage { cs.Storage = s; return cs }))
	e.configure("development")
	t0 := time.Now()
	e.ok(logical.CreateOperation, "static-roles/app", map[string]interface{}{"environment": "development", "rotation_period": "1h"})
	first := staticKeyOf(t, e, "app")
	e.atTime(t0.Add(time.Minute))
	e.pass() // the full sweep
	leftover := staticIndexKey("app", t0.Add(10*time.Minute))
	ghost := staticIndexKey("ghost", t0.Add(10*time.Minute))
	for _, k := range []string{leftover, ghost} {
		require.NoError(t, e.s.Put(context.Background(), &logical.StorageEntry{Key: k}))
	}
	exists := func(k string) bool {
		entry, err := e.s.Get(context.Background(), k)
		require.NoError(t, err)
		return entry != nil
	}

	e.atTime(t0.Add(11 * time.Minute))
	cs.reset()
	e.pass()
	require.Equal(t, 2, cs.count(staticRoleStoragePrefix), "both due entries are read")
	require.True(t, exists(leftover), "kept within its grace")
	require.True(t, exists(ghost), "kept within its grace")
	require.Equal(t, first, staticKeyOf(t, e, "app"), "a leftover entry never makes a role rotate early")

	e.atTime(t0.Add(13 * time.Minute))
	e.pass()
	require.False(t, exists(leftover), "dropped once past its grace")
	require.False(t, exists(ghost), "dropped once past its grace")
	require.True(t, exists(staticIndexKey("app", staticRoleNext(t, e, "app"))), "the role's own entry stays")

	e.atTime(t0.Add(14 * time.Minute))
	cs.reset()
	e.pass()
	require.Zero(t, cs.count(staticRoleStoragePrefix))
	require.Equal(t, first, staticKeyOf(t, e, "app"))
	e.ok(logical.DeleteOperation, "static-roles/app", nil)
}

// staticRoleNext is the role's next event, as the index keeps it.
func staticRoleNext(t *testing.T, e *testEnv, name string) time.Time {
	t.Helper()
	r, err := getStaticRole(context.Background(), e.s, name)
	require.NoError(t, err)
	require.NotNil(t, r)
	return r.nextEvent(e.b.now())
}

// The scheduled rotations of one pass share one list of Heron's keys per
// environment (their write-ahead records' Existing), patched with the keys
// they create: a storm of 20 costs 20 POSTs and one list, not 20 lists more
// (each a request of the budget, and at 100,000 keys half a second).
func TestStaticIndex_StormSharesHeronsList(t *testing.T) {
	e := getTestBackend(t)
	e.configure("development")
	const storm = 20
	for i := range storm {
		e.ok(logical.CreateOperation, fmt.Sprintf("static-roles/storm-%02d", i), map[string]interface{}{"environment": "development", "rotation_period": "1h"})
	}
	before := e.srv.CountRequests("GET", "/api/credentials/keys", "development")
	posts := e.srv.CountRequests("POST", "/api/credentials/keys", "development")
	e.atTime(time.Now().Add(time.Hour + time.Minute))
	n, err := e.b.rotateDue(context.Background(), e.s)
	require.NoError(t, err)
	require.Equal(t, storm, n)
	require.Equal(t, storm, e.srv.CountRequests("POST", "/api/credentials/keys", "development")-posts)
	require.LessOrEqual(t, e.srv.CountRequests("GET", "/api/credentials/keys", "development")-before, 1, "one list for the storm")
	for i := range storm {
		e.ok(logical.DeleteOperation, fmt.Sprintf("static-roles/storm-%02d", i), nil)
	}
}
