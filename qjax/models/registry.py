"""Registry of model classes by name: ``qjax.models.get("lstm")``."""

from __future__ import annotations

import importlib
from typing import Callable

import flax.linen as nn

_MODELS: dict[str, type[nn.Module]] = {}

# name -> module that registers it on import (lazy, so `import qjax` stays light).
_PROVIDERS = {
    "mlp": "qjax.models.mlp",
    "lstm": "qjax.models.rnn",
    "gru": "qjax.models.rnn",
    "alstm": "qjax.models.alstm",
    "transformer": "qjax.models.transformer",
    "localformer": "qjax.models.transformer",
    "gats": "qjax.models.gats",
    "tabnet": "qjax.models.tabnet",
    "krnn": "qjax.models.krnn",
    "sfm": "qjax.models.sfm",
    "hist": "qjax.models.hist",
    "tcn": "qjax.models.tcn",
    "general": "qjax.models.general",
}


def register(name: str) -> Callable[[type[nn.Module]], type[nn.Module]]:
    """Class decorator adding a Flax module to the registry under ``name``."""

    def wrap(cls: type[nn.Module]) -> type[nn.Module]:
        _MODELS[name.lower()] = cls
        return cls

    return wrap


def get(name: str) -> type[nn.Module]:
    """Return the Flax module class registered as ``name`` (case-insensitive)."""
    key = str(name).lower()
    if key not in _MODELS and key in _PROVIDERS:
        try:
            importlib.import_module(_PROVIDERS[key])
        except ModuleNotFoundError as err:
            if err.name != _PROVIDERS[key]:
                raise
    if key not in _MODELS:
        raise KeyError(
            f"unknown model name {name!r}; available: {', '.join(names())}. "
            "Register a custom module with qjax.models.register(name) or use the "
            "'general' adapter with an import path."
        )
    return _MODELS[key]


def names() -> list[str]:
    """Names of every model that can be built in this installation."""
    for key, provider in _PROVIDERS.items():
        if key not in _MODELS:
            try:
                importlib.import_module(provider)
            except ModuleNotFoundError as err:
                if err.name != provider:
                    raise
    return sorted(_MODELS)
