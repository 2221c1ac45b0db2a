package heron

import (
	"context"
	"errors"
	"fmt"
	"sort"
	"time"

	"github.com/hashicorp/vault/sdk/helper/locksutil"
	"github.com/hashicorp/vault/sdk/logical"
	"github.com/hashicorp/vault/sdk/rotation"

	"github.com/heron-vault/vault-plugin-secrets-heron/heronapi"
)

// Static roles: one long-lived Heron key per application, rotated on a
// schedule with an overlap in which the previous and the new key both work
// (Heron's own rotation flow), the previous key retired only once Heron shows
// it unused. Each key of a static role is also a tracked key (kind static),
// so keys/, the cleanup pass and the write-ahead rollback see it like any
// other.

const (
	staticRoleStoragePrefix = "static-roles/"
	keyKindLease            = "lease"
	keyKindStatic           = "static"
	// keyKindAdmin marks the tombstone of an admin key a rollback deleted.
	keyKindAdmin = "admin"

	defaultStaticRotationPeriod = 720 * time.Hour
	defaultOverlap              = 24 * time.Hour
	defaultUnusedFor            = time.Hour
	defaultRetiredKeyRetention  = 72 * time.Hour
)

// staticRole is a static role and the keys it holds. It is the one place the
// engine stores a non-admin token: static-creds returns it (the spec's
// exception), and the entry is seal-wrapped like configs.
type staticRole struct {
	Name                string        `json:"name"`
	Environment         string        `json:"environment"`
	RotationPeriod      time.Duration `json:"rotation_period"`
	RotationSchedule    string        `json:"rotation_schedule,omitempty"`
	Overlap             time.Duration `json:"overlap"`
	MaxOverlap          time.Duration `json:"max_overlap"`
	UnusedFor           time.Duration `json:"unused_for"`
	RetiredKeyRetention time.Duration `json:"retired_key_retention"`
	SkipImportRotation  bool          `json:"skip_import_rotation,omitempty"`
	// RotationWindow and DisableAutomatedRotation: Vault's automated-rotation
	// fields, as on configs.
	RotationWindow           time.Duration `json:"rotation_window,omitempty"`
	DisableAutomatedRotation bool          `json:"disable_automated_rotation,omitempty"`
	// ScheduleSetAt is when RotationSchedule was last set or changed.
	ScheduleSetAt   time.Time `json:"schedule_set_at,omitempty"`
	RotationManaged bool      `json:"rotation_managed,omitempty"`
	// NextVaultRotation: as on configs (Vault's rotation manager's time).
	NextVaultRotation time.Time `json:"next_vault_rotation,omitempty"`

	// The current key.
	KeyID       string    `json:"key_id"`
	KeyName     string    `json:"key_name"`
	TokenPrefix string    `json:"token_prefix"`
	Token       string    `json:"token"`
	LastRotated time.Time `json:"last_rotated"`
	// KeySetAt is when the current key became current (scheduled rotation
	// counts from it); for an adopted key kept until the first rotation, the
	// adoption time.
	KeySetAt time.Time `json:"key_set_at"`
	Adopted  bool      `json:"adopted,omitempty"`
	// RetryRotation: the rotation right after an adoption failed; the next
	// pass rotates (an adopted key counts from its adoption, so the
	// schedule alone would wait a whole period).
	RetryRotation bool `json:"retry_rotation,omitempty"`

	// The previous key while its overlap runs (empty once deactivated).
	PreviousKeyID string    `json:"previous_key_id,omitempty"`
	PreviousSince time.Time `json:"previous_since,omitempty"`
}

// previousDeactivatesAt is the latest the previous key stays active.
func (r *staticRole) previousDeactivatesAt() time.Time {
	if r.PreviousKeyID == "" {
		return time.Time{}
	}
	return r.PreviousSince.Add(r.MaxOverlap)
}

// rotationGap is the time between two scheduled rotations: the period, or
// the first gap of the cron schedule after now (zero when unknown).
func (r *staticRole) rotationGap(now time.Time) time.Duration {
	if r.RotationPeriod > 0 {
		return r.RotationPeriod
	}
	sched, err := rotation.DefaultScheduler.Parse(r.RotationSchedule)
	if err != nil || r.RotationSchedule == "" {
		return 0
	}
	first := sched.Next(now)
	return sched.Next(first).Sub(first)
}

