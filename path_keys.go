package heron

import (
	"context"
	"errors"
	"fmt"
	"sort"
	"strings"
	"time"

	"github.com/hashicorp/vault/sdk/framework"
	"github.com/hashicorp/vault/sdk/logical"

	"github.com/heron-vault/vault-plugin-secrets-heron/heronapi"
)

const secretTypeAPIKey = "heron_api_key"

// expiryGrace absorbs the few milliseconds between the engine computing a
// lease's end and Vault registering it, and clock reads in two processes.
const expiryGrace = time.Second

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
					Type:        framework.TypeLowerCaseString,
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
					Callback: b.pathCredsRead,
					Summary:  "Issue a Heron API key from a role.",
				},
				logical.UpdateOperation: &framework.PathOperation{
					Callback: b.pathCredsRead,
					Summary:  "Issue a Heron API key from a role, with an optional TTL.",
				},
			},
			HelpSynopsis:    pathCredsHelpSyn,
			HelpDescription: pathCredsHelpDesc,
		},
	}
}

func pathKeys(b *heronBackend) []*framework.Path {
	return []*framework.Path{
		{
			Pattern: "keys/?$",
			DisplayAttrs: &framework.DisplayAttributes{
				OperationPrefix: operationPrefixHeron,
				OperationSuffix: "keys",
			},
			Fields: map[string]*framework.FieldSchema{
				"role": {
					Type:        framework.TypeString,
					Description: "Only list keys issued from this role.",
					Query:       true,
					DisplayAttrs: &framework.DisplayAttributes{
						Name: "Role",
					},
				},
				"environment": {
					Type:        framework.TypeString,
					Description: "Only list keys of this environment.",
					Query:       true,
					DisplayAttrs: &framework.DisplayAttributes{
						Name: "Environment",
					},
				},
				"state": {
					Type:          framework.TypeString,
					Description:   "Only list keys in this state (active or deactivated).",
					Query:         true,
					AllowedValues: []interface{}{keyStateActive, keyStateDeactivated},
					DisplayAttrs: &framework.DisplayAttributes{
						Name: "State",
					},
				},
			},
			Operations: map[logical.Operation]framework.OperationHandler{
				logical.ListOperation: &framework.PathOperation{
					Callback: b.pathKeysList,
					Summary:  "List the Heron keys this engine has issued and still tracks.",
				},
			},
			HelpSynopsis:    pathKeysListHelpSyn,
			HelpDescription: pathKeysListHelpDesc,
		},
		{
			Pattern: "keys/" + framework.GenericNameRegex("key_id") + "$",
			DisplayAttrs: &framework.DisplayAttributes{
				OperationPrefix: operationPrefixHeron,
				OperationSuffix: "key",
			},
			Fields: map[string]*framework.FieldSchema{
				"key_id": {
					Type:        framework.TypeString,
					Description: "Heron id (heron_id) of the key.",
					Required:    true,
					DisplayAttrs: &framework.DisplayAttributes{
						Name: "Key ID",
					},
				},
			},
			Operations: map[logical.Operation]framework.OperationHandler{
				logical.ReadOperation: &framework.PathOperation{
					Callback: b.pathKeysRead,
					Summary:  "Read a tracked key, merged with Heron's live view of it.",
				},
			},
			HelpSynopsis:    pathKeysHelpSyn,
			HelpDescription: pathKeysHelpDesc,
		},
	}
}

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

