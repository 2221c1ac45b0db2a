package heron

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/hashicorp/vault/sdk/framework"
	"github.com/hashicorp/vault/sdk/logical"

	"github.com/heron-vault/vault-plugin-secrets-heron/heronapi"
)

// static-roles/<name> and static-roles/<name>/rotate.

func pathStaticRoles(b *heronBackend) []*framework.Path {
	paths := []*framework.Path{
		{
			Pattern: "static-roles/?$",
			DisplayAttrs: &framework.DisplayAttributes{
				OperationPrefix: operationPrefixHeron,
				OperationSuffix: "static-roles",
			},
			Operations: map[logical.Operation]framework.OperationHandler{
				logical.ListOperation: &framework.PathOperation{
					Callback: b.pathStaticRolesList,
					Summary:  "List the static roles.",
				},
			},
			HelpSynopsis:    pathStaticRolesListHelpSyn,
			HelpDescription: pathStaticRolesListHelpDesc,
		},
		{
			Pattern: "static-roles/" + framework.GenericNameRegex("name") + "$",
			DisplayAttrs: &framework.DisplayAttributes{
				OperationPrefix: operationPrefixHeron,
				OperationSuffix: "static-role",
			},
			Fields:         staticRoleFields(),
			ExistenceCheck: b.pathStaticRolesExistenceCheck,
			Operations: map[logical.Operation]framework.OperationHandler{
				logical.ReadOperation: &framework.PathOperation{
					Callback:  b.pathStaticRolesRead,
					Summary:   "Read a static role (never its key).",
					Responses: rotationReadResponses("static role's key"),
				},
				logical.CreateOperation: &framework.PathOperation{
					Callback:                    b.pathStaticRolesWrite,
					ForwardPerformanceStandby:   true,
					ForwardPerformanceSecondary: true,
					Summary:                     "Create a static role: one long-lived Heron key, rotated with an overlap.",
				},
				logical.UpdateOperation: &framework.PathOperation{
					Callback:                    b.pathStaticRolesWrite,
					ForwardPerformanceStandby:   true,
					ForwardPerformanceSecondary: true,
					Summary:                     "Update a static role's rotation settings.",
				},
				logical.DeleteOperation: &framework.PathOperation{
					Callback:                    b.pathStaticRolesDelete,
					ForwardPerformanceStandby:   true,
					ForwardPerformanceSecondary: true,
					Summary:                     "Delete a static role; its keys are deactivated now and deleted after retired_key_retention.",
				},
			},
			HelpSynopsis:    pathStaticRolesHelpSyn,
			HelpDescription: pathStaticRolesHelpDesc,
		},
		pathRotateStaticRole(b, "static-roles/"+framework.GenericNameRegex("name")+"/rotate$", "static-role", pathStaticRolesRotateHelpSyn),
		// Vault's conventional name for the same operation.
		pathRotateStaticRole(b, "rotate-role/"+framework.GenericNameRegex("name")+"$", "role", pathStaticRolesRotateHelpSyn+" Alias of static-roles/<name>/rotate."),
	}
	// The list path pages: after and limit.
	paths[0].Fields = withPaging(paths[0].Fields)
	return paths
}

// pathRotateStaticRole is static-roles/<name>/rotate or its alias
// rotate-role/<name>: one handler, one name check.
func pathRotateStaticRole(b *heronBackend, pattern, suffix, syn string) *framework.Path {
	return &framework.Path{
		Pattern: pattern,
		DisplayAttrs: &framework.DisplayAttributes{
			OperationPrefix: operationPrefixHeron,
			OperationVerb:   "rotate",
			OperationSuffix: suffix,
		},
		Fields: map[string]*framework.FieldSchema{
			"name": {
				Type:         framework.TypeString,
				Description:  "Name of the static role to rotate.",
				Required:     true,
				DisplayAttrs: &framework.DisplayAttributes{Name: "Name"},
			},
		},
		Operations: map[logical.Operation]framework.OperationHandler{
			logical.UpdateOperation: &framework.PathOperation{
				Callback:                    b.pathStaticRolesRotate,
				ForwardPerformanceStandby:   true,
				ForwardPerformanceSecondary: true,
				Summary:                     "Rotate a static role's key now (the previous key keeps working for the overlap).",
			},
		},
		HelpSynopsis:    syn,
		HelpDescription: pathStaticRolesRotateHelpDesc,
	}
}

