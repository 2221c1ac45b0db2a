package heron

import (
	"context"
	"fmt"
	"io"
	"os"
	"strconv"
	"testing"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/hashicorp/vault/sdk/logical"
)

// Benchmarks of the periodic pass at scale, in process (in-memory storage
// counted, the emulator over loopback), part of `make bench`:
//
//	go test -run '^$' -bench 'StaticPass|PeriodicPass|KeysPage' -benchmem .
//
// Sizes: HERON_BENCH_STATIC_ROLES (10000 static roles over 3 environments)
// and HERON_BENCH_TRACKED_KEYS (100000 tracked keys, all in Heron);
// `make bench BENCH_SMALL=1` runs them small.

func benchSize(name string, def int) int {
	if v, err := strconv.Atoi(os.Getenv(name)); err == nil && v > 0 {
		return v
	}
	return def
}

// scaleEnv is a backend on counted storage with configs for development,
// production and staging.
type scaleEnv struct {
	*testEnv
	bs *benchStorage
	cs *prefixCountStorage
}

func newScaleEnv(tb testing.TB) *scaleEnv {
	tb.Helper()
	se := &scaleEnv{cs: &prefixCountStorage{}}
	se.testEnv = newTestEnv(tb,
		withStorage(func(s logical.Storage) logical.Storage {
			se.cs.Storage = s
			se.bs = &benchStorage{Storage: se.cs}
			return se.bs
		}),
		withLogger(hclog.New(&hclog.LoggerOptions{Level: hclog.Warn, Output: io.Discard})),
		withUnlimitedBudget(),
		withoutLeftoverCheck(),
	)
	se.adminKey["staging"] = se.srv.AddAdminKey("staging")
	for _, env := range []string{"development", "production", "staging"} {
		se.configure(env)
	}
	return se
}

func (se *scaleEnv) passAt(tb testing.TB, at time.Time) {
	se.atTime(at)
	if err := se.b.periodicFunc(context.Background(), &logical.Request{Operation: logical.RollbackOperation, Storage: se.s}); err != nil {
		tb.Fatalf("pass: %v", err)
	}
}

// BenchmarkStaticPass is one periodic pass with HERON_BENCH_STATIC_ROLES
// static roles over 3 environments (stored as a version without the index
// left them: the instance's first pass, outside the timer, indexes them;
// Heron holds a key per role),
// none due, or 500 due for rotation at once. Reported per pass: storage
// reads of static roles (role-gets/op), all storage reads (gets/op) and
// lists, and the scheduled rotations the pass made.
func BenchmarkStaticPass(b *testing.B) {
	n := benchSize("HERON_BENCH_STATIC_ROLES", 10000)
	for _, due := range []int{0, 500} {
		b.Run(fmt.Sprintf("roles=%d/due=%d", n, due), func(b *testing.B) {
			se := newScaleEnv(b)
			t0 := time.Now().Add(-time.Hour)
			envs := []string{"development", "production", "staging"}
			var names []string
			for i, env := range envs {
				per := n / len(envs)
				if i == 0 {
					per += n % len(envs)
				}
				names = append(names, seedStaticRoles(b, se.s, env, per, t0, 720*time.Hour)...)
				// Heron holds each role's key: what a rotation's list of the
				// environment's keys reads.
				c, err := se.b.getClient(context.Background(), se.s, env)
				if err != nil {
					b.Fatal(err)
				}
				for j := range per {
					if _, err := c.CreateKey(context.Background(), fmt.Sprintf("vault-static-seed-%s-%05d-1764098012", env, j)); err != nil {
						b.Fatal(err)
					}
				}
			}
			clock := t0.Add(time.Minute)
			se.passAt(b, clock) // the first pass: the full sweep
			next := 0
			var roleGets, gets, lists, rotations float64
			maxPass := time.Duration(0)
			b.ResetTimer()
			for range b.N {
				b.StopTimer()
				clock = clock.Add(time.Second)
				se.atTime(clock)
				for range min(due, len(names)) {
					// Due now: the key was set a period and a minute ago.
					name := names[next%len(names)]
					next++
					old, err := getStaticRole(context.Background(), se.s, name)
					if err != nil || old == nil {
						b.Fatalf("role %s: %v", name, err)
					}
					r := *old
					r.KeySetAt = clock.Add(-721 * time.Hour)
					if err := se.b.putStaticRole(context.Background(), se.s, old, &r); err != nil {
						b.Fatal(err)
					}
				}
				posts := se.srv.CountRequests("POST", "/api/credentials/keys", "")
				se.bs.reset()
				se.cs.reset()
				start := time.Now()
				b.StartTimer()
				se.passAt(b, clock)
				b.StopTimer()
				maxPass = max(maxPass, time.Since(start))
				roleGets += float64(se.cs.count(staticRoleStoragePrefix))
				gets += float64(se.bs.gets.Load())
				lists += float64(se.bs.lists.Load())
				rotations += float64(se.srv.CountRequests("POST", "/api/credentials/keys", "") - posts)
				// The rest of a storm: the next passes' (not timed).
				for {
					n, err := se.b.rotateDue(context.Background(), se.s)
					if err != nil {
						b.Fatal(err)
					}
					if n == 0 {
						break
					}
				}
				b.StartTimer()
			}
			b.StopTimer()
			nn := float64(b.N)
			b.ReportMetric(roleGets/nn, "role-gets/op")
			b.ReportMetric(gets/nn, "gets/op")
			b.ReportMetric(lists/nn, "lists/op")
			b.ReportMetric(rotations/nn, "rotations/op")
			b.ReportMetric(float64(maxPass.Microseconds())/1000, "max-ms")
		})
	}
}

