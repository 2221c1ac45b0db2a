// Command heron-client is an application that gets its Heron API key from
// Vault with the official client (github.com/hashicorp/vault/api) and keeps
// it for as long as it runs:
//
//   - it reads <mount>/creds/<role> and keeps the lease alive with a
//     LifetimeWatcher;
//   - when the lease cannot be renewed any further (max_ttl is near) the
//     watcher reports done before the lease ends, and a new key is read
//     while the old one still works;
//   - any renewal error stops the watcher at once (it would otherwise retry
//     a lease Vault no longer knows in a tight loop) and a new key is read;
//   - a 401 from Heron means the key was revoked or quarantined (Vault tells
//     a holder only at its next renewal): a new key is read at once and the
//     call is retried with it;
//   - on exit it revokes its lease, so its key is deleted at once (Vault
//     Agent does not do that: its keys live to max_ttl).
//
// It calls Heron's GET /api/hello_world/authenticated every -interval and
// prints one JSON line of counts when it stops: {"calls":N,"failed":M,...}.
//
// Configuration: VAULT_ADDR and VAULT_TOKEN as for the vault CLI, and
//
//	heron-client -mount heron -role app -heron-url https://app.herondata.io -duration 0
package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"log"
	"net/http"
	"os"
	"os/signal"
	"sync"
	"syscall"
	"time"

	vault "github.com/hashicorp/vault/api"
)

func main() {
	mount := flag.String("mount", "heron", "path the Heron secrets engine is mounted at")
	role := flag.String("role", "", "role to read creds/<role> from (required)")
	heronURL := flag.String("heron-url", "https://app.herondata.io", "Heron's base URL")
	interval := flag.Duration("interval", 200*time.Millisecond, "time between two calls to Heron")
	duration := flag.Duration("duration", 0, "stop after this long (0: run until SIGINT or SIGTERM)")
	revokeOnExit := flag.Bool("revoke-on-exit", true, "revoke the lease on exit, so its key is deleted at once (the token needs update on sys/leases/revoke)")
	flag.Parse()
	if *role == "" {
		log.Fatal("-role is required")
	}

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if *duration > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, *duration)
		defer cancel()
	}

	client, err := vault.NewClient(vault.DefaultConfig()) // VAULT_ADDR, VAULT_TOKEN, VAULT_CACERT...
	if err != nil {
		log.Fatalf("vault client: %v", err)
	}
	keys := &keyKeeper{client: client, path: *mount + "/creds/" + *role, refresh: make(chan struct{}, 1), ready: make(chan struct{})}
	managed := make(chan struct{})
	go func() {
		defer close(managed)
		keys.run(ctx)
	}()
	select {
	case <-keys.ready:
	case <-ctx.Done():
		log.Fatalf("no key from %s before stopping", keys.path)
	}

	stats := callHeron(ctx, keys, *heronURL, *interval)
	<-managed
	if *revokeOnExit {
		keys.revokeCurrent()
	}
	stats.Keys = keys.count()
	out, _ := json.Marshal(stats)
	fmt.Println(string(out))
}

// keyKeeper holds the current key and keeps it valid.
type keyKeeper struct {
	client *vault.Client
	path   string

	mu      sync.Mutex
	token   string
	leaseID string
	keyID   string
	n       int

	// refresh asks for a new key now (Heron answered 401).
	refresh chan struct{}
	ready   chan struct{}
	once    sync.Once
}

// current is the key to call Heron with.
func (k *keyKeeper) current() string {
	k.mu.Lock()
	defer k.mu.Unlock()
	return k.token
}

func (k *keyKeeper) count() int {
	k.mu.Lock()
	defer k.mu.Unlock()
	return k.n
}

// renewNow asks run for a new key; several asks before it acts are one.
func (k *keyKeeper) renewNow() {
	select {
	case k.refresh <- struct{}{}:
	default:
	}
}

