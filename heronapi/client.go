package heronapi

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net/http"
	"net/url"
	"slices"
	"strings"
	"sync/atomic"
	"time"
	"unicode/utf8"

	"github.com/hashicorp/go-cleanhttp"
	"github.com/hashicorp/go-hclog"
	"github.com/hashicorp/go-retryablehttp"
)

const (
	defaultTimeout      = 30 * time.Second
	defaultRetryWaitMin = time.Second
	defaultRetryWaitMax = 30 * time.Second
	defaultUserAgent    = "vault-plugin-secrets-heron"
	backgroundSuffix    = " (background)"

	// maxResponseBytes bounds what one answer may make us buffer (errors, a
	// created key); the list of keys is read as a stream, under maxListBytes.
	maxResponseBytes = 16 << 20

	// maxIdleConnsPerHost is how many keep-alive connections to Heron a
	// Client keeps between calls: at least as many as calls it sends at
	// once (Vault's request handlers, its revocation workers), or every
	// answer beyond that closes a connection the next call dials again.
	maxIdleConnsPerHost = 256

	keysPath  = "/api/credentials/keys"
	helloPath = "/api/hello_world/authenticated"
)

// maxListBytes bounds the list of keys, which Heron does not page: about
// 170 bytes a key, so a million keys fit. It is decoded a key at a time, so
// the answer itself is never held whole. A variable so tests can shrink it.
var maxListBytes int64 = 256 << 20

// maxListKeys bounds how many keys a list may hold, whatever their size on the
// wire: a caller of ListKeys holds every one (some 100 bytes each before their
// strings), so this, not maxListBytes, bounds what an answer of small keys can
// make the process hold. A variable so tests can shrink it.
var maxListKeys = 1_000_000

// Client talks to one Heron environment with one admin key. It is safe for
// concurrent use.
type Client struct {
	baseURL    string
	apiKey     string
	userAgent  string
	logger     hclog.Logger
	timeout    time.Duration
	maxRetries int
	http       *http.Client

	// Two retry engines because the policies differ: GET/PUT/DELETE are idempotent,
	// while a re-sent POST could create a second key whose token nobody would ever see.
	rc       *retryablehttp.Client
	rcCreate *retryablehttp.Client

	// serverDate is the Date header of the latest answer (Unix seconds):
	// Heron's clock, which its keys' "created" follow.
	serverDate atomic.Int64
}

// New validates cfg and builds a Client. Errors never echo the API key.
func New(cfg Config) (*Client, error) {
	if cfg.APIKey == "" {
		return nil, errors.New("heron: API key is required")
	}
	for i := 0; i < len(cfg.APIKey); i++ {
		// Checked here because net/http would only fail at send time, after the
		// limiter has already spent a slot on a request that cannot go out.
		if b := cfg.APIKey[i]; b <= ' ' || b > '~' {
			return nil, errors.New("heron: API key contains characters not allowed in an HTTP header")
		}
	}
	base, err := parseBaseURL(cfg.BaseURL)
	if err != nil {
		return nil, err
	}

	c := &Client{
		baseURL:    base,
		apiKey:     cfg.APIKey,
		userAgent:  cfg.UserAgent,
		logger:     cfg.Logger,
		timeout:    cfg.Timeout,
		maxRetries: max(cfg.MaxRetries, 0),
	}
	if c.userAgent == "" {
		c.userAgent = defaultUserAgent
	}
	if c.logger == nil {
		c.logger = hclog.NewNullLogger()
	}
	if c.timeout <= 0 {
		c.timeout = defaultTimeout
	}
	waitMin, waitMax := cfg.RetryWaitMin, cfg.RetryWaitMax
	if waitMin <= 0 {
		waitMin = defaultRetryWaitMin
	}
	if waitMax <= 0 {
		waitMax = defaultRetryWaitMax
	}
	waitMax = max(waitMax, waitMin)

	// cleanhttp keeps GOMAXPROCS+1 idle connections per host: on 2 cores,
	// 16 concurrent issuances closed 13 of their 16 connections after each
	// answer and dialed Heron again (a TCP and TLS handshake each). A
	// Client talks to one host, so the whole pool may be that host's.
	pooled := cleanhttp.DefaultPooledTransport()
	pooled.MaxIdleConns = maxIdleConnsPerHost
	pooled.MaxIdleConnsPerHost = maxIdleConnsPerHost
	c.http = &http.Client{
		// No http.Client.Timeout: it would also count the time spent queued in the
		// limiter. The per-attempt timeout lives in attemptTransport instead.
		Transport: &attemptTransport{
			date:         &c.serverDate,
			base:         pooled,
			limiter:      cfg.Limiter,
			timeout:      c.timeout,
			defaultPause: waitMin,
		},
		// Heron's API does not redirect. Following one would resend x-api-key, which
		// net/http does not strip on cross-host redirects, to wherever it points.
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
	}
	newRC := func(policy retryablehttp.CheckRetry) *retryablehttp.Client {
		return &retryablehttp.Client{
			HTTPClient:   c.http,
			Logger:       retryLogger{c.logger},
			RetryWaitMin: waitMin,
			RetryWaitMax: waitMax,
			RetryMax:     c.maxRetries,
			CheckRetry:   policy,
			Backoff:      backoff,
			ErrorHandler: lastAttempt,
		}
	}
	c.rc = newRC(c.retryPolicy)
	c.rcCreate = newRC(c.createRetryPolicy)
	return c, nil
}

