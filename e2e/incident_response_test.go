//go:build e2e

package e2e

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	vaultapi "github.com/hashicorp/vault/api"
)

// docs/incident-response.md run as written: each ```sh block marked
// <!-- incident: NAME --> in the guide's order, in one shell state (the
// variables a block sets are there for the next), against a real Vault and
// the emulator, with Heron's and the engine's state checked after each.

var incidentBlockRe = regexp.MustCompile("(?s)<!-- incident: ([a-z0-9-]+) -->\n```sh\n(.*?)\n```")

// incidentBlocks returns the guide's marked blocks, in order.
func incidentBlocks(t *testing.T) (names []string, blocks map[string]string) {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(repoRoot, "docs", "incident-response.md"))
	if err != nil {
		t.Fatal(err)
	}
	blocks = map[string]string{}
	for _, m := range incidentBlockRe.FindAllStringSubmatch(string(b), -1) {
		names = append(names, m[1])
		blocks[m[1]] = m[2]
	}
	return names, blocks
}

// guideShell runs guide blocks in dir, carrying the shell's variables from
// one block to the next in a state file.
type guideShell struct {
	t      *testing.T
	dir    string
	env    []string
	blocks map[string]string
}

func (g *guideShell) run(name string, vars ...string) string {
	g.t.Helper()
	block, ok := g.blocks[name]
	if !ok {
		g.t.Fatalf("docs/incident-response.md has no block %q", name)
	}
	state := filepath.Join(g.dir, "state.sh")
	script := "set -euo pipefail\nset -a\n[ -f " + state + " ] && . " + state + "\n"
	for i := 0; i+1 < len(vars); i += 2 {
		script += fmt.Sprintf("%s=%q\n", vars[i], vars[i+1])
	}
	script += block + "\nexport -p > " + state + ".new && mv " + state + ".new " + state + "\n"
	cmd := exec.Command("bash", "-c", script)
	cmd.Dir = g.dir
	cmd.Env = g.env
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	if err := cmd.Run(); err != nil {
		g.t.Fatalf("guide block %s: %v\n---- block ----\n%s\n---- stdout ----\n%s\n---- stderr ----\n%s", name, err, block, out.String(), errb.String())
	}
	g.t.Logf("guide block %s:\n%s", name, out.String())
	return out.String()
}

// value reads a variable the blocks set.
func (g *guideShell) value(name string) string {
	g.t.Helper()
	cmd := exec.Command("bash", "-c", ". "+filepath.Join(g.dir, "state.sh")+" && printf %s \"$"+name+"\"")
	cmd.Env = g.env
	out, err := cmd.Output()
	if err != nil {
		g.t.Fatalf("reading %s from the guide's shell: %v", name, err)
	}
	return string(out)
}

