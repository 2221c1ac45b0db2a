#!/usr/bin/env bash
# The operator's guide (docs/operations.md), run end to end on one machine.
#
# Starts a Heron emulator and a non-dev Vault (file storage, 127.0.0.1 only,
# initialised with one key share and unsealed), then runs every ```sh block of
# the guide marked <!-- walkthrough: NAME -->, in the guide's order and exactly
# as written (each in its own `bash -euo pipefail`, from the root of a copy of
# the repository, so that the guide's `make build` leaves ./bin alone, with
# `vault` on PATH). The commands live only in the guide: this script holds
# the scaffolding (servers, restart, backup/restore) and the checks between
# steps. It fails when
#   - the guide has a ```sh block marked neither walkthrough (or walkthrough-raft)
#     nor "not run",
#   - a guide block fails, or one is never run, or they are run out of order,
#   - a check fails (policies, TTLs, upgrade without failed requests, restart,
#     restore, audit log), or
#   - at the end Heron (the emulator) still holds an undeleted key that the
#     engine created.
#
#   VAULT_BIN=/path/to/vault bash scripts/operator-walkthrough.sh
#
# VAULT_BIN as for make test (else scripts/vault-bin.sh finds or builds one).
# WALKTHROUGH_KEEP=1 keeps the work directory (logs) even on success.
# Needs Go, make, curl, jq, sha256sum. No network beyond 127.0.0.1.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
GUIDE="$ROOT/docs/operations.md"

START=$(date +%s)
WORK=""
VAULT_PID=""
EMU_PID=""
LOAD_PID=""
STEP="setup"

log() { printf '==> %s\n' "$*" >&2; }
fail() {
	printf '==> FAILED at %s: %s\n' "$STEP" "$*" >&2
	exit 1
}

