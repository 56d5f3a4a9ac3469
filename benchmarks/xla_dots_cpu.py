"""XLA:CPU's matrix-product backend, per model: YNNPACK (XLA's default) against Eigen.

XLA:CPU hands its dots to YNNPACK fusions; the compiler option
``xla_cpu_experimental_ynn_fusion_type`` set empty leaves them to Eigen. The engine compiles its
epoch and prediction programs once per choice (``TrainConfig.cpu_dots``, ``predict(cpu_dots=)``,
:data:`qjax.compilation.CPU_DOTS`), so both variants run in one process, timed in turns with the
order rotating every repeat, on ``train_vs_torch.py``'s data and Qlib settings with each model's
home levers (devices, micro-batches, prediction batch). The ratio is Eigen's rate over
YNNPACK's: above 1, Eigen is faster. The report also names each model home's choice.

    python benchmarks/xla_dots_cpu.py --samples 9600 --repeats 5 --out benchmarks/results
"""

from __future__ import annotations

import argparse
import dataclasses
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
from qjax.train import fit, predict  # noqa: E402
from qjax.train.levers import predict_choice, resolve  # noqa: E402

# The engine's lever values (qjax.compilation.CPU_DOTS) under the names of what runs the dots.
BACKENDS = {"ynnpack": "default", "eigen": "eigen"}


def run_model(name: str, n_samples: int, repeats: int) -> dict:
    case = tvt.CASES[name]
    module = qjax.models.get(name)(**case.qjax_kwargs)
    n = tvt.case_samples(case, n_samples)
    data = tvt.make_data(case, n, seed=0)
    samples = tvt.qjax_samples(case, data)
    config = tvt.train_config(case, data.n)
    daily = case.batching == "daily"
    batch = tvt.home_predict_batch(name, case.predict_batch or case.batch_size)
    fitted = {}

    def train(backend):
        backend_config = dataclasses.replace(config, cpu_dots=BACKENDS[backend])

        def run():
            fitted[backend] = fit(module, samples, None, backend_config, verbose=False)
            jax.block_until_ready(fitted[backend].variables)

        return run

    def infer(backend):
        def run():
            variables = fitted["ynnpack"].replica(0)
            jax.block_until_ready(
                predict(
                    module,
                    variables,
                    samples,
                    batch_size=batch,
                    daily=daily,
                    cpu_dots=BACKENDS[backend],
                )
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
        "home_choice": {  # what the model's home picks when a caller leaves it open
            "train": resolve(config, type(module)).cpu_dots,
            "predict": predict_choice(type(module))[0],
        },
    }


def report(record: dict) -> list[str]:
    def row(name: str, res: dict) -> str:
        train, infer = res["train_rate"], res["infer_rate"]
        home = {k: "Eigen" if v == "eigen" else "default" for k, v in res["home_choice"].items()}
        return (
            f"| {name} | {res['devices']} / {res['micro_batches']} | {train['ynnpack']:,.0f} | "
            f"{train['eigen']:,.0f} | {train['eigen'] / train['ynnpack']:.2f}x | "
            f"{infer['ynnpack']:,.0f} | {infer['eigen']:,.0f} | "
            f"{infer['eigen'] / infer['ynnpack']:.2f}x | {home['train']} / {home['predict']} |"
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
        "home's choice (train / predict)",
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
        "levers; Eigen / YNNPACK above 1 means Eigen's dots are faster. The last column is "
        "the backend each model's home picks (`TrainConfig.cpu_dots`, the spec's "
        "`cpu_predict_dots`) when the caller leaves it open.",
        "",
        *results_table(columns, "llrrrrrrl", record["models"], row),
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
    parser.add_argument("--out", default=None, help="folder for xla_dots_cpu[_TAG].{md,json}")
    parser.add_argument("--tag", default=None, help="result file suffix")
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
    stem = "xla_dots_cpu" + (f"_{args.tag}" if args.tag else "")
    publish(report(record), args.out, stem, record)


if __name__ == "__main__":
    main()
