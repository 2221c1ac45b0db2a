//go:build e2e

package e2e

import (
	"bytes"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// TestAuditLog: with a file audit device, neither issued tokens nor admin keys
// ever appear in clear, in the audit log or in Vault's own log; after tuning
// the mount's audit-non-hmac-response-keys, key_id, key_name and token_prefix
// do (so auditors can match Vault's log to Heron's dashboard) while api_key
// still does not.
func TestAuditLog(t *testing.T) {
	t.Parallel()
	e := startEmulator(t)
	v := startDevVault(t)
	auditPath := filepath.Join(v.dir, "audit.log")
	v.run("audit", "enable", "file", "file_path="+auditPath)

	v.configureBoth(e)
	v.run("read", "heron/config/development")
	v.run("read", "heron/config/production")
	v.writeRole("app", "environment=development", "ttl=1h")
	first := v.mustIssue("", "app")
	v.run("list", "heron/keys")
	v.run("read", "heron/keys/"+first.Data.KeyID)
	v.renew(first.LeaseID)

	audit := func() []byte {
		t.Helper()
		b, err := os.ReadFile(auditPath)
		if err != nil {
			t.Fatal(err)
		}
		return b
	}
	log := audit()
	if !bytes.Contains(log, []byte("heron/creds/app")) {
		t.Fatalf("audit log does not record the creds read; is the device on?")
	}
	secrets := map[string]string{
		"issued api_key":        first.Data.APIKey,
		"development admin key": e.devKey,
		"production admin key":  e.prodKey,
	}
	for what, s := range secrets {
		if bytes.Contains(log, []byte(s)) {
			t.Errorf("%s appears in clear in the audit log", what)
		}
	}
	// By default Vault HMACs every response string; seeing that here proves
	// the tune below is what puts the three fields in clear.
	entry := lastCredsResponse(t, log, "heron/creds/app")
	for _, f := range []string{"api_key", "key_id", "key_name", "token_prefix"} {
		if got := entry[f]; !strings.HasPrefix(got, "hmac-sha256:") {
			t.Errorf("before tuning: audited creds response field %s = %q, want it HMAC'd", f, got)
		}
	}

	v.run("secrets", "tune",
		"-audit-non-hmac-response-keys=key_id",
		"-audit-non-hmac-response-keys=key_name",
		"-audit-non-hmac-response-keys=token_prefix",
		"heron/")
	second := v.mustIssue("", "app")
	// Audit entries are written before the response, but give the file sink a
	// moment in case it buffers.
	eventually(t, 5*time.Second, "the second issuance in the audit log", func() error {
		if !bytes.Contains(audit(), []byte(second.LeaseID)) {
			return os.ErrNotExist
		}
		return nil
	})
	log = audit()
	entry = lastCredsResponse(t, log, "heron/creds/app")
	for field, val := range map[string]string{
		"key_id":       second.Data.KeyID,
		"key_name":     second.Data.KeyName,
		"token_prefix": second.Data.TokenPrefix,
	} {
		if entry[field] != val {
			t.Errorf("after tuning: audited creds response field %s = %q, want %q in clear", field, entry[field], val)
		}
	}
	if got := entry["api_key"]; !strings.HasPrefix(got, "hmac-sha256:") {
		t.Errorf("after tuning: audited api_key = %q, want it still HMAC'd", got)
	}
	secrets["second api_key"] = second.Data.APIKey
	for what, s := range secrets {
		if bytes.Contains(log, []byte(s)) {
			t.Errorf("%s appears in clear in the audit log", what)
		}
	}

	// The engine logs through Vault; its log lines must not leak either.
	for what, s := range secrets {
		if v.logContains(s) {
			t.Errorf("%s appears in Vault's server log", what)
		}
	}
}

// lastCredsResponse returns the response data of the last audited response
// to a read of path, as strings.
func lastCredsResponse(t *testing.T, log []byte, path string) map[string]string {
	t.Helper()
	var found map[string]any
	for _, line := range bytes.Split(log, []byte("\n")) {
		if len(bytes.TrimSpace(line)) == 0 {
			continue
		}
		var e struct {
			Type    string `json:"type"`
			Request struct {
				Path string `json:"path"`
			} `json:"request"`
			Response struct {
				Data map[string]any `json:"data"`
			} `json:"response"`
		}
		if err := json.Unmarshal(line, &e); err != nil {
			t.Fatalf("audit log line is not JSON: %v\n%s", err, line)
		}
		if e.Type == "response" && e.Request.Path == path && e.Response.Data != nil {
			found = e.Response.Data
		}
	}
	if found == nil {
		t.Fatalf("no audited response to %s", path)
	}
	out := map[string]string{}
	for k, v := range found {
		out[k] = fmt.Sprint(v)
	}
	return out
}
