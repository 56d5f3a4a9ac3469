"""Map Qlib torch ``state_dict`` weights onto qjax modules: :func:`from_qlib`."""

from __future__ import annotations

import importlib
from typing import Any, Callable, Mapping

import numpy as np

Converter = Callable[..., tuple[Any, dict]]
_CONVERTERS: dict[str, Converter] = {}

# name -> module whose import registers its converter (lazy, like the model registry).
_PROVIDERS = {
    "mlp": "qjax.interop.qlib.mlp",
    "lstm": "qjax.interop.qlib.rnn",
    "gru": "qjax.interop.qlib.rnn",
    "alstm": "qjax.interop.qlib.alstm",
    "transformer": "qjax.interop.qlib.transformer",
    "localformer": "qjax.interop.qlib.transformer",
    "gats": "qjax.interop.qlib.gats",
    "tabnet": "qjax.interop.qlib.tabnet",
    "tabnet_encoder": "qjax.interop.qlib.tabnet",
    "tabnet_decoder": "qjax.interop.qlib.tabnet",
    "krnn": "qjax.interop.qlib.krnn",
    "sfm": "qjax.interop.qlib.sfm",
    "hist": "qjax.interop.qlib.hist",
    "tcn": "qjax.interop.qlib.tcn",
}


def register_converter(name: str) -> Callable[[Converter], Converter]:
    """Decorator registering ``fn(state_dict, **module_kwargs) -> (module, variables)``."""

    def wrap(fn: Converter) -> Converter:
        _CONVERTERS[name.lower()] = fn
        return fn

    return wrap


def from_qlib(name: str, state_dict: Mapping[str, Any], **module_kwargs) -> tuple[Any, dict]:
    """Build the qjax module ``name`` and its variables from a Qlib torch ``state_dict``.

    ``module_kwargs`` are the Qlib torch module's own constructor keywords (``device`` is
    accepted and ignored). ``module.apply(variables, x)`` equals the torch module's eval output.
    """
    key = str(name).lower()
    if key not in _CONVERTERS and key in _PROVIDERS:
        importlib.import_module(_PROVIDERS[key])
    if key not in _CONVERTERS:
        raise KeyError(f"no Qlib weight mapping for model {name!r}; available: {sorted(_PROVIDERS)}")
    module_kwargs.pop("device", None)
    arrays = {k: np.asarray(_to_numpy(v), dtype=None) for k, v in state_dict.items()}
    return _CONVERTERS[key](arrays, **module_kwargs)


def _to_numpy(value):
    # torch tensors (when the caller has torch) expose .detach().cpu().numpy(); arrays pass through.
    if hasattr(value, "detach"):
        return value.detach().cpu().numpy()
    return value


__all__ = ["from_qlib", "register_converter"]
