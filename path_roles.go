package heron

import (
	"context"
	"errors"
	"fmt"
	"sort"
	"strings"
	"time"

	"github.com/hashicorp/vault/sdk/framework"
	"github.com/hashicorp/vault/sdk/logical"

	"github.com/heron-vault/vault-plugin-secrets-heron/heronapi"
)

const (
	roleStoragePrefix = "roles/"

	defaultNameTemplate         = `vault-{{.RoleName | truncate 32}}-{{.DisplayName | truncate 32}}-{{unix_time}}-{{random 8}}`
	defaultExpiredKeyRetention  = 72 * time.Hour
	maxKeyNameLength            = heronapi.MaxKeyNameLength
	validationDisplayNameLength = 32
)

// heronRole describes the keys that creds/<role> issues.
type heronRole struct {
	Name                string        `json:"name"`
	Environment         string        `json:"environment"`
	TTL                 time.Duration `json:"ttl"`
	MaxTTL              time.Duration `json:"max_ttl"`
	NameTemplate        string        `json:"name_template"`
	Description         string        `json:"description"`
	MaxActiveKeys       int           `json:"max_active_keys"`
	ExpiredKeyRetention time.Duration `json:"expired_key_retention"`

	// unique is uniqueNames(), set when the role enters the cache.
	unique bool
}

// nameTemplateData is what a name_template can use.
type nameTemplateData struct {
	RoleName    string
	DisplayName string
	EntityID    string
	Environment string
}

// nameTemplate returns the role's template text (the default when unset).
func (r *heronRole) nameTemplate() string {
	if r.NameTemplate == "" {
		return defaultNameTemplate
	}
	return r.NameTemplate
}

// validate checks the role's own fields (not the environment's existence,
// which needs storage).
func (r *heronRole) validate() error {
	if r.Environment == "" {
		return errors.New("environment is required")
	}
	if bad := environmentError("environment", r.Environment); bad != "" {
		return errors.New(bad)
	}
	if r.TTL < 0 {
		return fmt.Errorf("ttl must not be negative, got %s", r.TTL)
	}
	if r.MaxTTL < 0 {
		return fmt.Errorf("max_ttl must not be negative, got %s", r.MaxTTL)
	}
	if r.TTL > 0 && r.MaxTTL > 0 && r.TTL > r.MaxTTL {
		return fmt.Errorf("ttl (%s) must not be greater than max_ttl (%s)", r.TTL, r.MaxTTL)
	}
	if r.MaxActiveKeys < 0 {
		return fmt.Errorf("max_active_keys must be 0 (no cap) or positive, got %d", r.MaxActiveKeys)
	}
	if r.ExpiredKeyRetention < 0 {
		return fmt.Errorf("expired_key_retention must not be negative, got %s", r.ExpiredKeyRetention)
	}
	// Render with the longest display name the default template keeps, so a
	// template that only fails for real callers is caught now.
	_, err := r.renderKeyName(nameTemplateData{
		RoleName:    r.Name,
		DisplayName: strings.Repeat("d", validationDisplayNameLength),
		EntityID:    "00000000-0000-0000-0000-000000000000",
		Environment: r.Environment,
	})
	return err
}

