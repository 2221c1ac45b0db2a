package heron

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"time"

	"github.com/hashicorp/vault/sdk/framework"
	"github.com/hashicorp/vault/sdk/logical"

	"github.com/heron-vault/vault-plugin-secrets-heron/heronapi"
)

// The lease of an issued key (secret type heron_api_key): renewal, and
// revocation that tells an expiry (deactivate) from a revocation (delete).

const secretTypeAPIKey = "heron_api_key"

// expiryGrace absorbs the few milliseconds between the engine computing a
// lease's end and Vault registering it, and clock reads in two processes.
const expiryGrace = time.Second

// heronAPIKey is the lease type of issued keys.
func (b *heronBackend) heronAPIKey() *framework.Secret {
	return &framework.Secret{
		Type: secretTypeAPIKey,
		Fields: map[string]*framework.FieldSchema{
			"api_key": {
				Type:        framework.TypeString,
				Description: "The Heron API key (token). Shown once.",
				DisplayAttrs: &framework.DisplayAttributes{
					Name:      "API key",
					Sensitive: true,
				},
			},
			"key_id": {
				Type:        framework.TypeString,
				Description: "Heron id of the key.",
			},
			"key_name": {
				Type:        framework.TypeString,
				Description: "Name of the key in Heron.",
			},
			"token_prefix": {
				Type:        framework.TypeString,
				Description: "First 8 characters of the token, as Heron's dashboard shows them.",
			},
			"environment": {
				Type:        framework.TypeString,
				Description: "Heron environment of the key.",
			},
			"role": {
				Type:        framework.TypeString,
				Description: "Role the key was issued from.",
			},
		},
		Renew:  b.secretKeyRenew,
		Revoke: b.secretKeyRevoke,
	}
}

// secretKeyRenew renews a heron_api_key lease. It makes no upstream call: a
// Heron key has no expiry of its own, the lease is the expiry.
func (b *heronBackend) secretKeyRenew(ctx context.Context, req *logical.Request, _ *framework.FieldData) (*logical.Response, error) {
	roleName, _ := req.Secret.InternalData["role"].(string)
	keyID, _ := req.Secret.InternalData["key_id"].(string)
	role, err := b.role(ctx, req.Storage, roleName)
	if err != nil {
		return nil, err
	}
	// Vault prints an error response of a renewal as a raw Go structure;
	// an error with a code reads as what it says.
	if role == nil {
		return nil, &codedError{code: http.StatusBadRequest, msg: fmt.Sprintf("role %q no longer exists: the lease of key %s cannot be renewed (it ends at its current expiry; issue a new one from another role)", roleName, keyID)}
	}

	ttl, warnings, err := framework.CalculateTTL(b.System(), req.Secret.Increment, role.TTL, 0, role.MaxTTL, 0, req.Secret.IssueTime)
	if err != nil {
		return nil, &codedError{code: http.StatusBadRequest, msg: fmt.Sprintf("key %s: %v", keyID, err)}
	}

	// The record's lock: a quarantine written meanwhile is never lost
	// under this renewal's write (a renewal never reactivates a key).
	defer b.lockKey(keyID)()
	rec, err := getTrackedKey(ctx, req.Storage, keyID)
	if err != nil {
		return nil, err
	}
	if rec == nil || rec.State != keyStateActive || rec.Pending != "" {
		return nil, &codedError{code: http.StatusBadRequest, msg: fmt.Sprintf("key %s is no longer active in this engine (deleted or deactivated in Heron?): its lease cannot be renewed", keyID)}
	}
	// The end Vault holds now: it stays if this renewal fails, even after
	// its write was stored (see vaultLeaseEnd).
	rec.EndBefore = vaultLeaseEnd(rec, req.Secret)
	rec.RenewedTTL = ttl
	rec.Expires = leaseEnd(b.now(), ttl, req.Secret.IssueTime, b.effectiveMaxTTL(role))
	// A renewal means Vault holds the lease live: a failed revocation it
	// gave up on before is over, and the next one decides afresh.
	rec.Revoke = ""
	rec.RateLimitedRevokes = 0
	rec.LastRenewed = b.now()
	// Only the record changes on renewal; the active index entry stands.
	if err := putJSON(ctx, req.Storage, keyStoragePrefix+rec.KeyID, "key record "+rec.KeyID, rec); err != nil {
		return nil, err
	}

	b.recordChange(eventKeyRenew, changeOf(rec), "expires", rec.Expires.UTC().Format(time.RFC3339))
	resp := &logical.Response{Secret: req.Secret}
	resp.Secret.TTL = ttl
	resp.Secret.MaxTTL = role.MaxTTL
	for _, w := range warnings {
		resp.AddWarning(w)
	}
	return resp, nil
}

// effectiveMaxTTL is the max TTL Vault applies to the role's leases.
func (b *heronBackend) effectiveMaxTTL(role *heronRole) time.Duration {
	m := b.System().MaxLeaseTTL()
	if role.MaxTTL > 0 && role.MaxTTL < m {
		m = role.MaxTTL
	}
	return m
}

