"""WindowSampler: Qlib TSDataSampler parity (host and jitted device gather), layout, errors."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd
import pytest

from qjax.data.windows import FILL_TYPES, WindowSampler, WindowTake
from qjax.train.batching import day_table

STEP = 5


def ragged_panel(seed: int = 0, n_days: int = 40, n_inst: int = 7) -> pd.DataFrame:
    """(datetime, instrument) panel with late listings, early delistings, suspended days,
    a date no instrument trades, NaN values inside present rows and two-level columns."""
    rng = np.random.default_rng(seed)
    dates = pd.bdate_range("2021-01-04", periods=n_days)
    insts = [f"SH60{k:04d}" for k in rng.permutation(n_inst)]  # unsorted on purpose
    rows = []
    for k, inst in enumerate(insts):
        listed = 0 if k < 2 else int(rng.integers(1, n_days // 2))  # late listing
        delisted = n_days if k != 3 else n_days - 6
        for d in range(listed, delisted):
            if d == 11 or (d > listed and rng.random() < 0.2):  # day 11: nobody trades
                continue
            rows.append((dates[d], inst))
    index = pd.MultiIndex.from_tuples(rows, names=["datetime", "instrument"])
    cols = pd.MultiIndex.from_tuples(
        [("feature", "f0"), ("feature", "f1"), ("feature", "f2"), ("label", "LABEL0")]
    )
    values = rng.standard_normal((len(index), 4))
    values[rng.random(values.shape) < 0.05] = np.nan  # NaN values in present rows stay NaN
    return pd.DataFrame(values, index=index, columns=cols).sort_index()


def qlib_sampler(qlib, df, start, end, fill, flt=None):
    from qlib.data.dataset import TSDataSampler

    return TSDataSampler(df.copy(), start, end, STEP, fillna_type=fill, flt_data=flt)


def qlib_windows_by_key(ts, keys: pd.MultiIndex) -> np.ndarray:
    """Qlib's windows re-ordered to ``keys`` ((datetime, instrument) per sample)."""
    pos = ts.get_index().get_indexer(keys)
    assert (pos >= 0).all(), "a qjax sample is not a Qlib sample"
    return ts[np.arange(len(ts))].astype(np.float32)[pos]


