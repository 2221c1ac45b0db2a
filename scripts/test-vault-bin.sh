#!/usr/bin/env bash
# Tests scripts/vault-bin.sh without building anything: a copy of it runs in a
# scratch repository, with fake `vault` binaries (printing chosen versions) on a
# PATH that holds nothing else but a few basic tools, and a fake `go` that
# writes a stub instead of building Vault. Run by .ci/run.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
BASH_BIN="$(command -v bash)"
T="$(mktemp -d "${TMPDIR:-/tmp}/vault-bin-test.XXXXXX")"
trap 'rm -rf "$T"' EXIT

fails=0
pass() { printf 'ok   %s\n' "$1"; }
fail() { printf 'FAIL %s\n' "$1" >&2; fails=$((fails + 1)); }

# A PATH with only what vault-bin.sh needs, so a real vault or go on the
# machine cannot leak into the test.
mkdir -p "$T/sys"
for tool in dirname sed head mkdir mv chmod cat rm; do
	ln -s "$(command -v "$tool")" "$T/sys/$tool"
done

# fake_vault DIR VERSION_LINE: DIR/vault prints VERSION_LINE for `vault version`.
fake_vault() {
	mkdir -p "$1"
	printf '#!/bin/sh\n[ "$1" = version ] && echo "%s" && exit 0\nexit 2\n' "$2" >"$1/vault"
	chmod +x "$1/vault"
}
fake_vault "$T/v114" "Vault v1.14.10 (abc), built 2024-01-01T00:00:00Z"
fake_vault "$T/v19" "Vault v1.9.3 (abc), built 2022-01-01T00:00:00Z"
fake_vault "$T/v121" "Vault v1.21.0 (abc), built 2025-10-01T00:00:00Z"
fake_vault "$T/v200" "Vault v2.0.0 (abc), built 2026-01-01T00:00:00Z"
mkdir -p "$T/broken"
printf '#!/bin/sh\nexit 1\n' >"$T/broken/vault"
chmod +x "$T/broken/vault"

# The fake go records its working directory and arguments, then writes a stub
# vault to the -o path, as `go build -o` would.
mkdir -p "$T/fakego"
cat >"$T/fakego/go" <<EOF
#!/bin/sh
echo "\$PWD \$*" >>"$T/go-calls"
out=""
while [ \$# -gt 0 ]; do
	if [ "\$1" = -o ]; then out="\$2"; fi
	shift
done
printf '#!/bin/sh\necho "Vault v1.21.0 (built by the fake go)"\n' >"\$out"
chmod +x "\$out"
EOF
chmod +x "$T/fakego/go"

# new_repo: a scratch repository with the script under test and tools/go.mod.
REPO="$T/repo"
new_repo() {
	rm -rf "$REPO" "$T/go-calls"
	mkdir -p "$REPO/scripts" "$REPO/tools"
	cp "$ROOT/scripts/vault-bin.sh" "$REPO/scripts/"
	cp "$ROOT/tools/go.mod" "$REPO/tools/"
}
fake_local_vault() {
	mkdir -p "$REPO/bin"
	printf '#!/bin/sh\necho "Vault v1.21.0 (local)"\n' >"$REPO/bin/vault"
	chmod +x "$REPO/bin/vault"
}

# run PATH_PREFIX [ARGS...]: runs the script with VAULT_BIN unset (unless the
# caller exports it) and PATH = PATH_PREFIX:fake go:basic tools. Sets OUT, ERR, RC.
run() {
	local prefix="$1"
	shift
	RC=0
	OUT="$(PATH="${prefix:+$prefix:}$T/fakego:$T/sys" "$BASH_BIN" "$REPO/scripts/vault-bin.sh" "$@" 2>"$T/stderr")" || RC=$?
	ERR="$(cat "$T/stderr")"
}

# expect NAME WANT_RC WANT_OUT: checks RC and OUT, and that nothing was built
# unless WANT_BUILD=1.
expect() {
	local name="$1" want_rc="$2" want_out="$3" built=0
	[ -s "$T/go-calls" ] && built=1
	if [ "$RC" != "$want_rc" ] || [ "$OUT" != "$want_out" ] || [ "$built" != "${WANT_BUILD:-0}" ]; then
		fail "$name: rc=$RC (want $want_rc) out='$OUT' (want '$want_out') built=$built (want ${WANT_BUILD:-0}); stderr: $ERR"
	else
		pass "$name"
	fi
}

unset VAULT_BIN

new_repo
fake_local_vault
run "$T/v121"
expect "vault 1.21 on PATH is used" 0 "$T/v121/vault"

run "$T/v200"
expect "vault 2.0 on PATH is used" 0 "$T/v200/vault"

run "$T/v114"
expect "vault 1.14 on PATH is skipped for bin/vault" 0 "$REPO/bin/vault"
case "$ERR" in
*"$T/v114/vault"*"1.15"*) pass "skipping an old vault says why" ;;
*) fail "skipping an old vault says why: stderr: $ERR" ;;
esac

