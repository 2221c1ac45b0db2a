package herontest

import (
	"fmt"
	"sort"
	"strings"
	"time"
)

// KeyRecord is the emulator's full view of one key, token included.
type KeyRecord struct {
	ID          string `json:"heron_id"`
	Name        string `json:"name"`
	Token       string `json:"token"`
	TokenPrefix string `json:"token_prefix"`
	Environment string `json:"environment"`
	// User is the Heron user the key belongs to, within Environment: DefaultUser
	// for seeded keys and AddAdminKey, the id AddUser made for that user's keys,
	// and the creating key's user for keys created through the API.
	User    string    `json:"user"`
	Created time.Time `json:"created"`
	// IsActive is false once deactivated (and stays as it was when deleted).
	IsActive      bool       `json:"is_active"`
	Deleted       bool       `json:"deleted"`
	DeletedAt     time.Time  `json:"deleted_at,omitzero"`
	DeactivatedAt time.Time  `json:"deactivated_at,omitzero"` // last deactivation; zero if never
	LastUsed      *time.Time `json:"last_used"`
	// CreatedBy is the heron_id of the key that created it, "" for seeded keys.
	CreatedBy string `json:"created_by"`
}

// RequestRecord is one request received by the API (not by /_emulator/).
type RequestRecord struct {
	// Time is when the request arrived, before any injected latency.
	Time   time.Time `json:"time"`
	Method string    `json:"method"`
	Path   string    `json:"path"`
	// Route is the matched endpoint pattern, e.g. "/api/credentials/keys/{heron_id}",
	// "" for unknown paths; handy for grouping requests whose paths carry ids.
	Route string `json:"route"`
	// Environment is the environment of the x-api-key when it is an active key,
	// "" when the request carried no key or an unknown/deleted/deactivated one.
	Environment string `json:"environment"`
	// User is the user of the x-api-key when it is an active key, else "".
	User string `json:"user"`
	// Status is the status sent; 0 when no response was sent (dropped connection,
	// client gone during injected latency, or still in flight).
	Status int `json:"status"`
	// Processed is the status the endpoint produced when the request was
	// processed, whatever was then sent (it differs from Status for the
	// process-then-* faults, dropped answers and late processing); 0 when the
	// request was not processed (401, 429, unprocessed faults) or not yet (a
	// late action still pending, or dropped by Close).
	Processed int    `json:"processed,omitempty"`
	UserAgent string `json:"user_agent"`
	// KeyPrefix is at most the first 8 characters of x-api-key, never more.
	KeyPrefix string `json:"key_prefix"`
	// Dropped is set when the connection was closed on purpose instead of answering.
	Dropped bool `json:"dropped,omitempty"`
	// Injected is set when the answer (or drop) came from fault injection, Force429 included.
	Injected bool `json:"injected,omitempty"`
}

// storeTime normalises a timestamp to what the API can express: UTC with
// microsecond precision and no monotonic reading, so that KeyRecord times compare
// equal to what a client parses out of the JSON.
func storeTime(t time.Time) time.Time { return t.UTC().Truncate(time.Microsecond) }

// DefaultUser is the user of every key seeded through Options.Environments or
// added with AddAdminKey, in each environment (users of different environments
// are different users even when their ids are equal).
const DefaultUser = "default"

// addKeyLocked creates a key; the caller holds s.mu (or owns s exclusively) and
// guarantees token is unused.
func (s *Server) addKeyLocked(env, user, name, token, createdBy string) *KeyRecord {
	k := &KeyRecord{
		ID:          newHeronID(),
		Name:        name,
		Token:       token,
		TokenPrefix: token[:8],
		Environment: env,
		User:        user,
		Created:     storeTime(s.now()),
		IsActive:    true,
		CreatedBy:   createdBy,
	}
	for s.byID[k.ID] != nil {
		k.ID = newHeronID()
	}
	s.envs[env] = true
	s.keys = append(s.keys, k)
	s.byID[k.ID] = k
	s.byToken[token] = k
	return k
}

// createKey adds a key with a fresh token, retrying the (astronomically unlikely)
// token collision because a duplicate token would authenticate as two keys.
func (s *Server) createKey(env, user, name, createdBy string) KeyRecord {
	for {
		tok := NewKeyToken()
		s.mu.Lock()
		if user == "" {
			// AddUser: a fresh id, unique across environments so that a
			// user id alone never names two users.
			s.nextUser++
			user = fmt.Sprintf("user-%d", s.nextUser)
		}
		if s.byToken[tok] == nil {
			k := s.addKeyLocked(env, user, name, tok, createdBy)
			out := copyKey(k)
			s.mu.Unlock()
			return out
		}
		s.mu.Unlock()
	}
}

// AddAdminKey creates and returns the token of a new active key of env's
// DefaultUser, creating the environment if needed. The key counts as seeded
// (CreatedBy "").
func (s *Server) AddAdminKey(env string) string {
	if env == "" {
		panic("herontest: AddAdminKey with empty environment name")
	}
	return s.createKey(env, DefaultUser, "seeded admin key", "").Token
}