// seedLiveKeys creates n keys in Heron (development) through the engine's
// client and tracks each as an issuance would (a lease of a day).
func seedLiveKeys(tb testing.TB, se *scaleEnv, n int) {
	tb.Helper()
	ctx := context.Background()
	c, err := se.b.getClient(ctx, se.s, "development")
	if err != nil {
		tb.Fatal(err)
	}
	now := time.Now()
	for i := range n {
		k, err := c.CreateKey(ctx, fmt.Sprintf("vault-bench-%07d", i))
		if err != nil {
			tb.Fatal(err)
		}
		rec := &trackedKey{KeyID: k.ID, KeyName: k.Name, TokenPrefix: k.TokenPrefix, Environment: "development", Role: "bench",
			State: keyStateActive, Issued: now, Expires: now.Add(24 * time.Hour), ExpiredKeyRetention: time.Hour, NoIndex: true}
		if err := putNewTrackedKey(ctx, se.s, rec); err != nil {
			tb.Fatal(err)
		}
	}
}

// BenchmarkPeriodicPassTrackedKeys is the minute's pass with
// HERON_BENCH_TRACKED_KEYS live leases' keys tracked and in Heron: an
// operation is passListEvery (5) consecutive passes (the cycle over which
// the pass lists every key id once and Heron's keys once), reported per
// pass (pass-ms: mean, max-ms: the slowest) with the allocations of the
// cycle.
func BenchmarkPeriodicPassTrackedKeys(b *testing.B) {
	n := benchSize("HERON_BENCH_TRACKED_KEYS", 100000)
	b.Run(fmt.Sprintf("keys=%d", n), func(b *testing.B) {
		se := newScaleEnv(b)
		seedLiveKeys(b, se, n)
		clock := time.Now()
		se.passAt(b, clock) // the instance's first pass
		const cycle = 5
		var total time.Duration
		maxPass := time.Duration(0)
		se.bs.reset()
		b.ReportAllocs()
		b.ResetTimer()
		for range b.N {
			for range cycle {
				clock = clock.Add(time.Minute)
				start := time.Now()
				se.passAt(b, clock)
				d := time.Since(start)
				total += d
				maxPass = max(maxPass, d)
			}
		}
		b.StopTimer()
		passes := float64(b.N * cycle)
		b.ReportMetric(float64(total.Microseconds())/1000/passes, "pass-ms")
		b.ReportMetric(float64(maxPass.Microseconds())/1000, "max-ms")
		b.ReportMetric(float64(se.bs.gets.Load())/passes, "gets/pass")
		b.ReportMetric(float64(se.bs.lists.Load())/passes, "lists/pass")
	})
}

// BenchmarkKeysPage is one page of `LIST keys/?limit=1000&after=<id>`
// with HERON_BENCH_TRACKED_KEYS tracked keys, as an auditor's script pages
// through all of them (the operation walks the pages in turn).
func BenchmarkKeysPage(b *testing.B) {
	n := benchSize("HERON_BENCH_TRACKED_KEYS", 100000)
	b.Run(fmt.Sprintf("keys=%d", n), func(b *testing.B) {
		se := newScaleEnv(b)
		now := time.Now()
		for i := range n {
			rec := &trackedKey{KeyID: fmt.Sprintf("%08x-0000-4000-8000-%012x", i, i), KeyName: fmt.Sprintf("vault-bench-token-bench-%d-Ab3dE9xQ", i),
				TokenPrefix: "key_9f2c", Environment: "development", Role: "bench", State: keyStateActive, Issued: now, Expires: now.Add(time.Hour),
				ExpiredKeyRetention: 72 * time.Hour, NoIndex: true, EntityID: "1b7f3c1e-2f0a-4c8e-9d1a-5e6f7a8b9c0d", DisplayName: "token-bench"}
			if err := putNewTrackedKey(context.Background(), se.s, rec); err != nil {
				b.Fatal(err)
			}
		}
		after := ""
		b.ReportAllocs()
		b.ResetTimer()
		for range b.N {
			data := map[string]interface{}{"limit": 1000}
			if after != "" {
				data["after"] = after
			}
			resp, err := se.b.HandleRequest(context.Background(), &logical.Request{Operation: logical.ListOperation, Path: "keys/", Data: data, Storage: se.s})
			if err != nil || resp == nil || resp.IsError() {
				b.Fatalf("list: %v %v", err, resp)
			}
			keys, _ := resp.Data["keys"].([]string)
			after = ""
			if len(keys) == 1000 {
				after = keys[len(keys)-1]
			}
		}
	})
}
