//go:build e2e

package e2e

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	vaultapi "github.com/hashicorp/vault/api"
)

const rootToken = "root"

// vault is one `vault server` process of one test, dev mode or file storage.
type vault struct {
	t    *testing.T
	dir  string
	home string
	port int
	addr string
	// token is the root token: "root" in dev mode, from init otherwise.
	token string

	fileMode   bool
	configPath string
	unsealKey  string

	// logLevel is the dev server's log level (file mode: see its config).
	logLevel string
	logPath  string
	proc     *proc
	api      *vaultapi.Client
	// http carries the plain net/http requests of issue and the benchmark.
	http *http.Client
}

// startDevVault starts `vault server -dev` with the plugin directory, then
// registers the plugin by checksum and mounts it at heron/.
func startDevVault(t *testing.T) *vault {
	t.Helper()
	return startDevVaultAt(t, "debug")
}

// startDevVaultAt is startDevVault at logLevel.
func startDevVaultAt(t *testing.T, logLevel string) *vault {
	t.Helper()
	v := newVault(t)
	v.token = rootToken
	v.logLevel = logLevel
	v.start()
	v.waitHealth(http.StatusOK)
	v.initAPI()
	v.enableHeron()
	return v
}

// startFileVault starts a non-dev server with file storage, so that state
// (leases included) survives a restart, then inits, unseals and mounts heron/.
func startFileVault(t *testing.T) *vault {
	t.Helper()
	v := newVault(t)
	v.fileMode = true
	v.configPath = filepath.Join(v.dir, "vault.hcl")
	cfg := fmt.Sprintf(`
storage "file" {
  path = %q
}
listener "tcp" {
  address         = "127.0.0.1:%d"
  cluster_address = "127.0.0.1:%d"
  tls_disable     = true
}
api_addr         = "http://127.0.0.1:%d"
cluster_addr     = "https://127.0.0.1:%d"
plugin_directory = %q
disable_mlock    = true
log_level        = "debug"
`, filepath.Join(v.dir, "data"), v.port, v.port+1, v.port, v.port+1, pluginDir)
	if err := os.WriteFile(v.configPath, []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}
	v.start()
	v.waitHealth(0)

	var init struct {
		Keys      []string `json:"unseal_keys_b64"`
		RootToken string   `json:"root_token"`
	}
	v.runJSON(&init, "operator", "init", "-key-shares=1", "-key-threshold=1", "-format=json")
	if len(init.Keys) != 1 || init.RootToken == "" {
		t.Fatalf("operator init: unexpected answer %+v", init)
	}
	v.unsealKey, v.token = init.Keys[0], init.RootToken
	v.unseal()
	v.initAPI()
	v.enableHeron()
	return v
}

func newVault(t *testing.T) *vault {
	dir := t.TempDir()
	v := &vault{t: t, dir: dir, home: filepath.Join(dir, "home"), logPath: filepath.Join(dir, "vault.log")}
	if err := os.MkdirAll(v.home, 0o700); err != nil {
		t.Fatal(err)
	}
	v.port = freePortPair(t)
	v.addr = fmt.Sprintf("http://127.0.0.1:%d", v.port)
	// Keep-alive connections for more concurrent clients than any test or
	// the benchmark runs; the timeout outlasts the 2 minutes the crash test
	// waits for a read itself.
	tr := &http.Transport{MaxIdleConns: 256, MaxIdleConnsPerHost: 128, IdleConnTimeout: time.Minute}
	v.http = &http.Client{Transport: tr, Timeout: 3 * time.Minute}
	t.Cleanup(tr.CloseIdleConnections)
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("---- tail of the Vault log %s ----\n%s", v.logPath, fileTail(v.logPath, 120))
		}
	})
	return v
}

