"""Evaluation inside ``fit`` on XLA:CPU: whole batches vs the forward in chunks of rows.

Every epoch ``fit`` evaluates the validation set (and, as Qlib does, the train set with
``eval_train=True``) in batches of the training batch size: 2048 rows for the Transformer, 800
for the LSTM. ``predict`` had already been measured faster in smaller batches on CPU (the homes'
``cpu_predict_batch``, ``benchmarks/results/predict_levers_cpu*.md``); ``TrainConfig.cpu_eval_rows``
gives evaluation the same, by running each batch's forward in chunks of that many rows inside
the compiled program (same numbers up to summation order, either evaluation protocol).

Per model (Qlib's Alpha360 settings, random N(0, 1) data): one ``fit`` epoch whose train
segment is one batch and whose validation segment is ``--valid-samples`` rows (scaled per model
as in ``train_vs_torch.py``, at least two batches), so the evaluation is most of the time. Each
variant is compiled first, then all are timed in turns with the order rotating (medians of
``--repeats``). The variants: whole batches ("off"), the home's choice, and ``--rows``.

    python benchmarks/eval_rows_cpu.py --out benchmarks/results
"""

from __future__ import annotations

import argparse
import dataclasses
import sys

import jax
import numpy as np
from _common import (
    chosen_models,
    command_line,
    load_average,
    machine,
    median,
    publish,
    results_table,
    rotate,
)
from train_vs_torch import CASES, make_data, qjax_samples, train_config

import qjax
from qjax.train import fit, levers

ROW_MODELS = ("lstm", "gru", "alstm", "krnn", "transformer", "localformer", "tabnet", "sfm", "tcn")


def home_rows(name: str, module) -> int | str:
    """The model family's ``cpu_eval_rows`` as ``fit`` resolves it."""
    config = levers.resolve(qjax.train.TrainConfig(), type(module))
    return config.cpu_eval_rows


def measure(name: str, valid_samples: int, rows: list[int], repeats: int) -> dict:
    case = CASES[name]
    module = qjax.models.get(name)(**case.qjax_kwargs)
    n_valid = max(int(round(valid_samples * case.sample_share)), 2 * case.batch_size)
    train = qjax_samples(case, make_data(case, case.batch_size, seed=0))
    valid = qjax_samples(case, make_data(case, n_valid, seed=1))
    home = home_rows(name, module)
    base = dataclasses.replace(train_config(case, case.batch_size), n_epochs=1)
    variants = {"off": "off", **{str(r): r for r in rows}}
    if home != "off":
        variants[str(home)] = home
    losses = {}

    def run(label, value):
        config = dataclasses.replace(base, cpu_eval_rows=value)

        def once():
            result = fit(module, train, valid, config, verbose=False)
            losses[label] = float(np.ravel(result.history["valid_loss"])[0])

        return once

    runs = {label: run(label, value) for label, value in variants.items()}
    for once in runs.values():
        once()  # compile
    seconds = rotate(runs, repeats)
    median_s = {label: median(s["wall"]) for label, s in seconds.items()}
    reference = losses["off"]
    return {
        "valid_samples": n_valid,
        "batch_size": case.batch_size,
        "home": str(home),
        "seconds": seconds,
        "median_s": median_s,
        "speedup": {label: median_s["off"] / s for label, s in median_s.items()},
        "valid_loss": losses,
        "relative_difference": {
            label: abs(loss - reference) / abs(reference) for label, loss in losses.items()
        },
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--models", default=",".join(ROW_MODELS))
    p.add_argument("--valid-samples", type=int, default=9600)
    p.add_argument("--rows", default="128,256", help="chunk rows to try besides the home's")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--out", help="write eval_rows_cpu.{md,json} here")
    args = p.parse_args(argv)
    models = chosen_models(p, args.models, ROW_MODELS)
    rows = [int(r) for r in args.rows.split(",") if r.strip()]
    before = load_average()
    results = {}
    for name in models:
        print(f"[eval rows] {name} ...", file=sys.stderr, flush=True)
        results[name] = measure(name, args.valid_samples, rows, args.repeats)
    record = {
        "command": command_line(),
        "load_before": before,
        "load_after": load_average(),
        "machine": machine(),
        "devices": len(jax.devices()),
        "repeats": args.repeats,
        "models": results,
    }
    labels = ["off", *[str(r) for r in rows]]

    def row(name: str, r: dict) -> str:
        cells = []
        for label in labels:
            mark = " (home)" if label == r["home"] else ""
            cells.append(f"{r['median_s'][label]:.3f} ({r['speedup'][label]:.2f}x){mark}")
        home = r["home"]
        home_cell = "whole batches" if home == "off" else home
        if home not in labels:
            home_cell += f": {r['median_s'][home]:.3f} s ({r['speedup'][home]:.2f}x)"
        worst = max(r["relative_difference"].values())
        return (
            f"| {name} | {r['batch_size']} | {r['valid_samples']} | {' | '.join(cells)} | "
            f"{home_cell} | {worst:.1e} |"
        )

    m = record["machine"]
    lines = [
        "# Evaluation in fit on XLA:CPU: whole batches vs the forward in chunks of rows",
        "",
        f"Command: `{record['command']}`",
        "",
        f"{m['cpu']}, {m['logical_cores']} logical cores, {record['devices']} XLA devices; load "
        f"average before {before}, after {record['load_after']}. One `fit` epoch of one train "
        "batch and the validation rows shown, so evaluation is most of it; seconds are medians "
        f"of {args.repeats} in turns, speed-up against whole batches (`cpu_eval_rows='off'`).",
        "",
        *results_table(
            ["model", "batch", "valid rows", *[f"{label} s" for label in labels], "home"]
            + ["max rel. diff"],
            "lrr" + "r" * len(labels) + "lr",
            results,
            row,
        ),
        "",
        "max rel. diff: the largest relative difference of the validation loss from whole "
        "batches (float32 summation order).",
        "",
        f"Versions: {m['versions']}; environment: {m['env']}.",
    ]
    publish(lines, args.out, "eval_rows_cpu", record)
    return 0


if __name__ == "__main__":
    sys.exit(main())
