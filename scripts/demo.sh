#!/usr/bin/env bash
# A tour of the product on the default data folder (./ftpd-data): build,
# start ftpd, create a demo user if missing, then log in, make a folder,
# put and get a generated file, list, show the quota, interrupt a transfer
# and resume it, and stop the server. Safe to run again.
set -euo pipefail
cd "$(dirname "$0")/.."

ROOT=${FTPD_ROOT:-./ftpd-data}
SIZE_MIB=${DEMO_SIZE_MIB:-256}

echo "== building (release)"
cargo build --release --quiet
FTPD=target/release/ftpd
FTPC=target/release/ftpc

mkdir -p "$ROOT"
PASSFILE="$ROOT/demo.password"
if ! "$FTPD" --root "$ROOT" user list | awk 'NR>1 {print $1}' | grep -qx demo; then
    # A fresh random password, kept beside the users so a second run can log in.
    head -c 12 /dev/urandom | od -An -tx1 | tr -d ' \n' > "$PASSFILE"
    chmod 600 "$PASSFILE"
    "$FTPD" --root "$ROOT" user add demo --quota 2G --password-stdin < "$PASSFILE"
elif [ ! -s "$PASSFILE" ]; then
    head -c 12 /dev/urandom | od -An -tx1 | tr -d ' \n' > "$PASSFILE"
    chmod 600 "$PASSFILE"
    "$FTPD" --root "$ROOT" user passwd demo --password-stdin < "$PASSFILE"
fi
echo "demo user: demo, password: $(cat "$PASSFILE")"

WORK=$(mktemp -d)
LOG="$WORK/ftpd.log"
"$FTPD" --root "$ROOT" --listen 127.0.0.1:0 > "$WORK/ftpd.out" 2> "$LOG" &
SERVER=$!
cleanup() {
    kill "$SERVER" 2>/dev/null || true
    wait "$SERVER" 2>/dev/null || true
    rm -rf "$WORK"
}
trap cleanup EXIT
for _ in $(seq 100); do
    [ -s "$WORK/ftpd.out" ] && break
    sleep 0.05
done
ADDR=$(head -n 1 "$WORK/ftpd.out" | sed 's/^listening on //')
echo "== ftpd is listening on $ADDR (log: $LOG)"

# The server made its TLS key on first start; a user gets this fingerprint
# from the administrator and passes it once (ftpc pins it after the login).
FINGERPRINT=$("$FTPD" --root "$ROOT" fingerprint)
echo "== the server's key fingerprint: $FINGERPRINT"
export FTPC_SERVER="$ADDR" FTPC_USER=demo FTPC_PASSWORD FTPC_FINGERPRINT="$FINGERPRINT"
# Pins go to a file of this demo's own, not to ~/.config/ftpc/known_hosts.
export FTPC_KNOWN_HOSTS="$WORK/known_hosts"
FTPC_PASSWORD=$(cat "$PASSFILE")
run() {
    echo "\$ ftpc $*"
    "$FTPC" "$@"
}

run ping
echo "\$ ftpc mkdir docs"
"$FTPC" mkdir docs 2>/dev/null || echo "(docs already exists from an earlier run)"
head -c $((SIZE_MIB * 1024 * 1024)) /dev/urandom > "$WORK/sample.bin"
run put "$WORK/sample.bin" docs/sample.bin
run ls docs
run get docs/sample.bin "$WORK/sample.back"
cmp "$WORK/sample.bin" "$WORK/sample.back" && echo "round trip is byte-identical"
run quota

echo "== interrupting a download part-way, then resuming it"
rm -f "$WORK/again.bin" "$WORK/again.bin.part"
"$FTPC" --quiet get docs/sample.bin "$WORK/again.bin" &
CLIENT=$!
for _ in $(seq 400); do
    size=$(stat -c %s "$WORK/again.bin.part" 2>/dev/null || echo 0)
    [ "$size" -gt $((8 * 1024 * 1024)) ] && break
    sleep 0.01
done
kill -9 "$CLIENT" 2>/dev/null || true
wait "$CLIENT" 2>/dev/null || true
echo "killed the client with $(stat -c %s "$WORK/again.bin.part" 2>/dev/null || echo 0) bytes in again.bin.part"
run get docs/sample.bin "$WORK/again.bin"
cmp "$WORK/sample.bin" "$WORK/again.bin" && echo "resumed download is byte-identical"

echo "== a scripted shell session"
printf 'pwd\ncd docs\npwd\nls\ncd ..\ncd ..\npwd\nquota\n' | "$FTPC" shell

"$FTPC" rm docs/sample.bin
echo "== stopping ftpd"
