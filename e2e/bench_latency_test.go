//go:build e2e

package e2e

import (
	"fmt"
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
	"testing"
	"time"

	"github.com/heron-vault/vault-plugin-secrets-heron/herontest"
)

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
	{"maxttl", "`MaxLeaseTTL` (`framework.CalculateTTL`), asked beside the POST"},
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