func staticRoleFields() map[string]*framework.FieldSchema {
	return map[string]*framework.FieldSchema{
		"name": {
			Type:         framework.TypeString,
			Description:  "Name of the static role.",
			Required:     true,
			DisplayAttrs: &framework.DisplayAttributes{Name: "Name"},
		},
		"environment": {
			Type:         framework.TypeString,
			Description:  "Heron environment (an existing config) the key belongs to. Fixed at create.",
			DisplayAttrs: &framework.DisplayAttributes{Name: "Environment"},
		},
		"rotation_period": {
			Type:         framework.TypeDurationSecond,
			Description:  "Rotate the key this often (at least 1m). Exclusive with rotation_schedule.",
			Default:      int(defaultStaticRotationPeriod.Seconds()),
			DisplayAttrs: &framework.DisplayAttributes{Name: "Rotation period"},
		},
		"rotation_schedule": {
			Type:         framework.TypeString,
			Description:  "Standard 5-field cron schedule (UTC) of rotations. Exclusive with rotation_period.",
			DisplayAttrs: &framework.DisplayAttributes{Name: "Rotation schedule"},
		},
		"rotation_window": {
			Type:         framework.TypeDurationSecond,
			Description:  "How long after a rotation_schedule time a rotation may still start; one that could not start within it waits for the next scheduled time. Needs rotation_schedule.",
			DisplayAttrs: &framework.DisplayAttributes{Name: "Rotation window"},
		},
		"disable_automated_rotation": {
			Type:         framework.TypeBool,
			Description:  "Turn automatic rotation off without forgetting the schedule (rotate-role/<name> still rotates).",
			DisplayAttrs: &framework.DisplayAttributes{Name: "Disable automated rotation"},
		},
		"overlap": {
			Type:         framework.TypeDurationSecond,
			Description:  "After a rotation the previous key stays active at least this long.",
			Default:      int(defaultOverlap.Seconds()),
			DisplayAttrs: &framework.DisplayAttributes{Name: "Overlap"},
		},
		"max_overlap": {
			Type:         framework.TypeDurationSecond,
			Description:  "After overlap, the previous key is deactivated once Heron shows it unused for unused_for; at max_overlap regardless. Defaults to overlap.",
			DisplayAttrs: &framework.DisplayAttributes{Name: "Max overlap"},
		},
		"unused_for": {
			Type:         framework.TypeDurationSecond,
			Description:  "How long Heron's last_used must show the previous key unused before it is deactivated (between overlap and max_overlap).",
			Default:      int(defaultUnusedFor.Seconds()),
			DisplayAttrs: &framework.DisplayAttributes{Name: "Unused for"},
		},
		"retired_key_retention": {
			Type:         framework.TypeDurationSecond,
			Description:  "A deactivated previous key is deleted this long after.",
			Default:      int(defaultRetiredKeyRetention.Seconds()),
			DisplayAttrs: &framework.DisplayAttributes{Name: "Retired key retention"},
		},
		"api_key": {
			Type:         framework.TypeString,
			Description:  "On create only: adopt this existing Heron key (found by its prefix, checked to authenticate) instead of creating one. Never returned.",
			DisplayAttrs: &framework.DisplayAttributes{Name: "API key", Sensitive: true},
		},
		"skip_import_rotation": {
			Type:         framework.TypeBool,
			Description:  "With api_key: keep the adopted key until the first scheduled rotation instead of rotating now.",
			DisplayAttrs: &framework.DisplayAttributes{Name: "Skip import rotation"},
		},
	}
}

func (b *heronBackend) pathStaticRolesExistenceCheck(ctx context.Context, req *logical.Request, d *framework.FieldData) (bool, error) {
	name := d.Get("name").(string)
	if pathNameError(req, "static role", name) != nil {
		// Nothing is read with a name refused by the handler.
		return false, nil
	}
	r, err := getStaticRole(ctx, req.Storage, name)
	return r != nil, err
}

