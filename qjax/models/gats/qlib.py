"""Qlib ``GATModel`` weights -> :class:`qjax.models.gats.GATModel`, and pretrained-base loading.

:func:`load_base_weights` is the model-side half of Qlib's GATs/HIST ``fit`` preamble: a
pretrained ``LSTMModel``/``GRUModel`` state dict (``rnn.*`` and ``fc_out.*``) overwrites the
matching parameters of the attention model. HIST uses it too.
"""

from __future__ import annotations

from collections.abc import Mapping

import jax
import jax.numpy as jnp
import numpy as np

from qjax.interop.weights import TrackedStateDict, finish_conversion, linear, rnn, take
from qjax.models.gats.network import GATModel, rnn_cell

_GATES = {"gru": 3, "lstm": 4}


def convert_gats(state_dict: Mapping[str, np.ndarray], **kwargs) -> tuple[GATModel, dict]:
    """``GATModel(**kwargs)`` and its variables from a Qlib ``GATModel`` state dict."""
    module = GATModel(**kwargs)
    sd = TrackedStateDict(state_dict)
    params = {
        "rnn": rnn(sd, "rnn", module.num_layers),
        "transformation": linear(sd, "transformation"),
        "a": take(sd, "a"),
        "fc": linear(sd, "fc"),
        "fc_out": linear(sd, "fc_out"),
    }
    return finish_conversion(module, sd, params, np.zeros((2, module.d_feat), np.float32))


def load_base_weights(
    variables: Mapping, state_dict: Mapping[str, np.ndarray], base_model: str, num_layers: int
) -> dict:
    """Copy a pretrained Qlib LSTM/GRU base (``rnn.*``, ``fc_out.*``) into GATs/HIST variables.

    ``state_dict`` is e.g. ``qjax.interop.read_torch_state_dict("model_lstm_csi300.pkl")``.
    Like Qlib, ``fc_out`` is overwritten too (the base model's head has the same shape).
    Returns new variables; the input is not modified.
    """
    cell = rnn_cell(base_model)
    state_dict = TrackedStateDict(state_dict)
    params = dict(variables["params"])
    hh_shape = np.shape(take(state_dict, "rnn.weight_hh_l0"))  # [gates*H, H]
    hidden = hh_shape[1]
    if hh_shape[0] != _GATES[cell] * hidden:
        other = "LSTM" if cell == "gru" else "GRU"
        raise ValueError(
            f"pretrained rnn.weight_hh_l0 has shape {hh_shape}, which is a {other} with hidden size "
            f"{hidden}, but base_model={base_model!r}; pass base_model={other!r}"
        )
    loaded = {"rnn": rnn(state_dict, "rnn", num_layers), "fc_out": linear(state_dict, "fc_out")}
    state_dict.check_all_used()
    for group, new in loaded.items():
        old = params[group]
        mismatched = {
            k: (np.shape(new[k]), np.shape(old[k]))
            for k in old
            if np.shape(new[k]) != np.shape(old[k])
        }
        if mismatched:
            raise ValueError(
                f"pretrained {group} weights do not fit the model (pretrained, model): {mismatched}. "
                "Qlib's static GATs/HIST wrappers always build the base as LSTMModel()/GRUModel() with "
                "default dims (d_feat=6, hidden_size=64, num_layers=2), so only a model with those dims "
                "can load e.g. model_lstm_csi300.pkl; the ts GATs wrapper uses the model's own "
                "(d_feat, hidden_size, num_layers), e.g. csi300_lstm_ts.pkl needs d_feat=20"
            )
        params[group] = jax.tree_util.tree_map(jnp.asarray, new)
    return {**variables, "params": params}
