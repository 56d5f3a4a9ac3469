"""Host-streamed training (``TrainConfig.stream_batches``) trains what the resident engine does.

The streamed chunk programs run the resident step bodies on the same batches, so the final
parameters must be bit for bit the resident ones. The epoch's metrics are float32 reductions of
the same per-batch values; with several seeds or daily batches XLA lays the reduction out
differently, so they may differ by float32 rounding: the error bound of an n-term float32
sum in any order, ``n * 2**-24`` relative, bounds the difference.
"""

from __future__ import annotations

import jax
import numpy as np
import pandas as pd
import pytest
from test_transfer_guard import window_samples
from train_synthetic import CrossSection, TinyMLP, panel

from qjax.data.samples import tabular_samples
from qjax.errors import Interrupted
from qjax.train import TrainConfig, fit, predict, stream

ONE_DEVICE = jax.local_devices()[:1]
ULP = 2.0**-24  # float32 unit roundoff


def host_panel(n_days, n_inst, n_feat, seed):
    """``panel`` samples whose arrays are host numpy (nothing on the device)."""
    samples = stream.to_host(panel(n_days, n_inst, n_feat, seed=seed, ragged=True))
    assert isinstance(samples.features, np.ndarray)
    return samples


# (module, TrainConfig fields, fit options, metrics bitwise). 9 train batches of 64 (ragged
# panel of ~420 rows), streamed 4 at a time: the last chunk is padded.
CASES = {
    "flat, dropout + BatchNorm, early stop": (
        TinyMLP(),
        dict(early_stop=1, eval_train=True, n_epochs=15, lr=0.1),
        dict(devices=ONE_DEVICE),
        True,
    ),
    "three seeds": (TinyMLP(), {}, dict(seeds=[0, 1, 2], devices=ONE_DEVICE), False),
    "daily batches, IC": (CrossSection(), dict(batching="daily", metric="ic"), {}, False),
    "steps, qlib protocol": (
        TinyMLP(),
        dict(batching="steps", max_steps=40, eval_steps=7, eval_protocol="qlib"),
        dict(devices=ONE_DEVICE),
        True,
    ),
    "batch split over the devices": (TinyMLP(), {}, dict(devices=jax.local_devices()), False),
}


@pytest.mark.parametrize("case", CASES)
def test_a_streamed_run_ends_with_the_resident_parameters_and_history(case, seed):
    module, fields, options, metrics_bitwise = CASES[case]
    train, valid = host_panel(30, 20, 6, seed), host_panel(10, 20, 6, seed + 1)
    runs = {}
    programs = stream._train_chunk._cache_size()
    for k in (None, 4):
        settings = {**dict(n_epochs=6, batch_size=64, early_stop=2, lr=0.03), **fields}
        config = TrainConfig(stream_batches=k, **settings)
        runs[k] = fit(module, train, valid, config, verbose=False, **options)
    # the padded last chunk of every epoch runs the one compiled chunk program
    assert stream._train_chunk._cache_size() - programs <= 1
    resident, streamed = runs[None], runs[4]
    same = jax.tree.map(
        lambda a, b: np.array_equal(np.asarray(a), np.asarray(b)),
        resident.variables,
        streamed.variables,
    )
    assert all(jax.tree.leaves(same)), f"{case}, seed {seed}: {same}"
    for name in ("best_epoch", "epochs_run", "early_stopped"):
        np.testing.assert_array_equal(getattr(streamed, name), getattr(resident, name), name)
    assert resident.history.keys() == streamed.history.keys()
    steps = 40  # more than any reduction here sums (eval batches of a ~140-row segment: 3)
    for name, values in resident.history.items():
        if metrics_bitwise:
            np.testing.assert_array_equal(streamed.history[name], values, f"{name}, seed {seed}")
        else:
            np.testing.assert_allclose(
                streamed.history[name], values, rtol=steps * ULP, err_msg=f"{name}, seed {seed}"
            )
    if case == "flat, dropout + BatchNorm, early stop":
        assert resident.early_stopped.all(), "the case must exercise early stopping"


