"""``qjax sweep``: grids, checks before any fit, the table, Ray tasks equal to in-process fits."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from qjax import cli
from qjax.errors import ConfigError
from qjax.sweep import parse_grid, sweep
from tests.workflow.tiny_run import REPO, overrides, set_flags

CONFIG = str(REPO / "configs" / "lstm_alpha360.yaml")
GRID = ["model.kwargs.lr=1e-3,3e-3"]


def test_grid_values_split_at_commas_outside_brackets():
    months = ["[2015-11-02, 2015-11-30]", "[2015-12-01, 2015-12-31]"]
    grid = parse_grid(
        [
            "model.kwargs.lr=1e-3, 5e-4",
            "dataset.segments.test=" + ",".join(months),
            "model.name=lstm",
        ]
    )
    assert grid == [
        ("model.kwargs.lr", ["1e-3", "5e-4"]),
        ("dataset.segments.test", months),
        ("model.name", ["lstm"]),
    ]


@pytest.mark.parametrize(
    "items,message",
    [
        (["model.kwargs.lr"], "must look like key=value1,value2"),
        (["=1,2"], "must look like key=value1,value2"),
        (["model.kwargs.lr=1e-3,,2e-3"], "has an empty value"),
        (["model.kwargs.lr=1e-3", "model.kwargs.lr=2e-3"], "given twice"),
        (["model.name=lstm,lstm"], "repeats a value"),
    ],
)
def test_malformed_grids_are_refused_with_the_fix(items, message):
    with pytest.raises(ConfigError, match=message):
        parse_grid(items)


def test_a_bad_setting_is_refused_before_any_fit(tmp_path):
    out = tmp_path / "sweep"
    with pytest.raises(ConfigError, match=r"setting model.name=lsmt: .*unknown model 'lsmt'"):
        sweep(CONFIG, ["model.name=lstm,lsmt"], out, seeds=2, overrides=overrides(), use_ray=False)
    assert not out.exists()  # the good setting did not start either


def test_cli_reports_bad_input_in_one_line(tmp_path, capsys):
    assert (
        cli.main(
            ["sweep", CONFIG, "--grid", "model.kwargs.lr", "--out", str(tmp_path / "s"), "--no-ray"]
        )
        == 2
    )
    assert "must look like key=value1,value2" in capsys.readouterr().err
    assert cli.main(["sweep", CONFIG, "--no-ray", "--address", "auto"]) == 2
    assert "contradict" in capsys.readouterr().err


def _metric_rows(out: Path) -> list[dict]:
    return json.loads((out / "sweep.json").read_text())["rows"]


def tiny_sweep(out: Path, use_ray: bool) -> None:
    """Two settings × two seeds of a few-second run into ``out``."""
    sweep(
        CONFIG,
        GRID,
        out,
        seeds=2,
        overrides=overrides(model__kwargs__n_epochs=3),
        use_ray=use_ray,
        verbose=False,
    )


@pytest.fixture(scope="module")
def in_process(tmp_path_factory) -> Path:
    """The tiny sweep, fitted one after another in this process."""
    out = tmp_path_factory.mktemp("in_process") / "sweep"
    tiny_sweep(out, use_ray=False)
    return out


def test_table_holds_each_settings_mean_and_std_over_seeds(in_process):
    rows = _metric_rows(in_process)
    assert [row["model.kwargs.lr"] for row in rows] == ["1e-3", "3e-3"]
    for row in rows:
        run = in_process / row["run"]
        config = yaml.safe_load((run / "config.yaml").read_text())
        assert config["model"]["kwargs"]["lr"] == float(row["model.kwargs.lr"])
        per_seed = pd.DataFrame(json.loads((run / "metrics.json").read_text())["test_per_seed"]).T
        assert row["seeds"] == len(per_seed) == 2
        for name in ("IC", "ICIR", "Rank IC", "Rank ICIR"):
            assert row[name] == pytest.approx(per_seed[name].mean(), rel=1e-12)
            assert row[f"{name} std"] == pytest.approx(np.std(per_seed[name], ddof=1), rel=1e-12)
    table = (in_process / "sweep.md").read_text()
    assert f"{rows[1]['IC']:.4f} ± {rows[1]['IC std']:.4f}" in table


def test_running_a_finished_sweep_again_gives_the_same_table(in_process):
    before = _metric_rows(in_process)
    tiny_sweep(in_process, use_ray=False)
    assert _metric_rows(in_process) == before


@pytest.fixture(scope="module")
def ray_local():
    ray = pytest.importorskip("ray")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, logging_level="ERROR")
    yield ray
    ray.shutdown()


@pytest.mark.filterwarnings("ignore:os.fork:RuntimeWarning")  # ray.init starts its daemons
def test_ray_tasks_give_the_in_process_results(in_process, ray_local, tmp_path):
    out = tmp_path / "sweep"
    tiny_sweep(out, use_ray=True)
    assert _metric_rows(out) == _metric_rows(in_process)


def _ray_workers_running(function: str) -> list[int]:
    """Pids of Ray workers executing ``function`` (Ray titles them ``ray::<function>``)."""
    pids = []
    for proc in Path("/proc").iterdir():
        try:
            if proc.name.isdigit() and f"ray::{function}" in (proc / "cmdline").read_text():
                pids.append(int(proc.name))
        except OSError:
            continue
    return pids


@pytest.mark.skipif(not Path("/proc").is_dir(), reason="finds Ray's worker through /proc")
def test_a_killed_ray_worker_is_retried_and_resumes_from_its_checkpoint(tmp_path):
    pytest.importorskip("ray")
    settings = set_flags(model__kwargs__n_epochs=12, model__kwargs__early_stop=50)
    env = {**os.environ, "PYTHONPATH": str(REPO)}

    def command(out: Path, *extra: str) -> list[str]:
        return [
            sys.executable,
            "-m",
            "qjax.cli",
            "sweep",
            CONFIG,
            "--grid",
            "model.kwargs.lr=2e-3",
            "--seeds",
            "1",
            "--out",
            str(out),
            "--quiet",
            *settings,
            *extra,
        ]

    reference = tmp_path / "reference"
    subprocess.run(
        command(reference, "--no-ray"), check=True, env=env, capture_output=True, timeout=600
    )

    out = tmp_path / "killed"
    proc = subprocess.Popen(
        command(out), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
    )
    deadline, killed = time.time() + 300, []
    while time.time() < deadline and proc.poll() is None and not killed:
        checkpoints = [p for p in out.glob("*/checkpoints/*") if p.name.isdigit()]
        if any(int(p.name) >= 3 for p in checkpoints):  # step 3 of 12: 9 epochs left to resume
            killed = _ray_workers_running("run_fit")
            for pid in killed:
                os.kill(pid, signal.SIGKILL)
        time.sleep(0.05)
    _, stderr = proc.communicate(timeout=600)
    assert killed, "the fit ended before its worker could be killed"
    assert proc.returncode == 0, stderr
    assert _metric_rows(out) == _metric_rows(reference)