# shellcheck disable=SC2317 # reached through the EXIT trap
cleanup() {
	local rc=$?
	trap - INT TERM EXIT
	for pid in "$LOAD_PID" "$VAULT_PID" "$EMU_PID"; do
		if [ -n "$pid" ]; then kill "$pid" 2>/dev/null || true; fi
	done
	for pid in "$LOAD_PID" "$VAULT_PID" "$EMU_PID"; do
		if [ -n "$pid" ]; then wait "$pid" 2>/dev/null || true; fi
	done
	local took=$(($(date +%s) - START))
	if [ "$rc" -eq 0 ]; then
		if [ -n "$WORK" ] && [ -z "${WALKTHROUGH_KEEP:-}" ]; then rm -rf "$WORK"; fi
		[ -n "${WALKTHROUGH_KEEP:-}" ] && log "work directory kept: $WORK"
		echo "PASS operator walkthrough (docs/operations.md, ${RUN_COUNT:-0} guide blocks) in ${took}s"
	else
		if [ -n "$WORK" ]; then
			if [ -f "$WORK/vault.log" ]; then
				echo "---- tail of $WORK/vault.log ----" >&2
				tail -n 40 "$WORK/vault.log" >&2 || true
			fi
			log "logs kept in $WORK"
		fi
		echo "FAIL operator walkthrough at step '$STEP' (exit $rc) after ${took}s"
	fi
	exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

for tool in go make curl jq sha256sum awk; do
	command -v "$tool" >/dev/null 2>&1 || fail "needs $tool on PATH"
done

WORK="$(mktemp -d "${TMPDIR:-/tmp}/heron-walkthrough.XXXXXX")"
mkdir -p "$WORK/blocks" "$WORK/out" "$WORK/path" "$WORK/home" "$WORK/plugins" "$WORK/data" "$WORK/src"
log "work directory $WORK"
# The checkout the guide's commands run in: this tree as it is (uncommitted
# changes included), without build outputs.
tar -C "$ROOT" --exclude=./bin --exclude=./dist --exclude=./.git -cf - . | tar -C "$WORK/src" -xf -

# --- the guide's blocks -----------------------------------------------------
# Every ```sh block must be either directly preceded by <!-- walkthrough: NAME -->
# or <!-- walkthrough-raft: NAME --> (run by e2e/operator_ha_test.go on a Raft
# cluster, skipped here), or directly followed by <!-- not run: REASON -->.
# Walkthrough blocks are written to $WORK/blocks/NN-NAME.sh and listed, in
# order, in $WORK/blocks/index.
awk -v dir="$WORK/blocks" '
	function bad(msg) { printf "docs/operations.md:%d: %s\n", NR, msg > "/dev/stderr"; err = 1 }
	/^<!-- walkthrough: [a-z0-9-]+ -->$/ {
		name = $3; marked = NR; next
	}
	/^<!-- walkthrough-raft: [a-z0-9-]+ -->$/ {
		if ($3 in seen) bad("walkthrough block " $3 " named twice")
		seen[$3] = 1; raft = NR; next
	}
	/^```/ && !inblock {
		lang = substr($0, 4)
		inblock = 1; start = NR
		if (lang == "sh") {
			if (raft == NR - 1) {
				run = 0
			} else if (marked == NR - 1) {
				if (name in seen) bad("walkthrough block " name " named twice")
				seen[name] = 1; n++
				file = sprintf("%s/%02d-%s.sh", dir, n, name)
				print name > (dir "/index")
				run = 1
			} else {
				run = 0; pending = 1
			}
		} else if (marked == NR - 1 || raft == NR - 1) {
			bad("a walkthrough marker must precede a ```sh block")
		}
		next
	}
	/^```$/ && inblock {
		inblock = 0; closed = NR
		if (run) close(file)
		run = 0
		next
	}
	inblock && run { print > file; next }
	pending && !inblock && NR == closed + 1 {
		pending = 0
		if ($0 !~ /^<!-- not run: .+ -->$/)
			bad("the ```sh block at line " start " is neither a walkthrough block nor marked <!-- not run: REASON -->")
		next
	}
	pending && !inblock && NR > closed + 1 { pending = 0 }
	END {
		if (pending) bad("the ```sh block at line " start " is not marked")
		if (inblock) bad("unclosed code block from line " start)
		exit err
	}
' "$GUIDE" || fail "the guide's blocks are not all marked (see above)"
[ -s "$WORK/blocks/index" ] || fail "no walkthrough blocks found in $GUIDE"
mapfile -t BLOCKS <"$WORK/blocks/index"
log "guide: ${#BLOCKS[@]} walkthrough blocks: ${BLOCKS[*]}"
RUN_COUNT=0
# The blocks this script runs, in order: a block added to, removed from,
# renamed or moved in the guide fails here, before anything starts, until the
# script runs it at the right point (with the checks it deserves).
EXPECTED=(install-build install-register install-audit configure policies policies-check token-ttl
	upgrade upgrade-cleanup restore-admin-key restore-inventory events decommission decommission-plugin)
[ "${BLOCKS[*]}" = "${EXPECTED[*]}" ] ||
	fail "the guide's walkthrough blocks are (${BLOCKS[*]}), this script runs (${EXPECTED[*]})"

# step NAME: run the guide's block NAME, which must be the next one in the
# guide. Its output goes to the terminal and to $WORK/out/NAME.out.
step() {
	local name=$1 want="${BLOCKS[$RUN_COUNT]:-<none left>}"
	STEP="guide block '$name'"
	[ "$name" = "$want" ] || fail "the script runs '$name' but the guide's next block is '$want'"
	local file
	file="$(printf '%s/%02d-%s.sh' "$WORK/blocks" $((RUN_COUNT + 1)) "$name")"
	printf '\n---- docs/operations.md: %s ----\n' "$name"
	sed 's/^/$ /' "$file"
	if ! (cd "$WORK/src" && bash -euo pipefail "$file") 2>&1 | tee "$WORK/out/$name.out"; then
		fail "a command of the guide failed"
	fi
	# A last line without a newline (vault read -field=...) ends here.
	[ -z "$(tail -c 1 "$WORK/out/$name.out")" ] || echo
	RUN_COUNT=$((RUN_COUNT + 1))
	STEP="checks after '$name'"
}

