"""TabNet's self-supervised pretraining on 2 CPU cores: device layout x matrix-product backend.

Qlib's TabnetModel pretrains its encoder and decoder for up to 50 epochs before fine-tuning, so
this stage is most of a TabNet fit. Its pretraining network is not a registered model, so it
used to get the engine's defaults (each batch split over the CPU devices, XLA's YNNPACK dots)
rather than TabNet's own levers. One pretraining epoch (Qlib's settings: batch 4096, ghost
batches of 2048, Adam at lr 0.01, no clipping, mask probability 0.3; random N(0, 1) features of
Alpha158's width) in four layouts, each compiled first, then timed in turns with the order
rotating (medians of ``--repeats``):

- each batch split over the CPU devices or whole on one device (``TrainConfig.cpu_split``);
- XLA's default dots (YNNPACK) or Eigen (``TrainConfig.cpu_dots``).

    python benchmarks/tabnet_pretrain_cpu.py --out benchmarks/results
"""

from __future__ import annotations

import argparse
import dataclasses
import sys

import jax
import numpy as np
import pandas as pd
from _common import command_line, load_average, machine, median, publish, rotate

from qjax.data.samples import tabular_samples
from qjax.models.tabnet.network import TabNetFinetune
from qjax.models.tabnet.objectives import TabNetPretrainObjective
from qjax.models.tabnet.pretrain import PretrainStage, pretrain_config
from qjax.models.tabnet.wrapper import DEFAULTS, module_kwargs

FEATURES = 158
STOCKS = 256
CHOSEN = " (the stage's choice)"


def samples(n: int, seed: int, features: int = FEATURES):
    rng = np.random.default_rng(seed)
    days = pd.bdate_range("2015-01-05", periods=-(-n // STOCKS))
    index = pd.MultiIndex.from_product(
        [days, [f"S{k:03d}" for k in range(STOCKS)]], names=["datetime", "instrument"]
    )[:n]
    x = rng.standard_normal((n, features), dtype=np.float32)
    return tabular_samples(x, np.full(n, np.nan, np.float32), index)


def measure(n_samples: int, repeats: int, features: int = FEATURES) -> dict:
    from qjax.train import fit

    kw = {**DEFAULTS, "d_feat": features, "pretrain_n_epochs": 1}
    stage = PretrainStage(TabNetFinetune(**module_kwargs(kw, False)).pretrainer())
    train, valid = samples(n_samples, 0, features), samples(kw["batch_size"], 1, features)
    home = pretrain_config(kw)
    layouts = {
        f"{'split' if split else 'one device'}, {dots}": dataclasses.replace(
            home, cpu_split=split, cpu_dots=dots
        )
        for split in (True, False)
        for dots in ("default", "eigen")
    }
    objective = TabNetPretrainObjective(float(kw["ps"]))
    ran = {}

    def epoch(name, config):
        def run():
            result = fit(stage, train, valid, config, loss_fn=objective, verbose=False)
            jax.block_until_ready(result.variables)
            ran[name] = result.n_devices

        return run

    runs = {name: epoch(name, config) for name, config in layouts.items()}
    for run in runs.values():
        run()  # compile
    seconds = rotate(runs, repeats)
    home_name = f"{'split' if home.cpu_split in (None, True) else 'one device'}, {home.cpu_dots}"
    return {
        "samples": n_samples,
        "home": home_name,
        "devices": ran,
        "seconds": seconds,
        "median_s": {name: median(s["wall"]) for name, s in seconds.items()},
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--samples", type=int, default=16384, help="pretraining rows per epoch")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--features", type=int, default=FEATURES, help="feature columns")
    p.add_argument("--out", help="write tabnet_pretrain_cpu.{md,json} here")
    p.add_argument("--tag", default="", help="result name suffix: tabnet_pretrain_cpu_<tag>")
    args = p.parse_args(argv)
    before = load_average()
    result = measure(args.samples, args.repeats, args.features)
    record = {
        "command": command_line(),
        "load_before": before,
        "load_after": load_average(),
        "machine": machine(),
        "repeats": args.repeats,
        **result,
    }
    base = result["median_s"]["split, default"]
    lines = [
        "# TabNet's pretraining epoch on XLA:CPU: device layout x matrix-product backend",
        "",
        f"Command: `{record['command']}`",
        "",
        f"{record['machine']['cpu']}, {record['machine']['logical_cores']} logical cores; load "
        f"average before {before}, after {record['load_after']}. One pretraining epoch of "
        f"{args.samples} rows x {args.features} features with Qlib's settings, medians of "
        f"{args.repeats} in turns. Speed-up against the engine's defaults (split, default), "
        "which the stage had before it got its own levers.",
        "",
        "| layout (batches, dots) | devices | epoch s | speed-up |",
        "|---|---:|---:|---:|",
        *[
            f"| {name}{CHOSEN if name == result['home'] else ''} | "
            f"{result['devices'][name]} | {s:.3f} | {base / s:.2f}x |"
            for name, s in result["median_s"].items()
        ],
        "",
        f"Versions: {record['machine']['versions']}; environment: {record['machine']['env']}.",
    ]
    publish(lines, args.out, "tabnet_pretrain_cpu" + (f"_{args.tag}" if args.tag else ""), record)
    return 0


if __name__ == "__main__":
    sys.exit(main())
