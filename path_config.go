package heron

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/hashicorp/vault/sdk/framework"
	"github.com/hashicorp/vault/sdk/helper/locksutil"
	"github.com/hashicorp/vault/sdk/logical"

	"github.com/heron-vault/vault-plugin-secrets-heron/heronapi"
)

func pathConfig(b *heronBackend) []*framework.Path {
	return append([]*framework.Path{
		{
			Pattern: "config/?$",
			DisplayAttrs: &framework.DisplayAttributes{
				OperationPrefix: operationPrefixHeron,
				OperationSuffix: "configurations",
			},
			Operations: map[logical.Operation]framework.OperationHandler{
				logical.ListOperation: &framework.PathOperation{
					Callback: b.pathConfigList,
					Summary:  "List the configured Heron environments.",
				},
				// `vault read heron/config` is what people try first: say what
				// to do instead of a bare 405.
				logical.ReadOperation: &framework.PathOperation{
					Callback: func(context.Context, *logical.Request, *framework.FieldData) (*logical.Response, error) {
						return logical.ErrorResponse("each Heron environment has its own config: read config/<environment> (e.g. config/production); `vault list heron/config` lists them"), nil
					},
					Summary: "Explain where configs live (config/<environment>).",
				},
			},
			HelpSynopsis:    pathConfigListHelpSyn,
			HelpDescription: pathConfigListHelpDesc,
		},
		{
			Pattern: "config/" + environmentPattern + "$",
			DisplayAttrs: &framework.DisplayAttributes{
				OperationPrefix: operationPrefixHeron,
				OperationSuffix: "configuration",
			},
			Fields: map[string]*framework.FieldSchema{
				"environment": {
					Type:        framework.TypeString,
					Description: "Name of the Heron environment ([a-z0-9-]{1,64}), e.g. development or production.",
					Required:    true,
					DisplayAttrs: &framework.DisplayAttributes{
						Name: "Environment",
					},
				},
				"admin_api_key": {
					Type:        framework.TypeString,
					Description: "Heron API key (key_ + 48 hex) able to manage the environment's keys. Never returned.",
					DisplayAttrs: &framework.DisplayAttributes{
						Name:      "Admin API key",
						Sensitive: true,
					},
				},
				"base_url": {
					Type:        framework.TypeString,
					Description: "Heron API base URL.",
					Default:     defaultBaseURL,
					DisplayAttrs: &framework.DisplayAttributes{
						Name: "Base URL",
					},
				},
				"request_timeout": {
					Type:        framework.TypeDurationSecond,
					Description: "Timeout of each upstream request (1s to 5m).",
					Default:     int(defaultRequestTimeout.Seconds()),
					DisplayAttrs: &framework.DisplayAttributes{
						Name: "Request timeout",
					},
				},
				"max_retries": {
					Type:        framework.TypeInt,
					Description: "Retries (0 to 20) on 429, 5xx and transport errors.",
					Default:     defaultMaxRetries,
					DisplayAttrs: &framework.DisplayAttributes{
						Name: "Max retries",
					},
				},
				"rate_limit_per_minute": {
					Type:        framework.TypeInt,
					Description: "Requests per minute (1 to 100000) this engine may send to the environment; Heron's whole budget is shared with your own traffic.",
					Default:     defaultRateLimitPerMinute,
					DisplayAttrs: &framework.DisplayAttributes{
						Name: "Rate limit per minute",
					},
				},
				"verify": {
					Type:        framework.TypeBool,
					Description: "Check a new admin_api_key or base_url against Heron (GET /api/credentials/keys) before saving. Applies to this write only; never stored.",
					Default:     true,
					DisplayAttrs: &framework.DisplayAttributes{
						Name: "Verify",
					},
				},
				"history_retention": {
					Type:        framework.TypeDurationSecond,
					Description: "How long a deleted key's record (a tombstone: when and why it was deleted) stays readable in keys/ (0 = keep none).",
					Default:     int(defaultHistoryRetention.Seconds()),
					DisplayAttrs: &framework.DisplayAttributes{
						Name: "History retention",
					},
				},
				"force": {
					Type:        framework.TypeBool,
					Description: "Accept a new admin_api_key or base_url that cannot see every key this engine tracks in the environment; those keys are then reported as unreachable in keys/. This write only.",
					DisplayAttrs: &framework.DisplayAttributes{
						Name: "Force",
					},
				},
				"old_key_retention": {
					Type:        framework.TypeDurationSecond,
					Description: "How long a rotated-out admin key stays deactivated before it is deleted.",
					Default:     int(defaultOldKeyRetention.Seconds()),
					DisplayAttrs: &framework.DisplayAttributes{
						Name: "Old key retention",
					},
				},
				"rotation_period": {
					Type:        framework.TypeDurationSecond,
					Description: "Rotate the admin key automatically this often (0 = off, else at least 1m). Exclusive with rotation_schedule.",
					Default:     0,
					DisplayAttrs: &framework.DisplayAttributes{
						Name: "Rotation period",
					},
				},
				"rotation_schedule": {
					Type:        framework.TypeString,
					Description: "Cron schedule of automatic admin key rotations (e.g. \"0 3 * * SAT\"). Exclusive with rotation_period.",
					DisplayAttrs: &framework.DisplayAttributes{
						Name: "Rotation schedule",
					},
				},
				"rotation_window": {
					Type:        framework.TypeDurationSecond,
					Description: "How long after a rotation_schedule time a rotation may still start; one that could not start within it waits for the next scheduled time (honoured by Vault Enterprise's rotation manager and by the engine's own scheduler). Needs rotation_schedule.",
					DisplayAttrs: &framework.DisplayAttributes{
						Name: "Rotation window",
					},
				},
				"disable_automated_rotation": {
					Type:        framework.TypeBool,
					Description: "Turn automatic rotation off without forgetting the schedule.",
					DisplayAttrs: &framework.DisplayAttributes{
						Name: "Disable automated rotation",
					},
				},
			},
			ExistenceCheck: b.pathConfigExistenceCheck,
			Operations: map[logical.Operation]framework.OperationHandler{
				logical.ReadOperation: &framework.PathOperation{
					Callback:  b.pathConfigRead,
					Summary:   "Read an environment's configuration (never the admin key).",
					Responses: rotationReadResponses("admin key"),
				},
				logical.CreateOperation: &framework.PathOperation{
					Callback:                    b.pathConfigWrite,
					ForwardPerformanceStandby:   true,
					ForwardPerformanceSecondary: true,
					Summary:                     "Configure a Heron environment.",
				},
				logical.UpdateOperation: &framework.PathOperation{
					Callback:                    b.pathConfigWrite,
					ForwardPerformanceStandby:   true,
					ForwardPerformanceSecondary: true,
					Summary:                     "Update a Heron environment's configuration.",
				},
				logical.DeleteOperation: &framework.PathOperation{
					Callback:                    b.pathConfigDelete,
					ForwardPerformanceStandby:   true,
					ForwardPerformanceSecondary: true,
					Summary:                     "Delete a Heron environment's configuration.",
				},
			},
			HelpSynopsis:    pathConfigHelpSyn,
			HelpDescription: pathConfigHelpDesc,
		},
	}, pathConfigRotate(b)...)
}

