"""Dataset / TSDataset: segment semantics, errors, samples, and parity with Qlib's TSDatasetH."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd
import pytest

from qjax.data.dataset import Dataset, TSDataset, validate_segments
from qjax.data.handler import DataHandler
from qjax.data.processors import DropnaLabel
from qjax.data.windows import WindowSampler


def handler(data: pd.DataFrame) -> DataHandler:
    """The qjax handler; "learn" drops label-NaN rows (DropnaLabel), as Qlib's TS configs do."""
    return DataHandler(data, learn_processors=[DropnaLabel()])


def panel(seed: int = 0, n_days: int = 30, n_inst: int = 5) -> pd.DataFrame:
    """Ragged (datetime, instrument) panel: late listings, suspensions, some NaN labels."""
    rng = np.random.default_rng(seed)
    dates = pd.bdate_range("2020-01-01", periods=n_days)
    rows = [
        (d, f"I{k}")
        for k in range(n_inst)
        for i, d in enumerate(dates)
        if i >= 3 * k and rng.random() > 0.15
    ]
    index = pd.MultiIndex.from_tuples(rows, names=["datetime", "instrument"])
    cols = pd.MultiIndex.from_tuples([("feature", "a"), ("feature", "b"), ("label", "y")])
    values = rng.standard_normal((len(index), 3))
    values[rng.random(len(index)) < 0.1, 2] = np.nan
    return pd.DataFrame(values, index=index, columns=cols).sort_index()


SEGMENTS = {
    "train": ("2020-01-01", "2020-01-21"),
    "valid": ("2020-01-22", "2020-01-31"),
    "test": ("2020-02-03", "2020-02-11"),
}


def test_prepare_segments_inclusive_and_lists():
    df = panel()
    ds = Dataset(handler(df), SEGMENTS)
    train = ds.prepare("train", col_set="feature")
    dates = train.index.get_level_values("datetime")
    assert dates.min() == pd.Timestamp("2020-01-01") and dates.max() == pd.Timestamp("2020-01-21")
    assert list(train.columns) == ["a", "b"]
    n_rows = (df.index.get_level_values("datetime") <= "2020-01-21").sum()
    assert len(train) == n_rows
    parts = ds.prepare(["train", "valid", "test"], col_set=["feature", "label"])
    assert sum(map(len, parts)) == len(df) and list(parts[2].columns.get_level_values(0)) == [
        "feature",
        "feature",
        "label",
    ]
    learn = ds.prepare("train", data_key="learn")
    assert len(learn) < len(train) and learn["y"].notna().all()


def test_tabular_samples():
    df = panel(1)
    ds = Dataset(handler(df), SEGMENTS)
    samples, index = ds.samples("valid")
    ref = df.loc["2020-01-22":"2020-01-31"]
    ref = ref[ref["label"].notna().all(axis=1)]
    assert index.equals(ref.index)
    np.testing.assert_array_equal(np.asarray(samples.features), ref["feature"].to_numpy(np.float32))
    np.testing.assert_array_equal(
        np.asarray(samples.labels), ref[("label", "y")].to_numpy(np.float32)
    )
    assert samples.features.dtype == jnp.float32
    x = jax.jit(lambda s, i: s.batch(i).x)(samples, jnp.array([2, 0]))
    np.testing.assert_array_equal(np.asarray(x), ref["feature"].to_numpy(np.float32)[[2, 0]])
    unlabelled, _ = ds.samples("test", data_key="infer", label=False)
    assert np.isnan(np.asarray(unlabelled.labels)).all()


@pytest.mark.parametrize(
    "segments, message",
    [
        ({"train": ("2020-01-10", "2020-01-01")}, "starts after it ends"),
        ({"train": ("2020-01-01", "not a date")}, "not a date"),
        ({"train": ("2020-01-01",)}, "pair"),
        ({"train": "2020-01-01"}, "pair"),
        ({}, "non-empty"),
        (
            {"train": ("2020-01-01", "2020-01-10"), "test": ("2020-01-10", "2020-01-20")},
            "'train' .* and 'test' .* overlap",
        ),
        (
            {"valid": ("2020-01-01", "2020-01-10"), "pretrain": ("2020-01-05", "2020-01-20")},
            "'valid' .* and 'pretrain' .* overlap",
        ),
    ],
)
def test_segment_errors(segments, message):
    with pytest.raises(ValueError, match=message):
        validate_segments(segments)


