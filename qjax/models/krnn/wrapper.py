"""Qlib's KRNN wrapper (pytorch_krnn) as a spec."""

from __future__ import annotations

from qjax.models.spec import EPOCH_LOOP, ModelSpec, OneCpuDevice, SequenceInput, pick

KRNN = ModelSpec(
    "qlib.contrib.model.pytorch_krnn.KRNN",
    {
        "fea_dim": 6,
        "cnn_dim": 64,
        "cnn_kernel_size": 3,
        "rnn_dim": 64,
        "rnn_dups": 3,
        "rnn_layers": 2,
        "dropout": 0,
        **EPOCH_LOOP,
        "layout": "qlib",  # qjax switch: "feature_major" fixes Qlib's row-major reshape
    },
    pick(
        "fea_dim",
        "cnn_dim",
        "cnn_kernel_size",
        "rnn_dim",
        "rnn_dups",
        "rnn_layers",
        "dropout",
        "layout",
    ),
    adapters=(SequenceInput("fea_dim"), OneCpuDevice()),
    cpu_predict_dots="eigen",  # 1.13-1.30x faster in three runs (benchmarks/results/xla_dots_cpu*.md)
)