// pathStaticRolesList handles LIST static-roles/.
func (b *heronBackend) pathStaticRolesList(ctx context.Context, req *logical.Request, d *framework.FieldData) (*logical.Response, error) {
	page, bad := readPage(d)
	if bad != "" {
		return logical.ErrorResponse(bad), nil
	}
	names, err := req.Storage.List(ctx, staticRoleStoragePrefix)
	if err != nil {
		return nil, fmt.Errorf("listing static roles: %w", err)
	}
	return logical.ListResponse(page.names(names)), nil
}

// pathStaticRolesRead handles READ static-roles/<name>.
func (b *heronBackend) pathStaticRolesRead(ctx context.Context, req *logical.Request, d *framework.FieldData) (*logical.Response, error) {
	name := d.Get("name").(string)
	if resp := pathNameError(req, "static role", name); resp != nil {
		return resp, nil
	}
	r, err := getStaticRole(ctx, req.Storage, name)
	if err != nil || r == nil {
		return nil, err
	}
	sched := r.rotationSchedule()
	next := sched.readNext(b.now())
	data := map[string]interface{}{
		"environment":                r.Environment,
		"rotation_period":            int64(r.RotationPeriod.Seconds()),
		"rotation_schedule":          r.RotationSchedule,
		"rotation_window":            int64(r.RotationWindow.Seconds()),
		"disable_automated_rotation": r.DisableAutomatedRotation,
		"rotation_managed_by_vault":  r.RotationManaged,
		"overlap":                    int64(r.Overlap.Seconds()),
		"max_overlap":                int64(r.MaxOverlap.Seconds()),
		"unused_for":                 int64(r.UnusedFor.Seconds()),
		"retired_key_retention":      int64(r.RetiredKeyRetention.Seconds()),
		"skip_import_rotation":       r.SkipImportRotation,
		"key_id":                     r.KeyID,
		"key_name":                   r.KeyName,
		"token_prefix":               r.TokenPrefix,
		"last_vault_rotation":        timeOrNil(r.LastRotated),
		"next_vault_rotation":        timeOrNil(next),
		// Deprecated aliases of last_vault_rotation and next_vault_rotation.
		"last_rotated":            formatTime(r.LastRotated),
		"next_rotation":           formatTime(next),
		"previous_key_id":         r.PreviousKeyID,
		"previous_deactivates_at": formatTime(r.previousDeactivatesAt()),
	}
	if note := sched.skippedNote(b.now()); note != "" {
		data["rotation_skipped"] = note
	}
	return &logical.Response{Data: data}, nil
}

