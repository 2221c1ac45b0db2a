// Package heron is a Vault secrets engine that issues Heron Data API keys as
// Vault leases: expiry deactivates the key, revocation deletes it.
package heron

import (
	"context"
	"fmt"
	"strings"
	"sync"
	"time"

	"github.com/hashicorp/vault/sdk/framework"
	"github.com/hashicorp/vault/sdk/helper/consts"
	"github.com/hashicorp/vault/sdk/helper/locksutil"
	"github.com/hashicorp/vault/sdk/logical"

	"github.com/heron-vault/vault-plugin-secrets-heron/heronapi"
)

// Version is the plugin's version, set at build time with
// -ldflags "-X github.com/heron-vault/vault-plugin-secrets-heron.Version=v1.2.3".
var Version = "v0.1.0-dev"

// userAgent identifies this engine to Heron so its requests can be told apart
// from the customer's own traffic in Heron's logs.
func userAgent() string { return "vault-plugin-secrets-heron/" + Version }

// Factory returns a configured instance of the backend.
func Factory(ctx context.Context, conf *logical.BackendConfig) (logical.Backend, error) {
	b := backend()
	if err := b.Setup(ctx, conf); err != nil {
		return nil, err
	}
	return b, nil
}

// heronBackend is the engine. One instance per mount; the Heron rate limiters are
// shared process-wide (see heronapi.SharedLimiter) because Heron's budget is per
// environment, not per mount.
type heronBackend struct {
	*framework.Backend

	// clients caches one Heron client per environment; reset when that
	// environment's config changes here or on another node (Invalidate).
	clientsLock sync.RWMutex
	clients     map[string]heronapi.API

	// newClient builds the upstream client; tests swap it to inject faults.
	newClient func(cfg *heronConfig) (heronapi.API, error)

	// retryWaitMin overrides the client's backoff floor (tests only).
	retryWaitMin time.Duration

	// roleLocks serialise issuance per role so max_active_keys cannot be
	// overshot by concurrent requests.
	roleLocks []*locksutil.LockEntry

	// configLocks serialise rotation and config writes per environment.
	configLocks []*locksutil.LockEntry

	// inflight holds the WAL ids of issuances running in this process, so that
	// tidy and WAL rollback never delete a key that is being issued right now.
	inflightLock sync.Mutex
	inflight     map[string]struct{}

	// now is the clock; tests move it to exercise retention and rotation.
	now func() time.Time
}

func backend() *heronBackend {
	b := &heronBackend{
		clients:     make(map[string]heronapi.API),
		roleLocks:   locksutil.CreateLocks(),
		configLocks: locksutil.CreateLocks(),
		inflight:    make(map[string]struct{}),
		now:         time.Now,
	}
	b.newClient = b.defaultClient

	b.Backend = &framework.Backend{
		Help:        strings.TrimSpace(backendHelp),
		BackendType: logical.TypeLogical,
		PathsSpecial: &logical.Paths{
			SealWrapStorage: []string{
				"config/",
			},
		},
		Paths: framework.PathAppend(
			pathConfig(b),
			pathRoles(b),
			pathCreds(b),
			pathKeys(b),
			pathTidy(b),
		),
		Secrets: []*framework.Secret{
			b.heronAPIKey(),
		},
		Invalidate:        b.invalidate,
		PeriodicFunc:      b.periodicFunc,
		WALRollback:       b.walRollback,
		WALRollbackMinAge: walRollbackMinAge,
		Clean:             b.clean,
		RotateCredential:  b.rotateCredential,
		RunningVersion:    Version,
	}
	return b
}

// invalidate drops the cached client of an environment whose config changed on
// another node (or was rotated), so the next request uses the new admin key.
func (b *heronBackend) invalidate(_ context.Context, key string) {
	if env, ok := strings.CutPrefix(key, configStoragePrefix); ok {
		b.resetClient(env)
	}
}

// clean runs when the mount is unmounted or the plugin reloaded.
func (b *heronBackend) clean(context.Context) {
	b.clientsLock.RLock()
	envs := make([]string, 0, len(b.clients))
	for env := range b.clients {
		envs = append(envs, env)
	}
	b.clientsLock.RUnlock()
	for _, env := range envs {
		b.resetClient(env)
	}
}

