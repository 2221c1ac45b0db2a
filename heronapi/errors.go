package heronapi

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"
)

var (
	// ErrNotFound matches a 404: the key is already gone, which revocation treats as success.
	ErrNotFound = errors.New("heron: not found")
	// ErrUnauthorized matches a 401: the admin key is missing, unknown, deleted or deactivated.
	ErrUnauthorized = errors.New("heron: unauthorized")
	// ErrRateLimited matches a 429 that outlived the retries, and a Limiter that could not
	// grant a request slot before the context's deadline.
	ErrRateLimited = errors.New("heron: rate limited")
	// ErrOutcomeUnknown marks a CreateKey whose POST may have been processed:
	// a 5xx, a dropped connection, a timeout or an unreadable answer. The key
	// may exist (now or later) with its token lost; only the caller knows
	// which keys of that name are its own, so the client never looks.
	ErrOutcomeUnknown = errors.New("heron: the key may have been created")
)

// APIError is any non-2xx answer from Heron.
type APIError struct {
	Method      string
	Path        string // relative to the base URL; ids only, never the API key
	StatusCode  int
	Name        string        // Heron's "name", e.g. "Not Found"
	Description string        // Heron's "description"; an object is kept as compact JSON
	RetryAfter  time.Duration // from Retry-After on 429/503, 0 otherwise
}

func (e *APIError) Error() string {
	name := e.Name
	if name == "" {
		name = http.StatusText(e.StatusCode)
	}
	s := fmt.Sprintf("heron: %s %s: %d %s", e.Method, e.Path, e.StatusCode, name)
	if e.Description != "" && e.Description != name {
		s += ": " + e.Description
	}
	return s
}

// Is lets callers test the status with errors.Is instead of type-asserting.
func (e *APIError) Is(target error) bool {
	switch target {
	case ErrNotFound:
		return e.StatusCode == http.StatusNotFound
	case ErrUnauthorized:
		return e.StatusCode == http.StatusUnauthorized
	case ErrRateLimited:
		return e.StatusCode == http.StatusTooManyRequests
	}
	return false
}

// maxErrorText bounds what a non-JSON error body (a proxy's HTML page, say) can add
// to an error string that ends up in Vault's answers and logs.
const maxErrorText = 256

// newAPIError builds an APIError from a non-2xx response. secret is scrubbed from
// whatever Heron (or a proxy in front of it) echoed back, so the key cannot leak
// through an error string even if the server misbehaves.
func newAPIError(method, path string, resp *http.Response, body []byte, secret string) *APIError {
	e := &APIError{Method: method, Path: path, StatusCode: resp.StatusCode}
	if resp.StatusCode == http.StatusTooManyRequests || resp.StatusCode == http.StatusServiceUnavailable {
		e.RetryAfter, _ = parseRetryAfter(resp.Header.Get("Retry-After"), time.Now())
	}
	// Scrub before anything is cut: a cut through the echoed key would leave
	// most of it behind where ReplaceAll no longer finds it whole.
	if secret != "" {
		body = bytes.ReplaceAll(body, []byte(secret), []byte("[redacted]"))
	}
	var eb struct {
		Name        string          `json:"name"`
		Description json.RawMessage `json:"description"`
	}
	if err := json.Unmarshal(body, &eb); err == nil {
		e.Name = eb.Name
		e.Description = describe(eb.Description)
	} else {
		e.Description = strings.TrimSpace(string(body))
	}
	if secret != "" {
		// JSON escapes could have hidden the key from the byte scrub above
		// ("key_\u0030..."); decoded, it is whole again.
		e.Name = strings.ReplaceAll(e.Name, secret, "[redacted]")
		e.Description = strings.ReplaceAll(e.Description, secret, "[redacted]")
	}
	e.Name = truncate(e.Name, maxErrorText)
	e.Description = truncate(e.Description, maxErrorText)
	return e
}

