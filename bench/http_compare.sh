#!/usr/bin/env bash
# bench/http_compare.sh: `forkserve http` against the HTTP servers users pick
# instead, with ab (ApacheBench), on the same machine in one run. Every server
# answers GET /time with a 36-byte JSON body; each is pinned to CPU 0 and ab to
# CPU 1; ab runs at 8 and 64 clients, with and without keep-alive (-k), round-robin
# over the servers for several rounds. Prints one Markdown table: median requests/s,
# the worst "longest request" in ms, failed requests, and ab's own CPU time.
#
# Peers (benchmarks only; not needed by the tests or CI):
#   Apache 2.4 mpm_prefork   apt-get install apache2      (StartServers 4, spare 4-16, max 64)
#   nginx, 1 worker          apt-get install nginx
#   gunicorn, 4 sync workers python3 -m venv DIR && DIR/bin/pip install gunicorn
#                            (GUNICORN=DIR/bin/gunicorn, default: gunicorn on PATH)
#   Python http.server + ForkingMixIn   bench/py_http_time.py (backlog 1024, as every server here)
# A peer that is not installed is left out of the table, with a note.
# forkserve runs with --max-per-source 0 (ab on 127.0.0.1 is one source).
#
# usage: bench/http_compare.sh [--requests N] [--rounds R] [--quick] [--out FILE]
#   default: -n 20000, 3 rounds; --quick: -n 2000, 1 round
set -euo pipefail

N=20000
ROUNDS=3
OUT=""
while [ $# -gt 0 ]; do
    case "$1" in
        --requests) N=$2; shift ;;
        --rounds) ROUNDS=$2; shift ;;
        --quick) N=2000; ROUNDS=1 ;;
        --out) OUT=$2; shift ;;
        -h|--help) sed -n '2,20p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) echo "http_compare.sh: unknown option $1 (see --help)" >&2; exit 64 ;;
    esac
    shift
done

ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"
command -v ab >/dev/null || { echo "http_compare.sh: needs ab (apache2-utils)" >&2; exit 69; }
cargo build --release --quiet
FS="$ROOT/target/x86_64-unknown-linux-gnu/release/forkserve"
GUNICORN=${GUNICORN:-$(command -v gunicorn || true)}