func (v *vault) start() {
	v.t.Helper()
	var args []string
	if v.fileMode {
		args = []string{"server", "-config=" + v.configPath}
	} else {
		args = []string{"server", "-dev",
			"-dev-root-token-id=" + rootToken,
			fmt.Sprintf("-dev-listen-address=127.0.0.1:%d", v.port),
			"-dev-plugin-dir=" + pluginDir,
			"-log-level=" + v.logLevel}
	}
	v.proc = startProc(v.t, "vault", v.logPath, baseEnv(v.home), vaultBin, args...)
}

// stop stops the server with sig (SIGTERM: graceful shutdown; SIGKILL: crash).
func (v *vault) stop(sig syscall.Signal) {
	v.t.Helper()
	v.proc.stop(sig, 20*time.Second)
}

// restart starts a stopped file-mode server again and unseals it.
func (v *vault) restart() {
	v.t.Helper()
	if !v.fileMode {
		v.t.Fatal("restart needs file storage; a dev server forgets everything")
	}
	v.start()
	v.waitHealth(0)
	v.unseal()
}

func (v *vault) unseal() {
	v.t.Helper()
	v.run("operator", "unseal", v.unsealKey)
	v.waitHealth(http.StatusOK)
}

// waitHealth polls sys/health until it answers want (0: any answer, i.e. the
// listener is up), failing early if the process died.
func (v *vault) waitHealth(want int) {
	v.t.Helper()
	deadline := time.Now().Add(90 * time.Second)
	c := &http.Client{Timeout: 2 * time.Second}
	var last string
	retries := 0
	for time.Now().Before(deadline) {
		if v.proc.exited() {
			// Another process took the free port pair between its choice and
			// Vault's bind (outgoing connections share the ephemeral range):
			// a dev server, which keeps nothing, starts again on another pair.
			if !v.fileMode && retries < 3 && strings.Contains(v.proc.logTail(60), "address already in use") {
				retries++
				v.t.Logf("vault: port %d was taken before Vault bound it; starting again on another", v.port)
				v.port = freePortPair(v.t)
				v.addr = fmt.Sprintf("http://127.0.0.1:%d", v.port)
				v.start()
				continue
			}
			v.t.Fatalf("vault exited (%v) before becoming healthy; log tail:\n%s", v.proc.err, v.proc.logTail(60))
		}
		resp, err := c.Get(v.addr + "/v1/sys/health")
		if err == nil {
			resp.Body.Close()
			if want == 0 || resp.StatusCode == want {
				return
			}
			last = resp.Status
		} else {
			last = err.Error()
		}
		time.Sleep(100 * time.Millisecond)
	}
	v.t.Fatalf("vault not healthy (want %d) after 90s, last: %s", want, last)
}

func (v *vault) initAPI() {
	v.t.Helper()
	v.api = v.newAPIClient(nil)
}

// newAPIClient returns a Vault API client with the root token; tune, unless
// nil, adjusts the default configuration first.
func (v *vault) newAPIClient(tune func(*vaultapi.Config)) *vaultapi.Client {
	v.t.Helper()
	cfg := vaultapi.DefaultConfig()
	cfg.Address = v.addr
	if tune != nil {
		tune(cfg)
	}
	c, err := vaultapi.NewClient(cfg)
	if err != nil {
		v.t.Fatal(err)
	}
	c.SetToken(v.token)
	c.ClearNamespace()
	return c
}

// enableHeron registers the plugin with its checksum and version and mounts
// it at heron/, then checks the mount runs exactly the binary built for this run.
func (v *vault) enableHeron() {
	v.t.Helper()
	v.run("plugin", "register", "-sha256="+pluginSHA256, "-version="+pluginVersion, "secret", pluginName)
	v.run("secrets", "enable", "-path=heron", "-plugin-version="+pluginVersion, pluginName)

	var mounts map[string]struct {
		Type           string `json:"type"`
		PluginVersion  string `json:"plugin_version"`
		RunningVersion string `json:"running_plugin_version"`
		RunningSHA256  string `json:"running_sha256"`
	}
	v.runJSON(&mounts, "secrets", "list", "-format=json")
	m, ok := mounts["heron/"]
	if !ok {
		v.t.Fatalf("heron/ not in `vault secrets list`")
	}
	if m.Type != pluginName || m.PluginVersion != pluginVersion || m.RunningVersion != pluginVersion || m.RunningSHA256 != pluginSHA256 {
		v.t.Fatalf("heron/ is %s %s running %s sha256 %s, want %s %s sha256 %s",
			m.Type, m.PluginVersion, m.RunningVersion, m.RunningSHA256, pluginName, pluginVersion, pluginSHA256)
	}
}