@pytest.mark.parametrize("daily", [False, True])
def test_streamed_predictions_are_the_resident_ones(daily, seed):
    samples = host_panel(12, 20, 6, seed)
    module = CrossSection() if daily else TinyMLP()
    config = TrainConfig(n_epochs=2, batch_size=32, batching="daily" if daily else "shuffle")
    result = fit(module, samples, None, config, seeds=[0, 1], verbose=False)
    options = dict(batch_size=50, daily=daily, per_seed=True)
    resident = predict(module, result.variables, samples, **options)
    streamed = predict(module, result.variables, samples, stream_batches=3, **options)
    assert streamed.shape == resident.shape == (2, samples.size)
    assert np.isfinite(resident).all()
    np.testing.assert_array_equal(streamed, resident, f"seed {seed}")


def _live_bytes() -> int:
    return sum(a.nbytes for a in jax.live_arrays())


def test_a_streamed_run_keeps_a_fraction_of_the_features_on_the_device(seed):
    """Device bytes during training (``jax.live_arrays`` at every ``on_epoch``), above what was
    live before ``fit``: under a fifth of the feature matrix streamed, all of it resident."""
    rng = np.random.default_rng(seed)
    n_days, n_inst, n_feat = 1000, 20, 64
    index = pd.MultiIndex.from_product(
        [pd.date_range("2020-01-01", periods=n_days, freq="B"), range(n_inst)],
        names=["datetime", "instrument"],
    )
    x = rng.normal(size=(len(index), n_feat)).astype(np.float32)
    y = x[:, 0] + rng.normal(size=len(index))
    train = tabular_samples(x, y, index, on_device=False)
    features = x.nbytes
    peaks = {}
    for k in (None, 8):
        before = _live_bytes()
        seen = []
        config = TrainConfig(n_epochs=2, batch_size=256, stream_batches=k)
        fit(
            TinyMLP(),
            train,
            None,
            config,
            devices=ONE_DEVICE,
            verbose=False,
            on_epoch=lambda *_, seen=seen, before=before: seen.append(_live_bytes() - before),
        )
        peaks[k] = max(seen)
    assert peaks[None] >= features, f"the resident run holds the features: {peaks}"
    assert peaks[8] < features / 5, f"streamed: {peaks} for {features} feature bytes"


def test_a_streamed_run_resumes_from_its_checkpoint(tmp_path, seed):
    train, valid = host_panel(30, 20, 6, seed), host_panel(10, 20, 6, seed + 1)
    config = TrainConfig(n_epochs=5, batch_size=64, early_stop=5, lr=0.03, stream_batches=3)

    def interrupt_after_two(epoch, _):
        if epoch == 1:
            raise KeyboardInterrupt

    options = dict(devices=ONE_DEVICE, verbose=False, checkpoint_dir=tmp_path / "run")
    with pytest.raises(Interrupted):
        fit(TinyMLP(), train, valid, config, on_epoch=interrupt_after_two, **options)
    resumed = fit(TinyMLP(), train, valid, config, resume=True, **options)
    whole = fit(
        TinyMLP(),
        train,
        valid,
        TrainConfig(**{**config.to_dict(), "stream_batches": None}),
        devices=ONE_DEVICE,
        verbose=False,
    )
    assert resumed.resumed_from == 2
    same = jax.tree.map(
        lambda a, b: np.array_equal(np.asarray(a), np.asarray(b)),
        resumed.variables,
        whole.variables,
    )
    assert all(jax.tree.leaves(same)), f"seed {seed}: {same}"
    np.testing.assert_array_equal(resumed.history["valid_loss"], whole.history["valid_loss"])


def test_streaming_refuses_windows_and_bad_settings(seed):
    train, valid = window_samples(seed)
    config = TrainConfig(n_epochs=1, batch_size=16, stream_batches=2)
    with pytest.raises(ValueError, match="stream_batches=2 streams flat feature rows"):
        fit(TinyMLP(), train, valid, config, verbose=False)
    with pytest.raises(ValueError, match="stream_batches=0 is invalid"):
        TrainConfig(stream_batches=0)
    with pytest.raises(ValueError, match="stream_batches"):
        predict(TinyMLP(), {}, train, stream_batches=2)
