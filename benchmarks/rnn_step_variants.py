"""Three more ways to run an LSTM step on XLA:CPU, and the kernels torch runs for its RNNs.

Two LSTM layers (hidden 64, 60 steps, Alpha360's 6 inputs), at the row counts the models meet
per CPU device: 145 (a day of ~290 stocks split over 2 devices, GATs/HIST), 290 (a whole day)
and 400 (a batch of 800 split over 2 devices). Each variant against the layout qjax uses, all
compiled first and then timed in turns with the order rotating (medians of ``--repeats``):

1. **Gradient** (training), w.r.t. every kernel and bias of a weighted sum of the last step's
   output (what a model's head reads), against autodiff of ``qjax.models.layers.RNN``'s fused
   layout:
   - ``one_sigmoid``: the gate pre-activations go through one sigmoid over the whole [N, 4H]
     buffer, tanh(g) taken as 2 sigmoid(2g) - 1 (XLA:CPU vectorises elementwise work on slices of
     one buffer badly, ``results/rnn_layouts_cpu.md``);
   - ``one_sigmoid_cell_vjp``: the same cell differentiated by its own VJP, which saves the
     sigmoids, the previous cell state and tanh of the new one (3 stacked buffers per step);
   - ``wavefront``: both layers in one scan, layer 2 one step behind layer 1: one LSTM of
     hidden 2H whose [2H, 8H] recurrent matrix holds layer 1's recurrent kernel, layer 2's input
     kernel and layer 2's recurrent kernel (half the sequential steps, twice the rows of work
     per matmul), with the one-buffer sigmoid.
2. **Forward** (inference), against the per-gate layout qjax predicts with.
   Beside them, the same gradient of ``torch.nn.LSTM`` (2 threads).
3. **torch's kernels**: one train step of ``torch.nn.LSTM`` and ``torch.nn.GRU`` (2 layers,
   290 rows) under ``torch.profiler``; the operators with the most self CPU time.

Every variant's outputs or gradients are compared with qjax's layout (largest relative
difference) so that a speed-up cannot come from computing something else.

    python benchmarks/rnn_step_variants.py --out benchmarks/results
"""

from __future__ import annotations

import argparse
import sys

import jax
import jax.numpy as jnp
from _common import (
    command_line,
    largest_relative_difference,
    load_average,
    machine,
    median,
    publish,
    rotate,
)

from qjax.models.layers import _scan_cell, _scan_gates

T, F, H, LAYERS = 60, 6, 64, 2
ROWS = (145, 290, 400)
FORWARD_ROWS = (128, 145, 290)
# sigmoid(scale * z) per gate block (i, f, g, o): tanh(g) = 2 sigmoid(2g) - 1
GATE_SCALE = jnp.concatenate([jnp.full(2 * H, 1.0), jnp.full(H, 2.0), jnp.full(H, 1.0)])


def init_params(key) -> dict:
    """Two LSTM layers with torch's U(-1/sqrt(H), 1/sqrt(H)) init, qjax's [in, 4H] kernels."""
    bound = H**-0.5
    shapes = {}
    for layer, width in enumerate((F, H)):
        shapes.update(
            {
                f"k_ih{layer}": (width, 4 * H),
                f"k_hh{layer}": (H, 4 * H),
                f"b_ih{layer}": (4 * H,),
                f"b_hh{layer}": (4 * H,),
            }
        )
    keys = jax.random.split(key, len(shapes))
    return {
        name: jax.random.uniform(k, shape, minval=-bound, maxval=bound)
        for k, (name, shape) in zip(keys, shapes.items())
    }


def _projected(params, seq, layer):
    return jnp.dot(seq, params[f"k_ih{layer}"]) + params[f"b_ih{layer}"] + params[f"b_hh{layer}"]


# -- qjax's layouts ----------------------------------------------------------------------------


def fused(params, x):
    """``RNN``'s training layout: time-major [T, N, F] -> top layer's [T, N, H]."""
    seq = x
    for layer in range(LAYERS):
        projected = jnp.dot(seq, params[f"k_ih{layer}"]) + params[f"b_ih{layer}"]
        seq = _scan_cell("lstm", projected, params[f"k_hh{layer}"], params[f"b_hh{layer}"], H)
    return seq


def per_gate(params, x):
    """``RNN``'s inference layout."""
    seq = x
    for layer in range(LAYERS):
        p = [params[f"{n}{layer}"] for n in ("k_ih", "k_hh", "b_ih", "b_hh")]
        seq = _scan_gates("lstm", seq, *p, H)
    return seq


# -- the variants ------------------------------------------------------------------------------


