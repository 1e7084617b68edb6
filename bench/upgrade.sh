#!/usr/bin/env bash
# bench/upgrade.sh: what a reload and a binary upgrade cost while serving.
# Starts the release binary (a copy, so it can be replaced) with a --config file,
# runs `forkserve bench -c 8` against its echo service, and during the run does
# ROUNDS reloads (SIGHUP; the time the master logs) and ROUNDS upgrades
# (`forkserve ctl upgrade`: from the request to the new image answering, and from
# the master's exec to its "started" line). Prints the times and the bench's
# error count, which should be 0.   usage: bench/upgrade.sh [--rounds N]
set -euo pipefail
ROUNDS=3
while [ $# -gt 0 ]; do
    case "$1" in
        --rounds) ROUNDS=$2; shift ;;
        *) echo "usage: bench/upgrade.sh [--rounds N]" >&2; exit 64 ;;
    esac
    shift
done
ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"
cargo build --release --quiet
REL="$ROOT/target/x86_64-unknown-linux-gnu/release/forkserve"

WORK=$(mktemp -d /tmp/forkserve-upgrade.XXXXXX)
PIDS=()
cleanup() {
    for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
    for pid in "${PIDS[@]}"; do wait "$pid" 2>/dev/null || true; done
    rm -rf "$WORK"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

FS="$WORK/forkserve"
cp "$REL" "$FS"
cat >"$WORK/forkserve.toml" <<EOF
[[service]]
name = "echo"
kind = "echo"
listen = ["tcp:127.0.0.1:0"]
max_children = 64
max_per_source = 0
EOF
"$FS" --config "$WORK/forkserve.toml" --control "$WORK/control.sock" 2>"$WORK/log" &
PIDS+=($!)
MASTER=$!
for _ in $(seq 100); do grep -q "master .* started" "$WORK/log" && break; sleep 0.05; done
ADDR=$(grep -o 'echo: listening on tcp:[0-9.:]*' "$WORK/log" | head -1 | sed 's/.*listening on //')

DURATION=$((ROUNDS * 2 + 2))
"$REL" bench --connect "$ADDR" -c 8 -d "$DURATION" --json >"$WORK/bench.json" &
BENCH=$!
PIDS+=($BENCH)
sleep 1
now_ms() { date +%s%3N; }
for i in $(seq "$ROUNDS"); do
    kill -HUP "$MASTER"
    sleep 0.5
    cp "$REL" "$FS.new" && mv "$FS.new" "$FS"
    t0=$(now_ms)
    "$REL" ctl --socket "$WORK/control.sock" upgrade >/dev/null
    t1=$(now_ms)
    echo "upgrade $i: ctl upgrade returned after $((t1 - t0)) ms"
    sleep 1
done
wait "$BENCH"
[ "$(cat /proc/$MASTER/stat | cut -d' ' -f1)" = "$MASTER" ] && echo "master pid $MASTER unchanged"
echo "reloads (as logged by the master):"
grep -o 'reload: .*' "$WORK/log" | sed 's/^/  /'
echo "exec to serving (as logged):"
awk '/upgrade: re-executing/ {split($2, a, ":"); t = a[1]*3600 + a[2]*60 + a[3]}
     /master .* started/ && t {split($2, a, ":"); printf "  %.1f ms\n", (a[1]*3600 + a[2]*60 + a[3] - t) * 1000; t = 0}' "$WORK/log"
echo "bench across ${ROUNDS} upgrade(s) and ${ROUNDS} reload(s):"
cat "$WORK/bench.json"
echo
