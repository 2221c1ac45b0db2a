package heron

import (
	"context"
	"errors"
	"fmt"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/hashicorp/vault/sdk/logical"
)

// The index of static roles by their next event, so that a periodic pass
// with nothing due reads no static role (10,000 roles: two storage lists,
// not 10,000 reads per pass).
//
//	static-index/<day>/<unix_seconds>_<role>   empty entry
//
// <day> is the event's unix day (8 digits), <unix_seconds> the event rounded
// up to the second (12 digits): an entry listed as due is due. A role's
// event is the earlier of its next scheduled rotation and the end of its
// previous key's overlap (from then on every pass judges the previous key
// until it is retired, which moves the entry). A role with neither (no
// previous key, rotation disabled or run by Vault's rotation manager) has no
// entry.
//
// The index is only a hint. The role's record, read under its lock, stays
// the truth: every decision the pass takes from an entry is taken again
// from the role as read under the role's lock (rotateStaticIf with dueNow,
// finishOverlap). Every write of a role puts its new entry before the role
// and deletes its old one after (putStaticRole), so a role is never without
// the entry of its stored state except across a failure between the two
// writes, or across two instances writing the same role at once; an entry
// left over is an extra read when it comes due, and the pass then replaces
// it. What repairs a missing entry: a full sweep (list and read every role,
// put the entry of any role the index lacks) on the first pass of every
// backend instance (a reload, a failover, an upgrade from a version without
// the index), hourly after that, and on tidy.
const (
	staticIndexPrefix = "static-index/"
	staticIndexDay    = 24 * time.Hour
	// staticSweepEvery is how often the pass reads every static role anyway.
	staticSweepEvery = time.Hour
	// staticIndexGrace: an entry whose role does not show it is deleted only
	// once it is this far in the past (another instance may be writing the
	// role it was just put for).
	staticIndexGrace = 2 * time.Minute
	// maxStaticRotationsPerPass and staticRotationPassBudget bound what one
	// pass spends on scheduled static rotations: a storm (hundreds due at
	// once) is rotated over several passes, oldest due first, and never
	// holds the pass (and the overlap ends of the next pass) for longer.
	maxStaticRotationsPerPass = 100
	staticRotationPassBudget  = 20 * time.Second
)

// nextEvent is when the pass next has something to do for r (zero: never):
// its next scheduled rotation, or the end of its previous key's overlap.
func (r *staticRole) nextEvent(now time.Time) time.Time {
	next, _ := r.rotationSchedule().nextAt(now)
	if r.PreviousKeyID != "" {
		if end := r.PreviousSince.Add(r.Overlap); next.IsZero() || end.Before(next) {
			next = end
		}
	}
	return next
}

// staticIndexKey is the index entry of role name for an event at at ("":
// none).
func staticIndexKey(name string, at time.Time) string {
	if at.IsZero() || name == "" {
		return ""
	}
	sec := at.Unix()
	if at.Nanosecond() > 0 {
		sec++
	}
	sec = max(sec, 0)
	return fmt.Sprintf("%s%08d/%012d_%s", staticIndexPrefix, sec/int64(staticIndexDay/time.Second), sec, name)
}

// indexKeyOf is r's entry as of now ("" for no role or no event).
func indexKeyOf(r *staticRole, now time.Time) string {
	if r == nil {
		return ""
	}
	return staticIndexKey(r.Name, r.nextEvent(now))
}

// parseStaticIndexEntry reads an entry's time and role from its name in its
// day's listing.
func parseStaticIndexEntry(entry string) (int64, string, bool) {
	secs, name, ok := strings.Cut(entry, "_")
	if !ok || name == "" {
		return 0, "", false
	}
	sec, err := strconv.ParseInt(secs, 10, 64)
	return sec, name, err == nil
}

// putStaticRole stores r, keeping its index entry in step: the new entry
// first, the role, then the entry of old (the role as read under the same
// lock; nil: none stored). Called with the role's lock held.
func (b *heronBackend) putStaticRole(ctx context.Context, s logical.Storage, old, r *staticRole) error {
	now := b.now()
	newKey, oldKey := indexKeyOf(r, now), indexKeyOf(old, now)
	if newKey != "" {
		if err := s.Put(ctx, &logical.StorageEntry{Key: newKey}); err != nil {
			return fmt.Errorf("indexing static role %q: %w", r.Name, err)
		}
	}
	if err := putJSON(ctx, s, staticRoleStoragePrefix+r.Name, fmt.Sprintf("static role %q", r.Name), r); err != nil {
		return err
	}
	b.statics.note(r)
	if oldKey != "" && oldKey != newKey {
		if err := s.Delete(ctx, oldKey); err != nil {
			// Left over: an extra read when it comes due, then dropped.
			b.Logger().Debug("could not drop a static role's old index entry; the pass will", "role", r.Name, "entry", oldKey, "error", err)
		}
	}
	return nil
}

