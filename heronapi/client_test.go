package heronapi

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

func TestNewValidatesConfig(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name    string
		cfg     Config
		wantErr string
	}{
		{"ok", Config{BaseURL: "https://app.herondata.io/", APIKey: testKey}, ""},
		{"ok with path", Config{BaseURL: "http://127.0.0.1:8080/proxy", APIKey: testKey}, ""},
		{"no key", Config{BaseURL: "https://app.herondata.io"}, "API key is required"},
		{"key with newline", Config{BaseURL: "https://app.herondata.io", APIKey: testKey + "\n"}, "not allowed"},
		{"no scheme", Config{BaseURL: "app.herondata.io", APIKey: testKey}, "http or https"},
		{"ftp", Config{BaseURL: "ftp://app.herondata.io", APIKey: testKey}, "http or https"},
		{"no host", Config{BaseURL: "https://", APIKey: testKey}, "no host"},
		{"user info", Config{BaseURL: "https://u:p@app.herondata.io", APIKey: testKey}, "user information"},
		{"query", Config{BaseURL: "https://app.herondata.io?a=b", APIKey: testKey}, "query"},
		{"unparsable", Config{BaseURL: "https://[::1", APIKey: testKey}, "not a valid URL"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c, err := New(tt.cfg)
			if tt.wantErr == "" {
				noErr(t, err)
				if strings.HasSuffix(c.baseURL, "/") {
					t.Errorf("base URL keeps its trailing slash: %q", c.baseURL)
				}
				return
			}
			if err == nil {
				t.Fatalf("want error containing %q", tt.wantErr)
			}
			contains(t, err.Error(), tt.wantErr)
			assertNoSecret(t, "New error", err.Error())
		})
	}
}

