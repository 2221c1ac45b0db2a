package heron

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/hashicorp/vault/sdk/framework"
	"github.com/hashicorp/vault/sdk/logical"

	"github.com/heron-vault/vault-plugin-secrets-heron/heronapi"
)

// The inventory: every key Heron holds for an environment's admin key (one
// list call), each classified by what the engine knows of it, so that an
// operator can see at a glance what the engine manages and what it does not.

// Inventory classes, in the order they are decided (see classify).
const (
	inventoryLease        = "lease"
	inventoryStatic       = "static"
	inventoryAdmin        = "admin"
	inventoryRetiredAdmin = "retired_admin"
	inventoryRetained     = "retained"
	inventoryUnmanaged    = "unmanaged"
	// inventoryUnconfirmed: named like a creation of unknown outcome whose
	// name is not unique: possibly the engine's, possibly a customer's (see
	// unconfirmed.go); never deleted by the engine on a name match alone.
	inventoryUnconfirmed = "unconfirmed"
)

// inventoryClasses are every class, each present in counts.
var inventoryClasses = []string{
	inventoryLease, inventoryStatic, inventoryAdmin,
	inventoryRetiredAdmin, inventoryRetained, inventoryUnconfirmed, inventoryUnmanaged,
}

func pathInventory(b *heronBackend) []*framework.Path {
	return []*framework.Path{
		{
			Pattern: "inventory/" + environmentPattern + "$",
			DisplayAttrs: &framework.DisplayAttributes{
				OperationPrefix: operationPrefixHeron,
				OperationSuffix: "inventory",
			},
			Fields: map[string]*framework.FieldSchema{
				"environment": {
					Type:        framework.TypeString,
					Description: "Name of the Heron environment to take the inventory of.",
					Required:    true,
					DisplayAttrs: &framework.DisplayAttributes{
						Name: "Environment",
					},
				},
				"unused_for": {
					Type:        framework.TypeDurationSecond,
					Description: "Only keys not used for at least this long (a key never used counts as unused since it was created). Without it, every key.",
					Query:       true,
					DisplayAttrs: &framework.DisplayAttributes{
						Name: "Unused for",
					},
				},
			},
			Operations: map[logical.Operation]framework.OperationHandler{
				logical.ReadOperation: &framework.PathOperation{
					Callback: b.pathInventoryRead,
					Summary:  "Classify every key Heron holds for the environment's admin key.",
				},
			},
			HelpSynopsis:    pathInventoryHelpSyn,
			HelpDescription: pathInventoryHelpDesc,
		},
	}
}