// run reads a key, watches its lease, and reads the next one when the lease
// is about to end, cannot be renewed, or the key stopped working.
func (k *keyKeeper) run(ctx context.Context) {
	backoff := time.Second
	for ctx.Err() == nil {
		secret, err := k.client.Logical().ReadWithContext(ctx, k.path)
		if err == nil && (secret == nil || secret.Data["api_key"] == nil) {
			err = errors.New("no api_key in the answer")
		}
		if err != nil {
			log.Printf("reading %s: %v (retrying in %s)", k.path, err, backoff)
			select {
			case <-time.After(backoff):
			case <-ctx.Done():
			}
			backoff = min(2*backoff, 30*time.Second)
			continue
		}
		backoff = time.Second
		k.mu.Lock()
		k.token, _ = secret.Data["api_key"].(string)
		k.keyID, _ = secret.Data["key_id"].(string)
		k.leaseID = secret.LeaseID
		k.n++
		k.mu.Unlock()
		k.once.Do(func() { close(k.ready) })
		log.Printf("new key %s (lease %s, %ds)", secret.Data["key_id"], secret.LeaseID, secret.LeaseDuration)
		// Drop a refresh asked for against the previous key.
		select {
		case <-k.refresh:
		default:
		}
		k.watch(ctx, secret)
	}
}

// watch keeps secret's lease renewed until it ends, fails, or a new key is
// asked for. It always stops the watcher before returning.
func (k *keyKeeper) watch(ctx context.Context, secret *vault.Secret) {
	w, err := k.client.NewLifetimeWatcher(&vault.LifetimeWatcherInput{
		Secret: secret,
		// Return on the first renewal error: after "lease not found" the
		// watcher would otherwise keep retrying a lease that is gone.
		RenewBehavior: vault.RenewBehaviorErrorOnErrors,
	})
	if err != nil {
		log.Printf("lifetime watcher: %v", err)
		return
	}
	go w.Start()
	defer w.Stop()
	for {
		select {
		case err := <-w.DoneCh():
			// nil: the lease cannot be renewed any further (max_ttl is near)
			// and a new key is due now, while this one still works. nil is
			// also what a revoked lease gives: the next read is right for both.
			if err != nil {
				log.Printf("renewing lease %s: %v: reading a new key", secret.LeaseID, err)
			}
			return
		case r := <-w.RenewCh():
			log.Printf("renewed lease %s for %ds", r.Secret.LeaseID, r.Secret.LeaseDuration)
		case <-k.refresh:
			log.Printf("Heron rejected key of lease %s: reading a new key", secret.LeaseID)
			return
		case <-ctx.Done():
			return
		}
	}
}

// revokeCurrent revokes the current lease: its key is deleted at once.
func (k *keyKeeper) revokeCurrent() {
	k.mu.Lock()
	id := k.leaseID
	k.mu.Unlock()
	if id == "" {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := k.client.Sys().RevokeWithContext(ctx, id); err != nil {
		log.Printf("revoking lease %s on exit: %v (its key lives until the lease ends)", id, err)
	}
}

// stats counts the calls to Heron.
type stats struct {
	Calls   int `json:"calls"`
	Failed  int `json:"failed"`
	Retried int `json:"retried"`
	Keys    int `json:"keys"`
}

// callHeron is the application's work: a call to Heron every interval.
// A 401 asks for a new key and retries the call once with it; a call
// that fails even then counts as failed.
func callHeron(ctx context.Context, keys *keyKeeper, base string, interval time.Duration) stats {
	var s stats
	hc := &http.Client{Timeout: 10 * time.Second}
	tick := time.NewTicker(interval)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return s
		case <-tick.C:
		}
		s.Calls++
		token := keys.current()
		code, err := hello(ctx, hc, base, token)
		if code == http.StatusUnauthorized {
			keys.renewNow()
			s.Retried++
			code, err = helloWithNewKey(ctx, hc, base, keys, token)
		}
		if ctx.Err() != nil {
			s.Calls--
			return s
		}
		if err != nil || code != http.StatusOK {
			s.Failed++
			log.Printf("Heron call failed: status %d, error %v", code, err)
		}
	}
}

// helloWithNewKey waits (up to 10 s) for a key other than old and calls
// Heron with it.
func helloWithNewKey(ctx context.Context, hc *http.Client, base string, keys *keyKeeper, old string) (int, error) {
	deadline := time.Now().Add(10 * time.Second)
	for keys.current() == old && time.Now().Before(deadline) && ctx.Err() == nil {
		time.Sleep(20 * time.Millisecond)
	}
	return hello(ctx, hc, base, keys.current())
}

// hello calls GET /api/hello_world/authenticated with token.
func hello(ctx context.Context, hc *http.Client, base, token string) (int, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, base+"/api/hello_world/authenticated", nil)
	if err != nil {
		return 0, err
	}
	req.Header.Set("x-api-key", token)
	res, err := hc.Do(req)
	if err != nil {
		return 0, err
	}
	res.Body.Close()
	return res.StatusCode, nil
}
