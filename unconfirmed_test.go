package heron

import (
	"testing"

	"github.com/hashicorp/vault/sdk/logical"
	"github.com/stretchr/testify/require"
)

// Spec, Invariants 3: recovery by name never deletes a key it cannot prove
// its own. A finished creation of a name that is not unique whose record
// could not be deleted, then a crash before the pass removed that record:
// the next instance settles the record by name, and a customer's key of the
// same name created a second later looks exactly like the creation's. It is
// reported (inventory class unconfirmed), never deleted.
func TestRecovery_NonUniqueNameAfterCrashReportsInsteadOfDeleting(t *testing.T) {
	e := getTestBackend(t)
	e.configure("development")
	resp := e.ok(logical.CreateOperation, "roles/ci", map[string]interface{}{"environment": "development", "name_template": "ci-{{.RoleName}}"})
	require.NotNil(t, resp, "a template without a random part is accepted with a warning")
	require.Contains(t, resp.Warnings[0], "unconfirmed")

	ds := &prefixDeleteFailStorage{Storage: e.s, prefix: creatingStoragePrefix}
	e.s = ds
	lease := e.issue("ci")
	ds.off()
	e.s = ds.Storage
	require.Len(t, creationRecords(t, e.s), 1, "the finished creation's record could not be deleted")

	e.restart(true) // before any pass deleted the record
	customer := createDirect(t, e, "ci-ci")
	e.foreign[customer] = true
	closeWindow(e)
	e.ok(logical.UpdateOperation, "tidy", nil)

	k, _ := e.srv.Key(customer)
	require.True(t, k.IsActive && !k.Deleted, "the customer's key named ci-ci was deleted on a name match")
	require.Empty(t, creationRecords(t, e.s), "the record is settled")
	inv := e.ok(logical.ReadOperation, "inventory/development", nil).Data
	entry := inv["keys"].(map[string]interface{})[customer].(map[string]interface{})
	require.Equal(t, inventoryUnconfirmed, entry["class"], "reported as possibly the engine's")
	require.NoError(t, e.revoke(lease))
}

// A template with a random part makes unique names: no warning, and
// recovery by name may delete what it finds.
func TestRoleWrite_UniqueTemplateHasNoUnconfirmedWarning(t *testing.T) {
	e := getTestBackend(t)
	e.configure("development")
	resp := e.ok(logical.CreateOperation, "roles/app", map[string]interface{}{"environment": "development"})
	require.Nil(t, resp)
}
