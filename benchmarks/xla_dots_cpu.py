"""XLA:CPU's matrix-product backend, per model: YNNPACK (XLA's default) against Eigen.

XLA:CPU hands its dots to YNNPACK fusions; the compiler option
``xla_cpu_experimental_ynn_fusion_type`` set empty leaves them to Eigen. A compiler option can
differ per program, so both variants run in one process: the engine's epoch and prediction
programs are compiled both ways (``jax.jit(..., compiler_options=...)``) and timed in turns, the
order rotating every repeat, on ``train_vs_torch.py``'s data and Qlib settings with each model's
home levers (devices, micro-batches, prediction batch). The ratio is Eigen's rate over
YNNPACK's: above 1, Eigen is faster.

    python benchmarks/xla_dots_cpu.py --samples 9600 --repeats 5 --out benchmarks/results
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import logging
import sys
import warnings
from pathlib import Path

import jax

sys.path.insert(0, str(Path(__file__).resolve().parent))
import train_vs_torch as tvt  # noqa: E402
from _common import (  # noqa: E402
    chosen_models,
    command_line,
    load_average,
    machine,
    median,
    publish,
    results_table,
    rotate,
)

import qjax.models  # noqa: E402
from qjax.train import engine, fit, predict  # noqa: E402

BACKENDS = {"ynnpack": {}, "eigen": {"xla_cpu_experimental_ynn_fusion_type": ""}}
EPOCH_STATIC = {"static_argnames": ("trainer", "n_steps"), "donate_argnames": "state"}
PREDICT_STATIC = {
    "static_argnames": ("module", "batch_size", "daily", "per_seed", "parallel"),
}
# The engine's own jitted programs, kept before any variant replaces them.
PROGRAMS = {"_epoch_program": engine._epoch_program, "_predict": engine._predict}


def compiled_with(options: dict) -> dict:
    """The engine's epoch and prediction programs jitted with XLA compiler ``options``."""
    return {
        "_epoch_program": jax.jit(
            PROGRAMS["_epoch_program"].__wrapped__, compiler_options=options, **EPOCH_STATIC
        ),
        "_predict": jax.jit(
            PROGRAMS["_predict"].__wrapped__, compiler_options=options, **PREDICT_STATIC
        ),
    }


@contextlib.contextmanager
def programs(variant: dict):
    """The engine runs ``variant``'s programs inside the block, its own after it."""
    for name, program in variant.items():
        setattr(engine, name, program)
    try:
        yield
    finally:
        for name, program in PROGRAMS.items():
            setattr(engine, name, program)


def run_model(name: str, n_samples: int, repeats: int) -> dict:
    case = tvt.CASES[name]
    module = qjax.models.get(name)(**case.qjax_kwargs)
    n = tvt.case_samples(case, n_samples)
    data = tvt.make_data(case, n, seed=0)
    samples = tvt.qjax_samples(case, data)
    config = tvt.train_config(case, data.n)
    daily = case.batching == "daily"
    batch = tvt.home_predict_batch(name, case.predict_batch or case.batch_size)
    variants = {backend: compiled_with(options) for backend, options in BACKENDS.items()}
    fitted = {}

    def train(backend):
        def run():
            with programs(variants[backend]):
                fitted[backend] = fit(module, samples, None, config, verbose=False)
                jax.block_until_ready(fitted[backend].variables)

        return run

    def infer(backend):
        def run():
            with programs(variants[backend]):
                variables = fitted["ynnpack"].replica(0)
                jax.block_until_ready(
                    predict(module, variables, samples, batch_size=batch, daily=daily)
                )

        return run

    for backend in BACKENDS:  # compiles
        train(backend)()
        infer(backend)()
    train_s = rotate({b: train(b) for b in BACKENDS}, repeats)
    infer_s = rotate({b: infer(b) for b in BACKENDS}, repeats)
    rows = tvt.trained_samples(case, data.n)
    return {
        "samples": data.n,
        "trained_rows": rows,
        "devices": fitted["ynnpack"].n_devices,
        "micro_batches": fitted["ynnpack"].micro_batches,
        "train_s": train_s,
        "infer_s": infer_s,
        "train_rate": {b: rows / median(train_s[b]["wall"]) for b in BACKENDS},
        "infer_rate": {b: data.n / median(infer_s[b]["wall"]) for b in BACKENDS},
    }


def report(record: dict) -> list[str]:
    def row(name: str, res: dict) -> str:
        train, infer = res["train_rate"], res["infer_rate"]
        return (
            f"| {name} | {res['devices']} / {res['micro_batches']} | {train['ynnpack']:,.0f} | "
            f"{train['eigen']:,.0f} | {train['eigen'] / train['ynnpack']:.2f}x | "
            f"{infer['ynnpack']:,.0f} | {infer['eigen']:,.0f} | "
            f"{infer['eigen'] / infer['ynnpack']:.2f}x |"
        )

    columns = [
        "model",
        "devices / chunks",
        "train/s YNNPACK",
        "train/s Eigen",
        "Eigen / YNNPACK",
        "infer/s YNNPACK",
        "infer/s Eigen",
        "Eigen / YNNPACK",
    ]
    return [
        "# XLA:CPU matrix products: YNNPACK (default) vs Eigen, per model",
        "",
        f"Command: `{record['command']}`",
        "",
        f"Run {record['started']}; load average before {record['load_before']}, after "
        f"{record['load_after']} on {record['machine']['logical_cores']} logical cores "
        f"({record['machine']['cpu']}). Both variants ran in one process, in turns with the "
        "order rotating every repeat; rates are wall-clock medians of "
        f"{record['repeats']} repeats (every timing is in the JSON).",
        "",
        "Samples/s of one training epoch (`fit`) and of `predict`, each model with its home's "
        "levers; Eigen / YNNPACK above 1 means Eigen's dots are faster.",
        "",
        *results_table(columns, "llrrrrrr", record["models"], row),
        "",
        f"Versions: {record['machine']['versions']}; JAX devices: "
        f"{record['machine']['jax_devices']}; environment: {record['machine']['env']}; "
        f"allocator: {record['machine']['allocators']['jax']}.",
    ]


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", default=",".join(tvt.CASES))
    parser.add_argument("--samples", type=int, default=9600, help="scaled per model")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--out", default=None, help="folder for xla_dots_cpu.{md,json}")
    args = parser.parse_args(argv)
    models = chosen_models(parser, args.models, tvt.CASES)
    logging.getLogger("qlib").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore")
    record = {
        "command": command_line(),
        "started": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "load_before": load_average(),
        "machine": machine(),
        "repeats": args.repeats,
        "models": {},
    }
    for name in models:
        print(f"{name} ...", file=sys.stderr, flush=True)
        record["models"][name] = run_model(name, args.samples, args.repeats)
    record["load_after"] = load_average()
    publish(report(record), args.out, "xla_dots_cpu", record)


if __name__ == "__main__":
    main()
