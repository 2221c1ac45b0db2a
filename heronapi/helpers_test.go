package heronapi

import (
	"bytes"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/hashicorp/go-hclog"
)

const (
	testKey   = "key_0123456789abcdef0123456789abcdef0123456789abcdef"
	testToken = "key_fedcba9876543210fedcba9876543210fedcba9876543210"
	testUA    = "vault-plugin-secrets-heron/v0.0.0-test"
)

// recorded is what the fake server saw of one request.
type recorded struct {
	Method, Path        string
	UserAgent, APIKey   string
	Accept, ContentType string
	Body                string
	At                  time.Time
}

func (r recorded) String() string { return r.Method + " " + r.Path }

// fakeHeron is a per-test httptest server whose handler sees the request's index, so
// each test scripts its own sequence of answers without depending on herontest.
type fakeHeron struct {
	srv *httptest.Server

	mu   sync.Mutex
	reqs []recorded
}

func newFake(t testing.TB, handle func(w http.ResponseWriter, r *http.Request, n int)) *fakeHeron {
	t.Helper()
	f := &fakeHeron{}
	f.srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		f.mu.Lock()
		n := len(f.reqs)
		f.reqs = append(f.reqs, recorded{
			Method: r.Method, Path: r.URL.Path,
			UserAgent: r.UserAgent(), APIKey: r.Header.Get("x-api-key"),
			Accept: r.Header.Get("Accept"), ContentType: r.Header.Get("Content-Type"),
			Body: string(body), At: time.Now(),
		})
		f.mu.Unlock()
		r.Body = io.NopCloser(bytes.NewReader(body))
		handle(w, r, n)
	}))
	t.Cleanup(f.srv.Close)
	return f
}

func (f *fakeHeron) URL() string { return f.srv.URL }

func (f *fakeHeron) requests() []recorded {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]recorded(nil), f.reqs...)
}

func (f *fakeHeron) seq() []string {
	var out []string
	for _, r := range f.requests() {
		out = append(out, r.String())
	}
	return out
}

func newTestClient(t testing.TB, baseURL string, mod func(*Config)) *Client {
	t.Helper()
	cfg := Config{
		BaseURL:      baseURL,
		APIKey:       testKey,
		Timeout:      5 * time.Second,
		MaxRetries:   3,
		UserAgent:    testUA,
		RetryWaitMin: 10 * time.Millisecond,
		RetryWaitMax: 40 * time.Millisecond,
	}
	if mod != nil {
		mod(&cfg)
	}
	c, err := New(cfg)
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	t.Cleanup(c.CloseIdleConnections)
	return c
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(v)
}

// heronError writes Heron's documented error body.
func heronError(w http.ResponseWriter, status int, description any) {
	writeJSON(w, status, map[string]any{"code": status, "name": http.StatusText(status), "description": description})
}

func createdKey(id, name, token string) map[string]any {
	return map[string]any{
		"heron_id": id, "name": name, "token": token, "token_prefix": token[:8],
		"created": "2024-05-01T10:00:00Z", "is_active": true,
	}
}

func listed(id, name string) map[string]any {
	return map[string]any{
		"heron_id": id, "name": name, "token_prefix": "key_abcd",
		"created": "2024-05-01T10:00:00Z", "is_active": true, "last_used": nil,
	}
}

// hangUp drops the connection without an answer, as a crash or proxy reset would
// after Heron has already acted on the request.
func hangUp(t testing.TB, w http.ResponseWriter) {
	conn, _, err := w.(http.Hijacker).Hijack()
	if err != nil {
		t.Errorf("hijack: %v", err)
		return
	}
	conn.Close()
}

// bufLogger captures everything the client logs, at the most verbose level.
func bufLogger() (hclog.Logger, *syncBuffer) {
	buf := &syncBuffer{}
	return hclog.New(&hclog.LoggerOptions{Output: buf, Level: hclog.Trace}), buf
}

type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

func equalSeq(t testing.TB, got []string, want ...string) {
	t.Helper()
	if strings.Join(got, "\n") != strings.Join(want, "\n") {
		t.Fatalf("request sequence:\n got: %q\nwant: %q", got, want)
	}
}

func mustAPIError(t testing.TB, err error, status int) *APIError {
	t.Helper()
	var ae *APIError
	if !errors.As(err, &ae) {
		t.Fatalf("want *APIError with status %d, got %T: %v", status, err, err)
	}
	if ae.StatusCode != status {
		t.Fatalf("status: got %d, want %d (%v)", ae.StatusCode, status, err)
	}
	return ae
}

func noErr(t testing.TB, err error) {
	t.Helper()
	if err != nil {
		t.Fatalf("unexpected error: %v", err)
	}
}

func contains(t testing.TB, s, sub string) {
	t.Helper()
	if !strings.Contains(s, sub) {
		t.Fatalf("%q does not contain %q", s, sub)
	}
}

func assertNoSecret(t testing.TB, what, s string) {
	t.Helper()
	for _, secret := range []string{testKey, testToken} {
		if strings.Contains(s, secret) {
			t.Errorf("%s leaks a secret: %s", what, s)
		}
	}
}

func asAPIError(err error, target **APIError) bool { return errors.As(err, target) }

func itoa64(n int64) string { return strconv.FormatInt(n, 10) }
