#!/usr/bin/env bash
# Tree uploads: `ftpc put -r` of many small files, its unchanged rerun, and
# a tree of one large file plus many small ones against the single large
# put, all whole commands (connect, scrypt login, walk, transfer, syncs).
#
# usage: scripts/tree_bench.sh [--runs N] [--dir DIR] [--big-mib N]
#   default: 3 runs, data folder and local trees on tmpfs (/dev/shm),
#   2,000 files of 4 KiB in 20 folders, and 1024 MiB + 1,000 files of 4 KiB.
# Prints the median of the runs (and the spread) for each figure.
set -euo pipefail
cd "$(dirname "$0")/.."

RUNS=3
DIR=/dev/shm
BIG_MIB=1024
while [ $# -gt 0 ]; do
    case "$1" in
        --runs) RUNS=$2; shift 2 ;;
        --dir) DIR=$2; shift 2 ;;
        --big-mib) BIG_MIB=$2; shift 2 ;;
        *) echo "unknown option $1" >&2; exit 2 ;;
    esac
done

cargo build --release --quiet --bin ftpd --bin ftpc
FTPD=$PWD/target/release/ftpd
FTPC=$PWD/target/release/ftpc

now() { date +%s.%N; }
minus() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.6f", a - b }'; }
stats() { sort -g | awk '{ v[NR] = $1 } END { printf "%.3f (%.3f-%.3f)", v[int((NR + 1) / 2)], v[1], v[NR] }'; }

SERVER=""
WORK=$(mktemp -d "$DIR/ftpd-tree-bench.XXXXXX")
cleanup() {
    [ -n "$SERVER" ] && kill "$SERVER" 2>/dev/null && wait "$SERVER" 2>/dev/null || true
    rm -rf "$WORK"
}
trap cleanup EXIT

ROOT=$WORK/root
echo bench-password | "$FTPD" --root "$ROOT" user add bench --quota 100G --password-stdin > /dev/null
# TLS, as by default: ftpc trusts the key `ftpd fingerprint` names (pinned
# in a known-hosts file of this run, never the user's own).
export FTPC_FINGERPRINT FTPC_KNOWN_HOSTS=$WORK/known_hosts
FTPC_FINGERPRINT=$("$FTPD" --root "$ROOT" fingerprint)
"$FTPD" --root "$ROOT" --listen 127.0.0.1:0 --log-level warn > "$WORK/out" 2> "$WORK/log" &
SERVER=$!
for _ in $(seq 100); do [ -s "$WORK/out" ] && break; sleep 0.05; done
export FTPC_SERVER FTPC_USER=bench FTPC_PASSWORD=bench-password
FTPC_SERVER=$(sed 's/^listening on //' "$WORK/out")

# 2,000 x 4 KiB in 20 folders, as in ../shared/bench/side/tree_side.sh.
SMALL=$WORK/small
for d in $(seq -w 0 19); do
    mkdir -p "$SMALL/d$d"
    for f in $(seq -w 0 99); do head -c 4096 /dev/urandom > "$SMALL/d$d/f$f.bin"; done
done
# One large file and 1,000 x 4 KiB.
MIXED=$WORK/mixed
mkdir -p "$MIXED/small"
head -c $((BIG_MIB * 1024 * 1024)) /dev/urandom > "$MIXED/big.bin"
for f in $(seq -w 0 999); do head -c 4096 /dev/urandom > "$MIXED/small/f$f.bin"; done
# Warm-up: the first write of fresh tmpfs memory is slow on some VMs.
"$FTPC" --quiet put "$MIXED/big.bin" warm.bin
"$FTPC" --quiet rm warm.bin

fresh=() rerun=() single=() mixed=()
for run in $(seq "$RUNS"); do
    t0=$(now); "$FTPC" --quiet put -r "$SMALL" "small$run"; t1=$(now)
    fresh+=("$(minus "$t1" "$t0")")
    t0=$(now); "$FTPC" --quiet put -r "$SMALL" "small$run"; t1=$(now)
    rerun+=("$(minus "$t1" "$t0")")
    t0=$(now); "$FTPC" --quiet put "$MIXED/big.bin" "single$run.bin"; t1=$(now)
    single+=("$(minus "$t1" "$t0")")
    "$FTPC" --quiet rm "single$run.bin"
    t0=$(now); "$FTPC" --quiet put -r "$MIXED" "mixed$run"; t1=$(now)
    mixed+=("$(minus "$t1" "$t0")")
    "$FTPC" --quiet rm "mixed$run/big.bin"
done
bytes_mixed=$(du -sb --apparent-size "$MIXED" | cut -f1)
bytes_big=$((BIG_MIB * 1024 * 1024))
rate() { awk -v b="$1" -v s="$2" 'BEGIN { printf "%.0f", b / s / 1e6 }'; }
med() { printf '%s\n' "$@" | sort -g | awk '{ v[NR] = $1 } END { print v[int((NR + 1) / 2)] }'; }

echo "tree uploads, $RUNS runs, data folder under $DIR (median (min-max) seconds, whole commands):"
printf '  %-46s %s s\n' "put -r, 2,000 x 4 KiB in 20 folders" "$(printf '%s\n' "${fresh[@]}" | stats)"
printf '  %-46s %s s\n' "put -r, unchanged rerun of the same" "$(printf '%s\n' "${rerun[@]}" | stats)"
printf '  %-46s %s s\n' "put of one ${BIG_MIB} MiB file" "$(printf '%s\n' "${single[@]}" | stats)"
printf '  %-46s %s s\n' "put -r of ${BIG_MIB} MiB + 1,000 x 4 KiB" "$(printf '%s\n' "${mixed[@]}" | stats)"
s=$(med "${single[@]}"); m=$(med "${mixed[@]}")
echo "  single-file rate $(rate "$bytes_big" "$s") MB/s, tree rate $(rate "$bytes_mixed" "$m") MB/s," \
     "ratio $(awk -v a="$bytes_mixed" -v b="$m" -v c="$bytes_big" -v d="$s" 'BEGIN { printf "%.2f", (a / b) / (c / d) }')"
