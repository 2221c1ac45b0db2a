//go:build e2e

package e2e

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"math"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/heron-vault/vault-plugin-secrets-heron/herontest"
)

// BenchmarkEngine measures what the engine costs a user, on a real Vault
// (dev server, like the e2e tests) talking to the in-process emulator over
// loopback:
//
//  1. upstream requests per issue / expiry / revoke / renew (emulator counts);
//  2. creds/<role> latency p50/p99 at 1 and 16 clients, next to a KV v2 read
//     through the same Vault and a raw POST straight to the emulator, on
//     loopback and again with every upstream answer delayed (a network);
//  3. a mass revocation by prefix under the engine's budget B per minute,
//     against the floor of leases / B;
//  4. peak RSS (VmHWM) of the plugin process holding many live leases.
//
// It is a command, not a timed loop: it runs once whatever b.N is.
//
//	go test ./e2e -count=1 -run '^$' -bench '^BenchmarkEngine$' -benchtime=1x -timeout 60m
//
// Sizes come from the environment: HERON_BENCH_LEASES (mass revocation,
// default 2000), HERON_BENCH_BUDGET (B, default: the lease count, so that the
// revocation takes about a minute), HERON_BENCH_LIVE (live leases for the RSS
// figure, default 10000), HERON_BENCH_SAMPLES (latency samples per setting,
// default 500), HERON_BENCH_WAN_MS (upstream delay of the second latency
// round, default 20, 0 skips it). With -count above 1 the measurement runs
// count x count times: keep -count=1. HERON_BENCH_WRITE=1 writes the figures into BENCHMARKS.md
// at the repository root, between the generated-section markers, and
// HERON_BENCH_GO_RESULTS names a file of `go test -bench` output to include.
func BenchmarkEngine(b *testing.B) {
	cfg, err := benchEngineConfigFromEnv()
	if err != nil {
		b.Fatal(err)
	}
	// The harness (startEmulator, vault, eventually…) takes a *testing.T, and a
	// benchmark only has a *testing.B: run the measurement as a test of its own
	// so the harness is reused as is, with its cleanups and failure logs.
	var res *benchEngineResults
	matchAll := func(string, string) (bool, error) { return true, nil }
	ok := testing.RunTests(matchAll, []testing.InternalTest{{
		Name: "BenchmarkEngine/measure",
		F:    func(t *testing.T) { res = runBenchEngine(t, cfg) },
	}})
	if !ok || res == nil {
		b.Fatal("the engine benchmark failed; see the log above")
	}
	benchReport(b, res)
}

// benchEngineConfig holds the sizes of one run.
type benchEngineConfig struct {
	leases  int // mass revocation
	budget  int // B, engine budget per minute during the mass revocation
	live    int // live leases for the RSS figure
	samples int // latency samples per (kind, concurrency)
	// wan is the latency added to every upstream answer in the second round
	// of latency settings (0: loopback only).
	wan time.Duration
}

func benchEngineConfigFromEnv() (benchEngineConfig, error) {
	c := benchEngineConfig{leases: 2000, live: 10000, samples: 500}
	wanMS := 20
	for _, f := range []struct {
		name string
		dst  *int
		min  int
	}{
		{"HERON_BENCH_LEASES", &c.leases, 1},
		{"HERON_BENCH_BUDGET", &c.budget, 1},
		{"HERON_BENCH_LIVE", &c.live, 1},
		{"HERON_BENCH_SAMPLES", &c.samples, 10},
		{"HERON_BENCH_WAN_MS", &wanMS, 0},
	} {
		s := os.Getenv(f.name)
		if s == "" {
			continue
		}
		n, err := strconv.Atoi(s)
		if err != nil || n < f.min {
			return c, fmt.Errorf("%s=%q: want an integer >= %d", f.name, s, f.min)
		}
		*f.dst = n
	}
	if c.budget == 0 {
		c.budget = c.leases
	}
	c.wan = time.Duration(wanMS) * time.Millisecond
	if c.budget > 100000 {
		return c, fmt.Errorf("budget %d/min is above the engine's maximum rate_limit_per_minute (100000); set HERON_BENCH_BUDGET", c.budget)
	}
	return c, nil
}

