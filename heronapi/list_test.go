package heronapi

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// listServer answers GET /api/credentials/keys with n keys, written as a
// stream (the answer is never built whole on this side either).
func listServer(t *testing.T, n int) *httptest.Server {
	t.Helper()
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		io.WriteString(w, `{"keys": [`)
		for i := range n {
			if i > 0 {
				io.WriteString(w, ",")
			}
			fmt.Fprintf(w, `{"heron_id": "id-%07d", "name": "vault-app-token-%07d", "token_prefix": "key_ab12", "created": "2026-12-05T03:00:00Z", "is_active": true, "last_used": null}`, i, i)
		}
		io.WriteString(w, `], "next": null}`)
	}))
	t.Cleanup(srv.Close)
	return srv
}

// An answer larger than the 16 MiB the client once buffered whole (here
// 17 MiB of a field the client does not read, and 1,000 keys) is read as a
// stream: accepted, and every key decoded.
func TestListKeys_LargeAnswerIsStreamed(t *testing.T) {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		io.WriteString(w, `{"padding": "`)
		chunk := strings.Repeat("x", 1<<20)
		for range 17 {
			io.WriteString(w, chunk)
		}
		io.WriteString(w, `", "keys": [`)
		for i := range 1000 {
			if i > 0 {
				io.WriteString(w, ",")
			}
			fmt.Fprintf(w, `{"heron_id": "id-%07d", "name": "n", "token_prefix": "key_ab12", "created": "2026-12-05T03:00:00Z", "is_active": true, "last_used": null}`, i)
		}
		io.WriteString(w, `]}`)
	}))
	t.Cleanup(srv.Close)
	// The per-attempt timeout covers reading the answer: generous, for -race
	// on a loaded machine.
	c, err := New(Config{BaseURL: srv.URL, APIKey: "key_" + strings.Repeat("a", 48), Limiter: NewLimiter(1000), Timeout: 5 * time.Minute})
	require.NoError(t, err)
	keys, err := c.ListKeys(context.Background())
	require.NoError(t, err)
	require.Len(t, keys, 1000)
	require.Equal(t, "id-0000999", keys[999].ID)
	require.Nil(t, keys[0].LastUsed)
	require.Equal(t, time.Date(2026, 12, 5, 3, 0, 0, 0, time.UTC), keys[0].Created)
}

func TestListKeys_AnswerOverTheBoundFails(t *testing.T) {
	defer func(old int64) { maxListBytes = old }(maxListBytes)
	maxListBytes = 1 << 20
	srv := listServer(t, 20000) // about 3 MB
	c, err := New(Config{BaseURL: srv.URL, APIKey: "key_" + strings.Repeat("a", 48), Limiter: NewLimiter(1000)})
	require.NoError(t, err)
	_, err = c.ListKeys(context.Background())
	require.ErrorContains(t, err, "answer larger than 1048576 bytes")
}

// decodeKeyList accepts exactly the answers Heron documents, {"keys": [...]}
// with a heron_id on every key that is a plain path segment, and then answers
// what json.Unmarshal answers. Everything else is an error, never an empty
// list (spec, Invariants 9: an empty or missing list is not "no keys"): a
// body of null, an object without a keys array, "keys": null, a key without
// a usable id.
func FuzzDecodeKeyList(f *testing.F) {
	f.Add([]byte(`{"keys": []}`))
	f.Add([]byte(`{"keys": null}`))
	f.Add([]byte(`null`))
	f.Add([]byte(`{}`))
	f.Add([]byte(`{"keys": [{}]}`))
	f.Add([]byte(`{"keys": [{"heron_id": ".."}]}`))
	f.Add([]byte(`{"keys": [{"heron_id": "a/b"}]}`))
	f.Add([]byte(`{"other": {"a": [1, 2]}, "keys": [{"heron_id": "x", "name": "n", "created": "2026-01-01T00:00:00Z", "last_used": "2026-01-02T00:00:00Z"}]}`))
	f.Add([]byte(`{"keys": [{"heron_id": 1}]}`))
	f.Add([]byte(`{"keys": [], "KEYS": [{"heron_id": "x"}]}`))
	f.Add([]byte(`[]`))
	f.Fuzz(func(t *testing.T, data []byte) {
		got := []Key{}
		err := decodeKeyList(bytes.NewReader(data), func(k Key) { got = append(got, k) }, func() { got = got[:0] })
		var want struct {
			Keys *[]Key `json:"keys"`
		}
		if werr := json.Unmarshal(data, &want); werr != nil {
			// The stream may stop before a flaw that Unmarshal sees anywhere;
			// only a success where the keys themselves are malformed is wrong.
			if err == nil && !json.Valid(data) {
				t.Fatalf("decodeKeyList accepted invalid JSON %q", data)
			}
			return
		}
		documented := want.Keys != nil && *want.Keys != nil
		if documented {
			for _, k := range *want.Keys {
				if !ValidKeyID(k.ID) {
					documented = false
				}
			}
		}
		if !documented {
			if err == nil {
				t.Fatalf("decodeKeyList accepted %q, which is not a list of keys with ids, as %+v", data, got)
			}
			return
		}
		if err != nil {
			t.Fatalf("decodeKeyList failed on a documented answer: %v", err)
		}
		if !reflect.DeepEqual(got, *want.Keys) {
			t.Fatalf("decodeKeyList = %+v, json.Unmarshal = %+v", got, *want.Keys)
		}
	})
}
