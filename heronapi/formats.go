package heronapi

import (
	"errors"
	"fmt"
	"net/url"
	"regexp"
	"time"
)

// Heron's formats, stated once for every user of this package (the engine
// validates its input with them; the emulator keeps its own copy on purpose,
// as an independent reading of the API).
const (
	// TokenPrefixLength is how much of a token Heron shows in its dashboard
	// and lists: "key_" and 4 hex characters. Not unique, not a secret.
	TokenPrefixLength = 8
	// MaxKeyNameLength is the longest key name Heron accepts, in Unicode
	// code points.
	MaxKeyNameLength = 128
)

// keyIDPattern is what the engine accepts as a Heron id: a plain path
// segment of printable ASCII (Heron's and the emulator's are UUIDs).
var keyIDPattern = regexp.MustCompile(`^[A-Za-z0-9_~:@+=-][A-Za-z0-9._~:@+=-]{0,127}$`)

// ValidKeyID reports whether id can be used as Heron's id of a key: 1..128
// characters of letters, digits and "._~:@+=-", not starting with a dot (so
// never "." or ".."), no slash, space or control character. An id outside
// this rule never becomes part of a URL or a storage key: the answer that
// carries it is an error.
//
// It is keyIDPattern, checked byte by byte: the periodic pass checks every
// id of Heron's list (100,000 on a large mount), where the regexp was a
// fifth of the list's CPU.
func ValidKeyID(id string) bool {
	if len(id) == 0 || len(id) > 128 || id[0] == '.' {
		return false
	}
	for i := 0; i < len(id); i++ {
		c := id[i]
		switch {
		case c >= 'a' && c <= 'z', c >= 'A' && c <= 'Z', c >= '0' && c <= '9':
		case c == '.', c == '_', c == '~', c == ':', c == '@', c == '+', c == '=', c == '-':
		default:
			return false
		}
	}
	return true
}

// TokenPattern is a full Heron API key: "key_" followed by 48 lowercase hex.
var TokenPattern = regexp.MustCompile(`^key_[0-9a-f]{48}$`)

var tokenRe = TokenPattern

// TokenPrefix is the part of token that Heron shows, or "" for a token too
// short to have one.
func TokenPrefix(token string) string {
	if len(token) < TokenPrefixLength {
		return ""
	}
	return token[:TokenPrefixLength]
}

// ValidateBaseURL accepts an absolute http(s) URL without credentials, query
// or fragment, naming the rule it breaks otherwise. Errors never echo
// credentials.
func ValidateBaseURL(raw string) error {
	u, err := url.Parse(raw)
	if err != nil {
		return errors.New("base_url is not a valid URL")
	}
	if u.Scheme != "http" && u.Scheme != "https" {
		return fmt.Errorf("base_url must use http or https, got %q", u.Redacted())
	}
	if u.Host == "" {
		return fmt.Errorf("base_url must include a host, got %q", u.Redacted())
	}
	if u.RawQuery != "" || u.Fragment != "" || u.User != nil {
		return fmt.Errorf("base_url must not carry credentials, a query or a fragment, got %q", u.Redacted())
	}
	return nil
}

// Every time Heron sends (its Date header, a key's created and last_used) is
// accepted only within [minHeronTime, maxHeronTime): Heron did not exist before
// 2000, and a time past 2200 is a broken or hostile answer whose use would
// overflow or stall whatever counts from it (a retention, a clock offset, an
// "unused for").
var (
	minHeronTime = time.Date(2000, 1, 1, 0, 0, 0, 0, time.UTC)
	maxHeronTime = time.Date(2200, 1, 1, 0, 0, 0, 0, time.UTC)
)

// ValidHeronTime reports whether t is within the range of times accepted from
// Heron.
func ValidHeronTime(t time.Time) bool {
	return !t.Before(minHeronTime) && t.Before(maxHeronTime)
}
