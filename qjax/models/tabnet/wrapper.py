"""Qlib's TabnetModel (pytorch_tabnet) as a spec: self-supervised pretraining of the encoder
(segments "pretrain" and "pretrain_validation", :mod:`.pretrain`), then supervised fine-tuning of
:class:`TabNetFinetune` on "train"/"valid" with the head frozen, as Qlib never trains it.

NaN labels are left NaN and masked out of the loss (Qlib fills train labels with their mean and
valid labels with 0); after DropnaLabel, in every benchmark config, there are none.
"""

from __future__ import annotations

import dataclasses

import pandas as pd

from qjax.data.samples import Samples
from qjax.models.spec import Adapter, EigenDots, ModelSpec, OneCpuDevice
from qjax.models.tabnet import pretrain as pretrain_stage
from qjax.models.tabnet.network import TabNetFinetune
from qjax.models.tabnet.objectives import SparsityRegularisedMSE
from qjax.models.tabnet.samples import fill_nan_features

DEFAULTS = {
    "d_feat": 158,
    "out_dim": 64,
    "final_out_dim": 1,
    "batch_size": 4096,
    "n_d": 64,
    "n_a": 64,
    "n_shared": 2,
    "n_ind": 2,
    "n_steps": 5,
    "n_epochs": 100,
    "pretrain_n_epochs": 50,
    "relax": 1.3,
    "vbs": 2048,
    "seed": 993,
    "optimizer": "adam",
    "loss": "mse",
    "metric": "",
    "early_stop": 20,
    "GPU": 0,
    "pretrain_loss": "custom",  # accepted and unused, as in Qlib
    "ps": 0.3,
    "lr": 0.01,
    "pretrain": True,
    "pretrain_file": None,  # an Orbax checkpoint directory of the best pretrained encoder
    # qjax switches: the paper's TabNet (module docstring of qjax.models.tabnet.network), which
    # also trains the head and adds lambda_sparse * the sparsity loss to the fine-tuning loss
    "paper": False,
    "lambda_sparse": 1e-3,
}
_ARGS = (
    "out_dim",
    "final_out_dim",
    "n_d",
    "n_a",
    "n_shared",
    "n_ind",
    "n_steps",
    "relax",
    "vbs",
    "paper",
)


def module_kwargs(kw: dict, is_ts: bool) -> dict:
    return {"inp_dim": kw["d_feat"], **{name: kw[name] for name in _ARGS}}


@dataclasses.dataclass(frozen=True)
class FlatInputs(Adapter):
    """One row of ``d_feat`` features per sample, NaN filled as Qlib does."""

    def check_input(self, kw: dict, shape: tuple[int, ...]) -> None:
        if shape[-1] != kw["d_feat"]:
            raise ValueError(
                f"d_feat={kw['d_feat']} but the dataset has {shape[-1]} feature columns; "
                f"set d_feat={shape[-1]}"
            )

    def train_fields(self, kw: dict, fields: dict) -> dict:
        if kw.get("stream_batches") is not None:  # checked before any sample is built
            raise ValueError(
                "TabnetModel fills NaN features with column means on the device and pretrains "
                "on device samples, so stream_batches is not supported for it; remove it "
                "(dataset.storage_dtype='bfloat16' halves the device bytes instead)"
            )
        return fields

    def samples(self, kw: dict, segment: str, samples: Samples, index: pd.MultiIndex) -> Samples:
        return fill_nan_features(segment, samples)


@dataclasses.dataclass(frozen=True)
class FrozenHead(Adapter):
    """Qlib never trains the fine-tuning head ``fc`` (the paper's TabNet does)."""

    def train_fields(self, kw: dict, fields: dict) -> dict:
        frozen = TabNetFinetune(**module_kwargs(kw, False)).frozen_param_names()
        return {**fields, "frozen": frozen}


@dataclasses.dataclass(frozen=True)
class SparsityPenalty(Adapter):
    """``paper=True``: fine-tune on MSE + ``lambda_sparse`` * the sparsity loss."""

    def loss_fn(self, kw: dict):
        return SparsityRegularisedMSE(float(kw["lambda_sparse"])) if kw["paper"] else None


@dataclasses.dataclass(frozen=True)
class Pretraining(Adapter):
    """Qlib's self-supervised pretraining stage before fine-tuning (``pretrain=True``)."""

    def pretrain(self, kw, dataset, module, verbose):
        return pretrain_stage.pretrain(kw, dataset, module, verbose)


TABNET = ModelSpec(
    "qlib.contrib.model.pytorch_tabnet.TabnetModel",
    DEFAULTS,
    module_kwargs,
    adapters=(
        FlatInputs(),
        FrozenHead(),
        SparsityPenalty(),
        Pretraining(),
        OneCpuDevice(),
        EigenDots(),
    ),
)
