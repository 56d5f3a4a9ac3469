"""Score new dates with a saved run: data -> features -> fitted processors -> best variables.

The features of the days in [start, end] are computed from the data (history before ``start``
feeds their look-back windows, as in training), passed through the inference processors fitted
on the run's train period (nothing is refitted), and scored by the run's best variables. A
window model also reads the ``step_len - 1`` trading days before ``start``; they are taken from
the data. Labels are not needed: the last day of the data (tomorrow's forecast) is scorable.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pandas as pd

from qjax.errors import DataError

CSV_SUFFIXES = (".csv", ".csv.gz", ".csv.bz2", ".csv.xz", ".csv.zip")
PARQUET_SUFFIXES = (".parquet", ".pq")


def predict(saved: Any, start: Any, end: Any, data: Any = None) -> pd.Series | pd.DataFrame:
    """Scores of the trading days in [start, end] (see :meth:`qjax.saved_run.SavedRun.predict`)."""
    from qjax import workflow
    from qjax.data.dataset import Dataset, TSDataset
    from qjax.data.handler import DataHandler

    cfg = saved.config
    start, end = parse_dates(start, end)
    data_cfg, panel = data_source(cfg["data"], data)
    calendar = trading_days(data_cfg, panel)
    is_ts = cfg["dataset"].get("class", "Dataset") == "TSDataset"
    step_len = workflow.step_len(cfg) if is_ts else 1
    first, last, history = locate(calendar, start, end, step_len)
    frame = workflow.handler_input(
        data_cfg, cfg["handler"]["name"], calendar[history], calendar[last], panel
    )
    handler = DataHandler.from_fitted(frame, saved.processors["infer"], saved.processors["shared"])
    segment = {"test": (calendar[first], calendar[last])}
    storage = cfg["dataset"].get("storage_dtype", "float32")  # the features as the run stored them
    dataset = (
        TSDataset(handler, segment, step_len=step_len, storage_dtype=storage)
        if is_ts
        else Dataset(handler, segment, storage_dtype=storage)
    )
    return saved.estimator.predict(dataset, "test")


def parse_dates(start: Any, end: Any) -> tuple[pd.Timestamp, pd.Timestamp]:
    days = []
    for name, value in (("start", start), ("end", end)):
        try:
            day = pd.Timestamp(value)
        except (TypeError, ValueError):
            day = pd.NaT
        if day is pd.NaT:
            raise DataError(f"--{name} {value!r} is not a date; use YYYY-MM-DD")
        days.append(day)
    if days[0] > days[1]:
        raise DataError(f"--start {days[0].date()} is after --end {days[1].date()}; swap them")
    return days[0], days[1]


def data_source(run_data: Mapping[str, Any], data: Any) -> tuple[dict, pd.DataFrame | None]:
    """The data section to read and, for anything but Qlib data, the OHLCV panel.

    ``data``: None (the run's own data), a Qlib data directory, a CSV/Parquet file (read with
    the run's column settings when the run read one too), or an OHLCV DataFrame."""
    from qjax.data.sources import load_ohlcv
    from qjax.workflow import load_market

    run_source = run_data.get("source", "generated")
    if data is None:
        data_cfg = dict(run_data)
    elif isinstance(data, pd.DataFrame):
        names = tuple(data.index.names)
        panel = data if names == ("datetime", "instrument") else load_ohlcv(data)
        return {"source": "dataframe"}, panel
    elif isinstance(data, (str, os.PathLike)):
        data_cfg = _path_source(Path(os.fspath(data)), run_data, run_source)
    else:
        raise DataError(
            f"data must be None (the run's own data), a path or an OHLCV DataFrame, "
            f"got {type(data).__name__}"
        )
    if data_cfg.get("source") == "qlib":
        return data_cfg, None
    return data_cfg, load_market(data_cfg)


def _path_source(path: Path, run_data: Mapping[str, Any], run_source: str) -> dict:
    if not path.exists():
        raise DataError(
            f"--data {str(path)!r} does not exist; give a Qlib data directory or a "
            "CSV/Parquet file of daily bars"
        )
    if path.is_dir():
        if not (path / "calendars" / "day.txt").is_file():
            raise DataError(
                f"--data {str(path)!r} is a directory without calendars/day.txt, so "
                "not a Qlib data directory; give one, or a CSV/Parquet file"
            )
        instruments = run_data.get("instruments", "csi300") if run_source == "qlib" else "all"
        return {"source": "qlib", "provider_uri": str(path), "instruments": instruments}
    name = path.name.lower()
    source = (
        "csv"
        if name.endswith(CSV_SUFFIXES)
        else "parquet"
        if name.endswith(PARQUET_SUFFIXES)
        else None
    )
    if source is None:
        raise DataError(
            f"--data {str(path)!r}: unknown file type; give a .csv or .parquet file "
            "of daily bars, or a Qlib data directory"
        )
    cfg = {"source": source, "path": str(path)}
    if run_source in ("csv", "parquet"):  # the same layout as the run's file
        cfg.update(
            {k: run_data[k] for k in ("column_map", "date_col", "instrument_col") if k in run_data}
        )
    return cfg


def trading_days(data_cfg: Mapping[str, Any], panel: pd.DataFrame | None) -> pd.DatetimeIndex:
    """The data's trading days: Qlib's calendar file, or the dates present in the panel."""
    if panel is None:
        from qjax.data.qlib_binary import QlibBinaryData

        return QlibBinaryData(data_cfg["provider_uri"]).calendar()
    return pd.DatetimeIndex(panel.index.get_level_values("datetime").unique()).sort_values()


def locate(
    calendar: pd.DatetimeIndex, start: pd.Timestamp, end: pd.Timestamp, step_len: int
) -> tuple[int, int, int]:
    """Calendar positions of the first and last day to score and of the first day to read
    (``step_len`` days before the first when the data has them; Qlib's TSDatasetH reads one
    more than a window needs). Raises when the dates are outside the data or lack history."""
    span = f"the data covers {calendar[0].date()}..{calendar[-1].date()}"
    if start < calendar[0] or end > calendar[-1]:
        raise DataError(
            f"--start {start.date()} --end {end.date()} reach outside the data: {span}. Choose "
            "dates inside it, or pass --data with data that covers them"
        )
    first = int(calendar.searchsorted(start, side="left"))
    last = int(calendar.searchsorted(end, side="right")) - 1
    if first > last:
        raise DataError(
            f"no trading day between --start {start.date()} and --end "
            f"{end.date()} ({span}); widen the dates"
        )
    need = step_len - 1  # days a window reaches back before its own day
    if first < need:
        raise DataError(
            f"the model reads windows of step_len={step_len} trading days, so --start "
            f"{start.date()} needs {need} trading days of data before it, and the data has "
            f"{first} ({span}). Use --start {calendar[need].date()} or later, or data that "
            "starts earlier"
        )
    return first, last, max(0, first - step_len)
