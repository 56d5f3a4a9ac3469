"""qjax.estimator: Qlib's keyword arguments and defaults, errors, and a short training per model."""

from __future__ import annotations

import inspect

import numpy as np
import pandas as pd
import pytest

import qjax
from qjax.data import (
    DataHandler,
    Dataset,
    TSDataset,
    generate_concepts,
    generate_market,
    handler_frame,
)
from qjax.estimators import wrappers
from tests.conftest import require

# qjax spec -> Qlib wrapper classes whose keyword arguments and defaults it mirrors
QLIB_WRAPPERS = {
    "mlp": [("pytorch_nn", "DNNModelPytorch")],
    "lstm": [("pytorch_lstm", "LSTM"), ("pytorch_lstm_ts", "LSTM")],
    "gru": [("pytorch_gru", "GRU"), ("pytorch_gru_ts", "GRU")],
    "alstm": [("pytorch_alstm", "ALSTM"), ("pytorch_alstm_ts", "ALSTM")],
    "transformer": [
        ("pytorch_transformer", "TransformerModel"),
        ("pytorch_transformer_ts", "TransformerModel"),
    ],
    "localformer": [
        ("pytorch_localformer", "LocalformerModel"),
        ("pytorch_localformer_ts", "LocalformerModel"),
    ],
    "krnn": [("pytorch_krnn", "KRNN")],
    "sfm": [("pytorch_sfm", "SFM")],
    "tcn": [("pytorch_tcn", "TCN"), ("pytorch_tcn_ts", "TCN")],
    "gats": [("pytorch_gats", "GATs"), ("pytorch_gats_ts", "GATs")],
    "hist": [("pytorch_hist", "HIST")],
    "general": [("pytorch_general_nn", "GeneralPTNN")],
    "tabnet": [("pytorch_tabnet", "TabnetModel")],
}
# Deliberate differences, each documented in the model's home (qjax/models/<family>/wrapper.py).
# rnn_type: Qlib's ALSTM YAMLs pass it and the wrapper swallows it in **kwargs.
QJAX_ONLY = {
    "alstm": {"honour_rnn_type", "rnn_type"},
    "gats": {"daily_batch"},
    "krnn": {"layout"},
    "tabnet": {"paper", "lambda_sparse"},
}
CHANGED_DEFAULTS = {("hist", "metric"): "ic"}  # Qlib's default "" raises in HIST.metric_fn


@pytest.mark.parity
@pytest.mark.parametrize("name", sorted(QLIB_WRAPPERS))
def test_keyword_arguments_and_defaults_equal_qlib_wrappers(name):
    spec = wrappers()[name].spec
    for module_name, class_name in QLIB_WRAPPERS[name]:
        module = require(f"qlib.contrib.model.{module_name}")
        params = inspect.signature(getattr(module, class_name).__init__).parameters
        qlib_defaults = {
            k: p.default
            for k, p in params.items()
            if k != "self" and p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL)
        }
        is_ts = module_name.endswith("_ts")
        ours = spec.resolve({}, is_ts)
        for key, default in qlib_defaults.items():
            assert key in ours, (
                f"{name}: Qlib's {module_name}.{class_name} takes {key!r}, qjax does not"
            )
            expected = CHANGED_DEFAULTS.get((name, key), default)
            assert ours[key] == expected, (
                f"{name} ({module_name}): default of {key!r} is {ours[key]!r}, Qlib's {expected!r}"
            )
        extra = set(spec.defaults) - set(qlib_defaults) - QJAX_ONLY.get(name, set())
        if not is_ts:
            assert not extra, f"{name}: keywords Qlib's {class_name} does not have: {extra}"


def test_unknown_keyword_is_an_error_naming_the_accepted_ones():
    with pytest.raises(
        TypeError, match=r"unknown keyword argument\(s\) \['hiden_size'\].*hidden_size"
    ):
        qjax.estimator("lstm", hiden_size=32)


def test_unknown_model_name_lists_the_available_ones():
    with pytest.raises(KeyError, match="unknown model 'lstmm'.*lstm"):
        qjax.estimator("lstmm")


@pytest.fixture(scope="module")
def market():
    return generate_market(n_instruments=24, n_days=160, start="2015-01-05", seed=3)


SEGMENTS = {
    "train": ("2015-01-05", "2015-05-29"),
    "valid": ("2015-06-01", "2015-07-10"),
    "test": ("2015-07-13", "2015-08-14"),
}
STANDARD = dict(
    infer_processors=[
        {"class": "RobustZScoreNorm", "kwargs": {"fields_group": "feature", "clip_outlier": True}},
        {"class": "Fillna", "kwargs": {"fields_group": "feature"}},
    ],
    learn_processors=["DropnaLabel", {"class": "CSRankNorm", "kwargs": {"fields_group": "label"}}],
    fit_start_time=SEGMENTS["train"][0],
    fit_end_time=SEGMENTS["train"][1],
)


