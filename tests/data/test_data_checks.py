"""Messages about the data that say what really happened: processors that removed a whole
segment, and the columns holding NaN/inf."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from qjax.data.checks import nonfinite_columns, nonfinite_report, reject_infinite
from qjax.data.dataset import Dataset, TSDataset
from qjax.data.handler import DataHandler
from qjax.data.processors import DropnaLabel
from qjax.errors import DataError

DATES = pd.bdate_range("2020-01-01", periods=30)


def frame(seed: int) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    index = pd.MultiIndex.from_product([DATES, ["A", "B", "C"]], names=["datetime", "instrument"])
    cols = pd.MultiIndex.from_tuples([("feature", "f1"), ("feature", "f2"), ("label", "y")])
    return pd.DataFrame(rng.standard_normal((len(index), 3)), index=index, columns=cols)


SEGMENTS = {
    "train": ("2020-01-01", "2020-01-21"),
    "valid": ("2020-01-22", "2020-01-31"),
    "test": ("2020-02-03", "2020-02-11"),
}


@pytest.mark.parametrize("kind", [Dataset, TSDataset])
def test_dropna_label_removing_every_train_label_is_named_as_the_cause(kind, seed):
    data = frame(seed)
    train = data.index.get_level_values("datetime") <= pd.Timestamp("2020-01-21")
    data.loc[train, ("label", "y")] = np.nan  # e.g. a label expression that is NaN there
    args = {"step_len": 3} if kind is TSDataset else {}
    dataset = kind(DataHandler(data, learn_processors=[DropnaLabel()]), SEGMENTS, **args)
    with pytest.raises(
        ValueError,
        match=r"segment 'train' .* has 45 rows in the raw data but none "
        r"left in the 'learn' data: DropnaLabel removed them all",
    ) as err:
        dataset.prepare("train", col_set=["feature", "label"], data_key="learn")
    assert "move the segment into the data's range" not in str(err.value)


def test_a_segment_outside_the_data_still_says_so(seed):
    dataset = Dataset(
        DataHandler(frame(seed), learn_processors=[DropnaLabel()]),
        {**SEGMENTS, "test": ("2021-01-01", "2021-02-01")},
    )
    with pytest.raises(ValueError, match="move the segment into the data's range"):
        dataset.prepare("test", col_set="feature", data_key="infer")


def test_nonfinite_report_names_segments_columns_and_counts(seed):
    data = frame(seed)
    data.iloc[[0, 3, 6], 1] = np.nan  # f2, train dates
    data.iloc[2, 0] = np.inf  # f1, train
    data.iloc[-1, 2] = -np.inf  # label, test
    data.iloc[-4, 2] = np.nan  # label NaN: masked by the loss, not reported by default
    dataset = Dataset(DataHandler(data), SEGMENTS)
    assert nonfinite_columns(data) == {"f1": (0, 1), "f2": (3, 0), "y": (1, 1)}
    report = nonfinite_report(dataset, ["train", "valid", "test"])
    assert report.splitlines() == [
        "segment 'train' features: f1 (1 inf), f2 (3 NaN)",
        "segment 'test' labels: y (1 inf)",
    ]
    assert nonfinite_report(Dataset(DataHandler(frame(seed)), SEGMENTS)) == ""


def test_inf_in_a_training_segment_is_rejected_before_training(seed):
    data = frame(seed)
    data.iloc[40, 2] = np.inf  # a label on a train date
    dataset = Dataset(DataHandler(data), SEGMENTS)
    with pytest.raises(DataError, match=r"segment 'train' labels: y\. Replace them with NaN"):
        reject_infinite(dataset)
    reject_infinite(dataset, ["valid"])  # the valid segment is clean


def test_a_mistyped_processor_or_argument_suggests_the_name():
    from qjax.data.processors import build_processor

    message = r"unknown processor 'DropnaLabl' \(did you mean 'DropnaLabel'\?\)"
    with pytest.raises(KeyError, match=message):
        build_processor({"class": "DropnaLabl"})
    with pytest.raises(TypeError, match=r"\['fields_grop'\] \(did you mean 'fields_group'\?\)"):
        build_processor({"class": "Fillna", "kwargs": {"fields_grop": "feature"}})


# -- NaN/inf in the model's inputs: one check for flat rows and windows -------------------------


@pytest.mark.parametrize("kind", [Dataset, TSDataset])
@pytest.mark.parametrize("segment", ["train", "valid"])
def test_nan_or_inf_features_stop_fit_before_training_naming_segment_and_column(
    kind, segment, seed, monkeypatch
):
    from qjax.estimators import estimator
    from qjax.train import engine

    data = frame(seed)
    days = data.index.get_level_values("datetime")
    rows = np.flatnonzero(
        (days >= pd.Timestamp(SEGMENTS[segment][0])) & (days <= pd.Timestamp(SEGMENTS[segment][1]))
    )
    data.iloc[rows[4], 1] = np.nan  # f2
    data.iloc[rows[7], 1] = np.nan
    data.iloc[rows[5], 0] = -np.inf  # f1
    args = {"step_len": 3} if kind is TSDataset else {}
    dataset = kind(DataHandler(data), SEGMENTS, **args)
    monkeypatch.setattr(engine, "_run_epoch", lambda *a, **k: pytest.fail("training started"))
    model = estimator("gru", d_feat=2, hidden_size=4, n_epochs=1, batch_size=8)
    with pytest.raises(
        DataError,
        match=rf"segment '{segment}': the model's input features hold "
        rf"NaN/inf .* 'learn' data: f1 \(1 inf\), f2 \(2 NaN\)\. .*add a Fillna",
    ):
        model.fit(dataset, verbose=False)


@pytest.mark.parametrize("kind", [Dataset, TSDataset])
def test_nan_in_the_test_features_is_found_before_training(kind, seed):
    from qjax.estimators import estimator

    data = frame(seed)
    data.iloc[-2, 0] = np.nan  # f1 on the last (a test) day
    args = {"step_len": 3} if kind is TSDataset else {}
    model = estimator("gru", d_feat=2, hidden_size=4, n_epochs=1, batch_size=8)
    with pytest.raises(DataError, match=r"segment 'test': .* 'infer' data: f1 \(1 NaN\)\."):
        model.check_inputs(kind(DataHandler(data), SEGMENTS, **args), "test")
    model.check_inputs(kind(DataHandler(frame(seed)), SEGMENTS, **args), "test")  # clean: quiet


def test_window_inputs_count_only_the_rows_the_windows_read(seed):
    from qjax.data.checks import input_nonfinite_counts

    data = frame(seed)
    valid_start = pd.Timestamp(SEGMENTS["valid"][0])
    days = sorted(set(data.index.get_level_values("datetime")))
    k = days.index(valid_start)
    # Two days before the valid start: read by its first window (step_len 3) but not a valid row.
    data.loc[(days[k - 2], "A"), ("feature", "f1")] = np.nan
    # Three days before: fetched with the segment (Qlib fetches step_len days of history, one
    # more than a window needs), but no window reaches it.
    data.loc[(days[k - 3], "B"), ("feature", "f2")] = np.nan
    dataset = TSDataset(DataHandler(data), SEGMENTS, step_len=3)
    samples, _ = dataset.samples("valid")
    n_nan, n_inf = input_nonfinite_counts(samples)
    assert n_nan.tolist() == [1, 0] and n_inf.tolist() == [0, 0]
    # Flat rows have no history: the valid segment's own rows are clean.
    flat, _ = Dataset(DataHandler(data), SEGMENTS).samples("valid")
    assert [c.tolist() for c in input_nonfinite_counts(flat)] == [[0, 0], [0, 0]]
