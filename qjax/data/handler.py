"""``DataHandler``: Qlib's ``DataHandlerLP`` over an in-memory frame.

The input is the raw frame (two-level columns ``("feature", name)``, ``("label", name)``,
index ``(datetime, instrument)``), e.g. from ``qjax.data.features.handler_frame``. At
construction the handler fits its processors in sequence (Qlib's ``init_type="fit_seq"``:
each processor fits on the previous one's output) and builds three frames:

* ``raw``   : the validated input (sorted by index);
* ``infer`` : raw -> shared -> infer processors;
* ``learn`` : ``process_type="append"``      : infer -> learn processors,
              ``process_type="independent"`` : raw -> shared -> learn processors.

``fetch`` reproduces Qlib's selection rules (``col_set`` "__all" drops the group level,
"__raw" keeps it, a group name gives that group's single-level columns, a list of group names
keeps two levels; date slices include both ends). qjax processors never write to their input,
so the frames share unchanged column blocks instead of being copied; a foreign processor
(e.g. a Qlib instance) that is not ``readonly()`` gets a private copy first, as in Qlib.
What ``fetch`` returns is the caller's to write to: under pandas' copy-on-write (always on from
pandas 3) that costs nothing; without it (pandas 2 by default) ``fetch`` returns a copy.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import pandas as pd

from qjax.data.processors import Processor, build_processor
from qjax.errors import DataError

__all__ = ["DataHandler"]

INDEX_NAMES = ("datetime", "instrument")


def _validated(data: pd.DataFrame) -> pd.DataFrame:
    """Check the raw frame's layout; return it sorted by index (the input is never modified)."""
    if not isinstance(data, pd.DataFrame):
        raise TypeError(f"DataHandler needs a pandas DataFrame, got {type(data).__name__}")
    if data.shape[0] == 0 or data.shape[1] == 0:
        raise DataError(
            f"DataHandler got an empty frame (shape {data.shape}); load some data first"
        )
    columns = data.columns
    if not isinstance(columns, pd.MultiIndex) or columns.nlevels != 2:
        raise DataError(
            "DataHandler needs two-level columns ('feature', name) / ('label', name); got "
            f"{columns.nlevels}-level columns {list(columns[:3])}..."
        )
    groups = list(dict.fromkeys(columns.get_level_values(0)))
    if "feature" not in groups:
        raise DataError(
            f"DataHandler needs a 'feature' column group; the frame has groups {groups}"
        )
    index = data.index
    if not isinstance(index, pd.MultiIndex) or tuple(index.names) != INDEX_NAMES:
        fix = (
            "swap them with df.swaplevel().sort_index()"
            if tuple(index.names) == INDEX_NAMES[::-1]
            else "set them with df.rename_axis(['datetime', 'instrument'])"
        )
        raise DataError(
            f"DataHandler needs an index named {INDEX_NAMES}, got {tuple(index.names)}; {fix}"
        )
    if not pd.api.types.is_datetime64_any_dtype(index.levels[0].dtype):
        raise DataError(
            f"the 'datetime' index level has dtype {index.levels[0].dtype}, not datetime64; "
            "convert it with pd.to_datetime"
        )
    non_numeric = [
        col for col, dtype in data.dtypes.items() if not pd.api.types.is_numeric_dtype(dtype)
    ]
    if non_numeric:
        raise DataError(f"DataHandler needs numeric columns; these are not: {non_numeric[:10]}")
    if not index.is_monotonic_increasing:
        data = data.sort_index()
    duplicated = data.index.duplicated()
    if duplicated.any():
        example = data.index[duplicated.argmax()]
        raise DataError(
            f"the frame has {int(duplicated.sum())} duplicated (datetime, instrument) rows, e.g. {example}; "
            "drop them with df[~df.index.duplicated()]"
        )
    return data


def _run(df: pd.DataFrame, processors: Sequence[Processor], fit: bool = True) -> pd.DataFrame:
    """Fit each processor on the previous one's output, then apply it (Qlib's fit_seq);
    ``fit=False`` applies processors fitted before (scoring new dates)."""
    if not all(proc.readonly() for proc in processors):
        df = df.copy()  # a foreign processor may write in place; keep the upstream frame intact
    for proc in processors:
        if fit:
            proc.fit(df)
        out = proc(df)
        if not isinstance(out, pd.DataFrame):
            raise TypeError(f"processor {proc!r} returned {type(out).__name__}, not a DataFrame")
        df = out
    return df


