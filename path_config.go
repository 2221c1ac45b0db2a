package heron

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"regexp"
	"sort"
	"strings"
	"time"

	"github.com/hashicorp/vault/sdk/framework"
	"github.com/hashicorp/vault/sdk/helper/locksutil"
	"github.com/hashicorp/vault/sdk/logical"
	"github.com/hashicorp/vault/sdk/rotation"

	"github.com/heron-vault/vault-plugin-secrets-heron/heronapi"
)

const (
	configStoragePrefix = "config/"

	defaultBaseURL            = "https://app.herondata.io"
	defaultRequestTimeout     = 30 * time.Second
	defaultMaxRetries         = 4
	defaultRateLimitPerMinute = 250
	defaultOldKeyRetention    = 24 * time.Hour

	maxRequestTimeout     = 5 * time.Minute
	maxMaxRetries         = 20
	maxRateLimitPerMinute = 100000
	minRotationPeriod     = time.Minute
)

// environmentPattern takes any single path segment so that a bad name gets a
// 400 naming the rule instead of Vault's "unsupported path".
const environmentPattern = `(?P<environment>[^/]+)`

var (
	environmentRegex = regexp.MustCompile(`^[a-z0-9-]{1,64}$`)
	apiKeyRegex      = regexp.MustCompile(`^key_[0-9a-f]{48}$`)

	errConfigNotFound = errors.New("no config for Heron environment")
)

// heronConfig is one Heron environment: the admin key the engine manages keys
// with, and how it talks to Heron.
type heronConfig struct {
	Environment        string        `json:"environment"`
	AdminAPIKey        string        `json:"admin_api_key"`
	AdminKeyID         string        `json:"admin_key_id"`
	BaseURL            string        `json:"base_url"`
	RequestTimeout     time.Duration `json:"request_timeout"`
	MaxRetries         int           `json:"max_retries"`
	RateLimitPerMinute int           `json:"rate_limit_per_minute"`
	OldKeyRetention    time.Duration `json:"old_key_retention"`
	RotationPeriod     time.Duration `json:"rotation_period"`
	LastRotated        time.Time     `json:"last_rotated"`
	// Vault's automated-rotation fields. RotationSchedule is a cron
	// schedule (exclusive with RotationPeriod); RotationWindow bounds how late
	// a scheduled rotation may start (enforced by Vault Enterprise's rotation
	// manager). RotationManaged records that Vault's rotation manager accepted
	// the job, in which case the engine's own scheduler stays out of the way.
	RotationSchedule         string        `json:"rotation_schedule,omitempty"`
	RotationWindow           time.Duration `json:"rotation_window,omitempty"`
	DisableAutomatedRotation bool          `json:"disable_automated_rotation,omitempty"`
	RotationManaged          bool          `json:"rotation_managed,omitempty"`
	// BudgetKey names the rate limiter this config spends: the SHA-256 of the
	// admin key set by hand, kept across rotations, so that mounts sharing an
	// admin key share one budget and a rotation does not start a second one.
	BudgetKey string `json:"budget_key,omitempty"`
	// AdminKeyByEngine records that the current admin key was created by a
	// rotation: its token exists nowhere but here, so deleting the config
	// deletes the key too.
	AdminKeyByEngine bool `json:"admin_key_by_engine,omitempty"`
	// KeySetAt is when the current admin key was stored (by hand or by
	// rotation); scheduled rotation counts rotation_period from it.
	KeySetAt time.Time `json:"key_set_at"`
	// RetiredKeys are rotated-out admin keys still to deactivate or delete.
	// They live in the config entry so that switching to the new key and
	// remembering the old one is a single atomic write.
	RetiredKeys []retiredAdminKey `json:"retired_keys,omitempty"`
}

// retiredAdminKey is an admin key replaced by rotation (ids only, never the token).
type retiredAdminKey struct {
	KeyID       string    `json:"key_id"`
	TokenPrefix string    `json:"token_prefix"`
	RetiredAt   time.Time `json:"retired_at"`
	Deactivated bool      `json:"deactivated"`
	DeleteAfter time.Time `json:"delete_after"`
}

