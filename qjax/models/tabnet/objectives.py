"""TabNet's objectives, as engine ``loss_fn`` s (see :mod:`qjax.train.losses`): Qlib's
self-supervised pretraining objective and the paper's sparsity-regularised MSE."""

from __future__ import annotations

import dataclasses
from typing import ClassVar

import jax.numpy as jnp

from qjax.models.tabnet.network import SPARSE_LOSS_COLLECTION, pretrain_loss, pretrain_mask
from qjax.train.losses import LossOutput, as_prediction, masked_squared_error, supervised_mse


@dataclasses.dataclass(frozen=True)
class TabNetPretrainObjective:
    """Qlib's pretraining objective as an engine ``loss_fn``.

    S ~ Bernoulli(``ps``) is drawn from the step's key; the loss is
    :func:`qjax.models.tabnet.network.pretrain_loss`, a sum over the batch, so its count is 1 (the
    pretraining stage evaluates full batches only, as Qlib does).
    """

    ps: float
    supervised: ClassVar[bool] = False  # reconstructs the features; labels are not read

    def __call__(self, apply_fn, variables, batch, rng, train) -> LossOutput:
        x = batch.x
        loss, batch_stats = pretrain_loss(
            apply_fn, variables, x, pretrain_mask(rng, x.shape, self.ps), train
        )
        return LossOutput(loss, jnp.float32(1.0), batch_stats)


@dataclasses.dataclass(frozen=True)
class SparsityRegularisedMSE:
    """NaN-masked MSE + ``lambda_sparse`` * the module's sown ``"sparse_loss"`` (TabNet paper).

    The penalty enters training only; evaluation reports the plain MSE, so early stopping and
    ``metric`` see the same number as without it.
    """

    lambda_sparse: float
    supervised: ClassVar[bool] = True

    def __call__(self, apply_fn, variables, batch, rng, train) -> LossOutput:
        if not train:
            return supervised_mse(apply_fn, variables, batch, rng, train)
        kwargs = dict(batch.inputs, train=True, rngs={"dropout": rng})
        collections = ["batch_stats", SPARSE_LOSS_COLLECTION]
        out, updates = apply_fn(variables, batch.x, mutable=collections, **kwargs)
        pred = as_prediction(out)
        total, count = masked_squared_error(pred, batch.y, batch.w, batch.mask)
        penalty = self.lambda_sparse * updates[SPARSE_LOSS_COLLECTION]["sparse_loss"]
        return LossOutput(total + penalty * count, count, updates.get("batch_stats"), pred)
