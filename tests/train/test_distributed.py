"""Several processes through ``jax.distributed`` (qjax.train.distributed): two processes on
localhost, talking through JAX's CPU (Gloo) collectives, end with the parameters of one process.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from qjax.errors import DistributedError
from qjax.train import TrainConfig, distributed

HERE = Path(__file__).parent
REPO = HERE.parents[1]
SCRIPT = HERE / "distributed_fit.py"
LIMIT_SECONDS = 120  # a process whose peer died waits in a collective; never hang CI

# Float32 parameters after ~60 Adam steps of lr 3e-3. Summing a gradient over two processes
# instead of one changes its rounding (~1e-7 relative), which moves a parameter by far less than
# one step; 1e-5 is 300x below one step's size (a different batch, dropout mask or rng would
# move parameters by ~lr per step) and 100x above the differences seen (6e-8).
ATOL = 1e-5


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("JAX_")}
    paths = [str(REPO), str(HERE), env.get("PYTHONPATH", "")]
    env.update(
        PYTHONPATH=os.pathsep.join(paths),
        JAX_PLATFORMS="cpu",
        QJAX_CPU_DEVICES="1",
        XLA_FLAGS="",
        **extra,
    )
    return env


def _run_processes(argvs: list[list[str]], envs: list[dict[str, str]]) -> None:
    """Run ``python ARGV...`` side by side; on a failure or timeout, report every one's
    stderr."""
    procs = [
        subprocess.Popen(
            [sys.executable, *argv],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for argv, env in zip(argvs, envs)
    ]
    outputs = []
    try:
        for proc in procs:
            outputs.append(proc.communicate(timeout=LIMIT_SECONDS))
    except subprocess.TimeoutExpired:
        for proc in procs:
            proc.kill()
        outputs = [proc.communicate() for proc in procs]
        pytest.fail(f"timed out after {LIMIT_SECONDS}s:\n" + _report(procs, outputs))
    if any(proc.returncode for proc in procs):
        pytest.fail("a process failed:\n" + _report(procs, outputs))


def _report(procs, outputs) -> str:
    return "\n".join(
        f"--- process {i} (exit {proc.returncode}) stderr:\n{err[-4000:]}"
        for i, (proc, (_, err)) in enumerate(zip(procs, outputs))
    )


def _cluster_envs(count: int) -> list[dict[str, str]]:
    address = f"127.0.0.1:{_free_port()}"
    return [
        _env(JAX_COORDINATOR_ADDRESS=address, JAX_NUM_PROCESSES=str(count), JAX_PROCESS_ID=str(i))
        for i in range(count)
    ]


def _two_processes(out: Path, seed: int, *extra: str, single: Path | None = None) -> None:
    """A 2-process run (process 0 writes ``out``), and a single-process one writing ``single``
    at the same time."""
    script = str(SCRIPT)
    argvs = [[script, str(out), str(seed), *extra], [script, f"{out}.unused", str(seed), *extra]]
    envs = _cluster_envs(2)
    if single is not None:
        argvs, envs = [*argvs, [script, str(single), str(seed)]], [*envs, _env()]
    _run_processes(argvs, envs)


def _assert_same_run(single: Path, multi: Path, seed: int) -> None:
    a, b = np.load(single), np.load(multi)
    assert sorted(a.files) == sorted(b.files)
    for name in a.files:
        np.testing.assert_allclose(
            b[name].astype(np.float64),
            a[name].astype(np.float64),
            rtol=0,
            atol=ATOL,
            err_msg=f"{name} differs between two processes and one (seed {seed})",
        )


def test_two_processes_match_one_process(tmp_path, seed):
    """Final parameters, per-epoch losses and IC scores of a 2-process run (data split by days,
    Orbax checkpoints in a shared directory) equal a single-process run of the same setup;
    resuming the finished 2-process run from its checkpoints restores the same parameters."""
    checkpoints = tmp_path / "checkpoints"
    single = tmp_path / "single.npz"
    _two_processes(tmp_path / "multi.npz", seed, "--checkpoints", str(checkpoints), single=single)
    _assert_same_run(tmp_path / "single.npz", tmp_path / "multi.npz", seed)
    assert sorted(p.name for p in checkpoints.iterdir() if p.name.isdigit()) == ["2", "3"]

    _two_processes(tmp_path / "resumed.npz", seed, "--checkpoints", str(checkpoints), "--resume")
    _assert_same_run(tmp_path / "multi.npz", tmp_path / "resumed.npz", seed)


def test_day_shares_are_whole_consecutive_days_of_similar_size(seed):
    rng = np.random.default_rng(seed)
    per_day = rng.integers(1, 30, size=50)
    day = np.repeat(np.arange(50), per_day)
    rng.shuffle(day)  # sample order need not be day order
    for count in (1, 2, 3, 7):
        shares = distributed.day_shares(day, count)
        assert np.array_equal(np.sort(np.concatenate(shares)), np.arange(len(day))), seed
        owned = [np.unique(day[ids]) for ids in shares]
        for p in range(count - 1):  # consecutive ranges in day order, no day split
            if len(owned[p]) and len(owned[p + 1]):
                assert owned[p].max() < owned[p + 1].min(), (seed, count)
        sizes = [len(ids) for ids in shares]
        # a share ends at the first day that starts past its 1/count: at most one day over
        assert max(sizes) <= len(day) / count + per_day.max(), (seed, count, sizes)


# A config of a few seconds: LSTM on flat Alpha360 rows of a generated market of 12 stocks.
TINY_RUN = [
    "data.n_instruments=12",
    "data.n_days=120",
    "handler.fit_start_time=2015-01-05",
    "handler.fit_end_time=2015-03-31",
    "dataset.segments.train=[2015-01-05,2015-03-31]",
    "dataset.segments.valid=[2015-04-01,2015-04-30]",
    "dataset.segments.test=[2015-05-01,2015-06-19]",
    "model.kwargs.hidden_size=8",
    "model.kwargs.num_layers=1",
    "model.kwargs.batch_size=64",
    "model.kwargs.n_epochs=2",
]


@pytest.mark.slow
def test_cli_two_processes_write_the_run_of_one(tmp_path):
    """``qjax train --distributed`` on two processes: one run directory, written by process 0,
    whose test predictions and metrics equal those of a single-process run of the config."""
    config = str(REPO / "configs/lstm_alpha360.yaml")
    sets = [arg for item in TINY_RUN for arg in ("--set", item)]

    def train(out: Path, *extra: str) -> list[str]:
        argv = ["-m", "qjax.cli", "train", config, "--out", str(out), "--quiet", *extra]
        return [*argv, "--compilation-cache", "off", *sets]

    multi, single = tmp_path / "multi", tmp_path / "single"
    argvs = [train(multi, "--distributed")] * 2 + [train(single)]
    _run_processes(argvs, [*_cluster_envs(2), _env()])

    assert sorted(p.name for p in multi.iterdir()) == sorted(p.name for p in single.iterdir())
    a = pd.read_parquet(single / "predictions.parquet")
    b = pd.read_parquet(multi / "predictions.parquet")
    assert a.index.equals(b.index)
    # 2 epochs of lr 1e-3: summation order moves scores by ~1e-8 (4e-8 seen), a step by ~1e-3
    np.testing.assert_allclose(b.to_numpy(), a.to_numpy(), rtol=0, atol=1e-5)
    metrics = [json.loads((run / "metrics.json").read_text()) for run in (single, multi)]
    assert metrics[0]["best_epoch_1based"] == metrics[1]["best_epoch_1based"]
    for name, value in metrics[0]["test"].items():
        assert metrics[1]["test"][name] == pytest.approx(value, abs=1e-4), name


@pytest.mark.parametrize(
    ("environ", "names"),
    [
        ({"JAX_NUM_PROCESSES": "two"}, ["JAX_NUM_PROCESSES", "JAX_COORDINATOR_ADDRESS"]),
        ({"JAX_NUM_PROCESSES": "2", "JAX_PROCESS_ID": "2"}, ["JAX_PROCESS_ID=2", "0..1"]),
        ({"JAX_PROCESS_ID": "-1"}, ["JAX_PROCESS_ID"]),
    ],
)
def test_invalid_settings_name_the_variable(environ, names):
    with pytest.raises(DistributedError) as err:
        distributed.settings(environ)
    for name in names:
        assert name in str(err.value)


def test_settings_read_the_standard_variables():
    environ = {"JAX_COORDINATOR_ADDRESS": "10.0.0.1:1234", "JAX_NUM_PROCESSES": "4"}
    environ["JAX_PROCESS_ID"] = "3"
    assert distributed.settings(environ) == {
        "coordinator_address": "10.0.0.1:1234",
        "num_processes": 4,
        "process_id": 3,
    }


def test_cli_without_settings_says_what_to_set(tmp_path):
    """``qjax train --distributed`` outside a cluster stops at once (exit 2, no traceback),
    naming the variables; nothing is written."""
    done = subprocess.run(
        [sys.executable, "-m", "qjax.cli", "train", str(REPO / "configs/mlp_alpha158.yaml")]
        + ["--distributed", "--out", str(tmp_path / "run"), "--quiet"],
        env=_env(),
        capture_output=True,
        text=True,
        timeout=LIMIT_SECONDS,
    )
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr
    for name in ("JAX_COORDINATOR_ADDRESS", "JAX_NUM_PROCESSES", "JAX_PROCESS_ID"):
        assert name in done.stderr, done.stderr
    assert not (tmp_path / "run").exists()


def test_unsupported_runs_are_refused_before_training():
    daily = TrainConfig(batching="daily")
    with pytest.raises(DistributedError, match="daily"):
        distributed.check_supported(daily, None, None)
    with pytest.raises(DistributedError, match="devices= and split="):
        distributed.check_supported(TrainConfig(), None, "seeds")
    distributed.check_supported(TrainConfig(), None, None)  # row batches are fine
    with pytest.raises(DistributedError, match="BatchNorm"):
        distributed.check_no_batch_stats({"BatchNorm_0": {"mean": np.zeros(3)}})
    distributed.check_no_batch_stats({})
