package heron

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"regexp"
	"sort"
	"strings"
	"time"

	"github.com/hashicorp/vault/sdk/helper/locksutil"
	"github.com/hashicorp/vault/sdk/logical"
	"github.com/hashicorp/vault/sdk/rotation"

	"github.com/heron-vault/vault-plugin-secrets-heron/heronapi"
)

// A config: one Heron environment, its admin key and how the engine talks to it.

const (
	configStoragePrefix = "config/"

	defaultBaseURL            = "https://app.herondata.io"
	defaultRequestTimeout     = 30 * time.Second
	defaultMaxRetries         = 4
	defaultRateLimitPerMinute = 250
	defaultOldKeyRetention    = 24 * time.Hour
	defaultHistoryRetention   = 720 * time.Hour

	// maxRetiredAdminKeys bounds the rotated-out admin keys a config keeps
	// (they share its storage entry, which integrated storage caps at
	// 1 MiB): beyond it the oldest deactivated ones are deleted before
	// their old_key_retention ends (see pruneRetired).
	maxRetiredAdminKeys = 64

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
	// NextVaultRotation is when Vault's rotation manager said it rotates
	// next (at registration, and at each of its calls): RotationManaged only.
	NextVaultRotation time.Time `json:"next_vault_rotation,omitempty"`
	// ScheduleSetAt is when RotationSchedule was last set or changed.
	ScheduleSetAt time.Time `json:"schedule_set_at,omitempty"`
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
	// remembering the old one is a single atomic write; how far each got
	// is in records of their own (retired_admin.go), which getConfig
	// applies.
	RetiredKeys []retiredAdminKey `json:"retired_keys,omitempty"`
	// progressIDs are the retired keys' progress records getConfig applied
	// (never stored).
	progressIDs []string
	// HistoryRetention is how long a deleted key's tombstone stays readable
	// in keys/ (nil: the default, for configs written before it existed).
	HistoryRetention *time.Duration `json:"history_retention,omitempty"`
	// Deleting: a delete of this config began (it may have deleted the admin
	// key the engine created) and did not finish; only a retry may go on.
	Deleting bool `json:"deleting,omitempty"`
}

// historyRetention is the config's history_retention.
func (c *heronConfig) historyRetention() time.Duration {
	if c == nil || c.HistoryRetention == nil {
		return defaultHistoryRetention
	}
	return *c.HistoryRetention
}

// errDeleting says what to do about a config whose delete did not finish.
func errDeleting(env string) error {
	return fmt.Errorf("config %q is being deleted (a delete failed part way, and its admin key may already be gone): run `vault delete heron/config/%s` again to finish", env, env)
}

// retiredAdminKey is an admin key replaced by rotation (ids only, never the token).
type retiredAdminKey struct {
	KeyID       string    `json:"key_id"`
	TokenPrefix string    `json:"token_prefix"`
	RetiredAt   time.Time `json:"retired_at"`
	Deactivated bool      `json:"deactivated"`
	// DeactivatedAt is when Heron confirmed the deactivation; the
	// retention (DeleteAfter) counts from it.
	DeactivatedAt time.Time `json:"deactivated_at,omitempty"`
	DeleteAfter   time.Time `json:"delete_after"`
	// Unreachable: the current admin key cannot see this key (a forced
	// write to another Heron user), so Heron's 404 for it proves nothing:
	// it is never taken for deactivated or deleted on one.
	Unreachable bool `json:"unreachable,omitempty"`
	// TokenHMAC is its token's HMAC (see token_hmac.go), so that
	// keys/lookup recognises a leaked rotated-out admin key.
	TokenHMAC string `json:"token_hmac,omitempty"`
}

// errRetiredUnreachable says why a retired admin key cannot be settled.
func errRetiredUnreachable(env, id string) error {
	return fmt.Errorf("rotated-out admin key %s is unreachable with the current admin key of config %q (accepted with force=true), so Heron's 404 does not prove it deactivated or gone; write config/%s with an admin key of its Heron user, or deactivate and delete it in Heron's dashboard", id, env, env)
}

