"""SFM (Qlib's pytorch_sfm): network, Qlib weights, wrapper."""

from qjax.models.registry import Model
from qjax.models.sfm import qlib, wrapper
from qjax.models.sfm.network import SFM_Model

MODELS = (Model("sfm", SFM_Model, spec=wrapper.SFM, convert=qlib.convert_sfm),)

__all__ = ["MODELS", "SFM_Model"]