func pathRoles(b *heronBackend) []*framework.Path {
	paths := []*framework.Path{
		{
			Pattern: "roles/?$",
			DisplayAttrs: &framework.DisplayAttributes{
				OperationPrefix: operationPrefixHeron,
				OperationSuffix: "roles",
			},
			Operations: map[logical.Operation]framework.OperationHandler{
				logical.ListOperation: &framework.PathOperation{
					Callback: b.pathRolesList,
					Summary:  "List the roles.",
				},
			},
			HelpSynopsis:    pathRolesListHelpSyn,
			HelpDescription: pathRolesListHelpDesc,
		},
		{
			Pattern: "roles/" + framework.GenericNameRegex("name") + "$",
			DisplayAttrs: &framework.DisplayAttributes{
				OperationPrefix: operationPrefixHeron,
				OperationSuffix: "role",
			},
			Fields: map[string]*framework.FieldSchema{
				"name": {
					Type:        framework.TypeString,
					Description: "Name of the role.",
					Required:    true,
					DisplayAttrs: &framework.DisplayAttributes{
						Name: "Role name",
					},
				},
				"environment": {
					Type:        framework.TypeString,
					Description: "Heron environment (an existing config/<environment>) the role's keys are created in.",
					Required:    true,
					DisplayAttrs: &framework.DisplayAttributes{
						Name: "Environment",
					},
				},
				"ttl": {
					Type:        framework.TypeDurationSecond,
					Description: "Lease TTL of issued keys (0 = the mount's default).",
					DisplayAttrs: &framework.DisplayAttributes{
						Name: "TTL",
					},
				},
				"max_ttl": {
					Type:        framework.TypeDurationSecond,
					Description: "Maximum lease TTL of issued keys, renewals included (0 = the mount's max).",
					DisplayAttrs: &framework.DisplayAttributes{
						Name: "Max TTL",
					},
				},
				"name_template": {
					Type:        framework.TypeString,
					Description: "Template of the Heron key name (fields RoleName, DisplayName, EntityID, Environment); 1 to 128 characters once rendered.",
					Default:     defaultNameTemplate,
					DisplayAttrs: &framework.DisplayAttributes{
						Name: "Name template",
					},
				},
				"description": {
					Type:        framework.TypeString,
					Description: "Free-form description of the role.",
					DisplayAttrs: &framework.DisplayAttributes{
						Name: "Description",
					},
				},
				"max_active_keys": {
					Type:        framework.TypeInt,
					Description: "Refuse new credentials while this many keys of the role are active (0 = no cap).",
					DisplayAttrs: &framework.DisplayAttributes{
						Name: "Max active keys",
					},
				},
				"expired_key_retention": {
					Type:        framework.TypeDurationSecond,
					Description: "How long a key deactivated at lease expiry is kept before it is deleted.",
					Default:     int(defaultExpiredKeyRetention.Seconds()),
					DisplayAttrs: &framework.DisplayAttributes{
						Name: "Expired key retention",
					},
				},
			},
			ExistenceCheck: b.pathRolesExistenceCheck,
			Operations: map[logical.Operation]framework.OperationHandler{
				logical.ReadOperation: &framework.PathOperation{
					Callback: b.pathRolesRead,
					Summary:  "Read a role.",
				},
				logical.CreateOperation: &framework.PathOperation{
					Callback: b.pathRolesWrite,
					Summary:  "Create a role.",
				},
				logical.UpdateOperation: &framework.PathOperation{
					Callback: b.pathRolesWrite,
					Summary:  "Update a role.",
				},
				logical.DeleteOperation: &framework.PathOperation{
					Callback: b.pathRolesDelete,
					Summary:  "Delete a role.",
				},
			},
			HelpSynopsis:    pathRolesHelpSyn,
			HelpDescription: pathRolesHelpDesc,
		},
	}
	// The list path pages: after and limit.
	paths[0].Fields = withPaging(paths[0].Fields)
	return paths
}

// getRole returns the stored role, or (nil, nil) when there is none.
func getRole(ctx context.Context, s logical.Storage, name string) (*heronRole, error) {
	return getJSON[heronRole](ctx, s, roleStoragePrefix+name, fmt.Sprintf("role %q", name))
}

// role is getRole through an in-memory cache: issuance and renewal read
// no storage for the role. A write or delete here, and Invalidate for one
// on another node, drop the entry.
func (b *heronBackend) role(ctx context.Context, s logical.Storage, name string) (*heronRole, error) {
	b.rolesLock.RLock()
	r, ok := b.roles[name]
	b.rolesLock.RUnlock()
	if ok {
		return r, nil
	}
	r, err := getRole(ctx, s, name)
	if err != nil || r == nil {
		return r, err
	}
	// Decided once per cached role, not per issuance (it renders the
	// template twice).
	r.unique = r.uniqueNames()
	b.rolesLock.Lock()
	b.roles[name] = r
	b.rolesLock.Unlock()
	return r, nil
}

