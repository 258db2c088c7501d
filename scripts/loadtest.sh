#!/usr/bin/env bash
# Load test of ftpd with ftpload.
#
# Builds both in release mode, creates a throw-away data folder with eight
# test users (load0..load7), and for each scenario starts a fresh ftpd on a
# free port, runs the scenario against it, prints its summary and stops the
# server (a trap stops it on any exit too).
#
# Usage: scripts/loadtest.sh [OPTIONS]
#   -n, --sessions N     sessions for every scenario (overrides the *_N below)
#   -s, --size SIZE      file size of the transfer scenario       [64K]
#   -d, --duration SECS  duration of the idle and mixed scenarios [10]
#   --big-size SIZE      large file of the idle and mixed scenarios
#   --scenarios LIST     which to run, e.g. "login transfer"      [login transfer idle mixed]
#   --tmpfs              put the data folder on /dev/shm (no disk in the figures)
#   --json               one JSON object per scenario instead of tables
#   --keep-data          leave the data folder in place
#   --plaintext          run server and ftpload without TLS (default: TLS)
#   -h, --help
#
# Per-scenario settings (environment): LOGIN_N=1000, TRANSFER_N=1000,
# TRANSFER_SIZE=64K, IDLE_N=2000, IDLE_DURATION=10, IDLE_SIZE=256M,
# MIXED_N=200, MIXED_DURATION=10, MIXED_BIG=2, MIXED_SIZE=64M,
# MIXED_THINK=20 (ms each small-request session waits, ±50 %, after a reply
# before its next request, passed as --think; 0 sends them back to back),
# EXTRA_ARGS (passed to every ftpload run, e.g. "--max-connecting 500").
#
# Exits non-zero if any scenario had a failed session.

set -eu

LOGIN_N=${LOGIN_N:-1000}
TRANSFER_N=${TRANSFER_N:-1000}
TRANSFER_SIZE=${TRANSFER_SIZE:-64K}
IDLE_N=${IDLE_N:-2000}
IDLE_DURATION=${IDLE_DURATION:-10}
IDLE_SIZE=${IDLE_SIZE:-256M}
MIXED_N=${MIXED_N:-200}
MIXED_DURATION=${MIXED_DURATION:-10}
MIXED_BIG=${MIXED_BIG:-2}
MIXED_SIZE=${MIXED_SIZE:-64M}
MIXED_THINK=${MIXED_THINK:-20}
EXTRA_ARGS=${EXTRA_ARGS:-}
SCENARIOS="login transfer idle mixed"
TMPFS=0
JSON=0
KEEP_DATA=0
TRANSPORT=
USERS=8

usage() {
    sed -n '2,/^$/s/^# \{0,1\}//p' "$0"
}

need_value() {
    if [ $# -lt 2 ]; then
        echo "loadtest.sh: $1 needs a value" >&2
        exit 2
    fi
}

while [ $# -gt 0 ]; do
    case "$1" in
        -n|--sessions) need_value "$@"; LOGIN_N=$2; TRANSFER_N=$2; IDLE_N=$2; MIXED_N=$2; shift 2 ;;
        -s|--size) need_value "$@"; TRANSFER_SIZE=$2; shift 2 ;;
        -d|--duration) need_value "$@"; IDLE_DURATION=$2; MIXED_DURATION=$2; shift 2 ;;
        --big-size) need_value "$@"; IDLE_SIZE=$2; MIXED_SIZE=$2; shift 2 ;;
        --scenarios) need_value "$@"; SCENARIOS=$2; shift 2 ;;
        --tmpfs) TMPFS=1; shift ;;
        --json) JSON=1; shift ;;
        --keep-data) KEEP_DATA=1; shift ;;
        --plaintext) TRANSPORT=--plaintext; shift ;;
        -h|--help) usage; exit 0 ;;
        *) echo "loadtest.sh: unknown option $1 (try --help)" >&2; exit 2 ;;
    esac
done

cd "$(dirname "$0")/.."

echo "building (release)..." >&2
cargo build --release --quiet --bin ftpd --bin ftpload
BIN=target/release

if [ "$TMPFS" = 1 ]; then
    WORK=$(mktemp -d /dev/shm/ftpd-loadtest.XXXXXX)
else
    WORK=$(mktemp -d "${TMPDIR:-/tmp}/ftpd-loadtest.XXXXXX")
fi
DATA=$WORK/data
SERVER_PID=

