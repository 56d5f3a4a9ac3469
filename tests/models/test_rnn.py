"""LSTM / GRU parity with Qlib's real torch modules (DatasetH and TSDatasetH variants)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import require

from qjax.interop.qlib import from_qlib
from qjax.models import get
from tests.models.parity import (
    assert_matches_qlib,
    numpy_state,
    param_count,
    random_rnn_state_dict,
    rel_err,
    torch_param_count,
)

N = 32

# (registry name, qlib module, torch class, d_feat, input shape, QLIB_REFERENCE §9 count)
CASES = [
    ("lstm", "qlib.contrib.model.pytorch_lstm", "LSTMModel", 6, (N, 360), 51_777),
    ("lstm", "qlib.contrib.model.pytorch_lstm_ts", "LSTMModel", 20, (N, 20, 20), 55_361),
    ("gru", "qlib.contrib.model.pytorch_gru", "GRUModel", 6, (N, 360), 38_849),
    ("gru", "qlib.contrib.model.pytorch_gru_ts", "GRUModel", 20, (N, 20, 20), 41_537),
]


@pytest.mark.parity
@pytest.mark.parametrize("name,qlib_module,cls,d_feat,shape,expected_count", CASES)
def test_matches_qlib_forward_gradients_and_param_count(
    torch, name, qlib_module, cls, d_feat, shape, expected_count, seed
):
    torch.manual_seed(seed)
    net = getattr(require(qlib_module), cls)(d_feat=d_feat, hidden_size=64, num_layers=2)
    module, variables = from_qlib(
        name, numpy_state(net), d_feat=d_feat, hidden_size=64, num_layers=2
    )
    assert isinstance(module, get(name))
    kwargs = dict(d_feat=d_feat, hidden_size=64, num_layers=2)
    assert_matches_qlib(torch, net, name, module, variables, shape, kwargs, seed=seed + 1)
    assert param_count(variables["params"]) == torch_param_count(net) == expected_count


@pytest.mark.parity
@pytest.mark.parametrize(
    "name,qlib_module,cls",
    [
        ("lstm", "qlib.contrib.model.pytorch_lstm", "LSTMModel"),
        ("gru", "qlib.contrib.model.pytorch_gru", "GRUModel"),
    ],
)
def test_small_nondefault_config_matches_qlib(torch, name, qlib_module, cls, seed):
    kwargs = dict(d_feat=3, hidden_size=8, num_layers=3, dropout=0.3)  # dropout is inactive in eval
    torch.manual_seed(seed + 2)
    net = getattr(require(qlib_module), cls)(**kwargs).eval()
    module, variables = from_qlib(name, net.state_dict(), **kwargs)
    x = np.random.default_rng(seed + 3).standard_normal((16, 3 * 7)).astype(np.float32)
    with torch.no_grad():
        want = net(torch.tensor(x)).numpy()
    assert rel_err(module.apply(variables, x), want) <= 1e-5


@pytest.mark.parametrize("name", ["lstm", "gru"])
def test_flat_and_window_inputs_agree_and_batch_of_one_keeps_its_axis(name, seed):
    module = get(name)(d_feat=4, hidden_size=8, num_layers=2)
    window = (
        np.random.default_rng(seed + 4).standard_normal((5, 7, 4)).astype(np.float32)
    )  # [N, T, F]
    flat = window.transpose(0, 2, 1).reshape(5, 28)  # Alpha360-style feature-major rows
    variables = module.init(jax.random.PRNGKey(0), window)
    np.testing.assert_allclose(
        module.apply(variables, flat), module.apply(variables, window), rtol=1e-6
    )
    assert module.apply(variables, window[:1]).shape == (1,)  # Qlib's squeeze would give 0-d


@pytest.mark.parametrize("name", ["lstm", "gru"])
def test_dropout_between_layers_only_in_training(name, seed):
    module = get(name)(d_feat=4, hidden_size=16, num_layers=2, dropout=0.5)
    x = np.random.default_rng(seed + 5).standard_normal((8, 6, 4)).astype(np.float32)
    variables = module.init(jax.random.PRNGKey(0), x)
    eval_out = module.apply(variables, x)
    train_a = module.apply(variables, x, train=True, rngs={"dropout": jax.random.PRNGKey(1)})
    train_b = module.apply(variables, x, train=True, rngs={"dropout": jax.random.PRNGKey(2)})
    assert not np.allclose(train_a, eval_out) and not np.allclose(train_a, train_b)
    single_layer = get(name)(d_feat=4, hidden_size=16, num_layers=1, dropout=0.5)
    v1 = single_layer.init(jax.random.PRNGKey(0), x)
    np.testing.assert_allclose(  # torch drops only between layers: none with one layer
        single_layer.apply(v1, x, train=True, rngs={"dropout": jax.random.PRNGKey(1)}),
        single_layer.apply(v1, x),
        rtol=1e-6,
        atol=1e-7,  # training and inference use different gate layouts (rounding)
    )


@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_per_gate_and_fused_layouts_agree_in_value_and_gradient(cell, seed):
    from qjax.models.layers import RNN

    x = np.random.default_rng(seed + 6).standard_normal((5, 7, 3)).astype(np.float32)
    fused, split = (RNN(8, num_layers=2, cell=cell, per_gate=flag) for flag in (False, True))
    variables = fused.init(jax.random.PRNGKey(3), x)

    def loss(module):
        return lambda v, x: jnp.sum(jnp.sin(module.apply(v, x)))

    np.testing.assert_allclose(
        split.apply(variables, x), fused.apply(variables, x), rtol=1e-5, atol=1e-6
    )
    g_fused = jax.grad(loss(fused), argnums=(0, 1))(variables, x)
    g_split = jax.grad(loss(split), argnums=(0, 1))(variables, x)
    for a, b in zip(jax.tree.leaves(g_split), jax.tree.leaves(g_fused)):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("name", ["lstm", "gru"])
def test_converter_rejects_kwargs_that_do_not_fit_the_state_dict(name):
    state = random_rnn_state_dict(name, d_feat=6, hidden=8, layers=2)
    with pytest.raises(ValueError, match="shapes do not fit"):
        from_qlib(name, state, d_feat=20, hidden_size=8, num_layers=2)
    with pytest.raises(ValueError, match="does not use"):
        from_qlib(name, state, d_feat=6, hidden_size=8, num_layers=1)
    with pytest.raises(KeyError, match="weight_ih_l2"):
        from_qlib(name, state, d_feat=6, hidden_size=8, num_layers=3)
    other = "gru" if name == "lstm" else "lstm"
    with pytest.raises(ValueError, match="shapes do not fit"):
        from_qlib(other, state, d_feat=6, hidden_size=8, num_layers=2)


def test_flat_input_with_wrong_width_is_rejected():
    module = get("lstm")(d_feat=6, hidden_size=8, num_layers=1)
    with pytest.raises(ValueError, match="multiple of d_feat"):
        module.init(jax.random.PRNGKey(0), np.zeros((2, 359), np.float32))