// deleteStaticRoleIndex drops the entry of r, just deleted (its lock held).
func (b *heronBackend) deleteStaticRoleIndex(ctx context.Context, s logical.Storage, r *staticRole) {
	b.statics.forget(r.Name)
	if key := indexKeyOf(r, b.now()); key != "" {
		if err := s.Delete(ctx, key); err != nil {
			b.Logger().Debug("could not drop a deleted static role's index entry; the pass will", "role", r.Name, "entry", key, "error", err)
		}
	}
}

// staticView is what this instance knows of every static role's keys, for
// the parts of the pass that need all of them without reading them all: the
// keys a role holds (the orphan sweep), the current keys (replacing one
// deactivated in Heron by hand). Built by each full sweep, kept up to date
// by this instance's writes; a role changed elsewhere (Invalidate) is read
// again by the next pass. Only ever a hint: each decision is taken again
// from storage under the role's lock.
type staticView struct {
	mu      sync.Mutex
	roles   map[string]staticHeld // nil until the first full sweep
	sweptAt time.Time
	stale   map[string]bool
}

// staticHeld is the part of a static role the view keeps.
type staticHeld struct {
	env, current, previous string
}

func (v *staticView) note(r *staticRole) {
	v.mu.Lock()
	defer v.mu.Unlock()
	if v.roles != nil {
		v.roles[r.Name] = staticHeld{env: r.Environment, current: r.KeyID, previous: r.PreviousKeyID}
	}
}

func (v *staticView) forget(name string) {
	v.mu.Lock()
	defer v.mu.Unlock()
	delete(v.roles, name)
}

// invalidate marks name to be read again by the next pass.
func (v *staticView) invalidate(name string) {
	v.mu.Lock()
	defer v.mu.Unlock()
	if v.stale == nil {
		v.stale = map[string]bool{}
	}
	v.stale[name] = true
}

// held is every key a static role holds (current or previous), or nil
// when the view is not built.
func (v *staticView) held() map[string]bool {
	v.mu.Lock()
	defer v.mu.Unlock()
	if v.roles == nil {
		return nil
	}
	out := make(map[string]bool, 2*len(v.roles))
	for _, h := range v.roles {
		if h.current != "" {
			out[h.current] = true
		}
		if h.previous != "" {
			out[h.previous] = true
		}
	}
	return out
}

// current maps env's static roles' current keys to their role (nil when
// the view is not built).
func (v *staticView) current(env string) map[string]string {
	v.mu.Lock()
	defer v.mu.Unlock()
	if v.roles == nil {
		return nil
	}
	out := map[string]string{}
	for name, h := range v.roles {
		if h.env == env && h.current != "" {
			out[h.current] = name
		}
	}
	return out
}

// staticWork is what a pass found to do for static roles.
type staticWork struct {
	// rotate names the roles due for a scheduled rotation, most overdue
	// first.
	rotate []string
	// overlaps are the roles whose previous key's overlap is over (as read:
	// finishOverlap decides again under the role's lock).
	overlaps []*staticRole
	// read counts the static roles read; full: every role was.
	read int
	full bool
}

// overlapsOf returns the roles of env in w.overlaps.
func (w *staticWork) overlapsOf(env string) []*staticRole {
	if w == nil {
		return nil
	}
	var out []*staticRole
	for _, r := range w.overlaps {
		if r.Environment == env {
			out = append(out, r)
		}
	}
	return out
}