# --- tools on PATH, as an operator has them -----------------------------------
VAULT="$(bash "$ROOT/scripts/vault-bin.sh")"
ln -s "$VAULT" "$WORK/path/vault"
export PATH="$WORK/path:$PATH"
# Go's caches and settings stay the user's (they default to paths under HOME).
GOPATH="$(go env GOPATH)" GOMODCACHE="$(go env GOMODCACHE)" GOCACHE="$(go env GOCACHE)" GOENV="$(go env GOENV)"
export GOPATH GOMODCACHE GOCACHE GOENV
export HOME="$WORK/home" # keeps the CLI's token helper away from the user's ~/.vault-token
log "using $(vault version)"

# --- Heron emulator -----------------------------------------------------------
STEP="emulator"
go build -o "$WORK/heron-emulator" ./cmd/heron-emulator
"$WORK/heron-emulator" -listen 127.0.0.1:0 -env production -quiet \
	>"$WORK/emulator.out" 2>"$WORK/emulator.log" &
EMU_PID=$!
for _ in $(seq 1 100); do
	grep -q '^listening on ' "$WORK/emulator.out" 2>/dev/null && break
	kill -0 "$EMU_PID" 2>/dev/null || { cat "$WORK/emulator.log" >&2; fail "emulator exited"; }
	sleep 0.1
done
EMU_URL="$(sed -n 's/^listening on //p' "$WORK/emulator.out")"
[ -n "$EMU_URL" ] || fail "emulator did not start"
case "$EMU_URL" in http://127.0.0.1:*) ;; *) fail "emulator not on 127.0.0.1: $EMU_URL" ;; esac
export HERON_BASE_URL="$EMU_URL"
HERON_ADMIN_KEY="$(sed -n 's/^env production admin-keys \([^,]*\).*/\1/p' "$WORK/emulator.out")"
export HERON_ADMIN_KEY
log "Heron emulator at $EMU_URL"

# emu_keys: every key the emulator holds (JSON array of KeyRecord).
emu_keys() { curl -fsS "$EMU_URL/_emulator/keys"; }

# --- Vault: file storage, 127.0.0.1 only ------------------------------------------
port_busy() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
PORT=$((20000 + RANDOM % 20000))
while port_busy "$PORT" || port_busy "$((PORT + 1))"; do PORT=$((PORT + 2)); done
export VAULT_ADDR="http://127.0.0.1:$PORT"
export PLUGIN_DIR="$WORK/plugins"
export VAULT_AUDIT_LOG="$WORK/audit.log"
unset VAULT_TOKEN VAULT_NAMESPACE
cat >"$WORK/vault.hcl" <<EOF
storage "file" {
  path = "$WORK/data"
}
listener "tcp" {
  address         = "127.0.0.1:$PORT"
  cluster_address = "127.0.0.1:$((PORT + 1))"
  tls_disable     = true
}
api_addr         = "http://127.0.0.1:$PORT"
cluster_addr     = "https://127.0.0.1:$((PORT + 1))"
plugin_directory = "$PLUGIN_DIR"
disable_mlock    = true
EOF

# health: the HTTP status of sys/health (000 when nothing answers).
health() { curl -s -o /dev/null -w '%{http_code}' --max-time 2 "$VAULT_ADDR/v1/sys/health" || true; }

vault_start() {
	vault server -config="$WORK/vault.hcl" >>"$WORK/vault.log" 2>&1 &
	VAULT_PID=$!
	local i
	for i in $(seq 1 300); do
		[ "$(health)" != 000 ] && return 0
		kill -0 "$VAULT_PID" 2>/dev/null || fail "vault server exited"
		sleep 0.2
	done
	fail "vault server did not listen"
}

