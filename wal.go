package heron

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"sort"
	"time"

	"github.com/hashicorp/vault/sdk/framework"
	"github.com/hashicorp/vault/sdk/helper/locksutil"
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
	// name lock below protects anything still running in this process.
	walRollbackMinAge = 2 * time.Minute

	// lateKeyWindow is how long after a POST whose outcome was unknown the
	// engine keeps watching for the key it may have made: a gateway can
	// answer 504 (or a client time out) while Heron is still creating it, so
	// the key can appear after the lookup that found nothing. A key of that
	// name created later is not this record's.
	lateKeyWindow = 5 * time.Minute

	// defaultCreatedSkew is how far Heron's clock (a key's "created") may be
	// behind the engine's when telling a key made for a write-ahead record
	// from an older key of the same name.
	defaultCreatedSkew = 5 * time.Second

	// maxCreateLookups bounds the "look up by name, delete, POST again"
	// rounds of one creation after answers that left the outcome unknown.
	maxCreateLookups = 2
)

// walKeyEntry is the write-ahead record of a key creation. Heron's names are
// not unique (roles may render the same name, customers name keys too), so a
// key belongs to this record only if it has the name AND was created inside
// the record's window and nothing tracks it.
type walKeyEntry struct {
	Environment string `json:"environment"`
	Role        string `json:"role,omitempty"`
	// Static: the key is for a static role (Role), not a lease.
	Static  bool   `json:"static,omitempty"`
	KeyName string `json:"key_name"`
	// Since is the engine's wall clock just before the first POST: Heron
	// cannot have made a key for this record earlier. Records written before
	// the window existed have it zero and match by name alone.
	Since time.Time `json:"since,omitempty"`
	// Listed: the name is not unique by construction (the role's template
	// has no random or uuid), so Heron was listed before the first POST and
	// Existing holds the ids of the keys that already had the name: those
	// are never this record's, whatever their "created" says.
	Listed   bool     `json:"listed,omitempty"`
	Existing []string `json:"existing,omitempty"`
	// Offset is Heron's clock minus the engine's as last measured before the
	// record was written (OffsetKnown): keys' "created" is Heron's clock.
	Offset      time.Duration `json:"offset,omitempty"`
	OffsetKnown bool          `json:"offset_known,omitempty"`
	// KeyID is the id Heron answered for this creation, once known and
	// before its key is recorded (an admin key's rotation): that key is this
	// record's for certain, whatever the name's uniqueness, and the
	// rollback deletes it unless the config accounts for it.
	KeyID string `json:"key_id,omitempty"`
	// KeyOnly: no other key can appear for this record (every POST's
	// outcome was known), so it is settled without the late-key window.
	KeyOnly bool `json:"key_only,omitempty"`
}

// owns reports whether k may have been created for e: same name, not one
// that existed before, created within the window, and not any key the
// engine accounts for otherwise (the caller checks tracking). offset is
// Heron's clock minus the engine's, as measured; skew is the error allowed
// on top of it.
func (e *walKeyEntry) owns(k heronapi.Key, offset, skew time.Duration) bool {
	if k.Name != e.KeyName || slices.Contains(e.Existing, k.ID) {
		return false
	}
	if e.Since.IsZero() {
		return true
	}
	since := e.Since.Add(offset)
	if !e.Listed && k.Created.Before(since.Add(-skew)) {
		return false
	}
	return !k.Created.After(since.Add(lateKeyWindow + skew))
}

// settled reports whether no key can still appear for e.
func (e *walKeyEntry) settled(now time.Time, skew time.Duration) bool {
	return e.Since.IsZero() || now.After(e.Since.Add(lateKeyWindow+skew))
}

// nameLock serialises everything that creates or rolls back keys of one
// name in one environment: recovery by name must never run while another
// creation of the same name is between its POST and its record.
func (b *heronBackend) nameLock(env, name string) *locksutil.LockEntry {
	return locksutil.LockForKey(b.nameLocks, env+"\x00"+name)
}

