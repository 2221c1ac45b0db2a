//go:build e2e

package e2e

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"maps"
	"net/http"
	"net/url"
	"os"
	"slices"
	"strconv"
	"strings"
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
