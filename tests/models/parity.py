"""Helpers shared by the model parity tests: qjax modules against Qlib's real torch modules.

Each parity test builds the torch module, converts its weights with ``from_qlib``, runs both
sides on the same random input and compares outputs, input gradients and parameter gradients
of an MSE loss. Errors are measured relative to the reference's scale (``rel_err``,
``assert_trees_close``) because absolute float32 error grows with the values compared.

Plain functions taking ``torch`` (the conftest fixture) as an argument, so that importing this
module never needs torch or qlib: tests that do not compare against Qlib still run without them.
"""

from __future__ import annotations

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
        jax.tree_util.keystr(path): rel_err(leaf, want_leaves[path], max(floor, 1e-12)) for path, leaf in got_leaves
    }


def assert_trees_close(got, want, tol: float, floor_fraction: float = 1e-3) -> None:
    """Every leaf of ``got`` within ``tol`` of ``want`` in the sense of :func:`tree_errors`."""
    errors = tree_errors(got, want, floor_fraction)
    too_far = {path: err for path, err in errors.items() if not err <= tol}
    assert not too_far, f"leaves off by more than {tol}: {too_far}"


def torch_output_and_grads(torch, net, x, y, *extra_inputs) -> tuple[np.ndarray, np.ndarray, dict[str, np.ndarray]]:
    """Eval-mode ``net(x, *extra_inputs)``, d MSE / d x and d MSE / d every parameter (by name).

    Parameters the forward never uses (HIST's unused heads, Qlib Transformer's template layer)
    have no torch gradient; they get zeros, which is what JAX returns for them.
    """
    net.eval()
    xt = torch.tensor(x, requires_grad=True)
    out = net(xt, *(torch.tensor(a) for a in extra_inputs))
    torch.mean((out - torch.tensor(y)) ** 2).backward()
    grads = {k: (p.grad if p.grad is not None else torch.zeros_like(p)).numpy() for k, p in net.named_parameters()}
    return out.detach().numpy(), xt.grad.numpy(), grads


def jax_output_and_grads(module, variables, x, y, *extra_inputs, **apply_kwargs):
    """Eval-mode ``module.apply(variables, x, *extra_inputs, **apply_kwargs)``, d MSE / d x and
    d MSE / d params, compiled as one function: ``(out, grad_x, grad_params)``."""

    def loss(params, inputs):
        out = module.apply({**variables, "params": params}, inputs, *extra_inputs, **apply_kwargs)
        return jnp.mean((out - y) ** 2), out

    grad_fn = jax.jit(jax.value_and_grad(loss, argnums=(0, 1), has_aux=True))
    (_, out), (g_params, g_x) = grad_fn(variables["params"], jnp.asarray(x))
    return out, g_x, g_params


def assert_matches_qlib(
    torch, net, name: str, module, variables, shape: tuple[int, ...], converter_kwargs: dict,
    seed: int = 1, floor_fraction: float = 1e-3,
) -> None:
    """The parity check most models share, on a standard normal input of ``shape`` and target.

    Output within 1e-5 and the input gradient within 1e-4 of the reference's scale; every
    parameter gradient within 1e-4 (:func:`assert_trees_close`, ``floor_fraction``), the torch
    gradients mapped with the converter ``name`` and its ``converter_kwargs``.
    """
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(shape).astype(np.float32)
    y = rng.standard_normal(shape[0]).astype(np.float32)
    t_out, t_gx, t_grads = torch_output_and_grads(torch, net, x, y)
    j_out, j_gx, j_grads = jax_output_and_grads(module, variables, x, y)

    assert j_out.shape == (shape[0],)
    assert rel_err(j_out, t_out) <= 1e-5, f"output (seed {seed})"
    assert rel_err(j_gx, t_gx) <= 1e-4, f"input gradient (seed {seed})"
    want_grads = qlib_grads_as_params(name, t_grads, **converter_kwargs)
    assert_trees_close(j_grads, want_grads, 1e-4, floor_fraction=floor_fraction)


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
    """
    return {
        k: (v.grad if isinstance(v, torch.nn.Parameter) else v).detach().numpy().copy()
        for k, v in net.state_dict(keep_vars=True).items()
    }


def param_count(tree) -> int:
    """Number of scalars in a pytree of arrays or of ``jax.ShapeDtypeStruct`` s."""
    return sum(int(np.prod(leaf.shape)) for leaf in jax.tree_util.tree_leaves(tree))


def torch_param_count(net) -> int:
    """Number of trainable scalars of a torch module (a shared parameter counts once)."""
    return sum(p.numel() for p in net.parameters())


def init_shapes(module, *example_inputs) -> Any:
    """The shapes of ``module.init``'s variables, traced without computing them."""
    return jax.eval_shape(module.init, jax.random.PRNGKey(0), *example_inputs)


def random_rnn_state_dict(cell: str, d_feat: int, hidden: int, layers: int) -> dict[str, np.ndarray]:
    """A Qlib ``LSTMModel`` / ``GRUModel``-shaped state dict of random values, without torch."""
    gates = {"lstm": 4, "gru": 3}[cell.lower()]
    rng = np.random.default_rng(0)
    state = {"fc_out.weight": rng.standard_normal((1, hidden)), "fc_out.bias": rng.standard_normal(1)}
    for k in range(layers):
        state[f"rnn.weight_ih_l{k}"] = rng.standard_normal((gates * hidden, d_feat if k == 0 else hidden))
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
