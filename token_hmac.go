package heron

import (
	"context"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"sort"
	"sync"

	"github.com/hashicorp/go-uuid"
	"github.com/hashicorp/vault/sdk/logical"
)

// The engine never stores a token, yet keys/lookup must answer "whose key is
// this?" for a leaked one. Each record issued or adopted holds token_hmac:
// HMAC-SHA256 of the token under a per-mount secret (as Vault's own audit
// hashes are salted), created once, kept in storage (seal-wrapped) and never
// returned by any path. Without the secret a record's token_hmac cannot be
// checked against guessed tokens.

// tokenHMACStorageKey holds the mount's HMAC secret as the first version
// of this feature wrote it; tokenHMACStoragePrefix holds the secrets written
// since, one entry per writer. Storage has no compare-and-set: two instances
// (a reload, a failover) may each find no secret and write one, and a single
// entry would keep only the last, leaving the other instance's token_hmacs
// unmatchable. Each writes its own entry instead; every instance then uses
// the first entry by name, and keys/lookup tries them all.
const (
	tokenHMACStorageKey    = "token-hmac-key"
	tokenHMACStoragePrefix = "token-hmac-keys/"
)

// tokenHMACKey is the mount's HMAC secret, cached once read: it never
// changes, so steady-state issuance costs no storage operation for it.
type tokenHMACKey struct {
	mu  sync.Mutex
	key []byte
}

// hmacSecret is the stored form of the secret.
type hmacSecret struct {
	Key []byte `json:"key"`
}

// hmacKey returns the mount's HMAC secret, creating it on first use when
// create is set; (nil, nil) when there is none and create is not set.
func (b *heronBackend) hmacKey(ctx context.Context, s logical.Storage, create bool) ([]byte, error) {
	b.tokenHMAC.mu.Lock()
	defer b.tokenHMAC.mu.Unlock()
	if b.tokenHMAC.key != nil {
		return b.tokenHMAC.key, nil
	}
	keys, err := hmacKeys(ctx, s)
	if err != nil {
		return nil, err
	}
	if len(keys) == 0 && create {
		key := make([]byte, 32)
		if _, err := rand.Read(key); err != nil {
			return nil, fmt.Errorf("creating the token HMAC secret: %w", err)
		}
		name, err := uuid.GenerateUUID()
		if err != nil {
			return nil, fmt.Errorf("naming the token HMAC secret: %w", err)
		}
		if err := putJSON(ctx, s, tokenHMACStoragePrefix+name, "token HMAC secret", &hmacSecret{Key: key}); err != nil {
			return nil, err
		}
		// Read back: another instance may have written one first.
		if keys, err = hmacKeys(ctx, s); err != nil {
			return nil, err
		}
	}
	if len(keys) == 0 {
		return nil, nil
	}
	b.tokenHMAC.key = keys[0]
	return keys[0], nil
}

// hmacKeys is every stored HMAC secret, the one to use first: the first
// version's entry, then the others by name.
func hmacKeys(ctx context.Context, s logical.Storage) ([][]byte, error) {
	var out [][]byte
	legacy, err := getJSON[hmacSecret](ctx, s, tokenHMACStorageKey, "token HMAC secret")
	if err != nil {
		return nil, err
	}
	if legacy != nil && len(legacy.Key) >= 32 {
		out = append(out, legacy.Key)
	}
	names, err := s.List(ctx, tokenHMACStoragePrefix)
	if err != nil {
		return nil, fmt.Errorf("listing token HMAC secrets: %w", err)
	}
	sort.Strings(names)
	for _, n := range names {
		sec, err := getJSON[hmacSecret](ctx, s, tokenHMACStoragePrefix+n, "token HMAC secret")
		if err != nil {
			return nil, err
		}
		if sec != nil && len(sec.Key) >= 32 {
			out = append(out, sec.Key)
		}
	}
	return out, nil
}

// tokenHMACOf is the hex HMAC-SHA256 of token under key.
func tokenHMACOf(key []byte, token string) string {
	m := hmac.New(sha256.New, key)
	m.Write([]byte(token))
	return hex.EncodeToString(m.Sum(nil))
}

// hmacMatches compares two hex HMACs in constant time.
func hmacMatches(a, b string) bool {
	return a != "" && hmac.Equal([]byte(a), []byte(b))
}

// forget drops the cached secret (it was written on another node).
func (k *tokenHMACKey) forget() {
	k.mu.Lock()
	k.key = nil
	k.mu.Unlock()
}

// setTokenHMAC gives rec the HMAC of its token, for a key that is created
// or adopted where a missing HMAC must not stop it being recorded (a static
// role's key): without one, keys/lookup still finds it by token_prefix.
func (b *heronBackend) setTokenHMAC(ctx context.Context, s logical.Storage, rec *trackedKey, token string) {
	hk, err := b.hmacKey(ctx, s, true)
	if err != nil {
		b.Logger().Warn("no token HMAC secret: keys/lookup will find this key by its prefix only", "key_id", rec.KeyID, "error", err)
		return
	}
	rec.TokenHMAC = tokenHMACOf(hk, token)
}
