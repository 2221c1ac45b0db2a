//go:build e2e

package e2e

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"maps"
	"math"
	"math/rand/v2"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
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
//     through the same Vault, a raw POST straight to the emulator and the
//     floor plugin's issuance (e2e/floorplugin, bench_floor_test.go), on
//     loopback and again with every upstream answer delayed (a network);
//  3. a mass revocation by prefix under the engine's budget B per minute,
//     against the floor of leases / B;
//  4. peak RSS (VmHWM) of the plugin process holding many live leases,
//     through their issuance, the periodic pass and a paged listing of all
//     of them, and the periodic pass's wall time and CPU;
//  6. on a 3-node Vault cluster with integrated storage (Raft), creds/<role>
//     latency next to the floor plugin's issuance, a KV v2 write and a
//     roles/<name> read, and the Raft commits each of them costs.
//
// (5 is the Go benchmarks, which `make bench` runs and this one reports.)
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
	// parts are the measurements to run (HERON_BENCH_PARTS; all by default).
	parts map[string]bool
}

// The measurements HERON_BENCH_PARTS can name, in the order they run.
const (
	benchPartCounts  = "counts"
	benchPartLatency = "latency"
	benchPartMass    = "mass"
	benchPartLive    = "live"
	benchPartRaft    = "raft"
)

var benchParts = []string{benchPartCounts, benchPartLatency, benchPartMass, benchPartLive, benchPartRaft}

// all reports whether every measurement runs: only such a run may replace
// the figures in BENCHMARKS.md.
func (c benchEngineConfig) all() bool { return len(c.parts) == len(benchParts) }

// onDevServer reports whether any measurement runs on the dev server (all
// but the Raft cluster's).
func (c benchEngineConfig) onDevServer() bool {
	return c.parts[benchPartCounts] || c.parts[benchPartLatency] || c.parts[benchPartMass] || c.parts[benchPartLive]
}