func TestMethodsSuccess(t *testing.T) {
	t.Parallel()
	const id = "7f1c2b9e-1111-4a4a-9b9b-000000000001"
	tests := []struct {
		name       string
		wantMethod string
		wantPath   string
		answer     func(w http.ResponseWriter, r *http.Request)
		call       func(t *testing.T, c *Client)
	}{
		{
			name: "CreateKey", wantMethod: "POST", wantPath: "/api/credentials/keys",
			answer: func(w http.ResponseWriter, r *http.Request) {
				var in struct{ Name string }
				_ = json.NewDecoder(r.Body).Decode(&in)
				writeJSON(w, http.StatusCreated, createdKey(id, in.Name, testToken))
			},
			call: func(t *testing.T, c *Client) {
				k, err := c.CreateKey(context.Background(), "vault-role-x-1")
				noErr(t, err)
				if k.ID != id || k.Name != "vault-role-x-1" || k.Token != testToken || k.TokenPrefix != testToken[:8] || !k.IsActive {
					t.Fatalf("unexpected key: %+v", k)
				}
				if k.Created.IsZero() {
					t.Fatal("created not decoded")
				}
			},
		},
		{
			name: "ListKeys", wantMethod: "GET", wantPath: "/api/credentials/keys",
			answer: func(w http.ResponseWriter, r *http.Request) {
				used := listed("b", "two")
				used["last_used"] = "2024-05-02T11:00:00Z"
				used["is_active"] = false
				writeJSON(w, http.StatusOK, map[string]any{"keys": []any{listed("a", "one"), used}})
			},
			call: func(t *testing.T, c *Client) {
				keys, err := c.ListKeys(context.Background())
				noErr(t, err)
				if len(keys) != 2 || keys[0].ID != "a" || keys[0].LastUsed != nil || !keys[0].IsActive {
					t.Fatalf("unexpected keys: %+v", keys)
				}
				if keys[1].IsActive || keys[1].LastUsed == nil || keys[1].LastUsed.Day() != 2 || keys[1].Token != "" {
					t.Fatalf("unexpected second key: %+v", keys[1])
				}
			},
		},
		{
			name: "ListKeys empty", wantMethod: "GET", wantPath: "/api/credentials/keys",
			answer: func(w http.ResponseWriter, r *http.Request) {
				writeJSON(w, http.StatusOK, map[string]any{"keys": []any{}})
			},
			call: func(t *testing.T, c *Client) {
				keys, err := c.ListKeys(context.Background())
				noErr(t, err)
				if keys == nil || len(keys) != 0 {
					t.Fatalf("want empty non-nil slice, got %#v", keys)
				}
			},
		},
		{
			name: "DeactivateKey", wantMethod: "PUT", wantPath: "/api/credentials/keys/" + id + "/deactivate",
			answer: func(w http.ResponseWriter, r *http.Request) {
				writeJSON(w, http.StatusOK, map[string]any{"heron_id": id, "is_active": false})
			},
			call: func(t *testing.T, c *Client) { noErr(t, c.DeactivateKey(context.Background(), id)) },
		},
		{
			name: "ActivateKey", wantMethod: "PUT", wantPath: "/api/credentials/keys/" + id + "/activate",
			answer: func(w http.ResponseWriter, r *http.Request) {
				writeJSON(w, http.StatusOK, map[string]any{"heron_id": id, "is_active": true})
			},
			call: func(t *testing.T, c *Client) { noErr(t, c.ActivateKey(context.Background(), id)) },
		},
		{
			name: "DeleteKey 204", wantMethod: "DELETE", wantPath: "/api/credentials/keys/" + id,
			answer: func(w http.ResponseWriter, r *http.Request) { w.WriteHeader(http.StatusNoContent) },
			call:   func(t *testing.T, c *Client) { noErr(t, c.DeleteKey(context.Background(), id)) },
		},
		{
			name: "DeleteKey 200", wantMethod: "DELETE", wantPath: "/api/credentials/keys/" + id,
			answer: func(w http.ResponseWriter, r *http.Request) { writeJSON(w, http.StatusOK, map[string]any{}) },
			call:   func(t *testing.T, c *Client) { noErr(t, c.DeleteKey(context.Background(), id)) },
		},
		{
			name: "Hello", wantMethod: "GET", wantPath: "/api/hello_world/authenticated",
			answer: func(w http.ResponseWriter, r *http.Request) {
				writeJSON(w, http.StatusOK, map[string]any{"hello": "world"})
			},
			call: func(t *testing.T, c *Client) { noErr(t, c.Hello(context.Background())) },
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			f := newFake(t, func(w http.ResponseWriter, r *http.Request, _ int) { tt.answer(w, r) })
			tt.call(t, newTestClient(t, f.URL()+"/", nil)) // trailing slash must not double up
			reqs := f.requests()
			if len(reqs) != 1 {
				t.Fatalf("want exactly one request, got %v", f.seq())
			}
			r := reqs[0]
			if r.Method != tt.wantMethod || r.Path != tt.wantPath {
				t.Fatalf("got %s %s, want %s %s", r.Method, r.Path, tt.wantMethod, tt.wantPath)
			}
			if r.APIKey != testKey || r.Accept != "application/json" || r.UserAgent != testUA {
				t.Fatalf("headers: key ok=%v accept=%q ua=%q", r.APIKey == testKey, r.Accept, r.UserAgent)
			}
			if r.Method == "POST" {
				if r.ContentType != "application/json" || r.Body != `{"name":"vault-role-x-1"}` {
					t.Fatalf("POST body %q content-type %q", r.Body, r.ContentType)
				}
			} else if r.Body != "" {
				t.Fatalf("%s sent a body: %q", r.Method, r.Body)
			}
		})
	}
}

