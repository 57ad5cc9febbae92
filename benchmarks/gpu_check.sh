#!/usr/bin/env bash
# The whole GPU validation in one command:  bash benchmarks/gpu_check.sh OUTDIR
#
# Stages, each a program under benchmarks/ with its own time budget (seconds) and its own JSON in OUTDIR, written
# when the stage starts and again when it ends, so a slow or failing stage cannot eat the others' time or results:
#   build (120)  tests (100)  sanitizer (60)  latency (120)  ops (130)     -- 530 s, inside 9 minutes
# OUTDIR ends with build.json tests.json sanitizer.json latency.json ops.json, summary.json and gpu_check.log.
# Without a CUDA device (or with HRNET_FAST_GPU_CHECK_SMOKE=1) the same stages run on the CPU at tiny sizes.
# Exit status: 0 when every stage passed, 1 otherwise (in smoke mode: when a stage failed to run).
set -u
OUTDIR=${1:?usage: bash benchmarks/gpu_check.sh OUTDIR}
cd "$(dirname "$0")/.."
mkdir -p "$OUTDIR"
LOG="$OUTDIR/gpu_check.log"
PY=${PYTHON:-python3}
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD/benchmarks:$PWD${PYTHONPATH:+:$PYTHONPATH}"
STAGES="build:120 tests:100 sanitizer:60 latency:120 ops:130"
: > "$LOG"
status=0
for entry in $STAGES; do
    stage=${entry%%:*}; budget=${entry##*:}
    echo "== $(date -u +%H:%M:%S) stage $stage (budget ${budget} s)" | tee -a "$LOG"
    # The stage paces itself inside its budget; timeout is the backstop (then its JSON says "running").
    timeout --kill-after=10 $((budget + 20)) "$PY" "benchmarks/gpu_check_$stage.py" "$OUTDIR" --budget "$budget" \
        >> "$LOG" 2>&1
    rc=$?
    echo "== stage $stage exit $rc" | tee -a "$LOG"
    [ $rc -ne 0 ] && status=1
done
"$PY" benchmarks/gpu_check_summary.py "$OUTDIR" | tee -a "$LOG"
exit $status
