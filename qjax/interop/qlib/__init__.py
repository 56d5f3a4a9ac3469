"""Map Qlib torch ``state_dict`` weights onto qjax modules: :func:`from_qlib`.

The converters live in each model's home (``qjax.models.<family>.qlib``) and are found through
the one model registry; shared mapping helpers are in :mod:`qjax.interop.weights`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from qjax.models import registry
from qjax.models.registry import register_converter


def from_qlib(name: str, state_dict: Mapping[str, Any], **module_kwargs) -> tuple[Any, dict]:
    """Build the qjax module ``name`` and its variables from a Qlib torch ``state_dict``.

    ``module_kwargs`` are the Qlib torch module's own constructor keywords (``device`` is
    accepted and ignored). ``module.apply(variables, x)`` equals the torch module's eval output.
    """
    convertible = sorted(n for n, entry in registry.models().items() if entry.convert is not None)
    key = str(name).lower()
    if key not in convertible:
        raise KeyError(f"no Qlib weight mapping for model {name!r}; available: {convertible}")
    module_kwargs.pop("device", None)
    arrays = {k: np.asarray(_to_numpy(v), dtype=None) for k, v in state_dict.items()}
    return registry.model(key).convert(arrays, **module_kwargs)


def _to_numpy(value):
    # torch tensors (when the caller has torch) expose .detach().cpu().numpy(); arrays pass through.
    if hasattr(value, "detach"):
        return value.detach().cpu().numpy()
    return value


__all__ = ["from_qlib", "register_converter"]
