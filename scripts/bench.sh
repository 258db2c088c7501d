#!/usr/bin/env bash
# Single-transfer throughput: put and get of one large file, over TLS (the
# default) and with --plaintext, side by side in the same run, the two
# taking turns, each compared with the raw loopback ceiling (a plain socket
# copy of the same number of bytes, measured by examples/loopback_ceiling.rs).
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

MODES=(tls plaintext)
SERVERS=()
WORK=""
cleanup() {
    for pid in "${SERVERS[@]}"; do kill "$pid" 2>/dev/null && wait "$pid" 2>/dev/null || true; done
    [ -n "$WORK" ] && rm -rf "$WORK"
}
trap cleanup EXIT

# Starts a server for transport $1 under $WORK/$1 and writes the client's
# settings to $WORK/$1/env.
start_server() {
    local mode=$1 root=$WORK/$1/root flags=()
    mkdir -p "$WORK/$mode"
    echo bench-password | "$FTPD" --root "$root" user add bench --quota 100G --password-stdin > /dev/null
    {
        echo "FTPC_USER=bench FTPC_PASSWORD=bench-password FTPC_KNOWN_HOSTS=$WORK/$mode/known_hosts"
        if [ "$mode" = plaintext ]; then
            flags=(--plaintext)
            echo "FTPC_PLAINTEXT=1"
        else
            echo "FTPC_FINGERPRINT=$("$FTPD" --root "$root" fingerprint)"
        fi
    } > "$WORK/$mode/env"
    "$FTPD" --root "$root" --listen 127.0.0.1:0 --log-level warn "${flags[@]}" > "$WORK/$mode/out" 2> "$WORK/$mode/log" &
    SERVERS+=($!)
    for _ in $(seq 100); do [ -s "$WORK/$mode/out" ] && break; sleep 0.05; done
    echo "FTPC_SERVER=$(sed 's/^listening on //' "$WORK/$mode/out")" >> "$WORK/$mode/env"
}

# Runs ftpc against the server of transport $1.
client() {
    local mode=$1
    shift
    # shellcheck disable=SC2046 # the env file holds NAME=VALUE words
    env $(cat "$WORK/$mode/env") "$FTPC" --quiet "$@"
}

# Appends the seconds `client MODE ARGS...` took to file $1.
timed() {
    local file=$1 t0 t1
    shift
    t0=$(now); client "$@" > /dev/null; t1=$(now)
    { minus "$t1" "$t0"; echo; } >> "$file"
}

printf '%-28s %-10s %5s %10s %10s %12s %10s\n' "data folder" "transport" "what" "whole MB/s" "xfer MB/s" "ceiling MB/s" "ratio"
for dir in "${DIRS[@]}"; do
    mkdir -p "$dir"
    WORK=$(mktemp -d "$dir/ftpd-bench.XXXXXX")
    SRC=$WORK/src.bin
    head -c "$BYTES" /dev/urandom > "$SRC"
    : > "$WORK/ceil"
    for mode in "${MODES[@]}"; do
        start_server "$mode"
        # Warm-up: the first write of fresh memory is slow on some VMs.
        client "$mode" put "$SRC" up.bin
        client "$mode" rm up.bin
        client "$mode" put "$SRC" dl.bin
        : > "$WORK/$mode/get"; : > "$WORK/$mode/put"; : > "$WORK/$mode/login"
    done
    # The transports take turns within each run, so a machine whose speed
    # drifts (as VMs do) moves both alike.
    for _ in $(seq "$RUNS"); do
        "$CEILING" "$BYTES" >> "$WORK/ceil"
        for mode in "${MODES[@]}"; do
            timed "$WORK/$mode/login" "$mode" pwd
            timed "$WORK/$mode/get" "$mode" get dl.bin -
            timed "$WORK/$mode/put" "$mode" put "$SRC" up.bin
            client "$mode" rm up.bin
        done
    done
    ceil=$(median < "$WORK/ceil")
    for mode in "${MODES[@]}"; do
        login=$(median < "$WORK/$mode/login")
        for what in get put; do
            whole=$(median < "$WORK/$mode/$what")
            xfer=$(minus "$whole" "$login")
            w=$(mbps "$whole"); x=$(mbps "$xfer")
            ratio=$(awk -v x="$x" -v c="$ceil" 'BEGIN { printf "%.2f", x / c }')
            printf '%-28s %-10s %5s %10s %10s %12s %10s\n' "$dir" "$mode" "$what" "$w" "$x" "$ceil" "$ratio"
        done
    done
    for what in get put; do
        tls=$(median < "$WORK/tls/$what"); plain=$(median < "$WORK/plaintext/$what")
        awk -v d="$dir" -v w="$what" -v t="$tls" -v p="$plain" \
            'BEGIN { printf "%-28s TLS / plaintext %s, whole session: %.2f\n", d, w, p / t }'
    done
    cleanup
    SERVERS=()
    WORK=""
done
echo "($SIZE_MIB MiB, median of $RUNS runs, the transports taking turns within each; login+request median subtracted for 'xfer')"
