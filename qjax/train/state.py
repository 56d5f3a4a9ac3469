"""Training state pytrees.

:class:`TrainState` is what a step updates. :class:`FitState` adds the early-stopping
bookkeeping and the best variables, so that one pytree holds everything a run needs to continue
(it is what a checkpoint stores). With several seeds every leaf carries a leading replica axis.
"""

from __future__ import annotations

from typing import Any

import flax.struct
import jax
import jax.numpy as jnp
import optax

from qjax.train.losses import Variables


@flax.struct.dataclass
class TrainState:
    step: jax.Array  # int32, optimiser steps taken
    params: Any
    batch_stats: Any  # the "batch_stats" collection; {} for modules without BatchNorm
    opt_state: optax.OptState
    plateau: Any  # optax ReduceLROnPlateauState, or None without a scheduler
    rng: jax.Array  # raw uint32[2] key, split once per epoch

    @property
    def variables(self) -> Variables:
        return as_variables(self.params, self.batch_stats)

    @property
    def lr_scale(self) -> jax.Array:
        return jnp.float32(1.0) if self.plateau is None else self.plateau.scale


@flax.struct.dataclass
class FitState:
    train: TrainState
    best: Variables  # variables of the best evaluation so far (the latest without validation)
    best_score: jax.Array  # float32, -inf before the first improvement
    best_epoch: jax.Array  # int32, -1 before the first improvement
    stall: jax.Array  # int32, consecutive evaluations without improvement
    stopped: jax.Array  # bool, early stopping triggered (the replica no longer changes)
    epoch: jax.Array  # int32, evaluations completed


def as_variables(params: Any, batch_stats: Any) -> Variables:
    """Flax variables from params and an optional batch_stats collection."""
    return {"params": params, "batch_stats": batch_stats} if batch_stats else {"params": params}


def initial_fit_state(
    variables: Variables,
    tx: optax.GradientTransformation,
    plateau: optax.GradientTransformationExtraArgs | None,
    rng: jax.Array,
) -> FitState:
    unknown = set(variables) - {"params", "batch_stats"}
    if unknown:
        raise ValueError(
            f"the module creates variable collections {sorted(unknown)}; the training engine "
            "handles 'params' and 'batch_stats' only"
        )
    params = variables["params"]
    batch_stats = variables.get("batch_stats", {})
    train = TrainState(
        step=jnp.int32(0),
        params=params,
        batch_stats=batch_stats,
        opt_state=tx.init(params),
        plateau=None if plateau is None else plateau.init({}),
        rng=rng,
    )
    return FitState(
        train=train,
        best=as_variables(params, batch_stats),
        best_score=jnp.float32(-jnp.inf),
        best_epoch=jnp.int32(-1),
        stall=jnp.int32(0),
        stopped=jnp.bool_(False),
        epoch=jnp.int32(0),
    )
