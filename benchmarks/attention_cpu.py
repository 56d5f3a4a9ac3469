"""Attention on XLA:CPU: ``jax.nn.dot_product_attention`` or qjax's own einsums.

``qjax.models.transformer.network.attention`` hands dropout-free attention to the library
function (:data:`LIBRARY_ATTENTION`) and keeps two einsums and a softmax where the weights
drop out. The engine compiles its programs once per model, so each arm lives in its own worker
process (the einsum arm sets ``LIBRARY_ATTENTION = None`` before tracing); the parent drives
the two workers in turns, the order rotating every repeat, so drift hits both alike.

Per model (Qlib's benchmark config, ``train_vs_torch.CASES``, with the home's levers): one
training epoch (``fit(..., n_epochs=1)``) and one ``predict`` over the samples; seconds are
medians of --repeats; the two arms' predictions from the same trained weights are compared.

    python benchmarks/attention_cpu.py --repeats 5 --out benchmarks/results
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import (  # noqa: E402
    chosen_models,
    command_line,
    measure_each_model,
    median,
    table_head,
)

MODELS = ("transformer", "localformer")
ARMS = ("einsums", "library")


def worker(connection, name: str, arm: str, n_samples: int) -> None:
    """Serves ``epoch``/``predict`` (seconds) and ``predictions`` (array) for one arm."""
    import jax
    import numpy as np
    import train_vs_torch as tvt
    from _common import timed

    import qjax.models
    import qjax.models.transformer.network as network
    from qjax.compilation import CompileClock
    from qjax.train import fit, predict

    if arm == "einsums":
        network.LIBRARY_ATTENTION = None
    case = tvt.CASES[name]
    module = qjax.models.get(name)(**case.qjax_kwargs)
    data = tvt.make_data(case, tvt.case_samples(case, n_samples), seed=0)
    samples = tvt.qjax_samples(case, data)
    config = tvt.train_config(case, data.n)
    predict_batch = tvt.home_predict_batch(name, case.predict_batch or case.batch_size)
    result = None

    def epoch():
        nonlocal result
        result = fit(module, samples, None, config, verbose=False)
        jax.block_until_ready(result.variables)

    def infer():
        return predict(module, result.replica(0), samples, batch_size=predict_batch)

    with CompileClock.measure() as train_compile:
        epoch()
    with CompileClock.measure() as predict_compile:
        infer()
    connection.send(
        {
            "rows": tvt.trained_samples(case, data.n),
            "samples": data.n,
            "compile_s": train_compile["seconds"] + predict_compile["seconds"],
        }
    )
    while (command := connection.recv()) != "stop":
        if command == "epoch":
            connection.send(timed(epoch))
        elif command == "predict":
            connection.send(timed(infer))
        else:  # "predictions": the same trained weights in both arms (seed 0, same data)
            connection.send(np.asarray(infer()))


def measure(name: str, n_samples: int, repeats: int) -> dict:
    os.environ["QJAX_COMPILATION_CACHE"] = "off"  # every worker compiles what it runs
    context = multiprocessing.get_context("spawn")
    workers, info = {}, {}
    for arm in ARMS:  # one after the other, so their compiles don't share the cores
        parent, child = context.Pipe()
        process = context.Process(target=worker, args=(child, name, arm, n_samples))
        process.start()
        workers[arm] = (parent, process)
        info[arm] = parent.recv()
    seconds = {kind: {arm: [] for arm in ARMS} for kind in ("epoch", "predict")}
    try:
        for r in range(repeats):
            order = ARMS[r % 2 :] + ARMS[: r % 2]
            for kind in seconds:
                for arm in order:
                    workers[arm][0].send(kind)
                    seconds[kind][arm].append(workers[arm][0].recv())
        predictions = {}
        for arm in ARMS:
            workers[arm][0].send("predictions")
            predictions[arm] = workers[arm][0].recv()
    finally:
        for parent, process in workers.values():
            parent.send("stop")
            process.join()
    import numpy as np

    a, b = (predictions[arm] for arm in ARMS)
    return {
        "rows": info["library"]["rows"],
        "samples": info["library"]["samples"],
        "compile_s": {arm: info[arm]["compile_s"] for arm in ARMS},
        "seconds": seconds,
        "speedup": {k: median(v["einsums"]) / median(v["library"]) for k, v in seconds.items()},
        "max_prediction_difference": float(np.max(np.abs(a - b))),
        "prediction_scale": float(np.max(np.abs(a))),
    }


def report(results: dict, info: dict, loads: tuple, args) -> list[str]:
    lines = [
        "# Attention on XLA:CPU: `jax.nn.dot_product_attention` or einsums",
        "",
        f"Command: `{command_line()}`",
        "",
        f"{info['cpu']}, {info['logical_cores']} logical cores, JAX {info['jax_backend']} "
        f"({len(info['jax_devices'])} devices), {info['allocators']['jax']}; load average "
        f"before {loads[0]}, after {loads[1]}. Each arm in its own worker process, the two "
        f"driven in turns; seconds are medians of {args.repeats} repeats; compilation cache "
        "off. Training: one epoch of Qlib's config with the home's levers; inference: "
        "`predict` over the samples. Difference: largest absolute gap between the arms' "
        "predictions from the same weights.",
        "",
        *table_head(
            [
                "model",
                "rows",
                "epoch s einsums",
                "epoch s library",
                "train speed-up",
                "predict s einsums",
                "predict s library",
                "predict speed-up",
                "compile s einsums / library",
                "difference (scale)",
            ],
            "lrrrrrrrrr",
        ),
    ]
    for name, r in results.items():
        s = {k: {arm: median(v[arm]) for arm in ARMS} for k, v in r["seconds"].items()}
        lines.append(
            f"| {name} | {r['rows']} | {s['epoch']['einsums']:.2f} | {s['epoch']['library']:.2f} "
            f"| {r['speedup']['epoch']:.2f}x | {s['predict']['einsums']:.3f} "
            f"| {s['predict']['library']:.3f} | {r['speedup']['predict']:.2f}x "
            f"| {r['compile_s']['einsums']:.1f} / {r['compile_s']['library']:.1f} "
            f"| {r['max_prediction_difference']:.1e} ({r['prediction_scale']:.2f}) |"
        )
    return lines


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", default=",".join(MODELS))
    p.add_argument("--samples", type=int, default=8192)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--out", default=None, help="folder for attention_cpu[_TAG].md / .json")
    p.add_argument("--tag", default=None, help="suffix of the report's file name")
    args = p.parse_args(argv)
    names = chosen_models(p, args.models, MODELS)
    import qjax  # noqa: F401  (the parent's device count, as the workers see it)

    measure_each_model(
        "attention",
        names,
        lambda name: measure(name, args.samples, args.repeats),
        report,
        args,
        "attention_cpu" + (f"_{args.tag}" if args.tag else ""),
    )


if __name__ == "__main__":
    main()
