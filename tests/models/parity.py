"""Helpers shared by the model parity tests: qjax modules against Qlib's real torch modules.

Each parity test builds the torch module, converts its weights with ``from_qlib``, runs both
sides on the same random input and compares outputs, input gradients and parameter gradients
of an MSE loss, first in float64 (the same math: agreement to rounding) and then in float32
(the same accuracy: qjax's error against the float64 result bounded by a multiple of torch's).
Errors are measured relative to the reference's scale (``rel_err``, ``assert_trees_close``)
because absolute error grows with the values compared.

Plain functions taking ``torch`` (the conftest fixture) as an argument, so that importing this
module never needs torch or qlib: tests that do not compare against Qlib still run without them.
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from qjax.interop.qlib import from_qlib

# In train mode the bias of a Linear feeding a batch norm has no gradient: the norm subtracts the
# batch mean, so the bias cancels (float64 gives 1e-16 of the largest leaf). Both return float32
# rounding noise there, up to 2e-4 of the tree's largest gradient under the default floor (fresh
# draws; small ghost batches amplify it), so such trees are floored at 1% of their largest leaf.
BN_BIAS_GRAD_FLOOR = 1e-2


def rel_err(got, want, floor: float = 1e-12) -> float:
    """Max abs error relative to the reference's scale (its max abs value, at least ``floor``)."""
    got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
    return float(np.max(np.abs(got - want)) / max(np.max(np.abs(want)), floor))


def tree_errors(got, want, floor_fraction: float = 1e-3) -> dict[str, float]:
    """Per-leaf ``rel_err``, each leaf's scale floored at ``floor_fraction`` of the whole tree's.

    Why the floor: some gradients are exactly zero, or nearly cancel, in exact arithmetic (a
    Linear bias feeding train-mode BatchNorm; ALSTM's ``att_fc_in.bias`` and GATs'
    ``transformation`` bias, which a softmax's shift invariance cancels). Both frameworks then
    return float32 rounding noise whose relative difference means nothing; measuring it against
    a fraction of the tree's largest gradient still catches any real mismatch.
    """
    want_leaves = dict(jax.tree_util.tree_leaves_with_path(want))
    got_leaves = jax.tree_util.tree_leaves_with_path(got)
    assert len(got_leaves) == len(want_leaves) > 0
    floor = floor_fraction * max(float(np.max(np.abs(np.asarray(w)))) for w in want_leaves.values())
    return {
        jax.tree_util.keystr(path): rel_err(leaf, want_leaves[path], max(floor, 1e-12))
        for path, leaf in got_leaves
    }


def assert_trees_close(got, want, tol: float, floor_fraction: float = 1e-3) -> None:
    """Every leaf of ``got`` within ``tol`` of ``want`` in the sense of :func:`tree_errors`."""
    errors = tree_errors(got, want, floor_fraction)
    too_far = {path: err for path, err in errors.items() if not err <= tol}
    assert not too_far, f"leaves off by more than {tol}: {too_far}"


def torch_output_and_grads(
    torch, net, x, y, *extra_inputs
) -> tuple[np.ndarray, np.ndarray, dict[str, np.ndarray]]:
    """Eval-mode ``net(x, *extra_inputs)``, d MSE / d x and :func:`grad_state`."""
    net.eval()
    net.zero_grad(set_to_none=True)
    xt = torch.tensor(x, requires_grad=True)
    out = net(xt, *(torch.tensor(a) for a in extra_inputs))
    torch.mean((out - torch.tensor(y)) ** 2).backward()
    return out.detach().numpy(), xt.grad.numpy(), grad_state(torch, net)


def jax_output_and_grads(module, variables, x, y, *extra_inputs, **apply_kwargs):
    """Eval-mode ``module.apply(variables, x, *extra_inputs, **apply_kwargs)``, d MSE / d x and
    d MSE / d params, compiled as one function: ``(out, grad_x, grad_params)``."""

    def loss(params, inputs):
        out = module.apply({**variables, "params": params}, inputs, *extra_inputs, **apply_kwargs)
        return jnp.mean((out - y) ** 2), out

    grad_fn = jax.jit(jax.value_and_grad(loss, argnums=(0, 1), has_aux=True))
    (_, out), (g_params, g_x) = grad_fn(variables["params"], jnp.asarray(x))
    return out, g_x, g_params