def _one_sigmoid_step(kernel, hidden, cell):
    scale = jnp.repeat(GATE_SCALE.reshape(4, H), hidden // H, axis=1).reshape(-1)

    def step(carry, projected):
        h, c = carry
        s = jax.nn.sigmoid((projected + jnp.dot(h, kernel)) * scale)
        h, c = cell(s, c)
        return (h, c), h

    return step


def _cell_from_sigmoids(s, c):
    i, f, g, o = jnp.split(s, 4, axis=-1)
    c = f * c + i * (2.0 * g - 1.0)
    return o * jnp.tanh(c), c


def _scan_layers(params, x, cell):
    seq = x
    for layer in range(LAYERS):
        projected = _projected(params, seq, layer)
        zero = jnp.zeros(projected.shape[1:-1] + (H,), projected.dtype)
        step = _one_sigmoid_step(params[f"k_hh{layer}"], H, cell)
        seq = jax.lax.scan(step, (zero, zero), projected)[1]
    return seq


def one_sigmoid(params, x):
    return _scan_layers(params, x, _cell_from_sigmoids)


@jax.custom_vjp
def _cell_own_vjp(s, c):
    return _cell_from_sigmoids(s, c)


def _cell_forward(s, c):
    i, f, g, o = jnp.split(s, 4, axis=-1)
    c_new = f * c + i * (2.0 * g - 1.0)
    tanh_c = jnp.tanh(c_new)
    return (o * tanh_c, c_new), (s, c, tanh_c)


def _cell_backward(saved, cotangents):
    s, c, tanh_c = saved
    d_h, d_c_new = cotangents
    i, f, g, o = jnp.split(s, 4, axis=-1)
    d_c = d_c_new + d_h * o * (1.0 - tanh_c * tanh_c)
    d_s = jnp.concatenate([d_c * (2.0 * g - 1.0), d_c * c, 2.0 * d_c * i, d_h * tanh_c], -1)
    return d_s, d_c * f


_cell_own_vjp.defvjp(_cell_forward, _cell_backward)


def one_sigmoid_cell_vjp(params, x):
    """The cell's VJP hand-written; the sigmoid's (s (1 - s) scale) stays autodiff's."""
    return _scan_layers(params, x, _cell_own_vjp)


def _gate_major(a, b):
    """[..., 4H] and [..., 4H] -> [..., 8H] as (i_a, i_b, f_a, f_b, g_a, g_b, o_a, o_b)."""
    lead = a.shape[:-1]
    return jnp.stack([a.reshape(*lead, 4, H), b.reshape(*lead, 4, H)], -2).reshape(*lead, 8 * H)


def wavefront(params, x):
    """Both layers in one scan of T steps: step t runs layer 1 at t + 1 and layer 2 at t."""
    first = _projected(params, x, 0)  # [T, N, 4H]
    kernel = jnp.concatenate(
        [
            _gate_major(params["k_hh0"], params["k_ih1"]),
            _gate_major(jnp.zeros_like(params["k_hh0"]), params["k_hh1"]),
        ]
    )  # [2H, 8H]
    h1, c1 = _cell_from_sigmoids(jax.nn.sigmoid(first[0] * GATE_SCALE), 0.0)
    zero = jnp.zeros_like(h1)
    # layer 1's inputs for steps 1..T-1 (a zero step after the last) beside layer 2's bias
    ahead = jnp.concatenate([first[1:], jnp.zeros_like(first[:1])])
    bias = jnp.broadcast_to(params["b_ih1"] + params["b_hh1"], first.shape)
    step = _one_sigmoid_step(kernel, 2 * H, _cell_from_sigmoids)
    carry = (jnp.concatenate([h1, zero], -1), jnp.concatenate([c1, zero], -1))
    return jax.lax.scan(step, carry, _gate_major(ahead, bias))[1][..., H:]


# -- measurements ------------------------------------------------------------------------------


def _time(functions: dict, args: tuple, repeats: int, extra: dict | None = None) -> dict:
    runs = {
        name: (lambda fn=fn: jax.block_until_ready(fn(*args))) for name, fn in functions.items()
    }
    runs.update(extra or {})
    for run in runs.values():
        run()  # compile
    timings = rotate(runs, repeats)
    return {name: 1e3 * median(t["wall"]) for name, t in timings.items()}


def gradients(repeats: int) -> dict:
    variants = {
        "fused": fused,
        "one_sigmoid": one_sigmoid,
        "one_sigmoid_cell_vjp": one_sigmoid_cell_vjp,
        "wavefront": wavefront,
    }
    params = init_params(jax.random.PRNGKey(0))
    out = {}
    for rows in ROWS:
        x = jax.random.normal(jax.random.PRNGKey(rows), (T, rows, F))
        weights = jax.random.normal(jax.random.PRNGKey(rows + 1), (rows, H))
        grads = {
            name: jax.jit(jax.grad(lambda p, x, fn=fn: jnp.sum(fn(p, x)[-1] * weights)))
            for name, fn in variants.items()
        }
        reference = grads["fused"](params, x)
        out[rows] = {
            "ms": _time(grads, (params, x), repeats, {"torch": torch_step(rows)}),
            "max_rel_diff": {
                name: largest_relative_difference(grad(params, x), reference)
                for name, grad in grads.items()
            },
        }
    return out


def forwards(repeats: int) -> dict:
    variants = {"per_gate": per_gate, "one_sigmoid": one_sigmoid, "wavefront": wavefront}
    params = init_params(jax.random.PRNGKey(0))
    out = {}
    for rows in FORWARD_ROWS:
        x = jax.random.normal(jax.random.PRNGKey(rows), (T, rows, F))
        programs = {name: jax.jit(fn) for name, fn in variants.items()}
        reference = programs["per_gate"](params, x)
        out[rows] = {
            "ms": _time(programs, (params, x), repeats),
            "max_rel_diff": {
                name: largest_relative_difference(program(params, x), reference)
                for name, program in programs.items()
            },
        }
    return out


def torch_step(rows: int):
    """One gradient of ``torch.nn.LSTM`` on ``rows`` rows, as above (a callable)."""
    import torch

    torch.manual_seed(rows)
    net = torch.nn.LSTM(F, H, LAYERS, batch_first=True)
    x, weights = torch.randn(rows, T, F), torch.randn(rows, H)

    def step():
        net.zero_grad()
        (net(x)[0][:, -1] * weights).sum().backward()

    return step


def torch_kernels(rows: int = 290, top: int = 4) -> dict:
    """The operators with the most self CPU time in one torch train step per cell."""
    import torch
    from torch.profiler import ProfilerActivity, profile

    torch.manual_seed(0)
    x = torch.randn(rows, T, F)
    out = {}
    for name, cls in (("lstm", torch.nn.LSTM), ("gru", torch.nn.GRU)):
        net = cls(F, H, LAYERS, batch_first=True)

        def step(net=net):
            net.zero_grad()
            net(x)[0][:, -1].sum().backward()

        step()  # warm-up
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            step()
        events = sorted(prof.key_averages(), key=lambda e: e.self_cpu_time_total, reverse=True)
        total = sum(e.self_cpu_time_total for e in events)
        out[name] = [
            {"op": e.key, "share": e.self_cpu_time_total / total, "calls": e.count}
            for e in events[:top]
        ]
    return out


def report(record: dict) -> list[str]:
    def table(results: dict, baseline: str) -> list[str]:
        names = list(next(iter(results.values()))["ms"])
        variants = [n for n in names if n not in (baseline, "torch")]
        lines = [
            "| rows | "
            + " | ".join(f"{n} ms" for n in names)
            + " | "
            + " | ".join(f"{baseline} / {n}" for n in variants)
            + " | largest relative difference |",
            "|---:|" + "---:|" * (len(names) + len(variants) + 1),
        ]
        for rows, r in results.items():
            ms = r["ms"]
            lines.append(
                f"| {rows} | "
                + " | ".join(f"{ms[n]:.1f}" for n in names)
                + " | "
                + " | ".join(f"{ms[baseline] / ms[n]:.2f}x" for n in variants)
                + f" | {max(r['max_rel_diff'].values()):.1e} |"
            )
        return lines

    kernels = record["torch_kernels"]
    return [
        "# LSTM steps on XLA:CPU: three more layouts, and torch's RNN kernels",
        "",
        f"Command: `{record['command']}`",
        "",
        f"{record['machine']['cpu']}, {record['machine']['logical_cores']} logical cores; load "
        f"average before {record['load_before']}, after {record['load_after']}. {LAYERS} LSTM "
        f"layers x {H} hidden, {T} steps, one CPU device; medians of {record['repeats']} in "
        "turns. Above 1x the variant is faster than qjax's layout.",
        "",
        "Gradient (training) against autodiff of qjax's fused layout, and torch's `nn.LSTM` "
        "on the same rows in the same turns:",
        "",
        *table(record["gradients"], "fused"),
        "",
        "Forward (inference) against qjax's per-gate layout:",
        "",
        *table(record["forwards"], "per_gate"),
        "",
        "torch's train step, operators by self CPU time (290 rows):",
        "",
        "| cell | operators (share of self CPU time, calls) |",
        "|---|---|",
        *[
            f"| {cell} | "
            + "; ".join(f"`{o['op']}` {o['share']:.0%} ({o['calls']})" for o in ops)
            + " |"
            for cell, ops in kernels.items()
        ],
        "",
        f"Versions: {record['machine']['versions']}; environment: {record['machine']['env']}.",
    ]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--repeats", type=int, default=15)
    p.add_argument("--out", help="write rnn_step_variants_cpu.{md,json} here")
    args = p.parse_args(argv)
    jax.config.update("jax_platforms", "cpu")
    record = {"command": command_line(), "load_before": load_average(), "repeats": args.repeats}
    record["machine"] = machine()
    record["gradients"] = gradients(args.repeats)
    record["forwards"] = forwards(args.repeats)
    record["torch_kernels"] = torch_kernels()
    record["load_after"] = load_average()
    publish(report(record), args.out, "rnn_step_variants_cpu", record)
    return 0


if __name__ == "__main__":
    sys.exit(main())