func TestErrorMapping(t *testing.T) {
	t.Parallel()
	type method struct {
		name, httpMethod, path string
		call                   func(c *Client) error
	}
	methods := []method{
		{"CreateKey", "POST", "/api/credentials/keys", func(c *Client) error {
			_, err := c.CreateKey(context.Background(), "n")
			return err
		}},
		{"ListKeys", "GET", "/api/credentials/keys", func(c *Client) error {
			_, err := c.ListKeys(context.Background())
			return err
		}},
		{"DeactivateKey", "PUT", "/api/credentials/keys/abc/deactivate", func(c *Client) error {
			return c.DeactivateKey(context.Background(), "abc")
		}},
		{"ActivateKey", "PUT", "/api/credentials/keys/abc/activate", func(c *Client) error {
			return c.ActivateKey(context.Background(), "abc")
		}},
		{"DeleteKey", "DELETE", "/api/credentials/keys/abc", func(c *Client) error {
			return c.DeleteKey(context.Background(), "abc")
		}},
		{"Hello", "GET", "/api/hello_world/authenticated", func(c *Client) error {
			return c.Hello(context.Background())
		}},
	}
	statuses := []struct {
		status   int
		desc     any
		wantDesc string
		is       error
	}{
		{401, "Invalid API key", "Invalid API key", ErrUnauthorized},
		{404, "Key not found", "Key not found", ErrNotFound},
		{400, "Invalid name", "Invalid name", nil},
		{422, map[string]any{"name": []string{"Length must be between 1 and 128."}}, `{"name":["Length must be between 1 and 128."]}`, nil},
		{500, "boom", "boom", nil},
	}
	sentinels := []error{ErrNotFound, ErrUnauthorized, ErrRateLimited}
	for _, m := range methods {
		for _, st := range statuses {
			t.Run(m.name+"/"+http.StatusText(st.status), func(t *testing.T) {
				t.Parallel()
				f := newFake(t, func(w http.ResponseWriter, r *http.Request, _ int) {
					heronError(w, st.status, st.desc)
				})
				// No retries: this table is about mapping one answer, not about retrying.
				c := newTestClient(t, f.URL(), func(c *Config) { c.MaxRetries = 0 })
				err := m.call(c)
				ae := mustAPIError(t, err, st.status)
				if ae.Method != m.httpMethod || ae.Path != m.path || ae.Description != st.wantDesc || ae.Name != http.StatusText(st.status) {
					t.Fatalf("unexpected APIError %+v", ae)
				}
				for _, s := range sentinels {
					if got, want := errors.Is(err, s), s == st.is; got != want {
						t.Errorf("errors.Is(err, %v) = %v, want %v", s, got, want)
					}
				}
				contains(t, err.Error(), "heron: "+m.httpMethod+" "+m.path+": ")
				contains(t, err.Error(), st.wantDesc)
				if m.httpMethod == "POST" && st.status == 500 {
					if !errors.Is(err, ErrOutcomeUnknown) {
						t.Errorf("a 500 on the POST leaves the outcome unknown: %v", err)
					}
				}
				assertNoSecret(t, "error", err.Error())
				if n := len(f.requests()); n != 1 {
					t.Fatalf("want 1 request, got %v", f.seq())
				}
			})
		}
	}
}

func TestAPIErrorString(t *testing.T) {
	t.Parallel()
	e := &APIError{Method: "PUT", Path: "/api/credentials/keys/abc/deactivate", StatusCode: 404, Name: "Not Found", Description: "Key not found"}
	if got, want := e.Error(), "heron: PUT /api/credentials/keys/abc/deactivate: 404 Not Found: Key not found"; got != want {
		t.Fatalf("got %q, want %q", got, want)
	}
	// A non-JSON body (a proxy page, say) still yields a readable error.
	f := newFake(t, func(w http.ResponseWriter, r *http.Request, _ int) {
		w.WriteHeader(http.StatusBadGateway)
		_, _ = w.Write([]byte("upstream gone"))
	})
	err := newTestClient(t, f.URL(), func(c *Config) { c.MaxRetries = 0 }).Hello(context.Background())
	ae := mustAPIError(t, err, 502)
	if ae.Description != "upstream gone" || ae.Name != "" {
		t.Fatalf("unexpected %+v", ae)
	}
	contains(t, err.Error(), "502 Bad Gateway: upstream gone")
}

func TestUserAgent(t *testing.T) {
	t.Parallel()
	f := newFake(t, func(w http.ResponseWriter, r *http.Request, _ int) {
		writeJSON(w, http.StatusOK, map[string]any{"hello": "x"})
	})
	c := newTestClient(t, f.URL(), nil)
	noErr(t, c.Hello(context.Background()))
	noErr(t, c.Hello(Background(context.Background())))
	reqs := f.requests()
	if reqs[0].UserAgent != testUA || reqs[1].UserAgent != testUA+" (background)" {
		t.Fatalf("user agents: %q, %q", reqs[0].UserAgent, reqs[1].UserAgent)
	}
	if IsBackground(context.Background()) || !IsBackground(Background(context.Background())) {
		t.Fatal("IsBackground")
	}
}

