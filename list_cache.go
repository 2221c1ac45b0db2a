package heron

import (
	"context"
	"errors"
	"slices"
	"sync"
	"time"

	"github.com/heron-vault/vault-plugin-secrets-heron/heronapi"
)

// listCacheTTL is how long a list of an environment's keys may serve reads
// that tolerate a few seconds of staleness: an auditor reading 200 keys/<id>
// in a row, or the rollback of many write-ahead records left by one Heron
// incident, costs a handful of list requests instead of hundreds. Anything
// that decides whether a key exists right after creating it lists afresh.
const listCacheTTL = 10 * time.Second

// keyList is one answer of GET /api/credentials/keys and when it was asked.
type keyList struct {
	keys []heronapi.Key
	at   time.Time
}

// listCache holds the latest list per environment, and how far Heron's
// clock was from the engine's at the latest answer.
type listCache struct {
	mu      sync.Mutex
	lists   map[string]*keyList
	offsets map[string]time.Duration
	// fetching is the list being asked for an environment on behalf of
	// readers that take a cached one: any number of them waiting at once
	// (inventory/<env> and keys/<id> readers) cost one request.
	fetching map[string]*listFetch
	// forgotten counts the times lists were dropped: a list asked before a
	// drop (with an admin key or base URL that may have changed since) is
	// not kept.
	forgotten uint64
	// created holds, per environment, the keys the engine created after its
	// cached list was asked (ids, names and prefixes only, never a token),
	// so that readers of that list can add them (createdSince).
	created map[string][]heronapi.Key
	// changed is when the engine last changed a key of the environment: a
	// list asked before that may not show the change, and is not kept.
	changed map[string]time.Time
}

// listFetch is one list request that cached readers share.
type listFetch struct {
	done chan struct{}
	keys []heronapi.Key
	at   time.Time
	err  error
}

// noteClock records Heron's clock offset from the engine's, as seen on the
// answer client just got (its Date header, to the second).
func (b *heronBackend) noteClock(env string, client heronapi.API) {
	d := client.ServerDate()
	if d.IsZero() {
		return
	}
	off := d.Sub(b.wallNow()).Truncate(time.Second)
	b.lists.mu.Lock()
	if b.lists.offsets == nil {
		b.lists.offsets = map[string]time.Duration{}
	}
	b.lists.offsets[env] = off
	b.lists.mu.Unlock()
}

// clockOffset is the latest measured offset of Heron's clock for env.
func (b *heronBackend) clockOffset(env string) (time.Duration, bool) {
	b.lists.mu.Lock()
	defer b.lists.mu.Unlock()
	off, ok := b.lists.offsets[env]
	return off, ok
}

// listKeys returns env's keys, from a list no older than maxAge when there
// is one (maxAge 0: always fresh), and when that list was asked (engine wall
// clock, taken before the request so that nothing listed is newer than it).
func (b *heronBackend) listKeys(ctx context.Context, client heronapi.API, env string, maxAge time.Duration) ([]heronapi.Key, time.Time, error) {
	if maxAge <= 0 {
		return b.fetchKeys(ctx, client, env)
	}
	for {
		now := b.wallNow()
		b.lists.mu.Lock()
		if l := b.lists.lists[env]; l != nil && now.Sub(l.at) <= maxAge {
			b.lists.mu.Unlock()
			return l.keys, l.at, nil
		}
		if f := b.lists.fetching[env]; f != nil {
			b.lists.mu.Unlock()
			select {
			case <-f.done:
			case <-ctx.Done():
				return nil, time.Time{}, ctx.Err()
			}
			if f.err != nil && ctx.Err() == nil && (errors.Is(f.err, context.Canceled) || errors.Is(f.err, context.DeadlineExceeded)) {
				// The request that fetched gave up, not Heron: ask again.
				continue
			}
			return f.keys, f.at, f.err
		}
		f := &listFetch{done: make(chan struct{})}
		if b.lists.fetching == nil {
			b.lists.fetching = map[string]*listFetch{}
		}
		b.lists.fetching[env] = f
		b.lists.mu.Unlock()

		f.keys, f.at, f.err = b.fetchKeys(ctx, client, env)
		b.lists.mu.Lock()
		delete(b.lists.fetching, env)
		b.lists.mu.Unlock()
		close(f.done)
		return f.keys, f.at, f.err
	}
}

