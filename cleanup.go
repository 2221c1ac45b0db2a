package heron

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"slices"
	"sort"
	"time"

	"github.com/hashicorp/vault/sdk/logical"

	"github.com/heron-vault/vault-plugin-secrets-heron/heronapi"
)

// The cleanup pass (every minute, and on tidy): deletes keys whose retention
// is over, finishes deferred revocations, ends keys that outlived their lease,
// retires rotated-out admin keys and reconciles with Heron.

// cleanupCounts is what one cleanup pass did.
type cleanupCounts struct {
	ExpiredKeysDeleted   int
	AdminKeysDeleted     int
	AdminKeysDeactivated int
	UntrackedGoneKeys    int
	RolledBackWAL        int
	PendingWAL           int
	OverdueKeys          int
	PendingRevocations   int
	EnvironmentsSkipped  int
}

const (
	// overdueGrace is how long after its lease's end a key may stay active
	// without any revocation from Vault. Vault revokes an expired lease at
	// once and retries a failed revocation for well under this; a key still
	// active later was never held by a lease Vault knows (Vault lost the
	// issuance's answer, or gave the lease up as irrevocable).
	overdueGrace = time.Hour
	// sweepSharesPerCycle: the periodic pass (every minute) reads one such
	// share of the records each time but every passListEvery-th (which
	// lists Heron), so all of them within the hour (40 shares in 50 passes:
	// the bound on a key outliving its lease, with overdueGrace);
	// minSweepShare: below this many records, all of them every pass.
	sweepSharesPerCycle = 40
	minSweepShare       = 1000
)

// retireOrphanStatic hands to the cleanup pass a static key that no static
// role holds (left by a create, rotation, adoption or delete that failed part
// way): deactivated like a deleted role's key. A rotation still storing it
// holds the role's lock, so a busy role is left for the next pass; a
// rotation on another instance (a reload or failover, whose role lock is its
// own) holds the role's rotation claim (a create or adoption too) while it
// writes the new key's record and then the role: a role whose claim another
// instance holds is left for a later pass too.
func (b *heronBackend) retireOrphanStatic(ctx context.Context, s logical.Storage, k *trackedKey) (bool, error) {
	lock := b.staticRoleLock(k.Role)
	if !lock.TryLock() {
		return false, nil
	}
	defer lock.Unlock()
	if claimed, err := b.rotationClaimed(ctx, s, "static/"+k.Role); err != nil || claimed {
		return false, err
	}
	if r, err := getStaticRole(ctx, s, k.Role); err != nil || (r != nil && (r.KeyID == k.KeyID || r.PreviousKeyID == k.KeyID)) {
		return false, err
	}
	// The record as it is now, under its own lock: a quarantine, an
	// operator's revoke or another pass may have changed it since it was read.
	defer b.lockKey(k.KeyID)()
	cur, err := getTrackedKey(ctx, s, k.KeyID)
	if err != nil || cur == nil || cur.Kind != keyKindStatic || cur.State != keyStateActive || cur.Pending != "" {
		return false, err
	}
	k = cur
	k.Pending = pendingDeactivate
	if k.ExpiredKeyRetention == 0 {
		k.ExpiredKeyRetention = defaultRetiredKeyRetention
	}
	if err := putTrackedKey(ctx, s, k); err != nil {
		return false, err
	}
	b.Logger().Warn("static key that no static role holds: retiring it", "key_id", k.KeyID, "role", k.Role, "environment", k.Environment)
	return true, nil
}

