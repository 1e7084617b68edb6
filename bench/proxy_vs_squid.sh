#!/usr/bin/env bash
# forkserve proxy against Squid and tinyproxy, configured the same way (loopback
# listener, loopback clients allowed, a 256 MiB disk cache where the proxy has
# one, access log on), each started from its own temporary config on a free
# loopback port and stopped by PID at the end. Measures with ab -X, one run:
#
#   cached   a 1 KiB object with Cache-Control: max-age=3600 (one origin hit, then
#            hits; tinyproxy has no cache and forwards every request)
#   uncached a 1 KiB response without freshness (every request goes to the origin)
#
# each with and without keep-alive (ab -k), printing requests/s and the p99
# latency. forkserve runs twice: under its default fork model (a worker per
# connection) and, for comparison, under --model prefork --workers 16. Origins: tests/proxy_origin.py for the cached object, forkserve http for
# the uncached one. Needs squid, tinyproxy, apache2-utils, python3 and a release
# build (cargo build --release).
#
#   bench/proxy_vs_squid.sh [N] [CONCURRENCY]      (default 5000 16)
#   BENCH_SECS=5 bench/proxy_vs_squid.sh            (a short, time-bounded run)
set -euo pipefail
cd "$(dirname "$0")/.."
N=${1:-5000}
C=${2:-16}
BIN=target/x86_64-unknown-linux-gnu/release/forkserve
[ -x "$BIN" ] || cargo build --release
command -v squid >/dev/null || { echo "squid is not installed" >&2; exit 69; }
command -v tinyproxy >/dev/null || { echo "tinyproxy is not installed" >&2; exit 69; }
command -v ab >/dev/null || { echo "ab (apache2-utils) is not installed" >&2; exit 69; }

TMP=$(mktemp -d /tmp/proxy-bench.XXXXXX)
chmod 755 "$TMP"
pids=()
cleanup() {
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
    for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
    rm -rf "$TMP"
}
trap cleanup EXIT

free_port() {
    python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}
wait_port() { # port
    for _ in $(seq 200); do
        (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0
        sleep 0.05
    done
    echo "nothing listens on 127.0.0.1:$1" >&2
    exit 69
}

# Origins.
python3 -u tests/proxy_origin.py >"$TMP/origin.out" 2>/dev/null &
pids+=($!)
for _ in $(seq 100); do grep -q PORT "$TMP/origin.out" 2>/dev/null && break; sleep 0.05; done
ORIGIN_PORT=$(awk '/PORT/ {print $2}' "$TMP/origin.out")
HTTP_PORT=$(free_port)
"$BIN" http -q -l "tcp:127.0.0.1:$HTTP_PORT" --max-children 200 2>/dev/null &
pids+=($!)
wait_port "$HTTP_PORT"
BODY=$(head -c 1024 /dev/zero | tr '\0' 'a')
CACHED="http://127.0.0.1:$ORIGIN_PORT/sized/bench?n=1024"
UNCACHED="http://127.0.0.1:$HTTP_PORT/echo/${BODY:0:900}"

# forkserve proxy.
FS_PORT=$(free_port)
"$BIN" proxy -l "tcp:127.0.0.1:$FS_PORT" --cache-dir "$TMP/fs-cache" --cache-size 256M \
    --allow 127.0.0.0/8 --max-children 200 2>"$TMP/fs.log" &
pids+=($!)

# The same under the prefork model (16 long-lived workers), for comparison: no
# fork per connection.
PF_PORT=$(free_port)
"$BIN" proxy -l "tcp:127.0.0.1:$PF_PORT" --cache-dir "$TMP/pf-cache" --cache-size 256M \
    --allow 127.0.0.0/8 --model prefork --workers 16 2>/dev/null &
pids+=($!)

# Squid: same listener, loopback clients, a 256 MiB disk cache (its memory cache
# stays at its default, as a user would run it).
SQ_PORT=$(free_port)
mkdir -p "$TMP/squid/cache"
cat >"$TMP/squid/squid.conf" <<EOF
http_port 127.0.0.1:$SQ_PORT
acl lo src 127.0.0.0/8
http_access allow lo
http_access deny all
cache_dir ufs $TMP/squid/cache 256 16 256
access_log stdio:$TMP/squid/access.log squid
cache_log $TMP/squid/cache.log
pid_filename $TMP/squid/squid.pid
coredump_dir $TMP/squid
shutdown_lifetime 1 second
EOF
chown -R proxy:proxy "$TMP/squid" 2>/dev/null || true
squid -N -z -f "$TMP/squid/squid.conf" >/dev/null 2>&1
squid -N -f "$TMP/squid/squid.conf" >/dev/null 2>&1 &
pids+=($!)

# tinyproxy: same listener and clients; it has no cache.
TP_PORT=$(free_port)
cat >"$TMP/tinyproxy.conf" <<EOF
User nobody
Group nogroup
Port $TP_PORT
Listen 127.0.0.1
Timeout 30
MaxClients 200
Allow 127.0.0.1
LogLevel Info
EOF
tinyproxy -d -c "$TMP/tinyproxy.conf" >/dev/null 2>&1 &
pids+=($!)

for p in "$FS_PORT" "$PF_PORT" "$SQ_PORT" "$TP_PORT"; do wait_port "$p"; done
# Prime the caches (one miss each).
for p in "$FS_PORT" "$PF_PORT" "$SQ_PORT" "$TP_PORT"; do
    curl -s -o /dev/null -x "http://127.0.0.1:$p" "$CACHED"
    curl -s -o /dev/null -x "http://127.0.0.1:$p" "$CACHED"
done

ABARGS=(-n "$N")
[ -n "${BENCH_SECS:-}" ] && ABARGS=(-t "$BENCH_SECS" -n 1000000)
run() { # proxy-port url [-k]
    local out
    # shellcheck disable=SC2086
    out=$(ab "${ABARGS[@]}" -c "$C" ${3:-} -X "127.0.0.1:$1" "$2" 2>&1) || { echo "ab failed: ${out##*$'\n'}" >&2; echo "- - -"; return; }
    awk '/^Requests per second/ {r=$4} /^Failed requests/ {f=$3} /^  99%/ {p=$2} END {print r, p, f}' <<<"$out"
}

printf 'ab -c %s %s (%s cores, %s; load %s)\n' "$C" "${ABARGS[*]}" \
    "$(nproc)" "$(uname -r)" "$(cut -d' ' -f1-3 /proc/loadavg)"
printf '%-26s %-10s %12s %9s %7s\n' scenario proxy "req/s" "p99 ms" failed
for scenario in "cached 1 KiB|$CACHED|" "cached 1 KiB, keep-alive|$CACHED|-k" \
    "uncached 1 KiB|$UNCACHED|" "uncached 1 KiB, keep-alive|$UNCACHED|-k"; do
    IFS='|' read -r name url ka <<<"$scenario"
    for proxy in "forkserve:$FS_PORT" "fs-prefork:$PF_PORT" "squid:$SQ_PORT" "tinyproxy:$TP_PORT"; do
        read -r rps p99 failed <<<"$(run "${proxy#*:}" "$url" "$ka")"
        printf '%-26s %-10s %12s %9s %7s\n' "$name" "${proxy%%:*}" "$rps" "$p99" "$failed"
    done
done
grep -c 'TCP_HIT/200' "$TMP/fs.log" | xargs printf 'forkserve log: %s cache hits\n'
