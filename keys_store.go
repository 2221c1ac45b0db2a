package heron

import (
	"context"
	"encoding/json"
	"fmt"
	"time"

	"github.com/hashicorp/vault/sdk/helper/locksutil"
	"github.com/hashicorp/vault/sdk/logical"
)

// Storage layout of the keys the engine tracks:
//
//	keys/<key_id>               trackedKey: every key issued and not yet deleted
//	role-keys/<role>/<key_id>   empty marker while the key is active, so that
//	                            max_active_keys counts one role without reading all keys
//	retained-keys/<key_id>      empty marker while the key is deactivated or owes a
//	                            deferred revocation: all the cleanup pass has to read
const (
	keyStoragePrefix         = "keys/"
	roleKeyStoragePrefix     = "role-keys/"
	retainedKeyStoragePrefix = "retained-keys/"

	keyStateActive      = "active"
	keyStateDeactivated = "deactivated"
	// keyStateDeleted is a tombstone: the key is gone, its history stays.
	keyStateDeleted = "deleted"
)

// trackedKey is the engine's record of one Heron key it issued. It never holds
// the token: only ids and names, and the bookkeeping that tells a lease that
// ran out (deactivate) from one that was revoked (delete).
type trackedKey struct {
	KeyID       string `json:"key_id"`
	KeyName     string `json:"key_name"`
	TokenPrefix string `json:"token_prefix"`
	Environment string `json:"environment"`
	Role        string `json:"role"`
	// Kind is keyKindStatic for a static role's key; empty for a lease's.
	Kind  string `json:"kind,omitempty"`
	State string `json:"state"`

	Issued time.Time `json:"issued"`
	// Expires is when Vault will expire the lease, computed as Vault computes
	// it (CalculateTTL with the mount's limits) and moved on every renewal.
	Expires time.Time `json:"expires"`
	// ExpiredKeyRetention is the role's retention at issuance, used if the
	// role is gone by the time the lease expires.
	ExpiredKeyRetention time.Duration `json:"expired_key_retention"`

	DeactivatedAt time.Time `json:"deactivated_at,omitempty"`
	DeleteAfter   time.Time `json:"delete_after,omitempty"`
	// LastRenewed, DeletedAt and Reason complete the key's history: the
	// record of a deleted key stays as a tombstone (see forgetKey).
	LastRenewed time.Time `json:"last_renewed,omitempty"`
	// RenewedTTL is the TTL the last renewal returned to Vault, and
	// EndBefore the lease's end as Vault held it before that renewal: a
	// renewal that failed after its write was stored leaves Vault's end
	// where it was, and Vault's TTL at a later revoke tells (vaultLeaseEnd).
	RenewedTTL time.Duration `json:"renewed_ttl,omitempty"`
	EndBefore  time.Time     `json:"end_before,omitempty"`
	DeletedAt  time.Time     `json:"deleted_at,omitempty"`
	Reason     string        `json:"reason,omitempty"`

	// RateLimitedRevokes counts revocations of this key's lease that found no
	// budget. After deferRevokeAfter of them the lease is let go and the key
	// is handed to the cleanup pass (Pending), because Vault gives up on a
	// lease after six failed attempts and would leave the key live for good.
	RateLimitedRevokes int `json:"rate_limited_revokes,omitempty"`
	// Pending is what the cleanup pass still owes a key whose lease is gone:
	// pendingDelete or pendingDeactivate.
	Pending string `json:"pending,omitempty"`
	// Revoke is what the first revocation attempt decided (pendingDelete or
	// pendingDeactivate) when it could not finish: Vault's retries carry out
	// that decision, even once they land after the lease's original end.
	Revoke string `json:"revoke,omitempty"`
	// NoIndex: the key has no role-keys/ marker (only roles with
	// max_active_keys keep one, so that other issuances write one entry
	// less). Records from before it existed are indexed.
	NoIndex bool `json:"no_index,omitempty"`
	// Unreachable marks a key that the config's current admin key cannot see
	// (accepted with force=true): a 404 for it proves nothing, so the engine
	// never forgets it on one.
	Unreachable bool `json:"unreachable,omitempty"`

	// EntityID and DisplayName are who issued the key: the issuing
	// request's entity and token display name (never the token or its
	// accessor), so "every key this identity holds" is one keys/ listing.
	EntityID    string `json:"entity_id,omitempty"`
	DisplayName string `json:"display_name,omitempty"`
	// TokenHMAC is HMAC-SHA256 of the token under the mount's secret
	// (token_hmac.go), for keys/lookup; never returned. Empty on records
	// from before it, which keys/lookup matches by token_prefix.
	TokenHMAC string `json:"token_hmac,omitempty"`

	// Quarantined: an operator deactivated the key in Heron
	// (keys/<id>/deactivate) whatever holds it; nothing but keys/<id>/activate
	// makes it active again. The lease (or static role) still holds it and
	// ends as usual.
	Quarantined   bool      `json:"quarantined,omitempty"`
	QuarantinedAt time.Time `json:"quarantined_at,omitempty"`
	QuarantinedBy string    `json:"quarantined_by,omitempty"`
	// ActivatedAt and ActivatedBy record the last lifted quarantine.
	ActivatedAt time.Time `json:"activated_at,omitempty"`
	ActivatedBy string    `json:"activated_by,omitempty"`
	// RevokedBy is who deleted the key through keys/<id>/revoke.
	RevokedBy string `json:"revoked_by,omitempty"`
}

