//go:build e2e

// Package e2e holds the end-to-end tests of the Heron secrets engine: a real
// vault binary (VAULT_BIN, else <repo>/bin/vault from `make vault`) runs the
// plugin built from this tree against an in-process Heron emulator, and the
// tests drive it through the vault CLI the way an operator would. Creds are
// issued one way everywhere (vault.issue): the request `vault read` sends,
// over plain HTTP, which the fault tests and the benchmark can run by the
// hundred from concurrent goroutines.
//
//	make e2e                                  # resolves a Vault, builds one if needed
//	VAULT_BIN=/path/to/vault go test -tags e2e -count=1 ./e2e/
//
// Every file carries the build tag e2e, so a plain `go test ./...` (only Go
// installed) leaves the suite out instead of failing or skipping it; with the
// tag, a missing Vault fails the run. The package has no non-test code; this
// file only gives it a name and a description for go doc and tooling.
package e2e