@pytest.fixture(scope="module")
def alpha360(market):
    return Dataset(DataHandler(handler_frame("Alpha360", market), **STANDARD), SEGMENTS)


@pytest.fixture(scope="module")
def alpha158_windows(market):
    handler = DataHandler(
        handler_frame("Alpha158", market),
        **{
            **STANDARD,
            "infer_processors": [
                {
                    "class": "FilterCol",
                    "kwargs": {
                        "fields_group": "feature",
                        "col_list": [
                            "KLEN",
                            "KLOW",
                            "ROC5",
                            "ROC20",
                            "STD5",
                            "CORR5",
                            "VSTD5",
                            "WVMA5",
                        ],
                    },
                }
            ]
            + STANDARD["infer_processors"],
        },
    )
    return TSDataset(handler, SEGMENTS, step_len=8)


SMALL = {"n_epochs": 4, "early_stop": 10, "lr": 3e-3, "seed": 0}
# name -> (dataset fixture, tiny kwargs)
TINY = {
    "mlp": (
        "alpha360",
        {
            "pt_model_kwargs": {"input_dim": 360, "layers": (32,)},
            "max_steps": 60,
            "eval_steps": 15,
            "batch_size": 256,
            "optimizer": "adam",
            "lr": 3e-3,
            "seed": 0,
        },
    ),
    "lstm": ("alpha360", {"d_feat": 6, "hidden_size": 16, "batch_size": 256, **SMALL}),
    "gru": ("alpha158_windows", {"d_feat": 8, "hidden_size": 16, "batch_size": 256, **SMALL}),
    "alstm": ("alpha360", {"d_feat": 6, "hidden_size": 16, "batch_size": 256, **SMALL}),
    "krnn": (
        "alpha360",
        {"fea_dim": 6, "cnn_dim": 8, "rnn_dim": 8, "rnn_dups": 2, "batch_size": 256, **SMALL},
    ),
    "transformer": ("alpha158_windows", {"d_feat": 8, "d_model": 16, "batch_size": 256, **SMALL}),
    "localformer": ("alpha158_windows", {"d_feat": 8, "d_model": 16, "batch_size": 256, **SMALL}),
    "sfm": (
        "alpha360",
        {
            "d_feat": 6,
            "hidden_size": 16,
            "freq_dim": 4,
            "batch_size": 256,
            "optimizer": "adam",
            **SMALL,
        },
    ),
    "tcn": (
        "alpha158_windows",
        {
            "d_feat": 8,
            "n_chans": 8,
            "num_layers": 2,
            "kernel_size": 3,
            "dropout": 0.0,
            "batch_size": 256,
            **SMALL,
        },
    ),
    "gats": ("alpha360", {"d_feat": 6, "hidden_size": 16, **SMALL}),
    "hist": ("alpha360", {"d_feat": 6, "hidden_size": 16, **SMALL}),
    "general": (
        "alpha158_windows",
        {
            "pt_model_uri": "qjax.models.rnn.GRUModel",
            "batch_size": 256,
            "pt_model_kwargs": {"d_feat": 8, "hidden_size": 16},
            **SMALL,
        },
    ),
}


@pytest.mark.parametrize("name", sorted(TINY))
def test_each_model_trains_and_its_loss_falls(name, request):
    fixture, kwargs = TINY[name]
    dataset = request.getfixturevalue(fixture)
    if name == "hist":
        kwargs = {**kwargs, "stock2concept": generate_concepts(n_instruments=24, seed=3)}
    model = qjax.estimator(name, **kwargs)
    evals = {}
    model.fit(dataset, evals_result=evals, verbose=False)
    train_loss = np.asarray(model.result.history["train_loss"])[:, 0]
    assert np.all(np.isfinite(train_loss))
    assert train_loss[-1] < train_loss[0], f"{name}: train loss did not fall: {train_loss}"
    assert len(evals["valid"]) == len(train_loss)
    pred = model.predict(dataset, "test")
    test_data = dataset.prepare("test", col_set="feature")
    test_index = test_data.get_index() if isinstance(dataset, TSDataset) else test_data.index
    assert isinstance(pred, pd.Series) and pred.index.names == ["datetime", "instrument"]
    assert pred.index.sort_values().equals(test_index.sort_values())
    assert np.isfinite(pred.to_numpy()).all()


def test_several_seeds_give_one_prediction_column_per_seed(alpha360):
    model = qjax.estimator(
        "lstm", d_feat=6, hidden_size=8, batch_size=256, n_epochs=2, early_stop=5
    )
    model.fit(alpha360, seeds=[0, 1], verbose=False)
    pred = model.predict(alpha360, "test")
    assert list(pred.columns) == ["seed_0", "seed_1"]
    assert not np.allclose(pred["seed_0"], pred["seed_1"])


