"""Where XLA:CPU spends an RNN step, and what the per-gate inference layout buys.

Measures, on the current machine (medians of --repeats, after a compiling call):
1. a 60-step LSTM forward scan over [800, 64] states: the recurrent matmuls alone, the whole
   cell with the gates as slices of one [800, 256] buffer, and the whole cell per gate;
2. one scan step writing a stacked [T, 800, 64] output (what the backward pass saves per
   activation) against the same step without it;
3. LSTM/GRU model inference (batch 800, Alpha360 shapes), fused vs per-gate layout, next to
   Qlib's torch modules in the same run.

    python benchmarks/rnn_layouts.py --out benchmarks/results
"""

from __future__ import annotations

import argparse
import functools
import sys

import jax
import jax.numpy as jnp
import numpy as np
from _common import command_line, load_average, machine, median, publish, timed

N, H, T = 800, 64, 60


def _best(fn, repeats: int) -> float:
    jax.block_until_ready(fn())
    return median([timed(lambda: jax.block_until_ready(fn())) for _ in range(repeats)])


def cell_costs(repeats: int) -> dict:
    keys = jax.random.split(jax.random.PRNGKey(0), 2)
    kernel = jax.random.normal(keys[0], (H, 4 * H)) * 0.1
    xs = jax.random.normal(keys[1], (T, N, 4 * H))
    x_gates = tuple(xs[..., k * H : (k + 1) * H] for k in range(4))
    k_gates = tuple(kernel[:, k * H : (k + 1) * H] for k in range(4))
    zero = (jnp.zeros((N, H)), jnp.zeros((N, H)))

    def cell(i, f, g, o, c):
        c = jax.nn.sigmoid(f) * c + jax.nn.sigmoid(i) * jnp.tanh(g)
        return jax.nn.sigmoid(o) * jnp.tanh(c), c

    def matmul_only(carry, x):
        return (0.5 * (x + carry[0] @ kernel)[:, :H], carry[1]), None

    def fused(carry, x):
        return cell(*jnp.split(x + carry[0] @ kernel, 4, axis=-1), carry[1]), None

    def per_gate(carry, x):
        return cell(*(a + carry[0] @ k for a, k in zip(x, k_gates)), carry[1]), None

    def stacked_output(carry, x):
        return (carry[0] + x[0], carry[1]), x[1] * x[2]

    def no_output(carry, x):
        return (carry[0] + x[0] + x[1] * x[2], carry[1]), None

    def run(body, inputs):
        return jax.jit(lambda inputs: jax.lax.scan(body, zero, inputs))

    ms = {
        "lstm_scan_matmul_only": _best(functools.partial(run(matmul_only, xs), xs), repeats),
        "lstm_scan_fused_gates": _best(functools.partial(run(fused, xs), xs), repeats),
        "lstm_scan_per_gate": _best(functools.partial(run(per_gate, x_gates), x_gates), repeats),
        "scan_step_with_stacked_output": _best(
            functools.partial(run(stacked_output, x_gates[:3]), x_gates[:3]), repeats
        ),
        "scan_step_without_output": _best(
            functools.partial(run(no_output, x_gates[:3]), x_gates[:3]), repeats
        ),
    }
    ms = {k: v * 1e3 for k, v in ms.items()}
    extra_s = (ms["scan_step_with_stacked_output"] - ms["scan_step_without_output"]) / 1e3
    ms["stacked_output_GB_per_s"] = T * N * H * 4 / extra_s / 1e9 if extra_s > 0 else None
    return ms


def inference(repeats: int) -> dict:
    import torch
    from qlib.contrib.model.pytorch_gru import GRUModel
    from qlib.contrib.model.pytorch_lstm import LSTMModel

    from qjax.interop import from_qlib
    from qjax.models import layers
    from qjax.models import rnn as rnn_models

    x = np.random.default_rng(0).standard_normal((12, N, 360)).astype(np.float32)
    out = {}
    for name, torch_cls in (("lstm", LSTMModel), ("gru", GRUModel)):
        net = torch_cls().eval()
        module, variables = from_qlib(
            name, net.state_dict(), d_feat=6, hidden_size=64, num_layers=2
        )
        rates = {}
        for per_gate in (False, True):
            # LSTMModel/GRUModel build their RNN through this module-level name.
            rnn_models.RNN = functools.partial(layers.RNN, per_gate=per_gate)
            try:
                forward = jax.jit(module.apply)
                rates[f"qjax_{'per_gate' if per_gate else 'fused'}"] = (
                    x.shape[0]
                    * N
                    / _best(lambda: [forward(variables, batch) for batch in x], repeats)
                )
            finally:
                rnn_models.RNN = layers.RNN
        with torch.no_grad():
            tx = torch.from_numpy(x)
            net(tx[0])
            rates["torch"] = (
                x.shape[0]
                * N
                / median([timed(lambda: [net(batch) for batch in tx]) for _ in range(repeats)])
            )
        out[name] = rates
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--out", help="write rnn_layouts_cpu.{md,json} here")
    args = p.parse_args(argv)
    before = load_average()
    costs, rates = cell_costs(args.repeats), inference(args.repeats)
    meta = {
        "command": command_line(),
        "load_before": before,
        "load_after": load_average(),
        "machine": machine(),
    }
    lines = [
        "# RNN steps on XLA:CPU: gate layout and saved activations",
        "",
        f"Command: `{meta['command']}`",
        "",
        f"{meta['machine']['cpu']}, {meta['machine']['logical_cores']} logical cores; load average "
        f"before {before}, after {meta['load_after']}. Medians of {args.repeats}.",
        "",
        f"60-step LSTM forward scan, [{N}, {H}] states:",
        "",
        "| what | ms |",
        "|---|---:|",
        *[f"| {k} | {v:.1f} |" for k, v in costs.items() if k != "stacked_output_GB_per_s"],
        "",
        f"Writing a stacked [{T}, {N}, {H}] scan output: "
        + (
            "n/a"
            if costs["stacked_output_GB_per_s"] is None
            else f"{costs['stacked_output_GB_per_s']:.1f} GB/s"
        )
        + ".",
        "",
        "Model inference, batch 800, Alpha360 (samples/s):",
        "",
        "| model | qjax fused | qjax per gate | torch | per gate / fused | per gate / torch |",
        "|---|---:|---:|---:|---:|---:|",
        *[
            f"| {m} | {r['qjax_fused']:,.0f} | {r['qjax_per_gate']:,.0f} | {r['torch']:,.0f} | "
            f"{r['qjax_per_gate'] / r['qjax_fused']:.2f}x | {r['qjax_per_gate'] / r['torch']:.2f}x |"
            for m, r in rates.items()
        ],
    ]
    publish(lines, args.out, "rnn_layouts_cpu", {**meta, "scan_ms": costs, "inference": rates})
    return 0


if __name__ == "__main__":
    sys.exit(main())
