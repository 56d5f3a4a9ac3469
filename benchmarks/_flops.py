"""Matmul and convolution FLOPs of a model's step, and the machine's measured matmul peak.

The FLOPs are counted from the traced program (``jax.make_jaxpr``), not from XLA's cost
analysis, which counts a loop's body once however many times it runs: here a ``scan`` body
counts ``length`` times, so a recurrent model's 60 time steps are all there. Only
``dot_general`` and ``conv_general_dilated`` count (2 FLOPs per multiply-add); elementwise work
is left out, so the achieved rate is comparable with the matmul peak beside it. Both frameworks
run the same arithmetic, so one count serves the qjax and the torch rate.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np


def matmul_flops(fn: Callable[..., Any], *args: Any) -> float:
    """FLOPs of the matrix products and convolutions ``fn(*args)`` runs."""
    return _count(jax.make_jaxpr(fn)(*args).jaxpr)


def _count(jaxpr) -> float:
    total = 0.0
    for eqn in jaxpr.eqns:
        name = eqn.primitive.name
        if name == "dot_general":
            total += _dot_flops(eqn)
        elif name == "conv_general_dilated":
            total += _conv_flops(eqn)
        inner = [_count(sub) for sub in _sub_jaxprs(eqn)]
        if name == "cond":  # one branch runs
            total += max(inner, default=0.0)
        else:
            times = eqn.params["length"] if name == "scan" else 1
            total += times * sum(inner)
    return total


def _sub_jaxprs(eqn):
    for param in eqn.params.values():
        for sub in param if isinstance(param, (tuple, list)) else (param,):
            inner = getattr(sub, "jaxpr", sub)
            if hasattr(inner, "eqns"):
                yield inner


def _dot_flops(eqn) -> float:
    (lhs_contract, _), _ = eqn.params["dimension_numbers"]
    lhs = eqn.invars[0].aval.shape
    depth = math.prod(lhs[d] for d in lhs_contract)
    return 2.0 * math.prod(eqn.outvars[0].aval.shape) * depth


def _conv_flops(eqn) -> float:
    rhs = eqn.invars[1].aval.shape
    out_features = rhs[eqn.params["dimension_numbers"].rhs_spec[0]]
    per_output = math.prod(rhs) / out_features  # input features per group x kernel taps
    return 2.0 * math.prod(eqn.outvars[0].aval.shape) * per_output


def matmul_peak(size: int, repeats: int = 5, dtype=jnp.float32) -> dict:
    """GFLOP/s of one jitted ``size`` x ``size`` float32 matmul on JAX's default device
    (median of ``repeats`` after a warm-up)."""
    a = jax.random.normal(jax.random.PRNGKey(0), (size, size), dtype)
    b = jax.random.normal(jax.random.PRNGKey(1), (size, size), dtype)
    dot = jax.jit(jnp.dot)
    dot(a, b).block_until_ready()
    seconds = []
    for _ in range(repeats):
        start = time.perf_counter()
        dot(a, b).block_until_ready()
        seconds.append(time.perf_counter() - start)
    return {
        "size": size,
        "dtype": str(np.dtype(dtype)),
        "gflops": 2 * size**3 / np.median(seconds) / 1e9,
    }


def flops_lines(r: dict) -> list[str]:
    """The report's GFLOP/s table for ``r["models"]`` (``train_vs_torch.run_case`` results) and
    ``r["matmul_peak"]``; nothing when either is missing."""
    peak = r.get("matmul_peak")
    rows = {name: res for name, res in r["models"].items() if "flops" in res}
    if peak is None or not rows:
        return []
    lines = [
        "## Achieved GFLOP/s",
        "",
        "Matrix-product and convolution FLOPs per sample, counted from the traced programs "
        "(`benchmarks/_flops.py`, a scan's body once per step; elementwise work left out), times "
        "each side's measured rate. The peak beside them: one jitted "
        f"{peak['size']}x{peak['size']} {peak['dtype']} `jnp.dot` on this machine, "
        f"**{peak['gflops']:,.0f} GFLOP/s**.",
        "",
        "| model | train MFLOP/sample | qjax train GFLOP/s | torch train GFLOP/s | qjax share of "
        "peak | infer MFLOP/sample | qjax infer GFLOP/s | torch infer GFLOP/s |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name, res in rows.items():
        f, t, i = res["flops"], res["train"], res["infer"]
        train = [
            f["train_per_sample"] * t[k] / 1e9
            for k in ("qjax_samples_per_s", "torch_samples_per_s")
        ]
        infer = [
            f["infer_per_sample"] * i[k] / 1e9
            for k in ("qjax_samples_per_s", "torch_samples_per_s")
        ]
        lines.append(
            f"| {name} | {f['train_per_sample'] / 1e6:.2f} | {train[0]:.1f} | {train[1]:.1f} | "
            f"{train[0] / peak['gflops']:.0%} | {f['infer_per_sample'] / 1e6:.2f} | {infer[0]:.1f} | "
            f"{infer[1]:.1f} |"
        )
    return [*lines, ""]
