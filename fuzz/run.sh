#!/usr/bin/env bash
# fuzz/run.sh: runs every fuzz target for SECS seconds each (cargo fuzz, nightly),
# starting from the committed seeds in fuzz/corpus/TARGET. New inputs go to
# $FUZZ_CORPUS/TARGET (default: a temporary directory, removed after), never into
# the committed seeds. Prints executions per target; exits 1 if any target found a
# crash (the input is left in fuzz/artifacts/TARGET/).
#   usage: [FUZZ_CORPUS=DIR] fuzz/run.sh SECS [TARGET...]
set -euo pipefail
SECS=${1:?usage: [FUZZ_CORPUS=DIR] fuzz/run.sh SECS [TARGET...]}
shift
cd "$(dirname "$0")"
if [ -n "${FUZZ_CORPUS:-}" ]; then
    OUT=$FUZZ_CORPUS
else
    OUT=$(mktemp -d /tmp/forkserve-fuzz.XXXXXX)
    trap 'rm -rf "$OUT"' EXIT
fi
command -v cargo-fuzz >/dev/null || cargo install cargo-fuzz --locked
TARGETS=("$@")
[ ${#TARGETS[@]} -gt 0 ] || mapfile -t TARGETS < <(cargo +nightly fuzz list)
cargo +nightly fuzz build >"$OUT/build.log" 2>&1 || { cat "$OUT/build.log"; exit 1; }
failed=0
for t in "${TARGETS[@]}"; do
    mkdir -p "$OUT/$t"
    log="$OUT/$t.log"
    if cargo +nightly fuzz run "$t" "$OUT/$t" "corpus/$t" -- \
        -max_total_time="$SECS" -timeout=10 -rss_limit_mb=2048 -print_final_stats=1 >"$log" 2>&1; then
        runs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1)
        echo "fuzz $t: ${runs:-?} executions in ${SECS}s, no failure"
    else
        failed=1
        echo "fuzz $t: FAILED; input in fuzz/artifacts/$t/; log:"
        grep -E "panicked|SUMMARY|ERROR|Test unit written" -A3 "$log" | head -30
    fi
done
exit $failed
