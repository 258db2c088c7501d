#!/usr/bin/env bash
# Runs each fuzz target in fuzz/ for a bounded time with cargo-fuzz
# (libFuzzer, AddressSanitizer).
#
# usage: scripts/fuzz.sh [TARGET...]      default: every target (frames session paths)
#   FUZZ_SECS=60   seconds per target
#   FUZZ_ARGS=...  extra libFuzzer options, e.g. "-jobs=2 -workers=2"
#
# Needs a nightly toolchain (cargo-fuzz builds with -Zsanitizer); installs
# cargo-fuzz with `cargo install cargo-fuzz --locked` if it is missing.
# The committed seeds in fuzz/corpus/TARGET are only read; inputs libFuzzer
# finds go to fuzz/work/TARGET (ignored by git). A failure leaves its input
# in fuzz/artifacts/TARGET/, stops the script with a non-zero status, and
# replays with `cargo +nightly fuzz run TARGET fuzz/artifacts/TARGET/crash-...`.
#
# Leaks: LeakSanitizer is on; the one false report it makes here (glibc's
# thread-local destructor list, fuzz/lsan.supp) is suppressed.
#
# Without nightly the same properties still run on stable in
# `cargo test --test integration props` (tests/props.rs).
set -euo pipefail
cd "$(dirname "$0")/.."

FUZZ_SECS=${FUZZ_SECS:-60}
FUZZ_ARGS=${FUZZ_ARGS:-}
ALL=(frames session paths)
if [ $# -gt 0 ]; then
    TARGETS=("$@")
else
    TARGETS=("${ALL[@]}")
fi
for t in "${TARGETS[@]}"; do
    case " ${ALL[*]} " in
        *" $t "*) ;;
        *) echo "fuzz.sh: unknown target $t (known: ${ALL[*]})" >&2; exit 2 ;;
    esac
done

if ! command -v rustup >/dev/null 2>&1 ||
    ! rustup toolchain list 2>/dev/null | grep -q '^nightly'; then
    echo "fuzz.sh: no nightly Rust toolchain here ('rustup toolchain list' shows none)." >&2
    echo "  cargo-fuzz needs one: 'rustup toolchain install nightly' where downloads work." >&2
    echo "  On stable, 'cargo test --test integration props' checks the same properties," >&2
    echo "  and 'cd fuzz && cargo build' builds the targets without instrumentation." >&2
    exit 1
fi

if ! cargo +nightly fuzz --version >/dev/null 2>&1; then
    echo "fuzz.sh: installing cargo-fuzz" >&2
    cargo install cargo-fuzz --locked
fi

# LeakSanitizer reports glibc's thread-local destructor list as a 32-byte
# leak (see fuzz/lsan.supp); suppress that one stack only, so real leaks
# still stop the run. The caller's own LSAN_OPTIONS come after and win.
export LSAN_OPTIONS="suppressions=$PWD/fuzz/lsan.supp:print_suppressions=0${LSAN_OPTIONS:+:$LSAN_OPTIONS}"

for t in "${TARGETS[@]}"; do
    mkdir -p "fuzz/work/$t"
    echo "fuzz.sh: $t for ${FUZZ_SECS}s" >&2
    # -timeout: a single input that takes this long is a hang (a session
    # input is at most 64 requests on a tiny home). FUZZ_ARGS is split on
    # spaces on purpose.
    # shellcheck disable=SC2086
    cargo +nightly fuzz run "$t" "fuzz/work/$t" "fuzz/corpus/$t" -- \
        -max_total_time="$FUZZ_SECS" -timeout=20 -print_final_stats=1 $FUZZ_ARGS
done
echo "fuzz.sh: ${TARGETS[*]}: no failures in ${FUZZ_SECS}s each" >&2