// rotationSchedule is the static role's schedule.
func (r *staticRole) rotationSchedule() rotationSchedule {
	return rotationSchedule{Period: r.RotationPeriod, Schedule: r.RotationSchedule, Window: r.RotationWindow, Disabled: r.DisableAutomatedRotation,
		Managed: r.RotationManaged, VaultNext: r.NextVaultRotation, KeySetAt: r.KeySetAt, ScheduleSetAt: r.ScheduleSetAt, Retry: r.RetryRotation}
}

// validate checks the role's own fields and names the first that is wrong.
func (r *staticRole) validate() error {
	if r.Environment == "" {
		return errors.New("environment is required")
	}
	if r.RotationSchedule != "" {
		if r.RotationPeriod > 0 {
			return errors.New("rotation_schedule and rotation_period are mutually exclusive: set one of them")
		}
		if _, err := rotation.DefaultScheduler.Parse(r.RotationSchedule); err != nil {
			return fmt.Errorf("rotation_schedule is not a valid cron schedule: %v", err)
		}
	} else if r.RotationPeriod < minRotationPeriod {
		return fmt.Errorf("rotation_period must be at least %s, got %s", minRotationPeriod, r.RotationPeriod)
	}
	if r.Overlap < 0 {
		return fmt.Errorf("overlap must not be negative, got %s", r.Overlap)
	}
	if r.MaxOverlap < r.Overlap {
		return fmt.Errorf("max_overlap (%s) must not be less than overlap (%s)", r.MaxOverlap, r.Overlap)
	}
	if r.UnusedFor < 0 {
		return fmt.Errorf("unused_for must not be negative, got %s", r.UnusedFor)
	}
	if r.RetiredKeyRetention < 0 {
		return fmt.Errorf("retired_key_retention must not be negative, got %s", r.RetiredKeyRetention)
	}
	return nil
}

func getStaticRole(ctx context.Context, s logical.Storage, name string) (*staticRole, error) {
	return getJSON[staticRole](ctx, s, staticRoleStoragePrefix+name, fmt.Sprintf("static role %q", name))
}

// listStaticRoles returns every static role, by name.
func listStaticRoles(ctx context.Context, s logical.Storage) ([]*staticRole, error) {
	names, err := s.List(ctx, staticRoleStoragePrefix)
	if err != nil {
		return nil, fmt.Errorf("listing static roles: %w", err)
	}
	sort.Strings(names)
	out := make([]*staticRole, 0, len(names))
	for _, n := range names {
		r, err := getStaticRole(ctx, s, n)
		if err != nil {
			return nil, err
		}
		if r != nil {
			out = append(out, r)
		}
	}
	return out, nil
}

// staticRoleLock serialises writes and rotations of one static role.
func (b *heronBackend) staticRoleLock(name string) *locksutil.LockEntry {
	return locksutil.LockForKey(b.roleLocks, "static\x00"+name)
}

// staticKeyRecord is the tracked record of a static role's key.
func staticKeyRecord(r *staticRole, id, name, prefix string, now time.Time) *trackedKey {
	return &trackedKey{
		KeyID: id, KeyName: name, TokenPrefix: prefix,
		Environment: r.Environment, Role: r.Name, Kind: keyKindStatic,
		State: keyStateActive, Issued: now,
		ExpiredKeyRetention: r.RetiredKeyRetention,
		// role-keys/ counts a lease role's active keys for max_active_keys;
		// a static role of the same name must not count there.
		NoIndex: true,
	}
}

// errStaticUser marks static role failures that are the operator's to fix.
var errStaticUser = errors.New("static role")

// rotateStatic creates the role's next key under a write-ahead record,
// switches to it in one write (the previous key keeps working for the
// overlap), and deactivates a previous key two generations old. A failure
// keeps the current key; the next pass tries again.
func (b *heronBackend) rotateStatic(ctx context.Context, s logical.Storage, name string) (*staticRole, error) {
	r, _, err := b.rotateStaticIf(ctx, s, name, nil)
	return r, err
}

