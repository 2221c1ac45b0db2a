// Command heron-emulator serves the herontest Heron Data API emulator on a real
// port for end-to-end tests, with the /_emulator/ control surface enabled.
//
//	heron-emulator -listen 127.0.0.1:8787 \
//	    -env development=key_...,key_... -env production
//
// It prints one line per environment with its admin key(s), then
// "listening on http://ADDR". Admin keys go to stdout on purpose: this is a test
// tool and a harness needs them.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log"
	"os"
	"os/signal"
	"sort"
	"strings"
	"syscall"
	"time"

	"github.com/heron-vault/vault-plugin-secrets-heron/herontest"
)

// envFlag collects repeated -env NAME[=key,key...] flags.
type envFlag struct {
	envs  map[string][]string
	order []string
}

func (e *envFlag) String() string { return strings.Join(e.order, ",") }

func (e *envFlag) Set(v string) error {
	name, keys, hasKeys := strings.Cut(v, "=")
	name = strings.TrimSpace(name)
	if name == "" {
		return errors.New("environment name is empty")
	}
	if _, dup := e.envs[name]; dup {
		return fmt.Errorf("environment %q given twice", name)
	}
	var tokens []string
	if hasKeys {
		for _, k := range strings.Split(keys, ",") {
			k = strings.TrimSpace(k)
			if k == "" {
				continue
			}
			if !herontest.ValidToken(k) {
				// Show only the prefix: even a test key should not be echoed whole.
				p := k
				if len(p) > 8 {
					p = p[:8] + "..."
				}
				return fmt.Errorf("key %q of %s is not key_ followed by 48 lowercase hex characters", p, name)
			}
			tokens = append(tokens, k)
		}
	}
	if len(tokens) == 0 {
		tokens = []string{herontest.NewKeyToken()}
	}
	if e.envs == nil {
		e.envs = map[string][]string{}
	}
	e.envs[name] = tokens
	e.order = append(e.order, name)
	return nil
}

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	// After the first signal, restore default handling so that a second one
	// kills a shutdown stuck behind long injected latency.
	go func() { <-ctx.Done(); stop() }()
	err := run(ctx, os.Args[1:], os.Stdout, os.Stderr)
	stop()
	if err != nil {
		if errors.Is(err, flag.ErrHelp) {
			os.Exit(0)
		}
		fmt.Fprintln(os.Stderr, "heron-emulator:", err)
		os.Exit(2)
	}
}

// run serves until ctx is done (SIGINT/SIGTERM in main), then shuts down.
func run(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("heron-emulator", flag.ContinueOnError)
	fs.SetOutput(stderr)
	var envs envFlag
	listen := fs.String("listen", "127.0.0.1:8787", "address to listen on (port 0 picks one)")
	fs.Var(&envs, "env", "environment and its admin keys, NAME or NAME=key_...,key_... (repeatable; a NAME alone gets one generated key; default: development)")
	rateLimit := fs.Int("rate-limit", herontest.DefaultRateLimitPerMinute, "requests per sliding minute per environment (0: Heron's default 500, negative: unlimited)")
	userRateLimit := fs.Int("rate-limit-per-user", 0, "requests per sliding minute per user, on top of -rate-limit (0 or negative: off)")
	latency := fs.Duration("latency", 0, "latency added to every API request")
	errorRate := fs.Float64("error-rate", 0, "share 0..1 of authenticated requests answered 500/502/503 unprocessed")
	dropRate := fs.Float64("drop-after-post-rate", 0, "share 0..1 of key creations processed and then answered by closing the connection")
	processThenRate := fs.Float64("process-then-error-rate", 0, "share 0..1 of authenticated requests processed and then answered 500/502/503/504")
	seed := fs.Int64("seed", 0, "seed for random faults (0: time-based)")
	quiet := fs.Bool("quiet", false, "do not log each request to stderr")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if fs.NArg() > 0 {
		return fmt.Errorf("unexpected arguments %q", fs.Args())
	}
	for _, r := range []float64{*errorRate, *dropRate, *processThenRate} {
		if r < 0 || r > 1 {
			return errors.New("-error-rate, -drop-after-post-rate and -process-then-error-rate must be between 0 and 1")
		}
	}
	if *latency < 0 {
		return errors.New("-latency must not be negative")
	}
	if len(envs.order) == 0 {
		if err := envs.Set("development"); err != nil {
			return err
		}
	}

	logger := log.New(stderr, "heron-emulator: ", log.LstdFlags|log.Lmicroseconds)
	opts := herontest.Options{
		Environments:              envs.envs,
		RateLimitPerMinute:        *rateLimit,
		RateLimitPerUserPerMinute: *userRateLimit,
		Control:                   true,
	}
	if !*quiet {
		opts.Logger = logger
	}
	s := herontest.NewUnstartedServer(opts)
	s.SetFaults(herontest.Faults{
		Latency: *latency, ErrorRate: *errorRate, DropAfterPOSTRate: *dropRate,
		ProcessThenErrorRate: *processThenRate, Seed: *seed,
	})

	if err := s.StartOn(*listen); err != nil {
		return err
	}
	names := append([]string(nil), envs.order...)
	sort.Strings(names)
	for _, name := range names {
		fmt.Fprintf(stdout, "env %s admin-keys %s\n", name, strings.Join(envs.envs[name], ","))
	}
	fmt.Fprintf(stdout, "listening on %s\n", s.URL)

	<-ctx.Done()
	logger.Print("shutting down")
	sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := s.Shutdown(sctx); err != nil && !errors.Is(err, context.DeadlineExceeded) {
		return err
	}
	return nil
}
