package heron

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"sync"
	"time"

	"github.com/hashicorp/vault/sdk/framework"
	"github.com/hashicorp/vault/sdk/logical"
)

// Write-ahead records of key creations live in creation slots:
//
//	creating/<backend id>.<n>   creationRecord of slot n of one backend instance
//
// A slot's record is written before the POST and is not deleted once the
// key's own record is written: the slot's next creation overwrites it. So a
// creation costs two storage writes (this record, then the key's record)
// where a write-ahead record per creation costs three (put, record, delete):
// on Raft every write is a commit replicated to a quorum. A record that
// outlives its creation is harmless: its key is tracked, and the rollback
// leaves tracked keys alone. The instance that wrote a record knows whether
// its creation finished, so it never reads its own records back; records of
// another instance (before a restart, a reload or a failover) and creations
// this instance gave up on (outcome unknown) are settled like Vault's
// write-ahead records: by name, within the record's window, then deleted.
const creatingStoragePrefix = "creating/"

// slotReuseWithin is how young a free slot's record must be for the slot to
// be reused: well under walRollbackMinAge (see slotPool.take).
const slotReuseWithin = walRollbackMinAge / 2

// creationRecord is what a slot holds: the creation's kind (walKindKey or
// walKindAdminKey) and its write-ahead entry.
type creationRecord struct {
	Kind  string      `json:"kind"`
	Entry walKeyEntry `json:"entry"`
}

type slotState int

const (
	// slotFree: the slot's last creation finished (its key is recorded, or
	// none was made); its record may be overwritten.
	slotFree slotState = iota + 1
	// slotBusy: a creation is running in the slot.
	slotBusy
	// slotHeld: the creation's outcome stayed unknown; the record waits for
	// the rollback and the slot is not reused.
	slotHeld
	// slotSettling: a rollback is working on a held slot.
	slotSettling
	// slotStale: the record names no key that could be unrecorded (no POST
	// was sent, or the creation finished and only deleting its record
	// failed): the pass deletes it, without any lookup by name.
	slotStale
)

// slotPool is one backend instance's creation slots. It grows to the most
// creations that ever ran at once.
type slotPool struct {
	mu    sync.Mutex
	owner string
	next  int
	free  []string
	state map[string]slotState
	// env is the environment of each slot's last creation, since when it
	// started (its record's Since).
	env   map[string]string
	since map[string]time.Time
	// closed: the instance was cleaned up (a reload); from then on no slot
	// is reused, because the next instance settles this one's records and
	// deletes them, which must never hit a record written after it read it.
	closed bool
}

func newSlotPool(owner string) *slotPool {
	return &slotPool{owner: owner, state: map[string]slotState{}, env: map[string]string{}, since: map[string]time.Time{}}
}

// take returns a slot for a new creation in env starting at now. A free
// slot is reused only while its record is younger than slotReuseWithin:
// another instance settles (and deletes) a record only once it is
// walRollbackMinAge old, so it can never delete a record rewritten after it
// read it. An older free slot is retired instead (stale: the pass deletes
// its record), and a new one made.
func (p *slotPool) take(env string, now time.Time) string {
	p.mu.Lock()
	defer p.mu.Unlock()
	path := ""
	for len(p.free) > 0 && !p.closed && path == "" {
		last := p.free[len(p.free)-1]
		p.free = p.free[:len(p.free)-1]
		if now.Sub(p.since[last]) < slotReuseWithin {
			path = last
		} else {
			p.state[last] = slotStale
		}
	}
	if path == "" {
		path = fmt.Sprintf("%s%s.%d", creatingStoragePrefix, p.owner, p.next)
		p.next++
	}
	p.state[path] = slotBusy
	p.env[path] = env
	p.since[path] = now
	return path
}

// finish ends the creation in path: the slot is free again, or held for the
// rollback when a key of an unknown outcome may still appear. After the
// pool closed, a finished slot is forgotten: its record is the next
// instance's to settle.
func (p *slotPool) finish(path string, unresolved bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	switch {
	case unresolved:
		p.state[path] = slotHeld
	case p.closed:
		p.forgetLocked(path)
	default:
		p.state[path] = slotFree
		p.free = append(p.free, path)
	}
}

// stale ends a creation whose record is left to delete (see slotStale).
func (p *slotPool) stale(path string) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.state[path] = slotStale
}

// claimKind is what a settle pass may do with a record (see claim).
type claimKind int

const (
	claimNone    claimKind = iota // this instance's, free or busy: not to touch
	claimForeign                  // another instance's: settle once old enough
	claimHeld                     // this instance's, held: settle (its creation is over)
	claimStale                    // this instance's, stale: only delete
)

