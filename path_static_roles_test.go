package heron

// static-roles/<name> handlers (path_static_roles.go): writes and deletes
// racing a rotation, adoption of an existing key, and the rotation job.

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/hashicorp/vault/sdk/logical"
	"github.com/stretchr/testify/require"

	"github.com/heron-vault/vault-plugin-secrets-heron/herontest"
)

// Spec invariants 1 and 7 (held by a static role, whatever runs at the same
// time): an update of a static role's settings racing a rotation re-reads
// the role under its lock, so the rotation's key stays the role's current
// key instead of being orphaned by a stale copy.
func TestStaticRoleUpdate_KeepsAConcurrentRotation(t *testing.T) {
	e := getTestBackend(t)
	e.configure("development")
	e.ok(logical.CreateOperation, "static-roles/app", map[string]interface{}{"environment": "development"})
	first := staticCreds(e, "app")["key_id"].(string)

	ps := &parkStorage{Storage: e.s}
	e.s = ps
	ps.arm(staticRoleStoragePrefix + "app")
	done := make(chan error, 1)
	go func() {
		resp, err := e.do(logical.UpdateOperation, "static-roles/app", map[string]interface{}{"overlap": "2h", "max_overlap": "2h"})
		if err == nil && resp != nil && resp.IsError() {
			err = resp.Error()
		}
		done <- err
	}()
	<-ps.reached
	rotated, err := e.b.rotateStatic(context.Background(), e.s, "app")
	require.NoError(t, err)
	close(ps.proceed)
	require.NoError(t, <-done)

	stored, err := getStaticRole(context.Background(), e.s, "app")
	require.NoError(t, err)
	require.NotEqual(t, first, rotated.KeyID)
	require.Equal(t, rotated.KeyID, stored.KeyID, "the update must not write back a stale copy: the rotation's key %s would be held by no role (current is %s)", rotated.KeyID, stored.KeyID)
}

// Spec "static-roles" (delete: current and previous keys deactivated at
// once) and invariant 7: a delete racing a rotation deactivates the key the
// rotation made current.
func TestStaticRoleDelete_DeactivatesAConcurrentRotationsKey(t *testing.T) {
	e := getTestBackend(t)
	e.configure("development")
	e.ok(logical.CreateOperation, "static-roles/app", map[string]interface{}{"environment": "development"})

	ps := &parkStorage{Storage: e.s}
	e.s = ps
	ps.arm(staticRoleStoragePrefix + "app")
	done := make(chan error, 1)
	go func() {
		resp, err := e.do(logical.DeleteOperation, "static-roles/app", nil)
		if err == nil && resp != nil && resp.IsError() {
			err = resp.Error()
		}
		done <- err
	}()
	<-ps.reached
	rotated, err := e.b.rotateStatic(context.Background(), e.s, "app")
	require.NoError(t, err)
	close(ps.proceed)
	require.NoError(t, <-done)

	r, err := getStaticRole(context.Background(), e.s, "app")
	require.NoError(t, err)
	require.Nil(t, r, "the role is deleted")
	require.False(t, heronKey(e, rotated.KeyID).IsActive, "the role is deleted, so its current key %s must be deactivated", rotated.KeyID)
}

// Spec "static-roles" (delete) and invariant 8: a delete whose key
// deactivation fails still removes the role's job from Vault's rotation
// manager (the role is gone either way).
func TestStaticRoleDelete_FailedDeactivationStillDeregistersTheJob(t *testing.T) {
	e := getTestBackend(t)
	view := useRotationManager(t, e)
	e.configure("development")
	e.ok(logical.CreateOperation, "static-roles/app", map[string]interface{}{"environment": "development"})
	require.True(t, view.hasJob("static-roles/app"), "precondition: the rotation manager runs the role's job")
	e.srv.FailNext("PUT", "/api/credentials/keys/", 20, herontest.FaultStatus503)
	resp := e.ok(logical.DeleteOperation, "static-roles/app", nil)
	require.NotEmpty(t, resp.Warnings)
	e.srv.ResetFaults()
	require.False(t, view.hasJob("static-roles/app"), "the deleted role's job is gone")
	e.ok(logical.UpdateOperation, "tidy", nil)
	tidyAfterRetention(e)
}

