package heronapi

import (
	"crypto/sha256"
	"slices"
	"sync"
	"time"
)

// Registry holds the budgets of a plugin process: one Limiter per (base URL,
// identity), shared by every mount that spends it. The engine uses the
// process-wide one (ProcessRegistry); tests that run several engine
// instances on a virtual clock make their own.
//
// Heron counts one budget per customer environment, whatever admin key
// spends it, so a holder (a mount's environment) whose identity changes (an
// admin key set by hand, a new base URL) takes its last minute's requests and
// any pause along: the new budget counts them (see Follow).
type Registry struct {
	clock clock

	mu      sync.Mutex
	entries map[limiterKey]*sharedLimiter
	// spends is the budget each scope (a mount's environment) spent last,
	// kept while that budget is remembered (see Follow).
	spends map[string]limiterKey
}

// limiterKey identifies an environment's budget. The key is hashed so the registry
// (which lives as long as the plugin process) never holds a credential.
type limiterKey struct {
	baseURL string
	keySum  [sha256.Size]byte
}

// sharedLimiter is one budget and who holds it: each scope (a mount's
// environment) states its own rate_limit_per_minute, and the smallest applies,
// so that the most careful mount's budget is never overspent by another. A
// scope may hold it through several holders (the backend instances of one
// mount during a reload or failover): the rate its latest Acquire stated is
// the scope's, since all of them read the same stored config.
type sharedLimiter struct {
	l       *Limiter
	holders map[string]string // holder -> its scope
	rates   map[string]int    // scope -> rate
	// idleSince is when the last holder let go (zero while held). The entry
	// outlives its holders by idleLimiterTTL so that a client rebuilt after a
	// config change or rotation keeps the budget's pause and spent tokens.
	idleSince time.Time
}

// idleLimiterTTL is how long an unheld budget is remembered.
const idleLimiterTTL = 10 * time.Minute

// NewRegistry returns an empty registry whose limiters run on c.
func NewRegistry(c Clock) *Registry { return newRegistry(exportedClock{c}) }

func newRegistry(c clock) *Registry {
	return &Registry{clock: c, entries: map[limiterKey]*sharedLimiter{}, spends: map[string]limiterKey{}}
}

// processRegistry is the plugin process's: every mount of the plugin in
// this process draws from it.
var processRegistry = newRegistry(wallClock{})

// sweepIdleLocked forgets budgets unheld for longer than idleLimiterTTL.
func (r *Registry) sweepIdleLocked(now time.Time) {
	for k, e := range r.entries {
		if len(e.holders) == 0 && now.Sub(e.idleSince) > idleLimiterTTL {
			delete(r.entries, k)
		}
	}
	for sc, k := range r.spends {
		if _, ok := r.entries[k]; !ok {
			delete(r.spends, sc)
		}
	}
}

func (e *sharedLimiter) apply() {
	low := 0
	for _, n := range e.rates {
		if low == 0 || n < low {
			low = n
		}
	}
	e.l.SetPerMinute(low)
}

func newSharedLimiter(perMinute int, c clock) *sharedLimiter {
	return &sharedLimiter{l: newLimiter(perMinute, c), holders: map[string]string{}, rates: map[string]int{}}
}

func sharedKey(baseURL, identity string) limiterKey {
	return limiterKey{baseURL: normalizeBaseURL(baseURL), keySum: sha256.Sum256([]byte(identity))}
}

// Acquire returns the limiter of (baseURL, identity) and records that holder
// spends it for scope at no more than perMinute. Every mount of the plugin in
// this process draws from one limiter per environment, as Heron counts the
// budget per environment, at the smallest perMinute of its scopes. A scope
// acquiring again replaces its own rate, through whichever of its holders.
// Pair with Release.
func (r *Registry) Acquire(baseURL, identity, holder, scope string, perMinute int) *Limiter {
	k := sharedKey(baseURL, identity)
	r.mu.Lock()
	defer r.mu.Unlock()
	r.sweepIdleLocked(r.clock.now())
	e, ok := r.entries[k]
	if !ok {
		e = newSharedLimiter(perMinute, r.clock)
		r.entries[k] = e
	}
	if was, ok := e.holders[holder]; ok && was != scope {
		r.dropHolderLocked(e, holder)
	}
	e.holders[holder] = scope
	e.rates[scope] = max(perMinute, 1)
	e.idleSince = time.Time{}
	e.apply()
	return e.l
}

// Restate sets scope's rate on (baseURL, identity) to perMinute through
// holder, only while holder holds it (a holder that let go meanwhile is not
// brought back).
func (r *Registry) Restate(baseURL, identity, holder, scope string, perMinute int) {
	k := sharedKey(baseURL, identity)
	r.mu.Lock()
	defer r.mu.Unlock()
	e, ok := r.entries[k]
	if !ok || e.holders[holder] != scope {
		return
	}
	e.rates[scope] = max(perMinute, 1)
	e.apply()
}

// dropHolderLocked removes holder, and its scope's rate when no other holder
// of the scope is left.
func (r *Registry) dropHolderLocked(e *sharedLimiter, holder string) {
	scope, ok := e.holders[holder]
	if !ok {
		return
	}
	delete(e.holders, holder)
	for _, sc := range e.holders {
		if sc == scope {
			return
		}
	}
	delete(e.rates, scope)
}

