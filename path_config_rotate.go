package heron

import (
	"context"
	"errors"
	"fmt"

	"github.com/hashicorp/vault/sdk/framework"
	"github.com/hashicorp/vault/sdk/logical"

	"github.com/heron-vault/vault-plugin-secrets-heron/heronapi"
)

// pathConfigRotate is config/<environment>/rotate and its alias
// rotate-root/<environment>, Vault's conventional name (same handler, same
// checks).
func pathConfigRotate(b *heronBackend) []*framework.Path {
	return []*framework.Path{
		pathRotateAdminKey(b, "config/"+environmentPattern+"/rotate$", "admin-key", pathConfigRotateHelpSyn),
		pathRotateAdminKey(b, "rotate-root/"+environmentPattern+"$", "root", pathConfigRotateHelpSyn+" Alias of config/<environment>/rotate."),
	}
}

func pathRotateAdminKey(b *heronBackend, pattern, suffix, syn string) *framework.Path {
	return &framework.Path{
		Pattern: pattern,
		DisplayAttrs: &framework.DisplayAttributes{
			OperationPrefix: operationPrefixHeron,
			OperationVerb:   "rotate",
			OperationSuffix: suffix,
		},
		Fields: map[string]*framework.FieldSchema{
			"environment": {
				Type:        framework.TypeString,
				Description: "Name of the Heron environment whose admin key to rotate.",
				Required:    true,
				DisplayAttrs: &framework.DisplayAttributes{
					Name: "Environment",
				},
			},
		},
		Operations: map[logical.Operation]framework.OperationHandler{
			logical.UpdateOperation: &framework.PathOperation{
				Callback:                    b.pathConfigRotateWrite,
				ForwardPerformanceStandby:   true,
				ForwardPerformanceSecondary: true,
				Summary:                     "Rotate the environment's admin key following Heron's flow.",
			},
		},
		HelpSynopsis:    syn,
		HelpDescription: pathConfigRotateHelpDesc,
	}
}

// errRotateUser marks rotation failures that are the operator's to fix.
var errRotateUser = errors.New("cannot rotate")

// pathConfigRotateWrite handles UPDATE config/<environment>/rotate.
func (b *heronBackend) pathConfigRotateWrite(ctx context.Context, req *logical.Request, d *framework.FieldData) (*logical.Response, error) {
	env := d.Get("environment").(string)
	if resp := pathEnvironmentError(req, env); resp != nil {
		return resp, nil
	}
	cfg, warning, err := b.rotateAdminKey(ctx, req.Storage, env)
	switch {
	case errors.Is(err, errConfigNotFound), errors.Is(err, errRotateUser):
		return logical.ErrorResponse(err.Error()), nil
	case err != nil:
		return nil, upstreamError(fmt.Sprintf("rotating the admin key of config %q", env), err)
	}
	resp := &logical.Response{Data: map[string]interface{}{
		"admin_key_prefix": keyPrefix(cfg.AdminAPIKey),
		"admin_key_id":     cfg.AdminKeyID,
		"last_rotated":     formatTime(cfg.LastRotated),
	}}
	if warning != "" {
		resp.AddWarning(warning)
	}
	return resp, nil
}

// rotateAdminKey follows Heron's rotation flow. Each step leaves a working
// stored key and no untracked one: the new key is guarded by a write-ahead
// record until the config holding it is stored; the switch to the new key and
// the record of the old one for deletion are one storage write.
func (b *heronBackend) rotateAdminKey(ctx context.Context, s logical.Storage, env string) (*heronConfig, string, error) {
	cfg, warning, _, err := b.rotateAdminKeyIf(ctx, s, env, nil)
	return cfg, warning, err
}

// rotateAdminKeyIf is rotateAdminKey for a caller that decided to rotate
// from a read made before the config's lock (the periodic pass found it
// due): due, asked under the lock of the config as read under it, says
// whether that still holds; when it does not, nothing is rotated.
func (b *heronBackend) rotateAdminKeyIf(ctx context.Context, s logical.Storage, env string, due func(*heronConfig) bool) (*heronConfig, string, bool, error) {
	cfg, warning, rotated, err := b.rotateAdminKeyOnce(ctx, s, env, due)
	if err != nil && !errors.Is(err, errConfigNotFound) && !errors.Is(err, errRotationBusy) {
		b.recordChange(eventAdminRotateFail, keyChange{Environment: env, DataPath: configStoragePrefix + env}, "error", err.Error(), "trigger", rotationTrigger(ctx))
	}
	return cfg, warning, rotated, err
}

