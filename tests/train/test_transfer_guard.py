"""No batch is built on the host: the compiled programs run under ``jax.transfer_guard``.

``fit`` puts the samples on the device before its epoch loop; every batch is then gathered
inside the epoch program. The tests wrap the engine's compiled programs (the epoch: training
and evaluation; prediction) in ``jax.transfer_guard("disallow")``, which turns any implicit
host-to-device or device-to-host transfer during a call into an error, and run real fits
through them on every batching path.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd
import pytest
from train_synthetic import CrossSection, TinyGRU, TinyMLP, panel

from qjax.data.windows import WindowSampler
from qjax.models.layers import RNN
from qjax.train import TrainConfig, engine, fit, predict


@pytest.fixture
def guarded(monkeypatch):
    """The engine's compiled programs, each call under ``transfer_guard("disallow")``;
    yields the number of guarded calls per program."""
    calls = {"_run_epoch": 0, "_predict": 0}

    def guard(name, program):
        def under_guard(*args, **kwargs):
            calls[name] += 1
            with jax.transfer_guard("disallow"):
                return program(*args, **kwargs)

        return under_guard

    monkeypatch.setattr(engine, "_run_epoch", guard("_run_epoch", engine._run_epoch))
    for dots, program in engine._PREDICT_PROGRAMS.items():  # one per matrix-product backend
        monkeypatch.setitem(engine._PREDICT_PROGRAMS, dots, guard("_predict", program))
    return calls


class WindowGRU(nn.Module):
    """A GRU over [N, T, F] windows gathered by ``WindowSampler``'s take."""

    @nn.compact
    def __call__(self, x, train: bool = False):
        seq = RNN(hidden_size=4, num_layers=1, dropout=0.0)(x, train=train)
        return nn.Dense(1)(seq[:, -1, :])[:, 0]


def window_samples(seed):
    """Windowed samples (step_len 5) of a small panel with missing rows: train and valid."""
    rng = np.random.default_rng(seed)
    index = pd.MultiIndex.from_product(
        [pd.date_range("2021-01-04", periods=24, freq="B"), [f"I{i}" for i in range(6)]],
        names=["datetime", "instrument"],
    )
    index = index[rng.uniform(size=len(index)) > 0.1]  # suspended days: windows are filled
    values = rng.normal(size=(len(index), 3)).astype(np.float32)
    columns = pd.MultiIndex.from_tuples([("feature", "a"), ("feature", "b"), ("label", "L0")])
    frame = pd.DataFrame(values, index=index, columns=columns)
    dates = index.get_level_values("datetime").unique()
    train, _ = WindowSampler(frame, None, dates[15], 5, "ffill+bfill").samples()
    valid, _ = WindowSampler(frame, dates[16], None, 5, "ffill+bfill").samples()
    return train, valid


CASES = {
    # flat rows, shuffled batches; eval_train and the daily-IC metric add the scatter paths
    "flat": lambda seed: (
        TinyMLP(),
        panel(seed=seed),
        panel(n_days=8, seed=seed + 1),
        TrainConfig(n_epochs=2, batch_size=64, metric="ic", eval_train=True),
    ),
    # flat feature-major windows into a recurrent model, Qlib's evaluation protocol
    "recurrent": lambda seed: (
        TinyGRU(d_feat=2),
        panel(seed=seed),
        panel(n_days=8, seed=seed + 1),
        TrainConfig(n_epochs=2, batch_size=64, eval_protocol="qlib"),
    ),
    # windows gathered on the device from the panel tables
    "windowed": lambda seed: (
        WindowGRU(),
        *window_samples(seed),
        TrainConfig(n_epochs=2, batch_size=16),
    ),
    # one padded day per step, the row mask as a module input
    "daily": lambda seed: (
        CrossSection(),
        panel(ragged=True, seed=seed),
        panel(n_days=8, ragged=True, seed=seed + 1),
        TrainConfig(n_epochs=2, batching="daily", lr=0.01),
    ),
    # DNNModelPytorch: batches drawn with replacement, an evaluation every eval_steps steps
    "steps": lambda seed: (
        TinyMLP(),
        panel(seed=seed),
        panel(n_days=8, seed=seed + 1),
        TrainConfig(batching="steps", max_steps=6, eval_steps=3, batch_size=32),
    ),
}


@pytest.mark.parametrize("case", list(CASES))
def test_the_epoch_program_makes_no_host_transfer(case, guarded, seed):
    module, train, valid, config = CASES[case](seed)
    result = fit(module, train, valid, config, seeds=[seed % 1000, seed % 1000 + 1], verbose=False)
    assert guarded["_run_epoch"] == config.n_evaluations, (case, guarded)
    assert np.isfinite(result.history["train_loss"]).all(), (case, seed)
    preds = predict(
        module,
        result.variables,
        valid,
        batch_size=config.batch_size,
        daily=config.batching.daily,
        per_seed=True,
    )
    assert guarded["_predict"] == 1 and preds.shape == (2, valid.size), (case, guarded)


def test_the_guard_catches_a_batch_built_on_the_host(guarded):
    """The check can fail: samples left in host memory make the epoch program transfer."""
    train = panel(seed=0)
    host = train.replace(features=np.asarray(train.features))
    config = TrainConfig(n_epochs=1, batch_size=64)
    segment = engine.batching.make_segment(host, False)
    trainer = engine.Trainer(
        TinyMLP(), engine.supervised_mse, config, engine.data_parallel(jax.local_devices()[:1])
    )
    keys = jnp.stack([jax.random.PRNGKey(0)])
    state = engine._INIT_PROGRAM(
        keys, engine.batching.make_segment(train, False), trainer=trainer, init_variables=None
    )
    with pytest.raises(Exception, match="[Dd]isallowed host-to-device transfer"):
        engine._run_epoch(state, segment, None, trainer=trainer, n_steps=None)