// pathStaticRolesWrite handles CREATE and UPDATE static-roles/<name>.
func (b *heronBackend) pathStaticRolesWrite(ctx context.Context, req *logical.Request, d *framework.FieldData) (*logical.Response, error) {
	name := d.Get("name").(string)
	if resp := pathNameError(req, "static role", name); resp != nil {
		return resp, nil
	}
	if resp := rotationFieldsError(d); resp != nil {
		return resp, nil
	}
	// The environment decides which config lock to take (the config's lock
	// comes before the role's); the role is read again under both, so that a
	// rotation that lands meanwhile is never written over.
	existing, err := getStaticRole(ctx, req.Storage, name)
	if err != nil {
		return nil, err
	}
	env := strings.TrimSpace(d.Get("environment").(string))
	if existing != nil {
		env = existing.Environment
	}
	cfgLock := b.configLock(env)
	cfgLock.RLock()
	defer cfgLock.RUnlock()
	lock := b.staticRoleLock(name)
	lock.Lock()
	defer lock.Unlock()
	if existing, err = getStaticRole(ctx, req.Storage, name); err != nil {
		return nil, err
	}
	r, bad := staticRoleFromRequest(d, name, existing, b.now())
	if bad != "" {
		return logical.ErrorResponse(bad), nil
	}
	if r.Environment != env {
		return nil, fmt.Errorf("static role %q was created or deleted while this write waited: write it again", name)
	}
	create := existing == nil
	apiKey := strings.TrimSpace(d.Get("api_key").(string))
	cfg, err := getConfig(ctx, req.Storage, r.Environment)
	if err != nil {
		return nil, err
	}
	if cfg == nil {
		return logical.ErrorResponse("environment %q has no config: write config/%s first", r.Environment, r.Environment), nil
	}
	if cfg.Deleting {
		return logical.ErrorResponse(errDeleting(r.Environment).Error()), nil
	}
	// Registered before anything is stored or created: a rotation manager's
	// refusal is the write's error, as on HashiCorp's engines.
	warnings, refused := b.registerRotationJob(ctx, req.MountPoint, "heron-static-role-"+name, staticRoleStoragePrefix+name, r.rotationSchedule(),
		&r.RotationManaged, &r.NextVaultRotation, create, setsRotationFields(d))
	if refused != "" {
		return logical.ErrorResponse(refused), nil
	}
	if gap := r.rotationGap(b.now()); gap > 0 && r.Overlap > gap {
		// Accepted, as Vault accepts a ttl above the mount's max: but each
		// rotation deactivates the key two generations old, so say what the
		// overlap will really be.
		warnings = append(warnings, fmt.Sprintf("overlap (%s) is longer than the time between rotations (%s): each rotation deactivates the previous key, so it stays active for %s, not %s", r.Overlap, gap, gap, r.Overlap))
	}
	if r.UnusedFor > r.MaxOverlap && r.MaxOverlap > r.Overlap {
		// Accepted: max_overlap still ends it. But the early end it was
		// meant to allow can never come.
		warnings = append(warnings, fmt.Sprintf("unused_for (%ds) is longer than max_overlap (%ds): a previous key can never be seen unused that long before max_overlap deactivates it anyway, so it is always deactivated at max_overlap", int64(r.UnusedFor.Seconds()), int64(r.MaxOverlap.Seconds())))
	}
	var resp *logical.Response
	if len(warnings) > 0 {
		resp = &logical.Response{Warnings: warnings}
	}
	if !create {
		if err := b.putStaticRole(ctx, req.Storage, existing, r); err != nil {
			return nil, err
		}
		return resp, nil
	}

	// A create that stores no role takes its job back out of Vault's
	// rotation manager.
	dropJob := func() {
		if ws := b.deregisterRotationJob(ctx, req.MountPoint, staticRoleStoragePrefix+name, r.RotationManaged); len(ws) > 0 {
			b.Logger().Warn("static role not created, and its rotation job could not be deregistered", "role", name, "warning", ws[0])
		}
	}
	// Claimed like a rotation: another instance's orphan sweep must not take
	// the key stored here for one no role holds before the role is stored.
	release, err := b.claimRotation(ctx, req.Storage, "static/"+name)
	if errors.Is(err, errRotationBusy) {
		dropJob()
		return logical.ErrorResponse("static role %q: %v; retry", name, err), nil
	}
	if err != nil {
		dropJob()
		return nil, err
	}
	defer release()
	client, err := b.creatingClient(ctx, req.Storage, r.Environment)
	if err != nil {
		dropJob()
		return nil, err
	}
	if apiKey != "" {
		if resp, err := b.adoptStaticKey(ctx, req.Storage, client, cfg, r, apiKey); resp != nil || err != nil {
			dropJob()
			return resp, err
		}
		if r.SkipImportRotation {
			return resp, nil
		}
	}
	if err := b.rotateStaticLocked(ctx, req.Storage, client, r); err != nil {
		if apiKey == "" {
			dropJob()
			return nil, err
		}
		// The adopted key is stored and tracked: the role exists, and the
		// next pass retries the rotation.
		if resp == nil {
			resp = &logical.Response{}
		}
		adopted := *r
		r.RetryRotation = true
		if perr := b.putStaticRole(ctx, req.Storage, &adopted, r); perr != nil {
			resp.AddWarning(fmt.Sprintf("the key was adopted, but rotating it failed, and so did recording that a rotation is owed (rotate it with static-roles/%s/rotate): %v; %v", name, err, perr))
		} else {
			resp.AddWarning(fmt.Sprintf("the key was adopted, but rotating it failed (the next pass retries): %v", err))
		}
	}
	return resp, nil
}

