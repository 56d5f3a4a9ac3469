"""qjax.data.handler.DataHandler: parity with Qlib's DataHandlerLP, fit_seq, memory, bad input."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from qjax.data import processors as P
from qjax.data.handler import DataHandler, copy_on_write

FIT_START, FIT_END = "2020-01-01", "2020-01-10"
FIT = {"fit_start_time": FIT_START, "fit_end_time": FIT_END}


def raw_frame(seed: int = 0, n_days: int = 12, n_inst: int = 9) -> pd.DataFrame:
    """A shuffled, unbalanced random panel with NaN labels/features and a few infs."""
    rng = np.random.default_rng(seed)
    dates = pd.date_range("2020-01-01", periods=n_days, freq="B")
    index = pd.MultiIndex.from_product(
        [dates, [f"SZ{i:04d}" for i in range(n_inst)]], names=["datetime", "instrument"]
    )
    features = ["KLEN", "ROC5", "VWAP0", "STD5", "CORR5", "TIE"]
    columns = pd.MultiIndex.from_tuples([("feature", f) for f in features] + [("label", "LABEL0")])
    values = rng.standard_normal((len(index), len(columns))) * rng.uniform(0.2, 4, len(columns))
    values[:, 5] = rng.integers(0, 4, len(index))
    values[rng.random(values.shape) < 0.1] = np.nan
    values[rng.choice(len(index), 3, replace=False), 1] = [np.inf, -np.inf, np.inf]
    frame = pd.DataFrame(values, index=index, columns=columns)
    frame = frame[rng.random(len(frame)) > 0.08]
    return frame.iloc[rng.permutation(len(frame))]  # unsorted on purpose: both handlers sort


CONFIGS = {
    # benchmark "standard" variant (with the Alpha158-ts FilterCol)
    "standard": dict(
        infer=[
            {
                "class": "FilterCol",
                "kwargs": {"fields_group": "feature", "col_list": ["STD5", "KLEN", "TIE"]},
            },
            {
                "class": "RobustZScoreNorm",
                "kwargs": {"fields_group": "feature", "clip_outlier": True, **FIT},
            },
            {"class": "Fillna", "kwargs": {"fields_group": "feature"}},
        ],
        learn=["DropnaLabel", {"class": "CSRankNorm", "kwargs": {"fields_group": "label"}}],
        process_type="append",
    ),
    # benchmark MLP Alpha158 variant
    "mlp": dict(
        infer=[
            "ProcessInf",
            {"class": "DropCol", "kwargs": {"col_list": ["VWAP0"]}},
            {"class": "CSZFillna", "kwargs": {"fields_group": "feature"}},
        ],
        learn=[
            {"class": "DropCol", "kwargs": {"col_list": ["VWAP0"]}},
            {"class": "DropnaProcessor", "kwargs": {"fields_group": "feature"}},
            "DropnaLabel",
            {"class": "CSZScoreNorm", "kwargs": {"fields_group": "label"}},
        ],
        process_type="independent",
    ),
    # Alpha360's default processors, plus a tanh/min-max chain to exercise fit_seq
    "alpha360_default": dict(
        infer=[
            "ProcessInf",
            {"class": "ZScoreNorm", "kwargs": {"fields_group": "feature", **FIT}},
            {"class": "Fillna", "kwargs": {"fields_group": "feature"}},
        ],
        learn=[
            "TanhProcess",
            {"class": "MinMaxNorm", "kwargs": {"fields_group": "feature", **FIT}},
            "DropnaLabel",
            {"class": "CSZScoreNorm", "kwargs": {"fields_group": "label", "method": "robust"}},
        ],
        process_type="append",
    ),
}

COL_SETS = ["__all", "__raw", "feature", "label", ["feature", "label"], ["label", "feature"]]
SELECTORS = [
    (slice(None, None), "datetime"),
    (slice("2020-01-03", "2020-01-09"), "datetime"),
    (slice(pd.Timestamp("2020-01-08"), None), "datetime"),
    (pd.Timestamp("2020-01-06"), "datetime"),
    (("2020-01-02", "2020-01-07"), "datetime"),
    (slice("SZ0002", "SZ0005"), "instrument"),
]  # (a pd.Index selector crashes Qlib's fetch under pandas 3: tested on its own below)


def strip_fit_times(specs):
    """Our handler injects the fit window; drop it from the specs to prove the injection works."""
    out = []
    for spec in specs:
        if isinstance(spec, dict):
            kwargs = {k: v for k, v in spec.get("kwargs", {}).items() if k not in FIT}
            spec = {**spec, "kwargs": kwargs}
        out.append(spec)
    return out


@pytest.mark.parity
@pytest.mark.parametrize("config", list(CONFIGS))
@pytest.mark.filterwarnings("ignore::RuntimeWarning")
def test_fetch_matches_qlib_datahandlerlp(qlib, config):
    from qlib.data.dataset.handler import DataHandlerLP
    from qlib.data.dataset.loader import StaticDataLoader

    cfg = CONFIGS[config]
    data = raw_frame(seed=len(config))
    pristine = data.copy()
    theirs = DataHandlerLP(
        data_loader=StaticDataLoader(config=data.copy()),
        infer_processors=cfg["infer"],
        learn_processors=cfg["learn"],
        process_type=cfg["process_type"],
    )
    ours = DataHandler(
        data,
        infer_processors=strip_fit_times(cfg["infer"]),
        learn_processors=strip_fit_times(cfg["learn"]),
        process_type=cfg["process_type"],
        fit_start_time=FIT_START,
        fit_end_time=FIT_END,
    )
    pd.testing.assert_frame_equal(data, pristine)
    n_checked = 0
    for data_key in ("raw", "infer", "learn"):
        for col_set in COL_SETS:
            for selector, level in SELECTORS:
                kw = dict(selector=selector, level=level, col_set=col_set, data_key=data_key)
                expected, got = theirs.fetch(**kw), ours.fetch(**kw)
                assert len(got) > 0
                pd.testing.assert_frame_equal(got, expected, rtol=1e-9, atol=1e-12, obj=str(kw))
                n_checked += 1
    assert n_checked == 3 * len(COL_SETS) * len(SELECTORS)


@pytest.mark.parity
def test_accepts_qlib_processor_instances_without_touching_raw(qlib):
    """A Qlib processor writes in place (readonly() False): the handler must copy first."""
    from qlib.data.dataset.processor import ZScoreNorm

    data = raw_frame(1).sort_index()
    data[("feature", "ROC5")] = data[("feature", "ROC5")].clip(
        -1e9, 1e9
    )  # no infs for a plain z-score
    pristine = data.copy()
    handler = DataHandler(data, infer_processors=[ZScoreNorm(FIT_START, FIT_END, "feature")])
    pd.testing.assert_frame_equal(data, pristine)
    pd.testing.assert_frame_equal(handler.fetch(data_key="raw", col_set="__raw"), pristine)
    ours = DataHandler(
        data,
        infer_processors=[{"class": "ZScoreNorm", "kwargs": {"fields_group": "feature"}}],
        fit_start_time=FIT_START,
        fit_end_time=FIT_END,
    )
    pd.testing.assert_frame_equal(handler.fetch(), ours.fetch(), rtol=1e-12)


def test_fetch_a_set_of_instruments():
    handler = DataHandler(raw_frame(6))
    got = handler.fetch(
        pd.Index(["SZ0001", "SZ0007"]), level="instrument", col_set="__raw", data_key="raw"
    )
    raw = handler.fetch(col_set="__raw", data_key="raw")
    expected = raw[raw.index.get_level_values("instrument").isin(["SZ0001", "SZ0007"])]
    pd.testing.assert_frame_equal(got, expected)


def test_append_vs_independent():
    data = raw_frame(2)
    infer = [P.ProcessInf(), P.Fillna(fields_group="feature", fill_value=-7.0)]
    learn = [P.DropnaLabel()]
    append = DataHandler(
        data, infer_processors=infer, learn_processors=learn, process_type="append"
    )
    independent = DataHandler(
        data, infer_processors=infer, learn_processors=learn, process_type="independent"
    )
    raw_label = append.fetch(col_set="label", data_key="raw")["LABEL0"]
    for handler, features_filled in ((append, True), (independent, False)):
        learn_df = handler.fetch(col_set="__raw", data_key="learn")
        assert len(learn_df) == raw_label.notna().sum()
        assert learn_df["feature"].isna().to_numpy().any() != features_filled
        assert not handler.fetch(data_key="infer")["KLEN"].isna().any()


def test_fit_seq_fits_on_previous_output():
    data = raw_frame(3).sort_index()
    handler = DataHandler(
        data,
        infer_processors=["ProcessInf", "TanhProcess", "ZScoreNorm"],
        fit_start_time=FIT_START,
        fit_end_time=FIT_END,
    )
    window = handler.fetch(slice(FIT_START, FIT_END), col_set="feature")
    # fitted on tanh(x - 1) (not on raw x): the window is standardised after the tanh
    np.testing.assert_allclose(window.mean(), 0, atol=1e-12)
    np.testing.assert_allclose(window.std(ddof=0), 1, rtol=1e-12)


@pytest.mark.skipif(not copy_on_write(), reason="sharing blocks needs pandas' copy-on-write")
def test_learn_shares_untouched_columns_with_infer():
    data = raw_frame(4).sort_index()
    handler = DataHandler(
        data,
        infer_processors=[P.ProcessInf(), P.RobustZScoreNorm(FIT_START, FIT_END, "feature")],
        learn_processors=[P.CSRankNorm("label")],
    )
    infer, learn = handler._frames["infer"], handler._frames["learn"]
    assert np.shares_memory(infer["feature"].to_numpy(), learn["feature"].to_numpy())
    assert not np.shares_memory(infer["label"].to_numpy(), learn["label"].to_numpy())


def test_fetch_result_is_decoupled_from_the_handler():
    handler = DataHandler(raw_frame(5), infer_processors=["ProcessInf"])
    fetched = handler.fetch(col_set="__raw")
    fetched.iloc[:, 0] = 123.0
    assert not (handler.fetch(col_set="__raw").iloc[:, 0] == 123.0).all()


# --------------------------------------------------------------------------- bad input


def test_rejects_bad_frames():
    good = raw_frame(0).sort_index()
    with pytest.raises(ValueError, match="empty frame"):
        DataHandler(good.iloc[:0])
    with pytest.raises(ValueError, match="two-level columns"):
        DataHandler(good.droplevel(0, axis=1))
    with pytest.raises(ValueError, match=r"'feature' column group.*\['features', 'label'\]"):
        DataHandler(good.rename(columns={"feature": "features"}, level=0))
    with pytest.raises(ValueError, match=r"swaplevel"):
        DataHandler(good.swaplevel())
    with pytest.raises(ValueError, match=r"rename_axis"):
        DataHandler(good.rename_axis(["date", "code"]))
    as_text = good.set_axis(
        good.index.set_levels(good.index.levels[0].strftime("%Y-%m-%d"), level=0), axis=0
    )
    with pytest.raises(ValueError, match="pd.to_datetime"):
        DataHandler(as_text)
    with_text = good.copy()
    with_text[("feature", "NAME")] = "abc"
    with pytest.raises(ValueError, match=r"not: \[\('feature', 'NAME'\)\]"):
        DataHandler(with_text)
    duplicated = pd.concat([good, good.iloc[[5]]])
    example = good.index[5]
    with pytest.raises(ValueError, match=rf"1 duplicated.*{example[1]}"):
        DataHandler(duplicated)
    with pytest.raises(TypeError, match="DataFrame"):
        DataHandler(good.to_numpy())


def test_rejects_bad_processor_setup():
    data = raw_frame(0)
    with pytest.raises(
        ValueError, match="DropnaLabel is not usable for inference.*learn_processors"
    ):
        DataHandler(data, infer_processors=["DropnaLabel"])
    with pytest.raises(ValueError, match="process_type"):
        DataHandler(data, process_type="sequential")
    with pytest.raises(ValueError, match="RobustZScoreNorm needs"):
        DataHandler(data, infer_processors=["RobustZScoreNorm"])


def test_rejects_bad_fetch_arguments():
    handler = DataHandler(raw_frame(0))
    with pytest.raises(KeyError, match=r"data_key='train'.*'raw', 'infer', 'learn'"):
        handler.fetch(data_key="train")
    with pytest.raises(
        KeyError, match=r"\['labels'\] not among the column groups \['feature', 'label'\]"
    ):
        handler.fetch(col_set=["feature", "labels"])
    with pytest.raises(KeyError, match="matches no datetime"):
        handler.fetch(pd.Timestamp("2021-06-01"))
    with pytest.raises(KeyError, match="level='date'"):
        handler.fetch(slice(None, "2020-01-05"), level="date")
    with pytest.raises(ValueError, match="pd.Index"):
        handler.fetch(["2020-01-01", "2020-01-02", "2020-01-03", "2020-01-06"])
