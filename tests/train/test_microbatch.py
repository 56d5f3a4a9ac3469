"""Micro-batches: a batch's gradient accumulated over chunks equals the full batch's."""

from __future__ import annotations

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from train_synthetic import CrossSection, TinyGRU, TinyMLP, max_abs_diff, panel

from qjax.data.samples import Batch
from qjax.models.transformer.network import TransformerEncoderLayer
from qjax.train import TrainConfig, fit, supervised_mse
from qjax.train.engine import Trainer
from qjax.train.losses import batch_loss
from qjax.train.microbatch import (
    accumulated_loss_and_grad,
    auto_chunks,
    chunks_for,
    footprint,
    join_rows,
    resolve,
    split_rows,
)
from qjax.train.parallel import data_parallel
from tests.models.parity import enable_x64


class TinyAttention(nn.Module):
    """One post-LN encoder layer over [N, 5, 4] windows (batch-level ops: none)."""

    @nn.compact
    def __call__(self, x, train: bool = False):
        h = nn.Dense(8)(x.reshape(x.shape[0], 5, -1))
        h = TransformerEncoderLayer(8, 2, 0.0, dim_feedforward=16)(h, train)
        return nn.Dense(1)(h[:, -1])


def _batch(n, seed):
    rng = np.random.default_rng(seed)
    y = rng.normal(size=n)
    y[rng.uniform(size=n) < 0.2] = np.nan  # NaN labels drop out of total and count
    mask = rng.uniform(size=n) > 0.1  # padding rows too
    return Batch(
        x=jnp.asarray(rng.normal(size=(n, 20))),
        y=jnp.asarray(y),
        w=jnp.asarray(rng.uniform(0.5, 1.5, size=n)),
        mask=jnp.asarray(mask),
    )


def _full_and_chunked(dtype, n_chunks, seed):
    module = TinyAttention()
    batch = jax.tree.map(lambda a: a.astype(dtype) if a.dtype.kind == "f" else a, _batch(48, seed))
    params = module.init(jax.random.PRNGKey(seed), batch.x)["params"]
    params = jax.tree.map(lambda a: a.astype(dtype), params)
    key = jax.random.PRNGKey(1)

    def objective(p, chunk, rng):
        return supervised_mse(module.apply, {"params": p}, chunk, rng, True)

    # Compiled, not run op by op: eagerly, each of the scan's and the gradient's operations
    # compiles on its own, which took most of a minute.
    full = jax.jit(jax.value_and_grad(lambda p: batch_loss(objective(p, batch, key))))(params)
    chunked = jax.jit(lambda p: accumulated_loss_and_grad(objective, p, batch, key, n_chunks))(
        params
    )
    return full, chunked


def _relative_error(a, b):
    scale = max(float(jnp.max(jnp.abs(leaf))) for leaf in jax.tree.leaves(a))
    return max_abs_diff(a, b) / scale


@pytest.mark.parametrize("n_chunks", [2, 6, 48])
def test_chunked_gradient_equals_full_batch_gradient(n_chunks, seed):
    with enable_x64(True):
        full, chunked = _full_and_chunked(jnp.float64, n_chunks, seed)
        (loss64, grad64), (chunk_loss64, chunk_grad64) = full, chunked
        # In float64 only the summation order differs: agreement to ~1e-15 shows the
        # accumulation (NaN labels, padding rows, weights, the count) is the exact formula.
        assert abs(float(loss64 - chunk_loss64)) < 1e-12, (n_chunks, seed)
        assert _relative_error(grad64, chunk_grad64) < 1e-12, (n_chunks, seed)
        grad64 = jax.tree.map(np.asarray, grad64)
    full, chunked = _full_and_chunked(jnp.float32, n_chunks, seed)
    (loss32, grad32), (chunk_loss32, chunk_grad32) = full, chunked
    # float32: 48 rows summed in another order, eps 6e-8 per add -> well under 1e-5 relative.
    assert abs(float(loss32 - chunk_loss32)) < 1e-5 * abs(float(loss32)), (n_chunks, seed)
    assert _relative_error(grad32, chunk_grad32) < 1e-5, (n_chunks, seed)
    # and the float32 gradient is the float64 one (so the test could tell a wrong formula)
    assert _relative_error(grad64, jax.tree.map(np.asarray, chunk_grad32)) < 1e-4, seed


