"""TCN (Qlib's pytorch_tcn): network, Qlib weights, wrapper."""

from qjax.models.registry import Model
from qjax.models.tcn import qlib, wrapper
from qjax.models.tcn.network import TCNModel

MODELS = (Model("tcn", TCNModel, spec=wrapper.TCN, convert=qlib.convert_tcn),)

__all__ = ["MODELS", "TCNModel"]