// sweepShare returns the key ids whose records this pass reads: every id
// for tidy (all), else the next share after where the last pass stopped, so
// that each record is read at least once an hour while no pass
// reads more than a fiftieth of them (at least minSweepShare): the periodic
// pass runs every minute and must stay short on a mount with 100,000 keys.
func (b *heronBackend) sweepShare(ids []string, all bool) []string {
	if all {
		return ids
	}
	if !sort.StringsAreSorted(ids) {
		sort.Strings(ids)
	}
	n := max(minSweepShare, (len(ids)+sweepSharesPerCycle-1)/sweepSharesPerCycle)
	b.sweepLock.Lock()
	defer b.sweepLock.Unlock()
	start, _ := slices.BinarySearch(ids, b.sweepCursor)
	if b.sweepCursor != "" && start < len(ids) && ids[start] == b.sweepCursor {
		start++
	}
	if start >= len(ids) {
		start = 0 // past the last record (deleted meanwhile): start over
	}
	end := min(start+n, len(ids))
	share := ids[start:end]
	if end == len(ids) {
		b.sweepCursor = "" // the next pass starts over
	} else {
		b.sweepCursor = ids[end-1]
	}
	return share
}

// sweepOverdue drops tombstones past their history_retention and hands to
// the cleanup pass the active keys whose lease ended
// more than overdueGrace ago: deactivated as an expiry, or deleted when the
// lease's revocation decided so or their retention is over too. This is the
// engine's own bound on a key's life: the record's end stands in for a lease
// that Vault never registered or stopped revoking.
func (b *heronBackend) sweepOverdue(ctx context.Context, s logical.Storage, ids []string) (int, error) {
	now := b.now()
	swept := 0
	var errs []error
	retention := map[string]time.Duration{}
	// Static keys a static role holds; any other active static key is an
	// orphan of a failed create, rotation, adoption or delete.
	// (From this instance's view of the static roles when it has one: a
	// key it misses is judged again from the role under its lock.)
	held := b.statics.held()
	if held == nil && len(ids) > 0 {
		held = map[string]bool{}
		statics, err := listStaticRoles(ctx, s)
		if err != nil {
			return 0, err
		}
		for _, r := range statics {
			held[r.KeyID], held[r.PreviousKeyID] = true, true
		}
	}
	for _, id := range ids {
		k, err := getKeyRecord(ctx, s, id)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		if k != nil && k.State == keyStateDeleted {
			// A tombstone past its config's history_retention goes.
			r, ok := retention[k.Environment]
			if !ok {
				r = b.historyRetention(ctx, s, k.Environment)
				retention[k.Environment] = r
			}
			if !now.Before(k.DeletedAt.Add(r)) {
				if err := s.Delete(ctx, keyStoragePrefix+id); err != nil {
					errs = append(errs, fmt.Errorf("deleting the tombstone of key %s: %w", id, err))
				}
			}
			continue
		}
		if k != nil && k.Kind == keyKindStatic && k.State == keyStateActive && k.Pending == "" && !held[k.KeyID] {
			ok, err := b.retireOrphanStatic(ctx, s, k)
			if err != nil {
				errs = append(errs, err)
			}
			if ok {
				swept++
			}
			continue
		}
		overdue := func(k *trackedKey) bool {
			return k != nil && k.Kind != keyKindStatic && k.State == keyStateActive && k.Pending == "" && !now.Before(k.Expires.Add(overdueGrace))
		}
		if !overdue(k) {
			continue
		}
		// Decided and written under the record's lock, from a read made
		// under it: a revocation, renewal or quarantine may have changed
		// it since the sweep read it.
		ok, err := func() (bool, error) {
			defer b.lockKey(id)()
			cur, err := getKeyRecord(ctx, s, id)
			if err != nil || !overdue(cur) {
				return false, err
			}
			k = cur
			k.Pending = pendingDeactivate
			if k.Revoke == pendingDelete || !now.Before(k.Expires.Add(overdueGrace+k.ExpiredKeyRetention)) {
				k.Pending = pendingDelete
			}
			return true, putTrackedKey(ctx, s, k)
		}()
		if err != nil {
			errs = append(errs, err)
			continue
		}
		if !ok {
			continue
		}
		swept++
		b.Logger().Warn("key outlived its lease with no revocation from Vault: the cleanup pass ends it",
			"key_id", k.KeyID, "key_name", k.KeyName, "role", k.Role, "environment", k.Environment,
			"expired", k.Expires.UTC().Format(time.RFC3339), "pending", k.Pending)
	}
	return swept, errors.Join(errs...)
}

