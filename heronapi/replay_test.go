package heronapi

import (
	"context"
	"net/http"
	"sync/atomic"
	"testing"
	"time"
)

// Every request Heron receives counts against the budget, and Go's
// transport sends a GET again by itself when a kept-alive connection closes
// after the request went out but before any answer (a gateway that
// processed it and dropped the connection): such a request never waited for
// a slot. The client's own retry does, so Heron sees exactly as many
// requests as the limiter granted.
func TestClient_EveryRequestHeronSeesHadASlot(t *testing.T) {
	f := newFake(t, func(w http.ResponseWriter, r *http.Request, n int) {
		if n == 1 {
			// Processed, then the connection dropped without an answer.
			hj, ok := w.(http.Hijacker)
			if !ok {
				t.Error("no hijacker")
				return
			}
			conn, _, err := hj.Hijack()
			if err == nil {
				conn.Close()
			}
			return
		}
		writeJSON(w, http.StatusOK, map[string]any{"keys": []any{}})
	})
	lim := NewLimiter(100000)
	var grants atomic.Int64
	lim.mu.Lock()
	lim.onGrant = func(time.Time) { grants.Add(1) }
	lim.mu.Unlock()
	c := newTestClient(t, f.URL(), func(cfg *Config) { cfg.Limiter = lim })
	ctx := context.Background()
	if _, err := c.ListKeys(ctx); err != nil { // opens the kept-alive connection
		t.Fatal(err)
	}
	_, _ = c.ListKeys(ctx) // its first attempt is dropped after processing
	if got, want := len(f.requests()), int(grants.Load()); got != want {
		t.Fatalf("Heron received %d requests, the limiter granted %d", got, want)
	}
}
