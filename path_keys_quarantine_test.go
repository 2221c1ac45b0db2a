package heron

import (
	"context"
	"fmt"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/hashicorp/vault/sdk/logical"
	"github.com/stretchr/testify/require"

	"github.com/heron-vault/vault-plugin-secrets-heron/herontest"
)

// codeOf is the HTTP status Vault answers a handler's result with.
func codeOf(resp *logical.Response, err error) int {
	code, _ := logical.RespondErrorCommon(&logical.Request{Operation: logical.UpdateOperation}, resp, err)
	logical.AdjustErrorStatusCode(&code, err)
	if code == 0 {
		return http.StatusOK
	}
	return code
}

// A quarantined lease key stops working at once; its record says so, who
// asked and why; one event and one log line name the change; a renewal
// keeps the lease and never reactivates the key; activate lifts it.
func TestKeysQuarantine_DeactivatesALeaseKeyUntilActivated(t *testing.T) {
	events := &logical.MockEventSender{}
	logs := &syncBuffer{}
	e := newTestEnv(t, withEvents(events), withLogger(hclog.New(&hclog.LoggerOptions{Level: hclog.Info, Output: logs, JSONFormat: true})))
	e.configure("development")
	e.role("app", map[string]interface{}{"ttl": "1h", "max_ttl": "24h"})
	lease := e.issue("app")
	id := lease.Data["key_id"].(string)
	token := lease.Data["api_key"].(string)

	resp, err := doAs(e, logical.UpdateOperation, "keys/"+id+"/deactivate", nil, "ent-sec", "oidc-security-alice")
	require.NoError(t, err)
	require.False(t, resp.IsError(), "%v", resp.Error())
	require.False(t, e.authenticates(token), "a quarantined key gets 401 at once")
	rec := e.ok(logical.ReadOperation, "keys/"+id, nil).Data
	require.Equal(t, keyStateDeactivated, rec["state"])
	require.Equal(t, true, rec["quarantined"])
	require.Equal(t, reasonQuarantined, rec["reason"])
	require.Equal(t, "oidc-security-alice", rec["quarantined_by"])
	require.NotEmpty(t, rec["quarantined_at"])
	require.Equal(t, false, rec["is_active"])
	list := e.ok(logical.ListOperation, "keys/", map[string]interface{}{"state": keyStateDeactivated})
	require.Equal(t, []string{id}, list.Data["keys"])

	// A second quarantine changes nothing and sends nothing.
	again := e.ok(logical.UpdateOperation, "keys/"+id+"/deactivate", nil)
	require.NotEmpty(t, again.Warnings)

	renewed, err := e.renew(lease, time.Hour)
	require.NoError(t, err)
	require.False(t, renewed.IsError(), "the lease still holds the key: renewal succeeds")
	require.False(t, e.authenticates(token), "a renewal never reactivates a quarantined key")
	require.Equal(t, true, e.ok(logical.ReadOperation, "keys/"+id, nil).Data["quarantined"])

	resp, err = doAs(e, logical.UpdateOperation, "keys/"+id+"/activate", nil, "ent-sec", "oidc-security-bob")
	require.NoError(t, err)
	require.False(t, resp.IsError(), "%v", resp.Error())
	require.True(t, e.authenticates(token))
	rec = e.ok(logical.ReadOperation, "keys/"+id, nil).Data
	require.Equal(t, keyStateActive, rec["state"])
	require.Equal(t, false, rec["quarantined"])
	require.Equal(t, "oidc-security-bob", rec["activated_by"])
	require.Equal(t, "oidc-security-alice", rec["quarantined_by"], "the quarantine stays in the key's history")

	e.badRequest(logical.UpdateOperation, "keys/"+id+"/activate", nil, "is not quarantined")

	got := eventsOf(t, events, 4)
	var types []string
	for _, ev := range got {
		types = append(types, string(ev.Type))
		if ev.Type == eventKeyQuarantine {
			md := ev.Event.Metadata.AsMap()
			require.Equal(t, id, md["key_id"])
			require.Equal(t, "creds/app", md["data_path"])
		}
	}
	require.Contains(t, types, eventKeyQuarantine)
	require.Contains(t, types, eventKeyUnquarantine)
	out := logs.String()
	require.Equal(t, 1, strings.Count(out, `"event":"`+eventKeyQuarantine+`"`), "one log line per quarantine")
	require.Equal(t, 1, strings.Count(out, `"event":"`+eventKeyUnquarantine+`"`))
	require.Contains(t, out, `"requested_by":"oidc-security-alice"`)
	require.NotContains(t, out, token)
	require.NoError(t, e.revoke(lease))
}

