#!/usr/bin/env bash
# Single-transfer throughput: put and get of one large file, over TLS (the
# default) and with --plaintext, side by side in the same run, each compared
# with the raw loopback ceiling (a plain socket copy of the same number of
# bytes, measured by examples/loopback_ceiling.rs).
#
# usage: scripts/bench.sh [--size-mib N] [--runs N] [--dir DIR]...
#   default: 1024 MiB, 3 runs, once with the data folder on tmpfs (/dev/shm)
#   and once on the ordinary disk (under ./target/bench).
# MB/s are 10^6 bytes per second. "whole" is the whole ftpc command (connect,
# scrypt login, transfer, CRC check, and for put the server's fsync);
# "transfer" subtracts the time of a login plus one request (ftpc pwd).
# get writes to stdout (ftpc get FILE -) into /dev/null, as curl -o /dev/null
# does in the reference figures; put reads a page-cached file.
set -euo pipefail
cd "$(dirname "$0")/.."

SIZE_MIB=1024
RUNS=3
DIRS=()
while [ $# -gt 0 ]; do
    case "$1" in
        --size-mib) SIZE_MIB=$2; shift 2 ;;
        --runs) RUNS=$2; shift 2 ;;
        --dir) DIRS+=("$2"); shift 2 ;;
        *) echo "unknown option $1" >&2; exit 2 ;;
    esac
done
if [ ${#DIRS[@]} -eq 0 ]; then
    DIRS=(/dev/shm "$PWD/target/bench")
fi

cargo build --release --quiet --bin ftpd --bin ftpc --example loopback_ceiling
FTPD=$PWD/target/release/ftpd
FTPC=$PWD/target/release/ftpc
CEILING=$PWD/target/release/examples/loopback_ceiling
BYTES=$((SIZE_MIB * 1024 * 1024))

now() { date +%s.%N; }
minus() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.6f", a - b }'; }
mbps() { awk -v b="$BYTES" -v s="$1" 'BEGIN { if (s <= 0) print "inf"; else printf "%.0f", b / s / 1e6 }'; }
median() { sort -g | awk '{ v[NR] = $1 } END { print v[int((NR + 1) / 2)] }'; }

SERVER=""
WORK=""
cleanup() {
    [ -n "$SERVER" ] && kill "$SERVER" 2>/dev/null && wait "$SERVER" 2>/dev/null || true
    [ -n "$WORK" ] && rm -rf "$WORK"
}
trap cleanup EXIT

printf '%-28s %-10s %5s %10s %10s %12s %10s\n' "data folder" "transport" "what" "whole MB/s" "xfer MB/s" "ceiling MB/s" "ratio"
for dir in "${DIRS[@]}"; do
  for mode in tls plaintext; do
    mkdir -p "$dir"
    WORK=$(mktemp -d "$dir/ftpd-bench.XXXXXX")
    ROOT=$WORK/root
    echo bench-password | "$FTPD" --root "$ROOT" user add bench --quota 100G --password-stdin > /dev/null
    unset FTPC_PLAINTEXT FTPC_FINGERPRINT
    if [ "$mode" = plaintext ]; then
        FLAGS=(--plaintext); export FTPC_PLAINTEXT=1
    else
        FLAGS=(); export FTPC_FINGERPRINT; FTPC_FINGERPRINT=$("$FTPD" --root "$ROOT" fingerprint)
    fi
    export FTPC_KNOWN_HOSTS=$WORK/known_hosts
    "$FTPD" --root "$ROOT" --listen 127.0.0.1:0 --log-level warn "${FLAGS[@]}" > "$WORK/out" 2> "$WORK/log" &
    SERVER=$!
    for _ in $(seq 100); do [ -s "$WORK/out" ] && break; sleep 0.05; done
    export FTPC_SERVER FTPC_USER=bench FTPC_PASSWORD=bench-password
    FTPC_SERVER=$(sed 's/^listening on //' "$WORK/out")
    SRC=$WORK/src.bin
    head -c "$BYTES" /dev/urandom > "$SRC"
    # Warm-up: the first write of fresh memory is slow on some VMs.
    "$FTPC" --quiet put "$SRC" up.bin
    "$FTPC" --quiet rm up.bin
    "$FTPC" --quiet put "$SRC" dl.bin
    : > "$WORK/get" ; : > "$WORK/put" ; : > "$WORK/ceil"; : > "$WORK/login"
    for _ in $(seq "$RUNS"); do
        "$CEILING" "$BYTES" >> "$WORK/ceil"
        t0=$(now); "$FTPC" --quiet pwd > /dev/null; t1=$(now)
        { minus "$t1" "$t0"; echo; } >> "$WORK/login"
        t0=$(now); "$FTPC" --quiet get dl.bin - > /dev/null; t1=$(now)
        { minus "$t1" "$t0"; echo; } >> "$WORK/get"
        t0=$(now); "$FTPC" --quiet put "$SRC" up.bin; t1=$(now)
        { minus "$t1" "$t0"; echo; } >> "$WORK/put"
        "$FTPC" --quiet rm up.bin
    done
    ceil=$(median < "$WORK/ceil")
    login=$(median < "$WORK/login")
    for what in get put; do
        whole=$(median < "$WORK/$what")
        xfer=$(minus "$whole" "$login")
        w=$(mbps "$whole"); x=$(mbps "$xfer")
        ratio=$(awk -v x="$x" -v c="$ceil" 'BEGIN { printf "%.2f", x / c }')
        printf '%-28s %-10s %5s %10s %10s %12s %10s\n' "$dir" "$mode" "$what" "$w" "$x" "$ceil" "$ratio"
    done
    kill "$SERVER"; wait "$SERVER" 2>/dev/null || true; SERVER=""
    rm -rf "$WORK"; WORK=""
  done
done
echo "($SIZE_MIB MiB, median of $RUNS runs; login+request median subtracted for 'xfer')"
