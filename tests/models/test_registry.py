"""The one model registry: every public entry point reads it, and a new model touches one place."""

from __future__ import annotations

import flax.linen as nn
import numpy as np
import pandas as pd
import pytest

import qjax
from qjax.data import DataHandler, Dataset
from qjax.estimators import wrappers
from qjax.interop import from_qlib
from qjax.models import registry
from qjax.models.spec import EPOCH_LOOP, ModelSpec, SequenceInput


class Toy(nn.Module):
    """A linear model on flat rows: enough to train."""

    d_feat: int

    @nn.compact
    def __call__(self, x, train: bool = False):
        return nn.Dense(1)(x.reshape(x.shape[0], -1))[:, 0]


def _toy_convert(state_dict, d_feat):
    module = Toy(d_feat)
    kernel = np.asarray(state_dict["fc.weight"], np.float32).T
    return module, {"params": {"Dense_0": {"kernel": kernel, "bias": state_dict["fc.bias"]}}}


# The whole "home" of the toy family: network, converter and wrapper spec, registered at once.
TOY_SPEC = ModelSpec(
    "toy (no Qlib counterpart)",
    {"d_feat": 4, **EPOCH_LOOP},
    lambda kw, is_ts: {"d_feat": kw["d_feat"]},
    adapters=(SequenceInput("d_feat"),),
)


@pytest.fixture
def toy():
    registry.register("toy", spec=TOY_SPEC, convert=_toy_convert)(Toy)
    yield
    registry.unregister("toy")


@pytest.fixture
def dataset(seed):
    rng = np.random.default_rng(seed)
    dates = pd.bdate_range("2020-01-01", periods=60)
    index = pd.MultiIndex.from_product(
        [dates, [f"S{i}" for i in range(20)]], names=["datetime", "instrument"]
    )
    x = rng.standard_normal((len(index), 4)).astype(np.float32)
    y = x @ np.array([0.5, -1.0, 0.25, 0.0], np.float32) + 0.1 * rng.standard_normal(len(index))
    columns = pd.MultiIndex.from_tuples([("feature", f"f{i}") for i in range(4)] + [("label", "y")])
    frame = pd.DataFrame(np.column_stack([x, y]), index=index, columns=columns)
    segments = {
        "train": ("2020-01-01", "2020-02-21"),
        "valid": ("2020-02-24", "2020-03-06"),
        "test": ("2020-03-09", "2020-03-24"),
    }
    return Dataset(DataHandler(frame), segments)


def test_a_toy_model_registered_in_one_place_is_everywhere(toy, dataset, seed):
    assert qjax.models.get("toy") is Toy
    assert "toy" in qjax.models.names() and "toy" in wrappers()
    model = qjax.estimator("toy", d_feat=4, n_epochs=30, batch_size=100, lr=0.05, seed=seed)
    model.fit(dataset, verbose=False)
    loss = model.result.history["train_loss"][:, 0]
    assert loss[-1] < 0.5 * loss[0], f"seed {seed}: the toy's train loss did not fall: {loss}"
    pred = model.predict(dataset, "test")
    assert isinstance(pred, pd.Series) and len(pred) == 12 * 20 and np.isfinite(pred).all()

    state_dict = {"fc.weight": np.ones((1, 4), np.float32), "fc.bias": np.zeros(1, np.float32)}
    module, variables = from_qlib("toy", state_dict, d_feat=4)
    np.testing.assert_allclose(module.apply(variables, np.eye(4, dtype=np.float32)), np.ones(4))


def test_unregistering_removes_it_again(toy):
    registry.unregister("toy")
    with pytest.raises(KeyError, match="unknown model name 'toy'"):
        qjax.models.get("toy")
    with pytest.raises(KeyError, match="unknown model 'toy'"):
        qjax.estimator("toy")


def test_every_home_entry_is_consistent():
    table = registry.models()
    for name, entry in table.items():
        assert entry.name == name
        assert issubclass(entry.network, nn.Module), name
    # Every Qlib wrapper spec has its network; the converters cover every zoo network.
    assert set(wrappers()) == {
        "mlp",
        "lstm",
        "gru",
        "alstm",
        "transformer",
        "localformer",
        "gats",
        "tabnet",
        "krnn",
        "sfm",
        "hist",
        "tcn",
        "general",
    }
    convertible = {name for name, entry in table.items() if entry.convert is not None}
    assert convertible == set(wrappers()) - {"general"} | {"tabnet_encoder", "tabnet_decoder"}


def test_a_network_without_a_spec_has_no_estimator():
    registry.register("bare", convert=None)(Toy)
    try:
        assert qjax.models.get("bare") is Toy
        with pytest.raises(KeyError, match="unknown model 'bare'"):
            qjax.estimator("bare")
    finally:
        registry.unregister("bare")
