package heron

import (
	"context"
	"testing"
	"time"

	"github.com/hashicorp/vault/sdk/logical"
	"github.com/stretchr/testify/require"
)

// Invariant 8 (cron in UTC, fired once at its time): a cron schedule is
// counted from when it was set (or the key, if later), in UTC; a period is
// counted from the key as before.
func TestRotationSchedule_Next(t *testing.T) {
	est := time.FixedZone("EST", -5*3600)
	at := func(s string) time.Time {
		v, err := time.Parse(time.RFC3339, s)
		require.NoError(t, err)
		return v
	}
	for _, tc := range []struct {
		name string
		s    rotationSchedule
		want time.Time
	}{
		{"cron from the schedule, set after the key",
			rotationSchedule{Schedule: "0 3 * * *", KeySetAt: at("2030-01-01T00:00:00Z"), ScheduleSetAt: at("2030-01-05T10:00:00Z")},
			at("2030-01-06T03:00:00Z")},
		{"cron from the key, set after the schedule",
			rotationSchedule{Schedule: "0 3 * * *", KeySetAt: at("2030-01-05T10:00:00Z"), ScheduleSetAt: at("2030-01-01T00:00:00Z")},
			at("2030-01-06T03:00:00Z")},
		{"cron without a schedule time counts from the key",
			rotationSchedule{Schedule: "0 3 * * *", KeySetAt: at("2030-01-05T10:00:00Z")},
			at("2030-01-06T03:00:00Z")},
		{"cron in UTC whatever the times' zone",
			rotationSchedule{Schedule: "0 3 * * *", KeySetAt: at("2030-01-01T00:00:00Z").In(est), ScheduleSetAt: at("2030-01-02T01:00:00Z").In(est)},
			at("2030-01-02T03:00:00Z")},
		{"cron with nothing to count from never fires",
			rotationSchedule{Schedule: "0 3 * * *"},
			time.Time{}},
		{"period from the key, whenever the schedule field was set",
			rotationSchedule{Period: time.Hour, KeySetAt: at("2030-01-01T00:00:00Z"), ScheduleSetAt: at("2030-01-05T10:00:00Z")},
			at("2030-01-01T01:00:00Z")},
		{"disabled", rotationSchedule{Schedule: "0 3 * * *", KeySetAt: at("2030-01-01T00:00:00Z"), Disabled: true}, time.Time{}},
		{"managed by Vault", rotationSchedule{Schedule: "0 3 * * *", KeySetAt: at("2030-01-01T00:00:00Z"), Managed: true}, time.Time{}},
		{"a retry is owed now", rotationSchedule{Schedule: "0 3 * * *", KeySetAt: at("2030-01-01T00:00:00Z"), Retry: true}, at("2030-01-01T00:00:00Z")},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got := tc.s.next()
			require.True(t, tc.want.Equal(got), "want %s, got %s", tc.want, got)
		})
	}
}

// Invariant 8 (schedules fire once, at their time; cron in UTC): a static
// role's cron schedule set long after its key fires at its first time after
// it was set, not at the next pass, in UTC although the engine's clock reads
// another zone; then not again until its next time.
func TestRotationSchedule_CronFiresAtItsFirstTimeAfterItWasSet(t *testing.T) {
	e := getTestBackend(t)
	e.configure("development")
	est := time.FixedZone("EST", -5*3600)
	at := func(s string) time.Time {
		v, err := time.Parse(time.RFC3339, s)
		require.NoError(t, err)
		return v.In(est)
	}
	pass := func(now string) {
		t.Helper()
		e.atTime(at(now))
		require.NoError(t, e.b.periodicFunc(context.Background(), &logical.Request{Storage: e.s}))
	}
	e.atTime(at("2030-01-01T00:00:00Z"))
	e.ok(logical.CreateOperation, "static-roles/app", map[string]interface{}{"environment": "development", "rotation_period": "720h"})
	first := staticCreds(e, "app")["key_id"]

	e.atTime(at("2030-01-02T01:00:00Z"))
	e.ok(logical.UpdateOperation, "static-roles/app", map[string]interface{}{"rotation_schedule": "0 3 * * *"})
	require.Equal(t, "2030-01-02T03:00:00Z", e.ok(logical.ReadOperation, "static-roles/app", nil).Data["next_rotation"])

	pass("2030-01-02T01:01:00Z")
	require.Equal(t, first, staticCreds(e, "app")["key_id"], "not at the first pass after the schedule was set")
	pass("2030-01-02T02:59:00Z")
	require.Equal(t, first, staticCreds(e, "app")["key_id"], "not before its time")
	pass("2030-01-02T03:01:00Z")
	second := staticCreds(e, "app")["key_id"]
	require.NotEqual(t, first, second, "at its time, 03:00 UTC")
	pass("2030-01-02T03:05:00Z")
	require.Equal(t, second, staticCreds(e, "app")["key_id"], "once")
	require.Equal(t, "2030-01-03T03:00:00Z", e.ok(logical.ReadOperation, "static-roles/app", nil).Data["next_rotation"])
}
