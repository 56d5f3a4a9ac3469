"""KRNN parity with Qlib's real torch KRNNModel, including its flat-input layout quirk."""

from __future__ import annotations

import jax
import numpy as np
import pytest
from conftest import require

from qjax.interop.qlib import from_qlib
from qjax.models.krnn import KRNNModel
from tests.models.parity import assert_matches_qlib, param_count, rel_err, torch_param_count

N = 24
BENCH = dict(
    fea_dim=6, cnn_dim=8, cnn_kernel_size=3, rnn_dim=8, rnn_dups=2, rnn_layers=2, dropout=0.0
)
WRAPPER_DEFAULTS = dict(
    fea_dim=6, cnn_dim=64, cnn_kernel_size=3, rnn_dim=64, rnn_dups=3, rnn_layers=2, dropout=0.0
)


def torch_krnn(torch, seed, **kwargs):
    torch.manual_seed(seed)
    return require("qlib.contrib.model.pytorch_krnn").KRNNModel(device="cpu", **kwargs).eval()


@pytest.mark.parity
@pytest.mark.parametrize(
    "kwargs,shape",
    [
        (BENCH, (N, 360)),  # Alpha360 rows, Qlib's row-major view
        (WRAPPER_DEFAULTS, (N, 360)),
        (
            {**BENCH, "fea_dim": 20, "cnn_kernel_size": 4, "rnn_dups": 3, "rnn_layers": 1},
            (N, 20, 20),
        ),
    ],
    ids=["bench", "wrapper-defaults", "window-even-kernel"],
)
def test_matches_qlib_forward_and_gradients(torch, kwargs, shape, seed):
    net = torch_krnn(torch, 0, **kwargs)
    module, variables = from_qlib("krnn", net.state_dict(), **kwargs)
    assert_matches_qlib(torch, net, "krnn", module, variables, shape, kwargs, seed=seed + 1)


@pytest.mark.parity
def test_param_count_matches_qlib_and_reference(torch):
    net = torch_krnn(torch, 0, **BENCH)
    _, variables = from_qlib("krnn", net.state_dict(), **BENCH)
    assert param_count(variables) == torch_param_count(net) == 1_889  # §9
    assert variables["params"]["rnns"]["kernel_hh_l1"].shape == (
        2,
        8,
        24,
    )  # K GRUs stacked, not looped


@pytest.mark.parity
def test_feature_major_layout_equals_qlib_on_a_relaid_input(torch, seed):
    net = torch_krnn(torch, 3, **BENCH)
    module, variables = from_qlib("krnn", net.state_dict(), **BENCH, layout="feature_major")
    x = (
        np.random.default_rng(seed + 4).standard_normal((N, 360)).astype(np.float32)
    )  # [CLOSE59..0, OPEN59..0, ...]
    # Row-major [T, F] rows are what Qlib's view(N, -1, 6) reads as true time steps.
    time_major = x.reshape(N, 6, 60).transpose(0, 2, 1).reshape(N, 360)
    with torch.no_grad():
        want = net(torch.tensor(time_major)).numpy()
        quirky = net(torch.tensor(x)).numpy()
    got = module.apply(variables, x)
    assert rel_err(got, want) <= 1e-5
    assert rel_err(got, quirky) > 1e-2  # the switch really changes what the model sees


def test_layouts_agree_on_window_input_and_unknown_layout_fails(seed):
    window = np.random.default_rng(seed + 5).standard_normal((4, 10, 6)).astype(np.float32)
    qlib_layout = KRNNModel(**BENCH)
    variables = qlib_layout.init(jax.random.PRNGKey(0), window)
    corrected = KRNNModel(**BENCH, layout="feature_major")
    np.testing.assert_array_equal(
        qlib_layout.apply(variables, window), corrected.apply(variables, window)
    )
    with pytest.raises(ValueError, match="layout"):
        KRNNModel(**BENCH, layout="time_major").apply(variables, window)


def test_dropout_acts_between_gru_layers_only_in_training(seed):
    module = KRNNModel(**{**BENCH, "dropout": 0.5})
    x = np.random.default_rng(seed + 6).standard_normal((4, 60)).astype(np.float32)
    variables = module.init(jax.random.PRNGKey(0), x)
    train_a = module.apply(variables, x, train=True, rngs={"dropout": jax.random.PRNGKey(1)})
    train_b = module.apply(variables, x, train=True, rngs={"dropout": jax.random.PRNGKey(2)})
    assert not np.allclose(train_a, module.apply(variables, x)) and not np.allclose(
        train_a, train_b
    )


def test_converter_rejects_wrong_duplicate_count(torch):
    net = torch_krnn(torch, 0, **BENCH)
    with pytest.raises(ValueError, match="does not use"):
        from_qlib("krnn", net.state_dict(), **{**BENCH, "rnn_dups": 1})
    with pytest.raises(ValueError, match="shapes do not fit"):
        from_qlib("krnn", net.state_dict(), **{**BENCH, "cnn_kernel_size": 5})