// stillWanted decides, under the role's lock and from the role as read
// under it, whether a rotation decided from an earlier read is still wanted
// (another actor may have rotated in between).
type stillWanted func(ctx context.Context, r *staticRole) (bool, error)

// rotateStaticIf is rotateStatic for a caller that decided to rotate from a
// read made before the lock (the periodic pass found the role due,
// static-creds found its key gone): still, asked under the lock, says
// whether that reason holds. When it does not, the role is returned as it is,
// unrotated (rotated false): a second rotation for one reason would retire
// the previous key before its overlap ended.
func (b *heronBackend) rotateStaticIf(ctx context.Context, s logical.Storage, name string, still stillWanted) (*staticRole, bool, error) {
	// Lock order, as everywhere: the config's lock, then the role's.
	r, err := getStaticRole(ctx, s, name)
	if err != nil {
		return nil, false, err
	}
	if r == nil {
		return nil, false, fmt.Errorf("%w %q does not exist", errStaticUser, name)
	}
	cfgLock := b.configLock(r.Environment)
	cfgLock.RLock()
	defer cfgLock.RUnlock()
	lock := b.staticRoleLock(name)
	lock.Lock()
	defer lock.Unlock()
	release, err := b.claimRotation(ctx, s, "static/"+name)
	if errors.Is(err, errRotationBusy) {
		return nil, false, fmt.Errorf("%w %q: %w; retry", errStaticUser, name, err)
	}
	if err != nil {
		return nil, false, err
	}
	defer release()
	env := r.Environment
	// Read after the claim: a rotation another instance finished before it
	// shows here.
	if r, err = getStaticRole(ctx, s, name); err != nil {
		return nil, false, err
	}
	if r == nil || r.Environment != env {
		// Deleted, or moved to another environment (whose config lock this
		// is not) since the first read.
		return nil, false, fmt.Errorf("%w %q changed while waiting to rotate it: retry", errStaticUser, name)
	}
	if still != nil {
		ok, err := still(ctx, r)
		if err != nil || !ok {
			return r, false, err
		}
	}
	client, err := b.creatingClient(ctx, s, r.Environment)
	if errors.Is(err, errConfigNotFound) {
		return nil, false, fmt.Errorf("%w %q names environment %q, which has no config", errStaticUser, name, r.Environment)
	}
	if err != nil {
		return nil, false, err
	}
	if err := b.rotateStaticLocked(ctx, s, client, r); err != nil {
		return r, false, err
	}
	return r, true, nil
}

// dueNow is the periodic pass's reason to rotate: the role's schedule says
// its time has come.
func (b *heronBackend) dueNow(_ context.Context, r *staticRole) (bool, error) {
	due, _ := r.rotationSchedule().nextAt(b.now())
	return !due.IsZero() && !b.now().Before(due), nil
}

// keyGone is static-creds' reason to rotate: the role's current key is not
// active by the engine's record (deleted or deactivated in Heron by hand),
// or quarantined (keys/<id>/deactivate): the holder gets a new key, and the
// quarantined one stays deactivated.
func keyGone(ctx context.Context, s logical.Storage, r *staticRole) (bool, error) {
	if r.KeyID == "" {
		return true, nil
	}
	rec, err := getTrackedKey(ctx, s, r.KeyID)
	if err != nil {
		return false, err
	}
	return rec == nil || rec.State != keyStateActive || rec.Quarantined, nil
}