class DataHandler:
    """Raw / infer / learn frames built from an in-memory raw frame and Qlib-style processors.

    Processor specs are instances, class names or ``{"class": ..., "kwargs": ...}`` dicts
    (see ``build_processor``); ``fit_start_time``/``fit_end_time`` are injected into every
    processor class that takes them (Qlib's contrib handlers do the same).
    """

    CS_ALL = "__all"
    CS_RAW = "__raw"
    DK_R = "raw"
    DK_I = "infer"
    DK_L = "learn"
    PTYPE_A = "append"
    PTYPE_I = "independent"

    def __init__(
        self,
        data: pd.DataFrame,
        infer_processors: Sequence[Any] = (),
        learn_processors: Sequence[Any] = (),
        process_type: str = PTYPE_A,
        fit_start_time: Any = None,
        fit_end_time: Any = None,
        *,
        shared_processors: Sequence[Any] = (),
    ):
        if process_type not in (self.PTYPE_A, self.PTYPE_I):
            raise DataError(
                f"process_type={process_type!r} must be {self.PTYPE_A!r} or {self.PTYPE_I!r}"
            )
        self.process_type = process_type
        self.fit_start_time = fit_start_time
        self.fit_end_time = fit_end_time

        def build(specs: Sequence[Any], kind: str) -> list[Processor]:
            if specs is None:  # an empty YAML entry ("infer_processors:")
                specs = ()
            if isinstance(specs, (str, Mapping)) or not isinstance(specs, Sequence):
                raise DataError(
                    f"{kind} must be a list of processors, e.g. [{{class: Fillna, kwargs: "
                    f"{{fields_group: feature}}}}], got {specs!r}; put a single one in a list"
                )
            procs = [build_processor(spec, fit_start_time, fit_end_time) for spec in specs]
            for proc in procs:
                if kind != "learn_processors" and not proc.is_for_infer():
                    raise DataError(
                        f"{type(proc).__name__} is not usable for inference, so it cannot be one of the "
                        f"{kind}; move it to learn_processors"
                    )
            return procs

        self.shared_processors = build(shared_processors, "shared_processors")
        self.infer_processors = build(infer_processors, "infer_processors")
        self.learn_processors = build(learn_processors, "learn_processors")

        raw = _validated(data)
        shared = _run(raw, self.shared_processors)
        infer = _run(shared, self.infer_processors)
        learn = _run(infer if process_type == self.PTYPE_A else shared, self.learn_processors)
        self._frames = {self.DK_R: raw, self.DK_I: infer, self.DK_L: learn}

    @classmethod
    def from_fitted(
        cls,
        data: pd.DataFrame,
        infer_processors: Sequence[Processor],
        shared_processors: Sequence[Processor] = (),
    ) -> DataHandler:
        """A handler for inference only: ``data`` through processors fitted before (e.g. on a
        run's train period, restored by :mod:`qjax.saved_run`), nothing refitted. It has the
        "raw" and "infer" data keys; there is no "learn" data (no labels are needed)."""
        handler = cls.__new__(cls)
        handler.process_type = cls.PTYPE_A
        handler.fit_start_time = handler.fit_end_time = None
        handler.shared_processors = list(shared_processors)
        handler.infer_processors = list(infer_processors)
        handler.learn_processors = []
        raw = _validated(data)
        shared = _run(raw, handler.shared_processors, fit=False)
        handler._frames = {
            cls.DK_R: raw,
            cls.DK_I: _run(shared, handler.infer_processors, fit=False),
        }
        return handler

    def fetch(
        self,
        selector: Any = slice(None, None),
        level: str | int | None = "datetime",
        col_set: str | list[str] = CS_ALL,
        data_key: str = DK_I,
    ) -> pd.DataFrame:
        """Rows matching ``selector`` on index ``level`` and the columns of ``col_set``.

        ``selector``: a slice (both ends inclusive, partial date strings allowed), a timestamp,
        a 2- or 3-element list/tuple (taken as a slice, as in Qlib), or a ``pd.Index`` of labels;
        with ``level=None`` it goes to ``df.loc`` unchanged. ``col_set``: "__all" (single-level
        columns, group level dropped), "__raw" (two-level), a group name (that group,
        single-level), or a list of group names (two-level, in list order). ``data_key``:
        "raw", "infer" or "learn" (``DK_R``/``DK_I``/``DK_L``).
        """
        if data_key not in self._frames:
            raise KeyError(f"data_key={data_key!r} is not one of {list(self._frames)}")
        selected = _select_rows(_select_columns(self._frames[data_key], col_set), selector, level)
        # Without copy-on-write a selection can be a view: a write would reach the handler.
        return selected if copy_on_write() else selected.copy()


def copy_on_write() -> bool:
    """Whether pandas copies shared data before a write (always from pandas 3; an option in 2)."""
    return int(pd.__version__.split(".")[0]) >= 3 or pd.options.mode.copy_on_write is True


def _select_columns(df: pd.DataFrame, col_set: str | list[str]) -> pd.DataFrame:
    if isinstance(col_set, str) and col_set == DataHandler.CS_RAW:
        return df.copy(deep=False)
    if isinstance(col_set, str) and col_set == DataHandler.CS_ALL:
        return df.droplevel(0, axis=1)
    groups = list(dict.fromkeys(df.columns.get_level_values(0)))
    wanted = [col_set] if isinstance(col_set, str) else list(col_set)
    absent = [g for g in wanted if g not in groups]
    if absent:
        raise KeyError(
            f"col_set {absent} not among the column groups {groups} "
            f"(or {DataHandler.CS_ALL!r} / {DataHandler.CS_RAW!r})"
        )
    return df.loc[:, col_set]


def _select_rows(df: pd.DataFrame, selector: Any, level: str | int | None) -> pd.DataFrame:
    if isinstance(selector, (tuple, list)) and level is not None:
        if not 1 <= len(selector) <= 3:
            raise DataError(
                f"a list/tuple selector is read as slice(*selector) and needs 1-3 items, got {len(selector)}; "
                "pass a pd.Index to select a set of labels"
            )
        selector = slice(*selector)
    if level is None or isinstance(selector, pd.MultiIndex):
        return df.loc[selector]
    if isinstance(level, str):
        if level not in df.index.names:
            raise KeyError(
                f"level={level!r} is not an index level; use one of {list(df.index.names)}"
            )
        level = df.index.names.index(level)
    elif level not in (0, 1):
        raise DataError(f"level={level!r} must be 'datetime', 'instrument', 0, 1 or None")
    everything = slice(None, None)
    if isinstance(selector, slice) and selector == everything:
        return df.copy(deep=False)
    key = (selector, everything) if level == 0 else (everything, selector)
    try:
        return df.loc[pd.IndexSlice[key], :]
    except KeyError as err:
        raise KeyError(
            f"selector {selector!r} matches no {df.index.names[level]} in the data"
        ) from err