func parseBaseURL(s string) (string, error) {
	// url.Parse errors echo the input, which could carry credentials; keep ours generic.
	u, err := url.Parse(strings.TrimSpace(s))
	if err != nil {
		return "", errors.New("heron: base URL is not a valid URL")
	}
	if u.Scheme != "http" && u.Scheme != "https" {
		return "", fmt.Errorf("heron: base URL must use http or https, not %q", u.Scheme)
	}
	if u.Host == "" {
		return "", errors.New("heron: base URL has no host")
	}
	if u.User != nil {
		return "", errors.New("heron: base URL must not contain user information")
	}
	if u.RawQuery != "" || u.Fragment != "" {
		return "", errors.New("heron: base URL must not have a query or fragment")
	}
	return strings.TrimRight(u.String(), "/"), nil
}

// ServerDate is Heron's clock as of the latest answer (its Date header, to
// the second), or the zero time before any answer carried one.
func (c *Client) ServerDate() time.Time {
	if u := c.serverDate.Load(); u != 0 {
		return time.Unix(u, 0)
	}
	return time.Time{}
}

// CloseIdleConnections releases pooled connections, for when a Client is replaced
// after a config change.
func (c *Client) CloseIdleConnections() { c.http.CloseIdleConnections() }

// CreateKey implements API. Only a 429 is re-sent (Heron did not process it);
// any answer that leaves the outcome open comes back wrapping ErrOutcomeUnknown,
// for the caller, who knows which keys are its own, to settle by listing.
func (c *Client) CreateKey(ctx context.Context, name string) (*Key, error) {
	if n := utf8.RuneCountInString(name); n < 1 || n > MaxKeyNameLength {
		return nil, fmt.Errorf("heron: key name must be 1 to %d characters, got %d", MaxKeyNameLength, n)
	}
	body, err := json.Marshal(struct {
		Name string `json:"name"`
	}{name})
	if err != nil {
		return nil, fmt.Errorf("heron: encoding key name: %w", err)
	}
	status, respBody, err := c.roundTrip(ctx, c.rcCreate, http.MethodPost, keysPath, body, nil)
	if err != nil {
		var apiErr *APIError
		switch {
		case errors.As(err, &apiErr):
			if apiErr.StatusCode >= 500 {
				// A gateway's 502/504 or Heron's own 500 may come after the
				// key was made.
				return nil, unknownOutcome(err)
			}
			return nil, err // 4xx, 429 included: not processed
		case errors.Is(err, ErrRateLimited), isPermanentTransportErr(err):
			// The limiter refused before sending, or TLS failed before any byte of the body.
			return nil, err
		default:
			// Dropped connection, timeout, cancellation: the POST may have
			// been processed.
			return nil, unknownOutcome(err)
		}
	}
	if status != http.StatusCreated {
		return nil, unknownOutcome(fmt.Errorf("heron: POST %s: unexpected status %d", keysPath, status))
	}
	var k Key
	if err := json.Unmarshal(respBody, &k); err != nil {
		// Created for sure, but the token is unreadable: as good as a lost response.
		return nil, unknownOutcome(fmt.Errorf("heron: POST %s: decoding the answer: %w", keysPath, err))
	}
	if k.Name != name {
		// Not the answer to this POST (a caching gateway replaying another
		// creation's 201): its key may be another lease's, so it is neither
		// handed out nor deleted here. Whether this POST created a key is
		// unknown; the caller settles that by the name it asked for.
		return nil, unknownOutcome(fmt.Errorf("heron: POST %s: the answer is for another key (name %.140q, asked for %q)", keysPath, k.Name, name))
	}
	if !ValidKeyID(k.ID) || !tokenRe.MatchString(k.Token) {
		// A key we cannot use: delete it now when we know its id, rather than
		// leave it to the caller's write-ahead cleanup.
		if ValidKeyID(k.ID) && c.DeleteKey(ctx, k.ID) == nil {
			return nil, fmt.Errorf("heron: POST %s: the answer has no valid token; deleted key %s again", keysPath, k.ID)
		}
		return nil, unknownOutcome(fmt.Errorf("heron: POST %s: the answer has no valid heron_id or token", keysPath))
	}
	if k.TokenPrefix != "" && k.TokenPrefix != TokenPrefix(k.Token) {
		return nil, unknownOutcome(fmt.Errorf("heron: POST %s: the answer's token_prefix is not its token's", keysPath))
	}
	k.TokenPrefix = TokenPrefix(k.Token)
	if !ValidHeronTime(k.Created) {
		// Nobody counts from a created key's time (its record starts when the
		// engine stores it), and refusing a valid key with its token in hand
		// over a timestamp would only leave it to be cleaned up: unknown (zero)
		// is the bounded reading.
		k.Created = time.Time{}
	}
	if k.LastUsed != nil && !ValidHeronTime(*k.LastUsed) {
		k.LastUsed = nil
	}
	c.logger.Debug("created key", "key_id", k.ID, "key_name", k.Name, "token_prefix", k.TokenPrefix)
	return &k, nil
}