func TestRetryOn5xxThenSuccess(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name, method, path string
		ok                 func(w http.ResponseWriter)
		call               func(c *Client) error
	}{
		{"GET", "GET", "/api/credentials/keys",
			func(w http.ResponseWriter) { writeJSON(w, 200, map[string]any{"keys": []any{}}) },
			func(c *Client) error { _, err := c.ListKeys(context.Background()); return err }},
		{"PUT", "PUT", "/api/credentials/keys/k1/deactivate",
			func(w http.ResponseWriter) { writeJSON(w, 200, map[string]any{"heron_id": "k1", "is_active": false}) },
			func(c *Client) error { return c.DeactivateKey(context.Background(), "k1") }},
		{"DELETE", "DELETE", "/api/credentials/keys/k1",
			func(w http.ResponseWriter) { w.WriteHeader(204) },
			func(c *Client) error { return c.DeleteKey(context.Background(), "k1") }},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			f := newFake(t, func(w http.ResponseWriter, r *http.Request, n int) {
				switch n {
				case 0:
					heronError(w, 500, "Internal Server Error")
				case 1:
					heronError(w, 503, "Service Unavailable")
				default:
					tt.ok(w)
				}
			})
			noErr(t, tt.call(newTestClient(t, f.URL(), nil)))
			want := tt.method + " " + tt.path
			equalSeq(t, f.seq(), want, want, want)
		})
	}
}

func TestNoRetryOn4xx(t *testing.T) {
	t.Parallel()
	for _, status := range []int{400, 401, 404, 409, 422} {
		t.Run(http.StatusText(status), func(t *testing.T) {
			t.Parallel()
			f := newFake(t, func(w http.ResponseWriter, r *http.Request, _ int) { heronError(w, status, "no") })
			c := newTestClient(t, f.URL(), nil)
			_, err := c.ListKeys(context.Background())
			mustAPIError(t, err, status)
			_, err = c.CreateKey(context.Background(), "n")
			mustAPIError(t, err, status)
			equalSeq(t, f.seq(), "GET /api/credentials/keys", "POST /api/credentials/keys")
		})
	}
}

func TestRetriesExhausted(t *testing.T) {
	t.Parallel()
	t.Run("500", func(t *testing.T) {
		t.Parallel()
		f := newFake(t, func(w http.ResponseWriter, r *http.Request, _ int) { heronError(w, 500, "down") })
		err := newTestClient(t, f.URL(), func(c *Config) { c.MaxRetries = 2 }).DeleteKey(context.Background(), "k")
		mustAPIError(t, err, 500)
		if len(f.requests()) != 3 {
			t.Fatalf("want 3 attempts, got %v", f.seq())
		}
	})
	t.Run("429", func(t *testing.T) {
		t.Parallel()
		f := newFake(t, func(w http.ResponseWriter, r *http.Request, _ int) {
			w.Header().Set("Retry-After", "0")
			heronError(w, 429, "500 per 1 minute")
		})
		_, err := newTestClient(t, f.URL(), func(c *Config) { c.MaxRetries = 2 }).ListKeys(context.Background())
		ae := mustAPIError(t, err, 429)
		if !errors.Is(err, ErrRateLimited) || ae.Description != "500 per 1 minute" {
			t.Fatalf("unexpected %v", err)
		}
		if len(f.requests()) != 3 {
			t.Fatalf("want 3 attempts, got %v", f.seq())
		}
	})
	t.Run("429 Retry-After past deadline", func(t *testing.T) {
		t.Parallel()
		f := newFake(t, func(w http.ResponseWriter, r *http.Request, _ int) {
			w.Header().Set("Retry-After", "30")
			heronError(w, 429, "500 per 1 minute")
		})
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		start := time.Now()
		_, err := newTestClient(t, f.URL(), nil).ListKeys(ctx)
		ae := mustAPIError(t, err, 429)
		if ae.RetryAfter != 30*time.Second || time.Since(start) > time.Second {
			t.Fatalf("want an immediate 429 with RetryAfter 30s, got %+v after %s", ae, time.Since(start))
		}
		if len(f.requests()) != 1 {
			t.Fatalf("want 1 attempt, got %v", f.seq())
		}
	})
}