// walGuard is a key creation still covered by its write-ahead record and
// its name lock. Exactly one of done or undo ends it.
type walGuard struct {
	b     *heronBackend
	s     logical.Storage
	slot  string
	kind  string
	entry *walKeyEntry
	lock  *locksutil.LockEntry
	// unresolved counts POSTs whose outcome stayed unknown: their key may
	// still appear, so the record must stay for the rollback.
	unresolved int
	// confirm: the creation is over but its record stays for the rollback to
	// check once more that the key is accounted for (see confirmLater).
	confirm bool
	// keep: the record stays in its slot once the creation is over, for the
	// slot's next creation to overwrite (see wal_slots.go). Only for names
	// with a random part: a record that outlives its creation is settled by
	// name if its instance crashes, and a name nobody else can have is the
	// only one for which that never touches another key.
	keep bool
}

// createUnderWAL creates a key named entry.KeyName in Heron under a
// write-ahead record and the name lock, so that whatever fails before the
// caller has recorded the key, the key ends up deleted: by undo now, or by
// the rollback later. An answer that leaves the outcome unknown is settled
// the way Heron asks: one list call, delete what this record made, POST
// again. The record goes only when no key of it can be left anywhere.
//
// uniqueName says the name cannot repeat (a random part); otherwise Heron is
// listed first so that keys which already had the name are never taken for
// this creation's (one more request, for such roles and for the engine's own
// timestamped names, which a customer could pick too), and the record is
// deleted as soon as the creation is over (one more write).
func (b *heronBackend) createUnderWAL(ctx context.Context, s logical.Storage, client heronapi.API, kind string, entry *walKeyEntry, uniqueName bool) (*heronapi.Key, *walGuard, error) {
	lock := b.nameLock(entry.Environment, entry.KeyName)
	lock.Lock()
	if !uniqueName {
		// Fresh, unless the caller accepts an older list (a storm of the
		// pass's static rotations, see creationListAge).
		keys, _, err := b.listKeys(ctx, client, entry.Environment, creationListAge(ctx))
		if err != nil {
			lock.Unlock()
			return nil, nil, fmt.Errorf("listing keys named %q before creating another: %w", entry.KeyName, err)
		}
		entry.Listed = true
		for _, k := range keys {
			if k.Name == entry.KeyName {
				entry.Existing = append(entry.Existing, k.ID)
			}
		}
	}
	entry.Offset, entry.OffsetKnown = b.clockOffset(entry.Environment)
	entry.Since = b.wallNow()
	slot := b.slots.take(entry.Environment, entry.Since)
	if err := putCreation(ctx, s, slot, kind, entry); err != nil {
		// No key was made, but a write that reports an error may have been
		// stored: a record of a creation that never happened would, after a
		// crash, be settled by name and could take someone else's key of
		// that name for its own. Take it back out, or have the pass do it.
		if derr := s.Delete(ctx, slot); derr != nil {
			b.Logger().Warn("could not delete the record of a creation that never started; the periodic pass will", "record", slot, "error", derr)
			b.slots.stale(slot)
		} else {
			b.slots.finish(slot, false)
		}
		lock.Unlock()
		return nil, nil, fmt.Errorf("writing write-ahead record for key %q: %w", entry.KeyName, err)
	}
	g := &walGuard{b: b, s: s, slot: slot, kind: kind, entry: entry, lock: lock, keep: uniqueName}
	for lookups := 0; ; lookups++ {
		key, err := client.CreateKey(ctx, entry.KeyName)
		b.noteClock(entry.Environment, client)
		if err == nil {
			// A new key has an id nobody tracks: an answer naming a tracked
			// key is a replay (a caching gateway), whose token is another
			// holder's. Never handed out; whether this POST made a key is
			// unknown, and settled by name like any unknown outcome.
			rec, rerr := getKeyRecord(ctx, s, key.ID)
			if rerr == nil && rec == nil {
				return key, g, nil
			}
			if rerr != nil {
				err = fmt.Errorf("%w: checking that key %s is new: %w", heronapi.ErrOutcomeUnknown, key.ID, rerr)
			} else {
				err = fmt.Errorf("%w: Heron's answer names key %s, which this engine already tracks (a replayed answer?)", heronapi.ErrOutcomeUnknown, key.ID)
			}
		}
		if !errors.Is(err, heronapi.ErrOutcomeUnknown) {
			// Heron created nothing this time; earlier unknown attempts decide
			// whether the record may go.
			g.end(ctx)
			return nil, nil, err
		}
		g.unresolved++
		if lookups >= maxCreateLookups || ctx.Err() != nil {
			g.end(ctx)
			return nil, nil, fmt.Errorf("%w (the write-ahead record stays: the rollback deletes a key named %q if one appears)", err, entry.KeyName)
		}
		b.Logger().Warn("create key: the POST may have been processed; deleting what it made before sending it again",
			"key_name", entry.KeyName, "environment", entry.Environment, "error", err)
		found, _, lerr := b.deleteOrphans(ctx, s, client, kind, entry, 0)
		if lerr != nil {
			g.end(ctx)
			return nil, nil, fmt.Errorf("%w; looking the key up by name failed too (the write-ahead record stays, the rollback deletes the key if it exists): %w", err, lerr)
		}
		g.unresolved = max(0, g.unresolved-found)
	}
}

