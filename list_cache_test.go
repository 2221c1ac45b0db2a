package heron

import (
	"context"
	"net/http"
	"slices"
	"testing"
	"time"

	"github.com/hashicorp/vault/sdk/logical"
	"github.com/stretchr/testify/require"

	"github.com/heron-vault/vault-plugin-secrets-heron/heronapi"
)

// listed reports whether id is in keys, and whether it is active there.
func listed(keys []heronapi.Key, id string) (in, active bool) {
	i := slices.IndexFunc(keys, func(k heronapi.Key) bool { return k.ID == id })
	return i >= 0, i >= 0 && keys[i].IsActive
}

// keys/<id> ("merges Heron's live view"): right after the engine issued,
// deactivated or deleted a key, the answer agrees with that change; the
// cached list is patched, not listed again.
func TestKeys_ReadRightAfterTheEnginesOwnChangeAgreesWithIt(t *testing.T) {
	e := getTestBackend(t)
	e.configure("development")
	e.role("r", map[string]interface{}{"ttl": "1h", "expired_key_retention": "1h"})
	a := e.issue("r")
	require.Equal(t, true, e.ok(logical.ReadOperation, "keys/"+a.Data["key_id"].(string), nil).Data["in_heron"])
	lists := e.srv.CountRequests(http.MethodGet, "/api/credentials/keys", "development")

	// issued
	b := e.issue("r")
	idB := b.Data["key_id"].(string)
	read := e.ok(logical.ReadOperation, "keys/"+idB, nil).Data
	require.Equal(t, true, read["in_heron"], "a key the engine just issued is in Heron")
	require.Equal(t, true, read["is_active"])

	// deactivated (at the lease's expiry)
	e.atTime(time.Now().Add(2 * time.Hour))
	require.NoError(t, e.revoke(b))
	require.False(t, heronKey(e, idB).IsActive, "precondition: deactivated at expiry")
	read = e.ok(logical.ReadOperation, "keys/"+idB, nil).Data
	require.Equal(t, keyStateDeactivated, read["state"])
	require.Equal(t, true, read["in_heron"])
	require.Equal(t, false, read["is_active"], "a key the engine just deactivated is not active")

	// deleted (a revocation)
	c := e.issue("r")
	idC := c.Data["key_id"].(string)
	client, err := e.b.getClient(context.Background(), e.s, "development")
	require.NoError(t, err)
	keys, _, err := e.b.listKeys(context.Background(), client, "development", listCacheTTL)
	require.NoError(t, err)
	in, _ := listed(keys, idC)
	require.True(t, in)
	c.Secret.IssueTime = e.b.now()
	require.NoError(t, e.revoke(c))
	require.True(t, heronKey(e, idC).Deleted, "precondition: deleted on revocation")
	keys, _, err = e.b.listKeys(context.Background(), client, "development", listCacheTTL)
	require.NoError(t, err)
	in, _ = listed(keys, idC)
	require.False(t, in, "a key the engine just deleted is not in the cached list")

	require.Equal(t, lists, e.srv.CountRequests(http.MethodGet, "/api/credentials/keys", "development"), "the cached list is patched, not listed again")
	e.atTime(time.Now())
	a.Secret.IssueTime = time.Now()
	require.NoError(t, e.revoke(a))
	e.atTime(time.Now().Add(100 * time.Hour))
	e.ok(logical.UpdateOperation, "tidy", nil)
}

// gatedLister holds a list answer, already received from Heron, until the
// test lets it go: a list asked before a change and answered after it.
type gatedLister struct {
	heronapi.API
	listed, release chan struct{}
}

func (g *gatedLister) ListKeys(ctx context.Context) ([]heronapi.Key, error) {
	keys, err := g.API.ListKeys(ctx)
	close(g.listed)
	<-g.release
	return keys, err
}

// keys/<id> ("merges Heron's live view"): a list asked before the engine's
// own change and answered after it is not kept for the reads that follow.
func TestKeys_ListAskedBeforeAnEngineChangeIsNotKept(t *testing.T) {
	e := getTestBackend(t)
	e.configure("development")
	e.role("r", map[string]interface{}{})
	client, err := e.b.getClient(context.Background(), e.s, "development")
	require.NoError(t, err)
	g := &gatedLister{API: client, listed: make(chan struct{}), release: make(chan struct{})}
	done := make(chan error, 1)
	go func() {
		_, _, err := e.b.listKeys(context.Background(), g, "development", listCacheTTL)
		done <- err
	}()
	<-g.listed // Heron has answered, without the key issued next
	lease := e.issue("r")
	id := lease.Data["key_id"].(string)
	close(g.release)
	require.NoError(t, <-done)

	read := e.ok(logical.ReadOperation, "keys/"+id, nil).Data
	require.Equal(t, true, read["in_heron"], "the list from before the issuance was not kept")
	require.Equal(t, true, read["is_active"])
	require.NoError(t, e.revoke(lease))
}