// claim says what the settle pass may do with the record at path; a held or
// stale slot of this instance is marked as being settled, so that no other
// caller settles it at the same time.
func (p *slotPool) claim(path string) claimKind {
	p.mu.Lock()
	defer p.mu.Unlock()
	switch p.state[path] {
	case 0:
		return claimForeign
	case slotHeld:
		p.state[path] = slotSettling
		return claimHeld
	case slotStale:
		p.state[path] = slotSettling
		return claimStale
	default:
		return claimNone
	}
}

// release ends a claim: a settled slot is forgotten (its record is gone;
// the pool makes new slots), an unsettled one is held again.
func (p *slotPool) release(path string, settled bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.state[path] != slotSettling {
		return
	}
	if settled {
		p.forgetLocked(path)
	} else {
		p.state[path] = slotHeld
	}
}

// drain takes the free and stale slots out of the pool for good and returns
// them, and closes the pool: a backend being shut down deletes their records
// (nothing is left to settle), and no creation can take one of them
// meanwhile.
func (p *slotPool) drain() []string {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.closed = true
	out := p.takeFreeLocked(func(string) bool { return true })
	for path, st := range p.state {
		if st == slotStale {
			out = append(out, path)
			p.forgetLocked(path)
		}
	}
	return out
}

// drainEnv takes the free slots whose last creation was in env out of the
// pool and returns them: their records are finished, and a config being
// deleted must not leave them behind (the next instance could not settle a
// record whose config is gone).
func (p *slotPool) drainEnv(env string) []string {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.takeFreeLocked(func(path string) bool { return p.env[path] == env })
}

func (p *slotPool) forgetLocked(path string) {
	delete(p.state, path)
	delete(p.env, path)
	delete(p.since, path)
}

func (p *slotPool) takeFreeLocked(match func(string) bool) []string {
	var out, keep []string
	for _, path := range p.free {
		if match(path) {
			out = append(out, path)
			p.forgetLocked(path)
		} else {
			keep = append(keep, path)
		}
	}
	p.free = keep
	return out
}

// pending reports whether the record at path may still name an unrecorded
// key: any record but those of this instance's free and stale slots.
func (p *slotPool) pending(path string) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	st := p.state[path]
	return st != slotFree && st != slotStale
}

// putCreation writes the write-ahead record of a creation into slot path.
func putCreation(ctx context.Context, s logical.Storage, path, kind string, entry *walKeyEntry) error {
	e, err := logical.StorageEntryJSON(path, &creationRecord{Kind: kind, Entry: *entry})
	if err != nil {
		return err
	}
	return s.Put(ctx, e)
}

// settleCreations settles the creation records that are the rollback's
// (see slotPool.claim): those of env (all with env empty); another
// instance's only once minAge old, for its request may still be running
// there (a reload's old instance), and its slot be reused until then. It
// returns how many it settled and how many remain.
func (b *heronBackend) settleCreations(ctx context.Context, s logical.Storage, env string, minAge time.Duration) (settled, pending int, err error) {
	paths, err := s.List(ctx, creatingStoragePrefix)
	if err != nil {
		return 0, 0, fmt.Errorf("listing creation records: %w", err)
	}
	var errs []error
	if env != "" {
		// A config being deleted or given a new key: this instance's
		// finished records of it go now (see drainEnv).
		b.dropCreations(ctx, s, b.slots.drainEnv(env))
	}
	for _, name := range paths {
		path := creatingStoragePrefix + name
		if strings.HasSuffix(name, "/") {
			continue
		}
		var ok bool
		switch b.slots.claim(path) {
		case claimNone:
			continue
		case claimStale:
			// No key can be unrecorded: the record only has to go.
			err = s.Delete(ctx, path)
			ok = err == nil
		case claimHeld:
			// Over in this instance: nothing of it is still running.
			ok, err = b.settleCreation(ctx, s, path, env, 0)
		case claimForeign:
			ok, err = b.settleCreation(ctx, s, path, env, minAge)
		}
		b.slots.release(path, ok)
		switch {
		case ok:
			settled++
		case err == nil:
			// Not this environment's, or too young to judge.
		case errors.Is(err, errStillInflight), errors.Is(err, errStillWatching):
			pending++
		default:
			pending++
			errs = append(errs, err)
		}
	}
	return settled, pending, errors.Join(errs...)
}

type configDeletingKey struct{}