// done ends the guard once the caller's own record holds the key.
func (g *walGuard) done(ctx context.Context) { g.end(ctx) }

// nameKey rewrites the creation's record with the id Heron answered, before
// the caller's write that records the key: from then on the rollback knows
// that key is this record's (see walKeyEntry.KeyID).
func (g *walGuard) nameKey(ctx context.Context, keyID string) error {
	g.entry.KeyID = keyID
	// After a POST of unknown outcome, a key of it may still appear: the
	// record is then settled by name and window too.
	g.entry.KeyOnly = g.unresolved == 0
	return putCreation(ctx, g.s, g.slot, g.kind, g.entry)
}

// confirmLater ends the guard of a key whose record is a config entry that
// another writer may overwrite: the config lock is one instance's, and two
// instances on one storage (a reload or failover) can both read the config
// and write it back, the later write forgetting the earlier's new key. The
// creation record stays held: the rollback, which settles it only after the
// late-key window, deletes the key unless the config then accounts for it.
func (g *walGuard) confirmLater(ctx context.Context) {
	g.confirm = true
	g.end(ctx)
}

// end releases the name lock and the slot, whose record the slot's next
// creation overwrites (or which goes now, see keep); unless a key of an
// unknown outcome may still appear: then the slot is held and the rollback
// deletes that key.
func (g *walGuard) end(ctx context.Context) {
	defer g.lock.Unlock()
	if g.confirm && g.unresolved == 0 {
		g.b.slots.finish(g.slot, true)
		return
	}
	if g.unresolved > 0 {
		g.b.Logger().Warn("a key creation's outcome is still unknown: its write-ahead record stays and the rollback deletes the key if it appears",
			"key_name", g.entry.KeyName, "environment", g.entry.Environment, "record", g.slot)
		g.b.slots.finish(g.slot, true)
		return
	}
	if !g.keep {
		if err := g.s.Delete(ctx, g.slot); err != nil {
			// Left as it is, a crash would have the record settled by name:
			// the periodic pass deletes it instead.
			g.b.Logger().Warn("could not delete a finished creation's record; the periodic pass will",
				"record", g.slot, "error", err)
			g.b.slots.stale(g.slot)
			return
		}
	}
	g.b.slots.finish(g.slot, false)
}

