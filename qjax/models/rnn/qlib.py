"""Qlib ``LSTMModel`` / ``GRUModel`` weights -> :mod:`qjax.models.rnn` (both DatasetH and ts).

torch keys: ``rnn.{weight,bias}_{ih,hh}_l{k}`` and ``fc_out.{weight,bias}``; the same for the
non-ts and ts modules and for Qlib's pretrained ``model_*_csi300.pkl`` / ``csi300_*_ts.pkl``.
"""

from __future__ import annotations

from collections.abc import Mapping

import jax.numpy as jnp
import numpy as np

from qjax.interop.weights import TrackedStateDict, finish_conversion, linear, rnn
from qjax.models.rnn.network import GRUModel, LSTMModel


def _convert(module, state_dict: Mapping[str, np.ndarray]):
    sd = TrackedStateDict(state_dict)
    params = {"rnn": rnn(sd, "rnn", module.num_layers), "fc_out": linear(sd, "fc_out")}
    return finish_conversion(module, sd, params, jnp.zeros((1, 1, module.d_feat), jnp.float32))


def lstm_from_qlib(state_dict: Mapping[str, np.ndarray], **kwargs) -> tuple[LSTMModel, dict]:
    """``LSTMModel(**kwargs)`` and its variables from a Qlib LSTMModel ``state_dict``."""
    return _convert(LSTMModel(**kwargs), state_dict)


def gru_from_qlib(state_dict: Mapping[str, np.ndarray], **kwargs) -> tuple[GRUModel, dict]:
    """``GRUModel(**kwargs)`` and its variables from a Qlib GRUModel ``state_dict``."""
    return _convert(GRUModel(**kwargs), state_dict)
