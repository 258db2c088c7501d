#!/usr/bin/env bash
# Fairness under a flood (issue 10, item 2). usage: scripts/fairness.sh [uploads]
#   default: one user with a 1-byte quota pipelines Mkdir/Rmdir as fast as
#     the server takes them on one connection, while another user pings
#     every 5 ms; prints the pinger's round trips.
#   uploads: 63 sessions of one user upload 4 MiB files in a loop, while
#     another user times 1 KB uploads.
# FTPD=path/to/ftpd measures another build (default: this checkout's
# release build). SECONDS_TO_RUN (default 8) sets the length. The data
# folder is on /dev/shm when it exists.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --quiet --bin ftpd --example fairness
ftpd=${FTPD:-target/release/ftpd}
root=$(mktemp -d -p "$([ -d /dev/shm ] && echo /dev/shm || echo "${TMPDIR:-/tmp}")")
log=$(mktemp)
trap 'kill "$pid" 2>/dev/null || true; rm -rf "$root" "$log"' EXIT
flood_quota=1
[ "${1:-}" = uploads ] && flood_quota=10G
echo pw | "$ftpd" --root "$root" user add flood --quota "$flood_quota" --password-stdin --kdf-log-n 14 >/dev/null
echo pw | "$ftpd" --root "$root" user add other --password-stdin --kdf-log-n 14 >/dev/null
# The example speaks the protocol in clear: fairness is the reactor's, above the transport.
"$ftpd" --root "$root" --listen 127.0.0.1:0 --plaintext --log-level error >"$log" 2>/dev/null &
pid=$!
for _ in $(seq 100); do
    addr=$(sed -n 's/^listening on //p' "$log")
    [ -n "$addr" ] && break
    sleep 0.1
done
target/release/examples/fairness "$addr" flood pw other pw "${SECONDS_TO_RUN:-8}" "${1:-pings}"
