"""Qlib ``Net`` weights (``pytorch_nn.py``, the DNNModelPytorch network) -> :class:`qjax.models.mlp.Net`.

torch keys: ``dnn_layers.0`` is the input Dropout; ``dnn_layers.{i+1}.0`` the i-th hidden
Linear and ``dnn_layers.{i+1}.1`` its BatchNorm1d (weight, bias, running_mean, running_var);
then a Dropout and the output Linear at ``dnn_layers.{L+2}``. A ``module.`` prefix (Qlib's
``data_parall=True`` DataParallel wrapper) is stripped.
"""

from __future__ import annotations

from collections.abc import Mapping

import jax.numpy as jnp
import numpy as np

from qjax.interop.weights import TrackedStateDict, batch_norm, finish_conversion, linear
from qjax.models.mlp.network import Net

_DATA_PARALLEL_PREFIX = "module."


def mlp_from_qlib(state_dict: Mapping[str, np.ndarray], **kwargs) -> tuple[Net, dict]:
    """``Net(**kwargs)`` and its ``params`` + ``batch_stats`` from a Qlib ``Net`` state_dict.

    ``kwargs`` are Net's: ``input_dim`` (required), ``output_dim``, ``layers``, ``act``.
    """
    module = Net(**kwargs)
    if state_dict and all(k.startswith(_DATA_PARALLEL_PREFIX) for k in state_dict):
        state_dict = {k[len(_DATA_PARALLEL_PREFIX) :]: v for k, v in state_dict.items()}
    sd = TrackedStateDict(state_dict)
    params, stats = {}, {}
    for i in range(len(module.layers)):
        params[f"fc_{i}"] = linear(sd, f"dnn_layers.{i + 1}.0")
        params[f"bn_{i}"], stats[f"bn_{i}"] = batch_norm(sd, f"dnn_layers.{i + 1}.1")
    params["fc_out"] = linear(sd, f"dnn_layers.{len(module.layers) + 2}")
    example = jnp.zeros((2, module.input_dim), jnp.float32)
    return finish_conversion(module, sd, params, example, batch_stats=stats)