// describe turns Heron's description into one line: a string as is, a 422's
// field-error object as compact JSON so nothing of it is lost.
func describe(raw json.RawMessage) string {
	raw = bytes.TrimSpace(raw)
	if len(raw) == 0 || string(raw) == "null" {
		return ""
	}
	var s string
	if err := json.Unmarshal(raw, &s); err == nil {
		return s
	}
	var buf bytes.Buffer
	if err := json.Compact(&buf, raw); err != nil {
		return string(raw)
	}
	return buf.String()
}

func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	s = s[:n]
	for !utf8.ValidString(s) {
		s = s[:len(s)-1]
	}
	return s + "…"
}

// maxRetryAfter bounds a Retry-After in either form: Heron counts its budget over
// one minute, so after a minute every request it counted has left the window and
// a longer wait is a broken or hostile header, not a reason to stop the whole
// environment (a 429 pauses every request to it, revocations included).
const maxRetryAfter = time.Minute

// parseRetryAfter reads both forms RFC 9110 allows (delay-seconds and HTTP-date),
// bounded to [0, maxRetryAfter]: a negative or unreadable value is no value
// (ok false: the caller's own backoff applies), a date in the past is 0.
func parseRetryAfter(v string, now time.Time) (time.Duration, bool) {
	v = strings.TrimSpace(v)
	if v == "" {
		return 0, false
	}
	if secs, err := strconv.ParseInt(v, 10, 64); err == nil {
		if secs < 0 {
			return 0, false
		}
		// Compared in seconds, before any multiplication can overflow.
		if secs > int64(maxRetryAfter/time.Second) {
			return maxRetryAfter, true
		}
		return time.Duration(secs) * time.Second, true
	} else if errors.Is(err, strconv.ErrRange) && !strings.HasPrefix(v, "-") {
		return maxRetryAfter, true // digits beyond int64: far more than the bound
	}
	if t, err := http.ParseTime(v); err == nil {
		// Sub saturates for dates centuries away; the bound does the rest.
		return min(max(t.Sub(now), 0), maxRetryAfter), true
	}
	return 0, false
}

// maxRateLimitHeader bounds X-RateLimit-Limit (and so -Remaining): Heron's
// budgets are hundreds a minute; a billion is a broken header.
const maxRateLimitHeader = 1_000_000_000

// rateLimit is Heron's X-RateLimit-* headers, read under one rule: all three
// present as decimal integers, 1 <= limit <= maxRateLimitHeader,
// 0 <= remaining <= limit, and a reset (Unix seconds) in the future; the time
// until the reset is bounded by maxObservedPause (Heron's window). Anything
// else is no information, never a reason to pause.
type rateLimit struct {
	limit, remaining int64
	untilReset       time.Duration
}

func parseRateLimit(h http.Header, now time.Time) (rateLimit, bool) {
	num := func(name string) (int64, bool) {
		n, err := strconv.ParseInt(strings.TrimSpace(h.Get(name)), 10, 64)
		return n, err == nil
	}
	limit, ok1 := num("X-RateLimit-Limit")
	remaining, ok2 := num("X-RateLimit-Remaining")
	reset, ok3 := num("X-RateLimit-Reset")
	if !ok1 || !ok2 || !ok3 || limit < 1 || limit > maxRateLimitHeader || remaining < 0 || remaining > limit {
		return rateLimit{}, false
	}
	// In seconds first: time.Unix of an absurd value is not worth computing.
	// Compared before subtracting, which would overflow for a reset near
	// the bottom of int64.
	if reset < now.Unix() {
		return rateLimit{}, false
	}
	secs := reset - now.Unix()
	until := maxObservedPause
	if secs <= int64(maxObservedPause/time.Second)+1 {
		until = min(time.Unix(reset, 0).Sub(now), maxObservedPause)
	}
	if until <= 0 {
		return rateLimit{}, false
	}
	return rateLimit{limit: limit, remaining: remaining, untilReset: until}, true
}

// low reports whether little of the window's budget is left: under 5 requests
// or under a tenth of the limit (written without a product that could overflow).
func (r rateLimit) low() bool {
	return r.remaining < 5 || r.remaining < (r.limit+9)/10
}
