package heron

import (
	"bytes"
	"context"
	"sync"
	"testing"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/hashicorp/vault/sdk/logical"
	"github.com/stretchr/testify/require"
)

// syncBuffer is a log sink tests can read while the backend writes.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// eventsOf returns the events sent so far, by type, waiting for n of them
// (sending runs beside the operation).
func eventsOf(t *testing.T, m *logical.MockEventSender, n int) []logical.MockEvent {
	t.Helper()
	var got []logical.MockEvent
	require.Eventually(t, func() bool {
		m.Lock()
		got = append([]logical.MockEvent(nil), m.Events...)
		m.Unlock()
		return len(got) >= n
	}, 5*time.Second, 10*time.Millisecond, "want %d events", n)
	return got
}

// A key's whole life, read back three ways: Vault events with the spec's
// metadata (never a token), the record's history in keys/ (a tombstone with
// reason and time once deleted), and one log line per change.
func TestEvents_KeyLifeRecordedThreeWays(t *testing.T) {
	events := &logical.MockEventSender{}
	logs := &syncBuffer{}
	e := newTestEnv(t, withEvents(events), withLogger(hclog.New(&hclog.LoggerOptions{Level: hclog.Info, Output: logs, JSONFormat: true})))
	e.configure("development")
	e.role("app", map[string]interface{}{"ttl": "1h", "expired_key_retention": "24h"})

	// issue, renew, expiry, deletion after retention
	t0 := time.Now()
	e.atTime(t0)
	lease := e.issue("app")
	id := lease.Data["key_id"].(string)
	token := lease.Data["api_key"].(string)
	e.atTime(t0.Add(30 * time.Minute))
	_, err := e.renew(lease, time.Hour)
	require.NoError(t, err)
	e.atTime(t0.Add(2 * time.Hour))
	require.NoError(t, e.revoke(lease))
	e.atTime(t0.Add(30 * time.Hour))
	e.ok(logical.UpdateOperation, "tidy", nil)

	// issue, revoke
	other := e.issue("app")
	otherID := other.Data["key_id"].(string)
	require.NoError(t, e.revoke(other))

	got := eventsOf(t, events, 6)
	var types []string
	for _, ev := range got {
		types = append(types, string(ev.Type))
		md := ev.Event.Metadata.AsMap()
		require.Equal(t, "true", md["modified"])
		require.Equal(t, "development", md["environment"])
		require.Equal(t, "creds/app", md["data_path"])
		require.Equal(t, "app", md["role"])
		require.NotEmpty(t, md["key_id"])
		require.NotEmpty(t, md["key_name"])
		require.Len(t, md["token_prefix"], 8)
		for k, v := range md {
			require.NotContains(t, v, token, "event %s field %s holds the token", ev.Type, k)
		}
	}
	require.ElementsMatch(t, []string{
		eventKeyIssue, eventKeyRenew, eventKeyExpire, eventKeyDelete, eventKeyIssue, eventKeyRevoke,
	}, types)

	// History through Vault's API.
	rec := e.ok(logical.ReadOperation, "keys/"+id, nil).Data
	require.Equal(t, keyStateDeleted, rec["state"])
	require.Equal(t, reasonRetention, rec["reason"])
	require.Equal(t, t0.Add(30*time.Hour).UTC().Format(time.RFC3339), rec["deleted_at"])
	require.Equal(t, t0.Add(2*time.Hour).UTC().Format(time.RFC3339), rec["deactivated_at"])
	require.Equal(t, t0.Add(30*time.Minute).UTC().Format(time.RFC3339), rec["last_renewed"])
	require.Equal(t, t0.UTC().Format(time.RFC3339), rec["issued"])
	require.Equal(t, reasonRevoked, e.ok(logical.ReadOperation, "keys/"+otherID, nil).Data["reason"])

	list := e.ok(logical.ListOperation, "keys/", nil)
	require.Empty(t, list.Data["keys"], "tombstones only with state=deleted")
	list = e.ok(logical.ListOperation, "keys/", map[string]interface{}{"state": "deleted"})
	require.ElementsMatch(t, []string{id, otherID}, list.Data["keys"])

	// One log line per change, with event=<name>; never the token.
	out := logs.String()
	for _, name := range []string{eventKeyIssue, eventKeyRenew, eventKeyExpire, eventKeyDelete, eventKeyRevoke} {
		require.Contains(t, out, `"event":"`+name+`"`)
	}
	require.NotContains(t, out, token)
	require.NotContains(t, out, e.adminKey["development"])

	// Tombstones go after the config's history_retention (720h by default).
	e.atTime(t0.Add(800 * time.Hour))
	e.ok(logical.UpdateOperation, "tidy", nil)
	resp, err := e.do(logical.ReadOperation, "keys/"+id, nil)
	require.NoError(t, err)
	require.Nil(t, resp, "the tombstone is gone after history_retention")
}