// leaseEnd is when Vault will expire a lease renewed now for ttl. Vault
// computes the cap from the issue time truncated to the second and may land a
// fraction of a second later than now+ttl; taking the earlier of the two makes
// the engine's end never later than Vault's.
func leaseEnd(now time.Time, ttl time.Duration, issue time.Time, maxTTL time.Duration) time.Time {
	end := now.Add(ttl)
	if maxTTL > 0 && !issue.IsZero() {
		if limit := issue.Truncate(time.Second).Add(maxTTL); limit.Before(end) {
			end = limit
		}
	}
	return end
}

// secretKeyRevoke handles both ways a lease ends. Vault sends the same
// request for both, so the engine's own record decides: a lease whose time
// ran out deactivates its key (deleted after the role's retention); any other
// revocation deletes it at once.
func (b *heronBackend) secretKeyRevoke(ctx context.Context, req *logical.Request, _ *framework.FieldData) (*logical.Response, error) {
	keyID, _ := req.Secret.InternalData["key_id"].(string)
	env, _ := req.Secret.InternalData["environment"].(string)
	roleName, _ := req.Secret.InternalData["role"].(string)
	if keyID == "" || env == "" {
		// Returned bare: the plugin's gRPC boundary only carries this error
		// across by identity, and it tells Vault to stop retrying a lease
		// that no attempt could ever revoke.
		b.Logger().Error("lease internal data lacks key_id or environment: it cannot be revoked", "key_id", keyID, "environment", env)
		return nil, logical.ErrUnrecoverable
	}
	log := b.Logger().With("key_id", keyID, "role", roleName, "environment", env)

	cfgLock := b.configLock(env)
	cfgLock.RLock()
	defer cfgLock.RUnlock()
	// Decided and written from a read under the record's lock.
	defer b.lockKey(keyID)()

	rec, err := getTrackedKey(ctx, req.Storage, keyID)
	if err != nil {
		return nil, err
	}
	if rec != nil && (rec.State == keyStateDeactivated || (rec.Pending != "" && !rec.Unreachable)) {
		// Already deactivated by an earlier attempt that failed to finish,
		// or handed to the cleanup pass for want of budget: nothing more to
		// do for the lease.
		return nil, nil
	}
	now := b.now()
	// Expiry or revocation is decided once: a retry of a revocation that
	// failed keeps the first attempt's decision, however late it lands.
	expired := false
	if rec != nil {
		decided := rec.Revoke
		if rec.Pending != "" {
			decided = rec.Pending
		}
		switch decided {
		case pendingDeactivate:
			expired = true
		case pendingDelete:
		default:
			expired = rec.State == keyStateActive && !now.Before(vaultLeaseEnd(rec, req.Secret).Add(-expiryGrace))
		}
	}

	client, err := b.getClient(ctx, req.Storage, env)
	if rec == nil && errors.Is(err, errConfigNotFound) {
		// The engine forgets a key only once it is gone from Heron (or named
		// by a write-ahead record that deletes it), and a config is deleted
		// only after its keys: nothing is left to revoke.
		log.Info("lease of an untracked key in a deleted config: nothing left to revoke")
		return nil, nil
	}
	if err != nil {
		return nil, b.revokeFailed(ctx, req.Storage, rec, expired, fmt.Errorf("revoking key %s: %w", keyID, err))
	}

	if expired {
		err = client.DeactivateKey(ctx, keyID)
	} else {
		err = client.DeleteKey(ctx, keyID)
	}
	switch {
	case err == nil:
	case errors.Is(err, heronapi.ErrNotFound) && rec != nil && rec.Unreachable:
		// The admin key cannot see this key (accepted with force=true): a
		// 404 proves nothing, and a revocation is never reported done while
		// the key may be live. The record keeps the decision for Vault's
		// retries and for the cleanup pass, which finishes it once an admin
		// key that sees the key is configured.
		rec.Pending = decision(expired)
		rec.Revoke = rec.Pending
		if err := putTrackedKey(ctx, req.Storage, rec); err != nil {
			return nil, err
		}
		log.Warn("key is unreachable with the current admin key: its revocation cannot be confirmed")
		return nil, fmt.Errorf("revoking key %s: it is unreachable with the current admin key of config %q (accepted with force=true), so Heron's 404 does not prove it gone; write config/%s with an admin key that can see it", keyID, env, env)
	case errors.Is(err, heronapi.ErrNotFound):
		log.Warn("key already gone from Heron; revocation succeeds", "expired", expired)
		expired = false
	case errors.Is(err, heronapi.ErrUnauthorized):
		return nil, b.revokeFailed(ctx, req.Storage, rec, expired, fmt.Errorf("revoking key %s: Heron rejected the admin key of config %q (401): write a working admin_api_key to config/%s: %w", keyID, env, env, err))
	case errors.Is(err, heronapi.ErrRateLimited) && rec != nil:
		rec.Revoke = decision(expired)
		return b.revokeRateLimited(ctx, req.Storage, rec, expired, err)
	default:
		return nil, b.revokeFailed(ctx, req.Storage, rec, expired, upstreamError(fmt.Sprintf("revoking key %s in environment %q", keyID, env), err))
	}

	if rec == nil {
		log.Info("revoked untracked key", "expired", expired)
		return nil, nil
	}
	if !expired {
		if err := b.forgetKey(ctx, req.Storage, rec, reasonRevoked); err != nil {
			return nil, err
		}
		b.recordChange(eventKeyRevoke, changeOf(rec))
		return nil, nil
	}

	retention := rec.ExpiredKeyRetention
	if role, err := b.role(ctx, req.Storage, roleName); err == nil && role != nil {
		retention = role.ExpiredKeyRetention
	}
	rec.State = keyStateDeactivated
	rec.Revoke = ""
	rec.Pending = ""
	rec.DeactivatedAt = now
	rec.DeleteAfter = now.Add(retention)
	if err := putTrackedKey(ctx, req.Storage, rec); err != nil {
		return nil, err
	}
	b.recordChange(eventKeyExpire, changeOf(rec), "delete_after", rec.DeleteAfter.UTC().Format(time.RFC3339))
	return nil, nil
}