// resetClient forgets the cached client of env.
func (b *heronBackend) resetClient(env string) {
	b.clientsLock.Lock()
	c := b.clients[env]
	delete(b.clients, env)
	b.clientsLock.Unlock()
	// Requests in flight keep their connections; idle ones would otherwise
	// linger with the old admin key's pool until the GC finds them.
	if closer, ok := c.(interface{ CloseIdleConnections() }); ok {
		closer.CloseIdleConnections()
	}
}

// getClient returns the cached Heron client of env, building it on first use.
func (b *heronBackend) getClient(ctx context.Context, s logical.Storage, env string) (heronapi.API, error) {
	b.clientsLock.RLock()
	c, ok := b.clients[env]
	b.clientsLock.RUnlock()
	if ok {
		return c, nil
	}

	b.clientsLock.Lock()
	defer b.clientsLock.Unlock()
	if c, ok := b.clients[env]; ok {
		return c, nil
	}

	cfg, err := getConfig(ctx, s, env)
	if err != nil {
		return nil, err
	}
	if cfg == nil {
		return nil, fmt.Errorf("%w: %q", errConfigNotFound, env)
	}
	c, err = b.newClient(cfg)
	if err != nil {
		return nil, fmt.Errorf("building Heron client for config %q: %w", env, err)
	}
	b.clients[env] = c
	return c, nil
}

// defaultClient builds the real HTTP client for cfg.
func (b *heronBackend) defaultClient(cfg *heronConfig) (heronapi.API, error) {
	return heronapi.New(b.clientConfig(cfg, cfg.AdminAPIKey))
}

// clientConfig is the client configuration of cfg using apiKey (the stored
// admin key, or a freshly created one being verified during rotation).
func (b *heronBackend) clientConfig(cfg *heronConfig, apiKey string) heronapi.Config {
	return heronapi.Config{
		BaseURL:      cfg.BaseURL,
		APIKey:       apiKey,
		Timeout:      cfg.RequestTimeout,
		MaxRetries:   cfg.MaxRetries,
		Limiter:      heronapi.SharedLimiter(cfg.BaseURL, limiterIdentity(cfg, apiKey), cfg.RateLimitPerMinute),
		UserAgent:    userAgent(),
		Logger:       b.Logger().Named("heron").With("environment", cfg.Environment),
		RetryWaitMin: b.retryWaitMin,
	}
}

// limiterIdentity is what the shared limiter is keyed by (with the base
// URL): the config's budget lineage, or the key itself for a config written
// before budget keys existed.
func limiterIdentity(cfg *heronConfig, apiKey string) string {
	if cfg.BudgetKey != "" {
		return "budget:" + cfg.BudgetKey
	}
	return apiKey
}

// periodicFunc runs the cleanup pass and any due admin key rotation. Like
// HashiCorp's AWS engine it only acts where storage is writable: never on a
// performance standby or on a performance secondary for a replicated mount.
func (b *heronBackend) periodicFunc(ctx context.Context, req *logical.Request) error {
	sys := b.System()
	if !sys.LocalMount() && sys.ReplicationState().HasState(consts.ReplicationPerformanceSecondary|consts.ReplicationPerformanceStandby) {
		return nil
	}
	ctx = heronapi.Background(ctx)
	if _, err := b.rotateDue(ctx, req.Storage); err != nil {
		b.Logger().Warn("scheduled admin key rotation failed", "error", err)
	}
	if _, err := b.cleanup(ctx, req.Storage); err != nil {
		return fmt.Errorf("cleanup pass: %w", err)
	}
	return nil
}

const backendHelp = `
The Heron secrets engine issues Heron Data API keys as Vault leases.

Configure one admin key per Heron environment at config/<environment>, define
roles at roles/<name>, then read creds/<role> to mint a fresh Heron API key.
When the lease expires the key is deactivated (and deleted after the role's
expired_key_retention); when the lease is revoked the key is deleted.
`
