package heronapi

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"strings"
	"testing"
)

func postedName(r *http.Request) string {
	var in struct{ Name string }
	_ = json.NewDecoder(r.Body).Decode(&in)
	return in.Name
}

// TestCreateKeyUnknownOutcome: every answer after which Heron may hold the key
// comes back as ErrOutcomeUnknown after exactly one POST, with no lookup and
// no delete: only the caller knows which keys of that name are its own
// (spec invariant 3: names are not unique in Heron).
func TestCreateKeyUnknownOutcome(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name string
		post func(t *testing.T, w http.ResponseWriter)
		ctx  func() (context.Context, context.CancelFunc)
	}{
		{name: "500", post: func(t *testing.T, w http.ResponseWriter) { heronError(w, 500, "Internal Server Error") }},
		{name: "504 gateway page", post: func(t *testing.T, w http.ResponseWriter) {
			w.WriteHeader(504)
			_, _ = w.Write([]byte("<html>gateway timeout</html>"))
		}},
		{name: "dropped connection", post: func(t *testing.T, w http.ResponseWriter) { hangUp(t, w) }},
		{name: "truncated 201", post: func(t *testing.T, w http.ResponseWriter) {
			w.Header().Set("Content-Type", "application/json")
			w.WriteHeader(201)
			_, _ = w.Write([]byte(`{"heron_id": "lost-1", "tok`))
		}},
		{name: "200 instead of 201", post: func(t *testing.T, w http.ResponseWriter) {
			writeJSON(w, 200, map[string]any{})
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			f := newFake(t, func(w http.ResponseWriter, r *http.Request, _ int) { tt.post(t, w) })
			_, err := newTestClient(t, f.URL(), func(c *Config) { c.MaxRetries = 3 }).CreateKey(context.Background(), "n1")
			if !errors.Is(err, ErrOutcomeUnknown) {
				t.Fatalf("want ErrOutcomeUnknown, got %v", err)
			}
			assertNoSecret(t, "error", err.Error())
			equalSeq(t, f.seq(), "POST /api/credentials/keys")
		})
	}
	t.Run("canceled mid-request", func(t *testing.T) {
		t.Parallel()
		ctx, cancel := context.WithCancel(context.Background())
		f := newFake(t, func(w http.ResponseWriter, r *http.Request, _ int) {
			cancel()
			<-r.Context().Done()
		})
		_, err := newTestClient(t, f.URL(), nil).CreateKey(ctx, "n1")
		if !errors.Is(err, context.Canceled) || !errors.Is(err, ErrOutcomeUnknown) {
			t.Fatalf("want context.Canceled and ErrOutcomeUnknown, got %v", err)
		}
		equalSeq(t, f.seq(), "POST /api/credentials/keys")
	})
}

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

func TestCreateKeyNotProcessed(t *testing.T) {
	t.Parallel()
	t.Run("429 exhausted", func(t *testing.T) {
		t.Parallel()
		f := newFake(t, func(w http.ResponseWriter, r *http.Request, _ int) {
			w.Header().Set("Retry-After", "0")
			heronError(w, 429, "500 per 1 minute")
		})
		_, err := newTestClient(t, f.URL(), func(c *Config) { c.MaxRetries = 1 }).CreateKey(context.Background(), "n1")
		if !errors.Is(err, ErrRateLimited) || errors.Is(err, ErrOutcomeUnknown) {
			t.Fatalf("want a plain rate-limited error, got %v", err)
		}
		equalSeq(t, f.seq(), "POST /api/credentials/keys", "POST /api/credentials/keys")
	})
	for _, code := range []int{400, 401, 403, 422} {
		t.Run(fmt.Sprint(code), func(t *testing.T) {
			t.Parallel()
			f := newFake(t, func(w http.ResponseWriter, r *http.Request, _ int) { heronError(w, code, "no") })
			_, err := newTestClient(t, f.URL(), nil).CreateKey(context.Background(), "n1")
			mustAPIError(t, err, code)
			if errors.Is(err, ErrOutcomeUnknown) {
				t.Fatalf("a %d was not processed: %v", code, err)
			}
		})
	}
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
		if !errors.Is(err, ErrOutcomeUnknown) {
			t.Fatalf("want ErrOutcomeUnknown, got %v", err)
		}
		assertNoSecret(t, "error", err.Error())
		equalSeq(t, f.seq(), "POST /api/credentials/keys")
	})
	// Invariant 9 (a create answer for another name is not this key): a 201
	// for another name (a gateway replaying another creation's answer) is an
	// unknown outcome; its key, maybe another holder's, is neither returned
	// nor deleted. Likewise an answer without a name, or whose token_prefix
	// is not its token's.
	for _, tc := range []struct {
		name   string
		answer map[string]any
	}{
		{"another name", createdKey("k7", "vault-other-1", testToken)},
		{"no name", createdKey("k7", "", testToken)},
		{"token_prefix not the token's", func() map[string]any {
			k := createdKey("k7", "n", testToken)
			k["token_prefix"] = "key_ffff"
			return k
		}()},
	} {
		t.Run(tc.name+" is an unknown outcome", func(t *testing.T) {
			t.Parallel()
			f := newFake(t, func(w http.ResponseWriter, r *http.Request, _ int) { writeJSON(w, 201, tc.answer) })
			k, err := newTestClient(t, f.URL(), nil).CreateKey(context.Background(), "n")
			if k != nil || !errors.Is(err, ErrOutcomeUnknown) {
				t.Fatalf("want no key and ErrOutcomeUnknown, got %v, %v", k, err)
			}
			assertNoSecret(t, "error", err.Error())
			equalSeq(t, f.seq(), "POST /api/credentials/keys")
		})
	}
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
