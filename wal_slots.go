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
)

// slotPool is one backend instance's creation slots. It grows to the most
// creations that ever ran at once.
type slotPool struct {
	mu    sync.Mutex
	owner string
	next  int
	free  []string
	state map[string]slotState
}

func newSlotPool(owner string) *slotPool {
	return &slotPool{owner: owner, state: map[string]slotState{}}
}

// take returns a slot for a new creation.
func (p *slotPool) take() string {
	p.mu.Lock()
	defer p.mu.Unlock()
	var path string
	if n := len(p.free); n > 0 {
		path = p.free[n-1]
		p.free = p.free[:n-1]
	} else {
		path = fmt.Sprintf("%s%s.%d", creatingStoragePrefix, p.owner, p.next)
		p.next++
	}
	p.state[path] = slotBusy
	return path
}

// finish ends the creation in path: the slot is free again, or held for the
// rollback when a key of an unknown outcome may still appear.
func (p *slotPool) finish(path string, unresolved bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if unresolved {
		p.state[path] = slotHeld
		return
	}
	p.state[path] = slotFree
	p.free = append(p.free, path)
}

// claim says whether the record at path is the rollback's to settle: a
// record of another instance, or a slot of this one held for the rollback
// (then marked as being settled, so that no other caller settles it at the
// same time). Free and busy slots of this instance are not.
func (p *slotPool) claim(path string) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	switch p.state[path] {
	case 0:
		return true
	case slotHeld:
		p.state[path] = slotSettling
		return true
	default:
		return false
	}
}

// release ends a claim: a settled held slot is forgotten (its record is
// gone; the pool makes new slots), an unsettled one is held again.
func (p *slotPool) release(path string, settled bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.state[path] != slotSettling {
		return
	}
	if settled {
		delete(p.state, path)
	} else {
		p.state[path] = slotHeld
	}
}

// drain takes the free slots out of the pool for good and returns them: a
// backend being shut down deletes their records (nothing is left to settle),
// and no creation can take one of them meanwhile.
func (p *slotPool) drain() []string {
	p.mu.Lock()
	defer p.mu.Unlock()
	out := p.free
	p.free = nil
	for _, path := range out {
		delete(p.state, path)
	}
	return out
}

// pending reports whether the record at path may still name an unrecorded
// key: any record but those of this instance's free slots.
func (p *slotPool) pending(path string) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.state[path] != slotFree
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
// (see slotPool.claim): those of env (all with env empty) whose window has
// passed minAge. It returns how many it settled and how many remain.
func (b *heronBackend) settleCreations(ctx context.Context, s logical.Storage, env string, minAge time.Duration) (settled, pending int, err error) {
	paths, err := s.List(ctx, creatingStoragePrefix)
	if err != nil {
		return 0, 0, fmt.Errorf("listing creation records: %w", err)
	}
	var errs []error
	for _, name := range paths {
		path := creatingStoragePrefix + name
		if strings.HasSuffix(name, "/") || !b.slots.claim(path) {
			continue
		}
		ok, err := b.settleCreation(ctx, s, path, env, minAge)
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
	for _, path := range b.slots.drain() {
		if err := s.Delete(ctx, path); err != nil {
			b.Logger().Debug("could not delete a finished creation record; the rollback will", "path", path, "error", err)
		}
	}
}