// cleanup deletes keys deactivated at expiry once past their retention,
// deactivates and deletes rotated-out admin keys, and drops from tracking the
// keys Heron no longer has. It spends the same per-environment budget as
// everything else and carries on past one environment's failure.
func (b *heronBackend) cleanup(ctx context.Context, s logical.Storage, sweep bool) (*cleanupCounts, error) {
	counts, _, err := b.cleanupPass(ctx, s, sweep, false)
	return counts, err
}

// passListEvery: the periodic pass lists every tracked key id (from storage)
// and Heron's keys (per environment) only every this many passes, on
// different passes, so that no pass of a mount with 100,000 keys pays both:
// Heron on passes 1, 6, 11, ... (passHeronPhase); the ids on passes 1, 4, 9,
// 14, ... (the first list prepares passIDsFirstQueue shares, each later one
// passListEvery-1). The passes in between take the rolling sweep's next
// shares, prepared by the last list of the ids, and the next list of Heron
// judges all those shares (reconcile); the pass that lists Heron reads no
// share (after the first), so the list of the ids moves on a pass when it
// would fall on it. tidy lists both every time.
const (
	passListEvery     = 5
	passHeronPhase    = 1
	passIDsFirstQueue = 2
)

// cleanupPass is cleanup; periodic is the pass that runs every minute
// (which lists as passListEvery says), and it returns what it found to do
// for static roles (their rotations are the caller's, after the cleanup).
func (b *heronBackend) cleanupPass(ctx context.Context, s logical.Storage, sweep, periodic bool) (*cleanupCounts, *staticWork, error) {
	counts := &cleanupCounts{}
	listHeron := true
	if periodic && !sweep {
		b.passLock.Lock()
		b.passes++
		n := b.passes
		b.passLock.Unlock()
		listHeron = n%passListEvery == passHeronPhase
	}
	// Static roles first: the ones due by the index (every one on tidy,
	// on this instance's first pass and hourly); their overlaps end below,
	// before any rotation.
	work, staticErr := b.staticScan(ctx, s, sweep)
	if staticErr != nil {
		staticErr = fmt.Errorf("static roles: %w", staticErr)
	}
	// Only ids of the tracked keys (every few passes), and records of the few
	// retained ones, are read: the pass runs every minute and must not cost
	// O(keys) storage reads. The records read this pass: all of them for
	// tidy, else the next share of a rolling sweep (see sweepShare).
	var share []string
	var haveIDs bool
	var err error
	listed, tracked := b.sweepListing()
	if periodic && !sweep && listHeron && listed {
		// The pass that lists Heron's keys (100,000 on a large mount) reads
		// no share of records and lists no ids: its list is the cost of a
		// pass already. The shares wait a pass; whether any key is tracked
		// is the last list of the ids'.
		haveIDs = tracked
	} else {
		share, haveIDs, err = b.passShare(ctx, s, sweep)
	}
	if err != nil {
		return counts, work, errors.Join(fmt.Errorf("listing key records: %w", err), staticErr)
	}
	var sweepErr error
	counts.OverdueKeys, sweepErr = b.sweepOverdue(ctx, s, share)
	retained, err := b.retainedKeys(ctx, s)
	if err != nil {
		return counts, work, errors.Join(err, staticErr)
	}
	byEnv := make(map[string][]*trackedKey)
	for _, k := range retained {
		byEnv[k.Environment] = append(byEnv[k.Environment], k)
	}
	envs, err := s.List(ctx, configStoragePrefix)
	if err != nil {
		return counts, work, errors.Join(fmt.Errorf("listing configs: %w", err), staticErr)
	}

	// Heron's list judges the shares of every pass since it was last asked.
	judge := share
	b.passLock.Lock()
	if !sweep {
		b.unreconciled = append(b.unreconciled, share...)
		judge = b.unreconciled
	}
	if listHeron || sweep {
		b.unreconciled = nil
	}
	b.passLock.Unlock()

	var errs []error
	seen := listing{want: make(map[string]bool, len(judge)), live: map[string]bool{}, at: map[string]time.Time{}, inactive: map[string]string{}}
	for _, id := range judge {
		seen.want[id] = true
	}
	now := b.now()
	for _, env := range envs {
		overlaps := work.overlapsOf(env)
		// A previous key between overlap and max_overlap is judged by
		// Heron's last_used: its environment is listed every pass.
		list := listHeron && haveIDs
		for _, r := range overlaps {
			list = list || now.Before(r.previousDeactivatesAt())
		}
		if err := b.cleanupEnvironment(ctx, s, env, list, byEnv[env], overlaps, &seen, counts); err != nil {
			errs = append(errs, fmt.Errorf("environment %q: %w", env, err))
		}
		delete(byEnv, env)
	}
	for env, keys := range byEnv {
		counts.EnvironmentsSkipped++
		b.Logger().Warn("retained keys of an environment without config cannot be cleaned up", "environment", env, "keys", len(keys))
	}
	if err := b.reconcile(ctx, s, judge, &seen, counts); err != nil {
		errs = append(errs, err)
	}
	// After cleanupEnvironment, whose config read lock a rotation must not
	// take again (a config write waiting between the two would deadlock).
	for id, role := range seen.inactive {
		if err := b.replaceInactiveStatic(ctx, s, role, id); err != nil {
			errs = append(errs, fmt.Errorf("static role %q: replacing key %s, inactive in Heron: %w", role, id, err))
		}
	}
	return counts, work, errors.Join(append(errs, sweepErr, staticErr)...)
}

