"""Qlib's ALSTM wrappers (pytorch_alstm, pytorch_alstm_ts) as a spec."""

from __future__ import annotations

from qjax.models.rnn.wrapper import RNN_ARGS, RNN_DEFAULTS
from qjax.models.spec import ModelSpec, SequenceInput, pick


def module_kwargs(kw: dict, is_ts: bool) -> dict:
    # Qlib's ALSTM wrappers never pass rnn_type to the network, so it is always a GRU.
    rnn_type = kw["rnn_type"] if kw["honour_rnn_type"] else "GRU"
    return {**pick(*RNN_ARGS)(kw, is_ts), "rnn_type": rnn_type}


ALSTM = ModelSpec(
    "qlib.contrib.model.pytorch_alstm.ALSTM / pytorch_alstm_ts.ALSTM",
    {**RNN_DEFAULTS, "rnn_type": "GRU", "honour_rnn_type": False},
    module_kwargs,
    ts_defaults={"n_jobs": 10},
    adapters=(SequenceInput("d_feat"),),
    # 1.14-1.22x faster than Qlib's 800 (benchmarks/results/predict_levers_cpu_rnn.md)
    cpu_predict_batch=128,
)