run "$T/v19"
expect "vault 1.9 on PATH is skipped (numeric minor)" 0 "$REPO/bin/vault"

run "$T/broken"
expect "a vault on PATH without a version is skipped" 0 "$REPO/bin/vault"

run "$T/v114:$T/v121"
expect "only the first vault on PATH counts" 0 "$REPO/bin/vault"

run ""
expect "no vault on PATH: bin/vault" 0 "$REPO/bin/vault"

run "$T/v121" --local
expect "--local ignores PATH" 0 "$REPO/bin/vault"

VAULT_BIN="$T/v114/vault" run "$T/v121"
expect "VAULT_BIN wins, whatever its version" 0 "$T/v114/vault"

VAULT_BIN="$T/nonexistent/vault" run "$T/v121"
expect "a VAULT_BIN that does not exist fails" 1 ""
case "$ERR" in
*"VAULT_BIN=$T/nonexistent/vault is not an executable"*) pass "a bad VAULT_BIN is named" ;;
*) fail "a bad VAULT_BIN is named: stderr: $ERR" ;;
esac

VAULT_BIN="$REPO/tools/go.mod" run "$T/v121"
expect "a VAULT_BIN that is not executable fails" 1 ""

VAULT_BIN="$REPO/tools" run "$T/v121"
expect "a VAULT_BIN that is a directory fails" 1 ""

# Fresh clone: nothing anywhere, so bin/vault is built (by the fake go).
new_repo
WANT_BUILD=1 run "$T/v114"
WANT_BUILD=1 expect "fresh clone with an old vault on PATH builds bin/vault" 0 "$REPO/bin/vault"
if [ -x "$REPO/bin/vault" ] && [ ! -e "$REPO/bin/vault.partial" ]; then
	pass "the build leaves an executable bin/vault and no partial file"
else
	fail "the build leaves an executable bin/vault and no partial file"
fi
want_version="$(sed -n 's/^require github\.com\/hashicorp\/vault \(v[^ ]*\).*/\1/p' "$ROOT/tools/go.mod")"
case "$ERR" in
*"building Vault $want_version into bin/vault"*"about 16 minutes"*) pass "the build prints a progress line with the time it takes" ;;
*) fail "the build prints a progress line with the time it takes: stderr: $ERR" ;;
esac
calls="$(cat "$T/go-calls")"
if [ "$calls" = "$REPO/tools build -o $REPO/bin/vault.partial github.com/hashicorp/vault" ]; then
	pass "the build is go build of github.com/hashicorp/vault in tools/"
else
	fail "the build is go build of github.com/hashicorp/vault in tools/: got '$calls'"
fi
rm -f "$T/go-calls"
run ""
expect "a built bin/vault is reused" 0 "$REPO/bin/vault"

new_repo
WANT_BUILD=1 run "$T/v121" --local
WANT_BUILD=1 expect "--local builds bin/vault even with a good vault on PATH" 0 "$REPO/bin/vault"

new_repo
run "" --bogus
expect "an unknown argument fails" 1 ""

if [ "$fails" -ne 0 ]; then
	printf '%d vault-bin.sh test(s) failed\n' "$fails" >&2
	exit 1
fi
echo "vault-bin.sh: all tests passed"
