"""Alpha360 computed in the gather equals the flat path (handler frame -> processors -> rows)."""

from __future__ import annotations

import jax
import numpy as np
import pandas as pd
import pytest

from qjax.data import features
from qjax.data.alpha360 import (
    Alpha360GatherDataset,
    Normalizer,
    alpha360_panel,
    alpha360_samples,
    fit_infer_processors,
)
from qjax.data.dataset import Dataset
from qjax.data.handler import DataHandler
from qjax.data.market import generate_market
from qjax.data.processors import RobustZScoreNorm
from qjax.errors import DataError

INFER = [
    {"class": "RobustZScoreNorm", "kwargs": {"fields_group": "feature", "clip_outlier": True}},
    {"class": "Fillna", "kwargs": {"fields_group": "feature"}},
]
LEARN = [{"class": "DropnaLabel"}, {"class": "CSRankNorm", "kwargs": {"fields_group": "label"}}]
SEGMENTS = {
    "train": ("2015-01-05", "2015-08-31"),
    "valid": ("2015-09-01", "2015-11-30"),
    "test": ("2015-12-01", "2016-02-26"),
}
FIT = ("2015-01-05", "2015-08-31")  # from the market's first day: windows with < 60 days of history


def _market(seed: int, n_instruments: int = 30, n_days: int = 300) -> pd.DataFrame:
    """A generated market (late listings, delistings, suspended days: absent rows) with missing
    values added inside present rows: NaN closes (the whole row's ratios become NaN), NaN
    vwaps and zero volumes (divided by 1e-12)."""
    market = generate_market(n_instruments, n_days, seed=seed)
    rng = np.random.default_rng(seed)
    n = len(market)
    market.loc[rng.uniform(size=n) < 0.01, "close"] = np.nan
    market.loc[rng.uniform(size=n) < 0.02, "vwap"] = np.nan
    market.loc[rng.uniform(size=n) < 0.01, "volume"] = 0.0
    return market


def _both(market: pd.DataFrame, infer=INFER, learn=LEARN, fit=FIT):
    start, end = SEGMENTS["train"][0], SEGMENTS["test"][1]
    frame = features.handler_frame("Alpha360", market, start, end)
    handler = DataHandler(frame, infer, learn, fit_start_time=fit[0], fit_end_time=fit[1])
    flat = Dataset(handler, SEGMENTS)
    panel = alpha360_panel(*features.handler_fields(market, start, end))
    gathered = Alpha360GatherDataset(panel, SEGMENTS, infer, learn, *fit)
    return flat, gathered, frame


def _rows(samples) -> np.ndarray:
    return np.asarray(samples.take(samples.features, np.arange(samples.size, dtype=np.int32)))


def _float64_rows(
    frame: pd.DataFrame, market: pd.DataFrame, index: pd.MultiIndex, fit
) -> np.ndarray:
    """The processed rows recomputed in float64 from the same float32 fields and the flat
    path's fitted constants: the float32 paths' distance to it is their round-off."""
    raw64 = _float64_alpha360(market, index)
    norm = RobustZScoreNorm(*fit, fields_group="feature")
    norm.fit(frame)
    x = (raw64 - norm._shift.astype(np.float64)) / norm._scale.astype(np.float64)
    return np.nan_to_num(np.clip(x, -3, 3), nan=0.0)


def _float64_alpha360(market: pd.DataFrame, index: pd.MultiIndex) -> np.ndarray:
    fields, _ = features.handler_fields(market)
    t = fields.dates.get_indexer(index.get_level_values("datetime"))
    i = pd.Index(fields.instruments).get_indexer(index.get_level_values("instrument"))
    out = np.empty((len(index), 360))
    for g, name in enumerate(("close", "open", "high", "low", "vwap", "volume")):
        series = fields.values[name].astype(np.float64)
        if name == "volume":
            scale = (fields.values["volume"] + np.float32(1e-12)).astype(np.float64)[t, i]
        else:
            scale = fields.values["close"].astype(np.float64)[t, i]
        for p in range(60):  # column position p reads lag 59 - p
            day = t - (59 - p)
            value = np.where(day >= 0, series[np.maximum(day, 0), i], np.nan)
            with np.errstate(divide="ignore", invalid="ignore"):
                out[:, g * 60 + p] = value / scale
    return out


