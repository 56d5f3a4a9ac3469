"""GATs parity with Qlib's real ``GATModel`` (DatasetH and ts), padding masks, pretrained bases."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import require
from qjax.interop import read_torch_state_dict
from qjax.interop.qlib import from_qlib
from qjax.interop.qlib.gats import load_base_weights
from qjax.models import get
from qjax.models.gats import GATModel

SMALL = dict(hidden_size=16, num_layers=2)


def rel_err(got, want) -> float:
    got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
    return float(np.max(np.abs(got - want)) / max(np.max(np.abs(want)), 1e-12))


def torch_output_and_grads(torch, net, x, y):
    """Eval forward, d MSE / d input and d MSE / d every parameter (as a state dict)."""
    net.eval()
    xt = torch.tensor(x, requires_grad=True)
    out = net(xt)
    torch.mean((out - torch.tensor(y)) ** 2).backward()
    return out.detach().numpy(), xt.grad.numpy(), {k: p.grad.numpy() for k, p in net.named_parameters()}


def jax_output_and_grads(module, variables, x, y, **kwargs):
    def loss(params, inputs):
        out = module.apply({"params": params}, inputs, **kwargs)
        return jnp.mean((out - y) ** 2), out

    (_, out), (g_params, g_x) = jax.jit(jax.value_and_grad(loss, argnums=(0, 1), has_aux=True))(
        variables["params"], jnp.asarray(x)
    )
    return out, g_x, g_params


def assert_trees_close(got, want, tol):
    """Per-leaf relative error; the scale is the leaf's own, floored at 1% of the whole tree's.

    The floor matters for gradients that are exactly zero in exact arithmetic (e.g. the
    ``transformation`` bias shifts every attention score alike, which the softmax cancels
    unless LeakyReLU's kink is crossed): both frameworks return float32 noise there.
    """
    want = dict(jax.tree_util.tree_leaves_with_path(want))
    got = jax.tree_util.tree_leaves_with_path(got)
    assert len(got) == len(want)
    floor = 0.01 * max(np.max(np.abs(np.asarray(w))) for w in want.values())
    for path, leaf in got:
        reference = np.asarray(want[path], np.float64)
        scale = max(np.max(np.abs(reference)), floor, 1e-12)
        err = np.max(np.abs(np.asarray(leaf, np.float64) - reference)) / scale
        assert err <= tol, (jax.tree_util.keystr(path), err)


def count(tree) -> int:
    return sum(int(np.prod(leaf.shape)) for leaf in jax.tree_util.tree_leaves(tree))


@pytest.mark.parity
@pytest.mark.parametrize("base_model", ["GRU", "LSTM"])
@pytest.mark.parametrize(
    "qlib_module,d_feat,shape",
    [("qlib.contrib.model.pytorch_gats", 6, (12, 6 * 10)), ("qlib.contrib.model.pytorch_gats_ts", 5, (12, 10, 5))],
)
def test_matches_qlib_forward_and_gradients(torch, qlib_module, d_feat, shape, base_model):
    torch.manual_seed(0)
    kwargs = dict(d_feat=d_feat, base_model=base_model, **SMALL)
    net = require(qlib_module).GATModel(**kwargs)
    module, variables = from_qlib("gats", net.state_dict(), **kwargs)
    assert isinstance(module, get("gats"))

    rng = np.random.default_rng(1)
    x = rng.standard_normal(shape).astype(np.float32)
    y = rng.standard_normal(shape[0]).astype(np.float32)
    t_out, t_gx, t_grads = torch_output_and_grads(torch, net, x, y)
    j_out, j_gx, j_grads = jax_output_and_grads(module, variables, x, y)

    assert j_out.shape == (shape[0],)
    assert rel_err(j_out, t_out) <= 1e-5
    assert rel_err(j_gx, t_gx) <= 1e-4
    _, t_grad_vars = from_qlib("gats", t_grads, **kwargs)
    assert_trees_close(j_grads, t_grad_vars["params"], 1e-4)


@pytest.mark.parametrize("d_feat,expected", [(6, 60_225), (20, 63_809)])  # QLIB_REFERENCE §9
def test_param_count_matches_qlib_reference(d_feat, expected):
    module = GATModel(d_feat=d_feat, hidden_size=64, num_layers=2, base_model="LSTM")
    shapes = jax.eval_shape(module.init, jax.random.PRNGKey(0), jnp.zeros((3, 7, d_feat)))
    assert count(shapes["params"]) == expected


@pytest.mark.parity
@pytest.mark.parametrize("d_feat,expected", [(6, 60_225), (20, 63_809)])
def test_torch_param_count_matches_qlib_reference(torch, d_feat, expected):
    net = require("qlib.contrib.model.pytorch_gats").GATModel(d_feat=d_feat, base_model="LSTM")
    assert sum(p.numel() for p in net.parameters()) == expected


@pytest.mark.parametrize("base_model", ["GRU", "LSTM"])
def test_padded_stocks_do_not_change_valid_rows_or_gradients(base_model):
    module = GATModel(d_feat=4, base_model=base_model, **SMALL)
    rng = np.random.default_rng(2)
    n_valid, n_padded = 9, 16
    x = rng.standard_normal((n_valid, 8, 4)).astype(np.float32)
    y = rng.standard_normal(n_valid).astype(np.float32)
    padded = np.full((n_padded, 8, 4), np.nan, np.float32)  # NaN padding must not leak anywhere
    padded[:n_valid] = x
    padded[n_valid + 2] = 100.0 * rng.standard_normal((8, 4))
    mask = np.arange(n_padded) < n_valid
    variables = module.init(jax.random.PRNGKey(0), x)

    def loss(params, inputs, y_full, valid):
        out = module.apply({"params": params}, inputs, mask=valid)
        return jnp.sum(jnp.where(valid, (out - y_full) ** 2, 0.0)) / jnp.sum(valid), out

    y_padded = np.zeros(n_padded, np.float32)
    y_padded[:n_valid] = y
    grad_fn = jax.jit(jax.value_and_grad(loss, has_aux=True))
    (_, out_ref), g_ref = grad_fn(variables["params"], x, y, np.ones(n_valid, bool))
    (_, out_pad), g_pad = grad_fn(variables["params"], padded, y_padded, mask)

    assert np.all(np.isfinite(out_pad))
    np.testing.assert_allclose(out_pad[:n_valid], out_ref, rtol=1e-5, atol=1e-6)
    assert_trees_close(g_pad, g_ref, 1e-5)
    # Without the mask the padded rows take part in attention and change valid rows.
    finite = np.nan_to_num(padded)
    assert rel_err(module.apply(variables, finite)[:n_valid], out_ref) > 1e-3


def test_dropout_only_in_training():
    module = GATModel(d_feat=4, hidden_size=8, num_layers=2, dropout=0.5)
    x = np.random.default_rng(3).standard_normal((6, 5, 4)).astype(np.float32)
    variables = module.init(jax.random.PRNGKey(0), x)
    train_a = module.apply(variables, x, train=True, rngs={"dropout": jax.random.PRNGKey(1)})
    train_b = module.apply(variables, x, train=True, rngs={"dropout": jax.random.PRNGKey(2)})
    assert not np.allclose(train_a, train_b)
    assert not np.allclose(train_a, module.apply(variables, x))


def test_bad_arguments_are_rejected_clearly():
    x = np.zeros((4, 5, 6), np.float32)
    with pytest.raises(ValueError, match="base_model"):
        GATModel(base_model="gru").init(jax.random.PRNGKey(0), x)
    module = GATModel(hidden_size=8)
    variables = module.init(jax.random.PRNGKey(0), x)
    with pytest.raises(ValueError, match="mask must have shape"):
        module.apply(variables, x, mask=np.ones(5, bool))


def _base_state_dict(cell: str, d_feat: int, hidden: int, layers: int) -> dict:
    """A Qlib LSTMModel/GRUModel-shaped state dict with random values."""
    gates = {"LSTM": 4, "GRU": 3}[cell]
    rng = np.random.default_rng(0)
    sd = {"fc_out.weight": rng.standard_normal((1, hidden)), "fc_out.bias": rng.standard_normal(1)}
    for k in range(layers):
        sd[f"rnn.weight_ih_l{k}"] = rng.standard_normal((gates * hidden, d_feat if k == 0 else hidden))
        sd[f"rnn.weight_hh_l{k}"] = rng.standard_normal((gates * hidden, hidden))
        sd[f"rnn.bias_ih_l{k}"] = rng.standard_normal(gates * hidden)
        sd[f"rnn.bias_hh_l{k}"] = rng.standard_normal(gates * hidden)
    return sd


def test_load_base_weights_copies_rnn_and_head_and_rejects_mismatches():
    module = GATModel(d_feat=6, hidden_size=8, num_layers=2, base_model="LSTM")
    variables = module.init(jax.random.PRNGKey(0), np.zeros((3, 5, 6), np.float32))
    base = {k: v.astype(np.float32) for k, v in _base_state_dict("LSTM", 6, 8, 2).items()}
    loaded = load_base_weights(variables, base, "LSTM", 2)
    np.testing.assert_array_equal(loaded["params"]["rnn"]["kernel_hh_l1"], base["rnn.weight_hh_l1"].T)
    np.testing.assert_array_equal(loaded["params"]["fc_out"]["bias"], base["fc_out.bias"])
    np.testing.assert_array_equal(loaded["params"]["a"], variables["params"]["a"])  # untouched
    assert not np.array_equal(variables["params"]["fc_out"]["bias"], base["fc_out.bias"])  # input intact

    with pytest.raises(ValueError, match="pass base_model='GRU'"):
        load_base_weights(variables, _base_state_dict("GRU", 6, 8, 2), "LSTM", 2)
    with pytest.raises(ValueError, match="default dims"):
        load_base_weights(variables, _base_state_dict("LSTM", 20, 8, 2), "LSTM", 2)
    with pytest.raises(ValueError, match="does not use"):
        load_base_weights(variables, _base_state_dict("LSTM", 6, 8, 3), "LSTM", 2)


def qlib_copy_base(torch, net, pkl_path, base_model: str):
    """Qlib GATs/HIST ``fit`` preamble: default-dim base, load the pkl, copy shared keys."""
    if base_model == "LSTM":
        base = require("qlib.contrib.model.pytorch_lstm").LSTMModel()
    else:
        base = require("qlib.contrib.model.pytorch_gru").GRUModel()
    base.load_state_dict(torch.load(pkl_path, map_location="cpu", weights_only=True))
    target = net.state_dict()
    target.update({k: v for k, v in base.state_dict().items() if k in target})
    net.load_state_dict(target)


@pytest.mark.parity
@pytest.mark.shared_data
def test_pretrained_lstm_base_matches_qlib_loading(torch, shared_data):
    pkl = shared_data / "qlib_pretrained" / "model_lstm_csi300.pkl"
    torch.manual_seed(4)
    net = require("qlib.contrib.model.pytorch_gats").GATModel(base_model="LSTM").eval()
    module, variables = from_qlib("gats", net.state_dict(), base_model="LSTM")
    loaded = load_base_weights(variables, read_torch_state_dict(pkl), "LSTM", 2)
    qlib_copy_base(torch, net, pkl, "LSTM")

    x = np.random.default_rng(5).standard_normal((20, 360)).astype(np.float32)
    with torch.no_grad():
        want = net(torch.tensor(x)).numpy()
    assert rel_err(module.apply(loaded, x), want) <= 1e-5
    assert rel_err(module.apply(variables, x), want) > 1e-2  # the pretrained weights matter
