"""KRNN (Qlib's pytorch_krnn): network, Qlib weights, wrapper."""

from qjax.models.krnn import qlib, wrapper
from qjax.models.krnn.network import KRNNModel
from qjax.models.registry import Model

MODELS = (Model("krnn", KRNNModel, spec=wrapper.KRNN, convert=qlib.krnn_from_qlib),)

__all__ = ["KRNNModel", "MODELS"]