cleanup() {
    status=$?
    if [ -n "$SERVER_PID" ] && kill -0 "$SERVER_PID" 2>/dev/null; then
        kill "$SERVER_PID" 2>/dev/null || true
        wait "$SERVER_PID" 2>/dev/null || true
    fi
    if [ "$KEEP_DATA" = 1 ]; then
        echo "data folder kept: $WORK" >&2
    else
        rm -rf "$WORK"
    fi
    exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# Test users with random passwords, listed in a users file for ftpload.
umask 077
: > "$WORK/users.txt"
i=0
while [ "$i" -lt "$USERS" ]; do
    password=$(od -An -N12 -tx1 /dev/urandom | tr -d ' \n')
    printf '%s\n' "$password" |
        "$BIN/ftpd" --root "$DATA" user add "load$i" --password-stdin --quota 100G >/dev/null
    printf 'load%s:%s\n' "$i" "$password" >> "$WORK/users.txt"
    i=$((i + 1))
done

# Every session is a file descriptor on both sides.
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true

# Starts ftpd on a free port; sets SERVER_PID and ADDR.
start_server() {
    : > "$WORK/ftpd.out"
    # shellcheck disable=SC2086 # TRANSPORT is empty or one flag
    "$BIN/ftpd" --root "$DATA" --listen 127.0.0.1:0 $TRANSPORT \
        --max-conns 30000 --max-conns-per-ip 30000 --max-sessions-per-user 0 \
        --log-level warn >"$WORK/ftpd.out" 2>>"$WORK/ftpd.err" &
    SERVER_PID=$!
    # The first stdout line is "listening on ADDR"; wait for it (bounded).
    ADDR=
    tries=0
    while [ -z "$ADDR" ]; do
        if ! kill -0 "$SERVER_PID" 2>/dev/null; then
            echo "loadtest.sh: ftpd exited at start:" >&2
            cat "$WORK/ftpd.err" >&2
            exit 1
        fi
        line=$(head -n 1 "$WORK/ftpd.out")
        case "$line" in
            "listening on "*) ADDR=${line#listening on } ;;
            *)
                tries=$((tries + 1))
                if [ "$tries" -gt 100 ]; then
                    echo "loadtest.sh: ftpd did not say where it listens within 10 s" >&2
                    exit 1
                fi
                sleep 0.1
                ;;
        esac
    done
    echo "ftpd (pid $SERVER_PID) listening on $ADDR, data in $DATA" >&2
}

stop_server() {
    if [ -n "$SERVER_PID" ]; then
        kill "$SERVER_PID" 2>/dev/null || true
        wait "$SERVER_PID" 2>/dev/null || true
        SERVER_PID=
    fi
}

OUTPUT=
if [ "$JSON" = 1 ]; then
    OUTPUT=--json
fi

RESULTS=
FAILED=0
# Each scenario gets a fresh server, so that its memory and CPU figures
# are its own (a server that served earlier scenarios reuses the memory
# they freed, which hides what idle sessions cost).
run() {
    name=$1
    shift
    echo >&2
    start_server
    echo "== $name: ftpload $*" >&2
    # shellcheck disable=SC2086 # EXTRA_ARGS is a list of words on purpose
    if [ -n "$TRANSPORT" ]; then
        TRUST=--plaintext
    else
        TRUST="--fingerprint $("$BIN/ftpd" --root "$DATA" fingerprint)"
    fi
    # shellcheck disable=SC2086 # TRUST is a flag and its value
    if "$BIN/ftpload" "$name" --addr "$ADDR" --users "$WORK/users.txt" $TRUST \
        --server-pid "$SERVER_PID" $OUTPUT $EXTRA_ARGS "$@"; then
        RESULTS="$RESULTS $name:ok"
    else
        RESULTS="$RESULTS $name:FAILED($?)"
        FAILED=1
    fi
    stop_server
}

for scenario in $SCENARIOS; do
    case "$scenario" in
        login) run login -n "$LOGIN_N" ;;
        transfer) run transfer -n "$TRANSFER_N" --size "$TRANSFER_SIZE" ;;
        idle) run idle -n "$IDLE_N" --duration "$IDLE_DURATION" --size "$IDLE_SIZE" ;;
        mixed) run mixed -n "$MIXED_N" --duration "$MIXED_DURATION" --big "$MIXED_BIG" --size "$MIXED_SIZE" --think "$MIXED_THINK" ;;
        *) echo "loadtest.sh: unknown scenario $scenario" >&2; exit 2 ;;
    esac
done

if [ -s "$WORK/ftpd.err" ]; then
    echo >&2
    echo "ftpd warnings (last 10 lines):" >&2
    tail -n 10 "$WORK/ftpd.err" >&2
fi
echo >&2
echo "summary:$RESULTS" >&2
exit "$FAILED"
