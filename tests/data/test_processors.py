"""qjax.data.processors: parity with Qlib's processor classes, Qlib's quirks, and bad input."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from qjax.data import processors as P

FIT_START, FIT_END = "2020-01-01", "2020-01-08"
FEATURES = ["a", "b", "c", "const", "tie"]


def random_frame(
    seed: int, label: str = "LABEL0", n_days: int = 9, n_inst: int = 8
) -> pd.DataFrame:
    """Unbalanced random panel: NaNs, a constant column, a tie-heavy column, an all-NaN day-column."""
    rng = np.random.default_rng(seed)
    dates = pd.date_range("2020-01-01", periods=n_days, freq="B")
    index = pd.MultiIndex.from_product(
        [dates, [f"SH{i:04d}" for i in range(n_inst)]], names=["datetime", "instrument"]
    )
    columns = pd.MultiIndex.from_tuples([("feature", n) for n in FEATURES] + [("label", label)])
    values = rng.standard_normal((len(index), len(columns))) * rng.uniform(0.5, 3, len(columns))
    values[:, 3] = 2.5
    values[:, 4] = rng.integers(0, 3, len(index))
    values[rng.random(values.shape) < 0.12] = np.nan
    values[:, 3] = 2.5  # constant everywhere, no NaN
    frame = pd.DataFrame(values, index=index, columns=columns)
    frame.loc[dates[2], ("feature", "a")] = np.nan  # a day with no value at all in one column
    return frame[rng.random(len(frame)) > 0.1]  # some instruments absent on some days


def with_infs(frame: pd.DataFrame, seed: int) -> pd.DataFrame:
    """A few +-inf in feature 'b' and the label (a minority, as in real data)."""
    rng = np.random.default_rng(seed)
    out = frame.copy()
    rows = rng.choice(len(out), size=6, replace=False)
    out.iloc[rows[:4], 1] = [np.inf, -np.inf, np.inf, np.inf]
    out.iloc[rows[4:], -1] = [np.inf, -np.inf]
    return out


def norm_kwargs(**extra):
    return dict(fit_start_time=FIT_START, fit_end_time=FIT_END, **extra)


# (class name, kwargs, whether the input carries +-inf that the processor passes through)
PARITY_CASES = [
    ("DropnaProcessor", {}, False),
    ("DropnaProcessor", dict(fields_group="feature"), True),
    ("DropnaLabel", {}, False),
    ("DropCol", dict(col_list=["b", "tie"]), False),
    ("FilterCol", dict(col_list=["tie", "a"]), False),
    ("FilterCol", dict(fields_group="feature", col_list=[]), False),
    ("TanhProcess", {}, True),
    ("ProcessInf", {}, True),
    ("Fillna", {}, True),
    ("Fillna", dict(fields_group="feature", fill_value=-1.5), False),
    ("MinMaxNorm", norm_kwargs(fields_group="feature"), False),
    ("MinMaxNorm", norm_kwargs(), False),
    ("ZScoreNorm", norm_kwargs(fields_group="feature"), False),
    ("ZScoreNorm", norm_kwargs(), False),
    ("RobustZScoreNorm", norm_kwargs(fields_group="feature"), True),
    ("RobustZScoreNorm", norm_kwargs(fields_group="feature", clip_outlier=False), True),
    ("RobustZScoreNorm", dict(fit_start_time=None, fit_end_time=None), False),
    ("CSZScoreNorm", dict(fields_group="label"), False),
    ("CSZScoreNorm", dict(fields_group=["feature", "label"]), False),
    ("CSZScoreNorm", dict(fields_group="feature", method="robust"), True),
    ("CSRankNorm", dict(fields_group="feature"), True),
    ("CSRankNorm", dict(fields_group="label"), False),
    ("CSZFillna", dict(fields_group="feature"), False),
    ("CSZFillna", {}, False),
]


@pytest.mark.parity
@pytest.mark.parametrize(
    "name, kwargs, infs", PARITY_CASES, ids=lambda v: str(v) if isinstance(v, str) else None
)
@pytest.mark.filterwarnings("ignore::RuntimeWarning")
def test_matches_qlib(qlib, name, kwargs, infs):
    from qlib.data.dataset import processor as qlib_processor

    frame = random_frame(seed=sum(map(ord, name)) + len(kwargs))
    if infs:
        frame = with_infs(frame, seed=7)
    pristine = frame.copy()

    theirs = getattr(qlib_processor, name)(**kwargs)
    qlib_input = frame.copy()  # qlib writes in place
    theirs.fit(qlib_input)
    expected = theirs(qlib_input)

    ours = getattr(P, name)(**kwargs)
    ours.fit(frame)
    got = ours(frame)

    pd.testing.assert_frame_equal(frame, pristine)  # qjax processors never write their input
    pd.testing.assert_frame_equal(got, expected, rtol=1e-9, atol=1e-12, check_freq=False)
    assert ours.is_for_infer() == theirs.is_for_infer()
    assert ours.readonly()


@pytest.mark.parity
def test_tanh_squashes_a_label_named_by_its_expression(qlib):
    """Qlib skips only columns whose name contains 'LABEL'; a YAML-style label is squashed."""
    from qlib.data.dataset.processor import TanhProcess

    frame = random_frame(seed=3, label="Ref($close, -2) / Ref($close, -1) - 1")
    got = P.TanhProcess()(frame)
    pd.testing.assert_frame_equal(got, TanhProcess()(frame.copy()), rtol=1e-12)
    np.testing.assert_allclose(got.iloc[:, -1], np.tanh(frame.iloc[:, -1] - 1))


def test_filtercol_keeps_frame_order_and_other_groups():
    frame = random_frame(seed=1)
    got = P.FilterCol(col_list=["tie", "a"])(frame)
    assert list(got.columns) == [("feature", "a"), ("feature", "tie"), ("label", "LABEL0")]


def test_csranknorm_scale_is_346():
    index = pd.MultiIndex.from_product(
        [[pd.Timestamp("2020-01-02")], list("wxyz")], names=["datetime", "instrument"]
    )
    frame = pd.DataFrame({("label", "y"): [0.3, -1.0, 7.0, 0.3]}, index=index)
    got = P.CSRankNorm(fields_group="label")(frame).iloc[:, 0].to_numpy()
    # pct ranks: 0.3 and 0.3 tie at (2+3)/2/4 = 0.625, -1.0 -> 0.25, 7.0 -> 1.0
    np.testing.assert_allclose(got, [0.125 * 3.46, -0.25 * 3.46, 0.5 * 3.46, 0.125 * 3.46])


def test_robust_zscore_adds_eps_before_scaling():
    frame = random_frame(seed=2)
    proc = P.RobustZScoreNorm(FIT_START, FIT_END, fields_group="feature", clip_outlier=False)
    proc.fit(frame)
    shifted = frame.copy()
    shifted[("feature", "const")] = 2.5 + 1e-9  # MAD of 'const' in the window is 0
    got = proc(shifted)[("feature", "const")].to_numpy()
    np.testing.assert_allclose(
        got, 1e-9 / (1e-12 * 1.4826), rtol=1e-6
    )  # not 1e-9 / (0 * 1.4826 + 1e-12)
    clipped = P.RobustZScoreNorm(FIT_START, FIT_END, fields_group="feature")
    clipped.fit(frame)
    assert clipped(shifted)[("feature", "const")].eq(3.0).all()


@pytest.mark.parametrize("cls", [P.ZScoreNorm, P.MinMaxNorm])
def test_constant_columns_left_untouched(cls):
    frame = random_frame(seed=4)
    proc = cls(FIT_START, FIT_END, fields_group="feature")
    proc.fit(frame)
    out = proc(frame)
    assert out[("feature", "const")].eq(2.5).all()
    window = out.loc[pd.IndexSlice[FIT_START:FIT_END, :], ("feature", "a")]
    if cls is P.ZScoreNorm:
        assert abs(window.mean()) < 1e-12 and abs(window.std(ddof=0) - 1) < 1e-12
    else:
        assert window.min() == 0 and window.max() == 1


def test_fit_uses_only_the_window():
    frame = random_frame(seed=5)
    later = frame.index.get_level_values("datetime") > pd.Timestamp(FIT_END)
    spiked = frame.copy()
    spiked.loc[later, ("feature", "a")] *= 1000  # outside the window: must not change the fit
    proc_a, proc_b = P.ZScoreNorm(FIT_START, FIT_END), P.ZScoreNorm(FIT_START, FIT_END)
    proc_a.fit(frame)
    proc_b.fit(spiked)
    pd.testing.assert_frame_equal(proc_a(frame), proc_b(frame))


def test_transform_follows_columns_not_positions():
    frame = random_frame(seed=8)
    proc = P.RobustZScoreNorm(FIT_START, FIT_END, fields_group="feature")
    proc.fit(frame)
    permuted = frame.iloc[:, [5, 2, 0, 4, 1, 3]]
    pd.testing.assert_frame_equal(proc(permuted), proc(frame).iloc[:, [5, 2, 0, 4, 1, 3]])


def test_float32_stays_float32():
    frame = random_frame(seed=6)
    frame32 = frame.astype(np.float32)
    for proc in (
        P.RobustZScoreNorm(FIT_START, FIT_END, "feature"),
        P.CSZScoreNorm("label"),
        P.CSRankNorm("feature"),
    ):
        proc.fit(frame32)
        got = proc(frame32)
        assert (got.dtypes == np.float32).all(), type(proc).__name__
        proc.fit(frame)
        np.testing.assert_allclose(
            got.to_numpy(np.float64), proc(frame).to_numpy(), rtol=2e-5, atol=2e-5
        )


def test_dropnalabel_is_learn_only():
    assert not P.DropnaLabel().is_for_infer()
    assert P.DropnaProcessor().is_for_infer()


# --------------------------------------------------------------------------- errors


def test_unknown_fields_group():
    with pytest.raises(
        KeyError, match=r"fields_group='features'.*available groups: \['feature', 'label'\]"
    ):
        P.CSRankNorm(fields_group="features")(random_frame(0))


@pytest.mark.parametrize(
    "proc", [P.DropCol(col_list=["a", "nope"]), P.FilterCol(col_list=["a", "nope"])]
)
def test_col_list_names_absent_columns(proc):
    with pytest.raises(KeyError, match=r"\['nope'\]"):
        proc(random_frame(0))


def test_filtercol_rejects_names_outside_its_group():
    with pytest.raises(KeyError, match="LABEL0"):
        P.FilterCol(col_list=["a", "LABEL0"])(random_frame(0))


@pytest.mark.parametrize("cls", [P.ZScoreNorm, P.RobustZScoreNorm, P.MinMaxNorm])
def test_norm_before_fit(cls):
    with pytest.raises(P.NotFittedError, match=r"call \.fit\(df\) first"):
        cls(FIT_START, FIT_END)(random_frame(0))


def test_transform_frame_missing_fitted_columns():
    proc = P.ZScoreNorm(FIT_START, FIT_END, fields_group="feature")
    proc.fit(random_frame(0))
    with pytest.raises(KeyError, match="'tie'"):
        proc(random_frame(0).drop(columns=[("feature", "tie")]))


def test_empty_fit_window_names_the_dates():
    with pytest.raises(ValueError, match=r"2019-01-01.*2019-06-30.*selects no rows.*2020-01-01"):
        P.ZScoreNorm("2019-01-01", "2019-06-30").fit(random_frame(0))


@pytest.mark.parametrize(
    "proc",
    [
        P.ZScoreNorm(FIT_START, FIT_END, fields_group="feature"),
        P.MinMaxNorm(FIT_START, FIT_END, fields_group="feature"),
        P.CSZScoreNorm(fields_group="feature"),
    ],
    ids=lambda p: type(p).__name__,
)
def test_inf_into_a_statistic_is_an_error(proc):
    frame = with_infs(random_frame(0), seed=1)
    with pytest.raises(ValueError, match=r"infinite.*\('feature', 'b'\).*ProcessInf"):
        proc.fit(frame)
        proc(frame)
    clean = P.ProcessInf()(frame)  # the suggested cure works
    proc.fit(clean)
    assert np.isfinite(proc(clean)[("feature", "b")].dropna()).all()


def test_robust_zscore_errors_only_when_infs_break_median_or_mad():
    frame = random_frame(0)
    frame[("feature", "b")] = np.where(np.arange(len(frame)) % 4 == 0, 1.0, np.inf)
    with pytest.raises(ValueError, match=r"RobustZScoreNorm.*\('feature', 'b'\)"):
        P.RobustZScoreNorm(FIT_START, FIT_END, fields_group="feature").fit(frame)


def test_cszfillna_errors_only_when_a_fill_value_is_polluted():
    dates = pd.to_datetime(["2020-01-02", "2020-01-03"])
    index = pd.MultiIndex.from_product([dates, ["x", "y", "z"]], names=["datetime", "instrument"])
    # day 1: inf but nothing to fill (passes through); day 2: no inf, a NaN filled with 2.0
    values = [1.0, np.inf, 3.0, 1.0, np.nan, 3.0]
    frame = pd.DataFrame({("feature", "c"): values}, index=index)
    got = P.CSZFillna("feature")(frame)[("feature", "c")].to_numpy()
    np.testing.assert_array_equal(got, [1.0, np.inf, 3.0, 1.0, 2.0, 3.0])
    frame.iloc[0, 0] = np.nan  # now day 1 would be filled with inf
    with pytest.raises(ValueError, match=r"CSZFillna.*\('feature', 'c'\)"):
        P.CSZFillna("feature")(frame)


def test_cszscorenorm_rejects_unknown_method():
    with pytest.raises(ValueError, match="'zscore', 'robust'"):
        P.CSZScoreNorm(method="rank")


# --------------------------------------------------------------------------- build_processor


def test_build_processor_forms():
    instance = P.Fillna()
    assert P.build_processor(instance) is instance
    assert isinstance(P.build_processor("DropnaLabel"), P.DropnaLabel)
    proc = P.build_processor(
        {
            "class": "RobustZScoreNorm",
            "module_path": "qlib.data.dataset.processor",
            "kwargs": {"clip_outlier": False},
        },
        fit_start_time="2020-01-01",
        fit_end_time="2020-01-05",
    )
    assert isinstance(proc, P.RobustZScoreNorm)
    assert (proc.fit_start_time, proc.fit_end_time, proc.clip_outlier) == (
        "2020-01-01",
        "2020-01-05",
        False,
    )


def test_build_processor_injection_overrides_like_qlib():
    spec = {"class": "ZScoreNorm", "kwargs": {"fit_start_time": "2000", "fit_end_time": "2001"}}
    assert P.build_processor(spec).fit_end_time == "2001"
    assert P.build_processor(spec, "2020-01-01", "2020-02-01").fit_end_time == "2020-02-01"
    assert P.build_processor(
        {"class": "CSRankNorm", "kwargs": {"fields_group": "label"}}, "2020", "2021"
    )


def test_build_processor_errors():
    with pytest.raises(KeyError, match=r"unknown processor 'DropnaFeature'.*'CSRankNorm'"):
        P.build_processor("DropnaFeature")
    with pytest.raises(ValueError, match="ZScoreNorm needs.*fit_start_time"):
        P.build_processor("ZScoreNorm")
    with pytest.raises(TypeError, match=r"unknown argument\(s\) \['group'\]"):
        P.build_processor({"class": "Fillna", "kwargs": {"group": "feature"}})
    with pytest.raises(ValueError, match="'class' key"):
        P.build_processor({"klass": "Fillna"})
