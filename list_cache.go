package heron

import (
	"context"
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
	now := b.wallNow()
	if maxAge > 0 {
		b.lists.mu.Lock()
		l := b.lists.lists[env]
		b.lists.mu.Unlock()
		if l != nil && now.Sub(l.at) <= maxAge {
			return l.keys, l.at, nil
		}
	}
	keys, err := client.ListKeys(ctx)
	if err != nil {
		return nil, time.Time{}, err
	}
	b.noteClock(env, client)
	b.lists.mu.Lock()
	if b.lists.lists == nil {
		b.lists.lists = map[string]*keyList{}
	}
	b.lists.lists[env] = &keyList{keys: keys, at: now}
	b.lists.mu.Unlock()
	return keys, now, nil
}

// forgetLists drops every cached list: what follows judges from Heron's
// lists as they are now.
func (b *heronBackend) forgetLists() {
	b.lists.mu.Lock()
	b.lists.lists = nil
	b.lists.mu.Unlock()
}

// forgetList drops env's cached list (its admin key or base URL changed).
func (b *heronBackend) forgetList(env string) {
	b.lists.mu.Lock()
	delete(b.lists.lists, env)
	b.lists.mu.Unlock()
}
