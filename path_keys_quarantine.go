package heron

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"sync"

	"github.com/hashicorp/vault/sdk/framework"
	"github.com/hashicorp/vault/sdk/logical"

	"github.com/heron-vault/vault-plugin-secrets-heron/heronapi"
)

// keys/<key_id>/deactivate, keys/<key_id>/activate and keys/<key_id>/revoke:
// a security team's hands on one key, whatever holds it (a lease, a static
// role). Deactivation is Heron's own advice for a suspected key: the key
// stops working at once and can come back, or be deleted once the
// investigation says so.

const (
	eventKeyQuarantine   = "heron/key-quarantine"
	eventKeyUnquarantine = "heron/key-unquarantine"

	// reasonQuarantined is the reason of a quarantined key's record.
	reasonQuarantined = "quarantined"
	// reasonRevokedByOperator is the tombstone reason of keys/<id>/revoke.
	reasonRevokedByOperator = "revoked-by-operator"
)

// lockKey takes the lock of one key record and returns its release. Every
// change of a key's state is decided from a read made under it and written
// before it is released, so that a quarantine, a renewal and a revocation of
// the same key never write over each other's decision. One lock per key id
// (not a fixed set of shared buckets): a revocation waiting for Heron's
// budget never holds up the renewal of another key. Lock order: a config's
// lock, then a key's.
func (b *heronBackend) lockKey(id string) (unlock func()) {
	return b.keyLocks.lock(id)
}

// keyLocker holds the locks of the key records in use, each dropped when
// its last holder or waiter is done.
type keyLocker struct {
	mu    sync.Mutex
	locks map[string]*keyLockEntry
}

type keyLockEntry struct {
	mu   sync.Mutex
	refs int
}

func (l *keyLocker) lock(id string) func() {
	l.mu.Lock()
	if l.locks == nil {
		l.locks = map[string]*keyLockEntry{}
	}
	e := l.locks[id]
	if e == nil {
		e = &keyLockEntry{}
		l.locks[id] = e
	}
	e.refs++
	l.mu.Unlock()
	e.mu.Lock()
	return func() {
		e.mu.Unlock()
		l.mu.Lock()
		if e.refs--; e.refs == 0 {
			delete(l.locks, id)
		}
		l.mu.Unlock()
	}
}

func pathKeysQuarantine(b *heronBackend) []*framework.Path {
	keyID := func() map[string]*framework.FieldSchema {
		return map[string]*framework.FieldSchema{
			"key_id": {
				Type:        framework.TypeString,
				Description: "Heron id (heron_id) of a key this engine tracks.",
				Required:    true,
				DisplayAttrs: &framework.DisplayAttributes{
					Name: "Key ID",
				},
			},
		}
	}
	one := func(action, suffix, summary string, cb framework.OperationFunc, syn, desc string) *framework.Path {
		return &framework.Path{
			Pattern: "keys/" + framework.GenericNameRegex("key_id") + "/" + action + "$",
			DisplayAttrs: &framework.DisplayAttributes{
				OperationPrefix: operationPrefixHeron,
				OperationVerb:   action,
				OperationSuffix: suffix,
			},
			Fields: keyID(),
			Operations: map[logical.Operation]framework.OperationHandler{
				logical.UpdateOperation: &framework.PathOperation{
					Callback: cb,
					Summary:  summary,
				},
			},
			HelpSynopsis:    syn,
			HelpDescription: desc,
		}
	}
	return []*framework.Path{
		one("deactivate", "key", "Quarantine a key: deactivate it in Heron now, whatever holds it.",
			b.pathKeyDeactivate, pathKeyDeactivateHelpSyn, pathKeyDeactivateHelpDesc),
		one("activate", "key", "Lift a key's quarantine: activate it in Heron again.",
			b.pathKeyActivate, pathKeyActivateHelpSyn, pathKeyActivateHelpDesc),
		one("revoke", "key", "Delete a key in Heron now, whatever holds it.",
			b.pathKeyRevoke, pathKeyRevokeHelpSyn, pathKeyRevokeHelpDesc),
	}
}

// keyNotTracked is the 404 of a key id this engine has no live record of.
func keyNotTracked(id string, rec *trackedKey) error {
	if rec != nil && rec.State == keyStateDeleted {
		return &codedError{code: http.StatusNotFound, msg: fmt.Sprintf("key %s was deleted on %s (reason %s): read keys/%s for its history", id, formatTime(rec.DeletedAt), rec.Reason, id)}
	}
	return &codedError{code: http.StatusNotFound, msg: fmt.Sprintf("key %s is not tracked by this engine (list keys/ for the keys it tracks; inventory/<environment> for every key Heron holds)", id)}
}

