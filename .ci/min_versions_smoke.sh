#!/usr/bin/env bash
# Keep the dependency floors true: install every runtime dependency at exactly the minimum
# version pyproject.toml declares (a pip constraint file built from its ">=" floors) in a
# separate virtual environment, then run a small smoke subset of the tests against the tree.
#
#   .ci/min_versions_smoke.sh            # venv in .venv-min (reused if present)
#   MIN_VENV=/tmp/v .ci/min_versions_smoke.sh
set -euo pipefail
cd "$(dirname "$0")/.."

venv=${MIN_VENV:-.venv-min}
python3 -m venv "$venv"
. "$venv/bin/activate"
python -m pip install --quiet --upgrade pip

constraints="$venv/min-constraints.txt"
python - "$constraints" <<'PY'
import re
import sys

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import subprocess
    subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "tomli"], check=True)
    import tomli as tomllib

with open("pyproject.toml", "rb") as file:
    project = tomllib.load(file)["project"]
pins = []
for requirement in project["dependencies"]:
    match = re.fullmatch(r"\s*([A-Za-z0-9_.\-]+)(\[[^\]]*\])?\s*>=\s*([^,;\s]+)\s*", requirement)
    if match is None:
        sys.exit(f"dependency {requirement!r} has no plain '>=' floor to test")
    name, _, floor = match.groups()
    pins.append(f"{name}=={floor}")
    if name == "jax":  # jax's CPU backend ships separately, at the same version
        pins.append(f"jaxlib=={floor}")
with open(sys.argv[1], "w") as file:
    file.write("\n".join(pins) + "\n")
print("minimum versions:", " ".join(pins))
PY

# Every pinned package at its floor; anything else (transitive) as pip resolves it.
python -m pip install --quiet --constraint "$constraints" -r "$constraints" "pytest>=8" "pytest-timeout>=2.1"
python -m pip list --format=freeze | grep -iE '^(jax|jaxlib|flax|optax|orbax-checkpoint|numpy|pandas)=='

# Smoke subset: the engine (optax, flax.struct, scan, early stopping), Orbax checkpoints,
# the registry and estimator path end to end, every wrapper adapter (TabNet's pretraining
# stage's nn.share_scope naming among them); the CPU device split (import qjax after jax), the
# persistent compilation cache (JAX's file-locked mode), micro-batch gradients in float64, the
# transfer guard on the windowed and daily gathers, and the handler's frames under pandas
# without copy-on-write, two processes through jax.distributed (CPU collectives are off by
# default in older JAX). About 2.5 min of tests on 2 cores.
# Tests that need torch or Qlib skip: they are not installed here. (Under CI=true the test
# suite fails such a test instead, to keep the main job honest; not in this job.)
export PYTHONPATH=$PWD QJAX_TEST_COMPILATION_CACHE=off
unset CI
smoke() { python -m pytest -q -x -p no:cacheprovider "$@"; }
smoke tests/train/test_engine.py -k "early_stopping_follows_qlib_loop or bad_inputs or nan_label"
smoke tests/train/test_checkpoint.py
smoke tests/models/test_registry.py tests/models/test_spec.py
smoke tests/test_cpu_devices.py tests/test_compilation.py
smoke "tests/train/test_microbatch.py::test_chunked_gradient_equals_full_batch_gradient[6]"
smoke tests/train/test_transfer_guard.py -k "windowed or daily or catches"
smoke tests/data/test_handler.py tests/data/test_samples.py
smoke tests/train/test_distributed.py -k "two_processes_match_one_process"
