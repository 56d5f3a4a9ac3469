"""Three levers on XLA:CPU's recurrent layers, beside qjax's layout.

Two RNN layers (hidden 64, 60 steps, Alpha360's 6 inputs), LSTM and GRU, at the row counts one
CPU device meets: 64 (a prediction batch of 128 split over 2 devices), 145 (a day of ~290
stocks split over 2 devices, GATs/HIST), 400 (a batch of 800 split over 2 devices) and 800 (one
seed's whole batch, the 20-seed job). Every variant is compiled first, then all are timed in
turns with the order rotating (medians of ``--repeats``).

1. **XLA:CPU's library fusions** (compiler options of one program), on the gradient (training
   layout, ``qjax.models.layers._scan_cell``) and the forward (inference layout,
   ``_scan_gates``):
   - ``default``: XLA's choice, dots in YNNPACK fusions;
   - ``ynn_dot_eltwise``: YNNPACK also takes elementwise work next to the dots;
   - ``eigen``: YNNPACK off, dots in Eigen (``qjax.compilation.CPU_DOTS``);
   - ``xnn_dot``: dots in XNNPACK fusions;
   - ``onednn_dot``: dots in oneDNN fusions (``xla_cpu_experimental_onednn_fusion_type``);
   - ``use_onednn``: ``xla_cpu_use_onednn``.

   The report counts, in each optimised program, the dots a library runs (``ynn``/``xnn``/
   ``onednn`` fusions or calls), so an option that XLA ignores shows as such.
2. **What the backward pass reads back** (gradient only, default options): autodiff stores its
   residuals per step as stacked buffers; ``jax.checkpoint`` on the step with a policy instead
   stores
   - ``named``: the cell's activations (LSTM: three sigmoids, tanh g, tanh c; GRU: r, z, n and
     h @ K_n + b_hn), once each;
   - ``dots``: only the matrix products' outputs (the activations are recomputed);
   - ``nothing``: only the carries (the step is recomputed).

   The report counts each program's stacked writes (dynamic-update-slices into [T, rows, ...]
   buffers, forward residuals and the backward's per-step outputs together).
3. **The gates' sigmoid**, on the gradient and the forward: ``jax.nn.sigmoid`` (XLA:CPU expands
   the logistic into an exponential and a division; the report counts the exponentials), which
   the layers use, against the same function as 0.5 tanh(x / 2) + 0.5 (XLA:CPU's tanh is a
   rational approximation), differentiated as the logistic, s (1 - s). In float32 the tanh form
   loses relative precision where the sigmoid is small (0.5 + 0.5 tanh cancels), which the
   largest-relative-difference column, scaled to the largest output, does not show.

Each variant's gradients or outputs are compared with the default's (largest difference
relative to the largest magnitude), so a speed-up cannot come from computing something else.

    python benchmarks/rnn_xla_levers.py --out benchmarks/results
"""

from __future__ import annotations

import argparse
import re
import sys

import jax
import jax.numpy as jnp
import numpy as np
from _common import (
    command_line,
    largest_relative_difference,
    load_average,
    machine,
    median,
    publish,
    rotate,
)
from jax.ad_checkpoint import checkpoint_name

from qjax.models.layers import _scan_cell, _scan_gates

T, F, H, LAYERS = 60, 6, 64, 2
ROWS = (64, 145, 400, 800)
CELLS = ("lstm", "gru")
OPTIONS = {
    "default": {},
    "ynn_dot_eltwise": {
        "xla_cpu_experimental_ynn_fusion_type": "LIBRARY_FUSION_TYPE_DOT,LIBRARY_FUSION_TYPE_ELTWISE"
    },
    "eigen": {"xla_cpu_experimental_ynn_fusion_type": ""},
    "xnn_dot": {
        "xla_cpu_experimental_ynn_fusion_type": "",
        "xla_cpu_experimental_xnn_fusion_type": "LIBRARY_FUSION_TYPE_DOT",
    },
    "onednn_dot": {
        "xla_cpu_experimental_ynn_fusion_type": "",
        "xla_cpu_experimental_onednn_fusion_type": "LIBRARY_FUSION_TYPE_DOT",
    },
    "use_onednn": {"xla_cpu_experimental_ynn_fusion_type": "", "xla_cpu_use_onednn": True},
}
POLICIES = ("autodiff", "named", "dots", "nothing")


