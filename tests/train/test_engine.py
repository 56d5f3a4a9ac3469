"""The training engine: early stopping, evaluation protocols, batching modes, seeds, errors."""

from __future__ import annotations

import collections
import dataclasses
import re

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd
import pytest
from train_synthetic import (
    Counter,
    CrossSection,
    TinyGRU,
    TinyMLP,
    max_abs_diff,
    panel,
    scripted_objective,
)

import qjax
from qjax.compilation import jit_with_options
from qjax.models.sfm import SFM_Model
from qjax.train import Plateau, TrainConfig, fit, predict
from qjax.train.batching import make_segment
from qjax.train.engine import _INIT_PROGRAM, Trainer, _init_replicas
from qjax.train.losses import LossOutput, supervised_mse
from qjax.train.parallel import data_parallel

# XLA's own compile settings, spelled out where a test compares with the -O1 init program: the
# suite's environment compiles at -O0 (conftest.py), whose values differ from -O1's in the last
# bits, while XLA's defaults give -O1's bit for bit.
XLA_DEFAULTS = {"xla_backend_optimization_level": 3, "xla_llvm_disable_expensive_passes": False}


def qlib_early_stopping(scores, n_epochs, early_stop):
    """Qlib's epoch loop (§1.2) on a known sequence of validation scores."""
    best_score, best_epoch, stop, seen = -np.inf, -1, 0, []
    for epoch in range(n_epochs):
        seen.append(scores[epoch])
        if scores[epoch] > best_score:
            best_score, best_epoch, stop = scores[epoch], epoch, 0
        else:
            stop += 1
            if stop >= early_stop:
                break
    return best_epoch, best_score, seen


# -- early stopping and the plateau scheduler on a scripted validation loss ----------------------

SCRIPT = [5.0, 4.0, 4.0, 3.0, np.nan, 3.5, 3.0, 2.9999, 3.2, 3.1, 3.3, 2.0, 1.0]


@pytest.mark.parametrize("early_stop", [1, 3, 20])
def test_early_stopping_follows_qlib_loop(early_stop):
    data = panel(n_days=4, n_inst=5)
    config = TrainConfig(
        n_epochs=len(SCRIPT),
        lr=0.01,
        batch_size=data.size,
        early_stop=early_stop,
        optimizer="gd",
        clip_value=None,
    )
    evals = {}
    result = fit(
        Counter(),
        data,
        data,
        config,
        loss_fn=scripted_objective(SCRIPT),
        evals_result=evals,
        verbose=False,
    )

    best_epoch, best_score, seen = qlib_early_stopping(-np.asarray(SCRIPT), len(SCRIPT), early_stop)
    np.testing.assert_array_equal(result.history["valid_score"][:, 0], np.float32(seen))
    np.testing.assert_array_equal(evals["valid"], np.float32(seen))
    assert result.best_epoch.tolist() == [best_epoch]
    assert result.best_score[0] == np.float32(best_score)
    # The returned variables are those of the best epoch: one train step per epoch.
    best = result.replica(0)
    assert int(best["batch_stats"]["calls"]) == best_epoch + 1
    assert float(best["params"]["w"]) == pytest.approx(1.0 - 0.01 * (best_epoch + 1), abs=1e-6)


def test_plateau_steps_once_per_evaluation_with_the_valid_loss(torch):
    script = [1.0, 0.9, 0.95, 0.97, 0.99, 0.98, 0.97, 0.96, 0.85, 0.9, 0.91, 0.92]
    data = panel(n_days=4, n_inst=5)
    plateau = Plateau(factor=0.5, patience=2, threshold=1e-3, min_lr=0.02)
    config = TrainConfig(
        n_epochs=len(script),
        lr=0.1,
        batch_size=data.size,
        early_stop=100,
        optimizer="gd",
        clip_value=None,
        lr_plateau=plateau,
    )
    result = fit(Counter(), data, data, config, loss_fn=scripted_objective(script), verbose=False)

    param = torch.nn.Parameter(torch.zeros(1))
    sgd = torch.optim.SGD([param], lr=0.1)
    scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(
        sgd, factor=0.5, patience=2, threshold=1e-3, min_lr=0.02
    )
    expected_lr = []
    for loss in script:
        scheduler.step(loss)
        expected_lr.append(sgd.param_groups[0]["lr"])
    np.testing.assert_allclose(result.history["lr"][:, 0], expected_lr, rtol=1e-6)
    assert len(set(expected_lr)) >= 3  # the script makes the lr drop twice
    # The best variables (epoch 8) moved by the lr in force at each step: a reduction applies
    # from the step after the evaluation that triggered it.
    lrs_used = [0.1] + expected_lr[:-1]
    assert result.best_epoch[0] == 8
    assert float(result.replica()["params"]["w"]) == pytest.approx(
        1.0 - sum(lrs_used[:9]), abs=1e-6
    )


