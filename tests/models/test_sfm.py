"""SFM parity with Qlib's real ``SFM_Model`` (float64 frequency state in torch, float32 here)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import require

from qjax.interop.qlib import from_qlib
from qjax.models import get
from qjax.models.sfm import SFM_Model
from tests.models.parity import (
    assert_matches_qlib,
    init_shapes,
    param_count,
    rel_err,
    torch_param_count,
)


@pytest.fixture(scope="module")
def qlib_sfm():
    return require("qlib.contrib.model.pytorch_sfm")


@pytest.mark.parity
def test_matches_qlib_forward_and_gradients(torch, qlib_sfm, seed):
    kwargs = dict(d_feat=6, output_dim=4, freq_dim=10, hidden_size=16)
    torch.manual_seed(seed)
    net = qlib_sfm.SFM_Model(**kwargs).eval()
    module, variables = from_qlib("sfm", net.state_dict(), **kwargs)
    assert isinstance(module, get("sfm"))
    # Qlib's forward casts its amplitudes to float32 (``.float()``), so it has no float64 run.
    assert_matches_qlib(
        torch,
        net,
        "sfm",
        module,
        variables,
        (16, 6 * 15),
        kwargs,
        seed=seed + 1,
        qlib_runs_in_float64=False,
    )


@pytest.mark.parity
def test_float32_state_matches_qlib_float64_state_at_benchmark_size(torch, qlib_sfm, seed):
    """T = 60 (Alpha360) with the §9 config: Qlib carries S_re/S_im in float64, qjax in float32."""
    kwargs = dict(d_feat=6, output_dim=32, freq_dim=25, hidden_size=64)
    torch.manual_seed(seed + 2)
    net = qlib_sfm.SFM_Model(**kwargs).eval()
    module, variables = from_qlib("sfm", net.state_dict(), **kwargs)
    x = np.random.default_rng(seed + 3).standard_normal((32, 360)).astype(np.float32)
    with torch.no_grad():
        want = net(torch.tensor(x)).numpy()
    assert rel_err(module.apply(variables, x), want) <= 1e-5
    assert torch_param_count(net) == 22_153  # QLIB_REFERENCE §9


def test_param_count_matches_qlib_reference():
    module = SFM_Model(d_feat=6, output_dim=32, freq_dim=25, hidden_size=64)
    assert param_count(init_shapes(module, jnp.zeros((2, 360)))["params"]) == 22_153


def test_init_follows_qlib():
    params = SFM_Model(d_feat=6, output_dim=3, freq_dim=5, hidden_size=8).init(
        jax.random.PRNGKey(0), jnp.zeros((2, 12))
    )["params"]
    np.testing.assert_array_equal(params["b_ste"], 1.0)
    np.testing.assert_array_equal(params["b_fre"], 1.0)
    np.testing.assert_array_equal(params["b_i"], 0.0)
    u_i = np.asarray(params["U_i"])
    np.testing.assert_allclose(u_i.T @ u_i, np.eye(8), atol=1e-5)  # orthogonal
    np.testing.assert_allclose(np.linalg.norm(params["U_a"]), 1.0, rtol=1e-5)  # unit vector
    assert np.abs(params["W_i"]).max() <= np.sqrt(6.0 / (6 + 8))  # xavier-uniform bound


def test_dropout_arguments_are_ignored_and_layouts_agree(seed):
    x_window = (
        np.random.default_rng(seed + 4).standard_normal((5, 7, 3)).astype(np.float32)
    )  # [N, T, F]
    x_flat = x_window.transpose(0, 2, 1).reshape(5, 21)  # Alpha360-style feature-major rows
    plain = SFM_Model(d_feat=3, freq_dim=4, hidden_size=8)
    variables = plain.init(jax.random.PRNGKey(0), x_flat)
    with_dropout = SFM_Model(d_feat=3, freq_dim=4, hidden_size=8, dropout_W=0.5, dropout_U=0.5)
    want = plain.apply(variables, x_flat)
    np.testing.assert_array_equal(with_dropout.apply(variables, x_flat, train=True), want)
    np.testing.assert_allclose(plain.apply(variables, x_window), want, rtol=1e-6)
