package heron

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/hashicorp/vault/sdk/framework"
	"github.com/hashicorp/vault/sdk/logical"
	"github.com/hashicorp/vault/sdk/rotation"

	"github.com/heron-vault/vault-plugin-secrets-heron/heronapi"
)

func pathConfigRotate(b *heronBackend) *framework.Path {
	return &framework.Path{
		Pattern: "config/" + environmentPattern + "/rotate$",
		DisplayAttrs: &framework.DisplayAttributes{
			OperationPrefix: operationPrefixHeron,
			OperationVerb:   "rotate",
			OperationSuffix: "admin-key",
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
				Callback: b.pathConfigRotateWrite,
				Summary:  "Rotate the environment's admin key following Heron's flow.",
			},
		},
		HelpSynopsis:    pathConfigRotateHelpSyn,
		HelpDescription: pathConfigRotateHelpDesc,
	}
}

// errRotateUser marks rotation failures that are the operator's to fix.
var errRotateUser = errors.New("cannot rotate")

// pathConfigRotateWrite handles UPDATE config/<environment>/rotate.
func (b *heronBackend) pathConfigRotateWrite(ctx context.Context, req *logical.Request, d *framework.FieldData) (*logical.Response, error) {
	env := d.Get("environment").(string)
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
	lock := b.configLock(env)
	lock.Lock()
	defer lock.Unlock()

	cfg, err := getConfig(ctx, s, env)
	if err != nil {
		return nil, "", err
	}
	if cfg == nil {
		return nil, "", fmt.Errorf("%w: %q", errConfigNotFound, env)
	}
	oldClient, err := b.getClient(ctx, s, env)
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
	newKey, guard, err := b.createUnderWAL(ctx, s, oldClient, walKindAdminKey, &walKeyEntry{Environment: env, KeyName: name}, true)
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
		guard.undo(ctx, oldClient, newKey.ID)
		return nil, "", fmt.Errorf("verifying the new admin key %s: %w", newKey.ID, err)
	}

	next.LastRotated = now
	next.KeySetAt = now
	next.AdminKeyByEngine = true
	next.RetiredKeys = append(append([]retiredAdminKey(nil), cfg.RetiredKeys...), retiredAdminKey{
		KeyID:       cfg.AdminKeyID,
		TokenPrefix: keyPrefix(cfg.AdminAPIKey),
		RetiredAt:   now,
		DeleteAfter: now.Add(cfg.OldKeyRetention),
	})
	if err := putConfig(ctx, s, &next); err != nil {
		// A write that reports an error may still have been committed (Raft
		// and Consul can do that): only undo once storage shows the old
		// config. If storage cannot say, keep both keys and the write-ahead
		// record; the rollback decides from what storage holds by then.
		stored, rerr := getConfig(ctx, s, env)
		switch {
		case rerr == nil && stored != nil && stored.AdminKeyID == newKey.ID:
			b.Logger().Warn("storing the rotated config reported an error but it was stored", "environment", env, "error", err)
		case rerr == nil && stored != nil && stored.AdminKeyID == cfg.AdminKeyID:
			guard.undo(ctx, oldClient, newKey.ID)
			return nil, "", err
		default:
			guard.unresolved++
			guard.end(ctx)
			b.resetClient(env)
			return nil, "", fmt.Errorf("%w (storage could not say whether the new admin key %s was stored; both keys are kept and the rollback settles it)", err, newKey.ID)
		}
	}
	guard.done(ctx)
	b.resetClient(env)
	b.Logger().Info("rotated admin key", "environment", env, "new_key_id", newKey.ID, "old_key_id", cfg.AdminKeyID)

	// Heron's flow deactivates the old key before deleting it; the cleanup
	// pass retries this if it fails now and deletes it after retention.
	warning := ""
	if err := b.deactivateRetired(ctx, s, &next, newClient); err != nil {
		warning = fmt.Sprintf("the new admin key is stored, but the old key %s could not be deactivated yet (the cleanup pass will retry): %v", cfg.AdminKeyID, err)
	}
	return &next, warning, nil
}