const (
	// benchFastBudget is the engine's highest budget, used whenever the
	// budget is not what is being measured (issuing the leases to revoke).
	benchFastBudget = 100000
	// benchCountSamples is how many leases measurement 1 issues, renews and
	// revokes; benchExpirySamples how many it lets run out.
	benchCountSamples  = 20
	benchExpirySamples = 5
	// benchIssueConcurrency issues the leases of measurements 3 and 4.
	benchIssueConcurrency = 16
)

// benchConcurrencies are the client counts of measurement 2; each is run on
// loopback (the goal's setting) and again with the upstream's answers
// delayed by HERON_BENCH_WAN_MS, as over a real network to Heron.
var benchConcurrencies = []int{1, 16}

// benchEngineResults is everything one run measured.
type benchEngineResults struct {
	cfg       benchEngineConfig
	started   time.Time
	loadavg   string
	counts    benchCounts
	latency   []benchLatency // one per (clients, upstream delay) setting
	mass      benchMass
	rss       benchRSS
	bgTotal   int // background (periodic pass) requests, whole run
	runLength time.Duration
}

func runBenchEngine(t *testing.T, cfg benchEngineConfig) *benchEngineResults {
	res := &benchEngineResults{cfg: cfg, started: time.Now(), loadavg: benchLoadavg()}
	t.Logf("sizes: %d leases revoked at %d/min, %d live leases, %d latency samples", cfg.leases, cfg.budget, cfg.live, cfg.samples)

	e := startEmulator(t)
	// Log level info: the suite logs at debug to explain failures, but
	// per-request debug lines (the plugin's included, forwarded over its
	// stderr) are not what a production Vault pays.
	v := startDevVaultAt(t, "info")
	v.configure("development", e.devKey, e.URL, fmt.Sprintf("rate_limit_per_minute=%d", benchFastBudget))
	for _, r := range []string{"count", "lat", "bulk", "live"} {
		v.writeRole(r, "environment=development", "ttl=1h")
	}
	v.writeRole("expiry", "environment=development", "ttl=2s")
	h := newBenchHTTP(v, e)

	res.counts = benchMeasureCounts(t, v, e)
	t.Logf("requests per issue %.2f, expiry %.2f, revoke %.2f, renew %.2f", res.counts.issue, res.counts.expiry, res.counts.revoke, res.counts.renew)

	res.latency = benchMeasureLatency(t, v, e, h, cfg.samples, cfg.wan)
	for _, l := range res.latency {
		t.Logf("c=%d upstream+%s: creds p50 %s, kv p50 %s, raw POST p50 %s, ratio %.2f", l.conc, l.wan, benchMs(l.creds.p50), benchMs(l.kv.p50), benchMs(l.raw.p50), l.ratio())
	}

	res.mass = benchMeasureMassRevoke(t, v, e, cfg.leases, cfg.budget)
	t.Logf("mass revocation: %d leases in %s at %d/min (floor %s): ratio %.3f, irrevocable %d",
		res.mass.n, res.mass.wall.Round(time.Millisecond), res.mass.budget, res.mass.floor(), res.mass.ratio(), res.mass.irrevocable)

	res.rss = benchMeasureRSS(t, v, e, cfg.live)
	t.Logf("plugin VmHWM %.1f MiB with %d live leases", res.rss.listHWM/(1<<20), res.rss.live)

	res.runLength = time.Since(res.started)
	for _, r := range e.Requests() {
		if benchIsBackground(r) {
			res.bgTotal++
		}
	}
	return res
}

// ---------------------------------------------------------------------------
// 1. Upstream requests per operation