// rotateAdminKeyOnce is one attempt of rotateAdminKeyIf.
func (b *heronBackend) rotateAdminKeyOnce(ctx context.Context, s logical.Storage, env string, due func(*heronConfig) bool) (*heronConfig, string, bool, error) {
	lock := b.configLock(env)
	lock.Lock()
	defer lock.Unlock()
	release, err := b.claimRotation(ctx, s, "admin/"+env)
	if errors.Is(err, errRotationBusy) {
		return nil, "", false, fmt.Errorf("%w the admin key of config %q: %w; retry", errRotateUser, env, err)
	}
	if err != nil {
		return nil, "", false, err
	}
	defer release()

	// Read after the claim: a rotation another instance finished before it
	// shows here.
	cfg, err := getConfig(ctx, s, env)
	if err != nil {
		return nil, "", false, err
	}
	if cfg == nil {
		return nil, "", false, fmt.Errorf("%w: %q", errConfigNotFound, env)
	}
	if due != nil && !due(cfg) {
		return cfg, "", false, nil
	}
	cfg, warning, err := b.rotateAdminKeyLocked(ctx, s, cfg)
	return cfg, warning, err == nil, err
}

// rotateAdminKeyLocked rotates cfg's admin key, with the config's lock held
// and cfg read under it.
func (b *heronBackend) rotateAdminKeyLocked(ctx context.Context, s logical.Storage, cfg *heronConfig) (*heronConfig, string, error) {
	env := cfg.Environment
	b.refreshClient(cfg)
	oldClient, err := b.creatingClient(ctx, s, env)
	if err != nil {
		return nil, "", err
	}

	if cfg.AdminKeyID == "" {
		keys, err := oldClient.ListKeys(ctx)
		if err != nil {
			return nil, "", fmt.Errorf("listing keys to find the current admin key: %w", err)
		}
		id, err := findKeyIDByPrefix(keys, keyPrefix(cfg.AdminAPIKey))
		if err != nil {
			return nil, "", fmt.Errorf("%w: the Heron id of the current admin key of config %q is unknown: %v", errRotateUser, env, err)
		}
		cfg.AdminKeyID = id
	}

	now := b.now()
	name := fmt.Sprintf("vault-admin-%s-%d", env, now.Unix())
	newKey, guard, err := b.createUnderWAL(ctx, s, oldClient, walKindAdminKey, &walKeyEntry{Environment: env, KeyName: name}, false)
	if errors.Is(err, heronapi.ErrUnauthorized) {
		return nil, "", fmt.Errorf("%w: Heron rejected the current admin key of config %q (401), so it cannot create its successor: write a working admin_api_key to config/%s", errRotateUser, env, env)
	}
	if err != nil {
		return nil, "", fmt.Errorf("creating the new admin key: %w", err)
	}

	next := *cfg
	next.AdminAPIKey = newKey.Token
	next.AdminKeyID = newKey.ID
	newClient, err := b.checkClient(&next, newKey.Token)
	if err == nil {
		_, err = newClient.ListKeys(ctx)
	}
	if err != nil {
		// The old key keeps working; take the new one back out.
		_ = guard.undo(ctx, oldClient, newKey.ID)
		return nil, "", fmt.Errorf("verifying the new admin key %s: %w", newKey.ID, err)
	}

	next.LastRotated = now
	next.KeySetAt = now
	next.AdminKeyByEngine = true
	next.RetiredKeys = append(append([]retiredAdminKey(nil), cfg.RetiredKeys...), b.retiredEntry(ctx, s, cfg, cfg.OldKeyRetention))
	if ok, perr := b.pruneRetired(ctx, &next, oldClient); !ok {
		_ = guard.undo(ctx, oldClient, newKey.ID)
		return nil, "", fmt.Errorf("%w: config %q holds %d rotated-out admin keys that are not deactivated yet (the most it keeps is %d), so it cannot retire another: run tidy, or see retired_keys in config/%s (%v)",
			errRotateUser, env, len(next.RetiredKeys), maxRetiredAdminKeys, env, perr)
	}
	// From here the creation record names the new key by id: should
	// another instance's write of the config (a reload or failover) land
	// over this switch, the rollback deletes the key nothing accounts for.
	if err := guard.nameKey(ctx, newKey.ID); err != nil {
		_ = guard.undo(ctx, oldClient, newKey.ID)
		return nil, "", fmt.Errorf("recording the new admin key %s before storing it: %w", newKey.ID, err)
	}
	// The switch, applied to the config as stored: a settings-only write
	// (which takes no config lock) may have changed its settings meanwhile.
	// The config lock is this instance's: another instance (a reload or
	// failover) may have rotated meanwhile, and writing over its switch
	// would forget the key it made. Only the key this rotation started from
	// is replaced.
	changedMeanwhile := false
	if _, err := b.updateConfig(ctx, s, env, func(stored *heronConfig) (bool, error) {
		if stored.AdminAPIKey != cfg.AdminAPIKey {
			changedMeanwhile = true
			return false, nil
		}
		stored.AdminAPIKey, stored.AdminKeyID, stored.AdminKeyByEngine = next.AdminAPIKey, next.AdminKeyID, next.AdminKeyByEngine
		stored.LastRotated, stored.KeySetAt, stored.RetiredKeys = next.LastRotated, next.KeySetAt, next.RetiredKeys
		next = *stored
		return true, nil
	}); err != nil {
		// A write that reports an error may still have been committed (Raft
		// and Consul can do that): only undo once storage shows the old
		// config. If storage cannot say, keep both keys and the write-ahead
		// record; the rollback decides from what storage holds by then.
		stored, rerr := getConfig(ctx, s, env)
		switch {
		case rerr == nil && stored != nil && stored.AdminKeyID == newKey.ID:
			b.Logger().Warn("storing the rotated config reported an error but it was stored", "environment", env, "error", err)
		case rerr == nil && stored != nil && stored.AdminKeyID == cfg.AdminKeyID:
			_ = guard.undo(ctx, oldClient, newKey.ID)
			return nil, "", err
		default:
			guard.unresolved++
			guard.end(ctx)
			b.resetClient(env)
			return nil, "", fmt.Errorf("%w (storage could not say whether the new admin key %s was stored; both keys are kept and the rollback settles it)", err, newKey.ID)
		}
	}
	if changedMeanwhile {
		b.resetClient(env)
		if !guard.undo(ctx, oldClient, newKey.ID) {
			return nil, "", fmt.Errorf("%w: config %q got another admin key while this rotation ran (another instance rotated or a config write landed); the new key %s could not be deleted yet, the rollback deletes it: retry the rotation", errRotateUser, env, newKey.ID)
		}
		return nil, "", fmt.Errorf("%w: config %q got another admin key while this rotation ran (another instance rotated or a config write landed); this rotation's key was deleted: retry", errRotateUser, env)
	}
	guard.confirmLater(ctx)
	b.resetClient(env)
	b.recordChange(eventAdminRotate, keyChange{KeyID: newKey.ID, KeyName: name, TokenPrefix: newKey.TokenPrefix,
		Environment: env, DataPath: configStoragePrefix + env}, "old_key_id", cfg.AdminKeyID, "trigger", rotationTrigger(ctx))

	// Heron's flow deactivates the old key before deleting it; the cleanup
	// pass retries this if it fails now and deletes it after retention.
	warning := ""
	if err := b.deactivateRetired(ctx, s, &next, newClient); err != nil {
		warning = fmt.Sprintf("the new admin key is stored, but the old key %s could not be deactivated yet (the cleanup pass will retry): %v", cfg.AdminKeyID, err)
	} else if _, err := b.updateConfig(ctx, s, env, func(stored *heronConfig) (bool, error) {
		// The rotation writes the config anyway, still holding its claim:
		// the entry itself says the old key is deactivated (the progress
		// record alone would do; the entry is what backups and operators
		// read, and what the cap on rotated-out keys prunes from).
		return len(stored.progressIDs) > 0, nil
	}); err != nil {
		b.Logger().Warn("could not fold the old admin key's deactivation into the config; its own record keeps it", "environment", env, "error", err)
	}
	return &next, warning, nil
}

const pathConfigRotateHelpSyn = `Rotate the admin key of a Heron environment.`

const pathConfigRotateHelpDesc = `
Creates a new admin key (named vault-admin-<environment>-<unix time>) with the
current one, checks that the new key works, stores it, deactivates the old key
and deletes it after old_key_retention. The old key keeps working until the
new one is stored; a key created by an interrupted rotation is rolled back.
`
