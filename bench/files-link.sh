#!/usr/bin/env bash
# The file service over an emulated link, against a TCP download and TFTP.
#
# Two network namespaces (client, server) joined by a link of RATE bits/s, RTT ms of
# round-trip time, a drop-tail queue of QUEUE packets and LOSS % random loss each
# way. With sch_netem in the kernel the link is a veth pair shaped by `tc netem`;
# without it (as on this project's machines) it is `forkserve impair --tun`, a user-
# space relay between two TUN devices with the same model (rate, queue, delay, loss).
#
# Runs, each bounded by `timeout`:
#   1. files-get, HTTP (curl from python3 -m http.server) and TFTP (tftpd-hpa with
#      curl, atftp and tftp-hpa, blksize 1428 where the client can ask) at 0% loss;
#   2. files-get and HTTP at LOSS2 % loss;
#   3. files-get and HTTP at once on the same link: the share each gets.
#
# Usage: sudo bench/files-link.sh [--size MIB] [--tftp-size KIB] [--rate 10M]
#          [--rtt 50] [--queue 64] [--loss2 1] [--tries N] [--tcp-cc cubic]
# --tcp-cc sets the TCP congestion control of the HTTP server's route to the client
# (default: the system's, net.ipv4.tcp_congestion_control).
# Needs root (namespaces), python3, curl; TFTP runs when in.tftpd is installed.
set -euo pipefail
cd "$(dirname "$0")/.."

SIZE_MIB=4 TFTP_KIB=256 RATE=10M RTT=50 QUEUE=64 LOSS2=1 TRIES=1 TCP_CC=""
while [ $# -gt 0 ]; do
    case "$1" in
        --size) SIZE_MIB=$2; shift 2 ;;
        --tftp-size) TFTP_KIB=$2; shift 2 ;;
        --rate) RATE=$2; shift 2 ;;
        --rtt) RTT=$2; shift 2 ;;
        --queue) QUEUE=$2; shift 2 ;;
        --loss2) LOSS2=$2; shift 2 ;;
        --tries) TRIES=$2; shift 2 ;;
        --tcp-cc) TCP_CC=$2; shift 2 ;;
        *) echo "usage: $0 [--size MIB] [--tftp-size KIB] [--rate 10M] [--rtt MS] [--queue N] [--loss2 PCT] [--tries N]" >&2; exit 64 ;;
    esac
done
[ "$(id -u)" = 0 ] || { echo "$0: needs root (network namespaces)" >&2; exit 77; }

# Always the current code (cargo does nothing when the build is up to date).
cargo build --release --quiet >&2
BIN=target/x86_64-unknown-linux-gnu/release/forkserve
[ -x "$BIN" ] || BIN=target/release/forkserve
BIN=$(realpath "$BIN")

TAG=fsb$$
NC=${TAG}c NS=${TAG}s
CIP=10.201.$(( $$ % 200 )).1 SIP=10.201.$(( $$ % 200 )).2
WORK=$(mktemp -d /tmp/files-link.XXXXXX)
PIDS=()
RELAY_IN=""

cleanup() {
    for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
    [ -n "$RELAY_IN" ] && exec {RELAY_IN}>&- 2>/dev/null || true
    ip netns del "$NC" 2>/dev/null || true
    ip netns del "$NS" 2>/dev/null || true
    rm -rf "$WORK"
}
trap cleanup EXIT

have_netem() {
    ip netns add "${TAG}probe"
    local ok=1
    ip -n "${TAG}probe" link set lo up
    tc -n "${TAG}probe" qdisc add dev lo root netem delay 1ms 2>/dev/null && ok=0
    ip netns del "${TAG}probe"
    return $ok
}

ip netns add "$NC"
ip netns add "$NS"
ip -n "$NC" link set lo up
ip -n "$NS" link set lo up

