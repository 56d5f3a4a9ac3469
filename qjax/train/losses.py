"""Objectives: what a training step minimises and an evaluation reports.

An objective is any function

    loss_fn(apply_fn, variables, batch, rng, train) -> LossOutput

``batch`` is a :class:`~qjax.data.samples.Batch` (``x``, ``y``, ``w``, ``mask``, ``inputs``)
gathered inside the compiled program; ``rng`` is a fresh key
per step (split it for dropout and for any randomness of the objective itself, e.g. TabNet's
Bernoulli feature masks). The loss of the batch is ``total / count``. Returning the two parts
rather than their ratio lets an evaluation combine batches exactly (sum of totals / sum of
counts) or the way Qlib does (mean of per-batch ratios), and lets padded rows (``mask`` False)
drop out of both. Supervised regression with NaN-masked, sample-weighted MSE is the default
(:func:`supervised_mse`); self-supervised pretraining is just another objective passed to
``fit``.

An objective that learns from the labels says so with an attribute ``supervised = True``; the
engine then refuses a segment whose labels are all NaN before it compiles anything.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple, Protocol

import jax
import jax.numpy as jnp

from qjax.data.samples import Batch

Variables = dict[str, Any]
ApplyFn = Callable[..., Any]


class LossOutput(NamedTuple):
    """An objective's result on one batch."""

    total: jax.Array  # sum of the per-row losses over the rows that count
    count: jax.Array  # number of rows that count; the batch loss is total / count
    batch_stats: Any = None  # updated "batch_stats" collection in train mode, else None
    pred: jax.Array | None = None  # [B] predictions (needed by metric="ic"); None if none


class LossFn(Protocol):
    supervised: bool  # optional: True if the objective learns from the labels (default False)

    def __call__(
        self, apply_fn: ApplyFn, variables: Variables, batch: Batch, rng: jax.Array, train: bool
    ) -> LossOutput: ...


def batch_loss(out: LossOutput) -> jax.Array:
    """The minimised scalar: total / count, 0 for a batch where nothing counts (no NaN)."""
    return out.total / jnp.maximum(out.count, 1)


def as_prediction(out: Any) -> jax.Array:
    """A module's output as [N] predictions; [N] and [N, 1] are accepted."""
    shape = getattr(out, "shape", None)
    if shape is not None and (len(shape) == 1 or (len(shape) == 2 and shape[1] == 1)):
        return out.reshape(shape[0])
    raise ValueError(
        f"the model returned {type(out).__name__} of shape {shape}; a regression model must "
        "return predictions of shape [N] or [N, 1]. For other outputs pass a custom loss_fn."
    )


def apply_model(
    apply_fn: ApplyFn, variables: Variables, batch: Batch, rng: jax.Array, train: bool
) -> tuple[jax.Array, Any]:
    """Run the module on ``batch.x`` -> (predictions [B], new batch_stats or None).

    Dropout draws from ``rng`` (stream "dropout"); BatchNorm statistics are updated only in
    train mode.
    """
    kwargs = dict(batch.inputs, train=train, rngs={"dropout": rng})
    if train and "batch_stats" in variables:
        out, updates = apply_fn(variables, batch.x, mutable=["batch_stats"], **kwargs)
        return as_prediction(out), updates["batch_stats"]
    return as_prediction(apply_fn(variables, batch.x, **kwargs)), None


def masked_squared_error(
    pred: jax.Array, label: jax.Array, weight: jax.Array, mask: jax.Array
) -> tuple[jax.Array, jax.Array]:
    """(sum of w * (pred - label)^2, count) over rows with ``mask`` and a known label.

    Qlib's ``loss_fn``: ``mean((pred[m] - label[m])**2)`` with ``m = ~isnan(label)``, weighted
    as DNNModelPytorch's ``mean(w * (pred - label)**2)``. NaN labels are replaced before the
    subtraction so that no NaN reaches the gradient.
    """
    valid = mask & ~jnp.isnan(label)
    error = pred - jnp.where(valid, label, 0.0)
    total = jnp.sum(jnp.where(valid, weight * jnp.square(error), 0.0))
    return total, jnp.sum(valid).astype(jnp.float32)


def supervised_mse(
    apply_fn: ApplyFn, variables: Variables, batch: Batch, rng: jax.Array, train: bool
) -> LossOutput:
    """The default objective: NaN-masked, sample-weighted mean squared error."""
    pred, batch_stats = apply_model(apply_fn, variables, batch, rng, train)
    total, count = masked_squared_error(pred, batch.y, batch.w, batch.mask)
    return LossOutput(total, count, batch_stats, pred)


supervised_mse.supervised = True


def is_supervised(loss_fn: LossFn) -> bool:
    """Whether ``loss_fn`` declares that it learns from the labels (``supervised = True``)."""
    return bool(getattr(loss_fn, "supervised", False))
