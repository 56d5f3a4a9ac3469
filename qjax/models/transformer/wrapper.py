"""Qlib's Transformer and Localformer wrappers (and their _ts variants) as specs."""

from __future__ import annotations

import dataclasses

from qjax.models.spec import ModelSpec, SequenceInput, pick

DEFAULTS = {
    "d_feat": 20,
    "d_model": 64,
    "batch_size": 2048,
    "nhead": 2,
    "num_layers": 2,
    "dropout": 0.0,
    "n_epochs": 100,
    "lr": 0.0001,
    "metric": "",
    "early_stop": 5,
    "loss": "mse",
    "optimizer": "adam",
    "reg": 0.001,
    "n_jobs": 10,
    "GPU": 0,
    "seed": None,
}
TRANSFORMER = ModelSpec(
    "qlib.contrib.model.pytorch_transformer.TransformerModel (/ _ts)",
    DEFAULTS,
    pick("d_feat", "d_model", "nhead", "num_layers", "dropout"),
    ts_defaults={"batch_size": 8192},
    adapters=(SequenceInput("d_feat"),),
    cpu_predict_batch=128,
)
LOCALFORMER = dataclasses.replace(
    TRANSFORMER, qlib_class="qlib.contrib.model.pytorch_localformer.LocalformerModel (/ _ts)"
)