func TestTransportErrorWrapped(t *testing.T) {
	t.Parallel()
	f := newFake(t, func(w http.ResponseWriter, r *http.Request, _ int) { hangUp(t, w) })
	_, err := newTestClient(t, f.URL(), func(c *Config) { c.MaxRetries = 1 }).ListKeys(context.Background())
	if err == nil {
		t.Fatal("want error")
	}
	var ae *APIError
	if errors.As(err, &ae) {
		t.Fatalf("transport error must not be an APIError: %v", err)
	}
	contains(t, err.Error(), "heron: GET /api/credentials/keys: giving up after 2 attempts: ")
	if strings.Contains(err.Error(), f.URL()) {
		t.Errorf("error repeats the URL: %v", err)
	}
	if len(f.requests()) != 2 {
		t.Fatalf("want 2 attempts, got %v", f.seq())
	}

	// A server that is not there at all.
	f.srv.Close()
	err = newTestClient(t, f.URL(), func(c *Config) { c.MaxRetries = 0 }).Hello(context.Background())
	if err == nil || !strings.HasPrefix(err.Error(), "heron: GET /api/hello_world/authenticated: ") {
		t.Fatalf("unexpected %v", err)
	}
}

func TestPerAttemptTimeout(t *testing.T) {
	t.Parallel()
	t.Run("slow attempt is retried", func(t *testing.T) {
		t.Parallel()
		f := newFake(t, func(w http.ResponseWriter, r *http.Request, n int) {
			if n == 0 {
				select {
				case <-r.Context().Done():
				case <-time.After(2 * time.Second):
				}
				return
			}
			writeJSON(w, 200, map[string]any{"keys": []any{}})
		})
		c := newTestClient(t, f.URL(), func(c *Config) { c.Timeout = 100 * time.Millisecond })
		_, err := c.ListKeys(context.Background())
		noErr(t, err)
		if len(f.requests()) != 2 {
			t.Fatalf("want 2 attempts, got %v", f.seq())
		}
	})
	t.Run("timeout error says so", func(t *testing.T) {
		t.Parallel()
		f := newFake(t, func(w http.ResponseWriter, r *http.Request, n int) { <-r.Context().Done() })
		c := newTestClient(t, f.URL(), func(c *Config) { c.Timeout = 50 * time.Millisecond; c.MaxRetries = 0 })
		err := c.Hello(context.Background())
		if !errors.Is(err, context.DeadlineExceeded) {
			t.Fatalf("want deadline exceeded, got %v", err)
		}
		contains(t, err.Error(), "no answer within 50ms")
	})
	t.Run("limiter wait does not count", func(t *testing.T) {
		t.Parallel()
		f := newFake(t, func(w http.ResponseWriter, r *http.Request, n int) {
			writeJSON(w, 200, map[string]any{"hello": "x"})
		})
		l := NewLimiter(6000)
		l.PauseFor(300 * time.Millisecond)
		c := newTestClient(t, f.URL(), func(c *Config) { c.Timeout = 100 * time.Millisecond; c.Limiter = l; c.MaxRetries = 0 })
		noErr(t, c.Hello(context.Background()))
	})
}

func TestRedirectNotFollowed(t *testing.T) {
	t.Parallel()
	var leaked atomic.Bool
	elsewhere := newFake(t, func(w http.ResponseWriter, r *http.Request, _ int) {
		leaked.Store(r.Header.Get("x-api-key") != "")
		writeJSON(w, 200, map[string]any{"hello": "x"})
	})
	f := newFake(t, func(w http.ResponseWriter, r *http.Request, _ int) {
		http.Redirect(w, r, elsewhere.URL()+"/steal", http.StatusFound)
	})
	err := newTestClient(t, f.URL(), nil).Hello(context.Background())
	mustAPIError(t, err, http.StatusFound)
	if leaked.Load() || len(elsewhere.requests()) != 0 {
		t.Fatal("redirect was followed")
	}
}