// history_retention=0 keeps no tombstone; a revocation then costs what it
// did before (the record is deleted).
func TestEvents_NoHistoryKeepsNoTombstone(t *testing.T) {
	e := getTestBackend(t)
	e.ok(logical.CreateOperation, "config/development", map[string]interface{}{
		"admin_api_key": e.adminKey["development"], "base_url": e.srv.URL, "rate_limit_per_minute": maxRateLimitPerMinute, "history_retention": 0,
	})
	require.Equal(t, int64(0), e.ok(logical.ReadOperation, "config/development", nil).Data["history_retention"])
	e.role("app", map[string]interface{}{})
	lease := e.issue("app")
	require.NoError(t, e.revoke(lease))
	resp, err := e.do(logical.ReadOperation, "keys/"+lease.Data["key_id"].(string), nil)
	require.NoError(t, err)
	require.Nil(t, resp)
}

// A server without an event bus (Vault Community serves no subscription,
// a test backend has no sender at all) fails nothing.
func TestEvents_NoEventBusFailsNothing(t *testing.T) {
	e := getTestBackend(t)
	e.configure("development")
	e.role("app", map[string]interface{}{})
	lease := e.issue("app")
	require.NoError(t, e.revoke(lease))
}

// Admin key and static role changes are events too, on their own paths.
func TestEvents_AdminAndStaticChanges(t *testing.T) {
	events := &logical.MockEventSender{}
	e := newTestEnv(t, withEvents(events))
	e.configure("development")
	rot := e.ok(logical.UpdateOperation, "config/development/rotate", nil)
	e.ok(logical.CreateOperation, "static-roles/batch", map[string]interface{}{"environment": "development", "overlap": "0s"})
	e.ok(logical.UpdateOperation, "static-roles/batch/rotate", nil)
	e.ok(logical.DeleteOperation, "static-roles/batch", nil)

	got := eventsOf(t, events, 5)
	byType := map[string][]map[string]interface{}{}
	for _, ev := range got {
		byType[string(ev.Type)] = append(byType[string(ev.Type)], ev.Event.Metadata.AsMap())
	}
	require.Len(t, byType[eventAdminRotate], 1)
	require.Equal(t, "config/development", byType[eventAdminRotate][0]["data_path"])
	require.Equal(t, rot.Data["admin_key_id"], byType[eventAdminRotate][0]["key_id"])
	require.Len(t, byType[eventStaticRotate], 2, "create and rotate")
	require.Equal(t, "static-creds/batch", byType[eventStaticRotate][0]["data_path"])
	require.NotEmpty(t, byType[eventStaticDeactivate], "previous key superseded, and the role's keys at delete")
	e.atTime(time.Now().Add(100 * time.Hour))
	e.ok(logical.UpdateOperation, "tidy", nil)
}

// heldEventSender holds the issue event until another event is sent (or,
// when none is, a moment has passed) and records each event when its send
// returns, as a subscriber would receive it.
type heldEventSender struct {
	other chan struct{}
	once  sync.Once
	mu    sync.Mutex
	got   []string
}

func (s *heldEventSender) SendEvent(_ context.Context, eventType logical.EventType, _ *logical.EventData) error {
	if eventType == eventKeyIssue {
		select {
		case <-s.other:
		case <-time.After(200 * time.Millisecond):
		}
	} else {
		s.once.Do(func() { close(s.other) })
	}
	s.mu.Lock()
	s.got = append(s.got, string(eventType))
	s.mu.Unlock()
	return nil
}

// Events reach Vault in the order of the changes: a key revoked while its
// issue event is still on its way (Vault slow to take it) is seen issued,
// then revoked, never the other way round, which would leave a subscriber
// believing a deleted key live.
func TestEvents_SentInTheOrderOfTheChanges(t *testing.T) {
	sender := &heldEventSender{other: make(chan struct{})}
	e := newTestEnv(t, withEvents(sender))
	e.configure("development")
	e.role("app", map[string]interface{}{"ttl": "1h"})
	lease := e.issue("app")
	require.NoError(t, e.revoke(lease))
	e.b.eventSends.Wait()
	sender.mu.Lock()
	defer sender.mu.Unlock()
	require.Equal(t, []string{eventKeyIssue, eventKeyRevoke}, sender.got)
}