WORK=$(mktemp -d /tmp/forkserve-http-compare.XXXXXX)
chmod 755 "$WORK"
PIDS=()
cleanup() {
    for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
    sleep 0.5
    for pid in "${PIDS[@]}"; do kill -9 "$pid" 2>/dev/null || true; done
    rm -rf "$WORK"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

free_port() {
    python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}

# The body of forkserve's /time, 36 bytes with its newline.
BODY='{"timestamp":"2026-01-01 00:00:00"}'
NAMES=()
URLS=()
NOTES=()

# serve NAME PORT CMD...: starts CMD pinned to CPU 0 and registers http://127.0.0.1:PORT/time.
serve() {
    local name=$1 port=$2
    shift 2
    taskset -c 0 "$@" >"$WORK/log.${#PIDS[@]}" 2>&1 &
    PIDS+=("$!")
    NAMES+=("$name")
    URLS+=("http://127.0.0.1:$port/time")
}

FSOPTS=(-q --max-per-source 0)
p=$(free_port); serve "forkserve http, fork" "$p" "$FS" http "${FSOPTS[@]}" -l "tcp:127.0.0.1:$p"
p=$(free_port); serve "forkserve http, fork --spare 8" "$p" "$FS" http --spare 8 "${FSOPTS[@]}" -l "tcp:127.0.0.1:$p"
p=$(free_port); serve "forkserve http, prefork 4 (max 16)" "$p" \
    "$FS" http --model prefork --workers 4 --max-workers 16 "${FSOPTS[@]}" -l "tcp:127.0.0.1:$p"

if command -v apache2 >/dev/null; then
    p=$(free_port)
    mkdir -p "$WORK/apache/htdocs"
    printf '%s\n' "$BODY" >"$WORK/apache/htdocs/time"
    chmod -R a+rX "$WORK/apache"
    cat >"$WORK/apache/apache2.conf" <<EOF
ServerRoot "$WORK/apache"
ServerName 127.0.0.1
Listen 127.0.0.1:$p
PidFile "$WORK/apache/httpd.pid"
LoadModule mpm_prefork_module /usr/lib/apache2/modules/mod_mpm_prefork.so
LoadModule authz_core_module /usr/lib/apache2/modules/mod_authz_core.so
LoadModule mime_module /usr/lib/apache2/modules/mod_mime.so
TypesConfig /etc/mime.types
$( [ "$(id -u)" -eq 0 ] && printf 'User nobody\nGroup nogroup\n' )
ErrorLog "$WORK/apache/error.log"
LogLevel warn
DocumentRoot "$WORK/apache/htdocs"
<Directory "$WORK/apache/htdocs">
    Require all granted
</Directory>
<Files "time">
    ForceType "application/json; charset=utf-8"
</Files>
KeepAlive On
KeepAliveTimeout 5
MaxKeepAliveRequests 1000
StartServers 4
MinSpareServers 4
MaxSpareServers 16
MaxRequestWorkers 64
ListenBacklog 1024
EOF
    serve "Apache 2.4 mpm_prefork" "$p" apache2 -f "$WORK/apache/apache2.conf" -DFOREGROUND
else
    NOTES+=("Apache left out: apache2 is not installed")
fi

if command -v nginx >/dev/null; then
    p=$(free_port)
    mkdir -p "$WORK/nginx"
    cat >"$WORK/nginx/nginx.conf" <<EOF
daemon off;
worker_processes 1;
pid $WORK/nginx/nginx.pid;
error_log $WORK/nginx/error.log warn;
$( [ "$(id -u)" -eq 0 ] && echo 'user nobody nogroup;' )
events { worker_connections 1024; }
http {
    access_log off;
    keepalive_timeout 5;
    keepalive_requests 1000;
    client_body_temp_path $WORK/nginx/body;
    proxy_temp_path $WORK/nginx/proxy;
    fastcgi_temp_path $WORK/nginx/fastcgi;
    uwsgi_temp_path $WORK/nginx/uwsgi;
    scgi_temp_path $WORK/nginx/scgi;
    server {
        listen 127.0.0.1:$p backlog=1024;
        location = /time {
            default_type "application/json; charset=utf-8";
            return 200 '$BODY\n';
        }
    }
}
EOF
    serve "nginx, 1 worker" "$p" nginx -c "$WORK/nginx/nginx.conf" -p "$WORK/nginx"
else
    NOTES+=("nginx left out: nginx is not installed")
fi

if [ -n "$GUNICORN" ]; then
    p=$(free_port)
    cat >"$WORK/timeapp.py" <<'EOF'
import json, time
def app(environ, start_response):
    if environ["PATH_INFO"] != "/time":
        start_response("404 Not Found", [("Content-Type", "text/plain")])
        return [b"not found\n"]
    body = (json.dumps({"timestamp": time.strftime("%Y-%m-%d %H:%M:%S")}, separators=(",", ":")) + "\n").encode()
    start_response("200 OK", [("Content-Type", "application/json; charset=utf-8"),
                              ("Content-Length", str(len(body)))])
    return [body]
EOF
    serve "gunicorn, 4 sync workers" "$p" "$GUNICORN" -w 4 -b "127.0.0.1:$p" --backlog 1024 \
        --chdir "$WORK" --log-level warning timeapp:app
else
    NOTES+=("gunicorn left out: not found (set GUNICORN=/path/to/gunicorn)")
fi

p=$(free_port); serve "Python http.server + ForkingMixIn" "$p" python3 bench/py_http_time.py "$p" 1024

for i in "${!URLS[@]}"; do
    ok=""
    for _ in $(seq 100); do
        if curl -sf -o /dev/null "${URLS[$i]}"; then ok=1; break; fi
        sleep 0.1
    done
    if [ -z "$ok" ]; then
        echo "http_compare.sh: ${NAMES[$i]} does not answer ${URLS[$i]}; its log:" >&2
        cat "$WORK/log.$i" >&2
        exit 69
    fi
done

# --- runs ------------------------------------------------------------------
CELLS=("8" "8 -k" "64" "64 -k")
RESULTS="$WORK/results.tsv"
: >"$RESULTS"
for round in $(seq "$ROUNDS"); do
    for cell in "${CELLS[@]}"; do
        read -r c k <<<"$cell"
        for i in "${!URLS[@]}"; do
            [ -t 2 ] && printf '\rround %d, c=%-6s %-40s' "$round" "$cell" "${NAMES[$i]}" >&2
            # ab's CPU time (user+system) from GNU time; its report from stdout.
            out=$(taskset -c 1 /usr/bin/time -f 'abcpu %U %S' ab -q -l -r -s 30 -n "$N" -c "$c" ${k:-} "${URLS[$i]}" 2>&1 || true)
            rps=$(awk '/^Requests per second/ {print $4}' <<<"$out")
            failed=$(awk '/^Failed requests/ {print $3}' <<<"$out")
            longest=$(awk '/longest request/ {print $2}' <<<"$out")
            cpu=$(awk '/^abcpu/ {print $2 + $3}' <<<"$out")
            wall=$(awk '/^Time taken for tests/ {print $5}' <<<"$out")
            printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "${NAMES[$i]}" "$cell" "${rps:-}" "${failed:-}" \
                "${longest:-}" "${cpu:-}" "${wall:-}" >>"$RESULTS"
        done
    done
done
[ -t 2 ] && echo >&2

table=$(python3 - "$RESULTS" <<'EOF'
import statistics, sys
rows, order = {}, []
for line in open(sys.argv[1]):
    name, cell, rps, failed, longest, cpu, wall = line.rstrip("\n").split("\t")
    if name not in rows:
        rows[name] = {}
        order.append(name)
    rows[name].setdefault(cell, []).append((rps, failed, longest, cpu, wall))
cells = ["8", "8 -k", "64", "64 -k"]
print("| server | c=8 | c=8 keep-alive | c=64 | c=64 keep-alive | ab CPU, max |")
print("|---|---:|---:|---:|---:|---:|")
for name in order:
    out, cpu_share = [], []
    for cell in cells:
        runs = rows[name].get(cell, [])
        ok = [r for r in runs if r[0]]
        if not ok:
            out.append("failed")
            continue
        rps = statistics.median(float(r[0]) for r in ok)
        worst = max(int(r[2] or 0) for r in ok)
        failed = sum(int(r[1] or 0) for r in ok)
        text = f"{rps:,.0f} (max {worst:,} ms)"
        if failed:
            text += f", {failed} failed"
        out.append(text)
        cpu_share += [float(r[3]) / float(r[4]) for r in ok if r[3] and r[4] and float(r[4]) > 0]
    share = f"{max(cpu_share) * 100:.0f}%" if cpu_share else "-"
    print(f"| {name} | " + " | ".join(out) + f" | {share} |")
EOF
)

{
    echo "$(date -u '+%Y-%m-%d %H:%M UTC'), $(nproc) CPUs, kernel $(uname -r); generator: ab -n $N"
    echo "(close: ab's, i.e. the client closes; -k: HTTP/1.1 keep-alive), $ROUNDS round(s), median"
    echo "requests/s; max = worst longest request; servers on CPU 0, ab on CPU 1;"
    echo "ab CPU = its CPU time / wall time, worst run (100%: ab itself was the limit);"
    echo "forkserve with --max-per-source 0."
    for n in "${NOTES[@]}"; do echo "$n"; done
    echo
    echo "$table"
} | tee ${OUT:+"$OUT"}