func TestCanceledContextStopsRetries(t *testing.T) {
	t.Parallel()
	ctx, cancel := context.WithCancel(context.Background())
	f := newFake(t, func(w http.ResponseWriter, r *http.Request, _ int) {
		cancel()
		heronError(w, 500, "down")
	})
	_, err := newTestClient(t, f.URL(), nil).ListKeys(ctx)
	if err == nil {
		t.Fatal("want error")
	}
	if len(f.requests()) != 1 {
		t.Fatalf("retried after cancel: %v", f.seq())
	}
}

func TestBackoff(t *testing.T) {
	t.Parallel()
	minW, maxW := 100*time.Millisecond, time.Second
	for attempt, step := range []time.Duration{100, 200, 400, 800, 1000, 1000} {
		step *= time.Millisecond
		if attempt == 5 {
			attempt = 40 // far past the cap: must not overflow
		}
		for range 50 {
			d := backoff(minW, maxW, attempt, nil)
			if d < step/2 || d > step {
				t.Fatalf("attempt %d: %s outside [%s, %s]", attempt, d, step/2, step)
			}
		}
	}
	resp := &http.Response{StatusCode: 429, Header: http.Header{"Retry-After": []string{"3"}}}
	if d := backoff(minW, maxW, 0, resp); d != 3*time.Second {
		t.Fatalf("Retry-After not honoured: %s", d)
	}
	date := time.Now().Add(5 * time.Second).UTC().Format(http.TimeFormat)
	resp = &http.Response{StatusCode: 503, Header: http.Header{"Retry-After": []string{date}}}
	if d := backoff(minW, maxW, 0, resp); d < 3*time.Second || d > 5*time.Second {
		t.Fatalf("HTTP-date Retry-After not honoured: %s", d)
	}
}

func BenchmarkCreateKey(b *testing.B) {
	body, _ := json.Marshal(createdKey("7f1c2b9e-1111-4a4a-9b9b-000000000001", "bench", testToken))
	// A bare server: the recording fake would grow with b.N and skew -benchmem.
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.Copy(io.Discard, r.Body)
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(http.StatusCreated)
		_, _ = w.Write(body)
	}))
	b.Cleanup(srv.Close)
	c := newTestClient(b, srv.URL, nil)
	ctx := context.Background()
	b.ReportAllocs()
	for b.Loop() {
		if _, err := c.CreateKey(ctx, "bench"); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkListKeys(b *testing.B) {
	keys := make([]any, 50)
	for i := range keys {
		keys[i] = listed("id", "vault-role-display-1700000000-abcdefgh")
	}
	body, _ := json.Marshal(map[string]any{"keys": keys})
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		_, _ = w.Write(body)
	}))
	b.Cleanup(srv.Close)
	c := newTestClient(b, srv.URL, nil)
	ctx := context.Background()
	b.ReportAllocs()
	for b.Loop() {
		if _, err := c.ListKeys(ctx); err != nil {
			b.Fatal(err)
		}
	}
}

func TestServerDate(t *testing.T) {
	t.Parallel()
	when := time.Date(2031, 2, 3, 4, 5, 6, 0, time.UTC)
	f := newFake(t, func(w http.ResponseWriter, r *http.Request, _ int) {
		w.Header().Set("Date", when.Format(http.TimeFormat))
		writeJSON(w, 200, map[string]any{"keys": []any{}})
	})
	c := newTestClient(t, f.URL(), nil)
	if !c.ServerDate().IsZero() {
		t.Fatal("no answer yet: zero")
	}
	_, err := c.ListKeys(context.Background())
	noErr(t, err)
	if got := c.ServerDate(); !got.Equal(when) {
		t.Fatalf("ServerDate = %v, want %v", got, when)
	}
}

// trackedConn records whether the client closed its side of a connection.
type trackedConn struct {
	net.Conn
	closed atomic.Bool
}

func (c *trackedConn) Close() error {
	c.closed.Store(true)
	return c.Conn.Close()
}

