"""Qlib's SFM wrapper (pytorch_sfm) as a spec."""

from __future__ import annotations

from qjax.models.spec import EPOCH_LOOP, CompileAtO1, ModelSpec, SequenceInput, pick

SFM = ModelSpec(
    "qlib.contrib.model.pytorch_sfm.SFM",
    {
        "d_feat": 6,
        "hidden_size": 64,
        "output_dim": 1,
        "freq_dim": 10,
        "dropout_W": 0.0,
        "dropout_U": 0.0,
        **EPOCH_LOOP,
        "eval_steps": 5,  # accepted and unused, as in Qlib
        "optimizer": "gd",
    },
    pick("d_feat", "output_dim", "freq_dim", "hidden_size", "dropout_W", "dropout_U"),
    adapters=(SequenceInput("d_feat"), CompileAtO1()),
)
