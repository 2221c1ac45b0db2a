// Package heron is a Vault secrets engine that issues Heron Data API keys as
// Vault leases: expiry deactivates the key, revocation deletes it.
package heron

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"time"

	"github.com/hashicorp/go-uuid"
	"github.com/hashicorp/vault/sdk/framework"
	"github.com/hashicorp/vault/sdk/helper/consts"
	"github.com/hashicorp/vault/sdk/helper/locksutil"
	"github.com/hashicorp/vault/sdk/logical"

	"github.com/heron-vault/vault-plugin-secrets-heron/heronapi"
)

// Version is the plugin's version, set at build time with
// -ldflags "-X github.com/heron-vault/vault-plugin-secrets-heron.Version=v1.2.3".
var Version = "v0.0.0-dev"

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

// Setup is the framework's, keeping the storage view for clean and reading
// Vault's system view through mountSystemView.
func (b *heronBackend) Setup(ctx context.Context, conf *logical.BackendConfig) error {
	if conf.System != nil {
		c := *conf
		c.System = &mountSystemView{SystemView: conf.System}
		conf = &c
	}
	if err := b.Backend.Setup(ctx, conf); err != nil {
		return err
	}
	b.storage = conf.StorageView
	b.mountID = conf.BackendUUID
	return nil
}

// mountSystemView is Vault's system view with the mount's local flag and the
// node's replication state kept for a few seconds. The SDK asks for the state
// before every request and for the flag before every request to a path that
// a performance secondary forwards (creds/<role> among them), a round trip to
// Vault each time, although a mount is local or not from its creation on and
// a node's replication state changes only with a new instance of the mount:
// Vault fixes "performance standby" in the system view it gives the instance,
// and a node that becomes active, or a cluster that becomes a performance
// secondary, sets its mounts up again. Both are asked again now and then
// because Vault's gRPC client answers false and no state when the call
// fails: a wrong answer must not stay for the mount's life.
type mountSystemView struct {
	logical.SystemView

	mu    sync.Mutex
	local keptAnswer[bool]
	repl  keptAnswer[consts.ReplicationState]
}

// localMountFor is how long an answer of LocalMount or ReplicationState is
// used.
const localMountFor = 10 * time.Second

// keptAnswer is one of Vault's answers about the mount, asked again once it
// is localMountFor old. Its owner's lock guards it.
type keptAnswer[T any] struct {
	v  T
	at time.Time
}

func (k *keptAnswer[T]) get(ask func() T) T {
	if now := time.Now(); k.at.IsZero() || now.Sub(k.at) >= localMountFor {
		k.v, k.at = ask(), now
	}
	return k.v
}

func (s *mountSystemView) ReplicationState() consts.ReplicationState {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.repl.get(s.SystemView.ReplicationState)
}

func (s *mountSystemView) LocalMount() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.local.get(s.SystemView.LocalMount)
}