type benchCounts struct {
	issue, expiry, revoke, renew float64
	// detail names what was sent, e.g. "POST /api/credentials/keys x20".
	issueDetail, expiryDetail, revokeDetail, renewDetail string
}

func benchMeasureCounts(t *testing.T, v *vault, e *emulator) benchCounts {
	t.Helper()
	var c benchCounts
	const n = benchCountSamples

	from := time.Now()
	leases := make([]lease, n)
	for i := range leases {
		l, err := v.issue("", "count")
		if err != nil {
			t.Fatalf("issuing count lease %d: %v", i, err)
		}
		leases[i] = l
	}
	reqs := benchEngineReqs(e, from, time.Now())
	c.issue, c.issueDetail = float64(len(reqs))/n, benchDescribeReqs(reqs)

	from = time.Now()
	for _, l := range leases {
		if _, err := v.api.Sys().Renew(l.LeaseID, 0); err != nil {
			t.Fatalf("renewing %s: %v", l.LeaseID, err)
		}
	}
	reqs = benchEngineReqs(e, from, time.Now())
	c.renew, c.renewDetail = float64(len(reqs))/n, benchDescribeReqs(reqs)

	from = time.Now()
	for _, l := range leases {
		if _, err := v.api.Logical().Write("sys/leases/revoke", map[string]any{"lease_id": l.LeaseID, "sync": true}); err != nil {
			t.Fatalf("revoking %s: %v", l.LeaseID, err)
		}
	}
	benchWaitDeleted(t, e, keyIDs(leases), time.Minute)
	reqs = benchEngineReqs(e, from, time.Now())
	c.revoke, c.revokeDetail = float64(len(reqs))/n, benchDescribeReqs(reqs)

	short := make([]lease, benchExpirySamples)
	for i := range short {
		l, err := v.issue("", "expiry")
		if err != nil {
			t.Fatalf("issuing expiry lease %d: %v", i, err)
		}
		short[i] = l
	}
	from = time.Now()
	for _, l := range short {
		e.waitState(t, l.Data.KeyID, stateDeactivated, time.Minute)
	}
	// Anything the engine would send after deactivating (it must not) gets
	// time to show up.
	time.Sleep(2 * time.Second)
	reqs = benchEngineReqs(e, from, time.Now())
	c.expiry, c.expiryDetail = float64(len(reqs))/benchExpirySamples, benchDescribeReqs(reqs)
	return c
}

// ---------------------------------------------------------------------------
// 2. Latency

type benchStats struct {
	n          int
	p50, p99   time.Duration
	mean       time.Duration
	throughput float64 // operations per second over the setting's wall time
	// CPU time per operation spent by Vault, by the plugin and by this
	// process (the emulator and the clients).
	cpuVault, cpuPlugin, cpuSelf time.Duration
}

type benchLatency struct {
	conc                                  int
	wan                                   time.Duration // latency added to every upstream answer
	creds, kv, raw, roleRead, tokenCreate benchStats
	credsLeases                           []lease
	rawKeys                               []string
}

// ratio is the issue's figure: creds_p50 / (kv_p50 + raw_post_p50).
func (l benchLatency) ratio() float64 {
	return float64(l.creds.p50) / float64(l.kv.p50+l.raw.p50)
}

