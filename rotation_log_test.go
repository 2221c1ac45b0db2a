package heron

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/hashicorp/vault/sdk/logical"
	"github.com/stretchr/testify/require"
)

// Every rotation logs one info line that says what started it: "on user
// request" (the rotate paths, under either name) or "scheduled" (the
// engine's periodic pass, Vault's rotation manager).
func TestRotationLogLines_SayOnUserRequestOrScheduled(t *testing.T) {
	logs := &syncBuffer{}
	e := newTestEnv(t, withLogger(hclog.New(&hclog.LoggerOptions{Level: hclog.Info, Output: logs, JSONFormat: true})))
	e.configure("development")
	e.ok(logical.CreateOperation, "static-roles/app", map[string]interface{}{"environment": "development", "rotation_period": "1h"})

	// rotationLines returns the info lines of rotations logged since the
	// last call.
	seen := 0
	rotationLines := func() []string {
		all := strings.Split(strings.TrimSpace(logs.String()), "\n")
		var out []string
		for _, l := range all[seen:] {
			if strings.Contains(l, `"event":"heron/admin-rotate"`) || strings.Contains(l, `"event":"heron/static-rotate"`) {
				require.Contains(t, l, `"@level":"info"`)
				out = append(out, l)
			}
		}
		seen = len(all)
		return out
	}
	one := func(what, want string) {
		t.Helper()
		lines := rotationLines()
		require.Len(t, lines, 1, "%s: one line", what)
		require.Contains(t, lines[0], want, what)
	}
	rotationLines()

	e.ok(logical.UpdateOperation, "rotate-root/development", nil)
	one("rotate-root", "on user request")
	e.ok(logical.UpdateOperation, "config/development/rotate", nil)
	one("config rotate", "on user request")
	e.ok(logical.UpdateOperation, "rotate-role/app", nil)
	one("rotate-role", "on user request")
	e.ok(logical.UpdateOperation, "static-roles/app/rotate", nil)
	one("static role rotate", "on user request")

	// The periodic pass.
	e.atTime(time.Now().Add(61 * time.Minute))
	require.NoError(t, e.b.periodicFunc(context.Background(), &logical.Request{Storage: e.s}))
	one("periodic pass", "scheduled")

	// Vault's rotation manager calling back.
	_, err := e.b.HandleRequest(context.Background(), &logical.Request{Operation: logical.RotationOperation, Path: "config/development", Storage: e.s})
	require.NoError(t, err)
	one("rotation manager", "scheduled")
}