// pathCredsRead handles READ and UPDATE creds/<role>.
func (b *heronBackend) pathCredsRead(ctx context.Context, req *logical.Request, d *framework.FieldData) (*logical.Response, error) {
	roleName := d.Get("role").(string)
	// Vault files the lease under the path as the caller typed it: a lease
	// of creds/Billing would escape `vault lease revoke -prefix
	// heron/creds/billing/`, the command an operator runs in an incident.
	if typed := strings.TrimPrefix(req.Path, "creds/"); typed != roleName {
		return logical.ErrorResponse("role names are lowercase: read creds/%s, not creds/%s, so that every lease of the role shares one prefix", roleName, typed), nil
	}
	role, err := getRole(ctx, req.Storage, roleName)
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
	client, err := b.getClient(ctx, req.Storage, role.Environment)
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
	// later tell a lease that ran out from one that was revoked early.
	leaseTTL, warnings, err := framework.CalculateTTL(b.System(), 0, ttl, 0, role.MaxTTL, 0, time.Time{})
	if err != nil {
		return nil, fmt.Errorf("computing lease TTL: %w", err)
	}

	key, err := b.createTrackedKey(ctx, req.Storage, client, &trackedKey{
		KeyName:             keyName,
		Environment:         role.Environment,
		Role:                roleName,
		State:               keyStateActive,
		ExpiredKeyRetention: role.ExpiredKeyRetention,
	}, leaseTTL, role.uniqueNames())
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
	resp.Secret.TTL = leaseTTL
	resp.Secret.MaxTTL = role.MaxTTL
	resp.Secret.Renewable = true
	for _, w := range warnings {
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
func (b *heronBackend) createTrackedKey(ctx context.Context, s logical.Storage, client heronapi.API, rec *trackedKey, leaseTTL time.Duration, uniqueName bool) (*issuedKey, error) {
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
	rec.Issued = b.now()
	rec.Expires = rec.Issued.Add(leaseTTL)
	if err := putNewTrackedKey(ctx, s, rec); err != nil {
		// The record may have been written although the write reported an
		// error: take it back out too, so that a key the undo cannot delete
		// is untracked and the rollback deletes it.
		guard.undo(ctx, client, key.ID)
		if derr := deleteTrackedKey(ctx, s, rec); derr != nil {
			b.Logger().Warn("could not remove the record of a key whose issuance failed", "key_id", rec.KeyID, "error", derr)
		}
		return nil, err
	}
	guard.done(ctx)
	b.Logger().Info("issued key", "key_id", rec.KeyID, "key_name", rec.KeyName, "role", rec.Role, "environment", rec.Environment, "expires", rec.Expires.UTC().Format(time.RFC3339))
	return &issuedKey{rec: rec, token: key.Token}, nil
}

// secretKeyRenew renews a heron_api_key lease. It makes no upstream call: a
// Heron key has no expiry of its own, the lease is the expiry.
func (b *heronBackend) secretKeyRenew(ctx context.Context, req *logical.Request, _ *framework.FieldData) (*logical.Response, error) {
	roleName, _ := req.Secret.InternalData["role"].(string)
	keyID, _ := req.Secret.InternalData["key_id"].(string)
	role, err := getRole(ctx, req.Storage, roleName)
	if err != nil {
		return nil, err
	}
	if role == nil {
		return logical.ErrorResponse("role %q no longer exists: the lease of key %s cannot be renewed", roleName, keyID), nil
	}

	ttl, warnings, err := framework.CalculateTTL(b.System(), req.Secret.Increment, role.TTL, 0, role.MaxTTL, 0, req.Secret.IssueTime)
	if err != nil {
		return logical.ErrorResponse("key %s: %v", keyID, err), nil
	}

	rec, err := getTrackedKey(ctx, req.Storage, keyID)
	if err != nil {
		return nil, err
	}
	if rec == nil || rec.State != keyStateActive || rec.Pending != "" {
		return logical.ErrorResponse("key %s is no longer active in this engine (deleted or deactivated in Heron?)", keyID), nil
	}
	rec.Expires = leaseEnd(b.now(), ttl, req.Secret.IssueTime, b.effectiveMaxTTL(role))
	// A renewal means Vault holds the lease live: a failed revocation it
	// gave up on before is over, and the next one decides afresh.
	rec.Revoke = ""
	rec.RateLimitedRevokes = 0
	// Only the record changes on renewal; the active index entry stands.
	if err := putJSON(ctx, req.Storage, keyStoragePrefix+rec.KeyID, "key record "+rec.KeyID, rec); err != nil {
		return nil, err
	}

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
			expired = rec.State == keyStateActive && !now.Before(rec.Expires.Add(-expiryGrace))
		}
	}

	client, err := b.getClient(ctx, req.Storage, env)
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
		if err := deleteTrackedKey(ctx, req.Storage, rec); err != nil {
			return nil, err
		}
		log.Info("lease revoked: key deleted")
		return nil, nil
	}

	retention := rec.ExpiredKeyRetention
	if role, err := getRole(ctx, req.Storage, roleName); err == nil && role != nil {
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
	log.Info("lease expired: key deactivated", "delete_after", rec.DeleteAfter.UTC().Format(time.RFC3339))
	return nil, nil
}

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

