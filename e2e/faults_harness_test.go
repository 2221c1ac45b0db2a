//go:build e2e

package e2e

import (
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	vaultapi "github.com/hashicorp/vault/api"

	"github.com/heron-vault/vault-plugin-secrets-heron/herontest"
)

// Helpers of the faults_*_test.go files. Names carry a "fault" prefix so
// they cannot clash with helpers other files of the package may add.

// createHold holds the answers to key-creating POSTs after the emulator has
// processed them. herontest's Faults.Latency runs before processing, and
// FaultProcessThenDrop answers at once, so neither gives a window in which
// the key exists while the engine still waits for its token: the window a
// plugin crash has to fall into to leave an orphan behind.
type createHold struct {
	armed   atomic.Int64
	held    chan heldCreate
	release chan struct{}
	once    sync.Once
}

// heldCreate is a key that Heron created and whose answer is being held.
type heldCreate struct {
	ID   string `json:"heron_id"`
	Name string `json:"name"`
}

// arm makes the next n successful creations be held.
func (h *createHold) arm(n int) { h.armed.Store(int64(n)) }

func (h *createHold) unblock() { h.once.Do(func() { close(h.release) }) }

func (h *createHold) wrap(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method != http.MethodPost || r.URL.Path != "/api/credentials/keys" || h.armed.Load() <= 0 {
			next.ServeHTTP(w, r)
			return
		}
		rec := httptest.NewRecorder()
		next.ServeHTTP(rec, r)
		var k heldCreate
		if rec.Code != http.StatusCreated || json.Unmarshal(rec.Body.Bytes(), &k) != nil || h.armed.Add(-1) < 0 {
			faultCopyResponse(w, rec)
			return
		}
		select {
		case h.held <- k:
		default:
		}
		select {
		case <-r.Context().Done():
			// The client (the plugin) is gone: there is nobody to answer.
			panic(http.ErrAbortHandler)
		case <-h.release:
			faultCopyResponse(w, rec)
		}
	})
}

func faultCopyResponse(w http.ResponseWriter, rec *httptest.ResponseRecorder) {
	for k, vs := range rec.Header() {
		w.Header()[k] = vs
	}
	w.WriteHeader(rec.Code)
	_, _ = w.Write(rec.Body.Bytes())
}

// startFaultHoldingEmulator is startEmulator with a createHold in front of
// the API. The emulator is mounted on a server of the test's own, which is
// why it is built unstarted.
func startFaultHoldingEmulator(t *testing.T) (*emulator, *createHold) {
	t.Helper()
	e, opts := newEmulator()
	e.Server = herontest.NewUnstartedServer(opts)
	h := &createHold{held: make(chan heldCreate, 16), release: make(chan struct{})}
	ts := httptest.NewServer(h.wrap(e.Server.Handler()))
	e.URL = ts.URL
	// Cleanups run last-in first-out: release held answers before the
	// servers wait for their handlers.
	t.Cleanup(e.Close)
	t.Cleanup(ts.Close)
	t.Cleanup(h.unblock)
	e.dumpOnFailure(t)
	return e, h
}

// faultAPIClient is a Vault API client that never retries, to probe whether
// the plugin serves again: the default client re-sends a request answered
// 5xx, which would hide the failure the probe is looking for.
func faultAPIClient(t *testing.T, v *vault) *vaultapi.Client {
	t.Helper()
	return v.newAPIClient(func(cfg *vaultapi.Config) {
		cfg.MaxRetries = 0
		cfg.Timeout = 3 * time.Minute
	})
}

// faultIssuedLive returns the live keys of env that the engine created (the
// seeded admin keys excluded), by id.
func faultIssuedLive(e *emulator, env string) map[string]herontest.KeyRecord {
	out := map[string]herontest.KeyRecord{}
	for _, k := range e.LiveKeys(env) {
		if k.CreatedBy != "" {
			out[k.ID] = k
		}
	}
	return out
}

// faultRequireNoUntracked fails unless every live key the engine created in
// env is a key the engine tracks (keys/) or that a client holds a lease for.
func faultRequireNoUntracked(t *testing.T, e *emulator, v *vault, env string, leases []lease) {
	t.Helper()
	known := map[string]bool{}
	for id := range v.trackedKeys() {
		known[id] = true
	}
	for _, l := range leases {
		known[l.Data.KeyID] = true
	}
	var orphans []string
	for id, k := range faultIssuedLive(e, env) {
		if !known[id] {
			orphans = append(orphans, fmt.Sprintf("%s (%q, active=%t)", id, k.Name, k.IsActive))
		}
	}
	if len(orphans) > 0 {
		sort.Strings(orphans)
		t.Errorf("%d live keys in %s that neither the engine tracks nor a lease holds:\n  %s",
			len(orphans), env, strings.Join(orphans, "\n  "))
	}
}

// faultKillPlugin SIGKILLs every heron plugin process of v and returns
// their ids; it fails the test if there is none to kill.
func faultKillPlugin(t *testing.T, v *vault) []int {
	t.Helper()
	pids := v.pluginPIDs(t)
	if len(pids) == 0 {
		t.Fatal("no heron plugin process under Vault to kill")
	}
	for _, pid := range pids {
		if err := syscall.Kill(pid, syscall.SIGKILL); err != nil {
			t.Fatalf("kill -9 %d: %v", pid, err)
		}
	}
	return pids
}

// faultLeaseExists reports whether Vault still knows leaseID.
func faultLeaseExists(v *vault, leaseID string) bool {
	v.t.Helper()
	return v.cliAs("", "lease", "lookup", leaseID).code == 0
}