// unknownOutcome marks err as "Heron may have created the key".
func unknownOutcome(err error) error {
	return fmt.Errorf("%w: %w", ErrOutcomeUnknown, err)
}

// ListKeys implements API.
func (c *Client) ListKeys(ctx context.Context) ([]Key, error) {
	keys := []Key{}
	err := c.walkKeys(ctx, func(k Key) { keys = append(keys, k) }, func() { keys = keys[:0] })
	if err != nil {
		return nil, err
	}
	return keys, nil
}

// EachKey implements KeyWalker: the list of keys handed to fn one key at a
// time, never held whole (at 100,000 keys, tens of MiB).
func (c *Client) EachKey(ctx context.Context, fn func(Key)) error {
	return c.walkKeys(ctx, fn, func() {})
}

func (c *Client) walkKeys(ctx context.Context, fn func(Key), reset func()) error {
	status, _, err := c.roundTrip(ctx, c.rc, http.MethodGet, keysPath, nil, func(r io.Reader) error {
		return decodeKeyList(r, fn, reset)
	})
	if err != nil {
		return err
	}
	if status != http.StatusOK {
		return fmt.Errorf("heron: GET %s: unexpected status %d", keysPath, status)
	}
	return nil
}

// decodeKeyList reads {"keys": [...]} one key at a time, handing each to
// fn: at 100,000 keys the answer is some 17 MB, which need not be held whole.
// Other fields are skipped; reset runs where json.Unmarshal would start the
// list over (a second "keys" field).
//
// Only Heron's documented answer is a list: a body that is not an object, an
// object without a "keys" array ("keys": null, a gateway's maintenance page
// answered with 200), or a key without a valid heron_id is an error, never
// "Heron has no keys" (the engine would drop what it tracks). Refusing keys
// without an id also bounds what an answer can make the caller hold: the
// smallest key accepted is some 15 bytes on the wire.
func decodeKeyList(r io.Reader, fn func(Key), reset func()) error {
	dec := json.NewDecoder(r)
	if err := expectDelim(dec, '{'); err != nil {
		return fmt.Errorf("the answer is not a list of keys: %w", err)
	}
	sawList := false
	for dec.More() {
		name, err := dec.Token()
		if err != nil {
			return err
		}
		// As json.Unmarshal matches it: without regard to case, the last
		// occurrence winning.
		if n, _ := name.(string); !strings.EqualFold(n, "keys") {
			var skip json.RawMessage
			if err := dec.Decode(&skip); err != nil {
				return err
			}
			continue
		}
		reset()
		if tok, err := dec.Token(); err != nil {
			return err
		} else if d, ok := tok.(json.Delim); !ok || d != '[' {
			return fmt.Errorf("the answer's keys is not a list (%v)", tok)
		}
		for i := 0; dec.More(); i++ {
			if i >= maxListKeys {
				return fmt.Errorf("the answer lists more than %d keys", maxListKeys)
			}
			var k Key
			if err := dec.Decode(&k); err != nil {
				return err
			}
			if err := checkListedKey(k); err != nil {
				return fmt.Errorf("the answer's key %d %w", i, err)
			}
			fn(k)
		}
		if err := expectDelim(dec, ']'); err != nil {
			return err
		}
		sawList = true
	}
	if err := expectDelim(dec, '}'); err != nil {
		return err
	}
	if _, err := dec.Token(); err != io.EOF {
		return errors.New("the answer has data after its object")
	}
	if !sawList {
		return errors.New("the answer has no keys list")
	}
	return nil
}

