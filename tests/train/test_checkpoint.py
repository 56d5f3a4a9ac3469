"""Resumable runs: kill -9 a training process, resume, and reach the same parameters."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
from train_synthetic import TinyMLP, max_abs_diff, panel

from qjax.train import TrainConfig, fit

CONFIG = TrainConfig(n_epochs=8, lr=0.01, batch_size=40, early_stop=3, lr_plateau={"patience": 1})


def data():
    return panel(seed=11), panel(n_days=8, seed=12)


# A child process that trains with checkpoints and pauses after each evaluation, so that the
# parent can SIGKILL it while the run is in progress.
CHILD = textwrap.dedent(
    """
    import sys, time
    from test_checkpoint import CONFIG, data
    from train_synthetic import TinyMLP
    from qjax.train import fit
    fit(TinyMLP(), *data(), CONFIG, seeds=[0, 1], checkpoint_dir=sys.argv[1],
        on_epoch=lambda epoch, metrics: time.sleep(0.5), verbose=False)
    """
)


def finished_steps(directory: Path) -> list[int]:
    return (
        sorted(int(p.name) for p in directory.iterdir() if p.name.isdigit())
        if directory.exists()
        else []
    )


def test_resume_after_sigkill_reaches_the_same_parameters(tmp_path):
    directory = tmp_path / "run"
    env = dict(
        os.environ,
        PYTHONPATH=os.pathsep.join([str(Path(__file__).parent), os.environ.get("PYTHONPATH", "")]),
    )
    child = subprocess.Popen([sys.executable, "-c", CHILD, str(directory)], env=env)
    try:
        deadline = time.monotonic() + 300
        while not finished_steps(directory) or max(finished_steps(directory)) < 2:
            assert child.poll() is None, "the training process ended before it could be killed"
            assert time.monotonic() < deadline, "no checkpoint appeared in time"
            time.sleep(0.05)
        os.kill(child.pid, signal.SIGKILL)
    finally:
        child.wait()
    assert child.returncode == -signal.SIGKILL
    assert max(finished_steps(directory)) < CONFIG.n_epochs - 1  # really interrupted

    def resume(on_epoch):
        return fit(
            TinyMLP(),
            *data(),
            CONFIG,
            seeds=[0, 1],
            checkpoint_dir=directory,
            resume=True,
            on_epoch=on_epoch,
            verbose=False,
        )

    seen = []
    resumed = resume(lambda epoch, metrics: seen.append(epoch))
    uninterrupted = fit(TinyMLP(), *data(), CONFIG, seeds=[0, 1], verbose=False)

    assert seen and seen[0] > 0  # it continued instead of starting over
    assert max_abs_diff(resumed.variables, uninterrupted.variables) <= 1e-6
    np.testing.assert_array_equal(resumed.best_epoch, uninterrupted.best_epoch)
    assert resumed.history.keys() == uninterrupted.history.keys()
    for name, values in uninterrupted.history.items():
        np.testing.assert_allclose(resumed.history[name], values, rtol=1e-6, err_msg=name)

    # A finished run resumes to the same result without training.
    again = resume(lambda epoch, metrics: pytest.fail("trained again"))
    assert max_abs_diff(again.variables, resumed.variables) == 0.0


def test_checkpoint_dir_guards_against_mixing_runs(tmp_path):
    train, valid = panel(n_days=5, n_inst=8, seed=1), None
    config = TrainConfig(n_epochs=1, batch_size=20)

    def run(config, **options):
        return fit(
            TinyMLP(), train, valid, config, checkpoint_dir=tmp_path, verbose=False, **options
        )

    run(config)
    with pytest.raises(ValueError, match="resume=True"):
        run(config)
    with pytest.raises(ValueError, match="different config"):
        run(TrainConfig(n_epochs=1, batch_size=20, lr=0.5), resume=True)
    # the matrix-product backend only changes summation order: a run resumes under another
    resumed = run(TrainConfig(n_epochs=1, batch_size=20, cpu_dots="eigen"), resume=True)
    assert resumed.resumed_from == 1
