// Package heronapi is a small client for the parts of the Heron Data API that the
// Vault secrets engine uses. It has no Vault types: plain Go in, plain Go out.
//
// The backend is written against the names in this file; change them only together
// with it. The implementation lives in client.go, limiter.go and errors.go.
package heronapi

import (
	"context"
	"time"

	"github.com/hashicorp/go-hclog"
)

// Key is a Heron API key as the API describes it. Token is only ever set by CreateKey.
type Key struct {
	ID          string     `json:"heron_id"`
	Name        string     `json:"name"`
	Token       string     `json:"token,omitempty"`
	TokenPrefix string     `json:"token_prefix"`
	Created     time.Time  `json:"created"`
	IsActive    bool       `json:"is_active"`
	LastUsed    *time.Time `json:"last_used"`
}

// Config configures one Client (one Heron environment, one admin key).
type Config struct {
	BaseURL    string        // e.g. https://app.herondata.io ; trailing slash tolerated
	APIKey     string        // sent as x-api-key; never logged
	Timeout    time.Duration // per HTTP attempt; 0 -> 30s
	MaxRetries int           // retries for 429, 5xx, transport errors (GET/PUT/DELETE); 0 = no retry
	// Limiter is shared by every client of the same environment; nil -> unlimited.
	Limiter *Limiter
	// UserAgent, e.g. "vault-plugin-secrets-heron/v0.1.0". Requests whose context was
	// marked with Background(ctx) send UserAgent + " (background)".
	UserAgent string
	Logger    hclog.Logger // nil -> hclog.NewNullLogger()
	// RetryWaitMin/RetryWaitMax bound the capped exponential backoff (defaults 1s / 30s).
	RetryWaitMin time.Duration
	RetryWaitMax time.Duration
}

// Background marks ctx so that requests made with it carry the " (background)" User-Agent suffix.
func Background(ctx context.Context) context.Context { return context.WithValue(ctx, bgKey{}, true) }

// IsBackground reports whether ctx was marked by Background.
func IsBackground(ctx context.Context) bool { v, _ := ctx.Value(bgKey{}).(bool); return v }

type bgKey struct{}

// API is what the backend needs from Heron; *Client implements it, tests may swap it.
type API interface {
	// CreateKey POSTs a new key. It never re-sends the POST except after a 429
	// (which Heron did not process); when the POST may have been processed
	// without an answer the error wraps ErrOutcomeUnknown, and any other error
	// means Heron created nothing.
	CreateKey(ctx context.Context, name string) (*Key, error)
	ListKeys(ctx context.Context) ([]Key, error)
	DeactivateKey(ctx context.Context, id string) error
	ActivateKey(ctx context.Context, id string) error
	DeleteKey(ctx context.Context, id string) error
	// Hello calls GET /api/hello_world/authenticated (nil on 200).
	Hello(ctx context.Context) error
	// ServerDate is Heron's clock as of the latest answer (its Date header,
	// to the second), zero before any; keys' "created" follow that clock.
	ServerDate() time.Time
}

// KeyWalker is an API that can hand the list of keys over one key at a time
// (Client does), for callers that need a few of 100,000 keys, not all.
type KeyWalker interface {
	EachKey(ctx context.Context, fn func(Key)) error
}

// EachKey hands every key of api's list to fn: streamed where api is a
// KeyWalker, else from ListKeys.
func EachKey(ctx context.Context, api API, fn func(Key)) error {
	if w, ok := api.(KeyWalker); ok {
		return w.EachKey(ctx, fn)
	}
	keys, err := api.ListKeys(ctx)
	if err != nil {
		return err
	}
	for _, k := range keys {
		fn(k)
	}
	return nil
}

var (
	_ API       = (*Client)(nil)
	_ KeyWalker = (*Client)(nil)
)
