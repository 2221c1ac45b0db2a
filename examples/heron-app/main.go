// Command heron-app is an application that does not talk to Vault: Vault
// Agent gives it its Heron API key, either
//
//   - in a file it renders (template mode): -key-file names the file, and
//     the agent's template runs a command that sends SIGHUP (-pidfile says
//     where the PID is) so the app re-reads it; or
//   - in the environment (exec mode): HERON_API_KEY, the agent restarting
//     the app with a new key before the old lease ends.
//
// It calls Heron's GET /api/hello_world/authenticated every -interval. On a
// 401 in file mode it re-reads the file once and retries (the agent may
// have rendered a new key that the signal has not announced yet). When it
// stops it appends one JSON line of counts to -stats-file (if set) and
// prints it: {"calls":N,"failed":M,"keys":K}.
package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"log"
	"net/http"
	"os"
	"os/signal"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"
)

func main() {
	heronURL := flag.String("heron-url", "https://app.herondata.io", "Heron's base URL")
	keyFile := flag.String("key-file", "", "read the key from this file (re-read on SIGHUP); default: $HERON_API_KEY")
	pidFile := flag.String("pidfile", "", "write the process id here (for the agent's reload command)")
	statsFile := flag.String("stats-file", "", "append the counts here on exit")
	interval := flag.Duration("interval", 200*time.Millisecond, "time between two calls to Heron")
	flag.Parse()

	if *pidFile != "" {
		if err := os.WriteFile(*pidFile, []byte(strconv.Itoa(os.Getpid())+"\n"), 0o644); err != nil {
			log.Fatalf("writing %s: %v", *pidFile, err)
		}
		defer os.Remove(*pidFile)
	}
	k := &key{file: *keyFile}
	if err := k.load(); err != nil {
		log.Fatal(err)
	}
	hup := make(chan os.Signal, 1)
	signal.Notify(hup, syscall.SIGHUP)
	go func() {
		for range hup {
			if err := k.load(); err != nil {
				log.Printf("reloading the key: %v", err)
			}
		}
	}()
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()

	var calls, failed int
	hc := &http.Client{Timeout: 10 * time.Second}
	tick := time.NewTicker(*interval)
	defer tick.Stop()
loop:
	for {
		select {
		case <-ctx.Done():
			break loop
		case <-tick.C:
		}
		calls++
		code, err := hello(ctx, hc, *heronURL, k.get())
		if code == http.StatusUnauthorized && k.file != "" {
			// The agent may have rendered a new key already.
			if k.load() == nil {
				code, err = hello(ctx, hc, *heronURL, k.get())
			}
		}
		if ctx.Err() != nil {
			calls--
			break
		}
		if err != nil || code != http.StatusOK {
			failed++
			log.Printf("Heron call failed: status %d, error %v", code, err)
		}
	}
	line, _ := json.Marshal(map[string]int{"calls": calls, "failed": failed, "keys": k.count()})
	fmt.Println(string(line))
	if *statsFile != "" {
		f, err := os.OpenFile(*statsFile, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
		if err == nil {
			fmt.Fprintln(f, string(line))
			f.Close()
		}
	}
}

// key is the current key and how many distinct keys were loaded.
type key struct {
	file string
	mu   sync.Mutex
	cur  string
	n    int
}

func (k *key) load() error {
	v := os.Getenv("HERON_API_KEY")
	if k.file != "" {
		b, err := os.ReadFile(k.file)
		if err != nil {
			return err
		}
		v = string(b)
	}
	v = strings.TrimSpace(v)
	if v == "" {
		return fmt.Errorf("no key (set HERON_API_KEY or -key-file)")
	}
	k.mu.Lock()
	defer k.mu.Unlock()
	if v != k.cur {
		k.cur = v
		k.n++
		log.Printf("using key %s...", v[:min(8, len(v))])
	}
	return nil
}

func (k *key) get() string {
	k.mu.Lock()
	defer k.mu.Unlock()
	return k.cur
}

func (k *key) count() int {
	k.mu.Lock()
	defer k.mu.Unlock()
	return k.n
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
