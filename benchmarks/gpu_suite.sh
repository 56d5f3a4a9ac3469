#!/usr/bin/env bash
# The GPU suite in one call: benchmarks/gpu_suite.sh OUTDIR [--dry-run] [gpu_suite.py options]
#
# Needs python3 with JAX (CUDA), flax, optax, orbax-checkpoint, pandas and torch. Anything else
# (pyqlib and its missing dependencies) comes from the wheels in the repository's .whl/ folder,
# installed without network into a temporary folder put on PYTHONPATH (not by --dry-run, which
# uses the local packages); qjax itself runs from the repository. Writes OUTDIR/gpu_<machine>.{md,json} (see benchmarks/README.md).
#
# Time: items start only while they fit before a soft deadline (QJAX_SUITE_BUDGET_S seconds
# after this script started, default 420); a hard limit 45 s later stops the run, and the
# results written so far are kept with the unfinished items marked as skipped.
set -euo pipefail

started=$(date +%s)
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
python="${PYTHON:-python3}"

if [ $# -lt 1 ] || [[ "$1" == -* ]]; then
    echo "usage: benchmarks/gpu_suite.sh OUTDIR [--dry-run] [gpu_suite.py options]" >&2
    exit 2
fi
out="$1"
shift
# The line that reproduces the run, for the report: no local paths, the budget if one was set.
QJAX_SUITE_COMMAND="${QJAX_SUITE_BUDGET_S:+QJAX_SUITE_BUDGET_S=$QJAX_SUITE_BUDGET_S }benchmarks/gpu_suite.sh OUTDIR"
if [ $# -gt 0 ]; then QJAX_SUITE_COMMAND+=" $(printf '%q ' "$@")"; fi
export QJAX_SUITE_COMMAND="${QJAX_SUITE_COMMAND% }"
dry_run=0
for arg in "$@"; do
    if [ "$arg" = "--dry-run" ]; then dry_run=1; fi
done

site=""
# The wheels are for the GPU machine's python3; a dry run uses this machine's packages.
if [ "$dry_run" = 0 ] && compgen -G "$repo/.whl/*.whl" > /dev/null; then
    site="$(mktemp -d)"
    trap 'rm -rf "$site"' EXIT
    echo "installing $(ls "$repo"/.whl/*.whl | wc -l) carried wheels into a temporary folder" >&2
    "$python" -m pip install --quiet --no-index --no-deps --disable-pip-version-check \
        --target "$site" "$repo"/.whl/*.whl
fi
export PYTHONPATH="$repo${site:+:$site}${PYTHONPATH:+:$PYTHONPATH}"
# torch and XLA share the GPU: XLA grows its pool instead of taking 75% of the memory up front.
export XLA_PYTHON_CLIENT_PREALLOCATE=false
export MLFLOW_ALLOW_FILE_STORE=true
if [ "$dry_run" = 1 ]; then
    export JAX_PLATFORMS=cpu
    # The dry run checks code paths, not speed: cheaper XLA:CPU compilation (~25% less CPU time).
    cheap="--xla_backend_optimization_level=0 --xla_llvm_disable_expensive_passes=true"
    export XLA_FLAGS="${XLA_FLAGS:+$XLA_FLAGS }$cheap"
    budget="${QJAX_SUITE_BUDGET_S:-600}"
else
    # One GPU for both sides: qjax's engine would otherwise split batches over every GPU.
    export CUDA_VISIBLE_DEVICES="${CUDA_VISIBLE_DEVICES:-0}"
    budget="${QJAX_SUITE_BUDGET_S:-420}"
fi
hard_limit=$(( budget + 45 - ($(date +%s) - started) ))

mkdir -p "$out"
set +e
timeout --kill-after=10 "$hard_limit" "$python" "$repo/benchmarks/gpu_suite.py" \
    --out "$out" --deadline-at "$(( started + budget ))" "$@"
status=$?
set -e
if [ "$status" = 124 ] || [ "$status" = 137 ]; then
    echo "the suite ran past its hard limit of ${hard_limit} s; keeping what it measured" >&2
    "$python" "$repo/benchmarks/gpu_suite.py" --out "$out" --finalize
fi
exit "$status"
