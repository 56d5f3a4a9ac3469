"""Qlib's MLP ``Net`` (pytorch_nn, wrapper DNNModelPytorch): network, Qlib weights, wrapper."""

from qjax.models.mlp import qlib, wrapper
from qjax.models.mlp.network import Net
from qjax.models.registry import Model

MODELS = (Model("mlp", Net, spec=wrapper.MLP, convert=qlib.mlp_from_qlib),)

__all__ = ["MODELS", "Net"]
