//go:build e2e

package e2e

import (
	"errors"
	"fmt"
	"maps"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"
)

// The reporting half of BenchmarkEngine (bench_engine_test.go runs the
// measurements of bench_counts_test.go, bench_latency_test.go,
// bench_mass_test.go, bench_live_test.go and bench_raftcluster_test.go): the
// metrics of `go test -bench`, the table it prints and the generated section
// of BENCHMARKS.md.

// benchReport reports what one run of BenchmarkEngine measured: b's metrics,
// the markdown table on stdout and, with HERON_BENCH_WRITE=1, BENCHMARKS.md.
func benchReport(b *testing.B, res *benchEngineResults) {
	b.Helper()
	for _, l := range res.latency {
		if l.wan == 0 {
			b.ReportMetric(l.ratio(), fmt.Sprintf("ratio_c%d", l.conc))
			b.ReportMetric(l.floorRatio(), fmt.Sprintf("floor_ratio_c%d", l.conc))
		}
	}
	if res.cfg.parts[benchPartMass] {
		b.ReportMetric(res.mass.ratio(), "revoke_ratio")
	}
	if res.cfg.parts[benchPartLive] {
		b.ReportMetric(res.rss.pageHWM/(1<<20), "plugin_MiB")
		b.ReportMetric(res.rss.passWall.Seconds(), "pass_s")
	}
	for _, l := range res.raft.latency {
		b.ReportMetric(l.ratio(), fmt.Sprintf("raft_ratio_c%d", l.conc))
		b.ReportMetric(l.floorRatio(), fmt.Sprintf("raft_floor_ratio_c%d", l.conc))
	}
	if res.cfg.parts[benchPartRaft] && res.raft.commitsErr == "" {
		b.ReportMetric(res.raft.commitsCreds, "raft_commits/issue")
	}

	env := benchMachine()
	goBench := ""
	if p := os.Getenv("HERON_BENCH_GO_RESULTS"); p != "" {
		raw, err := os.ReadFile(p)
		if err != nil {
			b.Fatalf("HERON_BENCH_GO_RESULTS: %v", err)
		}
		goBench = benchGoLines(string(raw))
	}
	report := res.markdown(env, goBench)
	fmt.Println()
	fmt.Print(report)
	if os.Getenv("HERON_BENCH_WRITE") == "1" {
		path := filepath.Join(repoRoot, "BENCHMARKS.md")
		if err := benchWriteReport(path, report); err != nil {
			b.Fatal(err)
		}
		fmt.Printf("\nwrote %s\n", path)
	}
}

// benchEnv describes the machine and the software of a run.
type benchEnv struct {
	cpu, mem, kernel, vault, goVersion string
	ncpu                               int
}

func benchMachine() benchEnv {
	env := benchEnv{ncpu: runtime.NumCPU(), goVersion: runtime.Version()}
	if b, err := os.ReadFile("/proc/cpuinfo"); err == nil {
		for line := range strings.SplitSeq(string(b), "\n") {
			if k, v, ok := strings.Cut(line, ":"); ok && strings.TrimSpace(k) == "model name" {
				env.cpu = strings.TrimSpace(v)
				break
			}
		}
	}
	if b, err := os.ReadFile("/proc/meminfo"); err == nil {
		for line := range strings.SplitSeq(string(b), "\n") {
			if rest, ok := strings.CutPrefix(line, "MemTotal:"); ok {
				kb, _ := strconv.ParseFloat(strings.TrimSuffix(strings.TrimSpace(rest), " kB"), 64)
				env.mem = fmt.Sprintf("%.1f GiB", kb/(1<<20))
			}
		}
	}
	if b, err := os.ReadFile("/proc/sys/kernel/osrelease"); err == nil {
		env.kernel = "Linux " + strings.TrimSpace(string(b))
	}
	if out, err := exec.Command(vaultBin, "version").Output(); err == nil {
		// A Vault built without release ldflags (make vault) prints the
		// current time as its build date: not worth recording.
		v := strings.TrimSpace(string(out))
		if i, j := strings.Index(v, ", built "), strings.LastIndex(v, " ("); i > 0 && j > i {
			v = v[:i] + v[j:]
		}
		env.vault = v
	}
	return env
}

