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


def convert_hist(state_dict: Mapping[str, np.ndarray], **kwargs) -> tuple[HISTModel, dict]:
    """``HISTModel(**kwargs)`` and its variables from a Qlib ``HISTModel`` state dict."""
    module = HISTModel(**kwargs)
    sd = TrackedStateDict(state_dict)
    params = {"rnn": rnn(sd, "rnn", module.num_layers)}
    params.update({name: linear(sd, name) for name in _LINEARS})
    x = np.zeros((2, module.d_feat), np.float32)
    return finish_conversion(module, sd, params, x, np.zeros((2, 1), np.float32))
