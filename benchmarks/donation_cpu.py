"""Buffer donation on XLA:CPU: the epoch program with its state donated (the engine's) or not.

``qjax.train.engine`` donates the run state (variables, optimiser moments, best variables) to
every epoch program, so XLA writes the next state into the same buffers. This times ``fit`` of
Qlib's config (``train_vs_torch.CASES``, the home's levers, ``--epochs`` epochs) per model
with the engine's epoch programs and with the same programs jitted without donation; both sets
live in one process (separate ``jit`` objects, so each compiles its own), timed in turns, the
order rotating every repeat. The two runs' final variables must be equal.

    python benchmarks/donation_cpu.py --repeats 5 --out benchmarks/results
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path

import jax
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import train_vs_torch as tvt  # noqa: E402
from _common import (  # noqa: E402
    chosen_models,
    command_line,
    measure_each_model,
    median,
    rotate,
    table_head,
)

import qjax.models  # noqa: E402
from qjax.compilation import jit_per_cpu_choice  # noqa: E402
from qjax.train import engine, fit  # noqa: E402

MODELS = ("mlp", "lstm", "transformer", "tabnet", "hist")
ARMS = ("donated", "not donated")
PROGRAMS = {
    "donated": engine._EPOCH_PROGRAMS,
    "not donated": jit_per_cpu_choice(
        engine._epoch_program, static_argnames=("trainer", "n_steps")
    ),
}


def measure(name: str, n_samples: int, epochs: int, repeats: int) -> dict:
    case = tvt.CASES[name]
    module = qjax.models.get(name)(**case.qjax_kwargs)
    data = tvt.make_data(case, tvt.case_samples(case, n_samples), seed=0)
    samples = tvt.qjax_samples(case, data)
    config = dataclasses.replace(tvt.train_config(case, data.n), n_epochs=epochs)
    results = {}

    def run(arm: str):
        def call():
            engine._EPOCH_PROGRAMS = PROGRAMS[arm]
            try:
                result = fit(module, samples, samples, config, verbose=False)
                results[arm] = jax.device_get(result.variables)
            finally:
                engine._EPOCH_PROGRAMS = PROGRAMS["donated"]

        return call

    runs = {arm: run(arm) for arm in ARMS}
    for call in runs.values():
        call()  # compiles
    seconds = rotate(runs, repeats)
    gaps = jax.tree.leaves(
        jax.tree.map(lambda a, b: float(np.max(np.abs(a - b))), *(results[a] for a in ARMS))
    )
    wall = {arm: median(seconds[arm]["wall"]) for arm in ARMS}
    return {
        "samples": data.n,
        "epochs": epochs,
        "seconds": seconds,
        "speedup": wall["not donated"] / wall["donated"],
        "max_variable_difference": max(gaps),
    }


def report(results: dict, info: dict, loads: tuple, args) -> list[str]:
    lines = [
        "# Buffer donation on XLA:CPU: the epoch program's state donated or not",
        "",
        f"Command: `{command_line()}`",
        "",
        f"{info['cpu']}, {info['logical_cores']} logical cores, JAX {info['jax_backend']} "
        f"({len(info['jax_devices'])} devices), {info['allocators']['jax']}; load average "
        f"before {loads[0]}, after {loads[1]}. One `fit` of {args.epochs} epochs (train and "
        f"valid on the same samples) per arm, in turns; seconds are medians of {args.repeats}. "
        "Difference: largest absolute gap between the two arms' final variables.",
        "",
        *table_head(
            ["model", "samples", "donated s", "not donated s", "donation speed-up", "difference"],
            "lrrrrr",
        ),
    ]
    for name, r in results.items():
        s = {arm: median(r["seconds"][arm]["wall"]) for arm in ARMS}
        lines.append(
            f"| {name} | {r['samples']} | {s['donated']:.2f} | {s['not donated']:.2f} "
            f"| {r['speedup']:.2f}x | {r['max_variable_difference']:.1e} |"
        )
    return lines


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", default=",".join(MODELS))
    p.add_argument("--samples", type=int, default=4800)
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--out", default=None, help="folder for donation_cpu.md / .json")
    args = p.parse_args(argv)
    names = chosen_models(p, args.models, MODELS)
    measure_each_model(
        "donation",
        names,
        lambda name: measure(name, args.samples, args.epochs, args.repeats),
        report,
        args,
        "donation_cpu",
    )


if __name__ == "__main__":
    main()