func TestIncidentResponseGuideRunsAsWritten(t *testing.T) {
	t.Parallel()
	e := startEmulator(t)
	v := startDevVault(t)
	v.configureBoth(e)
	v.writeRole("app", "environment=production", "ttl=1h", "max_ttl=24h")
	dir := filepath.Join(v.dir, "incident")
	if err := os.MkdirAll(dir, 0o700); err != nil {
		t.Fatal(err)
	}

	names, blocks := incidentBlocks(t)
	want := []string{"leaked-lookup", "leaked-quarantine", "leaked-revoke", "identity-keys", "identity-revoke-keys",
		"identity-revoke-tokens", "admin-rotate", "restore-inventory", "history"}
	if strings.Join(names, ",") != strings.Join(want, ",") {
		t.Fatalf("the guide's blocks are %v; this test runs %v", names, want)
	}

	// An identity: a userpass user (Vault makes it an entity at login)
	// whose application read two keys.
	v.tokenWithPolicy("app-app", filepath.Join(dir, "app.hcl"), `path "heron/creds/app" { capabilities = ["read"] }`)
	v.run("auth", "enable", "userpass")
	v.run("write", "auth/userpass/users/mallory", "password=correct-horse", "token_policies=app-app")
	var login struct {
		Auth struct {
			ClientToken string `json:"client_token"`
			EntityID    string `json:"entity_id"`
		} `json:"auth"`
	}
	v.runJSON(&login, "write", "-format=json", "auth/userpass/login/mallory", "password=correct-horse")
	leaked := v.mustIssue(login.Auth.ClientToken, "app")
	other := v.mustIssue(login.Auth.ClientToken, "app")
	bystander := v.mustIssue("", "app")

	env := append(baseEnv(v.home), "VAULT_ADDR="+v.addr, "VAULT_TOKEN="+v.token,
		"PATH="+filepath.Dir(vaultBin)+string(os.PathListSeparator)+os.Getenv("PATH"),
		"HERON_BASE_URL="+e.URL)
	g := &guideShell{t: t, dir: dir, env: env, blocks: blocks}

	// A leaked key.
	g.run("leaked-lookup", "LEAKED_TOKEN", leaked.Data.APIKey)
	if got := g.value("KEY_ID"); got != leaked.Data.KeyID {
		t.Fatalf("lookup found key %q, want %s", got, leaked.Data.KeyID)
	}
	if got := g.value("ENTITY_ID"); got != login.Auth.EntityID {
		t.Fatalf("lookup says entity %q, want mallory's %s", got, login.Auth.EntityID)
	}
	g.run("leaked-quarantine")
	e.requireRejected(t, leaked.Data.APIKey)
	// The root token's display name is "token".
	if k := v.trackedKeys()[leaked.Data.KeyID]; k["quarantined"] != true || k["quarantined_by"] != "token" || k["state"] != "deactivated" {
		t.Errorf("quarantined key's record: %v", k)
	}
	g.run("leaked-revoke")
	if st := stateOf(e.key(t, leaked.Data.KeyID)); st != stateDeleted {
		t.Errorf("revoked key is %s in Heron, want deleted", st)
	}
	e.requireWorks(t, other.Data.APIKey)
	e.requireWorks(t, bystander.Data.APIKey)

	// A compromised identity.
	out := g.run("identity-keys")
	if strings.TrimSpace(out) != other.Data.KeyID {
		t.Errorf("the identity's keys: %q, want only %s (the leaked one is deleted already)", out, other.Data.KeyID)
	}
	g.run("identity-revoke-keys")
	if st := stateOf(e.key(t, other.Data.KeyID)); st != stateDeleted {
		t.Errorf("the identity's other key is %s in Heron, want deleted", st)
	}
	g.run("identity-revoke-tokens")
	if res := v.cliAs(login.Auth.ClientToken, "token", "lookup", "-self"); res.code == 0 {
		t.Error("the identity's token still works")
	}
	eventually(t, 15*time.Second, "the identity's leases revoked", func() error {
		for _, l := range v.leasesUnder("heron/creds/app/") {
			if l == leaked.LeaseID || l == other.LeaseID {
				return fmt.Errorf("lease %s still there", l)
			}
		}
		return nil
	})
	e.requireWorks(t, bystander.Data.APIKey)

	// A leaked admin key.
	g.run("admin-rotate", "LEAKED_TOKEN", e.prodKey)
	e.requireRejected(t, e.prodKey)
	e.requireWorks(t, bystander.Data.APIKey)
	if _, err := v.issue("", "app"); err != nil {
		t.Errorf("issuing after the rotation: %v", err)
	}

	// Restored from an older snapshot: a key the engine made after it is
	// unknown to the restored Vault (made here behind its back), and a key
	// made by hand that must be left alone.
	helper := e.AddAdminKey("production")
	ghost := createInHeron(t, e, helper, "vault-app-token-mallory-1764098012-Ab3dE9xQ")
	handMade := createInHeron(t, e, helper, "billing-export")
	g.run("restore-inventory", "HERON_ADMIN_KEY", helper)
	if st := stateOf(e.key(t, ghost)); st != stateDeleted {
		t.Errorf("the engine's key unknown after the restore is %s, want deleted", st)
	}
	if st := stateOf(e.key(t, handMade)); st != stateActive {
		t.Errorf("the hand-made key is %s, want left active", st)
	}

	out = g.run("history")
	if !strings.Contains(out, `"revoked-by-operator"`) || !strings.Contains(out, leaked.Data.KeyID) {
		t.Errorf("history block output lacks the key's revocation:\n%s", out)
	}
	if !v.logContains(`event=heron/key-quarantine`) && !v.logContains(`"event":"heron/key-quarantine"`) {
		t.Error("no heron/key-quarantine line in Vault's server log")
	}
	if err := v.api.Sys().Revoke(bystander.LeaseID); err != nil {
		t.Error(err)
	}
}

