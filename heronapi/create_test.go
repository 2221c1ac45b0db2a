package heronapi

import (
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
)

// keyStore is just enough of Heron to see which keys a recovery leaves behind.
type keyStore struct {
	mu   sync.Mutex
	keys map[string]string // id -> name
}

func (s *keyStore) add(id, name string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.keys == nil {
		s.keys = map[string]string{}
	}
	s.keys[id] = name
}

func (s *keyStore) list(w http.ResponseWriter) {
	s.mu.Lock()
	defer s.mu.Unlock()
	var out []any
	for id, name := range s.keys {
		out = append(out, listed(id, name))
	}
	writeJSON(w, http.StatusOK, map[string]any{"keys": out})
}

func (s *keyStore) delete(w http.ResponseWriter, id string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if _, ok := s.keys[id]; !ok {
		heronError(w, 404, "Key not found")
		return
	}
	delete(s.keys, id)
	w.WriteHeader(http.StatusNoContent)
}

func (s *keyStore) names() map[string]string {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := map[string]string{}
	for k, v := range s.keys {
		out[k] = v
	}
	return out
}

func postedName(r *http.Request) string {
	var in struct{ Name string }
	_ = json.NewDecoder(r.Body).Decode(&in)
	return in.Name
}

func TestCreateKeyRecovery(t *testing.T) {
	t.Parallel()
	const name = "vault-app-alice-1700000000-abcd1234"
	tests := []struct {
		name string
		// firstPost acts on the first POST after "creating" key lost-1.
		firstPost func(t *testing.T, w http.ResponseWriter)
		// deleteAnswer, if set, replaces the store's answer to the DELETE.
		deleteAnswer func(w http.ResponseWriter)
	}{
		{name: "after 500", firstPost: func(t *testing.T, w http.ResponseWriter) { heronError(w, 500, "Internal Server Error") }},
		{name: "after 502 proxy page", firstPost: func(t *testing.T, w http.ResponseWriter) {
			w.WriteHeader(502)
			_, _ = w.Write([]byte("<html>bad gateway</html>"))
		}},
		{name: "after dropped connection", firstPost: func(t *testing.T, w http.ResponseWriter) { hangUp(t, w) }},
		{name: "after truncated 201", firstPost: func(t *testing.T, w http.ResponseWriter) {
			w.Header().Set("Content-Type", "application/json")
			w.WriteHeader(201)
			_, _ = w.Write([]byte(`{"heron_id": "lost-1", "tok`))
		}},
		{name: "404 on the delete is fine",
			firstPost:    func(t *testing.T, w http.ResponseWriter) { heronError(w, 500, "Internal Server Error") },
			deleteAnswer: func(w http.ResponseWriter) { heronError(w, 404, "Key not found") }},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			store := &keyStore{}
			store.add("other-1", "someone-else")
			store.add("other-2", name+"-suffix") // prefix match must not count
			var posts atomic.Int32
			f := newFake(t, func(w http.ResponseWriter, r *http.Request, _ int) {
				switch {
				case r.Method == "POST":
					n := postedName(r)
					if posts.Add(1) == 1 {
						store.add("lost-1", n)
						tt.firstPost(t, w)
						return
					}
					store.add("new-2", n)
					writeJSON(w, 201, createdKey("new-2", n, testToken))
				case r.Method == "GET":
					store.list(w)
				case r.Method == "DELETE":
					id := strings.TrimPrefix(r.URL.Path, "/api/credentials/keys/")
					if tt.deleteAnswer != nil {
						store.delete(httptestDiscard{}, id)
						tt.deleteAnswer(w)
						return
					}
					store.delete(w, id)
				}
			})
			logger, logs := bufLogger()
			c := newTestClient(t, f.URL(), func(c *Config) { c.Logger = logger })
			k, err := c.CreateKey(context.Background(), name)
			noErr(t, err)
			if k.ID != "new-2" || k.Token != testToken || k.Name != name {
				t.Fatalf("unexpected key %+v", k)
			}
			equalSeq(t, f.seq(),
				"POST /api/credentials/keys",
				"GET /api/credentials/keys",
				"DELETE /api/credentials/keys/lost-1",
				"POST /api/credentials/keys")
			left := store.names()
			if _, ok := left["lost-1"]; ok || len(left) != 3 {
				t.Fatalf("keys left: %v", left)
			}
			contains(t, logs.String(), "lost-1")
			assertNoSecret(t, "logs", logs.String())
		})
	}
}

// httptestDiscard lets a test run the store's delete while answering something else.
type httptestDiscard struct{}

func (httptestDiscard) Header() http.Header         { return http.Header{} }
func (httptestDiscard) Write(p []byte) (int, error) { return len(p), nil }
func (httptestDiscard) WriteHeader(int)             {}

func TestCreateKey429IsResentWithoutLookup(t *testing.T) {
	t.Parallel()
	f := newFake(t, func(w http.ResponseWriter, r *http.Request, n int) {
		if n == 0 {
			w.Header().Set("Retry-After", "0")
			heronError(w, 429, "500 per 1 minute")
			return
		}
		writeJSON(w, 201, createdKey("k1", postedName(r), testToken))
	})
	k, err := newTestClient(t, f.URL(), nil).CreateKey(context.Background(), "n")
	noErr(t, err)
	if k.ID != "k1" {
		t.Fatalf("unexpected %+v", k)
	}
	equalSeq(t, f.seq(), "POST /api/credentials/keys", "POST /api/credentials/keys")
}

