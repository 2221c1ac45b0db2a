package heron

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"slices"
	"sort"
	"time"

	"github.com/hashicorp/vault/sdk/logical"

	"github.com/heron-vault/vault-plugin-secrets-heron/heronapi"
)

// Custody of the admin key on config writes: verify it, check that it can see
// every key the engine must be able to delete, and keep the retired list true.

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

// verifyStoredEnvironment is verifyAdminKey for a config write. The check
// goes to the environment this mount's config of that name spends its
// budget on, so when cfg spends another budget (an admin key set by hand, a
// new base URL, a config created again) the check counts in both: it waits
// out the environment's pause and last minute of requests, and a 429 it
// meets pauses the environment whether the write is then stored or not.
//
// While the check runs, the stored config's requests (a settings write, a
// reload's other instance) still spend the stored budget, so the check's
// requests are recorded in both (heronapi.JointLimiter), not only carried
// over once.
func (b *heronBackend) verifyStoredEnvironment(ctx context.Context, prev, cfg *heronConfig) ([]heronapi.Key, error) {
	scope := b.budgetScope(cfg.Environment)
	b.budgets.Follow(scope, cfg.BaseURL, limiterIdentity(cfg, cfg.AdminAPIKey), cfg.RateLimitPerMinute)
	if prev.AdminAPIKey == "" {
		return b.verifyAdminKey(ctx, cfg)
	}
	// Stored or not, the stored config spends its budget again after.
	defer b.budgets.Follow(scope, prev.BaseURL, limiterIdentity(prev, prev.AdminAPIKey), prev.RateLimitPerMinute)
	c, err := b.checkClientWith(cfg, heronapi.JointLimiter(b.peekLimiter(prev), b.peekLimiter(cfg)))
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
	// A static role's keys, even where a failed write left no record.
	statics, err := listStaticRoles(ctx, s)
	if err != nil {
		return nil, err
	}
	for _, r := range statics {
		if r.Environment != cfg.Environment {
			continue
		}
		for _, id := range []string{r.KeyID, r.PreviousKeyID} {
			if id != "" && !slices.Contains(ids, id) {
				ids = append(ids, id)
			}
		}
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
func (b *heronBackend) retireReplacedAdminKey(ctx context.Context, s logical.Storage, prev, cfg *heronConfig) {
	if prev.AdminAPIKey == "" || prev.AdminAPIKey == cfg.AdminAPIKey {
		return
	}
	if prev.AdminKeyByEngine && prev.AdminKeyID != "" && prev.AdminKeyID != cfg.AdminKeyID {
		cfg.RetiredKeys = append(cfg.RetiredKeys, b.retiredEntry(ctx, s, prev, cfg.OldKeyRetention))
	}
	kept := cfg.RetiredKeys[:0]
	for _, rk := range cfg.RetiredKeys {
		if !cfg.isAdminKey(rk.KeyID, rk.TokenPrefix) {
			kept = append(kept, rk)
		}
	}
	cfg.RetiredKeys = kept
}

// seesAnyRecord reports whether a new admin key sees at least one of the
// tracked ids that is a key record or a static role's key (not one of
// prev's admin keys, current or rotated out): unreachable is what it does
// not see of tracked.
func seesAnyRecord(tracked, unreachable []string, prev *heronConfig) bool {
	// Sets: a large mount tracks 100,000 keys.
	notRecord := make(map[string]bool, len(unreachable)+len(prev.RetiredKeys)+1)
	for _, id := range unreachable {
		notRecord[id] = true
	}
	for _, rk := range prev.RetiredKeys {
		notRecord[rk.KeyID] = true
	}
	notRecord[prev.AdminKeyID] = true
	for _, id := range tracked {
		if !notRecord[id] {
			return true
		}
	}
	return false
}

// anyRetiredUnreachable reports whether a rotated-out admin key is marked
// unreachable.
func anyRetiredUnreachable(rks []retiredAdminKey) bool {
	return slices.ContainsFunc(rks, func(rk retiredAdminKey) bool { return rk.Unreachable })
}

// managedKeyAsAdmin refuses, as a config's admin key, a key that this
// engine hands out or retires (a static role's key, a lease's key): the
// engine would deactivate its own admin key at that key's next rotation or
// revocation. It answers the 400's text, or "".
func (b *heronBackend) managedKeyAsAdmin(ctx context.Context, s logical.Storage, cfg *heronConfig) (string, error) {
	statics, err := listStaticRoles(ctx, s)
	if err != nil {
		return "", err
	}
	for _, r := range statics {
		if r.Token != "" && r.Token == cfg.AdminAPIKey {
			return fmt.Sprintf("config %q: admin_api_key is the key static role %q hands out (key %s), which the engine rotates and deactivates: an admin key must be a key of its own (create one in Heron's dashboard)", cfg.Environment, r.Name, r.KeyID), nil
		}
	}
	if cfg.AdminKeyID == "" {
		return "", nil
	}
	rec, err := getTrackedKey(ctx, s, cfg.AdminKeyID)
	if err != nil || rec == nil {
		return "", err
	}
	return fmt.Sprintf("config %q: admin_api_key is key %s, which this engine manages (%s key of role %q, state %s) and will deactivate or delete: an admin key must be a key of its own (create one in Heron's dashboard)", cfg.Environment, rec.KeyID, rec.kind(), rec.Role, rec.State), nil
}

// retiredEntry is cfg's current admin key as a rotated-out one, with its
// token's HMAC (keys/lookup recognises it once its token is gone from the
// config) when the mount's secret can be had.
func (b *heronBackend) retiredEntry(ctx context.Context, s logical.Storage, cfg *heronConfig, retention time.Duration) retiredAdminKey {
	now := b.now()
	rk := retiredAdminKey{
		KeyID:       cfg.AdminKeyID,
		TokenPrefix: keyPrefix(cfg.AdminAPIKey),
		RetiredAt:   now,
		DeleteAfter: now.Add(retention),
	}
	if hk, err := b.hmacKey(ctx, s, true); err == nil && hk != nil {
		rk.TokenHMAC = tokenHMACOf(hk, cfg.AdminAPIKey)
	}
	return rk
}