vault_unseal() {
	vault operator unseal "$UNSEAL_KEY" >/dev/null
	local i
	for i in $(seq 1 300); do
		[ "$(health)" = 200 ] && return 0
		sleep 0.2
	done
	fail "vault did not become active after unseal"
}

vault_stop() {
	kill -TERM "$VAULT_PID"
	local i
	for i in $(seq 1 150); do
		kill -0 "$VAULT_PID" 2>/dev/null || break
		sleep 0.2
	done
	if kill -0 "$VAULT_PID" 2>/dev/null; then
		kill -KILL "$VAULT_PID" 2>/dev/null || true
		fail "vault did not stop within 30s of SIGTERM"
	fi
	wait "$VAULT_PID" 2>/dev/null || true
	VAULT_PID=""
}

STEP="vault init"
vault_start
vault operator init -key-shares=1 -key-threshold=1 -format=json >"$WORK/init.json"
UNSEAL_KEY="$(jq -r '.unseal_keys_b64[0]' "$WORK/init.json")"
VAULT_TOKEN="$(jq -r '.root_token' "$WORK/init.json")"
export VAULT_TOKEN
vault_unseal
log "Vault (file storage) at $VAULT_ADDR, initialised and unsealed"

# --- checks helpers ---------------------------------------------------------------
# allowed TOKEN DESC CMD...: CMD run with TOKEN must succeed.
allowed() {
	local tok=$1 desc=$2
	shift 2
	if ! VAULT_TOKEN="$tok" "$@" >"$WORK/check.out" 2>&1; then
		cat "$WORK/check.out" >&2
		fail "$desc: should be allowed"
	fi
	printf '  ok  allowed: %s\n' "$desc"
}
# denied TOKEN DESC CMD...: CMD run with TOKEN must fail with permission denied.
denied() {
	local tok=$1 desc=$2
	shift 2
	if VAULT_TOKEN="$tok" "$@" >"$WORK/check.out" 2>&1; then
		fail "$desc: should be denied, but succeeded"
	fi
	grep -q 'permission denied' "$WORK/check.out" || {
		cat "$WORK/check.out" >&2
		fail "$desc: failed, but not with permission denied"
	}
	printf '  ok  denied:  %s\n' "$desc"
}
field() { sed -n "s/^$1[[:space:]]\{1,\}//p" "$2" | head -n 1; }

# === Install =========================================================================
step install-build
[ -x "$WORK/src/bin/vault-plugin-secrets-heron" ] || fail "make build left no bin/vault-plugin-secrets-heron"
[ "$("$WORK/src/bin/vault-plugin-secrets-heron" -version)" = v0.1.0 ] || fail "the build does not report v0.1.0"
step install-register
vault read -format=json sys/mounts/heron | jq -e '.data.running_plugin_version == "v0.1.0"' >/dev/null ||
	fail "heron/ does not run v0.1.0"
step install-audit

# === Configure and issue =============================================================
step configure
LEASE1="$(field lease_id "$WORK/out/configure.out")"
KEY1="$(field key_id "$WORK/out/configure.out")"
[ -n "$LEASE1" ] && [ -n "$KEY1" ] || fail "no lease_id/key_id in the output of vault read heron/creds/payments"
emu_keys | jq -e --arg id "$KEY1" 'any(.[]; .heron_id == $id and .is_active and (.deleted | not))' >/dev/null ||
	fail "the issued key $KEY1 is not live in Heron"

