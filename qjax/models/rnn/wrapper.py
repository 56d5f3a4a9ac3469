"""Qlib's LSTM and GRU wrappers (pytorch_lstm(_ts), pytorch_gru(_ts)) as specs."""

from __future__ import annotations

import dataclasses

from qjax.models.spec import EPOCH_LOOP, ModelSpec, SequenceInput, pick

RNN_DEFAULTS = {"d_feat": 6, "hidden_size": 64, "num_layers": 2, "dropout": 0.0, **EPOCH_LOOP}
RNN_ARGS = ("d_feat", "hidden_size", "num_layers", "dropout")

LSTM = ModelSpec(
    "qlib.contrib.model.pytorch_lstm.LSTM / pytorch_lstm_ts.LSTM",
    RNN_DEFAULTS,
    pick(*RNN_ARGS),
    ts_defaults={"n_jobs": 10},
    adapters=(SequenceInput("d_feat"),),
    # 1.14-1.22x faster than Qlib's 800 (benchmarks/results/predict_levers_cpu_rnn.md)
    cpu_predict_batch=128,
)
GRU = dataclasses.replace(
    LSTM, qlib_class="qlib.contrib.model.pytorch_gru.GRU / pytorch_gru_ts.GRU"
)
