"""bf16 matrix products with float32 accumulation on XLA:CPU: does the lever pay per model?

Issue 12 names "bf16 matmuls with f32 accumulation, as an opt-in". Before threading a compute
dtype through every network, this measures what it would buy: each ``jnp.dot`` / ``matmul`` /
``einsum`` the networks call is traced with its operands cast to bfloat16 and
``preferred_element_type=float32`` (so products accumulate and return in float32, and all
elementwise work stays float32), against the unchanged float32 program. Per model, with
Qlib's Alpha360 benchmark shapes (``train_vs_torch.CASES``): the time of one gradient of the
loss over a training batch, and of one prediction batch, timed in turns (medians of
--repeats), and how far bf16 predictions stray from float32's.

    python benchmarks/bf16_cpu.py --repeats 5 --out benchmarks/results
"""

from __future__ import annotations

import argparse
import contextlib

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

MODELS = ("mlp", "lstm", "gru", "alstm", "transformer", "localformer", "tcn")
PRODUCTS = ("dot", "matmul", "einsum")


@contextlib.contextmanager
def bf16_products():
    """While tracing: every jnp matrix product takes bf16 operands and accumulates in f32."""
    originals = {name: getattr(jnp, name) for name in PRODUCTS}

    def cast(fn):
        def product(*args, **kwargs):
            args = [a.astype(jnp.bfloat16) if isinstance(a, jax.Array) else a for a in args]
            return fn(*args, **{**kwargs, "preferred_element_type": jnp.float32})

        return product

    try:
        for name, fn in originals.items():
            setattr(jnp, name, cast(fn))
        yield
    finally:
        for name, fn in originals.items():
            setattr(jnp, name, fn)


def programs(name: str, predict_rows: int):
    """(gradient, predict, params, x_train, x_predict) of one model at Qlib's shapes."""
    from train_vs_torch import CASES

    import qjax

    case = CASES[name]
    module = qjax.models.get(name)(**case.qjax_kwargs)
    rng = np.random.default_rng(0)
    x_train = jnp.asarray(rng.standard_normal((case.batch_size, case.input_dim), np.float32))
    x_predict = jnp.asarray(rng.standard_normal((predict_rows, case.input_dim), np.float32))
    variables = module.init(jax.random.key(0), x_train[:2])
    y = jnp.asarray(rng.standard_normal(case.batch_size, np.float32))

    def loss(params, x):
        pred = module.apply({**variables, "params": params}, x, train=False)
        return jnp.mean((pred.reshape(-1) - y) ** 2)

    def predict(params, x):
        return module.apply({**variables, "params": params}, x, train=False)

    return jax.grad(loss), predict, variables["params"], x_train, x_predict


def measure(name: str, repeats: int, predict_rows: int) -> dict:
    compiled = {}
    for policy in ("float32", "bf16"):
        # Fresh functions per policy: jit would otherwise reuse the float32 trace.
        grad, predict, params, x_train, x_predict = programs(name, predict_rows)
        with bf16_products() if policy == "bf16" else contextlib.nullcontext():
            compiled[policy] = {
                "train": jax.jit(grad).lower(params, x_train).compile(),
                "predict": jax.jit(predict).lower(params, x_predict).compile(),
            }
    runs = {"train": (x_train,), "predict": (x_predict,)}
    seconds = {p: {k: [] for k in runs} for p in compiled}
    for _ in range(repeats):
        for kind, (x,) in runs.items():
            for policy, fns in compiled.items():  # in turns, so drift hits both alike
                fn = fns[kind]
                jax.block_until_ready(fn(params, x))
                seconds[policy][kind].append(timed(lambda: jax.block_until_ready(fn(params, x))))
    pred = {p: np.asarray(compiled[p]["predict"](params, x_predict)).reshape(-1) for p in compiled}
    grads = {p: compiled[p]["train"](params, x_train) for p in compiled}
    flat = {p: np.concatenate([np.ravel(g) for g in jax.tree.leaves(grads[p])]) for p in grads}
    return {
        "seconds": seconds,
        "speedup": {
            kind: median(seconds["float32"][kind]) / median(seconds["bf16"][kind]) for kind in runs
        },
        "pred_max_abs_diff": float(np.max(np.abs(pred["bf16"] - pred["float32"]))),
        "pred_std": float(np.std(pred["float32"])),
        "pred_corr": float(np.corrcoef(pred["bf16"], pred["float32"])[0, 1]),
        "grad_rel_err": float(
            np.linalg.norm(flat["bf16"] - flat["float32"]) / np.linalg.norm(flat["float32"])
        ),
    }


def report(results: dict, info: dict, loads: tuple, args) -> list[str]:
    lines = [
        "# bf16 matrix products (float32 accumulation) on XLA:CPU, per model",
        "",
        f"Command: `{command_line()}`",
        "",
        f"{info['cpu']}, {info['logical_cores']} logical cores, JAX {info['jax_backend']} "
        f"({len(info['jax_devices'])} device); load average before {loads[0]}, after "
        f"{loads[1]}. Seconds are medians of {args.repeats} repeats, float32 and bf16 timed "
        "in turns.",
        "",
        "Speed-up = float32 seconds / bf16 seconds (above 1: bf16 faster). Train: one gradient "
        "of the loss over a batch of the benchmark's size; predict: one batch of "
        f"{args.predict_rows} rows. Deviation: bf16 predictions against float32's.",
        "",
        *table_head(
            [
                "model",
                "train f32 ms",
                "train bf16 ms",
                "train speed-up",
                "predict f32 ms",
                "predict bf16 ms",
                "predict speed-up",
                "pred max abs diff / std",
                "pred corr",
                "grad rel. error",
            ],
            "lrrrrrrrrr",
        ),
    ]
    for name, r in results.items():
        s = r["seconds"]
        ms = {p: {k: 1e3 * median(v) for k, v in s[p].items()} for p in s}
        lines.append(
            f"| {name} | {ms['float32']['train']:.1f} | {ms['bf16']['train']:.1f} | "
            f"{r['speedup']['train']:.2f}x | {ms['float32']['predict']:.1f} | "
            f"{ms['bf16']['predict']:.1f} | {r['speedup']['predict']:.2f}x | "
            f"{r['pred_max_abs_diff'] / r['pred_std']:.3f} | {r['pred_corr']:.5f} | "
            f"{r['grad_rel_err']:.4f} |"
        )
    return lines


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", default=",".join(MODELS))
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--predict-rows", type=int, default=2048)
    p.add_argument("--out", default=None, help="folder for bf16_cpu.md / .json")
    args = p.parse_args(argv)
    names = chosen_models(p, args.models, MODELS)
    measure_each_model(
        "bf16",
        names,
        lambda name: measure(name, args.repeats, args.predict_rows),
        report,
        args,
        "bf16_cpu",
    )


if __name__ == "__main__":
    main()