def test_without_valid_trains_all_epochs_and_keeps_the_last():
    data = panel(n_days=4, n_inst=5)
    config = TrainConfig(n_epochs=4, lr=0.01, batch_size=data.size, early_stop=1, optimizer="gd")
    result = fit(
        Counter(), data, None, config, loss_fn=scripted_objective([1.0] * 4), verbose=False
    )
    assert result.best_epoch.tolist() == [3]
    assert int(result.replica()["batch_stats"]["calls"]) == 4
    assert "valid_score" not in result.history and result.history["train_loss"].shape == (4, 1)


# -- evaluation protocols ------------------------------------------------------------------------


def _trainer(module, config, loss_fn=supervised_mse):
    return Trainer(module, loss_fn, config, data_parallel())


def _initial_variables(trainer, segment):
    return trainer.init(jax.random.PRNGKey(0), segment).train.variables


def test_exact_evaluation_does_not_depend_on_batch_padding():
    data = panel(n_days=7, n_inst=9, seed=3)  # 63 samples
    segment = make_segment(data, daily=False)
    trainer = _trainer(TinyMLP(), TrainConfig(batch_size=16))
    variables = _initial_variables(trainer, segment)
    padded = {}
    for eval_batch_size in (10, 63, 64):
        t = dataclasses.replace(
            trainer, config=TrainConfig(batch_size=16, eval_batch_size=eval_batch_size)
        )
        padded[eval_batch_size] = jax.jit(t.evaluate)(variables, segment)

    pred = predict(TinyMLP(), variables, data, batch_size=63)
    labels = np.asarray(data.labels)
    known = ~np.isnan(labels)
    expected = np.mean((pred[known] - labels[known]) ** 2)
    for result in padded.values():
        np.testing.assert_allclose(float(result["loss"]), expected, rtol=1e-6)
        np.testing.assert_allclose(float(result["score"]), -expected, rtol=1e-6)


def test_qlib_protocol_is_mean_of_batch_means_without_the_tail():
    data = panel(n_days=7, n_inst=9, seed=3)
    segment = make_segment(data, daily=False)
    config = TrainConfig(batch_size=10, eval_protocol="qlib")
    trainer = _trainer(TinyMLP(), config)
    variables = _initial_variables(trainer, segment)
    loss = float(jax.jit(trainer.evaluate)(variables, segment)["loss"])

    pred, labels = predict(TinyMLP(), variables, data), np.asarray(data.labels)
    batch_means = []
    for start in range(0, 60, 10):  # 6 full batches; the last 3 samples are never evaluated
        p, y = pred[start : start + 10], labels[start : start + 10]
        batch_means.append(np.nanmean((p - y) ** 2))
    np.testing.assert_allclose(loss, np.mean(batch_means), rtol=1e-6)


def test_ic_metric_and_eval_train_and_evals_result():
    train, valid = panel(seed=0), panel(n_days=8, seed=1)
    config = TrainConfig(
        n_epochs=3, lr=0.01, batch_size=50, metric="ic", eval_train=True, early_stop=5
    )
    evals = {}
    result = fit(TinyMLP(), train, valid, config, evals_result=evals, verbose=False)
    history = result.history
    assert set(history) == {"train_loss", "train_score", "valid_loss", "valid_score", "lr"}
    assert evals["train"] == history["train_score"][:, 0].tolist()
    assert evals["valid"] == history["valid_score"][:, 0].tolist()

    pred = predict(TinyMLP(), result.replica(), valid)
    dates = pd.factorize(np.asarray(valid.day))[0]
    frame = pd.DataFrame({"pred": pred, "label": np.asarray(valid.labels), "day": dates})
    ic = frame.groupby("day").apply(lambda d: d["pred"].corr(d["label"])).mean()
    np.testing.assert_allclose(result.best_score[0], ic, rtol=1e-4)
    assert result.best_score[0] == history["valid_score"][:, 0].max()


