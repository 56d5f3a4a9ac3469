"""TabNet's self-supervised pretraining stage (Qlib's ``TabnetModel.pretrain_fn``) on the engine.

Deliberate differences from Qlib, all in this stage:

- early stopping counts consecutive non-improving epochs (the engine's rule); Qlib's counter is
  never reset, so it stops after ``early_stop`` non-improving epochs in total;
- evaluation masks S come from a fixed key (the same for every evaluation and batch), where Qlib
  re-draws them, which makes its validation loss (and so its early stopping) noisy;
- the masks come from JAX's generator, not torch's.

With several seeds, pretraining runs once (seed ``seed``) and every replica fine-tunes from it.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp

from qjax.data.dataset import Dataset
from qjax.models.tabnet.objectives import TabNetPretrainObjective
from qjax.models.tabnet.samples import fill_nan_features
from qjax.train import FitResult, TrainConfig, fit
from qjax.train.checkpoint import load_variables, save_variables

SEGMENTS = ("pretrain", "pretrain_validation")


class PretrainStage(nn.Module):
    """A :class:`~qjax.models.tabnet.network.TabNetPretrainer` whose mask may be omitted (zeros),
    so the engine can ``init`` it from ``x`` alone; its variables keep the pretrainer's names."""

    pretrainer: nn.Module

    def setup(self):
        nn.share_scope(self, self.pretrainer)

    def __call__(
        self, x: jax.Array, s_mask: jax.Array | None = None, train: bool = False
    ) -> jax.Array:
        return self.pretrainer(x, jnp.zeros_like(x) if s_mask is None else s_mask, train)


def pretrain(
    kw: dict, dataset: Dataset, module: nn.Module, verbose: bool
) -> tuple[Callable[[dict], dict] | None, FitResult | None]:
    """Train encoder + decoder to reconstruct masked features (``kw["pretrain"]`` permitting).

    Adam (or SGD) with ``lr`` on encoder and decoder, no clipping, ``batch_size`` shuffled full
    batches, ``pretrain_n_epochs`` epochs, early stopping on the "pretrain_validation" loss.
    Returns the fine-tuning ``init_variables`` (the best encoder copied into ``"model"``) and
    the stage's FitResult.
    """
    if not kw["pretrain"]:
        return None, None
    missing = [name for name in SEGMENTS if name not in dataset.segments]
    if missing:
        raise KeyError(
            f"pretrain=True needs the dataset segments {list(SEGMENTS)} (Qlib's benchmark "
            f"configs set them equal to train and valid); {missing} missing. Add them or pass "
            "pretrain=False"
        )
    segments = []
    for name in SEGMENTS:
        samples = fill_nan_features(name, dataset.samples(name, data_key="learn", label=False)[0])
        if samples.size < kw["batch_size"]:
            raise ValueError(
                f"segment {name!r} has {samples.size} samples, fewer than "
                f"batch_size={kw['batch_size']}; pretraining uses full batches only (its loss "
                "is a sum over the batch), lower batch_size"
            )
        segments.append(samples)
    config = pretrain_config(kw)
    stage = PretrainStage(module.pretrainer())
    objective = TabNetPretrainObjective(float(kw["ps"]))
    result = fit(stage, *segments, config, loss_fn=objective, verbose=verbose)
    best = result.replica(0)
    encoder = {collection: tree["encoder"] for collection, tree in best.items()}
    if kw["pretrain_file"] is not None:  # Qlib saves the best encoder and fine-tunes from the file
        save_variables(kw["pretrain_file"], encoder)
        encoder = load_variables(kw["pretrain_file"], like=encoder)
    return functools.partial(with_encoder, encoder=encoder), result


def pretrain_config(kw: dict) -> TrainConfig:
    """The stage's :class:`TrainConfig` from TabnetModel's resolved keyword arguments.

    The stage is no registered model, so it states its CPU levers here: each batch split over
    the CPU devices (the engine's default) with Eigen's matrix products, 1.47x faster per epoch
    than with XLA's default dots and 1.16x faster than one device with them
    (``benchmarks/results/tabnet_pretrain_cpu.md``). A ``cpu_dots`` the user set wins.
    """
    return TrainConfig(
        n_epochs=kw["pretrain_n_epochs"],
        lr=kw["lr"],
        batch_size=kw["batch_size"],
        early_stop=kw["early_stop"],
        optimizer=kw["optimizer"],
        clip_value=None,
        eval_protocol="qlib",  # mean over full batches of the per-batch summed loss
        seed=0 if kw["seed"] is None else kw["seed"],
        cpu_dots=kw.get("cpu_dots") or "eigen",
    )


def with_encoder(variables: dict, encoder: dict) -> dict:
    """Fine-tuning variables whose encoder ``"model"`` is ``encoder`` (the head keeps its init)."""
    out = {collection: dict(tree) for collection, tree in variables.items()}
    for collection, tree in encoder.items():
        out[collection]["model"] = tree
    return out