func benchMeasureLatency(t *testing.T, v *vault, e *emulator, h *benchHTTP, samples int, wan time.Duration) []benchLatency {
	t.Helper()
	// What a user would otherwise do: keep a static Heron key in KV.
	v.run("secrets", "enable", "-path=kv", "-version=2", "kv")
	eventually(t, time.Minute, "KV v2 accepting writes", func() error {
		_, err := v.api.Logical().Write("kv/data/heron", map[string]any{"data": map[string]any{"api_key": herontest.NewKeyToken()}})
		return err
	})

	plugins := v.pluginPIDs(t)
	if len(plugins) != 1 {
		t.Fatalf("want one plugin process under Vault, found %v", plugins)
	}
	pids := []int{v.proc.cmd.Process.Pid, plugins[0], os.Getpid()}

	type setting struct {
		conc int
		wan  time.Duration
	}
	var settings []setting
	for _, w := range []time.Duration{0, wan} {
		if w == 0 && len(settings) > 0 {
			break
		}
		for _, c := range benchConcurrencies {
			settings = append(settings, setting{c, w})
		}
	}

	out := make([]benchLatency, 0, len(settings))
	var rawSeq atomic.Int64
	for _, set := range settings {
		conc := set.conc
		e.SetFaults(herontest.Faults{Latency: set.wan})
		l := benchLatency{conc: conc, wan: set.wan}
		var mu sync.Mutex
		kinds := []struct {
			name string
			dst  *benchStats
			op   func() error
		}{
			{"creds", &l.creds, func() error {
				c, err := v.issue("", "lat")
				if err == nil {
					mu.Lock()
					l.credsLeases = append(l.credsLeases, c)
					mu.Unlock()
				}
				return err
			}},
			{"kv", &l.kv, func() error { return h.vaultGet("/v1/kv/data/heron") }},
			{"raw POST", &l.raw, func() error {
				id, err := h.rawCreate(fmt.Sprintf("bench-raw-%d-%d", conc, rawSeq.Add(1)))
				if err == nil {
					mu.Lock()
					l.rawKeys = append(l.rawKeys, id)
					mu.Unlock()
				}
				return err
			}},
			// Not in the ratio: a plugin round trip that does one storage read
			// and no upstream call, to show what the plugin boundary costs.
			{"role read", &l.roleRead, func() error { return h.vaultGet("/v1/heron/roles/lat") }},
			// Not in the ratio either: Vault's own credential with a lease,
			// no plugin and no upstream call.
			{"token create", &l.tokenCreate, h.tokenCreate},
		}
		if set.wan > 0 {
			kinds = kinds[:3] // the others make no upstream call
		}
		for _, k := range kinds {
			// Warm up connections (and the engine's client) outside the figures.
			if _, _, err := benchRun(min(samples, 4*conc), conc, k.op); err != nil {
				t.Fatalf("%s warm-up at %d clients: %v", k.name, conc, err)
			}
			cpu0 := benchCPU(t, pids)
			durs, wall, err := benchRun(samples, conc, k.op)
			if err != nil {
				t.Fatalf("%s at %d clients: %v", k.name, conc, err)
			}
			cpu1 := benchCPU(t, pids)
			st := benchSummarize(durs, wall)
			per := func(i int) time.Duration { return (cpu1[i] - cpu0[i]) / time.Duration(samples) }
			st.cpuVault, st.cpuPlugin, st.cpuSelf = per(0), per(1), per(2)
			*k.dst = st
		}
		out = append(out, l)
	}
	e.SetFaults(herontest.Faults{})

	// Clean up: the creds leases go the way users' leases go, the raw keys
	// are deleted straight in Heron. Neither is part of the figures.
	v.run("lease", "revoke", "-prefix", "heron/creds/lat/")
	for _, l := range out {
		benchWaitDeleted(t, e, keyIDs(l.credsLeases), 5*time.Minute)
		for _, id := range l.rawKeys {
			if err := h.rawDelete(id); err != nil {
				t.Fatalf("deleting raw key %s: %v", id, err)
			}
		}
	}
	return out
}

// benchRun runs op n times over conc workers and returns each duration and
// the wall time of the whole run.
func benchRun(n, conc int, op func() error) ([]time.Duration, time.Duration, error) {
	durs := make([]time.Duration, n)
	var next atomic.Int64
	var firstErr error
	var errOnce sync.Once
	var wg sync.WaitGroup
	start := time.Now()
	for range conc {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				i := int(next.Add(1)) - 1
				if i >= n {
					return
				}
				t0 := time.Now()
				if err := op(); err != nil {
					errOnce.Do(func() { firstErr = err })
					next.Store(int64(n)) // stop everyone
					return
				}
				durs[i] = time.Since(t0)
			}
		}()
	}
	wg.Wait()
	return durs, time.Since(start), firstErr
}

