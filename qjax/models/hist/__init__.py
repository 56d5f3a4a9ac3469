"""HIST (Qlib's pytorch_hist): network, Qlib weights, concept matrix loading, wrapper."""

from qjax.models.hist import qlib, wrapper
from qjax.models.hist.network import HISTModel
from qjax.models.registry import Model

MODELS = (Model("hist", HISTModel, spec=wrapper.HIST, convert=qlib.convert_hist),)

__all__ = ["HISTModel", "MODELS"]