// heronBackend is the engine. One instance per mount; the Heron rate limiters are
// shared process-wide (heronapi.ProcessRegistry) because Heron's budget is per
// environment, not per mount.
type heronBackend struct {
	*framework.Backend

	// clients caches one Heron client per environment; reset when that
	// environment's config changes here or on another node (Invalidate).
	clientsLock sync.RWMutex
	clients     map[string]*cachedClient
	// closed is set by clean: no client is cached (nor budget claimed) after.
	closed bool

	// mountID is Vault's id of the mount (BackendUUID), the same for every
	// instance of it.
	mountID string
	// budgets holds the Heron budgets this mount spends: the plugin
	// process's, shared by its mounts (tests give instances their own).
	budgets *heronapi.Registry

	// newClient builds the upstream client spending lim; tests swap it to
	// inject faults.
	newClient func(cfg *heronConfig, lim *heronapi.Limiter) (heronapi.API, error)

	// retryWaitMin overrides the client's backoff floor (tests only).
	retryWaitMin time.Duration

	// roleLocks serialise issuance per role so max_active_keys cannot be
	// overshot by concurrent requests.
	roleLocks []*locksutil.LockEntry

	// configLocks serialise rotation and config writes per environment.
	configLocks []*locksutil.LockEntry
	// events sends the mount's events in order; eventSends counts those
	// not sent yet (tests wait for them instead of sleeping).
	events     eventQueue
	eventSends sync.WaitGroup
	// configEntryLocks serialise the read-modify-write of one config's
	// storage entry (updateConfig); never held across an upstream call.
	configEntryLocks []*locksutil.LockEntry

	// roles caches roles for issuance and renewal (see role).
	rolesLock sync.RWMutex
	roles     map[string]*heronRole

	// lists caches each environment's latest key list for reads that
	// tolerate a few seconds of staleness (see list_cache.go).
	lists listCache

	// keyIDsCache is the latest sorted list of key record ids, for the
	// next pages of a paged keys/ listing (see keyIDs).
	keyIDsLock  sync.Mutex
	keyIDsCache []string
	keyIDsAt    time.Time
	keyIDsGen   uint64

	// nameLocks serialise creation and rollback of keys of one name in one
	// environment (see nameLock), so that recovery by name never deletes a
	// key that another creation of the same name has made but not recorded.
	nameLocks []*locksutil.LockEntry

	// id names this backend instance as a holder of shared rate limiters
	// and as the writer of its creation records.
	id string
	// slots are this instance's creation slots (wal_slots.go).
	slots *slotPool
	// storage is the mount's storage view, for the clean-up at shutdown.
	storage logical.Storage

	// now is the clock; tests move it to exercise retention and rotation.
	now func() time.Time
	// wallNow is the clock that write-ahead windows are compared with Heron's
	// "created" on; tests move it apart from now, whose moves Heron never sees.
	wallNow func() time.Time
	// windowNow decides when a write-ahead window has closed; it equals
	// wallNow except in tests that skip ahead to a closed window.
	windowNow func() time.Time
	// createdSkew is how far Heron's clock may lag the engine's (see wal.go).
	createdSkew time.Duration

	// sweepCursor is the last key id the rolling sweep read (see
	// sweepShare); empty: the next pass starts from the first.
	sweepLock   sync.Mutex
	sweepCursor string
	// sweepQueue holds the shares of the passes up to the next list of the
	// key ids (see passShare); sweepTracked: that list was not empty.
	sweepQueue   [][]string
	sweepTracked bool
	sweepListed  bool

	// statics is this instance's view of the static roles' keys, and when
	// it last read them all (static_index.go).
	statics staticView
	// staticRotationsPerPass overrides maxStaticRotationsPerPass (tests).
	staticRotationsPerPass int
	// passes counts this instance's periodic passes: the lists of every
	// tracked key id and of Heron's keys are made every passListEvery
	// passes, not every pass (see cleanupPass).
	passLock sync.Mutex
	passes   int
	// unreconciled holds the sweep's shares of the passes since Heron was
	// last listed: the next listing judges them (reconcile).
	unreconciled []string

	// keyLocks serialise the state changes of one key record: each is
	// decided from a read made under the record's lock (see lockKey).
	keyLocks keyLocker
	// tokenHMAC is the mount's token HMAC secret, once read (token_hmac.go).
	tokenHMAC tokenHMACKey
}

