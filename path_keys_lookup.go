package heron

import (
	"context"
	"crypto/subtle"
	"fmt"
	"net/http"
	"slices"
	"sort"

	"github.com/hashicorp/vault/sdk/framework"
	"github.com/hashicorp/vault/sdk/logical"

	"github.com/heron-vault/vault-plugin-secrets-heron/heronapi"
)

// keys/lookup: "whose key is this?" for a token found where it should not
// be. The engine stores no token: records issued or adopted since token_hmac
// exists are matched by the token's keyed hash, older ones by its prefix
// (all candidates, marked as such). A config's admin key and a static role's
// current key, which the engine does keep, are compared directly.

const (
	lookupMatchHMAC   = "token_hmac"
	lookupMatchPrefix = "token_prefix"
	lookupMatchAdmin  = "admin_key"
	lookupMatchStatic = "static_role"
	// lookupMatchRetiredAdmin: a rotated-out admin key, by its HMAC.
	lookupMatchRetiredAdmin = "retired_admin_key"
)

func pathKeysLookup(b *heronBackend) []*framework.Path {
	return []*framework.Path{
		{
			Pattern: "keys/lookup$",
			DisplayAttrs: &framework.DisplayAttributes{
				OperationPrefix: operationPrefixHeron,
				OperationVerb:   "lookup",
				OperationSuffix: "key",
			},
			Fields: map[string]*framework.FieldSchema{
				"token": {
					Type:        framework.TypeString,
					Description: `A full Heron API key ("key_" followed by 48 lowercase hex characters) to look up. Never stored or logged.`,
					Required:    true,
					DisplayAttrs: &framework.DisplayAttributes{
						Name:      "Token",
						Sensitive: true,
					},
				},
			},
			Operations: map[logical.Operation]framework.OperationHandler{
				logical.UpdateOperation: &framework.PathOperation{
					Callback: b.pathKeysLookup,
					Summary:  "Find the record of the key with a given token (a leaked key: whose is it?).",
				},
			},
			HelpSynopsis:    pathKeysLookupHelpSyn,
			HelpDescription: pathKeysLookupHelpDesc,
		},
	}
}

// pathKeysLookup handles UPDATE keys/lookup.
func (b *heronBackend) pathKeysLookup(ctx context.Context, req *logical.Request, d *framework.FieldData) (*logical.Response, error) {
	token := d.Get("token").(string)
	if token == "" {
		return logical.ErrorResponse("token is required"), nil
	}
	if !heronapi.TokenPattern.MatchString(token) {
		// Never echo what was pasted: it may be a secret of another kind.
		return logical.ErrorResponse(`token must be a full Heron API key: "key_" followed by 48 lowercase hex characters`), nil
	}

	if resp, err := b.lookupKept(ctx, req.Storage, token); resp != nil || err != nil {
		return resp, err
	}

	// Under every secret this mount has: two instances may each have
	// written one (see token_hmac.go).
	hks, err := hmacKeys(ctx, req.Storage)
	if err != nil {
		return nil, err
	}
	var wants []string
	for _, hk := range hks {
		wants = append(wants, tokenHMACOf(hk, token))
	}
	prefix := keyPrefix(token)
	ids, err := req.Storage.List(ctx, keyStoragePrefix)
	if err != nil {
		return nil, fmt.Errorf("listing key records: %w", err)
	}
	sort.Strings(ids)
	var candidates []*trackedKey
	for _, id := range ids {
		k, err := getKeyRecord(ctx, req.Storage, id)
		if err != nil {
			return nil, err
		}
		if k == nil {
			continue
		}
		if slices.ContainsFunc(wants, func(w string) bool { return hmacMatches(k.TokenHMAC, w) }) {
			data := keyInfo(k)
			data["match"] = lookupMatchHMAC
			return &logical.Response{Data: data}, nil
		}
		if k.TokenHMAC == "" && k.TokenPrefix == prefix {
			candidates = append(candidates, k)
		}
	}
	if len(candidates) == 0 {
		return nil, &codedError{code: http.StatusNotFound, msg: fmt.Sprintf(
			"this engine did not issue a key with this token: no record matches its keyed hash, none from before token_hmac has its prefix %s, and it is no config's admin key or static role's key (inventory/<environment> lists every key Heron holds)", prefix)}
	}
	ids = ids[:0]
	info := make(map[string]interface{}, len(candidates))
	for _, k := range candidates {
		ids = append(ids, k.KeyID)
		info[k.KeyID] = keyInfo(k)
	}
	resp := &logical.Response{Data: map[string]interface{}{
		"match":      lookupMatchPrefix,
		"key_ids":    ids,
		"candidates": info,
	}}
	resp.AddWarning(fmt.Sprintf("%d record(s) from before token_hmac share the prefix %s: each is a candidate, not a proof (Heron's dashboard shows the same prefix; the key whose last_used matches the leak is the one)", len(candidates), prefix))
	return resp, nil
}