def assert_padding_is_masked(module, params, inputs: tuple, padded_inputs: tuple, y) -> Any:
    """A batch padded with extra stocks (``mask`` False) gives the valid rows the same outputs
    and the parameters the same masked-MSE gradients as the valid rows alone; returns the
    unpadded outputs (float32). ``inputs`` are the positional inputs, valid rows first when
    padded.

    Compared in float64, where the two differ by rounding only: at most 3e-14 of a leaf's scale
    over 100 draws each of GATs and HIST, so 1e-12 holds with a wide margin. In float32,
    reductions over the longer padded axis round differently, and leaves whose gradient nearly
    cancels (GATs' ``transformation`` bias) amplify that: up to 3e-5 of the leaf's scale on 1
    draw in 150, no sign of a masking error.
    """

    def loss(params, inputs, labels, valid):
        out = module.apply({"params": params}, *inputs, mask=valid)
        return jnp.sum(jnp.where(valid, (out - labels) ** 2, 0.0)) / jnp.sum(valid), out

    def f64(tree):
        return jax.tree.map(_float64, tree)

    n_valid, n_padded = len(y), len(padded_inputs[0])
    y_padded = np.zeros(n_padded, np.float64)
    y_padded[:n_valid] = y
    mask = np.arange(n_padded) < n_valid
    with enable_x64(True):
        grad_fn = jax.jit(jax.value_and_grad(loss, has_aux=True))
        params = f64(params)
        (_, out_ref), g_ref = grad_fn(params, f64(inputs), f64(y), np.ones(n_valid, bool))
        (_, out_pad), g_pad = grad_fn(params, f64(padded_inputs), y_padded, mask)
        assert out_ref.dtype == np.float64

    assert np.all(np.isfinite(out_pad))
    np.testing.assert_allclose(out_pad[:n_valid], out_ref, rtol=1e-12, atol=1e-14)
    assert_trees_close(g_pad, g_ref, 1e-12)
    return np.asarray(out_ref, np.float32)


@contextlib.contextmanager
def float64(torch):
    """float64 on both sides: JAX's x64 mode, and torch's default dtype for the tensors some Qlib
    modules allocate in their forward."""
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        with enable_x64(True):
            yield
    finally:
        torch.set_default_dtype(previous)


def enable_x64(on: bool):
    """A float64 scope: jax.enable_x64 is the public name from JAX 0.5; older releases keep it
    under experimental (the floor, 0.4.30, among them)."""
    enable = getattr(jax, "enable_x64", None)
    if enable is None:
        from jax.experimental import enable_x64 as enable
    return enable(on)


def _float64(a):
    a = np.asarray(a)
    return a.astype(np.float64) if np.issubdtype(a.dtype, np.floating) else a


# How a float32 result may stray from the float64 one: at most this many times torch's own float32
# error, plus a few float32 ulps for draws where torch happens to land almost exactly. With a
# factor of 2, 2 of 183 comparisons (three seeds) failed, the worst at 3.6x torch's error.
FLOAT32_ERROR_FACTOR = 10
FLOAT32_NOISE = 1e-6


def float32_bound(torch_error: float) -> float:
    """The largest float32 error (against float64) accepted for qjax, given torch's."""
    return FLOAT32_ERROR_FACTOR * torch_error + FLOAT32_NOISE


