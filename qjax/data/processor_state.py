"""A fitted processor as data: JSON-able settings plus a dict of arrays, and back.

A run saves its handler's inference processors this way so that new dates can be scored with
the statistics fitted on the train period, without refitting (:mod:`qjax.saved_run`). Only
qjax's own processor classes (:data:`~qjax.data.processors.PROCESSORS`) can be saved: their
whole state is the constructor's arguments plus, for the fit-window norms, the fitted columns
and the shift/scale arrays. A foreign processor's state is unknown, so it is refused.
"""

from __future__ import annotations

import inspect
from typing import Any

import numpy as np
import pandas as pd

from qjax.data.processors import PROCESSORS, Processor, _FittedNorm

ARRAYS = ("shift", "scale")  # the fitted arrays of a fit-window norm


class UnsavableProcessorError(ValueError):
    """A processor whose fitted state qjax cannot write (not one of qjax's classes)."""


def export_processor(proc: Processor) -> tuple[dict, dict[str, np.ndarray]]:
    """``(settings, arrays)`` of a fitted processor; :func:`import_processor` inverts it."""
    cls = type(proc)
    if PROCESSORS.get(cls.__name__) is not cls:
        raise UnsavableProcessorError(
            f"processor {cls.__module__}.{cls.__name__} is not one of qjax's processors, so its "
            f"fitted state cannot be saved; use qjax's {sorted(PROCESSORS)}"
        )
    params = {name: _plain(getattr(proc, name)) for name in inspect.signature(cls).parameters}
    settings: dict[str, Any] = {"class": cls.__name__, "kwargs": params}
    if not isinstance(proc, _FittedNorm):
        return settings, {}
    if proc._shift is None:
        raise UnsavableProcessorError(
            f"{cls.__name__} has not been fitted, so there is nothing to save"
        )
    settings["columns"] = [[_plain(part) for part in col] for col in proc.cols]
    return settings, {"shift": np.asarray(proc._shift), "scale": np.asarray(proc._scale)}


def import_processor(settings: dict, arrays: dict[str, Any]) -> Processor:
    """The fitted processor that :func:`export_processor` described (no fit needed)."""
    cls = PROCESSORS[settings["class"]]  # a KeyError names an unknown class
    proc = cls(**settings["kwargs"])
    if isinstance(proc, _FittedNorm):
        columns = [tuple(col) for col in settings["columns"]]
        proc.cols = pd.MultiIndex.from_tuples(columns)
        shift, scale = (np.asarray(arrays[name]) for name in ARRAYS)
        if shift.shape != (len(columns),) or scale.shape != (len(columns),):
            raise ValueError(
                f"{settings['class']}: {len(columns)} columns but shift {shift.shape} and scale "
                f"{scale.shape}"
            )
        proc._shift, proc._scale = shift, scale
    return proc


def _plain(value: Any) -> Any:
    """A constructor argument as JSON data (dates as ISO strings, tuples as lists)."""
    if isinstance(value, (pd.Timestamp, np.datetime64)):
        return str(pd.Timestamp(value))
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value