func (b *heronBackend) pathConfigExistenceCheck(ctx context.Context, req *logical.Request, d *framework.FieldData) (bool, error) {
	env := d.Get("environment").(string)
	if pathEnvironmentError(req, env) != nil {
		// Nothing is read with a name refused by the handler.
		return false, nil
	}
	cfg, err := getConfig(ctx, req.Storage, env)
	if err != nil {
		return false, err
	}
	return cfg != nil, nil
}

// pathConfigList handles LIST config/.
func (b *heronBackend) pathConfigList(ctx context.Context, req *logical.Request, _ *framework.FieldData) (*logical.Response, error) {
	envs, err := req.Storage.List(ctx, configStoragePrefix)
	if err != nil {
		return nil, fmt.Errorf("listing configs: %w", err)
	}
	return logical.ListResponse(envs), nil
}

// pathConfigRead handles READ config/<environment>.
func (b *heronBackend) pathConfigRead(ctx context.Context, req *logical.Request, d *framework.FieldData) (*logical.Response, error) {
	env := d.Get("environment").(string)
	if resp := pathEnvironmentError(req, env); resp != nil {
		return resp, nil
	}
	cfg, err := getConfig(ctx, req.Storage, env)
	if err != nil {
		return nil, err
	}
	if cfg == nil {
		return nil, nil
	}
	lastRotated := ""
	if !cfg.LastRotated.IsZero() {
		lastRotated = cfg.LastRotated.UTC().Format(time.RFC3339)
	}
	sched := cfg.rotationSchedule()
	next := sched.readNext(b.now())
	data := map[string]interface{}{
		"environment":                cfg.Environment,
		"base_url":                   cfg.BaseURL,
		"request_timeout":            int64(cfg.RequestTimeout.Seconds()),
		"max_retries":                cfg.MaxRetries,
		"rate_limit_per_minute":      cfg.RateLimitPerMinute,
		"old_key_retention":          int64(cfg.OldKeyRetention.Seconds()),
		"rotation_period":            int64(cfg.RotationPeriod.Seconds()),
		"rotation_schedule":          cfg.RotationSchedule,
		"rotation_window":            int64(cfg.RotationWindow.Seconds()),
		"disable_automated_rotation": cfg.DisableAutomatedRotation,
		"rotation_managed_by_vault":  cfg.RotationManaged,
		"admin_key_prefix":           keyPrefix(cfg.AdminAPIKey),
		"admin_key_id":               cfg.AdminKeyID,
		"last_vault_rotation":        timeOrNil(cfg.LastRotated),
		"next_vault_rotation":        timeOrNil(next),
		// Deprecated aliases of last_vault_rotation and next_vault_rotation.
		"last_rotated":      lastRotated,
		"next_rotation":     formatTime(next),
		"history_retention": int64(cfg.historyRetention().Seconds()),
		"retired_keys":      retiredKeysView(cfg.RetiredKeys),
	}
	if note := sched.skippedNote(b.now()); note != "" {
		data["rotation_skipped"] = note
	}
	return &logical.Response{Data: data}, nil
}

