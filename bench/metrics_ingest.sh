#!/usr/bin/env bash
# Metrics ingest: 8 UDP senders (bench/udpsend.c) against `forkserve metrics`, then
# against the Python collector written the reference's way
# (bench/py_metrics_collector.py: socketserver UDPServer appending to a file).
#
#   1. paced at RATE points/s for SECS seconds (goal: forkserve stores every point
#      at 200,000 points/s with zero kernel drops);
#   2. flat out: the senders as fast as they can.
#
# "points/s" is points stored / (time from the first send until the last point was
# stored); "lag" the seconds from the senders' end to the last point stored
# (forkserve batches: up to its 1 s flush interval even when it keeps up); "per
# CPU-s" is points stored per second of the collector process's own CPU time (user
# + system), which a loaded machine distorts least. Needs gcc,
# curl, python3 and a release build.
#
#   bench/metrics_ingest.sh [SECS] [RATE] [LINES_PER_DATAGRAM]   (default 10 200000 50)
set -euo pipefail
cd "$(dirname "$0")/.."
SECS=${1:-10}
RATE=${2:-200000}
LINES=${3:-50}
SENDERS=8
FS_PORT=${FS_PORT:-18125}
HTTP_PORT=${HTTP_PORT:-18181}
PY_PORT=${PY_PORT:-18126}
BIN=target/x86_64-unknown-linux-gnu/release/forkserve
[ -x "$BIN" ] || cargo build --release
mkdir -p target/bench
gcc -O2 -Wall -o target/bench/udpsend bench/udpsend.c
TMP=$(mktemp -d)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null; rm -rf "$TMP"; }
trap cleanup EXIT

now() { date +%s.%N; }
cpu_ticks() { awk '{ print $14 + $15 }' "/proc/$1/stat"; }
collector_pid() { # the metrics server process under the master $1
    for c in $(cat "/proc/$1/task/$1/children"); do
        tr '\0' ' ' <"/proc/$c/cmdline" | grep -q "metrics server" && { echo "$c"; return; }
    done
}
lag() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.1f", (b > a ? b - a : 0) }'; }
per_cpu() { awk -v n="$1" -v t="$2" -v hz="$(getconf CLK_TCK)" 'BEGIN { printf "%.0f", (t > 0 ? n / (t / hz) : 0) }'; }
counter() { # NAME: a collector counter from the API
    curl -s "http://127.0.0.1:$HTTP_PORT/api/metrics" |
        python3 -c "import json,sys; print(json.load(sys.stdin)['collector'].get('$1', 0))"
}
udp_drops() { # PORT: the kernel's drop counter of the socket bound to it
    awk -v p="$(printf ':%04X' "$1")" '$2 ~ p"$" { print $NF }' /proc/net/udp | head -1
}
# Waits until COMMAND's output stops changing for 2 s or reaches TARGET; prints
# the value and the time it was last seen to change.
settle() { # TARGET COMMAND...
    local target=$1; shift
    local last=-1 changed stable=0 v
    changed=$(now)
    while [ "$stable" -lt 20 ]; do
        v=$("$@")
        if [ "$v" != "$last" ]; then last=$v; changed=$(now); stable=0; else stable=$((stable + 1)); fi
        [ "$v" -ge "$target" ] && break
        sleep 0.1
    done
    echo "$last $changed"
}

start_forkserve() {
    rm -f "$TMP"/m.db*
    "$BIN" metrics -q -l "metrics=udp:127.0.0.1:$FS_PORT" -l "metrics-http=tcp:127.0.0.1:$HTTP_PORT" \
        --db "$TMP/m.db" 2>"$TMP/fs.log" &
    FS_PID=$!
    pids+=("$FS_PID")
    for _ in $(seq 100); do curl -sf -o /dev/null "http://127.0.0.1:$HTTP_PORT/api/metrics" && return; sleep 0.1; done
    echo "forkserve did not start:" >&2; cat "$TMP/fs.log" >&2; exit 69
}
stop_forkserve() { kill "$FS_PID"; wait "$FS_PID" 2>/dev/null || true; }

run_forkserve() { # RATE -> "points_sent points_stored drops rate per_cpu"
    start_forkserve
    local t0 sent stored changed drops col c0
    col=$(collector_pid "$FS_PID")
    c0=$(cpu_ticks "$col")
    t0=$(now)
    read -r _ sent _ < <(target/bench/udpsend "$FS_PORT" "$SENDERS" "$SECS" "$1" "$LINES")
    local t1=$(now)
    read -r stored changed < <(settle "$sent" counter points)
    drops=$(counter kernel_drops)
    local cpu=$(( $(cpu_ticks "$col") - c0 ))
    stop_forkserve
    echo "$sent $stored $drops $(awk -v n="$stored" -v a="$t0" -v b="$changed" 'BEGIN { printf "%.0f", n / (b - a) }') $(per_cpu "$stored" "$cpu") $(lag "$t1" "$changed")"
}

run_python() { # RATE -> same
    rm -f "$TMP/py.out"; touch "$TMP/py.out"
    python3 bench/py_metrics_collector.py "$PY_PORT" "$TMP/py.out" >/dev/null 2>&1 &
    local py=$!
    pids+=("$py")
    for _ in $(seq 100); do [ -n "$(udp_drops "$PY_PORT")" ] && break; sleep 0.1; done
    local t0 sent stored changed drops c0
    c0=$(cpu_ticks "$py")
    t0=$(now)
    read -r _ sent _ < <(target/bench/udpsend "$PY_PORT" "$SENDERS" "$SECS" "$1" "$LINES")
    local t1=$(now)
    read -r stored changed < <(settle "$sent" sh -c "wc -l < '$TMP/py.out'")
    drops=$(udp_drops "$PY_PORT")
    local cpu=$(( $(cpu_ticks "$py") - c0 ))
    kill "$py"; wait "$py" 2>/dev/null || true
    echo "$sent $stored $drops $(awk -v n="$stored" -v a="$t0" -v b="$changed" 'BEGIN { printf "%.0f", n / (b - a) }') $(per_cpu "$stored" "$cpu") $(lag "$t1" "$changed")"
}

echo "metrics ingest: $SENDERS UDP senders, $LINES lines per datagram, ${SECS}s runs ($(nproc) cores, load $(cut -d' ' -f1-3 /proc/loadavg))"
row() { printf '%-30s %11s %11s %10s %10s %6s %10s\n' "$@"; }
row run "points sent" stored "drops(dg)" "points/s" "lag s" "per CPU-s"
read -r s st d r fs_paced_cpu l < <(run_forkserve "$RATE")
row "forkserve, paced $RATE/s" "$s" "$st" "$d" "$r" "$l" "$fs_paced_cpu"
read -r s st d r py_paced_cpu l < <(run_python "$RATE")
row "python, paced $RATE/s" "$s" "$st" "$d" "$r" "$l" "$py_paced_cpu"
read -r s st d fs_rate fs_cpu l < <(run_forkserve 0)
row "forkserve, flat out" "$s" "$st" "$d" "$fs_rate" "$l" "$fs_cpu"
read -r s st d py_rate py_cpu l < <(run_python 0)
row "python, flat out" "$s" "$st" "$d" "$py_rate" "$l" "$py_cpu"
awk -v a="$fs_rate" -v b="$py_rate" -v c="$fs_cpu" -v d="$py_cpu" -v e="$fs_paced_cpu" -v f="$py_paced_cpu" \
    'BEGIN { printf "ratio forkserve / python: %.1fx points/s flat out; per CPU-second %.1fx flat out, %.1fx paced\n", a / b, c / d, e / f }'