// staticRoleFromRequest applies the request's fields to existing (nil: a new
// role) and checks them; a non-empty string is the 400 to answer.
func staticRoleFromRequest(d *framework.FieldData, name string, existing *staticRole, now time.Time) (*staticRole, string) {
	create := existing == nil
	if create {
		if bad := newNameError("static role", name, true); bad != "" {
			return nil, bad
		}
	}
	r := &staticRole{Name: name}
	if !create {
		c := *existing
		r = &c
	}
	if v, ok := d.GetOk("environment"); ok {
		env := strings.TrimSpace(v.(string))
		if !create && env != r.Environment {
			return nil, fmt.Sprintf("environment of static role %q is %q and cannot change: delete the role and create it again", name, r.Environment)
		}
		if bad := environmentError("environment", env); bad != "" && env != "" {
			return nil, bad
		}
		r.Environment = env
	}
	durationField(d, "rotation_period", create, &r.RotationPeriod)
	stringField(d, "rotation_schedule", create, &r.RotationSchedule)
	r.RotationSchedule = strings.TrimSpace(r.RotationSchedule)
	if _, ok := d.GetOk("rotation_schedule"); ok && r.RotationSchedule != "" {
		if _, ok := d.GetOk("rotation_period"); !ok {
			r.RotationPeriod = 0
		}
	}
	durationField(d, "rotation_window", create, &r.RotationWindow)
	boolField(d, "disable_automated_rotation", create, &r.DisableAutomatedRotation)
	if _, ok := d.GetOk("rotation_period"); ok && r.RotationPeriod > 0 {
		if _, ok := d.GetOk("rotation_schedule"); !ok {
			r.RotationSchedule, r.RotationWindow = "", 0
		}
	}
	if r.RotationWindow < 0 {
		return nil, fmt.Sprintf("rotation_window must not be negative, got %s", r.RotationWindow)
	}
	if r.RotationWindow > 0 && r.RotationSchedule == "" {
		return nil, "cannot use rotation_window without rotation_schedule"
	}
	if create || r.RotationSchedule != existing.RotationSchedule {
		// A schedule fires at its first time after it was set, never for
		// the times it would have fired since the key was set.
		r.ScheduleSetAt = now
	}
	durationField(d, "overlap", create, &r.Overlap)
	if v, ok := d.GetOk("max_overlap"); ok {
		r.MaxOverlap = time.Duration(v.(int)) * time.Second
	} else if create {
		r.MaxOverlap = r.Overlap
	}
	durationField(d, "unused_for", create, &r.UnusedFor)
	durationField(d, "retired_key_retention", create, &r.RetiredKeyRetention)
	boolField(d, "skip_import_rotation", create, &r.SkipImportRotation)
	apiKey := strings.TrimSpace(d.Get("api_key").(string))
	if apiKey != "" && !create {
		return nil, fmt.Sprintf("api_key adopts a key when a static role is created; static role %q exists: rotate it instead (static-roles/%s/rotate)", name, name)
	}
	if apiKey != "" && !heronapi.TokenPattern.MatchString(apiKey) {
		return nil, "api_key is malformed: it must be \"key_\" followed by 48 lowercase hex characters"
	}
	if err := r.validate(); err != nil {
		return nil, err.Error()
	}
	return r, ""
}