# === Policies ========================================================================
step policies
step policies-check
grep -q 'deny' <(tail -n 2 "$WORK/out/policies-check.out") || fail "capabilities of heron-auditor on creds/ are not deny"
APP="$(vault token create -policy=heron-app -ttl=30m -field=token)"
OPS="$(vault token create -policy=heron-operator -ttl=30m -field=token)"
AUD="$(vault token create -policy=heron-auditor -ttl=30m -field=token)"
log "policy checks"
allowed "$APP" "app reads creds/payments" vault read heron/creds/payments
APP_LEASE="$(field lease_id "$WORK/check.out")"
allowed "$APP" "app renews its lease" vault lease renew "$APP_LEASE"
allowed "$APP" "app reads static-creds/billing-batch" vault read heron/static-creds/billing-batch
denied "$APP" "app writes config" vault write heron/config/production rate_limit_per_minute=200
denied "$APP" "app writes a role" vault write heron/roles/payments ttl=2h
denied "$APP" "app rotates a static role" vault write -f heron/static-roles/billing-batch/rotate
denied "$APP" "app rotates a static role (rotate-role)" vault write -f heron/rotate-role/billing-batch
denied "$APP" "app rotates the admin key (rotate-root)" vault write -f heron/rotate-root/production
denied "$APP" "app lists keys" vault list heron/keys
denied "$APP" "app reads inventory" vault read heron/inventory/production
denied "$APP" "app runs tidy" vault write -f heron/tidy
denied "$APP" "app revokes by prefix" vault lease revoke -prefix heron/creds/payments

denied "$OPS" "operator reads creds/payments" vault read heron/creds/payments
denied "$OPS" "operator reads static-creds" vault read heron/static-creds/billing-batch
allowed "$OPS" "operator reads config" vault read heron/config/production
allowed "$OPS" "operator writes config" vault write heron/config/production rate_limit_per_minute=250
allowed "$OPS" "operator lists configs" vault list heron/config
allowed "$OPS" "operator writes a role" vault write heron/roles/ops-check environment=production ttl=5m
allowed "$OPS" "operator lists roles" vault list heron/roles
allowed "$OPS" "operator deletes a role" vault delete heron/roles/ops-check
allowed "$OPS" "operator reads a static role" vault read heron/static-roles/billing-batch
allowed "$OPS" "operator rotates a static role" vault write -f heron/static-roles/billing-batch/rotate
allowed "$OPS" "operator rotates a static role (rotate-role)" vault write -f heron/rotate-role/billing-batch
allowed "$OPS" "operator runs tidy" vault write -f heron/tidy
allowed "$OPS" "operator lists keys" vault list heron/keys
allowed "$OPS" "operator reads a key" vault read "heron/keys/$KEY1"
allowed "$OPS" "operator reads inventory" vault read heron/inventory/production
allowed "$OPS" "operator revokes by prefix" vault lease revoke -prefix heron/creds/ops-check/
denied "$OPS" "operator writes a policy" vault policy write x - <<<'path "x" { capabilities = ["read"] }'
denied "$OPS" "operator disables the mount" vault secrets disable heron/

denied "$AUD" "auditor reads creds/payments" vault read heron/creds/payments
denied "$AUD" "auditor reads static-creds" vault read heron/static-creds/billing-batch
denied "$AUD" "auditor reads config" vault read heron/config/production
denied "$AUD" "auditor writes config" vault write heron/config/production rate_limit_per_minute=200
denied "$AUD" "auditor writes a role" vault write heron/roles/aud-check environment=production
denied "$AUD" "auditor reads a static role" vault read heron/static-roles/billing-batch
denied "$AUD" "auditor runs tidy" vault write -f heron/tidy
denied "$AUD" "auditor revokes by prefix" vault lease revoke -prefix heron/creds/payments
allowed "$AUD" "auditor lists keys" vault list heron/keys
allowed "$AUD" "auditor lists with filters" vault read heron/keys list=true role=payments
allowed "$AUD" "auditor reads a key" vault read "heron/keys/$KEY1"
allowed "$AUD" "auditor reads inventory" vault read heron/inventory/production
vault token revoke "$APP" >/dev/null
vault token revoke "$OPS" >/dev/null
vault token revoke "$AUD" >/dev/null

