"""Inference levers of ``qjax.train.predict`` on XLA:CPU, each against the code path it replaces.

Per model (``train_vs_torch.py``'s table, data and prediction batch size), timed in rounds that
alternate every variant with Qlib's torch ``predict`` loop, the order rotating each round:

* **before**: ``predict`` as it was: batches of exactly the given size (the last one padded
  to it) and, for TCN and Transformer, the whole sequence through every layer;
* **balanced**: the fewest batches of at most that size, of equal size (less padding);
* **host view**: the samples replicated on the CPU devices through a numpy view of their
  buffer (no copy) instead of a ``device_put`` copy per device;
* **last step** (TCN, Transformer): eval computes only the steps the head reads;
* **now**: what ``predict`` does by default after this change (all of the above);
* **home: batch B**: ``now`` in the prediction batch the model's estimator uses on CPU
  (``ModelSpec.cpu_predict_batch``; ``train_vs_torch.py`` times qjax with it);
* **fold BN** (MLP): BatchNorm's running statistics folded into the Dense before it;
* **batch B**: ``now`` with another prediction batch size;
* **1 device**: ``now`` on one CPU device instead of the batch split over all.

Every variant's predictions are compared with ``before`` (the largest absolute difference is
reported). Rates are medians; the ratios compare variants of one run, so they survive a shared
machine better than absolute rates do.

    python benchmarks/predict_levers.py --models mlp,tcn,transformer,localformer,lstm \\
        --rounds 5 --out benchmarks/results
"""

from __future__ import annotations

import argparse
import logging
import sys
import warnings
from collections.abc import Callable
from functools import partial
from pathlib import Path

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import train_vs_torch as tvt  # noqa: E402
from _common import command_line, load_average, machine, median, publish, timed  # noqa: E402

import qjax.estimators  # noqa: E402
import qjax.models  # noqa: E402
from qjax.models.layers import Linear  # noqa: E402
from qjax.models.spec import predict_batch  # noqa: E402
from qjax.train import batching, engine, predict  # noqa: E402
from qjax.train.parallel import auto_devices, data_parallel  # noqa: E402

SWEEP = {  # prediction batch sizes tried per model besides the benchmark's own
    "mlp": (2048, 9600),
    "lstm": (400, 1600),
    "tcn": (128, 512),
    "transformer": (128, 512),
    "localformer": (128, 512),
}


def full_sequence(module: nn.Module) -> nn.Module:
    """``module`` that runs its train-mode graph without dropout: every step through every
    layer, as eval mode did before it learnt to compute only the last step."""
    cls = type(module)

    def call(self, x, train: bool = False):
        return cls.__call__(self, x, train=True)

    full = type(f"FullSequence{cls.__name__}", (cls,), {"__call__": call})
    fields = {
        f: getattr(module, f) for f in module.__dataclass_fields__ if f not in ("parent", "name")
    }
    return full(**{**fields, "dropout": 0.0})


class FoldedNet(nn.Module):
    """Qlib's MLP ``Net`` in eval mode with each BatchNorm folded into the Linear before it."""

    layers: tuple[int, ...]
    slope: float = 0.1

    @nn.compact
    def __call__(self, x, train: bool = False):
        for i, width in enumerate(self.layers):
            x = jax.nn.leaky_relu(Linear(width, name=f"fc_{i}")(x), negative_slope=self.slope)
        return Linear(1, name="fc_out")(x)


def fold_batch_norm(variables: dict, layers: int, eps: float = 1e-5) -> dict:
    params, stats = variables["params"], variables["batch_stats"]
    folded = {"fc_out": params["fc_out"]}
    for i in range(layers):
        bn, st, fc = params[f"bn_{i}"], stats[f"bn_{i}"], params[f"fc_{i}"]
        s = bn["scale"] * jax.lax.rsqrt(st["var"] + eps)
        folded[f"fc_{i}"] = {
            "kernel": fc["kernel"] * s,
            "bias": (fc["bias"] - st["mean"]) * s + bn["bias"],
        }
    return {"params": folded}