def test_fit_with_micro_batches_matches_whole_batches(seed):
    # No dropout: chunks draw their own dropout keys, so only a deterministic model compares.
    # Plain SGD: the attention key bias has a true gradient of zero (softmax ignores a shift),
    # and Adam would turn its float rounding noise into lr-sized steps.
    train, valid = panel(n_feat=20, seed=seed), panel(n_days=8, n_feat=20, seed=seed + 1)
    runs = {
        micro: fit(
            TinyAttention(),
            train,
            valid,
            TrainConfig(
                n_epochs=3,
                lr=0.05,
                optimizer="gd",
                batch_size=48,
                early_stop=5,
                micro_batch=micro,
            ),
            seeds=[0, 1],
            verbose=False,
        )
        for micro in ("off", 12)
    }
    diff = max_abs_diff(runs["off"].variables, runs[12].variables)
    assert diff < 1e-5, (diff, seed)
    np.testing.assert_allclose(
        runs["off"].history["valid_loss"], runs[12].history["valid_loss"], rtol=1e-5
    )


def test_footprint_and_auto_chunks():
    w = jnp.ones((100, 1000), jnp.float32)
    x = jnp.ones((512, 100), jnp.float32)
    widest, loops = footprint(lambda x: jnp.tanh(x @ w).sum(), x)
    assert widest == 512 * 1000 * 4 and not loops
    _, loops = footprint(lambda x: jax.lax.scan(lambda c, r: (c + r, None), x[0], x)[0], x)
    assert loops
    # a 2 MB activation fits the 8 MiB budget; 100x wider does not
    assert auto_chunks(lambda x: jnp.tanh(x @ w).sum(), x, 512)[0] == 1
    wide = jnp.ones((100, 50_000), jnp.float32)  # 200 kB per row -> 41 rows per 8 MiB
    n, _ = auto_chunks(lambda x: jnp.tanh(x @ wide).sum(), x, 512, multiple=2)
    assert n == 16, n  # 32-row chunks: the fewest chunks of <= 41 rows dividing 512
    wider = jnp.ones((100, 500_000), jnp.float32)  # 4 rows per budget: MIN_CHUNK_ROWS rules
    assert auto_chunks(lambda x: jnp.tanh(x @ wider).sum(), x, 512)[0] == 16
    x_prime = jnp.ones((509, 100), jnp.float32)  # a prime batch size: no useful split
    assert auto_chunks(lambda x: jnp.tanh(x @ wide).sum(), x_prime, 509)[0] == 1
    assert chunks_for(2048, 32, 2) == 64
    assert chunks_for(48, 7, 2) == 8  # 6 rows: 7 does not divide, 6 is even


def test_automatic_micro_batches_are_a_cpu_lever_and_an_asked_size_applies_everywhere():
    wide = jnp.ones((100, 50_000), jnp.float32)  # 200 kB per row: 16 chunks on the CPU

    def chunks(setting, on_cpu):
        return resolve(
            setting,
            512,
            1,
            daily=False,
            stateful=False,
            default_objective=True,
            on_cpu=on_cpu,
            forward=lambda x: jnp.tanh(x @ wide).sum(),
            example=lambda: jnp.ones((512, 100), jnp.float32),
        )

    assert chunks(None, on_cpu=True) == 16
    assert chunks(None, on_cpu=False) == 1  # a GPU runs the batch's rows in parallel anyway
    assert chunks(128, on_cpu=False) == 4
    assert chunks("off", on_cpu=True) == 1


def test_micro_batch_refuses_what_it_cannot_split(seed):
    train = panel(seed=seed)
    one_device = dict(devices=jax.devices()[:1])
    refused = [  # model, TrainConfig items, other fit options, the error's words
        (TinyMLP(), dict(batch_size=48, micro_batch=12), {}, "BatchNorm"),
        (TinyGRU(), dict(batch_size=48, micro_batch=10), one_device, "must divide batch_size=48"),
        (CrossSection(), dict(batching="daily", micro_batch=4), {}, "daily"),
    ]
    for model, config, options, message in refused:
        with pytest.raises(ValueError, match=message):
            fit(model, train, None, TrainConfig(n_epochs=1, **config), verbose=False, **options)


# -- evaluation in chunks of rows (TrainConfig.cpu_eval_rows) --------------------------------


