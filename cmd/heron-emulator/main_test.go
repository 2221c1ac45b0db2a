package main

import (
	"bufio"
	"context"
	"encoding/json"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/heron-vault/vault-plugin-secrets-heron/herontest"
)

func TestEnvFlag(t *testing.T) {
	k1, k2 := herontest.NewKeyToken(), herontest.NewKeyToken()
	tests := []struct {
		name    string
		args    []string
		wantErr bool
		keys    map[string]int // env -> number of keys
	}{
		{"two envs", []string{"development=" + k1 + "," + k2, "production"}, false, map[string]int{"development": 2, "production": 1}},
		{"generated", []string{"staging="}, false, map[string]int{"staging": 1}},
		{"bad key", []string{"development=key_123"}, true, nil},
		{"uppercase key", []string{"development=" + strings.ToUpper(k1)}, true, nil},
		{"empty name", []string{"=" + k1}, true, nil},
		{"duplicate env", []string{"production", "production"}, true, nil},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			var e envFlag
			var err error
			for _, a := range tc.args {
				if err = e.Set(a); err != nil {
					break
				}
			}
			if (err != nil) != tc.wantErr {
				t.Fatalf("err = %v, wantErr %v", err, tc.wantErr)
			}
			if err != nil {
				if strings.Contains(err.Error(), k1) {
					t.Errorf("error echoes a whole key: %v", err)
				}
				return
			}
			for env, n := range tc.keys {
				if len(e.envs[env]) != n {
					t.Errorf("%s has %d keys, want %d", env, len(e.envs[env]), n)
				}
				for _, k := range e.envs[env] {
					if !herontest.ValidToken(k) {
						t.Errorf("key %q invalid", k)
					}
				}
			}
		})
	}
}

func TestRunServesAndShutsDown(t *testing.T) {
	key := herontest.NewKeyToken()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	outR, outW := io.Pipe()
	done := make(chan error, 1)
	go func() {
		done <- run(ctx, []string{"-listen", "127.0.0.1:0", "-env", "development=" + key, "-env", "production", "-rate-limit", "10", "-rate-limit-per-user", "7", "-quiet"}, outW, io.Discard)
		outW.Close()
	}()

	sc := bufio.NewScanner(outR)
	lines := map[string]string{}
	var url string
	for sc.Scan() {
		line := sc.Text()
		if u, ok := strings.CutPrefix(line, "listening on "); ok {
			url = u
			break
		}
		f := strings.Fields(line)
		if len(f) != 4 || f[0] != "env" || f[2] != "admin-keys" {
			t.Fatalf("unexpected line %q", line)
		}
		lines[f[1]] = f[3]
	}
	go func() { _, _ = io.Copy(io.Discard, outR) }()
	if url == "" || lines["development"] != key || !herontest.ValidToken(lines["production"]) {
		t.Fatalf("startup output: url %q envs %v", url, lines)
	}

	req, _ := http.NewRequest("GET", url+"/api/credentials/keys", nil)
	req.Header.Set("x-api-key", lines["production"])
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	// The per-user budget (7) is the stricter one, so the headers describe it.
	if resp.StatusCode != 200 || resp.Header.Get("X-RateLimit-Limit") != "7" {
		t.Errorf("list: %d limit %q", resp.StatusCode, resp.Header.Get("X-RateLimit-Limit"))
	}

	resp, err = http.Get(url + "/_emulator/keys")
	if err != nil {
		t.Fatal(err)
	}
	var keys []herontest.KeyRecord
	err = json.NewDecoder(resp.Body).Decode(&keys)
	resp.Body.Close()
	if err != nil || len(keys) != 2 {
		t.Errorf("control keys: %v %+v", err, keys)
	}

	resp, err = http.Get(url + "/_emulator/rate-limit")
	if err != nil {
		t.Fatal(err)
	}
	var limits map[string]int
	err = json.NewDecoder(resp.Body).Decode(&limits)
	resp.Body.Close()
	if err != nil || limits["per_minute"] != 10 || limits["per_user_per_minute"] != 7 {
		t.Errorf("rate limits: %v %v", err, limits)
	}

	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Errorf("run: %v", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("run did not return after cancel")
	}
	if _, err := http.Get(url + "/api/hello_world"); err == nil {
		t.Error("still serving after shutdown")
	}
}

func TestRunRejectsBadFlags(t *testing.T) {
	for _, args := range [][]string{
		{"-error-rate", "1.5"},
		{"-process-then-error-rate", "-0.1"},
		{"-latency", "-1s"},
		{"-env", "development=nope"},
		{"stray"},
		{"-listen", "256.0.0.1:1"},
	} {
		if err := run(context.Background(), args, io.Discard, io.Discard); err == nil {
			t.Errorf("run %v: no error", args)
		}
	}
}