# -- daily batching ------------------------------------------------------------------------------


def test_daily_batches_pad_and_mask_each_day():
    data = panel(n_days=6, n_inst=12, ragged=True, seed=5)
    day = np.asarray(data.day)
    counts = np.bincount(day)
    assert counts.min() < counts.max()  # the days really are ragged

    config = TrainConfig(batching="daily", daily_width=counts.max() + 3)
    segment = make_segment(data, daily=True, width=config.daily_width)
    trainer = _trainer(CrossSection(), config)
    variables = _initial_variables(trainer, segment)

    # Reference: every day on its own, unpadded, no mask.
    labels = np.asarray(data.labels)
    expected_pred = np.empty(data.size, np.float32)
    day_losses, sq_sum, n_known = [], 0.0, 0
    for d in range(day.max() + 1):
        rows = np.flatnonzero(day == d)
        p = np.asarray(CrossSection().apply(variables, data.features[rows]))
        expected_pred[rows] = p
        err = (p - labels[rows])[~np.isnan(labels[rows])] ** 2
        day_losses.append(err.mean())
        sq_sum, n_known = sq_sum + err.sum(), n_known + err.size

    np.testing.assert_allclose(
        predict(CrossSection(), variables, data, daily=True), expected_pred, atol=1e-6
    )
    exact = jax.jit(trainer.evaluate)(variables, segment)
    np.testing.assert_allclose(float(exact["loss"]), sq_sum / n_known, rtol=1e-6)
    qlib = dataclasses.replace(trainer, config=dataclasses.replace(config, eval_protocol="qlib"))
    np.testing.assert_allclose(
        float(jax.jit(qlib.evaluate)(variables, segment)["loss"]), np.mean(day_losses), rtol=1e-6
    )

    # One train step per day: the scripted objective counts the steps taken.
    script = np.linspace(1.0, 0.0, 2 * len(counts))
    config = dataclasses.replace(config, n_epochs=2, lr=0.01, optimizer="gd", clip_value=None)
    result = fit(Counter(), data, data, config, loss_fn=scripted_objective(script), verbose=False)
    assert int(result.replica()["batch_stats"]["calls"]) == 2 * len(counts)


# -- DNNModelPytorch's steps mode ----------------------------------------------------------------


def test_steps_mode_counts_steps_and_evaluations():
    train, valid = panel(seed=0), panel(n_days=8, seed=1)
    config = TrainConfig(
        batching="steps",
        max_steps=25,
        eval_steps=10,
        batch_size=1000,
        lr=0.01,
        optimizer="adam",
        clip_value=None,
        early_stop=50,
    )
    assert config.batch_size > train.size  # with replacement: larger than the data is fine
    seen = []
    result = fit(
        TinyMLP(), train, valid, config, on_epoch=lambda e, m: seen.append(e), verbose=False
    )
    assert seen == [0, 1, 2]  # evaluations after steps 10, 20 and 25
    assert result.history["valid_loss"].shape == (3, 1)
    assert result.history["valid_loss"][-1, 0] < result.history["valid_loss"][0, 0]  # it learns


# -- seeds: reproducibility and replicas ---------------------------------------------------------


@pytest.fixture(scope="module")
def gru_data():
    return panel(n_days=25, n_inst=16, n_feat=6, seed=7), panel(
        n_days=6, n_inst=16, n_feat=6, seed=8
    )


GRU_CONFIG = TrainConfig(n_epochs=8, lr=0.02, batch_size=64, early_stop=2)


@pytest.fixture(scope="module")
def gru_multi_seed(gru_data):
    return fit(TinyGRU(d_feat=2), *gru_data, GRU_CONFIG, seeds=[0, 1, 2], verbose=False)


