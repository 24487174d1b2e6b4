#!/usr/bin/env bash
# The GPU check (issue 31): one command, at most 4 minutes on one GPU, each stage in its own time box, the results
# file rewritten after every stage (a run cut short keeps what finished), a summary printed at the end.
#
#   bench/gpu_check.sh              on a GPU machine: results in bench/results/gpu_<date>.json
#   bench/gpu_check.sh --dry-run    every stage on the CPU at the smallest sizes (<= 60 s; tests/bench runs it)
#   options: --out FILE (results), --work DIR (scratch, default bench/out/gpu_check[_dry]),
#            --only STAGE[,STAGE...] (a rerun of some stages: the results file keeps the others')
#   environment: PYTHON (default python3: the one whose torch is used; torch is never installed),
#                GPU_CHECK_BUDGET (seconds for the whole check: 240, dry run 60),
#                GPU_CHECK_SLACK (multiplies every stage's time box: the test of the dry run on a loaded machine)
#
# Before a GPU window, where there is network: bench/gpu_wheels.sh (pupick's other dependencies as wheels in .whl/);
# carry .whl/ to the GPU machine. There this script installs what is missing from .whl/ (no index, never torch) and
# pupick itself with --no-deps; anything missing stops it within 10 s in one line (exit 2).
# Stages and figures: bench/gpu_check.py.
set -u
cd "$(dirname "$0")/.." || exit 2

DRY=0
RESULTS=""
WORK=""
ONLY=""
while [ $# -gt 0 ]; do
    case "$1" in
        --dry-run) DRY=1 ;;
        --out) RESULTS=${2:?--out needs a file}; shift ;;
        --work) WORK=${2:?--work needs a folder}; shift ;;
        --only) ONLY=",${2:?--only needs stage names},"; shift ;;
        -h|--help) awk 'NR > 1 && /^#/ {sub(/^# ?/, ""); print; next} NR > 1 {exit}' "$0"; exit 0 ;;
        *) echo "gpu_check: unknown option $1 (see --help)" >&2; exit 2 ;;
    esac
    shift
done

PY=${PYTHON:-python3}
DATE=$(date -u +%Y-%m-%d)
if [ "$DRY" = 1 ]; then
    FLAG=(--dry-run)
    BUDGET=${GPU_CHECK_BUDGET:-60}
    RESULTS=${RESULTS:-bench/out/gpu_dry_$DATE.json}
    WORK=${WORK:-bench/out/gpu_check_dry}
    # time boxes (s): prepare picking cpu_ap training busy memory tests
    BOXES=(15 20 15 20 15 15 30)
else
    FLAG=()
    BUDGET=${GPU_CHECK_BUDGET:-240}
    RESULTS=${RESULTS:-bench/results/gpu_$DATE.json}
    WORK=${WORK:-bench/out/gpu_check}
    BOXES=(30 45 30 25 40 15 120)
fi
STAGES=(prepare picking cpu_ap training busy memory tests)
if [ -n "$ONLY" ]; then
    for stage in ${ONLY//,/ }; do
        case " ${STAGES[*]} " in *" $stage "*) ;; *) echo "gpu_check: --only $stage: no such stage (${STAGES[*]})" >&2; exit 2 ;; esac
    done
fi
START=$SECONDS
command -v "$PY" >/dev/null 2>&1 || { echo "gpu_check: no python at '$PY' (set PYTHON=...)" >&2; exit 2; }
command -v timeout >/dev/null 2>&1 || { echo "gpu_check: the 'timeout' command (coreutils) is missing" >&2; exit 2; }
mkdir -p "$WORK" "$(dirname "$RESULTS")" || exit 2

# preflight: python, torch (and CUDA), the demo data, each dependency installed or in .whl/ -- one line, exit 2
timeout -k 2 10 "$PY" bench/gpu_check.py --preflight "${FLAG[@]}"
rc=$?
[ $rc -eq 124 ] && echo "gpu_check: the preflight took over 10 s (importing torch?)" >&2
[ $rc -ne 0 ] && exit 2

# install what is missing, from .whl/ only (never torch), then pupick itself with --no-deps
if [ "$DRY" = 0 ]; then
    mapfile -t NEED < <("$PY" bench/gpu_check.py --missing)
    if [ ${#NEED[@]} -gt 0 ]; then
        echo "gpu_check: installing ${#NEED[@]} package(s) from .whl/" >&2
        if ! timeout 120 "$PY" -m pip install -q --no-index --find-links .whl "${NEED[@]}" >"$WORK/pip.log" 2>&1; then
            echo "gpu_check: installing from .whl/ failed: $(grep -E 'ERROR|error' "$WORK/pip.log" | tail -1)" >&2
            exit 2
        fi
    fi
    if ! "$PY" -c "import pupick.core, pathlib, sys; sys.exit(pathlib.Path(pupick.core.__file__).resolve().is_relative_to(pathlib.Path('.').resolve()) is False)" 2>/dev/null; then
        if ! timeout 120 "$PY" -m pip install -q --no-deps --no-index --find-links .whl -e . >"$WORK/pip.log" 2>&1; then
            echo "gpu_check: installing pupick failed: $(grep -E 'ERROR|error' "$WORK/pip.log" | tail -1)" >&2
            exit 2
        fi
    fi
fi

if [ -z "$ONLY" ] || [ ! -f "$RESULTS" ]; then
    "$PY" bench/gpu_check.py --begin --out "$RESULTS" "${FLAG[@]}" || exit 2
fi
for i in "${!STAGES[@]}"; do
    stage=${STAGES[$i]}
    [ -n "$ONLY" ] && [[ "$ONLY" != *",$stage,"* ]] && continue
    left=$((BUDGET - (SECONDS - START)))
    if [ $left -lt 5 ]; then
        "$PY" bench/gpu_check.py --mark "$stage" "skipped: out of time" --out "$RESULTS"
        continue
    fi
    box=$((BOXES[i] * ${GPU_CHECK_SLACK:-1}))
    [ "$box" -gt "$left" ] && box=$left
    echo "gpu_check: $stage (at most ${box} s)" >&2
    timeout -k 5 "$box" "$PY" bench/gpu_check.py --stage "$stage" --out "$RESULTS" --work "$WORK" "${FLAG[@]}"
    rc=$?
    if [ $rc -eq 124 ] || [ $rc -eq 137 ]; then
        "$PY" bench/gpu_check.py --mark "$stage" timeout --seconds "$box" --out "$RESULTS"
    elif [ $rc -ne 0 ]; then
        "$PY" bench/gpu_check.py --mark "$stage" "failed (exit $rc)" --out "$RESULTS"
    fi
done
echo "gpu_check: $((SECONDS - START)) s in all" >&2
"$PY" bench/gpu_check.py --summary --out "$RESULTS"