// withKey runs fn on id's record read under the config's read lock (a
// rotation never swaps the admin key under it) and the record's own lock,
// with a client of the key's environment. fn's changes are written by fn.
func (b *heronBackend) withKey(ctx context.Context, req *logical.Request, id string, fn func(rec *trackedKey, client heronapi.API) (*logical.Response, error)) (*logical.Response, error) {
	if !heronapi.ValidKeyID(id) {
		return logical.ErrorResponse("key_id %q is not a Heron key id", id), nil
	}
	first, err := getKeyRecord(ctx, req.Storage, id)
	if err != nil {
		return nil, err
	}
	if first == nil || first.State == keyStateDeleted {
		return nil, keyNotTracked(id, first)
	}
	cfgLock := b.configLock(first.Environment)
	cfgLock.RLock()
	defer cfgLock.RUnlock()
	defer b.lockKey(id)()
	rec, err := getKeyRecord(ctx, req.Storage, id)
	if err != nil {
		return nil, err
	}
	if rec == nil || rec.State == keyStateDeleted {
		return nil, keyNotTracked(id, rec)
	}
	client, err := b.getClient(ctx, req.Storage, rec.Environment)
	if errors.Is(err, errConfigNotFound) {
		return logical.ErrorResponse("key %s belongs to environment %q, which has no config: write config/%s with an admin key that can manage it", id, rec.Environment, rec.Environment), nil
	}
	if err != nil {
		return nil, err
	}
	return fn(rec, client)
}

// keyGoneInHeron handles a 404 from Heron for a tracked key: forgotten as
// missing (its record becomes a tombstone), unless the admin key cannot see
// it, when the 404 proves nothing.
func (b *heronBackend) keyGoneInHeron(ctx context.Context, s logical.Storage, rec *trackedKey, doing string) (*logical.Response, error) {
	if rec.Unreachable {
		return nil, fmt.Errorf("%s key %s: it is unreachable with the current admin key of config %q (accepted with force=true), so Heron's 404 does not prove it gone; write config/%s with an admin key that can see it",
			doing, rec.KeyID, rec.Environment, rec.Environment)
	}
	if err := b.forgetKey(ctx, s, rec, reasonMissing); err != nil {
		return nil, err
	}
	b.recordChange(eventKeyMissing, changeOf(rec))
	return nil, &codedError{code: http.StatusNotFound, msg: fmt.Sprintf("%s key %s: Heron no longer has it (deleted outside this engine); its record now says so (reason %s)", doing, rec.KeyID, reasonMissing)}
}

// heronFailed names what failed when Heron refused or could not answer.
func heronFailed(doing string, rec *trackedKey, err error) error {
	if errors.Is(err, heronapi.ErrUnauthorized) {
		return fmt.Errorf("%s key %s: Heron rejected the admin key of config %q (401): write a working admin_api_key to config/%s: %w", doing, rec.KeyID, rec.Environment, rec.Environment, err)
	}
	return upstreamError(fmt.Sprintf("%s key %s in environment %q", doing, rec.KeyID, rec.Environment), err)
}

// pathKeyDeactivate handles UPDATE keys/<key_id>/deactivate: quarantine.
func (b *heronBackend) pathKeyDeactivate(ctx context.Context, req *logical.Request, d *framework.FieldData) (*logical.Response, error) {
	id := d.Get("key_id").(string)
	return b.withKey(ctx, req, id, func(rec *trackedKey, client heronapi.API) (*logical.Response, error) {
		if rec.Quarantined {
			resp := &logical.Response{Data: keyInfo(rec)}
			resp.AddWarning(fmt.Sprintf("key %s is quarantined already (since %s, by %q)", id, formatTime(rec.QuarantinedAt), rec.QuarantinedBy))
			return resp, nil
		}
		if rec.State == keyStateDeactivated {
			return logical.ErrorResponse("key %s is deactivated already (since %s; deleted after %s): keys/%s/revoke deletes it now", id, formatTime(rec.DeactivatedAt), formatTime(rec.DeleteAfter), id), nil
		}
		err := client.DeactivateKey(ctx, id)
		if errors.Is(err, heronapi.ErrNotFound) {
			return b.keyGoneInHeron(ctx, req.Storage, rec, "quarantining")
		}
		if err != nil {
			return nil, heronFailed("quarantining", rec, err)
		}
		rec.Quarantined = true
		rec.QuarantinedAt = b.now()
		rec.QuarantinedBy = req.DisplayName
		rec.Reason = reasonQuarantined
		if err := putTrackedKey(ctx, req.Storage, rec); err != nil {
			// Heron has it deactivated; a retry of this request records it.
			return nil, fmt.Errorf("key %s is deactivated in Heron but its record could not be written (run this again): %w", id, err)
		}
		b.recordChange(eventKeyQuarantine, changeOf(rec), "reason", reasonQuarantined, "requested_by", req.DisplayName)
		return &logical.Response{Data: keyInfo(rec)}, nil
	})
}

