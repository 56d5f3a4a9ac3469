"""Dropout masks on XLA:CPU: a float per element (flax's ``nn.Dropout``) or packed bits.

``qjax.models.layers.keep_mask`` reads 8 or 16 bits of a 32-bit threefry word per element
instead of a whole word. This times one training gradient (dropout on) of each model whose
Qlib benchmark config drops out, at that config's shapes (``train_vs_torch.CASES``; GATs: a
day of 290 stocks), with each kind of mask, in turns, as medians of --repeats.

    python benchmarks/dropout_cpu.py --repeats 7 --out benchmarks/results
"""

from __future__ import annotations

import argparse

import jax
import jax.numpy as jnp
import numpy as np
from _common import (
    chosen_models,
    command_line,
    measure_each_model,
    median,
    table_head,
    timed,
)

import qjax.models.layers as layers

MODELS = {"mlp": None, "gats": 290, "tcn": None}  # name: rows of a batch (None: the config's)
MASKS = {
    "float per element": lambda key, rate, shape: (
        jax.random.bernoulli(key, 1.0 - rate, shape),
        rate,
    ),
    "packed bits": layers.keep_mask,
}


def gradient(name: str, rows: int | None):
    """The compiled gradient of a squared loss in training mode, its params and batch."""
    from train_vs_torch import CASES

    import qjax

    case = CASES[name]
    module = qjax.models.get(name)(**case.qjax_kwargs)
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.standard_normal((rows or case.batch_size, case.input_dim), np.float32))
    y = jnp.asarray(rng.standard_normal(x.shape[0], np.float32))
    variables = module.init(jax.random.key(0), x[:2])

    def loss(params, key):
        pred, _ = module.apply(
            {**variables, "params": params},
            x,
            train=True,
            rngs={"dropout": key},
            mutable=["batch_stats"],
        )
        return jnp.mean((pred.reshape(-1) - y) ** 2)

    return jax.jit(jax.grad(loss)).lower(variables["params"], jax.random.key(1)).compile(), (
        variables["params"]
    )


def measure(name: str, rows: int | None, repeats: int) -> dict:
    compiled = {}
    original = layers.keep_mask
    try:
        for mask, fn in MASKS.items():
            layers.keep_mask = fn  # traced now: each program keeps its own masks
            compiled[mask], params = gradient(name, rows)
    finally:
        layers.keep_mask = original
    seconds = {mask: [] for mask in compiled}
    for i in range(repeats):
        key = jax.random.key(i)
        for mask, fn in compiled.items():  # in turns, so drift hits both alike
            jax.block_until_ready(fn(params, key))
            seconds[mask].append(timed(lambda: jax.block_until_ready(fn(params, key))))
    old, new = (median(seconds[m]) for m in MASKS)
    return {"seconds": seconds, "speedup": old / new}


def report(results: dict, info: dict, loads: tuple, args) -> list[str]:
    lines = [
        "# Dropout masks on XLA:CPU: a float per element or packed bits",
        "",
        f"Command: `{command_line()}`",
        "",
        f"{info['cpu']}, {info['logical_cores']} logical cores, JAX {info['jax_backend']} "
        f"({len(info['jax_devices'])} device); load average before {loads[0]}, after "
        f"{loads[1]}. One gradient of the loss in training mode; milliseconds are medians of "
        f"{args.repeats} repeats, the two kinds of mask timed in turns.",
        "",
        *table_head(
            ["model", "rows", "float per element ms", "packed bits ms", "speed-up"], "lrrrr"
        ),
    ]
    for name, r in results.items():
        ms = {m: 1e3 * median(v) for m, v in r["seconds"].items()}
        old, new = (ms[m] for m in MASKS)
        lines.append(f"| {name} | {r['rows']} | {old:.1f} | {new:.1f} | {r['speedup']:.2f}x |")
    return lines


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", default=",".join(MODELS))
    p.add_argument("--repeats", type=int, default=7)
    p.add_argument("--out", default=None, help="folder for dropout_cpu.md / .json")
    args = p.parse_args(argv)
    names = chosen_models(p, args.models, MODELS)
    from train_vs_torch import CASES

    def one(name: str) -> dict:
        rows = MODELS[name] or CASES[name].batch_size
        return {"rows": rows, **measure(name, rows, args.repeats)}

    measure_each_model("dropout", names, one, report, args, "dropout_cpu")


if __name__ == "__main__":
    main()