def test_replicas_equal_separate_single_seed_runs(gru_data, gru_multi_seed):
    # Replicas stop at different evaluations, so masking a stopped replica is exercised.
    stopped_at = np.isnan(gru_multi_seed.history["valid_score"]).argmax(axis=0)
    assert len(set(gru_multi_seed.best_epoch.tolist())) > 1 or len(set(stopped_at.tolist())) > 1
    for i, seed in enumerate(gru_multi_seed.seeds):
        single = fit(TinyGRU(d_feat=2), *gru_data, GRU_CONFIG, seeds=[seed], verbose=False)
        assert single.best_epoch[0] == gru_multi_seed.best_epoch[i]
        assert max_abs_diff(single.replica(), gru_multi_seed.replica(i)) < 1e-5
        n = single.history["valid_score"].shape[0]
        np.testing.assert_allclose(
            single.history["valid_score"][:, 0],
            gru_multi_seed.history["valid_score"][:n, i],
            rtol=1e-5,
        )
        assert np.isnan(gru_multi_seed.history["valid_score"][n:, i]).all()


def test_replicas_initialise_one_at_a_time_like_a_single_seed():
    """SFM's orthogonal init is a QR. Batched over replicas (vmap), jaxlib's LAPACK kernel
    spread it over the CPU thread pool and a run on two CPU devices hung before its first
    epoch; every LAPACK call of the init program must take one matrix, and each replica
    must start where a single-seed run with its seed starts."""
    trainer = _trainer(SFM_Model(d_feat=6, hidden_size=64), TrainConfig(batch_size=64))
    segment = make_segment(panel(n_feat=12, seed=0), False)
    keys = jnp.stack([jax.random.PRNGKey(seed) for seed in (0, 1)])
    lowered = _INIT_PROGRAM.lower(keys, segment, trainer=trainer, init_variables=None)
    batch_dims = re.findall(
        r'custom_call @lapack\w+\(.*?num_batch_dims = "(\d+)"', lowered.as_text()
    )
    assert batch_dims and set(batch_dims) == {"0"}, batch_dims
    both = _INIT_PROGRAM(keys, segment, trainer=trainer, init_variables=None)
    alone = jit_with_options(trainer.init, XLA_DEFAULTS)(keys[1], segment)
    second = jax.tree.map(lambda leaf: leaf[1], both.train.params)
    assert max_abs_diff(second, alone.train.params) == 0.0


@pytest.mark.parametrize(
    ("name", "kwargs"),
    [
        ("lstm", {"d_feat": 6, "hidden_size": 16}),
        ("transformer", {"d_feat": 6, "d_model": 16}),
        ("tabnet", {"inp_dim": 12, "out_dim": 8, "n_d": 8, "n_a": 8, "n_steps": 2, "vbs": 32}),
        ("krnn", {"fea_dim": 6, "cnn_dim": 8, "rnn_dim": 8}),
    ],
)
def test_the_initialisation_program_gives_the_default_compiles_values(name, kwargs):
    """The init program is compiled at -O1 for compile speed (qjax.compilation.RUN_ONCE); its
    values must be the default optimisation level's bit for bit."""
    trainer = _trainer(qjax.models.get(name)(**kwargs), TrainConfig(batch_size=64))
    segment = make_segment(panel(n_feat=12, seed=0), False)
    keys = jnp.stack([jax.random.PRNGKey(seed) for seed in (0, 7)])
    fast = _INIT_PROGRAM(keys, segment, trainer=trainer, init_variables=None)
    default = jit_with_options(
        _init_replicas, XLA_DEFAULTS, static_argnames=("trainer", "init_variables")
    )(keys, segment, trainer=trainer, init_variables=None)
    assert max_abs_diff(fast.train.variables, default.train.variables) == 0.0, name


def test_same_seed_reproduces_bitwise_and_predict_per_seed(gru_data, gru_multi_seed):
    again = fit(TinyGRU(d_feat=2), *gru_data, GRU_CONFIG, seeds=[0, 1, 2], verbose=False)
    assert max_abs_diff(again.variables, gru_multi_seed.variables) == 0.0
    assert max_abs_diff(gru_multi_seed.replica(0), gru_multi_seed.replica(1)) > 1e-3

    test = gru_data[1]
    per_seed = predict(
        TinyGRU(d_feat=2), gru_multi_seed.variables, test, per_seed=True, batch_size=40
    )
    assert per_seed.shape == (3, test.size)
    one = predict(TinyGRU(d_feat=2), gru_multi_seed.replica(2), test, batch_size=40)
    np.testing.assert_allclose(per_seed[2], one, rtol=1e-6, atol=1e-7)