// undo deletes the created key because nothing will track it, reporting
// whether Heron confirmed it gone. If Heron cannot be reached the
// write-ahead record stays and the rollback deletes it.
func (g *walGuard) undo(ctx context.Context, client heronapi.API, keyID string) bool {
	err := deleteIfPresent(ctx, client, keyID)
	if err != nil {
		g.b.Logger().Error("could not delete an untracked key; the rollback will", "key_id", keyID, "key_name", g.entry.KeyName, "error", err)
		g.unresolved++
	}
	g.end(ctx)
	return err == nil
}

var (
	// errStillInflight makes Vault keep a write-ahead record whose creation
	// (or another of the same name) is still running in this process.
	errStillInflight = errors.New("a key creation of this name is still in progress")
	// errStillWatching keeps a record whose late key may still appear.
	errStillWatching = errors.New("watching for a key that may still appear")
)

// walRollback is Vault's rollback of an interrupted key creation: delete the
// keys this record may have made that nothing tracks. It returns nil only
// once no such key can exist any more, so Vault keeps the record until then.
// Creations now write their records into slots (wal_slots.go); Vault's
// write-ahead records are those an earlier version left behind.
func (b *heronBackend) walRollback(ctx context.Context, req *logical.Request, kind string, data interface{}) error {
	switch kind {
	case walKindKey, walKindAdminKey:
	default:
		b.Logger().Error("dropping write-ahead record of unknown kind", "kind", kind)
		return nil
	}
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
	cfgLock := b.configLock(entry.Environment)
	cfgLock.RLock()
	defer cfgLock.RUnlock()
	return b.rollbackEntry(ctx, req.Storage, kind, &entry)
}

// rollbackEntry is walRollback under the config lock its caller holds.
func (b *heronBackend) rollbackEntry(ctx context.Context, s logical.Storage, kind string, entry *walKeyEntry) error {
	lock := b.nameLock(entry.Environment, entry.KeyName)
	if !lock.TryLock() {
		return errStillInflight
	}
	defer lock.Unlock()
	ctx = heronapi.Background(ctx)

	client, err := b.getClient(ctx, s, entry.Environment)
	if errors.Is(err, errConfigNotFound) {
		// Without an admin key nothing can be deleted, and dropping the
		// record would forget the key: keep it, and say what would help.
		return fmt.Errorf("config %q is gone: the key named %q may exist in Heron; write config/%s again so the rollback can delete it",
			entry.Environment, entry.KeyName, entry.Environment)
	}
	if err != nil {
		return err
	}
	// A list a few seconds old is enough: a key it misses is found next
	// time, and the record is settled only by a list asked after its window.
	_, listedAt, err := b.deleteOrphans(ctx, s, client, kind, entry, listCacheTTL)
	if err != nil {
		return err
	}
	// A record naming its key (see walKeyEntry.KeyID) made no other: it is
	// settled once that key is accounted for or deleted. Otherwise, only by
	// a list asked after the window closed (listedAt, moved as far as a
	// test moved windowNow ahead of the wall clock).
	if !entry.KeyOnly && !entry.settled(listedAt.Add(b.windowNow().Sub(b.wallNow())), b.createdSkew) {
		return errStillWatching
	}
	return nil
}

