#!/usr/bin/env bash
# bench/compare.sh: forkserve against other process-per-connection servers, on the
# same machine, in one run. Every server serves the same uppercase echo (one line
# per connection) or, for datagrams, the time of day; two generators load each
# stream server, `forkserve bench` and the independent C client bench/cclient.c,
# at 1, 8 and 64 clients with the servers pinned to CPU 0 and the generator to
# CPU 1, round-robin over the servers for several rounds so drift hits all alike.
# Every connection ends as --close says (client: close after the reply, what nc,
# curl and most libraries do; half: half-close and wait for the server's close).
# forkserve runs with --max-per-source 0 (no fair share: one load generator on
# 127.0.0.1 is one source) so the comparison is like for like.
# Prints one Markdown table: median connections/s (datagrams/s) per concurrency,
# the ratio to the minimal C fork server of the same transport and generator, the
# worst p99 and the generator's own CPU use (a saturated generator measures itself).
#
# usage: bench/compare.sh [--quick] [--rounds N] [--duration SECS] [--clients "1 8 64"]
#                         [--close client|half] [--generator both|forkserve|c] [--out FILE]
#   default: 3 rounds of 2 s runs, both generators (~15 minutes); --quick: 1 round of 1.5 s
set -euo pipefail

ROUNDS=3
DURATION=2
CLIENTS="1 8 64"
OUT=""
CLOSE=client
GENERATOR=both
while [ $# -gt 0 ]; do
    case "$1" in
        --quick) ROUNDS=1; DURATION=1.5 ;;
        --rounds) ROUNDS=$2; shift ;;
        --duration) DURATION=$2; shift ;;
        --clients) CLIENTS=$2; shift ;;
        --out) OUT=$2; shift ;;
        --close) CLOSE=$2; shift ;;
        --generator) GENERATOR=$2; shift ;;
        -h|--help) sed -n '2,20p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) echo "compare.sh: unknown option $1 (see --help)" >&2; exit 64 ;;
    esac
    shift
done

ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"
if [ "$(nproc)" -lt 2 ]; then
    echo "compare.sh: needs 2 CPUs (server on CPU 0, generator on CPU 1)" >&2
    exit 69
fi

# --- peers -----------------------------------------------------------------
missing=()
for pair in tcpserver:ucspi-tcp unixserver:ucspi-unix s6-ipcserver:s6 tcpsvd:ipsvd socat:socat; do
    command -v "${pair%%:*}" >/dev/null || missing+=("${pair#*:}")
