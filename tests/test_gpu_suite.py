"""``benchmarks/gpu_suite.sh --dry-run``: the GPU suite's code path at toy sizes on the CPU."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SUITE = REPO / "benchmarks" / "gpu_suite.sh"


def _run(*args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHON=sys.executable)
    return subprocess.run(["bash", str(SUITE), *args], env=env, capture_output=True, text=True,
                          timeout=900)


def test_usage_errors_are_clear(tmp_path):
    done = _run()
    assert done.returncode == 2 and "usage:" in done.stderr
    done = _run(str(tmp_path), "--fast")
    assert done.returncode == 2 and "unknown option --fast" in done.stderr


def test_dry_run_writes_results(tmp_path):
    pytest.importorskip("torch")
    pytest.importorskip("qlib")
    if shutil.which("timeout") is None:
        pytest.skip("coreutils timeout not available")
    done = _run(str(tmp_path), "--dry-run")
    log = (tmp_path / "gpu_suite.log").read_text() if (tmp_path / "gpu_suite.log").exists() else ""
    assert done.returncode == 0, done.stderr + log[-3000:]
    record = json.loads((tmp_path / "train_vs_torch_dryrun.json").read_text())
    assert record["machine"]["jax_backend"] == "cpu"
    for name in ("lstm",):
        result = record["models"][name]
        assert "error" not in result, result
        assert result["train"]["qjax_samples_per_s"] > 0 and result["infer"]["speedup"] > 0
    assert "| lstm |" in (tmp_path / "train_vs_torch_dryrun.md").read_text()