@pytest.mark.parity
@pytest.mark.parametrize("fill", FILL_TYPES)
@pytest.mark.parametrize("seed", [0, 1])
def test_windows_equal_qlib_tsdatasampler(qlib, fill, seed):
    df = ragged_panel(seed)
    dates = df.index.get_level_values("datetime").unique().sort_values()
    start, end = dates[8], dates[-3]  # history before start, data after end
    ts = qlib_sampler(qlib, df, start, end, fill)
    ours = WindowSampler(df, start, end, STEP).config(fillna_type=fill)

    assert len(ours) == len(ts)
    keys = ours.get_index()
    assert set(keys) == set(ts.get_index())
    expected = qlib_windows_by_key(ts, keys)
    # NaN-aware exact equality: same rows, same fills, same NaN positions.
    np.testing.assert_array_equal(ours[np.arange(len(ours))], expected)
    for k in (0, len(ours) // 2, len(ours) - 1):
        np.testing.assert_array_equal(ours[k], expected[k])

    samples, index = ours.samples()
    assert index.equals(keys)
    windows = np.asarray(
        jax.jit(lambda s, ids: s.take(s.features, ids))(samples, jnp.arange(len(ours)))
    )
    np.testing.assert_array_equal(windows, expected[:, :, :-1])
    np.testing.assert_array_equal(np.asarray(samples.labels), expected[:, -1, -1])


@pytest.mark.parity
def test_filter_column_equals_qlib(qlib, seed):
    df = ragged_panel(2)
    rng = np.random.default_rng(seed + 5)
    flt = pd.Series(rng.random(len(df)) < 0.6, index=df.index)
    flt = flt.drop(flt.index[::7])  # rows missing from flt_data are filtered out too
    ts = qlib_sampler(qlib, df, None, None, "ffill+bfill", flt)
    ours = WindowSampler(df, None, None, STEP, "ffill+bfill", flt_data=flt)
    assert len(ours) == len(ts) < len(df)
    np.testing.assert_array_equal(
        ours[np.arange(len(ours))], qlib_windows_by_key(ts, ours.get_index())
    )


def test_fill_rules_by_hand():
    """One instrument on days 0..5, day 2 absent, windows of 4 days; b is absent on day 0."""
    dates = pd.bdate_range("2022-03-01", periods=6)
    rows = [(d, "a") for i, d in enumerate(dates) if i != 2] + [(d, "b") for d in dates[1:]]
    df = pd.DataFrame(
        {"x": np.arange(len(rows), dtype=float)},
        index=pd.MultiIndex.from_tuples(rows, names=["datetime", "instrument"]),
    )
    x = df["x"]
    a = lambda i: x[(dates[i], "a")]  # noqa: E731
    s = WindowSampler(df, dates[3], dates[3], step_len=4)
    assert list(s.get_index()) == [(dates[3], "a"), (dates[3], "b")]
    nan = np.nan
    # a's window spans days 0..3 with day 2 absent.
    expected = {
        "none": [a(0), a(1), nan, a(3)],
        "ffill": [a(0), a(1), a(1), a(3)],
        "ffill+bfill": [a(0), a(1), a(1), a(3)],
    }
    for fill, want in expected.items():
        np.testing.assert_array_equal(s.config(fillna_type=fill)[0][:, 0], np.float32(want))
    # b's window: day 0 absent (leading gap) -> NaN under ffill, back-filled from day 1.
    b = [x[(dates[i], "b")] for i in (1, 2, 3)]
    np.testing.assert_array_equal(s.config(fillna_type="ffill")[1][:, 0], np.float32([nan, *b]))
    np.testing.assert_array_equal(
        s.config(fillna_type="ffill+bfill")[1][:, 0], np.float32([b[0], *b])
    )
    # Forward fill never reaches before the window: a at day 4 with step 2 sees days 3..4 only.
    s2 = WindowSampler(df, dates[4], dates[4], step_len=2, fillna_type="ffill")
    np.testing.assert_array_equal(s2[0][:, 0], np.float32([a(3), a(4)]))


def test_datetime_major_order_and_labels():
    df = ragged_panel(3)
    s = WindowSampler(df, None, None, STEP)
    index = s.get_index()
    assert index.names == ["datetime", "instrument"]
    assert index.is_monotonic_increasing and index.is_unique  # datetime-major, instruments sorted
    assert len(s) == len(df)
    labels = s.labels()
    np.testing.assert_array_equal(
        labels, df[("label", "LABEL0")].reindex(index).to_numpy(np.float32)
    )


def test_take_works_in_scan_and_is_stable(seed):
    df = ragged_panel(4)
    sampler = WindowSampler(df, None, None, STEP, "ffill+bfill")
    samples, _ = sampler.samples()
    ids = jnp.asarray(np.random.default_rng(seed).integers(0, len(sampler), (3, 8)))

    @jax.jit
    def batches(s, ids):
        return jax.lax.scan(lambda c, i: (c, s.batch(i).x), 0, ids)[1]

    got = np.asarray(batches(samples, ids))
    want = sampler[np.asarray(ids).ravel()][..., :-1].reshape(got.shape)
    np.testing.assert_array_equal(got, want)
    again, _ = WindowSampler(df, None, None, STEP, "ffill+bfill").samples()
    assert again.take == samples.take and hash(again.take) == hash(samples.take)
    assert jax.tree_util.tree_structure(again) == jax.tree_util.tree_structure(samples)
    assert WindowTake(STEP, "none") != samples.take


def test_bad_inputs():
    df = ragged_panel(0)
    with pytest.raises(ValueError, match="fillna_type"):
        WindowSampler(df, step_len=3).config(fillna_type="bfill")
    with pytest.raises(ValueError, match="step_len"):
        WindowSampler(df, step_len=0)
    with pytest.raises(ValueError, match="duplicate"):
        WindowSampler(pd.concat([df, df.iloc[:1]]), step_len=3)
    with pytest.raises(ValueError, match="MultiIndex"):
        WindowSampler(df.reset_index(drop=True), step_len=3)
    s = WindowSampler(df, step_len=3)
    with pytest.raises(IndexError, match="out of range"):
        s[len(s)]
    with pytest.raises(IndexError, match="int"):
        s[1.5]
    two_labels = df.copy()
    two_labels[("label", "LABEL1")] = 0.0
    with pytest.raises(ValueError, match="one label column"):
        WindowSampler(two_labels, step_len=3).labels()


def test_day_table():
    day = np.array([0, 0, 1, 2, 2, 2, 1])
    table = day_table(day)
    np.testing.assert_array_equal(table.ids, [[0, 1, 0], [2, 6, 0], [3, 4, 5]])
    np.testing.assert_array_equal(table.mask, [[1, 1, 0], [1, 1, 0], [1, 1, 1]])
    table = day_table(day, width=4)
    assert table.ids.shape == table.mask.shape == (3, 4) and table.ids.dtype == np.int32
    assert int(table.mask.sum()) == 7
    assert day_table(day, width=3, multiple=2).ids.shape == (3, 4)  # rounded up for 2 devices
    with pytest.raises(ValueError, match="daily_width=2 is smaller than the largest day"):
        day_table(day, width=2)


def test_day_table_of_window_samples_holds_days():
    df = ragged_panel(1)
    samples, index = WindowSampler(df, None, None, STEP).samples()
    table = day_table(np.asarray(samples.day))
    ids, mask = np.asarray(table.ids), np.asarray(table.mask)
    dates = index.get_level_values("datetime")
    for row, m in zip(ids, mask):
        assert len(set(dates[row[m]])) == 1
    assert mask.sum() == len(index) and len(ids) == dates.nunique()


@pytest.mark.parity
@pytest.mark.parametrize("seed", [0, 1])
def test_legacy_day_groups_equal_qlib_gats_ts_daily_batch_sampler(qlib, seed):
    from qlib.contrib.model.pytorch_gats_ts import DailyBatchSampler

    from qjax.data.samples import qlib_legacy_day_groups

    df = ragged_panel(seed)
    dates = df.index.get_level_values("datetime").unique()
    ts = qlib_sampler(qlib, df, dates[5], dates[-3], "ffill+bfill")
    qlib_index = ts.get_index()  # (datetime, instrument) of each position, instrument-major
    batches = [qlib_index[np.asarray(b)] for b in DailyBatchSampler(ts)]
    assert len(batches) == qlib_index.get_level_values("datetime").nunique()

    keys = qlib_index.sort_values()  # qjax's datetime-major sample order
    groups = qlib_legacy_day_groups(keys)
    ours = [keys[groups == g] for g in range(groups.max() + 1)]
    assert len(ours) == len(batches)
    for k, (mine, theirs) in enumerate(zip(ours, batches)):
        assert mine.sort_values().equals(theirs.sort_values()), f"batch {k} differs"
    # Qlib's "days" are not days: most of them mix dates (the bug the default avoids).
    assert sum(b.get_level_values("datetime").nunique() > 1 for b in batches) > len(batches) // 2