// fetchKeys lists env's keys now and keeps the answer for cached readers.
func (b *heronBackend) fetchKeys(ctx context.Context, client heronapi.API, env string) ([]heronapi.Key, time.Time, error) {
	b.lists.mu.Lock()
	forgotten := b.lists.forgotten
	b.lists.mu.Unlock()
	now := b.wallNow()
	keys, err := client.ListKeys(ctx)
	if err != nil {
		return nil, time.Time{}, err
	}
	b.noteClock(env, client)
	b.lists.mu.Lock()
	if b.lists.lists == nil {
		b.lists.lists = map[string]*keyList{}
	}
	if b.lists.forgotten == forgotten && !b.lists.changed[env].After(now) {
		b.lists.lists[env] = &keyList{keys: keys, at: now}
		// No reader takes a list older than listCacheTTL: drop it then,
		// rather than hold 100,000 keys until the next list replaces it.
		time.AfterFunc(listCacheTTL+time.Second, func() { b.dropListAskedAt(env, now) })
		// Keys created before this list was asked are in it.
		var later []heronapi.Key
		for _, k := range b.lists.created[env] {
			if !k.Created.Before(now) {
				later = append(later, k)
			}
		}
		if len(later) == 0 {
			delete(b.lists.created, env)
		} else {
			b.lists.created[env] = later
		}
	}
	b.lists.mu.Unlock()
	return keys, now, nil
}

// dropListAskedAt drops env's cached list if it is (a patch of) the one
// asked at at.
func (b *heronBackend) dropListAskedAt(env string, at time.Time) {
	b.lists.mu.Lock()
	defer b.lists.mu.Unlock()
	if l := b.lists.lists[env]; l != nil && l.at.Equal(at) {
		delete(b.lists.lists, env)
	}
}

// forgetLists drops every cached list: what follows judges from Heron's
// lists as they are now.
func (b *heronBackend) forgetLists() {
	b.lists.mu.Lock()
	b.lists.lists = nil
	b.lists.created = nil
	b.lists.forgotten++
	b.lists.mu.Unlock()
}

// forgetList drops env's cached list (its admin key or base URL changed).
func (b *heronBackend) forgetList(env string) {
	b.lists.mu.Lock()
	delete(b.lists.lists, env)
	delete(b.lists.created, env)
	b.lists.forgotten++
	b.lists.mu.Unlock()
}

// noteCreated records that the engine created c's key (an issuance or a
// rotation): while env's cached list is older than the key, readers of the
// list add it with createdSince. Nothing is kept when no list is cached.
func (b *heronBackend) noteCreated(c keyChange) {
	if c.KeyID == "" || c.Environment == "" {
		return
	}
	now := b.wallNow()
	b.lists.mu.Lock()
	defer b.lists.mu.Unlock()
	if l := b.lists.lists[c.Environment]; l == nil || now.Sub(l.at) > listCacheTTL {
		return
	}
	if b.lists.created == nil {
		b.lists.created = map[string][]heronapi.Key{}
	}
	b.lists.created[c.Environment] = append(b.lists.created[c.Environment], heronapi.Key{
		ID: c.KeyID, Name: c.KeyName, TokenPrefix: c.TokenPrefix, Created: now, IsActive: true,
	})
}

// createdSince returns the keys the engine created in env after at (the
// time a cached list was asked), which that list cannot hold.
func (b *heronBackend) createdSince(env string, at time.Time) []heronapi.Key {
	b.lists.mu.Lock()
	defer b.lists.mu.Unlock()
	var out []heronapi.Key
	for _, k := range b.lists.created[env] {
		if !k.Created.Before(at) {
			out = append(out, k)
		}
	}
	return out
}