// adoptStaticKey makes apiKey the role's current key: found in Heron's list
// by its prefix (a single key with it), and checked to authenticate. From
// here on the engine owns it. A non-nil response is a user error.
func (b *heronBackend) adoptStaticKey(ctx context.Context, s logical.Storage, client heronapi.API, cfg *heronConfig, r *staticRole, apiKey string) (*logical.Response, error) {
	keys, _, err := b.listKeys(ctx, client, r.Environment, 0)
	if err != nil {
		return nil, upstreamError(fmt.Sprintf("listing the keys of environment %q to find the key to adopt", r.Environment), err)
	}
	prefix := keyPrefix(apiKey)
	var found []heronapi.Key
	for _, k := range keys {
		if k.TokenPrefix == prefix {
			found = append(found, k)
		}
	}
	switch len(found) {
	case 0:
		return logical.ErrorResponse("api_key: no key with prefix %s is visible to the admin key of config %q", prefix, r.Environment), nil
	case 1:
	default:
		return logical.ErrorResponse("api_key: %d keys share the prefix %s in environment %q, so the key to adopt cannot be told apart", len(found), prefix, r.Environment), nil
	}
	k := found[0]
	// Any config's admin key, current or rotated out: configs of other
	// environments may hold keys of the same Heron user.
	envs, err := s.List(ctx, configStoragePrefix)
	if err != nil {
		return nil, fmt.Errorf("listing configs: %w", err)
	}
	for _, env := range envs {
		other, err := getConfig(ctx, s, env)
		if err != nil {
			return nil, err
		}
		if other != nil && other.accountsFor(k) {
			return logical.ErrorResponse("api_key is an admin key of config %q; adopt an application's key", env), nil
		}
	}
	if rec, err := getTrackedKey(ctx, s, k.ID); err != nil || rec != nil {
		if err != nil {
			return nil, err
		}
		// The record of an adoption of this very role that failed before
		// the role was stored (a crash between the two writes): adopting
		// again takes it over. The role does not exist, so nothing holds it.
		if !(rec.kind() == keyKindStatic && rec.Role == r.Name && rec.State == keyStateActive && rec.Pending == "") {
			return logical.ErrorResponse("api_key is key %s, which this engine already manages (%s of role %q)", k.ID, rec.kind(), rec.Role), nil
		}
	}
	// The key must authenticate, and be the one listed: a token of another
	// Heron user can share the 8-character prefix. Its own list shows its
	// user's keys; if k is among them, the token is k (the only key of that
	// user with this prefix).
	probe, err := b.checkClient(cfg, apiKey)
	var own []heronapi.Key
	if err == nil {
		own, err = probe.ListKeys(ctx)
	}
	if errors.Is(err, heronapi.ErrUnauthorized) {
		return logical.ErrorResponse("api_key: Heron does not accept this key (401): it is deactivated or not the key listed as %s", k.ID), nil
	}
	if err != nil {
		return nil, upstreamError("checking that the key to adopt authenticates", err)
	}
	if !slices.ContainsFunc(own, func(o heronapi.Key) bool { return o.ID == k.ID }) {
		return logical.ErrorResponse("api_key belongs to another Heron user than the admin key of config %q: it is not key %s, which only shares its prefix %s", r.Environment, k.ID, prefix), nil
	}
	now := b.now()
	rec := staticKeyRecord(r, k.ID, k.Name, k.TokenPrefix, now)
	b.setTokenHMAC(ctx, s, rec, apiKey)
	if err := putJSON(ctx, s, keyStoragePrefix+rec.KeyID, "key record "+rec.KeyID, rec); err != nil {
		return nil, err
	}
	r.KeyID, r.KeyName, r.TokenPrefix, r.Token = k.ID, k.Name, k.TokenPrefix, apiKey
	r.KeySetAt, r.Adopted = now, true
	if err := b.putStaticRole(ctx, s, nil, r); err != nil {
		// A write that reports an error may have been stored: then the
		// adoption happened, and the record must stay with it.
		if stored, rerr := getStaticRole(ctx, s, r.Name); rerr == nil && stored != nil && stored.KeyID == k.ID {
			b.Logger().Warn("storing the static role reported an error but it was stored", "role", r.Name, "error", err)
		} else {
			// Not adopted after all: the key stays the customer's,
			// untouched. (Should the record's removal fail too, the cleanup
			// pass retires the key as a static key no role holds.)
			if derr := deleteTrackedKey(ctx, s, rec); derr != nil {
				b.Logger().Warn("could not remove the record of a key whose adoption failed", "key_id", k.ID, "error", derr)
			}
			return nil, err
		}
	}
	b.Logger().Info("static role adopted a key", "role", r.Name, "environment", r.Environment, "key_id", k.ID, "token_prefix", k.TokenPrefix)
	return nil, nil
}