// validate checks every field and names the first one that is wrong.
func (c *heronConfig) validate() error {
	if !environmentRegex.MatchString(c.Environment) {
		return fmt.Errorf("environment %q is invalid: it must match [a-z0-9-]{1,64}", c.Environment)
	}
	if c.AdminAPIKey == "" {
		return errors.New("admin_api_key is required")
	}
	if !apiKeyRegex.MatchString(c.AdminAPIKey) {
		// Never echo the value: it may be a real secret with a typo.
		return errors.New("admin_api_key is malformed: it must be \"key_\" followed by 48 lowercase hex characters")
	}
	if err := validateBaseURL(c.BaseURL); err != nil {
		return err
	}
	if c.RequestTimeout < time.Second || c.RequestTimeout > maxRequestTimeout {
		return fmt.Errorf("request_timeout must be between 1s and %s, got %s", maxRequestTimeout, c.RequestTimeout)
	}
	if c.MaxRetries < 0 || c.MaxRetries > maxMaxRetries {
		return fmt.Errorf("max_retries must be between 0 and %d, got %d", maxMaxRetries, c.MaxRetries)
	}
	if c.RateLimitPerMinute < 1 || c.RateLimitPerMinute > maxRateLimitPerMinute {
		return fmt.Errorf("rate_limit_per_minute must be between 1 and %d, got %d", maxRateLimitPerMinute, c.RateLimitPerMinute)
	}
	if c.OldKeyRetention < 0 {
		return fmt.Errorf("old_key_retention must not be negative, got %s", c.OldKeyRetention)
	}
	if c.RotationPeriod < 0 || (c.RotationPeriod > 0 && c.RotationPeriod < minRotationPeriod) {
		return fmt.Errorf("rotation_period must be 0 (off) or at least %s, got %s", minRotationPeriod, c.RotationPeriod)
	}
	if c.RotationSchedule != "" {
		if c.RotationPeriod > 0 {
			return errors.New("rotation_schedule and rotation_period are mutually exclusive: set one of them")
		}
		if _, err := rotation.DefaultScheduler.Parse(c.RotationSchedule); err != nil {
			return fmt.Errorf("rotation_schedule is not a valid cron schedule: %v", err)
		}
	}
	if c.RotationWindow < 0 {
		return fmt.Errorf("rotation_window must not be negative, got %s", c.RotationWindow)
	}
	if c.RotationWindow > 0 && c.RotationSchedule == "" {
		return errors.New("rotation_window needs rotation_schedule")
	}
	return nil
}

// validateBaseURL accepts an absolute http(s) URL without query or fragment.
func validateBaseURL(raw string) error {
	u, err := url.Parse(raw)
	if err != nil {
		return fmt.Errorf("base_url is not a valid URL: %v", err)
	}
	if u.Scheme != "http" && u.Scheme != "https" {
		return fmt.Errorf("base_url must use http or https, got %q", raw)
	}
	if u.Host == "" {
		return fmt.Errorf("base_url must include a host, got %q", raw)
	}
	if u.RawQuery != "" || u.Fragment != "" || u.User != nil {
		return fmt.Errorf("base_url must not carry credentials, a query or a fragment, got %q", u.Redacted())
	}
	return nil
}

// budgetKey identifies a rate-limit budget without keeping the key itself.
func budgetKey(adminKey string) string {
	sum := sha256.Sum256([]byte(adminKey))
	return hex.EncodeToString(sum[:])
}

// keyPrefix is the part of a key that Heron shows in its dashboard.
func keyPrefix(key string) string {
	if len(key) < 8 {
		return ""
	}
	return key[:8]
}

func pathConfig(b *heronBackend) []*framework.Path {
	return []*framework.Path{
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
					Description: "How long after a scheduled time a rotation may still start (Vault Enterprise rotation manager). Needs rotation_schedule.",
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
					Callback: b.pathConfigRead,
					Summary:  "Read an environment's configuration (never the admin key).",
				},
				logical.CreateOperation: &framework.PathOperation{
					Callback: b.pathConfigWrite,
					Summary:  "Configure a Heron environment.",
				},
				logical.UpdateOperation: &framework.PathOperation{
					Callback: b.pathConfigWrite,
					Summary:  "Update a Heron environment's configuration.",
				},
				logical.DeleteOperation: &framework.PathOperation{
					Callback: b.pathConfigDelete,
					Summary:  "Delete a Heron environment's configuration.",
				},
			},
			HelpSynopsis:    pathConfigHelpSyn,
			HelpDescription: pathConfigHelpDesc,
		},
		pathConfigRotate(b),
	}
}

