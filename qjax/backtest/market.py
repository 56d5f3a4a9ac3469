"""Dense price arrays for the backtest, from a qjax panel or a Qlib data directory.

Qlib's exchange reads ``$close, $open, $factor, $change, $volume`` per (day, instrument) for the
instruments of its ``codes`` universe (``"all"`` by default), only inside their membership spans.
A day without a close (no row, a stored NaN, outside the spans) is a suspended day: nothing can
be traded and held stocks keep their last price. :class:`MarketData` holds the same facts as
``[T, N]`` float64 arrays over consecutive trading days (float32 values, as stored), so the
simulation indexes arrays instead of querying a quote object.

Row 0 is the trading day *before* the first backtest day: the strategy trades on day ``t`` with
the scores predicted on day ``t - 1`` and the benchmark's first return needs the previous close.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from qjax.data.qlib_binary import QlibBinaryData, instrument_dirname, locate_range

PRICE_FIELDS = ("close", "open", "factor", "change", "volume")


@dataclass(frozen=True)
class MarketData:
    """Daily prices on ``dates`` (row 0 = the day before the backtest) x ``instruments``.

    fields:   name -> float64 [T, N]; NaN where the exchange has no value (not tradable).
    raw_close: float32 [T, N] closes without the universe mask (for benchmark returns, which
              Qlib computes from an instrument's full series).
    members:  bool [T, N], membership of ``universe`` (the equal-weighted benchmark's members).
    """

    dates: pd.DatetimeIndex
    instruments: tuple[str, ...]
    fields: dict[str, np.ndarray]
    raw_close: np.ndarray
    members: np.ndarray
    universe: str

    def column(self, code: str) -> int:
        return self.instruments.index(code)


def market_from_qlib(
    provider_uri: str | os.PathLike,
    start_time,
    end_time,
    codes: str | Sequence[str] = "all",
    universe: str | None = None,
    extra_instruments: Iterable[str] = (),
) -> MarketData:
    """Read the exchange's fields for [start_time, end_time] (plus the days before and after)
    from a Qlib data directory.

    ``codes``: the exchange universe (a market name or a list of codes; Qlib's default
    ``"all"``). ``universe``: the market whose members make the equal-weighted benchmark
    (default: ``codes`` when it is a market name). ``extra_instruments`` (a benchmark code,
    predicted codes) are loaded too; outside ``codes`` they are never tradable.
    """
    data = QlibBinaryData(provider_uri)
    cal = data.calendar()
    first, last = data.locate(start_time, end_time)
    # One day before (the first day trades on its scores) and one after (it bounds the last
    # day's share of a benchmark series, as Qlib's next-bar boundary does).
    first, last = max(first - 1, 0), min(last + 1, len(cal) - 1)
    lo, hi = cal[first], cal[last]
    if isinstance(codes, str):
        code_spans = data.instruments(codes, lo, hi)
    else:
        code_spans = {c: [(lo, hi)] for c in codes}
    universe = universe if universe is not None else (codes if isinstance(codes, str) else None)
    member_spans = data.instruments(universe, lo, hi) if universe is not None else code_spans
    # Sorted codes: Qlib breaks ties among unscored stocks in sorted (Index.union) order.
    instruments = tuple(sorted(set(code_spans) | set(member_spans) | set(extra_instruments)))
    stored = [c for c in instruments if (data.root / "features" / instrument_dirname(c)).is_dir()]
    optional = ("open", "change", "volume", "factor")  # Qlib reads an absent field as NaN
    panel = data.load(stored, PRICE_FIELDS, first, last, optional=optional)
    dates = panel.dates
    where = pd.Index(instruments).get_indexer(stored)

    def widen(a: np.ndarray, fill) -> np.ndarray:  # codes without data: never tradable
        out = np.full((len(dates), len(instruments)), fill, dtype=a.dtype)
        out[:, where] = a
        return out

    in_codes = widen(_span_mask(dates, stored, code_spans), False)
    members = widen(_span_mask(dates, stored, member_spans), False)
    raw_close = widen(panel.values["close"], np.nan)
    fields = {
        f: np.where(in_codes, widen(panel.values[f], np.nan).astype(np.float64), np.nan)
        for f in PRICE_FIELDS
    }
    return MarketData(dates, instruments, fields, raw_close, members, universe or "exchange codes")


def market_from_panel(panel: pd.DataFrame, universe: str = "panel") -> MarketData:
    """Dense arrays from a qjax panel ((datetime, instrument) rows; ``close`` required, ``open``,
    ``factor``, ``volume`` and ``change`` used when present).

    The calendar is the panel's dates; an instrument without a row on a day is suspended that
    day. ``change`` defaults to ``close / close of the previous calendar day - 1`` in float32,
    which is what :func:`qjax.data.qlib_writer.write_qlib_binary` stores for Qlib.
    """
    if not isinstance(panel.index, pd.MultiIndex) or list(panel.index.names) != [
        "datetime",
        "instrument",
    ]:
        raise ValueError("the price panel must be indexed by (datetime, instrument)")
    if "close" not in panel.columns:
        raise ValueError(f"the price panel needs a 'close' column; it has {list(panel.columns)}")
    dates = pd.DatetimeIndex(sorted(set(panel.index.get_level_values("datetime"))), name="datetime")
    instruments = tuple(sorted(set(panel.index.get_level_values("instrument"))))
    row = dates.get_indexer(panel.index.get_level_values("datetime"))
    col = pd.Index(instruments).get_indexer(panel.index.get_level_values("instrument"))
    shape = (len(dates), len(instruments))

    def dense(name: str) -> np.ndarray:
        out = np.full(shape, np.nan, dtype=np.float32)
        if name in panel.columns:
            out[row, col] = panel[name].to_numpy(np.float32)
        return out

    close = dense("close")
    change = dense("change")
    if "change" not in panel.columns:
        change[1:] = close[1:] / close[:-1] - np.float32(1)
    fields = {f: dense(f).astype(np.float64) for f in PRICE_FIELDS if f != "change"}
    fields["change"] = change.astype(np.float64)
    present = np.zeros(shape, dtype=bool)
    present[row, col] = True
    return MarketData(dates, instruments, fields, close, present, universe)


def slice_market(market: MarketData, start_time, end_time) -> MarketData:
    """The rows from the trading day before ``start_time`` to ``end_time``."""
    first, last = locate_range(market.dates, start_time, end_time)
    rows = slice(max(first - 1, 0), last + 1)
    return MarketData(
        market.dates[rows],
        market.instruments,
        {k: v[rows] for k, v in market.fields.items()},
        market.raw_close[rows],
        market.members[rows],
        market.universe,
    )


def _span_mask(dates: pd.DatetimeIndex, codes: Sequence[str], spans: dict) -> np.ndarray:
    mask = np.zeros((len(dates), len(codes)), dtype=bool)
    for j, code in enumerate(codes):
        for begin, end in spans.get(code, ()):
            mask[(dates >= begin) & (dates <= end), j] = True
    return mask