// cliResult is one run of the vault CLI.
type cliResult struct {
	stdout, stderr string
	code           int
}

// cliAs runs the vault CLI with token (root if "") and returns what it did;
// only failures to run at all are fatal.
func (v *vault) cliAs(token string, args ...string) cliResult {
	v.t.Helper()
	if token == "" {
		token = v.token
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, vaultBin, args...)
	cmd.Env = append(baseEnv(v.home), "VAULT_ADDR="+v.addr, "VAULT_TOKEN="+token)
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	err := cmd.Run()
	res := cliResult{stdout: out.String(), stderr: errb.String()}
	var exitErr *exec.ExitError
	switch {
	case err == nil:
	case errors.As(err, &exitErr):
		res.code = exitErr.ExitCode()
	default:
		v.t.Fatalf("running vault %s: %v", showArgs(args), err)
	}
	return res
}

// showArgs renders a command line for a failure message, without admin keys:
// test output ends up in CI logs, and the suite holds itself to the rule it
// checks the engine against.
func showArgs(args []string) string {
	out := make([]string, len(args))
	for i, a := range args {
		if k, _, ok := strings.Cut(a, "="); ok && k == "admin_api_key" {
			a = k + "=<redacted>"
		}
		out[i] = a
	}
	return strings.Join(out, " ")
}

// run runs the CLI as root and fails the test unless it succeeds.
func (v *vault) run(args ...string) string {
	v.t.Helper()
	return v.runAs("", args...)
}

func (v *vault) runAs(token string, args ...string) string {
	v.t.Helper()
	r := v.cliAs(token, args...)
	if r.code != 0 {
		v.t.Fatalf("vault %s: exit %d\n%s%s", showArgs(args), r.code, r.stderr, r.stdout)
	}
	return r.stdout
}

// runJSON runs the CLI (args must include -format=json) and decodes stdout.
func (v *vault) runJSON(out any, args ...string) {
	v.t.Helper()
	v.runJSONAs("", out, args...)
}

func (v *vault) runJSONAs(token string, out any, args ...string) {
	v.t.Helper()
	s := v.runAs(token, args...)
	if err := json.Unmarshal([]byte(s), out); err != nil {
		v.t.Fatalf("vault %s: decoding output: %v\n%s", showArgs(args), err, s)
	}
}

// configure writes config/<env> pointing at the emulator.
func (v *vault) configure(env, adminKey, baseURL string, extra ...string) {
	v.t.Helper()
	args := append([]string{"write", "heron/config/" + env, "admin_api_key=" + adminKey, "base_url=" + baseURL}, extra...)
	v.run(args...)
}

// configureBoth configures development and production against e.
func (v *vault) configureBoth(e *emulator, extra ...string) {
	v.t.Helper()
	v.configure("development", e.devKey, e.URL, extra...)
	v.configure("production", e.prodKey, e.URL, extra...)
}

func (v *vault) writeRole(name string, fields ...string) {
	v.t.Helper()
	v.run(append([]string{"write", "heron/roles/" + name}, fields...)...)
}

// lease is one issuance of heron/creds/<role> as Vault answers it: the JSON
// of the HTTP API, which is also what `vault read -format=json` prints.
type lease struct {
	LeaseID       string   `json:"lease_id"`
	LeaseDuration int      `json:"lease_duration"`
	Renewable     bool     `json:"renewable"`
	Warnings      []string `json:"warnings"`
	Data          struct {
		APIKey      string `json:"api_key"`
		KeyID       string `json:"key_id"`
		KeyName     string `json:"key_name"`
		TokenPrefix string `json:"token_prefix"`
		Environment string `json:"environment"`
		Role        string `json:"role"`
	} `json:"data"`
}

