#!/usr/bin/env bash
# bench/sandbox-cost.sh: what the worker sandbox costs the fork model. Runs
# `forkserve echo` (release build) with and without --no-sandbox, alternating, and
# loads each with `forkserve bench` (8 clients, one line per connection); prints
# connections/s per round.   usage: bench/sandbox-cost.sh [--rounds N] [--duration SECS]
set -euo pipefail
ROUNDS=3
DURATION=4
while [ $# -gt 0 ]; do
    case "$1" in
        --rounds) ROUNDS=$2; shift ;;
        --duration) DURATION=$2; shift ;;
        *) echo "usage: bench/sandbox-cost.sh [--rounds N] [--duration SECS]" >&2; exit 64 ;;
    esac
    shift
done
ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"
cargo build --release --quiet
BIN=target/x86_64-unknown-linux-gnu/release/forkserve
LOG=$(mktemp -d /tmp/forkserve-sandbox-cost.XXXXXX)
PID=
trap '[ -n "$PID" ] && kill "$PID" 2>/dev/null; rm -rf "$LOG"' EXIT

# Starts echo with the given extra flags; sets PID and PORT once it listens.
start() {
    "$BIN" echo -l tcp:127.0.0.1:0 --max-children 64 "$@" >"$LOG/server" 2>&1 &
    PID=$!
    for _ in $(seq 100); do
        PORT=$(sed -n 's/.*listening on tcp:127.0.0.1:\([0-9]*\).*/\1/p' "$LOG/server" | head -1)
        [ -n "$PORT" ] && return
        sleep 0.05
    done
    echo "forkserve echo did not start:" >&2; cat "$LOG/server" >&2; exit 69
}

for round in $(seq "$ROUNDS"); do
    for mode in sandbox no-sandbox; do
        if [ $mode = sandbox ]; then start; else start --no-sandbox; fi
        rate=$("$BIN" bench --connect "tcp:127.0.0.1:$PORT" -c 8 -d "$DURATION" |
            sed -n 's/^connections .*(\(.*\)\/s).*/\1/p')
        echo "round $round $mode: $rate connections/s"
        kill "$PID"; wait "$PID" 2>/dev/null || true; PID=
    done
done
