"""Interoperability with PyTorch and Qlib: read torch state dicts without torch, map weights."""

from qjax.interop.qlib import from_qlib, register_converter
from qjax.interop.torch_pickle import read_torch_state_dict

__all__ = ["from_qlib", "read_torch_state_dict", "register_converter"]
