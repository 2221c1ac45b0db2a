#!/usr/bin/env bash
# Prints the path of the Vault binary to use (for make test/e2e/bench/demo and
# scripts/demo.sh), building one when there is none. In order:
#
#   1. $VAULT_BIN when set (it must be an executable: a wrong path fails, it is
#      never silently replaced by another Vault);
#   2. a `vault` on PATH whose `vault version` is 1.15 or newer;
#   3. bin/vault, built from Vault's Go module in tools/ when absent (about 10
#      minutes the first time: 16 on 2 cores with empty caches; reused after).
#
#   scripts/vault-bin.sh          resolve as above
#   scripts/vault-bin.sh --local  only step 3 (what `make vault` runs)
#
# The path goes to stdout, progress to stderr. Needs Go only for step 3.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
MIN_MAJOR=1
MIN_MINOR=15

log() { printf '==> %s\n' "$*" >&2; }
die() { log "$*"; exit 1; }

# version_ok "Vault v1.21.0 (abc), built ...": 0 when at least MIN_MAJOR.MIN_MINOR.
version_ok() {
	local major minor
	read -r major minor < <(sed -n 's/^Vault v\{0,1\}\([0-9][0-9]*\)\.\([0-9][0-9]*\).*/\1 \2/p' <<<"$1" | head -n 1) || return 1
	[ -n "${major:-}" ] || return 1
	[ "$major" -gt "$MIN_MAJOR" ] || { [ "$major" -eq "$MIN_MAJOR" ] && [ "$minor" -ge "$MIN_MINOR" ]; }
}

local_vault() {
	local bin="$ROOT/bin/vault" want
	if [ ! -x "$bin" ]; then
		want="$(sed -n 's/^[[:space:]]*\(require[[:space:]]*\)\{0,1\}github\.com\/hashicorp\/vault \(v[^[:space:]]*\).*/\2/p' "$ROOT/tools/go.mod" | head -n 1)"
		log "building Vault ${want:-} into bin/vault from its Go module (the first build takes about 16 minutes on 2 cores with empty caches; later runs reuse it)"
		mkdir -p "$ROOT/bin"
		# Build beside the target and rename, so an interrupted build leaves no
		# half-written bin/vault that the next run would take for a good one.
		(cd "$ROOT/tools" && go build -o "$ROOT/bin/vault.partial" github.com/hashicorp/vault)
		mv -f "$ROOT/bin/vault.partial" "$bin"
	fi
	printf '%s\n' "$bin"
}

case "${1:-}" in
--local)
	local_vault
	exit 0
	;;
"") ;;
*) die "usage: $0 [--local]" ;;
esac

if [ -n "${VAULT_BIN:-}" ]; then
	[ -f "$VAULT_BIN" ] && [ -x "$VAULT_BIN" ] ||
		die "VAULT_BIN=$VAULT_BIN is not an executable (unset it to use a vault 1.15+ on PATH or bin/vault)"
	printf '%s\n' "$VAULT_BIN"
	exit 0
fi

if path_vault="$(command -v vault 2>/dev/null)" && [ -n "$path_vault" ]; then
	v="$("$path_vault" version 2>/dev/null || true)"
	if version_ok "$v"; then
		printf '%s\n' "$path_vault"
		exit 0
	fi
	log "not using $path_vault (${v:-no version}): need Vault $MIN_MAJOR.$MIN_MINOR or newer"
fi

local_vault
