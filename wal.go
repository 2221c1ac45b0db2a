package heron

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/hashicorp/vault/sdk/framework"
	"github.com/hashicorp/vault/sdk/logical"

	"github.com/heron-vault/vault-plugin-secrets-heron/heronapi"
)

const (
	// walKindKey guards the creation of a leased key.
	walKindKey = "heron_key"
	// walKindAdminKey guards the creation of a new admin key during rotation.
	walKindAdminKey = "heron_admin_key"

	// walRollbackMinAge must exceed the longest issuance. Vault bounds a
	// request at 90s (timeouts, retries and limiter waits included); the
	// in-flight set below protects anything still running in this process.
	walRollbackMinAge = 2 * time.Minute
)

// walKeyEntry is the write-ahead record of a key creation: the key name is
// all Heron needs to find the key again if the response to the POST is lost.
type walKeyEntry struct {
	Environment string `json:"environment"`
	Role        string `json:"role,omitempty"`
	KeyName     string `json:"key_name"`
}

func (b *heronBackend) markInflight(name string) {
	b.inflightLock.Lock()
	defer b.inflightLock.Unlock()
	b.inflight[name] = struct{}{}
}

func (b *heronBackend) unmarkInflight(name string) {
	b.inflightLock.Lock()
	defer b.inflightLock.Unlock()
	delete(b.inflight, name)
}

func (b *heronBackend) isInflight(name string) bool {
	b.inflightLock.Lock()
	defer b.inflightLock.Unlock()
	_, ok := b.inflight[name]
	return ok
}

// walGuard is a key creation still covered by its write-ahead record.
// Exactly one of done or undo ends it.
type walGuard struct {
	b    *heronBackend
	s    logical.Storage
	id   string
	name string
}

// createUnderWAL creates a key named entry.KeyName in Heron under a
// write-ahead record and the in-flight mark, so that whatever fails before
// the caller has recorded the key, the key ends up deleted: by undo now, or by
// the rollback later. When Heron certainly created nothing the record goes
// at once.
func (b *heronBackend) createUnderWAL(ctx context.Context, s logical.Storage, client heronapi.API, kind string, entry *walKeyEntry) (*heronapi.Key, *walGuard, error) {
	b.markInflight(entry.KeyName)
	id, err := framework.PutWAL(ctx, s, kind, entry)
	if err != nil {
		b.unmarkInflight(entry.KeyName)
		return nil, nil, fmt.Errorf("writing write-ahead record for key %q: %w", entry.KeyName, err)
	}
	g := &walGuard{b: b, s: s, id: id, name: entry.KeyName}
	key, err := client.CreateKey(ctx, entry.KeyName)
	if err != nil {
		if notProcessed(err) {
			b.deleteWAL(ctx, s, id)
		}
		b.unmarkInflight(entry.KeyName)
		return nil, nil, err
	}
	return key, g, nil
}

// done ends the guard once the caller's own record holds the key.
func (g *walGuard) done(ctx context.Context) {
	g.b.deleteWAL(ctx, g.s, g.id)
	g.b.unmarkInflight(g.name)
}

// undo deletes the created key because nothing will track it. If Heron
// cannot be reached the write-ahead record stays and the rollback deletes it.
func (g *walGuard) undo(ctx context.Context, client heronapi.API, keyID string) {
	defer g.b.unmarkInflight(g.name)
	if err := client.DeleteKey(ctx, keyID); err != nil && !errors.Is(err, heronapi.ErrNotFound) {
		g.b.Logger().Error("could not delete an untracked key; the rollback will", "key_id", keyID, "key_name", g.name, "error", err)
		return
	}
	g.b.deleteWAL(ctx, g.s, g.id)
}

// deleteWAL removes a write-ahead record once its key is tracked or known not
// to exist. A failure only means the rollback will look for the key later
// and, finding it tracked, leave it alone.
func (b *heronBackend) deleteWAL(ctx context.Context, s logical.Storage, id string) {
	if err := framework.DeleteWAL(ctx, s, id); err != nil {
		b.Logger().Warn("could not delete write-ahead record; rollback will settle it", "wal_id", id, "error", err)
	}
}

// errStillInflight makes Vault keep a write-ahead record whose issuance is
// still running in this process.
var errStillInflight = errors.New("issuance still in progress")

