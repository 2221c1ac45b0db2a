#!/usr/bin/env bash
# Prints the version this build reports and registers: $VERSION when given,
# else `git describe --tags --always --dirty`, else v0.0.0-dev (not a git
# checkout, or git missing). So two builds of different commits (or a build
# of a modified tree) never share one entry in Vault's plugin catalog.
#
# Vault requires a plugin version to be semantic: describe's answer is one
# after a v-tag (v0.3.0, v0.3.0-2-gabc1234, ...-dirty); without a tag it is
# a bare commit id, printed as v0.0.0-dev.g<id>[-dirty].
# Used by the Makefile (build, release, demo), scripts/demo.sh and the e2e
# suite's plugin build. Works with GOFLAGS=-buildvcs=false (it asks git, not
# the Go toolchain).
set -euo pipefail

if [ -n "${VERSION:-}" ]; then
	printf '%s\n' "$VERSION"
	exit 0
fi
if ! d="$(git describe --tags --always --dirty 2>/dev/null)" || [ -z "$d" ]; then
	echo v0.0.0-dev
	exit 0
fi
if [[ "$d" =~ ^v[0-9]+\.[0-9]+\.[0-9]+ ]]; then
	printf '%s\n' "$d"
else
	printf 'v0.0.0-dev.g%s\n' "$d"
fi