const (
	pendingDelete     = "delete"
	pendingDeactivate = "deactivate"

	// deferRevokeAfter is below Vault's six revocation attempts, so the lease
	// is never marked irrevocable for want of budget.
	deferRevokeAfter = 3
)

// getTrackedKey returns the record of id, or (nil, nil) when the engine does
// not track the key (no record, or only its tombstone).
func getTrackedKey(ctx context.Context, s logical.Storage, id string) (*trackedKey, error) {
	k, err := getKeyRecord(ctx, s, id)
	if err != nil || k == nil || k.State == keyStateDeleted {
		return nil, err
	}
	return k, nil
}

// getKeyRecord returns the record of id, a tombstone included. A record
// stored as plain JSON (as the engine writes them) is decoded in place: the
// sdk's decoder, which also reads compressed entries, copies each value into
// buffers of its own, and the pass and a page of keys/ read thousands.
func getKeyRecord(ctx context.Context, s logical.Storage, id string) (*trackedKey, error) {
	entry, err := s.Get(ctx, keyStoragePrefix+id)
	if err != nil {
		return nil, fmt.Errorf("reading key record %s: %w", id, err)
	}
	if entry == nil {
		return nil, nil
	}
	k := new(trackedKey)
	if len(entry.Value) > 0 && entry.Value[0] == '{' {
		err = json.Unmarshal(entry.Value, k)
	} else {
		err = entry.DecodeJSON(k)
	}
	if err != nil {
		return nil, fmt.Errorf("decoding key record %s: %w", id, err)
	}
	return k, nil
}

// forgetKey records that k's Heron key is gone: its record becomes a
// tombstone (state deleted, when and why) kept for the config's
// history_retention, written in place of the delete that would have
// forgotten it (no extra storage write); with no retention, deleted.
func (b *heronBackend) forgetKey(ctx context.Context, s logical.Storage, k *trackedKey, reason string) error {
	if b.historyRetention(ctx, s, k.Environment) <= 0 {
		return deleteTrackedKey(ctx, s, k)
	}
	wasRetained := k.retained()
	k.State = keyStateDeleted
	k.DeletedAt = b.now()
	k.Reason = reason
	k.Pending, k.Revoke = "", ""
	if err := putTrackedKey(ctx, s, k); err != nil {
		return err
	}
	if wasRetained {
		// A stale marker is also dropped by the next pass (retainedKeys).
		if err := s.Delete(ctx, retainedKeyStoragePrefix+k.KeyID); err != nil {
			b.Logger().Debug("could not drop a retained-key marker; the next pass will", "key_id", k.KeyID, "error", err)
		}
	}
	return nil
}