// retiredKeysView is what config read shows of the rotated-out admin keys.
func retiredKeysView(rks []retiredAdminKey) []map[string]interface{} {
	out := make([]map[string]interface{}, 0, len(rks))
	for _, rk := range rks {
		state := keyStateActive
		deactivatedAt := ""
		if rk.Deactivated {
			state = keyStateDeactivated
			// Records from before DeactivatedAt: the rotation's time.
			deactivatedAt = formatTime(rk.RetiredAt)
			if !rk.DeactivatedAt.IsZero() {
				deactivatedAt = formatTime(rk.DeactivatedAt)
			}
		}
		out = append(out, map[string]interface{}{
			"key_id":         rk.KeyID,
			"token_prefix":   rk.TokenPrefix,
			"state":          state,
			"deactivated_at": deactivatedAt,
			"delete_after":   formatTime(rk.DeleteAfter),
			"unreachable":    rk.Unreachable,
		})
	}
	return out
}

// pathConfigWrite handles CREATE and UPDATE config/<environment>.
func (b *heronBackend) pathConfigWrite(ctx context.Context, req *logical.Request, d *framework.FieldData) (*logical.Response, error) {
	env := d.Get("environment").(string)
	if resp := pathEnvironmentError(req, env); resp != nil {
		return resp, nil
	}

	if resp := rotationFieldsError(d); resp != nil {
		return resp, nil
	}

	_, setsKey := d.GetOk("admin_api_key")
	_, setsURL := d.GetOk("base_url")
	_, verifyGiven := d.GetOk("verify")
	if req.Operation == logical.UpdateOperation && !setsKey && !setsURL && !verifyGiven {
		return b.pathConfigWriteSettings(ctx, req, d, env)
	}

	lock := b.configLock(env)
	lock.Lock()
	defer lock.Unlock()

	cfg, err := getConfig(ctx, req.Storage, env)
	if err != nil {
		return nil, err
	}
	if cfg != nil && cfg.Deleting {
		return logical.ErrorResponse(errDeleting(env).Error()), nil
	}
	if cfg == nil {
		if req.Operation == logical.UpdateOperation {
			// Update on a missing entry only happens without an existence check
			// (e.g. a raw API call racing a delete): treat it as create.
			req.Operation = logical.CreateOperation
		}
		cfg = &heronConfig{Environment: env}
	}
	create := req.Operation == logical.CreateOperation

	prev := *cfg
	if v, ok := d.GetOk("admin_api_key"); ok {
		newKey := strings.TrimSpace(v.(string))
		if newKey != cfg.AdminAPIKey {
			cfg.AdminAPIKey = newKey
			// A hand-set key has an unknown Heron id until verify finds it.
			cfg.AdminKeyID = ""
			cfg.KeySetAt = b.now()
			cfg.BudgetKey = budgetKey(newKey)
			cfg.AdminKeyByEngine = false
		}
	} else if create {
		return logical.ErrorResponse("admin_api_key is required"), nil
	}

	stringField(d, "base_url", create, &cfg.BaseURL)
	cfg.BaseURL = strings.TrimRight(strings.TrimSpace(cfg.BaseURL), "/")
	b.applyConfigSettings(d, cfg, prev.RotationSchedule, create)

	if err := cfg.validate(); err != nil {
		return logical.ErrorResponse(err.Error()), nil
	}
	if _, ok := d.GetOk("base_url"); ok || create {
		if bad := baseURLError(cfg.BaseURL); bad != "" {
			return logical.ErrorResponse(bad), nil
		}
	}
	// The stored admin key goes wherever base_url points (verify sends it at
	// once): whoever may update a config must not be able to collect the key
	// by pointing it at a server of theirs.
	if _, ok := d.GetOk("admin_api_key"); !ok && !create && urlOrigin(cfg.BaseURL) != urlOrigin(prev.BaseURL) {
		return logical.ErrorResponse("base_url: a write that changes its scheme or host (from %s to %s) must carry admin_api_key too, so that the stored admin key is never sent to a new host", urlOrigin(prev.BaseURL), urlOrigin(cfg.BaseURL)), nil
	}

	keyChanged := !create && (cfg.AdminAPIKey != prev.AdminAPIKey || cfg.BaseURL != prev.BaseURL)
	force := d.Get("force").(bool)
	verify := d.Get("verify").(bool)
	var warnings []string
	var tracked []string
	if keyChanged {
		if tracked, err = b.keysToSee(ctx, req.Storage, &prev); err != nil {
			return nil, err
		}
		// A creation whose outcome is unknown may have left a key that only
		// the current admin key is sure to see: settle those first. force
		// passes only when the current key is dead anyway (401).
		if _, pending, err := b.rollbackStaleWALs(ctx, req, env); err != nil || pending > 0 {
			dead := errors.Is(err, heronapi.ErrUnauthorized)
			if !force || !dead {
				msg := fmt.Sprintf("config %q: %d key creations in this environment have an unknown outcome, and a key they made may still appear in Heron (for up to %s); only the current admin key is sure to see it, so the key cannot change until they are settled. Retry in a few minutes", env, pending, lateKeyWindow)
				if dead {
					// Waiting cannot help a key Heron refuses.
					msg = fmt.Sprintf("config %q: %d key creations in this environment are not settled yet, and Heron refuses the current admin key (401), so they cannot be: reactivate that key in Heron's dashboard and write again, or write the new key with force=true (then look for a key they may have made with inventory/%s, class unmanaged)", env, pending, env)
				}
				if err != nil {
					msg += fmt.Sprintf(" (settling them failed: %v)", err)
				}
				return logical.ErrorResponse(msg), nil
			}
			warnings = append(warnings, fmt.Sprintf("%d key creations had an unknown outcome and the current admin key is rejected (401): a key they made may exist that no admin key of this engine can delete; look for it with Heron's dashboard", pending))
		}
	} else if verify && !create {
		// Keys marked unreachable by an earlier forced write: a verified
		// write of the same key checks again whether it sees them now.
		if tracked, err = b.unreachableKeys(ctx, req.Storage, env); err != nil {
			return nil, err
		}
		for _, rk := range cfg.RetiredKeys {
			if rk.Unreachable {
				tracked = append(tracked, rk.KeyID)
			}
		}
	}

	var unreachable []string
	switch {
	case verify && (create || setsKey || setsURL || len(tracked) > 0):
		live, err := b.verifyStoredEnvironment(ctx, &prev, cfg)
		if err != nil {
			return verifyError(env, err)
		}
		if cfg.AdminKeyID == "" {
			id, err := findKeyIDByPrefix(live, keyPrefix(cfg.AdminAPIKey))
			if err != nil {
				warnings = append(warnings, fmt.Sprintf("admin_key_id unknown: %v; rotation will not be able to deactivate this key until it is known", err))
			}
			cfg.AdminKeyID = id
		}
		unreachable = missingFrom(tracked, live)
		if keyChanged && len(unreachable) > 0 && seesAnyRecord(tracked, unreachable, &prev) {
			// Heron lists every key of the key's user. The new key sees some
			// of the key records this engine tracks, so it is their user's;
			// if none is marked unreachable already, every tracked record is
			// that user's too, and the ones it does not see are gone, not
			// hidden: the cleanup pass drops them (after a snapshot restore,
			// say). Rotated-out admin keys prove nothing here: a forced write
			// to another user leaves them the old user's while the keys
			// issued since are the new user's.
			marked, err := b.unreachableKeys(ctx, req.Storage, env)
			if err != nil {
				return nil, err
			}
			if len(marked) == 0 && !anyRetiredUnreachable(prev.RetiredKeys) {
				warnings = append(warnings, fmt.Sprintf("%d tracked keys are no longer in Heron (the new admin key belongs to the same Heron user, which sees all its keys): the cleanup pass drops them from tracking", len(unreachable)))
				unreachable = nil
			}
		}
	case keyChanged && len(tracked) > 0 && !force:
		return logical.ErrorResponse("config %q: verify=false cannot check that the new admin_api_key or base_url sees the %d keys this engine tracks in the environment; write it with verify=true, or with force=true to accept it unchecked", env, len(tracked)), nil
	case keyChanged:
		// Unchecked (force without verify): as far as the engine knows, the
		// new key sees none of them.
		unreachable = tracked
	}
	if cfg.AdminAPIKey != prev.AdminAPIKey {
		if managed, err := b.managedKeyAsAdmin(ctx, req.Storage, cfg); err != nil {
			return nil, err
		} else if managed != "" {
			return logical.ErrorResponse(managed), nil
		}
	}
	if keyChanged && len(unreachable) > 0 && !force {
		return logical.ErrorResponse("config %q: the new admin_api_key or base_url cannot see %d of the %d keys this engine tracks in the environment (e.g. %s); their revocations would report success while they stay live. Use an admin key of the same Heron user, or write again with force=true to accept and mark them unreachable in keys/",
			env, len(unreachable), len(tracked), strings.Join(unreachable[:min(3, len(unreachable))], ", ")), nil
	}

	// The marks go before the config: a write that fails after them leaves
	// the engine more careful than needed, never less (a key it cannot see
	// must never be taken for gone).
	if len(tracked) > 0 {
		if err := b.markUnreachable(ctx, req.Storage, tracked, unreachable); err != nil {
			return nil, err
		}
		if len(unreachable) > 0 {
			warnings = append(warnings, fmt.Sprintf("%d tracked keys are unreachable with this admin key: keys/ reports them, and their revocations wait until an admin key that can see them is configured", len(unreachable)))
		}
	}

	b.retireReplacedAdminKey(ctx, req.Storage, &prev, cfg)
	if len(tracked) > 0 {
		// Rotated-out admin keys the new key cannot see are marked like
		// tracked records: a 404 for them never counts as done.
		checked, unseen := make(map[string]bool, len(tracked)), make(map[string]bool, len(unreachable))
		for _, id := range tracked {
			checked[id] = true
		}
		for _, id := range unreachable {
			unseen[id] = true
		}
		for i := range cfg.RetiredKeys {
			rk := &cfg.RetiredKeys[i]
			if checked[rk.KeyID] {
				rk.Unreachable = unseen[rk.KeyID]
			}
		}
	}
	if len(cfg.RetiredKeys) > maxRetiredAdminKeys {
		// Never refused for this: a fresh admin key is how an incident ends.
		// What cannot be pruned now waits for the cleanup pass.
		if client, err := b.checkClient(&prev, prev.AdminAPIKey); err == nil {
			if _, err := b.pruneRetired(ctx, cfg, client); err != nil {
				warnings = append(warnings, fmt.Sprintf("could not delete the oldest rotated-out admin keys beyond the %d kept: %v", maxRetiredAdminKeys, err))
			}
		}
	}
	if w := retiredCapWarning(cfg); w != "" {
		warnings = append(warnings, w)
	}

	// A settings-only write (which takes no config lock) may have stored
	// settings since cfg was read: kept, unless this write sets them too.
	var bad string
	_, err = b.updateConfig(ctx, req.Storage, env, func(stored *heronConfig) (bool, error) {
		if stored.AdminAPIKey != "" {
			mergeConfigSettings(d, cfg, stored)
		}
		// With the schedule as it will be stored; a rotation manager's
		// refusal stores nothing.
		w, refused := b.registerRotation(ctx, req, d, cfg)
		if refused != "" {
			bad = refused
			return false, nil
		}
		warnings = append(warnings, w...)
		*stored = *cfg
		// As in a settings write: a lowered budget applies before it is
		// stored.
		b.lowerBudgetNow(cfg)
		return true, nil
	})
	if bad != "" {
		return logical.ErrorResponse(bad), nil
	}
	// The write may have been stored although it reported an error: the
	// cached client must not go on with a key storage no longer holds.
	b.rebuildClient(ctx, req.Storage, env)
	if err != nil {
		return nil, err
	}
	// The mount's token HMAC secret is written here, once, so that an
	// issuance never has to (it stays at two storage writes).
	if _, err := b.hmacKey(ctx, req.Storage, true); err != nil {
		b.Logger().Warn("could not create the token HMAC secret; the first issuance will", "error", err)
	}

	if len(warnings) == 0 {
		return nil, nil
	}
	return &logical.Response{Warnings: warnings}, nil
}

