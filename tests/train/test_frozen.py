"""TrainConfig.frozen: named parameter groups get no update; the rest train as without it."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pandas as pd
import pytest

from qjax.data.samples import tabular_samples
from qjax.models.layers import Linear
from qjax.train import TrainConfig, fit
from qjax.train.optim import make_optimizer


def _params(rng):
    return {
        "body": {
            "kernel": jnp.asarray(rng.normal(size=(5, 4)), jnp.float32),
            "bias": jnp.asarray(rng.normal(size=4), jnp.float32),
        },
        "head": {"kernel": jnp.asarray(rng.normal(size=(4, 1)), jnp.float32)},
    }


@pytest.mark.parametrize("weight_decay, clip_value", [(0.0, 3.0), (1e-2, None)])
def test_frozen_group_is_bitwise_unchanged_and_the_rest_follows_the_plain_chain(
    weight_decay, clip_value, seed
):
    rng = np.random.default_rng(seed)
    params = _params(rng)
    grads = [
        jax.tree.map(lambda p: jnp.asarray(rng.normal(size=p.shape) * 4, jnp.float32), params)
        for _ in range(5)
    ]
    common = dict(lr=0.05, weight_decay=weight_decay, clip_value=clip_value)
    frozen_tx = make_optimizer(TrainConfig(frozen=("head",), **common))
    plain_tx = make_optimizer(TrainConfig(**common))

    frozen_params, frozen_state = params, frozen_tx.init(params)
    body, plain_state = params["body"], plain_tx.init(params["body"])
    for grad in grads:
        updates, frozen_state = frozen_tx.update(grad, frozen_state, frozen_params)
        frozen_params = optax.apply_updates(frozen_params, updates)
        updates, plain_state = plain_tx.update(grad["body"], plain_state, body)
        body = optax.apply_updates(body, updates)

    head_before = np.asarray(params["head"]["kernel"])
    head_after = np.asarray(frozen_params["head"]["kernel"])
    assert head_after.tobytes() == head_before.tobytes()
    for name in ("kernel", "bias"):
        np.testing.assert_array_equal(frozen_params["body"][name], body[name])
        assert not np.array_equal(frozen_params["body"][name], params["body"][name])


def test_unknown_frozen_name_is_a_clear_error(seed):
    tx = make_optimizer(TrainConfig(frozen=("fc",)))
    with pytest.raises(ValueError, match=r"frozen names \['fc'\].*it has \['body', 'head'\]"):
        tx.init(_params(np.random.default_rng(seed)))


def test_frozen_is_normalised_to_a_hashable_tuple_and_validated():
    assert TrainConfig(frozen=["fc", "bn"]).frozen == ("fc", "bn")
    assert TrainConfig(frozen="fc").frozen == ("fc",)
    hash(TrainConfig(frozen=["fc"]))  # the engine uses the config as a jit static argument
    with pytest.raises(ValueError, match="TrainConfig.frozen"):
        TrainConfig(frozen=("fc", 3))


class TwoLayers(nn.Module):
    @nn.compact
    def __call__(self, x, train=False):
        return Linear(1, name="head")(jax.nn.relu(Linear(8, name="body")(x)))[:, 0]


def test_fit_leaves_a_frozen_group_untouched(seed):
    rng = np.random.default_rng(seed + 1)
    x = rng.normal(size=(64, 3)).astype(np.float32)
    y = x @ np.array([1.0, -2.0, 0.5], np.float32)
    index = pd.MultiIndex.from_product(
        [pd.date_range("2020-01-01", periods=8), [f"S{i}" for i in range(8)]],
        names=["datetime", "instrument"],
    )
    head = rng.normal(size=(8, 1)).astype(np.float32)
    body = rng.normal(size=(3, 8)).astype(np.float32)

    def start_from(variables):  # known starting values to compare against
        params = variables["params"]
        return {
            "params": {
                "head": {**params["head"], "kernel": jnp.asarray(head)},
                "body": {**params["body"], "kernel": jnp.asarray(body)},
            }
        }

    config = TrainConfig(n_epochs=3, lr=1e-2, batch_size=16, frozen=("head",))
    result = fit(
        TwoLayers(),
        tabular_samples(x, y, index),
        None,
        config,
        init_variables=start_from,
        verbose=False,
    )
    trained = result.replica(0)["params"]
    assert np.asarray(trained["head"]["kernel"]).tobytes() == head.tobytes()
    assert not np.array_equal(trained["body"]["kernel"], body)
