package heron

import (
	"context"
	"io"
	"sync/atomic"
	"testing"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/hashicorp/vault/sdk/logical"

	"github.com/heron-vault/vault-plugin-secrets-heron/herontest"
)

// Benchmarks of the engine's handlers, in process: the backend talks to the
// emulator over loopback HTTP, its storage is in memory, and no Vault (no
// gRPC, no lease registration) sits in front. With -benchmem the figures
// include what the in-process emulator allocates to answer (its request log
// and key store grow with b.N); BenchmarkIssueCredsBaseline is the same POST
// without the engine, so IssueCreds minus Baseline is the handler's own cost.
//
//	go test -run '^$' -bench . -benchmem .

// benchEnv is the test harness (newTestEnv) with its storage counted.
type benchEnv struct {
	b   *heronBackend
	s   *benchStorage
	srv *herontest.Server
	key string
}

// benchStorage counts the storage operations of the handlers: in a real
// Vault each one is a gRPC round trip from the plugin to Vault, which is
// most of what an issuance costs there (see BENCHMARKS.md).
type benchStorage struct {
	logical.Storage
	gets, puts, deletes, lists atomic.Int64
}

func (s *benchStorage) Get(ctx context.Context, key string) (*logical.StorageEntry, error) {
	s.gets.Add(1)
	return s.Storage.Get(ctx, key)
}

func (s *benchStorage) Put(ctx context.Context, e *logical.StorageEntry) error {
	s.puts.Add(1)
	return s.Storage.Put(ctx, e)
}

func (s *benchStorage) Delete(ctx context.Context, key string) error {
	s.deletes.Add(1)
	return s.Storage.Delete(ctx, key)
}

func (s *benchStorage) List(ctx context.Context, prefix string) ([]string, error) {
	s.lists.Add(1)
	return s.Storage.List(ctx, prefix)
}

// reset zeroes the counters before the timed loop.
func (s *benchStorage) reset() {
	s.gets.Store(0)
	s.puts.Store(0)
	s.deletes.Store(0)
	s.lists.Store(0)
}

// report adds the storage operations per op to the benchmark's line.
func (s *benchStorage) report(b *testing.B) {
	n := float64(b.N)
	b.ReportMetric(float64(s.gets.Load())/n, "gets/op")
	b.ReportMetric(float64(s.puts.Load())/n, "puts/op")
	b.ReportMetric(float64(s.deletes.Load())/n, "deletes/op")
	b.ReportMetric(float64(s.lists.Load())/n, "lists/op")
}

func newBenchEnv(tb testing.TB) *benchEnv {
	tb.Helper()
	var storage *benchStorage
	env := newTestEnv(tb,
		withStorage(func(s logical.Storage) logical.Storage { storage = &benchStorage{Storage: s}; return storage }),
		// What the plugin pays in production: info-level JSON logs, one line
		// per issuance and revocation, written (here to nowhere).
		withLogger(hclog.New(&hclog.LoggerOptions{Level: hclog.Info, Output: io.Discard, JSONFormat: true})),
		withUnlimitedBudget(),
		withoutLeftoverCheck(),
	)
	e := &benchEnv{b: env.b, s: storage, srv: env.srv, key: env.adminKey["development"]}
	e.must(tb, logical.CreateOperation, "config/development", map[string]any{
		"admin_api_key":         e.key,
		"base_url":              e.srv.URL,
		"rate_limit_per_minute": maxRateLimitPerMinute,
	})
	e.must(tb, logical.CreateOperation, "roles/bench", map[string]any{"environment": "development", "ttl": "1h"})
	return e
}

func (e *benchEnv) must(tb testing.TB, op logical.Operation, path string, data map[string]any) *logical.Response {
	tb.Helper()
	resp, err := e.b.HandleRequest(context.Background(), &logical.Request{
		Operation: op, Path: path, Data: data, Storage: e.s, DisplayName: "token-bench",
	})
	if err == nil && resp != nil && resp.IsError() {
		err = resp.Error()
	}
	if err != nil {
		tb.Fatalf("%s %s: %v", op, path, err)
	}
	return resp
}

// issue reads creds/bench and returns the lease as Vault would register it.
func (e *benchEnv) issue(tb testing.TB) *logical.Secret {
	resp := e.must(tb, logical.ReadOperation, "creds/bench", nil)
	if resp.Secret == nil {
		tb.Fatal("creds/bench: no lease")
	}
	resp.Secret.IssueTime = time.Now()
	return resp.Secret
}

// BenchmarkIssueCreds is one `vault read heron/creds/<role>` inside the
// plugin: role and config reads, write-ahead record, the POST, tracking.
func BenchmarkIssueCreds(b *testing.B) {
	e := newBenchEnv(b)
	e.issue(b) // warm the client and its connection
	e.s.reset()
	b.ReportAllocs()
	for b.Loop() {
		e.issue(b)
	}
	e.s.report(b)
}

// BenchmarkIssueCredsBaseline is the POST of BenchmarkIssueCreds alone,
// through the engine's own Heron client against the same emulator.
func BenchmarkIssueCredsBaseline(b *testing.B) {
	e := newBenchEnv(b)
	c, err := e.b.getClient(context.Background(), e.s, "development")
	if err != nil {
		b.Fatal(err)
	}
	ctx := context.Background()
	if _, err := c.CreateKey(ctx, "warm-up"); err != nil {
		b.Fatal(err)
	}
	b.ReportAllocs()
	for b.Loop() {
		if _, err := c.CreateKey(ctx, "vault-bench-token-bench-1764098012-Ab3dE9xQ"); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkRenew is one lease renewal: no upstream call.
func BenchmarkRenew(b *testing.B) {
	e := newBenchEnv(b)
	secret := e.issue(b)
	req := &logical.Request{Operation: logical.RenewOperation, Path: "creds/bench", Storage: e.s}
	ctx := context.Background()
	e.s.reset()
	b.ReportAllocs()
	for b.Loop() {
		s := *secret
		req.Secret = &s
		resp, err := e.b.HandleRequest(ctx, req)
		if err != nil || resp == nil || resp.IsError() {
			b.Fatalf("renew: %v %v", err, resp)
		}
	}
	e.s.report(b)
}

// BenchmarkRevoke is one revocation before the lease's end: one DELETE and
// the tracking record dropped. The leases are issued outside the timer.
func BenchmarkRevoke(b *testing.B) {
	e := newBenchEnv(b)
	secrets := make([]*logical.Secret, b.N)
	for i := range secrets {
		secrets[i] = e.issue(b)
	}
	ctx := context.Background()
	e.s.reset()
	b.ReportAllocs()
	b.ResetTimer()
	for i := range b.N {
		resp, err := e.b.HandleRequest(ctx, &logical.Request{
			Operation: logical.RevokeOperation, Path: "creds/bench", Storage: e.s, Secret: secrets[i],
		})
		if err != nil || (resp != nil && resp.IsError()) {
			b.Fatalf("revoke: %v %v", err, resp)
		}
	}
	b.StopTimer()
	e.s.report(b)
	if live := len(e.srv.LiveKeys("development")); live != 1 {
		b.Fatalf("%d live keys after revoking every lease, want only the admin key", live)
	}
}
