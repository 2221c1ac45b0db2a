package heron

// Issuance (path_creds.go): creating and tracking a lease's key.

import (
	"context"
	"net/http"
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

// The lease's TTL is asked of Vault while Heron creates the key, and only
// the record written after Heron's answer needs it. When Vault cannot give
// one (here a mount whose max TTL reads 0, which framework.CalculateTTL
// refuses), the issuance fails and the key it made is deleted at once: no
// key is left that nothing holds.
func TestIssue_LeaseTTLErrorAfterCreationDeletesTheKey(t *testing.T) {
	e := newTestEnv(t, withSystemView(&logical.StaticSystemView{DefaultLeaseTTLVal: testDefaultLeaseTTL}))
	e.configure("development")
	e.role("app", map[string]interface{}{"ttl": "10m"})
	e.srv.ResetRequests()
	_, err := e.do(logical.ReadOperation, "creds/app", nil)
	require.ErrorContains(t, err, "computing lease TTL")

	var creates, deletes int
	for _, r := range e.srv.Requests() {
		switch r.Method {
		case http.MethodPost:
			creates++
		case http.MethodDelete:
			deletes++
		}
	}
	require.Equal(t, 1, creates, "the TTL is computed beside the creation")
	require.Equal(t, 1, deletes, "the key nothing holds is deleted")
	list := e.ok(logical.ListOperation, "keys/", nil)
	require.Empty(t, list.Data["keys"], "nothing is tracked")
}