@pytest.mark.parametrize("data_key", ["learn", "infer"])
def test_gathered_rows_equal_the_flat_rows(seed, data_key):
    market = _market(seed)
    flat, gathered, frame = _both(market)
    for segment in SEGMENTS:
        a, index_a = flat.samples(segment, data_key=data_key)
        b, index_b = gathered.samples(segment, data_key=data_key)
        assert index_a.equals(index_b), (segment, seed)
        np.testing.assert_array_equal(np.asarray(a.labels), np.asarray(b.labels), err_msg=segment)
        np.testing.assert_array_equal(np.asarray(a.day), np.asarray(b.day), err_msg=segment)
        x_flat, x_gather = np.asarray(a.features), _rows(b)
        reference = _float64_rows(frame, market, index_a, FIT)
        # Both float32 paths round the ratio and the norm; away from the +-3 clip and the
        # constant columns, their distance to float64 bounds their distance to each other.
        round_off = np.abs(x_flat - reference).max()
        assert round_off < 1e-4, (segment, seed, round_off)
        assert np.abs(x_gather - x_flat).max() <= 2 * round_off + 1e-6, (segment, seed)
        # Where the fit window's MAD is 0 (CLOSE0 and VOLUME0 are 1 on every row), an ulp in
        # the ratio would become +-3: these columns must match exactly.
        np.testing.assert_array_equal(x_gather[:, [59, 359]], x_flat[:, [59, 359]])
        assert not np.isnan(x_gather).any(), (segment, seed)


def test_nan_and_short_history_cases_are_present(seed):
    """The equality test above covers what it claims: NaN inputs and windows that reach
    before the first day of the data or of a late-listed instrument."""
    market = _market(seed)
    _, gathered, frame = _both(market, infer=[], learn=[])
    samples, index = gathered.samples("train", data_key="infer")
    raw = _rows(samples)
    np.testing.assert_array_equal(raw, frame.loc[index, "feature"].to_numpy())
    first_day = index.get_level_values("datetime") == index.get_level_values("datetime").min()
    assert np.isnan(raw[first_day, :59]).all()  # no history: lags 59..1 of CLOSE are NaN
    assert np.isnan(raw).any(axis=1).mean() > 0.5, seed  # most train rows have a NaN somewhere
    assert np.isnan(raw[:, 59]).any(), seed  # a NaN close on the row's own day


def test_unnormalised_gather_equals_the_handler_frame_bitwise(seed):
    market = _market(seed)
    fields, rows = features.handler_fields(market, "2015-03-02", "2015-12-31")
    frame = features.handler_frame("Alpha360", market, "2015-03-02", "2015-12-31")
    panel = alpha360_panel(fields, rows)
    samples = alpha360_samples(panel, np.arange(len(panel.labels)), Normalizer.identity())
    assert panel.index().equals(frame.index)
    np.testing.assert_array_equal(_rows(samples), frame["feature"].to_numpy())
    np.testing.assert_array_equal(panel.labels, frame[("label", features.LABEL)].to_numpy())


def test_fitted_constants_equal_robust_zscore_norm(seed):
    market = _market(seed)
    frame = features.handler_frame("Alpha360", market, "2015-01-05", "2016-02-26")
    norm = RobustZScoreNorm(*FIT, fields_group="feature", clip_outlier=False)
    norm.fit(frame)
    panel = alpha360_panel(*features.handler_fields(market, "2015-01-05", "2016-02-26"))
    spec = {
        "class": "RobustZScoreNorm",
        "kwargs": {"fields_group": "feature", "clip_outlier": False},
    }
    fitted, (proc,) = fit_infer_processors(panel, [spec], *FIT)
    assert proc.cols.equals(norm.cols)
    np.testing.assert_array_equal(fitted.shift, norm._shift)
    np.testing.assert_array_equal(fitted.scale, norm._scale)
    assert fitted.clip is None and fitted.fill is None


@pytest.mark.parametrize(
    "infer, learn, needle",
    [
        ([{"class": "ZScoreNorm", "kwargs": {"fields_group": "feature"}}], [], "ZScoreNorm"),
        (list(reversed(INFER)), [], "in that order"),
        ([], [{"class": "CSZScoreNorm", "kwargs": {"fields_group": "feature"}}], "label only"),
    ],
)
def test_processors_it_cannot_compute_are_refused(infer, learn, needle):
    market = generate_market(5, 120, seed=0)
    panel = alpha360_panel(*features.handler_fields(market))
    with pytest.raises(DataError, match=needle) as err:
        Alpha360GatherDataset(panel, {"train": ("2015-01-05", "2015-04-30")}, infer, learn, *FIT)
    assert "flat path" in str(err.value)


