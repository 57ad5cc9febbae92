#!/usr/bin/env bash
# The whole GPU validation in one command, sized to run twice in one device lease:
#
#   bash benchmarks/gpu_check.sh OUTDIR [--stage NAME[,NAME]]      # PYTHON=... picks the interpreter
#
# Stages (budgets in seconds, written once in benchmarks/gpu_check_plan.py), each a program
# benchmarks/gpu_check_<stage>.py with its own JSON in OUTDIR, rewritten as it goes (after each test chunk, each
# measured cell), so a stage cut by its budget or killed by its backstop still leaves what it did:
#   build (65)      pip install -e . for this GPU's architecture only, one compiler job per core
#   tests (50)      the curated GPU test subset (gpu_check_test_list.py), chunks in parallel processes
#   sanitizer (25)  compute-sanitizer memcheck over a small converted forward per backend
#   measure (85)    every implementation per (model, dtype, batch) cell, interleaved; cells in priority order
#   ops (15)        the fused ops beside what they replace on W18's calls, most-called first
#   latency (120)   only when named: the seed's table through `hrnet-fast bench`, then the pose and
#                   segmentation pipelines end to end (benchmarks/pose_pipeline.py, seg_pipeline.py)
# Each stage gets a backstop `timeout` 3 s after its budget (SIGTERM: it records itself as cut), SIGKILL 2 s
# later; with the summary the default run takes at most 270 s from a bare checkout, build included.
# --stage reruns only the named stages (e.g. --stage measure); the summary then covers every stage in OUTDIR.
# OUTDIR ends with <stage>.json per stage run, summary.json and gpu_check.log: at most 8 files, no folders.
# Without a CUDA device (or with HRNET_FAST_GPU_CHECK_SMOKE=1) the same stages run on the CPU at tiny sizes, with
# the budgets scaled (smoke mode).
# Exit status: 0 when every stage run passed, 1 when one failed, 2 when one was cut (none failed), 3 on bad usage.
set -u
OUTDIR=${1:?usage: bash benchmarks/gpu_check.sh OUTDIR [--stage NAME[,NAME]]}
shift
STAGE_ARG=()
while [ $# -gt 0 ]; do
    case "$1" in
        --stage) STAGE_ARG=(--stage "${2:?--stage needs a comma-separated list of stages}"); shift 2 ;;
        --stage=*) STAGE_ARG=(--stage "${1#--stage=}"); shift ;;
        *) echo "gpu_check: unknown argument $1 (usage: bash benchmarks/gpu_check.sh OUTDIR [--stage NAME[,NAME]])" >&2
           exit 3 ;;
    esac
done
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD/benchmarks:$PWD${PYTHONPATH:+:$PYTHONPATH}"
PLAN=$("$PY" benchmarks/gpu_check_plan.py "${STAGE_ARG[@]}") || exit 3
mkdir -p "$OUTDIR"
LOG="$OUTDIR/gpu_check.log"
# A rerun of chosen stages appends to the log of the run before.
[ ${#STAGE_ARG[@]} -eq 0 ] && : > "$LOG"
echo "== $(date -u +%H:%M:%S) gpu_check ${STAGE_ARG[*]:-(default stages)}" | tee -a "$LOG"
status=0
EXITS=()
while read -r stage budget backstop kill_after; do
    echo "== $(date -u +%H:%M:%S) stage $stage (budget ${budget} s)" | tee -a "$LOG"
    # The stage paces itself inside its budget, counted from this launch; timeout is the backstop.
    timeout --kill-after="$kill_after" "$backstop" "$PY" "benchmarks/gpu_check_$stage.py" "$OUTDIR" \
        --budget "$budget" --started "$(date +%s.%N)" < /dev/null >> "$LOG" 2>&1
    rc=$?
    echo "== stage $stage exit $rc" | tee -a "$LOG"
    EXITS+=("$stage=$rc")
    case $rc in
        0) ;;
        2|124) [ $status -eq 0 ] && status=2 ;;  # 124: the backstop's SIGTERM, which the stage records as a cut
        *) status=1 ;;                           # 137: it ignored SIGTERM and was killed (its JSON says running)
    esac
done <<< "$PLAN"
"$PY" benchmarks/gpu_check_summary.py "$OUTDIR" "${EXITS[@]}" | tee -a "$LOG"
exit $status
