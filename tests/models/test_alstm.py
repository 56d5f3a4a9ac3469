"""ALSTM parity with Qlib's real torch ALSTMModel (DatasetH and TSDatasetH variants)."""

from __future__ import annotations

import jax
import numpy as np
import pytest
from conftest import require

from qjax.interop.qlib import from_qlib
from qjax.models.alstm import ALSTMModel
from tests.models.parity import assert_matches_qlib, param_count, torch_param_count

N = 32


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
    torch, qlib_module, d_feat, shape, rnn_type, expected_count, seed
):
    kwargs = dict(d_feat=d_feat, hidden_size=64, num_layers=2, dropout=0.0, rnn_type=rnn_type)
    torch.manual_seed(seed)
    net = require(qlib_module).ALSTMModel(**kwargs)
    module, variables = from_qlib("alstm", net.state_dict(), **kwargs)
    assert_matches_qlib(torch, net, "alstm", module, variables, shape, kwargs, seed=seed + 1)

    n_torch = torch_param_count(net)
    assert param_count(variables) == n_torch
    if expected_count is not None:  # QLIB_REFERENCE §9 lists the GRU benchmark configs
        assert n_torch == expected_count


def test_attention_dropout_acts_only_in_training(seed):
    module = ALSTMModel(
        d_feat=3, hidden_size=8, num_layers=1, dropout=0.5
    )  # one layer: no RNN dropout
    x = np.random.default_rng(seed + 2).standard_normal((6, 5, 3)).astype(np.float32)
    variables = module.init(jax.random.PRNGKey(0), x)
    train_out = module.apply(variables, x, train=True, rngs={"dropout": jax.random.PRNGKey(1)})
    assert not np.allclose(train_out, module.apply(variables, x))
    no_dropout = ALSTMModel(d_feat=3, hidden_size=8, num_layers=1, dropout=0.0)
    # Training and inference run the recurrence in different gate layouts: equal up to rounding.
    np.testing.assert_allclose(
        no_dropout.apply(variables, x, train=True), module.apply(variables, x), rtol=1e-6, atol=1e-7
    )


def test_unknown_rnn_type_is_rejected():
    module = ALSTMModel(d_feat=3, hidden_size=8, rnn_type="TCN")
    with pytest.raises(ValueError, match="rnn_type"):
        module.init(jax.random.PRNGKey(0), np.zeros((2, 5, 3), np.float32))


def test_converter_rejects_mismatched_rnn_type(torch):
    net = require("qlib.contrib.model.pytorch_alstm").ALSTMModel(
        d_feat=6, hidden_size=8, rnn_type="GRU"
    )
    with pytest.raises(ValueError, match="shapes do not fit"):
        from_qlib("alstm", net.state_dict(), d_feat=6, hidden_size=8, rnn_type="LSTM")
    with pytest.raises(ValueError, match="does not use"):
        from_qlib("alstm", net.state_dict(), d_feat=6, hidden_size=8, num_layers=1)