// lookupKept compares token with the tokens the engine does keep: configs'
// admin keys and static roles' current keys. nil when none is token.
func (b *heronBackend) lookupKept(ctx context.Context, s logical.Storage, token string) (*logical.Response, error) {
	same := func(a string) bool { return subtle.ConstantTimeCompare([]byte(a), []byte(token)) == 1 }
	envs, err := s.List(ctx, configStoragePrefix)
	if err != nil {
		return nil, fmt.Errorf("listing configs: %w", err)
	}
	for _, env := range envs {
		cfg, err := getConfig(ctx, s, env)
		if err != nil {
			return nil, err
		}
		if cfg != nil && same(cfg.AdminAPIKey) {
			resp := &logical.Response{Data: map[string]interface{}{
				"match":            lookupMatchAdmin,
				"environment":      env,
				"admin_key_id":     cfg.AdminKeyID,
				"admin_key_prefix": keyPrefix(cfg.AdminAPIKey),
			}}
			resp.AddWarning(fmt.Sprintf("this is the current admin key of config %q: rotate it now (vault write -f <mount>/config/%s/rotate); the old key is deactivated at once", env, env))
			return resp, nil
		}
	}
	// Rotated-out admin keys: their tokens are gone from the config, their
	// HMACs are not (older entries: by prefix, as candidates).
	hks, err := hmacKeys(ctx, s)
	if err != nil {
		return nil, err
	}
	for _, env := range envs {
		cfg, err := getConfig(ctx, s, env)
		if err != nil {
			return nil, err
		}
		if cfg == nil {
			continue
		}
		for _, rk := range cfg.RetiredKeys {
			match := ""
			switch {
			case rk.TokenHMAC != "" && slices.ContainsFunc(hks, func(hk []byte) bool { return hmacMatches(rk.TokenHMAC, tokenHMACOf(hk, token)) }):
				match = lookupMatchRetiredAdmin
			case rk.TokenHMAC == "" && rk.TokenPrefix == keyPrefix(token):
				match = lookupMatchPrefix
			default:
				continue
			}
			state := keyStateActive
			if rk.Deactivated {
				state = keyStateDeactivated
			}
			resp := &logical.Response{Data: map[string]interface{}{
				"match": match, "environment": env, "kind": keyKindAdmin,
				"key_id": rk.KeyID, "token_prefix": rk.TokenPrefix, "state": state,
				"delete_after": formatTime(rk.DeleteAfter),
			}}
			resp.AddWarning(fmt.Sprintf("this is a rotated-out admin key of config %q (state %s): delete it now with Heron's dashboard if it leaked, or wait for old_key_retention", env, state))
			return resp, nil
		}
	}
	statics, err := listStaticRoles(ctx, s)
	if err != nil {
		return nil, err
	}
	for _, r := range statics {
		if r.Token == "" || !same(r.Token) {
			continue
		}
		rec, err := getKeyRecord(ctx, s, r.KeyID)
		if err != nil {
			return nil, err
		}
		data := map[string]interface{}{"key_id": r.KeyID, "role": r.Name, "environment": r.Environment, "kind": keyKindStatic}
		if rec != nil {
			data = keyInfo(rec)
		}
		data["match"] = lookupMatchStatic
		return &logical.Response{Data: data}, nil
	}
	return nil, nil
}

const pathKeysLookupHelpSyn = `Find the record of the key with a given token.`

const pathKeysLookupHelpDesc = `
For a Heron API key found where it should not be: returns the engine's record
of that key (who issued it: entity_id, display_name; role, state, history),
with match=token_hmac. The engine never stores a token: each record issued or
adopted since token_hmac exists holds an HMAC of the token under a secret of
this mount. Records from before it are matched by token_prefix: all of them
are returned under candidates with match=token_prefix. A config's admin key
answers match=admin_key (rotate it), a static role's current key
match=static_role. A token this engine did not issue is a 404.

The token is sent in the request body: Vault's audit log records it only as
an HMAC (audit devices hash request data).
`