def manual_predict(
    module, variables, samples, batch_size: int, balanced: bool, host_view: bool
) -> np.ndarray:
    """``predict`` with its levers chosen: ``balanced=False`` cuts batches of exactly
    ``batch_size`` rows (the last one padded to it), ``host_view=False`` replicates the samples
    with a plain ``device_put`` (a copy per device), as ``predict`` did before."""
    parallel = data_parallel(auto_devices(batch_size))
    if balanced:
        size = engine.prediction_batch(samples.size, batch_size, parallel.size)
    else:
        size = -(-batch_size // parallel.size) * parallel.size
    segment = batching.make_segment(samples, False, multiple=parallel.size)
    place = parallel.share if host_view else partial(jax.device_put, device=parallel.replicated)
    preds = engine._PREDICT_PROGRAMS["default", "default"](
        place(variables),
        place(segment),
        module=module,
        batch_size=size,
        daily=False,
        per_seed=False,
        parallel=parallel,
        days_spread=False,
    )
    return np.asarray(preds)


def variants(name: str, module, variables, samples, batch: int) -> dict[str, Callable]:
    out: dict[str, Callable] = {}
    pruned = name in ("tcn", "transformer")
    full = full_sequence(module) if pruned else module
    out["before"] = lambda: manual_predict(full, variables, samples, batch, False, False)
    if engine.prediction_batch(samples.size, batch, 2) != batch:
        out["balanced"] = lambda: manual_predict(full, variables, samples, batch, True, False)
    out["host view"] = lambda: manual_predict(full, variables, samples, batch, False, True)
    if pruned:
        out["last step"] = lambda: manual_predict(module, variables, samples, batch, False, False)
    out["now"] = lambda: np.asarray(predict(module, variables, samples, batch_size=batch))
    home = predict_batch(qjax.estimators.wrappers()[name].spec, batch)
    if home != batch:  # the prediction batch the estimator uses on CPU
        out[f"home: batch {home}"] = lambda: np.asarray(
            predict(module, variables, samples, batch_size=home)
        )
    if name == "mlp":
        folded = FoldedNet(tuple(module.layers))
        fv = fold_batch_norm(variables, len(module.layers))
        out["fold BN"] = lambda: np.asarray(predict(folded, fv, samples, batch_size=batch))
    for size in SWEEP.get(name, ()):
        out[f"batch {size}"] = lambda size=size: np.asarray(
            predict(module, variables, samples, batch_size=size)
        )
    one = jax.local_devices()[:1]
    out["1 device"] = lambda: np.asarray(
        predict(module, variables, samples, batch_size=batch, devices=one)
    )
    return out


def _norm_statistics(tree) -> list[dict]:
    """Every BatchNorm's statistics dict ({"mean", "var"}) in a batch_stats tree, at any depth
    (TabNet's ghost batch norms sit inside its blocks)."""
    if "mean" in tree:
        return [tree]
    return [st for sub in tree.values() if isinstance(sub, dict) for st in _norm_statistics(sub)]


def run_model(name: str, n_samples: int, rounds: int, device) -> dict:
    case = tvt.CASES[name]
    module = qjax.models.get(name)(**case.qjax_kwargs)
    n = tvt.case_samples(case, n_samples)
    data = tvt.make_data(case, n, seed=0)
    samples = tvt.qjax_samples(case, data)
    x = jnp.asarray(data.x[:2])
    variables = module.init({"params": jax.random.PRNGKey(0)}, x, train=False)
    if "batch_stats" in variables:  # non-trivial running statistics for the BN fold
        variables = jax.tree.map(lambda a: a, variables)
        key = jax.random.PRNGKey(1)
        for st in _norm_statistics(variables["batch_stats"]):
            k1, k2, key = jax.random.split(key, 3)
            st["mean"] = 0.1 * jax.random.normal(k1, st["mean"].shape)
            st["var"] = jax.random.uniform(k2, st["var"].shape, minval=0.5, maxval=2.0)
    batch = case.predict_batch or case.batch_size
    runner = tvt.TorchRunner(case, data, device)
    fns = {**variants(name, module, variables, samples, batch), "torch": runner.predict}
    reference = fns["before"]()
    diffs = {}
    for label, fn in fns.items():  # compiles, and checks every variant's predictions
        if label != "torch":
            diffs[label] = float(np.max(np.abs(fn() - reference)))
    fns["torch"]()
    seconds: dict[str, list[float]] = {label: [] for label in fns}
    labels = list(fns)
    for r in range(rounds):
        for label in labels[r % len(labels) :] + labels[: r % len(labels)]:
            seconds[label].append(timed(fns[label]))
    rate = {label: data.n / median(s) for label, s in seconds.items()}
    print(
        f"{name}: " + ", ".join(f"{k} {v:,.0f}/s" for k, v in rate.items()),
        file=sys.stderr,
        flush=True,
    )
    return {
        "samples": data.n,
        "predict_batch": batch,
        "seconds": seconds,
        "samples_per_s": rate,
        "vs_before": {k: rate[k] / rate["before"] for k in rate},
        "vs_torch": {k: rate[k] / rate["torch"] for k in rate},
        "max_abs_diff_vs_before": diffs,
        "max_abs_prediction": float(np.max(np.abs(reference))),
    }


def report(meta: dict, results: dict) -> list[str]:
    lines = [
        "# Inference levers of `predict` on XLA:CPU",
        "",
        f"Command: `{meta['command']}`",
        "",
        f"{meta['machine']['cpu']}, {meta['machine']['logical_cores']} logical cores; load average "
        f"before {meta['load_before']}, after {meta['load_after']}. {meta.get('note') or ''} "
        "The ratios compare variants timed in alternating rounds of one process.",
        "",
        "Rate = samples / median seconds of one `predict` call (numpy out). `x before` = rate / "
        "the `before` variant's; `x torch` = rate / Qlib's torch `predict` loop in the same "
        "rounds. `max |diff|` = largest absolute difference from `before`'s predictions.",
        "",
    ]
    for name, r in results.items():
        lines += [
            f"## {name} ({r['samples']} samples, prediction batch {r['predict_batch']}, "
            f"predictions up to {r['max_abs_prediction']:.3g})",
            "",
            "| variant | samples/s | x before | x torch | max \\|diff\\| |",
            "|---|---:|---:|---:|---:|",
        ]
        for label, rate in r["samples_per_s"].items():
            diff = r["max_abs_diff_vs_before"].get(label)
            lines.append(
                f"| {label} | {rate:,.0f} | {r['vs_before'][label]:.2f} | "
                f"{r['vs_torch'][label]:.2f} | {'-' if diff is None else f'{diff:.1e}'} |"
            )
        lines.append("")
    return lines


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--models", default="mlp,tcn,transformer,localformer,lstm")
    p.add_argument("--samples", type=int, default=9600, help="samples (scaled per model)")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--sizes", help="comma-separated batch sizes to sweep (default: per model)")
    p.add_argument("--out", help="write predict_levers_cpu.{md,json} here")
    p.add_argument("--tag", help="write predict_levers_cpu_<tag>.{md,json} instead")
    p.add_argument("--note", default="", help="a sentence on the run's conditions for the report")
    args = p.parse_args(argv)
    if args.sizes:
        sizes = tuple(int(v) for v in args.sizes.split(","))
        SWEEP.update(dict.fromkeys(tvt.CASES, sizes))
    logging.getLogger("qlib").setLevel(logging.WARNING)
    warnings.filterwarnings("ignore", category=UserWarning)
    warnings.filterwarnings("ignore", category=FutureWarning)
    tvt.torch.set_num_threads(tvt.usable_cores())
    device = tvt.torch.device("cpu")
    before = load_average()
    results = {}
    for name in [m.strip() for m in args.models.split(",") if m.strip()]:
        print(f"{name} ...", file=sys.stderr, flush=True)
        results[name] = run_model(name, args.samples, args.rounds, device)
    meta = {
        "command": command_line(),
        "load_before": before,
        "load_after": load_average(),
        "machine": machine(tvt.torch),
        "note": args.note,
    }
    stem = "predict_levers_cpu" + (f"_{args.tag}" if args.tag else "")
    publish(report(meta, results), args.out, stem, {**meta, "models": results})
    return 0


if __name__ == "__main__":
    sys.exit(main())
