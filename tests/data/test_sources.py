"""load_ohlcv: round trips through files, the shared S&P 500 file, and helpful errors."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from qjax.data.market import generate_market
from qjax.data.sources import load_ohlcv


@pytest.fixture(scope="module")
def panel() -> pd.DataFrame:
    return generate_market(n_instruments=8, n_days=40, seed=5)


def _long(panel: pd.DataFrame) -> pd.DataFrame:
    """The panel as a user's long table: shuffled rows, 'date' column, an extra column."""
    long = panel.reset_index().rename(columns={"datetime": "date"})
    long["sector"] = "tech"
    return long.sample(frac=1.0, random_state=0).reset_index(drop=True)


@pytest.fixture
def ohlc() -> pd.DataFrame:
    return pd.DataFrame(
        {
            "date": ["2020-01-02", "2020-01-02", "2020-01-03"],
            "instrument": ["AAA", "BBB", "AAA"],
            "open": [1.0, 2.0, 3.0],
            "high": [1.5, 2.5, 3.5],
            "low": [0.5, 1.5, 2.5],
            "close": [1.2, 2.2, 3.2],
            "volume": [100, 200, 300],
        }
    )


@pytest.mark.parametrize("suffix", [".csv", ".parquet", ".csv.gz"])
def test_round_trip_through_files(panel, tmp_path, suffix):
    path = tmp_path / f"prices{suffix}"
    long = _long(panel)
    if suffix == ".parquet":
        long.to_parquet(path)
    else:
        long.to_csv(path, index=False)
    loaded = load_ohlcv(path)
    pd.testing.assert_frame_equal(loaded, panel, check_index_type=False, rtol=1e-6)
    assert loaded.index.names == ["datetime", "instrument"]
    assert loaded.dtypes.eq(np.float32).all()
    assert loaded.index.get_level_values("datetime").dtype == "datetime64[ns]"


def test_dataframe_in_panel_format_is_accepted(panel):
    loaded = load_ohlcv(panel, date_col="datetime")
    pd.testing.assert_frame_equal(loaded, panel, check_index_type=False)


def test_column_map_optional_fields_and_nan(ohlc):
    user = ohlc.rename(columns={"instrument": "Name", "close": "Close"})
    user.loc[1, "open"] = np.nan
    loaded = load_ohlcv(user, column_map={"Name": "instrument", "Close": "close"})
    assert list(loaded.columns) == ["open", "high", "low", "close", "volume"]  # no vwap/factor
    assert np.isnan(loaded.loc[(pd.Timestamp("2020-01-02"), "BBB"), "open"])  # NaN is kept
    assert loaded.loc[(pd.Timestamp("2020-01-03"), "AAA"), "close"] == np.float32(3.2)
    assert list(load_ohlcv(ohlc, fields=("close",)).columns) == ["close"]


@pytest.mark.shared_data
def test_shared_sp500_parquet_loads(shared_data):
    path = shared_data / "sp500_5yr.parquet"
    if not path.is_file():
        pytest.skip("sp500_5yr.parquet not in the shared data")
    loaded = load_ohlcv(path, instrument_col="Name")
    assert loaded.index.get_level_values("instrument").nunique() == 505
    assert list(loaded.columns) == ["open", "high", "low", "close", "volume"]
    assert loaded.index.is_monotonic_increasing and loaded.index.is_unique
    assert loaded.dtypes.eq(np.float32).all()
    via_map = load_ohlcv(path, column_map={"Name": "instrument"}, fields=("close",))
    np.testing.assert_array_equal(via_map["close"].to_numpy(), loaded["close"].to_numpy())


def test_missing_columns_name_them_and_the_fix(ohlc):
    with pytest.raises(ValueError) as err:
        load_ohlcv(ohlc.drop(columns=["volume"]).rename(columns={"instrument": "Name"}))
    message = str(err.value)
    assert "['instrument', 'volume']" in message
    assert "available columns" in message and "'Name'" in message and "column_map" in message

    with pytest.raises(ValueError, match=r"column_map=\{'Close': 'close'\}"):
        load_ohlcv(ohlc.rename(columns={"close": "Close"}))  # case-only mismatch gets a suggestion


def test_non_numeric_field_values(ohlc):
    ohlc["close"] = ohlc["close"].astype(object)
    ohlc.loc[2, "close"] = "n/a"
    with pytest.raises(
        ValueError, match=r"column 'close' has 1 non-numeric values, e.g. 'n/a' \(row 2\)"
    ):
        load_ohlcv(ohlc)


def test_numeric_strings_are_parsed(ohlc):
    ohlc["volume"] = ohlc["volume"].astype(str)
    assert load_ohlcv(ohlc)["volume"].tolist() == [100.0, 200.0, 300.0]


def test_unparseable_dates(ohlc):
    ohlc.loc[1, "date"] = "yesterday"
    with pytest.raises(
        ValueError, match=r"column 'date' has 1 values that are not dates, e.g. 'yesterday'"
    ):
        load_ohlcv(ohlc)


def test_duplicated_rows(ohlc):
    doubled = pd.concat([ohlc, ohlc.iloc[[0]]], ignore_index=True)
    with pytest.raises(
        ValueError,
        match=r"2 rows share a \(date, instrument\) pair.*\(2020-01-02, AAA\)"
        r".*drop_duplicates",
    ):
        load_ohlcv(doubled)


def test_empty_input(ohlc):
    with pytest.raises(ValueError, match="no rows"):
        load_ohlcv(ohlc.iloc[:0])


def test_unknown_file_type(tmp_path, ohlc):
    path = tmp_path / "prices.xlsx"
    path.write_bytes(b"")
    with pytest.raises(
        ValueError, match=r"unknown file type for 'prices.xlsx'.*pass the DataFrame"
    ):
        load_ohlcv(path)
    with pytest.raises(FileNotFoundError, match="no such OHLCV file"):
        load_ohlcv(tmp_path / "absent.csv")
    with pytest.raises(TypeError, match="DataFrame or a file path"):
        load_ohlcv(ohlc.to_numpy())


def test_infinite_values(ohlc):
    ohlc.loc[[0, 2], "high"] = np.inf
    with pytest.raises(ValueError, match="column 'high' has 2 infinite values"):
        load_ohlcv(ohlc)
    ohlc.loc[[0, 2], "high"] = 1e300  # beyond float32
    with pytest.raises(ValueError, match="column 'high' has 2 infinite values"):
        load_ohlcv(ohlc)


def test_bad_arguments(ohlc):
    with pytest.raises(
        ValueError, match="column_map renames columns that are not in the input: \\['Ticker'\\]"
    ):
        load_ohlcv(ohlc, column_map={"Ticker": "instrument"})
    with pytest.raises(ValueError, match="appear twice: \\['close'\\]"):
        load_ohlcv(ohlc, column_map={"open": "close"})
    with pytest.raises(ValueError, match="fields must be a non-empty"):
        load_ohlcv(ohlc, fields=())
    with pytest.raises(ValueError, match="empty instrument names"):
        load_ohlcv(ohlc.assign(instrument=["AAA", None, "AAA"]))
