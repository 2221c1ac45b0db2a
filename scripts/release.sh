#!/usr/bin/env bash
# Release build: scripts/release.sh [vX.Y.Z] (what `make release [VERSION=vX.Y.Z]` runs;
# without a version, the one scripts/version.sh derives from git describe).
# Cross-builds the plugin for linux and darwin, amd64 and arm64 (static, CGO off,
# -trimpath, the version stamped with -ldflags) into dist/, writes dist/SHA256SUMS,
# checks that the binary for this machine (if one of the four) answers -version
# with the version, and prints the `vault plugin register` line of each binary.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

GO="${GO:-go}"
PLUGIN=vault-plugin-secrets-heron
VERSION="${1:-$(bash "$(dirname "${BASH_SOURCE[0]}")/version.sh")}"

# Vault requires a plugin version to be semantic; the project's versions carry a v.
if ! [[ "$VERSION" =~ ^v[0-9]+\.[0-9]+\.[0-9]+(-[0-9A-Za-z.-]+)?(\+[0-9A-Za-z.-]+)?$ ]]; then
	echo "usage: $0 vX.Y.Z[-pre][+build] (got '${VERSION}')" >&2
	exit 2
fi

rm -rf dist
mkdir -p dist
bins=()
for os in linux darwin; do
	for arch in amd64 arm64; do
		bin="${PLUGIN}_${VERSION}_${os}_${arch}"
		echo "==> dist/$bin" >&2
		CGO_ENABLED=0 GOOS="$os" GOARCH="$arch" "$GO" build -trimpath \
			-ldflags "-X github.com/heron-vault/vault-plugin-secrets-heron.Version=$VERSION" \
			-o "dist/$bin" "./cmd/$PLUGIN"
		bins+=("$bin")
	done
done

sha256() {
	if command -v sha256sum >/dev/null 2>&1; then
		sha256sum "$@"
	else
		shasum -a 256 "$@"
	fi
}
(cd dist && sha256 "${bins[@]}" >SHA256SUMS)

host="${PLUGIN}_${VERSION}_$("$GO" env GOOS)_$("$GO" env GOARCH)"
if [ -x "dist/$host" ]; then
	got="$("dist/$host" -version)"
	if [ "$got" != "$VERSION" ]; then
		echo "dist/$host -version prints '$got', want '$VERSION'" >&2
		exit 1
	fi
fi

cat <<EOF

dist/SHA256SUMS:
$(cat dist/SHA256SUMS)

Copy the binary for the Vault server's platform into its plugin_directory, then:

EOF
while read -r sum bin; do
	printf 'vault plugin register -sha256=%s -version=%s -command=%s secret %s\n' \
		"$sum" "$VERSION" "$bin" "$PLUGIN"
done <dist/SHA256SUMS
