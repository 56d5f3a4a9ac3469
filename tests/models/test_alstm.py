"""ALSTM parity with Qlib's real torch ALSTMModel (DatasetH and TSDatasetH variants)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import require

from qjax.interop.qlib import from_qlib
from qjax.models.alstm import ALSTMModel

N = 32


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


def torch_output_and_grads(torch, net, x, y):
    net.eval()
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
    "qlib_module,d_feat,shape,rnn_type,expected_count",
    [
        ("qlib.contrib.model.pytorch_alstm", 6, (N, 360), "GRU", 52_609),
        ("qlib.contrib.model.pytorch_alstm_ts", 20, (N, 20, 20), "GRU", 53_505),
        ("qlib.contrib.model.pytorch_alstm", 6, (N, 360), "LSTM", None),
        ("qlib.contrib.model.pytorch_alstm_ts", 20, (N, 20, 20), "lstm", None),
    ],
)
def test_matches_qlib_forward_gradients_and_param_count(
    torch, qlib_module, d_feat, shape, rnn_type, expected_count
):
    kwargs = dict(d_feat=d_feat, hidden_size=64, num_layers=2, dropout=0.0, rnn_type=rnn_type)
    torch.manual_seed(0)
    net = require(qlib_module).ALSTMModel(**kwargs)
    module, variables = from_qlib("alstm", net.state_dict(), **kwargs)

    rng = np.random.default_rng(1)
    x = rng.standard_normal(shape).astype(np.float32)
    y = rng.standard_normal(N).astype(np.float32)
    t_out, t_gx, t_grads = torch_output_and_grads(torch, net, x, y)
    j_out, j_gx, j_grads = jax_output_and_grads(module, variables, x, y)

    assert j_out.shape == (N,)
    assert rel_err(j_out, t_out) <= 1e-5
    assert rel_err(j_gx, t_gx) <= 1e-4
    _, t_grad_vars = from_qlib("alstm", t_grads, **kwargs)
    assert_trees_close(j_grads, t_grad_vars["params"], 1e-4)

    n_torch = sum(p.numel() for p in net.parameters())
    assert sum(a.size for a in jax.tree_util.tree_leaves(variables)) == n_torch
    if expected_count is not None:  # QLIB_REFERENCE §9 lists the GRU benchmark configs
        assert n_torch == expected_count


def test_attention_dropout_acts_only_in_training():
    module = ALSTMModel(d_feat=3, hidden_size=8, num_layers=1, dropout=0.5)  # one layer: no RNN dropout
    x = np.random.default_rng(2).standard_normal((6, 5, 3)).astype(np.float32)
    variables = module.init(jax.random.PRNGKey(0), x)
    train_out = module.apply(variables, x, train=True, rngs={"dropout": jax.random.PRNGKey(1)})
    assert not np.allclose(train_out, module.apply(variables, x))
    no_dropout = ALSTMModel(d_feat=3, hidden_size=8, num_layers=1, dropout=0.0)
    np.testing.assert_array_equal(no_dropout.apply(variables, x, train=True), module.apply(variables, x))


def test_unknown_rnn_type_is_rejected():
    module = ALSTMModel(d_feat=3, hidden_size=8, rnn_type="TCN")
    with pytest.raises(ValueError, match="rnn_type"):
        module.init(jax.random.PRNGKey(0), np.zeros((2, 5, 3), np.float32))


def test_converter_rejects_mismatched_rnn_type(torch):
    net = require("qlib.contrib.model.pytorch_alstm").ALSTMModel(d_feat=6, hidden_size=8, rnn_type="GRU")
    with pytest.raises(ValueError, match="shapes do not fit"):
        from_qlib("alstm", net.state_dict(), d_feat=6, hidden_size=8, rnn_type="LSTM")
    with pytest.raises(ValueError, match="does not use"):
        from_qlib("alstm", net.state_dict(), d_feat=6, hidden_size=8, num_layers=1)
