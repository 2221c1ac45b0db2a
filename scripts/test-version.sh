#!/usr/bin/env bash
# Tests scripts/version.sh, the version every build reports (make build,
# make release, make demo, the e2e suite's plugin build): VERSION when given,
# else `git describe --tags --always --dirty` made a version Vault accepts,
# else v0.0.0-dev outside a git checkout. Scratch repositories, builds
# nothing. Run by .ci/run.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
T="$(mktemp -d "${TMPDIR:-/tmp}/version-test.XXXXXX")"
trap 'rm -rf "$T"' EXIT
export GIT_CONFIG_GLOBAL=/dev/null GIT_CONFIG_NOSYSTEM=1
git_() { git -c user.name=t -c user.email=t@example.com -c commit.gpgsign=false -c tag.gpgsign=false "$@"; }

fails=0
check() { # NAME GOT WANT-REGEX
	if [[ "$2" =~ $3 ]]; then printf 'ok   %s (%s)\n' "$1" "$2"; else printf 'FAIL %s: got %q, want %s\n' "$1" "$2" "$3" >&2; fails=$((fails + 1)); fi
}
semver='^v[0-9]+\.[0-9]+\.[0-9]+(-[0-9A-Za-z.-]+)?(\+[0-9A-Za-z.-]+)?$'
v() { (cd "$1" && bash "$ROOT/scripts/version.sh"); }

mkdir -p "$T/plain"
check "not a git checkout" "$(cd "$T/plain" && env -u VERSION bash "$ROOT/scripts/version.sh")" '^v0\.0\.0-dev$'
check "VERSION given" "$(cd "$T/plain" && VERSION=v1.2.3 bash "$ROOT/scripts/version.sh")" '^v1\.2\.3$'

unset VERSION
r="$T/repo"; mkdir -p "$r"; git_ -C "$r" init -q; echo a >"$r/f"; git_ -C "$r" add f; git_ -C "$r" commit -qm one
sha=$(git -C "$r" rev-parse --short HEAD)
check "untagged commit" "$(v "$r")" "^v0\.0\.0-dev\.g$sha\$"
check "untagged commit is semver" "$(v "$r")" "$semver"
echo b >"$r/f"
check "untagged, dirty" "$(v "$r")" "^v0\.0\.0-dev\.g$sha-dirty\$"
git_ -C "$r" commit -qam two
sha2=$(git -C "$r" rev-parse --short HEAD)
[ "$sha2" != "$sha" ] && check "two commits, two versions" "$(v "$r")" "^v0\.0\.0-dev\.g$sha2\$"
git_ -C "$r" tag v0.3.0
check "tagged commit" "$(v "$r")" '^v0\.3\.0$'
echo c >"$r/f"; git_ -C "$r" commit -qam three
check "after a tag" "$(v "$r")" '^v0\.3\.0-1-g[0-9a-f]+$'
check "after a tag is semver" "$(v "$r")" "$semver"

[ "$fails" -eq 0 ] || { echo "$fails failure(s)" >&2; exit 1; }