func benchEngineConfigFromEnv() (benchEngineConfig, error) {
	c := benchEngineConfig{leases: 2000, live: 100000, samples: 500, parts: map[string]bool{}}
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
	parts := strings.Join(benchParts, ",")
	if s := os.Getenv("HERON_BENCH_PARTS"); s != "" {
		parts = s
	}
	for p := range strings.SplitSeq(parts, ",") {
		p = strings.TrimSpace(p)
		if !slices.Contains(benchParts, p) {
			return c, fmt.Errorf("HERON_BENCH_PARTS=%q: %q is none of %s", parts, p, strings.Join(benchParts, ", "))
		}
		c.parts[p] = true
	}
	if os.Getenv("HERON_BENCH_WRITE") == "1" && !c.all() {
		return c, fmt.Errorf("HERON_BENCH_WRITE=1 with HERON_BENCH_PARTS=%q: BENCHMARKS.md records whole runs only", parts)
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
	// benchIssueConcurrency issues the leases of measurements 3 and 4: on 2
	// cores 16 clients already keep Vault and the plugin busy, so 100,000
	// leases take a couple of minutes.
	benchIssueConcurrency = 16
	// benchPageSize is the page of the paged listing of keys/ (measurement 4).
	benchPageSize = 1000
	// benchFullListMax is the most live leases for which measurement 4 also
	// lists keys/ in one unpaged answer, after the figures: that answer holds
	// every key's info at once (about 3 KiB each in the plugin), hundreds of
	// MiB at 100,000.
	benchFullListMax = 20000
)

// benchConcurrencies are the client counts of measurement 2; each is run on
// loopback (the goal's setting) and again with the upstream's answers
// delayed by HERON_BENCH_WAN_MS, as over a real network to Heron.
var benchConcurrencies = []int{1, 16}

// benchEngineResults is everything one run measured.
type benchEngineResults struct {
	cfg     benchEngineConfig
	started time.Time
	loadavg string
	counts  benchCounts
	latency []benchLatency // one per (clients, upstream delay) setting
	mass    benchMass
	rss     benchRSS
	raft    benchRaft
	bgTotal int // background (periodic pass) requests on the dev server
	// devLength is how long the dev server ran (bgTotal's period), runLength
	// the whole measurement.
	devLength, runLength time.Duration
}

func runBenchEngine(t *testing.T, cfg benchEngineConfig) *benchEngineResults {
	res := &benchEngineResults{cfg: cfg, started: time.Now(), loadavg: benchLoadavg()}
	t.Logf("sizes: %d leases revoked at %d/min, %d live leases, %d latency samples; parts %v", cfg.leases, cfg.budget, cfg.live, cfg.samples, slices.Sorted(maps.Keys(cfg.parts)))

	if cfg.onDevServer() {
		benchOnDevServer(t, cfg, res)
	}
	if cfg.parts[benchPartRaft] {
		res.raft = benchMeasureRaft(t, cfg.samples)
		for _, l := range res.raft.latency {
			t.Logf("Raft c=%d: creds p50 %s, floor p50 %s, KV write p50 %s, role read p50 %s, raw POST p50 %s, ratio %.2f, creds/floor %.2f",
				l.conc, benchMs(l.creds.p50), benchMs(l.floor.p50), benchMs(l.kvWrite.p50), benchMs(l.roleRead.p50), benchMs(l.raw.p50), l.ratio(), l.floorRatio())
		}
		if r := res.raft; r.commitsErr == "" {
			t.Logf("Raft commits per issuance %.2f, per floor issuance %.2f, per KV write %.2f, per role read %.2f", r.commitsCreds, r.commitsFloor, r.commitsKV, r.commitsRole)
		} else {
			t.Logf("Raft commits not measured: %s", r.commitsErr)
		}
	}
	res.runLength = time.Since(res.started)
	return res
}

// benchOnDevServer runs measurements 1 to 4 on one dev server, then stops it
// so that the Raft cluster, measured next, has the machine to itself.
func benchOnDevServer(t *testing.T, cfg benchEngineConfig, res *benchEngineResults) {
	t.Helper()
	start := time.Now()
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

	if cfg.parts[benchPartCounts] {
		res.counts = benchMeasureCounts(t, v, e)
		t.Logf("requests per issue %.2f, expiry %.2f, revoke %.2f, renew %.2f", res.counts.issue, res.counts.expiry, res.counts.revoke, res.counts.renew)
	}

	if cfg.parts[benchPartLatency] {
		res.latency = benchMeasureLatency(t, v, e, h, cfg.samples, cfg.wan)
		for _, l := range res.latency {
			t.Logf("c=%d upstream+%s: creds p50 %s, floor p50 %s, kv p50 %s, raw POST p50 %s, ratio %.2f, creds/floor %.2f",
				l.conc, l.wan, benchMs(l.creds.p50), benchMs(l.floor.p50), benchMs(l.kv.p50), benchMs(l.raw.p50), l.ratio(), l.floorRatio())
		}
	}

	if cfg.parts[benchPartMass] {
		res.mass = benchMeasureMassRevoke(t, v, e, cfg.leases, cfg.budget)
		t.Logf("mass revocation: %d leases in %s at %d/min (floor %s): ratio %.3f, irrevocable %d",
			res.mass.n, res.mass.wall.Round(time.Millisecond), res.mass.budget, res.mass.floor(), res.mass.ratio(), res.mass.irrevocable)
	}

	if cfg.parts[benchPartLive] {
		res.rss = benchMeasureRSS(t, v, e, h, cfg.live)
		t.Logf("plugin VmHWM %s after issuing %d leases, %s after the periodic pass (%s), %s after the paged listing (%s)",
			benchMiB(res.rss.issueHWM), res.rss.live, benchMiB(res.rss.passHWM), res.rss.passWall.Round(time.Millisecond),
			benchMiB(res.rss.pageHWM), res.rss.pageWall.Round(time.Millisecond))
	}

	res.devLength = time.Since(start)
	for _, r := range e.Requests() {
		if benchIsBackground(r) {
			res.bgTotal++
		}
	}
	v.stop(syscall.SIGTERM)
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
	// CPU time per operation spent by Vault (on a cluster: the active
	// node), by the plugin and by this process (the emulator and the
	// clients); cpuStandby is the standby nodes' of a cluster, together.
	cpuVault, cpuPlugin, cpuSelf, cpuStandby time.Duration
	// heronConns is how many TCP connections to the emulator were opened
	// during the series (measurement 2; -1: not counted).
	heronConns int
	// toHeron and fromHeron split an operation at the emulator's arrival
	// of its POST (1 client only: p50 of each): from the client's request
	// to the POST's arrival, and from the arrival plus the injected delay
	// (when the emulator answers) to the client's answer. split says they
	// were measured.
	toHeron, fromHeron time.Duration
	split              bool
	// postGapMin and postGapP50 are the least and the median time between
	// two of the series' POSTs arriving at the emulator (measurement 2, more
	// than 1 client): the engine's limiter spaces them at least
	// window/budget apart.
	postGapMin, postGapP50 time.Duration
}

type benchLatency struct {
	conc                                  int
	wan                                   time.Duration // latency added to every upstream answer
	creds, kv, raw, roleRead, tokenCreate benchStats
	// floor is floor/creds/<role>: the floor plugin's issuance (its
	// cpuPlugin is the floor plugin's process).
	floor benchStats
	// floorCalls is floor/calls/<role>: the floor plus the engine's further
	// calls to Vault (loopback only).
	floorCalls benchStats
	// calls is the floor, the floor with each of the engine's further calls
	// to Vault alone (floor/calls/<role>?do=<call>), with all of them, and
	// the engine, run interleaved at 1 client on loopback (so that drift
	// in the machine's load falls on all alike): p50 of each.
	calls                    []benchCallAlone
	credsLeases, floorLeases []lease
	rawKeys                  []string
}

// benchCallAlone is one kind of the interleaved series: its name and p50.
type benchCallAlone struct {
	what string
	p50  time.Duration
}

// benchEngineCalls are the engine's calls to Vault beyond the floor's, as the
// floor plugin names them, and what each is in the engine.
var benchEngineCalls = []struct{ call, what string }{
	{"localmount", "`LocalMount` (the SDK's, for `ForwardPerformanceSecondary`)"},
	{"maxttl", "`MaxLeaseTTL` (`framework.CalculateTTL`)"},
	{"get", "a storage read after the POST (the replay check)"},
	{"log", "an info log line"},
	{"event", "an event, sent beside the answer"},
}

// floorRatio is issue 22's figure: creds_p50 / floor_p50.
func (l benchLatency) floorRatio() float64 {
	return float64(l.creds.p50) / float64(l.floor.p50)
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

	// The floor beside the engine; its first issuance starts its process.
	benchMountFloor(t, v, e, "lat")
	if _, err := v.issueFloor("lat"); err != nil {
		t.Fatalf("first floor issuance: %v", err)
	}
	plugins := v.pluginPIDs(t)
	if len(plugins) != 1 {
		t.Fatalf("want one plugin process under Vault, found %v", plugins)
	}
	pids := []int{v.proc.cmd.Process.Pid, plugins[0], os.Getpid(), benchFloorPID(t, v)}

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
			ua   string // the User-Agent of its POST to the emulator, if any
		}{
			{"creds", &l.creds, func() error {
				c, err := v.issue("", "lat")
				if err == nil {
					mu.Lock()
					l.credsLeases = append(l.credsLeases, c)
					mu.Unlock()
				}
				return err
			}, userAgent},
			// The floor: the same issuance without the engine's own work.
			{"floor", &l.floor, func() error {
				c, err := v.issueFloor("lat")
				if err == nil {
					mu.Lock()
					l.floorLeases = append(l.floorLeases, c)
					mu.Unlock()
				}
				return err
			}, benchFloorUA},
			{"kv", &l.kv, func() error { return h.vaultGet("/v1/kv/data/heron") }, ""},
			{"raw POST", &l.raw, func() error {
				id, err := h.rawCreate(fmt.Sprintf("bench-raw-%d-%d", conc, rawSeq.Add(1)))
				if err == nil {
					mu.Lock()
					l.rawKeys = append(l.rawKeys, id)
					mu.Unlock()
				}
				return err
			}, testUserAgent},
			// Not in a ratio of its own: the floor plus the engine's further
			// calls to Vault, which tells their cost from the engine's code.
			{"floor+calls", &l.floorCalls, func() error {
				c, err := v.issueFloorPath("calls", "lat")
				if err == nil {
					mu.Lock()
					l.floorLeases = append(l.floorLeases, c)
					mu.Unlock()
				}
				return err
			}, ""},
			// Not in the ratio: a plugin round trip that does one storage read
			// and no upstream call, to show what the plugin boundary costs.
			{"role read", &l.roleRead, func() error { return h.vaultGet("/v1/heron/roles/lat") }, ""},
			// Not in the ratio either: Vault's own credential with a lease,
			// no plugin and no upstream call.
			{"token create", &l.tokenCreate, h.tokenCreate, ""},
		}
		if set.wan > 0 {
			kinds = kinds[:4] // creds, floor, KV, raw POST (the ratio's): the others are diagnostics
		}
		for _, k := range kinds {
			// Warm up connections (and the engine's client) outside the figures.
			if _, _, err := benchRun(min(samples, 4*conc), conc, k.op); err != nil {
				t.Fatalf("%s warm-up at %d clients: %v", k.name, conc, err)
			}
			op := k.op
			// At 1 client the operations are sequential: the i-th POST the
			// emulator saw with k's User-Agent belongs to the i-th operation.
			var spans [][2]time.Time
			if conc == 1 && k.ua != "" {
				op = func() error {
					t0 := time.Now()
					err := k.op()
					spans = append(spans, [2]time.Time{t0, time.Now()})
					return err
				}
			}
			conns0 := benchConnsTo(t, e.URL)
			from := time.Now()
			cpu0 := benchCPU(t, pids)
			durs, wall, err := benchRun(samples, conc, op)
			if err != nil {
				t.Fatalf("%s at %d clients: %v", k.name, conc, err)
			}
			cpu1 := benchCPU(t, pids)
			st := benchSummarize(durs, wall)
			st.heronConns = benchNewConns(conns0, benchConnsTo(t, e.URL))
			if spans != nil {
				st.toHeron, st.fromHeron, st.split = benchSplit(e, k.ua, from, spans, set.wan)
			}
			if conc > 1 && k.ua != "" {
				st.postGapMin, st.postGapP50 = benchPostGaps(e, k.ua, from)
			}
			per := func(i int) time.Duration { return (cpu1[i] - cpu0[i]) / time.Duration(samples) }
			st.cpuVault, st.cpuPlugin, st.cpuSelf = per(0), per(1), per(2)
			if strings.HasPrefix(k.name, "floor") {
				st.cpuPlugin = per(3) // the floor plugin's process
			}
			*k.dst = st
		}
		if conc == 1 && set.wan == 0 {
			l.calls = benchInterleavedCalls(t, v, &l, &mu, samples)
		}
		out = append(out, l)
	}
	e.SetFaults(herontest.Faults{})

	// Clean up: the creds leases go the way users' leases go, the raw keys
	// are deleted straight in Heron. Neither is part of the figures.
	v.run("lease", "revoke", "-prefix", "heron/creds/lat/")
	v.run("lease", "revoke", "-prefix", benchFloorMount+"/creds/lat/")
	v.run("lease", "revoke", "-prefix", benchFloorMount+"/calls/lat/")
	for _, l := range out {
		benchWaitDeleted(t, e, keyIDs(l.credsLeases), 5*time.Minute)
		benchWaitDeleted(t, e, keyIDs(l.floorLeases), 5*time.Minute)
		for _, id := range l.rawKeys {
			if err := h.rawDelete(id); err != nil {
				t.Fatalf("deleting raw key %s: %v", id, err)
			}
		}
	}
	return out
}

