// Package e2e holds the end-to-end tests of the Heron secrets engine: a real
// vault binary (VAULT_BIN, else <repo>/bin/vault from `make vault`) runs the
// plugin built from this tree against an in-process Heron emulator, and the
// tests drive it through the vault CLI the way an operator would.
//
//	go test ./e2e/ -count=1
//
// The package has no non-test code; this file only gives it a name and a
// description for go doc and tooling.
package e2e