// AddUser creates a new Heron user in env (creating the environment if needed)
// and returns the token of its first key, an active seeded key (CreatedBy "").
// The user has its own key list: it neither lists nor manages the keys of
// DefaultUser or of any other user, and they cannot see or manage its keys.
// KeyByToken(token).User is the new user's id.
func (s *Server) AddUser(env string) string {
	if env == "" {
		panic("herontest: AddUser with empty environment name")
	}
	return s.createKey(env, "", "seeded admin key", "").Token
}

// KeysOfUser returns every key of user in env, deleted ones included, in
// creation order.
func (s *Server) KeysOfUser(env, user string) []KeyRecord {
	return s.filterKeys(func(k *KeyRecord) bool { return k.Environment == env && k.User == user })
}

// Environments returns the known environment names, sorted.
func (s *Server) Environments() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make([]string, 0, len(s.envs))
	for e := range s.envs {
		out = append(out, e)
	}
	sort.Strings(out)
	return out
}

func copyKey(k *KeyRecord) KeyRecord {
	c := *k
	if k.LastUsed != nil {
		t := *k.LastUsed
		c.LastUsed = &t
	}
	return c
}

func (s *Server) filterKeys(keep func(*KeyRecord) bool) []KeyRecord {
	s.mu.Lock()
	defer s.mu.Unlock()
	var out []KeyRecord
	for _, k := range s.keys {
		if keep(k) {
			out = append(out, copyKey(k))
		}
	}
	return out
}

// Keys returns every key ever created, seeded and deleted ones included, in creation order.
func (s *Server) Keys() []KeyRecord {
	return s.filterKeys(func(*KeyRecord) bool { return true })
}

// KeysIn returns every key of env, deleted ones included, in creation order.
func (s *Server) KeysIn(env string) []KeyRecord {
	return s.filterKeys(func(k *KeyRecord) bool { return k.Environment == env })
}

// LiveKeys returns the keys of env that are not deleted (active or deactivated),
// whatever their user: what GET /api/credentials/keys lists for a key of env's
// DefaultUser when AddUser was never called.
func (s *Server) LiveKeys(env string) []KeyRecord {
	return s.filterKeys(func(k *KeyRecord) bool { return k.Environment == env && !k.Deleted })
}

// Key returns the key with this heron_id, deleted or not.
func (s *Server) Key(id string) (KeyRecord, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	k := s.byID[id]
	if k == nil {
		return KeyRecord{}, false
	}
	return copyKey(k), true
}

// KeyByToken returns the key with this token, deleted or not.
func (s *Server) KeyByToken(token string) (KeyRecord, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	k := s.byToken[token]
	if k == nil {
		return KeyRecord{}, false
	}
	return copyKey(k), true
}

// Requests returns a copy of every request received since the last ResetRequests,
// in arrival order, 429s and injected faults included.
func (s *Server) Requests() []RequestRecord {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make([]RequestRecord, len(s.requests))
	for i, r := range s.requests {
		out[i] = *r
	}
	return out
}

// CountRequests counts recorded requests; "" matches anything for each argument
// and pathPrefix is matched with strings.HasPrefix.
func (s *Server) CountRequests(method, pathPrefix, env string) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	n := 0
	for _, r := range s.requests {
		if (method == "" || r.Method == method) &&
			strings.HasPrefix(r.Path, pathPrefix) &&
			(env == "" || r.Environment == env) {
			n++
		}
	}
	return n
}

// MaxInWindow returns the largest number of requests of env ("" = all requests)
// that arrived within any window of the given length, a window holding the
// requests that arrived less than window before the latest of them, as the rate
// limiter counts. Every recorded request counts, 429s included: the point is to
// prove what the client sent, not what the emulator let through.
func (s *Server) MaxInWindow(env string, window time.Duration) int {
	s.mu.Lock()
	var ts []time.Time
	for _, r := range s.requests {
		if env == "" || r.Environment == env {
			ts = append(ts, r.Time)
		}
	}
	s.mu.Unlock()
	return MaxInWindowOf(ts, window)
}

// MaxInWindowOf is the largest number of the times ts (sorted in place) that
// fall in any sliding window of the given length: how a budget over a sliding
// minute is judged, for any chosen set of requests.
func MaxInWindowOf(ts []time.Time, window time.Duration) int {
	if window <= 0 {
		return 0
	}
	sort.Slice(ts, func(i, j int) bool { return ts[i].Before(ts[j]) })
	best, lo := 0, 0
	for hi := range ts {
		for ts[hi].Sub(ts[lo]) >= window {
			lo++
		}
		best = max(best, hi-lo+1)
	}
	return best
}

// ResetRequests forgets the recorded requests. It does not reset the rate
// limiter: Heron's budget does not care what a test chose to forget.
func (s *Server) ResetRequests() {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.requests = nil
}
