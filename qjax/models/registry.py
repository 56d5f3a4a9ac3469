"""The one registry of models, read by ``qjax.models.get``, ``qjax.interop.from_qlib``,
``qjax.estimator`` and ``qjax models``.

Every model family has one home, a package ``qjax.models.<family>`` holding its Flax network(s)
(``network.py``), its Qlib weight converter (``qlib.py``) and its Qlib wrapper spec
(``wrapper.py``). The home's ``MODELS`` tuple of :class:`Model` entries ties the three together
under a name; this registry is the union of those tuples (plus whatever a user registers).
Homes are imported on first use, so ``import qjax.models`` stays light.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import flax.linen as nn

if TYPE_CHECKING:  # the spec module imports the training engine; the registry must not
    from qjax.models.spec import ModelSpec

# fn(state_dict, **torch_module_kwargs) -> (module, variables)
Converter = Callable[..., tuple[Any, dict]]


@dataclasses.dataclass(frozen=True)
class Model:
    """One registered model: its network and, where it has them, its converter and wrapper."""

    name: str
    network: type[nn.Module]
    spec: ModelSpec | None = None  # the Qlib wrapper behind qjax.estimator(name)
    convert: Converter | None = None  # Qlib weights behind qjax.interop.from_qlib(name)


def _homes() -> tuple:
    from qjax.models import (
        alstm,
        gats,
        general,
        hist,
        krnn,
        mlp,
        rnn,
        sfm,
        tabnet,
        tcn,
        transformer,
    )

    return (mlp, rnn, alstm, transformer, gats, tabnet, krnn, sfm, hist, tcn, general)


_REGISTERED: dict[str, Model] = {}  # user registrations; they override a home's entry
_FROM_HOMES: dict[str, Model] = {}


def models() -> dict[str, Model]:
    """Every registered model by name."""
    if not _FROM_HOMES:
        entries = {entry.name: entry for home in _homes() for entry in home.MODELS}
        _FROM_HOMES.update(entries)
    return {**_FROM_HOMES, **_REGISTERED}


def model(name: str) -> Model:
    """The :class:`Model` registered as ``name`` (case-insensitive)."""
    key = str(name).lower()
    table = models()
    if key not in table:
        raise KeyError(
            f"unknown model name {name!r}; available: {', '.join(sorted(table))}. "
            "Register a custom module with qjax.models.register(name) or use the "
            "'general' adapter with an import path."
        )
    return table[key]


def register(
    name: str, *, spec: ModelSpec | None = None, convert: Converter | None = None
) -> Callable[[type[nn.Module]], type[nn.Module]]:
    """Class decorator registering a Flax module as ``name``: one place for a new model.

    ``spec`` (a :class:`qjax.models.spec.ModelSpec`) makes it a ``qjax.estimator(name)``;
    ``convert`` makes it a ``qjax.interop.from_qlib(name, ...)`` target.
    """

    def wrap(cls: type[nn.Module]) -> type[nn.Module]:
        _REGISTERED[name.lower()] = Model(name.lower(), cls, spec=spec, convert=convert)
        return cls

    return wrap


def unregister(name: str) -> None:
    """Remove a user registration (a home's entry comes back if it had one)."""
    _REGISTERED.pop(str(name).lower(), None)


def register_converter(name: str) -> Callable[[Converter], Converter]:
    """Decorator adding ``fn(state_dict, **module_kwargs) -> (module, variables)`` to the
    registered model ``name`` (its network is the class of the module ``fn`` returns)."""

    def wrap(fn: Converter) -> Converter:
        key = name.lower()
        entry = models().get(key)
        if entry is None:
            raise KeyError(
                f"register the model {name!r} (qjax.models.register) before its converter"
            )
        _REGISTERED[key] = dataclasses.replace(entry, convert=fn)
        return fn

    return wrap


def spec_of(network: type) -> ModelSpec | None:
    """The wrapper spec registered with exactly this network class (a user registration before
    a home's), or None: how ``qjax.train.fit`` finds a module's measured CPU levers."""
    matches = [entry for entry in models().values() if entry.network is network and entry.spec]
    matches.sort(key=lambda entry: entry.name not in _REGISTERED)  # user registrations first
    return matches[0].spec if matches else None


def get(name: str) -> type[nn.Module]:
    """Return the Flax module class registered as ``name`` (case-insensitive)."""
    return model(name).network


def names() -> list[str]:
    """Names of every model that can be built in this installation."""
    return sorted(models())
