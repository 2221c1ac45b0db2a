// Command floorplugin is the benchmark's floor: a Vault secrets plugin, built
// from the same Vault SDK as the Heron engine (this module's go.mod), that
// issues a leased Heron key doing only what any such plugin must do, and
// nothing else:
//
//   - one storage read (the role);
//   - one storage write before the POST (a creation record, the size of the
//     engine's write-ahead record, about 190 bytes, node-local like the
//     engine's) and one after it (the key's record, about 670 bytes, the size of
//     the engine's);
//   - one POST /api/credentials/keys to Heron over plain net/http with
//     keep-alive;
//   - a lease of the engine's shape: the same data fields, the same internal
//     data, the role's ttl, renewable.
//
// What it leaves out is what the benchmark compares it with: the engine's name
// template, its limiter and retrying client, its locks and caches, the replay
// check of the created key, its event and its log line. BenchmarkEngine
// (e2e/bench_engine_test.go) builds it into the plugin directory and mounts it
// at floor/ beside heron/. It is never part of the engine's plugin binary.
//
// Paths: config (write: url, admin_api_key), roles/<name> (write: ttl,
// environment), creds/<name> (read), and calls/<name> (read): the floor's
// issuance plus the calls to Vault the engine's issuance makes beyond the
// floor's, and none of its code: MaxLeaseTTL (framework.CalculateTTL), asked
// beside the POST as the engine asks it, a storage read of the new key's
// record after the POST (the engine's replay check), one info log line and
// one event sent beside the answer (its field do, a comma-separated subset of
// maxttl, get, log, event, picks some of them; all by default). The engine
// no longer makes a LocalMount call per issuance (it keeps the answer a few
// seconds), so neither does this path.
// The benchmark reads it to tell the cost of those round trips from that of
// the engine's own code. A revocation deletes the key
// in Heron and its record; a renewal extends the lease.
package main

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/hashicorp/vault/api"
	"github.com/hashicorp/vault/sdk/framework"
	"github.com/hashicorp/vault/sdk/logical"
	"github.com/hashicorp/vault/sdk/plugin"
)

func main() {
	meta := &api.PluginAPIClientMeta{}
	flags := meta.FlagSet()
	if err := flags.Parse(os.Args[1:]); err != nil {
		fatal(err)
	}
	if err := plugin.ServeMultiplex(&plugin.ServeOpts{
		BackendFactoryFunc: factory,
		TLSProviderFunc:    api.VaultPluginTLSProvider(meta.GetTLSConfig()),
	}); err != nil {
		fatal(err)
	}
}

func fatal(err error) {
	hclog.New(&hclog.LoggerOptions{}).Error("floor plugin shutting down", "error", err)
	os.Exit(1)
}

const secretType = "heron_api_key"

type backend struct {
	*framework.Backend
	instance string
	slot     atomic.Uint64
	http     *http.Client

	mu  sync.RWMutex
	cfg *config // cached on write and on first use, as the engine caches its client
}

type config struct {
	URL      string `json:"url"`
	AdminKey string `json:"admin_api_key"`
}

// role has the engine's role fields, so that its storage entry is the size
// of the engine's (about 170 bytes).
type role struct {
	Name                string        `json:"name"`
	Environment         string        `json:"environment"`
	TTL                 time.Duration `json:"ttl"`
	MaxTTL              time.Duration `json:"max_ttl"`
	NameTemplate        string        `json:"name_template"`
	Description         string        `json:"description"`
	MaxActiveKeys       int           `json:"max_active_keys"`
	ExpiredKeyRetention time.Duration `json:"expired_key_retention"`
}

// creation is written before the POST, as the engine's write-ahead record
// (about 190 bytes).
type creation struct {
	Kind  string `json:"kind"`
	Entry struct {
		Environment string    `json:"environment"`
		Role        string    `json:"role"`
		KeyName     string    `json:"key_name"`
		Since       time.Time `json:"since"`
		OffsetKnown bool      `json:"offset_known"`
	} `json:"entry"`
}