def _eval_outputs(dtype, n_chunks, seed):
    """Trainer.eval_step's (total, count, pred) on one 48-row batch, forward in n_chunks."""
    module = TinyAttention()
    batch = jax.tree.map(lambda a: a.astype(dtype) if a.dtype.kind == "f" else a, _batch(48, seed))
    variables = module.init(jax.random.PRNGKey(seed), batch.x)
    variables = jax.tree.map(lambda a: a.astype(dtype), variables)
    parallel = data_parallel(jax.devices()[:1])
    trainer = Trainer(module, supervised_mse, TrainConfig(batch_size=48), parallel)
    return jax.device_get(
        Trainer.eval_step(dataclasses.replace(trainer, eval_chunks=n_chunks), variables, batch)
    )


def test_split_rows_and_join_rows_are_inverse(seed):
    rows = np.random.default_rng(seed).normal(size=(24, 3)).astype(np.float32)
    chunks = split_rows(rows, 4)
    assert chunks.shape == (4, 6, 3)
    np.testing.assert_array_equal(chunks[1], rows[1::4])  # chunk c: rows c, c + 4, ...
    np.testing.assert_array_equal(join_rows(chunks), rows)


@pytest.mark.parametrize("n_chunks", [2, 6, 48])
def test_evaluation_in_chunks_equals_the_whole_batch(n_chunks, seed):
    with enable_x64(True):
        total, count, pred = _eval_outputs(jnp.float64, 1, seed)
        chunk_total, chunk_count, chunk_pred = _eval_outputs(jnp.float64, n_chunks, seed)
        # float64: only the summation order of the total differs; predictions are the same
        # rows' forwards, so they match in row order to rounding.
        assert abs(total - chunk_total) < 1e-12 * abs(total), (n_chunks, seed)
        assert count == chunk_count, (count, chunk_count)
        np.testing.assert_allclose(chunk_pred, pred, rtol=1e-12, atol=1e-14)
    total32, count32, pred32 = _eval_outputs(jnp.float32, n_chunks, seed)
    # float32: 48 squared errors summed in another order -> well under 1e-5 relative, and the
    # float32 numbers are the float64 ones (a wrong row order or mask would miss by far more).
    assert abs(total32 - total) < 1e-5 * abs(total), (n_chunks, seed)
    assert count32 == count
    np.testing.assert_allclose(pred32, pred, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("protocol", ["exact", "qlib"])
def test_fit_evaluating_in_chunks_matches_whole_batches(protocol, seed):
    train, valid = panel(n_feat=20, seed=seed), panel(n_days=9, n_feat=20, seed=seed + 1)
    runs = {
        rows: fit(
            TinyAttention(),
            train,
            valid,
            TrainConfig(
                n_epochs=2,
                batch_size=48,
                early_stop=5,
                metric="ic",  # the daily IC reads every prediction at its sample's place
                eval_train=True,
                eval_protocol=protocol,
                cpu_eval_rows=rows,
            ),
            verbose=False,
        )
        for rows in ("off", 12)
    }
    assert runs["off"].eval_chunks == 1
    assert runs[12].eval_chunks == chunks_for(48, 12, runs[12].n_devices) > 1
    # Identical training; only the evaluations' summation order differs (float32, <= 48 rows
    # per sum: well under 1e-5 relative).
    assert max_abs_diff(runs["off"].variables, runs[12].variables) == 0.0, seed
    for name in ("valid_loss", "valid_score", "train_loss", "train_score"):
        np.testing.assert_allclose(
            runs[12].history[name], runs["off"].history[name], rtol=1e-5, err_msg=name
        )


def test_evaluation_chunks_only_row_batches_of_the_default_objective(seed):
    train = panel(seed=seed)
    config = TrainConfig(n_epochs=1, batch_size=48, cpu_eval_rows=12)
    assert fit(TinyGRU(), train, train, config, verbose=False).eval_chunks > 1
    daily = fit(
        CrossSection(),
        train,
        train,
        dataclasses.replace(config, batching="daily"),
        verbose=False,
    )
    assert daily.eval_chunks == 1  # a day's stocks are one cross-section

    def custom(apply, variables, batch, rng, train):
        return supervised_mse(apply, variables, batch, rng, train)

    assert fit(TinyGRU(), train, train, config, loss_fn=custom, verbose=False).eval_chunks == 1


def test_bad_cpu_eval_rows_is_refused():
    assert TrainConfig(cpu_eval_rows="128").cpu_eval_rows == 128  # as YAML may give it
    assert TrainConfig(cpu_eval_rows="OFF").cpu_eval_rows == "off"
    for bad in (0, -4, "auto", True, 1.5):
        with pytest.raises(ValueError, match=r"cpu_eval_rows=.* is invalid; expected rows"):
            TrainConfig(cpu_eval_rows=bad)