func benchSummarize(durs []time.Duration, wall time.Duration) benchStats {
	s := slices.Clone(durs)
	slices.Sort(s)
	var sum time.Duration
	for _, d := range s {
		sum += d
	}
	return benchStats{
		n:          len(s),
		p50:        benchPercentile(s, 50),
		p99:        benchPercentile(s, 99),
		mean:       sum / time.Duration(len(s)),
		throughput: float64(len(s)) / wall.Seconds(),
	}
}

// benchCPU returns the CPU time each process has used so far: the sum over
// its threads of /proc/<pid>/task/<tid>/schedstat (nanoseconds on a CPU),
// which unlike /proc/<pid>/stat is not rounded to 10 ms ticks. Go processes
// keep their threads, so no time is lost with exited ones.
func benchCPU(t *testing.T, pids []int) []time.Duration {
	t.Helper()
	out := make([]time.Duration, len(pids))
	for i, pid := range pids {
		dir := fmt.Sprintf("/proc/%d/task", pid)
		tasks, err := os.ReadDir(dir)
		if err != nil {
			t.Fatal(err)
		}
		for _, task := range tasks {
			b, err := os.ReadFile(filepath.Join(dir, task.Name(), "schedstat"))
			if err != nil {
				continue // the thread exited meanwhile
			}
			f := strings.Fields(string(b))
			if len(f) == 0 {
				continue
			}
			ns, err := strconv.ParseInt(f[0], 10, 64)
			if err != nil {
				t.Fatalf("%s/%s/schedstat: %q", dir, task.Name(), b)
			}
			out[i] += time.Duration(ns)
		}
	}
	return out
}

// benchPercentile is the nearest-rank percentile of sorted durations.
func benchPercentile(sorted []time.Duration, p float64) time.Duration {
	rank := int(math.Ceil(p / 100 * float64(len(sorted))))
	return sorted[max(rank, 1)-1]
}

// ---------------------------------------------------------------------------
// 3. Mass revocation

type benchMass struct {
	n, budget    int
	issueWall    time.Duration
	wall         time.Duration // revoke command to the last key deleted in Heron
	leasesGone   time.Duration // revoke command to Vault holding no lease under the prefix
	irrevocable  int
	deletes      int // DELETE requests during the revocation
	other        string
	maxInMinute  int     // most engine requests in any 60 s window of the revocation
	postsPerKey  float64 // POSTs per lease during the issuance
	issueReqsPer float64 // every engine request per lease during the issuance
}

// floor is the physical limit: n requests at budget per minute.
func (m benchMass) floor() time.Duration {
	return time.Duration(float64(m.n) / float64(m.budget) * float64(time.Minute))
}

func (m benchMass) ratio() float64 { return m.wall.Seconds() / m.floor().Seconds() }