// A quarantined key's lease still ends as usual: a revocation deletes it,
// an expiry keeps it deactivated for the retention, and it cannot be
// activated once its lease is over.
func TestKeysQuarantine_LeaseEndsAsUsual(t *testing.T) {
	e := getTestBackend(t)
	e.configure("development")
	e.role("app", map[string]interface{}{"ttl": "1h", "expired_key_retention": "24h"})

	revoked := e.issue("app")
	rid := revoked.Data["key_id"].(string)
	e.ok(logical.UpdateOperation, "keys/"+rid+"/deactivate", nil)
	require.NoError(t, e.revoke(revoked))
	k, ok := e.srv.KeyByToken(revoked.Data["api_key"].(string))
	require.True(t, !ok || k.Deleted, "revocation deletes a quarantined key")
	require.Equal(t, reasonRevoked, e.ok(logical.ReadOperation, "keys/"+rid, nil).Data["reason"])

	t0 := time.Now()
	e.atTime(t0)
	expiring := e.issue("app")
	xid := expiring.Data["key_id"].(string)
	e.ok(logical.UpdateOperation, "keys/"+xid+"/deactivate", nil)
	e.atTime(t0.Add(2 * time.Hour))
	// The lease has ended; Vault's revocation has not come yet.
	e.badRequest(logical.UpdateOperation, "keys/"+xid+"/activate", nil, "its lease ended at")
	require.NoError(t, e.revoke(expiring))
	rec := e.ok(logical.ReadOperation, "keys/"+xid, nil).Data
	require.Equal(t, keyStateDeactivated, rec["state"])
	require.Equal(t, t0.Add(26*time.Hour).UTC().Format(time.RFC3339), rec["delete_after"])
	require.False(t, e.authenticates(expiring.Data["api_key"].(string)))
	e.badRequest(logical.UpdateOperation, "keys/"+xid+"/activate", nil, "stays deactivated")
	require.False(t, e.authenticates(expiring.Data["api_key"].(string)))
	e.atTime(t0.Add(27 * time.Hour))
	e.ok(logical.UpdateOperation, "tidy", nil)
}

// keys/<id>/revoke deletes the key in Heron now; a later revocation of its
// lease finds it gone and succeeds, and its renewal fails.
func TestKeysRevoke_DeletesNowAndTheLeaseStillRevokes(t *testing.T) {
	events := &logical.MockEventSender{}
	e := newTestEnv(t, withEvents(events))
	e.configure("development")
	e.role("app", map[string]interface{}{})
	lease := e.issue("app")
	id := lease.Data["key_id"].(string)

	resp, err := doAs(e, logical.UpdateOperation, "keys/"+id+"/revoke", nil, "", "oidc-security-alice")
	require.NoError(t, err)
	require.False(t, resp.IsError(), "%v", resp.Error())
	k, ok := e.srv.KeyByToken(lease.Data["api_key"].(string))
	require.True(t, !ok || k.Deleted, "deleted in Heron")
	rec := e.ok(logical.ReadOperation, "keys/"+id, nil).Data
	require.Equal(t, keyStateDeleted, rec["state"])
	require.Equal(t, reasonRevokedByOperator, rec["reason"])
	require.Equal(t, "oidc-security-alice", rec["revoked_by"])

	renewed, err := e.renew(lease, 0)
	require.True(t, err != nil || renewed.IsError(), "the lease of a revoked key cannot be renewed")
	require.NoError(t, e.revoke(lease), "the lease's revocation finds the key gone and succeeds")
	require.Equal(t, reasonRevokedByOperator, e.ok(logical.ReadOperation, "keys/"+id, nil).Data["reason"], "the tombstone keeps its reason")
	got := eventsOf(t, events, 2)
	require.Equal(t, eventKeyRevoke, string(got[len(got)-1].Type))

	// Again: the key is gone, 404 with its history.
	resp, err = e.do(logical.UpdateOperation, "keys/"+id+"/revoke", nil)
	require.Equal(t, http.StatusNotFound, codeOf(resp, err))
	require.ErrorContains(t, err, reasonRevokedByOperator)
}

