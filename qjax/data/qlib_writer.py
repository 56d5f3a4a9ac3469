"""Write a qjax panel in Qlib's on-disk binary layout (the inverse of :mod:`qjax.data.qlib_binary`).

It lets the same prices be read by Qlib itself (``qlib.init(provider_uri=root)``) and by qjax,
which is how the parity tests feed both with identical inputs. Layout written::

    calendars/day.txt                     the panel's dates (or ``calendar``), one per line
    instruments/all.txt                   CODE<TAB>first stored date<TAB>last stored date
    instruments/<market>.txt              for each extra market given
    features/<code lower>/<field>.day.bin float32: calendar index of the first stored day, then
                                          one value per calendar day up to the last stored day
                                          (days without a row inside that range are NaN, which
                                          Qlib reads as suspended)

``change`` (what Qlib's exchange uses for limit-up/limit-down) is written when the panel lacks it:
``close / close of the previous calendar day - 1``, NaN after a day without a close, computed in
float32 like the stored prices.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from qjax.data.qlib_binary import instrument_dirname


def write_qlib_binary(
    panel: pd.DataFrame,
    root: str | os.PathLike,
    markets: Mapping[str, Sequence[str]] | None = None,
    calendar: Sequence | None = None,
) -> Path:
    """Write ``panel`` ((datetime, instrument) rows, float columns) under ``root``; return it.

    ``markets`` maps extra universe names to instrument lists; each member's span is its stored
    range, like ``all.txt``. ``calendar`` defaults to the panel's dates.
    """
    if not isinstance(panel.index, pd.MultiIndex) or list(panel.index.names) != [
        "datetime",
        "instrument",
    ]:
        raise ValueError(
            "panel must be indexed by (datetime, instrument), as generate_market returns"
        )
    if "close" not in panel.columns:
        raise ValueError(f"panel needs a 'close' column; it has {list(panel.columns)}")
    dates = panel.index.get_level_values("datetime")
    cal = pd.DatetimeIndex(sorted(set(dates)) if calendar is None else pd.to_datetime(calendar))
    if not dates.isin(cal).all():
        raise ValueError("panel has dates outside the given calendar")
    root = Path(root)
    (root / "calendars").mkdir(parents=True, exist_ok=True)
    (root / "instruments").mkdir(parents=True, exist_ok=True)
    (root / "calendars" / "day.txt").write_text("".join(f"{d:%Y-%m-%d}\n" for d in cal))

    fields = list(panel.columns)
    spans: dict[str, tuple[pd.Timestamp, pd.Timestamp]] = {}
    for code, rows in panel.groupby(level="instrument", sort=True):
        day = cal.get_indexer(rows.index.get_level_values("datetime"))
        first, last = int(day.min()), int(day.max())
        spans[code] = (cal[first], cal[last])
        folder = root / "features" / instrument_dirname(code)
        folder.mkdir(parents=True, exist_ok=True)
        dense = {}
        for field in fields:
            column = np.full(last - first + 1, np.nan, dtype=np.float32)
            column[day - first] = rows[field].to_numpy(np.float32)
            dense[field] = column
        if "change" not in dense:
            close = dense["close"]
            change = np.full_like(close, np.nan)
            change[1:] = close[1:] / close[:-1] - np.float32(1)
            dense["change"] = change
        for field, column in dense.items():
            np.hstack([np.float32(first), column]).astype("<f4").tofile(
                folder / f"{field.lower()}.day.bin"
            )

    def span_lines(codes) -> str:
        return "".join(f"{c}\t{spans[c][0]:%Y-%m-%d}\t{spans[c][1]:%Y-%m-%d}\n" for c in codes)

    (root / "instruments" / "all.txt").write_text(span_lines(sorted(spans)))
    for name, codes in (markets or {}).items():
        unknown = sorted(set(codes) - set(spans))
        if unknown:
            raise ValueError(
                f"market {name!r} lists instruments without rows in the panel: {unknown[:5]}"
            )
        (root / "instruments" / f"{name.lower()}.txt").write_text(span_lines(sorted(codes)))
    return root