// passShare is the ids whose records this pass reads (see sweepShare), and
// whether any key is tracked: every id for all (tidy), else the next share
// prepared by the last list of the ids, listing them again once those are
// used up. A list prepares the shares of the passes up to the next one, so
// that only those ids, not all 100,000, stay in memory, and every share is
// read in turn.
func (b *heronBackend) passShare(ctx context.Context, s logical.Storage, all bool) ([]string, bool, error) {
	b.sweepLock.Lock()
	first := !b.sweepListed
	if !all && len(b.sweepQueue) > 0 {
		share := b.sweepQueue[0]
		b.sweepQueue = b.sweepQueue[1:]
		tracked := b.sweepTracked
		b.sweepLock.Unlock()
		return share, tracked, nil
	}
	b.sweepLock.Unlock()
	ids, err := s.List(ctx, keyStoragePrefix)
	if err != nil {
		return nil, false, err
	}
	share := b.sweepShare(ids, all)
	if all {
		return share, len(ids) > 0, nil
	}
	n := passListEvery - 1
	if first {
		n = passIDsFirstQueue
	}
	queue := make([][]string, 0, n)
	for range n {
		queue = append(queue, slices.Clone(b.sweepShare(ids, false)))
	}
	b.sweepLock.Lock()
	b.sweepQueue, b.sweepTracked, b.sweepListed = queue, len(ids) > 0, true
	b.sweepLock.Unlock()
	return slices.Clone(share), len(ids) > 0, nil
}

// sweepListing reports whether this instance has listed the tracked key ids
// yet, and whether that list was not empty.
func (b *heronBackend) sweepListing() (listed, tracked bool) {
	b.sweepLock.Lock()
	defer b.sweepLock.Unlock()
	return b.sweepListed, b.sweepTracked
}

// listing is what the pass learnt from Heron: which of the keys it wants to
// judge (want: the sweep's share) Heron still holds in the environments it
// listed, and when each was listed.
type listing struct {
	want map[string]bool
	live map[string]bool
	at   map[string]time.Time
	// inactive maps static roles' current keys that Heron lists as
	// inactive (deactivated by hand in the dashboard) to their role: the
	// application holding one gets 401, so the pass replaces it.
	inactive map[string]string
}