// Unknown and malformed ids are a 404 and a 400; nothing reaches Heron.
func TestKeysQuarantine_UnknownAndMalformedIDs(t *testing.T) {
	e := getTestBackend(t)
	e.configure("development")
	before := e.srv.CountRequests("", "", "")
	for _, action := range []string{"deactivate", "activate", "revoke"} {
		resp, err := e.do(logical.UpdateOperation, "keys/8c7e2f4e-0b8f-4c1e-9d55-5b4fd2f4a001/"+action, nil)
		require.Equal(t, http.StatusNotFound, codeOf(resp, err), action)
		e.badRequest(logical.UpdateOperation, "keys/"+strings.Repeat("a", 130)+"/"+action, nil, "is not a Heron key id")
	}
	require.Equal(t, before, e.srv.CountRequests("", "", ""))
}

// A static role's quarantined key stays deactivated; the holder's next
// static-creds read gets a new key (a rotation), and neither that rotation
// nor the next ones reactivate the quarantined key.
func TestKeysQuarantine_StaticRoleKeyAndRotationNeverReactivates(t *testing.T) {
	e := getTestBackend(t)
	e.configure("development")
	e.ok(logical.CreateOperation, "static-roles/batch", map[string]interface{}{"environment": "development", "overlap": "1h"})
	first := e.ok(logical.ReadOperation, "static-creds/batch", nil)
	id := first.Data["key_id"].(string)
	e.ok(logical.UpdateOperation, "keys/"+id+"/deactivate", nil)
	require.False(t, e.authenticates(first.Data["api_key"].(string)))

	next := e.ok(logical.ReadOperation, "static-creds/batch", nil)
	require.NotEqual(t, id, next.Data["key_id"], "a quarantined current key is replaced")
	require.True(t, e.authenticates(next.Data["api_key"].(string)))
	e.ok(logical.UpdateOperation, "static-roles/batch/rotate", nil)
	e.ok(logical.UpdateOperation, "tidy", nil)
	require.False(t, e.authenticates(first.Data["api_key"].(string)), "no rotation or pass reactivates it")
	e.ok(logical.DeleteOperation, "static-roles/batch", nil)
}

// gatedStorage holds the first read of one storage key until released, so
// a test can run a second request between a handler's read and its write.
type gatedStorage struct {
	logical.Storage
	mu      sync.Mutex
	key     string
	reached chan struct{}
	release chan struct{}
}

func (s *gatedStorage) Get(ctx context.Context, key string) (*logical.StorageEntry, error) {
	s.mu.Lock()
	gate := s.key != "" && key == s.key
	if gate {
		s.key = ""
	}
	s.mu.Unlock()
	en, err := s.Storage.Get(ctx, key)
	if gate {
		close(s.reached)
		select {
		case <-s.release:
		case <-time.After(300 * time.Millisecond):
		}
	}
	return en, err
}

// A renewal that read the record before a quarantine was written never
// writes over it: both decide under the record's lock from a read made
// under it.
func TestKeysQuarantine_RenewalRacingAQuarantineKeepsIt(t *testing.T) {
	var gs *gatedStorage
	e := newTestEnv(t, withStorage(func(s logical.Storage) logical.Storage { gs = &gatedStorage{Storage: s}; return gs }))
	e.configure("development")
	e.role("app", map[string]interface{}{"ttl": "1h", "max_ttl": "24h"})
	lease := e.issue("app")
	id := lease.Data["key_id"].(string)

	gs.mu.Lock()
	gs.key, gs.reached, gs.release = keyStoragePrefix+id, make(chan struct{}), make(chan struct{})
	gs.mu.Unlock()
	renewed := make(chan error, 1)
	go func() {
		resp, err := e.renew(lease, time.Hour)
		if err == nil && resp.IsError() {
			err = resp.Error()
		}
		renewed <- err
	}()
	<-gs.reached // the renewal has read the record, and waits
	quarantined := make(chan struct{})
	go func() {
		e.ok(logical.UpdateOperation, "keys/"+id+"/deactivate", nil)
		close(quarantined)
	}()
	select {
	case <-quarantined:
	case <-time.After(100 * time.Millisecond):
	}
	close(gs.release)
	require.NoError(t, <-renewed)
	<-quarantined

	rec, err := getTrackedKey(context.Background(), e.s, id)
	require.NoError(t, err)
	require.True(t, rec.Quarantined, "the renewal's write lost the quarantine")
	require.False(t, e.authenticates(lease.Data["api_key"].(string)))
	require.NoError(t, e.revoke(lease))
}

