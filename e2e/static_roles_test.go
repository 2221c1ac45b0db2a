//go:build e2e

package e2e

import (
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// staticCreds is heron/static-creds/<name> as Vault's HTTP API answers it.
type staticCreds struct {
	LeaseID       string `json:"lease_id"`
	LeaseDuration int    `json:"lease_duration"`
	Data          struct {
		APIKey                string `json:"api_key"`
		KeyID                 string `json:"key_id"`
		KeyName               string `json:"key_name"`
		TokenPrefix           string `json:"token_prefix"`
		Environment           string `json:"environment"`
		Role                  string `json:"role"`
		LastRotated           string `json:"last_rotated"`
		TTL                   int64  `json:"ttl"`
		PreviousKeyID         string `json:"previous_key_id"`
		PreviousDeactivatesAt string `json:"previous_deactivates_at"`
	} `json:"data"`
}

// readStaticCreds reads heron/static-creds/<name> once as token over plain
// net/http (safe from any goroutine).
func (v *vault) readStaticCreds(token, name string) (staticCreds, error) {
	var c staticCreds
	if err := v.readJSON(token, "heron/static-creds/"+name, &c); err != nil {
		return staticCreds{}, err
	}
	if c.Data.APIKey == "" || c.Data.KeyID == "" {
		return staticCreds{}, fmt.Errorf("read heron/static-creds/%s: incomplete answer (key_id %q, api_key set: %t)", name, c.Data.KeyID, c.Data.APIKey != "")
	}
	return c, nil
}

func (v *vault) mustStaticCreds(name string) staticCreds {
	v.t.Helper()
	c, err := v.readStaticCreds(v.token, name)
	if err != nil {
		v.t.Fatal(err)
	}
	return c
}

// helloStatus is emulator.hello for goroutines: it returns errors instead of
// failing the test.
func (e *emulator) helloStatus(token string) (int, error) {
	req, err := http.NewRequest(http.MethodGet, e.URL+"/api/hello_world/authenticated", nil)
	if err != nil {
		return 0, err
	}
	req.Header.Set("x-api-key", token)
	req.Header.Set("User-Agent", testUserAgent)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return 0, err
	}
	resp.Body.Close()
	return resp.StatusCode, nil
}

// staticRotation is the answer of static-roles/<name>/rotate.
type staticRotation struct {
	Data struct {
		KeyID                 string `json:"key_id"`
		KeyName               string `json:"key_name"`
		TokenPrefix           string `json:"token_prefix"`
		LastRotated           string `json:"last_rotated"`
		PreviousKeyID         string `json:"previous_key_id"`
		PreviousDeactivatesAt string `json:"previous_deactivates_at"`
	} `json:"data"`
}

func (v *vault) rotateStatic(name string) staticRotation {
	v.t.Helper()
	var r staticRotation
	v.runJSON(&r, "write", "-format=json", "-f", "heron/static-roles/"+name+"/rotate")
	return r
}

// tidyUntil runs tidy until cond holds (the engine's clock cannot be moved
// from here: retention and overlap are seconds, and this polls).
func tidyUntil(t *testing.T, v *vault, timeout time.Duration, what string, cond func() error) {
	t.Helper()
	eventually(t, timeout, what, func() error {
		v.tidy()
		return cond()
	})
}

// keyIn is nil once key id is in state want in the emulator.
func keyIn(t *testing.T, e *emulator, id string, want keyState) func() error {
	return func() error {
		if got := stateOf(e.key(t, id)); got != want {
			return fmt.Errorf("key %s is %s, want %s", id, got, want)
		}
		return nil
	}
}

// consumerReport is what the static-creds consumer saw.
type consumerReport struct {
	reads    int
	keyIDs   []string // distinct key ids, in the order first seen
	failures []string
}

// runConsumer reads static-creds/<name> as token every ~200ms and uses the key
// it got at once; it stops when stop closes.
func runConsumer(v *vault, e *emulator, token, name string, stop <-chan struct{}) <-chan consumerReport {
	out := make(chan consumerReport, 1)
	go func() {
		var rep consumerReport
		seen := map[string]bool{}
		tick := time.NewTicker(200 * time.Millisecond)
		defer tick.Stop()
		for {
			c, err := v.readStaticCreds(token, name)
			rep.reads++
			if err != nil {
				rep.failures = append(rep.failures, err.Error())
			} else {
				if !seen[c.Data.KeyID] {
					seen[c.Data.KeyID] = true
					rep.keyIDs = append(rep.keyIDs, c.Data.KeyID)
				}
				status, err := e.helloStatus(c.Data.APIKey)
				switch {
				case err != nil:
					rep.failures = append(rep.failures, fmt.Sprintf("using key %s: %v", c.Data.KeyID, err))
				case status != http.StatusOK:
					rep.failures = append(rep.failures, fmt.Sprintf("%s: key %s (%s...) just read from static-creds got %d",
						time.Now().Format("15:04:05.000"), c.Data.KeyID, prefix(c.Data.APIKey), status))
				}
			}
			select {
			case <-stop:
				out <- rep
				return
			case <-tick.C:
			}
		}
	}()
	return out
}

