package heron

import (
	"context"
	"testing"
	"time"

	"github.com/hashicorp/vault/sdk/logical"
	"github.com/stretchr/testify/require"
)

// The engine's own scheduler honours rotation_window: a scheduled rotation
// that could not start by its time plus the window waits for the next
// scheduled time (virtual clock, no real waiting).
func TestRotationSchedule_WindowMissedWaitsForTheNextScheduledTime(t *testing.T) {
	day := time.Date(2030, 1, 7, 0, 0, 0, 0, time.UTC) // a Monday
	at := func(d time.Duration) time.Time { return day.Add(d) }
	daily := rotationSchedule{Schedule: "0 3 * * *", KeySetAt: at(-12 * time.Hour)}
	withWindow := func(r rotationSchedule, w time.Duration) rotationSchedule { r.Window = w; return r }
	cases := []struct {
		name       string
		sched      rotationSchedule
		now        time.Time
		wantNext   time.Time
		wantMissed time.Time
	}{
		{"before the time", withWindow(daily, time.Hour), at(2 * time.Hour), at(3 * time.Hour), time.Time{}},
		{"at the time", withWindow(daily, time.Hour), at(3 * time.Hour), at(3 * time.Hour), time.Time{}},
		{"inside the window", withWindow(daily, time.Hour), at(3*time.Hour + 59*time.Minute), at(3 * time.Hour), time.Time{}},
		{"at the window's end", withWindow(daily, time.Hour), at(4 * time.Hour), at(3 * time.Hour), time.Time{}},
		{"after the window", withWindow(daily, time.Hour), at(4*time.Hour + time.Minute), at(27 * time.Hour), at(3 * time.Hour)},
		{"several windows missed", withWindow(daily, time.Hour), at(3*24*time.Hour + 5*time.Hour), at(4*24*time.Hour + 3*time.Hour), at(3 * time.Hour)},
		{"inside a later window", withWindow(daily, time.Hour), at(2*24*time.Hour + 3*time.Hour + 30*time.Minute), at(2*24*time.Hour + 3*time.Hour), at(3 * time.Hour)},
		{"no window: late still rotates", daily, at(10 * time.Hour), at(3 * time.Hour), time.Time{}},
		{"a period has no window", rotationSchedule{Period: time.Hour, Window: time.Minute, KeySetAt: at(0)}, at(5 * time.Hour), at(time.Hour), time.Time{}},
		{"a retry owed is not windowed", func() rotationSchedule { r := withWindow(daily, time.Hour); r.Retry = true; return r }(), at(10 * time.Hour), at(-12 * time.Hour), time.Time{}},
		{"disabled", func() rotationSchedule { r := withWindow(daily, time.Hour); r.Disabled = true; return r }(), at(10 * time.Hour), time.Time{}, time.Time{}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			next, missed := tc.sched.nextAt(tc.now)
			require.Equal(t, tc.wantNext, next, "next")
			require.Equal(t, tc.wantMissed, missed, "missed")
		})
	}
}

// A config whose rotation window passed while nothing could rotate (the
// plugin was down, the pass did not run) waits for the next scheduled time,
// and its read says why.
func TestRotationWindow_PassSkipsAMissedWindowAndReadSaysWhy(t *testing.T) {
	e := getTestBackend(t)
	day := time.Date(2030, 1, 7, 0, 0, 0, 0, time.UTC)
	e.atTime(day)
	e.configure("development")
	e.ok(logical.UpdateOperation, "config/development", map[string]interface{}{"rotation_schedule": "0 3 * * *", "rotation_window": "1h"})
	req := &logical.Request{Storage: e.s}

	// 04:30: the 03:00 rotation's window ended at 04:00.
	e.atTime(day.Add(4*time.Hour + 30*time.Minute))
	require.NoError(t, e.b.periodicFunc(context.Background(), req))
	require.True(t, e.authenticates(e.adminKey["development"]), "no rotation outside the window")
	read := e.ok(logical.ReadOperation, "config/development", nil).Data
	require.Contains(t, read["rotation_skipped"], "2030-01-07T03:00:00Z")
	require.Contains(t, read["rotation_skipped"], "rotation_window")
	require.Equal(t, "2030-01-08T03:00:00Z", read["next_vault_rotation"])

	// The next day inside the window: rotated.
	e.atTime(day.Add(27*time.Hour + 20*time.Minute))
	require.NoError(t, e.b.periodicFunc(context.Background(), req))
	require.False(t, e.authenticates(e.adminKey["development"]), "rotated inside the next window")
	read = e.ok(logical.ReadOperation, "config/development", nil).Data
	require.NotContains(t, read, "rotation_skipped")
	require.Equal(t, "2030-01-09T03:00:00Z", read["next_vault_rotation"])
}

// Static roles follow the same rule.
func TestRotationWindow_StaticRoleWaitsForTheNextScheduledTime(t *testing.T) {
	e := getTestBackend(t)
	day := time.Date(2030, 1, 7, 0, 0, 0, 0, time.UTC)
	e.atTime(day)
	e.configure("development")
	e.ok(logical.CreateOperation, "static-roles/app", map[string]interface{}{
		"environment": "development", "rotation_schedule": "0 3 * * *", "rotation_window": "30m",
	})
	first := staticCreds(e, "app")["key_id"]
	req := &logical.Request{Storage: e.s}

	e.atTime(day.Add(3*time.Hour + 31*time.Minute))
	require.NoError(t, e.b.periodicFunc(context.Background(), req))
	require.Equal(t, first, staticCreds(e, "app")["key_id"], "no rotation outside the window")
	read := e.ok(logical.ReadOperation, "static-roles/app", nil).Data
	require.Contains(t, read["rotation_skipped"], "2030-01-07T03:00:00Z")

	e.atTime(day.Add(27*time.Hour + 10*time.Minute))
	require.NoError(t, e.b.periodicFunc(context.Background(), req))
	require.NotEqual(t, first, staticCreds(e, "app")["key_id"], "rotated inside the next window")
}