func benchLoadavg() string {
	b, err := os.ReadFile("/proc/loadavg")
	if err != nil {
		return "?"
	}
	f := strings.Fields(string(b))
	if len(f) < 3 {
		return "?"
	}
	return strings.Join(f[:3], " ")
}

// benchGoLines keeps the result lines of `go test -bench` output.
func benchGoLines(out string) string {
	var keep []string
	for line := range strings.SplitSeq(out, "\n") {
		line = strings.TrimRight(line, " \r")
		for _, p := range []string{"goos:", "goarch:", "pkg:", "cpu:", "Benchmark"} {
			if strings.HasPrefix(line, p) {
				keep = append(keep, line)
				break
			}
		}
	}
	return strings.Join(keep, "\n")
}

func benchMs(d time.Duration) string {
	return fmt.Sprintf("%.2f ms", float64(d)/float64(time.Millisecond))
}

func benchMiB(b float64) string { return fmt.Sprintf("%.1f MiB", b/(1<<20)) }

func benchWithin(ok bool) string {
	if ok {
		return "within"
	}
	return "**over budget**"
}

// benchCell makes an error message fit a markdown table cell.
func benchCell(s string) string {
	s = strings.Join(strings.Fields(s), " ")
	s = strings.ReplaceAll(s, "|", "\\|")
	if len(s) > 300 {
		s = s[:300] + "..."
	}
	return "`" + strings.ReplaceAll(s, "`", "'") + "`"
}

func benchVerdict(met bool) string {
	if met {
		return "met"
	}
	return "**missed**"
}

// Goals from the issues.
const (
	benchGoalRatio       = 1.2
	benchGoalRevokeRatio = 1.15
	// Measurement 4's goals hold at benchGoalLive live leases (issue 13):
	// the plugin's VmHWM through issuance, the periodic pass and a paged
	// listing, and the periodic pass's wall time.
	benchGoalLive = 100000
	benchGoalRSS  = 96 << 20
	benchGoalPass = time.Second
	// Measurement 6: creds_p50 / (kv_write_p50 + raw_post_p50) on the 3-node
	// Raft cluster at 1 client. Its floor is about 2: Vault's own commits
	// per lease plus the two a crash-safe issuance needs.
	benchGoalRaftRatio = 2.2
	// Issue 13: creds against a roles/<name> read plus the POST on the dev
	// server, and against a KV read plus the POST with 20 ms to Heron.
	benchGoalRolesRatio = 1.5
	benchGoalWANRatio   = 1.10
	// Issue 22: creds against the floor plugin's issuance (e2e/floorplugin),
	// on the dev server and on Raft, at every client count: the engine's own
	// work under 10 % of the floor.
	benchGoalFloorRatio = 1.10
)

// benchFloorRows prints the floor's rows of a setting: its latency and
// creds_p50 / floor_p50 against the goal.
func benchFloorRows(p func(string, ...any), num, where string, conc int, creds, floor benchStats) {
	if floor.n == 0 {
		return
	}
	p("| %s | %sfloor plugin `floor/creds/<role>` p50 / p99, %d client(s) | %s / %s | | | one storage read, two writes of the engine's sizes, one POST over plain net/http, a lease of the same shape (e2e/floorplugin); CPU per issuance: floor plugin %s (the engine's plugin: %s) |\n",
		num, where, conc, benchMs(floor.p50), benchMs(floor.p99), benchMs(floor.cpuPlugin), benchMs(creds.cpuPlugin))
	r := float64(creds.p50) / float64(floor.p50)
	gaps := ""
	if creds.postGapP50 > 0 {
		gaps = fmt.Sprintf("; the engine's POSTs reached Heron at least %s apart (median %s: at %d/min its limiter lets a tenth of a second's worth, spaced %s on average, go together, see BenchmarkLimiterAtMaxBudget), the floor's at least %s (median %s); throughput %.0f/s against the floor's %.0f/s",
			benchMs(creds.postGapMin), benchMs(creds.postGapP50), benchFastBudget, benchMs(time.Minute/benchFastBudget), benchMs(floor.postGapMin), benchMs(floor.postGapP50), creds.throughput, floor.throughput)
	}
	p("| %s | %screds_p50 / floor_p50, %d client(s) | %.2f | <= %.2f | %s | the engine's own work beyond the floor (name template, limiter, locks, replay check, record contents, event): %s at p50, %s of plugin CPU per issuance%s |\n",
		num, where, conc, r, benchGoalFloorRatio, benchVerdict(r <= benchGoalFloorRatio), benchMs(creds.p50-floor.p50), benchMs(creds.cpuPlugin-floor.cpuPlugin), gaps)
}