// record is the key's record, with the engine's fields (about 670 bytes).
type record struct {
	KeyID               string        `json:"key_id"`
	KeyName             string        `json:"key_name"`
	TokenPrefix         string        `json:"token_prefix"`
	Environment         string        `json:"environment"`
	Role                string        `json:"role"`
	State               string        `json:"state"`
	Issued              time.Time     `json:"issued"`
	Expires             time.Time     `json:"expires"`
	ExpiredKeyRetention time.Duration `json:"expired_key_retention"`
	DeactivatedAt       time.Time     `json:"deactivated_at"`
	DeleteAfter         time.Time     `json:"delete_after"`
	LastRenewed         time.Time     `json:"last_renewed"`
	DeletedAt           time.Time     `json:"deleted_at"`
	NoIndex             bool          `json:"no_index"`
	DisplayName         string        `json:"display_name"`
	TokenHMAC           string        `json:"token_hmac"`
	QuarantinedAt       time.Time     `json:"quarantined_at"`
	ActivatedAt         time.Time     `json:"activated_at"`
}

func factory(ctx context.Context, conf *logical.BackendConfig) (logical.Backend, error) {
	var id [8]byte
	_, _ = rand.Read(id[:])
	b := &backend{
		instance: hex.EncodeToString(id[:]),
		http: &http.Client{
			Transport: &http.Transport{MaxIdleConns: 256, MaxIdleConnsPerHost: 128, IdleConnTimeout: 90 * time.Second},
			Timeout:   30 * time.Second,
		},
	}
	b.Backend = &framework.Backend{
		BackendType: logical.TypeLogical,
		Help:        "The Heron benchmark's floor: a leased Heron key, nothing else.",
		PathsSpecial: &logical.Paths{
			LocalStorage: []string{"creating/"},
		},
		Paths: []*framework.Path{
			{
				Pattern: "config$",
				Fields: map[string]*framework.FieldSchema{
					"url":           {Type: framework.TypeString},
					"admin_api_key": {Type: framework.TypeString},
				},
				Operations: map[logical.Operation]framework.OperationHandler{
					logical.UpdateOperation: &framework.PathOperation{Callback: b.configWrite},
					logical.CreateOperation: &framework.PathOperation{Callback: b.configWrite},
				},
				ExistenceCheck: func(context.Context, *logical.Request, *framework.FieldData) (bool, error) { return false, nil },
			},
			{
				Pattern: "roles/" + framework.GenericNameRegex("name") + "$",
				Fields: map[string]*framework.FieldSchema{
					"name":        {Type: framework.TypeString},
					"environment": {Type: framework.TypeString, Default: "development"},
					"ttl":         {Type: framework.TypeDurationSecond, Default: 3600},
				},
				Operations: map[logical.Operation]framework.OperationHandler{
					logical.UpdateOperation: &framework.PathOperation{Callback: b.roleWrite},
					logical.CreateOperation: &framework.PathOperation{Callback: b.roleWrite},
				},
				ExistenceCheck: func(context.Context, *logical.Request, *framework.FieldData) (bool, error) { return false, nil },
			},
			{
				Pattern: "creds/" + framework.GenericNameRegex("name") + "$",
				Fields:  map[string]*framework.FieldSchema{"name": {Type: framework.TypeString}},
				Operations: map[logical.Operation]framework.OperationHandler{
					logical.ReadOperation: &framework.PathOperation{Callback: b.credsRead},
				},
			},
			{
				Pattern: "calls/" + framework.GenericNameRegex("name") + "$",
				Fields: map[string]*framework.FieldSchema{
					"name": {Type: framework.TypeString},
					"do":   {Type: framework.TypeCommaStringSlice, Default: allCalls},
				},
				Operations: map[logical.Operation]framework.OperationHandler{
					// No ForwardPerformance* flags: the handler asks LocalMount
					// itself, when told to, as the SDK does for the engine.
					logical.ReadOperation: &framework.PathOperation{Callback: b.callsRead},
				},
			},
		},
		Secrets: []*framework.Secret{{
			Type: secretType,
			Fields: map[string]*framework.FieldSchema{
				"api_key": {Type: framework.TypeString},
			},
			Renew:  b.renew,
			Revoke: b.revoke,
		}},
	}
	if err := b.Setup(ctx, conf); err != nil {
		return nil, err
	}
	return b, nil
}

func (b *backend) configWrite(ctx context.Context, req *logical.Request, d *framework.FieldData) (*logical.Response, error) {
	c := &config{URL: d.Get("url").(string), AdminKey: d.Get("admin_api_key").(string)}
	e, err := logical.StorageEntryJSON("config", c)
	if err != nil {
		return nil, err
	}
	if err := req.Storage.Put(ctx, e); err != nil {
		return nil, err
	}
	b.mu.Lock()
	b.cfg = c
	b.mu.Unlock()
	return nil, nil
}