// configSettings are the fields of a config that change how the engine
// talks to Heron and when it rotates, not which key it uses or where it
// sends it: a write of only these sends nothing to Heron
// (pathConfigWriteSettings), and a write that also verifies a key keeps the
// ones another write stored meanwhile (mergeConfigSettings).
var configSettings = []string{"request_timeout", "max_retries", "rate_limit_per_minute", "old_key_retention", "history_retention",
	"rotation_period", "rotation_schedule", "rotation_window", "disable_automated_rotation"}

// applyConfigSettings applies the request's settings (see configSettings)
// to cfg; prevSchedule is the rotation_schedule cfg had before.
func (b *heronBackend) applyConfigSettings(d *framework.FieldData, cfg *heronConfig, prevSchedule string, create bool) {
	durationField(d, "request_timeout", create, &cfg.RequestTimeout)
	intField(d, "max_retries", create, &cfg.MaxRetries)
	intField(d, "rate_limit_per_minute", create, &cfg.RateLimitPerMinute)
	durationField(d, "old_key_retention", create, &cfg.OldKeyRetention)
	if v, ok := d.GetOk("history_retention"); ok || create || cfg.HistoryRetention == nil {
		if !ok {
			v = d.GetDefaultOrZero("history_retention")
		}
		hr := time.Duration(v.(int)) * time.Second
		cfg.HistoryRetention = &hr
	}
	durationField(d, "rotation_period", create, &cfg.RotationPeriod)
	stringField(d, "rotation_schedule", create, &cfg.RotationSchedule)
	cfg.RotationSchedule = strings.TrimSpace(cfg.RotationSchedule)
	if cfg.RotationSchedule != prevSchedule {
		// A schedule fires at its first time after it was set, never for
		// the times it would have fired since the key was set.
		cfg.ScheduleSetAt = b.now()
	}
	durationField(d, "rotation_window", create, &cfg.RotationWindow)
	boolField(d, "disable_automated_rotation", create, &cfg.DisableAutomatedRotation)
	// Setting one of the exclusive pair clears the other, as with Vault's
	// own engines, so switching from a period to a schedule is one write.
	if _, ok := d.GetOk("rotation_schedule"); ok && cfg.RotationSchedule != "" {
		if _, ok := d.GetOk("rotation_period"); !ok {
			cfg.RotationPeriod = 0
		}
	}
	if _, ok := d.GetOk("rotation_period"); ok && cfg.RotationPeriod > 0 {
		if _, ok := d.GetOk("rotation_schedule"); !ok {
			cfg.RotationSchedule, cfg.RotationWindow = "", 0
		}
	}

}

