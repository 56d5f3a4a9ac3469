"""The general adapter: any Flax module by import path, output flattened to one value per sample."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from qjax.models import get
from qjax.models.gats import GATModel
from qjax.models.general import GeneralModel, build

HERE = __name__  # the import name pytest gave this file, so its classes have a dotted path


class TwoLayerNet(nn.Module):
    """A user network returning [N, 1], like Qlib's ``Net``."""

    width: int
    dropout: float = 0.0

    @nn.compact
    def __call__(self, x, train: bool = False):
        h = nn.relu(nn.Dense(self.width)(x))
        h = nn.Dropout(self.dropout, deterministic=not train)(h)
        return nn.Dense(1)(h)


class NoTrainFlag(nn.Module):
    @nn.compact
    def __call__(self, x):
        return nn.Dense(1)(x)[:, 0]


class ThreeOutputs(nn.Module):
    @nn.compact
    def __call__(self, x):
        return nn.Dense(3)(x)


def test_wraps_a_module_by_dotted_path_with_per_sample_output(seed):
    model = get("general")(f"{HERE}.TwoLayerNet", {"width": 8})
    x = np.random.default_rng(seed).standard_normal((5, 4)).astype(np.float32)
    variables = model.init(jax.random.PRNGKey(0), x)
    out = model.apply(variables, x)
    assert out.shape == (5,)  # [N, 1] flattened: the loss against [N] labels stays per-sample
    direct = TwoLayerNet(width=8).apply({"params": variables["params"]["net"]}, x)
    np.testing.assert_array_equal(out, direct[:, 0])
    assert model.apply(variables, x[:1]).shape == (1,)

    plain = GeneralModel(f"{HERE}.NoTrainFlag")
    assert plain.apply(plain.init(jax.random.PRNGKey(0), x), x, train=True).shape == (5,)


def test_train_flag_reaches_the_wrapped_module(seed):
    model = GeneralModel(f"{HERE}.TwoLayerNet", {"width": 32, "dropout": 0.5})
    x = np.random.default_rng(seed + 1).standard_normal((6, 4)).astype(np.float32)
    variables = model.init(jax.random.PRNGKey(0), x)
    train_a = model.apply(variables, x, train=True, rngs={"dropout": jax.random.PRNGKey(1)})
    train_b = model.apply(variables, x, train=True, rngs={"dropout": jax.random.PRNGKey(2)})
    assert not np.allclose(train_a, train_b)
    np.testing.assert_array_equal(model.apply(variables, x), model.apply(variables, x))


@pytest.mark.parametrize(
    "path", ["qjax.models.gats.GATModel", "gats", "qlib.contrib.model.pytorch_gats_ts.GATModel"]
)
def test_qjax_paths_registry_names_and_qlib_uris_build_the_qjax_port(path, seed):
    kwargs = {"d_feat": 3, "hidden_size": 8, "num_layers": 1, "base_model": "LSTM"}
    if path.startswith("qlib."):
        kwargs["device"] = "cpu"  # Qlib-style kwargs carry a torch device; it is dropped
    assert isinstance(build(path, kwargs), GATModel)
    model = GeneralModel(path, kwargs)
    x = np.random.default_rng(seed + 2).standard_normal((4, 5, 3)).astype(np.float32)
    variables = model.init(jax.random.PRNGKey(0), x)
    direct = GATModel(d_feat=3, hidden_size=8, num_layers=1, base_model="LSTM")
    np.testing.assert_allclose(
        model.apply(variables, x),
        direct.apply({"params": variables["params"]["net"]}, x),
        rtol=1e-6,
    )


@pytest.mark.parametrize(
    "path,kwargs,message",
    [
        ("", {}, "non-empty string"),
        ("no_such_package_xyz.Model", {}, "cannot import"),
        (f"{HERE}.Missing", {}, "has no attribute 'Missing'"),
        (f"{HERE}.HERE", {}, "not a flax.linen.Module"),
        (f"{HERE}.TwoLayerNet", {"widht": 8}, r"does not accept \['widht'\]"),
        (f"{HERE}.TwoLayerNet", {}, r"needs \['width'\]"),
    ],
)
def test_bad_paths_and_kwargs_fail_at_construction_with_clear_errors(path, kwargs, message):
    with pytest.raises(ValueError, match=message):
        GeneralModel(path, kwargs)
    with pytest.raises(ValueError, match=message):
        build(path, kwargs)


def test_unknown_registry_name_lists_available_models():
    with pytest.raises(KeyError, match="unknown model name"):
        GeneralModel("no_such_model")


def test_output_that_is_not_one_value_per_sample_is_rejected():
    model = GeneralModel(f"{HERE}.ThreeOutputs")
    with pytest.raises(ValueError, match="one prediction per sample"):
        model.init(jax.random.PRNGKey(0), jnp.zeros((4, 2)))


def test_config_kwargs_are_frozen_so_the_module_is_hashable():
    config = {
        "num_input": 2,
        "output_size": 1,
        "num_channels": [4, 4],
        "kernel_size": 2,
        "dropout": 0.0,
    }
    model = GeneralModel("tcn", config)
    assert hash(model) == hash(GeneralModel("tcn", dict(config)))
    x = np.zeros((3, 6, 2), np.float32)
    assert model.apply(model.init(jax.random.PRNGKey(0), x), x).shape == (3,)