// deactivateRetired deactivates retired admin keys not yet deactivated and
// stores the result.
func (b *heronBackend) deactivateRetired(ctx context.Context, s logical.Storage, cfg *heronConfig, client heronapi.API) error {
	var errs []error
	changed := false
	for i := range cfg.RetiredKeys {
		rk := &cfg.RetiredKeys[i]
		if rk.Deactivated || cfg.isAdminKey(rk.KeyID, rk.TokenPrefix) {
			continue
		}
		err := client.DeactivateKey(ctx, rk.KeyID)
		if err != nil && !errors.Is(err, heronapi.ErrNotFound) {
			errs = append(errs, fmt.Errorf("deactivating old admin key %s: %w", rk.KeyID, err))
			continue
		}
		rk.Deactivated = true
		changed = true
	}
	if changed {
		if err := putConfig(ctx, s, cfg); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// rotateDue rotates every environment whose rotation_period has elapsed since
// its admin key was set, returning how many were rotated.
func (b *heronBackend) rotateDue(ctx context.Context, s logical.Storage) (int, error) {
	envs, err := s.List(ctx, configStoragePrefix)
	if err != nil {
		return 0, fmt.Errorf("listing configs: %w", err)
	}
	now := b.now()
	rotated := 0
	var errs []error
	for _, env := range envs {
		cfg, err := getConfig(ctx, s, env)
		if err != nil || cfg == nil {
			continue
		}
		due := nextRotation(cfg)
		if due.IsZero() || now.Before(due) {
			continue
		}
		if _, _, err := b.rotateAdminKey(ctx, s, env); err != nil {
			errs = append(errs, fmt.Errorf("config %q: %w", env, err))
			continue
		}
		rotated++
	}
	return rotated, errors.Join(errs...)
}

// retiredDue reports whether rk may be deleted now.
func retiredDue(rk retiredAdminKey, now time.Time) bool {
	return rk.Deactivated && !now.Before(rk.DeleteAfter)
}

const pathConfigRotateHelpSyn = `Rotate the admin key of a Heron environment.`

const pathConfigRotateHelpDesc = `
Creates a new admin key (named vault-admin-<environment>-<unix time>) with the
current one, checks that the new key works, stores it, deactivates the old key
and deletes it after old_key_retention. The old key keeps working until the
new one is stored; a key created by an interrupted rotation is rolled back.
`

// registerRotation hands the config's schedule to Vault's rotation manager
// where the server has one (Vault Enterprise 1.19+). Vault Community answers
// that it is unsupported: the engine's own periodic pass then rotates on the
// same schedule, so the setting means the same thing on every edition.
func (b *heronBackend) registerRotation(ctx context.Context, req *logical.Request, cfg *heronConfig) []string {
	wanted := !cfg.DisableAutomatedRotation && (cfg.RotationPeriod > 0 || cfg.RotationSchedule != "")
	if !wanted {
		if cfg.RotationManaged {
			err := b.System().DeregisterRotationJob(ctx, &rotation.RotationJobDeregisterRequest{
				MountPoint: req.MountPoint, ReqPath: req.Path,
			})
			if err != nil {
				return []string{fmt.Sprintf("could not deregister the rotation job from Vault's rotation manager: %v", err)}
			}
			cfg.RotationManaged = false
		}
		return nil
	}
	_, err := b.System().RegisterRotationJob(ctx, &rotation.RotationJobConfigureRequest{
		Name:             "heron-admin-key-" + cfg.Environment,
		MountPoint:       req.MountPoint,
		ReqPath:          configStoragePrefix + cfg.Environment,
		RotationSchedule: cfg.RotationSchedule,
		RotationWindow:   cfg.RotationWindow,
		RotationPeriod:   cfg.RotationPeriod,
	})
	if err != nil {
		cfg.RotationManaged = false
		b.Logger().Debug("rotation manager unavailable; the engine schedules rotation itself", "environment", cfg.Environment, "error", err)
		return nil
	}
	cfg.RotationManaged = true
	return nil
}

// rotateCredential is Vault's rotation manager calling back for a job
// registered by registerRotation (req.Path is config/<environment>).
func (b *heronBackend) rotateCredential(ctx context.Context, req *logical.Request) error {
	env, ok := strings.CutPrefix(req.Path, configStoragePrefix)
	if !ok || env == "" {
		return fmt.Errorf("rotation request for unexpected path %q", req.Path)
	}
	_, _, err := b.rotateAdminKey(heronapi.Background(ctx), req.Storage, env)
	return err
}

// nextRotation is when cfg's admin key is next due for automatic rotation
// by the engine's own scheduler (zero: never).
func nextRotation(cfg *heronConfig) time.Time {
	if cfg.DisableAutomatedRotation || cfg.RotationManaged {
		return time.Time{}
	}
	base := cfg.KeySetAt
	if base.IsZero() {
		base = cfg.LastRotated
	}
	switch {
	case cfg.RotationPeriod > 0:
		return base.Add(cfg.RotationPeriod)
	case cfg.RotationSchedule != "":
		sched, err := rotation.DefaultScheduler.Parse(cfg.RotationSchedule)
		if err != nil {
			return time.Time{}
		}
		return sched.Next(base)
	}
	return time.Time{}
}
