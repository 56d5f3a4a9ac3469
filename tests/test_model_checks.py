"""Model keywords are checked when the estimator is built; the flat feature layout before
training (a d_feat that splits Alpha360 into the wrong fields x days trains on scrambled steps)."""

from __future__ import annotations

import pytest

import qjax
from qjax.data.features import feature_names
from qjax.errors import ConfigError, UnknownKeywordError
from qjax.estimators import wrappers
from qjax.model_checks import check_feature_layout, time_layout

DROPOUT_KEYWORDS = sorted(
    (name, key)
    for name, model in wrappers().items()
    for key in model.spec.defaults
    if "dropout" in key
)


def test_every_model_with_dropout_is_covered():
    assert {name for name, _ in DROPOUT_KEYWORDS} >= {
        "lstm",
        "gru",
        "alstm",
        "transformer",
        "localformer",
        "krnn",
        "sfm",
        "tcn",
        "gats",
        "hist",
    }


@pytest.mark.parametrize("name, key", DROPOUT_KEYWORDS)
@pytest.mark.parametrize("value", [1.0, 1.5, -0.1, "0.2", True])
def test_dropout_outside_0_1_is_an_error_at_construction(name, key, value):
    message = rf"{key}={value!r} is not a dropout rate; use a number in \[0, 1\)"
    with pytest.raises(ConfigError, match=message):
        qjax.estimator(name, **{key: value})


@pytest.mark.parametrize("name, key", DROPOUT_KEYWORDS)
def test_dropout_inside_0_1_is_accepted(name, key):
    qjax.estimator(name, **{key: 0.0})
    qjax.estimator(name, **{key: 0.99})


def test_nested_general_network_dropout_is_checked():
    with pytest.raises(ConfigError, match="pt_model_kwargs: dropout=2"):
        qjax.estimator("general", pt_model_kwargs={"d_feat": 6, "hidden_size": 8, "dropout": 2})


@pytest.mark.parametrize(
    "name, kwargs, message",
    [
        ("lstm", {"hidden_size": 0}, "hidden_size must be a positive integer, got 0"),
        ("gru", {"num_layers": -1}, "num_layers must be a positive integer"),
        ("lstm", {"hidden_size": 8.5}, "hidden_size must be a positive integer, got 8.5"),
        ("transformer", {"d_model": 0}, "d_model must be a positive integer"),
        ("transformer", {"d_model": 10, "nhead": 3}, "d_model=10 is not a multiple of nhead=3"),
        ("tcn", {"n_chans": 0}, "n_chans must be a positive integer"),
        ("krnn", {"rnn_dups": 0}, "rnn_dups must be a positive integer"),
        ("tabnet", {"n_steps": 0}, "n_steps must be a positive integer"),
        ("tabnet", {"n_shared": -1}, "n_shared must be a non-negative integer"),
        ("lstm", {"batch_size": 0}, "batch_size must be a positive integer"),
        ("lstm", {"n_epochs": 0}, "n_epochs must be a positive integer"),
        ("lstm", {"lr": 0}, "lr must be a positive number"),
        ("lstm", {"lr": float("nan")}, "lr must be a positive number"),
        (
            "mlp",
            {"pt_model_kwargs": {"input_dim": 360, "layers": (256, 0)}},
            "layers entry must be a positive integer, got 0",
        ),
    ],
)
def test_non_positive_sizes_are_an_error_at_construction(name, kwargs, message):
    with pytest.raises(ConfigError, match=message):
        qjax.estimator(name, **kwargs)


def test_unknown_keyword_suggests_the_closest_name_and_stays_a_type_error():
    with pytest.raises(TypeError, match=r"\['hiden_size'\] \(did you mean 'hidden_size'\?\)"):
        qjax.estimator("lstm", hiden_size=8)
    with pytest.raises(UnknownKeywordError):
        qjax.estimator("lstm", dropuot=0.1)


def test_alpha360_layout_is_6_fields_by_60_days_and_alpha158_has_none():
    assert time_layout(feature_names("Alpha360")) == (6, 60)
    assert time_layout(feature_names("Alpha158")) is None
    assert time_layout(["A2", "A1", "B2", "B1"]) == (2, 2)
    assert time_layout(["A2", "A1", "B1", "B2"]) is None  # different lag order: no layout
    assert time_layout(["A1", "B1"]) is None  # one step is no time axis
    assert time_layout(["x", "y"]) is None
    assert time_layout([f"f{i}" for i in range(360)]) is None  # a numbering, not one field's lags


@pytest.mark.parametrize("d_feat", [1, 5, 12, 60, 360])
def test_a_d_feat_other_than_6_is_rejected_for_alpha360(d_feat):
    # 5 and 12 divide the 360 columns, which the old divisibility check let through
    with pytest.raises(ConfigError, match=r"6 fields x 60 days .* Set d_feat=6"):
        check_feature_layout("lstm", "d_feat", d_feat, feature_names("Alpha360"))


def test_alpha158_on_a_flat_dataset_must_be_one_step():
    names = feature_names("Alpha158")
    check_feature_layout("lstm", "d_feat", len(names), names)
    with pytest.raises(ConfigError, match=r"no time axis .* set d_feat=158"):
        check_feature_layout("lstm", "d_feat", 2, names)
    check_feature_layout("lstm", "d_feat", 6, feature_names("Alpha360"))
    check_feature_layout("lstm", "d_feat", 3, ["a", "b", "c", "d", "e", "f"])  # unknown names