// staticIndexEntries lists the index: every entry when all, else those due
// by now. It maps each role to its entries, and returns the roles in order of
// their earliest entry.
func staticIndexEntries(ctx context.Context, s logical.Storage, now time.Time, all bool) (map[string][]string, []string, error) {
	days, err := s.List(ctx, staticIndexPrefix)
	if err != nil {
		return nil, nil, fmt.Errorf("listing the static role index: %w", err)
	}
	sort.Strings(days)
	today := now.Unix() / int64(staticIndexDay/time.Second)
	type hit struct {
		sec  int64
		name string
	}
	var hits []hit
	byRole := map[string][]string{}
	for _, d := range days {
		day, err := strconv.ParseInt(strings.TrimSuffix(d, "/"), 10, 64)
		if err != nil || !strings.HasSuffix(d, "/") {
			continue
		}
		if !all && day > today {
			break
		}
		entries, err := s.List(ctx, staticIndexPrefix+d)
		if err != nil {
			return nil, nil, fmt.Errorf("listing the static role index: %w", err)
		}
		for _, e := range entries {
			sec, name, ok := parseStaticIndexEntry(e)
			if !ok || (!all && sec > now.Unix()) {
				continue
			}
			if _, seen := byRole[name]; !seen {
				hits = append(hits, hit{sec, name})
			}
			byRole[name] = append(byRole[name], staticIndexPrefix+d+e)
		}
	}
	sort.SliceStable(hits, func(i, j int) bool { return hits[i].sec < hits[j].sec })
	order := make([]string, len(hits))
	for i, h := range hits {
		order[i] = h.name
	}
	return byRole, order, nil
}

// staticScan finds what the pass has to do for static roles. Normally it
// reads only the roles whose index entry is due (and those invalidated
// here); a full sweep (all, the instance's first pass, hourly) reads every
// role, rebuilds the view and puts every missing entry. Entries whose role
// no longer shows them are replaced once they are staticIndexGrace old.
func (b *heronBackend) staticScan(ctx context.Context, s logical.Storage, all bool) (*staticWork, error) {
	now := b.now()
	b.statics.mu.Lock()
	full := all || b.statics.roles == nil || now.Sub(b.statics.sweptAt) >= staticSweepEvery || now.Before(b.statics.sweptAt)
	stale := b.statics.stale
	b.statics.stale = nil
	b.statics.mu.Unlock()

	entries, order, err := staticIndexEntries(ctx, s, now, full)
	if err != nil && !full {
		return nil, err
	}
	if err != nil {
		// A full sweep reads the roles whatever the index says.
		b.Logger().Warn("could not list the static role index: the sweep reads every role", "error", err)
		entries = map[string][]string{}
	}
	names := order
	if full {
		names, err = s.List(ctx, staticRoleStoragePrefix)
		if err != nil {
			return nil, fmt.Errorf("listing static roles: %w", err)
		}
		// Roles whose entries name a role that is gone are judged too.
		listed := make(map[string]bool, len(names))
		for _, n := range names {
			listed[n] = true
		}
		for _, n := range order {
			if !listed[n] {
				names = append(names, n)
			}
		}
	} else {
		inOrder := make(map[string]bool, len(order))
		for _, n := range order {
			inOrder[n] = true
		}
		for n := range stale {
			if !inOrder[n] {
				names = append(names, n)
			}
		}
	}

	w := &staticWork{full: full}
	view := map[string]staticHeld{}
	type due struct {
		name string
		at   time.Time
	}
	var rotations []due
	var errs []error
	for _, name := range names {
		r, err := getStaticRole(ctx, s, name)
		w.read++
		if err != nil {
			errs = append(errs, err)
			if full {
				// Not seen: keep what the view had.
				b.statics.mu.Lock()
				if h, ok := b.statics.roles[name]; ok {
					view[name] = h
				}
				b.statics.mu.Unlock()
			}
			continue
		}
		want := indexKeyOf(r, now)
		var leftover []string
		found := false
		for _, e := range entries[name] {
			if e == want {
				found = true
			} else {
				leftover = append(leftover, e)
			}
		}
		if r == nil {
			b.statics.forget(name)
		} else {
			view[name] = staticHeld{env: r.Environment, current: r.KeyID, previous: r.PreviousKeyID}
			if !full {
				b.statics.note(r)
			}
			if want != "" && !found && (full || len(leftover) > 0) {
				// The role's own entry is missing (stored before the index,
				// a failed write, two instances): put it. An entry too many
				// costs one read when it comes due; none could cost a
				// rotation.
				if err := s.Put(ctx, &logical.StorageEntry{Key: want}); err != nil {
					errs = append(errs, fmt.Errorf("indexing static role %q: %w", name, err))
				}
			}
			if next, _ := r.rotationSchedule().nextAt(now); !next.IsZero() && !now.Before(next) {
				rotations = append(rotations, due{name, next})
			}
			if r.PreviousKeyID != "" && !now.Before(r.PreviousSince.Add(r.Overlap)) {
				w.overlaps = append(w.overlaps, r)
			}
		}
		if len(leftover) > 0 {
			if err := b.dropStaleIndexEntries(ctx, s, name, leftover, now); err != nil {
				errs = append(errs, err)
			}
		}
	}
	sort.SliceStable(rotations, func(i, j int) bool { return rotations[i].at.Before(rotations[j].at) })
	for _, d := range rotations {
		w.rotate = append(w.rotate, d.name)
	}
	if full {
		b.statics.mu.Lock()
		b.statics.roles, b.statics.sweptAt = view, now
		b.statics.mu.Unlock()
	}
	return w, errors.Join(errs...)
}

