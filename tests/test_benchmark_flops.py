"""The benchmarks' FLOP counter against FLOPs worked out by hand."""

from __future__ import annotations

import sys
from pathlib import Path

import jax
import jax.numpy as jnp

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from _flops import matmul_flops  # noqa: E402


def test_products_in_loops_branches_and_gradients_count_as_often_as_they_run():
    n, k, m, steps = 5, 7, 3, 11
    x, w = jnp.ones((n, k)), jnp.ones((k, m))
    assert matmul_flops(jnp.dot, x, w) == 2 * n * k * m

    def recurrence(h, w_hh):  # [n, k] @ [k, k] once per step
        return jax.lax.scan(lambda c, _: (jnp.tanh(c @ w_hh), None), h, None, length=steps)[0]

    assert matmul_flops(recurrence, x, jnp.ones((k, k))) == steps * 2 * n * k * k
    # the gradient with respect to w: the forward product, then x^T @ dy of the same size
    assert matmul_flops(jax.grad(lambda w: jnp.dot(x, w).sum()), w) == 2 * (2 * n * k * m)
    # one branch runs: the larger one counts
    branches = lambda p: jax.lax.cond(p, lambda: jnp.dot(x, w), lambda: jnp.zeros((n, m)))  # noqa: E731
    assert matmul_flops(branches, True) == 2 * n * k * m
    # batched products: the batch dimension multiplies
    assert matmul_flops(jnp.matmul, jnp.ones((4, n, k)), w) == 4 * 2 * n * k * m


def test_a_convolution_counts_its_kernel_taps_and_groups():
    batch, c_in, c_out, length, taps = 2, 6, 4, 20, 3
    x = jnp.ones((batch, c_in, length))
    kernel = jnp.ones((c_out, c_in, taps))
    out_len = length - taps + 1  # VALID padding
    conv = lambda x, k: jax.lax.conv_general_dilated(x, k, (1,), "VALID")  # noqa: E731
    assert matmul_flops(conv, x, kernel) == 2 * batch * c_out * out_len * c_in * taps
    grouped = lambda x, k: jax.lax.conv_general_dilated(  # noqa: E731
        x, k, (1,), "VALID", feature_group_count=2
    )
    half = jnp.ones((c_out, c_in // 2, taps))
    assert matmul_flops(grouped, x, half) == 2 * batch * c_out * out_len * (c_in // 2) * taps