// deleteOrphans lists the environment's keys once (or uses a list no older
// than maxAge) and deletes those the record may have made that nothing
// accounts for, returning how many and when the list was asked.
func (b *heronBackend) deleteOrphans(ctx context.Context, s logical.Storage, client heronapi.API, kind string, entry *walKeyEntry, maxAge time.Duration) (int, time.Time, error) {
	keys, listedAt, err := b.listKeys(ctx, client, entry.Environment, maxAge)
	if err != nil {
		return 0, time.Time{}, fmt.Errorf("listing keys to find %q: %w", entry.KeyName, err)
	}
	cfg, err := getConfig(ctx, s, entry.Environment)
	if err != nil {
		return 0, time.Time{}, err
	}
	// Keys' "created" is Heron's clock: use its offset from ours as known
	// when the record was written, else as measured now (to the second,
	// which the skew allowance absorbs).
	offset := entry.Offset
	if !entry.OffsetKnown {
		offset, _ = b.clockOffset(entry.Environment)
	}
	deleted := 0
	for _, k := range keys {
		if !entry.owns(k, offset, b.createdSkew) || (cfg != nil && cfg.accountsFor(k)) {
			continue
		}
		rec, err := getKeyRecord(ctx, s, k.ID)
		if err != nil {
			return deleted, time.Time{}, err
		}
		if rec != nil && rec.State != keyStateDeleted {
			continue
		}
		if entry.Listed && rec == nil && k.ID != entry.KeyID {
			// The name is not unique: a key of it in the window may be a
			// customer's. Never deleted on that alone (see unconfirmed.go);
			// reported, and the creation counts as settled.
			if err := b.noteUnconfirmed(ctx, s, kind, entry, k); err != nil {
				return deleted, time.Time{}, err
			}
			deleted++
			continue
		}
		if err := deleteIfPresent(ctx, client, k.ID); err != nil {
			return deleted, time.Time{}, fmt.Errorf("deleting untracked key %s (%q): %w", k.ID, entry.KeyName, err)
		}
		if rec != nil {
			// Already gone by the engine's record (a list a few seconds old
			// still showed it): its tombstone keeps the real reason, and it
			// is no key of this record's.
			continue
		}
		deleted++
		// Its only record: a tombstone saying when and why (the rare path of
		// an interrupted creation, so its one write is worth the history).
		tomb := &trackedKey{KeyID: k.ID, KeyName: k.Name, TokenPrefix: k.TokenPrefix, Environment: entry.Environment,
			Role: entry.Role, State: keyStateActive, Issued: k.Created}
		switch {
		case kind == walKindAdminKey:
			tomb.Kind = keyKindAdmin
		case entry.Static:
			tomb.Kind = keyKindStatic
		}
		if err := b.forgetKey(ctx, s, tomb, reasonRollback); err != nil {
			b.Logger().Warn("could not record the tombstone of a rolled-back key", "key_id", k.ID, "error", err)
		}
		b.recordChange(eventKeyDelete, changeOf(tomb), "reason", reasonRollback, "wal_kind", kind)
	}
	return deleted, listedAt, nil
}

// rollbackStaleWALs settles every write-ahead record and creation record not
// in flight (the tidy path): Vault's records and this instance's at once,
// another instance's once walRollbackMinAge old. With env set, only that
// environment's records, by a caller holding its config lock.
func (b *heronBackend) rollbackStaleWALs(ctx context.Context, req *logical.Request, env string) (settled, pending int, err error) {
	ids, err := framework.ListWAL(ctx, req.Storage)
	if err != nil {
		return 0, 0, fmt.Errorf("listing write-ahead records: %w", err)
	}
	// An operator's tidy or config delete judges from Heron's list as it is
	// now; each environment is then listed once for all its records.
	b.forgetLists()
	settled, pending, slotErr := b.settleCreations(ctx, req.Storage, env, walRollbackMinAge)
	errs := []error{slotErr}
	sort.Strings(ids)
	for _, id := range ids {
		entry, err := framework.GetWAL(ctx, req.Storage, id)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		if entry == nil {
			continue
		}
		if env == "" {
			err = b.walRollback(ctx, req, entry.Kind, entry.Data)
		} else {
			var we walKeyEntry
			raw, _ := json.Marshal(entry.Data)
			if json.Unmarshal(raw, &we) != nil || we.Environment != env || we.KeyName == "" {
				continue
			}
			err = b.rollbackEntry(ctx, req.Storage, entry.Kind, &we)
		}
		if errors.Is(err, errStillInflight) || errors.Is(err, errStillWatching) {
			pending++
			continue
		}
		if err != nil {
			pending++
			errs = append(errs, err)
			continue
		}
		if err := framework.DeleteWAL(ctx, req.Storage, id); err != nil {
			pending++
			errs = append(errs, err)
			continue
		}
		settled++
	}
	return settled, pending, errors.Join(errs...)
}
