"""benchmarks/gpu_suite.sh --dry-run: the GPU suite's every code path, on the CPU, in one run.

The suite is meant for a GPU machine that this test never sees; the dry run keeps the script
from rotting: every model's throughput item, the multi-seed job and the cuDNN LSTM's parity
check must run and report finite numbers.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("torch")
pytest.importorskip("qlib")

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

pytestmark = pytest.mark.parity  # runs Qlib's torch modules next to qjax's


def _finite(*values) -> bool:
    return all(isinstance(v, (int, float)) and math.isfinite(v) and v > 0 for v in values)


@pytest.fixture(scope="module")
def dry_run(tmp_path_factory) -> tuple[dict, str, subprocess.CompletedProcess]:
    out = tmp_path_factory.mktemp("gpu_suite")
    env = {**os.environ, "PYTHON": sys.executable}
    done = subprocess.run(
        ["bash", str(ROOT / "benchmarks" / "gpu_suite.sh"), str(out), "--dry-run"],
        env=env,
        capture_output=True,
        check=False,
        text=True,
        timeout=900,
    )
    assert done.returncode == 0, f"dry run failed ({done.returncode}):\n{done.stderr[-4000:]}"
    record = json.loads((out / "gpu_cpu_dry_run.json").read_text())
    return record, (out / "gpu_cpu_dry_run.md").read_text(), done


def test_every_model_has_finite_throughput(dry_run):
    import train_vs_torch

    record, markdown, _ = dry_run
    assert record["state"] == "complete" and not record["skipped"], record["skipped"]
    assert set(record["throughput"]) == set(train_vs_torch.CASES)
    for name, res in record["throughput"].items():
        assert "error" not in res, (name, res)
        t, i = res["train"], res["infer"]
        assert _finite(
            t["qjax_samples_per_s"],
            t["torch_samples_per_s"],
            t["speedup"],
            i["qjax_samples_per_s"],
            i["torch_samples_per_s"],
            i["speedup"],
        ), (name, res)
        assert res["params"]["qjax"] == res["params"]["torch"], (name, res["params"])
        assert f"| {name} | " in markdown, f"no row for {name} in the report"


def test_seed_job_and_cudnn_parity(dry_run):
    record, markdown, _ = dry_run
    assert set(record["seeds"]) == {"lstm", "gru", "alstm", "transformer"}
    for name, job in record["seeds"].items():
        assert "error" not in job, (name, job)
        assert job["seeds"] == 2 and job["replicas_per_program"] == 2, (name, job)
        assert _finite(
            job["qjax_seed_samples_per_s"], job["torch_seed_samples_per_s"], job["speedup"]
        ), (name, job)
    cudnn = record["cudnn"]["lstm"]
    assert "error" not in cudnn, cudnn
    assert "CUDA only" in cudnn["skipped"]  # the timing needs a GPU, and says so
    errors = cudnn["parity_max_abs_error"]
    assert set(errors) == {"lstm_ref", "scan"}
    assert all(e <= cudnn["parity_tolerance"] for e in errors.values()), errors
    assert "cuDNN timing skipped" in markdown
    for path in ("scan", "cudnn"):  # the timing code ran (on lstm_ref standing in for cuDNN)
        t = cudnn["timings"][path]
        assert _finite(t["train_samples_per_s"], t["infer_samples_per_s"]), (path, t)


def test_machine_is_described(dry_run):
    record, markdown, _ = dry_run
    machine = record["machine"]
    assert machine["jax_backend"] == "cpu" and machine["torch_device"] == "cpu"
    assert machine["versions"]["jax"] and machine["versions"]["torch"]
    assert record["machine_tag"] == "cpu_dry_run" and "## Machine" in markdown


def test_a_run_stopped_from_outside_keeps_its_results(dry_run, tmp_path):
    """--finalize (what the shell runs after its hard limit) marks the unfinished items."""
    record, _, _ = dry_run
    stopped = {**record, "state": "running", "running": "throughput tcn", "pending": ["seeds x"]}
    stopped["throughput"] = {k: v for k, v in record["throughput"].items() if k != "tcn"}
    (tmp_path / "gpu_cpu_dry_run.json").write_text(json.dumps(stopped))
    done = subprocess.run(
        [
            sys.executable,
            str(ROOT / "benchmarks" / "gpu_suite.py"),
            "--out",
            str(tmp_path),
            "--finalize",
        ],
        capture_output=True,
        check=False,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    final = json.loads((tmp_path / "gpu_cpu_dry_run.json").read_text())
    assert final["state"] == "stopped at the time limit" and final["pending"] == []
    assert set(final["skipped"]) == {"throughput tcn", "seeds x"}
    markdown = (tmp_path / "gpu_cpu_dry_run.md").read_text()
    assert "- throughput tcn: stopped" in markdown and "| lstm | " in markdown


def test_flat_cudnn_weights_unpack_to_qlibs_tensors(seed):
    """The flat vector holds each Qlib tensor where jax.experimental.rnn reads it back."""
    rnn = pytest.importorskip("jax.experimental.rnn")
    import _cudnn_lstm
    import numpy as np

    rng = np.random.default_rng(seed)
    d, h, layers = 5, 4, 2
    state = {}
    for k in range(layers):
        state[f"rnn.weight_ih_l{k}"] = rng.standard_normal((4 * h, d if k == 0 else h))
        state[f"rnn.weight_hh_l{k}"] = rng.standard_normal((4 * h, h))
        state[f"rnn.bias_ih_l{k}"] = rng.standard_normal(4 * h)
        state[f"rnn.bias_hh_l{k}"] = rng.standard_normal(4 * h)
    flat = _cudnn_lstm.flat_weights_from_qlib(state, layers)
    assert flat.size == rnn.get_num_params_in_lstm(d, h, layers, False)
    w_ih, w_hh, b_ih, b_hh = rnn.unpack_lstm_weights(flat, d, h, layers, False)
    for k in range(layers):
        for got, key in (
            (w_ih, "weight_ih"),
            (w_hh, "weight_hh"),
            (b_ih, "bias_ih"),
            (b_hh, "bias_hh"),
        ):
            np.testing.assert_array_equal(
                np.asarray(got[k]),
                state[f"rnn.{key}_l{k}"].astype(np.float32),
                err_msg=f"{key} l{k}, seed {seed}",
            )


def test_suite_refuses_a_missing_outdir_argument():
    done = subprocess.run(
        ["bash", str(ROOT / "benchmarks" / "gpu_suite.sh")],
        capture_output=True,
        check=False,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2 and "usage: benchmarks/gpu_suite.sh OUTDIR" in done.stderr
