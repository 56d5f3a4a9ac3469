"""Property-based tests: random malformed configs, model keywords and OHLCV frames end either
in a correct result or in qjax's own documented error (:class:`qjax.errors.QjaxError`) with a
message; never in another exception, and never with a key silently ignored.

Derandomized (a fixed example sequence) with few examples, so CI is fast and deterministic.
"""

from __future__ import annotations

import copy
import datetime as dt
from pathlib import Path

import numpy as np
import pandas as pd
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import qjax
from qjax import run_config
from qjax.data.sources import STANDARD_FIELDS, load_ohlcv
from qjax.errors import QjaxError

REPO = Path(__file__).resolve().parents[1]
BASE = run_config.load(REPO / "configs" / "lstm_alpha360.yaml")
FAST = settings(
    max_examples=150,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow],
)

junk = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-5, 500),
    st.floats(allow_nan=True),
    st.text(max_size=12),
    st.lists(st.integers(-3, 3), max_size=3),
    st.dictionaries(st.text(max_size=5), st.integers(), max_size=2),
    st.sampled_from(
        [
            "2015-01-05",
            "2016-13-45",
            "generated",
            "qlib",
            "csv",
            "TSDataset",
            "Alpha158",
            "lstm",
            [2015, 1],
            ["2016-01-04", "2015-01-04"],
        ]
    ),
)
KNOWN_KEYS = sorted(
    {
        "source",
        "n_instruments",
        "n_days",
        "start",
        "seed",
        "provider_uri",
        "path",
        "name",
        "fit_end_time",
        "fit_end_tme",
        "segments",
        "class",
        "step_len",
        "step_length",
        "kwargs",
        "seeds",
        "valid",
        "vaild",
        "test",
        "infer_processors",
        "process_type",
    }
)
key = st.one_of(st.sampled_from(KNOWN_KEYS), st.text(min_size=1, max_size=8))


@st.composite
def mutated_configs(draw):
    """The shipped LSTM config with 1-4 random edits: set, add or delete a key anywhere."""
    cfg = copy.deepcopy(BASE)
    for _ in range(draw(st.integers(1, 4))):
        section = (
            draw(st.sampled_from(run_config.SECTIONS)) if draw(st.integers(0, 9)) else draw(key)
        )
        path = [section, *draw(st.lists(key, min_size=1, max_size=2))]
        if section == "dataset" and draw(st.booleans()):
            path = ["dataset", "segments", draw(key)]
        node, depth = cfg, 0
        while depth < len(path) - 1 and isinstance(node.get(path[depth]), dict):
            node, depth = node[path[depth]], depth + 1
        if draw(st.integers(0, 3)) == 0 and node:  # delete a key of the node reached
            node.pop(draw(st.sampled_from(sorted(node, key=str))))
        else:  # set the next key of the path (a new or a replaced value)
            node[path[depth]] = draw(junk)
    return cfg


def _no_unknown_key_survives(cfg: dict) -> None:
    source = cfg["data"].get("source", "generated")
    assert set(cfg["data"]) <= {"source", *run_config.DATA_KEYS[source]}
    assert set(cfg["handler"]) <= set(run_config.HANDLER_KEYS)
    assert set(cfg["dataset"]) <= set(run_config.DATASET_KEYS)
    assert set(cfg["model"]) <= set(run_config.MODEL_KEYS)
    assert set(cfg["train"]) <= set(run_config.TRAIN_KEYS)
    assert set(cfg["dataset"]["segments"]) <= set(run_config.SEGMENT_NAMES)


@FAST
@given(mutated_configs())
def test_config_validation_accepts_or_raises_config_error(cfg):
    try:
        valid = run_config.validate(cfg)
    except QjaxError as err:
        assert str(err), "an error without a message"
        return
    _no_unknown_key_survives(valid)


MODEL_KEYWORDS = sorted(
    {
        "d_feat",
        "hidden_size",
        "num_layers",
        "dropout",
        "lr",
        "n_epochs",
        "batch_size",
        "d_model",
        "nhead",
        "dropout_W",
        "n_chans",
        "kernel_size",
        "hiden_size",
        "dropuot",
        "early_stop",
        "n_steps",
        "vbs",
        "rnn_dups",
    }
)


@FAST
@given(
    st.sampled_from(
        [
            "lstm",
            "gru",
            "alstm",
            "transformer",
            "sfm",
            "tcn",
            "krnn",
            "tabnet",
            "gats",
            "hist",
            "mlp",
        ]
    ),
    st.dictionaries(st.sampled_from(MODEL_KEYWORDS), junk, max_size=3),
)
def test_estimator_construction_accepts_or_raises_a_qjax_error(name, kwargs):
    try:
        qjax.estimator(name, **kwargs)
    except QjaxError as err:
        assert str(err)


# -- OHLCV frames -------------------------------------------------------------------------------

cell = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True, width=64),
    st.integers(-10, 10),
    st.none(),
    st.text(max_size=4),
    st.sampled_from(["1.5", "2020-01-02", "x"]),
)
date_cell = st.one_of(
    st.sampled_from(
        ["2020-01-02", "2020-01-03", "2020-01-06", "2020/01/07", "not a date", "", None]
    ),
    st.dates().map(str),
)
instrument_cell = st.one_of(st.sampled_from(["A", "B", "C", None]), st.integers(0, 3))


