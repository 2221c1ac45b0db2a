package heronapi

import (
	"context"
	"net"
	"net/http"
	"net/http/httptest"
	"runtime"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// Concurrent calls keep their connections: after n calls in flight at once
// (n connections), the next n calls reuse them all instead of dialing again.
// The engine issues for many clients at once (16 in the benchmark, Vault's
// revocation workers up to 200), and a new connection to Heron costs a TCP
// and a TLS handshake, two to three round trips on a real network. Before
// the fix, cleanhttp's pooled transport kept only GOMAXPROCS+1 idle
// connections per host: on 2 cores, 13 of every 16 connections were closed
// after their answer and dialed again by the next call (the benchmark's
// emulator counted 26 to 49 new connections per 100 issuances at 16 clients
// with 5 to 60 ms between Vault and Heron).
func TestConcurrentCallsReuseConnections(t *testing.T) {
	t.Parallel()
	n := min(max(32, runtime.GOMAXPROCS(0)+2), maxIdleConnsPerHost)

	var dialed atomic.Int64
	var mu sync.Mutex
	arrived := 0
	gate := make(chan struct{})
	srv := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		// Hold every answer until n requests are in flight: n connections.
		mu.Lock()
		g := gate
		if arrived++; arrived%n == 0 {
			close(gate)
			gate = make(chan struct{})
		}
		mu.Unlock()
		select {
		case <-g:
		case <-time.After(5 * time.Second):
		}
		writeJSON(w, 200, map[string]any{"hello": "x"})
	}))
	srv.Config.ConnState = func(_ net.Conn, s http.ConnState) {
		if s == http.StateNew {
			dialed.Add(1)
		}
	}
	srv.Start()
	t.Cleanup(srv.Close)
	c := newTestClient(t, srv.URL, func(c *Config) { c.Limiter = NewLimiter(100000) })

	round := func() {
		var wg sync.WaitGroup
		for range n {
			wg.Add(1)
			go func() {
				defer wg.Done()
				noErr(t, c.Hello(context.Background()))
			}()
		}
		wg.Wait()
	}
	round()
	if got := dialed.Load(); got != int64(n) {
		t.Fatalf("%d calls in flight at once: %d connections, want %d", n, got, n)
	}
	round()
	round()
	if got := dialed.Load(); got != int64(n) {
		t.Fatalf("three rounds of %d concurrent calls opened %d connections, want the first round's %d kept alive and reused", n, got, n)
	}
}
