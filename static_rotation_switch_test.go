package heron

// A static rotation's switch to its new key (static_role.go,
// rotateStaticLocked): made only over the role it started from, as stored.

import (
	"strings"
	"testing"

	"github.com/hashicorp/vault/sdk/logical"
	"github.com/stretchr/testify/require"
)

// Spec invariants 1 and 7 (a second instance on the same storage): another
// instance deletes a static role while this instance's rotation of it is
// between its new key's creation and its switch. The rotation re-reads the
// stored role, finds it gone and takes its new key back out: the deleted
// role is not written back, and no key of it stays live.
func TestStaticRotationSwitch_RoleDeletedMeanwhileIsNotWrittenBack(t *testing.T) {
	var hs *holdRead
	e := newTestEnv(t, withStorage(func(s logical.Storage) logical.Storage { hs = &holdRead{Storage: s}; return hs }))
	e.configure("development")
	e.ok(logical.CreateOperation, "static-roles/app", map[string]interface{}{"environment": "development"})
	current := staticCreds(e, "app")["key_id"].(string)
	other := e.start()

	hs.arm(keyStoragePrefix+current, 0) // the rotation's read of the current key's record
	rotated := make(chan error, 1)
	go func() {
		resp, err := e.do(logical.UpdateOperation, "static-roles/app/rotate", nil)
		if err == nil && resp != nil && resp.IsError() {
			err = resp.Error()
		}
		rotated <- err
	}()
	<-hs.reached // the new key is created and recorded; the switch is next
	resp, err := mountDo(other, e.s, logical.DeleteOperation, "static-roles/app", nil)
	require.NoError(t, err)
	require.False(t, resp != nil && resp.IsError(), "%v", resp)
	close(hs.release)
	require.Error(t, <-rotated, "the role changed while the rotation ran")

	r, err := getStaticRole(t.Context(), e.s, "app")
	require.NoError(t, err)
	require.Nil(t, r, "the deleted role stays deleted")
	for _, k := range e.srv.Keys() {
		if strings.HasPrefix(k.Name, "vault-static-app-") && !k.Deleted && k.IsActive {
			t.Errorf("key %s (%q) of the deleted role is still active", k.ID, k.Name)
		}
	}
}

// Spec invariant 7 (lock order: the config's lock, then the role's): a
// static role deleted and created again in another environment while a
// rotation of it waited for its locks is not rotated under the first
// environment's config lock: the rotation is refused (retry), the new
// role's key stays as it is.
func TestStaticRotationSwitch_RoleMovedToAnotherEnvironmentIsNotRotated(t *testing.T) {
	var hs *holdRead
	e := newTestEnv(t, withStorage(func(s logical.Storage) logical.Storage { hs = &holdRead{Storage: s}; return hs }))
	e.configure("development")
	e.configure("production")
	e.ok(logical.CreateOperation, "static-roles/app", map[string]interface{}{"environment": "development"})

	hs.arm(staticRoleStoragePrefix+"app", 0) // the rotation's first read, before its locks
	rotated := make(chan error, 1)
	go func() {
		resp, err := e.do(logical.UpdateOperation, "static-roles/app/rotate", nil)
		if err == nil && resp != nil && resp.IsError() {
			err = resp.Error()
		}
		rotated <- err
	}()
	<-hs.reached
	e.ok(logical.DeleteOperation, "static-roles/app", nil)
	e.ok(logical.CreateOperation, "static-roles/app", map[string]interface{}{"environment": "production"})
	moved := staticCreds(e, "app")["key_id"].(string)
	close(hs.release)
	require.Error(t, <-rotated, "the role changed while the rotation waited")

	r, err := getStaticRole(t.Context(), e.s, "app")
	require.NoError(t, err)
	require.Equal(t, "production", r.Environment)
	require.Equal(t, moved, r.KeyID, "the role in its new environment is not rotated by the stale request")
	e.ok(logical.DeleteOperation, "static-roles/app", nil)
	tidyAfterRetention(e)
}
