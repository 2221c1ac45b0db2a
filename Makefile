# vault-plugin-secrets-heron
GO        ?= go
# VERSION: what the build reports (`-version`, User-Agent) and registers in
# Vault's catalog. Unless given (make build VERSION=v1.2.3, or in the
# environment), scripts/version.sh derives it from `git describe --tags
# --always --dirty` (v0.0.0-dev outside a git checkout), so two builds of
# different trees never share a catalog entry.
ifeq ($(origin VERSION),undefined)
VERSION := $(shell bash scripts/version.sh)
endif
PLUGIN    := vault-plugin-secrets-heron
LDFLAGS   := -X github.com/heron-vault/vault-plugin-secrets-heron.Version=$(VERSION)
STATICCHECK ?= $(shell $(GO) env GOPATH)/bin/staticcheck
FUZZTIME  ?= 15s

# WITH_VAULT starts a recipe line that needs Vault: scripts/vault-bin.sh picks
# VAULT_BIN, else a vault 1.15+ on PATH, else bin/vault (built on first use,
# about 16 minutes on 2 cores), and the rest of the line runs with VAULT_BIN exported.
WITH_VAULT = VAULT_BIN="$$(bash scripts/vault-bin.sh)" && export VAULT_BIN && echo "==> VAULT_BIN=$$VAULT_BIN" &&

.PHONY: all build emulator vault test unit e2e fuzz fmt vet lint demo bench release clean

all: fmt vet build test

## build: the plugin binary (bin/vault-plugin-secrets-heron), stamped VERSION, and its sha256
build:
	$(GO) build -trimpath -ldflags "$(LDFLAGS)" -o bin/$(PLUGIN) ./cmd/$(PLUGIN)
	@sha256sum bin/$(PLUGIN)
	@echo "version: $(VERSION)"

## emulator: the Heron emulator binary (bin/heron-emulator)
emulator:
	$(GO) build -o bin/heron-emulator ./cmd/heron-emulator

## vault: build Vault (the version in tools/go.mod) from its Go module into bin/vault once
## (about 16 minutes cold on 2 cores); reused after. test/e2e/bench/demo do this only when neither
## VAULT_BIN nor a vault 1.15+ on PATH is there.
vault:
	@bash scripts/vault-bin.sh --local

## test: everything: unit tests, emulator, client, and the end-to-end suite on a real Vault
test:
	$(WITH_VAULT) $(GO) test -tags e2e -race -count=1 -timeout 30m ./...

## unit: the tests that need no Vault binary (the e2e suite is behind the e2e build tag)
unit:
	$(GO) test -race -count=1 ./...

## e2e: the end-to-end suite only (real Vault + emulator on 127.0.0.1)
e2e:
	$(WITH_VAULT) $(GO) test -tags e2e -count=1 -timeout 30m -v ./e2e/...

## fuzz: run each fuzz target for FUZZTIME
fuzz:
	$(GO) test -run '^$$' -fuzz '^FuzzConfigFields$$' -fuzztime $(FUZZTIME) .
	$(GO) test -run '^$$' -fuzz '^FuzzRoleFields$$' -fuzztime $(FUZZTIME) .
	$(GO) test -run '^$$' -fuzz '^FuzzNameTemplate$$' -fuzztime $(FUZZTIME) .
	$(GO) test -run '^$$' -fuzz '^FuzzDecodeKeyList$$' -fuzztime $(FUZZTIME) ./heronapi
	$(GO) test -run '^$$' -fuzz '^FuzzHeronAnswers$$' -fuzztime $(FUZZTIME) .

fmt:
	gofmt -s -w $$(git ls-files '*.go')

vet:
	$(GO) vet ./...
	$(GO) vet -tags e2e ./...
	cd examples && $(GO) vet ./...

lint: vet
	$(GO) mod tidy -diff
	cd examples && $(GO) mod tidy -diff
	@test -x $(STATICCHECK) || $(GO) install honnef.co/go/tools/cmd/staticcheck@v0.8.2
	$(STATICCHECK) -tags e2e ./...
	cd examples && $(STATICCHECK) ./...
	@test -z "$$(gofmt -s -l $$(git ls-files '*.go'))" || (gofmt -s -l $$(git ls-files '*.go'); exit 1)

## demo: emulator + Vault dev server + the engine, configured; prints VAULT_ADDR/VAULT_TOKEN
demo:
	VERSION=$(VERSION) bash scripts/demo.sh

## bench: client and handler benchmarks, then the engine on a real Vault + emulator
## (issue/expiry/revoke/renew request counts, latency, mass revocation, RSS), printing
## a table and writing BENCHMARKS.md; BENCH_SMALL=1 (CI) runs small sizes, writes nothing
## (the in-process scale benchmarks too: 1,000 static roles, 5,000 tracked keys).
## The Vault is resolved (or built) first, so a missing one fails before the Go benchmarks.
bench:
	@mkdir -p bin
	@bash scripts/vault-bin.sh >/dev/null
	$(if $(BENCH_SMALL),HERON_BENCH_STATIC_ROLES=1000 HERON_BENCH_TRACKED_KEYS=5000) \
	$(GO) test -count=1 -run '^$$' -bench . -benchmem $(if $(BENCH_SMALL),-benchtime=200ms) ./heronapi/ . ./e2e/floorplugin/ \
		> bin/bench-go.txt || { cat bin/bench-go.txt; exit 1; }
	@cat bin/bench-go.txt
	$(WITH_VAULT) HERON_BENCH_GO_RESULTS=$(CURDIR)/bin/bench-go.txt \
	$(if $(BENCH_SMALL),HERON_BENCH_LEASES=200 HERON_BENCH_BUDGET=1200 HERON_BENCH_LIVE=500 HERON_BENCH_SAMPLES=50,HERON_BENCH_WRITE=1) \
		$(GO) test -tags e2e -count=1 -timeout 60m -run '^$$' -bench '^BenchmarkEngine$$' -benchtime=1x ./e2e/

## release: the plugin for linux and darwin, amd64 and arm64, in dist/ with dist/SHA256SUMS,
## stamped VERSION (give VERSION=vX.Y.Z, else the git describe version); prints the
## `vault plugin register` line of each binary
release:
	GO=$(GO) bash scripts/release.sh $(VERSION)

clean:
	rm -rf bin/$(PLUGIN) bin/heron-emulator