// A Client replaced after a config change is told to CloseIdleConnections: its
// pooled keep-alive connections must close then, not linger until the server
// times them out (one per replaced client, for as long as the plugin runs).
func TestCloseIdleConnectionsClosesPooledConnections(t *testing.T) {
	t.Parallel()
	var mu sync.Mutex
	open := map[net.Conn]bool{}
	srv := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		writeJSON(w, 200, map[string]any{"hello": "x"})
	}))
	srv.Config.ConnState = func(c net.Conn, s http.ConnState) {
		mu.Lock()
		defer mu.Unlock()
		switch s {
		case http.StateNew:
			open[c] = true
		case http.StateClosed, http.StateHijacked:
			delete(open, c)
		}
	}
	srv.Start()
	t.Cleanup(srv.Close)

	c := newTestClient(t, srv.URL, func(c *Config) { c.Limiter = NewLimiter(100000) })
	var dialed []*trackedConn
	base := c.http.Transport.(*attemptTransport).base.(*http.Transport)
	dial := base.DialContext
	base.DialContext = func(ctx context.Context, network, addr string) (net.Conn, error) {
		conn, err := dial(ctx, network, addr)
		if err != nil {
			return nil, err
		}
		tc := &trackedConn{Conn: conn}
		mu.Lock()
		dialed = append(dialed, tc)
		mu.Unlock()
		return tc, nil
	}

	// Reading an answer to its end puts the connection back in the pool
	// before the read returns, so after Hello it is idle there.
	noErr(t, c.Hello(context.Background()))
	noErr(t, c.Hello(context.Background()))
	mu.Lock()
	n, servers := len(dialed), len(open)
	mu.Unlock()
	if n != 1 || servers != 1 {
		t.Fatalf("two requests in a row: %d connections dialed, %d open at the server; want one kept alive", n, servers)
	}

	c.CloseIdleConnections()
	mu.Lock()
	defer mu.Unlock()
	for i, tc := range dialed {
		if !tc.closed.Load() {
			t.Errorf("connection %d still open after CloseIdleConnections", i)
		}
	}
}

// Every call that takes a key id refuses one that is not a plain path segment
// before anything is sent (it would name another resource: the collection,
// a parent, a sibling path), and sends a valid one as one escaped segment.
func TestKeyCallsRefuseIDsThatAreNotPathSegments(t *testing.T) {
	t.Parallel()
	f := newFake(t, func(w http.ResponseWriter, r *http.Request, _ int) {
		if r.Method == http.MethodDelete {
			w.WriteHeader(http.StatusNoContent)
			return
		}
		writeJSON(w, 200, map[string]any{"heron_id": "x", "is_active": true})
	})
	c := newTestClient(t, f.URL(), nil)
	calls := map[string]func(context.Context, string) error{
		"DeactivateKey": c.DeactivateKey,
		"ActivateKey":   c.ActivateKey,
		"DeleteKey":     c.DeleteKey,
	}
	for name, call := range calls {
		for _, id := range []string{"", ".", "..", "../keys", "a/b", "a/../b", "a b", "a\x00b", "a\nb", "%2e%2e", "a?b", "a#b", ".hidden", strings.Repeat("a", 129), "ключ"} {
			if err := call(context.Background(), id); err == nil || !strings.Contains(err.Error(), "key id") {
				t.Errorf("%s(%q) = %v, want a refusal naming the key id", name, id, err)
			}
		}
	}
	if got := f.seq(); len(got) != 0 {
		t.Fatalf("invalid ids reached the server: %v", got)
	}

	const id = "a:b@c+d=e~f-0_9.x"
	noErr(t, c.DeactivateKey(context.Background(), id))
	noErr(t, c.ActivateKey(context.Background(), id))
	noErr(t, c.DeleteKey(context.Background(), id))
	want := []string{
		"PUT " + keysPath + "/" + id + "/deactivate",
		"PUT " + keysPath + "/" + id + "/activate",
		"DELETE " + keysPath + "/" + id,
	}
	if got := f.seq(); strings.Join(got, "\n") != strings.Join(want, "\n") {
		t.Fatalf("requests %v, want %v", got, want)
	}
}