// issue reads heron/creds/<role> once as token (root if ""): the request
// `vault read` sends, over plain net/http (v.http), so it never retries (a
// retried 5xx would hide the failures the fault tests count and issue keys
// nobody asked for), favours no side of the benchmark's comparisons, and is
// safe to call from any goroutine.
func (v *vault) issue(token, role string) (lease, error) {
	if token == "" {
		token = v.token
	}
	var l lease
	if err := v.readJSON(token, "heron/creds/"+role, &l); err != nil {
		return lease{}, err
	}
	if l.LeaseID == "" || l.Data.KeyID == "" || l.Data.KeyName == "" || l.Data.APIKey == "" {
		// No api_key in the message: test output ends up in CI logs.
		return lease{}, fmt.Errorf("read heron/creds/%s: incomplete answer (lease %q, key_id %q, key_name %q, api_key set: %t)",
			role, l.LeaseID, l.Data.KeyID, l.Data.KeyName, l.Data.APIKey != "")
	}
	return l, nil
}

// readJSON is one GET of path (under /v1/) with token, over the shared
// plain HTTP client (no retries), decoded into out; safe from any goroutine.
func (v *vault) readJSON(token, path string, out any) error {
	req, err := http.NewRequest(http.MethodGet, v.addr+"/v1/"+path, nil)
	if err != nil {
		return err
	}
	req.Header.Set("X-Vault-Token", token)
	resp, err := v.http.Do(req)
	if err != nil {
		return fmt.Errorf("read %s: %w", path, err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		return fmt.Errorf("read %s: %w", path, err)
	}
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("read %s: %d %s", path, resp.StatusCode, bytes.TrimSpace(body))
	}
	if err := json.Unmarshal(body, out); err != nil {
		return fmt.Errorf("read %s: decoding the answer: %w", path, err)
	}
	return nil
}

// mustIssue is issue that fails the test instead of returning an error; call
// it from the test's goroutine only.
func (v *vault) mustIssue(token, role string) lease {
	v.t.Helper()
	l, err := v.issue(token, role)
	if err != nil {
		v.t.Fatal(err)
	}
	return l
}

