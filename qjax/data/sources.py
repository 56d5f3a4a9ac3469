"""Load user OHLCV data into the standard qjax panel format.

The standard panel (also what :func:`qjax.data.market.generate_market` returns) is a DataFrame
indexed by a MultiIndex ``(datetime, instrument)`` sorted by date then instrument, with float32
columns among ``open, high, low, close, volume, vwap, factor``. ``load_ohlcv`` turns a long
table (one row per date x instrument), given as a DataFrame or a CSV/Parquet file, into that
format and rejects input it cannot trust with an error that says how to fix it. Missing values
(NaN) are kept: they mean "not observed" and later stages decide what to do with them.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from qjax.errors import DataError

STANDARD_FIELDS = ("open", "high", "low", "close", "volume", "vwap", "factor")
OPTIONAL_FIELDS = frozenset({"vwap", "factor"})  # loaded when present, never required

_CSV_SUFFIXES = (".csv", ".csv.gz", ".csv.bz2", ".csv.xz", ".csv.zip")
_PARQUET_SUFFIXES = (".parquet", ".pq")


def load_ohlcv(
    source: pd.DataFrame | str | os.PathLike,
    column_map: Mapping[str, str] | None = None,
    date_col: str = "date",
    instrument_col: str = "instrument",
    fields: Sequence[str] = STANDARD_FIELDS,
) -> pd.DataFrame:
    """Read long-format OHLCV data into the standard ``(datetime, instrument)`` panel.

    Args:
        source: a DataFrame, or the path of a ``.csv`` (optionally compressed) or ``.parquet``
            file. Named index levels of a DataFrame are treated as columns.
        column_map: renames applied first, ``{user name: qjax name}``, e.g. ``{"Name":
            "instrument", "Close": "close"}``.
        date_col, instrument_col: the (post-rename) names of the date and instrument columns.
        fields: value columns to load, in output order. ``vwap`` and ``factor`` are loaded only
            when present; every other listed field is required.

    Returns:
        DataFrame indexed by ``(datetime, instrument)`` (datetime64[ns], str; sorted, unique)
        with float32 columns: the listed fields found in the input. Other columns are dropped.

    Raises:
        DataError (a ValueError): empty input, unknown file type, missing columns, unparseable
            dates, missing instruments, non-numeric or infinite field values, duplicated
            (date, instrument).
        FileNotFoundError: ``source`` is a path that does not exist.
    """
    fields = _check_fields(fields)
    if date_col == instrument_col:
        raise DataError(
            f"date_col and instrument_col are both {date_col!r}; they must name two columns"
        )
    frame = _read(source)
    if len(frame) == 0:
        raise DataError("the OHLCV input has no rows; expected one row per (date, instrument)")
    frame = _rename(frame, column_map)

    wanted = [f for f in fields if f in frame.columns or f not in OPTIONAL_FIELDS]
    _require_columns(frame, [date_col, instrument_col, *wanted], column_map)

    dates = _parse_dates(frame[date_col], date_col)
    instruments = _parse_instruments(frame[instrument_col], instrument_col)
    index = pd.MultiIndex.from_arrays([dates, instruments], names=["datetime", "instrument"])
    _reject_duplicates(index, date_col, instrument_col)

    values = {f: _parse_field(frame[f], f) for f in wanted}
    return pd.DataFrame(values, index=index).sort_index()


def _check_fields(fields: Sequence[str]) -> list[str]:
    fields = [fields] if isinstance(fields, str) else list(fields)
    if not fields or not all(isinstance(f, str) for f in fields):
        raise DataError(f"fields must be a non-empty sequence of column names, got {fields!r}")
    if len(set(fields)) != len(fields):
        raise DataError(f"fields lists a column twice: {fields}")
    return fields


def _read(source) -> pd.DataFrame:
    if isinstance(source, pd.DataFrame):
        has_named_index = any(name is not None for name in source.index.names)
        return source.reset_index() if has_named_index else source
    if not isinstance(source, (str, os.PathLike)):
        raise TypeError(f"source must be a DataFrame or a file path, got {type(source).__name__}")
    path = Path(source)
    name = path.name.lower()
    if path.is_dir():
        raise DataError(
            f"data.path {str(path)!r} is a directory; give one .csv or .parquet file "
            "of OHLCV rows (date, instrument, open, high, low, close, volume)"
        )
    if name.endswith(_CSV_SUFFIXES):
        reader, kind = pd.read_csv, "CSV"
    elif name.endswith(_PARQUET_SUFFIXES):
        reader, kind = pd.read_parquet, "Parquet"
    else:
        raise DataError(
            f"unknown file type for {path.name!r}: load_ohlcv reads {', '.join(_CSV_SUFFIXES)} and "
            f"{', '.join(_PARQUET_SUFFIXES)} files; for anything else read it with pandas and pass "
            "the DataFrame"
        )
    if not path.is_file():
        raise FileNotFoundError(f"no such OHLCV file: {path}")
    try:
        return reader(path)
    except (ValueError, OSError) as err:  # empty, truncated or another format (pandas, arrow)
        raise DataError(
            f"cannot read {str(path)!r} as a {kind} file: {str(err).rstrip('.')}. Check that it is "
            f"a complete {kind} file of OHLCV rows with a header"
        ) from err


def _rename(frame: pd.DataFrame, column_map: Mapping[str, str] | None) -> pd.DataFrame:
    if column_map is None:
        return frame
    if not isinstance(column_map, Mapping):
        raise DataError(
            f"column_map must be a dict {{user column: qjax name}}, got {type(column_map).__name__}"
        )
    unknown = [k for k in column_map if k not in frame.columns]
    if unknown:
        raise DataError(
            f"column_map renames columns that are not in the input: {unknown}; "
            f"available columns: {list(frame.columns)}"
        )
    renamed = frame.rename(columns=dict(column_map))
    clashes = renamed.columns[renamed.columns.duplicated()].unique().tolist()
    if clashes:
        raise DataError(
            f"after applying column_map, these column names appear twice: {clashes}; "
            "drop or rename the original columns first"
        )
    return renamed


def _require_columns(frame: pd.DataFrame, required: list[str], column_map) -> None:
    missing = [c for c in required if c not in frame.columns]
    if not missing:
        return
    available = list(frame.columns)
    # Suggest renames for columns that differ only by case (Yahoo-style "Close", "Date", ...).
    by_lower = {str(c).lower(): c for c in available}
    suggestion = {by_lower[m.lower()]: m for m in missing if m.lower() in by_lower}
    unresolved = [m for m in missing if m.lower() not in by_lower]
    hints = []
    if suggestion:
        hints.append(f"pass column_map={ {**(column_map or {}), **suggestion}!r}")
    if unresolved:
        hints.append(
            f"name a column for {unresolved} with column_map={{'<your column>': '<qjax name>'}} "
            "(e.g. {'Name': 'instrument'}), or set date_col= / instrument_col=, or leave an "
            "unavailable field out of fields="
        )
    raise DataError(
        f"OHLCV input is missing required columns {missing}; available columns: "
        f"{available}. To fix, {'; and '.join(hints)}."
    )


def _examples(values: pd.Series, mask: np.ndarray, k: int = 3) -> str:
    rows = values[mask].head(k)
    return ", ".join(f"{v!r} (row {i})" for i, v in rows.items())


def _parse_dates(column: pd.Series, name: str) -> pd.DatetimeIndex:
    if pd.api.types.is_datetime64_any_dtype(column):
        parsed = column
    else:
        parsed = pd.to_datetime(column, errors="coerce")
    bad = (parsed.isna() & column.notna()).to_numpy()
    if bad.any():
        raise DataError(
            f"column {name!r} has {bad.sum()} values that are not dates, e.g. "
            f"{_examples(column, bad)}; fix them or convert the column with "
            "pd.to_datetime(..., format=...) before loading"
        )
    missing = column.isna().to_numpy()
    if missing.any():
        raise DataError(
            f"column {name!r} has {missing.sum()} empty dates; drop those rows before loading"
        )
    dates = pd.DatetimeIndex(parsed)
    if dates.tz is not None:
        dates = dates.tz_localize(None)  # keep the local wall-clock date
    try:
        return dates.astype("datetime64[ns]")
    except (pd.errors.OutOfBoundsDatetime, OverflowError) as err:
        raise DataError(
            f"column {name!r} has dates outside 1677..2262, the range pandas "
            f"timestamps hold ({err}); fix or drop those rows"
        ) from err


def _parse_instruments(column: pd.Series, name: str) -> pd.Index:
    missing = column.isna().to_numpy()
    if missing.any():
        raise DataError(
            f"column {name!r} has {missing.sum()} empty instrument names; drop those rows "
            "before loading"
        )
    return pd.Index(column.astype(str).to_numpy(), dtype=str)


def _reject_duplicates(index: pd.MultiIndex, date_col: str, instrument_col: str) -> None:
    duplicated = index.duplicated(keep=False)
    if duplicated.any():
        examples = ", ".join(f"({d.date()}, {i})" for d, i in index[duplicated].unique()[:3])
        raise DataError(
            f"{duplicated.sum()} rows share a (date, instrument) pair with another row, e.g. "
            f"{examples}; keep one row per pair, e.g. "
            f"frame.drop_duplicates(subset=[{date_col!r}, {instrument_col!r}])"
        )


def _parse_field(column: pd.Series, name: str) -> np.ndarray:
    if pd.api.types.is_numeric_dtype(column):
        numeric = column
    else:
        numeric = pd.to_numeric(column, errors="coerce")
        bad = (numeric.isna() & column.notna()).to_numpy()
        if bad.any():
            raise DataError(
                f"column {name!r} has {bad.sum()} non-numeric values, e.g. "
                f"{_examples(column, bad)}; clean them (or replace them with NaN) before loading"
            )
    with np.errstate(over="ignore"):  # overflow to inf is reported just below
        values = numeric.to_numpy(dtype=np.float32, na_value=np.nan)
    n_inf = int(np.isinf(values).sum())
    if n_inf:
        raise DataError(
            f"column {name!r} has {n_inf} infinite values (or values beyond float32 range); "
            "replace them with NaN or drop those rows before loading"
        )
    return values
