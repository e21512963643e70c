#!/usr/bin/env bash
# Runs every cargo-fuzz target of fuzz/ one after the other (one fuzzer process at a time),
# each for SECONDS_PER_TARGET (default 600), then minimizes its corpus in place. Logs go to
# $LOG_DIR (default fuzz/logs, not committed); the last lines of each log hold libFuzzer's
# final stats (executions, new units, peak RSS). See docs/FUZZING.md.
#
# Usage: scripts/fuzz-all.sh [target...]   (default: every target, in this order)
set -euo pipefail
cd "$(dirname "$0")/.."
SECONDS_PER_TARGET="${SECONDS_PER_TARGET:-600}"
LOG_DIR="${LOG_DIR:-fuzz/logs}"
mkdir -p "$LOG_DIR"
targets=("$@")
if [ ${#targets[@]} -eq 0 ]; then
    targets=(segment entry table_op control_op entry_body value row_key fork_evidence payload
        segment_name id_dir invite_code key_wrap encrypted_entry relay_frame)
fi
for t in "${targets[@]}"; do
    echo "== $t: start $(date -u +%FT%TZ)"
    status=0
    cargo fuzz run -s none "$t" "fuzz/corpus/$t" -- \
        -max_total_time="$SECONDS_PER_TARGET" -timeout=10 -rss_limit_mb=2048 \
        -print_final_stats=1 >"$LOG_DIR/$t.log" 2>&1 || status=$?
    echo "== $t: end $(date -u +%FT%TZ) exit $status"
    tail -n 8 "$LOG_DIR/$t.log"
    if [ "$status" -eq 0 ]; then
        # cmin keeps the smallest set of inputs that covers what the corpus covers.
        cargo fuzz cmin -s none "$t" "fuzz/corpus/$t" >"$LOG_DIR/$t.cmin.log" 2>&1 \
            && echo "== $t: corpus minimized to $(ls "fuzz/corpus/$t" | wc -l) files"
    fi
done