// patchList applies the engine's own change of one key to env's cached list
// (a copy: readers may hold the old one), so that a read served from the
// cache never contradicts what the engine itself just did. Patched, not
// dropped: the rollback of many creations deletes keys one after another,
// and each would otherwise cost a fresh list.
func (b *heronBackend) patchList(env string, patch func([]heronapi.Key) []heronapi.Key) {
	b.lists.mu.Lock()
	defer b.lists.mu.Unlock()
	if b.lists.changed == nil {
		b.lists.changed = map[string]time.Time{}
	}
	b.lists.changed[env] = b.wallNow()
	l := b.lists.lists[env]
	if l == nil {
		return
	}
	b.lists.lists[env] = &keyList{keys: patch(slices.Clone(l.keys)), at: l.at}
}

// listPatcher is an environment's client that patches the cached list with
// every change it makes (see patchList).
type listPatcher struct {
	heronapi.API
	b   *heronBackend
	env string
}

var _ heronapi.KeyWalker = (*listPatcher)(nil)

// patchingClient wraps api so that its changes patch env's cached list.
func (b *heronBackend) patchingClient(env string, api heronapi.API) heronapi.API {
	return &listPatcher{API: api, b: b, env: env}
}

func (p *listPatcher) CreateKey(ctx context.Context, name string) (*heronapi.Key, error) {
	k, err := p.API.CreateKey(ctx, name)
	if err == nil {
		listed := *k
		listed.Token = "" // a list never holds a token, nor does the cache
		p.b.patchList(p.env, func(keys []heronapi.Key) []heronapi.Key {
			// An answer naming a key already listed (a replay, refused by
			// the caller) adds nothing.
			if slices.ContainsFunc(keys, func(k heronapi.Key) bool { return k.ID == listed.ID }) {
				return keys
			}
			return append(keys, listed)
		})
	}
	return k, err
}

func (p *listPatcher) DeactivateKey(ctx context.Context, id string) error {
	err := p.API.DeactivateKey(ctx, id)
	p.patchActive(id, false, err)
	return err
}

func (p *listPatcher) ActivateKey(ctx context.Context, id string) error {
	err := p.API.ActivateKey(ctx, id)
	p.patchActive(id, true, err)
	return err
}

func (p *listPatcher) DeleteKey(ctx context.Context, id string) error {
	err := p.API.DeleteKey(ctx, id)
	if err == nil || errors.Is(err, heronapi.ErrNotFound) {
		p.remove(id)
	}
	return err
}

// patchActive sets id's is_active after a PUT that succeeded; a 404 says
// the key is gone (or not visible to this key): out of the list either way.
func (p *listPatcher) patchActive(id string, active bool, err error) {
	switch {
	case err == nil:
		p.b.patchList(p.env, func(keys []heronapi.Key) []heronapi.Key {
			for i := range keys {
				if keys[i].ID == id {
					keys[i].IsActive = active
				}
			}
			return keys
		})
	case errors.Is(err, heronapi.ErrNotFound):
		p.remove(id)
	}
}

func (p *listPatcher) remove(id string) {
	p.b.patchList(p.env, func(keys []heronapi.Key) []heronapi.Key {
		return slices.DeleteFunc(keys, func(k heronapi.Key) bool { return k.ID == id })
	})
}

// EachKey keeps the wrapped client's streaming list.
func (p *listPatcher) EachKey(ctx context.Context, fn func(heronapi.Key)) error {
	return heronapi.EachKey(ctx, p.API, fn)
}

// CloseIdleConnections reaches the wrapped client's pool.
func (p *listPatcher) CloseIdleConnections() {
	if c, ok := p.API.(interface{ CloseIdleConnections() }); ok {
		c.CloseIdleConnections()
	}
}