// mergeConfigSettings keeps in final the settings that stored has (written
// by another config write since final's was read) and that this request
// does not set itself. The rotation fields go together: they are validated
// together (a period excludes a schedule).
func mergeConfigSettings(d *framework.FieldData, final, stored *heronConfig) {
	set := func(names ...string) bool {
		for _, n := range names {
			if _, ok := d.GetOk(n); ok {
				return true
			}
		}
		return false
	}
	if !set("request_timeout") {
		final.RequestTimeout = stored.RequestTimeout
	}
	if !set("max_retries") {
		final.MaxRetries = stored.MaxRetries
	}
	if !set("rate_limit_per_minute") {
		final.RateLimitPerMinute = stored.RateLimitPerMinute
	}
	if !set("old_key_retention") {
		final.OldKeyRetention = stored.OldKeyRetention
	}
	if !set("history_retention") && stored.HistoryRetention != nil {
		final.HistoryRetention = stored.HistoryRetention
	}
	if !set("rotation_period", "rotation_schedule", "rotation_window", "disable_automated_rotation") {
		final.RotationPeriod, final.RotationSchedule, final.RotationWindow = stored.RotationPeriod, stored.RotationSchedule, stored.RotationWindow
		final.DisableAutomatedRotation, final.ScheduleSetAt = stored.DisableAutomatedRotation, stored.ScheduleSetAt
		final.RotationManaged, final.NextVaultRotation = stored.RotationManaged, stored.NextVaultRotation
	}
}

