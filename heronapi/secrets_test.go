package heronapi

import (
	"context"
	"net/http"
	"strings"
	"sync/atomic"
	"testing"
	"time"
)

// TestSecretsNeverLeak drives every failure path with a logger at its most verbose
// and checks that neither the API key nor a created token shows up anywhere.
func TestSecretsNeverLeak(t *testing.T) {
	t.Parallel()
	logger, logs := bufLogger()
	var errs []error
	collect := func(err error) {
		if err != nil {
			errs = append(errs, err)
		}
	}
	mod := func(c *Config) { c.Logger = logger; c.MaxRetries = 1 }

	// A server that echoes the key back in its errors, as a broken proxy might.
	echo := newFake(t, func(w http.ResponseWriter, r *http.Request, _ int) {
		heronError(w, 401, "unknown key "+r.Header.Get("x-api-key"))
	})
	c := newTestClient(t, echo.URL(), mod)
	_, err := c.ListKeys(context.Background())
	collect(err)
	mustAPIError(t, err, 401)
	_, err = c.CreateKey(context.Background(), "n")
	collect(err)
	echoText := newFake(t, func(w http.ResponseWriter, r *http.Request, _ int) {
		w.WriteHeader(500)
		_, _ = w.Write([]byte("bad key " + r.Header.Get("x-api-key")))
	})
	collect(newTestClient(t, echoText.URL(), mod).Hello(context.Background()))

	// A lost response, then a successful create.
	var posts atomic.Int32
	recov := newFake(t, func(w http.ResponseWriter, r *http.Request, _ int) {
		switch r.Method {
		case "POST":
			if posts.Add(1)%2 == 1 {
				hangUp(t, w)
				return
			}
			writeJSON(w, 201, createdKey("k2", postedName(r), testToken))
		case "GET":
			writeJSON(w, 200, map[string]any{"keys": []any{listed("k1", "n")}})
		case "DELETE":
			w.WriteHeader(204)
		}
	})
	c = newTestClient(t, recov.URL(), mod)
	_, err = c.CreateKey(context.Background(), "n")
	collect(err)
	k, err := c.CreateKey(context.Background(), "n")
	noErr(t, err)
	if k.Token != testToken {
		t.Fatal("token not returned")
	}

	// A proxy page that echoes the key past the length errors are cut to: the
	// cut must not leave most of the key behind (spec "Observability": never
	// a token or admin key in what the engine logs or answers).
	for _, pad := range []int{200, 230, 250, 255} {
		long := newFake(t, func(w http.ResponseWriter, r *http.Request, _ int) {
			w.WriteHeader(502)
			_, _ = w.Write([]byte(strings.Repeat("x", pad) + " x-api-key: " + r.Header.Get("x-api-key") + " end"))
		})
		_, err := newTestClient(t, long.URL(), func(c *Config) { mod(c); c.MaxRetries = 0 }).ListKeys(context.Background())
		collect(err)
		if strings.Contains(err.Error(), testKey[:12]) {
			t.Fatalf("pad %d: error keeps part of the key: %v", pad, err)
		}
	}

	// Transport errors and limiter refusals.
	dead := newFake(t, func(w http.ResponseWriter, r *http.Request, _ int) {})
	dead.srv.Close()
	collect(newTestClient(t, dead.URL(), mod).DeleteKey(context.Background(), "k"))
	l := NewLimiter(1)
	l.PauseFor(time.Hour)
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	collect(newTestClient(t, recov.URL(), func(c *Config) { mod(c); c.Limiter = l }).DeactivateKey(ctx, "k"))

	// Bad config.
	_, err = New(Config{BaseURL: "ftp://x", APIKey: testKey})
	collect(err)
	_, err = New(Config{BaseURL: "https://x", APIKey: testKey + " "})
	collect(err)

	if len(errs) != 12 {
		t.Fatalf("expected 12 errors, got %d: %v", len(errs), errs)
	}
	for _, err := range errs {
		assertNoSecret(t, "error", err.Error())
	}
	out := logs.String()
	if out == "" {
		t.Fatal("nothing was logged; the log check would be vacuous")
	}
	assertNoSecret(t, "logs", out)
}
