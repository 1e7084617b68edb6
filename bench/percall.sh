#!/usr/bin/env bash
# bench/percall.sh: where one connection's time goes, in counts that do not depend
# on machine load. Each server (the minimal C fork server, forkserve's fork model,
# fork-ahead) serves exactly N uppercase-echo connections from `forkserve bench`
# under `perf stat` (page faults, context switches, task clock, user-space
# instructions, summed over the server and every child it forked) and then under
# `strace -f -c` (system calls by name). Prints one Markdown table per server,
# every figure divided by N: counts per connection, the server side only.
#
# usage: bench/percall.sh [--connections N] [--clients C] [--close client|half]
#   default: 2000 connections, 4 clients, close client (about a minute)
# needs: perf (linux-perf), strace; kernel.perf_event_paranoid <= 2
set -euo pipefail

N=2000
C=4
CLOSE=client
while [ $# -gt 0 ]; do
    case "$1" in
        --connections) N=$2; shift ;;
        --clients) C=$2; shift ;;
        --close) CLOSE=$2; shift ;;
        -h|--help) sed -n '2,12p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) echo "percall.sh: unknown option $1 (see --help)" >&2; exit 64 ;;
    esac
    shift
done

ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"
for tool in perf strace; do
    command -v "$tool" >/dev/null || { echo "percall.sh: needs $tool" >&2; exit 69; }
done
cargo build --release --quiet
FS="$ROOT/target/x86_64-unknown-linux-gnu/release/forkserve"
BIN="$ROOT/target/bench"
mkdir -p "$BIN"
gcc -O2 -Wall -o "$BIN/cfork" bench/cfork.c

WORK=$(mktemp -d /tmp/forkserve-percall.XXXXXX); [ -n "${KEEP:-}" ] && echo "keeping $WORK" >&2
TRACER=""
cleanup() {
    [ -n "$TRACER" ] && kill "$TRACER" 2>/dev/null || true
    [ -n "${KEEP:-}" ] || rm -rf "$WORK"
}
trap cleanup EXIT

free_port() {
    python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}

# measure TOOL NAME CMD...: runs CMD (with @PORT@ replaced) under TOOL, loads it
# with N connections, stops it (SIGTERM to the server, the tracer's child) and
# leaves the tool's output in $WORK/TOOL.NAME.
measure() {
    local tool=$1 name=$2
    shift 2
    local port
    port=$(free_port)
    local cmd=("${@//@PORT@/$port}")
    case "$tool" in
        perf) perf stat -x, -o "$WORK/perf.$name" \
                  -e page-faults,context-switches,cpu-migrations,task-clock,instructions:u \
                  -- "${cmd[@]}" >"$WORK/log.$name" 2>&1 & ;;
        strace) strace -f -c -o "$WORK/strace.$name" -- "${cmd[@]}" >"$WORK/log.$name" 2>&1 & ;;
    esac
    TRACER=$!
    local server=""
    for _ in $(seq 100); do
        server=$(pgrep -P "$TRACER" | head -1 || true)
        if [ -n "$server" ] && "$FS" bench --connect "tcp:127.0.0.1:$port" -n 1 -c 1 --timeout 0.5 >/dev/null 2>&1; then
            break
        fi
        sleep 0.1
    done
    "$FS" bench --connect "tcp:127.0.0.1:$port" -n "$((N - 1))" -c "$C" --close "$CLOSE" --timeout 5 >"$WORK/bench.$tool.$name"
    kill -TERM "$server"
    wait "$TRACER" || true
    TRACER=""
}

NAMES=()
run_both() {
    local name=$1
    shift
    NAMES+=("$name")
    measure perf "$name" "$@"
    measure strace "$name" "$@"
}

FSOPTS=(-q --max-per-source 0 --max-children 100 -l tcp:127.0.0.1:@PORT@)
run_both cfork "$BIN/cfork" tcp @PORT@
run_both fork "$FS" echo "${FSOPTS[@]}"
if "$FS" echo --help 2>/dev/null | grep -q -- '--spare'; then
    run_both spare4 "$FS" echo --spare 4 "${FSOPTS[@]}"
fi

python3 - "$WORK" "$N" "${NAMES[@]}" <<'EOF'
import sys, re
work, n, names = sys.argv[1], int(sys.argv[2]), sys.argv[3:]
print(f"{n} connections per server")
for name in names:
    print(f"\n### {name}: per connection (server and its children)\n")
    print("| counter | per connection |")
    print("|---|---:|")
    for line in open(f"{work}/perf.{name}"):
        parts = line.strip().split(",")
        if len(parts) < 3 or not parts[0] or parts[0].startswith("<"):
            continue
        try:
            v = float(parts[0])
        except ValueError:
            continue
        unit, event = parts[1], parts[2]
        shown = f"{v * 1000 / n:.1f} µs" if event.startswith("task-clock") else f"{v / n:,.1f}"
        print(f"| {event} | {shown} |")
    calls = []
    for line in open(f"{work}/strace.{name}"):
        m = re.match(r"\s*[\d.]+\s+[\d.]+\s+\d+\s+(\d+)\s+(?:(\d+)\s+)?(\w+)\s*$", line)
        if m and m.group(3) != "total":
            calls.append((int(m.group(1)), m.group(3)))
    calls.sort(reverse=True)
    total = sum(c for c, _ in calls)
    print(f"| system calls (all) | {total / n:.1f} |")
    print("| " + ", ".join(f"{s} {c / n:.2f}" for c, s in calls if c / n >= 0.05) + " | |")
EOF
