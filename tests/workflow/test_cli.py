"""`qjax train`: a real run on generated data, its outputs, resume after kill -9, bad input."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

from qjax import cli, run_config, workflow
from tests.workflow import tiny_run

REPO = Path(__file__).resolve().parents[2]
CONFIG = str(REPO / "configs" / "lstm_alpha360.yaml")


def test_train_writes_a_complete_run_with_a_positive_test_ic(tmp_path, capsys):
    out = tmp_path / "run"
    argv = tiny_run.train_argv(
        CONFIG, out, *tiny_run.sets("model.kwargs.n_epochs=6", "model.kwargs.lr=3e-3")
    )
    assert cli.main(argv) == 0
    printed = capsys.readouterr().out
    assert "test IC" in printed and "Rank ICIR" in printed
    metrics = json.loads((out / "metrics.json").read_text())
    assert set(metrics["test"]) == {"IC", "ICIR", "Rank IC", "Rank ICIR"}
    # The generated market plants a signal an oracle sees with IC ~0.15; a small LSTM finds some.
    assert metrics["test"]["IC"] > 0.02
    pred = pd.read_parquet(out / "predictions.parquet")
    assert (
        pred.index.names == ["datetime", "instrument"] and len(pred) == metrics["samples"]["test"]
    )
    assert (out / "report.html").stat().st_size > 100_000
    assert (out / "config.yaml").exists() and any((out / "checkpoints").iterdir())

    # Same command again: the finished run is found and nothing is retrained.
    assert cli.main(argv) == 0
    again = json.loads((out / "metrics.json").read_text())
    assert again["test"] == metrics["test"]

    # A different configuration in the same directory is refused, not mixed in.
    assert (
        cli.main(tiny_run.train_argv(CONFIG, out, *tiny_run.sets("model.kwargs.n_epochs=7"))) == 2
    )
    assert "holds a run of a different configuration" in capsys.readouterr().err


def test_train_scores_a_window_dataset_config(tmp_path):
    # TSDataset configs: the test labels come from the handler's rows, not from the windows.
    out = tmp_path / "ts"
    config = str(REPO / "configs" / "gru_alpha158.yaml")
    assert (
        cli.main(
            tiny_run.train_argv(
                config, out, *tiny_run.sets("model.kwargs.n_epochs=2", "model.kwargs.lr=3e-3")
            )
        )
        == 0
    )
    metrics = json.loads((out / "metrics.json").read_text())
    pred = pd.read_parquet(out / "predictions.parquet")
    cfg = run_config.validate(run_config.parse_yaml((out / "config.yaml").read_text()))
    label = workflow.build_dataset(cfg).label("test")
    assert len(pred) == metrics["samples"]["test"] == len(label)
    assert pred.index.sort_values().equals(label.index.sort_values())
    assert all(abs(value) < 1 for value in metrics["test"].values())


def test_compiled_programs_are_kept_for_the_next_run(tmp_path):
    cache = tmp_path / "xla"
    argv = tiny_run.train_argv(
        CONFIG,
        tmp_path / "run",
        "--compilation-cache",
        str(cache),
        *tiny_run.sets("model.kwargs.n_epochs=1"),
    )
    command = [sys.executable, "-m", "qjax.cli", *argv]
    done = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    assert len(list(cache.iterdir())) >= 2  # at least the epoch and the evaluation programs


def _train_command(out: Path) -> list[str]:
    sets = tiny_run.sets("model.kwargs.n_epochs=12", "model.kwargs.early_stop=50")
    return [sys.executable, "-m", "qjax.cli", *tiny_run.train_argv(CONFIG, out, *sets)]


@pytest.mark.slow
def test_a_run_killed_mid_training_resumes_to_the_same_result(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    reference = tmp_path / "reference"
    subprocess.run(_train_command(reference), check=True, env=env, capture_output=True)

    interrupted = tmp_path / "interrupted"
    proc = subprocess.Popen(
        _train_command(interrupted), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    checkpoints = interrupted / "checkpoints"
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None:
        # Steps, not a count of folders: only the newest two are kept, so three folders exist
        # only for an instant. Killed after step 3 of 12, the run has 9 epochs left to be caught.
        if checkpoints.is_dir() and any(
            p.name.isdigit() and int(p.name) >= 3 for p in checkpoints.iterdir()
        ):
            proc.send_signal(signal.SIGKILL)
            break
        time.sleep(0.05)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, "the run ended before it could be interrupted"
    assert not (interrupted / "metrics.json").exists()

    subprocess.run(_train_command(interrupted), check=True, env=env, capture_output=True)
    expected = pd.read_parquet(reference / "predictions.parquet")
    resumed = pd.read_parquet(interrupted / "predictions.parquet")
    pd.testing.assert_frame_equal(resumed, expected, rtol=1e-6, atol=1e-7)


def test_config_errors_exit_2_with_the_reason(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text("data: {source: generated}\nhandler: {name: Alpha360}\n")
    assert cli.main(["train", str(bad)]) == 2
    assert "needs a 'dataset' section" in capsys.readouterr().err
    assert (
        cli.main(["train", CONFIG, "--set", "model.name=lstmm", "--out", str(tmp_path / "x")]) == 2
    )
    assert "unknown model 'lstmm'" in capsys.readouterr().err
