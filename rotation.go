package heron

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/hashicorp/vault/sdk/framework"
	"github.com/hashicorp/vault/sdk/helper/automatedrotationutil"
	"github.com/hashicorp/vault/sdk/logical"
	"github.com/hashicorp/vault/sdk/rotation"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/heron-vault/vault-plugin-secrets-heron/heronapi"
)

// Rotation of anything that holds a key on a schedule: when it is due, who
// runs it (Vault's rotation manager where the server has one, else the
// periodic pass), and the retirement of the key it replaces.

// deactivateRetired deactivates the rotated-out admin keys of cfg not yet
// deactivated and records each in its progress record (never in the
// config: see retired_admin.go), updating cfg to match.
func (b *heronBackend) deactivateRetired(ctx context.Context, s logical.Storage, cfg *heronConfig, client heronapi.API) error {
	var errs []error
	for i := range cfg.RetiredKeys {
		rk := &cfg.RetiredKeys[i]
		if rk.Deactivated || cfg.isAdminKey(rk.KeyID, rk.TokenPrefix) {
			continue
		}
		if err := b.deactivateRetiredKey(ctx, s, cfg.Environment, rk, client); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// retiredNow is the config and its rotated-out admin key id as storage has
// them now (cur nil: no longer retired, written back as the admin key, or
// gone), for a caller holding the key's lock.
func retiredNow(ctx context.Context, s logical.Storage, env, id string) (*heronConfig, *retiredAdminKey, error) {
	fresh, err := getConfig(ctx, s, env)
	if err != nil {
		return nil, nil, err
	}
	cur := fresh.retired(id)
	if cur == nil || fresh.isAdminKey(cur.KeyID, cur.TokenPrefix) {
		return fresh, nil, nil
	}
	return fresh, cur, nil
}

// deactivateRetiredKey deactivates one rotated-out admin key, decided under
// the key's lock from the config read again under it: the config read
// earlier may be stale (another instance's write may have made the key the
// admin key again, or this one's pass may have got there first).
func (b *heronBackend) deactivateRetiredKey(ctx context.Context, s logical.Storage, env string, rk *retiredAdminKey, client heronapi.API) error {
	defer b.lockKey(rk.KeyID)()
	fresh, cur, err := retiredNow(ctx, s, env, rk.KeyID)
	switch {
	case err != nil:
		return err
	case cur == nil:
		return nil
	case cur.Deactivated:
		*rk = *cur
		return nil
	}
	err = client.DeactivateKey(ctx, rk.KeyID)
	if errors.Is(err, heronapi.ErrNotFound) && cur.Unreachable {
		return errRetiredUnreachable(env, rk.KeyID)
	}
	if err != nil && !errors.Is(err, heronapi.ErrNotFound) {
		return fmt.Errorf("deactivating old admin key %s: %w", rk.KeyID, err)
	}
	// old_key_retention is how long it stays deactivated: counted from
	// now, however late the deactivation came after the rotation.
	now := b.now()
	*rk = *cur
	rk.Deactivated, rk.DeactivatedAt, rk.DeleteAfter = true, now, now.Add(fresh.OldKeyRetention)
	if err := putRetiredProgress(ctx, s, env, *rk, time.Time{}); err != nil {
		return fmt.Errorf("recording the deactivation of old admin key %s: %w", rk.KeyID, err)
	}
	return nil
}

// pruneRetired keeps cfg's rotated-out admin keys within
// maxRetiredAdminKeys: the oldest deactivated ones beyond it are deleted in
// Heron now, ahead of their old_key_retention (each with its heron/key-delete
// event, reason retired-cap), and dropped from cfg (the caller stores it). A
// key not deactivated yet, or unreachable, is never deleted here; it reports
// whether cfg is within the bound afterwards.
func (b *heronBackend) pruneRetired(ctx context.Context, cfg *heronConfig, client heronapi.API) (bool, error) {
	over := len(cfg.RetiredKeys) - maxRetiredAdminKeys
	if over <= 0 {
		return true, nil
	}
	var errs []error
	kept := make([]retiredAdminKey, 0, len(cfg.RetiredKeys))
	for _, rk := range cfg.RetiredKeys {
		if over > 0 && rk.Deactivated && !rk.Unreachable && !cfg.isAdminKey(rk.KeyID, rk.TokenPrefix) {
			if err := b.deleteRetired(ctx, client, cfg, rk, reasonRetiredCap); err != nil {
				errs = append(errs, err)
			} else {
				over--
				continue
			}
		}
		kept = append(kept, rk)
	}
	cfg.RetiredKeys = kept
	return over <= 0, errors.Join(errs...)
}

// retiredCapWarning says what a config's settings cost in rotated-out admin
// keys, when they would keep more than the bound.
func retiredCapWarning(cfg *heronConfig) string {
	if cfg.RotationPeriod <= 0 || cfg.OldKeyRetention/cfg.RotationPeriod < maxRetiredAdminKeys {
		return ""
	}
	return fmt.Sprintf("old_key_retention %s with rotation_period %s would keep %d rotated-out admin keys; the engine keeps at most %d and deletes the oldest deactivated ones earlier than old_key_retention",
		cfg.OldKeyRetention, cfg.RotationPeriod, cfg.OldKeyRetention/cfg.RotationPeriod, maxRetiredAdminKeys)
}

// rotationSchedule is when something that holds a key rotates: every
// Period, or on a cron Schedule, counted from when its key was set. Managed:
// Vault's rotation manager runs it, so the engine's own scheduler stays out.
type rotationSchedule struct {
	Period   time.Duration
	Schedule string
	Window   time.Duration
	Disabled bool
	Managed  bool
	// VaultNext is when Vault's rotation manager said it rotates next
	// (Managed only; zero when it did not say).
	VaultNext time.Time
	KeySetAt  time.Time
	// ScheduleSetAt is when Schedule was set: a cron schedule fires at its
	// first time after both the key and the schedule were set.
	ScheduleSetAt time.Time
	// Retry: a rotation the engine owes now (one that failed where nothing
	// else would retry it soon), whoever runs the schedule.
	Retry bool
}

// next is when the engine's own scheduler rotates next (zero: never).
func (r rotationSchedule) next() time.Time {
	if r.Retry && !r.Disabled {
		return r.KeySetAt
	}
	if r.Disabled || r.Managed {
		return time.Time{}
	}
	switch {
	case r.Period > 0:
		return r.KeySetAt.Add(r.Period)
	case r.Schedule != "":
		sched, err := rotation.DefaultScheduler.Parse(r.Schedule)
		if err != nil {
			return time.Time{}
		}
		from := r.KeySetAt
		if r.ScheduleSetAt.After(from) {
			from = r.ScheduleSetAt
		}
		if from.IsZero() {
			// Nothing to count from (a record older than both fields):
			// never "due since year 1", which would fire on the first pass.
			return time.Time{}
		}
		// Cron is in UTC, whatever the server's zone.
		return sched.Next(from.UTC())
	}
	return time.Time{}
}

// rotationTarget is one thing whose key the engine rotates on a schedule:
// today an environment's admin key (config/<env>); the same scheduler, the
// same write-ahead guard and the same retirement serve any other holder.
type rotationTarget struct {
	// path names it for logs and for Vault's rotation manager (ReqPath).
	path     string
	schedule rotationSchedule
	// rotate rotates if the target is still due under its lock, reporting
	// whether it did.
	rotate func(ctx context.Context, s logical.Storage) (bool, error)
}

// rotationTargets lists the admin keys, which rotate on a schedule (static
// roles are found due by their index: rotateDueStatic).
func (b *heronBackend) rotationTargets(ctx context.Context, s logical.Storage) ([]rotationTarget, error) {
	envs, err := s.List(ctx, configStoragePrefix)
	if err != nil {
		return nil, fmt.Errorf("listing configs: %w", err)
	}
	targets := make([]rotationTarget, 0, len(envs))
	for _, env := range envs {
		cfg, err := getConfig(ctx, s, env)
		if err != nil || cfg == nil {
			continue
		}
		b.refreshClient(cfg)
		targets = append(targets, b.adminKeyTarget(cfg))
	}
	return targets, nil
}

// adminKeyTarget is cfg's admin key as a rotation target.
func (b *heronBackend) adminKeyTarget(cfg *heronConfig) rotationTarget {
	env := cfg.Environment
	return rotationTarget{
		path:     configStoragePrefix + env,
		schedule: cfg.rotationSchedule(),
		rotate: func(ctx context.Context, s logical.Storage) (bool, error) {
			// Due by a read outside the config's lock: asked again under
			// it, so a rotation by hand in between is not repeated.
			_, _, rotated, err := b.rotateAdminKeyIf(ctx, s, env, func(cfg *heronConfig) bool {
				return cfg.rotationSchedule().dueAt(b.now())
			})
			if errors.Is(err, errRotationBusy) {
				// Another instance is rotating it: that does what was due.
				return false, nil
			}
			return rotated, err
		},
	}
}

// rotateDue rotates every target whose time has come (admin keys, then the
// static roles the index finds due, see rotateDueStatic), returning how many
// were rotated. One target's failure is logged and retried on the next pass;
// it never holds up the others.
func (b *heronBackend) rotateDue(ctx context.Context, s logical.Storage) (int, error) {
	n, err := b.rotateDueAdmin(ctx, s)
	m, serr := b.rotateDueStatic(ctx, s, nil)
	return n + m, errors.Join(err, serr)
}

// rotateDueAdmin rotates the admin keys whose time has come.
func (b *heronBackend) rotateDueAdmin(ctx context.Context, s logical.Storage) (int, error) {
	targets, err := b.rotationTargets(ctx, s)
	if err != nil {
		return 0, err
	}
	now := b.now()
	rotated := 0
	var errs []error
	for _, t := range targets {
		if !t.schedule.dueAt(now) {
			continue
		}
		did, err := t.rotate(ctx, s)
		if err != nil {
			errs = append(errs, fmt.Errorf("%s: %w", t.path, err))
			continue
		}
		if did {
			rotated++
		}
	}
	return rotated, errors.Join(errs...)
}

// retiredDue reports whether rk may be deleted now.
func retiredDue(rk retiredAdminKey, now time.Time) bool {
	return rk.Deactivated && !now.Before(rk.DeleteAfter)
}

// registerRotation hands the config's schedule to Vault's rotation manager
// where the server has one (Vault Enterprise 1.19+). Vault Community answers
// that it is unsupported: the engine's own periodic pass then rotates on the
// same schedule, so the setting means the same thing on every edition. A
// non-empty bad is the 400 to answer (nothing may be stored): Vault has a
// rotation manager and refused the job.
func (b *heronBackend) registerRotation(ctx context.Context, req *logical.Request, d *framework.FieldData, cfg *heronConfig) (warnings []string, bad string) {
	sched := cfg.rotationSchedule()
	return b.registerRotationJob(ctx, req.MountPoint, "heron-admin-key-"+cfg.Environment, configStoragePrefix+cfg.Environment, sched,
		&cfg.RotationManaged, &cfg.NextVaultRotation, req.Operation == logical.CreateOperation, setsRotationFields(d))
}

// setsRotationFields reports whether the request sets one of the rotation
// fields (a write that does is told who schedules the rotation).
func setsRotationFields(d *framework.FieldData) bool {
	for _, f := range []string{"rotation_period", "rotation_schedule", "rotation_window", "disable_automated_rotation"} {
		if _, ok := d.GetOk(f); ok {
			return true
		}
	}
	return false
}

// rotationMethodMissing reports whether err says that the server has no
// such system view method: a Vault older than the method (gRPC
// Unimplemented), or the sdk's StaticSystemView (logical.TestSystemView),
// which stands for a server without a rotation manager.
func rotationMethodMissing(err error) bool {
	return status.Code(err) == codes.Unimplemented || strings.Contains(err.Error(), "not implemented in StaticSystemView")
}

// rotationManagerUnsupported reports whether err is Vault Community's answer
// to a rotation job (automatedrotationutil.ErrRotationManagerUnsupported;
// across the plugin's gRPC boundary only its text survives), or a server
// with no rotation manager at all.
func rotationManagerUnsupported(err error) bool {
	return errors.Is(err, automatedrotationutil.ErrRotationManagerUnsupported) ||
		strings.Contains(err.Error(), automatedrotationutil.ErrRotationManagerUnsupported.Error()) ||
		rotationMethodMissing(err)
}

// registerWithVault registers a rotation job, returning the rotation
// manager's next scheduled time (zero when the server does not say). A
// server that predates RegisterRotationJobWithResponse (Vault Enterprise
// 1.19) is asked with RegisterRotationJob.
func (b *heronBackend) registerWithVault(ctx context.Context, req *rotation.RotationJobConfigureRequest) (time.Time, error) {
	info, err := b.System().RegisterRotationJobWithResponse(ctx, req)
	if err != nil && rotationMethodMissing(err) {
		_, err = b.System().RegisterRotationJob(ctx, req)
		return time.Time{}, err
	}
	if err != nil || info == nil {
		return time.Time{}, err
	}
	return info.NextVaultRotation.UTC().Truncate(time.Second), nil
}

// registerRotationJob registers (or, when no schedule is wanted, removes) the
// rotation job of the target at path with Vault's rotation manager, and
// records in *managed whether Vault runs it and in *next when Vault said it
// rotates next. As HashiCorp's engines do, a rotation manager's refusal is an
// error of the write (bad: the 400 to answer, before anything is stored);
// Vault Community's "unsupported" is not: the engine schedules the rotation
// itself, and a write that sets the schedule (announce) is told so. A job
// Vault already runs is registered again only when the write sets the
// rotation fields (or creates the target): registering again restarts a
// period, which a write of other settings must not do.
func (b *heronBackend) registerRotationJob(ctx context.Context, mount, name, path string, sched rotationSchedule, managed *bool, next *time.Time, create, announce bool) (warnings []string, bad string) {
	wanted := !sched.Disabled && (sched.Period > 0 || sched.Schedule != "")
	if !wanted {
		if *managed {
			err := b.System().DeregisterRotationJob(ctx, &rotation.RotationJobDeregisterRequest{MountPoint: mount, ReqPath: path})
			if err != nil && !rotationManagerUnsupported(err) {
				return nil, fmt.Sprintf("error deregistering rotation job: %v", err)
			}
		}
		*managed, *next = false, time.Time{}
		return nil, ""
	}
	if *managed && !create && !announce {
		return nil, ""
	}
	at, err := b.registerWithVault(ctx, &rotation.RotationJobConfigureRequest{
		Name:             name,
		MountPoint:       mount,
		ReqPath:          path,
		RotationSchedule: sched.Schedule,
		RotationWindow:   sched.Window,
		RotationPeriod:   sched.Period,
	})
	if err != nil && !rotationManagerUnsupported(err) {
		return nil, fmt.Sprintf("error registering rotation job: %v", err)
	}
	if err != nil {
		*managed, *next = false, time.Time{}
		b.Logger().Debug("rotation manager unavailable; the engine schedules rotation itself", "path", path, "error", err)
		if announce || create {
			warnings = append(warnings, communitySchedulingWarning)
		}
		return warnings, ""
	}
	*managed, *next = true, at
	return nil, ""
}

// deregisterRotationJob removes a target's job from Vault's rotation manager
// when it has one (its config or static role is being deleted).
func (b *heronBackend) deregisterRotationJob(ctx context.Context, mount, path string, managed bool) []string {
	if !managed {
		return nil
	}
	if err := b.System().DeregisterRotationJob(ctx, &rotation.RotationJobDeregisterRequest{MountPoint: mount, ReqPath: path}); err != nil && !rotationManagerUnsupported(err) {
		return []string{fmt.Sprintf("could not deregister the rotation job from Vault's rotation manager: %v", err)}
	}
	return nil
}

// rotateCredential is Vault's rotation manager calling back for a job
// registered by registerRotationJob (req.Path names the target): the same
// rotation as the target's rotate path, with trigger "scheduled". The time
// Vault says it rotates next (req.RotationInfo) is stored for reads. A
// target deleted, or whose automated rotation was disabled, since Vault
// scheduled the call is not rotated.
func (b *heronBackend) rotateCredential(ctx context.Context, req *logical.Request) error {
	ctx = heronapi.Background(ctx)
	var vaultNext time.Time
	if req.RotationInfo != nil {
		vaultNext = req.RotationInfo.NextVaultRotation.UTC().Truncate(time.Second)
	}
	if name, ok := strings.CutPrefix(req.Path, staticRoleStoragePrefix); ok && name != "" {
		r, err := getStaticRole(ctx, req.Storage, name)
		if err != nil {
			return err
		}
		if r == nil || r.DisableAutomatedRotation {
			b.Logger().Warn("rotation manager called for a static role that is deleted or has automated rotation disabled: not rotated", "role", name)
			return nil
		}
		if _, err := b.rotateStatic(ctx, req.Storage, name); err != nil {
			return err
		}
		if vaultNext.IsZero() {
			return nil
		}
		lock := b.staticRoleLock(name)
		lock.Lock()
		defer lock.Unlock()
		r, err = getStaticRole(ctx, req.Storage, name)
		if err != nil || r == nil || !r.RotationManaged {
			return err
		}
		old := *r
		r.NextVaultRotation = vaultNext
		return b.putStaticRole(ctx, req.Storage, &old, r)
	}
	env, ok := strings.CutPrefix(req.Path, configStoragePrefix)
	if !ok || env == "" {
		return fmt.Errorf("rotation request for unexpected path %q", req.Path)
	}
	cfg, err := getConfig(ctx, req.Storage, env)
	if err != nil {
		return err
	}
	if cfg == nil || cfg.DisableAutomatedRotation {
		b.Logger().Warn("rotation manager called for a config that is deleted or has automated rotation disabled: not rotated", "environment", env)
		return nil
	}
	if _, _, err := b.rotateAdminKey(ctx, req.Storage, env); err != nil {
		return err
	}
	if vaultNext.IsZero() {
		return nil
	}
	_, err = b.updateConfig(ctx, req.Storage, env, func(stored *heronConfig) (bool, error) {
		if stored.AdminAPIKey == "" || !stored.RotationManaged {
			return false, nil
		}
		stored.NextVaultRotation = vaultNext
		return true, nil
	})
	return err
}

// rotationSchedule is the config's admin key schedule.
func (c *heronConfig) rotationSchedule() rotationSchedule {
	base := c.KeySetAt
	if base.IsZero() {
		base = c.LastRotated
	}
	return rotationSchedule{
		Period:        c.RotationPeriod,
		Schedule:      c.RotationSchedule,
		Window:        c.RotationWindow,
		Disabled:      c.DisableAutomatedRotation,
		Managed:       c.RotationManaged,
		VaultNext:     c.NextVaultRotation,
		KeySetAt:      base,
		ScheduleSetAt: c.ScheduleSetAt,
	}
}

// timeOrNil is a time as Vault's rotation fields answer it
// (last_vault_rotation, next_vault_rotation): RFC 3339 in UTC, or null when
// unknown, as the sdk's RotationInfoResponseParams.PopulateRotationInfo does.
func timeOrNil(t time.Time) interface{} {
	if t.IsZero() {
		return nil
	}
	return t.UTC().Format(time.RFC3339)
}

// communitySchedulingWarning is the warning of a write that schedules
// rotation on a server without Vault's rotation manager (Vault Community):
// HashiCorp's engines refuse the rotation fields there; this engine runs
// the schedule itself, and says so.
const communitySchedulingWarning = "this Vault server has no rotation manager (Vault Community): the engine, not Vault, schedules this rotation, on its own periodic pass (every minute, on the active node)"

// rotationFieldsError checks the request's rotation fields as the sdk's
// automatedrotationutil.ParseAutomatedRotationFields does (HashiCorp's
// engines share it): a window needs a schedule, a schedule and a period
// exclude each other, a window does not apply to a period, a schedule must
// parse. A non-nil response is the 400 to answer, with the sdk's message.
func rotationFieldsError(d *framework.FieldData) *logical.Response {
	var p automatedrotationutil.AutomatedRotationParams
	if err := p.ParseAutomatedRotationFields(d); err != nil {
		return logical.ErrorResponse(err.Error())
	}
	return nil
}

// rotationInfoResponseFields describe, for the OpenAPI document, what reads
// of a config or static role answer about rotation: Vault's conventional
// names and this engine's older ones, kept as deprecated aliases.
func rotationInfoResponseFields(what string) map[string]*framework.FieldSchema {
	return map[string]*framework.FieldSchema{
		"last_vault_rotation": {
			Type:        framework.TypeTime,
			Description: "When the " + what + " was last rotated (RFC 3339), or null when never.",
		},
		"next_vault_rotation": {
			Type:        framework.TypeTime,
			Description: "When the " + what + " is rotated next (RFC 3339): by Vault's rotation manager when it runs the schedule (Vault Enterprise, rotation_managed_by_vault=true), else by the engine's own scheduler; null when no automatic rotation is scheduled or Vault did not say.",
		},
		"rotation_skipped": {
			Type:        framework.TypeString,
			Description: "Present when a scheduled rotation did not run within its rotation_window: which scheduled time was missed, and that the next rotation waits for the next scheduled time.",
		},
		"last_rotated": {
			Type:        framework.TypeString,
			Description: "Deprecated: use last_vault_rotation. The same time, or \"\" when never; kept for one release.",
			Deprecated:  true,
		},
		"next_rotation": {
			Type:        framework.TypeString,
			Description: "Deprecated: use next_vault_rotation. The same time, or \"\" when none; kept for one release.",
			Deprecated:  true,
		},
	}
}

// rotationReadResponses is the documented answer of a read that carries
// rotation info.
func rotationReadResponses(what string) map[int][]framework.Response {
	return map[int][]framework.Response{
		200: {{Description: "OK", Fields: rotationInfoResponseFields(what)}},
	}
}

// nextAt is when the engine's own scheduler rotates next as seen at now
// (zero: never). It is next(), unless rotation_window applies (a cron
// schedule with a window) and the window of that time, the scheduled time
// plus the window, ended before now with no rotation: then it is the first
// scheduled time whose window is still open at now, and missed is the
// scheduled time whose window passed (zero when none did). A rotation owed
// (Retry) is no scheduled time and has no window.
func (r rotationSchedule) nextAt(now time.Time) (next, missed time.Time) {
	next = r.next()
	if next.IsZero() || r.Window <= 0 || r.Schedule == "" || r.Period > 0 || r.Retry || !now.After(next.Add(r.Window)) {
		return next, time.Time{}
	}
	sched, err := rotation.DefaultScheduler.Parse(r.Schedule)
	if err != nil {
		return next, time.Time{}
	}
	// The first scheduled time s with s+window >= now (Next is strictly
	// after its argument).
	return sched.Next(now.Add(-r.Window).Add(-time.Nanosecond).UTC()), next
}

// readNext is the next rotation a read shows at now: Vault's rotation
// manager's time when it runs the schedule, else the engine's own (nextAt).
func (r rotationSchedule) readNext(now time.Time) time.Time {
	if r.Managed && !r.Disabled && !r.Retry {
		return r.VaultNext
	}
	next, _ := r.nextAt(now)
	return next
}

// dueAt reports whether the schedule's rotation is due at now.
func (r rotationSchedule) dueAt(now time.Time) bool {
	next, _ := r.nextAt(now)
	return !next.IsZero() && !now.Before(next)
}

// skippedNote says, for a read, why a scheduled rotation did not happen: its
// window passed (empty when none did).
func (r rotationSchedule) skippedNote(now time.Time) string {
	next, missed := r.nextAt(now)
	if missed.IsZero() {
		return ""
	}
	return fmt.Sprintf("the rotation scheduled at %s did not run within its rotation_window (%s, until %s): the next rotation is at the next scheduled time, %s",
		formatTime(missed), r.Window, formatTime(missed.Add(r.Window)), formatTime(next))
}

// rotationTrigger says, for a rotation's log line, what started it, as
// HashiCorp's engines say it: "scheduled" for the engine's periodic pass and
// Vault's rotation manager (both run with a background context), "on user
// request" for a request (the rotate paths, a static role's create, a
// static-creds read replacing a missing key).
func rotationTrigger(ctx context.Context) string {
	if heronapi.IsBackground(ctx) {
		return "scheduled"
	}
	return "on user request"
}
