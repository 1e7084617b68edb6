#!/usr/bin/env bash
# Metrics query and storage: loads N points of one metric spread evenly over the
# last 24 h into `forkserve metrics` over UDP, then times, end to end through HTTP
# (fork, SQLite open, query, JSON), the median of 21 requests for
#   - 24 h at 1-minute steps (1,440 buckets, from the per-minute rollups; goal < 50 ms)
#   - the last hour at 10-second steps (360 buckets, from the raw points),
# and reports the database's bytes per million points (raw points, their index
# and the rollups) after a clean stop. Needs curl, python3 and a release build.
#
#   bench/metrics_query.sh [N]      (default 1000000)
set -euo pipefail
cd "$(dirname "$0")/.."
N=${1:-1000000}
FS_PORT=${FS_PORT:-18135}
HTTP_PORT=${HTTP_PORT:-18191}
BIN=target/x86_64-unknown-linux-gnu/release/forkserve
[ -x "$BIN" ] || cargo build --release
TMP=$(mktemp -d)
FS_PID=
cleanup() { [ -n "$FS_PID" ] && kill "$FS_PID" 2>/dev/null; wait 2>/dev/null; rm -rf "$TMP"; }
trap cleanup EXIT

"$BIN" metrics -q -l "metrics=udp:127.0.0.1:$FS_PORT" -l "metrics-http=tcp:127.0.0.1:$HTTP_PORT" \
    --db "$TMP/m.db" --raw-retention 25h 2>"$TMP/fs.log" &
FS_PID=$!
for _ in $(seq 100); do curl -sf -o /dev/null "http://127.0.0.1:$HTTP_PORT/api/metrics" && break; sleep 0.1; done

api() { curl -s "http://127.0.0.1:$HTTP_PORT$1"; }
json() { python3 -c "import json,sys; d=json.load(sys.stdin); print($1)"; }

echo "loading $N points of bench.q over the last 24 h ($(nproc) cores, load $(cut -d' ' -f1-3 /proc/loadavg))"
t0=$(date +%s.%N)
python3 - "$FS_PORT" "$N" <<'PY'
import socket, sys, time
port, n = int(sys.argv[1]), int(sys.argv[2])
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
now = time.time() - 60
span = 24 * 3600 - 120
per = 100
for start in range(0, n, per):
    lines = "".join(f"bench.q:{(i * 7919) % 1000 / 10}:{now - span + span * i / n:.3f}\n"
                    for i in range(start, min(n, start + per)))
    s.sendto(lines.encode(), ("127.0.0.1", port))
    if start % 20000 == 0:
        time.sleep(0.05)  # paced: the kernel buffer never fills
PY
while :; do
    got=$(api /api/metrics | json "next((m['count'] for m in d['metrics'] if m['name'] == 'bench.q'), 0)")
    [ "$got" -ge "$N" ] && break
    drops=$(api /api/metrics | json "d['collector']['kernel_drops']")
    [ "$drops" -gt 0 ] && { echo "kernel dropped $drops datagrams; stored $got" >&2; break; }
    sleep 0.2
done
printf 'stored %s points in %.1f s\n' "$got" "$(echo "$(date +%s.%N) - $t0" | bc)"

median_ms() { # PATH
    for _ in $(seq 21); do
        curl -s -o /dev/null -w '%{time_total}\n' "http://127.0.0.1:$HTTP_PORT$1"
    done | sort -n | awk '{ a[NR] = $1 } END { printf "%.1f", a[11] * 1000 }'
}
q24="/api/metrics/bench.q?from=-24h&step=1m"
q1="/api/metrics/bench.q?from=-1h&step=10s"
printf '%-44s %8s ms  (%s, %s buckets)\n' "24 h at 1 min steps" "$(median_ms "$q24")" \
    "$(api "$q24" | json "d['source']")" "$(api "$q24" | json "len(d['buckets'])")"
printf '%-44s %8s ms  (%s, %s buckets, %s points)\n' "last hour at 10 s steps" "$(median_ms "$q1")" \
    "$(api "$q1" | json "d['source']")" "$(api "$q1" | json "len(d['buckets'])")" "$(api "$q1" | json "d['summary']['count']")"

kill "$FS_PID"; wait "$FS_PID" 2>/dev/null || true; FS_PID=
bytes=$(( $(stat -c %s "$TMP/m.db") + $(stat -c %s "$TMP/m.db-wal" 2>/dev/null || echo 0) ))
awk -v b="$bytes" -v n="$got" 'BEGIN { printf "database: %d bytes for %d points: %.1f MB per million points\n", b, n, b / n * 1e6 / 1e6 }'