// reconcile drops from tracking the keys Heron no longer has. Only records
// issued before their environment was listed are judged, so an issuance
// finishing meanwhile is never mistaken for a vanished key; heron ids are
// unique, so one set serves every environment.
func (b *heronBackend) reconcile(ctx context.Context, s logical.Storage, ids []string, seen *listing, counts *cleanupCounts) error {
	if len(seen.at) == 0 {
		// No environment was listed: nothing can be judged, and reading
		// every record to find that out is what a large mount cannot afford.
		return nil
	}
	var errs []error
	for _, id := range ids {
		if seen.live[id] {
			continue
		}
		k, err := getTrackedKey(ctx, s, id)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		if k == nil || k.Unreachable {
			// Deleted by this pass or a revocation meanwhile; or a key the
			// admin key cannot see, whose absence from the list proves nothing.
			continue
		}
		listedAt, ok := seen.at[k.Environment]
		if !ok || !k.Issued.Before(listedAt) {
			continue
		}
		state := k.State
		if err := b.forgetKey(ctx, s, k, reasonMissing); err != nil {
			errs = append(errs, err)
			continue
		}
		counts.UntrackedGoneKeys++
		b.recordChange(eventKeyMissing, changeOf(k), "state", state)
	}
	return errors.Join(errs...)
}

func (b *heronBackend) cleanupEnvironment(ctx context.Context, s logical.Storage, env string, list bool, keys []*trackedKey, overlaps []*staticRole, seen *listing, counts *cleanupCounts) error {
	lock := b.configLock(env)
	lock.RLock()
	defer lock.RUnlock()

	cfg, err := getConfig(ctx, s, env)
	if err != nil || cfg == nil {
		return err
	}
	b.refreshClient(cfg)
	client, err := b.getClient(ctx, s, env)
	if err != nil {
		return err
	}
	var errs []error

	if list {
		// Of Heron's keys (100,000 on a large mount) only these matter
		// here: the sweep's share and the retained keys, for reconcile, and
		// static roles' previous keys, for their overlap. The list is
		// walked, never held.
		want := maps.Clone(seen.want)
		for _, k := range keys {
			want[k.KeyID] = true
		}
		prev := map[string]bool{}
		for _, r := range overlaps {
			prev[r.PreviousKeyID] = true
		}
		current := b.statics.current(env)
		if current == nil {
			if current, err = staticCurrentKeys(ctx, s, env); err != nil {
				return err
			}
		}
		var live []heronapi.Key
		listedAt := b.now()
		err = heronapi.EachKey(ctx, client, func(k heronapi.Key) {
			if want[k.ID] {
				seen.live[k.ID] = true
			}
			if prev[k.ID] {
				live = append(live, k)
			}
			if role, ok := current[k.ID]; ok && !k.IsActive {
				seen.inactive[k.ID] = role
			}
		})
		if err != nil {
			errs = append(errs, fmt.Errorf("listing keys: %w", err))
			// max_overlap is a promise that needs no list.
			if err := b.settleOverlaps(ctx, s, client, env, overlaps, nil, false); err != nil {
				errs = append(errs, err)
			}
		} else {
			seen.at[env] = listedAt
			if err := b.settleOverlaps(ctx, s, client, env, overlaps, live, true); err != nil {
				errs = append(errs, err)
			}
			// A retained key Heron no longer has needs no call: reconcile
			// drops it.
			kept := keys[:0]
			for _, k := range keys {
				if seen.live[k.KeyID] || !k.Issued.Before(listedAt) {
					kept = append(kept, k)
				}
			}
			keys = kept
		}
	} else if len(overlaps) > 0 {
		// Not listed this pass: max_overlap needs no list.
		if err := b.settleOverlaps(ctx, s, client, env, overlaps, nil, false); err != nil {
			errs = append(errs, err)
		}
	}

	// Revocations that were released for want of budget come first: those
	// keys may still be live.
	for _, k := range keys {
		if k.Pending == "" || k.Unreachable {
			continue
		}
		if err := b.finishPending(ctx, s, client, k); err != nil {
			errs = append(errs, err)
			continue
		}
		counts.PendingRevocations++
	}

	now := b.now()
	for _, k := range keys {
		if k.Pending != "" || k.Unreachable || k.State != keyStateDeactivated || now.Before(k.DeleteAfter) {
			continue
		}
		if err := deleteIfPresent(ctx, client, k.KeyID); err != nil {
			errs = append(errs, fmt.Errorf("deleting expired key %s: %w", k.KeyID, err))
			continue
		}
		reason := reasonRetention
		if k.Kind == keyKindStatic {
			reason = reasonStaticRetired
		}
		if err := b.forgetKey(ctx, s, k, reason); err != nil {
			errs = append(errs, err)
			continue
		}
		counts.ExpiredKeysDeleted++
		b.recordChange(eventKeyDelete, changeOf(k), "reason", reason)
	}

	if err := b.cleanupRetired(ctx, s, cfg, client, counts); err != nil {
		errs = append(errs, err)
	}
	return errors.Join(errs...)
}