// createInHeron creates a key named name with admin, behind the engine's
// back, and returns its id.
func createInHeron(t *testing.T, e *emulator, admin, name string) string {
	t.Helper()
	body, _ := json.Marshal(map[string]string{"name": name})
	req, err := http.NewRequest(http.MethodPost, e.URL+"/api/credentials/keys", bytes.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("x-api-key", admin)
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("User-Agent", testUserAgent)
	res, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer res.Body.Close()
	var k struct {
		ID string `json:"heron_id"`
	}
	if err := json.NewDecoder(res.Body).Decode(&k); err != nil || k.ID == "" {
		t.Fatalf("creating %q in Heron: status %d, %v", name, res.StatusCode, err)
	}
	return k.ID
}

// TestKeysLookupAndQuarantineInputs: through a real Vault, the new paths
// answer user mistakes with a 400 naming the rule, and keys they do not know
// with a 404; keys/lookup is not taken for a key id.
func TestKeysLookupAndQuarantineInputs(t *testing.T) {
	t.Parallel()
	e := startEmulator(t)
	v := startDevVault(t)
	v.configureBoth(e)
	v.writeRole("app", "environment=development")
	l := v.mustIssue("", "app")
	defer func() {
		if err := v.api.Sys().Revoke(l.LeaseID); err != nil {
			t.Error(err)
		}
	}()

	status := func(err error) int {
		var re *vaultapi.ResponseError
		if errors.As(err, &re) {
			return re.StatusCode
		}
		if err != nil {
			t.Fatalf("not a Vault answer: %v", err)
		}
		return http.StatusOK
	}
	cases := []struct {
		what, path string
		data       map[string]any
		want       int
		says       string
	}{
		{"lookup without a token", "heron/keys/lookup", map[string]any{}, http.StatusBadRequest, "token is required"},
		{"lookup of a malformed token", "heron/keys/lookup", map[string]any{"token": "key_abc"}, http.StatusBadRequest, `"key_" followed by 48 lowercase hex characters`},
		{"lookup of an uppercase token", "heron/keys/lookup", map[string]any{"token": "key_" + strings.Repeat("A", 48)}, http.StatusBadRequest, "lowercase hex"},
		{"lookup of a token never issued", "heron/keys/lookup", map[string]any{"token": "key_" + strings.Repeat("0", 48)}, http.StatusNotFound, "this engine did not issue a key with this token"},
		{"quarantine of an unknown key", "heron/keys/8c7e2f4e-0b8f-4c1e-9d55-5b4fd2f4a001/deactivate", nil, http.StatusNotFound, "is not tracked by this engine"},
		{"revoke of an unknown key", "heron/keys/8c7e2f4e-0b8f-4c1e-9d55-5b4fd2f4a001/revoke", nil, http.StatusNotFound, "is not tracked by this engine"},
		{"activate of a key not quarantined", "heron/keys/" + l.Data.KeyID + "/activate", nil, http.StatusBadRequest, "is not quarantined"},
	}
	for _, c := range cases {
		_, err := v.api.Logical().Write(c.path, c.data)
		if got := status(err); got != c.want || (err != nil && !strings.Contains(err.Error(), c.says)) {
			t.Errorf("%s: status %d (%v), want %d saying %q", c.what, got, err, c.want, c.says)
		}
	}
	s, err := v.api.Logical().Write("heron/keys/lookup", map[string]any{"token": l.Data.APIKey})
	if err != nil || s == nil || s.Data["key_id"] != l.Data.KeyID || s.Data["match"] != "token_hmac" {
		t.Fatalf("lookup of an issued key: %v %v", s, err)
	}
	if _, ok := s.Data["token_hmac"]; ok {
		t.Error("keys/lookup returned token_hmac")
	}
	e.requireWorks(t, l.Data.APIKey)
}