// pathConfigWriteSettings is a config update that sets only settings (see
// configSettings): it sends nothing to Heron, so it never waits for what
// does. It takes no config lock (revocations and the cleanup pass hold its
// read side while they wait for budget: an operator raising the budget in an
// incident must not wait behind them), only the entry's own, and applies
// the settings to the config as stored.
func (b *heronBackend) pathConfigWriteSettings(ctx context.Context, req *logical.Request, d *framework.FieldData, env string) (*logical.Response, error) {
	var bad string
	var warnings []string
	_, err := b.updateConfig(ctx, req.Storage, env, func(cfg *heronConfig) (bool, error) {
		if cfg.AdminAPIKey == "" {
			bad = fmt.Sprintf("config %q does not exist: create it with admin_api_key", env)
			return false, nil
		}
		if cfg.Deleting {
			bad = errDeleting(env).Error()
			return false, nil
		}
		b.applyConfigSettings(d, cfg, cfg.RotationSchedule, false)
		if err := cfg.validate(); err != nil {
			bad = err.Error()
			return false, nil
		}
		if w := retiredCapWarning(cfg); w != "" {
			warnings = append(warnings, w)
		}
		w, refused := b.registerRotation(ctx, req, d, cfg)
		if refused != "" {
			bad = refused
			return false, nil
		}
		warnings = append(warnings, w...)
		// A lowered budget applies before it is stored: a request sent
		// between the write and the client's rebuild must already count
		// against it (a raised one applies after, below).
		b.lowerBudgetNow(cfg)
		return true, nil
	})
	if bad != "" {
		return logical.ErrorResponse(bad), nil
	}
	// Stored or not (a write that reports an error may have been), the
	// cached client takes the config as storage has it now.
	b.rebuildClient(ctx, req.Storage, env)
	if err != nil {
		return nil, err
	}
	if len(warnings) == 0 {
		return nil, nil
	}
	return &logical.Response{Warnings: warnings}, nil
}

