//go:build e2e

package e2e

import (
	"fmt"
	"net/http"
	"testing"
	"time"

	"github.com/heron-vault/vault-plugin-secrets-heron/herontest"
)

// emulator is an in-process Heron with one admin key per environment; its
// record of keys is the ground truth every test asserts against.
type emulator struct {
	*herontest.Server
	devKey  string
	prodKey string
}

func startEmulator(t *testing.T) *emulator {
	t.Helper()
	e, opts := newEmulator()
	e.Server = herontest.NewServer(opts)
	t.Cleanup(e.Close)
	e.dumpOnFailure(t)
	return e
}

// newEmulator returns an emulator with fresh admin keys and the options of
// the server to seed them with; the caller builds the server.
func newEmulator() (*emulator, herontest.Options) {
	e := &emulator{devKey: herontest.NewKeyToken(), prodKey: herontest.NewKeyToken()}
	return e, herontest.Options{
		Environments: map[string][]string{
			"development": {e.devKey},
			"production":  {e.prodKey},
		},
		// Heron's real limit is the engine's business, tested elsewhere; here it
		// would only make timing-sensitive tests flaky.
		RateLimitPerMinute: -1,
	}
}

// dumpOnFailure has e dumped if t fails, by a cleanup that runs before the
// ones registered earlier.
func (e *emulator) dumpOnFailure(t *testing.T) {
	t.Cleanup(func() {
		if t.Failed() {
			e.dump(t)
		}
	})
}

// dump logs the tail of what the emulator saw, to explain a failure.
func (e *emulator) dump(t *testing.T) {
	reqs := e.Requests()
	const tail = 40
	if len(reqs) > tail {
		t.Logf("emulator: %d requests, last %d:", len(reqs), tail)
		reqs = reqs[len(reqs)-tail:]
	}
	for _, r := range reqs {
		t.Logf("emulator: %s %s %s -> %d env=%q ua=%q", r.Time.Format("15:04:05.000"), r.Method, r.Path, r.Status, r.Environment, r.UserAgent)
	}
	for _, k := range e.Keys() {
		if k.CreatedBy == "" {
			continue
		}
		t.Logf("emulator key: %s %q env=%s active=%t deleted=%t", k.ID, k.Name, k.Environment, k.IsActive, k.Deleted)
	}
}

// hello calls the authenticated hello endpoint with token and returns the
// status: 200 proves a key works, 401 that it is deactivated or deleted.
func (e *emulator) hello(t *testing.T, token string) int {
	t.Helper()
	req, err := http.NewRequest(http.MethodGet, e.URL+"/api/hello_world/authenticated", nil)
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("x-api-key", token)
	req.Header.Set("User-Agent", testUserAgent)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatalf("hello: %v", err)
	}
	resp.Body.Close()
	return resp.StatusCode
}

func (e *emulator) requireWorks(t *testing.T, token string) {
	t.Helper()
	if got := e.hello(t, token); got != http.StatusOK {
		t.Fatalf("authenticated hello with key %s...: got %d, want 200", prefix(token), got)
	}
}

func (e *emulator) requireRejected(t *testing.T, token string) {
	t.Helper()
	if got := e.hello(t, token); got != http.StatusUnauthorized {
		t.Fatalf("authenticated hello with key %s...: got %d, want 401", prefix(token), got)
	}
}

func prefix(token string) string {
	if len(token) > 8 {
		return token[:8]
	}
	return token
}

func (e *emulator) key(t *testing.T, id string) herontest.KeyRecord {
	t.Helper()
	k, ok := e.Key(id)
	if !ok {
		t.Fatalf("emulator has no key %s", id)
	}
	return k
}

type keyState int

const (
	stateActive keyState = iota
	stateDeactivated
	stateDeleted
)

func (s keyState) String() string {
	return [...]string{"active", "deactivated", "deleted"}[s]
}

func stateOf(k herontest.KeyRecord) keyState {
	switch {
	case k.Deleted:
		return stateDeleted
	case !k.IsActive:
		return stateDeactivated
	}
	return stateActive
}

// waitState polls until key id reaches want; failing on a state that can
// never turn into want (deleted is final) makes the failure message precise.
func (e *emulator) waitState(t *testing.T, id string, want keyState, timeout time.Duration) herontest.KeyRecord {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		k := e.key(t, id)
		got := stateOf(k)
		if got == want {
			return k
		}
		if got == stateDeleted {
			t.Fatalf("key %s (%s) is deleted, want %s", id, k.Name, want)
		}
		if time.Now().After(deadline) {
			t.Fatalf("key %s (%s) still %s after %s, want %s", id, k.Name, got, timeout, want)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// keysLeft is nil once Heron has deleted every key in ids, else an error
// that counts the others, for eventually.
func (e *emulator) keysLeft(t *testing.T, ids []string) error {
	t.Helper()
	left := 0
	for _, id := range ids {
		if stateOf(e.key(t, id)) != stateDeleted {
			left++
		}
	}
	if left > 0 {
		return fmt.Errorf("%d of %d keys not deleted", left, len(ids))
	}
	return nil
}

// requireDeactivatedNotDeleted checks the outcome of a lease that ran out: the
// key is deactivated and no DELETE was ever sent for it, and it stays that way
// for a moment (an engine that deactivates and then deletes would pass an
// instantaneous check).
func (e *emulator) requireDeactivatedNotDeleted(t *testing.T, id, token string, timeout time.Duration) herontest.KeyRecord {
	t.Helper()
	e.waitState(t, id, stateDeactivated, timeout)
	time.Sleep(time.Second)
	k := e.key(t, id)
	if got := stateOf(k); got != stateDeactivated {
		t.Fatalf("key %s: %s a second after deactivation, want it to stay deactivated (not deleted)", id, got)
	}
	if n := e.CountRequests(http.MethodDelete, "/api/credentials/keys/"+id, ""); n != 0 {
		t.Fatalf("key %s: engine sent %d DELETE requests for a lease that ran out, want 0", id, n)
	}
	if token != "" {
		e.requireRejected(t, token)
	}
	return k
}

// engineRequests returns the requests the engine sent (everything but the
// suite's own hello calls).
func (e *emulator) engineRequests() []herontest.RequestRecord {
	var out []herontest.RequestRecord
	for _, r := range e.Requests() {
		if r.UserAgent != testUserAgent {
			out = append(out, r)
		}
	}
	return out
}

func describe(r herontest.RequestRecord) string {
	return fmt.Sprintf("%s %s -> %d (User-Agent %q)", r.Method, r.Path, r.Status, r.UserAgent)
}