def test_a_fit_with_another_seed_reuses_the_compiled_programs(gru_data):
    """Only the keys carry the seed, so a rolling run or a seed loop compiles once; each new
    program would also hold hundreds of memory maps for the rest of the process."""
    counter = {"on": False, "compiles": 0}  # a listener cannot be removed in every JAX we support

    def on_event(event, duration, **_):
        if counter["on"] and event == "/jax/core/compile/backend_compile_duration":
            counter["compiles"] += 1

    jax.monitoring.register_event_duration_secs_listener(on_event)
    config = dataclasses.replace(GRU_CONFIG, n_epochs=2, seed=3)
    first = fit(TinyGRU(d_feat=2), *gru_data, config, verbose=False)
    counter["on"] = True
    other = fit(TinyGRU(d_feat=2), *gru_data, dataclasses.replace(config, seed=4), verbose=False)
    counter["on"] = False
    assert counter["compiles"] == 0
    assert first.seeds == (3,) and other.seeds == (4,)
    assert max_abs_diff(first.replica(), other.replica()) > 1e-3  # the seed still counts


@pytest.mark.parametrize("seeds, split", [([0], "batch"), ([0, 1], "seeds"), ([0, 1], "batch")])
def test_a_cold_fit_lowers_each_program_once(gru_data, seeds, split):
    """The epoch program is compiled ahead of the first epoch from the shapes and placement
    the state will have (while XLA compiles the initialisation program on another thread);
    if those differed from the placed state's, the first epoch would lower and compile it
    again."""
    lowered, listening = collections.Counter(), [True]

    def on_event(event, duration, fun_name="?", **_):
        if listening[0] and event == "/jax/core/compile/jaxpr_to_mlir_module_duration":
            lowered[fun_name] += 1

    jax.monitoring.register_event_duration_secs_listener(on_event)
    # a learning rate no other test uses: programs of their own, compiled in this test
    config = dataclasses.replace(GRU_CONFIG, n_epochs=2, lr=0.0123 + 0.001 * len(seeds))
    result = fit(
        TinyGRU(d_feat=2),
        *gru_data,
        config,
        seeds=seeds,
        devices=jax.devices()[:2],
        split=split,
        verbose=False,
    )
    listening[0] = False  # a listener cannot be removed in every JAX we support
    counts = dict(lowered)
    assert counts.get("jit(_init_replicas)") == 1, counts
    assert counts.get("jit(_epoch_program)") == 1, counts
    assert result.epochs_run.tolist() == [2] * len(seeds)


@pytest.mark.parametrize("chunk", [1, 2])
def test_replicas_in_groups_train_as_all_replicas_at_once(gru_data, chunk):
    """Groups of replicas run in turn (``replica_chunk``) compute what the vmapped replicas do,
    up to summation order (batched and plain matmuls round differently)."""
    seeds, one = [0, 1, 2, 3], jax.devices()[:1]
    runs = [
        fit(
            TinyGRU(d_feat=2),
            *gru_data,
            dataclasses.replace(GRU_CONFIG, replica_chunk=c),
            seeds=seeds,
            devices=one,
            verbose=False,
        )
        for c in (4, chunk)
    ]
    assert [r.replica_group for r in runs] == [4, chunk]
    assert (runs[0].best_epoch == runs[1].best_epoch).all()
    assert max_abs_diff(runs[0].variables, runs[1].variables) < 1e-5
    np.testing.assert_allclose(
        runs[0].history["valid_score"], runs[1].history["valid_score"], rtol=1e-5
    )


def test_replica_groups_take_replicas_from_every_device_and_divide_them():
    from qjax.train.parallel import CPU_REPLICA_CHUNK, replica_group

    one = data_parallel(jax.devices()[:1])  # replicas not split: one holder
    assert replica_group(1, 20, one) == 1
    assert replica_group(3, 20, one) == 2  # the largest group <= 3 that divides 20
    assert replica_group(50, 20, one) == 20
    assert replica_group(None, 20, one) == CPU_REPLICA_CHUNK  # XLA:CPU's default
    if jax.device_count() >= 2:
        two = data_parallel(jax.devices()[:2], over_replicas=True)
        assert replica_group(1, 20, two) == 2  # one replica from each device per turn
        assert replica_group(3, 20, two) == 4  # 10 per device: groups of 2 divide them
        assert replica_group(2, 6, two) == 2  # 3 per device: a group of 2 does not divide
        assert replica_group(None, 6, two) == 2 * CPU_REPLICA_CHUNK


