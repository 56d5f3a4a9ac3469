"""Qlib ``ALSTMModel`` weights (``pytorch_alstm[_ts].py``) -> :class:`qjax.models.alstm.ALSTMModel`.

torch keys: ``net.fc_in``, ``rnn`` (GRU or LSTM), ``att_net.att_fc_in``,
``att_net.att_fc_out`` (no bias) and ``fc_out``. Pass ``rnn_type`` as the torch module was
built; a model trained by Qlib's ``ALSTM`` estimator is a GRU whatever its config said.
"""

from __future__ import annotations

from collections.abc import Mapping

import jax.numpy as jnp
import numpy as np

from qjax.interop.weights import TrackedStateDict, finish_conversion, linear, rnn
from qjax.models.alstm.network import ALSTMModel


def alstm_from_qlib(state_dict: Mapping[str, np.ndarray], **kwargs) -> tuple[ALSTMModel, dict]:
    """``ALSTMModel(**kwargs)`` and its variables from a Qlib ALSTMModel ``state_dict``."""
    module = ALSTMModel(**kwargs)
    sd = TrackedStateDict(state_dict)
    params = {
        "fc_in": linear(sd, "net.fc_in"),
        "rnn": rnn(sd, "rnn", module.num_layers),
        "att_fc_in": linear(sd, "att_net.att_fc_in"),
        "att_fc_out": linear(sd, "att_net.att_fc_out", bias=False),
        "fc_out": linear(sd, "fc_out"),
    }
    return finish_conversion(module, sd, params, jnp.zeros((1, 1, module.d_feat), jnp.float32))