// getConfig returns the stored config of env, or (nil, nil) when there is none.
func getConfig(ctx context.Context, s logical.Storage, env string) (*heronConfig, error) {
	return getJSON[heronConfig](ctx, s, configStoragePrefix+env, fmt.Sprintf("config %q", env))
}

// putConfig stores cfg.
func putConfig(ctx context.Context, s logical.Storage, cfg *heronConfig) error {
	return putJSON(ctx, s, configStoragePrefix+cfg.Environment, fmt.Sprintf("config %q", cfg.Environment), cfg)
}

// configLock is the lock that serialises writes and rotation of env.
func (b *heronBackend) configLock(env string) *locksutil.LockEntry {
	return locksutil.LockForKey(b.configLocks, env)
}

func (b *heronBackend) pathConfigExistenceCheck(ctx context.Context, req *logical.Request, d *framework.FieldData) (bool, error) {
	cfg, err := getConfig(ctx, req.Storage, d.Get("environment").(string))
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
	return &logical.Response{Data: map[string]interface{}{
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
		"last_rotated":               lastRotated,
		"next_rotation":              formatTime(nextRotation(cfg)),
		"retired_keys":               retiredKeysView(cfg.RetiredKeys),
	}}, nil
}

// retiredKeysView is what config read shows of the rotated-out admin keys.
func retiredKeysView(rks []retiredAdminKey) []map[string]interface{} {
	out := make([]map[string]interface{}, 0, len(rks))
	for _, rk := range rks {
		state := keyStateActive
		deactivatedAt := ""
		if rk.Deactivated {
			state = keyStateDeactivated
			deactivatedAt = formatTime(rk.RetiredAt)
		}
		out = append(out, map[string]interface{}{
			"key_id":         rk.KeyID,
			"token_prefix":   rk.TokenPrefix,
			"state":          state,
			"deactivated_at": deactivatedAt,
			"delete_after":   formatTime(rk.DeleteAfter),
		})
	}
	return out
}