def assert_matches_qlib_on(
    torch,
    net,
    name: str,
    module,
    variables,
    x,
    y,
    *extra_inputs,
    converter_kwargs: dict | None = None,
    floor_fraction: float = 1e-3,
    float64_tol: float = 1e-9,
    torch_x=None,
    grad_x_as_torch=lambda g: g,
    qlib_runs_in_float64: bool = True,
):
    """Eval-mode output, input gradient and parameter gradients of an MSE loss, against Qlib's.

    Same math: both sides run in float64 and agree to ``float64_tol`` (1e-9; every model's gap
    stayed below 1e-12 on the draws tried). Parameter gradients to 1e-6, because the converter rounds the reference
    gradients to float32 (6e-8) on the way into qjax's layout.

    Same accuracy: in float32 the two frameworks round differently, and the gap between them
    can exceed any fixed bound on some draw (deep attention stacks and long recurrences amplify
    rounding). So each float32 result is measured against the float64 truth and must be at
    most ``float32_bound`` of torch's float32 error there; parameter gradients take the
    largest error of torch's whole tree as the scale, since one leaf of torch can land exact
    by chance.

    A Qlib module that casts to float32 inside its forward (SFM) cannot give a float64 truth:
    with ``qlib_runs_in_float64=False`` the float32 results are compared directly (output 1e-5,
    gradients 1e-4 of the reference's scale).

    ``torch_x`` is torch's layout of ``x`` where the two differ; ``grad_x_as_torch`` maps qjax's
    input gradient to it. Returns qjax's float32 parameter gradients and the float64 truth, in
    qjax's layout, for checks of particular leaves.
    """
    kwargs = converter_kwargs or {}
    torch_x = x if torch_x is None else torch_x
    if not qlib_runs_in_float64:
        t_out, t_gx, t_grads = torch_output_and_grads(torch, net, torch_x, y, *extra_inputs)
        j_out, j_gx, j_grads = jax_output_and_grads(module, variables, x, y, *extra_inputs)
        want = qlib_grads_as_params(name, t_grads, **kwargs)
        assert rel_err(j_out, t_out) <= 1e-5, "output"
        assert rel_err(grad_x_as_torch(j_gx), t_gx) <= 1e-4, "input gradient"
        assert_trees_close(j_grads, want, 1e-4, floor_fraction)
        return j_grads, want
    with float64(torch):
        # In place and back (float32 -> float64 -> float32 is exact): weight-normed modules (TCN)
        # cannot be deep-copied.
        net.to(torch.float64)
        try:
            t_out, t_gx, t_grads = torch_output_and_grads(
                torch, net, _float64(torch_x), _float64(y), *map(_float64, extra_inputs)
            )
        finally:
            net.to(torch.float32)
        variables64 = jax.tree_util.tree_map(lambda a: jnp.asarray(a, jnp.float64), variables)
        j_out, j_gx, j_grads = jax_output_and_grads(
            module, variables64, _float64(x), _float64(y), *map(_float64, extra_inputs)
        )
        assert j_out.dtype == np.float64
    truth = qlib_grads_as_params(name, t_grads, **kwargs)
    error = rel_err(j_out, t_out)
    assert error <= float64_tol, f"float64 outputs {error:.2e} apart"
    error = rel_err(grad_x_as_torch(j_gx), t_gx)
    assert error <= float64_tol, f"float64 input gradients {error:.2e} apart"
    assert_trees_close(j_grads, truth, max(1e-6, float64_tol), floor_fraction)

    t32_out, t32_gx, t32_grads = torch_output_and_grads(torch, net, torch_x, y, *extra_inputs)
    j32_out, j32_gx, j32_grads = jax_output_and_grads(module, variables, x, y, *extra_inputs)
    assert j32_out.dtype == np.float32 and j32_out.shape == t32_out.shape
    bound = float32_bound(rel_err(t32_out, t_out))
    assert rel_err(j32_out, t_out) <= bound, f"float32 output further from float64 than {bound}"
    bound = float32_bound(rel_err(t32_gx, t_gx))
    assert rel_err(grad_x_as_torch(j32_gx), t_gx) <= bound, f"float32 input gradient beyond {bound}"
    torch_error = max(
        tree_errors(qlib_grads_as_params(name, t32_grads, **kwargs), truth, floor_fraction).values()
    )
    assert_trees_close(j32_grads, truth, float32_bound(torch_error), floor_fraction)
    return j32_grads, truth