// benchCores is how many cores a setting kept busy: its throughput times
// the CPU each operation took in every process measured.
func benchCores(s benchStats) float64 {
	return s.throughput * (s.cpuVault + s.cpuStandby + s.cpuPlugin + s.cpuSelf).Seconds()
}

func (r *benchEngineResults) markdown(env benchEnv, goBench string) string {
	var w strings.Builder
	p := func(format string, a ...any) { fmt.Fprintf(&w, format, a...) }
	parts := r.cfg.parts
	c := r.counts
	countsMet := c.issue == 1 && c.expiry == 1 && c.revoke == 1 && c.renew == 0

	p("Run of %s UTC, %.1f minutes. Machine: %s, %d CPUs, %s RAM, %s; load average before the run %s.\n",
		r.started.UTC().Format("2006-01-02 15:04"), r.runLength.Minutes(), env.cpu, env.ncpu, env.mem, env.kernel, r.loadavg)
	p("%s (measurements 1-4: dev server, in-memory storage; 6: a %d-node cluster with integrated storage (Raft); log level info); %s; emulator in the benchmark process, on 127.0.0.1.\n",
		env.vault, benchRaftNodes, env.goVersion)
	p("Sizes: %d leases revoked at B = %d/min, %d live leases, %d latency samples per setting (on the Raft cluster too).\n",
		r.cfg.leases, r.cfg.budget, r.cfg.live, r.cfg.samples)
	if !r.cfg.all() {
		p("Partial run (HERON_BENCH_PARTS): %s only.\n", strings.Join(slices.Sorted(maps.Keys(parts)), ", "))
	}
	p("\n| # | measurement | result | goal | | what limits it |\n|---|---|---|---|---|---|\n")
	if parts[benchPartCounts] {
		p("| 1 | upstream requests per issue / expiry / revoke / renew | %.2f / %.2f / %.2f / %.2f | 1 / 1 / 1 / 0 | %s | the physical limit itself: one request per lease event, none per renewal |\n",
			c.issue, c.expiry, c.revoke, c.renew, benchVerdict(countsMet))
	}
	for _, l := range r.latency {
		if l.wan > 0 {
			continue
		}
		p("| 2 | `creds/<role>` p50 / p99, %d client(s) | %s / %s | | | CPU per issuance: Vault %s, plugin %s |\n", l.conc, benchMs(l.creds.p50), benchMs(l.creds.p99),
			benchMs(l.creds.cpuVault), benchMs(l.creds.cpuPlugin))
		benchFloorRows(p, "2", "", l.conc, l.creds, l.floor)
		if fc := l.floorCalls; fc.n > 0 {
			p("| 2 | floor plugin plus the engine's further calls to Vault `floor/calls/<role>` p50 / p99, %d client(s) | %s / %s | | | MaxLeaseTTL beside the POST, a storage read after the POST, a log line, an event; of the engine's %s over the floor at p50, %s are these calls and %s its own code; CPU per issuance: Vault %s, plugin %s |\n",
				l.conc, benchMs(fc.p50), benchMs(fc.p99), benchMs(l.creds.p50-l.floor.p50), benchMs(fc.p50-l.floor.p50), benchMs(l.creds.p50-fc.p50), benchMs(fc.cpuVault), benchMs(fc.cpuPlugin))
		}
		p("| 2 | KV v2 read p50 / p99, %d client(s) | %s / %s | | | one request inside Vault's process |\n", l.conc, benchMs(l.kv.p50), benchMs(l.kv.p99))
		p("| 2 | raw POST to Heron p50 / p99, %d client(s) | %s / %s | | | loopback to the in-process emulator |\n", l.conc, benchMs(l.raw.p50), benchMs(l.raw.p99))
		limit := fmt.Sprintf("Vault's plugin boundary: a `roles/<name>` read (one plugin round trip, one storage read, no upstream call) alone takes %s, %.1fx the denominator",
			benchMs(l.roleRead.p50), float64(l.roleRead.p50)/float64(l.kv.p50+l.raw.p50))
		if l.conc > 1 {
			limit = fmt.Sprintf("CPU: issuing kept %.1f of %d cores busy (%.0f/s)", benchCores(l.creds), env.ncpu, l.creds.throughput)
		}
		p("| 2 | creds_p50 / (kv_p50 + raw_post_p50), %d client(s) | %.2f | <= %.1f | %s | %s |\n",
			l.conc, l.ratio(), benchGoalRatio, benchVerdict(l.ratio() <= benchGoalRatio), limit)
		// Issue 13's measure of the engine's own cost: against a plugin
		// round trip that does nothing (a roles/<name> read) plus the POST.
		rr := float64(l.creds.p50) / float64(l.roleRead.p50+l.raw.p50)
		goal, verdict := "(judged at 1 client)", ""
		if l.conc == 1 {
			goal, verdict = fmt.Sprintf("<= %.1f", benchGoalRolesRatio), benchVerdict(rr <= benchGoalRolesRatio)
		}
		p("| 2 | creds_p50 / (roles_read_p50 + raw_post_p50), %d client(s) | %.2f | %s | %s | the issuance's own work beyond a plugin round trip and the POST: %s (2 storage writes, the lease's registration by Vault, the name template, the event) |\n",
			l.conc, rr, goal, verdict, benchMs(l.creds.p50-l.roleRead.p50-l.raw.p50))
	}
	for _, l := range r.latency {
		if l.wan == 0 {
			continue
		}
		goal, verdict := "(judged at 1 client)", ""
		if l.conc == 1 {
			goal, verdict = fmt.Sprintf("<= %.2f", benchGoalWANRatio), benchVerdict(l.ratio() <= benchGoalWANRatio)
		}
		floor := ""
		if l.floor.n > 0 {
			floor = fmt.Sprintf(", the floor plugin %s (creds_p50 / floor_p50 %.2f; the floor's own ratio to KV + raw POST %.2f)",
				benchMs(l.floor.p50-l.raw.p50), l.floorRatio(), float64(l.floor.p50)/float64(l.kv.p50+l.raw.p50))
		}
		p("| 2 | same ratio with every upstream answer delayed %s (a network between Vault and Heron), %d client(s): creds p50 %s, KV %s, raw POST %s | %.2f | %s | %s | the upstream delay; the engine adds %s to the raw POST%s |\n",
			l.wan, l.conc, benchMs(l.creds.p50), benchMs(l.kv.p50), benchMs(l.raw.p50), l.ratio(), goal, verdict, benchMs(l.creds.p50-l.raw.p50), floor)
	}
	m := r.mass
	if parts[benchPartMass] {
		p("| 3 | revoke -prefix of %d leases at B = %d/min: wall / (%d / B) | %.1f s / %.1f s = %.3f, %d irrevocable | <= %.2f, 0 irrevocable | %s | the budget B itself (the engine's token bucket) |\n",
			m.n, m.budget, m.n, m.wall.Seconds(), m.floor().Seconds(), m.ratio(), m.irrevocable, benchGoalRevokeRatio,
			benchVerdict(m.ratio() <= benchGoalRevokeRatio && m.irrevocable == 0))
	}
	s := r.rss
	if parts[benchPartLive] {
		atSize := func(met bool) (string, string) {
			if s.live < benchGoalLive {
				return fmt.Sprintf("(at %d)", benchGoalLive), "(not the goal's size)"
			}
			return "", benchVerdict(met)
		}
		note, verdict := atSize(s.pageHWM <= benchGoalRSS)
		p("| 4 | plugin VmHWM with %d live leases: after issuing them / after `tidy` / after a paged listing of all (pages of %d) | %s / %s / %s | <= %s %s | %s | set by %s (VmRSS after each step: %s / %s / %s) |\n",
			s.live, benchPageSize, benchMiB(s.issueHWM), benchMiB(s.passHWM), benchMiB(s.pageHWM), benchMiB(benchGoalRSS), note, verdict,
			s.hwmSetBy(), benchMiB(s.issueRSS), benchMiB(s.passRSS), benchMiB(s.pageRSS))
		// What bounds a step, from its CPU: computing if Vault and the
		// plugin were busy most of its wall time.
		passBound := func(wall, cpu time.Duration) string {
			if cpu >= wall*8/10 {
				return fmt.Sprintf("CPU: Vault and the plugin used %s of CPU in %s", cpu.Round(time.Millisecond), wall.Round(time.Millisecond))
			}
			return fmt.Sprintf("waiting more than computing: Vault and the plugin used %s of CPU in %s", cpu.Round(time.Millisecond), wall.Round(time.Millisecond))
		}
		if mp := s.minute; mp.err == "" {
			note, verdict = atSize(mp.wall <= benchGoalPass)
			first := ""
			if !s.minuteAfterPass {
				first = " (the first since the reload: it swept every record too)"
			}
			failed := ""
			if len(s.minutePassErrs) > 0 {
				failed = ", **failed**: " + benchCell(s.minutePassErrs[len(s.minutePassErrs)-1])
				verdict = benchVerdict(false)
			}
			p("| 4 | Vault's own periodic pass (every minute), observed, with %d tracked keys%s: wall (CPU Vault / plugin) | %s (%s / %s)%s | <= %s wall %s | %s | %s; the pass observed is the one that lists Heron's %d keys (every 5th pass; the tracked key ids and the rolling sweep's shares of the records are read on the other passes), and reads the retained keys' records |\n",
				s.live, first, mp.wall.Round(10*time.Millisecond), mp.cpuVault.Round(time.Millisecond), mp.cpuPlugin.Round(time.Millisecond), failed,
				benchGoalPass, note, verdict, passBound(mp.wall, mp.cpuVault+mp.cpuPlugin), s.live)
		} else {
			p("| 4 | Vault's own periodic pass (every minute) with %d tracked keys | not observed: %s | <= %s wall | | |\n", s.live, mp.err, benchGoalPass)
		}
		note, verdict = atSize(s.passWall <= benchGoalPass)
		failed := ""
		if s.passErr != "" {
			failed, verdict = ", **failed**: "+benchCell(s.passErr), benchVerdict(false)
		}
		p("| 4 | `tidy` with %d tracked keys (the pass plus the sweep that reads every key record, hourly in Vault's own pass): wall (CPU Vault / plugin) | %s (%s / %s)%s | <= %s wall %s | %s | %s |\n",
			s.live, s.passWall.Round(time.Millisecond), s.passCPUVault.Round(time.Millisecond), s.passCPUPlugin.Round(time.Millisecond), failed,
			benchGoalPass, note, verdict, passBound(s.passWall, s.passCPUVault+s.passCPUPlugin))
		p("| 4 | paged `LIST heron/keys/` of %d keys in %d page(s) of %d: wall; one page p50 / p99 | %s; %s / %s | | | %s |\n",
			s.listed, s.pages, benchPageSize, s.pageWall.Round(10*time.Millisecond), benchMs(s.pageP50), benchMs(s.pageP99),
			passBound(s.pageWall, s.pageCPUVault+s.pageCPUPlugin))
	}
	ra := r.raft
	for _, l := range ra.latency {
		p("| 6 | %d-node Raft: `creds/<role>` p50 / p99, %d client(s) | %s / %s | | | CPU per issuance: active node %s, standbys %s, plugin %s |\n",
			benchRaftNodes, l.conc, benchMs(l.creds.p50), benchMs(l.creds.p99), benchMs(l.creds.cpuVault), benchMs(l.creds.cpuStandby), benchMs(l.creds.cpuPlugin))
		benchFloorRows(p, "6", fmt.Sprintf("%d-node Raft: ", benchRaftNodes), l.conc, l.creds, l.floor)
		p("| 6 | %d-node Raft: KV v2 write p50 / p99, %d client(s) | %s / %s | | | its Raft commits: quorum round trips on loopback |\n",
			benchRaftNodes, l.conc, benchMs(l.kvWrite.p50), benchMs(l.kvWrite.p99))
		p("| 6 | %d-node Raft: `roles/<name>` read p50 / p99, %d client(s) | %s / %s | | | one plugin round trip, no commit |\n",
			benchRaftNodes, l.conc, benchMs(l.roleRead.p50), benchMs(l.roleRead.p99))
		p("| 6 | %d-node Raft: raw POST to Heron p50 / p99, %d client(s) | %s / %s | | | loopback to the in-process emulator |\n",
			benchRaftNodes, l.conc, benchMs(l.raw.p50), benchMs(l.raw.p99))
		goal, verdict := fmt.Sprintf("<= %.1f", benchGoalRaftRatio), benchVerdict(l.ratio() <= benchGoalRaftRatio)
		cpuOf := func(s benchStats) time.Duration { return s.cpuVault + s.cpuStandby + s.cpuPlugin + s.cpuSelf }
		limit := fmt.Sprintf("CPU per operation, all processes: %s per issuance against %s per KV write", benchMs(cpuOf(l.creds)), benchMs(cpuOf(l.kvWrite)))
		if ra.commitsErr == "" && ra.commitsKV > 0 {
			limit = fmt.Sprintf("Raft commits: %.2f per issuance against %.2f per KV write, about %s each (the KV write's p50 over its commits); ",
				ra.commitsCreds, ra.commitsKV, benchMs(time.Duration(float64(l.kvWrite.p50)/ra.commitsKV))) + limit
		}
		if l.conc > 1 {
			goal, verdict = "(not the goal's setting)", ""
			limit = fmt.Sprintf("CPU: issuing kept %.1f of %d cores busy (%.0f/s; KV writes %.1f cores at %.0f/s), the %d nodes sharing them",
				benchCores(l.creds), env.ncpu, l.creds.throughput, benchCores(l.kvWrite), l.kvWrite.throughput, benchRaftNodes)
			if ra.commitsErr == "" {
				limit += fmt.Sprintf("; Raft: %.0f commits/s issuing, %.0f/s writing KV", l.creds.throughput*ra.commitsCreds, l.kvWrite.throughput*ra.commitsKV)
			}
		}
		p("| 6 | %d-node Raft: creds_p50 / (kv_write_p50 + raw_post_p50), %d client(s) | %.2f | %s | %s | %s |\n",
			benchRaftNodes, l.conc, l.ratio(), goal, verdict, limit)
	}
	if parts[benchPartRaft] {
		if ra.commitsErr == "" {
			p("| 6 | Raft commits per issuance / floor plugin's issuance / KV v2 write / `roles/<name>` read (the leader's log index, over %d of each at 1 client) | %.2f / %.2f / %.2f / %.2f | | | every storage write is one commit: the engine's and Vault's own for the lease |\n",
				ra.commitOps, ra.commitsCreds, ra.commitsFloor, ra.commitsKV, ra.commitsRole)
		} else {
			p("| 6 | Raft commits per issuance / KV v2 write / `roles/<name>` read | not measured: %s | | | |\n", ra.commitsErr)
		}
	}

	p("\nDetails\n\n")
	if parts[benchPartCounts] {
		p("- 1. Issue: %s (over %d issues). Renew: %s. Revoke: %s. Expiry: %s (over %d leases of 2 s). "+
			"Not per lease but per minute and environment: the periodic cleanup pass sent %d requests (`(background)` User-Agent) over the %.1f minutes of the dev server.\n",
			c.issueDetail, benchCountSamples, c.renewDetail, c.revokeDetail, c.expiryDetail, benchExpirySamples, r.bgTotal, r.devLength.Minutes())
	}
	if parts[benchPartLatency] {
		p("- 2. Latency, every kind over plain net/http with keep-alive, after a warm-up; throughput is operations per second over each setting:\n\n")
		p("  | clients | upstream delay | kind | n | p50 | p99 | mean | ops/s | CPU per op: Vault / plugin / emulator+client | connections opened to Heron |\n  |---|---|---|---|---|---|---|---|---|---|\n")
		for _, l := range r.latency {
			for _, k := range []struct {
				name string
				s    benchStats
			}{
				{"creds/<role>", l.creds},
				{"floor/creds/<role> (the floor plugin; its CPU in the plugin column)", l.floor},
				{"floor/calls/<role> (the floor plus the engine's further calls to Vault)", l.floorCalls},
				{"KV v2 read", l.kv},
				{"raw POST to Heron", l.raw},
				{"roles/<name> read (plugin round trip, one storage read, no upstream call)", l.roleRead},
				{"auth/token/create (Vault's own leased credential, no plugin)", l.tokenCreate},
			} {
				if k.s.n == 0 {
					continue
				}
				p("  | %d | %s | %s | %d | %s | %s | %s | %.0f | %s / %s / %s | %d |\n", l.conc, l.wan, k.name, k.s.n, benchMs(k.s.p50), benchMs(k.s.p99), benchMs(k.s.mean), k.s.throughput,
					benchMs(k.s.cpuVault), benchMs(k.s.cpuPlugin), benchMs(k.s.cpuSelf), k.s.heronConns)
			}
		}
		p("\n")
		first := true
		for _, l := range r.latency {
			for _, k := range []struct {
				name string
				s    benchStats
			}{{"creds/<role>", l.creds}, {"floor/creds/<role>", l.floor}, {"raw POST to Heron", l.raw}} {
				if !k.s.split {
					continue
				}
				if first {
					p("  Where the time of one operation goes at 1 client (p50s), split at the emulator's arrival of its POST: before it arrived, and after the emulator answered (arrival + the injected delay):\n\n")
					p("  | upstream delay | kind | p50 | before the POST arrived | after Heron answered |\n  |---|---|---|---|---|\n")
					first = false
				}
				p("  | %s | %s | %s | %s | %s |\n", l.wan, k.name, benchMs(k.s.p50), benchMs(k.s.toHeron), benchMs(k.s.fromHeron))
			}
		}
		if !first {
			p("\n")
		}
		for _, l := range r.latency {
			if len(l.calls) == 0 {
				continue
			}
			floor := l.calls[0].p50
			p("  What the engine's further calls to Vault cost: the floor with each of them alone, with all of them, and the engine, in %d rounds of one of each in a random order, each timed on its second run in a row (1 client, loopback):\n\n", r.cfg.samples)
			p("  | kind | p50 | over the floor |\n  |---|---|---|\n")
			for _, c := range l.calls {
				p("  | %s | %s | %s |\n", c.what, benchMs(c.p50), benchMs(c.p50-floor))
			}
			p("\n")
		}
	}
	if parts[benchPartMass] {
		p("- 3. Issuing the %d leases (16 clients, budget %d/min) took %s: %.2f POST and %.2f requests in all per lease. "+
			"The revocation sent %d DELETEs (other requests: %s); at most %d engine requests fell in any 60 s window (budget %d, +1 tolerated: %s). "+
			"Vault held no lease under the prefix %.1f s after the command.\n",
			m.n, benchFastBudget, m.issueWall.Round(100*time.Millisecond), m.postsPerKey, m.issueReqsPer,
			m.deletes, m.other, m.maxInMinute, m.budget, benchWithin(m.maxInMinute <= m.budget+1), m.leasesGone.Seconds())
	}
	if parts[benchPartLive] {
		p("- 4. A fresh plugin process (`vault plugin reload`; VmRSS %s after its first issuance) issued %d leases in %s (%d clients, %.0f/s): VmHWM %s. "+
			"`tidy` then ran the cleanup pass with the sweep (lists tracked key ids, reads every record, lists Heron's keys) in %s (CPU: Vault %s, plugin %s): VmHWM %s. "+
			"A `LIST heron/keys/?limit=%d&after=<last id>` loop then read all %d keys in %d page(s) in %s (a page: p50 %s, p99 %s): VmHWM %s. ",
			benchMiB(s.freshRSS), s.live, s.issueWall.Round(100*time.Millisecond), benchIssueConcurrency, float64(s.live)/s.issueWall.Seconds(), benchMiB(s.issueHWM),
			s.passWall.Round(time.Millisecond), s.passCPUVault.Round(time.Millisecond), s.passCPUPlugin.Round(time.Millisecond), benchMiB(s.passHWM),
			benchPageSize, s.listed, s.pages, s.pageWall.Round(10*time.Millisecond), benchMs(s.pageP50), benchMs(s.pageP99), benchMiB(s.pageHWM))
		if n := len(s.issuePassErrs); n > 0 {
			p("While the leases were issued, Vault logged %d failed passes of its own (its rollback of heron/), the last: %s. ", n, benchCell(s.issuePassErrs[n-1]))
		}
		if mp := s.minute; mp.err == "" {
			p("Vault's own pass, observed next (the burst of plugin CPU, sampled every %s, around its list of Heron's keys), took %s (CPU: Vault %s, plugin %s). ",
				benchPassSample, mp.wall.Round(10*time.Millisecond), mp.cpuVault.Round(time.Millisecond), mp.cpuPlugin.Round(time.Millisecond))
		}
		if s.fullList {
			p("For comparison, one unpaged `LIST heron/keys/` afterwards (every key's info in one answer) took %s and raised VmHWM to %s. ",
				s.fullListWall.Round(time.Millisecond), benchMiB(s.fullListHWM))
		} else {
			p("No unpaged `LIST heron/keys/` at this size (only up to %d keys: it builds every key's info in one answer). ", benchFullListMax)
		}
		p("The plugin's VmHWM over the earlier measurements was %s. Vault itself: VmRSS %s before, %s with the leases (VmHWM %s). "+
			"Revoking them all at %d/min took %s, %d irrevocable.\n",
			benchMiB(s.runHWM), benchMiB(s.vaultRSSBefore), benchMiB(s.vaultRSS), benchMiB(s.vaultHWM), benchFastBudget, s.revokeWall.Round(100*time.Millisecond), s.irrevocableAfter)
	}
	if goBench != "" {
		p("- 5. `go test -run '^$' -bench . -benchmem ./heronapi/ . ./e2e/floorplugin/`:\n\n```\n%s\n```\n", goBench)
	}
	if parts[benchPartRaft] {
		p("- 6. A %d-node cluster with integrated storage (Raft, `retry_join`, `performance_multiplier = 1`, all on 127.0.0.1 and these %d CPUs, its own emulator) "+
			"was up, with one active node and the plugin mounted, %s after the first node started. Every request went to the active node "+
			"over plain net/http with keep-alive, after a warm-up; a KV write creates a new secret each time. ",
			benchRaftNodes, env.ncpu, ra.startup.Round(100*time.Millisecond))
		if ra.commitsErr == "" {
			p("Raft commits are the leader's last log index from `sys/storage/raft/autopilot/state` before and after each kind's %d operations at 1 client (autopilot refreshes it every 2 s; the benchmark waits for a refresh), divided by %d; a `roles/<name>` read commits nothing, so its figure is the background noise.\n\n",
				ra.commitOps, ra.commitOps)
		} else {
			p("Raft commits were not measured: %s.\n\n", ra.commitsErr)
		}
		p("  | clients | kind | n | p50 | p99 | mean | ops/s | CPU per op: active node / standbys / plugin / emulator+client |\n  |---|---|---|---|---|---|---|---|\n")
		for _, l := range ra.latency {
			for _, k := range []struct {
				name string
				s    benchStats
			}{
				{"creds/<role>", l.creds},
				{"floor/creds/<role> (the floor plugin; its CPU in the plugin column)", l.floor},
				{"KV v2 write (a new secret)", l.kvWrite},
				{"roles/<name> read", l.roleRead},
				{"raw POST to Heron", l.raw},
			} {
				p("  | %d | %s | %d | %s | %s | %s | %.0f | %s / %s / %s / %s |\n", l.conc, k.name, k.s.n, benchMs(k.s.p50), benchMs(k.s.p99), benchMs(k.s.mean), k.s.throughput,
					benchMs(k.s.cpuVault), benchMs(k.s.cpuStandby), benchMs(k.s.cpuPlugin), benchMs(k.s.cpuSelf))
			}
		}
	}
	return w.String()
}

const (
	benchMarkBegin = "<!-- BEGIN make bench: generated by BenchmarkEngine (e2e/bench_engine_test.go), do not edit by hand -->"
	benchMarkEnd   = "<!-- END make bench -->"
)

// benchWriteReport puts report between the markers of path, keeping the text
// around them; a missing file (or one without markers) gets a skeleton.
func benchWriteReport(path, report string) error {
	block := benchMarkBegin + "\n" + report + benchMarkEnd
	old, err := os.ReadFile(path)
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		return err
	}
	s := string(old)
	i, j := strings.Index(s, benchMarkBegin), strings.Index(s, benchMarkEnd)
	if i >= 0 && j > i {
		s = s[:i] + block + s[j+len(benchMarkEnd):]
	} else {
		s = "# Benchmarks\n\nReproduce with `make bench`.\n\n" + block + "\n"
	}
	return os.WriteFile(path, []byte(s), 0o644)
}
