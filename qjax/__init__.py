"""qjax: a pure-functional JAX/Flax port of Qlib's deep-learning model zoo.

``qjax.estimator(name, **qlib_kwargs)`` builds a Qlib-compatible model, ``qjax.models`` holds
the Flax networks, ``qjax.data`` the data side (generated market, Qlib binary data, Alpha158 /
Alpha360, processors, datasets), ``qjax.train`` the one training engine and ``qjax.interop``
the bridge to PyTorch and Qlib weights.

Importing qjax gives JAX one CPU device per usable core (before JAX initialises), so that the
engine can split a batch over the cores; ``QJAX_CPU_DEVICES=N|off`` or
:func:`set_cpu_devices` choose otherwise, see :mod:`qjax.cpu_devices`.
"""

from __future__ import annotations

import importlib

from qjax.cpu_devices import apply_default as _apply_cpu_default
from qjax.cpu_devices import set_cpu_devices

_apply_cpu_default()

__version__ = "0.1.0"
__all__ = ["data", "estimator", "interop", "load", "models", "set_cpu_devices", "train"]

_SUBMODULES = {
    "data",
    "interop",
    "models",
    "train",
    "estimators",
    "workflow",
    "run_config",
    "errors",
    "cpu_devices",
    "saved_run",
    "predict",
}


def estimator(name: str, **kwargs):
    """A Qlib-compatible model wrapper; see :func:`qjax.estimators.estimator`."""
    from qjax.estimators import estimator as _estimator

    return _estimator(name, **kwargs)


def load(run_dir):
    """A finished run directory ready to score new dates: ``qjax.load(run_dir).predict(start,
    end)``; the estimator has its best variables, the processors their train-period fit (see
    :func:`qjax.saved_run.load`)."""
    from qjax.saved_run import load as _load

    return _load(run_dir)


def __getattr__(name: str):
    # Submodules load on first use so that `import qjax` does not import JAX.
    if name in _SUBMODULES:
        return importlib.import_module(f"qjax.{name}")
    raise AttributeError(f"module 'qjax' has no attribute {name!r}")