// vaultLeaseEnd is when Vault ends the lease, as far as the engine can
// tell. The record's end is counted from Heron's answer; Vault counts from
// when it registered the lease, after the handler returned (after the
// record's storage write, which a loaded Raft can take seconds over). Until
// a renewal moves it, Vault's own issue time and TTL, sent with every
// revoke, say when Vault ends it: the later of the two is taken, so a
// revocation before Vault's end is never mistaken for an expiry.
//
// After a renewal, Vault's TTL (sent with every revoke and renewal) is the
// one the last renewal that took returned. When it is not the TTL the
// record's last renewal returned, that renewal failed after its write was
// stored: Vault still ends the lease when it did before it (EndBefore), and
// the later end is taken again. (TTLs are compared to within
// renewalTTLSlack: Vault clamps to the max TTL counted from the second of
// issue.)
func vaultLeaseEnd(rec *trackedKey, secret *logical.Secret) time.Time {
	end := rec.Expires
	if secret == nil || secret.TTL <= 0 {
		return end
	}
	if !rec.LastRenewed.IsZero() {
		// Within the slack either may be Vault's: the later is taken, so
		// that an error leans towards deleting, never towards a live key.
		d := secret.TTL - rec.RenewedTTL
		mismatch := rec.RenewedTTL > 0 && (d > renewalTTLSlack || d < -renewalTTLSlack)
		if rec.EndBefore.After(end) && (mismatch || rec.EndBefore.Sub(end) <= renewalTTLSlack) {
			end = rec.EndBefore
		}
		return end
	}
	if secret.IssueTime.IsZero() {
		return end
	}
	if v := secret.IssueTime.Add(secret.TTL); v.After(end) {
		end = v
	}
	return end
}

// renewalTTLSlack is how far Vault's TTL may be from what a renewal returned
// and still be that renewal's.
const renewalTTLSlack = 2 * time.Second

// decision names what a revocation does to the key.
func decision(expired bool) string {
	if expired {
		return pendingDeactivate
	}
	return pendingDelete
}

// revokeFailed records the first attempt's decision before Vault retries, so
// the retry does the same thing whenever it lands, and returns cause.
func (b *heronBackend) revokeFailed(ctx context.Context, s logical.Storage, rec *trackedKey, expired bool, cause error) error {
	if rec == nil || rec.Revoke != "" {
		return cause
	}
	rec.Revoke = decision(expired)
	// Only the record changes; its indexes stand.
	if err := putJSON(ctx, s, keyStoragePrefix+rec.KeyID, "key record "+rec.KeyID, rec); err != nil {
		b.Logger().Warn("could not record the revocation's decision; a retry decides again", "key_id", rec.KeyID, "error", err)
	}
	return cause
}

// revokeRateLimited handles a revocation that found no budget (ours or
// Heron's). The first attempts fail retryably so Vault tries again later; past
// deferRevokeAfter the lease is released and the cleanup pass, which has no
// request deadline, deletes (or deactivates) the key as budget allows.
func (b *heronBackend) revokeRateLimited(ctx context.Context, s logical.Storage, rec *trackedKey, expired bool, cause error) (*logical.Response, error) {
	rec.RateLimitedRevokes++
	if rec.RateLimitedRevokes < deferRevokeAfter {
		if err := putTrackedKey(ctx, s, rec); err != nil {
			return nil, err
		}
		return nil, upstreamError(fmt.Sprintf("revoking key %s in environment %q (attempt %d)", rec.KeyID, rec.Environment, rec.RateLimitedRevokes), cause)
	}
	rec.Pending = pendingDelete
	if expired {
		rec.Pending = pendingDeactivate
	}
	if err := putTrackedKey(ctx, s, rec); err != nil {
		return nil, err
	}
	b.Logger().Warn("no request budget to revoke the key in time: the lease is released and the cleanup pass will finish the job",
		"key_id", rec.KeyID, "role", rec.Role, "environment", rec.Environment, "pending", rec.Pending, "attempts", rec.RateLimitedRevokes)
	return nil, nil
}