// rotateStaticLocked is rotateStatic with the role's lock and its config's
// read lock held.
func (b *heronBackend) rotateStaticLocked(ctx context.Context, s logical.Storage, client heronapi.API, r *staticRole) error {
	now := b.now()
	keyName := fmt.Sprintf("vault-static-%s-%d", r.Name, now.Unix())
	failed := func(err error) error {
		b.recordChange(eventStaticRotateFail, keyChange{KeyID: r.KeyID, KeyName: r.KeyName, TokenPrefix: r.TokenPrefix,
			Environment: r.Environment, Role: r.Name, DataPath: "static-creds/" + r.Name}, "error", err.Error(), "trigger", rotationTrigger(ctx))
		return err
	}
	key, guard, err := b.createUnderWAL(ctx, s, client, walKindKey, &walKeyEntry{Environment: r.Environment, Role: r.Name, KeyName: keyName, Static: true}, false)
	if err != nil {
		return failed(upstreamError(fmt.Sprintf("creating the next key of static role %q", r.Name), err))
	}
	rec := staticKeyRecord(r, key.ID, keyName, key.TokenPrefix, now)
	b.setTokenHMAC(ctx, s, rec, key.Token)
	// undo deletes the new key that the role will not hold; once Heron
	// confirms the deletion its record (if the write got through) becomes a
	// tombstone saying so, with the event and log line of any deletion.
	// While the key may still be live its record stays active: the
	// write-ahead record and the cleanup pass's sweep of static keys no role
	// holds retire it, and nothing calls a live key deleted meanwhile.
	undo := func(err error) error {
		if guard.undo(ctx, client, key.ID) {
			if ferr := b.forgetKey(ctx, s, rec, reasonRollback); ferr != nil {
				b.Logger().Warn("could not record the end of a static key whose rotation failed", "key_id", key.ID, "error", ferr)
			}
			b.recordChange(eventKeyDelete, changeOf(rec), "reason", reasonRollback)
		}
		return failed(fmt.Errorf("storing the next key of static role %q: %w", r.Name, err))
	}
	if err := putJSON(ctx, s, keyStoragePrefix+rec.KeyID, "key record "+rec.KeyID, rec); err != nil {
		return undo(err)
	}
	next := *r
	next.KeyID, next.KeyName, next.TokenPrefix, next.Token = key.ID, keyName, key.TokenPrefix, key.Token
	next.LastRotated, next.KeySetAt, next.Adopted, next.RetryRotation = now, now, false, false
	// The current key becomes the previous one, with an overlap of its own;
	// unless it is gone already (static-creds replacing a key deleted by
	// hand): then the previous key, the only other one that works, keeps
	// its overlap.
	superseded := r.PreviousKeyID
	if r.KeyID != "" {
		cur, err := getTrackedKey(ctx, s, r.KeyID)
		if err != nil {
			return undo(err)
		}
		if cur != nil && cur.State == keyStateActive {
			next.PreviousKeyID, next.PreviousSince = r.KeyID, now
		} else {
			superseded = ""
		}
	}
	// The role's lock is this instance's: another instance (a reload or
	// failover) may have rotated it meanwhile, and writing over its switch
	// would strand the key it made and cut its previous key's overlap. Only
	// the key this rotation started from is replaced. (No stored role and
	// no key yet: a role's creation storing its first key.)
	stored, err := getStaticRole(ctx, s, r.Name)
	if err != nil {
		return undo(err)
	} else if (stored == nil && r.KeyID != "") || (stored != nil && stored.KeyID != r.KeyID) {
		return undo(fmt.Errorf("%w %q changed while this rotation ran (another instance rotated or deleted it): retry", errStaticUser, r.Name))
	}
	if err := b.putStaticRole(ctx, s, stored, &next); err != nil {
		// A failed write may still have been stored: only undo once storage
		// shows the role without the new key. If storage cannot say, the
		// new key may be the one the role hands out: keep it (its record
		// tracks it; if the role turns out not to hold it, the cleanup
		// pass's sweep of static keys no role holds retires it).
		stored, rerr := getStaticRole(ctx, s, r.Name)
		switch {
		case rerr != nil:
			guard.done(ctx)
			return failed(fmt.Errorf("storing the next key of static role %q: %w (storage could not say whether it was stored: the new key %s is kept, tracked, and retired by the cleanup pass if the role does not hold it)", r.Name, err, key.ID))
		case stored == nil || stored.KeyID != key.ID:
			return undo(err)
		}
	}
	guard.done(ctx)
	// A rotation during an overlap: the previous key is two generations old
	// now that this one has landed (never before: a failed rotation must
	// leave both working keys working), so it goes; if Heron cannot be
	// reached, the orphan sweep of the cleanup pass retires it later.
	if superseded != "" {
		if err := b.retireStaticKey(ctx, s, client, r, superseded, "superseded"); err != nil {
			b.Logger().Warn("could not deactivate a static role's superseded key yet; the cleanup pass will", "role", r.Name, "key_id", superseded, "error", err)
		}
	}
	*r = next
	b.recordChange(eventStaticRotate, changeOf(rec), "previous_key_id", r.PreviousKeyID, "trigger", rotationTrigger(ctx))
	return nil
}