// Spec "static-creds" ("a failed rotation keeps the current key and
// retries"): an adoption whose immediate rotation fails is retried by the
// next pass, not a rotation_period later.
func TestStaticRoleAdoption_FailedImportRotationIsRetried(t *testing.T) {
	e := getTestBackend(t)
	e.ok(logical.CreateOperation, "config/development", map[string]interface{}{
		"admin_api_key": e.adminKey["development"], "base_url": e.srv.URL, "max_retries": 0, "rate_limit_per_minute": maxRateLimitPerMinute,
	})
	tok := e.srv.AddAdminKey("development")
	adopted, _ := e.srv.KeyByToken(tok)

	e.srv.FailNext("POST", "/api/credentials/keys", 3, herontest.FaultStatus503)
	resp := e.ok(logical.CreateOperation, "static-roles/app", map[string]interface{}{"environment": "development", "api_key": tok})
	require.NotNil(t, resp)
	require.Contains(t, strings.Join(resp.Warnings, " "), "the next pass retries")
	require.Equal(t, adopted.ID, staticCreds(e, "app")["key_id"])
	e.srv.ResetFaults()

	e.atTime(time.Now().Add(2 * time.Minute))
	req := &logical.Request{Operation: logical.RollbackOperation, Storage: e.s}
	require.NoError(t, e.b.periodicFunc(context.Background(), req))
	require.NotEqual(t, adopted.ID, staticCreds(e, "app")["key_id"], "the next pass retries the failed import rotation")
}

// Spec "static-roles" (api_key: found by its prefix, checked to
// authenticate) and invariant 3: a token of another Heron user whose 8-char
// prefix matches one key of this environment is refused, not adopted as
// that unrelated (customer's) key.
func TestStaticRoleAdoption_RefusesAnotherUsersPrefixTwin(t *testing.T) {
	e := getTestBackend(t)
	e.configure("development")

	devByPrefix := map[string][]string{keyPrefix(e.adminKey["development"]): {"admin"}}
	for i := 0; i < 400; i++ {
		tok := e.srv.AddAdminKey("development")
		k, _ := e.srv.KeyByToken(tok)
		e.foreign[k.ID] = true
		devByPrefix[tok[:8]] = append(devByPrefix[tok[:8]], k.ID)
	}
	var prodTok, twin string
	for i := 0; i < 100000 && prodTok == ""; i++ {
		tok := e.srv.AddAdminKey("production")
		k, _ := e.srv.KeyByToken(tok)
		e.foreign[k.ID] = true
		if ids := devByPrefix[tok[:8]]; len(ids) == 1 && ids[0] != "admin" {
			prodTok, twin = tok, ids[0]
		}
	}
	require.NotEmpty(t, prodTok, "precondition: a production key shares its prefix with exactly one development key")

	resp, err := e.do(logical.CreateOperation, "static-roles/app", map[string]interface{}{
		"environment": "development", "api_key": prodTok, "skip_import_rotation": true,
	})
	require.NoError(t, err)
	if resp == nil || !resp.IsError() {
		c := staticCreds(e, "app")
		t.Fatalf("adopted development key %s (a customer's key) with the token of production key %s; static-creds returns key_id=%v with that token",
			twin, func() string { k, _ := e.srv.KeyByToken(prodTok); return k.ID }(), c["key_id"])
	}
	r, err := getStaticRole(context.Background(), e.s, "app")
	require.NoError(t, err)
	require.Nil(t, r, "a refused adoption stores no role")
}

// Spec "static-roles" (api_key) and "inventory" (admin): the admin key of
// another config of the mount (same Heron user) is not adopted as an
// application's key.
func TestStaticRoleAdoption_RefusesAnotherConfigsAdminKey(t *testing.T) {
	e := getTestBackend(t)
	e.configure("development")
	e.adminKey["dev-batch"] = e.srv.AddAdminKey("development") // same Heron user
	e.configure("dev-batch")

	resp, err := e.do(logical.CreateOperation, "static-roles/app", map[string]interface{}{
		"environment": "development", "api_key": e.adminKey["dev-batch"], "skip_import_rotation": true,
	})
	require.NoError(t, err)
	require.True(t, resp != nil && resp.IsError(), "the admin key of config dev-batch must not be adopted by a static role: %v", resp)
	r, err := getStaticRole(context.Background(), e.s, "app")
	require.NoError(t, err)
	require.Nil(t, r, "a refused adoption stores no role")
}

// Spec invariant 1 (plugin crash): an adoption that stored the key's record
// but not the role (a crash between the two writes) can be retried: the
// record is taken over.
func TestStaticRoleAdoption_RetriedAfterAHalfDoneAdoption(t *testing.T) {
	e := getTestBackend(t)
	e.configure("development")
	c := handClient(t, e, e.adminKey["development"])
	k, err := c.CreateKey(context.Background(), "customer-app-key")
	require.NoError(t, err)
	// What the crashed adoption left: the record, no role.
	rec := staticKeyRecord(&staticRole{Name: "app", Environment: "development", RetiredKeyRetention: time.Hour}, k.ID, k.Name, k.TokenPrefix, time.Now())
	require.NoError(t, putTrackedKey(context.Background(), e.s, rec))

	e.ok(logical.CreateOperation, "static-roles/app", map[string]interface{}{
		"environment": "development", "api_key": k.Token, "skip_import_rotation": true,
	})
	require.Equal(t, k.ID, staticCreds(e, "app")["key_id"])
	e.ok(logical.DeleteOperation, "static-roles/app", nil)
	tidyAfterRetention(e)
}