// pathKeysList handles LIST keys/.
func (b *heronBackend) pathKeysList(ctx context.Context, req *logical.Request, d *framework.FieldData) (*logical.Response, error) {
	role := d.Get("role").(string)
	env := d.Get("environment").(string)
	state := d.Get("state").(string)
	if state != "" && state != keyStateActive && state != keyStateDeactivated {
		return logical.ErrorResponse("state must be %q or %q, got %q", keyStateActive, keyStateDeactivated, state), nil
	}

	keys, err := listTrackedKeys(ctx, req.Storage)
	if err != nil {
		return nil, err
	}
	var ids []string
	info := make(map[string]interface{})
	for _, k := range keys {
		if (role != "" && k.Role != role) || (env != "" && k.Environment != env) || (state != "" && k.State != state) {
			continue
		}
		ids = append(ids, k.KeyID)
		info[k.KeyID] = map[string]interface{}{
			"key_name":     k.KeyName,
			"role":         k.Role,
			"environment":  k.Environment,
			"token_prefix": k.TokenPrefix,
			"state":        k.State,
			"issued":       k.Issued.UTC().Format(time.RFC3339),
			"expires":      k.Expires.UTC().Format(time.RFC3339),
			"pending":      k.Pending,
			"unreachable":  k.Unreachable,
		}
	}
	sort.Strings(ids)
	return logical.ListResponseWithInfo(ids, info), nil
}

// pathKeysRead handles READ keys/<key_id>.
func (b *heronBackend) pathKeysRead(ctx context.Context, req *logical.Request, d *framework.FieldData) (*logical.Response, error) {
	id := d.Get("key_id").(string)
	rec, err := getTrackedKey(ctx, req.Storage, id)
	if err != nil {
		return nil, err
	}
	if rec == nil {
		return nil, nil
	}
	data := map[string]interface{}{
		"key_id":       rec.KeyID,
		"key_name":     rec.KeyName,
		"role":         rec.Role,
		"environment":  rec.Environment,
		"token_prefix": rec.TokenPrefix,
		"state":        rec.State,
		"issued":       rec.Issued.UTC().Format(time.RFC3339),
		"expires":      rec.Expires.UTC().Format(time.RFC3339),
		"delete_after": formatTime(rec.DeleteAfter),
		"pending":      rec.Pending,
		"unreachable":  rec.Unreachable,
	}

	client, err := b.getClient(ctx, req.Storage, rec.Environment)
	if errors.Is(err, errConfigNotFound) {
		// The record still answers what the engine knows; Heron's view
		// needs an admin key the engine no longer has.
		resp := &logical.Response{Data: data}
		resp.AddWarning(fmt.Sprintf("config %q no longer exists: Heron's view of this key (in_heron, is_active, last_used) is not available", rec.Environment))
		return resp, nil
	}
	if err != nil {
		return nil, err
	}
	live, _, err := b.listKeys(ctx, client, rec.Environment, listCacheTTL)
	if err != nil {
		return nil, upstreamError(fmt.Sprintf("reading Heron's view of key %s", id), err)
	}
	data["in_heron"] = false
	data["is_active"] = false
	data["last_used"] = ""
	for _, k := range live {
		if k.ID == id {
			data["in_heron"] = true
			data["is_active"] = k.IsActive
			if k.LastUsed != nil {
				data["last_used"] = k.LastUsed.UTC().Format(time.RFC3339)
			}
			break
		}
	}
	return &logical.Response{Data: data}, nil
}

// formatTime renders t as RFC 3339, or "" when unset.
func formatTime(t time.Time) string {
	if t.IsZero() {
		return ""
	}
	return t.UTC().Format(time.RFC3339)
}

const pathCredsHelpSyn = `Issue a Heron API key from a role.`

const pathCredsHelpDesc = `
Creates one Heron API key named after the role's name_template and returns it
as a lease. When the lease expires the key is deactivated (then deleted after
the role's expired_key_retention); when the lease is revoked it is deleted.
`

const pathKeysListHelpSyn = `List the Heron keys this engine has issued and still tracks.`

const pathKeysListHelpDesc = `
Lists key ids with key_info (key_name, role, environment, token_prefix, state,
issued, expires). Optional filters: role, environment, state.
`

const pathKeysHelpSyn = `Read a tracked Heron key.`

const pathKeysHelpDesc = `
Returns the engine's record of the key merged with Heron's live view of it
(is_active, last_used).
`