// pathStaticRolesDelete handles DELETE static-roles/<name>: its current and
// previous keys (an adopted one too) are deactivated at once and deleted after
// retired_key_retention.
func (b *heronBackend) pathStaticRolesDelete(ctx context.Context, req *logical.Request, d *framework.FieldData) (*logical.Response, error) {
	name := d.Get("name").(string)
	if resp := pathNameError(req, "static role", name); resp != nil {
		return resp, nil
	}
	r, err := getStaticRole(ctx, req.Storage, name)
	if err != nil || r == nil {
		return nil, err
	}
	cfgLock := b.configLock(r.Environment)
	cfgLock.RLock()
	defer cfgLock.RUnlock()
	lock := b.staticRoleLock(name)
	lock.Lock()
	defer lock.Unlock()
	// Read again under the lock: a rotation that landed meanwhile changed
	// which keys the role holds.
	if r, err = getStaticRole(ctx, req.Storage, name); err != nil || r == nil {
		return nil, err
	}
	client, err := b.getClient(ctx, req.Storage, r.Environment)
	if err != nil {
		return nil, err
	}
	// The role goes first, so that static-creds can never hand out a key
	// being deactivated; a key whose deactivation fails below is a static
	// key no role holds, which the cleanup pass retires.
	if err := req.Storage.Delete(ctx, staticRoleStoragePrefix+name); err != nil {
		return nil, fmt.Errorf("deleting static role %q: %w", name, err)
	}
	b.deleteStaticRoleIndex(ctx, req.Storage, r)
	var errs []error
	for _, id := range []string{r.PreviousKeyID, r.KeyID} {
		if id == "" {
			continue
		}
		if err := b.retireStaticKey(ctx, req.Storage, client, r, id, "role deleted"); err != nil {
			errs = append(errs, fmt.Errorf("key %s: %w", id, err))
		}
	}
	// The role is gone whatever happened to its keys: so is its job.
	warnings := b.deregisterRotationJob(ctx, req.MountPoint, staticRoleStoragePrefix+name, r.RotationManaged)
	if len(errs) > 0 {
		warnings = append(warnings, fmt.Sprintf("static role %q is deleted, but deactivating its keys failed (the cleanup pass retires them): %v", name, errors.Join(errs...)))
	}
	if len(warnings) > 0 {
		return &logical.Response{Warnings: warnings}, nil
	}
	return nil, nil
}

// pathStaticRolesRotate handles UPDATE static-roles/<name>/rotate.
func (b *heronBackend) pathStaticRolesRotate(ctx context.Context, req *logical.Request, d *framework.FieldData) (*logical.Response, error) {
	name := d.Get("name").(string)
	if resp := pathNameError(req, "static role", name); resp != nil {
		return resp, nil
	}
	r, err := b.rotateStatic(ctx, req.Storage, name)
	if errors.Is(err, errStaticUser) {
		return logical.ErrorResponse(err.Error()), nil
	}
	if err != nil {
		return nil, err
	}
	return &logical.Response{Data: map[string]interface{}{
		"key_id":                  r.KeyID,
		"key_name":                r.KeyName,
		"token_prefix":            r.TokenPrefix,
		"last_rotated":            formatTime(r.LastRotated),
		"previous_key_id":         r.PreviousKeyID,
		"previous_deactivates_at": formatTime(r.previousDeactivatesAt()),
	}}, nil
}

const pathStaticRolesListHelpSyn = `List the static roles.`

const pathStaticRolesListHelpDesc = `Lists the names of the static roles.`

const pathStaticRolesHelpSyn = `Manage a static role: one long-lived Heron key for an application.`

const pathStaticRolesHelpDesc = `
A static role holds one Heron key that applications read at static-creds/<name>
(no lease). The engine rotates it on rotation_period or rotation_schedule: it
creates the next key, and the previous one keeps working for overlap; after
that it is deactivated as soon as Heron's last_used shows it unused for
unused_for, and at max_overlap regardless, then deleted after
retired_key_retention. api_key adopts an existing key at create.
`

const pathStaticRolesRotateHelpSyn = `Rotate a static role's key now.`

const pathStaticRolesRotateHelpDesc = `
Creates the role's next key and makes it current; the previous key keeps
working for the role's overlap. A failed rotation keeps the current key.
`