// pathInventoryRead handles READ inventory/<environment>.
func (b *heronBackend) pathInventoryRead(ctx context.Context, req *logical.Request, d *framework.FieldData) (*logical.Response, error) {
	env := d.Get("environment").(string)
	if resp := pathEnvironmentError(req, env); resp != nil {
		return resp, nil
	}
	var unusedFor time.Duration
	filter := false
	if v, ok := d.GetOk("unused_for"); ok {
		unusedFor = time.Duration(v.(int)) * time.Second
		if unusedFor < 0 {
			return logical.ErrorResponse("unused_for must not be negative, got %s", unusedFor), nil
		}
		// 0 asks for nothing: every key, also one whose last use Heron's
		// clock puts a moment after the engine's.
		filter = unusedFor > 0
	}

	// The config's read lock keeps a rotation from landing between reading
	// which key is the admin key and listing: the list and the admin/
	// retired_admin classes describe the same moment.
	lock := b.configLock(env)
	lock.RLock()
	defer lock.RUnlock()
	cfg, err := getConfig(ctx, req.Storage, env)
	if err != nil {
		return nil, err
	}
	if cfg == nil {
		return logical.ErrorResponse("environment %q has no config: write config/%s first", env, env), nil
	}
	if cfg.Deleting {
		return logical.ErrorResponse(errDeleting(env).Error()), nil
	}
	client, err := b.getClient(ctx, req.Storage, env)
	if errors.Is(err, errConfigNotFound) {
		return logical.ErrorResponse("environment %q has no config: write config/%s first", env, env), nil
	}
	if err != nil {
		return nil, err
	}
	// The short-lived list that keys/<id> reads too: a reader of the
	// inventory costs at most one list per listCacheTTL, however often and
	// however many at once, so it can never spend the environment's budget
	// that revocations need. What the engine itself changed since that list
	// was asked is applied from its records below.
	asked := b.wallNow()
	live, listedAt, err := b.listKeys(ctx, client, env, listCacheTTL)
	if err != nil {
		return nil, upstreamError(fmt.Sprintf("listing the keys of environment %q", env), err)
	}
	if listedAt.Before(asked) {
		// Keys the engine created after that list was asked.
		if later := b.createdSince(env, listedAt); len(later) > 0 {
			listed := make(map[string]bool, len(live))
			for _, k := range live {
				listed[k.ID] = true
			}
			all := append(make([]heronapi.Key, 0, len(live)+len(later)), live...)
			for _, k := range later {
				if !listed[k.ID] {
					listed[k.ID] = true
					all = append(all, k)
				}
			}
			live = all
		}
	}

	// What the engine knows is read after the list, so that a key issued
	// just before it is already tracked (a record is written after Heron
	// answers the create, never before).
	c, err := b.inventoryClassifier(ctx, req.Storage, cfg, env, live)
	if err != nil {
		return nil, err
	}

	now := b.now()
	keys := make(map[string]interface{}, len(live))
	counts := make(map[string]int, len(inventoryClasses))
	for _, class := range inventoryClasses {
		counts[class] = 0
	}
	for _, k := range live {
		if filter && !unusedSince(k, now, unusedFor) {
			continue
		}
		class, role, rec, err := c.classify(ctx, k)
		if err != nil {
			return nil, err
		}
		if listedAt.Before(asked) && rec != nil {
			// A list from before this read: a key the engine deleted or
			// deactivated since is shown as it is now.
			if rec.State == keyStateDeleted && rec.DeletedAt.After(listedAt) {
				continue
			}
			if rec.State != keyStateActive && rec.DeactivatedAt.After(listedAt) {
				k.IsActive = false
			}
		}
		lastUsed := ""
		if k.LastUsed != nil {
			lastUsed = formatTime(*k.LastUsed)
		}
		// Never the token: Heron's list has none, and none is copied here.
		keys[k.ID] = map[string]interface{}{
			"name":         k.Name,
			"token_prefix": k.TokenPrefix,
			"created":      formatTime(k.Created),
			"is_active":    k.IsActive,
			"last_used":    lastUsed,
			"class":        class,
			"role":         role,
		}
		counts[class]++
	}
	return &logical.Response{Data: map[string]interface{}{
		"keys":   keys,
		"counts": counts,
	}}, nil
}

// unusedSince reports whether k has not been used for at least d at now: a
// key never used counts as unused since it was created.
func unusedSince(k heronapi.Key, now time.Time, d time.Duration) bool {
	since := k.Created
	if k.LastUsed != nil {
		since = *k.LastUsed
	}
	return now.Sub(since) >= d
}

// inventoryClassifier holds what the engine knows of an environment's keys.
type inventoryClassifier struct {
	s   logical.Storage
	env string
	// adminID is the current admin key's id: the config's, or while that is
	// unknown the single active key with the admin key's prefix.
	adminID string
	retired map[string]bool
	// otherAdmin: current admin keys of the other configs.
	otherAdmin map[string]bool
	// static maps a static role's current and previous key to the role.
	static map[string]string
	// unconfirmed: keys recorded as unconfirmed (see unconfirmed.go).
	unconfirmed map[string]bool
}

