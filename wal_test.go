package heron

import (
	"context"
	"net/http"
	"testing"
	"time"

	"github.com/hashicorp/vault/sdk/framework"
	"github.com/hashicorp/vault/sdk/logical"
	"github.com/stretchr/testify/require"

	"github.com/heron-vault/vault-plugin-secrets-heron/heronapi"
	"github.com/heron-vault/vault-plugin-secrets-heron/herontest"
)

// Invariants 1 and 3 (a create answer naming a key the engine already
// tracks is not this key): a replayed 201 naming a tracked key, even under
// the name asked for, never hands that key's token to another caller; the
// issuance settles the unknown outcome by name and creates its own key, and
// the tracked key is left as it was.
func TestCreateUnderWAL_ReplayedAnswerNamingATrackedKeyIsNeverHandedOut(t *testing.T) {
	e := getTestBackend(t)
	e.configure("development")
	e.role("r", map[string]interface{}{})
	first := e.issue("r")
	firstID, firstToken := first.Data["key_id"].(string), first.Data["api_key"].(string)

	s := scripted(e)
	replays := 0
	s.create = func(ctx context.Context, name string) (*heronapi.Key, error) {
		s.mu.Lock()
		real := s.API
		replay := replays == 0
		replays++
		s.mu.Unlock()
		if replay {
			// A caching gateway answers with the first issuance's 201, the
			// name rewritten to the one asked for.
			return &heronapi.Key{ID: firstID, Name: name, Token: firstToken, TokenPrefix: heronapi.TokenPrefix(firstToken), IsActive: true}, nil
		}
		return real.CreateKey(ctx, name)
	}

	second := e.issue("r")
	require.Equal(t, 2, replays, "the replayed answer was settled and a key created")
	require.NotEqual(t, firstID, second.Data["key_id"], "the tracked key is not handed out again")
	require.NotEqual(t, firstToken, second.Data["api_key"], "nor its token")
	require.True(t, e.authenticates(second.Data["api_key"].(string)))

	require.True(t, heronKey(e, firstID).IsActive, "the tracked key is left as it was")
	rec, err := getTrackedKey(context.Background(), e.s, firstID)
	require.NoError(t, err)
	require.NotNil(t, rec)
	require.Equal(t, keyStateActive, rec.State)
	require.Equal(t, first.Data["key_name"], rec.KeyName)

	require.NoError(t, e.revoke(first))
	require.NoError(t, e.revoke(second))
	// The replayed attempt's outcome stays unknown for the late-key window;
	// then the rollback settles it.
	closeWindow(e)
	rollback(t, e)
	require.Zero(t, walCount(t, e.b, e.s), "no creation left unsettled")
}

// Spec invariant 1 (whatever fails in between, on any node): write-ahead
// and creation records are local storage, never replicated to performance
// secondaries, whose own creations they are not.
func TestWAL_RecordsAreLocalStorage(t *testing.T) {
	b := backend()
	require.NotNil(t, b.PathsSpecial)
	require.Contains(t, b.PathsSpecial.LocalStorage, framework.WALPrefix)
	require.Contains(t, b.PathsSpecial.LocalStorage, creatingStoragePrefix)
}

// Spec invariant 1 (429 on the lookup after a lost answer): the POST is
// processed, its answer lost, and the lookup gets 429s. The key may exist, so
// the write-ahead record stays until the rollback has deleted it.
func TestCreateUnderWAL_RateLimitedLookupKeepsTheRecord(t *testing.T) {
	e := getTestBackend(t)
	e.configure("development")
	e.role("r", map[string]interface{}{})
	api := scripted(e)
	api.list = func() error { return rateLimited }
	e.srv.FailNext("POST", "/api/credentials/keys", 1, herontest.FaultProcessThenDrop)

	_, err := e.do(logical.ReadOperation, "creds/r", nil)
	require.Error(t, err)
	require.ErrorIs(t, err, heronapi.ErrOutcomeUnknown)
	require.Len(t, liveIssued(e), 1, "Heron made the key; its token is lost")
	require.Equal(t, 1, walCount(t, e.b, e.s), "the write-ahead record still names it")

	api.list = nil
	rollback(t, e)
	require.Empty(t, liveIssued(e), "the rollback deleted it")
	closeWindow(e)
	rollback(t, e)
	require.Zero(t, walCount(t, e.b, e.s))
}

// Spec invariant 1 (slow Heron): the POST times out (a gateway's 504) while
// Heron is still creating the key; the lookup finds nothing, a second POST
// succeeds, and the first key appears later. The record stays and the
// rollback deletes the late key, never the lease's.
func TestCreateUnderWAL_LateKeyAfterTheLookupIsRolledBack(t *testing.T) {
	e := getTestBackend(t)
	e.configure("development")
	e.role("r", map[string]interface{}{})
	e.srv.FailNextLate("POST", "/api/credentials/keys", 1, http.StatusGatewayTimeout, time.Hour)

	lease := e.issue("r")
	require.Equal(t, 1, walCount(t, e.b, e.s), "the first POST's outcome is unknown: its record stays")
	require.Equal(t, 1, e.srv.FlushLate(), "Heron finishes the first POST after the engine moved on")
	var late string
	for _, k := range e.srv.KeysIn("development") {
		if k.Name == lease.Data["key_name"] && k.ID != lease.Data["key_id"] {
			late = k.ID
		}
	}
	require.NotEmpty(t, late, "the late key exists")

	e.ok(logical.UpdateOperation, "tidy", nil)
	k, _ := e.srv.Key(late)
	require.True(t, k.Deleted, "the late key is rolled back")
	k, _ = e.srv.Key(lease.Data["key_id"].(string))
	require.True(t, k.IsActive && !k.Deleted, "the lease's key is not")
	require.True(t, e.authenticates(lease.Data["api_key"].(string)))

	closeWindow(e)
	e.ok(logical.UpdateOperation, "tidy", nil)
	require.Zero(t, walCount(t, e.b, e.s))
	require.NoError(t, e.revoke(lease))
}

// Spec invariant 1 (lost answers): Heron's clock lags the engine's by 30 s,
// more than the created-time skew allowance. The key of a lost answer is
// still found and deleted by its record, not left live and untracked once
// the record's window closes.
func TestCreateUnderWAL_LostKeyFoundWithHeronsClockBehind(t *testing.T) {
	e := getTestBackend(t)
	e.configure("development")
	e.role("r", map[string]interface{}{})
	// The engine's wall clock is 30s ahead of Heron's (equivalently: Heron
	// lags by 30s).
	e.b.wallNow = func() time.Time { return time.Now().Add(30 * time.Second) }

	e.srv.FailNext("POST", "/api/credentials/keys", 1, herontest.FaultProcessThenDrop)
	lease := e.issue("r")
	require.NoError(t, e.revoke(lease))

	e.b.wallNow = func() time.Time { return time.Now().Add(30*time.Second + lateKeyWindow + time.Minute) }
	e.ok(logical.UpdateOperation, "tidy", nil)
	require.Zero(t, walCount(t, e.b, e.s), "the record was settled")
	require.Empty(t, liveIssued(e), "the key of the lost answer is deleted, not left live with nothing naming it")
}