def test_pretrain_duplicates_and_other_names_allowed():
    segs = validate_segments(
        {
            **SEGMENTS,
            "pretrain": SEGMENTS["train"],
            "pretrain_validation": SEGMENTS["valid"],
            "insample": ("2020-01-01", "2020-02-11"),
        }
    )
    assert segs["pretrain"] == (pd.Timestamp("2020-01-01"), pd.Timestamp("2020-01-21"))


def test_empty_segment_and_unknown_name():
    ds = Dataset(handler(panel()), {**SEGMENTS, "late": ("2021-01-01", "2021-02-01")})
    with pytest.raises(
        ValueError, match=r"'late' \(2021-01-01..2021-02-01\).*spans 2020-01-01..2020-02-11"
    ):
        ds.prepare("late")
    with pytest.raises(KeyError, match="unknown segment 'tset'"):
        ds.prepare("tset")
    ts = TSDataset(handler(panel()), {"late": ("2021-01-01", "2021-02-01")}, step_len=3)
    with pytest.raises(ValueError, match="'late'.*no samples.*spans 2020-01-01"):
        ts.prepare("late")


def test_ts_dataset_extends_history_by_step_len():
    df = panel(2)
    ts = TSDataset(handler(df), SEGMENTS, step_len=4)
    sampler = ts.prepare("valid", col_set=["feature", "label"])
    assert isinstance(sampler, WindowSampler)
    index = sampler.get_index()
    assert index.get_level_values("datetime").min() >= pd.Timestamp("2020-01-22")
    # The first valid sample's window reaches back into train dates (history, not samples).
    cal = sorted(df.index.get_level_values("datetime").unique())
    own = cal.index(pd.Timestamp("2020-01-22"))
    inst = index[0][1]
    want = df[("feature", "a")].xs(inst, level="instrument").reindex(cal[own - 3 : own + 1])
    got = sampler.config(fillna_type="none")[0][:, 0]
    np.testing.assert_array_equal(got, want.to_numpy(np.float32))
    samples, sindex = ts.samples("valid")
    assert samples.size == len(sindex) and np.isfinite(np.asarray(samples.labels)).all()


@pytest.mark.parity
@pytest.mark.parametrize("data_key", ["infer", "learn"])
def test_ts_dataset_equals_qlib_tsdataseth(qlib, data_key):
    from qlib.data.dataset import TSDatasetH
    from qlib.data.dataset.handler import DataHandlerLP
    from qlib.data.dataset.loader import StaticDataLoader
    from qlib.data.dataset.processor import DropnaLabel as QlibDropnaLabel

    df = panel(3, n_days=40, n_inst=6)
    qhandler = DataHandlerLP(
        data_loader=StaticDataLoader(config=df.copy()), learn_processors=[QlibDropnaLabel()]
    )
    segs = {"train": ("2020-01-01", "2020-01-28"), "test": ("2020-01-29", "2020-02-25")}
    theirs = TSDatasetH(handler=qhandler, segments=segs, step_len=6)
    for h in (qhandler, handler(df)):  # qjax on Qlib's own handler, and on qjax's
        ours = TSDataset(h, segs, step_len=6)
        for seg in segs:
            q = theirs.prepare(seg, col_set=["feature", "label"], data_key=data_key)
            q.config(fillna_type="ffill+bfill")
            o = ours.prepare(seg, col_set=["feature", "label"], data_key=data_key)
            o.config(fillna_type="ffill+bfill")
            assert len(o) == len(q)
            pos = q.get_index().get_indexer(o.get_index())
            assert (pos >= 0).all()
            want = q[np.arange(len(q))].astype(np.float32)[pos]
            np.testing.assert_array_equal(o[np.arange(len(o))], want)