def test_wrong_d_feat_is_a_clear_error(alpha158_windows, alpha360):
    with pytest.raises(ValueError, match="d_feat=6 but the dataset's windows have 8 features"):
        qjax.estimator("lstm", d_feat=6, n_epochs=1).fit(alpha158_windows, verbose=False)
    with pytest.raises(ValueError, match="input_dim=158 but the dataset has 360"):
        qjax.estimator("mlp", pt_model_kwargs={"input_dim": 158}).fit(alpha360, verbose=False)


def test_missing_segment_and_predict_before_fit_are_clear_errors(alpha360):
    with pytest.raises(RuntimeError, match="call fit"):
        qjax.estimator("lstm").predict(alpha360)
    model = qjax.estimator("lstm", d_feat=6, hidden_size=8, batch_size=256, n_epochs=1)
    model.fit(alpha360, verbose=False)
    with pytest.raises(KeyError, match="no 'holdout' segment"):
        model.predict(alpha360, "holdout")


def test_alstm_is_a_gru_like_qlib_unless_asked(alpha360):
    common = dict(d_feat=6, hidden_size=8, batch_size=256, n_epochs=1)
    qlib_like = qjax.estimator("alstm", rnn_type="LSTM", **common).fit(alpha360, verbose=False)
    honoured = qjax.estimator("alstm", rnn_type="LSTM", honour_rnn_type=True, **common).fit(
        alpha360, verbose=False
    )
    assert qlib_like.module.rnn_type == "GRU"
    assert honoured.module.rnn_type == "LSTM"


def test_gats_legacy_daily_batch_uses_qlib_ts_pseudo_days(alpha158_windows, alpha360):
    kwargs = {"d_feat": 8, "hidden_size": 8, "n_epochs": 2, "early_stop": 5, "seed": 0}
    legacy = qjax.estimator("gats", daily_batch="qlib_legacy", **kwargs).fit(
        alpha158_windows, verbose=False
    )
    assert legacy.config.shuffle_days is False
    true_daily = qjax.estimator("gats", **kwargs).fit(alpha158_windows, verbose=False)
    assert true_daily.config.shuffle_days is True
    # Same initial weights, different attention groups: the two runs must differ.
    pred_legacy, pred_daily = legacy.predict(alpha158_windows), true_daily.predict(alpha158_windows)
    assert pred_legacy.index.equals(pred_daily.index)
    assert not np.allclose(pred_legacy.to_numpy(), pred_daily.to_numpy())
    with pytest.raises(ValueError, match="needs a TSDataset"):
        qjax.estimator("gats", daily_batch="qlib_legacy", d_feat=6, n_epochs=1).fit(
            alpha360, verbose=False
        )
    with pytest.raises(ValueError, match="daily_batch='days'"):
        qjax.estimator("gats", daily_batch="days", d_feat=8, n_epochs=1).fit(
            alpha158_windows, verbose=False
        )


def test_a_saved_estimator_loads_and_predicts_the_same(alpha360, tmp_path):
    model = qjax.estimator(
        "mlp",
        pt_model_kwargs={"input_dim": 360, "layers": [16]},
        max_steps=20,
        eval_steps=10,
        batch_size=256,
        optimizer="adam",
        lr=3e-3,
        seed=0,
    )
    model.fit(alpha360, seeds=[0, 1], verbose=False)
    loaded = qjax.estimators.load(model.save(tmp_path / "mlp"))
    assert loaded.config == model.config and loaded.result.seeds == (0, 1)
    pd.testing.assert_frame_equal(loaded.predict(alpha360, "test"), model.predict(alpha360, "test"))
    np.testing.assert_array_equal(
        loaded.result.history["valid_loss"], model.result.history["valid_loss"]
    )
    with pytest.raises(FileNotFoundError, match="no saved estimator"):
        qjax.estimators.load(tmp_path)


def test_saving_needs_json_keyword_arguments(alpha360, tmp_path):
    model = qjax.estimator(
        "hist",
        d_feat=6,
        hidden_size=8,
        n_epochs=1,
        stock2concept=generate_concepts(n_instruments=24, seed=3),
    )
    model.fit(alpha360, verbose=False)
    with pytest.raises(TypeError, match="must be JSON data.*stock2concept as .npy paths"):
        model.save(tmp_path / "hist")


def test_a_streamed_estimator_predicts_what_the_resident_one_does(alpha360, alpha158_windows):
    """``stream_batches`` travels from the keyword arguments to the engine (fit and predict)."""
    common = dict(d_feat=6, hidden_size=8, batch_size=256, n_epochs=2, early_stop=5)
    resident = qjax.estimator("lstm", **common).fit(alpha360, verbose=False)
    streamed = qjax.estimator("lstm", stream_batches=2, **common).fit(alpha360, verbose=False)
    assert streamed.config.stream_batches == 2 and resident.config.stream_batches is None
    pd.testing.assert_series_equal(streamed.predict(alpha360), resident.predict(alpha360))
    windows = qjax.estimator("lstm", d_feat=8, stream_batches=2, n_epochs=1)
    with pytest.raises(ValueError, match="stream_batches=2 streams the feature rows"):
        windows.fit(alpha158_windows, verbose=False)