// finishPending carries out the revocation a released lease left behind.
func (b *heronBackend) finishPending(ctx context.Context, s logical.Storage, client heronapi.API, k *trackedKey) error {
	// Decided and written from a read under the record's lock: the list
	// this pass read may be stale (a revocation or a quarantine since).
	defer b.lockKey(k.KeyID)()
	fresh, ferr := getTrackedKey(ctx, s, k.KeyID)
	if ferr != nil || fresh == nil || fresh.Pending == "" || fresh.Unreachable {
		return ferr
	}
	*k = *fresh
	var err error
	if k.Pending == pendingDeactivate {
		err = client.DeactivateKey(ctx, k.KeyID)
	} else {
		err = client.DeleteKey(ctx, k.KeyID)
	}
	if errors.Is(err, heronapi.ErrNotFound) || (err == nil && k.Pending == pendingDelete) {
		event, reason := eventKeyRevoke, reasonRevoked
		if err != nil {
			event, reason = eventKeyMissing, reasonMissing
		}
		if err := b.forgetKey(ctx, s, k, reason); err != nil {
			return err
		}
		b.recordChange(event, changeOf(k), "deferred", true)
		return nil
	}
	if err != nil {
		return fmt.Errorf("finishing the deferred %s of key %s: %w", k.Pending, k.KeyID, err)
	}
	now := b.now()
	k.Pending = ""
	k.State = keyStateDeactivated
	k.DeactivatedAt = now
	k.DeleteAfter = now.Add(k.ExpiredKeyRetention)
	if err := putTrackedKey(ctx, s, k); err != nil {
		return err
	}
	event := eventKeyExpire
	if k.kind() == keyKindStatic {
		// A static key no role holds any more, retired late: not a lease.
		event = eventStaticDeactivate
	}
	b.recordChange(event, changeOf(k), "deferred", true, "delete_after", k.DeleteAfter.UTC().Format(time.RFC3339))
	return nil
}

// cleanupRetired deactivates rotated-out admin keys still active and deletes
// those past old_key_retention. It never writes the config (see
// retired_admin.go): each key's progress goes into its own record.
func (b *heronBackend) cleanupRetired(ctx context.Context, s logical.Storage, cfg *heronConfig, client heronapi.API, counts *cleanupCounts) error {
	if len(cfg.RetiredKeys) == 0 {
		return nil
	}
	var errs []error
	before := 0
	for _, rk := range cfg.RetiredKeys {
		if !rk.Deactivated {
			before++
		}
	}
	if before > 0 {
		if err := b.deactivateRetired(ctx, s, cfg, client); err != nil {
			errs = append(errs, err)
		}
		for _, rk := range cfg.RetiredKeys {
			if !rk.Deactivated {
				before--
			}
		}
		counts.AdminKeysDeactivated += before
	}

	all := slices.Clone(cfg.RetiredKeys)
	if _, err := b.pruneRetired(ctx, cfg, client); err != nil {
		errs = append(errs, err)
	}
	now := b.now()
	kept := make(map[string]bool, len(cfg.RetiredKeys))
	for _, rk := range cfg.RetiredKeys {
		kept[rk.KeyID] = true
	}
	for _, rk := range all {
		if kept[rk.KeyID] {
			continue
		}
		// Deleted over the cap by pruneRetired.
		if err := putRetiredProgress(ctx, s, cfg.Environment, rk, now); err != nil {
			errs = append(errs, err)
			continue
		}
		counts.AdminKeysDeleted++
	}
	for _, rk := range cfg.RetiredKeys {
		if cfg.isAdminKey(rk.KeyID, rk.TokenPrefix) {
			// Written back by hand as the admin key: never delete the key in
			// use (config writes drop such entries; this guards older ones).
			b.Logger().Warn("a retired admin key is the current admin key again: not deleted", "environment", cfg.Environment, "key_id", rk.KeyID)
			continue
		}
		if !retiredDue(rk, now) {
			continue
		}
		done, err := b.deleteRetiredKey(ctx, s, cfg.Environment, rk.KeyID, client)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		if done {
			counts.AdminKeysDeleted++
		}
	}
	return errors.Join(errs...)
}

