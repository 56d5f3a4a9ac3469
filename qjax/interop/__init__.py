"""Interoperability with PyTorch and Qlib: read torch state dicts without torch, map weights.

``from_qlib`` and ``register_converter`` load on first use: the converters live in the model
homes, which import the mapping helpers of this package (:mod:`qjax.interop.weights`).
"""

from __future__ import annotations

import importlib

from qjax.interop.torch_pickle import read_torch_state_dict

__all__ = ["from_qlib", "read_torch_state_dict", "register_converter"]


def __getattr__(name: str):
    if name in ("from_qlib", "register_converter"):
        return getattr(importlib.import_module("qjax.interop.qlib"), name)
    raise AttributeError(f"module 'qjax.interop' has no attribute {name!r}")
