"""Transformer / Localformer parity with Qlib's real torch modules (DatasetH and TSDatasetH)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import require

from qjax.interop.qlib import from_qlib
from qjax.models import get
from qjax.models.transformer import network, positional_encoding
from tests.models.parity import (
    assert_matches_qlib_on,
    enable_x64,
    float32_bound,
    init_shapes,
    param_count,
    rel_err,
    torch_param_count,
)

# Qlib builds nn.TransformerEncoder with batch_first=False, for which torch warns at construction.
pytestmark = pytest.mark.filterwarnings("ignore:enable_nested_tensor:UserWarning")

N, T = 8, 12
SMALL = dict(d_model=16, nhead=4, num_layers=2, dropout=0.3)  # dropout is inactive in eval

# (registry name, qlib module, d_feat, input shape)
CASES = [
    ("transformer", "qlib.contrib.model.pytorch_transformer", 6, (N, 6 * T)),
    ("transformer", "qlib.contrib.model.pytorch_transformer_ts", 5, (N, T, 5)),
    ("localformer", "qlib.contrib.model.pytorch_localformer", 6, (N, 6 * T)),
    ("localformer", "qlib.contrib.model.pytorch_localformer_ts", 5, (N, T, 5)),
]
QLIB_MODULE = {
    "transformer": "qlib.contrib.model.pytorch_transformer",
    "localformer": "qlib.contrib.model.pytorch_localformer",
}


@pytest.mark.parity
@pytest.mark.parametrize("name,qlib_module,d_feat,shape", CASES)
def test_matches_qlib_forward_and_gradients(torch, name, qlib_module, d_feat, shape, seed):
    torch.manual_seed(seed)
    net = require(qlib_module).Transformer(d_feat=d_feat, **SMALL).eval()
    # One position table for both sides: numpy's and torch's float32 sines differ by up to 1e-6
    # (compared on their own below), which would be the whole float64 gap.
    with torch.no_grad():
        net.pos_encoder.pe.copy_(
            torch.from_numpy(positional_encoding(len(net.pos_encoder.pe), SMALL["d_model"]))[
                :, None
            ]
        )
    module, variables = from_qlib(name, net.state_dict(), d_feat=d_feat, **SMALL)
    assert isinstance(module, get(name))

    rng = np.random.default_rng(seed + 1)
    x = rng.standard_normal(shape).astype(np.float32)
    y = rng.standard_normal(N).astype(np.float32)
    with torch.no_grad():
        want = net(torch.tensor(x)).numpy()  # torch's fused eval path, as in Qlib's predict
    got = module.apply(variables, x)
    assert got.shape == (N,)
    assert rel_err(got, want) <= 1e-5

    got_grads, want_grads = assert_matches_qlib_on(
        torch, net, name, module, variables, x, y, converter_kwargs=dict(d_feat=d_feat, **SMALL)
    )
    template = [
        path
        for path, _ in jax.tree_util.tree_leaves_with_path(want_grads)
        if "encoder_layer" in str(path)
    ]
    assert template  # Qlib's unused template layer: no gradient on either side
    for tree in (got_grads, want_grads):
        assert not any(
            np.any(leaf)
            for path, leaf in jax.tree_util.tree_leaves_with_path(tree)
            if path in template
        )


@pytest.mark.parity
@pytest.mark.parametrize(
    "name,d_feat,expected",
    [
        ("transformer", 6, 843_969),
        ("transformer", 20, 844_865),
        ("localformer", 6, 918_593),
        ("localformer", 20, 919_489),
    ],
)
def test_param_count_equals_qlib_benchmark_config(torch, name, d_feat, expected):
    kwargs = dict(d_feat=d_feat, d_model=64, nhead=2, num_layers=2, dropout=0.0)
    net = require(QLIB_MODULE[name]).Transformer(**kwargs)
    params = init_shapes(get(name)(**kwargs), jnp.zeros((2, d_feat * 60)))["params"]
    assert param_count(params) == torch_param_count(net) == expected
    assert param_count(params["encoder_layer"]) == torch_param_count(net.encoder_layer) == 281_152


SMALL_INIT = dict(d_feat=4, d_model=8, nhead=2, num_layers=3, dropout=0.5)


@pytest.fixture(scope="module", params=["transformer", "localformer"])
def initialised(request):
    """(name, module, variables, window input) for a small randomly initialised model."""
    x = np.random.default_rng(3).standard_normal((6, 5, 4)).astype(np.float32)
    module = get(request.param)(**SMALL_INIT)
    return request.param, module, module.init(jax.random.PRNGKey(0), x), x


def test_copies_start_identical_like_torch_deepcopy(initialised):
    name, _, variables, _ = initialised
    params = variables["params"]
    encoder = params["transformer_encoder"]
    layers = [encoder[f"layers_{i}"] for i in range(3)]
    groups = [layers + [params["encoder_layer"]]]
    if name == "localformer":
        groups.append([encoder[f"conv_{i}"] for i in range(3)])
    for group in groups:
        for other in group[1:]:
            jax.tree_util.tree_map(np.testing.assert_array_equal, group[0], other)
    layer = layers[0]  # ...but the tensors inside one layer are independent draws
    assert not np.allclose(layer["linear1"]["kernel"][:8, :8], layer["linear2"]["kernel"][:8, :8])
    assert not np.any(layer["self_attn"]["in_proj_bias"]) and not np.any(
        layer["self_attn"]["out_proj"]["bias"]
    )
    # torch's init ranges: xavier-uniform in_proj [8, 24], U(+-1/sqrt(fan_in)) Linears and Conv1d
    bounds = {
        ("self_attn", "in_proj_kernel"): (6 / 32) ** 0.5,
        ("linear1", "kernel"): 8**-0.5,
        ("linear1", "bias"): 8**-0.5,
        ("linear2", "kernel"): 2048**-0.5,
    }
    if name == "localformer":
        layer = {**layer, "conv": encoder["conv_0"]}
        bounds[("conv", "kernel")] = 24**-0.5
    for (block, leaf), bound in bounds.items():
        values = np.abs(layer[block][leaf])
        assert 0.9 * bound < values.max() <= bound, (block, leaf)


def test_flat_and_window_inputs_agree(initialised):
    _, module, variables, window = initialised
    flat = window.transpose(0, 2, 1).reshape(len(window), -1)  # Alpha360-style feature-major rows
    np.testing.assert_allclose(
        module.apply(variables, flat), module.apply(variables, window), rtol=1e-6
    )


def test_dropout_only_in_training(initialised):
    name, module, variables, x = initialised
    eval_out = module.apply(variables, x)
    train_a = module.apply(variables, x, train=True, rngs={"dropout": jax.random.PRNGKey(1)})
    train_b = module.apply(variables, x, train=True, rngs={"dropout": jax.random.PRNGKey(2)})
    assert not np.allclose(train_a, eval_out) and not np.allclose(train_a, train_b)
    no_dropout = get(name)(**{**SMALL_INIT, "dropout": 0.0})
    # Localformer's GRU head runs a different gate layout in training: equal up to rounding.
    np.testing.assert_allclose(
        no_dropout.apply(variables, x, train=True),
        no_dropout.apply(variables, x),
        rtol=1e-6,
        atol=1e-7,
    )


@pytest.mark.parity
def test_positional_encoding_equals_qlib_buffer(torch):
    pe = (
        require("qlib.contrib.model.pytorch_transformer").PositionalEncoding(16).pe[:, 0, :].numpy()
    )
    np.testing.assert_allclose(positional_encoding(1000, 16), pe, rtol=0, atol=2e-6)


def test_bad_configs_are_rejected_with_the_fix():
    def init(name, x, **kwargs):  # tracing is enough to raise
        jax.eval_shape(get(name)(**kwargs).init, jax.random.PRNGKey(0), x)

    x = jnp.zeros((2, 5, 4))
    with pytest.raises(ValueError, match="divisible by nhead"):
        init("transformer", x, d_feat=4, d_model=8, nhead=3)
    with pytest.raises(ValueError, match="must be even"):
        init("transformer", x, d_feat=4, d_model=9, nhead=3)
    with pytest.raises(ValueError, match="max_len"):
        init("localformer", jnp.zeros((1, 1001, 4)), d_feat=4, d_model=8, nhead=2)
    with pytest.raises(ValueError, match="d_feat"):
        init("transformer", x, d_feat=6, d_model=8, nhead=2)
    with pytest.raises(ValueError, match="at least one layer"):
        init("localformer", x, d_feat=4, d_model=8, nhead=2, num_layers=0)


@pytest.mark.parity
def test_converter_rejects_kwargs_that_do_not_fit_the_state_dict(torch):
    kwargs = dict(d_feat=6, d_model=16, nhead=4, num_layers=2)
    state = require(QLIB_MODULE["localformer"]).Transformer(**kwargs).state_dict()
    with pytest.raises(ValueError, match="shapes do not fit"):
        from_qlib("localformer", state, **{**kwargs, "d_feat": 5})
    with pytest.raises(KeyError, match="layers.2"):
        from_qlib("localformer", state, **{**kwargs, "num_layers": 3})
    with pytest.raises(ValueError, match="does not use"):
        from_qlib("localformer", state, **{**kwargs, "num_layers": 1})
    with pytest.raises(KeyError, match="conv"):
        from_qlib(
            "localformer",
            require(QLIB_MODULE["transformer"]).Transformer(**kwargs).state_dict(),
            **kwargs,
        )


def test_eval_runs_the_last_layer_on_the_last_step_only(seed):
    """The head reads the last step, so eval runs the last encoder layer for it alone; train
    mode without dropout runs every step through the same weights. Same dot products in another
    blocking: float32 rounding (~1e-7 relative per op) is the only difference allowed."""
    module = get("transformer")(**{**SMALL_INIT, "dropout": 0.0})
    x = np.random.default_rng(seed + 7).standard_normal((6, 9, 4)).astype(np.float32)
    variables = module.init(jax.random.PRNGKey(seed), x)
    out, state = module.apply(variables, x, capture_intermediates=True)
    layers = state["intermediates"]["transformer_encoder"]
    assert layers["layers_1"]["__call__"][0].shape == (6, 9, 8)  # earlier layers: every step
    assert layers["layers_2"]["__call__"][0].shape == (6, 1, 8)  # the last: the last step
    np.testing.assert_allclose(out, module.apply(variables, x, train=True), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("query_steps", [9, 1])  # every step (training), the last one (eval)
def test_attention_paths_match_float64_softmax(monkeypatch, seed, query_steps):
    """softmax(q k^T / sqrt(c)) v: float64 (the einsums; the library takes its softmax in
    float32) agrees with numpy's to rounding; in float32 the library path strays from that truth
    no further than ``float32_bound`` of the einsums' own float32 error."""
    if network.LIBRARY_ATTENTION is None:
        pytest.skip("this jax has no jax.nn.dot_product_attention: the einsums are the only path")
    rng = np.random.default_rng(seed)
    q = rng.standard_normal((5, query_steps, 2, 4))
    k, v = rng.standard_normal((2, 5, 9, 2, 4))
    scores = np.einsum("nqhc,nkhc->nhqk", q, k) / 2.0
    weights = np.exp(scores - scores.max(-1, keepdims=True))
    want = np.einsum("nhqk,nkhc->nqhc", weights / weights.sum(-1, keepdims=True), v)

    with enable_x64(True):
        got = network.attention(*(jnp.asarray(a, jnp.float64) for a in (q, k, v)))
        assert got.dtype == jnp.float64
        assert rel_err(got, want) <= 1e-12, f"seed {seed}"
    inputs = [jnp.asarray(a, jnp.float32) for a in (q, k, v)]
    library = network.attention(*inputs)
    monkeypatch.setattr(network, "LIBRARY_ATTENTION", None)
    einsums = network.attention(*inputs)
    assert library.dtype == einsums.dtype == jnp.float32
    assert rel_err(library, want) <= float32_bound(rel_err(einsums, want)), f"seed {seed}"


def test_attention_dropout_stays_on_the_einsums(monkeypatch, seed):
    """The library function has no dropout on the weights: with dropout it must not be used
    (and float32 without dropout must use it)."""

    def refuse(*_):
        raise AssertionError("dropout-free path taken with dropout on")

    if network.LIBRARY_ATTENTION is None:
        pytest.skip("this jax has no jax.nn.dot_product_attention: the einsums are the only path")
    module = get("transformer")(**SMALL_INIT)  # dropout 0.5
    x = np.random.default_rng(seed).standard_normal((6, 5, 4)).astype(np.float32)
    variables = module.init(jax.random.PRNGKey(seed), x)
    monkeypatch.setattr(network, "LIBRARY_ATTENTION", refuse)
    out = module.apply(variables, x, train=True, rngs={"dropout": jax.random.PRNGKey(seed)})
    assert np.isfinite(out).all() and out.shape == (6,)
    with pytest.raises(AssertionError, match="dropout-free path"):
        module.apply(variables, x)  # eval: no dropout, so the library path