// putTrackedKey stores k and keeps the indexes in step with its state. A key
// only ever moves from active to pending or deactivated, so each state writes
// just the markers it needs. The record goes last: a failed write leaves the
// old record, which Vault's retry or the next pass acts on again, never a
// record whose state its indexes do not show (a deactivated key missing from
// retained-keys/ would never be deleted).
func putTrackedKey(ctx context.Context, s logical.Storage, k *trackedKey) error {
	if k.retained() {
		// The marker says when it was written (wall clock, the same for
		// every instance): the pass leaves a young marker whose record does
		// not show it yet (see staleRetainedMarker).
		if err := s.Put(ctx, &logical.StorageEntry{Key: retainedKeyStoragePrefix + k.KeyID, Value: []byte(time.Now().UTC().Format(time.RFC3339Nano))}); err != nil {
			return fmt.Errorf("indexing retained key %s: %w", k.KeyID, err)
		}
	}
	if !k.NoIndex {
		var err error
		idx := roleKeyStoragePrefix + k.Role + "/" + k.KeyID
		if k.State == keyStateActive {
			err = s.Put(ctx, &logical.StorageEntry{Key: idx})
		} else {
			err = s.Delete(ctx, idx)
			// Gone from the index for good: later writes need not touch it.
			k.NoIndex = err == nil
		}
		if err != nil {
			return fmt.Errorf("updating active index of key %s: %w", k.KeyID, err)
		}
	}
	return putJSON(ctx, s, keyStoragePrefix+k.KeyID, "key record "+k.KeyID, k)
}

// putNewTrackedKey stores the record of a key just issued. The record is the
// write that makes the key tracked, so it goes last: a failure before it
// leaves nothing that claims the key, and the caller's undo deletes it.
func putNewTrackedKey(ctx context.Context, s logical.Storage, k *trackedKey) error {
	if !k.NoIndex {
		if err := s.Put(ctx, &logical.StorageEntry{Key: roleKeyStoragePrefix + k.Role + "/" + k.KeyID}); err != nil {
			return fmt.Errorf("indexing active key %s: %w", k.KeyID, err)
		}
	}
	return putJSON(ctx, s, keyStoragePrefix+k.KeyID, "key record "+k.KeyID, k)
}

// kind is what keys/ calls the key: lease or static.
func (k *trackedKey) kind() string {
	if k.Kind == "" {
		return keyKindLease
	}
	return k.Kind
}

// retained reports whether the cleanup pass still owes k something.
func (k *trackedKey) retained() bool {
	return k.State == keyStateDeactivated || k.Pending != ""
}

// deleteTrackedKey forgets k (its Heron key is gone).
func deleteTrackedKey(ctx context.Context, s logical.Storage, k *trackedKey) error {
	if k.State == keyStateActive && !k.NoIndex {
		if err := s.Delete(ctx, roleKeyStoragePrefix+k.Role+"/"+k.KeyID); err != nil {
			return fmt.Errorf("deleting active index of key %s: %w", k.KeyID, err)
		}
	}
	if k.retained() {
		if err := s.Delete(ctx, retainedKeyStoragePrefix+k.KeyID); err != nil {
			return fmt.Errorf("deleting retained index of key %s: %w", k.KeyID, err)
		}
	}
	if err := s.Delete(ctx, keyStoragePrefix+k.KeyID); err != nil {
		return fmt.Errorf("deleting key record %s: %w", k.KeyID, err)
	}
	return nil
}

