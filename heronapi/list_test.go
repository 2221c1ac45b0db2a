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
	"runtime"
	"strings"
	"sync/atomic"
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
// with a heron_id on every key that is a plain path segment and its times in
// the range accepted from Heron, and then answers
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
	f.Add([]byte(`{"keys": [{"heron_id": "x", "created": "2026-01-01T00:00:00Z"}]}`))
	f.Add([]byte(`{"keys": [{"heron_id": "x", "created": "9999-01-01T00:00:00Z"}]}`))
	f.Add([]byte(`{"keys": [{"heron_id": "x", "created": "2026-01-01T00:00:00Z", "last_used": "1970-01-01T00:00:00Z"}]}`))
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
				if checkListedKey(k) != nil {
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

// What a list makes its caller hold stays a small multiple of the answer,
// whatever its keys look like: the smallest key accepted (an id and a created
// time, some 50 bytes) costs a Key of some 100 bytes; keys without an id
// (`{}`, 3 bytes each) or without created (`{"heron_id":"a"}`) fail the list.
func TestListKeysHoldsASmallMultipleOfTheAnswer(t *testing.T) {
	const n = 200_000
	minimal := `{"heron_id":"a","created":"2026-12-06T00:00:00Z"}`
	body := `{"keys":[` + strings.Repeat(minimal+",", n-1) + minimal + `]}`
	var serve atomic.Value
	serve.Store(body)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		io.WriteString(w, serve.Load().(string))
	}))
	t.Cleanup(srv.Close)
	c, err := New(Config{BaseURL: srv.URL, APIKey: testKey, Timeout: time.Minute})
	require.NoError(t, err)
	before := heapAfterGC()
	keys, err := c.ListKeys(context.Background())
	held := int64(heapAfterGC()) - int64(before)
	runtime.KeepAlive(keys)
	require.NoError(t, err)
	require.Len(t, keys, n)
	if limit := int64(6 * len(body)); held > limit {
		t.Fatalf("a %d-byte answer of %d minimal keys made ListKeys hold %d bytes (%.1fx)", len(body), n, held, float64(held)/float64(len(body)))
	}
	t.Logf("%d-byte answer, %d bytes held (%.1fx)", len(body), held, float64(held)/float64(len(body)))

	for _, k := range []string{`{}`, `{"heron_id":"a"}`} {
		serve.Store(`{"keys":[` + strings.Repeat(k+",", n-1) + k + `]}`)
		_, err := c.ListKeys(context.Background())
		require.Error(t, err, "a list of %s", k)
	}
}

// The number of keys a list may hold is bounded, however small they are.
func TestListKeysRefusesMoreThanMaxListKeys(t *testing.T) {
	defer func(old int) { maxListKeys = old }(maxListKeys)
	maxListKeys = 1000
	for _, tc := range []struct {
		n  int
		ok bool
	}{{1000, true}, {1001, false}} {
		srv := listServer(t, tc.n)
		c, err := New(Config{BaseURL: srv.URL, APIKey: testKey})
		require.NoError(t, err)
		keys, err := c.ListKeys(context.Background())
		if tc.ok {
			require.NoError(t, err)
			require.Len(t, keys, tc.n)
			continue
		}
		require.ErrorContains(t, err, "more than 1000 keys")
		err = c.EachKey(context.Background(), func(Key) {})
		require.ErrorContains(t, err, "more than 1000 keys", "EachKey follows the same rule")
	}
}

func heapAfterGC() uint64 {
	runtime.GC()
	runtime.GC()
	var m runtime.MemStats
	runtime.ReadMemStats(&m)
	return m.HeapAlloc
}
