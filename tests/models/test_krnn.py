"""KRNN parity with Qlib's real torch KRNNModel, including its flat-input layout quirk."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import require

from qjax.interop.qlib import from_qlib
from qjax.models.krnn import KRNNModel

N = 24
BENCH = dict(fea_dim=6, cnn_dim=8, cnn_kernel_size=3, rnn_dim=8, rnn_dups=2, rnn_layers=2, dropout=0.0)
WRAPPER_DEFAULTS = dict(
    fea_dim=6, cnn_dim=64, cnn_kernel_size=3, rnn_dim=64, rnn_dups=3, rnn_layers=2, dropout=0.0
)


def rel_err(got, want) -> float:
    """Max abs error relative to the reference's scale."""
    got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
    return float(np.max(np.abs(got - want)) / max(np.max(np.abs(want)), 1e-12))


def tree_errors(got, want) -> dict[str, float]:
    """Per-leaf max abs error over the reference leaf's scale, floored at 1e-3 of the tree's.

    The floor matters for gradients whose exact value nearly cancels, where both sides hold
    float32 noise: a Linear bias feeding train-mode BatchNorm, ALSTM's att_fc_in.bias (the
    time softmax is shift-invariant).
    """
    want_leaves = dict(jax.tree_util.tree_leaves_with_path(want))
    got_leaves = jax.tree_util.tree_leaves_with_path(got)
    assert len(got_leaves) == len(want_leaves)
    floor = 1e-3 * max(float(np.max(np.abs(w))) for w in want_leaves.values())
    errors = {}
    for path, leaf in got_leaves:
        ref = np.asarray(want_leaves[path], np.float64)
        scale = max(float(np.max(np.abs(ref))), floor)
        errors[jax.tree_util.keystr(path)] = float(np.max(np.abs(np.asarray(leaf, np.float64) - ref))) / scale
    return errors


def assert_trees_close(got, want, tol):
    errors = tree_errors(got, want)
    assert max(errors.values()) <= tol, errors


def torch_krnn(torch, seed, **kwargs):
    torch.manual_seed(seed)
    return require("qlib.contrib.model.pytorch_krnn").KRNNModel(device="cpu", **kwargs).eval()


def torch_output_and_grads(torch, net, x, y):
    xt = torch.tensor(x, requires_grad=True)
    out = net(xt)
    torch.mean((out - torch.tensor(y)) ** 2).backward()
    return out.detach().numpy(), xt.grad.numpy(), {k: p.grad.numpy() for k, p in net.named_parameters()}


def jax_output_and_grads(module, variables, x, y):
    def loss(params, inputs):
        out = module.apply({"params": params}, inputs)
        return jnp.mean((out - y) ** 2), out

    (_, out), (g_params, g_x) = jax.value_and_grad(loss, argnums=(0, 1), has_aux=True)(
        variables["params"], jnp.asarray(x)
    )
    return out, g_x, g_params


@pytest.mark.parity
@pytest.mark.parametrize(
    "kwargs,shape",
    [
        (BENCH, (N, 360)),  # Alpha360 rows, Qlib's row-major view
        (WRAPPER_DEFAULTS, (N, 360)),
        ({**BENCH, "fea_dim": 20, "cnn_kernel_size": 4, "rnn_dups": 3, "rnn_layers": 1}, (N, 20, 20)),
    ],
    ids=["bench", "wrapper-defaults", "window-even-kernel"],
)
def test_matches_qlib_forward_and_gradients(torch, kwargs, shape):
    net = torch_krnn(torch, 0, **kwargs)
    module, variables = from_qlib("krnn", net.state_dict(), **kwargs)
    rng = np.random.default_rng(1)
    x = rng.standard_normal(shape).astype(np.float32)
    y = rng.standard_normal(N).astype(np.float32)
    t_out, t_gx, t_grads = torch_output_and_grads(torch, net, x, y)
    j_out, j_gx, j_grads = jax_output_and_grads(module, variables, x, y)

    assert j_out.shape == (N,)
    assert rel_err(j_out, t_out) <= 1e-5
    assert rel_err(j_gx, t_gx) <= 1e-4
    _, t_grad_vars = from_qlib("krnn", t_grads, **kwargs)
    assert_trees_close(j_grads, t_grad_vars["params"], 1e-4)


@pytest.mark.parity
def test_param_count_matches_qlib_and_reference(torch):
    net = torch_krnn(torch, 0, **BENCH)
    _, variables = from_qlib("krnn", net.state_dict(), **BENCH)
    n_torch = sum(p.numel() for p in net.parameters())
    assert sum(a.size for a in jax.tree_util.tree_leaves(variables)) == n_torch == 1_889  # §9
    assert variables["params"]["rnns"]["kernel_hh_l1"].shape == (2, 8, 24)  # K GRUs stacked, not looped


@pytest.mark.parity
def test_feature_major_layout_equals_qlib_on_a_relaid_input(torch):
    net = torch_krnn(torch, 3, **BENCH)
    module, variables = from_qlib("krnn", net.state_dict(), **BENCH, layout="feature_major")
    x = np.random.default_rng(4).standard_normal((N, 360)).astype(np.float32)  # [CLOSE59..0, OPEN59..0, ...]
    # Row-major [T, F] rows are what Qlib's view(N, -1, 6) reads as true time steps.
    time_major = x.reshape(N, 6, 60).transpose(0, 2, 1).reshape(N, 360)
    with torch.no_grad():
        want = net(torch.tensor(time_major)).numpy()
        quirky = net(torch.tensor(x)).numpy()
    got = module.apply(variables, x)
    assert rel_err(got, want) <= 1e-5
    assert rel_err(got, quirky) > 1e-2  # the switch really changes what the model sees


def test_layouts_agree_on_window_input_and_unknown_layout_fails():
    window = np.random.default_rng(5).standard_normal((4, 10, 6)).astype(np.float32)
    qlib_layout = KRNNModel(**BENCH)
    variables = qlib_layout.init(jax.random.PRNGKey(0), window)
    corrected = KRNNModel(**BENCH, layout="feature_major")
    np.testing.assert_array_equal(qlib_layout.apply(variables, window), corrected.apply(variables, window))
    with pytest.raises(ValueError, match="layout"):
        KRNNModel(**BENCH, layout="time_major").apply(variables, window)


def test_dropout_acts_between_gru_layers_only_in_training():
    module = KRNNModel(**{**BENCH, "dropout": 0.5})
    x = np.random.default_rng(6).standard_normal((4, 60)).astype(np.float32)
    variables = module.init(jax.random.PRNGKey(0), x)
    train_a = module.apply(variables, x, train=True, rngs={"dropout": jax.random.PRNGKey(1)})
    train_b = module.apply(variables, x, train=True, rngs={"dropout": jax.random.PRNGKey(2)})
    assert not np.allclose(train_a, module.apply(variables, x)) and not np.allclose(train_a, train_b)


def test_converter_rejects_wrong_duplicate_count(torch):
    net = torch_krnn(torch, 0, **BENCH)
    with pytest.raises(ValueError, match="does not use"):
        from_qlib("krnn", net.state_dict(), **{**BENCH, "rnn_dups": 1})
    with pytest.raises(ValueError, match="shapes do not fit"):
        from_qlib("krnn", net.state_dict(), **{**BENCH, "cnn_kernel_size": 5})
