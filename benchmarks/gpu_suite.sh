#!/usr/bin/env bash
# The GPU benchmark in one command, for a bare GPU machine with JAX (CUDA), flax, optax, orbax
# and torch preinstalled:
#
#   benchmarks/gpu_suite.sh OUTDIR            # every model, torch on cuda:0 vs JAX on the GPU
#   benchmarks/gpu_suite.sh OUTDIR --dry-run  # tiny sizes, JAX and torch on the CPU (tests)
#
# Missing Python packages (pyqlib and its dependencies) are installed from wheels carried in
# benchmarks/wheels/ (make them on a connected machine with
# `pip download pyqlib==0.9.7 -d benchmarks/wheels`). qjax runs from this checkout.
# Writes OUTDIR/train_vs_torch_<tag>.{md,json} (training and inference throughput of every
# model, end-to-end fits of LSTM, GRU, ALSTM and Transformer) and OUTDIR/gpu_suite.log.
# The whole suite is capped at 8 minutes (SUITE_SECONDS); what a cap cuts off is in the log.
# Not covered yet: the 20-seed job and the cuDNN (jax.experimental.rnn) LSTM comparison.
set -euo pipefail

if [[ $# -lt 1 || "$1" == -* ]]; then
    echo "usage: $0 OUTDIR [--dry-run]" >&2
    exit 2
fi
OUT=$1
DRY=0
if [[ "${2:-}" == "--dry-run" ]]; then DRY=1; elif [[ -n "${2:-}" ]]; then
    echo "$0: unknown option ${2}; expected --dry-run" >&2
    exit 2
fi
REPO=$(cd "$(dirname "$0")/.." && pwd)
PY=${PYTHON:-python}
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
LOG="$OUT/gpu_suite.log"
: > "$LOG"

for module in jax flax optax orbax.checkpoint torch; do
    if ! "$PY" -c "import $module" 2>/dev/null; then
        echo "$0: $module is not importable; this suite expects it preinstalled" | tee -a "$LOG" >&2
        exit 2
    fi
done
if ! "$PY" -c "import qlib" 2>/dev/null; then
    if compgen -G "$REPO/benchmarks/wheels/*.whl" > /dev/null; then
        "$PY" -m pip install --no-index --find-links "$REPO/benchmarks/wheels" pyqlib >> "$LOG" 2>&1
    else
        echo "$0: pyqlib is missing and benchmarks/wheels/ has no wheels; on a connected" \
             "machine run: pip download pyqlib==0.9.7 -d benchmarks/wheels" | tee -a "$LOG" >&2
        exit 2
    fi
fi

export PYTHONPATH="$REPO${PYTHONPATH:+:$PYTHONPATH}"
if [[ $DRY == 1 ]]; then
    # The same code path on the CPU at toy sizes, so that the suite cannot rot.
    export JAX_PLATFORMS=cpu CUDA_VISIBLE_DEVICES=""
    ARGS=(--models lstm --samples 64 --repeats 1 --e2e-models "" --tag dryrun)
    SUITE_SECONDS=${SUITE_SECONDS:-300}
else
    ARGS=(--samples 25600 --repeats 3 --e2e-models lstm,gru,alstm,transformer --tag gpu)
    SUITE_SECONDS=${SUITE_SECONDS:-480}
fi

cd "$REPO"
status=0
timeout "$SUITE_SECONDS" "$PY" benchmarks/train_vs_torch.py "${ARGS[@]}" --out "$OUT" \
    >> "$LOG" 2>&1 || status=$?
if [[ $status == 124 ]]; then
    echo "$0: stopped after ${SUITE_SECONDS}s; the results of models that finished are in $LOG" >&2
elif [[ $status != 0 ]]; then
    echo "$0: train_vs_torch.py failed (exit $status); see $LOG" >&2
    exit "$status"
fi
echo "results in $OUT"