@jax.custom_jvp
def tanh_sigmoid(x):
    """The logistic as 0.5 tanh(x / 2) + 0.5, differentiated as the logistic, s (1 - s)."""
    return 0.5 * jnp.tanh(0.5 * x) + 0.5


@tanh_sigmoid.defjvp
def _tanh_sigmoid_jvp(primals, tangents):
    (x,), (dx,) = primals, tangents
    s = tanh_sigmoid(x)
    return s, dx * s * (1.0 - s)


GATES = {"logistic": jax.nn.sigmoid, "tanh": tanh_sigmoid}


def init_params(cell: str, key) -> dict:
    """Two layers with torch's U(-1/sqrt(H), 1/sqrt(H)) init, qjax's [in, G*H] kernels."""
    gates, bound = (4 if cell == "lstm" else 3), H**-0.5
    shapes = {}
    for layer, width in enumerate((F, H)):
        shapes[f"k_ih{layer}"] = (width, gates * H)
        shapes[f"k_hh{layer}"] = (H, gates * H)
        shapes[f"b_ih{layer}"] = (gates * H,)
        shapes[f"b_hh{layer}"] = (gates * H,)
    keys = jax.random.split(key, len(shapes))
    return {
        name: jax.random.uniform(k, shape, minval=-bound, maxval=bound)
        for k, (name, shape) in zip(keys, shapes.items())
    }


def _layer(params, layer):
    return [params[f"{name}{layer}"] for name in ("k_ih", "k_hh", "b_ih", "b_hh")]


def training_layout(cell: str, gate=jax.nn.sigmoid):
    """qjax's training layers: time-major [T, N, F] -> the top layer's last step [N, H]."""

    def run(params, x):
        seq = x
        for layer in range(LAYERS):
            k_ih, k_hh, b_ih, b_hh = _layer(params, layer)
            seq = _scan_cell(cell, jnp.dot(seq, k_ih) + b_ih, k_hh, b_hh, H, gate=gate)
        return seq[-1]

    return run


def inference_layout(cell: str, gate=jax.nn.sigmoid):
    def run(params, x):
        seq = x
        for layer in range(LAYERS):
            seq = _scan_gates(cell, seq, *_layer(params, layer), H, gate=gate)
        return seq[-1]

    return run


def _step(cell: str, k_hh, b_hh):
    """The training layout's step with its activations named for ``save_only_these_names``."""
    if cell == "gru":

        def gru_step(h, xp):
            hp = jnp.dot(h, k_hh) + b_hh
            x_r, x_z, x_n = jnp.split(xp, 3, axis=-1)
            h_r, h_z, h_n = jnp.split(hp, 3, axis=-1)
            r = checkpoint_name(jax.nn.sigmoid(x_r + h_r), "activation")
            z = checkpoint_name(jax.nn.sigmoid(x_z + h_z), "activation")
            h_n = checkpoint_name(h_n, "activation")
            n = checkpoint_name(jnp.tanh(x_n + r * h_n), "activation")
            h = (1.0 - z) * n + z * h
            return h, h

        return gru_step

    def lstm_step(carry, xp):
        h, c = carry
        gates = xp + jnp.dot(h, k_hh) + b_hh
        i, f, g, o = jnp.split(gates, 4, axis=-1)
        i, f, o = (checkpoint_name(jax.nn.sigmoid(v), "activation") for v in (i, f, o))
        c = f * c + i * checkpoint_name(jnp.tanh(g), "activation")
        h = o * checkpoint_name(jnp.tanh(c), "activation")
        return (h, c), h

    return lstm_step


def checkpointed_layout(cell: str, policy: str):
    """The training layout with its step under ``jax.checkpoint(policy=...)``."""
    policies = jax.checkpoint_policies
    chosen = {
        "named": policies.save_only_these_names("activation"),
        "dots": policies.dots_with_no_batch_dims_saveable,
        "nothing": policies.nothing_saveable,
    }[policy]

    def run(params, x):
        seq = x
        for layer in range(LAYERS):
            k_ih, k_hh, b_ih, b_hh = _layer(params, layer)
            projected = jnp.dot(seq, k_ih) + b_ih
            h0 = jnp.zeros(projected.shape[1:-1] + (H,), projected.dtype)
            step = jax.checkpoint(_step(cell, k_hh, b_hh), policy=chosen, prevent_cse=False)
            seq = jax.lax.scan(step, (h0, h0) if cell == "lstm" else h0, projected)[1]
        return seq[-1]

    return run