# Sets up the link with LOSS % loss (0 or LOSS2), replacing any earlier one.
LINK_PID=""
link_up() {
    local loss=$1 half=$(( RTT / 2 ))
    if [ -n "$LINK_PID" ]; then
        exec {RELAY_IN}>&-
        wait "$LINK_PID" 2>/dev/null || true
        LINK_PID=""
    fi
    ip -n "$NC" link del ${TAG}a 2>/dev/null || true
    ip -n "$NS" link del ${TAG}b 2>/dev/null || true
    if [ "$MODE" = netem ]; then
        ip link add ${TAG}a netns "$NC" type veth peer name ${TAG}b netns "$NS"
        ip -n "$NC" addr add $CIP/24 dev ${TAG}a
        ip -n "$NS" addr add $SIP/24 dev ${TAG}b
        for side in "$NC ${TAG}a" "$NS ${TAG}b"; do
            set -- $side
            tc -n "$1" qdisc add dev "$2" root netem delay ${half}ms rate "${RATE}bit" limit "$QUEUE" loss "${loss}%"
        done
    else
        # The relay lives as long as its stdin (a pipe this script holds) is open.
        exec {RELAY_IN}> >("$BIN" impair --tun ${TAG}a ${TAG}b --bitrate "$RATE" --delay "$half" \
            --queue "$QUEUE" --loss "$loss" --seed 7 > "$WORK/relay.out" 2>&1)
        LINK_PID=$!
        for _ in $(seq 100); do grep -q '^tun ' "$WORK/relay.out" 2>/dev/null && break; sleep 0.05; done
        ip link set ${TAG}a netns "$NC"
        ip link set ${TAG}b netns "$NS"
        ip -n "$NC" addr add $CIP/32 peer $SIP dev ${TAG}a
        ip -n "$NS" addr add $SIP/32 peer $CIP dev ${TAG}b
    fi
    ip -n "$NC" link set ${TAG}a up
    ip -n "$NS" link set ${TAG}b up
    if [ -n "$TCP_CC" ]; then
        ip -n "$NS" route replace $CIP/32 dev ${TAG}b congctl "$TCP_CC"
    fi
}

if have_netem; then MODE=netem; else MODE=tun; fi

ROOT=$WORK/root
mkdir -p "$ROOT"
head -c $(( SIZE_MIB << 20 )) /dev/urandom > "$ROOT/big.bin"
head -c $(( TFTP_KIB << 10 )) /dev/urandom > "$ROOT/small.bin"

# Servers in the server namespace (once the link, and so SIP, exists).
link_up 0
# (Each closes the relay's stdin pipe, so that closing it ends the relay.)
ip netns exec "$NS" "$BIN" files --root "$ROOT" -l "udp:$SIP:6969" -q 2> "$WORK/files.log" {RELAY_IN}>&- &
PIDS+=($!)
ip netns exec "$NS" python3 -m http.server -d "$ROOT" -b "$SIP" 8000 > "$WORK/http.log" 2>&1 {RELAY_IN}>&- &
PIDS+=($!)
TFTPD=$(command -v in.tftpd || true)
if [ -n "$TFTPD" ]; then
    ip netns exec "$NS" "$TFTPD" -L -s "$ROOT" -a "$SIP:69" -B 1468 > "$WORK/tftp.log" 2>&1 {RELAY_IN}>&- &
    PIDS+=($!)
fi

# Runs "$@" in the client namespace, its output to LOG; prints seconds, or "fail".
timed() {
    local limit=$1 log=$2; shift 2
    local t0 t1
    t0=$(date +%s.%N)
    if timeout "$limit" ip netns exec "$NC" "$@" > "$log" 2>&1; then
        t1=$(date +%s.%N)
        awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.3f\n", b - a }'
    
    else
        echo fail
    fi
}

mbit() { # BYTES SECONDS
    [ "$2" = fail ] && { echo "-"; return; }
    awk -v b="$1" -v s="$2" 'BEGIN { printf "%.2f\n", b * 8 / s / 1e6 }'
}

# files-get's own summary lines (losses, requests, srtt, window) are kept for the end.
fget() {
    local t
    t=$(timed 60 "$WORK/fget.out" "$BIN" files-get "udp:$SIP:6969" "$1" -o "$WORK/got.$1")
    sed -n 's/^files-get: //p' "$WORK/fget.out" >> "$WORK/fget.log"
    echo "$t"
}
http() { timed 60 "$WORK/http.out" curl -sf -o "$WORK/http.$1" "http://$SIP:8000/$1"; }