// checkListedKey applies the rules every listed key must meet before anyone
// uses it: an id that is a plain path segment, a created time and, when
// present, a last_used time within the range accepted from Heron (created is
// documented on every key; a missing one decodes as year 1).
func checkListedKey(k Key) error {
	if !ValidKeyID(k.ID) {
		return fmt.Errorf("has no valid heron_id (%s)", describeID(k.ID))
	}
	if !ValidHeronTime(k.Created) {
		return fmt.Errorf("(%s) has no created time within %d..%d (%s)", k.ID, minHeronTime.Year(), maxHeronTime.Year()-1, k.Created.Format(time.RFC3339))
	}
	if k.LastUsed != nil && !ValidHeronTime(*k.LastUsed) {
		return fmt.Errorf("(%s) has a last_used time outside %d..%d (%s)", k.ID, minHeronTime.Year(), maxHeronTime.Year()-1, k.LastUsed.Format(time.RFC3339))
	}
	return nil
}

// describeID says what is wrong with an id without echoing more than a
// short, printable part of it into logs and errors.
func describeID(id string) string {
	if id == "" {
		return "missing or empty"
	}
	return fmt.Sprintf("%.40q is not a plain path segment", id)
}

func expectDelim(dec *json.Decoder, want json.Delim) error {
	tok, err := dec.Token()
	if err != nil {
		return err
	}
	if d, ok := tok.(json.Delim); !ok || d != want {
		return fmt.Errorf("expected %q, got %v", want, tok)
	}
	return nil
}

// DeactivateKey implements API.
func (c *Client) DeactivateKey(ctx context.Context, id string) error {
	p, err := keyPath(id, "/deactivate")
	if err != nil {
		return err
	}
	return c.call(ctx, http.MethodPut, p, nil, http.StatusOK)
}