// retireStaticKey deactivates a static role's key now; its record is kept
// and the cleanup pass deletes it after the role's retired_key_retention.
func (b *heronBackend) retireStaticKey(ctx context.Context, s logical.Storage, client heronapi.API, r *staticRole, id, why string) error {
	// Decided and written from a read under the record's lock.
	defer b.lockKey(id)()
	rec, err := getTrackedKey(ctx, s, id)
	if err != nil {
		return err
	}
	if rec != nil && rec.State == keyStateDeactivated {
		// Retired already (a retry after the role's own write failed): one
		// change, one event, and its deletion date stays.
		return nil
	}
	err = client.DeactivateKey(ctx, id)
	if errors.Is(err, heronapi.ErrNotFound) && rec != nil && rec.Unreachable {
		// The admin key cannot see this key (accepted with force=true): a
		// 404 proves nothing, so the key is never forgotten on one.
		return fmt.Errorf("deactivating key %s of static role %q: it is unreachable with the current admin key of config %q (accepted with force=true), so Heron's 404 does not prove it gone; write config/%s with an admin key that can see it",
			id, r.Name, r.Environment, r.Environment)
	}
	if errors.Is(err, heronapi.ErrNotFound) {
		if rec != nil {
			if err := b.forgetKey(ctx, s, rec, reasonMissing); err != nil {
				return err
			}
			b.recordChange(eventKeyMissing, changeOf(rec))
		}
		return nil
	}
	if err != nil {
		return err
	}
	now := b.now()
	if rec == nil {
		rec = staticKeyRecord(r, id, "", "", now)
	}
	rec.State = keyStateDeactivated
	rec.DeactivatedAt = now
	rec.DeleteAfter = now.Add(r.RetiredKeyRetention)
	rec.ExpiredKeyRetention = r.RetiredKeyRetention
	// keys/<id> says why (superseded, unused, max_overlap, ...), as the
	// event does.
	rec.Reason = why
	if err := putTrackedKey(ctx, s, rec); err != nil {
		return err
	}
	b.recordChange(eventStaticDeactivate, changeOf(rec), "reason", why, "delete_after", rec.DeleteAfter.UTC().Format(time.RFC3339))
	return nil
}

// settleOverlaps retires the previous keys of env's static roles (roles: the
// ones the pass found in their overlap's end, see staticScan) whose overlap
// is over: as soon as Heron's last_used shows the key unused for
// unused_for (never used: unused since it stopped being current), at
// max_overlap regardless. live is Heron's list, just asked; when Heron could
// not be listed (listed false), only max_overlap, which needs no list.
func (b *heronBackend) settleOverlaps(ctx context.Context, s logical.Storage, client heronapi.API, env string, roles []*staticRole, live []heronapi.Key, listed bool) error {
	byID := make(map[string]heronapi.Key, len(live))
	for _, k := range live {
		byID[k.ID] = k
	}
	now := b.now()
	var errs []error
	for _, r := range roles {
		if r.Environment != env || r.PreviousKeyID == "" || now.Before(r.PreviousSince.Add(r.Overlap)) {
			continue
		}
		if !listed {
			if !now.Before(r.previousDeactivatesAt()) {
				if err := b.finishOverlap(ctx, s, client, r.Name, r.PreviousKeyID, "max_overlap"); err != nil {
					errs = append(errs, fmt.Errorf("static role %q: %w", r.Name, err))
				}
			}
			continue
		}
		k, inHeron := byID[r.PreviousKeyID]
		if !inHeron {
			// Absent from the list proves the key gone only if the admin key
			// can see it (see Unreachable); otherwise only max_overlap ends it.
			rec, err := getTrackedKey(ctx, s, r.PreviousKeyID)
			if err != nil {
				errs = append(errs, err)
				continue
			}
			if rec != nil && rec.Unreachable && now.Before(r.previousDeactivatesAt()) {
				continue
			}
		}
		idle := now.Sub(r.PreviousSince)
		if inHeron && k.LastUsed != nil && k.LastUsed.After(r.PreviousSince) {
			idle = now.Sub(*k.LastUsed)
		}
		why := ""
		switch {
		case !inHeron:
			why = "gone from Heron"
		case idle >= r.UnusedFor:
			why = "unused"
		case !now.Before(r.previousDeactivatesAt()):
			why = "max_overlap"
		default:
			continue
		}
		if err := b.finishOverlap(ctx, s, client, r.Name, r.PreviousKeyID, why); err != nil {
			errs = append(errs, fmt.Errorf("static role %q: %w", r.Name, err))
		}
	}
	return errors.Join(errs...)
}