func (b *backend) config(ctx context.Context, s logical.Storage) (*config, error) {
	b.mu.RLock()
	c := b.cfg
	b.mu.RUnlock()
	if c != nil {
		return c, nil
	}
	e, err := s.Get(ctx, "config")
	if err != nil || e == nil {
		return nil, errors.Join(errors.New("floor: no config"), err)
	}
	c = &config{}
	if err := e.DecodeJSON(c); err != nil {
		return nil, err
	}
	b.mu.Lock()
	b.cfg = c
	b.mu.Unlock()
	return c, nil
}

func (b *backend) roleWrite(ctx context.Context, req *logical.Request, d *framework.FieldData) (*logical.Response, error) {
	r := &role{
		Name:                d.Get("name").(string),
		Environment:         d.Get("environment").(string),
		TTL:                 time.Duration(d.Get("ttl").(int)) * time.Second,
		ExpiredKeyRetention: 72 * time.Hour,
	}
	e, err := logical.StorageEntryJSON("roles/"+r.Name, r)
	if err != nil {
		return nil, err
	}
	return nil, req.Storage.Put(ctx, e)
}

func (b *backend) credsRead(ctx context.Context, req *logical.Request, d *framework.FieldData) (*logical.Response, error) {
	return b.issue(ctx, req, d.Get("name").(string), nil)
}

// allCalls are the engine's calls to Vault beyond the floor's.
var allCalls = []string{"maxttl", "get", "log", "event"}

// callsRead is credsRead with (some of) the engine's further calls to Vault.
func (b *backend) callsRead(ctx context.Context, req *logical.Request, d *framework.FieldData) (*logical.Response, error) {
	calls := map[string]bool{}
	for _, c := range d.Get("do").([]string) {
		if !slices.Contains(allCalls, c) {
			return logical.ErrorResponse("do: %q is none of %v", c, allCalls), nil
		}
		calls[c] = true
	}
	return b.issue(ctx, req, d.Get("name").(string), calls)
}

func (b *backend) issue(ctx context.Context, req *logical.Request, name string, calls map[string]bool) (*logical.Response, error) {
	// 1. The role: one storage read.
	e, err := req.Storage.Get(ctx, "roles/"+name)
	if err != nil {
		return nil, err
	}
	if e == nil {
		return logical.ErrorResponse("unknown role %q", name), nil
	}
	var r role
	if err := e.DecodeJSON(&r); err != nil {
		return nil, err
	}
	cfg, err := b.config(ctx, req.Storage)
	if err != nil {
		return nil, err
	}
	maxTTL := make(chan struct{})
	if calls["maxttl"] {
		// framework.CalculateTTL's call, beside the POST as in the engine.
		go func() {
			defer close(maxTTL)
			_ = b.System().MaxLeaseTTL()
		}()
	} else {
		close(maxTTL)
	}

	// 2. A record of the creation before the POST, in a slot the slot's
	// next creation overwrites.
	var c creation
	c.Kind = secretType
	c.Entry.Environment, c.Entry.Role, c.Entry.Since, c.Entry.OffsetKnown = r.Environment, r.Name, time.Now(), true
	var rnd [6]byte
	_, _ = rand.Read(rnd[:])
	c.Entry.KeyName = "vault-" + r.Name + "-" + req.DisplayName + "-" + strconv.FormatInt(c.Entry.Since.Unix(), 10) + "-" + hex.EncodeToString(rnd[:])[:8]
	slot := "creating/" + b.instance + "." + strconv.FormatUint(b.slot.Add(1)%64, 10)
	if err := putJSON(ctx, req.Storage, slot, &c); err != nil {
		return nil, err
	}

	// 3. The POST.
	key, err := b.create(ctx, cfg, c.Entry.KeyName)
	if err != nil {
		return nil, err
	}

	if calls["get"] {
		// The engine's check that the answer names no key it tracks.
		if _, err := req.Storage.Get(ctx, "keys/"+key.ID); err != nil {
			return nil, err
		}
	}

	// 4. The key's record.
	<-maxTTL
	now := time.Now()
	sum := sha256.Sum256([]byte(key.Token))
	rec := &record{
		KeyID: key.ID, KeyName: key.Name, TokenPrefix: key.Token[:8], Environment: r.Environment, Role: r.Name,
		State: "active", Issued: now, Expires: now.Add(r.TTL), ExpiredKeyRetention: r.ExpiredKeyRetention,
		NoIndex: true, DisplayName: req.DisplayName, TokenHMAC: hex.EncodeToString(sum[:]),
	}
	if err := putJSON(ctx, req.Storage, "keys/"+key.ID, rec); err != nil {
		return nil, err
	}

	if calls["log"] {
		b.Logger().Info("key change", "event", "heron/key-issue", "key_id", rec.KeyID, "key_name", rec.KeyName,
			"token_prefix", rec.TokenPrefix, "environment", rec.Environment, "data_path", "creds/"+rec.Role,
			"modified", "true", "role", rec.Role, "expires", rec.Expires.UTC().Format(time.RFC3339))
	}
	if calls["event"] {
		go func() {
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			defer cancel()
			_ = logical.SendEvent(ctx, b, "heron/key-issue", "key_id", rec.KeyID, "key_name", rec.KeyName,
				"token_prefix", rec.TokenPrefix, "environment", rec.Environment,
				logical.EventMetadataDataPath, "creds/"+rec.Role, logical.EventMetadataModified, "true", "role", rec.Role)
		}()
	}

	// 5. The lease, of the engine's shape.
	resp := b.Secret(secretType).Response(map[string]any{
		"api_key":      key.Token,
		"key_id":       rec.KeyID,
		"key_name":     rec.KeyName,
		"token_prefix": rec.TokenPrefix,
		"environment":  rec.Environment,
		"role":         rec.Role,
	}, map[string]any{
		"key_id":       rec.KeyID,
		"key_name":     rec.KeyName,
		"token_prefix": rec.TokenPrefix,
		"environment":  rec.Environment,
		"role":         rec.Role,
		"issued":       now.Unix(),
	})
	resp.Secret.TTL = r.TTL
	resp.Secret.MaxTTL = r.MaxTTL
	resp.Secret.Renewable = true
	return resp, nil
}