def library_dots(hlo: str) -> int:
    """Dots handed to YNNPACK, XNNPACK or oneDNN in an optimised HLO module's text."""
    return len(re.findall(r"%(?:ynn|xnn|onednn|__onednn)\S*\s*=", hlo))


def stacked_writes(hlo: str, rows: int) -> int:
    """Dynamic-update-slices into [T, rows, ...] buffers in an optimised HLO module's text."""
    # fused or not, each write is one dynamic-update-slice instruction of the stacked shape
    return len(re.findall(rf"= f32\[{T},{rows},\d+\]\S* dynamic-update-slice\(", hlo))


def _measure(programs: dict, args: tuple, repeats: int, count) -> dict:
    """Compiled programs by name -> ms (medians in turns), counts, differences to the first."""
    outputs = {name: jax.block_until_ready(program(*args)) for name, program in programs.items()}
    reference = next(iter(outputs.values()))
    runs = {name: (lambda p=p: jax.block_until_ready(p(*args))) for name, p in programs.items()}
    timings = rotate(runs, repeats)
    return {
        name: {
            "ms": 1e3 * median(timings[name]["wall"]),
            "count": count(program.as_text()),
            "max_rel_diff": largest_relative_difference(outputs[name], reference),
        }
        for name, program in programs.items()
    }


def _inputs(cell: str, rows: int):
    params = init_params(cell, jax.random.PRNGKey(0))
    x = jax.random.normal(jax.random.PRNGKey(rows), (T, rows, F))
    weights = jax.random.normal(jax.random.PRNGKey(rows + 1), (rows, H))
    return params, x, weights


def _gradient(layout, weights):
    return jax.grad(lambda p, x: jnp.sum(layout(p, x) * weights))


def library_fusions(cell: str, rows: int, repeats: int) -> dict:
    params, x, weights = _inputs(cell, rows)
    out = {}
    for kind, fn in (
        ("gradient", _gradient(training_layout(cell), weights)),
        ("forward", inference_layout(cell)),
    ):
        lowered = jax.jit(fn).lower(params, x)
        programs = {name: lowered.compile(options) for name, options in OPTIONS.items()}
        out[kind] = _measure(programs, (params, x), repeats, library_dots)
    return out


def residual_policies(cell: str, rows: int, repeats: int) -> dict:
    params, x, weights = _inputs(cell, rows)
    layouts = {"autodiff": training_layout(cell)}
    layouts.update({p: checkpointed_layout(cell, p) for p in POLICIES[1:]})
    programs = {
        name: jax.jit(_gradient(layout, weights)).lower(params, x).compile()
        for name, layout in layouts.items()
    }
    return _measure(programs, (params, x), repeats, lambda hlo: stacked_writes(hlo, rows))


def gate_precision(seed: int = 0) -> dict:
    """Each gate function's largest float32 error relative to the float64 logistic, over a
    million N(0, 4^2) pre-activations with the logistic above 1e-6."""
    x = np.random.default_rng(seed).normal(0.0, 4.0, 1_000_000)
    exact = 1.0 / (1.0 + np.exp(-x))
    kept = exact > 1e-6
    return {
        name: float(
            np.max(
                np.abs(np.asarray(jax.jit(gate)(x.astype(np.float32)), np.float64) - exact)[kept]
                / exact[kept]
            )
        )
        for name, gate in GATES.items()
    }


def gate_functions(cell: str, rows: int, repeats: int) -> dict:
    params, x, weights = _inputs(cell, rows)
    out = {}
    for kind, layout in (
        ("gradient", lambda gate: _gradient(training_layout(cell, gate), weights)),
        ("forward", lambda gate: inference_layout(cell, gate)),
    ):
        programs = {
            name: jax.jit(layout(gate)).lower(params, x).compile() for name, gate in GATES.items()
        }
        out[kind] = _measure(programs, (params, x), repeats, lambda hlo: hlo.count(" exponential("))
    return out