func benchMeasureMassRevoke(t *testing.T, v *vault, e *emulator, n, budget int) benchMass {
	t.Helper()
	m := benchMass{n: n, budget: budget}

	from := time.Now()
	leases, errs := issueMany(t, v, "bulk", n, benchIssueConcurrency)
	if len(errs) > 0 {
		t.Fatalf("issuing %d bulk leases: %v", n, errs[0])
	}
	m.issueWall = time.Since(from)
	reqs := benchEngineReqs(e, from, time.Now())
	m.issueReqsPer = float64(len(reqs)) / float64(n)
	for _, r := range reqs {
		if r.Method == http.MethodPost {
			m.postsPerKey++
		}
	}
	m.postsPerKey /= float64(n)

	// The budget under test. verify=false: checking the key again would spend
	// a request of the budget being measured.
	v.run("write", "heron/config/development", fmt.Sprintf("rate_limit_per_minute=%d", budget), "verify=false")

	ids := keyIDs(leases)
	t0 := time.Now()
	v.run("lease", "revoke", "-prefix", "heron/creds/bulk/")
	floor := m.floor()
	last := benchWaitDeleted(t, e, ids, 3*floor+2*time.Minute)
	m.wall = last.Sub(t0)
	eventually(t, 5*time.Minute, "Vault dropping the revoked leases", func() error { return v.leasesLeft("heron/creds/bulk/") })
	m.leasesGone = time.Since(t0)
	m.irrevocable = v.irrevocableLeases()

	reqs = benchEngineReqs(e, t0, last.Add(time.Millisecond))
	var others []herontest.RequestRecord
	times := make([]time.Time, 0, len(reqs))
	for _, r := range reqs {
		times = append(times, r.Time)
		if r.Method == http.MethodDelete && r.Route == "/api/credentials/keys/{heron_id}" {
			m.deletes++
			continue
		}
		others = append(others, r)
	}
	m.other = benchDescribeReqs(others)
	// Background requests spend the same budget, so they count here.
	for _, r := range e.Requests() {
		if benchIsBackground(r) && !r.Time.Before(t0) && r.Time.Before(last) {
			times = append(times, r.Time)
		}
	}
	m.maxInMinute = herontest.MaxInWindowOf(times, time.Minute)

	v.run("write", "heron/config/development", fmt.Sprintf("rate_limit_per_minute=%d", benchFastBudget), "verify=false")
	return m
}

// ---------------------------------------------------------------------------
// 4. Memory

type benchRSS struct {
	live                    int
	pid                     int
	issueWall               time.Duration
	runHWM                  float64 // plugin VmHWM over the run so far, before the reload (bytes)
	freshRSS                float64 // the new plugin process after its first issuance
	pluginHWM, pluginRSS    float64 // fresh plugin process after issuing and a cleanup pass (bytes)
	listHWM                 float64 // after a LIST keys/ of every live key as well
	vaultHWM, vaultRSS      float64
	vaultRSSBefore          float64
	revokeWall              time.Duration
	irrevocableAfterCleanup int
	// The cleanup pass (tidy) and a LIST keys/ with every lease live.
	tidyWall, tidyCPUVault, tidyCPUPlugin time.Duration
	listWall                              time.Duration
}