// dropStaleIndexEntries deletes entries of role name that its record, read
// under its lock, does not show, once they are staticIndexGrace in the past.
// A role busy (a rotation holding its lock) is left for the next pass.
func (b *heronBackend) dropStaleIndexEntries(ctx context.Context, s logical.Storage, name string, entries []string, now time.Time) error {
	var old []string
	for _, e := range entries {
		sec, _, ok := parseStaticIndexEntry(e[strings.LastIndex(e, "/")+1:])
		if ok && time.Unix(sec, 0).Add(staticIndexGrace).Before(now) {
			old = append(old, e)
		}
	}
	if len(old) == 0 {
		return nil
	}
	lock := b.staticRoleLock(name)
	if !lock.TryLock() {
		return nil
	}
	defer lock.Unlock()
	r, err := getStaticRole(ctx, s, name)
	if err != nil {
		return err
	}
	want := indexKeyOf(r, now)
	if want != "" {
		if err := s.Put(ctx, &logical.StorageEntry{Key: want}); err != nil {
			return fmt.Errorf("indexing static role %q: %w", name, err)
		}
	}
	var errs []error
	for _, e := range old {
		if e == want {
			continue
		}
		if err := s.Delete(ctx, e); err != nil {
			errs = append(errs, fmt.Errorf("dropping stale index entry %s: %w", e, err))
		}
	}
	return errors.Join(errs...)
}

// creationListAgeKey carries, in a creation's context, how old a list of
// Heron's keys its write-ahead record may take its Existing from (see
// createUnderWAL; zero: a fresh list).
type creationListAgeKey struct{}

// withCreationListAge lets the creations under ctx take their list of the
// keys that already have their name from a list up to maxAge old, patched
// with the engine's own creations since (list_cache.go). A key named
// alike that a customer created meanwhile is then missing from Existing:
// if the creation's outcome is ever unknown, the rollback reports that key
// `unconfirmed` instead of passing it over, and deletes it in neither case
// (spec invariant 3). What it saves: a storm of 100 scheduled rotations in
// an environment of 100,000 keys lists Heron once every listCacheTTL, not
// 100 times (a list each, and a request of the budget each).
func withCreationListAge(ctx context.Context, maxAge time.Duration) context.Context {
	return context.WithValue(ctx, creationListAgeKey{}, maxAge)
}

// creationListAge is the age withCreationListAge set on ctx (zero: none).
func creationListAge(ctx context.Context) time.Duration {
	d, _ := ctx.Value(creationListAgeKey{}).(time.Duration)
	return d
}

// rotateDueStatic runs the scheduled rotations w found (w nil: scans for
// them first), most overdue first, at most maxStaticRotationsPerPass of them
// and for at most staticRotationPassBudget: the rest stay due in the index
// and the next pass rotates them. Each is asked again under the role's lock
// (dueNow): a rotation by hand in between is not repeated.
func (b *heronBackend) rotateDueStatic(ctx context.Context, s logical.Storage, w *staticWork) (int, error) {
	if w == nil {
		var err error
		if w, err = b.staticScan(ctx, s, false); err != nil && w == nil {
			return 0, err
		}
	}
	// The rotations of one pass share Heron's list (see withCreationListAge).
	ctx = withCreationListAge(ctx, listCacheTTL)
	start := time.Now()
	limit := maxStaticRotationsPerPass
	if b.staticRotationsPerPass > 0 {
		limit = b.staticRotationsPerPass
	}
	rotated := 0
	var errs []error
	for i, name := range w.rotate {
		if i >= limit || time.Since(start) >= staticRotationPassBudget {
			b.Logger().Info("static rotations left for the next pass", "rotated", rotated, "left", len(w.rotate)-i)
			break
		}
		_, did, err := b.rotateStaticIf(ctx, s, name, b.dueNow)
		if errors.Is(err, errRotationBusy) {
			// Another instance is rotating it: that does what was due.
			continue
		}
		if err != nil {
			errs = append(errs, fmt.Errorf("%s: %w", staticRoleStoragePrefix+name, err))
			continue
		}
		if did {
			rotated++
		}
	}
	return rotated, errors.Join(errs...)
}
