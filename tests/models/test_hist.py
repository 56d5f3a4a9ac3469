"""HIST parity with Qlib's real ``HISTModel``, masked static-shape semantics and padding.

Qlib's ``HISTModel.forward`` starts with ``torch.device(torch.get_device(x))``, which raises
for CPU tensors (``get_device`` returns -1), so the module only runs on CUDA. The parity tests
patch ``torch.get_device`` to return ``"cpu"`` for their duration (``monkeypatch``); nothing
else in the torch forward depends on the device.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import require

from qjax.interop import read_torch_state_dict
from qjax.interop.qlib import from_qlib
from qjax.models import get
from qjax.models.gats.qlib import load_base_weights
from qjax.models.hist.network import HISTModel, hidden_concept_matrix
from tests.models.parity import (
    assert_matches_qlib_on,
    assert_padding_is_masked,
    init_shapes,
    load_base_like_qlib,
    param_count,
    rel_err,
    torch_param_count,
)

SMALL = dict(hidden_size=16, num_layers=2)


@pytest.fixture
def qlib_hist(torch, monkeypatch):
    """Qlib's pytorch_hist module, with its CUDA-only device lookup made to work on CPU."""
    monkeypatch.setattr(torch, "get_device", lambda tensor: "cpu")
    return require("qlib.contrib.model.pytorch_hist")


def concepts(rng, n_stocks: int, n_concepts: int) -> np.ndarray:
    """Random binary membership with two empty concepts (which Qlib's row filter drops)."""
    matrix = (rng.random((n_stocks, n_concepts)) < 0.3).astype(np.float32)
    matrix[:, [1, n_concepts - 1]] = 0.0
    return matrix


@pytest.mark.parity
@pytest.mark.parametrize("base_model", ["GRU", "LSTM"])
def test_matches_qlib_forward_and_gradients(torch, qlib_hist, base_model, seed):
    torch.manual_seed(seed)
    kwargs = dict(d_feat=6, base_model=base_model, **SMALL)
    net = qlib_hist.HISTModel(**kwargs).eval()
    module, variables = from_qlib("hist", net.state_dict(), **kwargs)
    assert isinstance(module, get("hist"))

    rng = np.random.default_rng(seed + 1)
    x = rng.standard_normal((16, 6 * 10)).astype(np.float32)
    c = concepts(rng, 16, 9)
    y = rng.standard_normal(16).astype(np.float32)
    # the six unused Linears get zero gradients on both sides
    assert_matches_qlib_on(torch, net, "hist", module, variables, x, y, c, converter_kwargs=kwargs)


@pytest.mark.parity
def test_tiny_days_match_qlib(torch, qlib_hist):
    """Edge cases of Qlib's data-dependent filtering on 1-3 stock days: rows whose peers are all
    dissimilar point at themselves, every hidden concept can be dropped (torch then softmaxes
    over an empty set), and a day can have no concept at all."""
    self_pointing_rows = 0
    for seed in range(9):
        torch.manual_seed(seed)
        net = qlib_hist.HISTModel(d_feat=3, hidden_size=4, num_layers=1).eval()
        with torch.no_grad():  # residual = hidden state, made diverse enough to be anti-correlated
            net.fc_es_back.weight.zero_()
            net.fc_es_back.bias.zero_()
            for p in net.rnn.parameters():
                p.mul_(4.0)
        module, variables = from_qlib(
            "hist", net.state_dict(), d_feat=3, hidden_size=4, num_layers=1
        )
        rng = np.random.default_rng(seed)
        n = 1 if seed == 8 else 2 + seed % 2
        x = rng.standard_normal((n, 3 * 5)).astype(np.float32)
        c = (rng.random((n, 3)) < 0.4).astype(np.float32)
        if seed == 4:
            c[:] = 0.0
        with torch.no_grad():
            want = (
                net(torch.tensor(x), torch.tensor(c)).numpy().reshape(-1)
            )  # Qlib squeezes N=1 to 0-d
        got, state = module.apply(variables, x, c, capture_intermediates=True)
        assert got.shape == (n,)
        assert rel_err(got, want) <= 1e-5, seed

        hidden = np.asarray(state["intermediates"]["rnn"]["__call__"][0])[:, -1]
        cosine = hidden @ hidden.T
        np.fill_diagonal(cosine, -1.0)
        self_pointing_rows += int(n > 1) * int(np.sum(np.all(cosine < 0, axis=1)))
    assert self_pointing_rows > 0  # the self-pointing case was exercised


def test_hidden_concept_matrix_by_hand():
    similarity = jnp.array([[1.0, -0.2, -0.5], [-0.2, 0.9, 0.3], [-0.5, 0.3, 0.8]])
    # Row 0 has only negative peers: it points at itself with value 0. Rows 1 and 2 pick each
    # other (0.3), so columns 1 and 2 also get their own similarity on the diagonal.
    expected = np.array([[0.0, 0.0, 0.0], [0.0, 0.9, 0.3], [0.0, 0.3, 0.8]])
    np.testing.assert_allclose(hidden_concept_matrix(similarity, jnp.ones(3, bool)), expected)
    # Stock 2 padded: stock 1 may not pick it and falls back to itself; nothing is linked.
    np.testing.assert_allclose(
        hidden_concept_matrix(similarity, jnp.array([True, True, False])), 0.0
    )
    # Gradient flows through the picked values and the diagonal, not through the argmax.
    grad = jax.grad(lambda s: jnp.sum(hidden_concept_matrix(s, jnp.ones(3, bool))))(similarity)
    np.testing.assert_allclose(grad, [[0.0, 0.0, 0.0], [0.0, 1.0, 1.0], [0.0, 1.0, 1.0]])