// walRollback is Vault's rollback of an interrupted key creation: delete every
// key with the recorded name that no lease tracks. It returns nil only once
// they are confirmed gone, so Vault keeps retrying until then.
func (b *heronBackend) walRollback(ctx context.Context, req *logical.Request, kind string, data interface{}) error {
	var entry walKeyEntry
	raw, err := json.Marshal(data)
	if err != nil {
		return fmt.Errorf("re-encoding write-ahead record: %w", err)
	}
	if err := json.Unmarshal(raw, &entry); err != nil {
		return fmt.Errorf("decoding write-ahead record: %w", err)
	}
	if entry.KeyName == "" || entry.Environment == "" {
		b.Logger().Error("dropping malformed write-ahead record", "kind", kind)
		return nil
	}
	if b.isInflight(entry.KeyName) {
		return errStillInflight
	}
	ctx = heronapi.Background(ctx)

	switch kind {
	case walKindKey, walKindAdminKey:
	default:
		b.Logger().Error("dropping write-ahead record of unknown kind", "kind", kind)
		return nil
	}

	cfgLock := b.configLock(entry.Environment)
	cfgLock.RLock()
	defer cfgLock.RUnlock()

	cfg, err := getConfig(ctx, req.Storage, entry.Environment)
	if err != nil {
		return err
	}
	if cfg == nil {
		// Without an admin key nothing can be deleted; keeping the record
		// would only make Vault retry forever.
		b.Logger().Error("config gone: cannot roll back key creation", "environment", entry.Environment, "key_name", entry.KeyName)
		return nil
	}
	client, err := b.getClient(ctx, req.Storage, entry.Environment)
	if err != nil {
		return err
	}
	_, err = b.deleteUntrackedByName(ctx, req.Storage, client, cfg, entry.KeyName)
	return err
}

// deleteUntrackedByName deletes the keys named name that neither a lease nor
// the config (the current admin key) accounts for, returning how many.
func (b *heronBackend) deleteUntrackedByName(ctx context.Context, s logical.Storage, client heronapi.API, cfg *heronConfig, name string) (int, error) {
	keys, err := client.ListKeys(ctx)
	if err != nil {
		return 0, fmt.Errorf("listing keys to roll back %q: %w", name, err)
	}
	deleted := 0
	for _, k := range keys {
		// Never the current admin key: by id, or by prefix while its id is unknown.
		isAdmin := k.ID == cfg.AdminKeyID || (cfg.AdminKeyID == "" && k.TokenPrefix == keyPrefix(cfg.AdminAPIKey))
		if k.Name != name || isAdmin {
			continue
		}
		rec, err := getTrackedKey(ctx, s, k.ID)
		if err != nil {
			return deleted, err
		}
		if rec != nil {
			continue
		}
		if err := client.DeleteKey(ctx, k.ID); err != nil && !errors.Is(err, heronapi.ErrNotFound) {
			return deleted, fmt.Errorf("deleting untracked key %s (%q): %w", k.ID, name, err)
		}
		deleted++
		b.Logger().Info("rolled back untracked key", "key_id", k.ID, "key_name", name, "environment", cfg.Environment)
	}
	return deleted, nil
}

// rollbackStaleWALs settles every write-ahead record not in flight here (the
// tidy path; Vault's own rollback waits walRollbackMinAge).
func (b *heronBackend) rollbackStaleWALs(ctx context.Context, req *logical.Request) (int, error) {
	ids, err := framework.ListWAL(ctx, req.Storage)
	if err != nil {
		return 0, fmt.Errorf("listing write-ahead records: %w", err)
	}
	settled := 0
	var errs []error
	for _, id := range ids {
		entry, err := framework.GetWAL(ctx, req.Storage, id)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		if entry == nil {
			continue
		}
		err = b.walRollback(ctx, req, entry.Kind, entry.Data)
		if errors.Is(err, errStillInflight) {
			continue
		}
		if err != nil {
			errs = append(errs, err)
			continue
		}
		if err := framework.DeleteWAL(ctx, req.Storage, id); err != nil {
			errs = append(errs, err)
			continue
		}
		settled++
	}
	return settled, errors.Join(errs...)
}