# === Token TTLs ======================================================================
step token-ttl
[ "$(field lease_duration "$WORK/out/token-ttl.out")" = 1h ] || fail "the lease does not show the role's ttl (1h)"
TTL_KEY="$(field key_id "$WORK/out/token-ttl.out")"
log "waiting for the 15s token to expire and take its lease and key $TTL_KEY with it"
for _ in $(seq 1 90); do
	emu_keys | jq -e --arg id "$TTL_KEY" 'any(.[]; .heron_id == $id and .deleted)' >/dev/null && break
	sleep 1
done
emu_keys | jq -e --arg id "$TTL_KEY" 'any(.[]; .heron_id == $id and .deleted)' >/dev/null ||
	fail "key $TTL_KEY still in Heron 90s after its 15s token expired"
vault read -format=json "heron/keys/$TTL_KEY" | jq -e '.data.state == "deleted" and .data.reason == "revoked"' >/dev/null ||
	fail "heron/keys/$TTL_KEY does not say deleted/revoked"
log "the key was deleted when its token expired (heron/keys: state=deleted reason=revoked)"

# === Upgrade =========================================================================
# Reads through the plugin all along the upgrade: none may fail.
# The guide says a running plugin binary cannot be copied over.
STEP="text file busy"
if cp "$WORK/src/bin/vault-plugin-secrets-heron" "$PLUGIN_DIR/vault-plugin-secrets-heron_v0.1.0" 2>"$WORK/check.out"; then
	fail "copying over the running plugin binary succeeded; the guide says it fails"
fi
grep -qi 'text file busy' "$WORK/check.out" || { cat "$WORK/check.out" >&2; fail "cp over the running plugin failed, but not with text file busy"; }
log "copying over the running plugin fails: $(cat "$WORK/check.out")"

STEP="upgrade load"
: >"$WORK/load.fail"
: >"$WORK/load.count"
(
	while :; do
		if vault read heron/roles/payments >/dev/null 2>>"$WORK/load.err"; then
			echo . >>"$WORK/load.count"
		else
			date +%T.%N >>"$WORK/load.fail"
		fi
		sleep 0.1
	done
) &
LOAD_PID=$!
step upgrade
sleep 1
kill "$LOAD_PID" 2>/dev/null || true
wait "$LOAD_PID" 2>/dev/null || true
LOAD_PID=""
LOAD_OK=$(wc -l <"$WORK/load.count")
LOAD_FAIL=$(wc -l <"$WORK/load.fail")
log "reads during the upgrade: $LOAD_OK succeeded, $LOAD_FAIL failed"
[ "$LOAD_FAIL" -eq 0 ] || { cat "$WORK/load.err" >&2; fail "$LOAD_FAIL reads of heron/roles/payments failed during the upgrade"; }
[ "$LOAD_OK" -gt 10 ] || fail "too few reads during the upgrade ($LOAD_OK) to say anything"
[ "$(tail -n 1 "$WORK/out/upgrade.out")" = v0.2.0 ] || fail "after the upgrade heron/ does not run v0.2.0"
vault lease renew "$LEASE1" >/dev/null || fail "the lease issued by v0.1.0 does not renew on v0.2.0"
vault read heron/creds/payments >/dev/null || fail "v0.2.0 issues no credentials"
step upgrade-cleanup
[ ! -e "$PLUGIN_DIR/vault-plugin-secrets-heron_v0.1.0" ] || fail "v0.1.0 still on disk"

# === Restart (and the backup, taken while Vault is stopped) ================================
STEP="restart"
log "restarting Vault (SIGTERM, start, unseal); backup of the stopped server's storage"
vault_stop
cp -a "$WORK/data" "$WORK/backup"
vault_start
vault_unseal
vault read -format=json sys/mounts/heron | jq -e '.data.running_plugin_version == "v0.2.0"' >/dev/null ||
	fail "after the restart heron/ does not run v0.2.0"
vault lease renew "$LEASE1" >/dev/null || fail "the lease issued before the restart does not renew"
vault read heron/creds/payments >/dev/null || fail "no credentials after the restart"

