package heron

// The end of a static role's overlap (static_role.go, settleOverlaps and
// finishOverlap): the previous key is retired once unused since it stopped
// being current, or at max_overlap, decided under the role's lock.

import (
	"context"
	"testing"
	"time"

	"github.com/hashicorp/vault/sdk/logical"
	"github.com/stretchr/testify/require"
)

// Spec "static-roles" (max_overlap, unused_for: never used counts as unused
// since it stopped being current): a key used while it was current, long
// before the rotation, is not "unused for unused_for" a few minutes after
// the rotation: its idle time counts from the rotation, not its last use.
func TestStaticOverlapEnd_UseBeforeTheRotationDoesNotCountAsIdle(t *testing.T) {
	e := getTestBackend(t)
	e.configure("development")
	t0 := time.Now()
	e.atTime(t0)
	e.ok(logical.CreateOperation, "static-roles/app", map[string]interface{}{"environment": "development",
		"rotation_period": "720h", "overlap": "10m", "max_overlap": "24h", "unused_for": "1h", "retired_key_retention": "1h"})
	creds := staticCreds(e, "app")
	prev := creds["key_id"].(string)
	require.True(t, e.authenticates(creds["api_key"].(string)), "used now, while current")

	e.atTime(t0.Add(2 * time.Hour)) // rotated two hours after its last use
	e.ok(logical.UpdateOperation, "static-roles/app/rotate", nil)
	e.atTime(t0.Add(2*time.Hour + 15*time.Minute)) // past the overlap, 15 minutes idle since
	e.ok(logical.UpdateOperation, "tidy", nil)
	require.True(t, heronKey(e, prev).IsActive, "idle for 15 minutes since it stopped being current: unused_for is 1h")
	e.atTime(t0.Add(3*time.Hour + 5*time.Minute))
	e.ok(logical.UpdateOperation, "tidy", nil)
	require.False(t, heronKey(e, prev).IsActive, "retired once unused for unused_for since the rotation")
	e.ok(logical.DeleteOperation, "static-roles/app", nil)
	tidyAfterRetention(e)
}

// Spec invariant 7 (the periodic pass and a rotation at the same time): a
// rotation lands after the pass read the role and decided its previous key's
// overlap is over. The pass re-reads the role under its lock: the previous
// key it decided about is gone (retired by the rotation as superseded), and
// the new previous key keeps its overlap; the role still names it.
func TestStaticOverlapEnd_RotationMeanwhileKeepsTheNewPreviousKey(t *testing.T) {
	var hs *holdRead
	e := newTestEnv(t, withStorage(func(s logical.Storage) logical.Storage { hs = &holdRead{Storage: s}; return hs }))
	e.configure("development")
	t0 := time.Now()
	e.atTime(t0)
	e.ok(logical.CreateOperation, "static-roles/app", map[string]interface{}{"environment": "development",
		"rotation_period": "720h", "overlap": "10m", "max_overlap": "1h", "unused_for": "24h", "retired_key_retention": "1h"})
	e.atTime(t0.Add(time.Minute))
	e.ok(logical.UpdateOperation, "static-roles/app/rotate", nil)
	middle := staticCreds(e, "app")["key_id"].(string)
	e.atTime(t0.Add(2 * time.Hour)) // the first key's max_overlap is over

	// The pass reads the role once outside its lock (the scan of static
	// roles it decides overlap ends from), then again under the lock in
	// finishOverlap: held after the first.
	hs.arm(staticRoleStoragePrefix+"app", 0)
	tidied := make(chan error, 1)
	go func() {
		_, err := e.do(logical.UpdateOperation, "tidy", nil)
		tidied <- err
	}()
	<-hs.reached
	e.ok(logical.UpdateOperation, "static-roles/app/rotate", nil)
	close(hs.release)
	require.NoError(t, <-tidied)

	r, err := getStaticRole(context.Background(), e.s, "app")
	require.NoError(t, err)
	require.Equal(t, middle, r.PreviousKeyID, "the key the rotation made previous keeps its overlap")
	require.True(t, heronKey(e, middle).IsActive)
	e.ok(logical.DeleteOperation, "static-roles/app", nil)
	tidyAfterRetention(e)
}

// Spec invariant 7 (static roles; the pass and a rotation at the same time):
// the pass saw the role's current key inactive in Heron (deactivated by
// hand), and a rotation replaced that key before the pass took the role's
// lock. The pass re-reads the role under the lock and does not rotate again
// (which would cut the overlap of the key that rotation made previous).
func TestStaticOverlapEnd_KeyReplacedMeanwhileIsNotReplacedTwice(t *testing.T) {
	var hs *holdRead
	e := newTestEnv(t, withStorage(func(s logical.Storage) logical.Storage { hs = &holdRead{Storage: s}; return hs }))
	e.configure("development")
	e.ok(logical.CreateOperation, "static-roles/app", map[string]interface{}{"environment": "development"})
	old := staticCreds(e, "app")["key_id"].(string)
	setActiveDirect(t, e, old, false)

	// The pass reads the role once in its scan of static roles; held at the
	// second, replaceInactiveStatic's first read (before the role's lock).
	hs.arm(staticRoleStoragePrefix+"app", 1)
	tidied := make(chan error, 1)
	go func() {
		_, err := e.do(logical.UpdateOperation, "tidy", nil)
		tidied <- err
	}()
	<-hs.reached
	e.ok(logical.UpdateOperation, "static-roles/app/rotate", nil)
	replaced := staticCreds(e, "app")["key_id"].(string)
	close(hs.release)
	require.NoError(t, <-tidied)

	r, err := getStaticRole(context.Background(), e.s, "app")
	require.NoError(t, err)
	require.Equal(t, replaced, r.KeyID, "the key the rotation made current stays current")
	require.Equal(t, old, r.PreviousKeyID)
	e.ok(logical.DeleteOperation, "static-roles/app", nil)
	tidyAfterRetention(e)
}