@st.composite
def ohlcv_frames(draw):
    clean_keys = draw(st.booleans())
    if clean_keys:  # unique (date, instrument) pairs, so that the value checks get exercised
        pairs = draw(
            st.lists(
                st.tuples(
                    st.dates(dt.date(2000, 1, 1), dt.date(2030, 1, 1)), st.sampled_from("ABC")
                ),
                unique=True,
                max_size=8,
            )
        )
        n = len(pairs)
    else:
        n = draw(st.integers(0, 8))
    names = ["date", "instrument", *STANDARD_FIELDS, "extra", "Close"]
    if draw(st.booleans()):  # mostly the expected columns, so that value checks get exercised
        dropped = draw(st.lists(st.sampled_from(names), max_size=1))
        columns = [c for c in names if c not in dropped]
    else:
        columns = draw(st.lists(st.sampled_from(names), unique=True, max_size=9))
    data = {}
    for column in columns:
        if clean_keys and column in ("date", "instrument"):
            data[column] = [str(pair[column == "instrument"]) for pair in pairs]
            continue
        strategy = {"date": date_cell, "instrument": instrument_cell}.get(column)
        if strategy is None:
            clean = st.one_of(st.floats(0.5, 100), st.just(float("nan")))
            strategy = st.one_of(clean, cell) if draw(st.booleans()) else clean
        data[column] = draw(st.lists(strategy, min_size=n, max_size=n))
    return pd.DataFrame(data)


@FAST
@given(ohlcv_frames())
def test_load_ohlcv_returns_a_clean_panel_or_raises_a_data_error(frame):
    try:
        panel = load_ohlcv(frame)
    except QjaxError as err:
        assert str(err)
        return
    assert list(panel.index.names) == ["datetime", "instrument"]
    assert panel.index.is_unique and panel.index.is_monotonic_increasing
    assert len(panel) == len(frame)
    assert all(panel[c].dtype == np.float32 for c in panel.columns)
    assert not np.isinf(panel.to_numpy()).any()
    assert {"open", "high", "low", "close", "volume"} <= set(panel.columns)


# -- handler and dataset over random panels ------------------------------------------------------

value = st.one_of(st.floats(-5, 5), st.sampled_from([float("nan"), float("inf"), -float("inf")]))
DAYS = pd.bdate_range("2020-01-01", periods=12)


@st.composite
def panels_and_segments(draw):
    n_inst = draw(st.integers(1, 4))
    pairs = [(d, f"I{k}") for d in DAYS for k in range(n_inst)]
    keep = draw(st.lists(st.booleans(), min_size=len(pairs), max_size=len(pairs)))
    rows = [pair for pair, kept in zip(pairs, keep) if kept] or pairs[:1]
    index = pd.MultiIndex.from_tuples(rows, names=["datetime", "instrument"])
    # mostly clean values with a few NaN/inf, so that both outcomes occur
    clean = draw(st.booleans())
    cells = draw(
        st.lists(
            st.floats(-5, 5) if clean else st.one_of(st.floats(-5, 5), value),
            min_size=3 * len(rows),
            max_size=3 * len(rows),
        )
    )
    columns = pd.MultiIndex.from_tuples([("feature", "f1"), ("feature", "f2"), ("label", "y")])
    frame = pd.DataFrame(np.asarray(cells).reshape(len(rows), 3), index=index, columns=columns)
    if draw(st.booleans()):  # segments inside the data
        cuts = [0, draw(st.integers(3, 6)), draw(st.integers(7, 9)), 11]
    else:
        cuts = sorted(draw(st.lists(st.integers(-2, 14), min_size=4, max_size=4)))
    day = lambda i: str((DAYS[0] + pd.offsets.BDay(i)).date())  # noqa: E731
    segments = {
        "train": [day(cuts[0]), day(cuts[1])],
        "valid": [day(cuts[1] + 1), day(cuts[2])],
        "test": [day(cuts[2] + 1), day(cuts[3])],
    }
    return frame, segments


@FAST
@given(panels_and_segments())
def test_handler_and_dataset_checks_accept_a_trainable_dataset_or_raise_a_qjax_error(case):
    from qjax.data.dataset import Dataset
    from qjax.data.handler import DataHandler
    from qjax.workflow import check_dataset

    frame, segments = case
    try:
        handler = DataHandler(
            frame,
            infer_processors=[{"class": "Fillna", "kwargs": {"fields_group": "feature"}}],
            learn_processors=["DropnaLabel"],
        )
        dataset = Dataset(handler, segments)
        check_dataset(dataset)
    except QjaxError as err:
        assert str(err)
        return
    # Accepted: the training segments hold rows, and only finite features and labels.
    for name in ("train", "valid"):
        samples, _ = dataset.samples(name)
        assert samples.size > 0
        assert np.isfinite(np.asarray(samples.features)).all()
        assert np.isfinite(np.asarray(samples.labels)).all()
