package heron

// Recovery by name (wal.go): the rollback of a creation whose outcome was
// unknown takes only keys of the record's name created inside its window,
// and watches for a late key until that window closes.

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/hashicorp/vault/sdk/framework"
	"github.com/hashicorp/vault/sdk/logical"
	"github.com/stretchr/testify/require"

	"github.com/heron-vault/vault-plugin-secrets-heron/heronapi"
)

// Spec invariant 3 (recovery by name never touches a key the engine did not
// create for that very record): a write-ahead record left by an earlier
// version (Vault's own write-ahead records, no pre-creation list) names a
// key the customer also named, and the customer's key was created before
// the record's window opened: the rollback never deletes it.
func TestRecoveryByName_KeyCreatedBeforeTheWindowIsNeverTaken(t *testing.T) {
	e := getTestBackend(t)
	e.configure("development")
	customers := createDirect(t, e, "ci-ci")
	e.foreign[customers] = true
	entry := walKeyEntry{Environment: "development", Role: "ci", KeyName: "ci-ci", Since: time.Now().Add(time.Minute)}
	_, err := framework.PutWAL(context.Background(), e.s, walKindKey, entry)
	require.NoError(t, err)

	closeWindow(e)
	e.b.windowNow = func() time.Time { return time.Now().Add(time.Minute + lateKeyWindow + time.Minute) }
	e.ok(logical.UpdateOperation, "tidy", nil)
	k := heronKey(e, customers)
	require.False(t, k.Deleted, "the customer's key, older than the record's window, is not the record's")
	require.True(t, k.IsActive)
}

// Spec invariants 1 and 3 (a lost answer; a key may appear after the lookup
// that found nothing): an admin key rotation's first POST lost its answer
// and the lookup found nothing, the second POST succeeded. The creation
// record keeps watching the name for the first POST's key until the late-key
// window closes (it does not name the second key as its only one), so a key
// that appears after the second POST is still reported.
func TestRecoveryByName_RotationAfterALostAnswerWatchesTheWholeWindow(t *testing.T) {
	e := getTestBackend(t)
	e.configure("development")
	s := scripted(e)
	s.create = func(ctx context.Context, name string) (*heronapi.Key, error) {
		s.mu.Lock()
		s.create = nil
		s.mu.Unlock()
		return nil, fmt.Errorf("%w: the gateway timed out", heronapi.ErrOutcomeUnknown)
	}
	resp := e.ok(logical.UpdateOperation, "config/development/rotate", nil)
	newID := resp.Data["admin_key_id"].(string)
	name := heronKey(e, newID).Name

	// Past walRollbackMinAge, inside the late-key window: the record stays.
	e.b.windowNow = func() time.Time { return time.Now().Add(3 * time.Minute) }
	e.b.forgetLists()
	e.ok(logical.UpdateOperation, "tidy", nil)
	require.NotEmpty(t, creationRecords(t, e.s), "the record watches the name until its window closes")

	// The first POST's key shows up late.
	cfg, err := getConfig(context.Background(), e.s, "development")
	require.NoError(t, err)
	lateKey, err := handClient(t, e, cfg.AdminAPIKey).CreateKey(context.Background(), name)
	require.NoError(t, err)
	late := lateKey.ID
	closeWindow(e)
	e.b.forgetLists()
	e.ok(logical.UpdateOperation, "tidy", nil)
	unconfirmed, err := unconfirmedKeys(context.Background(), e.s)
	require.NoError(t, err)
	require.True(t, unconfirmed[late], "the late key of the lost answer is reported (unconfirmed)")
	require.Empty(t, creationRecords(t, e.s))
	// The operator, told of it, deletes it (the leftover check knows no
	// unconfirmed admin-named key).
	require.NoError(t, handClient(t, e, cfg.AdminAPIKey).DeleteKey(context.Background(), late))
}