// ActivateKey implements API.
func (c *Client) ActivateKey(ctx context.Context, id string) error {
	p, err := keyPath(id, "/activate")
	if err != nil {
		return err
	}
	return c.call(ctx, http.MethodPut, p, nil, http.StatusOK)
}

// DeleteKey implements API.
func (c *Client) DeleteKey(ctx context.Context, id string) error {
	p, err := keyPath(id, "")
	if err != nil {
		return err
	}
	return c.call(ctx, http.MethodDelete, p, nil, http.StatusNoContent, http.StatusOK)
}

// Hello implements API.
func (c *Client) Hello(ctx context.Context) error {
	return c.call(ctx, http.MethodGet, helloPath, nil, http.StatusOK)
}

// keyPath is the URL path of key id. An id that is not a plain path segment is
// refused before anything is sent: "" would name the collection itself, ".."
// or "a/b" another resource, whatever the caller's id came from (Heron's own
// answers are checked on arrival, but a stored record or a caller's field may
// be older than that rule). The id is escaped even so.
func keyPath(id, suffix string) (string, error) {
	if !ValidKeyID(id) {
		return "", fmt.Errorf("heron: key id %s", describeID(id))
	}
	return keysPath + "/" + url.PathEscape(id) + suffix, nil
}

// call is one idempotent request with retries; out (if non-nil) receives the JSON answer.
func (c *Client) call(ctx context.Context, method, path string, out any, ok ...int) error {
	status, body, err := c.roundTrip(ctx, c.rc, method, path, nil, nil)
	if err != nil {
		return err
	}
	if !slices.Contains(ok, status) {
		return fmt.Errorf("heron: %s %s: unexpected status %d", method, path, status)
	}
	if out != nil {
		if err := json.Unmarshal(body, out); err != nil {
			return fmt.Errorf("heron: %s %s: decoding the answer: %w", method, path, err)
		}
	}
	return nil
}

// roundTrip sends a request through rc (retries, limiter, per-attempt timeout) and
// reads the whole answer, or with stream set hands a 2xx answer's body to it
// (under maxListBytes) instead. A non-2xx answer comes back as *APIError.
func (c *Client) roundTrip(ctx context.Context, rc *retryablehttp.Client, method, path string, body []byte, stream func(io.Reader) error) (int, []byte, error) {
	var raw any
	if body != nil {
		raw = body
	}
	req, err := retryablehttp.NewRequestWithContext(ctx, method, c.baseURL+path, raw)
	if err != nil {
		return 0, nil, fmt.Errorf("heron: %s %s: %w", method, path, err)
	}
	req.Header.Set("x-api-key", c.apiKey)
	req.Header.Set("Accept", "application/json")
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	ua := c.userAgent
	if IsBackground(ctx) {
		ua += backgroundSuffix
	}
	req.Header.Set("User-Agent", ua)

	resp, err := rc.Do(req)
	if err != nil {
		if ctx.Err() == nil && errors.Is(err, context.DeadlineExceeded) {
			err = fmt.Errorf("no answer within %s: %w", c.timeout, err)
		}
		return 0, nil, fmt.Errorf("heron: %s %s: %w", method, path, err)
	}
	defer resp.Body.Close()
	if stream != nil && resp.StatusCode >= 200 && resp.StatusCode <= 299 {
		lr := &io.LimitedReader{R: resp.Body, N: maxListBytes + 1}
		if err := stream(lr); err != nil {
			if lr.N <= 0 {
				return 0, nil, fmt.Errorf("heron: %s %s: answer larger than %d bytes", method, path, maxListBytes)
			}
			return 0, nil, fmt.Errorf("heron: %s %s: decoding the answer: %w", method, path, err)
		}
		return resp.StatusCode, nil, nil
	}
	data, err := io.ReadAll(io.LimitReader(resp.Body, maxResponseBytes+1))
	if err != nil {
		return 0, nil, fmt.Errorf("heron: %s %s: reading the answer: %w", method, path, err)
	}
	if len(data) > maxResponseBytes {
		return 0, nil, fmt.Errorf("heron: %s %s: answer larger than %d bytes", method, path, maxResponseBytes)
	}
	if resp.StatusCode < 200 || resp.StatusCode > 299 {
		return 0, nil, newAPIError(method, path, resp, data, c.apiKey)
	}
	return resp.StatusCode, data, nil
}

