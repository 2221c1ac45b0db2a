//go:build e2e

package e2e

import (
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"
)

// TestRotateUnderLoad: rotating the admin key through the real Vault while 8
// clients issue keys fails no issuance; the old admin key ends deactivated and
// is deleted once old_key_retention has passed; keys/ matches the emulator.
func TestRotateUnderLoad(t *testing.T) {
	t.Parallel()
	e := startEmulator(t)
	v := startDevVault(t)
	v.configure("development", e.devKey, e.URL, "old_key_retention=3s", "rate_limit_per_minute=100000")
	v.writeRole("load", "environment=development", "ttl=10m")
	oldAdmin, _ := e.KeyByToken(e.devKey)

	var (
		wg       sync.WaitGroup
		mu       sync.Mutex
		failures []string
		issued   []string // key ids
	)
	stop := make(chan struct{})
	for w := 0; w < 8; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				select {
				case <-stop:
					return
				default:
				}
				c, err := v.issue("", "load")
				mu.Lock()
				if err != nil {
					failures = append(failures, err.Error())
				} else {
					issued = append(issued, c.Data.KeyID)
				}
				mu.Unlock()
			}
		}()
	}
	time.Sleep(500 * time.Millisecond)
	var rotated struct {
		Data map[string]any `json:"data"`
	}
	v.runJSON(&rotated, "write", "-format=json", "-f", "heron/config/development/rotate")
	time.Sleep(500 * time.Millisecond)
	close(stop)
	wg.Wait()

	if len(failures) > 0 {
		t.Fatalf("%d issuances failed during rotation, first: %s", len(failures), failures[0])
	}
	if len(issued) == 0 {
		t.Fatal("no key issued during the rotation window")
	}
	newID, _ := rotated.Data["admin_key_id"].(string)
	newAdmin := e.key(t, newID)
	if !strings.HasPrefix(newAdmin.Name, "vault-admin-development-") || newAdmin.CreatedBy != oldAdmin.ID {
		t.Errorf("new admin key %q created by %q, want vault-admin-development-<unix> created by %s", newAdmin.Name, newAdmin.CreatedBy, oldAdmin.ID)
	}
	e.requireRejected(t, e.devKey)
	e.requireWorks(t, newAdmin.Token)
	if k := e.key(t, oldAdmin.ID); k.Deleted {
		t.Fatal("old admin key deleted before old_key_retention")
	}

	// keys/ matches what the emulator holds for this role.
	tracked := v.trackedKeys()
	for _, id := range issued {
		k := e.key(t, id)
		info, ok := tracked[id]
		if !ok || k.Deleted || !k.IsActive || info["key_name"] != k.Name || info["token_prefix"] != k.TokenPrefix {
			t.Errorf("key %s: keys/ shows %v, emulator has name=%q prefix=%q active=%t deleted=%t", id, info, k.Name, k.TokenPrefix, k.IsActive, k.Deleted)
		}
	}
	if len(tracked) != len(issued) {
		t.Errorf("keys/ lists %d keys, %d were issued", len(tracked), len(issued))
	}

	time.Sleep(3500 * time.Millisecond)
	counts := v.tidy()
	if fmt.Sprint(counts["admin_keys_deleted"]) != "1" {
		t.Errorf("tidy after retention: admin_keys_deleted = %v, want 1 (counts %v)", counts["admin_keys_deleted"], counts)
	}
	if k := e.key(t, oldAdmin.ID); !k.Deleted {
		t.Error("old admin key not deleted after old_key_retention")
	}
	v.run("lease", "revoke", "-sync", "-prefix", "heron/creds/load")
}
