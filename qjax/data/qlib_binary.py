"""Read Qlib's on-disk binary data layout directly (no qlib import).

Layout under ``provider_uri`` (what ``qlib.init(provider_uri=...)`` expects, daily frequency)::

    calendars/day.txt                   one trading date per line, ascending
    instruments/<market>.txt            "CODE<TAB>start<TAB>end" membership spans; a code may
                                        appear on several lines (several spans)
    features/<code lower>/<field>.day.bin
                                        little-endian float32: the first float is the calendar
                                        index of the first value, then one value per calendar
                                        day, contiguous (a suspended day is a NaN value)

:class:`QlibBinaryData` turns that into dense ``[days x instruments]`` float32 arrays with one
vectorised read per (instrument, field) file. Days outside a file's stored range are NaN and
marked "not stored": Qlib's series for that instrument simply do not contain them, which matters
for rolling windows (they are truncated, not NaN-padded) and for which rows exist at all.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

_LAYOUT_HINT = (
    "expected Qlib's binary layout: <dir>/calendars/day.txt, <dir>/instruments/<market>.txt and "
    "<dir>/features/<instrument lower-case>/<field>.day.bin"
)
# Windows device names that Qlib stores under a "_qlib_" prefix (qlib.utils.code_to_fname).
_RESERVED_NAMES = frozenset(
    ["CON", "PRN", "AUX", "NUL"] + [f"COM{i}" for i in range(10)] + [f"LPT{i}" for i in range(10)]
)

Span = tuple[pd.Timestamp, pd.Timestamp]


def instrument_dirname(code: str) -> str:
    """Directory name of an instrument under ``features/`` (lower-case, Qlib's reserved-name prefix)."""
    if code.upper() in _RESERVED_NAMES:
        code = "_qlib_" + code
    return code.lower()


@dataclass(frozen=True)
class FieldPanel:
    """Dense per-field arrays over consecutive calendar days.

    dates:       [T] calendar days (rows).
    instruments: [N] instrument codes (columns), as given to the loader.
    values:      field -> float32 [T, N]; NaN where not stored or stored as NaN.
    stored:      field -> bool [T, N]; True inside the instrument's stored range of that field
                 (a stored NaN is a suspended day and still counts as a row).
    """

    dates: pd.DatetimeIndex
    instruments: tuple[str, ...]
    values: dict[str, np.ndarray]
    stored: dict[str, np.ndarray]


class QlibBinaryData:
    """Daily data in Qlib's binary layout rooted at ``provider_uri``."""

    def __init__(self, provider_uri: str | os.PathLike, freq: str = "day"):
        root = Path(provider_uri).expanduser()
        if not root.is_dir():
            raise ValueError(f"Qlib data directory {str(root)!r} does not exist; {_LAYOUT_HINT}")
        calendar_file = root / "calendars" / f"{freq}.txt"
        if not calendar_file.is_file():
            raise ValueError(f"{str(root)!r} has no calendars/{freq}.txt; {_LAYOUT_HINT}")
        self.root = root
        self.freq = freq
        self._calendar_file = calendar_file
        self._calendar: pd.DatetimeIndex | None = None

    # ----------------------------------------------------------------------------- calendar
    def calendar(self) -> pd.DatetimeIndex:
        """All trading days, ascending (read once)."""
        if self._calendar is None:
            lines = [s for s in self._calendar_file.read_text().split() if s]
            if not lines:
                raise ValueError(
                    f"{self._calendar_file} is empty; it must list one trading date per line"
                )
            self._calendar = pd.DatetimeIndex(pd.to_datetime(lines), name="datetime")
        return self._calendar

    def locate(self, start_time=None, end_time=None) -> tuple[int, int]:
        """Calendar row range [first, last] of trading days within [start_time, end_time] (inclusive)."""
        cal = self.calendar()
        return locate_range(cal, start_time, end_time)

    # ----------------------------------------------------------------------------- instruments
    def markets(self) -> list[str]:
        """Names of the instrument universes (``instruments/*.txt``)."""
        return sorted(p.stem for p in (self.root / "instruments").glob("*.txt"))

    def instruments(self, market: str, start_time=None, end_time=None) -> dict[str, list[Span]]:
        """Membership spans of ``market``, clipped to [start_time, end_time] like Qlib's
        ``list_instruments`` (empty spans and instruments without any span are dropped).
        Keys are sorted instrument codes as written in the file."""
        path = self.root / "instruments" / f"{market.lower()}.txt"
        if not path.is_file():
            raise KeyError(
                f"unknown market {market!r}: no {path.name} under {self.root / 'instruments'}; "
                f"available markets: {self.markets()}"
            )
        cal = self.calendar()
        lo = pd.Timestamp(start_time) if start_time is not None else cal[0]
        hi = pd.Timestamp(end_time) if end_time is not None else cal[-1]
        spans: dict[str, list[Span]] = {}
        for line_no, line in enumerate(path.read_text().splitlines(), 1):
            if not line.strip():
                continue
            parts = line.split("\t")
            if len(parts) < 3:
                raise ValueError(
                    f"{path}:{line_no}: expected 'CODE<TAB>start<TAB>end', got {line!r}"
                )
            begin, end = max(lo, pd.Timestamp(parts[1])), min(hi, pd.Timestamp(parts[2]))
            spans.setdefault(parts[0], [])
            if begin <= end:
                spans[parts[0]].append((begin, end))
        return {code: s for code, s in sorted(spans.items()) if s}

    def fields(self, instrument: str) -> list[str]:
        """Fields stored for ``instrument`` (names of its ``*.day.bin`` files)."""
        suffix = f".{self.freq}.bin"
        folder = self.root / "features" / instrument_dirname(instrument)
        return sorted(p.name[: -len(suffix)] for p in folder.glob(f"*{suffix}"))

    # ----------------------------------------------------------------------------- features
    def load(
        self,
        instruments: Sequence[str],
        fields: Sequence[str],
        first_row: int,
        last_row: int,
        optional: Iterable[str] = (),
    ) -> FieldPanel:
        """Dense arrays of ``fields`` over calendar rows [first_row, last_row] (clipped to the calendar).

        A missing ``<field>.day.bin`` raises ``KeyError`` unless the field is in ``optional``:
        then it is all-NaN and not stored, which is what Qlib does for any absent field (e.g.
        ``$vwap`` on data without a vwap bin evaluates to NaN for every row).
        """
        n_cal = len(self.calendar())
        first_row, last_row = max(first_row, 0), min(last_row, n_cal - 1)
        if first_row > last_row:
            raise ValueError(
                f"empty calendar row range [{first_row}, {last_row}] (calendar has {n_cal} days)"
            )
        optional = set(optional)
        instruments = tuple(instruments)
        missing_dirs = [
            c for c in instruments if not (self.root / "features" / instrument_dirname(c)).is_dir()
        ]
        if missing_dirs:
            raise KeyError(
                f"no feature data for instruments {missing_dirs[:10]}{' ...' if len(missing_dirs) > 10 else ''} "
                f"(expected folders features/<code lower-case>/ under {self.root})"
            )
        n_rows = last_row - first_row + 1
        values, stored = {}, {}
        for field in fields:
            arr = np.full((n_rows, len(instruments)), np.nan, dtype=np.float32)
            have = np.zeros((n_rows, len(instruments)), dtype=bool)
            for j, code in enumerate(instruments):
                path = (
                    self.root
                    / "features"
                    / instrument_dirname(code)
                    / f"{field.lower()}.{self.freq}.bin"
                )
                try:
                    lo, hi = _read_bin_slice(path, first_row, last_row, arr[:, j])
                except FileNotFoundError:
                    if field in optional:
                        continue
                    raise KeyError(
                        f"field {field!r} is missing for instrument {code!r} ({path} not found); "
                        f"stored fields: {self.fields(code)}"
                    ) from None
                have[lo:hi, j] = True
            values[field], stored[field] = arr, have
        dates = self.calendar()[first_row : last_row + 1]
        return FieldPanel(dates=dates, instruments=instruments, values=values, stored=stored)


def _read_bin_slice(path: Path, first_row: int, last_row: int, out: np.ndarray) -> tuple[int, int]:
    """Copy the part of one ``.bin`` file that overlaps calendar rows [first_row, last_row] into
    ``out`` (a column of length last_row - first_row + 1); return the filled [lo, hi) range."""
    with open(path, "rb") as fh:
        header = fh.read(4)
        if len(header) < 4:
            return 0, 0  # an empty file stores nothing
        file_start = int(np.frombuffer(header, dtype="<f4")[0])
        n_stored = os.fstat(fh.fileno()).st_size // 4 - 1
        begin = max(first_row, file_start)
        end = min(last_row, file_start + n_stored - 1)
        if begin > end:
            return 0, 0
        fh.seek(4 * (begin - file_start + 1))
        out[begin - first_row : end - first_row + 1] = np.frombuffer(
            fh.read(4 * (end - begin + 1)), dtype="<f4"
        )
    return begin - first_row, end - first_row + 1


def locate_range(calendar: pd.DatetimeIndex, start_time=None, end_time=None) -> tuple[int, int]:
    """Rows [first, last] of ``calendar`` within [start_time, end_time] (None = open end), like
    Qlib's ``Cal.locate_index``: the first day on/after start and the last day on/before end."""
    first = (
        0
        if start_time is None
        else int(calendar.searchsorted(pd.Timestamp(start_time), side="left"))
    )
    last = len(calendar) - 1
    if end_time is not None:
        last = int(calendar.searchsorted(pd.Timestamp(end_time), side="right")) - 1
    if first > last:
        raise ValueError(
            f"no trading days between start_time={start_time} and end_time={end_time}; "
            f"the calendar covers {calendar[0].date()} .. {calendar[-1].date()}"
        )
    return first, last