// retryPolicy is for GET/PUT/DELETE: retry 429, 5xx and transport failures.
func (c *Client) retryPolicy(ctx context.Context, resp *http.Response, err error) (bool, error) {
	if ctx.Err() != nil {
		return false, nil
	}
	if err != nil {
		return !errors.Is(err, ErrRateLimited) && !isPermanentTransportErr(err), nil
	}
	switch {
	case resp.StatusCode == http.StatusTooManyRequests, resp.StatusCode == http.StatusServiceUnavailable:
		// backoff waits out Retry-After on both: a wait past the deadline
		// would only end in a timeout instead of this answer.
		return retryAfterFits(ctx, resp), nil
	case resp.StatusCode >= 500 && resp.StatusCode != http.StatusNotImplemented:
		return true, nil
	}
	return false, nil
}

// createRetryPolicy is for the key-creating POST: only a 429 is re-sent, since
// Heron did not process it. Anything else that may have reached Heron goes back
// to the caller as ErrOutcomeUnknown.
func (c *Client) createRetryPolicy(ctx context.Context, resp *http.Response, err error) (bool, error) {
	if ctx.Err() != nil || err != nil || resp.StatusCode != http.StatusTooManyRequests {
		return false, nil
	}
	return retryAfterFits(ctx, resp), nil
}

// retryAfterFits reports whether waiting out Retry-After still leaves time before
// ctx's deadline; if not, answering "rate limited" now beats timing out later.
func retryAfterFits(ctx context.Context, resp *http.Response) bool {
	ra, ok := parseRetryAfter(resp.Header.Get("Retry-After"), time.Now())
	if !ok {
		return true
	}
	dl, has := ctx.Deadline()
	return !has || !time.Now().Add(ra).After(dl)
}

// isPermanentTransportErr spots failures that happen before the request leaves and
// will not heal by retrying (certificate problems).
func isPermanentTransportErr(err error) bool {
	var (
		verr *tls.CertificateVerificationError
		uerr x509.UnknownAuthorityError
		herr x509.HostnameError
		cerr x509.CertificateInvalidError
	)
	return errors.As(err, &verr) || errors.As(err, &uerr) || errors.As(err, &herr) || errors.As(err, &cerr)
}

// backoff is capped exponential backoff with equal jitter: half of each step is kept
// so the waits still grow as Heron asks (1s, 2s, 4s…), the other half is random so
// clients that failed together do not retry together. It never undercuts Retry-After.
func backoff(minWait, maxWait time.Duration, attempt int, resp *http.Response) time.Duration {
	d := minWait
	for i := 0; i < attempt && d < maxWait; i++ {
		d *= 2
	}
	d = min(d, maxWait)
	if half := d / 2; half > 0 {
		d = half + rand.N(half+1)
	}
	if resp != nil && (resp.StatusCode == http.StatusTooManyRequests || resp.StatusCode == http.StatusServiceUnavailable) {
		if ra, ok := parseRetryAfter(resp.Header.Get("Retry-After"), time.Now()); ok && ra > d {
			d = ra
		}
	}
	return d
}

// lastAttempt hands the final answer back to roundTrip so a status can become an
// APIError (retryablehttp's default would discard it for a generic error).
func lastAttempt(resp *http.Response, err error, tries int) (*http.Response, error) {
	if err == nil {
		return resp, nil
	}
	if resp != nil {
		resp.Body.Close()
	}
	// url.Error repeats the method and full URL that our own prefix already names.
	var uerr *url.Error
	if errors.As(err, &uerr) {
		err = uerr.Err
	}
	if tries > 1 {
		err = fmt.Errorf("giving up after %d attempts: %w", tries, err)
	}
	return nil, err
}