def test_batchnorm_dropout_replicas_match_single_runs():
    train, valid = panel(seed=2), panel(n_days=8, seed=3)
    config = TrainConfig(n_epochs=3, lr=0.01, batch_size=40, weight_decay=1e-3)
    both = fit(TinyMLP(), train, valid, config, seeds=[5, 6], verbose=False)
    single = fit(TinyMLP(), train, valid, config, seeds=[6], verbose=False)
    assert "batch_stats" in single.replica()
    assert max_abs_diff(single.replica(), both.replica(1)) < 1e-5


# -- other objectives ----------------------------------------------------------------------------


class Autoencoder(nn.Module):
    @nn.compact
    def __call__(self, x, train: bool = False):
        return nn.Dense(x.shape[-1])(nn.tanh(nn.Dense(4)(x)))


def masked_reconstruction(apply_fn, variables, batch, rng, train):
    """A TabNet-style self-supervised objective: rebuild features hidden by a Bernoulli mask."""
    x = batch.x
    hidden = jax.random.bernoulli(rng, 0.3, x.shape)
    recon = apply_fn(variables, jnp.where(hidden, 0.0, x), train=train)
    per_row = jnp.sum(jnp.where(hidden, recon - x, 0.0) ** 2, axis=1)
    rows = batch.mask
    return LossOutput(jnp.sum(jnp.where(rows, per_row, 0.0)), jnp.sum(rows).astype(jnp.float32))


def test_custom_objective_trains_without_labels():
    data = panel(seed=4, nan_labels=1.0)  # no labels at all: fine for self-supervision
    config = TrainConfig(n_epochs=6, lr=0.02, batch_size=60, clip_value=None, early_stop=6)
    result = fit(Autoencoder(), data, data, config, loss_fn=masked_reconstruction, verbose=False)
    losses = result.history["valid_loss"][:, 0]
    assert np.all(np.isfinite(losses)) and losses[-1] < losses[0]
    with pytest.raises(ValueError, match="pred=None"):
        fit(
            Autoencoder(),
            data,
            data,
            dataclasses.replace(config, metric="ic"),
            loss_fn=masked_reconstruction,
            verbose=False,
        )


# -- clear errors --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"optimizer": "rmsprop"}, "optimizer"),
        ({"metric": "sharpe"}, "metric"),
        ({"batching": "random"}, "batching"),
        ({"eval_protocol": "approx"}, "eval_protocol"),
        ({"lr": 0.0}, "lr"),
        ({"batch_size": 0}, "batch_size"),
        ({"n_epochs": 2.5}, "n_epochs"),
        ({"clip_value": -1.0}, "clip_value"),
        ({"early_stop": 0}, "early_stop"),
        ({"eval_protocol": "qlib", "eval_batch_size": 100}, "eval_batch_size"),
        ({"lr_plateau": {"factor": 1.5}}, "factor"),
        ({"lr": 1e-6, "lr_plateau": Plateau(min_lr=1e-5)}, "min_lr"),
    ],
)
def test_bad_config_values_raise_clear_errors(kwargs, message):
    with pytest.raises(ValueError, match=message):
        TrainConfig(**kwargs)


def test_qlib_spellings_are_normalised():
    config = TrainConfig(metric="", optimizer="Adam", lr_plateau={"patience": 5})
    assert (config.metric, config.optimizer, config.lr_plateau) == (
        "loss",
        "adam",
        Plateau(patience=5),
    )


