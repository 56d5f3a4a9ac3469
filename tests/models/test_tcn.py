"""TCN parity with Qlib's real ``TCNModel`` (DatasetH and ts), weight-norm init, layouts."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import require

from qjax.interop.qlib import from_qlib
from qjax.models import get
from qjax.models.layers import causal_conv1d_tail, conv1d
from qjax.models.tcn import TCNModel
from tests.models.parity import (
    assert_matches_qlib_on,
    enable_x64,
    init_shapes,
    param_count,
    torch_param_count,
)

# Qlib's tcn.py uses the deprecated torch.nn.utils.weight_norm (its state-dict layout is the one
# the converter reads), which warns on every construction.
pytestmark = pytest.mark.filterwarnings("ignore:.*weight_norm.*:FutureWarning")

# Levels 6->8 (1x1 downsample), 8->8 (identity residual), 8->12 (downsample); dilations 1, 2, 4.
SMALL = dict(output_size=1, num_channels=[8, 8, 12], kernel_size=3, dropout=0.0)


@pytest.mark.parity
@pytest.mark.parametrize(
    "qlib_module", ["qlib.contrib.model.pytorch_tcn", "qlib.contrib.model.pytorch_tcn_ts"]
)
def test_matches_qlib_forward_and_gradients(torch, qlib_module, seed):
    torch.manual_seed(seed)
    net = require(qlib_module).TCNModel(num_input=6, **SMALL).eval()
    module, variables = from_qlib("tcn", net.state_dict(), num_input=6, **SMALL)
    assert isinstance(module, get("tcn"))

    rng = np.random.default_rng(seed + 1)
    window = rng.standard_normal((16, 20, 6)).astype(np.float32)  # [N, T, F]: what qjax feeds
    features_first = window.transpose(0, 2, 1)  # [N, F, T]
    if qlib_module.endswith("_ts"):
        x_torch, x_jax = features_first, window  # Qlib's ts module takes [N, F, T] (quirk #3)
    else:
        x_torch = x_jax = features_first.reshape(16, -1)  # Alpha360-style flat rows
    y = rng.standard_normal(16).astype(np.float32)

    assert_matches_qlib_on(
        torch,
        net,
        "tcn",
        module,
        variables,
        x_jax,
        y,
        converter_kwargs=dict(num_input=6, **SMALL),
        torch_x=np.ascontiguousarray(x_torch),
        grad_x_as_torch=(lambda g: np.swapaxes(g, 1, 2))
        if qlib_module.endswith("_ts")
        else (lambda g: g),
    )


# QLIB_REFERENCE §9: Alpha360 (6, [128]x5, k 3) and Alpha158 (20, [32]x5, k 7), weight_norm g counted.
COUNT_CASES = [(6, 128, 3, 448_257), (20, 32, 7, 70_337)]


@pytest.mark.parametrize("num_input,channels,kernel_size,expected", COUNT_CASES)
def test_param_count_matches_qlib_reference(num_input, channels, kernel_size, expected):
    module = TCNModel(num_input, 1, [channels] * 5, kernel_size, 0.5)
    assert param_count(init_shapes(module, jnp.zeros((2, 20, num_input)))["params"]) == expected


@pytest.mark.parity
@pytest.mark.parametrize("num_input,channels,kernel_size,expected", COUNT_CASES)
def test_torch_param_count_matches_qlib_reference(
    torch, num_input, channels, kernel_size, expected
):
    net = require("qlib.contrib.model.pytorch_tcn").TCNModel(
        num_input, 1, [channels] * 5, kernel_size, 0.5
    )
    assert torch_param_count(net) == expected


def test_effective_init_is_default_conv_init_under_weight_norm():
    module = TCNModel(num_input=16, output_size=1, num_channels=[32], kernel_size=5, dropout=0.0)
    params = module.init(jax.random.PRNGKey(0), jnp.zeros((2, 10, 16)))["params"]["network_0"]
    v = np.asarray(params["conv1"]["weight_v"])  # [k, in, out]
    np.testing.assert_allclose(
        params["conv1"]["weight_g"], np.sqrt((v**2).sum(axis=(0, 1))), rtol=1e-6
    )
    bound = 1 / np.sqrt(16 * 5)  # torch Conv1d default, not Qlib's no-op N(0, 0.01)
    assert 0.9 * bound < np.abs(v).max() <= bound
    downsample = np.asarray(params["downsample"]["kernel"])  # not weight-normed: N(0, 0.01) applies
    assert 0.007 < downsample.std() < 0.013


def test_window_and_flat_inputs_agree_and_output_size(seed):
    module = TCNModel(num_input=3, output_size=1, num_channels=(4, 4), kernel_size=2, dropout=0.0)
    window = np.random.default_rng(seed + 2).standard_normal((5, 9, 3)).astype(np.float32)
    variables = module.init(jax.random.PRNGKey(0), window)
    flat = window.transpose(0, 2, 1).reshape(5, 27)
    np.testing.assert_allclose(
        module.apply(variables, flat), module.apply(variables, window), rtol=1e-6
    )
    wide = TCNModel(num_input=3, output_size=2, num_channels=[4], kernel_size=2, dropout=0.0)
    assert wide.apply(wide.init(jax.random.PRNGKey(0), window), window).shape == (5, 2)
    hash(TCNModel(3, 1, [4, 4], 2, 0.0))  # list from a config is stored as a tuple


def test_convolutions_are_causal_in_time(seed):
    module = TCNModel(num_input=2, output_size=1, num_channels=[4, 4], kernel_size=3, dropout=0.0)
    window = np.random.default_rng(seed + 3).standard_normal((4, 12, 2)).astype(np.float32)
    variables = module.init(jax.random.PRNGKey(0), window)
    changed = window.copy()
    changed[:, 8:] = 5.0

    def top_level_sequence(x):  # [N, T, C] output of the last temporal block
        # train mode (no dropout here) keeps every step; eval computes only the last one
        _, state = module.apply(variables, x, train=True, capture_intermediates=True)
        return np.asarray(state["intermediates"]["network_1"]["__call__"][0])

    before, after = top_level_sequence(window), top_level_sequence(changed)
    np.testing.assert_array_equal(before[:, :8], after[:, :8])  # the past ignores the future
    assert not np.allclose(before[:, 8:], after[:, 8:])


def test_dropout_only_in_training(seed):
    module = TCNModel(num_input=3, output_size=1, num_channels=[8, 8], kernel_size=2, dropout=0.5)
    x = np.random.default_rng(seed + 4).standard_normal((6, 8, 3)).astype(np.float32)
    variables = module.init(jax.random.PRNGKey(0), x)
    train_a = module.apply(variables, x, train=True, rngs={"dropout": jax.random.PRNGKey(1)})
    train_b = module.apply(variables, x, train=True, rngs={"dropout": jax.random.PRNGKey(2)})
    assert not np.allclose(train_a, train_b)
    np.testing.assert_array_equal(module.apply(variables, x), module.apply(variables, x))


@pytest.mark.parametrize(
    "steps, channels, kernel_size",
    [(60, (8, 8, 8, 8, 8), 3), (20, (6, 8, 12), 5), (9, (4, 4, 4, 4), 2), (1, (4, 4), 3)],
)
def test_eval_computes_only_the_last_step_with_the_same_result(steps, channels, kernel_size, seed):
    """Eval mode runs each level on every 2^l-th step only; train mode without dropout runs the
    whole sequence through the same weights, so the two must agree (same dot products, so
    float32 rounding is the only difference allowed)."""
    module = TCNModel(3, 1, channels, kernel_size, dropout=0.0)
    x = np.random.default_rng(seed + 5).standard_normal((7, steps, 3)).astype(np.float32)
    variables = module.init(jax.random.PRNGKey(seed), x)
    full = module.apply(variables, x, train=True)
    np.testing.assert_allclose(module.apply(variables, x), full, rtol=1e-5, atol=1e-6)
    changed = x.copy()  # the last step still reads the first: the result moves with it
    changed[:, 0] += 1.0
    if steps > 1:
        assert not np.allclose(module.apply(variables, changed), module.apply(variables, x))


@pytest.mark.parametrize("count, stride", [(10, 1), (5, 2), (3, 4), (1, 3)])
def test_conv_tail_equals_the_full_conv_at_those_steps(count, stride, seed):
    rng = np.random.default_rng(seed + 6)
    x = rng.standard_normal((3, 10, 4)).astype(np.float64)
    kernel = rng.standard_normal((3, 4, 5)).astype(np.float64)
    with enable_x64(True):  # float64: the two must agree to rounding of 1e-12
        full = conv1d(jnp.asarray(x), jnp.asarray(kernel), (2, 0))
        tail = causal_conv1d_tail(jnp.asarray(x), jnp.asarray(kernel), count, stride)
    first = 10 - 1 - stride * (count - 1)
    np.testing.assert_allclose(tail, np.asarray(full)[:, first::stride], rtol=1e-12)
    with pytest.raises(ValueError, match="do not fit"):
        causal_conv1d_tail(jnp.asarray(x), jnp.asarray(kernel), 11, 1)
