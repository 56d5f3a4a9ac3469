"""GATs (Qlib's pytorch_gats): network, Qlib weights (and pretrained-base loading), wrapper."""

from qjax.models.gats import qlib, wrapper
from qjax.models.gats.network import GATModel
from qjax.models.registry import Model

MODELS = (Model("gats", GATModel, spec=wrapper.GATS, convert=qlib.convert_gats),)

__all__ = ["GATModel", "MODELS"]
