#!/usr/bin/env bash
# bench/footprint.sh: the fork model's memory and speed against the C fork server.
# Prints the master's VmRSS, one fork worker's private memory (Private_Clean +
# Private_Dirty from /proc/PID/smaps_rollup, while a connection is held open), and
# connections/s at 8 clients (one line per connection) over TCP and Unix for
# `forkserve echo` and bench/cfork.c, alternating, with the servers on CPU 0 and the
# generator on CPU 1.   usage: bench/footprint.sh [--rounds N] [--duration SECS]
set -euo pipefail
ROUNDS=3
DURATION=3
while [ $# -gt 0 ]; do
    case "$1" in
        --rounds) ROUNDS=$2; shift ;;
        --duration) DURATION=$2; shift ;;
        *) echo "usage: bench/footprint.sh [--rounds N] [--duration SECS]" >&2; exit 64 ;;
    esac
    shift
done
ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"
cargo build --release --quiet
FS="$ROOT/target/x86_64-unknown-linux-gnu/release/forkserve"
mkdir -p target/bench
gcc -O2 -Wall -o target/bench/cfork bench/cfork.c

WORK=$(mktemp -d /tmp/forkserve-footprint.XXXXXX)
PIDS=()
cleanup() {
    for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
    for pid in "${PIDS[@]}"; do wait "$pid" 2>/dev/null || true; done
    rm -rf "$WORK"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

read -r P1 P2 <<<"$(python3 -c '
import socket
s = [socket.socket() for _ in range(2)]
for x in s: x.bind(("127.0.0.1", 0))
print(*(x.getsockname()[1] for x in s))')"
taskset -c 0 "$FS" echo -q --max-children 100 -l "tcp:127.0.0.1:$P1" -l "unix:$WORK/fs.sock" 2>"$WORK/fs.log" &
FSPID=$!
PIDS+=("$FSPID")
taskset -c 0 target/bench/cfork tcp "$P2" &
PIDS+=("$!")
taskset -c 0 target/bench/cfork unix "$WORK/c.sock" &
PIDS+=("$!")
for a in "tcp:127.0.0.1:$P1" "unix:$WORK/fs.sock" "tcp:127.0.0.1:$P2" "unix:$WORK/c.sock"; do
    for _ in $(seq 100); do
        "$FS" bench --connect "$a" -n 1 -c 1 >/dev/null 2>&1 && break
        sleep 0.1
    done
done

# Memory: hold one connection open, look at the master and the worker.
python3 - "$P1" "$FSPID" <<'PY'
import os, socket, sys, time
port, master = int(sys.argv[1]), int(sys.argv[2])
c = socket.create_connection(("127.0.0.1", port))
c.sendall(b"hold\n")
c.recv(16)
def kids():
    out = []
    for p in os.listdir("/proc"):
        if p.isdigit():
            try:
                st = open(f"/proc/{p}/status").read()
            except OSError:
                continue
            if f"\nPPid:\t{master}\n" in st:
                out.append(int(p))
    return out
def field(path, key):
    for line in open(path):
        if line.startswith(key + ":"):
            return int(line.split()[1])
    return 0
worker = kids()[0]
rss = field(f"/proc/{master}/status", "VmRSS")
roll = f"/proc/{worker}/smaps_rollup"
priv = field(roll, "Private_Clean") + field(roll, "Private_Dirty")
print(f"master VmRSS            {rss} KiB")
print(f"worker private memory   {priv} KiB (Private_Clean {field(roll, 'Private_Clean')} + Private_Dirty {field(roll, 'Private_Dirty')}; Rss {field(roll, 'Rss')}, Pss {field(roll, 'Pss')})")
print(f"worker title            {open(f'/proc/{worker}/cmdline').read().replace(chr(0), ' ').strip()}")
c.close()
PY

# Speed: alternate the four targets, ROUNDS times.
declare -A SUM
for round in $(seq "$ROUNDS"); do
    for t in "forkserve tcp|tcp:127.0.0.1:$P1" "forkserve unix|unix:$WORK/fs.sock" \
             "C fork tcp|tcp:127.0.0.1:$P2" "C fork unix|unix:$WORK/c.sock"; do
        name=${t%%|*}
        rate=$(taskset -c 1 "$FS" bench --connect "${t#*|}" -c 8 -d "$DURATION" --json |
            python3 -c 'import json,sys; print(json.load(sys.stdin)["connections_per_s"])')
        echo "round $round  $name  $rate conns/s"
        SUM[$name]="${SUM[$name]:-} $rate"
    done
done
for kind in tcp unix; do
    python3 - "$kind" "${SUM[forkserve $kind]}" "${SUM[C fork $kind]}" <<'PY'
import statistics, sys
kind, fs, c = sys.argv[1], [float(x) for x in sys.argv[2].split()], [float(x) for x in sys.argv[3].split()]
f, r = statistics.median(fs), statistics.median(c)
print(f"{kind}: forkserve fork {f:,.0f} conns/s, C fork {r:,.0f} conns/s, ratio {f / r:.2f} (medians of {len(fs)})")
PY
done
