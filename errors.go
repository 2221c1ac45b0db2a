package heron

import (
	"context"
	"errors"
	"fmt"
	"net/http"

	"github.com/hashicorp/vault/sdk/logical"

	"github.com/heron-vault/vault-plugin-secrets-heron/heronapi"
)

// upstreamError wraps an upstream failure so Vault answers what it means: a
// 502 for rate limiting, the engine's error otherwise, always with what Heron
// answered.
func upstreamError(doing string, err error) error {
	if errors.Is(err, heronapi.ErrRateLimited) {
		return &rateLimitedError{msg: fmt.Sprintf("%s: %v: %v", doing, logical.ErrUpstreamRateLimited, err), cause: err}
	}
	return fmt.Errorf("%s: %w", doing, err)
}

// rateLimitedError wraps logical.ErrUpstreamRateLimited for errors.Is and
// errwrap (in-process callers), and is an HTTPCodedError because only the
// code, not the wrapping, survives the plugin's gRPC boundary.
type rateLimitedError struct {
	msg   string
	cause error
}

var _ logical.HTTPCodedError = (*rateLimitedError)(nil)

func (e *rateLimitedError) Error() string { return e.msg }

// Code makes Vault answer 502 Bad Gateway, as for logical.ErrUpstreamRateLimited.
func (e *rateLimitedError) Code() int { return http.StatusBadGateway }

func (e *rateLimitedError) Unwrap() []error {
	return []error{logical.ErrUpstreamRateLimited, e.cause}
}

// WrappedErrors lets errwrap.Contains (used by Vault's status mapping) see
// logical.ErrUpstreamRateLimited.
func (e *rateLimitedError) WrappedErrors() []error { return e.Unwrap() }

// codedError is an internal error that Vault must answer with a given status
// (a 502 when Heron cannot be reached, say). Only the code and the text
// survive the plugin's gRPC boundary, so both carry the meaning.
type codedError struct {
	code int
	msg  string
}

var _ logical.HTTPCodedError = (*codedError)(nil)

func (e *codedError) Error() string { return e.msg }

// Code is the HTTP status Vault answers with.
func (e *codedError) Code() int { return e.code }

// deleteIfPresent deletes a key in Heron; a 404 means it is already gone.
func deleteIfPresent(ctx context.Context, client heronapi.API, keyID string) error {
	if err := client.DeleteKey(ctx, keyID); err != nil && !errors.Is(err, heronapi.ErrNotFound) {
		return err
	}
	return nil
}