// withConfigDeleting marks ctx as a config delete's (see settleCreation).
func withConfigDeleting(ctx context.Context) context.Context {
	return context.WithValue(ctx, configDeletingKey{}, true)
}

func configDeleting(ctx context.Context) bool {
	v, _ := ctx.Value(configDeletingKey{}).(bool)
	return v
}

// settleCreation settles one creation record (see settleCreations): true
// once the record is gone. With env set the caller holds env's config lock;
// records of other environments are left alone.
func (b *heronBackend) settleCreation(ctx context.Context, s logical.Storage, path, env string, minAge time.Duration) (bool, error) {
	rec, err := getJSON[creationRecord](ctx, s, path, "creation record "+path)
	if err != nil || rec == nil {
		return rec == nil && err == nil, err
	}
	e := &rec.Entry
	switch {
	case rec.Kind != walKindKey && rec.Kind != walKindAdminKey, e.KeyName == "", e.Environment == "":
		b.Logger().Error("dropping malformed creation record", "path", path, "kind", rec.Kind)
	case env != "" && e.Environment != env:
		return false, nil
	case minAge > 0 && b.windowNow().Sub(e.Since) < minAge:
		// Possibly still running in the instance that wrote it (a reload
		// or failover leaves the old one finishing its request).
		return false, errStillInflight
	case e.KeyID != "" && b.windowNow().Sub(e.Since) < walRollbackMinAge && !configDeleting(ctx):
		// A rotated-in admin key (see walGuard.confirmLater): judged once
		// another instance's write of the config, which could forget it,
		// can no longer be on its way. A config write here (env set) leaves
		// it to the pass rather than wait for it; a config delete settles
		// it now (its purge deletes the admin key the engine made).
		if env != "" {
			return false, nil
		}
		return false, errStillInflight
	case env != "":
		err = b.rollbackEntry(ctx, s, rec.Kind, e)
	default:
		lock := b.configLock(e.Environment)
		lock.RLock()
		err = b.rollbackEntry(ctx, s, rec.Kind, e)
		lock.RUnlock()
	}
	if err != nil {
		return false, err
	}
	// Storage has no compare-and-delete: read the record again, and leave
	// it if its writer put a new creation there meanwhile (a reload's old
	// instance finishing a request); that one is settled on its own.
	again, err := getJSON[creationRecord](ctx, s, path, "creation record "+path)
	if err != nil {
		return false, err
	}
	if again != nil && (!again.Entry.Since.Equal(e.Since) || again.Entry.KeyName != e.KeyName) {
		return false, nil
	}
	if err := s.Delete(ctx, path); err != nil {
		return false, fmt.Errorf("deleting settled creation record %s: %w", path, err)
	}
	return true, nil
}

// pendingCreations returns the write-ahead entries that may still name an
// unrecorded key: Vault write-ahead records (written by earlier versions)
// and creation records but those of this instance's free slots.
func (b *heronBackend) pendingCreations(ctx context.Context, s logical.Storage) ([]walKeyEntry, error) {
	var out []walKeyEntry
	ids, err := framework.ListWAL(ctx, s)
	if err != nil {
		return nil, err
	}
	for _, id := range ids {
		e, err := framework.GetWAL(ctx, s, id)
		if err != nil {
			return nil, err
		}
		if e == nil {
			continue
		}
		var we walKeyEntry
		raw, _ := json.Marshal(e.Data)
		if json.Unmarshal(raw, &we) == nil {
			out = append(out, we)
		}
	}
	paths, err := s.List(ctx, creatingStoragePrefix)
	if err != nil {
		return nil, err
	}
	for _, name := range paths {
		path := creatingStoragePrefix + name
		if !b.slots.pending(path) {
			continue
		}
		rec, err := getJSON[creationRecord](ctx, s, path, "creation record "+path)
		if err != nil {
			return nil, err
		}
		if rec != nil {
			out = append(out, rec.Entry)
		}
	}
	return out, nil
}

// dropFreeCreations deletes the records of this instance's free slots: their
// creations finished, so a backend shutting down leaves nothing for the next
// one to settle (a failure only leaves them to its rollback).
func (b *heronBackend) dropFreeCreations(ctx context.Context, s logical.Storage) {
	b.dropCreations(ctx, s, b.slots.drain())
}

// dropCreations deletes the records of finished creations taken out of the
// pool.
func (b *heronBackend) dropCreations(ctx context.Context, s logical.Storage, paths []string) {
	for _, path := range paths {
		if err := s.Delete(ctx, path); err != nil {
			b.Logger().Debug("could not delete a finished creation record; the rollback will", "path", path, "error", err)
		}
	}
}