// issueMany issues n leases of role as root with `workers` concurrent
// clients and returns the successes and the errors of the failures.
func issueMany(t *testing.T, v *vault, role string, n, workers int) ([]lease, []error) {
	t.Helper()
	var (
		mu   sync.Mutex
		ok   []lease
		errs []error
		wg   sync.WaitGroup
		next atomic.Int64
	)
	for range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for next.Add(1) <= int64(n) {
				l, err := v.issue("", role)
				mu.Lock()
				if err != nil {
					errs = append(errs, err)
				} else {
					ok = append(ok, l)
				}
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	return ok, errs
}

// keyIDs lists the Heron key ids of leases.
func keyIDs(leases []lease) []string {
	ids := make([]string, len(leases))
	for i, l := range leases {
		ids[i] = l.Data.KeyID
	}
	return ids
}

// leaseRenewal is the CLI's JSON rendering of `vault lease renew`.
type leaseRenewal struct {
	LeaseID       string   `json:"lease_id"`
	LeaseDuration int      `json:"lease_duration"`
	Renewable     bool     `json:"renewable"`
	Warnings      []string `json:"warnings"`
}

func (v *vault) renew(leaseID string, extra ...string) leaseRenewal {
	v.t.Helper()
	var r leaseRenewal
	v.runJSON(&r, append(append([]string{"lease", "renew", "-format=json"}, extra...), leaseID)...)
	return r
}

// leasesUnder lists the lease ids Vault still holds under prefix (e.g.
// "heron/creds/bulk/"); a 404 means none.
func (v *vault) leasesUnder(prefix string) []string {
	v.t.Helper()
	s, err := v.api.Logical().List("sys/leases/lookup/" + prefix)
	if err != nil {
		v.t.Fatalf("list sys/leases/lookup/%s: %v", prefix, err)
	}
	if s == nil || s.Data == nil {
		return nil
	}
	raw, _ := s.Data["keys"].([]any)
	out := make([]string, 0, len(raw))
	for _, k := range raw {
		out = append(out, fmt.Sprint(k))
	}
	return out
}

// leasesLeft is nil once Vault holds no lease under prefix, else an error
// that counts them, for eventually.
func (v *vault) leasesLeft(prefix string) error {
	v.t.Helper()
	if ls := v.leasesUnder(prefix); len(ls) != 0 {
		return fmt.Errorf("%d leases left", len(ls))
	}
	return nil
}

// tokenWithPolicy writes rules as the policy name (the file goes to path)
// and returns a new 1-hour token that has only that policy.
func (v *vault) tokenWithPolicy(name, path, rules string) string {
	v.t.Helper()
	if err := os.WriteFile(path, []byte(rules), 0o600); err != nil {
		v.t.Fatal(err)
	}
	v.run("policy", "write", name, path)
	var tok struct {
		Auth struct {
			ClientToken string `json:"client_token"`
		} `json:"auth"`
	}
	v.runJSON(&tok, "token", "create", "-format=json", "-policy="+name, "-ttl=1h")
	return tok.Auth.ClientToken
}

// irrevocableLeases is Vault's count of leases it gave up revoking.
func (v *vault) irrevocableLeases() int {
	v.t.Helper()
	var r struct {
		Data struct {
			LeaseCount int `json:"lease_count"`
		} `json:"data"`
	}
	v.runJSON(&r, "read", "-format=json", "sys/leases/count", "type=irrevocable")
	return r.Data.LeaseCount
}

// trackedKeys lists what the engine still tracks (keys/), keyed by key id.
func (v *vault) trackedKeys() map[string]map[string]any {
	v.t.Helper()
	s, err := v.api.Logical().List("heron/keys/")
	if err != nil {
		v.t.Fatalf("list heron/keys/: %v", err)
	}
	out := map[string]map[string]any{}
	if s == nil || s.Data == nil {
		return out
	}
	info, _ := s.Data["key_info"].(map[string]any)
	for id, i := range info {
		m, _ := i.(map[string]any)
		out[id] = m
	}
	return out
}

// tidy runs the engine's cleanup pass and returns its counts.
func (v *vault) tidy() map[string]any {
	v.t.Helper()
	var r struct {
		Data map[string]any `json:"data"`
	}
	args := []string{"write", "-format=json", "-f", "heron/tidy"}
	for attempt := 1; ; attempt++ {
		res := v.cliAs("", args...)
		// Vault core's own "internal error" (ErrInternalError: its token
		// store or ACL lookup failed, seen on a loaded 2-core CI machine
		// right after a plugin was killed) is Vault's, not the engine's,
		// whose errors always say what failed: try again, a few times.
		if res.code != 0 && attempt < 4 && strings.Contains(res.stderr, "* internal error") {
			v.t.Logf("vault %s: Vault answered its own internal error (attempt %d); retrying: %s", showArgs(args), attempt, strings.Join(strings.Fields(res.stderr), " "))
			time.Sleep(time.Second)
			continue
		}
		if res.code != 0 {
			v.t.Fatalf("vault %s: exit %d\n%s", showArgs(args), res.code, res.stderr)
		}
		if err := json.Unmarshal([]byte(res.stdout), &r); err != nil {
			v.t.Fatalf("vault %s: decoding output: %v\n%s", showArgs(args), err, res.stdout)
		}
		return r.Data
	}
}

// logContains reports whether the server log holds s anywhere.
func (v *vault) logContains(s string) bool {
	b, err := os.ReadFile(v.logPath)
	if err != nil {
		v.t.Fatal(err)
	}
	return bytes.Contains(b, []byte(s))
}
