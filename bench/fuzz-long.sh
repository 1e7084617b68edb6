#!/usr/bin/env bash
# bench/fuzz-long.sh: fuzzes every target for a long time (default 2 hours each,
# one after the other), keeping what libFuzzer finds in fuzz/corpus-long/TARGET
# (not committed; a later run starts from it) and any crash in fuzz/artifacts/.
# Prints executions per target.   usage: bench/fuzz-long.sh [HOURS_PER_TARGET] [TARGET...]
set -euo pipefail
HOURS=${1:-2}
shift || true
ROOT=$(cd "$(dirname "$0")/.." && pwd)
SECS=$(awk -v h="$HOURS" 'BEGIN { printf "%d", h * 3600 }')
mkdir -p "$ROOT/fuzz/corpus-long"
FUZZ_CORPUS="$ROOT/fuzz/corpus-long" exec "$ROOT/fuzz/run.sh" "$SECS" "$@"