# Work after the backup: a key issued and an admin key rotation.
STEP="after the backup"
vault read -format=json heron/creds/payments >"$WORK/late.json"
LATE_KEY="$(jq -r '.data.key_id' "$WORK/late.json")"
vault write -f heron/rotate-root/production >/dev/null
ROTATED_ADMIN="$(vault read -format=json heron/config/production | jq -r '.data.admin_key_id')"
[ -n "$LATE_KEY" ] && [ -n "$ROTATED_ADMIN" ] && [ "$ROTATED_ADMIN" != null ] || fail "no key id after issue/rotate"
log "after the backup: issued $LATE_KEY, rotated the admin key to $ROTATED_ADMIN"

# === Restore =========================================================================
STEP="restore"
log "restoring the backup (stop, replace the storage directory, start, unseal)"
vault_stop
rm -rf "$WORK/data"
cp -a "$WORK/backup" "$WORK/data"
vault_start
vault_unseal
if vault read heron/inventory/production >"$WORK/check.out" 2>&1; then
	fail "the restored config's admin key (rotated out after the backup) still works"
fi
grep -q 'production' "$WORK/check.out" || { cat "$WORK/check.out" >&2; fail "the 401 does not name the config"; }
# "Create a new admin key in Heron's dashboard": the emulator's control surface.
HERON_ADMIN_KEY="$(curl -fsS -X POST "$EMU_URL/_emulator/admin-keys?env=production" | jq -r .token)"
export HERON_ADMIN_KEY
step restore-admin-key
step restore-inventory
emu_keys | jq -e --arg a "$LATE_KEY" --arg b "$ROTATED_ADMIN" \
	'all(.[]; ((.heron_id == $a or .heron_id == $b) | not) or .deleted)' >/dev/null ||
	fail "keys created after the backup are still in Heron"
vault read -format=json heron/inventory/production |
	jq -e '[.data.keys[] | select(.class == "unmanaged" and (.name | startswith("vault-")))] | length == 0' >/dev/null ||
	fail "the inventory still lists unmanaged vault- keys after the restore steps"

# === Events ==========================================================================
step events
grep -q "\"key_id\":\"$KEY1\"" "$VAULT_AUDIT_LOG" || fail "the audit log does not carry key_id $KEY1 in clear"
grep -q "event=heron/key-issue" "$WORK/vault.log" || fail "no event=heron/key-issue line in Vault's server log"

# === Decommissioning ===================================================================
step decommission
vault secrets list -format=json | jq -e 'has("heron/") | not' >/dev/null || fail "heron/ is still mounted"
step decommission-plugin
[ -z "$(ls -A "$PLUGIN_DIR")" ] || fail "plugin_directory is not empty: $(ls "$PLUGIN_DIR")"

# === Every guide block ran; nothing the engine created is live ===========================
STEP="final checks"
[ "$RUN_COUNT" -eq "${#BLOCKS[@]}" ] || fail "ran $RUN_COUNT of ${#BLOCKS[@]} guide blocks; not run: ${BLOCKS[*]:$RUN_COUNT}"
emu_keys >"$WORK/keys.json"
jq -r '.[] | select(.created_by != "" and (.deleted | not)) | "\(.heron_id) \(.name) active=\(.is_active)"' \
	"$WORK/keys.json" >"$WORK/leftover"
if [ -s "$WORK/leftover" ]; then
	cat "$WORK/leftover" >&2
	fail "$(wc -l <"$WORK/leftover") key(s) created by the engine are not deleted in Heron"
fi
log "Heron holds $(jq 'length' "$WORK/keys.json") key records: $(jq '[.[] | select(.deleted)] | length' "$WORK/keys.json") deleted, \
$(jq '[.[] | select(.created_by == "" and (.deleted | not))] | length' "$WORK/keys.json") made by hand (the admin keys), none left by the engine"
STEP="done"
