#!/usr/bin/env bash
# Demo of the Heron secrets engine on one machine, no cloud account needed:
# a Heron emulator, a Vault dev server running the plugin built from this
# tree, config/development and role "demo" set up, one key issued. It then
# prints the exports to use that Vault from another shell and waits;
# Ctrl-C stops everything it started.
#
# Needs Go only. The Vault is the one scripts/vault-bin.sh picks: $VAULT_BIN,
# else a vault 1.15+ on PATH, else bin/vault, built (as `make vault` does, about
# 16 minutes the first time on 2 cores) when absent. Environment knobs:
#   VERSION            plugin version stamped and registered (default: scripts/version.sh,
#                      from git describe; v0.0.0-dev outside a git checkout)
#   DEMO_VAULT_PORT    Vault's port (default 8200, else the next free pair)
#   DEMO_EMULATOR_ADDR emulator listen address (default 127.0.0.1:8787,
#                      else a free port)
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

VERSION="$(bash "$ROOT/scripts/version.sh")"
PLUGIN=vault-plugin-secrets-heron
WORK=""
VAULT_PID=""
EMU_PID=""

log() { printf '==> %s\n' "$*" >&2; }

# shellcheck disable=SC2317 # reached through the EXIT trap
cleanup() {
	local rc=$?
	trap - INT TERM EXIT
	log "stopping"
	# Only the two processes this script started; Vault stops its plugin.
	for pid in "$VAULT_PID" "$EMU_PID"; do
		if [ -n "$pid" ]; then kill "$pid" 2>/dev/null || true; fi
	done
	for pid in "$VAULT_PID" "$EMU_PID"; do
		if [ -n "$pid" ]; then wait "$pid" 2>/dev/null || true; fi
	done
	if [ -n "$WORK" ]; then
		# The logs stay (until the next demo) for a look at what happened;
		# the PID file goes with the processes it names.
		rm -f "$WORK/demo.pid"
		log "logs kept in $WORK (vault.log, emulator.log)"
	fi
	exit "$rc"
}
trap cleanup EXIT
# Ctrl-C is how the demo is meant to end, so it exits 0.
trap 'exit 0' INT TERM

# port_busy PORT: something accepts connections on 127.0.0.1:PORT.
port_busy() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

sha256() {
	if command -v sha256sum >/dev/null 2>&1; then
		sha256sum "$1" | cut -d' ' -f1
	else
		shasum -a 256 "$1" | cut -d' ' -f1
	fi
}

# --- binaries ---------------------------------------------------------------
VAULT="$(bash "$ROOT/scripts/vault-bin.sh")"
log "using $("$VAULT" version)"

# One demo at a time, in bin/demo: its PID file says which is running (and
# what to kill), its logs outlive it until the next demo starts.
DEMO_DIR="$ROOT/bin/demo"
if [ -f "$DEMO_DIR/demo.pid" ] && kill -0 "$(head -n 1 "$DEMO_DIR/demo.pid")" 2>/dev/null; then
	log "a demo is already running (PID $(head -n 1 "$DEMO_DIR/demo.pid"), see $DEMO_DIR/demo.pid): stop it with Ctrl-C in its shell, or kill $(head -n 1 "$DEMO_DIR/demo.pid")"
	exit 1
fi
rm -rf "$DEMO_DIR"
mkdir -p "$DEMO_DIR/plugins" "$DEMO_DIR/bin" "$DEMO_DIR/home"
WORK="$DEMO_DIR"
echo "$$" >"$WORK/demo.pid"
log "building the plugin ($VERSION) and the emulator"
go build -ldflags "-X github.com/heron-vault/vault-plugin-secrets-heron.Version=$VERSION" \
	-o "$WORK/plugins/$PLUGIN" ./cmd/vault-plugin-secrets-heron
go build -o "$WORK/bin/heron-emulator" ./cmd/heron-emulator
SUM="$(sha256 "$WORK/plugins/$PLUGIN")"

# --- Heron emulator ---------------------------------------------------------
EMU_ADDR="${DEMO_EMULATOR_ADDR:-127.0.0.1:8787}"
if [ -z "${DEMO_EMULATOR_ADDR:-}" ] && port_busy 8787; then
	EMU_ADDR=127.0.0.1:0
