"""Qlib ``KRNNModel`` weights (``pytorch_krnn.py``) -> :class:`qjax.models.krnn.KRNNModel`.

torch keys: ``encoder.cnn_encoder.conv.{weight,bias}`` (Conv1d [out, in, k]),
``encoder.krnn_encoder.rnn_modules.{j}.*`` (K GRUs, stacked here on a leading K axis) and
``out_fc``. The GRUs are time-major in torch, which does not change their weights.
"""

from __future__ import annotations

from collections.abc import Mapping

import jax.numpy as jnp
import numpy as np

from qjax.interop.weights import TrackedStateDict, conv1d, finish_conversion, linear, rnn
from qjax.models.krnn.network import KRNNModel


def krnn_from_qlib(state_dict: Mapping[str, np.ndarray], **kwargs) -> tuple[KRNNModel, dict]:
    """``KRNNModel(**kwargs)`` and its variables from a Qlib KRNNModel ``state_dict``.

    ``kwargs`` are the torch module's (``device`` is ignored) plus, optionally, ``layout``.
    """
    module = KRNNModel(**kwargs)
    sd = TrackedStateDict(state_dict)
    dups = [
        rnn(sd, f"encoder.krnn_encoder.rnn_modules.{j}", module.rnn_layers)
        for j in range(module.rnn_dups)
    ]
    params = {
        "conv": conv1d(sd, "encoder.cnn_encoder.conv"),
        "rnns": {name: np.stack([d[name] for d in dups]) for name in dups[0]},
        "out_fc": linear(sd, "out_fc"),
    }
    example = jnp.zeros((1, max(module.cnn_kernel_size, 1), module.fea_dim), jnp.float32)
    return finish_conversion(module, sd, params, example)