func backend() *heronBackend {
	id := newBackendID()
	b := &heronBackend{
		clients:          make(map[string]*cachedClient),
		roles:            make(map[string]*heronRole),
		roleLocks:        locksutil.CreateLocks(),
		configLocks:      locksutil.CreateLocks(),
		configEntryLocks: locksutil.CreateLocks(),
		nameLocks:        locksutil.CreateLocks(),
		id:               id,
		slots:            newSlotPool(id),
		now:              time.Now,
		wallNow:          time.Now,
		windowNow:        time.Now,
		createdSkew:      defaultCreatedSkew,
		budgets:          heronapi.ProcessRegistry(),
	}
	b.newClient = b.defaultClient

	b.Backend = &framework.Backend{
		Help:        strings.TrimSpace(backendHelp),
		BackendType: logical.TypeLogical,
		PathsSpecial: &logical.Paths{
			SealWrapStorage: []string{
				configStoragePrefix,
				staticRoleStoragePrefix,
				tokenHMACStorageKey,
				tokenHMACStoragePrefix,
			},
			// Write-ahead records name keys created through this node's own
			// connection to Heron; like HashiCorp's AWS engine, keep them out
			// of replication so only the node that wrote one rolls it back.
			LocalStorage: []string{
				framework.WALPrefix,
				creatingStoragePrefix,
			},
		},
		Paths: framework.PathAppend(
			pathConfig(b),
			pathRoles(b),
			pathCreds(b),
			// Before keys/<key_id>, which would also match keys/lookup.
			pathKeysLookup(b),
			pathKeysQuarantine(b),
			pathKeys(b),
			pathTidy(b),
			pathStaticRoles(b),
			pathStaticCreds(b),
			pathInventory(b),
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
	if name, ok := strings.CutPrefix(key, roleStoragePrefix); ok {
		b.forgetRole(name)
	}
	if name, ok := strings.CutPrefix(key, staticRoleStoragePrefix); ok && name != "" {
		b.statics.invalidate(name)
	}
	if key == tokenHMACStorageKey || strings.HasPrefix(key, tokenHMACStoragePrefix) {
		b.tokenHMAC.forget()
	}
}

// clean runs when the mount is unmounted or the plugin reloaded.
func (b *heronBackend) clean(ctx context.Context) {
	if b.storage != nil {
		b.dropFreeCreations(ctx, b.storage)
	}
	b.clientsLock.Lock()
	// Requests still running after this build one-off clients that claim no
	// budget: a claim made now would never be released.
	b.closed = true
	envs := make([]string, 0, len(b.clients))
	for env := range b.clients {
		envs = append(envs, env)
	}
	b.clientsLock.Unlock()
	for _, env := range envs {
		b.resetClient(env)
	}
}

// cachedClient is an environment's client and the budget it holds.
type cachedClient struct {
	api heronapi.API
	// adminKey, baseURL and rate are what it was built with (see
	// refreshClient): another instance on the same storage (a reload, a
	// failover) may have changed any of them.
	adminKey, baseURL string
	rate              int
	// identity names its budget (limiterIdentity).
	identity string
	// historyRetention is the config's, so that a revocation turning the
	// record into a tombstone needs no read of the config.
	historyRetention time.Duration
	// release gives up this mount's claim on the shared limiter.
	release func()
}

// refreshClient forgets env's cached client when cfg, just read from
// storage, holds another admin key, base URL or budget than it was built
// with: a write by another instance (the old one of a reload finishing a
// rotation or lowering the budget) invalidates nothing here. Callers that
// read the config anyway (the pass, a rotation) call it, so a request never
// needs a read of its own for it.
func (b *heronBackend) refreshClient(cfg *heronConfig) {
	b.clientsLock.RLock()
	c, ok := b.clients[cfg.Environment]
	b.clientsLock.RUnlock()
	if ok && (c.adminKey != cfg.AdminAPIKey || c.baseURL != cfg.BaseURL || c.rate != cfg.RateLimitPerMinute) {
		b.resetClient(cfg.Environment)
	}
}

// resetClient forgets the cached client of env.
func (b *heronBackend) resetClient(env string) {
	b.forgetList(env)
	b.clientsLock.Lock()
	c := b.clients[env]
	delete(b.clients, env)
	b.clientsLock.Unlock()
	if c == nil {
		return
	}
	c.release()
	// Requests in flight keep their connections; idle ones would otherwise
	// linger with the old admin key's pool until the GC finds them.
	if closer, ok := c.api.(interface{ CloseIdleConnections() }); ok {
		closer.CloseIdleConnections()
	}
}

// getClient returns the cached Heron client of env, building it on first
// use. For a config whose delete did not finish it returns an uncached
// client: revocations, rollbacks and the cleanup pass still run with it (and
// fail cleanly if its admin key is gone already); what creates keys uses
// creatingClient instead.
func (b *heronBackend) getClient(ctx context.Context, s logical.Storage, env string) (heronapi.API, error) {
	return b.client(ctx, s, env, false)
}

// historyRetention is env's history_retention: from the cached client when
// there is one, else from storage (the default when the config is gone).
func (b *heronBackend) historyRetention(ctx context.Context, s logical.Storage, env string) time.Duration {
	b.clientsLock.RLock()
	c, ok := b.clients[env]
	b.clientsLock.RUnlock()
	if ok {
		return c.historyRetention
	}
	cfg, err := getConfig(ctx, s, env)
	if err != nil {
		return defaultHistoryRetention
	}
	return cfg.historyRetention()
}

// creatingClient is getClient for what creates keys (issuance, rotations):
// refused while the config is being deleted.
func (b *heronBackend) creatingClient(ctx context.Context, s logical.Storage, env string) (heronapi.API, error) {
	return b.client(ctx, s, env, true)
}

func (b *heronBackend) client(ctx context.Context, s logical.Storage, env string, creating bool) (heronapi.API, error) {
	b.clientsLock.RLock()
	c, ok := b.clients[env]
	b.clientsLock.RUnlock()
	if ok {
		return c.api, nil
	}

	b.clientsLock.Lock()
	defer b.clientsLock.Unlock()
	if c, ok := b.clients[env]; ok {
		return c.api, nil
	}

	cfg, err := getConfig(ctx, s, env)
	if err != nil {
		return nil, err
	}
	if cfg == nil {
		return nil, fmt.Errorf("%w: %q", errConfigNotFound, env)
	}
	if cfg.Deleting {
		if creating {
			return nil, errDeleting(env)
		}
		return b.checkClient(cfg, cfg.AdminAPIKey)
	}
	if b.closed {
		return b.checkClient(cfg, cfg.AdminAPIKey)
	}
	holder := b.budgetHolder(env)
	identity := limiterIdentity(cfg, cfg.AdminAPIKey)
	scope := b.budgetScope(env)
	b.budgets.Follow(scope, cfg.BaseURL, identity, cfg.RateLimitPerMinute)
	lim := b.budgets.Acquire(cfg.BaseURL, identity, holder, scope, cfg.RateLimitPerMinute)
	release := func() { b.budgets.Release(cfg.BaseURL, identity, holder) }
	api, err := b.newClient(cfg, lim)
	if err != nil {
		release()
		return nil, fmt.Errorf("building Heron client for config %q: %w", env, err)
	}
	api = b.patchingClient(env, api)
	b.clients[env] = &cachedClient{api: api, adminKey: cfg.AdminAPIKey, baseURL: cfg.BaseURL, rate: cfg.RateLimitPerMinute, identity: identity, release: release, historyRetention: cfg.historyRetention()}
	return api, nil
}

// checkClient builds a one-off client for cfg using apiKey (a config being
// checked before it is stored, or a fresh admin key being verified): it
// spends the environment's shared budget without claiming or changing it.
func (b *heronBackend) checkClient(cfg *heronConfig, apiKey string) (heronapi.API, error) {
	c := *cfg
	c.AdminAPIKey = apiKey
	return b.checkClientWith(&c, b.peekLimiter(&c))
}

// checkClientWith is checkClient for cfg's own admin key, spending lim.
func (b *heronBackend) checkClientWith(cfg *heronConfig, lim *heronapi.Limiter) (heronapi.API, error) {
	api, err := b.newClient(cfg, lim)
	if err != nil {
		return nil, err
	}
	return b.patchingClient(cfg.Environment, api), nil
}

// lowerBudgetNow applies cfg's rate_limit_per_minute to the budget this
// instance's cached client spends, when it is lower than the client's.
// The client cache's read lock is held throughout, so that a client reset
// meanwhile (the backend closing, another instance's key) never gets its
// claim back.
func (b *heronBackend) lowerBudgetNow(cfg *heronConfig) {
	b.clientsLock.RLock()
	defer b.clientsLock.RUnlock()
	c, ok := b.clients[cfg.Environment]
	if !ok || b.closed || cfg.RateLimitPerMinute >= c.rate {
		return
	}
	b.budgets.Restate(c.baseURL, c.identity, b.budgetHolder(cfg.Environment), b.budgetScope(cfg.Environment), cfg.RateLimitPerMinute)
}

// rebuildClient builds env's client from the config as storage has it now,
// after a config write reset it: a new budget then applies to the requests
// already waiting for a slot, not only to the next client.
func (b *heronBackend) rebuildClient(ctx context.Context, s logical.Storage, env string) {
	b.resetClient(env)
	if _, err := b.getClient(ctx, s, env); err != nil {
		b.Logger().Debug("client not rebuilt after a config write; the next request builds it", "environment", env, "error", err)
	}
}

// budgetHolder names this instance's claim on env's budget.
func (b *heronBackend) budgetHolder(env string) string { return b.id + "/" + env }

// budgetScope names env's config of this mount for the budget registry: the
// same across the mount's backend instances (a reload, a failover), whose
// budgets follow one another (heronapi.Registry.Follow).
func (b *heronBackend) budgetScope(env string) string {
	if b.mountID == "" {
		return b.budgetHolder(env)
	}
	return "mount:" + b.mountID + "/" + env
}

// peekLimiter is the budget cfg spends, without claiming it.
func (b *heronBackend) peekLimiter(cfg *heronConfig) *heronapi.Limiter {
	return b.budgets.Peek(cfg.BaseURL, limiterIdentity(cfg, cfg.AdminAPIKey), cfg.RateLimitPerMinute)
}

// defaultClient builds the real HTTP client for cfg.
func (b *heronBackend) defaultClient(cfg *heronConfig, lim *heronapi.Limiter) (heronapi.API, error) {
	return heronapi.New(b.clientConfig(cfg, lim))
}

// clientConfig is the client configuration of cfg spending lim.
func (b *heronBackend) clientConfig(cfg *heronConfig, lim *heronapi.Limiter) heronapi.Config {
	return heronapi.Config{
		BaseURL:      cfg.BaseURL,
		APIKey:       cfg.AdminAPIKey,
		Timeout:      cfg.RequestTimeout,
		MaxRetries:   cfg.MaxRetries,
		Limiter:      lim,
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

// periodicFunc runs the cleanup pass and any due admin key rotation, only
// where this mount's storage is writable (see writesHere).
func (b *heronBackend) periodicFunc(ctx context.Context, req *logical.Request) error {
	if !b.writesHere() {
		return nil
	}
	ctx = heronapi.Background(ctx)
	if _, err := b.rotateDueAdmin(ctx, req.Storage); err != nil {
		b.Logger().Warn("scheduled admin key rotation failed", "error", err)
	}
	// Creations that another instance left (a restart, a reload, a
	// failover) or that this one gave up on, once old enough that no
	// request can still be running them; `immediate` is Vault's own word
	// for "do not wait" on a rollback request.
	minAge := walRollbackMinAge
	if _, ok := req.Data["immediate"]; ok {
		minAge = 0
	}
	_, _, slotErr := b.settleCreations(ctx, req.Storage, "", minAge)
	if slotErr != nil {
		slotErr = fmt.Errorf("settling creation records: %w", slotErr)
	}
	// Static roles' scheduled rotations come after the cleanup, so that
	// overlaps ending now never wait behind a storm of rotations (which is
	// bounded per pass: see rotateDueStatic).
	_, work, err := b.cleanupPass(ctx, req.Storage, false, true)
	if err != nil {
		err = fmt.Errorf("cleanup pass: %w", err)
	}
	if work != nil {
		if _, rerr := b.rotateDueStatic(ctx, req.Storage, work); rerr != nil {
			b.Logger().Warn("scheduled static role rotation failed", "error", rerr)
		}
	}
	return errors.Join(slotErr, err)
}

// writesHere reports whether background work may run on this node, as
// HashiCorp's engines decide it: never on a performance standby or a DR
// secondary (their storage is read-only), and on a performance secondary
// only for a local mount (a replicated mount's keys belong to the primary).
func (b *heronBackend) writesHere() bool {
	sys := b.System()
	state := sys.ReplicationState()
	if state.HasState(consts.ReplicationPerformanceStandby | consts.ReplicationDRSecondary) {
		return false
	}
	return !state.HasState(consts.ReplicationPerformanceSecondary) || sys.LocalMount()
}

// newBackendID names one backend instance (one mount in this process).
func newBackendID() string {
	id, err := uuid.GenerateUUID()
	if err != nil {
		return fmt.Sprintf("backend-%d", time.Now().UnixNano())
	}
	return id
}

const backendHelp = `
The Heron secrets engine issues Heron Data API keys as Vault leases.

Configure one admin key per Heron environment at config/<environment>, define
roles at roles/<name>, then read creds/<role> to mint a fresh Heron API key.
When the lease expires the key is deactivated (and deleted after the role's
expired_key_retention); when the lease is revoked the key is deleted.
`