fi
"$WORK/bin/heron-emulator" -listen "$EMU_ADDR" -env development -env production \
	>"$WORK/emulator.out" 2>"$WORK/emulator.log" &
EMU_PID=$!
echo "$EMU_PID" >>"$WORK/demo.pid"
for _ in $(seq 1 100); do
	grep -q '^listening on ' "$WORK/emulator.out" 2>/dev/null && break
	kill -0 "$EMU_PID" 2>/dev/null || { cat "$WORK/emulator.log" >&2; exit 1; }
	sleep 0.1
done
EMU_URL="$(sed -n 's/^listening on //p' "$WORK/emulator.out")"
[ -n "$EMU_URL" ] || { log "emulator did not start"; cat "$WORK/emulator.log" >&2; exit 1; }
# "env development admin-keys key_a,key_b": the first key is the one to use.
DEV_KEY="$(sed -n 's/^env development admin-keys \([^,]*\).*/\1/p' "$WORK/emulator.out")"
log "Heron emulator at $EMU_URL"

# --- Vault dev server -------------------------------------------------------
PORT="${DEMO_VAULT_PORT:-8200}"
if [ -z "${DEMO_VAULT_PORT:-}" ]; then
	# Vault also takes PORT+1 for its cluster listener.
	while port_busy "$PORT" || port_busy "$((PORT + 1))"; do
		PORT=$((PORT + 10))
	done
fi
export VAULT_ADDR="http://127.0.0.1:$PORT" VAULT_TOKEN=root
# A private HOME keeps the dev server from overwriting the user's ~/.vault-token.
export HOME="$WORK/home"
"$VAULT" server -dev -dev-root-token-id=root -dev-listen-address="127.0.0.1:$PORT" \
	-dev-plugin-dir="$WORK/plugins" >"$WORK/vault.log" 2>&1 &
VAULT_PID=$!
echo "$VAULT_PID" >>"$WORK/demo.pid"
for _ in $(seq 1 150); do
	"$VAULT" status >/dev/null 2>&1 && break
	kill -0 "$VAULT_PID" 2>/dev/null || { tail -n 40 "$WORK/vault.log" >&2; exit 1; }
	sleep 0.2
done
"$VAULT" status >/dev/null || { log "Vault did not come up"; tail -n 40 "$WORK/vault.log" >&2; exit 1; }
log "Vault dev server at $VAULT_ADDR"

# --- the engine -------------------------------------------------------------
run() { printf '$ %s\n' "$*" >&2; "$@"; }
run "$VAULT" plugin register -sha256="$SUM" -version="$VERSION" secret "$PLUGIN"
run "$VAULT" secrets enable -path=heron -plugin-version="$VERSION" "$PLUGIN"
printf '$ %s\n' "$VAULT write heron/config/development admin_api_key=${DEV_KEY:0:8}... base_url=$EMU_URL" >&2
"$VAULT" write heron/config/development admin_api_key="$DEV_KEY" base_url="$EMU_URL"
run "$VAULT" write heron/roles/demo environment=development ttl=5m max_ttl=1h
run "$VAULT" read heron/creds/demo

cat <<EOF

The demo is running. From another shell:

    export VAULT_ADDR=$VAULT_ADDR VAULT_TOKEN=root
    $VAULT read heron/creds/demo
    $VAULT list heron/keys
    $VAULT lease revoke -prefix heron/creds/demo
    curl -s $EMU_URL/_emulator/keys    # what Heron (the emulator) holds

Logs: $WORK/vault.log, $WORK/emulator.log (kept after the demo stops).
PID file: $WORK/demo.pid (this script; Vault $VAULT_PID, emulator $EMU_PID).
Press Ctrl-C to stop.
EOF

while kill -0 "$VAULT_PID" 2>/dev/null && kill -0 "$EMU_PID" 2>/dev/null; do
	sleep 1
done
log "a demo process exited on its own"
tail -n 20 "$WORK/vault.log" "$WORK/emulator.log" >&2 || true
exit 1
