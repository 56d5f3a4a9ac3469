"""General adapter: any Flax module named by import path, like Qlib's ``GeneralPTNN``.

Qlib's ``GeneralPTNN(pt_model_uri, pt_model_kwargs)`` instantiates any torch module by dotted
path. Here :class:`GeneralModel` (registered as "general") and :func:`build` do the same for
Flax modules; ``module_path`` may be

- a dotted path ``"package.module.ClassName"`` to a ``flax.linen.Module`` subclass,
- a qjax registry name (``"gru"``), or
- one of Qlib's own ``pt_model_uri`` strings for a zoo network (e.g. the GeneralPTNN default
  ``"qlib.contrib.model.pytorch_gru_ts.GRUModel"``), mapped to its qjax port, whose fields are
  the torch constructor's (``device`` is dropped).

The wrapped module's output is flattened to [N]: one prediction per sample, so the engine's
loss stays per-sample. (Qlib compares an [N] prediction with an [N, 1] label, which broadcasts
to an [N, N] loss, quirk #2; that is not reproduced.)
"""

from __future__ import annotations

import dataclasses
import importlib
import inspect
from collections.abc import Mapping
from typing import Any

import flax.linen as nn
import jax
from flax.core import FrozenDict

from qjax.models import registry

# Qlib zoo networks a GeneralPTNN config may name -> the qjax registry name of their port.
_QLIB_ZOO = {
    "qlib.contrib.model.pytorch_nn.Net": "mlp",
    "qlib.contrib.model.pytorch_lstm.LSTMModel": "lstm",
    "qlib.contrib.model.pytorch_lstm_ts.LSTMModel": "lstm",
    "qlib.contrib.model.pytorch_gru.GRUModel": "gru",
    "qlib.contrib.model.pytorch_gru_ts.GRUModel": "gru",
    "qlib.contrib.model.pytorch_alstm.ALSTMModel": "alstm",
    "qlib.contrib.model.pytorch_alstm_ts.ALSTMModel": "alstm",
    "qlib.contrib.model.pytorch_transformer.Transformer": "transformer",
    "qlib.contrib.model.pytorch_transformer_ts.Transformer": "transformer",
    "qlib.contrib.model.pytorch_localformer.Transformer": "localformer",
    "qlib.contrib.model.pytorch_localformer_ts.Transformer": "localformer",
    "qlib.contrib.model.pytorch_gats.GATModel": "gats",
    "qlib.contrib.model.pytorch_gats_ts.GATModel": "gats",
    "qlib.contrib.model.pytorch_krnn.KRNNModel": "krnn",
    "qlib.contrib.model.pytorch_sfm.SFM_Model": "sfm",
    "qlib.contrib.model.pytorch_tcn.TCNModel": "tcn",
    "qlib.contrib.model.pytorch_tcn_ts.TCNModel": "tcn",
}


def resolve(module_path: str) -> type[nn.Module]:
    """The Flax module class named by ``module_path`` (dotted path, registry name or Qlib URI)."""
    if not isinstance(module_path, str) or not module_path.strip():
        raise ValueError(
            f"module_path must be a non-empty string like 'pkg.mod.ClassName', got {module_path!r}"
        )
    if module_path in _QLIB_ZOO:
        return registry.get(_QLIB_ZOO[module_path])
    if "." not in module_path:
        return registry.get(module_path)
    module_name, _, attr = module_path.rpartition(".")
    try:
        module = importlib.import_module(module_name)
    except ImportError as err:
        raise ValueError(
            f"cannot import {module_name!r} for module_path {module_path!r} ({err}); "
            "give 'package.module.ClassName' of an importable Flax module"
        ) from err
    if not hasattr(module, attr):
        raise ValueError(
            f"module {module_name!r} has no attribute {attr!r} (module_path {module_path!r})"
        )
    cls = getattr(module, attr)
    if not (isinstance(cls, type) and issubclass(cls, nn.Module)):
        hint = ""
        if module_name.startswith("qlib."):
            hint = f"; Qlib zoo networks with a qjax port: {sorted(_QLIB_ZOO)}"
        raise ValueError(f"{module_path!r} is {cls!r}, not a flax.linen.Module subclass{hint}")
    return cls


def build(
    module_path: str, module_kwargs: Mapping[str, Any] | None = None, *, name: str | None = None
) -> nn.Module:
    """Instantiate the Flax module at ``module_path`` with ``module_kwargs``, checking the kwargs."""
    cls = resolve(module_path)
    return cls(**checked_kwargs(cls, module_path, module_kwargs), name=name)


def checked_kwargs(
    cls: type[nn.Module], module_path: str, module_kwargs: Mapping[str, Any] | None
) -> dict:
    """``module_kwargs`` as a dict, or a clear error if ``cls`` rejects or lacks some of them."""
    kwargs = dict(module_kwargs or {})
    if module_path in _QLIB_ZOO:
        kwargs.pop("device", None)  # torch-only argument of Qlib's modules
    fields = {
        f.name: f for f in dataclasses.fields(cls) if f.init and f.name not in ("parent", "name")
    }
    unknown = sorted(set(kwargs) - set(fields))
    if unknown:
        raise ValueError(
            f"{cls.__name__} does not accept {unknown}; its fields are {sorted(fields)}"
        )
    missing = sorted(
        key
        for key, f in fields.items()
        if key not in kwargs
        and f.default is dataclasses.MISSING
        and f.default_factory is dataclasses.MISSING
    )
    if missing:
        raise ValueError(
            f"{cls.__name__} needs {missing} in module_kwargs; its fields are {sorted(fields)}"
        )
    return kwargs


def per_sample(y: jax.Array, n_samples: int) -> jax.Array:
    """Flatten a network output to [N]; anything but [N] or [N, 1] is an error."""
    if y.ndim in (1, 2) and y.shape[0] == n_samples and y.size == n_samples:
        return y.reshape(n_samples)
    raise ValueError(
        f"the wrapped module must give one prediction per sample ([N] or [N, 1] with N={n_samples}), "
        f"got shape {y.shape}; set its output size to 1"
    )


def _freeze(value):
    # Hashable kwargs keep the module usable as a static jit argument; configs give lists/dicts.
    if isinstance(value, Mapping):
        return FrozenDict({k: _freeze(v) for k, v in value.items()})
    if isinstance(value, list):
        return tuple(_freeze(v) for v in value)
    return value


class GeneralModel(nn.Module):
    """``module_path`` + ``module_kwargs`` -> that module, with its output flattened to [N].

    The wrapped module is the child ``net``; ``train`` is forwarded if its ``__call__`` takes it.
    """

    module_path: str
    module_kwargs: Mapping[str, Any] = FrozenDict()

    def __post_init__(self):
        object.__setattr__(self, "module_kwargs", _freeze(self.module_kwargs or {}))
        # Fail at construction (e.g. from a config), not at the first trace.
        checked_kwargs(resolve(self.module_path), self.module_path, self.module_kwargs)
        super().__post_init__()

    @nn.compact
    def __call__(self, x, train: bool = False):
        net = build(self.module_path, self.module_kwargs, name="net")
        if "train" in inspect.signature(net.__call__).parameters:
            y = net(x, train=train)
        else:
            y = net(x)
        return per_sample(y, x.shape[0])