row() { # NAME BYTES SECONDS
    printf '| %-34s | %9s | %8s | %8s |\n' "$1" "$2" "$3" "$(mbit "$2" "$3")"
}

BIG=$(( SIZE_MIB << 20 )) SMALL=$(( TFTP_KIB << 10 ))
echo "link: $MODE, $RATE bit/s, ${RTT} ms RTT, queue $QUEUE; TCP: ${TCP_CC:-$(cat /proc/sys/net/ipv4/tcp_congestion_control)}; load: $(cut -d' ' -f1-3 /proc/loadavg)"
echo
echo "| run | bytes | seconds | Mbit/s |"
echo "|---|---:|---:|---:|"

for _ in $(seq "$TRIES"); do
    F0=$(fget big.bin) H0=$(http big.bin)
    row "files-get, 0% loss" "$BIG" "$F0"
    row "HTTP (curl), 0% loss" "$BIG" "$H0"
    if [ -n "$TFTPD" ]; then
        row "TFTP curl blksize 1428, 0% loss" "$SMALL" \
            "$(timed 120 "$WORK/tftp.out" curl -sf --tftp-blksize 1428 -o "$WORK/t1" "tftp://$SIP/small.bin")"
        command -v atftp > /dev/null && row "TFTP atftp blksize 1428, 0% loss" "$SMALL" \
            "$(timed 120 "$WORK/tftp.out" atftp --option 'blksize 1428' -g -r small.bin -l "$WORK/t2" "$SIP")"
        command -v tftp > /dev/null && row "TFTP tftp-hpa (512-byte blocks)" "$SMALL" \
            "$(timed 120 "$WORK/tftp.out" tftp -m binary "$SIP" -c get small.bin "$WORK/t3")"
        cmp -s "$WORK/t1" "$ROOT/small.bin" || echo "| (curl TFTP output differs) | | | |"
    fi
done

link_up "$LOSS2"
for _ in $(seq "$TRIES"); do
    F=$(fget big.bin) H=$(http big.bin)
    row "files-get, $LOSS2% loss" "$BIG" "$F"
    row "HTTP (curl), $LOSS2% loss" "$BIG" "$H"
    if [ "$F" != fail ] && [ "$H" != fail ]; then
        echo "| files-get / HTTP throughput at $LOSS2% loss | | | $(awk -v f="$F" -v h="$H" 'BEGIN { printf "%.2fx", h / f }') |"
    fi
done

# Sharing: both at once on the clean link; each one's share while both ran.
link_up 0
for _ in $(seq "$TRIES"); do
    S0=$(date +%s.%N)
    ( fget big.bin > "$WORK/share.f" ) {RELAY_IN}>&- &
    FP=$!
    ( http big.bin > "$WORK/share.h" ) {RELAY_IN}>&- &
    HP=$!
    wait $FP $HP
    F=$(cat "$WORK/share.f") H=$(cat "$WORK/share.h")
    row "files-get, sharing with HTTP" "$BIG" "$F"
    row "HTTP, sharing with files-get" "$BIG" "$H"
    if [ "$F" != fail ] && [ "$H" != fail ] && [ "$F0" != fail ] && [ "$H0" != fail ]; then
        # While both ran (until the first finished at T1), the first moved all its
        # bytes; the second moved what it did not move alone afterwards, at its own
        # solo rate: BIG - solo_rate * (T2 - T1).
        awk -v big="$BIG" -v f="$F" -v h="$H" -v f0="$F0" -v h0="$H0" 'BEGIN {
            if (f <= h) { t1 = f; first = big; second = big - big / h0 * (h - f) }
            else { t1 = h; second = big; first = big - big / f0 * (f - h) }
            if (first < 0) first = 0; if (second < 0) second = 0
            printf "| shares while both ran (%.1f s): files-get / HTTP | | | %.0f%% / %.0f%% |\n",
                t1, 100 * first / (first + second), 100 * second / (first + second) }'
    fi
done
cmp -s "$WORK/got.big.bin" "$ROOT/big.bin" && echo "files-get output byte-identical: yes"
echo
echo "files-get said, run by run:"
cat "$WORK/fget.log"
