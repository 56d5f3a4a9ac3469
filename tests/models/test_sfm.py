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


def rel_err(got, want) -> float:
    got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
    return float(np.max(np.abs(got - want)) / max(np.max(np.abs(want)), 1e-12))


def assert_trees_close(got, want, tol):
    """Per-leaf relative error; the scale is the leaf's own, floored at 1% of the whole tree's."""
    want = dict(jax.tree_util.tree_leaves_with_path(want))
    got = jax.tree_util.tree_leaves_with_path(got)
    assert len(got) == len(want)
    floor = 0.01 * max(np.max(np.abs(np.asarray(w))) for w in want.values())
    for path, leaf in got:
        reference = np.asarray(want[path], np.float64)
        scale = max(np.max(np.abs(reference)), floor, 1e-12)
        err = np.max(np.abs(np.asarray(leaf, np.float64) - reference)) / scale
        assert err <= tol, (jax.tree_util.keystr(path), err)


@pytest.fixture(scope="module")
def qlib_sfm():
    return require("qlib.contrib.model.pytorch_sfm")


@pytest.mark.parity
def test_matches_qlib_forward_and_gradients(torch, qlib_sfm):
    kwargs = dict(d_feat=6, output_dim=4, freq_dim=10, hidden_size=16)
    torch.manual_seed(0)
    net = qlib_sfm.SFM_Model(**kwargs).eval()
    module, variables = from_qlib("sfm", net.state_dict(), **kwargs)
    assert isinstance(module, get("sfm"))

    rng = np.random.default_rng(1)
    x = rng.standard_normal((16, 6 * 15)).astype(np.float32)
    y = rng.standard_normal(16).astype(np.float32)
    xt = torch.tensor(x, requires_grad=True)
    t_out = net(xt)
    torch.mean((t_out - torch.tensor(y)) ** 2).backward()
    t_grads = {k: p.grad.numpy() for k, p in net.named_parameters()}

    def loss(params, inputs):
        out = module.apply({"params": params}, inputs)
        return jnp.mean((out - y) ** 2), out

    (_, j_out), (j_grads, j_gx) = jax.jit(jax.value_and_grad(loss, argnums=(0, 1), has_aux=True))(
        variables["params"], jnp.asarray(x)
    )
    assert j_out.shape == (16,)
    assert rel_err(j_out, t_out.detach().numpy()) <= 1e-5
    assert rel_err(j_gx, xt.grad.numpy()) <= 1e-4
    _, t_grad_vars = from_qlib("sfm", t_grads, **kwargs)
    assert_trees_close(j_grads, t_grad_vars["params"], 1e-4)


@pytest.mark.parity
def test_float32_state_matches_qlib_float64_state_at_benchmark_size(torch, qlib_sfm):
    """T = 60 (Alpha360) with the §9 config: Qlib carries S_re/S_im in float64, qjax in float32."""
    kwargs = dict(d_feat=6, output_dim=32, freq_dim=25, hidden_size=64)
    torch.manual_seed(2)
    net = qlib_sfm.SFM_Model(**kwargs).eval()
    module, variables = from_qlib("sfm", net.state_dict(), **kwargs)
    x = np.random.default_rng(3).standard_normal((32, 360)).astype(np.float32)
    with torch.no_grad():
        want = net(torch.tensor(x)).numpy()
    assert rel_err(module.apply(variables, x), want) <= 1e-5
    assert sum(p.numel() for p in net.parameters()) == 22_153  # QLIB_REFERENCE §9


def test_param_count_matches_qlib_reference():
    module = SFM_Model(d_feat=6, output_dim=32, freq_dim=25, hidden_size=64)
    shapes = jax.eval_shape(module.init, jax.random.PRNGKey(0), jnp.zeros((2, 360)))
    assert sum(int(np.prod(s.shape)) for s in jax.tree_util.tree_leaves(shapes["params"])) == 22_153


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


def test_dropout_arguments_are_ignored_and_layouts_agree():
    x_window = np.random.default_rng(4).standard_normal((5, 7, 3)).astype(np.float32)  # [N, T, F]
    x_flat = x_window.transpose(0, 2, 1).reshape(5, 21)  # Alpha360-style feature-major rows
    plain = SFM_Model(d_feat=3, freq_dim=4, hidden_size=8)
    variables = plain.init(jax.random.PRNGKey(0), x_flat)
    with_dropout = SFM_Model(d_feat=3, freq_dim=4, hidden_size=8, dropout_W=0.5, dropout_U=0.5)
    want = plain.apply(variables, x_flat)
    np.testing.assert_array_equal(with_dropout.apply(variables, x_flat, train=True), want)
    np.testing.assert_allclose(plain.apply(variables, x_window), want, rtol=1e-6)