done
if [ ${#missing[@]} -gt 0 ]; then
    echo "installing ${missing[*]}" >&2
    SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO=sudo
    $SUDO apt-get install -y "${missing[@]}" >/dev/null
fi

# --- build -----------------------------------------------------------------
echo "building forkserve (release) and the C servers" >&2
cargo build --release --quiet
FS="$ROOT/target/x86_64-unknown-linux-gnu/release/forkserve"
BIN="$ROOT/target/bench"
mkdir -p "$BIN"
for prog in upper cfork cforkudp; do
    gcc -O2 -Wall -o "$BIN/$prog" "bench/$prog.c"
done
gcc -O2 -Wall -pthread -o "$BIN/cclient" bench/cclient.c

# --- servers ---------------------------------------------------------------
WORK=$(mktemp -d /tmp/forkserve-compare.XXXXXX)
PIDS=()
cleanup() {
    for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
    sleep 0.5
    for pid in "${PIDS[@]}"; do kill -9 "$pid" 2>/dev/null || true; done
    for pid in "${PIDS[@]}"; do wait "$pid" 2>/dev/null || true; done
    rm -rf "$WORK"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# Free ports on 127.0.0.1, picked by the kernel (TCP and UDP alike).
free_ports() {
    python3 - "$1" <<'EOF'
import socket, sys
socks = []
for _ in range(int(sys.argv[1])):
    s = socket.socket(); s.bind(("127.0.0.1", 0)); socks.append(s)
    u = socket.socket(type=socket.SOCK_DGRAM); u.bind(("127.0.0.1", s.getsockname()[1])); socks.append(u)
print(" ".join(str(s.getsockname()[1]) for s in socks[::2]))
EOF
}
read -r -a PORTS <<<"$(free_ports 20)"
next=0
port() { PORT=${PORTS[$next]}; next=$((next + 1)); }

NAMES=()     # display name of each target
ADDRS=()     # forkserve bench address
KINDS=()     # tcp | unix | udp

# serve NAME KIND ADDR CMD...: starts CMD pinned to CPU 0 and registers the target.
serve() {
    local name=$1 kind=$2 addr=$3
    shift 3
    taskset -c 0 "$@" >"$WORK/log.${#PIDS[@]}" 2>&1 &
    PIDS+=("$!")
    NAMES+=("$name"); KINDS+=("$kind"); ADDRS+=("$addr")
}

FSOPTS=(-q --max-children 100 --max-per-source 0)
for model in fork prefork thread sequential; do
    port
    serve "forkserve $model" tcp "tcp:127.0.0.1:$PORT" \
        "$FS" echo --model "$model" "${FSOPTS[@]}" -l "tcp:127.0.0.1:$PORT" -l "unix:$WORK/fs-$model.sock"
    NAMES+=("forkserve $model"); KINDS+=(unix); ADDRS+=("unix:$WORK/fs-$model.sock")
done
port
serve "forkserve fork --spare 8" tcp "tcp:127.0.0.1:$PORT" \
    "$FS" echo --spare 8 "${FSOPTS[@]}" -l "tcp:127.0.0.1:$PORT" -l "unix:$WORK/fs-spare.sock"
NAMES+=("forkserve fork --spare 8"); KINDS+=(unix); ADDRS+=("unix:$WORK/fs-spare.sock")
port
serve "forkserve prefork --max-requests 1" tcp "tcp:127.0.0.1:$PORT" \
    "$FS" echo --model prefork --max-requests 1 "${FSOPTS[@]}" -l "tcp:127.0.0.1:$PORT"
# forkserve exec runs the same upper program as the peers below; --start fork is
# the fork-then-exec alternative to the default posix_spawn from the master.
for start in spawn fork; do
    port
    serve "forkserve exec --start $start + upper" tcp "tcp:127.0.0.1:$PORT" \
        "$FS" exec --start "$start" "${FSOPTS[@]}" -l "tcp:127.0.0.1:$PORT" -l "unix:$WORK/fs-exec-$start.sock" -- "$BIN/upper"
    NAMES+=("forkserve exec --start $start + upper"); KINDS+=(unix); ADDRS+=("unix:$WORK/fs-exec-$start.sock")
done
port; serve "python ForkingTCPServer" tcp "tcp:127.0.0.1:$PORT" python3 bench/pyserver.py tcp "$PORT"
serve "python ForkingUnixStreamServer" unix "unix:$WORK/py.sock" python3 bench/pyserver.py unix "$WORK/py.sock"
# The peers get the same limits (100 connections, backlog 1024) and no DNS lookups:
# tcpserver -H -R -l 0, tcpsvd -l localhost (without -l it resolves per connection).
port; serve "tcpserver + upper" tcp "tcp:127.0.0.1:$PORT" \
    tcpserver -c 100 -b 1024 -H -R -l 0 127.0.0.1 "$PORT" "$BIN/upper"
serve "unixserver + upper" unix "unix:$WORK/ucspi.sock" unixserver -c 100 -b 1024 "$WORK/ucspi.sock" "$BIN/upper"
serve "s6-ipcserver + upper" unix "unix:$WORK/s6.sock" \
    s6-ipcserver -c 100 -C 100 -b 1024 "$WORK/s6.sock" "$BIN/upper"
port; serve "tcpsvd + upper" tcp "tcp:127.0.0.1:$PORT" tcpsvd -c 100 -b 1024 -l localhost 127.0.0.1 "$PORT" "$BIN/upper"
port; serve "socat fork EXEC:upper" tcp "tcp:127.0.0.1:$PORT" \
    socat "TCP-LISTEN:$PORT,bind=127.0.0.1,fork,reuseaddr,backlog=1024" "EXEC:$BIN/upper"
port; serve "C fork (cfork.c)" tcp "tcp:127.0.0.1:$PORT" "$BIN/cfork" tcp "$PORT"
serve "C fork (cfork.c)" unix "unix:$WORK/cfork.sock" "$BIN/cfork" unix "$WORK/cfork.sock"
port; serve "forkserve time fork" udp "udp:127.0.0.1:$PORT" "$FS" time "${FSOPTS[@]}" -l "udp:127.0.0.1:$PORT"
port; serve "python ForkingUDPServer" udp "udp:127.0.0.1:$PORT" python3 bench/pyserver.py udp "$PORT"
port; serve "C fork (cforkudp.c)" udp "udp:127.0.0.1:$PORT" "$BIN/cforkudp" "$PORT"

expect_of() { [ "$1" = udp ] && echo any || echo upper; }

# Wait until every target answers once.
for i in "${!ADDRS[@]}"; do
    ok=""
    for _ in $(seq 100); do
        if "$FS" bench --connect "${ADDRS[$i]}" -n 1 -c 1 --timeout 0.5 --retries 0 \
            --expect "$(expect_of "${KINDS[$i]}")" >/dev/null 2>&1; then
            ok=1
            break
        fi
        sleep 0.1
    done
    if [ -z "$ok" ]; then
        echo "compare.sh: ${NAMES[$i]} on ${ADDRS[$i]} does not answer; its log:" >&2
        cat "$WORK"/log.* >&2
        exit 69
    fi
done

# --- runs ------------------------------------------------------------------
RESULTS="$WORK/results.tsv"
: >"$RESULTS"
total=$((ROUNDS * $(wc -w <<<"$CLIENTS") * ${#ADDRS[@]}))
n=0
echo "$total runs of ${DURATION}s: ${#ADDRS[@]} targets x clients ($CLIENTS) x $ROUNDS round(s)" >&2
for round in $(seq "$ROUNDS"); do
    for c in $CLIENTS; do
        for i in "${!ADDRS[@]}"; do
            n=$((n + 1))
            [ -t 2 ] && printf '\r[%d/%d] round %d, %2d clients, %-32s' "$n" "$total" "$round" "$c" "${NAMES[$i]}" >&2
            if [ "$GENERATOR" != c ] || [ "${KINDS[$i]}" = udp ]; then
                json=$(taskset -c 1 "$FS" bench --connect "${ADDRS[$i]}" -c "$c" -d "$DURATION" --timeout 5 \
                    --close "$CLOSE" --expect "$(expect_of "${KINDS[$i]}")" --json 2>/dev/null || true)
                printf '%s\t%s\t%s\t%s\t%s\t%s\n' "${NAMES[$i]}" "${KINDS[$i]}" "forkserve bench" "$c" "$round" "$json" >>"$RESULTS"
            fi
            if [ "$GENERATOR" != forkserve ] && [ "${KINDS[$i]}" != udp ]; then
                json=$(taskset -c 1 "$BIN/cclient" -c "$c" -d "$DURATION" --close "$CLOSE" "${ADDRS[$i]}" 2>/dev/null || true)
                printf '%s\t%s\t%s\t%s\t%s\t%s\n' "${NAMES[$i]}" "${KINDS[$i]}" "cclient" "$c" "$round" "$json" >>"$RESULTS"
            fi
        done
    done
done
[ -t 2 ] && echo >&2

# --- table -----------------------------------------------------------------
table=$(python3 - "$RESULTS" "$CLIENTS" <<'EOF'
import json, statistics, sys
rows, clients = {}, [int(c) for c in sys.argv[2].split()]
order = []
for line in open(sys.argv[1]):
    name, kind, gen, c, _round, js = line.rstrip("\n").split("\t", 5)
    key = (name, kind, gen)
    if key not in rows:
        rows[key] = {}
        order.append(key)
    try:
        r = json.loads(js)
    except ValueError:
        r = None
    rows[key].setdefault(int(c), []).append(r)

def rate(runs):
    vals = [(r["requests_per_s"] if r["mode"] == "datagram" else r["connections_per_s"]) for r in runs if r]
    return statistics.median(vals) if vals else None

def worst_p99(runs):
    vals = [r["latency_us"]["p99"] for r in runs if r]
    return max(vals) / 1000 if vals else None

def errors(runs):
    return sum(r["errors"]["total"] if r else 1 for r in runs)

def cpu(runs):
    vals = [r["generator_cpu_s"] / r["duration_s"] for r in runs if r and r.get("duration_s")]
    return max(vals) * 100 if vals else None

ref = {(key[1], key[2]): key for key in order if key[0].startswith("C fork")}
head = "| server | transport | generator | " + " | ".join(f"{c} client{'s' if c > 1 else ''}" for c in clients)
head += f" | p99 ms at {clients[-1]} | generator CPU, max | errors |"
print(head)
print("|---|---|---|" + "---:|" * len(clients) + "---:|---:|---:|")
order.sort(key=lambda k: (k[2], k[1]))
for key in order:
    name, kind, gen = key
    cells = []
    for c in clients:
        v = rate(rows[key].get(c, []))
        refkey = ref.get((kind, gen))
        r = rate(rows[refkey].get(c, [])) if refkey else None
        if v is None:
            cells.append("failed")
        elif r:
            cells.append(f"{v:,.0f} ({v / r:.2f})")
        else:
            cells.append(f"{v:,.0f}")
    p99 = worst_p99(rows[key].get(clients[-1], []))
    p99 = "-" if p99 is None else f"{p99:.1f}"
    errs = sum(errors(v) for v in rows[key].values())
    g = cpu([r for runs in rows[key].values() for r in runs])
    g = "-" if g is None else f"{g:.0f}%"
    print(f"| {name} | {kind} | {gen} | " + " | ".join(cells) + f" | {p99} | {g} | {errs} |")
EOF
)

cpu=$(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ *//')
{
    echo "$(date -u '+%Y-%m-%d %H:%M UTC'), $(nproc) CPUs ($cpu), kernel $(uname -r)"
    echo "$ROUNDS round(s) of ${DURATION} s per run; close pattern: $CLOSE; forkserve with --max-per-source 0;"
    echo "median connections/s (datagrams/s for udp); (ratio) = to the C fork server of the same"
    echo "transport and generator; p99 = worst run's; generator CPU = its CPU time / wall time, worst run"
    echo "(100% = one CPU: the generator itself was the limit); errors = all runs"
    echo
    echo "$table"
} | tee ${OUT:+"$OUT"}