func TestCreateKeyGivesUp(t *testing.T) {
	t.Parallel()
	t.Run("after MaxRetries recoveries", func(t *testing.T) {
		t.Parallel()
		f := newFake(t, func(w http.ResponseWriter, r *http.Request, _ int) {
			if r.Method == "GET" {
				writeJSON(w, 200, map[string]any{"keys": []any{}})
				return
			}
			heronError(w, 500, "down")
		})
		_, err := newTestClient(t, f.URL(), func(c *Config) { c.MaxRetries = 2 }).CreateKey(context.Background(), "n1")
		mustAPIError(t, err, 500)
		contains(t, err.Error(), `a key named "n1" may exist`)
		equalSeq(t, f.seq(),
			"POST /api/credentials/keys", "GET /api/credentials/keys",
			"POST /api/credentials/keys", "GET /api/credentials/keys",
			"POST /api/credentials/keys")
	})
	t.Run("429s and recoveries share the budget", func(t *testing.T) {
		t.Parallel()
		f := newFake(t, func(w http.ResponseWriter, r *http.Request, n int) {
			switch {
			case r.Method == "GET":
				writeJSON(w, 200, map[string]any{"keys": []any{}})
			case n == 0:
				w.Header().Set("Retry-After", "0")
				heronError(w, 429, "500 per 1 minute")
			default:
				heronError(w, 500, "down")
			}
		})
		_, err := newTestClient(t, f.URL(), func(c *Config) { c.MaxRetries = 2 }).CreateKey(context.Background(), "n1")
		mustAPIError(t, err, 500)
		equalSeq(t, f.seq(),
			"POST /api/credentials/keys", "POST /api/credentials/keys",
			"GET /api/credentials/keys", "POST /api/credentials/keys")
	})
	t.Run("429 exhausted", func(t *testing.T) {
		t.Parallel()
		f := newFake(t, func(w http.ResponseWriter, r *http.Request, _ int) {
			w.Header().Set("Retry-After", "0")
			heronError(w, 429, "500 per 1 minute")
		})
		_, err := newTestClient(t, f.URL(), func(c *Config) { c.MaxRetries = 1 }).CreateKey(context.Background(), "n1")
		if !errors.Is(err, ErrRateLimited) || strings.Contains(err.Error(), "may exist") {
			t.Fatalf("want a plain rate-limited error, got %v", err)
		}
		equalSeq(t, f.seq(), "POST /api/credentials/keys", "POST /api/credentials/keys")
	})
	t.Run("lookup fails", func(t *testing.T) {
		t.Parallel()
		f := newFake(t, func(w http.ResponseWriter, r *http.Request, _ int) {
			if r.Method == "GET" {
				heronError(w, 401, "Invalid API key")
				return
			}
			heronError(w, 500, "down")
		})
		_, err := newTestClient(t, f.URL(), nil).CreateKey(context.Background(), "n1")
		if !errors.Is(err, ErrUnauthorized) {
			t.Fatalf("want the lookup's 401 wrapped, got %v", err)
		}
		contains(t, err.Error(), `a key named "n1" may exist`)
		equalSeq(t, f.seq(), "POST /api/credentials/keys", "GET /api/credentials/keys")
	})
	t.Run("canceled mid-request", func(t *testing.T) {
		t.Parallel()
		ctx, cancel := context.WithCancel(context.Background())
		f := newFake(t, func(w http.ResponseWriter, r *http.Request, _ int) {
			cancel()
			<-r.Context().Done()
		})
		_, err := newTestClient(t, f.URL(), nil).CreateKey(ctx, "n1")
		if !errors.Is(err, context.Canceled) {
			t.Fatalf("want context.Canceled, got %v", err)
		}
		contains(t, err.Error(), `a key named "n1" may exist`)
		equalSeq(t, f.seq(), "POST /api/credentials/keys")
	})
}

func TestCreateKeyValidatesAnswer(t *testing.T) {
	t.Parallel()
	t.Run("bad token is deleted again", func(t *testing.T) {
		t.Parallel()
		f := newFake(t, func(w http.ResponseWriter, r *http.Request, _ int) {
			if r.Method == "DELETE" {
				w.WriteHeader(204)
				return
			}
			k := createdKey("k9", "n", testToken)
			k["token"] = "key_NOTHEX"
			writeJSON(w, 201, k)
		})
		_, err := newTestClient(t, f.URL(), nil).CreateKey(context.Background(), "n")
		if err == nil {
			t.Fatal("want error")
		}
		contains(t, err.Error(), "no valid token")
		equalSeq(t, f.seq(), "POST /api/credentials/keys", "DELETE /api/credentials/keys/k9")
	})
	t.Run("no heron_id", func(t *testing.T) {
		t.Parallel()
		f := newFake(t, func(w http.ResponseWriter, r *http.Request, _ int) {
			k := createdKey("", "n", testToken)
			writeJSON(w, 201, k)
		})
		_, err := newTestClient(t, f.URL(), nil).CreateKey(context.Background(), "n")
		if err == nil {
			t.Fatal("want error")
		}
		contains(t, err.Error(), `a key named "n" may exist`)
		assertNoSecret(t, "error", err.Error())
		equalSeq(t, f.seq(), "POST /api/credentials/keys")
	})
	t.Run("name length checked before any request", func(t *testing.T) {
		t.Parallel()
		f := newFake(t, func(w http.ResponseWriter, r *http.Request, _ int) { heronError(w, 400, "Invalid name") })
		c := newTestClient(t, f.URL(), nil)
		for _, n := range []string{"", strings.Repeat("é", 129)} {
			if _, err := c.CreateKey(context.Background(), n); err == nil {
				t.Errorf("name of %d runes accepted", len([]rune(n)))
			}
		}
		// 128 runes (256 bytes) is within Heron's limit, so it does go out.
		_, err := c.CreateKey(context.Background(), strings.Repeat("é", 128))
		mustAPIError(t, err, 400)
		equalSeq(t, f.seq(), "POST /api/credentials/keys")
	})
}