def report(record: dict) -> list[str]:
    def table(results: dict, names: tuple, count_name: str) -> list[str]:
        head = (
            "| cell | rows | "
            + " | ".join(f"{n} ms" for n in names)
            + " | "
            + " | ".join(f"{names[0]} / {n}" for n in names[1:])
            + f" | {count_name} ({', '.join(names)}) | largest relative difference |"
        )
        lines = [head, "|---|---:|" + "---:|" * (2 * len(names) - 1) + "---|---:|"]
        for key, r in results.items():
            cell, rows = key.split(":")
            ms = {n: r[n]["ms"] for n in names}
            lines.append(
                f"| {cell} | {rows} | "
                + " | ".join(f"{ms[n]:.1f}" for n in names)
                + " | "
                + " | ".join(f"{ms[names[0]] / ms[n]:.2f}x" for n in names[1:])
                + " | "
                + ", ".join(str(r[n]["count"]) for n in names)
                + f" | {max(r[n]['max_rel_diff'] for n in names):.1e} |"
            )
        return lines

    options, m = tuple(OPTIONS), record["machine"]
    fusions, gates = record["library_fusions"], record["gate_functions"]
    return [
        "# Recurrent layers on XLA:CPU: library fusions, saved residuals and the gates' sigmoid",
        "",
        f"Command: `{record['command']}`",
        "",
        f"{m['cpu']}, {m['logical_cores']} logical cores; load average before "
        f"{record['load_before']}, after {record['load_after']}. {LAYERS} layers x {H} hidden, "
        f"{T} steps, one CPU device; medians of {record['repeats']} in turns. Above 1x the "
        "variant is faster than the first column.",
        "",
        "Gradient (training layout) by compiler options:",
        "",
        *table({k: v["gradient"] for k, v in fusions.items()}, options, "library dots"),
        "",
        "Forward (inference layout) by compiler options:",
        "",
        *table({k: v["forward"] for k, v in fusions.items()}, options, "library dots"),
        "",
        "Gradient by what the backward pass reads back:",
        "",
        *table(record["residual_policies"], POLICIES, "stacked writes"),
        "",
        "The gates' sigmoid, gradient (training layout):",
        "",
        *table({k: v["gradient"] for k, v in gates.items()}, tuple(GATES), "exponentials"),
        "",
        "The gates' sigmoid, forward (inference layout):",
        "",
        *table({k: v["forward"] for k, v in gates.items()}, tuple(GATES), "exponentials"),
        "",
        "Largest float32 error of the gate relative to the float64 logistic (a million N(0, 16) "
        "pre-activations, logistic above 1e-6): "
        + ", ".join(f"{k} {v:.1e}" for k, v in record["gate_precision"].items())
        + ".",
        "",
        f"Versions: {m['versions']}; environment: {m['env'] or 'none set'}.",
    ]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--repeats", type=int, default=9)
    p.add_argument("--out", default=None, help="write rnn_xla_levers_cpu.{md,json} here")
    args = p.parse_args(argv)
    if args.repeats < 3:
        p.error("--repeats must be >= 3 (medians of at least three)")
    if jax.default_backend() != "cpu":
        p.error("this benchmark measures XLA:CPU; run it with JAX_PLATFORMS=cpu")
    load_before = load_average()
    record = {
        "command": command_line(),
        "repeats": args.repeats,
        "load_before": load_before,
        "library_fusions": {},
        "residual_policies": {},
        "gate_functions": {},
    }
    for cell in CELLS:
        for rows in ROWS:
            key = f"{cell}:{rows}"
            print(f"[{key}]", file=sys.stderr, flush=True)
            record["library_fusions"][key] = library_fusions(cell, rows, args.repeats)
            record["residual_policies"][key] = residual_policies(cell, rows, args.repeats)
            record["gate_functions"][key] = gate_functions(cell, rows, args.repeats)
    record["gate_precision"] = gate_precision()
    record["load_after"] = load_average()
    record["machine"] = machine()
    publish(report(record), args.out, "rnn_xla_levers_cpu", record)
    return 0


if __name__ == "__main__":
    sys.exit(main())