// TestStaticRolesConsumerThroughRotations: an application reading
// static-creds through Vault's HTTP API with a token limited to that path and
// using the key at once never gets a 401 across two rotations; each previous
// key keeps working for the overlap, is deactivated by the cleanup pass once
// unused (not before overlap), and deleted after retired_key_retention; the
// current key works throughout; deleting the role during a further overlap
// deactivates its current and previous keys at once, and the pass deletes them
// after retention.
func TestStaticRolesConsumerThroughRotations(t *testing.T) {
	t.Parallel()
	e := startEmulator(t)
	v := startDevVault(t)
	v.configureBoth(e, "rate_limit_per_minute=100000")

	const (
		name      = "app"
		overlap   = 8 * time.Second
		retention = 6 * time.Second
	)
	// rotation_period is long so that no scheduled rotation interferes: the
	// test drives rotations with static-roles/<name>/rotate.
	v.run("write", "heron/static-roles/"+name, "environment=development", "rotation_period=1h",
		"overlap=8s", "max_overlap=20s", "unused_for=3s", "retired_key_retention=6s")

	var role map[string]any
	var roleResp struct {
		Data map[string]any `json:"data"`
	}
	v.runJSON(&roleResp, "read", "-format=json", "heron/static-roles/"+name)
	role = roleResp.Data
	for field, want := range map[string]string{
		"environment": "development", "rotation_period": "3600", "overlap": "8", "max_overlap": "20",
		"unused_for": "3", "retired_key_retention": "6", "previous_key_id": "",
	} {
		if got := fmt.Sprint(role[field]); got != want {
			t.Errorf("static-roles/%s %s = %s, want %s", name, field, got, want)
		}
	}

	first := v.mustStaticCreds(name)
	if first.LeaseID != "" || first.LeaseDuration != 0 {
		t.Errorf("static-creds carries a lease (%q, %ds), want none", first.LeaseID, first.LeaseDuration)
	}
	if !strings.HasPrefix(first.Data.KeyName, "vault-static-"+name+"-") || first.Data.Role != name || first.Data.Environment != "development" {
		t.Errorf("static-creds: key_name %q role %q environment %q", first.Data.KeyName, first.Data.Role, first.Data.Environment)
	}
	if first.Data.TTL < 3590 || first.Data.TTL > 3600 {
		t.Errorf("static-creds ttl = %d, want about 3600 (seconds until the next rotation)", first.Data.TTL)
	}
	if role["key_id"] != first.Data.KeyID {
		t.Errorf("static-roles/%s key_id %v, static-creds %s", name, role["key_id"], first.Data.KeyID)
	}
	k1 := e.key(t, first.Data.KeyID)
	if k1.Token != first.Data.APIKey || k1.Name != first.Data.KeyName || k1.TokenPrefix != first.Data.TokenPrefix {
		t.Fatalf("static-creds key %s does not match the emulator's (name %q prefix %q)", first.Data.KeyID, k1.Name, k1.TokenPrefix)
	}
	if info := v.trackedKeys()[first.Data.KeyID]; info["kind"] != "static" || info["role"] != name {
		t.Errorf("keys/ shows %v for the static key, want kind static role %s", info, name)
	}

	consumerTok := v.tokenWithPolicy("heron-static-app", filepath.Join(v.dir, "static-app.hcl"),
		`path "heron/static-creds/app" { capabilities = ["read"] }`)
	stop := make(chan struct{})
	done := runConsumer(v, e, consumerTok, name, stop)
	stopped := false
	stopConsumer := func() consumerReport {
		if stopped {
			return consumerReport{}
		}
		stopped = true
		close(stop)
		return <-done
	}
	defer stopConsumer()
	time.Sleep(time.Second)

	// rotate checks one rotation: the new key is current, the previous one
	// still works, and the overlap is reported.
	rotate := func(prev staticCreds) (staticCreds, time.Time) {
		t.Helper()
		before := time.Now()
		r := v.rotateStatic(name)
		if r.Data.KeyID == "" || r.Data.KeyID == prev.Data.KeyID || r.Data.PreviousKeyID != prev.Data.KeyID {
			t.Fatalf("rotate: key_id %q previous_key_id %q, want a new key with previous %s", r.Data.KeyID, r.Data.PreviousKeyID, prev.Data.KeyID)
		}
		cur := v.mustStaticCreds(name)
		if cur.Data.KeyID != r.Data.KeyID || cur.Data.PreviousKeyID != prev.Data.KeyID || cur.Data.PreviousDeactivatesAt == "" {
			t.Fatalf("static-creds after rotate: key_id %s previous_key_id %q previous_deactivates_at %q; rotate said %s",
				cur.Data.KeyID, cur.Data.PreviousKeyID, cur.Data.PreviousDeactivatesAt, r.Data.KeyID)
		}
		if at, err := time.Parse(time.RFC3339, cur.Data.PreviousDeactivatesAt); err != nil || at.Before(before.Add(20*time.Second-2*time.Second)) || at.After(time.Now().Add(20*time.Second+time.Second)) {
			t.Errorf("previous_deactivates_at %q (%v), want the rotation + max_overlap 20s", cur.Data.PreviousDeactivatesAt, err)
		}
		e.requireWorks(t, cur.Data.APIKey)
		e.requireWorks(t, prev.Data.APIKey) // the overlap
		// A pass within the overlap leaves the previous key alone.
		v.tidy()
		if got := stateOf(e.key(t, prev.Data.KeyID)); got != stateActive {
			t.Fatalf("previous key %s is %s right after the rotation, want active for the overlap", prev.Data.KeyID, got)
		}
		return cur, before
	}
	// retire waits until the pass deactivated prev (unused past overlap) and
	// checks it was not before the overlap ended.
	retire := func(prev staticCreds, rotatedAt time.Time) {
		t.Helper()
		tidyUntil(t, v, overlap+15*time.Second, "previous key "+prev.Data.KeyID+" deactivated after the overlap",
			keyIn(t, e, prev.Data.KeyID, stateDeactivated))
		k := e.key(t, prev.Data.KeyID)
		if k.DeactivatedAt.Before(rotatedAt.Add(overlap - time.Second)) {
			t.Errorf("previous key %s deactivated at %s, rotation at %s: before the overlap of %s ended",
				prev.Data.KeyID, k.DeactivatedAt.Format(time.RFC3339Nano), rotatedAt.Format(time.RFC3339Nano), overlap)
		}
		e.requireRejected(t, prev.Data.APIKey)
		if info := v.trackedKeys()[prev.Data.KeyID]; info["state"] != "deactivated" {
			t.Errorf("keys/ shows %v for the retired key %s, want state deactivated", info, prev.Data.KeyID)
		}
	}

	second, rot1 := rotate(first)
	time.Sleep(time.Second)
	retire(first, rot1)
	if c := v.mustStaticCreds(name); c.Data.PreviousKeyID != "" || c.Data.KeyID != second.Data.KeyID {
		t.Errorf("static-creds after the overlap: key_id %s previous_key_id %q, want %s and none", c.Data.KeyID, c.Data.PreviousKeyID, second.Data.KeyID)
	}

	third, rot2 := rotate(second)
	time.Sleep(time.Second)
	retire(second, rot2)

	// Both previous keys are deleted after retired_key_retention.
	tidyUntil(t, v, retention+15*time.Second, "previous keys deleted after retired_key_retention", func() error {
		return e.keysLeft(t, []string{first.Data.KeyID, second.Data.KeyID})
	})
	for _, prev := range []staticCreds{first, second} {
		k := e.key(t, prev.Data.KeyID)
		if k.DeletedAt.Before(k.DeactivatedAt.Add(retention - time.Second)) {
			t.Errorf("key %s deleted at %s, deactivated at %s: before retired_key_retention %s",
				k.ID, k.DeletedAt.Format(time.RFC3339Nano), k.DeactivatedAt.Format(time.RFC3339Nano), retention)
		}
		if _, ok := v.trackedKeys()[prev.Data.KeyID]; ok {
			t.Errorf("keys/ still lists deleted key %s", prev.Data.KeyID)
		}
	}
	e.requireWorks(t, third.Data.APIKey)
	if c := v.mustStaticCreds(name); c.Data.KeyID != third.Data.KeyID {
		t.Errorf("static-creds key_id %s, want the current key %s", c.Data.KeyID, third.Data.KeyID)
	}
	time.Sleep(500 * time.Millisecond)

	rep := stopConsumer()
	if len(rep.failures) > 0 {
		t.Errorf("consumer: %d of %d reads failed; first: %s", len(rep.failures), rep.reads, strings.Join(rep.failures[:min(len(rep.failures), 5)], "; "))
	}
	want := []string{first.Data.KeyID, second.Data.KeyID, third.Data.KeyID}
	if fmt.Sprint(rep.keyIDs) != fmt.Sprint(want) {
		t.Errorf("consumer saw keys %v, want %v in that order", rep.keyIDs, want)
	}
	t.Logf("consumer: %d reads, keys %v, %d failures", rep.reads, rep.keyIDs, len(rep.failures))

	// Deleting the role during an overlap: its current and previous keys are
	// deactivated at once, and deleted after retention.
	fourth, _ := rotate(third)
	v.run("delete", "heron/static-roles/"+name)
	deletedAt := time.Now()
	for _, c := range []staticCreds{third, fourth} {
		if got := stateOf(e.key(t, c.Data.KeyID)); got != stateDeactivated {
			t.Fatalf("key %s is %s right after the role's delete, want deactivated", c.Data.KeyID, got)
		}
		e.requireRejected(t, c.Data.APIKey)
	}
	if _, err := v.readStaticCreds(v.token, name); err == nil || !strings.Contains(err.Error(), "400") {
		t.Errorf("static-creds of the deleted role: %v, want a 400", err)
	}
	v.tidy()
	for _, c := range []staticCreds{third, fourth} {
		if got := stateOf(e.key(t, c.Data.KeyID)); got != stateDeactivated {
			t.Fatalf("key %s is %s by a tidy right after the role's delete, want deactivated until retention", c.Data.KeyID, got)
		}
	}
	tidyUntil(t, v, retention+15*time.Second, "the deleted role's keys deleted after retention", func() error {
		return e.keysLeft(t, []string{third.Data.KeyID, fourth.Data.KeyID})
	})
	for _, c := range []staticCreds{third, fourth} {
		if k := e.key(t, c.Data.KeyID); k.DeletedAt.Before(deletedAt.Add(retention - time.Second)) {
			t.Errorf("key %s deleted %s after the role's delete, want at least retired_key_retention %s", k.ID, k.DeletedAt.Sub(deletedAt), retention)
		}
	}
	for id, info := range v.trackedKeys() {
		if info["role"] == name {
			t.Errorf("keys/ still lists key %s of the deleted role: %v", id, info)
		}
	}
	// Nothing of the role is left active or undeleted in Heron.
	for _, k := range e.KeysIn("development") {
		if strings.HasPrefix(k.Name, "vault-static-"+name+"-") && !k.Deleted {
			t.Errorf("emulator key %s %q is %s, want deleted", k.ID, k.Name, stateOf(k))
		}
	}
}