def test_bad_inputs_raise_clear_errors():
    data = panel(n_days=4, n_inst=5)
    config = TrainConfig(n_epochs=1, batch_size=10)
    empty = panel(n_days=1, n_inst=1, nan_labels=0.0)
    empty = empty.replace(
        features=empty.features[:0],
        labels=empty.labels[:0],
        weights=empty.weights[:0],
        day=empty.day[:0],
    )
    with pytest.raises(ValueError, match="empty"):
        fit(TinyMLP(), empty, None, config, verbose=False)
    with pytest.raises(ValueError, match="every train label is NaN"):
        fit(TinyMLP(), panel(n_days=4, n_inst=5, nan_labels=1.0), None, config, verbose=False)
    with pytest.raises(ValueError, match="batch_size=100 exceeds"):
        fit(TinyMLP(), data, None, dataclasses.replace(config, batch_size=100), verbose=False)
    with pytest.raises(ValueError, match="seeds"):
        fit(TinyMLP(), data, None, config, seeds=[], verbose=False)

    with pytest.raises(ValueError, match=r"shape \(10, 2\)"):
        fit(TwoOutputs(), data, None, config, verbose=False)


class _OwnSupervisedObjective:
    """A supervised objective that is not ``supervised_mse`` (as TabNet's paper MSE is)."""

    supervised = True

    def __call__(self, apply_fn, variables, batch, rng, train):
        return supervised_mse(apply_fn, variables, batch, rng, train)


def test_the_all_nan_label_check_follows_what_the_objective_declares():
    unlabelled = panel(n_days=4, n_inst=5, nan_labels=1.0)
    config = TrainConfig(n_epochs=1, batch_size=10)
    with pytest.raises(ValueError, match="every train label is NaN"):
        fit(TinyMLP(), unlabelled, None, config, loss_fn=_OwnSupervisedObjective(), verbose=False)
    undeclared = _OwnSupervisedObjective().__call__  # declares nothing: no check, it trains
    assert fit(TinyMLP(), unlabelled, None, config, loss_fn=undeclared, verbose=False).seeds == (0,)


class TwoOutputs(nn.Module):
    @nn.compact
    def __call__(self, x, train: bool = False):
        return nn.Dense(2)(x)


# -- prediction batches ---------------------------------------------------------------------


@pytest.mark.parametrize(
    "n, batch_size, devices, expected",
    [(9600, 8096, 2, 4800), (9600, 4096, 2, 3200), (63, 16, 1, 16), (63, 100, 2, 64), (7, 3, 2, 4)],
)
def test_prediction_batch_is_the_fewest_even_batches(n, batch_size, devices, expected):
    # expected by hand: ceil(n / ceil(n / batch_size)) rounded up to the devices
    from qjax.train.engine import prediction_batch

    size = prediction_batch(n, batch_size, devices)
    assert size == expected
    steps = -(-n // size)
    assert steps <= -(-n // batch_size)  # no more batches than batch_size would cut
    assert size % devices == 0 and steps * size >= n


def test_predictions_do_not_depend_on_the_prediction_batch(seed):
    """Eval-mode rows are independent, so any batch size, padding or device split must give
    the same predictions (float32 matmuls of different shapes may round differently)."""
    data = panel(n_days=7, n_inst=9, seed=seed % 1000)  # 63 samples
    segment = make_segment(data, daily=False)
    trainer = _trainer(TinyMLP(), TrainConfig(batch_size=16))
    variables = _initial_variables(trainer, segment)
    one = jax.local_devices()[:1]
    reference = predict(TinyMLP(), variables, data, batch_size=63, devices=one)
    assert np.isfinite(reference).all() and reference.std() > 0
    for batch_size in (1, 5, 16, 62, 64, 1000):
        for devices in (one, None):
            pred = predict(TinyMLP(), variables, data, batch_size=batch_size, devices=devices)
            np.testing.assert_allclose(pred, reference, rtol=1e-5, atol=1e-6, err_msg=str(seed))


def test_shared_samples_equal_the_originals_on_every_device():
    x = jnp.arange(24.0).reshape(6, 4)
    parallel = data_parallel()
    placed = parallel.share({"x": x, "n": 3})
    assert placed["n"] == 3 and placed["x"].sharding == parallel.replicated
    for shard in placed["x"].addressable_shards:
        np.testing.assert_array_equal(np.asarray(shard.data), np.arange(24.0).reshape(6, 4))
    del x  # the replicas must outlive the array they were made from
    np.testing.assert_array_equal(np.asarray(placed["x"]).sum(), 276.0)
