package heron

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/hashicorp/vault/sdk/framework"
	"github.com/hashicorp/vault/sdk/logical"

	"github.com/heron-vault/vault-plugin-secrets-heron/heronapi"
)

// creds/<role>: issuing a key as a lease, under a write-ahead record.

func pathCreds(b *heronBackend) []*framework.Path {
	return []*framework.Path{
		{
			Pattern: "creds/" + framework.GenericNameRegex("role") + "$",
			DisplayAttrs: &framework.DisplayAttributes{
				OperationPrefix: operationPrefixHeron,
				OperationSuffix: "credentials",
			},
			Fields: map[string]*framework.FieldSchema{
				"role": {
					Type:        framework.TypeString,
					Description: "Name of the role to issue a Heron API key from.",
					Required:    true,
					DisplayAttrs: &framework.DisplayAttributes{
						Name: "Role",
					},
				},
				"ttl": {
					Type:        framework.TypeDurationSecond,
					Description: "Lease TTL of this key (update only); no longer than the role's max_ttl.",
					DisplayAttrs: &framework.DisplayAttributes{
						Name: "TTL",
					},
				},
			},
			Operations: map[logical.Operation]framework.OperationHandler{
				logical.ReadOperation: &framework.PathOperation{
					Callback:                    b.pathCredsRead,
					ForwardPerformanceStandby:   true,
					ForwardPerformanceSecondary: true,
					Summary:                     "Issue a Heron API key from a role.",
				},
				logical.UpdateOperation: &framework.PathOperation{
					Callback:                    b.pathCredsRead,
					ForwardPerformanceStandby:   true,
					ForwardPerformanceSecondary: true,
					Summary:                     "Issue a Heron API key from a role, with an optional TTL.",
				},
			},
			HelpSynopsis:    pathCredsHelpSyn,
			HelpDescription: pathCredsHelpDesc,
		},
	}
}

// pathCredsRead handles READ and UPDATE creds/<role>.
func (b *heronBackend) pathCredsRead(ctx context.Context, req *logical.Request, d *framework.FieldData) (*logical.Response, error) {
	roleName := d.Get("role").(string)
	// Vault files the lease under the path as the caller typed it: a lease
	// of creds/Billing would escape `vault lease revoke -prefix
	// heron/creds/billing/`, the command an operator runs in an incident.
	if resp := pathNameError(req, "role", roleName); resp != nil {
		return resp, nil
	}
	role, err := b.role(ctx, req.Storage, roleName)
	if err != nil {
		return nil, err
	}
	if role == nil {
		return logical.ErrorResponse("unknown role %q", roleName), nil
	}

	ttl := role.TTL
	if v, ok := d.GetOk("ttl"); ok {
		reqTTL := time.Duration(v.(int)) * time.Second
		limit := role.MaxTTL
		if limit == 0 {
			limit = b.System().MaxLeaseTTL()
		}
		switch {
		case reqTTL < 0:
			return logical.ErrorResponse("ttl must not be negative"), nil
		case reqTTL > limit:
			return logical.ErrorResponse("ttl (%s) is longer than the role's max_ttl (%s)", reqTTL, limit), nil
		case reqTTL > 0:
			ttl = reqTTL
		}
	}

	keyName, err := role.renderKeyName(nameTemplateData{
		RoleName:    role.Name,
		DisplayName: req.DisplayName,
		EntityID:    req.EntityID,
		Environment: role.Environment,
	})
	if err != nil {
		return logical.ErrorResponse("role %q: %v", roleName, err), nil
	}

	// Rotation swaps the admin key under the write lock; holding the read lock
	// means this issuance never uses a key that is being deactivated.
	cfgLock := b.configLock(role.Environment)
	cfgLock.RLock()
	defer cfgLock.RUnlock()

	// The cached client stands for the config: no storage read per issuance.
	client, err := b.creatingClient(ctx, req.Storage, role.Environment)
	if errors.Is(err, errConfigNotFound) {
		return logical.ErrorResponse("role %q names environment %q, which has no config", roleName, role.Environment), nil
	}
	if err != nil {
		return nil, err
	}

	if role.MaxActiveKeys > 0 {
		lock := b.roleLock(roleName)
		lock.Lock()
		defer lock.Unlock()
		active, err := countActiveForRole(ctx, req.Storage, roleName)
		if err != nil {
			return nil, err
		}
		if active >= role.MaxActiveKeys {
			return logical.ErrorResponse("role %q has %d active keys and max_active_keys is %d: revoke one first", roleName, active, role.MaxActiveKeys), nil
		}
	}

	// Compute the lease exactly as Vault will register it, so revocation can
	// later tell a lease that ran out from one that was revoked early. The
	// mount's TTLs are a round trip to Vault: asked while Heron is asked,
	// since only the record written after Heron's answer needs them.
	type leaseTTLResult struct {
		ttl      time.Duration
		warnings []string
		err      error
	}
	leaseTTLc := make(chan leaseTTLResult, 1)
	go func() {
		lt, warnings, err := framework.CalculateTTL(b.System(), 0, ttl, 0, role.MaxTTL, 0, time.Time{})
		leaseTTLc <- leaseTTLResult{lt, warnings, err}
	}()
	var lease leaseTTLResult
	leaseTTL := func() (time.Duration, error) {
		lease = <-leaseTTLc
		if lease.err != nil {
			return 0, fmt.Errorf("computing lease TTL: %w", lease.err)
		}
		return lease.ttl, nil
	}

	key, err := b.createTrackedKey(ctx, req.Storage, client, &trackedKey{
		KeyName:             keyName,
		Environment:         role.Environment,
		Role:                roleName,
		State:               keyStateActive,
		ExpiredKeyRetention: role.ExpiredKeyRetention,
		NoIndex:             role.MaxActiveKeys == 0,
		EntityID:            req.EntityID,
		DisplayName:         req.DisplayName,
	}, leaseTTL, role.unique)
	if errors.Is(err, heronapi.ErrUnauthorized) {
		return nil, fmt.Errorf("creating a key for role %q: Heron rejected the admin key of config %q (401): write a working admin_api_key to config/%s: %w",
			roleName, role.Environment, role.Environment, err)
	}
	if err != nil {
		return nil, upstreamError(fmt.Sprintf("creating a key for role %q in environment %q", roleName, role.Environment), err)
	}
	issued := key.rec.Issued

	resp := b.Secret(secretTypeAPIKey).Response(map[string]interface{}{
		"api_key":      key.token,
		"key_id":       key.rec.KeyID,
		"key_name":     key.rec.KeyName,
		"token_prefix": key.rec.TokenPrefix,
		"environment":  key.rec.Environment,
		"role":         key.rec.Role,
	}, map[string]interface{}{
		"key_id":       key.rec.KeyID,
		"key_name":     key.rec.KeyName,
		"token_prefix": key.rec.TokenPrefix,
		"environment":  key.rec.Environment,
		"role":         key.rec.Role,
		"issued":       issued.Unix(),
	})
	resp.Secret.TTL = lease.ttl
	resp.Secret.MaxTTL = role.MaxTTL
	resp.Secret.Renewable = true
	for _, w := range lease.warnings {
		resp.AddWarning(w)
	}
	return resp, nil
}