def test_param_count_matches_qlib_reference():
    module = HISTModel(d_feat=6, hidden_size=64, num_layers=2, base_model="LSTM")
    shapes = init_shapes(module, jnp.zeros((3, 360)), jnp.zeros((3, 5)))
    assert param_count(shapes["params"]) == 93_572  # §9
    assert {
        "fc_es_middle",
        "fc_is_middle",
        "fc_indi_fore",
        "fc_out_es",
        "fc_out_is",
        "fc_out_indi",
    } <= set(shapes["params"])


@pytest.mark.parity
def test_torch_param_count_matches_qlib_reference(torch, qlib_hist):
    net = qlib_hist.HISTModel(d_feat=6, hidden_size=64, num_layers=2, base_model="LSTM")
    assert torch_param_count(net) == 93_572


def test_xavier_init_on_hidden_linears():
    module = HISTModel(d_feat=6, hidden_size=64, num_layers=1)
    params = module.init(jax.random.PRNGKey(0), jnp.zeros((3, 6)), jnp.zeros((3, 2)))["params"]
    xavier_bound = np.sqrt(6.0 / (64 + 64))  # larger than torch's default 1/sqrt(64)
    for name in ("fc_es", "fc_indi", "fc_es_middle"):
        kernel = np.asarray(params[name]["kernel"])
        assert np.abs(kernel).max() <= xavier_bound and np.abs(kernel).max() > 0.9 * xavier_bound
    assert np.abs(np.asarray(params["fc_out"]["kernel"])).max() <= 1 / 8  # default Linear init


@pytest.mark.parametrize("base_model", ["GRU", "LSTM"])
def test_padded_stocks_do_not_change_valid_rows_or_gradients(base_model, seed):
    module = HISTModel(d_feat=4, base_model=base_model, **SMALL)
    rng = np.random.default_rng(seed + 2)
    n_valid, n_padded = 10, 16
    x = rng.standard_normal((n_valid, 6, 4)).astype(np.float32)
    c = concepts(rng, n_valid, 7)
    y = rng.standard_normal(n_valid).astype(np.float32)
    x_pad = np.full((n_padded, 6, 4), np.nan, np.float32)
    x_pad[:n_valid] = x
    c_pad = np.ones((n_padded, 7), np.float32)  # padded stocks "belong" to every concept
    c_pad[:n_valid] = c
    variables = module.init(jax.random.PRNGKey(0), x, c)
    out_ref = assert_padding_is_masked(module, variables["params"], (x, c), (x_pad, c_pad), y)
    # Without the mask, extra stocks in every concept change the valid rows. Three per valid row
    # move them by at least 38% (the least of 1000 draws per base model), far from the 0.1%
    # asserted; six, as in the padding above, moved them by less on some draws.
    crowd_x = np.zeros((3 * n_valid, 6, 4), np.float32)
    crowd_c = np.ones((3 * n_valid, 7), np.float32)
    unmasked = module.apply(variables, np.concatenate([x, crowd_x]), np.concatenate([c, crowd_c]))
    assert rel_err(unmasked[:n_valid], out_ref) > 1e-3


def test_concept_matrix_shape_is_checked():
    module = HISTModel(d_feat=6, hidden_size=8, num_layers=1)
    with pytest.raises(ValueError, match="concept_matrix must be"):
        module.init(jax.random.PRNGKey(0), jnp.zeros((4, 12)), jnp.zeros((5, 3)))


@pytest.mark.parity
@pytest.mark.shared_data
def test_pretrained_lstm_base_matches_qlib_loading(torch, qlib_hist, shared_data, seed):
    pkl = shared_data / "qlib_pretrained" / "model_lstm_csi300.pkl"
    torch.manual_seed(seed + 4)
    net = qlib_hist.HISTModel(base_model="LSTM").eval()
    module, variables = from_qlib("hist", net.state_dict(), base_model="LSTM")
    loaded = load_base_weights(variables, read_torch_state_dict(pkl), "LSTM", 2)
    load_base_like_qlib(torch, net, require("qlib.contrib.model.pytorch_lstm").LSTMModel(), pkl)

    rng = np.random.default_rng(seed + 5)
    x = rng.standard_normal((20, 360)).astype(np.float32)
    c = concepts(rng, 20, 12)
    with torch.no_grad():
        want = net(torch.tensor(x), torch.tensor(c)).numpy()
    assert rel_err(module.apply(loaded, x, c), want) <= 1e-5
    assert rel_err(module.apply(variables, x, c), want) > 1e-2