// forgetRole drops name from the role cache.
func (b *heronBackend) forgetRole(name string) {
	b.rolesLock.Lock()
	delete(b.roles, name)
	b.rolesLock.Unlock()
}

// rolesUsingEnvironment lists, sorted, the roles that name env.
func rolesUsingEnvironment(ctx context.Context, s logical.Storage, env string) ([]string, error) {
	names, err := s.List(ctx, roleStoragePrefix)
	if err != nil {
		return nil, fmt.Errorf("listing roles: %w", err)
	}
	var using []string
	for _, name := range names {
		role, err := getRole(ctx, s, name)
		if err != nil {
			return nil, err
		}
		if role != nil && role.Environment == env {
			using = append(using, name)
		}
	}
	sort.Strings(using)
	return using, nil
}

func (b *heronBackend) pathRolesExistenceCheck(ctx context.Context, req *logical.Request, d *framework.FieldData) (bool, error) {
	name := d.Get("name").(string)
	if pathNameError(req, "role", name) != nil {
		// Nothing is read with a name refused by the handler.
		return false, nil
	}
	role, err := getRole(ctx, req.Storage, name)
	if err != nil {
		return false, err
	}
	return role != nil, nil
}

// pathRolesList handles LIST roles/.
func (b *heronBackend) pathRolesList(ctx context.Context, req *logical.Request, d *framework.FieldData) (*logical.Response, error) {
	page, bad := readPage(d)
	if bad != "" {
		return logical.ErrorResponse(bad), nil
	}
	names, err := req.Storage.List(ctx, roleStoragePrefix)
	if err != nil {
		return nil, fmt.Errorf("listing roles: %w", err)
	}
	return logical.ListResponse(page.names(names)), nil
}

// pathRolesRead handles READ roles/<name>.
func (b *heronBackend) pathRolesRead(ctx context.Context, req *logical.Request, d *framework.FieldData) (*logical.Response, error) {
	name := d.Get("name").(string)
	if resp := pathNameError(req, "role", name); resp != nil {
		return resp, nil
	}
	role, err := getRole(ctx, req.Storage, name)
	if err != nil {
		return nil, err
	}
	if role == nil {
		return nil, nil
	}
	return &logical.Response{Data: map[string]interface{}{
		"environment":           role.Environment,
		"ttl":                   int64(role.TTL.Seconds()),
		"max_ttl":               int64(role.MaxTTL.Seconds()),
		"name_template":         role.nameTemplate(),
		"description":           role.Description,
		"max_active_keys":       role.MaxActiveKeys,
		"expired_key_retention": int64(role.ExpiredKeyRetention.Seconds()),
	}}, nil
}

