package heron

import (
	"context"
	"errors"
	"fmt"
	"sort"
	"time"

	"github.com/hashicorp/vault/sdk/framework"
	"github.com/hashicorp/vault/sdk/logical"
)

func pathKeys(b *heronBackend) []*framework.Path {
	paths := []*framework.Path{
		{
			Pattern: "keys/?$",
			DisplayAttrs: &framework.DisplayAttributes{
				OperationPrefix: operationPrefixHeron,
				OperationSuffix: "keys",
			},
			Fields: map[string]*framework.FieldSchema{
				"role": {
					Type:        framework.TypeString,
					Description: "Only list keys issued from this role.",
					Query:       true,
					DisplayAttrs: &framework.DisplayAttributes{
						Name: "Role",
					},
				},
				"environment": {
					Type:        framework.TypeString,
					Description: "Only list keys of this environment.",
					Query:       true,
					DisplayAttrs: &framework.DisplayAttributes{
						Name: "Environment",
					},
				},
				"entity_id": {
					Type:        framework.TypeString,
					Description: "Only list keys issued to this Vault entity (the issuing request's entity_id).",
					Query:       true,
					DisplayAttrs: &framework.DisplayAttributes{
						Name: "Entity ID",
					},
				},
				"display_name": {
					Type:        framework.TypeString,
					Description: "Only list keys issued to requests with this token display name (for example token-billing).",
					Query:       true,
					DisplayAttrs: &framework.DisplayAttributes{
						Name: "Display name",
					},
				},
				"state": {
					Type:          framework.TypeString,
					Description:   "Only list keys in this state: active, deactivated, or deleted (tombstones kept for the config's history_retention; not listed otherwise).",
					Query:         true,
					AllowedValues: []interface{}{keyStateActive, keyStateDeactivated, keyStateDeleted},
					DisplayAttrs: &framework.DisplayAttributes{
						Name: "State",
					},
				},
			},
			Operations: map[logical.Operation]framework.OperationHandler{
				logical.ListOperation: &framework.PathOperation{
					Callback: b.pathKeysList,
					Summary:  "List the Heron keys this engine has issued and still tracks.",
				},
			},
			HelpSynopsis:    pathKeysListHelpSyn,
			HelpDescription: pathKeysListHelpDesc,
		},
		{
			Pattern: "keys/" + framework.GenericNameRegex("key_id") + "$",
			DisplayAttrs: &framework.DisplayAttributes{
				OperationPrefix: operationPrefixHeron,
				OperationSuffix: "key",
			},
			Fields: map[string]*framework.FieldSchema{
				"key_id": {
					Type:        framework.TypeString,
					Description: "Heron id (heron_id) of the key.",
					Required:    true,
					DisplayAttrs: &framework.DisplayAttributes{
						Name: "Key ID",
					},
				},
			},
			Operations: map[logical.Operation]framework.OperationHandler{
				logical.ReadOperation: &framework.PathOperation{
					Callback: b.pathKeysRead,
					Summary:  "Read a tracked key, merged with Heron's live view of it.",
				},
			},
			HelpSynopsis:    pathKeysHelpSyn,
			HelpDescription: pathKeysHelpDesc,
		},
	}
	// The list path pages: after and limit.
	paths[0].Fields = withPaging(paths[0].Fields)
	return paths
}

// pathKeysList handles LIST keys/.
func (b *heronBackend) pathKeysList(ctx context.Context, req *logical.Request, d *framework.FieldData) (*logical.Response, error) {
	role := d.Get("role").(string)
	env := d.Get("environment").(string)
	state := d.Get("state").(string)
	entityID := d.Get("entity_id").(string)
	displayName := d.Get("display_name").(string)
	if state != "" && state != keyStateActive && state != keyStateDeactivated && state != keyStateDeleted {
		return logical.ErrorResponse("state must be %q, %q or %q, got %q", keyStateActive, keyStateDeactivated, keyStateDeleted, state), nil
	}

	page, bad := readPage(d)
	if bad != "" {
		return logical.ErrorResponse(bad), nil
	}
	all, err := b.keyIDs(ctx, req.Storage, page.after != "")
	if err != nil {
		return nil, err
	}
	// Records are read (and their info built) only until the page is full:
	// memory follows the page, not the number of keys tracked.
	want := page.limit
	page.limit = 0
	var ids []string
	info := make(map[string]interface{})
	for _, id := range page.names(all) {
		if want > 0 && len(ids) == want {
			break
		}
		k, err := getKeyRecord(ctx, req.Storage, id)
		if err != nil {
			return nil, err
		}
		// Tombstones only when asked for: keys/ lists what is still in Heron.
		if k == nil || (role != "" && k.Role != role) || (env != "" && k.Environment != env) ||
			(entityID != "" && k.EntityID != entityID) || (displayName != "" && k.DisplayName != displayName) ||
			(state != "" && k.shownState() != state) || (state == "" && k.State == keyStateDeleted) {
			continue
		}
		ids = append(ids, k.KeyID)
		info[k.KeyID] = keyInfo(k)
	}
	return logical.ListResponseWithInfo(ids, info), nil
}