def assert_matches_qlib(
    torch,
    net,
    name: str,
    module,
    variables,
    shape: tuple[int, ...],
    converter_kwargs: dict,
    seed: int = 1,
    floor_fraction: float = 1e-3,
    qlib_runs_in_float64: bool = True,
) -> None:
    """:func:`assert_matches_qlib_on` a standard normal input of ``shape`` and target."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(shape).astype(np.float32)
    y = rng.standard_normal(shape[0]).astype(np.float32)
    assert_matches_qlib_on(
        torch,
        net,
        name,
        module,
        variables,
        x,
        y,
        converter_kwargs=converter_kwargs,
        floor_fraction=floor_fraction,
        qlib_runs_in_float64=qlib_runs_in_float64,
    )


def qlib_grads_as_params(name: str, torch_grads: dict, **module_kwargs) -> dict:
    """Torch gradients (a state dict of them) in qjax's ``params`` layout.

    Mapped with the weight converter itself: it only renames, transposes, reshapes and stacks,
    all linear, so it maps a gradient exactly as it maps the weight.
    """
    return from_qlib(name, torch_grads, **module_kwargs)[1]["params"]


def numpy_state(net) -> dict[str, np.ndarray]:
    """The torch module's state dict as numpy copies (safe to keep while torch updates the net)."""
    return {k: v.detach().numpy().copy() for k, v in net.state_dict().items()}


def grad_state(torch, net) -> dict[str, np.ndarray]:
    """The state dict with every parameter replaced by its gradient; buffers stay as they are.

    Unlike ``named_parameters()`` the state dict lists a shared module under each of its names
    (TabNet's shared Linears), and it keeps the BatchNorm buffers a converter also reads.
    Parameters the forward never uses (HIST's unused heads, Qlib Transformer's template layer)
    have no torch gradient; they get zeros, which is what JAX returns for them.
    """

    def value(v):
        if isinstance(v, torch.nn.Parameter):
            v = v.grad if v.grad is not None else torch.zeros_like(v)
        return v.detach().numpy().copy()

    return {k: value(v) for k, v in net.state_dict(keep_vars=True).items()}


def param_count(tree) -> int:
    """Number of scalars in a pytree of arrays or of ``jax.ShapeDtypeStruct`` s."""
    return sum(int(np.prod(leaf.shape)) for leaf in jax.tree_util.tree_leaves(tree))


def torch_param_count(net) -> int:
    """Number of trainable scalars of a torch module (a shared parameter counts once)."""
    return sum(p.numel() for p in net.parameters())


def init_shapes(module, *example_inputs) -> Any:
    """The shapes of ``module.init``'s variables, traced without computing them."""
    return jax.eval_shape(module.init, jax.random.PRNGKey(0), *example_inputs)


def random_rnn_state_dict(
    cell: str, d_feat: int, hidden: int, layers: int
) -> dict[str, np.ndarray]:
    """A Qlib ``LSTMModel`` / ``GRUModel``-shaped state dict of random values, without torch."""
    gates = {"lstm": 4, "gru": 3}[cell.lower()]
    rng = np.random.default_rng(0)
    state = {
        "fc_out.weight": rng.standard_normal((1, hidden)),
        "fc_out.bias": rng.standard_normal(1),
    }
    for k in range(layers):
        state[f"rnn.weight_ih_l{k}"] = rng.standard_normal(
            (gates * hidden, d_feat if k == 0 else hidden)
        )
        state[f"rnn.weight_hh_l{k}"] = rng.standard_normal((gates * hidden, hidden))
        state[f"rnn.bias_ih_l{k}"] = rng.standard_normal(gates * hidden)
        state[f"rnn.bias_hh_l{k}"] = rng.standard_normal(gates * hidden)
    return state


def load_base_like_qlib(torch, net, base, pkl_path: Path) -> None:
    """Qlib GATs/HIST ``fit`` preamble: ``base`` (a default-dim ``LSTMModel()``/``GRUModel()``)
    loads the pickle, then every key ``net`` shares with it is copied into ``net``."""
    base.load_state_dict(torch.load(pkl_path, map_location="cpu", weights_only=True))
    target = net.state_dict()
    target.update({k: v for k, v in base.state_dict().items() if k in target})
    net.load_state_dict(target)