func benchMeasureRSS(t *testing.T, v *vault, e *emulator, live int) benchRSS {
	t.Helper()
	r := benchRSS{live: live}
	old := v.pluginPIDs(t)
	if len(old) != 1 {
		t.Fatalf("want one plugin process under Vault, found %v", old)
	}
	r.runHWM = benchProcStatus(t, old[0], "VmHWM")

	// A fresh plugin process, so that the high-water mark is that of holding
	// the live leases, not of the earlier measurements.
	v.run("plugin", "reload", "-plugin="+pluginName, "-type=secret")
	first, err := v.issue("", "live") // also starts the new process if Vault is lazy
	if err != nil {
		t.Fatalf("issuing after the reload: %v", err)
	}
	eventually(t, 30*time.Second, "a new plugin process", func() error {
		now := v.pluginPIDs(t)
		if len(now) != 1 || now[0] == old[0] {
			return fmt.Errorf("plugin processes before %v, now %v", old, now)
		}
		r.pid = now[0]
		return nil
	})
	r.vaultRSSBefore = benchProcStatus(t, v.proc.cmd.Process.Pid, "VmRSS")
	r.freshRSS = benchProcStatus(t, r.pid, "VmRSS")

	from := time.Now()
	leases, errs := issueMany(t, v, "live", live-1, benchIssueConcurrency)
	if len(errs) > 0 {
		t.Fatalf("issuing %d live leases: %v", live, errs[0])
	}
	r.issueWall = time.Since(from)
	// The cleanup pass Vault runs every minute lists every tracked key id and
	// Heron's keys: with all leases live that is a large working set, so it is
	// part of the figure.
	pids := []int{v.proc.cmd.Process.Pid, r.pid}
	cpu0, t0 := benchCPU(t, pids), time.Now()
	v.tidy()
	r.tidyWall = time.Since(t0)
	cpu1 := benchCPU(t, pids)
	r.tidyCPUVault, r.tidyCPUPlugin = cpu1[0]-cpu0[0], cpu1[1]-cpu0[1]
	r.pluginHWM = benchProcStatus(t, r.pid, "VmHWM")
	r.pluginRSS = benchProcStatus(t, r.pid, "VmRSS")
	t0 = time.Now()
	if s, err := v.api.Logical().List("heron/keys/"); err != nil || s == nil {
		t.Fatalf("list heron/keys/: %v", err)
	} else if keys, _ := s.Data["keys"].([]any); len(keys) < live {
		t.Fatalf("keys/ lists %d keys, want at least %d", len(keys), live)
	}
	r.listWall = time.Since(t0)
	r.listHWM = benchProcStatus(t, r.pid, "VmHWM")
	r.vaultHWM = benchProcStatus(t, v.proc.cmd.Process.Pid, "VmHWM")
	r.vaultRSS = benchProcStatus(t, v.proc.cmd.Process.Pid, "VmRSS")

	// Leave Heron as we found it, the way a user would: revoke them all.
	t0 = time.Now()
	v.run("lease", "revoke", "-prefix", "heron/creds/live/")
	ids := append(keyIDs(leases), first.Data.KeyID)
	benchWaitDeleted(t, e, ids, 10*time.Minute)
	r.revokeWall = time.Since(t0)
	eventually(t, 5*time.Minute, "Vault dropping the live leases", func() error { return v.leasesLeft("heron/creds/live/") })
	r.irrevocableAfterCleanup = v.irrevocableLeases()
	return r
}

// benchProcStatus reads one "Vm…: N kB" field of /proc/<pid>/status, in bytes.
func benchProcStatus(t *testing.T, pid int, field string) float64 {
	t.Helper()
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		t.Fatal(err)
	}
	for line := range strings.SplitSeq(string(b), "\n") {
		rest, ok := strings.CutPrefix(line, field+":")
		if !ok {
			continue
		}
		kb, err := strconv.ParseFloat(strings.TrimSuffix(strings.TrimSpace(rest), " kB"), 64)
		if err != nil {
			t.Fatalf("/proc/%d/status %s: %q", pid, field, rest)
		}
		return kb * 1024
	}
	t.Fatalf("/proc/%d/status has no %s", pid, field)
	return 0
}

// ---------------------------------------------------------------------------
// HTTP: plain net/http for every kind of request, so that no client library
// favours one side of the comparison.

type benchHTTP struct {
	c     *http.Client
	vault string
	token string
	heron string
	admin string
}

// newBenchHTTP shares v.http, the client of v.issue, so that creds/<role>
// and every request it is compared with go over the same keep-alive pool.
func newBenchHTTP(v *vault, e *emulator) *benchHTTP {
	return &benchHTTP{
		c:     v.http,
		vault: v.addr, token: v.token,
		heron: e.URL, admin: e.devKey,
	}
}

func (h *benchHTTP) do(req *http.Request, want int, out any) error {
	resp, err := h.c.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		return err
	}
	if resp.StatusCode != want {
		return fmt.Errorf("%s %s: %d %s", req.Method, req.URL.Path, resp.StatusCode, bytes.TrimSpace(body))
	}
	if out == nil {
		out = &map[string]any{}
	}
	return json.Unmarshal(body, out)
}

func (h *benchHTTP) vaultGet(path string) error {
	req, err := http.NewRequest(http.MethodGet, h.vault+path, nil)
	if err != nil {
		return err
	}
	req.Header.Set("X-Vault-Token", h.token)
	return h.do(req, http.StatusOK, nil)
}

