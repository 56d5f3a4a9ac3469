"""Qlib ``HISTModel`` weights -> :class:`qjax.models.hist.HISTModel`.

Pretrained LSTM/GRU bases load with :func:`qjax.models.gats.qlib.load_base_weights`, exactly
as for GATs (Qlib's HIST ``fit`` uses the same copy procedure).
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from qjax.interop.weights import TrackedStateDict, finish_conversion, linear, rnn
from qjax.models.hist.network import HISTModel

_LINEARS = (
    "fc_es",
    "fc_is",
    "fc_es_middle",
    "fc_is_middle",
    "fc_es_fore",
    "fc_is_fore",
    "fc_indi_fore",
    "fc_es_back",
    "fc_is_back",
    "fc_indi",
    "fc_out_es",
    "fc_out_is",
    "fc_out_indi",
    "fc_out",
)


def convert_hist(
    sd: Mapping[str, np.ndarray],
    d_feat: int = 6,
    hidden_size: int = 64,
    num_layers: int = 2,
    dropout: float = 0.0,
    base_model: str = "GRU",
):
    """Qlib ``HISTModel(d_feat, hidden_size, num_layers, dropout, base_model)`` state dict."""
    module = HISTModel(d_feat, hidden_size, num_layers, dropout, base_model)
    sd = TrackedStateDict(sd)
    params = {"rnn": rnn(sd, "rnn", num_layers)}
    params.update({name: linear(sd, name) for name in _LINEARS})
    return finish_conversion(
        module, sd, params, np.zeros((2, d_feat), np.float32), np.zeros((2, 1), np.float32)
    )
