"""Qlib ``KRNNModel`` weights (``pytorch_krnn.py``) -> :class:`qjax.models.krnn.KRNNModel`.

torch keys: ``encoder.cnn_encoder.conv.{weight,bias}`` (Conv1d [out, in, k]),
``encoder.krnn_encoder.rnn_modules.{j}.*`` (K GRUs, stacked here on a leading K axis) and
``out_fc``. The GRUs are time-major in torch, which does not change their weights.
"""

from __future__ import annotations

from typing import Mapping

import jax
import jax.numpy as jnp
import numpy as np

from qjax.interop.qlib import register_converter
from qjax.interop.qlib.common import TrackedStateDict, check_shapes, linear, rnn, take
from qjax.models.krnn import KRNNModel


@register_converter("krnn")
def krnn_from_qlib(state_dict: Mapping[str, np.ndarray], **kwargs) -> tuple[KRNNModel, dict]:
    """``KRNNModel(**kwargs)`` and its variables from a Qlib KRNNModel ``state_dict``.

    ``kwargs`` are the torch module's (``device`` is ignored) plus, optionally, ``layout``.
    """
    module = KRNNModel(**kwargs)
    sd = TrackedStateDict(state_dict)
    conv = "encoder.cnn_encoder.conv"
    dups = [
        rnn(sd, f"encoder.krnn_encoder.rnn_modules.{j}", module.rnn_layers)
        for j in range(module.rnn_dups)
    ]
    params = {
        # torch Conv1d weight [out, in, k] -> flax Conv kernel [k, in, out]
        "conv": {
            "kernel": take(sd, f"{conv}.weight").transpose(2, 1, 0).copy(),
            "bias": take(sd, f"{conv}.bias"),
        },
        "rnns": {name: np.stack([d[name] for d in dups]) for name in dups[0]},
        "out_fc": linear(sd, "out_fc"),
    }
    sd.check_all_used()
    variables = jax.tree_util.tree_map(jnp.asarray, {"params": params})
    example = jnp.zeros((1, max(module.cnn_kernel_size, 1), module.fea_dim), jnp.float32)
    check_shapes(module, variables, example)
    return module, variables
