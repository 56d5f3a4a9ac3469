"""ALSTM (Qlib's pytorch_alstm): network, Qlib weights, wrapper."""

from qjax.models.alstm import qlib, wrapper
from qjax.models.alstm.network import ALSTMModel
from qjax.models.registry import Model

MODELS = (Model("alstm", ALSTMModel, spec=wrapper.ALSTM, convert=qlib.alstm_from_qlib),)

__all__ = ["ALSTMModel", "MODELS"]
