"""Where an LSTM/GRU training epoch spends its time on XLA:CPU, and what a hand-written VJP buys.

1. One training epoch of qjax's LSTM and GRU (Alpha360 shapes, batch 800, Qlib's settings) under
   ``jax.profiler``; the trace's XLA operations are summed by kind: matmuls (XLA's dot and
   YNNPACK/XNNPACK fusions), elementwise fusions (the gate math), dynamic-update-slices (the
   stacked activations a scan saves for the backward pass), copies/concatenations/transposes and
   broadcasts (buffer initialisation).
2. One recurrent layer (T=60, [800, 64] states) differentiated by JAX's autodiff, as
   ``qjax.models.layers.RNN`` is, against a hand-written VJP that saves one packed activation
   buffer per step and computes the kernel gradient as one matmul after the backward scan:
   forward+backward milliseconds and the largest relative gradient difference.
3. The same hand-written VJP inside the engine: one ``fit`` epoch of the LSTM and GRU models
   (as in 1., whole batches on one CPU device) with every recurrent layer's gradient autodiff's or
   hand-written, timed in turns.

    python benchmarks/rnn_train_profile.py --out benchmarks/results
"""

from __future__ import annotations

import argparse
import collections
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd
from _common import command_line, load_average, machine, median, publish, timed, traced

N, H, T, SAMPLES = 800, 64, 60, 9600


# -- 1. op-level profile of a training epoch -----------------------------------------------


def op_kind(name: str) -> str | None:
    """The kind of an XLA:CPU trace event, or None for runtime/Python frames."""
    if name.startswith("$") or "Thunk" in name or "ThreadPool" in name or name.startswith("np."):
        return None
    if name.startswith(("ynn", "xnn", "dot", "onednn")):
        return "matmul"
    if "dynamic-update-slice" in name:
        return "stacked scan outputs (dynamic-update-slice)"
    if any(word in name for word in ("copy", "concatenate", "transpose")):
        return "copies, concatenations, transposes"
    if "broadcast" in name:
        return "buffer initialisation (broadcast)"
    if name.startswith("while"):
        return "loop control"
    return "elementwise fusions (gate math, loss, optimiser)"