// A key record's lock excludes changes of that key only: another key's
// lock is free while it is held (a revocation waiting for Heron's budget
// never holds up other keys' renewals), and released locks are forgotten.
func TestKeyLock_OnePerKeyAndForgottenWhenFree(t *testing.T) {
	var l keyLocker
	unlockA := l.lock("a")
	got := make(chan string, 2)
	go func() { u := l.lock("a"); got <- "a"; u() }()
	// Every other id is free while "a" is held (no shared buckets).
	others := make(chan struct{})
	go func() {
		for i := 0; i < 1000; i++ {
			l.lock(fmt.Sprintf("key-%d", i))()
		}
		close(others)
	}()
	select {
	case <-others:
	case <-time.After(5 * time.Second):
		t.Fatal("another key's lock waited for a's")
	}
	select {
	case <-got:
		t.Fatal("a second holder of a's lock got it while the first held it")
	case <-time.After(50 * time.Millisecond):
	}
	unlockA()
	require.Equal(t, "a", <-got)
	l.mu.Lock()
	defer l.mu.Unlock()
	require.Empty(t, l.locks, "released locks are forgotten")
}

// Spec, "Who holds a key" and Invariant 4: quarantining, lifting or revoking
// a key that Heron no longer has (deleted in the dashboard) records it as
// missing (a tombstone, 404 naming what happened) instead of reporting a
// quarantine of a key that is not there; Heron failing is an error naming
// what Heron answered, and the record is left as it was.
func TestQuarantine_KeyGoneInHeronIsRecordedMissing(t *testing.T) {
	e := getTestBackend(t)
	e.configure("development")
	e.role("app", map[string]interface{}{})

	failing := e.issue("app")
	id := failing.Data["key_id"].(string)
	e.srv.FailNext("PUT", "/api/credentials/keys/", 20, herontest.FaultStatus503)
	_, err := e.do(logical.UpdateOperation, "keys/"+id+"/deactivate", nil)
	require.Error(t, err)
	require.Contains(t, err.Error(), "quarantining key "+id)
	e.srv.ResetFaults()
	rec, err := getTrackedKey(context.Background(), e.s, id)
	require.NoError(t, err)
	require.False(t, rec.Quarantined, "a quarantine Heron did not carry out is not recorded")
	require.NoError(t, e.revoke(failing))

	// keys/<id>/revoke wants the key gone: a 404 is that, done.
	gone := e.issue("app")
	goneID := gone.Data["key_id"].(string)
	require.NoError(t, handClient(t, e, e.adminKey["development"]).DeleteKey(context.Background(), goneID))
	e.ok(logical.UpdateOperation, "keys/"+goneID+"/revoke", nil)
	rec, err = getKeyRecord(context.Background(), e.s, goneID)
	require.NoError(t, err)
	require.Equal(t, keyStateDeleted, rec.State)
	require.NoError(t, e.revoke(gone))

	for _, op := range []string{"deactivate", "activate"} {
		lease := e.issue("app")
		id := lease.Data["key_id"].(string)
		if op == "activate" {
			e.ok(logical.UpdateOperation, "keys/"+id+"/deactivate", nil)
		}
		require.NoError(t, handClient(t, e, e.adminKey["development"]).DeleteKey(context.Background(), id))
		resp, err := e.do(logical.UpdateOperation, "keys/"+id+"/"+op, nil)
		require.Error(t, err, op)
		require.Contains(t, err.Error(), "Heron no longer has it", op)
		require.Nil(t, resp)
		rec, err := getKeyRecord(context.Background(), e.s, id)
		require.NoError(t, err)
		require.NotNil(t, rec, op)
		require.Equal(t, keyStateDeleted, rec.State, op)
		require.Equal(t, reasonMissing, rec.Reason, op)
		require.NoError(t, e.revoke(lease), "the lease's revocation then finds the key gone and succeeds (%s)", op)
	}
}