// pathConfigDelete handles DELETE config/<environment>.
func (b *heronBackend) pathConfigDelete(ctx context.Context, req *logical.Request, d *framework.FieldData) (*logical.Response, error) {
	env := d.Get("environment").(string)
	if resp := pathEnvironmentError(req, env); resp != nil {
		return resp, nil
	}

	lock := b.configLock(env)
	lock.Lock()
	defer lock.Unlock()

	roles, err := rolesUsingEnvironment(ctx, req.Storage, env)
	if err != nil {
		return nil, err
	}
	if len(roles) > 0 {
		return logical.ErrorResponse("config %q is used by roles %s: delete or move those roles first", env, strings.Join(roles, ", ")), nil
	}
	statics, err := staticRolesUsingEnvironment(ctx, req.Storage, env)
	if err != nil {
		return nil, err
	}
	if len(statics) > 0 {
		return logical.ErrorResponse("config %q is used by static roles %s: delete those static roles first", env, strings.Join(statics, ", ")), nil
	}
	// Without the admin key no lease of this environment could be revoked, so
	// keys with live leases would be orphaned in Heron.
	active, err := countKeys(ctx, req.Storage, func(k *trackedKey) bool {
		return k.Environment == env && k.State == keyStateActive && k.Pending == "" && k.kind() != keyKindStatic
	})
	if err != nil {
		return nil, err
	}
	if active > 0 {
		return logical.ErrorResponse("config %q still has %d active keys with live leases: revoke them first (vault lease revoke -prefix)", env, active), nil
	}
	// A static key no role holds (a role delete whose deactivation failed)
	// has no lease to revoke: tidy retires it.
	orphans, err := countKeys(ctx, req.Storage, func(k *trackedKey) bool {
		return k.Environment == env && k.State == keyStateActive && k.Pending == "" && k.kind() == keyKindStatic
	})
	if err != nil {
		return nil, err
	}
	if orphans > 0 {
		return logical.ErrorResponse("config %q still has %d active keys of deleted static roles: run `vault write -f heron/tidy` (it deactivates them), then delete the config", env, orphans), nil
	}

	// A key the admin key cannot see (accepted with force=true) could not be
	// deleted by the purge below: a 404 would only mean "not visible".
	unreachable, err := countKeys(ctx, req.Storage, func(k *trackedKey) bool {
		return k.Environment == env && k.Unreachable
	})
	if err != nil {
		return nil, err
	}
	if cur, err := getConfig(ctx, req.Storage, env); err != nil {
		return nil, err
	} else if cur != nil {
		for _, rk := range cur.RetiredKeys {
			if rk.Unreachable {
				unreachable++
			}
		}
	}
	if unreachable > 0 {
		return logical.ErrorResponse("config %q: %d keys this engine tracks are unreachable with the current admin key (see keys/ and retired_keys in config/%s): write config/%s with an admin key that can see them, so they can be deleted, before deleting the config", env, unreachable, env, env), nil
	}

	// A key creation whose outcome is unknown may still leave a key in
	// Heron; only this admin key could delete it.
	if _, pending, err := b.rollbackStaleWALs(withConfigDeleting(ctx), req, env); err != nil || pending > 0 {
		msg := fmt.Sprintf("config %q: %d key creations in this environment have an unknown outcome, and a key they made may still appear in Heron (for up to %s); only this config's admin key can delete it. Retry in a few minutes", env, pending, lateKeyWindow)
		if err != nil {
			msg += fmt.Sprintf(" (settling them failed: %v)", err)
		}
		return logical.ErrorResponse(msg), nil
	}

	cfg, err := getConfig(ctx, req.Storage, env)
	if err != nil {
		return nil, err
	}
	// The purge below deletes an admin key the engine created, the key this
	// config holds: from here on the config is being deleted, and nothing
	// may use or rewrite it until a retry finishes the delete.
	resumed := cfg != nil && cfg.Deleting
	if cfg != nil && !cfg.Deleting && cfg.AdminKeyByEngine {
		_, err := b.updateConfig(ctx, req.Storage, env, func(stored *heronConfig) (bool, error) {
			if stored.AdminAPIKey == "" {
				return false, nil // gone already
			}
			stored.Deleting = true
			cfg = stored
			return true, nil
		})
		b.resetClient(env) // stored or not, the cache must read it again
		if err != nil {
			return nil, err
		}
	}

	// Keys waiting out their retention could never be deleted once the admin
	// key is gone: delete them now rather than leave them in Heron.
	if err := b.purgeEnvironment(ctx, req.Storage, env); err != nil {
		// The admin key the engine created is deleted last: a retry that
		// finds it rejected follows a delete that purged everything.
		if !resumed || !errors.Is(err, heronapi.ErrUnauthorized) {
			return nil, upstreamError(fmt.Sprintf("deleting the retained keys of config %q before deleting it", env), err)
		}
		b.Logger().Info("retried config delete: the purge had finished", "environment", env)
	}
	var warnings []string
	if cfg != nil {
		// Vault's rotation manager would otherwise call back for a config
		// that no longer exists, for as long as the mount lives.
		warnings = b.deregisterRotationJob(ctx, req.MountPoint, configStoragePrefix+env, cfg.RotationManaged)
	}

	// Under the entry's lock, so that a settings-only write that read the
	// config before cannot write it back after.
	entry := locksutil.LockForKey(b.configEntryLocks, env)
	entry.Lock()
	err = req.Storage.Delete(ctx, configStoragePrefix+env)
	entry.Unlock()
	if err != nil {
		return nil, fmt.Errorf("deleting config %q (its retained keys, and an admin key the engine created, are already deleted in Heron: retry the delete to finish): %w", env, err)
	}
	b.resetClient(env)
	// The purge deleted every rotated-out admin key: their progress records
	// say nothing any more (a config of the same name starts afresh).
	if err := dropAllProgress(ctx, req.Storage, env); err != nil {
		b.Logger().Warn("could not delete the deleted config's rotated-out admin key records; a config of the same name ignores them", "environment", env, "error", err)
	}
	if len(warnings) > 0 {
		return &logical.Response{Warnings: warnings}, nil
	}
	return nil, nil
}

const operationPrefixHeron = "heron"

const pathConfigListHelpSyn = `List the configured Heron environments.`

const pathConfigListHelpDesc = `Lists the environments that have an admin key configured.`

const pathConfigHelpSyn = `Configure the admin key and connection settings of one Heron environment.`

const pathConfigHelpDesc = `
Each Heron environment (development, production, ...) has its own admin key:
Heron separates environments at the credential level. The admin key must be
able to create, list, deactivate and delete keys; it is checked against Heron
on write (unless verify=false) and is never returned by a read.
`