// finishOverlap retires the previous key of a static role, under its lock.
func (b *heronBackend) finishOverlap(ctx context.Context, s logical.Storage, client heronapi.API, name, prevID, why string) error {
	lock := b.staticRoleLock(name)
	lock.Lock()
	defer lock.Unlock()
	r, err := getStaticRole(ctx, s, name)
	if err != nil || r == nil || r.PreviousKeyID != prevID {
		return err
	}
	if err := b.retireStaticKey(ctx, s, client, r, prevID, why); err != nil {
		return err
	}
	old := *r
	r.PreviousKeyID, r.PreviousSince = "", time.Time{}
	return b.putStaticRole(ctx, s, &old, r)
}

// staticCurrentKeys maps env's static roles' current keys to their role.
func staticCurrentKeys(ctx context.Context, s logical.Storage, env string) (map[string]string, error) {
	roles, err := listStaticRoles(ctx, s)
	if err != nil {
		return nil, err
	}
	out := map[string]string{}
	for _, r := range roles {
		if r.Environment == env && r.KeyID != "" {
			out[r.KeyID] = r.Name
		}
	}
	return out, nil
}

// replaceInactiveStatic replaces a static role's current key that Heron
// lists as inactive (deactivated by hand): its record is marked deactivated
// (deleted after the role's retired_key_retention) and the role rotates, the
// previous key keeping its overlap as when a current key is deleted by hand.
// Both steps are decided under the role's lock from the role as read there:
// a rotation that replaced the key meanwhile is not repeated.
func (b *heronBackend) replaceInactiveStatic(ctx context.Context, s logical.Storage, name, keyID string) error {
	_, _, err := b.rotateStaticIf(heronapi.Background(ctx), s, name, func(ctx context.Context, r *staticRole) (bool, error) {
		if r.KeyID != keyID {
			return false, nil
		}
		// Seen inactive in a list asked before this lock: an operator may
		// have activated it since (lifting a quarantine). Ask Heron again.
		client, err := b.getClient(ctx, s, r.Environment)
		if err != nil {
			return false, err
		}
		found, inactive := false, false
		if err := heronapi.EachKey(ctx, client, func(k heronapi.Key) {
			if k.ID == keyID {
				found, inactive = true, !k.IsActive
			}
		}); err != nil {
			return false, err
		}
		if !found || !inactive {
			// Active again: nothing to replace. Gone: reconcile drops its
			// record, and static-creds replaces it then.
			return false, nil
		}
		defer b.lockKey(keyID)()
		rec, err := getTrackedKey(ctx, s, keyID)
		if err != nil {
			return false, err
		}
		if rec != nil && rec.State == keyStateActive {
			now := b.now()
			rec.State, rec.DeactivatedAt = keyStateDeactivated, now
			rec.DeleteAfter = now.Add(r.RetiredKeyRetention)
			rec.ExpiredKeyRetention = r.RetiredKeyRetention
			if err := putTrackedKey(ctx, s, rec); err != nil {
				return false, err
			}
			b.recordChange(eventStaticDeactivate, changeOf(rec), "reason", "inactive in Heron", "delete_after", rec.DeleteAfter.UTC().Format(time.RFC3339))
		}
		b.Logger().Warn("static role's current key is inactive in Heron (deactivated by hand?): replacing it", "role", name, "key_id", keyID)
		return true, nil
	})
	return err
}

// staticRolesUsingEnvironment names the static roles of env.
func staticRolesUsingEnvironment(ctx context.Context, s logical.Storage, env string) ([]string, error) {
	roles, err := listStaticRoles(ctx, s)
	if err != nil {
		return nil, err
	}
	var names []string
	for _, r := range roles {
		if r.Environment == env {
			names = append(names, r.Name)
		}
	}
	return names, nil
}