// pathKeyActivate handles UPDATE keys/<key_id>/activate: lifts a quarantine,
// and only that: a key deactivated because its lease ran out, or retired by
// its static role, stays deactivated.
func (b *heronBackend) pathKeyActivate(ctx context.Context, req *logical.Request, d *framework.FieldData) (*logical.Response, error) {
	id := d.Get("key_id").(string)
	return b.withKey(ctx, req, id, func(rec *trackedKey, client heronapi.API) (*logical.Response, error) {
		if !rec.Quarantined {
			return logical.ErrorResponse("key %s is not quarantined: activate only lifts a quarantine (keys/%s/deactivate)", id, id), nil
		}
		if rec.State != keyStateActive || rec.Pending != "" {
			return logical.ErrorResponse("key %s stays deactivated: what held it has ended (state %s, pending %q) since it was quarantined", id, rec.State, rec.Pending), nil
		}
		if rec.kind() == keyKindLease && !b.now().Before(rec.Expires) {
			// Vault's revocation of the lease is due: the key must not come
			// back in between.
			return logical.ErrorResponse("key %s stays deactivated: its lease ended at %s", id, formatTime(rec.Expires)), nil
		}
		err := client.ActivateKey(ctx, id)
		if errors.Is(err, heronapi.ErrNotFound) {
			return b.keyGoneInHeron(ctx, req.Storage, rec, "activating")
		}
		if err != nil {
			return nil, heronFailed("activating", rec, err)
		}
		rec.Quarantined = false
		rec.ActivatedAt = b.now()
		rec.ActivatedBy = req.DisplayName
		rec.Reason = ""
		if err := putTrackedKey(ctx, req.Storage, rec); err != nil {
			// The record still says quarantined: nothing will deactivate
			// the key by mistake, and a retry records the lift.
			return nil, fmt.Errorf("key %s is active in Heron again but its record could not be written (run this again): %w", id, err)
		}
		b.recordChange(eventKeyUnquarantine, changeOf(rec), "requested_by", req.DisplayName)
		return &logical.Response{Data: keyInfo(rec)}, nil
	})
}

// pathKeyRevoke handles UPDATE keys/<key_id>/revoke: the key is deleted in
// Heron now. Its lease stays in Vault until it ends; its revocation then
// finds the key gone and succeeds. A static role whose current key it was
// rotates at its next static-creds read.
func (b *heronBackend) pathKeyRevoke(ctx context.Context, req *logical.Request, d *framework.FieldData) (*logical.Response, error) {
	id := d.Get("key_id").(string)
	return b.withKey(ctx, req, id, func(rec *trackedKey, client heronapi.API) (*logical.Response, error) {
		err := client.DeleteKey(ctx, id)
		if errors.Is(err, heronapi.ErrNotFound) && rec.Unreachable {
			return b.keyGoneInHeron(ctx, req.Storage, rec, "revoking")
		}
		if err != nil && !errors.Is(err, heronapi.ErrNotFound) {
			return nil, heronFailed("revoking", rec, err)
		}
		rec.RevokedBy = req.DisplayName
		if err := b.forgetKey(ctx, req.Storage, rec, reasonRevokedByOperator); err != nil {
			return nil, fmt.Errorf("key %s is deleted in Heron but its record could not be written (run this again): %w", id, err)
		}
		b.recordChange(eventKeyRevoke, changeOf(rec), "reason", reasonRevokedByOperator, "requested_by", req.DisplayName)
		resp := &logical.Response{Data: keyInfo(rec)}
		if rec.kind() == keyKindStatic {
			resp.AddWarning(fmt.Sprintf("key %s was a key of static role %q: its next static-creds read rotates to a new key", id, rec.Role))
		}
		return resp, nil
	})
}

const pathKeyDeactivateHelpSyn = `Quarantine a key: deactivate it in Heron now.`

const pathKeyDeactivateHelpDesc = `
Deactivates the key in Heron at once, whatever holds it (a lease or a static
role): requests with it get 401. The key's record says so (state deactivated,
quarantined, quarantined_at, quarantined_by, reason=quarantined) and the event
heron/key-quarantine is sent. Nothing but keys/<key_id>/activate makes it
active again: not a renewal, a rotation or the periodic pass. Its lease still
ends as usual: a revocation deletes it, an expiry keeps it deactivated until
its retention ends.
`

const pathKeyActivateHelpSyn = `Lift a key's quarantine.`

const pathKeyActivateHelpDesc = `
Activates a quarantined key in Heron again (event heron/key-unquarantine). A
key that was not quarantined, or whose lease or static role ended meanwhile,
stays as it is (400).
`

const pathKeyRevokeHelpSyn = `Delete a key in Heron now.`

const pathKeyRevokeHelpDesc = `
Deletes the key in Heron at once, whatever holds it; its record becomes a
tombstone with reason revoked-by-operator and revoked_by. A later revocation
of its lease finds it gone and succeeds; a static role whose current key it
was rotates at its next static-creds read.
`
