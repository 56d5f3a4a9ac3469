"""Qlib binary layout reader on a tiny directory written to tmp_path (plus the real csi300 data)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from qjax.data.features import load_handler
from qjax.data.qlib_binary import QlibBinaryData, instrument_dirname

CALENDAR = pd.bdate_range("2020-01-01", periods=12)


def _write_bin(path: Path, first_index: int, values) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    np.hstack([[first_index], values]).astype("<f4").tofile(path)


@pytest.fixture
def tiny_dir(tmp_path: Path) -> Path:
    (tmp_path / "calendars").mkdir()
    (tmp_path / "calendars" / "day.txt").write_text(
        "\n".join(d.strftime("%Y-%m-%d") for d in CALENDAR) + "\n"
    )
    (tmp_path / "instruments").mkdir()
    (tmp_path / "instruments" / "mkt.txt").write_text(
        "SH600001\t2020-01-01\t2020-01-07\n"
        "SZ000002\t2020-01-03\t2020-01-08\n"
        "SH600001\t2020-01-13\t2020-01-16\n"  # a second span
    )
    _write_bin(tmp_path / "features/sh600001/close.day.bin", 0, np.arange(1, 13))
    _write_bin(tmp_path / "features/sh600001/volume.day.bin", 0, np.full(12, 100.0))
    _write_bin(
        tmp_path / "features/sz000002/close.day.bin", 2, [5.0, np.nan, 7.0, 8.0, 9.0]
    )  # listed on day 2
    _write_bin(tmp_path / "features/sz000002/volume.day.bin", 2, [1.0, 2, 3, 4, 5])
    return tmp_path


def test_calendar_and_spans(tiny_dir):
    data = QlibBinaryData(tiny_dir)
    assert data.calendar().equals(pd.DatetimeIndex(CALENDAR))
    assert data.markets() == ["mkt"]
    spans = data.instruments("mkt")
    assert list(spans) == ["SH600001", "SZ000002"]
    assert spans["SH600001"] == [
        (pd.Timestamp("2020-01-01"), pd.Timestamp("2020-01-07")),
        (pd.Timestamp("2020-01-13"), pd.Timestamp("2020-01-16")),
    ]
    clipped = data.instruments("mkt", start_time="2020-01-09", end_time="2020-01-14")
    assert clipped == {"SH600001": [(pd.Timestamp("2020-01-13"), pd.Timestamp("2020-01-14"))]}


def test_load_dense_fields(tiny_dir):
    data = QlibBinaryData(tiny_dir)
    panel = data.load(["SH600001", "SZ000002"], ["close", "volume"], 1, 7)
    assert panel.dates.equals(pd.DatetimeIndex(CALENDAR[1:8]))
    close = panel.values["close"]
    assert close.dtype == np.float32 and close.shape == (7, 2)
    np.testing.assert_array_equal(close[:, 0], np.arange(2, 9))
    np.testing.assert_array_equal(close[:, 1], [np.nan, 5, np.nan, 7, 8, 9, np.nan])
    # stored: from the listing day to the last stored day; the NaN on day 3 is a stored (suspended) day
    np.testing.assert_array_equal(
        panel.stored["close"][:, 1], [False, True, True, True, True, True, False]
    )


def test_locate_follows_qlib_calendar_rounding(tiny_dir):
    data = QlibBinaryData(tiny_dir)
    assert data.locate("2020-01-04", "2020-01-11") == (
        3,
        7,
    )  # a weekend start rounds up, end rounds down
    with pytest.raises(ValueError, match="no trading days"):
        data.locate("2021-01-01", None)


def test_missing_directory_and_calendar(tmp_path):
    with pytest.raises(ValueError, match="calendars/day.txt"):
        QlibBinaryData(tmp_path / "nowhere")
    with pytest.raises(ValueError, match="has no calendars/day.txt"):
        QlibBinaryData(tmp_path)


def test_unknown_market_lists_available(tiny_dir):
    with pytest.raises(KeyError, match=r"unknown market 'csi500'.*\['mkt'\]"):
        QlibBinaryData(tiny_dir).instruments("csi500")


def test_missing_field_names_field_and_instrument(tiny_dir):
    data = QlibBinaryData(tiny_dir)
    with pytest.raises(
        KeyError, match=r"'open' is missing for instrument 'SZ000002'.*\['close', 'volume'\]"
    ):
        data.load(["SZ000002"], ["open"], 0, 5)
    optional = data.load(["SZ000002"], ["vwap"], 0, 5, optional=["vwap"])
    assert np.isnan(optional.values["vwap"]).all() and not optional.stored["vwap"].any()
    with pytest.raises(KeyError, match="no feature data for instruments"):
        data.load(["SH999999"], ["close"], 0, 5)


def test_reserved_instrument_names_use_qlib_prefix():
    assert instrument_dirname("SH600000") == "sh600000"
    assert instrument_dirname("CON") == "_qlib_con"


def test_load_handler_rows_follow_spans_and_listing(tiny_dir):
    """Rows are the stored days inside membership spans (no vwap bin: VWAP columns are NaN)."""
    for code, first, _ in (("sh600001", 0, 12), ("sz000002", 2, 5)):
        for field in ("open", "high", "low"):
            close = np.fromfile(tiny_dir / f"features/{code}/close.day.bin", dtype="<f4")[1:]
            _write_bin(tiny_dir / f"features/{code}/{field}.day.bin", first, close)
    df = load_handler("Alpha158", tiny_dir, "mkt", "2020-01-02", "2020-01-14")
    rows = set(df.index)
    expected = {
        (d, "SH600001")
        for d in CALENDAR
        if pd.Timestamp("2020-01-02") <= d <= pd.Timestamp("2020-01-07")
    }
    expected |= {
        (d, "SH600001")
        for d in CALENDAR
        if pd.Timestamp("2020-01-13") <= d <= pd.Timestamp("2020-01-14")
    }
    expected |= {(d, "SZ000002") for d in CALENDAR[2:6]}  # listed on the 3rd, span ends on the 8th
    assert rows == expected
    by_list = load_handler("Alpha360", tiny_dir, ["SZ000002"], None, None)
    assert list(by_list.index.get_level_values("datetime")) == list(CALENDAR[2:7])


@pytest.mark.shared_data
def test_reads_shared_csi300(csi300_dir):
    data = QlibBinaryData(csi300_dir)
    assert "csi300" in data.markets()
    spans = data.instruments("csi300", "2019-07-01", "2019-12-31")
    assert 250 <= len(spans) <= 330
    first, last = data.locate("2019-07-01", "2019-12-31")
    panel = data.load(sorted(spans)[:5], ["close", "volume"], first, last)
    raw = np.fromfile(
        csi300_dir / "features" / sorted(spans)[0].lower() / "close.day.bin", dtype="<f4"
    )
    np.testing.assert_array_equal(
        panel.values["close"][:, 0], raw[1 + first - int(raw[0]) : 2 + last - int(raw[0])]
    )