// deleteRetiredKey deletes one rotated-out admin key past its retention,
// decided under the key's lock from the config read again under it, and
// records it deleted in its progress record; it reports whether it did.
func (b *heronBackend) deleteRetiredKey(ctx context.Context, s logical.Storage, env, id string, client heronapi.API) (bool, error) {
	defer b.lockKey(id)()
	fresh, cur, err := retiredNow(ctx, s, env, id)
	if err != nil || cur == nil || !retiredDue(*cur, b.now()) {
		return false, err
	}
	if err := b.deleteRetired(ctx, client, fresh, *cur, reasonRetention); err != nil {
		return false, err
	}
	if err := putRetiredProgress(ctx, s, env, *cur, b.now()); err != nil {
		// Deleted in Heron, still retired in storage: the next pass's
		// delete finds it gone.
		return false, fmt.Errorf("recording the deletion of old admin key %s: %w", id, err)
	}
	return true, nil
}

// purgeEnvironment deletes, ahead of their retention, the deactivated keys and
// rotated-out admin keys of env.
func (b *heronBackend) purgeEnvironment(ctx context.Context, s logical.Storage, env string) error {
	cfg, err := getConfig(ctx, s, env)
	if err != nil || cfg == nil {
		return err
	}
	all, err := b.retainedKeys(ctx, s)
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
	// A one-off client: the cached one refuses a config being deleted.
	client, err := b.checkClient(cfg, cfg.AdminAPIKey)
	if err != nil {
		return err
	}
	for _, k := range retained {
		if err := deleteIfPresent(ctx, client, k.KeyID); err != nil {
			return fmt.Errorf("deleting key %s: %w", k.KeyID, err)
		}
		if err := b.forgetKey(ctx, s, k, reasonConfigDeleted); err != nil {
			return err
		}
		b.recordChange(eventKeyDelete, changeOf(k), "reason", reasonConfigDeleted)
	}
	for _, rk := range cfg.RetiredKeys {
		if err := b.deleteRetired(ctx, client, cfg, rk, reasonConfigDeleted); err != nil {
			return err
		}
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

// deleteRetired deletes a rotated-out admin key in Heron and records the
// change as every key deletion is recorded (event and log line). A 404 is
// "gone" only where the current admin key can see the key.
func (b *heronBackend) deleteRetired(ctx context.Context, client heronapi.API, cfg *heronConfig, rk retiredAdminKey, reason string) error {
	err := client.DeleteKey(ctx, rk.KeyID)
	switch {
	case errors.Is(err, heronapi.ErrNotFound) && rk.Unreachable:
		return errRetiredUnreachable(cfg.Environment, rk.KeyID)
	case errors.Is(err, heronapi.ErrNotFound):
	case err != nil:
		return fmt.Errorf("deleting old admin key %s: %w", rk.KeyID, err)
	}
	b.recordChange(eventKeyDelete, keyChange{KeyID: rk.KeyID, TokenPrefix: rk.TokenPrefix, Environment: cfg.Environment,
		DataPath: configStoragePrefix + cfg.Environment}, "reason", reason, "kind", keyKindAdmin)
	return nil
}