// retainedKeys returns the keys deactivated or owing a deferred revocation,
// dropping index entries whose record is gone.
func (b *heronBackend) retainedKeys(ctx context.Context, s logical.Storage) ([]*trackedKey, error) {
	ids, err := s.List(ctx, retainedKeyStoragePrefix)
	if err != nil {
		return nil, fmt.Errorf("listing retained keys: %w", err)
	}
	keys := make([]*trackedKey, 0, len(ids))
	for _, id := range ids {
		k, err := getTrackedKey(ctx, s, id)
		if err != nil {
			return nil, err
		}
		if k != nil && k.retained() {
			keys = append(keys, k)
			continue
		}
		// The marker is written before the record it indexes
		// (putTrackedKey), by a writer holding the record's lock: a record
		// that is not retained yet may be one being written now. Judged
		// again under that lock, from a read made under it; only a marker
		// whose record is still not retained (or gone) is stale.
		k, err = b.staleRetainedMarker(ctx, s, id)
		if err != nil {
			return nil, err
		}
		if k != nil {
			keys = append(keys, k)
		}
	}
	return keys, nil
}

// retainedMarkerGrace is how long a retained-keys/ marker may go without
// the record it indexes showing it: its writer writes the record right
// after (another instance's writer holds no lock of this one's).
const retainedMarkerGrace = 2 * time.Minute

// staleRetainedMarker re-reads id's record under its lock and returns it
// when it is retained; otherwise it deletes the marker, unless the marker is
// young (its record may be being written, by this instance or another).
func (b *heronBackend) staleRetainedMarker(ctx context.Context, s logical.Storage, id string) (*trackedKey, error) {
	defer b.lockKey(id)()
	k, err := getTrackedKey(ctx, s, id)
	if err != nil {
		return nil, err
	}
	if k != nil && k.retained() {
		return k, nil
	}
	if k != nil {
		marker, err := s.Get(ctx, retainedKeyStoragePrefix+id)
		if err != nil {
			return nil, err
		}
		if marker == nil {
			return nil, nil
		}
		if at, perr := time.Parse(time.RFC3339Nano, string(marker.Value)); perr == nil && time.Since(at) < retainedMarkerGrace {
			return nil, nil
		}
	}
	if err := s.Delete(ctx, retainedKeyStoragePrefix+id); err != nil {
		return nil, fmt.Errorf("deleting stale retained index of key %s: %w", id, err)
	}
	return nil, nil
}

// listTrackedKeys returns every tracked key.
func listTrackedKeys(ctx context.Context, s logical.Storage) ([]*trackedKey, error) {
	ids, err := s.List(ctx, keyStoragePrefix)
	if err != nil {
		return nil, fmt.Errorf("listing key records: %w", err)
	}
	keys := make([]*trackedKey, 0, len(ids))
	for _, id := range ids {
		k, err := getTrackedKey(ctx, s, id)
		if err != nil {
			return nil, err
		}
		if k != nil {
			keys = append(keys, k)
		}
	}
	return keys, nil
}

// countKeys counts the tracked keys that match.
func countKeys(ctx context.Context, s logical.Storage, match func(*trackedKey) bool) (int, error) {
	keys, err := listTrackedKeys(ctx, s)
	if err != nil {
		return 0, err
	}
	n := 0
	for _, k := range keys {
		if match(k) {
			n++
		}
	}
	return n, nil
}

// indexRole gives every active key of role a role-keys/ marker: a role
// that starts capping max_active_keys counts the keys it issued before too.
func indexRole(ctx context.Context, s logical.Storage, role string) error {
	keys, err := listTrackedKeys(ctx, s)
	if err != nil {
		return err
	}
	for _, k := range keys {
		if k.Role != role || k.Kind == keyKindStatic || k.State != keyStateActive || !k.NoIndex {
			continue
		}
		k.NoIndex = false
		if err := putTrackedKey(ctx, s, k); err != nil {
			return err
		}
	}
	return nil
}

// countActiveForRole counts the role's active keys from its index.
func countActiveForRole(ctx context.Context, s logical.Storage, role string) (int, error) {
	ids, err := s.List(ctx, roleKeyStoragePrefix+role+"/")
	if err != nil {
		return 0, fmt.Errorf("listing active keys of role %q: %w", role, err)
	}
	return len(ids), nil
}

// roleLock is the lock that serialises issuance and writes of a role.
func (b *heronBackend) roleLock(role string) *locksutil.LockEntry {
	return locksutil.LockForKey(b.roleLocks, role)
}