// retryLogger adapts hclog to retryablehttp. retryablehttp calls every failed attempt
// an error even when it goes on to retry; the caller gets the final outcome, so
// per-attempt chatter is kept at debug level. retryablehttp never logs headers.
type retryLogger struct{ l hclog.Logger }

func (r retryLogger) Error(msg string, kv ...any) { r.l.Debug(msg, kv...) }
func (r retryLogger) Info(msg string, kv ...any)  { r.l.Debug(msg, kv...) }
func (r retryLogger) Debug(msg string, kv ...any) { r.l.Debug(msg, kv...) }
func (r retryLogger) Warn(msg string, kv ...any)  { r.l.Debug(msg, kv...) }

// attemptTransport wraps every single HTTP attempt, retries included, because each
// attempt is a request Heron counts against the environment's budget.
type attemptTransport struct {
	date         *atomic.Int64
	base         http.RoundTripper
	limiter      *Limiter
	timeout      time.Duration
	defaultPause time.Duration // for a 429 without Retry-After
}

func (t *attemptTransport) RoundTrip(req *http.Request) (*http.Response, error) {
	if t.limiter != nil {
		if err := t.limiter.Wait(req.Context()); err != nil {
			if req.Body != nil {
				req.Body.Close()
			}
			return nil, err
		}
	}
	// The timeout starts after the limiter let us through: queueing for budget is
	// bounded by the caller's context, not by the per-request timeout.
	ctx, cancel := context.WithTimeout(req.Context(), t.timeout)
	req = req.WithContext(ctx)
	if req.Method == http.MethodGet && (req.Body == nil || req.Body == http.NoBody) {
		// Go's transport sends a GET again by itself when a kept-alive
		// connection closes after the request went out and before any
		// answer: a request Heron counts that never waited for a slot. A
		// GET with an empty body that cannot be rewound is not "replayable"
		// (Go sends no body for it), so that error comes back here and the
		// client's own retry waits for its slot.
		req.Body, req.GetBody, req.ContentLength = noReplayBody{}, nil, 0
	}
	resp, err := t.base.RoundTrip(req)
	if err != nil {
		cancel()
		return nil, err
	}
	// A Date outside the range accepted from Heron is ignored (the last good
	// one stays): the engine measures Heron's clock offset from it.
	if d, err := http.ParseTime(resp.Header.Get("Date")); err == nil && t.date != nil && ValidHeronTime(d) {
		t.date.Store(d.Unix())
	}
	if t.limiter != nil {
		t.limiter.Observe(resp.Header)
		if resp.StatusCode == http.StatusTooManyRequests {
			d, ok := parseRetryAfter(resp.Header.Get("Retry-After"), time.Now())
			if !ok {
				d = t.defaultPause
			}
			t.limiter.PauseFor(d)
		}
	}
	// The timeout must also cover reading the body, so it ends when the body is closed.
	resp.Body = &cancelOnClose{ReadCloser: resp.Body, cancel: cancel}
	return resp, nil
}

// CloseIdleConnections passes the call on: http.Client.CloseIdleConnections only
// reaches a transport that has this method, so without it the pool of the base
// transport was never closed and a replaced Client kept its connections.
func (t *attemptTransport) CloseIdleConnections() {
	if c, ok := t.base.(interface{ CloseIdleConnections() }); ok {
		c.CloseIdleConnections()
	}
}

// noReplayBody is an empty request body that Go's transport cannot rewind.
type noReplayBody struct{}

func (noReplayBody) Read([]byte) (int, error) { return 0, io.EOF }
func (noReplayBody) Close() error             { return nil }

type cancelOnClose struct {
	io.ReadCloser
	cancel context.CancelFunc
}

func (b *cancelOnClose) Close() error {
	err := b.ReadCloser.Close()
	b.cancel()
	return err
}
