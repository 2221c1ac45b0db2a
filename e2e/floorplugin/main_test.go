package main

import (
	"context"
	"io"
	"testing"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/hashicorp/vault/sdk/logical"

	"github.com/heron-vault/vault-plugin-secrets-heron/herontest"
)

// BenchmarkFloorIssue is the floor's issuance in process, the counterpart of
// the engine's BenchmarkIssueCreds (bench_test.go): in-memory storage, the
// emulator over loopback, no Vault in front. Their CPU profiles side by side
// say what the engine's own work is:
//
//	go test -run '^$' -bench 'IssueCreds$' -cpuprofile /tmp/engine.prof .
//	go test -run '^$' -bench FloorIssue -cpuprofile /tmp/floor.prof ./e2e/floorplugin
func BenchmarkFloorIssue(b *testing.B) {
	admin := herontest.NewKeyToken()
	srv := herontest.NewServer(herontest.Options{
		Environments:       map[string][]string{"development": {admin}},
		RateLimitPerMinute: -1,
	})
	b.Cleanup(srv.Close)
	conf := logical.TestBackendConfig()
	s := &logical.InmemStorage{}
	conf.StorageView = s
	conf.Logger = hclog.New(&hclog.LoggerOptions{Level: hclog.Info, Output: io.Discard, JSONFormat: true})
	conf.System = &logical.StaticSystemView{DefaultLeaseTTLVal: time.Hour, MaxLeaseTTLVal: 24 * time.Hour}
	be, err := factory(context.Background(), conf)
	if err != nil {
		b.Fatal(err)
	}
	ctx := context.Background()
	do := func(op logical.Operation, path string, data map[string]any) *logical.Response {
		resp, err := be.HandleRequest(ctx, &logical.Request{Operation: op, Path: path, Data: data, Storage: s, DisplayName: "token-bench"})
		if err == nil && resp != nil && resp.IsError() {
			err = resp.Error()
		}
		if err != nil {
			b.Fatalf("%s %s: %v", op, path, err)
		}
		return resp
	}
	do(logical.UpdateOperation, "config", map[string]any{"url": srv.URL, "admin_api_key": admin})
	do(logical.UpdateOperation, "roles/bench", map[string]any{"environment": "development", "ttl": 3600})
	do(logical.ReadOperation, "creds/bench", nil) // warm the connection
	b.ReportAllocs()
	for b.Loop() {
		if resp := do(logical.ReadOperation, "creds/bench", nil); resp.Secret == nil {
			b.Fatal("no lease")
		}
	}
}
