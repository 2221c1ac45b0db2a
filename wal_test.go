package heron

import (
	"context"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/heron-vault/vault-plugin-secrets-heron/heronapi"
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