// validate checks every field and names the first one that is wrong.
func (c *heronConfig) validate() error {
	if !environmentRegex.MatchString(c.Environment) {
		return fmt.Errorf("environment %q is invalid: it must match [a-z0-9-]{1,64}", c.Environment)
	}
	if c.AdminAPIKey == "" {
		return errors.New("admin_api_key is required")
	}
	if !heronapi.TokenPattern.MatchString(c.AdminAPIKey) {
		// Never echo the value: it may be a real secret with a typo.
		return errors.New("admin_api_key is malformed: it must be \"key_\" followed by 48 lowercase hex characters")
	}
	if err := heronapi.ValidateBaseURL(c.BaseURL); err != nil {
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
	if c.HistoryRetention != nil && *c.HistoryRetention < 0 {
		return fmt.Errorf("history_retention must not be negative, got %s", *c.HistoryRetention)
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
		return errors.New("cannot use rotation_window without rotation_schedule")
	}
	return nil
}

// budgetKey identifies a rate-limit budget without keeping the key itself.
func budgetKey(adminKey string) string {
	sum := sha256.Sum256([]byte(adminKey))
	return hex.EncodeToString(sum[:])
}

// keyPrefix is the part of a key that Heron shows in its dashboard.
func keyPrefix(key string) string { return heronapi.TokenPrefix(key) }

// getConfig returns the stored config of env, or (nil, nil) when there is none.
// The rotated-out admin keys' progress records are applied (see
// retired_admin.go).
func getConfig(ctx context.Context, s logical.Storage, env string) (*heronConfig, error) {
	cfg, err := getJSON[heronConfig](ctx, s, configStoragePrefix+env, fmt.Sprintf("config %q", env))
	if err != nil || cfg == nil {
		return cfg, err
	}
	if err := applyRetiredProgress(ctx, s, cfg); err != nil {
		return nil, err
	}
	return cfg, nil
}

// updateConfig is the one transition of a config's storage entry: under
// the entry's own lock, it reads the config as stored, lets change decide
// and apply what it changes to that read (reporting whether anything did),
// and writes it back. The lock is held only for the read and the write,
// never across an upstream call, so that every writer (a config write, a
// rotation) applies its change to what the others stored instead of
// writing back an older copy. The cleanup pass is no writer: it records
// the rotated-out admin keys' progress in records of their own.
// Callers that decided from an earlier read re-check under it.
func (b *heronBackend) updateConfig(ctx context.Context, s logical.Storage, env string, change func(cfg *heronConfig) (bool, error)) (*heronConfig, error) {
	lock := locksutil.LockForKey(b.configEntryLocks, env)
	lock.Lock()
	defer lock.Unlock()
	cfg, err := getConfig(ctx, s, env)
	if err != nil {
		return nil, err
	}
	if cfg == nil {
		cfg = &heronConfig{Environment: env}
	}
	changed, err := change(cfg)
	if err != nil || !changed {
		return cfg, err
	}
	if err := putConfig(ctx, s, cfg); err != nil {
		return cfg, err
	}
	b.dropFoldedProgress(ctx, s, cfg)
	return cfg, nil
}

// putConfig stores cfg.
func putConfig(ctx context.Context, s logical.Storage, cfg *heronConfig) error {
	return putJSON(ctx, s, configStoragePrefix+cfg.Environment, fmt.Sprintf("config %q", cfg.Environment), cfg)
}

// configLock is the lock that serialises writes and rotation of env.
func (b *heronBackend) configLock(env string) *locksutil.LockEntry {
	return locksutil.LockForKey(b.configLocks, env)
}

// isAdminKey reports whether a key (by id, or by prefix while the admin key's
// id is unknown) is the config's current admin key.
func (c *heronConfig) isAdminKey(id, prefix string) bool {
	if c.AdminKeyID != "" {
		return id == c.AdminKeyID
	}
	return prefix != "" && prefix == keyPrefix(c.AdminAPIKey)
}

// retired returns the rotated-out admin key id, or nil (also for a nil c).
func (c *heronConfig) retired(id string) *retiredAdminKey {
	if c == nil {
		return nil
	}
	for i := range c.RetiredKeys {
		if c.RetiredKeys[i].KeyID == id {
			return &c.RetiredKeys[i]
		}
	}
	return nil
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
