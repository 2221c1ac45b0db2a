//go:build e2e

package e2e

import (
	"fmt"
	"net/http"
	"os"
	"strconv"
	"strings"
	"testing"
	"time"
)

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
