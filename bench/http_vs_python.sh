#!/usr/bin/env bash
# ab against `forkserve http` and against Python's http.server with ForkingMixIn
# (bench/py_http_time.py), same machine, one run, /time on both; prints requests/s
# and the ratio. Needs apache2-utils (ab) and a release build (cargo build --release).
#
#   bench/http_vs_python.sh [N] [CONCURRENCY]      (default 5000 16)
set -euo pipefail
cd "$(dirname "$0")/.."
N=${1:-5000}
C=${2:-16}
FS_PORT=${FS_PORT:-18080}
PY_PORT=${PY_PORT:-18081}
PY2_PORT=${PY2_PORT:-18082}
BIN=target/x86_64-unknown-linux-gnu/release/forkserve
[ -x "$BIN" ] || cargo build --release
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; }
trap cleanup EXIT

"$BIN" http -q -l "tcp:127.0.0.1:$FS_PORT" 2>/dev/null &
pids+=($!)
python3 bench/py_http_time.py "$PY_PORT" 2>/dev/null &
pids+=($!)
# The same Python server with a listen backlog of 1024 instead of socketserver's 5.
python3 bench/py_http_time.py "$PY2_PORT" 1024 2>/dev/null &
pids+=($!)
for port in "$FS_PORT" "$PY_PORT" "$PY2_PORT"; do
    for _ in $(seq 100); do curl -s -o /dev/null "http://127.0.0.1:$port/time" && break; sleep 0.1; done
done

run() { # name port
    local out
    out=$(ab -n "$N" -c "$C" "http://127.0.0.1:$2/time" 2>&1)
    local rps failed
    rps=$(awk '/^Requests per second/ {print $4}' <<<"$out")
    failed=$(awk '/^Failed requests/ {print $3}' <<<"$out")
    printf '%-40s %10s req/s   failed %s\n' "$1" "$rps" "$failed" >&2
    echo "$rps"
}
echo "ab -n $N -c $C http://127.0.0.1:PORT/time ($(nproc) cores, $(uname -r))" >&2
fs=$(run "forkserve http (fork model)" "$FS_PORT")
py=$(run "python3 http.server + ForkingMixIn" "$PY_PORT")
py2=$(run "  the same, listen backlog 1024" "$PY2_PORT")
awk -v a="$fs" -v b="$py" -v c="$py2" \
    'BEGIN { printf "ratio forkserve / python: %.1fx (backlog 1024: %.1fx)\n", a / b, a / c }'