func (h *benchHTTP) tokenCreate() error {
	req, err := http.NewRequest(http.MethodPost, h.vault+"/v1/auth/token/create", strings.NewReader(`{"ttl":"1h","policies":["default"],"no_parent":true}`))
	if err != nil {
		return err
	}
	req.Header.Set("X-Vault-Token", h.token)
	return h.do(req, http.StatusOK, nil)
}

// rawCreate is what a program holding an admin key would do without Vault.
func (h *benchHTTP) rawCreate(name string) (string, error) {
	body, _ := json.Marshal(map[string]string{"name": name})
	req, err := http.NewRequest(http.MethodPost, h.heron+"/api/credentials/keys", bytes.NewReader(body))
	if err != nil {
		return "", err
	}
	req.Header.Set("x-api-key", h.admin)
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("User-Agent", testUserAgent)
	var out struct {
		ID    string `json:"heron_id"`
		Token string `json:"token"`
	}
	if err := h.do(req, http.StatusCreated, &out); err != nil {
		return "", err
	}
	return out.ID, nil
}

func (h *benchHTTP) rawDelete(id string) error {
	req, err := http.NewRequest(http.MethodDelete, h.heron+"/api/credentials/keys/"+id, nil)
	if err != nil {
		return err
	}
	req.Header.Set("x-api-key", h.admin)
	req.Header.Set("User-Agent", testUserAgent)
	resp, err := h.c.Do(req)
	if err != nil {
		return err
	}
	_, _ = io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusNoContent {
		return fmt.Errorf("DELETE: %d", resp.StatusCode)
	}
	return nil
}

// ---------------------------------------------------------------------------
// Emulator bookkeeping

// benchWaitDeleted waits until Heron has deleted every key in ids and
// returns when the last of them was deleted (the emulator's clock).
func benchWaitDeleted(t *testing.T, e *emulator, ids []string, timeout time.Duration) time.Time {
	t.Helper()
	left := slices.Clone(ids)
	var last time.Time
	deadline := time.Now().Add(timeout)
	for {
		kept := left[:0]
		for _, id := range left {
			k := e.key(t, id)
			if !k.Deleted {
				kept = append(kept, id)
				continue
			}
			if k.DeletedAt.After(last) {
				last = k.DeletedAt
			}
		}
		left = kept
		if len(left) == 0 {
			return last
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d of %d keys still not deleted in Heron after %s", len(left), len(ids), timeout)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func benchIsBackground(r herontest.RequestRecord) bool {
	return r.UserAgent != testUserAgent && strings.HasSuffix(r.UserAgent, "(background)")
}

// benchEngineReqs returns the user-driven requests the engine sent in
// [from, to): the periodic pass (background) is per minute, not per lease,
// and is reported on its own.
func benchEngineReqs(e *emulator, from, to time.Time) []herontest.RequestRecord {
	var out []herontest.RequestRecord
	for _, r := range e.Requests() {
		if r.UserAgent == testUserAgent || benchIsBackground(r) || r.Time.Before(from) || !r.Time.Before(to) {
			continue
		}
		out = append(out, r)
	}
	return out
}

// benchDescribeReqs summarises requests as "POST /api/credentials/keys 201 x20".
func benchDescribeReqs(reqs []herontest.RequestRecord) string {
	counts := map[string]int{}
	for _, r := range reqs {
		route := r.Route
		if route == "" {
			route = r.Path
		}
		counts[fmt.Sprintf("%s %s %d", r.Method, route, r.Status)]++
	}
	if len(counts) == 0 {
		return "none"
	}
	var parts []string
	for k, n := range counts {
		parts = append(parts, fmt.Sprintf("%s x%d", k, n))
	}
	slices.Sort(parts)
	return strings.Join(parts, ", ")
}
