"""The general adapter (Qlib's GeneralPTNN): any Flax module named by import path."""

from qjax.models.general import wrapper
from qjax.models.general.network import GeneralModel, build, resolve
from qjax.models.registry import Model

MODELS = (Model("general", GeneralModel, spec=wrapper.GENERAL),)

__all__ = ["GeneralModel", "MODELS", "build", "resolve"]
