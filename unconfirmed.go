package heron

import (
	"context"
	"fmt"
	"time"

	"github.com/hashicorp/vault/sdk/logical"

	"github.com/heron-vault/vault-plugin-secrets-heron/heronapi"
)

// Keys the engine cannot prove its own. A creation whose outcome stayed
// unknown is settled by name: a key of that name that appeared in its window
// is the creation's. Where the name is unique (a random part) that is proof;
// where it is not (a role template without one, the engine's own
// timestamped static and admin key names), a customer's key of the same name
// created in the same seconds looks the same. Deleting a customer's key is
// worse than leaving a key whose token nobody holds, so such a key is never
// deleted on a name match: it is recorded here, reported by inventory/<env>
// as class unconfirmed, with an event, for an operator to judge.

const unconfirmedStoragePrefix = "unconfirmed/"

// eventKeyUnconfirmed: a key named like a creation of unknown outcome, left
// in place because its name is not unique (see above).
const eventKeyUnconfirmed = "heron/key-unconfirmed"

// unconfirmedKey is what the engine knows of such a key (never a token).
type unconfirmedKey struct {
	KeyID       string    `json:"key_id"`
	KeyName     string    `json:"key_name"`
	TokenPrefix string    `json:"token_prefix"`
	Environment string    `json:"environment"`
	Role        string    `json:"role,omitempty"`
	Kind        string    `json:"kind"`
	Created     time.Time `json:"created"`
	Noted       time.Time `json:"noted"`
}

// noteUnconfirmed records k, which entry's creation may have made, as
// unconfirmed, once.
func (b *heronBackend) noteUnconfirmed(ctx context.Context, s logical.Storage, kind string, entry *walKeyEntry, k heronapi.Key) error {
	existing, err := getJSON[unconfirmedKey](ctx, s, unconfirmedStoragePrefix+k.ID, "unconfirmed key "+k.ID)
	if err != nil || existing != nil {
		return err
	}
	u := &unconfirmedKey{KeyID: k.ID, KeyName: k.Name, TokenPrefix: k.TokenPrefix, Environment: entry.Environment,
		Role: entry.Role, Kind: keyKindLease, Created: k.Created, Noted: b.now()}
	switch {
	case kind == walKindAdminKey:
		u.Kind = keyKindAdmin
	case entry.Static:
		u.Kind = keyKindStatic
	}
	if err := putJSON(ctx, s, unconfirmedStoragePrefix+k.ID, "unconfirmed key "+k.ID, u); err != nil {
		return fmt.Errorf("recording unconfirmed key %s: %w", k.ID, err)
	}
	b.Logger().Warn("a key named like a creation of unknown outcome appeared, but its name is not unique: it may be a customer's, so it is left in place and reported as unconfirmed in inventory",
		"key_id", k.ID, "key_name", k.Name, "environment", entry.Environment, "role", entry.Role)
	b.recordChange(eventKeyUnconfirmed, keyChange{KeyID: k.ID, KeyName: k.Name, TokenPrefix: k.TokenPrefix,
		Environment: entry.Environment, Role: entry.Role, DataPath: dataPathOf(u.Kind, entry)}, "kind", u.Kind)
	return nil
}

// dataPathOf is the engine path a creation of kind belongs to.
func dataPathOf(kind string, entry *walKeyEntry) string {
	switch kind {
	case keyKindAdmin:
		return configStoragePrefix + entry.Environment
	case keyKindStatic:
		return "static-creds/" + entry.Role
	}
	return "creds/" + entry.Role
}

// unconfirmedKeys is the set of ids recorded as unconfirmed.
func unconfirmedKeys(ctx context.Context, s logical.Storage) (map[string]bool, error) {
	ids, err := s.List(ctx, unconfirmedStoragePrefix)
	if err != nil {
		return nil, fmt.Errorf("listing unconfirmed keys: %w", err)
	}
	out := make(map[string]bool, len(ids))
	for _, id := range ids {
		out[id] = true
	}
	return out, nil
}