// inventoryClassifier reads the config's admin keys and env's static roles.
func (b *heronBackend) inventoryClassifier(ctx context.Context, s logical.Storage, cfg *heronConfig, env string, live []heronapi.Key) (*inventoryClassifier, error) {
	c := &inventoryClassifier{
		s: s, env: env,
		adminID: cfg.AdminKeyID,
		retired: make(map[string]bool, len(cfg.RetiredKeys)),
		static:  map[string]string{},
	}
	if c.adminID == "" {
		// Prefixes are short and may be shared: only an unambiguous match
		// names the admin key.
		if id, err := findKeyIDByPrefix(live, keyPrefix(cfg.AdminAPIKey)); err == nil {
			c.adminID = id
		}
	}
	for _, rk := range cfg.RetiredKeys {
		c.retired[rk.KeyID] = true
	}
	// Admin keys of other configs that share the Heron user are the
	// engine's too.
	envs, err := s.List(ctx, configStoragePrefix)
	if err != nil {
		return nil, fmt.Errorf("listing configs: %w", err)
	}
	c.otherAdmin = map[string]bool{}
	for _, other := range envs {
		if other == env {
			continue
		}
		oc, err := getConfig(ctx, s, other)
		if err != nil {
			return nil, err
		}
		if oc == nil {
			continue
		}
		if oc.AdminKeyID != "" {
			c.otherAdmin[oc.AdminKeyID] = true
		} else if p := keyPrefix(oc.AdminAPIKey); p != "" {
			// Its id unknown (written with verify=false, or a prefix shared
			// when it was verified): every active key with its prefix may be
			// it. Calling another config's admin key unmanaged would invite
			// its deletion; calling a customer's key of the same prefix an
			// admin key invites nothing.
			for _, k := range live {
				if k.IsActive && k.TokenPrefix == p {
					c.otherAdmin[k.ID] = true
				}
			}
		}
		for _, rk := range oc.RetiredKeys {
			c.retired[rk.KeyID] = true
		}
	}
	if c.unconfirmed, err = unconfirmedKeys(ctx, s); err != nil {
		return nil, err
	}
	roles, err := listStaticRoles(ctx, s)
	if err != nil {
		return nil, err
	}
	for _, r := range roles {
		if r.Environment != env {
			continue
		}
		if r.KeyID != "" {
			c.static[r.KeyID] = r.Name
		}
		if r.PreviousKeyID != "" {
			c.static[r.PreviousKeyID] = r.Name
		}
	}
	return c, nil
}

// classify returns k's class, the role it belongs to ("" when none) and the
// engine's record of it (nil when none).
// Only the keys Heron lists are looked up in storage: the cost follows the
// environment's keys, not every key the engine tracks.
func (c *inventoryClassifier) classify(ctx context.Context, k heronapi.Key) (string, string, *trackedKey, error) {
	switch {
	case c.adminID != "" && k.ID == c.adminID, c.otherAdmin[k.ID]:
		return inventoryAdmin, "", nil, nil
	case c.retired[k.ID]:
		return inventoryRetiredAdmin, "", nil, nil
	}
	// A record of another environment still makes the key this engine's:
	// configs of several environments may hold keys of one Heron user.
	rec, err := getKeyRecord(ctx, c.s, k.ID)
	if err != nil {
		return "", "", nil, err
	}
	if rec != nil && rec.State == keyStateDeleted {
		// A tombstone: the engine deleted the key (after the list was
		// asked, or Heron did not do as told); it holds it no more.
		return inventoryUnmanaged, "", rec, nil
	}
	// A record that says the key is deactivated or owes a deletion wins
	// over a static role that still names it (a retirement between its two
	// writes): the key is on its way out.
	if rec != nil && rec.retained() {
		return inventoryRetained, rec.Role, rec, nil
	}
	if role, ok := c.static[k.ID]; ok {
		return inventoryStatic, role, rec, nil
	}
	if rec != nil {
		if rec.kind() == keyKindStatic {
			return inventoryStatic, rec.Role, rec, nil
		}
		return inventoryLease, rec.Role, rec, nil
	}
	if c.unconfirmed[k.ID] {
		return inventoryUnconfirmed, "", nil, nil
	}
	return inventoryUnmanaged, "", nil, nil
}

const pathInventoryHelpSyn = `Classify every key Heron holds for an environment's admin key.`

const pathInventoryHelpDesc = `
Lists the keys Heron holds for the environment's admin key (one list call,
shared with keys/<id> reads for up to 10 seconds, so that readers cannot spend
the environment's request budget; what the engine deleted or deactivated since
that list is shown as it is now) and classifies each: lease (issued for a lease and tracked),
static (a static role's current or previous key), admin (the config's admin
key), retired_admin (a rotated-out admin key), retained (deactivated or owing
a deletion, awaiting the cleanup pass), unconfirmed (named like a creation of
this engine whose outcome was unknown, when the name is not unique: possibly
the engine's, possibly a customer's; never deleted by the engine on a name
match alone), unmanaged (not created or adopted by this engine).

Returns keys (key_id -> name, token_prefix, created, is_active, last_used,
class, role) and counts (class -> number of keys returned, every class
present). Optional unused_for (duration): only keys not used for at least
that long, a key never used counting as unused since it was created. Never
returns a token.
`
