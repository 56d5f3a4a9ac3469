"""Qlib's TCN wrappers (pytorch_tcn, pytorch_tcn_ts) as a spec."""

from __future__ import annotations

from qjax.models.spec import EPOCH_LOOP, ModelSpec, SequenceInput


def module_kwargs(kw: dict, is_ts: bool) -> dict:
    return {
        "num_input": kw["d_feat"],
        "output_size": 1,
        "num_channels": (kw["n_chans"],) * kw["num_layers"],
        "kernel_size": kw["kernel_size"],
        "dropout": kw["dropout"],
    }


TCN = ModelSpec(
    "qlib.contrib.model.pytorch_tcn.TCN / pytorch_tcn_ts.TCN",
    {
        "d_feat": 6,
        "n_chans": 128,
        "kernel_size": 5,
        "num_layers": 5,
        "dropout": 0.5,
        **EPOCH_LOOP,
        "lr": 0.0001,
    },
    module_kwargs,
    ts_defaults={"num_layers": 2, "dropout": 0.0, "lr": 0.001, "n_jobs": 10},
    adapters=(SequenceInput("d_feat"),),
    cpu_predict_batch=128,
)