// pathConfigWrite handles CREATE and UPDATE config/<environment>.
func (b *heronBackend) pathConfigWrite(ctx context.Context, req *logical.Request, d *framework.FieldData) (*logical.Response, error) {
	env := d.Get("environment").(string)
	if !environmentRegex.MatchString(env) {
		return logical.ErrorResponse("environment %q is invalid: it must match [a-z0-9-]{1,64}", env), nil
	}

	lock := b.configLock(env)
	lock.Lock()
	defer lock.Unlock()

	cfg, err := getConfig(ctx, req.Storage, env)
	if err != nil {
		return nil, err
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
	durationField(d, "request_timeout", create, &cfg.RequestTimeout)
	intField(d, "max_retries", create, &cfg.MaxRetries)
	intField(d, "rate_limit_per_minute", create, &cfg.RateLimitPerMinute)
	durationField(d, "old_key_retention", create, &cfg.OldKeyRetention)
	durationField(d, "rotation_period", create, &cfg.RotationPeriod)
	stringField(d, "rotation_schedule", create, &cfg.RotationSchedule)
	cfg.RotationSchedule = strings.TrimSpace(cfg.RotationSchedule)
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

	if err := cfg.validate(); err != nil {
		return logical.ErrorResponse(err.Error()), nil
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
	}

	var unreachable []string
	_, setsKey := d.GetOk("admin_api_key")
	_, setsURL := d.GetOk("base_url")
	switch {
	case verify && (create || setsKey || setsURL || len(tracked) > 0):
		live, err := b.verifyAdminKey(ctx, cfg)
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
	case keyChanged && len(tracked) > 0 && !force:
		return logical.ErrorResponse("config %q: verify=false cannot check that the new admin_api_key or base_url sees the %d keys this engine tracks in the environment; write it with verify=true, or with force=true to accept it unchecked", env, len(tracked)), nil
	case keyChanged:
		// Unchecked (force without verify): as far as the engine knows, the
		// new key sees none of them.
		unreachable = tracked
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

	b.retireReplacedAdminKey(&prev, cfg)
	warnings = append(warnings, b.registerRotation(ctx, req, cfg)...)

	if err := putConfig(ctx, req.Storage, cfg); err != nil {
		return nil, err
	}
	b.resetClient(env)

	if len(warnings) == 0 {
		return nil, nil
	}
	return &logical.Response{Warnings: warnings}, nil
}

// verifyAdminKey lists the environment's keys with cfg's admin key: it proves
// the key can manage keys, tells its Heron id, and shows which tracked keys
// it can see. It spends the environment's budget without claiming it, so a
// write that fails leaves the budget as it was.
func (b *heronBackend) verifyAdminKey(ctx context.Context, cfg *heronConfig) ([]heronapi.Key, error) {
	c, err := b.checkClient(cfg, cfg.AdminAPIKey)
	if err != nil {
		return nil, err
	}
	return c.ListKeys(ctx)
}

// verifyError maps a failed verify to what it means: Heron refusing the key
// is the caller's to fix (400); Heron unreachable, rate limited or failing is
// not a judgement on the key (502, naming what Heron answered).
func verifyError(env string, err error) (*logical.Response, error) {
	var apiErr *heronapi.APIError
	switch {
	case errors.Is(err, heronapi.ErrUnauthorized), errors.As(err, &apiErr) && apiErr.StatusCode >= 400 && apiErr.StatusCode < 500 && apiErr.StatusCode != http.StatusTooManyRequests:
		return logical.ErrorResponse("verify: Heron refused the admin key for config %q: %v", env, err), nil
	case errors.Is(err, heronapi.ErrRateLimited):
		return nil, upstreamError(fmt.Sprintf("verify: could not check the admin key for config %q (nothing was saved; retry later)", env), err)
	default:
		return nil, &codedError{code: http.StatusBadGateway, msg: fmt.Sprintf("verify: could not reach Heron to check the admin key for config %q (nothing was saved; check base_url and the network, or retry): %v", env, err)}
	}
}

// keysToSee is every key of cfg's environment that the engine must be able to
// revoke or delete with its admin key: tracked keys and rotated-out admin
// keys, and the engine-created admin key itself.
func (b *heronBackend) keysToSee(ctx context.Context, s logical.Storage, cfg *heronConfig) ([]string, error) {
	keys, err := listTrackedKeys(ctx, s)
	if err != nil {
		return nil, err
	}
	var ids []string
	for _, k := range keys {
		if k.Environment == cfg.Environment {
			ids = append(ids, k.KeyID)
		}
	}
	for _, rk := range cfg.RetiredKeys {
		ids = append(ids, rk.KeyID)
	}
	if cfg.AdminKeyByEngine && cfg.AdminKeyID != "" {
		ids = append(ids, cfg.AdminKeyID)
	}
	sort.Strings(ids)
	return ids, nil
}

// missingFrom returns the ids of want that live does not list.
func missingFrom(want []string, live []heronapi.Key) []string {
	seen := make(map[string]bool, len(live))
	for _, k := range live {
		seen[k.ID] = true
	}
	var out []string
	for _, id := range want {
		if !seen[id] {
			out = append(out, id)
		}
	}
	return out
}

// unreachableKeys is the ids of env's tracked keys marked unreachable.
func (b *heronBackend) unreachableKeys(ctx context.Context, s logical.Storage, env string) ([]string, error) {
	keys, err := listTrackedKeys(ctx, s)
	if err != nil {
		return nil, err
	}
	var ids []string
	for _, k := range keys {
		if k.Environment == env && k.Unreachable {
			ids = append(ids, k.KeyID)
		}
	}
	return ids, nil
}

// markUnreachable flags the tracked keys in unreachable and clears the flag
// on the other keys of tracked (ids that are no tracked record, such as
// retired admin keys, are skipped).
func (b *heronBackend) markUnreachable(ctx context.Context, s logical.Storage, tracked, unreachable []string) error {
	bad := make(map[string]bool, len(unreachable))
	for _, id := range unreachable {
		bad[id] = true
	}
	var errs []error
	for _, id := range tracked {
		rec, err := getTrackedKey(ctx, s, id)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		if rec == nil || rec.Unreachable == bad[id] {
			continue
		}
		rec.Unreachable = bad[id]
		if err := putJSON(ctx, s, keyStoragePrefix+id, "key record "+id, rec); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// retireReplacedAdminKey keeps the retired list true to a hand-written key:
// an engine-created admin key replaced by hand exists only in this config,
// so it is retired (deactivated, then deleted after old_key_retention) rather
// than left live; and a retired key written back as the admin key is no
// longer retired, or the cleanup pass would delete the key in use.
func (b *heronBackend) retireReplacedAdminKey(prev, cfg *heronConfig) {
	if prev.AdminAPIKey == "" || prev.AdminAPIKey == cfg.AdminAPIKey {
		return
	}
	if prev.AdminKeyByEngine && prev.AdminKeyID != "" && prev.AdminKeyID != cfg.AdminKeyID {
		now := b.now()
		cfg.RetiredKeys = append(cfg.RetiredKeys, retiredAdminKey{
			KeyID:       prev.AdminKeyID,
			TokenPrefix: keyPrefix(prev.AdminAPIKey),
			RetiredAt:   now,
			DeleteAfter: now.Add(cfg.OldKeyRetention),
		})
	}
	kept := cfg.RetiredKeys[:0]
	for _, rk := range cfg.RetiredKeys {
		if !cfg.isAdminKey(rk.KeyID, rk.TokenPrefix) {
			kept = append(kept, rk)
		}
	}
	cfg.RetiredKeys = kept
}

// isAdminKey reports whether a key (by id, or by prefix while the admin key's
// id is unknown) is the config's current admin key.
func (c *heronConfig) isAdminKey(id, prefix string) bool {
	if c.AdminKeyID != "" {
		return id == c.AdminKeyID
	}
	return prefix != "" && prefix == keyPrefix(c.AdminAPIKey)
}

// accountsFor reports whether k is one of the config's own keys: the current
// admin key or a rotated-out one.
func (c *heronConfig) accountsFor(k heronapi.Key) bool {
	if c.isAdminKey(k.ID, k.TokenPrefix) {
		return true
	}
	for _, rk := range c.RetiredKeys {
		if rk.KeyID == k.ID {
			return true
		}
	}
	return false
}

// findKeyIDByPrefix returns the id of the single active key with prefix.
func findKeyIDByPrefix(keys []heronapi.Key, prefix string) (string, error) {
	var ids []string
	for _, k := range keys {
		if k.TokenPrefix == prefix && k.IsActive {
			ids = append(ids, k.ID)
		}
	}
	switch len(ids) {
	case 0:
		return "", fmt.Errorf("no active key with prefix %s in Heron's list", prefix)
	case 1:
		return ids[0], nil
	default:
		sort.Strings(ids)
		return "", fmt.Errorf("%d active keys share the prefix %s (%s)", len(ids), prefix, strings.Join(ids, ", "))
	}
}

// pathConfigDelete handles DELETE config/<environment>.
func (b *heronBackend) pathConfigDelete(ctx context.Context, req *logical.Request, d *framework.FieldData) (*logical.Response, error) {
	env := d.Get("environment").(string)

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
	// Without the admin key no lease of this environment could be revoked, so
	// keys with live leases would be orphaned in Heron.
	active, err := countKeys(ctx, req.Storage, func(k *trackedKey) bool {
		return k.Environment == env && k.State == keyStateActive && k.Pending == ""
	})
	if err != nil {
		return nil, err
	}
	if active > 0 {
		return logical.ErrorResponse("config %q still has %d active keys with live leases: revoke them first (vault lease revoke -prefix)", env, active), nil
	}

	// A key the admin key cannot see (accepted with force=true) could not be
	// deleted by the purge below: a 404 would only mean "not visible".
	unreachable, err := countKeys(ctx, req.Storage, func(k *trackedKey) bool {
		return k.Environment == env && k.Unreachable
	})
	if err != nil {
		return nil, err
	}
	if unreachable > 0 {
		return logical.ErrorResponse("config %q: %d keys this engine tracks are unreachable with the current admin key (see keys/): write config/%s with an admin key that can see them, so they can be deleted, before deleting the config", env, unreachable, env), nil
	}

	// A key creation whose outcome is unknown may still leave a key in
	// Heron; only this admin key could delete it.
	if _, pending, err := b.rollbackStaleWALs(ctx, req, env); err != nil || pending > 0 {
		msg := fmt.Sprintf("config %q: %d key creations in this environment have an unknown outcome, and a key they made may still appear in Heron (for up to %s); only this config's admin key can delete it. Retry in a few minutes", env, pending, lateKeyWindow)
		if err != nil {
			msg += fmt.Sprintf(" (settling them failed: %v)", err)
		}
		return logical.ErrorResponse(msg), nil
	}

	// Keys waiting out their retention could never be deleted once the admin
	// key is gone: delete them now rather than leave them in Heron.
	if err := b.purgeEnvironment(ctx, req.Storage, env); err != nil {
		return nil, upstreamError(fmt.Sprintf("deleting the retained keys of config %q before deleting it", env), err)
	}

	cfg, err := getConfig(ctx, req.Storage, env)
	if err != nil {
		return nil, err
	}
	var warnings []string
	if cfg != nil && cfg.RotationManaged {
		// Vault's rotation manager would otherwise call back for a config
		// that no longer exists, for as long as the mount lives.
		if err := b.System().DeregisterRotationJob(ctx, &rotation.RotationJobDeregisterRequest{
			MountPoint: req.MountPoint, ReqPath: configStoragePrefix + env,
		}); err != nil {
			warnings = append(warnings, fmt.Sprintf("could not deregister the rotation job from Vault's rotation manager: %v", err))
		}
	}

	if err := req.Storage.Delete(ctx, configStoragePrefix+env); err != nil {
		return nil, fmt.Errorf("deleting config %q (its retained keys, and an admin key the engine created, are already deleted in Heron: retry the delete to finish): %w", env, err)
	}
	b.resetClient(env)
	if len(warnings) > 0 {
		return &logical.Response{Warnings: warnings}, nil
	}
	return nil, nil
}

// purgeEnvironment deletes, ahead of their retention, the deactivated keys and
// rotated-out admin keys of env.
func (b *heronBackend) purgeEnvironment(ctx context.Context, s logical.Storage, env string) error {
	cfg, err := getConfig(ctx, s, env)
	if err != nil || cfg == nil {
		return err
	}
	all, err := retainedKeys(ctx, s)
	if err != nil {
		return err
	}
	var retained []*trackedKey
	for _, k := range all {
		if k.Environment == env {
			retained = append(retained, k)
		}
	}
	ownAdmin := cfg.AdminKeyByEngine && cfg.AdminKeyID != ""
	if len(retained) == 0 && len(cfg.RetiredKeys) == 0 && !ownAdmin {
		return nil
	}
	client, err := b.getClient(ctx, s, env)
	if err != nil {
		return err
	}
	for _, k := range retained {
		if err := deleteIfPresent(ctx, client, k.KeyID); err != nil {
			return fmt.Errorf("deleting key %s: %w", k.KeyID, err)
		}
		if err := deleteTrackedKey(ctx, s, k); err != nil {
			return err
		}
		b.Logger().Info("deleted retained key with its config", "key_id", k.KeyID, "environment", env)
	}
	for _, rk := range cfg.RetiredKeys {
		if err := deleteIfPresent(ctx, client, rk.KeyID); err != nil {
			return fmt.Errorf("deleting old admin key %s: %w", rk.KeyID, err)
		}
		b.Logger().Info("deleted rotated-out admin key with its config", "key_id", rk.KeyID, "environment", env)
	}
	if ownAdmin {
		// Last, since it is the key making these calls.
		if err := deleteIfPresent(ctx, client, cfg.AdminKeyID); err != nil {
			return fmt.Errorf("deleting the admin key %s created by rotation: %w", cfg.AdminKeyID, err)
		}
		b.Logger().Info("deleted the engine-created admin key with its config", "key_id", cfg.AdminKeyID, "environment", env)
	}
	return nil
}

// The field helpers apply a value when it was given, or the schema default on
// create, so that an update only changes what the caller sent.
func stringField(d *framework.FieldData, name string, create bool, dst *string) {
	if v, ok := d.GetOk(name); ok {
		*dst = v.(string)
	} else if create {
		*dst = d.GetDefaultOrZero(name).(string)
	}
}

func intField(d *framework.FieldData, name string, create bool, dst *int) {
	if v, ok := d.GetOk(name); ok {
		*dst = v.(int)
	} else if create {
		*dst = d.GetDefaultOrZero(name).(int)
	}
}

func boolField(d *framework.FieldData, name string, create bool, dst *bool) {
	if v, ok := d.GetOk(name); ok {
		*dst = v.(bool)
	} else if create {
		*dst = d.GetDefaultOrZero(name).(bool)
	}
}

func durationField(d *framework.FieldData, name string, create bool, dst *time.Duration) {
	if v, ok := d.GetOk(name); ok {
		*dst = time.Duration(v.(int)) * time.Second
	} else if create {
		*dst = time.Duration(d.GetDefaultOrZero(name).(int)) * time.Second
	}
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