def epoch_setup(name: str):
    """(module, samples, config) of one training epoch of model ``name`` with Qlib's settings."""
    import qjax
    from qjax.data.samples import tabular_samples
    from qjax.train import TrainConfig

    rng = np.random.default_rng(0)
    index = pd.MultiIndex.from_product(
        [pd.bdate_range("2010-01-04", periods=SAMPLES // 300), [f"S{k:03d}" for k in range(300)]],
        names=["datetime", "instrument"],
    )
    samples = tabular_samples(
        rng.standard_normal((SAMPLES, 360), dtype=np.float32),
        rng.standard_normal(SAMPLES, dtype=np.float32),
        index,
    )
    module = qjax.models.get(name)(d_feat=6, hidden_size=H, num_layers=2)
    config = TrainConfig(  # whole batches on one CPU device: the recurrence alone
        n_epochs=1,
        lr=1e-3,
        batch_size=N,
        clip_value=3.0,
        optimizer="adam",
        seed=0,
        micro_batch="off",
        cpu_split=False,
    )
    return module, samples, config


def profile_epoch(name: str) -> dict:
    from qjax.train import fit

    module, samples, config = epoch_setup(name)
    fit(module, samples, None, config, verbose=False)  # compile
    wall, events = traced(lambda: fit(module, samples, None, config, verbose=False))
    by_kind, by_thread = collections.Counter(), collections.Counter()
    for event in events:
        kind = op_kind(event.get("name", "")) if event.get("ph") == "X" else None
        if kind is not None:
            by_kind[kind] += event["dur"] / 1e6
            by_thread[event["tid"]] += event["dur"] / 1e6
    batches = SAMPLES // N
    return {
        "wall_s": wall,
        "batches": batches,
        "ms_per_batch": wall / batches * 1e3,
        "op_s_by_kind": dict(by_kind.most_common()),
        "op_s_busiest_threads": sorted(by_thread.values(), reverse=True)[:4],
    }


# -- 2. autodiff vs hand-written VJP for one layer -------------------------------------------


def lstm_autodiff(xp, k, b):
    from qjax.models.layers import _scan_cell

    return _scan_cell("lstm", xp, k, b, k.shape[0])


def gru_autodiff(xp, k, b):
    from qjax.models.layers import _scan_cell

    return _scan_cell("gru", xp, k, b, k.shape[0])


def _shifted(xs):
    """xs[t-1] at t, zeros at t=0."""
    return jnp.concatenate([jnp.zeros_like(xs[:1]), xs[:-1]], 0)


def _lstm_forward(xp, k, b):
    hid = k.shape[0]

    def step(carry, x):
        h, c = carry
        gates = x + h @ k + b
        if_ = jax.nn.sigmoid(gates[:, : 2 * hid])
        g, o = jnp.tanh(gates[:, 2 * hid : 3 * hid]), jax.nn.sigmoid(gates[:, 3 * hid :])
        c_new = if_[:, hid:] * c + if_[:, :hid] * g
        tanh_c = jnp.tanh(c_new)
        h = o * tanh_c
        return (h, c_new), (h, jnp.concatenate([if_, g, o, c, tanh_c], -1))

    zero = jnp.zeros((xp.shape[1], hid), xp.dtype)
    return jax.lax.scan(step, (zero, zero), xp)[1]


def _hand_written_vjp(forward, backward):
    """``forward(xp, k, b) -> (hs, saved)`` as a function of ``hs`` whose gradient is
    ``backward((hs, saved, k), d_hs)`` instead of autodiff's."""

    @jax.custom_vjp
    def layer(xp, k, b):
        return forward(xp, k, b)[0]

    def layer_fwd(xp, k, b):
        hs, saved = forward(xp, k, b)
        return hs, (hs, saved, k)

    layer.defvjp(layer_fwd, backward)
    return layer


def _lstm_bwd(residuals, d_hs):
    hs, saved, k = residuals
    hid = k.shape[0]

    def step(carry, xs):
        dh_next, dc_next = carry
        dh_out, act = xs
        i, f, g, o, c_prev, tanh_c = (act[:, j * hid : (j + 1) * hid] for j in range(6))
        dh = dh_out + dh_next
        dc = dc_next + dh * o * (1 - tanh_c * tanh_c)
        d_gates = jnp.concatenate(
            [
                dc * g * i * (1 - i),
                dc * c_prev * f * (1 - f),
                dc * i * (1 - g * g),
                dh * tanh_c * o * (1 - o),
            ],
            -1,
        )
        return (d_gates @ k.T, dc * f), d_gates

    zero = jnp.zeros_like(hs[0])
    _, d_gates = jax.lax.scan(step, (zero, zero), (d_hs, saved), reverse=True)
    d_k = jnp.einsum("tnh,tng->hg", _shifted(hs), d_gates)
    return d_gates, d_k, d_gates.sum((0, 1))


lstm_manual = _hand_written_vjp(_lstm_forward, _lstm_bwd)


def _gru_forward(xp, k, b):
    hid = k.shape[0]

    def step(h, x):
        hp = h @ k + b
        rz = jax.nn.sigmoid(x[:, : 2 * hid] + hp[:, : 2 * hid])
        r, z, h_n = rz[:, :hid], rz[:, hid:], hp[:, 2 * hid :]
        n = jnp.tanh(x[:, 2 * hid :] + r * h_n)
        h_new = (1 - z) * n + z * h
        return h_new, (h_new, jnp.concatenate([r, z, n, h_n], -1))

    return jax.lax.scan(step, jnp.zeros((xp.shape[1], hid), xp.dtype), xp)[1]


def _gru_bwd(residuals, d_hs):
    hs, saved, k = residuals
    hid = k.shape[0]

    def step(dh_next, xs):
        dh_out, act, h_prev = xs
        r, z, n, h_n = (act[:, j * hid : (j + 1) * hid] for j in range(4))
        dh = dh_out + dh_next
        dn = dh * (1 - z) * (1 - n * n)
        dz = dh * (h_prev - n) * z * (1 - z)
        dr = dn * h_n * r * (1 - r)
        d_hp = jnp.concatenate([dr, dz, dn * r], -1)
        return dh * z + d_hp @ k.T, (d_hp, jnp.concatenate([dr, dz, dn], -1))

    _, (d_hp, d_x) = jax.lax.scan(
        step, jnp.zeros_like(hs[0]), (d_hs, saved, _shifted(hs)), reverse=True
    )
    return d_x, jnp.einsum("tnh,tng->hg", _shifted(hs), d_hp), d_hp.sum((0, 1))


gru_manual = _hand_written_vjp(_gru_forward, _gru_bwd)


def layer_gradients(repeats: int) -> dict:
    out = {}
    for cell, n_gates, autodiff, manual in (
        ("lstm", 4, lstm_autodiff, lstm_manual),
        ("gru", 3, gru_autodiff, gru_manual),
    ):
        keys = jax.random.split(jax.random.PRNGKey(0), 4)
        xp = jax.random.normal(keys[0], (T, N, n_gates * H))
        k = jax.random.normal(keys[1], (H, n_gates * H)) * 0.1
        b = jax.random.normal(keys[2], (n_gates * H,)) * 0.1
        weights = jax.random.normal(keys[3], (T, N, H))
        row = {}
        grads = {}
        for label, fn in (("autodiff", autodiff), ("hand_written_vjp", manual)):
            grad = jax.jit(jax.grad(lambda *a, fn=fn: jnp.sum(fn(*a) * weights), argnums=(0, 1, 2)))
            grads[label] = jax.block_until_ready(grad(xp, k, b))
            row[f"{label}_ms"] = 1e3 * median(
                [timed(lambda: jax.block_until_ready(grad(xp, k, b))) for _ in range(repeats)]
            )
        row["max_rel_diff"] = max(
            float(jnp.abs(a - m).max() / jnp.abs(a).max())
            for a, m in zip(grads["autodiff"], grads["hand_written_vjp"])
        )
        out[cell] = row
    return out


# -- 3. the hand-written VJP inside the engine -----------------------------------------------


def hand_written_layers(cls):
    """``cls`` (a qjax model class) with its recurrent layers differentiated by the hand-written
    VJPs above. A class of its own, so the engine compiles it apart from ``cls``."""
    from qjax.models import layers

    manual = {"lstm": lstm_manual, "gru": gru_manual}

    def scan_cell(cell, projected, k_hh, b_hh, hidden):
        return manual[cell](projected, k_hh, b_hh)

    class HandWritten(cls):
        def __call__(self, *args, **kwargs):
            original, layers._scan_cell = layers._scan_cell, scan_cell
            try:
                return super().__call__(*args, **kwargs)
            finally:
                layers._scan_cell = original

    HandWritten.__name__ = HandWritten.__qualname__ = f"{cls.__name__}HandWrittenVJP"
    return HandWritten


def engine_epochs(name: str, repeats: int) -> dict:
    from qjax.train import fit

    module, samples, config = epoch_setup(name)
    variants = {
        "autodiff": module,
        "hand_written_vjp": hand_written_layers(type(module))(
            d_feat=6, hidden_size=H, num_layers=2
        ),
    }

    def epoch(net):
        return lambda: jax.block_until_ready(
            fit(net, samples, None, config, verbose=False).variables
        )

    runs = {label: epoch(net) for label, net in variants.items()}
    for run in runs.values():
        run()  # compile
    seconds = {label: [] for label in runs}
    for _ in range(repeats):
        for label, run in runs.items():
            seconds[label].append(timed(run))
    return {label: {"median_s": median(s), "all_s": s} for label, s in seconds.items()}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--repeats", type=int, default=7)
    p.add_argument("--out", help="write rnn_train_profile_cpu.{md,json} here")
    args = p.parse_args(argv)
    before = load_average()
    profiles = {name: profile_epoch(name) for name in ("lstm", "gru")}
    layers = layer_gradients(args.repeats)
    engine = {name: engine_epochs(name, args.repeats) for name in ("lstm", "gru")}
    meta = {
        "command": command_line(),
        "load_before": before,
        "load_after": load_average(),
        "machine": machine(),
    }
    kinds = list(dict.fromkeys(kind for p in profiles.values() for kind in p["op_s_by_kind"]))
    lines = [
        "# RNN training on XLA:CPU: where an epoch goes, and a hand-written VJP",
        "",
        f"Command: `{meta['command']}`",
        "",
        f"{meta['machine']['cpu']}, {meta['machine']['logical_cores']} logical cores; load average "
        f"before {before}, after {meta['load_after']}.",
        "",
        f"One epoch, {SAMPLES} samples x 360 features, batch {N}, 2 layers x {H} hidden, Adam + clip 3.0 "
        "(XLA operations in the profiler trace, summed over threads; ms per batch of wall time):",
        "",
        "| kind | " + " | ".join(profiles) + " |",
        "|---|" + "---:|" * len(profiles),
        *[
            f"| {kind} | "
            + " | ".join(
                f"{p['op_s_by_kind'].get(kind, 0.0) / p['batches'] * 1e3:.1f}"
                for p in profiles.values()
            )
            + " |"
            for kind in kinds
        ],
        "| **wall time per batch** | "
        + " | ".join(f"**{p['ms_per_batch']:.1f}**" for p in profiles.values())
        + " |",
        "",
        f"One layer, T={T}, [{N}, {H}] states, gradient of a weighted sum w.r.t. the projected "
        f"inputs, kernel and bias (median of {args.repeats}):",
        "",
        "| cell | autodiff ms | hand-written VJP ms | hand-written / autodiff | max relative difference |",
        "|---|---:|---:|---:|---:|",
        *[
            f"| {cell} | {r['autodiff_ms']:.1f} | {r['hand_written_vjp_ms']:.1f} | "
            f"{r['hand_written_vjp_ms'] / r['autodiff_ms']:.2f} | {r['max_rel_diff']:.1e} |"
            for cell, r in layers.items()
        ],
        "",
        f"The hand-written VJP inside the engine: one `fit` epoch of the model ({SAMPLES} samples, "
        f"batch {N} whole on one CPU device), every recurrent layer differentiated either way "
        f"(seconds, median of {args.repeats} in turns):",
        "",
        "| model | autodiff s | hand-written VJP s | hand-written / autodiff |",
        "|---|---:|---:|---:|",
        *[
            f"| {name} | {r['autodiff']['median_s']:.3f} | {r['hand_written_vjp']['median_s']:.3f} | "
            f"{r['hand_written_vjp']['median_s'] / r['autodiff']['median_s']:.2f} |"
            for name, r in engine.items()
        ],
    ]
    publish(
        lines,
        args.out,
        "rnn_train_profile_cpu",
        {**meta, "epoch_profiles": profiles, "layer_gradients": layers, "engine_epochs": engine},
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