// keyIDs lists the key records' ids, sorted. A page that continues a
// listing (cont) takes them from the previous page's list if that is less
// than listCacheTTL old: an auditor paging through 100,000 keys costs one
// storage list, not one per page (which made the whole listing quadratic).
func (b *heronBackend) keyIDs(ctx context.Context, s logical.Storage, cont bool) ([]string, error) {
	b.keyIDsLock.Lock()
	defer b.keyIDsLock.Unlock()
	if cont && b.keyIDsCache != nil && b.now().Sub(b.keyIDsAt) < listCacheTTL && !b.now().Before(b.keyIDsAt) {
		return b.keyIDsCache, nil
	}
	ids, err := s.List(ctx, keyStoragePrefix)
	if err != nil {
		return nil, fmt.Errorf("listing key records: %w", err)
	}
	sort.Strings(ids)
	b.keyIDsCache, b.keyIDsAt = ids, b.now()
	// Only the pages of the next listCacheTTL use it: then it goes,
	// rather than hold 100,000 ids until the next listing.
	b.keyIDsGen++
	gen := b.keyIDsGen
	time.AfterFunc(listCacheTTL+time.Second, func() {
		b.keyIDsLock.Lock()
		defer b.keyIDsLock.Unlock()
		if b.keyIDsGen == gen {
			b.keyIDsCache = nil
		}
	})
	return ids, nil
}

// keyInfo is what keys/ says of a key: its record, history included, never
// a token.
func keyInfo(k *trackedKey) map[string]interface{} {
	return map[string]interface{}{
		"key_id":         k.KeyID,
		"key_name":       k.KeyName,
		"role":           k.Role,
		"environment":    k.Environment,
		"token_prefix":   k.TokenPrefix,
		"state":          k.shownState(),
		"kind":           k.kind(),
		"issued":         formatTime(k.Issued),
		"expires":        formatTime(k.Expires),
		"last_renewed":   formatTime(k.LastRenewed),
		"deactivated_at": formatTime(k.DeactivatedAt),
		"delete_after":   formatTime(k.DeleteAfter),
		"deleted_at":     formatTime(k.DeletedAt),
		"reason":         k.Reason,
		"pending":        k.Pending,
		"unreachable":    k.Unreachable,
		"entity_id":      k.EntityID,
		"display_name":   k.DisplayName,
		"quarantined":    k.Quarantined,
		"quarantined_at": formatTime(k.QuarantinedAt),
		"quarantined_by": k.QuarantinedBy,
		"activated_at":   formatTime(k.ActivatedAt),
		"activated_by":   k.ActivatedBy,
		"revoked_by":     k.RevokedBy,
	}
}

// shownState is the state keys/ reports: a quarantined key is deactivated
// in Heron while its lease (or static role) still holds it.
func (k *trackedKey) shownState() string {
	if k.State == keyStateActive && k.Quarantined {
		return keyStateDeactivated
	}
	return k.State
}

// pathKeysRead handles READ keys/<key_id>.
func (b *heronBackend) pathKeysRead(ctx context.Context, req *logical.Request, d *framework.FieldData) (*logical.Response, error) {
	id := d.Get("key_id").(string)
	if resp := pathKeyIDError(id); resp != nil {
		return resp, nil
	}
	rec, err := getKeyRecord(ctx, req.Storage, id)
	if err != nil {
		return nil, err
	}
	if rec == nil {
		return nil, nil
	}
	data := keyInfo(rec)
	if rec.State == keyStateDeleted {
		// What happened to it, and when: no need to ask Heron.
		data["in_heron"] = false
		return &logical.Response{Data: data}, nil
	}

	client, err := b.getClient(ctx, req.Storage, rec.Environment)
	if errors.Is(err, errConfigNotFound) {
		// The record still answers what the engine knows; Heron's view
		// needs an admin key the engine no longer has.
		resp := &logical.Response{Data: data}
		resp.AddWarning(fmt.Sprintf("config %q no longer exists: Heron's view of this key (in_heron, is_active, last_used) is not available", rec.Environment))
		return resp, nil
	}
	if err != nil {
		return nil, err
	}
	live, _, err := b.listKeys(ctx, client, rec.Environment, listCacheTTL)
	if err != nil {
		return nil, upstreamError(fmt.Sprintf("reading Heron's view of key %s", id), err)
	}
	data["in_heron"] = false
	data["is_active"] = false
	data["last_used"] = ""
	for _, k := range live {
		if k.ID == id {
			data["in_heron"] = true
			data["is_active"] = k.IsActive
			if k.LastUsed != nil {
				data["last_used"] = k.LastUsed.UTC().Format(time.RFC3339)
			}
			break
		}
	}
	return &logical.Response{Data: data}, nil
}

// formatTime renders t as RFC 3339, or "" when unset.
func formatTime(t time.Time) string {
	if t.IsZero() {
		return ""
	}
	return t.UTC().Format(time.RFC3339)
}

const pathKeysListHelpSyn = `List the Heron keys this engine has issued and still tracks.`

const pathKeysListHelpDesc = `
Lists key ids with key_info (key_name, role, environment, token_prefix, state,
issued, expires, entity_id, display_name, quarantined). Optional filters: role,
environment, state, entity_id, display_name: "every Heron key this identity
holds" is one listing (vault read heron/keys list=true entity_id=<id>).
`

const pathKeysHelpSyn = `Read a tracked Heron key.`

const pathKeysHelpDesc = `
Returns the engine's record of the key merged with Heron's live view of it
(is_active, last_used).
`