// issuedKey is a freshly created key: its record and the token, which only
// the response carries.
type issuedKey struct {
	rec   *trackedKey
	token string
}

// createTrackedKey creates rec.KeyName in Heron under a write-ahead record, so
// that whatever fails (a lost response, a crash, a storage error) the key ends
// up either tracked or deleted by the rollback. The lease is counted from
// when Heron answered, as Vault counts it from when it registers the lease: a
// slow creation must not make an early revocation look like an expiry.
//
// leaseTTL is called once, only once Heron has answered (see
// pathCredsRead); an error from it undoes the creation like a failed write
// of the record.
func (b *heronBackend) createTrackedKey(ctx context.Context, s logical.Storage, client heronapi.API, rec *trackedKey, leaseTTL func() (time.Duration, error), uniqueName bool) (*issuedKey, error) {
	// The HMAC secret first: once the key exists, nothing may stop it
	// being recorded. Created on the mount's first issuance, cached after.
	hk, err := b.hmacKey(ctx, s, true)
	if err != nil {
		return nil, err
	}
	key, guard, err := b.createUnderWAL(ctx, s, client, walKindKey, &walKeyEntry{
		Environment: rec.Environment,
		Role:        rec.Role,
		KeyName:     rec.KeyName,
	}, uniqueName)
	if err != nil {
		return nil, err
	}
	rec.KeyID = key.ID
	rec.TokenPrefix = key.TokenPrefix
	if rec.TokenPrefix == "" {
		rec.TokenPrefix = keyPrefix(key.Token)
	}
	rec.TokenHMAC = tokenHMACOf(hk, key.Token)
	ttl, err := leaseTTL()
	if err != nil {
		// Nothing holds the key yet: delete it, or leave it to the rollback.
		_ = guard.undo(ctx, client, key.ID)
		return nil, err
	}
	rec.Issued = b.now()
	rec.Expires = rec.Issued.Add(ttl)
	if err := putNewTrackedKey(ctx, s, rec); err != nil {
		// The record may have been written although the write reported an
		// error: take it back out too, so that a key the undo cannot delete
		// is untracked and the rollback deletes it.
		_ = guard.undo(ctx, client, key.ID)
		if derr := deleteTrackedKey(ctx, s, rec); derr != nil {
			b.Logger().Warn("could not remove the record of a key whose issuance failed", "key_id", rec.KeyID, "error", derr)
		}
		return nil, err
	}
	guard.done(ctx)
	b.recordChange(eventKeyIssue, changeOf(rec), "expires", rec.Expires.UTC().Format(time.RFC3339))
	return &issuedKey{rec: rec, token: key.Token}, nil
}

const pathCredsHelpSyn = `Issue a Heron API key from a role.`

const pathCredsHelpDesc = `
Creates one Heron API key named after the role's name_template and returns it
as a lease. When the lease expires the key is deactivated (then deleted after
the role's expired_key_retention); when the lease is revoked it is deleted.
`
