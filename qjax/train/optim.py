"""Qlib's optimisers as Optax chains, and ReduceLROnPlateau from ``optax.contrib``.

Qlib's epoch-loop models call ``clip_grad_value_(params, 3.0)`` after ``backward()`` and then
``torch.optim.Adam(lr, weight_decay=wd).step()`` (or plain ``SGD``). torch adds the L2 term
inside ``step()``, after clipping, so the chain is

    clip(3.0) -> add_decayed_weights(wd) -> scale_by_adam(0.9, 0.999, 1e-8) -> scale(-lr)

(the decay term is not clipped; this is coupled L2, not AdamW).

Parameters a torch model leaves out of its optimiser (TabNet's fine-tuning head) are
``TrainConfig.frozen``: ``optax.multi_transform`` sends them to ``set_to_zero`` and everything
else through the chain above, whose state then covers the trained parameters only.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from typing import Any

import jax
import optax

from qjax.train.config import Plateau, TrainConfig


def make_optimizer(config: TrainConfig) -> optax.GradientTransformation:
    """The optimiser of ``config`` (without the plateau scale, see :func:`make_plateau`)."""
    parts = []
    if config.clip_value is not None:
        parts.append(optax.clip(config.clip_value))
    if config.weight_decay:
        parts.append(optax.add_decayed_weights(config.weight_decay))
    if config.optimizer == "adam":
        parts.append(optax.scale_by_adam(b1=0.9, b2=0.999, eps=1e-8))
    parts.append(optax.scale_by_learning_rate(config.lr))
    chain = optax.chain(*parts)
    if not config.frozen:
        return chain
    return optax.multi_transform(
        {"trained": chain, "frozen": optax.set_to_zero()},
        functools.partial(_frozen_labels, frozen=config.frozen),
    )


def _frozen_labels(params: Any, frozen: tuple[str, ...]) -> Any:
    """Label every leaf under a frozen top-level name "frozen", every other leaf "trained"."""
    if not isinstance(params, Mapping):
        raise ValueError(
            f"TrainConfig.frozen={frozen} needs params that are a dict of named parameter "
            f"groups, got {type(params).__name__}"
        )
    missing = sorted(set(frozen) - set(params))
    if missing:
        raise ValueError(
            f"TrainConfig.frozen names {missing}, which are not top-level parameter groups of "
            f"the model; it has {sorted(params)}"
        )
    labels = {}
    for name, group in params.items():
        label = "frozen" if name in frozen else "trained"
        labels[name] = jax.tree.map(lambda _, label=label: label, group)
    return labels


def make_plateau(plateau: Plateau, lr: float) -> optax.GradientTransformationExtraArgs:
    """``optax.contrib.reduce_on_plateau`` behaving as torch's ReduceLROnPlateau.

    The engine steps it with the validation loss once per evaluation (an ``update`` on an empty
    pytree) and multiplies every parameter update by its ``scale``; since Adam and SGD updates
    are linear in the learning rate, ``lr * scale`` is torch's current lr. Mapping of settings:

    - torch reduces when ``num_bad_epochs > patience``, Optax when ``plateau_count == patience``,
      so Optax gets ``patience + 1``;
    - torch's relative threshold ``a < best * (1 - threshold)`` is Optax's ``rtol`` (``atol=0``);
    - ``min_lr`` becomes ``min_scale = min_lr / lr``.

    Deviation: torch skips a reduction smaller than ``eps=1e-8`` in absolute lr; that only
    differs when the lr is already within 1e-8 of ``min_lr``.
    """
    return optax.contrib.reduce_on_plateau(
        factor=plateau.factor,
        patience=plateau.patience + 1,
        rtol=plateau.threshold,
        atol=0.0,
        cooldown=plateau.cooldown,
        min_scale=plateau.min_lr / lr,
    )