type heronKey struct {
	ID    string `json:"heron_id"`
	Name  string `json:"name"`
	Token string `json:"token"`
}

func (b *backend) create(ctx context.Context, cfg *config, name string) (*heronKey, error) {
	body, _ := json.Marshal(map[string]string{"name": name})
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, cfg.URL+"/api/credentials/keys", bytes.NewReader(body))
	if err != nil {
		return nil, err
	}
	req.Header.Set("x-api-key", cfg.AdminKey)
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("Accept", "application/json")
	req.Header.Set("User-Agent", "heron-floor-plugin")
	resp, err := b.http.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	if err != nil {
		return nil, err
	}
	if resp.StatusCode != http.StatusCreated {
		return nil, fmt.Errorf("floor: POST: %d %s", resp.StatusCode, bytes.TrimSpace(data))
	}
	var k heronKey
	if err := json.Unmarshal(data, &k); err != nil {
		return nil, err
	}
	if k.ID == "" || len(k.Token) < 8 {
		return nil, errors.New("floor: POST: no key in the answer")
	}
	return &k, nil
}

func (b *backend) renew(ctx context.Context, req *logical.Request, d *framework.FieldData) (*logical.Response, error) {
	return &logical.Response{Secret: req.Secret}, nil
}

// revoke deletes the key in Heron and its record, so that what the benchmark
// issued here does not stay in the emulator's list.
func (b *backend) revoke(ctx context.Context, req *logical.Request, d *framework.FieldData) (*logical.Response, error) {
	id, _ := req.Secret.InternalData["key_id"].(string)
	if id == "" {
		return nil, nil
	}
	cfg, err := b.config(ctx, req.Storage)
	if err != nil {
		return nil, err
	}
	hr, err := http.NewRequestWithContext(ctx, http.MethodDelete, cfg.URL+"/api/credentials/keys/"+id, nil)
	if err != nil {
		return nil, err
	}
	hr.Header.Set("x-api-key", cfg.AdminKey)
	hr.Header.Set("User-Agent", "heron-floor-plugin")
	resp, err := b.http.Do(hr)
	if err != nil {
		return nil, err
	}
	_, _ = io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusNoContent && resp.StatusCode != http.StatusNotFound {
		return nil, fmt.Errorf("floor: DELETE: %d", resp.StatusCode)
	}
	return nil, req.Storage.Delete(ctx, "keys/"+id)
}

func putJSON(ctx context.Context, s logical.Storage, key string, v any) error {
	e, err := logical.StorageEntryJSON(key, v)
	if err != nil {
		return err
	}
	return s.Put(ctx, e)
}