// Release drops holder's claim on (baseURL, identity). The rate goes back
// to the smallest of the remaining scopes'; the limiter is forgotten
// idleLimiterTTL after nobody holds it, so the registry does not grow with
// every admin key the process ever saw.
func (r *Registry) Release(baseURL, identity, holder string) {
	k := sharedKey(baseURL, identity)
	r.mu.Lock()
	defer r.mu.Unlock()
	e, ok := r.entries[k]
	if !ok {
		return
	}
	r.dropHolderLocked(e, holder)
	if len(e.holders) == 0 {
		e.idleSince = r.clock.now()
	} else {
		e.apply()
	}
	r.sweepIdleLocked(r.clock.now())
}

// Peek is for a one-off request (checking a config before it is stored),
// claiming nothing: a check that fails changes no budget's rate. It is the
// limiter of (baseURL, identity) when the registry has one, its rate
// untouched while someone holds it (at perMinute while nobody does); else a
// new limiter at perMinute, remembered unheld like a
// released one, so that a 429's pause outlives a check that failed on it and
// the next check, or the budget the config then acquires, keeps it. (The
// engine Follows the checked budget before the check, and the stored one
// again after.)
func (r *Registry) Peek(baseURL, identity string, perMinute int) *Limiter {
	k := sharedKey(baseURL, identity)
	r.mu.Lock()
	defer r.mu.Unlock()
	e := r.entryLocked(k, perMinute)
	if len(e.holders) == 0 {
		// Nobody spends it at a rate of theirs: the check's config says.
		e.l.SetPerMinute(perMinute)
	}
	return e.l
}

// entryLocked is k's entry, created unheld at perMinute when there is none.
// An unheld entry is in use again: it is remembered idleLimiterTTL from now.
func (r *Registry) entryLocked(k limiterKey, perMinute int) *sharedLimiter {
	e, ok := r.entries[k]
	if !ok {
		e = newSharedLimiter(perMinute, r.clock)
		r.entries[k] = e
	}
	if len(e.holders) == 0 {
		e.idleSince = r.clock.now()
	}
	return e
}

// Follow records that scope (a mount's environment, the same across the
// mount's backend instances) spends the budget of (baseURL, identity) from
// now on. When the scope spent another budget before (its admin key set by
// hand, its base URL changed, its config deleted and created again, or the
// check of a new key, which goes to the same environment), that budget's
// last minute of requests and its pause count in this one: Heron counts one
// budget per environment, whatever key spends it. The budget is created
// unheld at perMinute when the registry has none. A grant the budget counts
// already is not counted twice, so following back and forth is safe.
func (r *Registry) Follow(scope, baseURL, identity string, perMinute int) {
	k := sharedKey(baseURL, identity)
	r.mu.Lock()
	defer r.mu.Unlock()
	e := r.entryLocked(k, perMinute)
	if prev, ok := r.spends[scope]; ok && prev != k {
		if old, ok := r.entries[prev]; ok {
			e.l.absorb(old.l)
		}
	}
	r.spends[scope] = k
}

// heldCount is how many budgets the registry holds for someone, after
// forgetting those idle since before now-idleLimiterTTL (tests).
func (r *Registry) heldCount(now time.Time) int {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.sweepIdleLocked(now)
	return len(r.entries)
}

// ProcessRegistry is the plugin process's registry, which every mount of
// the plugin in this process draws from.
func ProcessRegistry() *Registry { return processRegistry }

// absorb makes l count what o sent in the last window and keep o's pause:
// o is the budget l's holder spent under another name. A grant l already
// counts (taken from o before) is not counted again.
func (l *Limiter) absorb(o *Limiter) {
	if o == l {
		return
	}
	type grant struct {
		at time.Time
		id uint64
	}
	o.mu.Lock()
	theirs := make([]grant, len(o.sent))
	for i, d := range o.sent {
		theirs[i] = grant{o.epoch.Add(d), o.sentIDs[i]}
	}
	paused := o.pausedUntil
	o.mu.Unlock()

	l.mu.Lock()
	defer l.mu.Unlock()
	cutoff := l.clock.now().Add(-limiterWindow)
	have := make(map[uint64]bool, len(l.sentIDs))
	all := make([]grant, 0, len(l.sent)+len(theirs))
	for i, d := range l.sent {
		have[l.sentIDs[i]] = true
		all = append(all, grant{l.epoch.Add(d), l.sentIDs[i]})
	}
	for _, g := range theirs {
		if g.at.After(cutoff) && !have[g.id] {
			all = append(all, g)
		}
	}
	slices.SortStableFunc(all, func(a, b grant) int { return a.at.Compare(b.at) })
	l.sent, l.sentIDs = l.sent[:0], l.sentIDs[:0]
	for _, g := range all {
		l.sent = append(l.sent, g.at.Sub(l.epoch))
		l.sentIDs = append(l.sentIDs, g.id)
	}
	if paused.After(l.pausedUntil) {
		l.pausedUntil = paused
	}
}
