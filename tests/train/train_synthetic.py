"""Synthetic panels, tiny modules and a scripted objective for the engine tests.

Also imported by the subprocess scripts of the checkpoint and sharding tests.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd

from qjax.data.samples import tabular_samples
from qjax.models.layers import RNN, as_sequence
from qjax.train.losses import LossOutput


def panel(n_days=30, n_inst=20, n_feat=6, seed=0, nan_labels=0.05, ragged=False):
    """Samples of a (datetime, instrument) panel with a learnable linear signal.

    ``ragged`` drops ~30% of the rows so that days have different sizes.
    """
    rng = np.random.default_rng(seed)
    index = pd.MultiIndex.from_product(
        [
            pd.date_range("2020-01-01", periods=n_days, freq="B"),
            [f"S{i:03d}" for i in range(n_inst)],
        ],
        names=["datetime", "instrument"],
    )
    keep = rng.uniform(size=len(index)) > (0.3 if ragged else 0.0)
    index = index[keep]
    x = rng.normal(size=(len(index), n_feat)).astype(np.float32)
    beta = np.random.default_rng(1234).normal(size=n_feat)  # the same signal in every segment
    y = x @ beta * 0.3 + rng.normal(size=len(index))
    y[rng.uniform(size=len(index)) < nan_labels] = np.nan
    return tabular_samples(x, y, index)


class TinyMLP(nn.Module):
    """Dense -> BatchNorm -> ReLU -> Dropout -> Dense, output [N, 1] like Qlib's Net.

    The first Dense has no bias: BatchNorm cancels it, so its true gradient is zero and Adam
    would turn float rounding noise into lr-sized steps, making runs that sum in a different
    order (e.g. on more devices) drift apart in that direction and in the running mean.
    """

    @nn.compact
    def __call__(self, x, train: bool = False):
        h = nn.Dense(8, use_bias=False)(x)
        h = nn.BatchNorm(use_running_average=not train, momentum=0.9)(h)
        h = nn.Dropout(0.2, deterministic=not train)(nn.relu(h))
        return nn.Dense(1)(h)


class TinyGRU(nn.Module):
    """qjax's torch-equivalent GRU over a flat feature-major window, output [N]."""

    d_feat: int = 2

    @nn.compact
    def __call__(self, x, train: bool = False):
        seq = RNN(hidden_size=8, num_layers=2, dropout=0.3)(
            as_sequence(x, self.d_feat), train=train
        )
        return nn.Dense(1)(seq[:, -1, :])[:, 0]


class CrossSection(nn.Module):
    """A daily model: a linear score demeaned over the day's valid rows (uses ``mask``).

    No bias: the demeaning cancels it (see TinyMLP).
    """

    @nn.compact
    def __call__(self, x, mask=None, train: bool = False):
        score = nn.Dense(1, use_bias=False)(x)[:, 0]
        mask = jnp.ones(score.shape, bool) if mask is None else mask
        mean = jnp.sum(jnp.where(mask, score, 0.0)) / jnp.maximum(jnp.sum(mask), 1)
        return score - mean


class Counter(nn.Module):
    """One parameter ``w`` and a "batch_stats" counter of train-mode calls."""

    @nn.compact
    def __call__(self, x, mask=None, train: bool = False):
        calls = self.variable("batch_stats", "calls", lambda: jnp.zeros((), jnp.int32))
        w = self.param("w", nn.initializers.ones, ())
        if train and not self.is_initializing():
            calls.value += 1
        return jnp.full(x.shape[:1], w)


def scripted_objective(valid_losses):
    """An objective whose validation loss after the k-th train step is ``valid_losses[k-1]``.

    Train mode: loss ``w`` (gradient 1, so ``w`` moves by ``-lr * plateau scale`` per step) and
    the step counter advances. Eval mode: the scripted loss, so that early stopping and the
    plateau scheduler can be checked against Qlib's loop on a known score sequence.
    """
    table = jnp.asarray(valid_losses, jnp.float32)

    def loss_fn(apply_fn, variables, batch, rng, train):
        if train:
            _, updates = apply_fn(variables, batch.x, train=True, mutable=["batch_stats"])
            return LossOutput(variables["params"]["w"], jnp.float32(1), updates["batch_stats"])
        calls = variables["batch_stats"]["calls"]
        return LossOutput(table[calls - 1], jnp.float32(1))

    return loss_fn


def max_abs_diff(a, b) -> float:
    """Largest absolute difference between two pytrees of arrays."""
    diffs = jax.tree.map(lambda u, v: np.max(np.abs(np.asarray(u) - np.asarray(v))), a, b)
    return float(max(jax.tree.leaves(diffs)))
