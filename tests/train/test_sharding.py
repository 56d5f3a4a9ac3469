"""Data parallelism: a batch split over 4 (forced host) devices trains like one device."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

# Runs in a fresh interpreter: the device count is fixed when JAX initialises.
CHILD = textwrap.dedent(
    """
    import jax, numpy as np
    from qjax.train import TrainConfig, fit, predict
    from train_synthetic import CrossSection, TinyMLP, max_abs_diff, panel

    assert jax.device_count() == 4, jax.devices()
    one, four = jax.devices()[:1], jax.devices()

    # Shuffled minibatches, BatchNorm statistics across devices, two replicas.
    train, valid = panel(seed=0), panel(n_days=8, seed=1)
    config = TrainConfig(n_epochs=3, lr=0.01, batch_size=48, early_stop=2)
    runs = [
        fit(TinyMLP(), train, valid, config, seeds=[0, 1], devices=devices, verbose=False)
        for devices in (one, four)
    ]
    params_diff = max_abs_diff(runs[0].variables, runs[1].variables)
    assert params_diff < 1e-5, params_diff
    losses = [run.history["valid_loss"] for run in runs]
    np.testing.assert_allclose(losses[0], losses[1], rtol=1e-5)
    variables = runs[0].variables
    preds = [
        predict(TinyMLP(), variables, valid, per_seed=True, batch_size=50, devices=devices)
        for devices in (one, four)
    ]
    np.testing.assert_allclose(preds[0], preds[1], rtol=1e-5, atol=1e-6)

    # Daily batches: ragged days padded to a width divisible by the device count.
    daily = TrainConfig(n_epochs=2, lr=0.01, batching="daily", early_stop=2)
    train = panel(n_days=10, n_inst=13, ragged=True, seed=2)
    runs = [
        fit(CrossSection(), train, train, daily, devices=devices, verbose=False)
        for devices in (one, four)
    ]
    daily_diff = max_abs_diff(runs[0].variables, runs[1].variables)
    assert daily_diff < 1e-5, daily_diff
    print("OK", params_diff, daily_diff)
    """
)


def test_four_devices_match_one_device():
    env = dict(
        os.environ,
        XLA_FLAGS="--xla_force_host_platform_device_count=4",
        JAX_PLATFORMS="cpu",
        PYTHONPATH=os.pathsep.join([str(Path(__file__).parent), os.environ.get("PYTHONPATH", "")]),
    )
    done = subprocess.run(
        [sys.executable, "-c", CHILD], env=env, capture_output=True, text=True, timeout=600
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.startswith("OK")