// pathRolesWrite handles CREATE and UPDATE roles/<name>.
func (b *heronBackend) pathRolesWrite(ctx context.Context, req *logical.Request, d *framework.FieldData) (*logical.Response, error) {
	name := d.Get("name").(string)
	if resp := pathNameError(req, "role", name); resp != nil {
		return resp, nil
	}

	// Issuance holds the role lock while it counts active keys; taking it
	// here keeps a write from changing the cap in the middle of that count.
	lock := b.roleLock(name)
	lock.Lock()
	defer lock.Unlock()

	role, err := getRole(ctx, req.Storage, name)
	if err != nil {
		return nil, err
	}
	create := role == nil
	if create {
		if bad := newNameError("role", name, false); bad != "" {
			return logical.ErrorResponse(bad), nil
		}
		role = &heronRole{Name: name}
	}
	capped := role.MaxActiveKeys > 0

	stringField(d, "environment", create, &role.Environment)
	role.Environment = strings.TrimSpace(role.Environment)
	durationField(d, "ttl", create, &role.TTL)
	durationField(d, "max_ttl", create, &role.MaxTTL)
	if v, ok := d.GetOk("name_template"); ok {
		role.NameTemplate = v.(string)
		if role.NameTemplate == defaultNameTemplate {
			role.NameTemplate = ""
		}
	}
	stringField(d, "description", create, &role.Description)
	intField(d, "max_active_keys", create, &role.MaxActiveKeys)
	durationField(d, "expired_key_retention", create, &role.ExpiredKeyRetention)

	if v, ok := d.GetOk("name_template"); ok && strings.TrimSpace(v.(string)) == "" {
		return logical.ErrorResponse("name_template must not be empty (omit it to use the default)"), nil
	}
	if err := role.validate(); err != nil {
		return logical.ErrorResponse(err.Error()), nil
	}
	cfg, err := getConfig(ctx, req.Storage, role.Environment)
	if err != nil {
		return nil, err
	}
	if cfg == nil {
		return logical.ErrorResponse("environment %q has no config: write config/%s first", role.Environment, role.Environment), nil
	}
	if cfg.Deleting {
		return logical.ErrorResponse(errDeleting(role.Environment).Error()), nil
	}

	if role.MaxActiveKeys > 0 && !capped {
		// Keys issued while the role had no cap have no index entry.
		if err := indexRole(ctx, req.Storage, name); err != nil {
			return nil, err
		}
	}
	b.forgetRole(name)
	if err := putJSON(ctx, req.Storage, roleStoragePrefix+name, fmt.Sprintf("role %q", name), role); err != nil {
		return nil, err
	}
	b.forgetRole(name)

	// Like HashiCorp's engines: a TTL above the mount's max is accepted, and
	// Vault clamps the lease; say so rather than refuse.
	var warnings []string
	sysMax := b.System().MaxLeaseTTL()
	if role.TTL > sysMax {
		warnings = append(warnings, fmt.Sprintf("ttl (%s) is greater than the mount's max TTL (%s): leases will be capped at %s", role.TTL, sysMax, sysMax))
	}
	if role.MaxTTL > sysMax {
		warnings = append(warnings, fmt.Sprintf("max_ttl (%s) is greater than the mount's max TTL (%s): leases will be capped at %s", role.MaxTTL, sysMax, sysMax))
	}
	if !role.uniqueNames() {
		warnings = append(warnings, "name_template has no random or uuid part, so its names are not unique: when Heron's answer to a creation is lost, the key that appears under the name cannot be told from a customer's key of the same name, and the engine leaves it in place and reports it as unconfirmed in inventory/"+role.Environment+" instead of deleting it (each such creation costs one more list request, too). Add {{random 8}} to make every name unique")
	}
	if len(warnings) == 0 {
		return nil, nil
	}
	return &logical.Response{Warnings: warnings}, nil
}

// pathRolesDelete handles DELETE roles/<name>. Keys already issued stay
// revocable: their leases carry the environment, not the role.
func (b *heronBackend) pathRolesDelete(ctx context.Context, req *logical.Request, d *framework.FieldData) (*logical.Response, error) {
	name := d.Get("name").(string)
	if resp := pathNameError(req, "role", name); resp != nil {
		return resp, nil
	}
	lock := b.roleLock(name)
	lock.Lock()
	defer lock.Unlock()
	b.forgetRole(name)
	if err := req.Storage.Delete(ctx, roleStoragePrefix+name); err != nil {
		return nil, fmt.Errorf("deleting role %q: %w", name, err)
	}
	b.forgetRole(name)
	return nil, nil
}

const pathRolesListHelpSyn = `List the roles.`

const pathRolesListHelpDesc = `Lists the roles from which Heron keys can be issued.`

const pathRolesHelpSyn = `Manage the roles from which Heron API keys are issued.`

const pathRolesHelpDesc = `
A role names the Heron environment its keys are created in, the lease TTLs,
the template of the key names, an optional cap on active keys, and how long a
key deactivated at lease expiry is kept before deletion.
`