def test_lstm_trains_the_same_on_both_paths(seed):
    """The same LSTM fit: equal rows give equal losses, parameters and predictions (up to
    float summation order: both run the same program on inputs that are equal to round-off)."""
    from qjax.models.rnn.network import LSTMModel
    from qjax.train.config import TrainConfig
    from qjax.train.engine import fit, predict

    market = _market(seed, n_instruments=20, n_days=300)
    flat, gathered, _ = _both(market)
    module = LSTMModel(d_feat=6, hidden_size=8, num_layers=1)
    config = TrainConfig(n_epochs=3, batch_size=128, early_stop=5, seed=seed % 1000, lr=1e-3)
    results, scores = [], []
    for dataset in (flat, gathered):
        train, valid = dataset.samples("train")[0], dataset.samples("valid")[0]
        result = fit(module, train, valid, config, verbose=False)
        results.append(result)
        scores.append(predict(module, result.variables, dataset.samples("test")[0], per_seed=True))
    flat_leaves = jax.tree_util.tree_leaves(results[0].variables)
    gather_leaves = jax.tree_util.tree_leaves(results[1].variables)
    for a, b in zip(flat_leaves, gather_leaves):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(scores[0], scores[1], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(
        results[0].best_score, results[1].best_score, rtol=1e-6, err_msg=str(seed)
    )
    for name in ("train_loss", "valid_score"):
        np.testing.assert_allclose(
            results[0].history[name], results[1].history[name], rtol=1e-5, err_msg=name
        )
    assert np.ptp(results[0].history["train_loss"]) > 0, seed  # it did train


def test_estimator_fits_and_predicts_the_same_on_both_paths(seed):
    """The Qlib-style wrapper (what ``qjax.estimator`` users call) takes the gather dataset."""
    from qjax.estimators import estimator

    market = _market(seed, n_instruments=20, n_days=300)
    flat, gathered, _ = _both(market)
    kwargs = dict(hidden_size=8, num_layers=1, n_epochs=2, batch_size=128, seed=seed % 1000)
    predictions = [
        estimator("lstm", **kwargs).fit(data, verbose=False).predict(data, "test")
        for data in (flat, gathered)
    ]
    assert predictions[0].index.equals(predictions[1].index)
    np.testing.assert_allclose(predictions[0], predictions[1], rtol=1e-5, atol=1e-6)
    assert predictions[0].std() > 0, seed


def test_nan_inputs_are_refused_before_training():
    """Without Fillna a NaN row reaches the model: the same check as the flat path's."""
    from qjax.estimators import estimator

    market = _market(0, n_instruments=10, n_days=200)
    panel = alpha360_panel(*features.handler_fields(market))
    dataset = Alpha360GatherDataset(
        panel, {"train": ("2015-01-05", "2015-06-30")}, INFER[:1], LEARN, *FIT
    )
    with pytest.raises(DataError, match="CLOSE59"):
        estimator("lstm", n_epochs=1).fit(dataset, verbose=False)


def _gather_vs_flat_on_qlib_dir(root, instruments, start, end, fit):
    """Processed train rows of both paths read from a Qlib data directory."""
    frame = features.load_handler("Alpha360", root, instruments, start, end)
    segments = {"train": (start, end)}
    handler = DataHandler(frame, INFER, LEARN, fit_start_time=fit[0], fit_end_time=fit[1])
    flat, index_flat = Dataset(handler, segments).samples("train")
    panel = alpha360_panel(*features.load_handler_fields(root, instruments, start, end))
    gathered, index = Alpha360GatherDataset(panel, segments, INFER, LEARN, *fit).samples("train")
    assert index.equals(index_flat)
    np.testing.assert_array_equal(np.asarray(gathered.labels), np.asarray(flat.labels))
    return np.asarray(flat.features), _rows(gathered)


def test_a_qlib_directory_with_market_spans_gives_the_flat_rows(seed, tmp_path):
    """Rows limited to a market's membership spans, history read from before the start."""
    from qjax.data.qlib_writer import write_qlib_binary

    market = _market(seed, n_instruments=12, n_days=260)
    codes = sorted(market.index.get_level_values("instrument").unique())
    root = write_qlib_binary(market, tmp_path / "qlib", markets={"half": codes[::2]})
    flat, gathered = _gather_vs_flat_on_qlib_dir(
        root, "half", "2015-06-01", "2015-10-30", ("2015-06-01", "2015-08-31")
    )
    np.testing.assert_array_equal(gathered, flat)


def test_csi300_rows_equal_the_flat_rows(csi300_dir):
    """Real data: suspensions stored as NaN, index changes, instruments listed mid-span."""
    flat, gathered = _gather_vs_flat_on_qlib_dir(
        csi300_dir, "csi300", "2019-01-01", "2019-06-30", ("2019-01-01", "2019-04-30")
    )
    assert flat.shape[0] > 30000
    np.testing.assert_array_equal(gathered, flat)


def test_tabnet_which_fills_nan_from_the_rows_is_pointed_to_the_flat_dataset():
    from qjax.estimators import estimator

    market = generate_market(10, 200, seed=0)
    panel = alpha360_panel(*features.handler_fields(market))
    dataset = Alpha360GatherDataset(
        panel, {"train": ("2015-01-05", "2015-06-30")}, INFER, LEARN, *FIT
    )
    with pytest.raises(ValueError, match="Alpha360GatherDataset"):
        estimator("tabnet", n_epochs=1, pretrain=False).fit(dataset, verbose=False)