// TestStaticRolesAdoptAndDelete: a key created outside Vault (same Heron user
// as the admin key) adopted with api_key and skip_import_rotation is what
// static-creds returns, unrotated; reads of the role never show the token; the
// engine tracks it; deleting the role deactivates it at once, and the cleanup
// pass deletes it after retired_key_retention.
func TestStaticRolesAdoptAndDelete(t *testing.T) {
	t.Parallel()
	e := startEmulator(t)
	v := startDevVault(t)
	v.configureBoth(e, "rate_limit_per_minute=100000")

	tok := e.AddAdminKey("development") // an application's key of the admin key's user
	adopted, ok := e.KeyByToken(tok)
	if !ok {
		t.Fatal("emulator lost the key it just added")
	}
	// The token goes in through a file, not the command line.
	keyFile := filepath.Join(t.TempDir(), "api_key")
	if err := os.WriteFile(keyFile, []byte(tok), 0o600); err != nil {
		t.Fatal(err)
	}
	const retention = 4 * time.Second
	v.run("write", "heron/static-roles/legacy", "environment=development", "api_key=@"+keyFile,
		"skip_import_rotation=true", "rotation_period=1h", "overlap=10s", "retired_key_retention=4s")

	c := v.mustStaticCreds("legacy")
	if c.Data.APIKey != tok || c.Data.KeyID != adopted.ID || c.Data.TokenPrefix != adopted.TokenPrefix || c.Data.KeyName != adopted.Name {
		t.Fatalf("static-creds: key_id %s key_name %q token_prefix %s (api_key is the adopted token: %t), want the adopted key %s %q %s",
			c.Data.KeyID, c.Data.KeyName, c.Data.TokenPrefix, c.Data.APIKey == tok, adopted.ID, adopted.Name, adopted.TokenPrefix)
	}
	if c.Data.PreviousKeyID != "" || c.Data.LastRotated != "" {
		t.Errorf("static-creds of an adopted, unrotated key: previous_key_id %q last_rotated %q, want both empty", c.Data.PreviousKeyID, c.Data.LastRotated)
	}
	for _, k := range e.KeysIn("development") {
		if strings.HasPrefix(k.Name, "vault-static-") {
			t.Errorf("skip_import_rotation: the engine created key %s %q anyway", k.ID, k.Name)
		}
	}
	e.requireWorks(t, tok)

	// The role's reads never show the token, in any format.
	for _, format := range []string{"json", "table"} {
		out := v.run("read", "-format="+format, "heron/static-roles/legacy")
		if strings.Contains(out, tok) || strings.Contains(out, tok[8:]) {
			t.Errorf("vault read -format=%s heron/static-roles/legacy shows the adopted token", format)
		}
		if strings.Contains(out, "api_key") {
			t.Errorf("vault read -format=%s heron/static-roles/legacy has an api_key field:\n%s", format, out)
		}
	}
	var role struct {
		Data map[string]any `json:"data"`
	}
	v.runJSON(&role, "read", "-format=json", "heron/static-roles/legacy")
	if role.Data["key_id"] != adopted.ID || role.Data["token_prefix"] != adopted.TokenPrefix || role.Data["skip_import_rotation"] != true {
		t.Errorf("static-roles/legacy: key_id %v token_prefix %v skip_import_rotation %v, want %s %s true",
			role.Data["key_id"], role.Data["token_prefix"], role.Data["skip_import_rotation"], adopted.ID, adopted.TokenPrefix)
	}
	if _, ok := role.Data["token"]; ok {
		t.Error("static-roles/legacy has a token field")
	}
	if info := v.trackedKeys()[adopted.ID]; info["kind"] != "static" || info["role"] != "legacy" || info["state"] != "active" {
		t.Errorf("keys/ shows %v for the adopted key, want kind static role legacy state active", info)
	}

	// Delete: deactivated at once (the engine owns the adopted key), not deleted.
	v.run("delete", "heron/static-roles/legacy")
	deletedAt := time.Now()
	if got := stateOf(e.key(t, adopted.ID)); got != stateDeactivated {
		t.Fatalf("adopted key %s is %s right after the role's delete, want deactivated", adopted.ID, got)
	}
	e.requireRejected(t, tok)
	if info := v.trackedKeys()[adopted.ID]; info["state"] != "deactivated" {
		t.Errorf("keys/ shows %v for the adopted key after the delete, want state deactivated", info)
	}
	v.tidy()
	if got := stateOf(e.key(t, adopted.ID)); got != stateDeactivated {
		t.Fatalf("adopted key %s is %s after a tidy within retention, want still deactivated", adopted.ID, got)
	}
	tidyUntil(t, v, retention+15*time.Second, "adopted key deleted after retired_key_retention", keyIn(t, e, adopted.ID, stateDeleted))
	if k := e.key(t, adopted.ID); k.DeletedAt.Before(deletedAt.Add(retention - time.Second)) {
		t.Errorf("adopted key deleted %s after the role's delete, want at least retired_key_retention %s", k.DeletedAt.Sub(deletedAt), retention)
	}
	if _, ok := v.trackedKeys()[adopted.ID]; ok {
		t.Error("keys/ still lists the deleted adopted key")
	}
	// The admin key was never touched.
	e.requireWorks(t, e.devKey)
}

// TestStaticRolesValidation: a rotation_period below a minute is refused by
// Vault with a 400 naming the field, and no role is created.
func TestStaticRolesValidation(t *testing.T) {
	t.Parallel()
	e := startEmulator(t)
	v := startDevVault(t)
	v.configureBoth(e)

	r := v.cliAs("", "write", "heron/static-roles/x", "environment=development", "rotation_period=30s")
	if r.code != 2 {
		t.Errorf("vault write rotation_period=30s: exit %d, want 2 (an API error)\n%s%s", r.code, r.stderr, r.stdout)
	}
	if !strings.Contains(r.stderr, "Code: 400") || !strings.Contains(r.stderr, "rotation_period") {
		t.Errorf("vault write rotation_period=30s: stderr does not show a 400 naming rotation_period:\n%s", r.stderr)
	}
	if out := v.cliAs("", "read", "heron/static-roles/x"); out.code == 0 {
		t.Errorf("static role x exists after a refused create:\n%s", out.stdout)
	}
	for _, k := range e.KeysIn("development") {
		if strings.HasPrefix(k.Name, "vault-static-") {
			t.Errorf("a refused create made key %s %q", k.ID, k.Name)
		}
	}
}