// A Date header outside the range accepted from Heron (2000..2199) is ignored:
// the engine measures Heron's clock offset from it, and the last good one stays.
func TestServerDateOutsideTheRangeIsIgnored(t *testing.T) {
	t.Parallel()
	good := time.Date(2026, 12, 6, 4, 5, 6, 0, time.UTC)
	dates := []string{
		good.Format(http.TimeFormat),
		"Sat, 01 Jan 2300 00:00:00 GMT",
		"Mon, 01 Jan 1990 00:00:00 GMT",
		"Fri, 31 Dec 9999 23:59:59 GMT",
		"Mon, 01 Jan 0001 00:00:00 GMT",
	}
	f := newFake(t, func(w http.ResponseWriter, r *http.Request, n int) {
		w.Header().Set("Date", dates[n])
		writeJSON(w, 200, map[string]any{"hello": "x"})
	})
	c := newTestClient(t, f.URL(), nil)
	for i := range dates {
		noErr(t, c.Hello(context.Background()))
		if got := c.ServerDate(); !got.Equal(good) {
			t.Fatalf("after Date %q: ServerDate %s, want the last good one %s", dates[i], got, good)
		}
	}
}

// A listed key's times are bounded like every time from Heron: created is
// documented on every key and must be within 2000..2199, last_used is null or
// within it. Anything else fails the list (it is not what Heron documents),
// rather than a key that looks created or used in 9999 (never "unused", never
// owned by a write-ahead record's window) or in year 1.
func TestListedKeyTimesOutsideTheRangeFailTheList(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name string
		key  map[string]any
		ok   bool
	}{
		{"as documented", map[string]any{"heron_id": "k1", "created": "2026-12-06T10:00:00Z", "last_used": "2026-12-06T11:00:00Z"}, true},
		{"never used", map[string]any{"heron_id": "k1", "created": "2026-12-06T10:00:00Z", "last_used": nil}, true},
		{"no created", map[string]any{"heron_id": "k1"}, false},
		{"created in year 1", map[string]any{"heron_id": "k1", "created": "0001-01-01T00:00:00Z"}, false},
		{"created before 2000", map[string]any{"heron_id": "k1", "created": "1999-12-31T23:59:59Z"}, false},
		{"created in 2200", map[string]any{"heron_id": "k1", "created": "2200-01-01T00:00:00Z"}, false},
		{"created in 9999", map[string]any{"heron_id": "k1", "created": "9999-12-31T23:59:59Z"}, false},
		{"last used in 1970", map[string]any{"heron_id": "k1", "created": "2026-12-06T10:00:00Z", "last_used": "1970-01-01T00:00:00Z"}, false},
		{"last used in 2250", map[string]any{"heron_id": "k1", "created": "2026-12-06T10:00:00Z", "last_used": "2250-01-01T00:00:00Z"}, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f := newFake(t, func(w http.ResponseWriter, r *http.Request, _ int) {
				writeJSON(w, 200, map[string]any{"keys": []any{tc.key}})
			})
			c := newTestClient(t, f.URL(), nil)
			keys, err := c.ListKeys(context.Background())
			if tc.ok {
				if err != nil || len(keys) != 1 {
					t.Fatalf("documented answer refused: %v", err)
				}
				return
			}
			if err == nil {
				t.Fatalf("accepted %v as %+v", tc.key, keys)
			}
			contains(t, err.Error(), "k1")
		})
	}
}

// A created key whose created/last_used times are out of range keeps its
// token (the key is real and valid) with those times read as unknown.
func TestCreatedKeyTimesOutsideTheRangeAreUnknown(t *testing.T) {
	t.Parallel()
	f := newFake(t, func(w http.ResponseWriter, r *http.Request, _ int) {
		k := createdKey("k1", "n", testToken)
		k["created"] = "9999-12-31T23:59:59Z"
		k["last_used"] = "0001-01-01T00:00:00Z"
		writeJSON(w, 201, k)
	})
	c := newTestClient(t, f.URL(), nil)
	k, err := c.CreateKey(context.Background(), "n")
	noErr(t, err)
	if k.Token != testToken || !k.Created.IsZero() || k.LastUsed != nil {
		t.Fatalf("created %s, last_used %v: want both unknown", k.Created, k.LastUsed)
	}
}