// benchInterleavedCalls runs the floor, the floor with each of the engine's
// further calls to Vault alone and with all of them, and the engine's
// issuance, in rounds of one of each in a random order, samples rounds at 1
// client, and returns the p50 of each (the floor first, the engine last).
// Each is run twice in a row and timed the second time: the first after
// another process's turn (the engine's plugin or the floor's) runs cold.
func benchInterleavedCalls(t *testing.T, v *vault, l *benchLatency, mu *sync.Mutex, samples int) []benchCallAlone {
	t.Helper()
	type kind struct {
		what string
		op   func() (lease, error)
	}
	kinds := []kind{{"the floor (`floor/creds/<role>`)", func() (lease, error) { return v.issueFloor("lat") }}}
	for _, c := range benchEngineCalls {
		kinds = append(kinds, kind{"the floor + " + c.what, func() (lease, error) { return v.issueFloorPath("calls", "lat?do="+c.call) }})
	}
	kinds = append(kinds,
		kind{"the floor + all of them (`floor/calls/<role>`)", func() (lease, error) { return v.issueFloorPath("calls", "lat") }},
		kind{"the engine (`creds/<role>`)", func() (lease, error) { return v.issue("", "lat") }})
	durs := make([][]time.Duration, len(kinds))
	order := make([]int, len(kinds))
	for i := range order {
		order[i] = i
	}
	for range samples {
		rand.Shuffle(len(order), func(a, b int) { order[a], order[b] = order[b], order[a] })
		for _, j := range order {
			for try := range 2 {
				t0 := time.Now()
				c, err := kinds[j].op()
				d := time.Since(t0)
				if err != nil {
					t.Fatalf("interleaved %s: %v", kinds[j].what, err)
				}
				mu.Lock()
				if j == len(kinds)-1 {
					l.credsLeases = append(l.credsLeases, c)
				} else {
					l.floorLeases = append(l.floorLeases, c)
				}
				mu.Unlock()
				if try == 1 {
					durs[j] = append(durs[j], d)
				}
			}
		}
	}
	out := make([]benchCallAlone, len(kinds))
	for j, k := range kinds {
		slices.Sort(durs[j])
		out[j] = benchCallAlone{what: k.what, p50: benchPercentile(durs[j], 50)}
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

// benchSplit matches each span (an operation's start and end, in order) with
// the emulator's record of the POST it caused (the POSTs with User-Agent ua
// that arrived after from, in order) and returns the p50 of the time before
// the POST arrived and of the time after the emulator answered it (its
// arrival plus wan, the injected delay).
func benchSplit(e *emulator, ua string, from time.Time, spans [][2]time.Time, wan time.Duration) (to, back time.Duration, ok bool) {
	var arrivals []time.Time
	for _, r := range e.Requests() {
		if r.UserAgent == ua && r.Method == http.MethodPost && !r.Time.Before(from) {
			arrivals = append(arrivals, r.Time)
		}
	}
	if len(arrivals) != len(spans) {
		return 0, 0, false
	}
	tos, backs := make([]time.Duration, len(spans)), make([]time.Duration, len(spans))
	for i, sp := range spans {
		tos[i], backs[i] = arrivals[i].Sub(sp[0]), sp[1].Sub(arrivals[i].Add(wan))
	}
	slices.Sort(tos)
	slices.Sort(backs)
	return benchPercentile(tos, 50), benchPercentile(backs, 50), true
}

// benchPostGaps returns the least and the median gap between consecutive
// arrivals of POSTs with User-Agent ua since from.
func benchPostGaps(e *emulator, ua string, from time.Time) (time.Duration, time.Duration) {
	var prev time.Time
	var gaps []time.Duration
	for _, r := range e.Requests() {
		if r.UserAgent != ua || r.Method != http.MethodPost || r.Time.Before(from) {
			continue
		}
		if !prev.IsZero() {
			gaps = append(gaps, r.Time.Sub(prev))
		}
		prev = r.Time
	}
	if len(gaps) == 0 {
		return 0, 0
	}
	slices.Sort(gaps)
	return gaps[0], benchPercentile(gaps, 50)
}

// benchConnsTo returns the local ends of the TCP connections to the
// emulator at base (http://127.0.0.1:port) that the kernel lists, in any
// state (TIME_WAIT included, which a closed connection stays in for a
// minute): the connections opened to the emulator, whoever opened them.
func benchConnsTo(t *testing.T, base string) map[string]bool {
	t.Helper()
	u, err := url.Parse(base)
	if err != nil {
		t.Fatal(err)
	}
	port, err := strconv.Atoi(u.Port())
	if err != nil {
		t.Fatalf("emulator URL %s: %v", base, err)
	}
	want := fmt.Sprintf(":%04X", port)
	out := map[string]bool{}
	for _, f := range []string{"/proc/net/tcp", "/proc/net/tcp6"} {
		b, err := os.ReadFile(f)
		if err != nil {
			continue
		}
		for line := range strings.SplitSeq(string(b), "\n") {
			fields := strings.Fields(line)
			if len(fields) < 4 || !strings.HasSuffix(fields[2], want) {
				continue
			}
			out[fields[1]] = true
		}
	}
	return out
}

// benchNewConns counts the connections in after that are not in before.
func benchNewConns(before, after map[string]bool) int {
	n := 0
	for c := range after {
		if !before[c] {
			n++
		}
	}
	return n
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
	live      int
	pid       int
	issueWall time.Duration
	runHWM    float64 // plugin VmHWM over the run so far, before the reload (bytes)
	freshRSS  float64 // the new plugin process after its first issuance
	// The fresh plugin process's VmHWM and VmRSS after issuing every lease,
	// after the periodic pass, after the paged listing: VmHWM only grows,
	// so pageHWM is the figure and the earlier ones say which step set it.
	issueHWM, issueRSS float64
	passHWM, passRSS   float64
	pageHWM, pageRSS   float64
	vaultHWM, vaultRSS float64
	vaultRSSBefore     float64
	// The cleanup pass run by tidy with every lease live: tidy also sweeps,
	// reading every key record, which Vault's own pass does hourly.
	passWall, passCPUVault, passCPUPlugin time.Duration
	passErr                               string // tidy's error: the pass failed
	// Errors of Vault's own passes (its rollback of heron/) while the leases
	// were issued, and during the observed pass.
	issuePassErrs, minutePassErrs []string
	// Vault's own pass (every minute), observed: minute.err says why not;
	// minuteAfterPass is whether a background pass had already run since the
	// reload, so that this one is not the first, which sweeps.
	minute          benchPass
	minuteAfterPass bool
	// The paged listing: pages of benchPageSize, how many keys they held.
	pages, listed                         int
	pageWall, pageCPUVault, pageCPUPlugin time.Duration
	pageP50, pageP99                      time.Duration // one page's LIST
	// An unpaged LIST keys/ after the figures, only up to benchFullListMax.
	fullList         bool
	fullListWall     time.Duration
	fullListHWM      float64
	revokeWall       time.Duration
	irrevocableAfter int
}

// hwmSetBy names the step in which the plugin's VmHWM reached its final
// value.
func (r benchRSS) hwmSetBy() string {
	switch {
	case r.issueHWM >= r.pageHWM:
		return "the issuance"
	case r.passHWM >= r.pageHWM:
		return "the periodic pass"
	default:
		return "the paged listing"
	}
}

func benchMeasureRSS(t *testing.T, v *vault, e *emulator, h *benchHTTP, live int) benchRSS {
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
	vaultPID := v.proc.cmd.Process.Pid
	r.vaultRSSBefore = benchProcStatus(t, vaultPID, "VmRSS")
	r.freshRSS = benchProcStatus(t, r.pid, "VmRSS")

	rollbackErrs := len(benchRollbackErrors(t, v))
	from := time.Now()
	leases, errs := issueMany(t, v, "live", live-1, benchIssueConcurrency)
	if len(errs) > 0 {
		t.Fatalf("issuing %d live leases: %d failed, first: %v", live, len(errs), errs[0])
	}
	r.issueWall = time.Since(from)
	r.issueHWM = benchProcStatus(t, r.pid, "VmHWM")
	r.issueRSS = benchProcStatus(t, r.pid, "VmRSS")
	r.issuePassErrs = benchRollbackErrors(t, v)[rollbackErrs:]
	rollbackErrs += len(r.issuePassErrs)
	t.Logf("issued %d live leases in %s (%.0f/s)", live, r.issueWall.Round(time.Second), float64(live)/r.issueWall.Seconds())

	// The cleanup pass Vault runs every minute lists every tracked key id and
	// Heron's keys: with all leases live that is a large working set, so it is
	// part of the figure. Over plain HTTP, so that the wall time is the
	// pass's and not the CLI's start-up.
	pids := []int{vaultPID, r.pid}
	// A failed pass is a figure too (the goal is missed, and why is in the
	// table), not a reason to stop measuring.
	cpu0, t0 := benchCPU(t, pids), time.Now()
	tidyFrom := t0
	if err := h.tidy(); err != nil {
		r.passErr = err.Error()
		t.Logf("tidy failed: %v", err)
	}
	tidyTo := time.Now()
	r.passWall = tidyTo.Sub(t0)
	cpu1 := benchCPU(t, pids)
	r.passCPUVault, r.passCPUPlugin = cpu1[0]-cpu0[0], cpu1[1]-cpu0[1]
	r.passHWM = benchProcStatus(t, r.pid, "VmHWM")
	r.passRSS = benchProcStatus(t, r.pid, "VmRSS")

	// What an auditor's script does with this many keys: list them all, a
	// page at a time, each page starting after the last id of the previous.
	var pageDurs []time.Duration
	after := ""
	cpu0, t0 = benchCPU(t, pids), time.Now()
	for {
		p0 := time.Now()
		keys, err := h.vaultListPage("/v1/heron/keys/", after, benchPageSize)
		if err != nil {
			t.Fatalf("page %d of keys/ (after %q): %v", r.pages+1, after, err)
		}
		pageDurs = append(pageDurs, time.Since(p0))
		r.pages++
		r.listed += len(keys)
		if len(keys) < benchPageSize {
			break
		}
		after = keys[len(keys)-1]
	}
	r.pageWall = time.Since(t0)
	cpu1 = benchCPU(t, pids)
	r.pageCPUVault, r.pageCPUPlugin = cpu1[0]-cpu0[0], cpu1[1]-cpu0[1]
	if r.listed < live {
		t.Fatalf("the paged listing of keys/ found %d keys in %d pages, want at least %d", r.listed, r.pages, live)
	}
	st := benchSummarize(pageDurs, r.pageWall)
	r.pageP50, r.pageP99 = st.p50, st.p99
	r.pageHWM = benchProcStatus(t, r.pid, "VmHWM")
	r.pageRSS = benchProcStatus(t, r.pid, "VmRSS")
	r.vaultHWM = benchProcStatus(t, vaultPID, "VmHWM")
	r.vaultRSS = benchProcStatus(t, vaultPID, "VmRSS")

	// Vault's own pass, the one that runs every minute, with no tidy to time
	// it: observed from outside. It is not the first since the reload (which
	// sweeps) if a background request was sent before now other than by
	// tidy, whose requests are marked background too.
	reloadedAt := from // the issuance began right after the reload
	observeFrom := time.Now()
	var bg []string
	for _, q := range e.Requests() {
		if !benchIsBackground(q) || !q.Time.After(reloadedAt) {
			continue
		}
		byTidy := !q.Time.Before(tidyFrom) && !q.Time.After(tidyTo)
		if q.Time.Before(observeFrom) && !byTidy {
			r.minuteAfterPass = true
		}
		bg = append(bg, fmt.Sprintf("%s %s at +%s (tidy: %t)", q.Method, q.Route, q.Time.Sub(reloadedAt).Round(time.Millisecond), byTidy))
	}
	// The pass lists Heron's keys every 5th pass only (the slowest pass,
	// the one observed here: it is told apart by that list): wait for one.
	r.minute = benchObservePass(t, e, vaultPID, r.pid, 6*time.Minute)
	r.minutePassErrs = benchRollbackErrors(t, v)[rollbackErrs:]
	t.Logf("background requests since the issuance began, before the observation from +%s: %s", observeFrom.Sub(reloadedAt).Round(time.Millisecond), strings.Join(bg, "; "))
	if r.minute.err != "" {
		t.Logf("Vault's own periodic pass not observed: %s", r.minute.err)
	} else {
		t.Logf("Vault's own periodic pass: %s (CPU Vault %s, plugin %s)", r.minute.wall.Round(time.Millisecond), r.minute.cpuVault.Round(time.Millisecond), r.minute.cpuPlugin.Round(time.Millisecond))
	}

	if live <= benchFullListMax {
		// For comparison only, after every figure above is taken: one
		// answer with every key's info.
		r.fullList = true
		t0 = time.Now()
		if s, err := v.api.Logical().List("heron/keys/"); err != nil || s == nil {
			t.Fatalf("list heron/keys/: %v", err)
		} else if keys, _ := s.Data["keys"].([]any); len(keys) < live {
			t.Fatalf("keys/ lists %d keys, want at least %d", len(keys), live)
		}
		r.fullListWall = time.Since(t0)
		r.fullListHWM = benchProcStatus(t, r.pid, "VmHWM")
	}

	// Leave Heron as we found it, the way a user would: revoke them all (at
	// the fast budget, so at least live / 100000 minutes).
	t0 = time.Now()
	v.run("lease", "revoke", "-prefix", "heron/creds/live/")
	ids := append(keyIDs(leases), first.Data.KeyID)
	floor := time.Duration(float64(live) / benchFastBudget * float64(time.Minute))
	benchWaitDeleted(t, e, ids, 3*floor+10*time.Minute)
	r.revokeWall = time.Since(t0)
	eventually(t, 5*time.Minute, "Vault dropping the live leases", func() error { return v.leasesLeft("heron/creds/live/") })
	r.irrevocableAfter = v.irrevocableLeases()
	return r
}

// benchPass is one cleanup pass as seen from outside the plugin.
type benchPass struct {
	wall, cpuVault, cpuPlugin time.Duration
	err                       string // why it was not observed
}

const (
	// benchPassSample is how often benchObservePass samples CPU: the wall
	// time it reports is good to about twice that.
	benchPassSample = 20 * time.Millisecond
	// benchPassBusy is the plugin CPU per sample that counts as working;
	// an idle Go process uses a small fraction of it.
	benchPassBusy = 2 * time.Millisecond
	// benchPassQuiet is how long the plugin must stay idle for a pass to
	// be over: the pass waits on Heron's list and on storage in between.
	benchPassQuiet = 500 * time.Millisecond
)

// benchObservePass waits, at most timeout, for the next cleanup pass that
// Vault runs on its own (its rollback manager calls the plugin's periodic
// function every minute; nothing triggers it from outside) and measures it.
// Nothing else makes the plugin work meanwhile, so the pass is the burst of
// the plugin's CPU that ends with the pass's list of Heron's keys sent:
// from the sample before the first busy one to the last busy one, gaps
// shorter than benchPassQuiet included.
func benchObservePass(t *testing.T, e *emulator, vaultPID, pluginPID int, timeout time.Duration) benchPass {
	t.Helper()
	type sample struct {
		at            time.Time
		vault, plugin time.Duration
	}
	take := func() sample {
		c := benchCPU(t, []int{vaultPID, pluginPID})
		return sample{time.Now(), c[0], c[1]}
	}
	lists := func() int { return e.CountRequests(http.MethodGet, "/api/credentials/keys", "") }
	deadline := time.Now().Add(timeout)

	// Start idle, so that a pass already under way is not taken for a
	// whole one.
	prev, quietSince := take(), time.Now()
	for time.Since(quietSince) < benchPassQuiet {
		if time.Now().After(deadline) {
			return benchPass{err: "the plugin never went idle"}
		}
		time.Sleep(benchPassSample)
		s := take()
		if s.plugin-prev.plugin >= benchPassBusy {
			quietSince = s.at
		}
		prev = s
	}
	lists0 := lists()
	var start, last sample // before the first busy sample; the last busy one
	busy := false
	for {
		if time.Now().After(deadline) {
			return benchPass{err: fmt.Sprintf("no pass within %s", timeout)}
		}
		time.Sleep(benchPassSample)
		s := take()
		if s.plugin-prev.plugin >= benchPassBusy {
			if !busy {
				start, busy = prev, true
			}
			last = s
		} else if busy && s.at.Sub(last.at) >= benchPassQuiet {
			if lists() > lists0 {
				return benchPass{wall: last.at.Sub(start.at), cpuVault: last.vault - start.vault, cpuPlugin: last.plugin - start.plugin}
			}
			// Plugin work that listed nothing in Heron: not the pass.
			busy = false
		}
		prev = s
	}
}

// benchRollbackErrors returns the errors Vault logged for its rollback of
// heron/ so far, the call that runs the plugin's periodic pass: Vault logs
// the error a pass returns, and nothing when it succeeds.
func benchRollbackErrors(t *testing.T, v *vault) []string {
	t.Helper()
	b, err := os.ReadFile(v.logPath)
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for line := range strings.SplitSeq(string(b), "\n") {
		if _, rest, ok := strings.Cut(line, "error rolling back: path=heron/ "); ok {
			out = append(out, strings.TrimSpace(rest))
		}
	}
	return out
}

// ---------------------------------------------------------------------------
// 6. A 3-node cluster with integrated storage (Raft)

// benchRaftNodes is the cluster's size: the smallest that keeps a quorum
// when a node fails, what a team outgrowing one server runs first.
const benchRaftNodes = 3

type benchRaftLatency struct {
	conc                          int
	creds, kvWrite, raw, roleRead benchStats
	floor                         benchStats // floor/creds/<role>; cpuPlugin is the floor plugin's
}

// floorRatio is issue 22's figure on Raft: creds_p50 / floor_p50.
func (l benchRaftLatency) floorRatio() float64 {
	return float64(l.creds.p50) / float64(l.floor.p50)
}

// ratio is the issue's figure on Raft: creds_p50 / (kv_write_p50 +
// raw_post_p50), a lease-less write of a new secret plus the POST that a
// program holding an admin key would send.
func (l benchRaftLatency) ratio() float64 {
	return float64(l.creds.p50) / float64(l.kvWrite.p50+l.raw.p50)
}

type benchRaft struct {
	startup time.Duration // from the first node's start to an active node with the plugin mounted
	latency []benchRaftLatency
	// Raft log entries per operation (the leader's last index before and
	// after each kind's series at 1 client, over commitOps operations);
	// commitsErr says why they are missing.
	commitsCreds, commitsKV, commitsRole, commitsFloor float64
	commitOps                                          int
	commitsErr                                         string
}

// benchMeasureRaft starts a 3-node Raft cluster on 127.0.0.1 with an
// emulator of its own and measures, through the active node, creds/<role>
// next to a KV v2 write and a roles/<name> read, and a raw POST to the
// emulator, at each of benchConcurrencies. The cluster is torn down with the
// test: what it issued goes with it.
func benchMeasureRaft(t *testing.T, samples int) benchRaft {
	t.Helper()
	var r benchRaft
	e := startEmulator(t)
	t0 := time.Now()
	c := startRaftClusterAt(t, benchRaftNodes, "info")
	act, standbys := c.active(60 * time.Second)
	r.startup = time.Since(t0)
	act.configure("development", e.devKey, e.URL, fmt.Sprintf("rate_limit_per_minute=%d", benchFastBudget))
	act.writeRole("raft", "environment=development", "ttl=1h")
	act.run("secrets", "enable", "-path=kv", "-version=2", "kv")
	eventually(t, time.Minute, "KV v2 accepting writes on the Raft cluster", func() error {
		_, err := act.api.Logical().Write("kv/data/warm", map[string]any{"data": map[string]any{"api_key": herontest.NewKeyToken()}})
		return err
	})
	// The first issuance starts the plugin on the active node.
	if _, err := act.issue("", "raft"); err != nil {
		t.Fatalf("first issuance on the Raft cluster: %v", err)
	}
	plugins := act.pluginPIDs(t)
	if len(plugins) != 1 {
		t.Fatalf("want one plugin process under the active node, found %v", plugins)
	}
	// The floor beside the engine, registered and mounted through the
	// active node like the engine.
	benchMountFloor(t, act, e, "raft")
	if _, err := act.issueFloor("raft"); err != nil {
		t.Fatalf("first floor issuance on the Raft cluster: %v", err)
	}
	pids := []int{act.proc.cmd.Process.Pid}
	for _, v := range standbys {
		pids = append(pids, v.proc.cmd.Process.Pid)
	}
	pids = append(pids, plugins[0], os.Getpid(), benchFloorPID(t, act))
	h := newBenchHTTP(act, e)

	var kvSeq, rawSeq atomic.Int64
	for _, conc := range benchConcurrencies {
		l := benchRaftLatency{conc: conc}
		kinds := []struct {
			name    string
			dst     *benchStats
			op      func() error
			commits *float64 // counted at 1 client; nil: nothing to count
		}{
			{"creds", &l.creds, func() error { _, err := act.issue("", "raft"); return err }, &r.commitsCreds},
			{"floor", &l.floor, func() error { _, err := act.issueFloor("raft"); return err }, &r.commitsFloor},
			// A new secret each time, as issuing is a new key each time (and
			// so that KV's max_versions never adds a delete to the write).
			{"KV write", &l.kvWrite, func() error { return h.kvWrite(fmt.Sprintf("/v1/kv/data/bench-%d", kvSeq.Add(1))) }, &r.commitsKV},
			{"role read", &l.roleRead, func() error { return h.vaultGet("/v1/heron/roles/raft") }, &r.commitsRole},
			{"raw POST", &l.raw, func() error {
				_, err := h.rawCreate(fmt.Sprintf("bench-raft-raw-%d", rawSeq.Add(1)))
				return err
			}, nil},
		}
		// Every kind warms up first, so that the Raft index taken between
		// two series counts only the series.
		for _, k := range kinds {
			if _, _, err := benchRun(min(samples, 4*conc), conc, k.op); err != nil {
				t.Fatalf("Raft: %s warm-up at %d clients: %v", k.name, conc, err)
			}
		}
		count := conc == 1
		var index uint64
		if count {
			var err error
			if index, err = benchRaftIndex(act); err != nil {
				r.commitsErr, count = err.Error(), false
			}
		}
		for _, k := range kinds {
			cpu0 := benchCPU(t, pids)
			durs, wall, err := benchRun(samples, conc, k.op)
			if err != nil {
				t.Fatalf("Raft: %s at %d clients: %v", k.name, conc, err)
			}
			cpu1 := benchCPU(t, pids)
			st := benchSummarize(durs, wall)
			per := func(i int) time.Duration { return (cpu1[i] - cpu0[i]) / time.Duration(samples) }
			st.cpuVault = per(0)
			for i := range standbys {
				st.cpuStandby += per(1 + i)
			}
			st.cpuPlugin, st.cpuSelf = per(len(pids)-3), per(len(pids)-2)
			if k.dst == &l.floor {
				st.cpuPlugin = per(len(pids) - 1)
			}
			*k.dst = st
			if count && k.commits != nil {
				next, err := benchRaftIndex(act)
				if err != nil {
					r.commitsErr, count = err.Error(), false
					continue
				}
				*k.commits = float64(next-index) / float64(samples)
				index = next
			}
		}
		if conc == 1 && r.commitsErr == "" {
			r.commitOps = samples
		}
		r.latency = append(r.latency, l)
	}
	return r
}

// benchRaftIndex returns the leader's last Raft log index, from autopilot's
// state (sys/storage/raft/autopilot/state), which autopilot refreshes every
// 2 s (its default update interval) rather than on each read. A read right
// after a series could predate its last commits, so it waits for the state
// to change twice (the followers' last_contact changes at every refresh):
// the second change is a refresh that began after the call.
func benchRaftIndex(v *vault) (uint64, error) {
	prev, _, err := benchRaftState(v)
	if err != nil {
		return 0, err
	}
	changes := 0
	deadline := time.Now().Add(15 * time.Second)
	for time.Now().Before(deadline) {
		time.Sleep(100 * time.Millisecond)
		doc, index, err := benchRaftState(v)
		if err != nil {
			return 0, err
		}
		if doc != prev {
			prev = doc
			if changes++; changes == 2 {
				return index, nil
			}
		}
	}
	return 0, fmt.Errorf("autopilot's state changed %d times in 15 s, want 2 (a refresh after the series)", changes)
}

// benchRaftState reads autopilot's state as v answers it: the raw data
// document and the leader's last log index.
func benchRaftState(v *vault) (string, uint64, error) {
	var st struct {
		Data struct {
			Leader  string `json:"leader"`
			Servers map[string]struct {
				LastIndex uint64 `json:"last_index"`
			} `json:"servers"`
		} `json:"data"`
	}
	req, err := http.NewRequest(http.MethodGet, v.addr+"/v1/sys/storage/raft/autopilot/state", nil)
	if err != nil {
		return "", 0, err
	}
	req.Header.Set("X-Vault-Token", v.token)
	resp, err := v.http.Do(req)
	if err != nil {
		return "", 0, err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		return "", 0, err
	}
	if resp.StatusCode != http.StatusOK {
		return "", 0, fmt.Errorf("autopilot state: %d %s", resp.StatusCode, bytes.TrimSpace(body))
	}
	if err := json.Unmarshal(body, &st); err != nil {
		return "", 0, fmt.Errorf("autopilot state: %w", err)
	}
	leader, ok := st.Data.Servers[st.Data.Leader]
	if !ok {
		return "", 0, fmt.Errorf("autopilot state names leader %q among servers %v", st.Data.Leader, slices.Sorted(maps.Keys(st.Data.Servers)))
	}
	// The response's request_id differs on every read; the data only when
	// autopilot refreshed it.
	var doc struct {
		Data json.RawMessage `json:"data"`
	}
	if err := json.Unmarshal(body, &doc); err != nil {
		return "", 0, err
	}
	return string(doc.Data), leader.LastIndex, nil
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

// kvWrite writes a new secret at path (kv/data/...), as a user storing a
// key of their own would.
func (h *benchHTTP) kvWrite(path string) error {
	body := fmt.Sprintf(`{"data":{"api_key":%q}}`, herontest.NewKeyToken())
	req, err := http.NewRequest(http.MethodPost, h.vault+path, strings.NewReader(body))
	if err != nil {
		return err
	}
	req.Header.Set("X-Vault-Token", h.token)
	return h.do(req, http.StatusOK, nil)
}

// tidy runs the engine's cleanup pass (POST heron/tidy) and waits for it.
// Like vault.tidy it tries again, a few times, on Vault core's own
// "internal error", which is not the engine's.
func (h *benchHTTP) tidy() error {
	var err error
	for attempt := 1; attempt <= 4; attempt++ {
		var req *http.Request
		req, err = http.NewRequest(http.MethodPost, h.vault+"/v1/heron/tidy", strings.NewReader("{}"))
		if err != nil {
			return err
		}
		req.Header.Set("X-Vault-Token", h.token)
		if err = h.do(req, http.StatusOK, nil); err == nil || !strings.Contains(err.Error(), `"internal error"`) {
			return err
		}
		time.Sleep(time.Second)
	}
	return err
}

// vaultListPage is one LIST of path with after and limit as query
// parameters and returns the names; a 404 (Vault's answer to an empty list)
// is an empty page.
func (h *benchHTTP) vaultListPage(path, after string, limit int) ([]string, error) {
	q := url.Values{"limit": {strconv.Itoa(limit)}}
	if after != "" {
		q.Set("after", after)
	}
	req, err := http.NewRequest("LIST", h.vault+path+"?"+q.Encode(), nil)
	if err != nil {
		return nil, err
	}
	req.Header.Set("X-Vault-Token", h.token)
	resp, err := h.c.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		return nil, err
	}
	switch resp.StatusCode {
	case http.StatusOK:
	case http.StatusNotFound:
		return nil, nil
	default:
		return nil, fmt.Errorf("LIST %s: %d %s", req.URL, resp.StatusCode, bytes.TrimSpace(body))
	}
	var out struct {
		Data struct {
			Keys []string `json:"keys"`
		} `json:"data"`
	}
	if err := json.Unmarshal(body, &out); err != nil {
		return nil, fmt.Errorf("LIST %s: %w", req.URL, err)
	}
	return out.Data.Keys, nil
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
		// The deletion times come from the emulator, so polling less often
		// costs no precision; it spares the CPU the revocation runs on when
		// there are 100,000 keys to look at (5 us each: 0.5 s between rounds).
		time.Sleep(max(50*time.Millisecond, time.Duration(len(left))*5*time.Microsecond))
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
