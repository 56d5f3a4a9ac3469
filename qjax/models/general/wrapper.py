"""Qlib's GeneralPTNN (pytorch_general_nn) as a spec: any Flax module by import path."""

from __future__ import annotations

from qjax.models.spec import EPOCH_LOOP, LRPlateau, ModelSpec
from qjax.train.config import Plateau

# GeneralPTNN's fixed ReduceLROnPlateau(patience 5, threshold 1e-5, min_lr 1e-6), per epoch.
PLATEAU = Plateau(factor=0.5, patience=5, threshold=1e-5, min_lr=1e-6)


def module_kwargs(kw: dict, is_ts: bool) -> dict:
    return {"module_path": kw["pt_model_uri"], "module_kwargs": dict(kw["pt_model_kwargs"])}


GENERAL = ModelSpec(
    "qlib.contrib.model.pytorch_general_nn.GeneralPTNN",
    {
        **EPOCH_LOOP,
        "weight_decay": 0.0,
        "n_jobs": 10,
        "pt_model_uri": "qlib.contrib.model.pytorch_gru_ts.GRUModel",
        "pt_model_kwargs": {"d_feat": 6, "hidden_size": 64, "num_layers": 2, "dropout": 0.0},
    },
    module_kwargs,
    adapters=(LRPlateau(PLATEAU),),
)
