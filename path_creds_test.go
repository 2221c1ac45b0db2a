package heron

// Issuance (path_creds.go): creating and tracking a lease's key.

import (
	"context"
	"testing"

	"github.com/hashicorp/vault/sdk/logical"
	"github.com/stretchr/testify/require"

	"github.com/heron-vault/vault-plugin-secrets-heron/herontest"
)

// Spec invariant 1 (storage errors): the key record's write reports an
// error (committed or not) and the undo's DELETE fails too. No record may
// claim a key no lease holds: the record goes, the rollback deletes the key,
// and the failed issuance does not count against max_active_keys.
func TestCreds_FailedRecordWriteAndFailedUndoIsRolledBack(t *testing.T) {
	for _, committed := range []bool{false, true} {
		t.Run(map[bool]string{false: "write failed", true: "write committed then failed"}[committed], func(t *testing.T) {
			e := getTestBackend(t)
			e.configure("development")
			e.role("r", map[string]interface{}{"max_active_keys": 5})
			fs := &commitFailStorage{Storage: e.s, prefix: keyStoragePrefix, commit: committed}
			e.s = fs
			e.srv.FailNext("DELETE", "/api/credentials/keys/", 100, herontest.FaultStatus503)
			_, err := e.do(logical.ReadOperation, "creds/r", nil)
			require.Error(t, err)
			require.Len(t, liveIssued(e), 1)
			for _, k := range liveIssued(e) {
				rec, err := getTrackedKey(context.Background(), fs.Storage, k.ID)
				require.NoError(t, err)
				require.Nil(t, rec, "no record may claim a key no lease holds")
			}
			fs.off()
			e.srv.ResetFaults()
			rollback(t, e)
			require.Empty(t, liveIssued(e))
			n, err := countActiveForRole(context.Background(), fs, "r")
			require.NoError(t, err)
			require.Zero(t, n, "the failed issuance does not count against max_active_keys")
			closeWindow(e)
			rollback(t, e)
			require.Zero(t, walCount(t, e.b, fs))
		})
	}
}

// Spec "Upstream calls" and invariant 5: Heron's 401 for the admin key during
// issuance names the config to fix (config/development) and leaves no
// write-ahead record and no key.
func TestCreds_Admin401NamesTheConfigToFix(t *testing.T) {
	e := getTestBackend(t)
	e.configure("development")
	e.role("r", map[string]interface{}{})
	id := keyIDByToken(t, e, e.adminKey["development"])
	setActiveDirect(t, e, id, false)
	resp, err := e.do(logical.ReadOperation, "creds/r", nil)
	setActiveDirect(t, e, id, true)
	require.Error(t, err, "resp %v", resp)
	require.Contains(t, err.Error(), "config/development")
	require.Contains(t, err.Error(), "401")
	require.Zero(t, walCount(t, e.b, e.s))
	require.Empty(t, liveIssued(e))
}
