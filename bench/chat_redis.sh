#!/usr/bin/env bash
# bench/chat_redis.sh: chat fan-out through Redis (--backend) beside the local broker.
# Starts a redis-server on a free loopback port and two `forkserve chat` hosts
# relaying through it; one sender on host A, 100 receivers on each host. Prints
# p50/p99 of one line's fan-out to all 200 (sender's write to each receiver's
# read, 50 rounds) and lines/s sustained (2000 lines written back to back, until
# every receiver has read the last), then the same with one local-broker host
# and 200 receivers. Goal: p99 under 10 ms through Redis.
# usage: bench/chat_redis.sh [--runs N]      (needs redis-server; release build)
set -euo pipefail
RUNS=1
while [ $# -gt 0 ]; do
    case "$1" in
        --runs) RUNS=$2; shift ;;
        *) echo "usage: bench/chat_redis.sh [--runs N]" >&2; exit 64 ;;
    esac
    shift
done
command -v redis-server >/dev/null || { echo "bench/chat_redis.sh: redis-server not found (apt-get install redis-server)" >&2; exit 69; }
cd "$(dirname "$0")/.."
for _ in $(seq "$RUNS"); do
    cargo test -q --release --test chat_redis -- --ignored --nocapture \
        fanout_figures_through_redis_and_local 2>&1 | grep -E 'fan-out|FAILED|panicked'
done
