"""Alpha360: peak memory and LSTM training speed, flat rows vs rows computed in the gather.

Each case runs in a fresh process (peak RSS is per process): it generates a market, builds the
train samples (the flat path: handler frame -> RobustZScoreNorm + Fillna -> [n, 360] rows; the
gather path: the [instruments, days, 6] panel and 2 x 360 fitted constants), then fits Qlib's
Alpha360 LSTM (hidden 64, 2 layers, batch 800) for a fixed number of steps through the
training engine, twice: the first fit compiles, the second is timed.

    python benchmarks/alpha360_memory.py --out benchmarks/results
    python benchmarks/alpha360_memory.py --large 5000x3780 --steps 40 --repeats 2

Cases: ``flat`` and ``gather`` at CSI300 size (300 instruments x 560 days, of which about 500
are sample days: 2 years), alternated ``--repeats`` times; ``gather`` at ``--large`` once.
Reports peak RSS (``getrusage``), RSS after the samples are built, the bytes of the feature
storage on the device, JAX's device memory statistics where the backend has them, and train
samples/s (timed fit minus its compile seconds).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

from _common import command_line, load_average, machine, median, publish

CSI300 = (300, 560)
LSTM = {"d_feat": 6, "hidden_size": 64, "num_layers": 2, "dropout": 0.0}
INFER = [
    {"class": "RobustZScoreNorm", "kwargs": {"fields_group": "feature", "clip_outlier": True}},
    {"class": "Fillna", "kwargs": {"fields_group": "feature"}},
]
LEARN = [{"class": "DropnaLabel"}, {"class": "CSRankNorm", "kwargs": {"fields_group": "label"}}]


def rss_now_gib() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 2**20
    return float("nan")


def peak_rss_gib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB on Linux


def device_memory() -> dict | None:
    import jax

    stats = jax.devices()[0].memory_stats()
    if not stats:
        return None
    keys = ("bytes_in_use", "peak_bytes_in_use", "bytes_limit")
    return {k: stats[k] / 2**30 for k in keys if k in stats}


def train_samples(path: str, n_instruments: int, n_days: int, fit_days: int | None):
    """(train samples, feature bytes on the device, seconds to build)."""
    import numpy as np
    import pandas as pd

    from qjax.data import features
    from qjax.data.market import generate_market

    market = generate_market(n_instruments, n_days, seed=0)
    dates = market.index.get_level_values("datetime").unique().sort_values()
    train = (dates[0], dates[-3])  # the last two days have no label
    fit = train if fit_days is None else (dates[-3 - fit_days], dates[-3])
    segments = {"train": train}
    t0 = time.perf_counter()
    if path == "flat":
        from qjax.data.dataset import Dataset
        from qjax.data.handler import DataHandler

        frame = features.handler_frame("Alpha360", market, *train)
        handler = DataHandler(frame, INFER, LEARN, fit_start_time=fit[0], fit_end_time=fit[1])
        del frame
        samples, _ = Dataset(handler, segments).samples("train")
        del handler
        stored = samples.features.nbytes
    else:
        from qjax.data.alpha360 import Alpha360GatherDataset, alpha360_panel

        panel = alpha360_panel(*features.handler_fields(market, *train))
        del market
        dataset = Alpha360GatherDataset(panel, segments, INFER, LEARN, *fit)
        samples, _ = dataset.samples("train")
        stored = sum(np.asarray(v).nbytes for v in samples.features.values())
    del pd
    return samples, stored, time.perf_counter() - t0


def run_case(path: str, n_instruments: int, n_days: int, steps: int, fit_days: int | None):
    from qjax.models.rnn.network import LSTMModel
    from qjax.train.config import TrainConfig
    from qjax.train.engine import fit

    samples, stored, build_s = train_samples(path, n_instruments, n_days, fit_days)
    after_build = {"rss_gib": rss_now_gib(), "peak_rss_gib": peak_rss_gib()}
    config = TrainConfig(
        batching="steps", max_steps=steps, eval_steps=steps, batch_size=800, cpu_split=False
    )
    module = LSTMModel(**LSTM)
    fits = []
    for _ in range(2):  # the first compiles
        t0 = time.perf_counter()
        result = fit(module, samples, None, config, verbose=False)
        wall = time.perf_counter() - t0
        fits.append({"wall_s": wall, "compile_s": result.compile_seconds})
    timed = fits[-1]
    return {
        "path": path,
        "instruments": n_instruments,
        "days": n_days,
        "train_samples": samples.size,
        "feature_storage_gib": stored / 2**30,
        "flat_storage_would_be_gib": samples.size * 360 * 4 / 2**30,
        "build_s": build_s,
        "after_build": after_build,
        "peak_rss_gib": peak_rss_gib(),
        "device_memory_gib": device_memory(),
        "steps": steps,
        "fits": fits,
        "train_samples_per_s": steps * 800 / max(timed["wall_s"] - timed["compile_s"], 1e-9),
        "load_average": load_average(),
    }


def spawn(path: str, size: tuple[int, int], steps: int, fit_days: int | None) -> dict:
    args = [sys.executable, __file__, "--case", path, f"--size={size[0]}x{size[1]}"]
    args += [f"--steps={steps}"] + ([f"--fit-days={fit_days}"] if fit_days else [])
    out = subprocess.run(args, check=True, capture_output=True, text=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def size_arg(text: str) -> tuple[int, int]:
    n, d = text.lower().split("x")
    return int(n), int(d)


def report(cases: list[dict], meta: dict) -> list[str]:
    lines = [
        "# Alpha360: flat rows vs rows computed in the gather",
        "",
        f"`{meta['command']}`",
        "",
        f"Machine: {meta['machine']['cpu']}, {meta['machine']['logical_cores']} cores, "
        f"{meta['machine']['ram_gib']} GiB, JAX {meta['machine']['jax_backend']}; shared with "
        f"other jobs (load average before {meta['load_before']}, after {meta['load_after']}).",
        "LSTM (hidden 64, 2 layers) on Alpha360, batch 800, fixed steps of the training engine; "
        "samples/s of the second fit minus its compile seconds. Peak RSS is the whole process "
        "(market generation and data building included).",
        "",
        "| path | instruments x days | train samples | feature storage GiB | flat would be GiB "
        "| RSS after build GiB | peak RSS GiB | device peak GiB | build s | train samples/s "
        "| load avg (1 min) |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for c in cases:
        device = (c["device_memory_gib"] or {}).get("peak_bytes_in_use")
        lines.append(
            f"| {c['path']} | {c['instruments']} x {c['days']} | {c['train_samples']:,} "
            f"| {c['feature_storage_gib']:.3f} | {c['flat_storage_would_be_gib']:.2f} "
            f"| {c['after_build']['rss_gib']:.2f} | {c['peak_rss_gib']:.2f} "
            f"| {'n/a' if device is None else f'{device:.2f}'} | {c['build_s']:.1f} "
            f"| {c['train_samples_per_s']:.0f} | {c['load_average'][0]:.1f} |"
        )
    summary = meta["summary"]
    lines += [
        "",
        "Medians over the repeats: "
        + ", ".join(f"{k} {v:.0f} samples/s" for k, v in summary["samples_per_s"].items())
        + ".",
    ]
    for name, ratio in summary["ratios"].items():
        lines.append(f"- {name}: {ratio:.2f}x")
    lines += [
        "",
        "Notes:",
        "- Feature storage: the gather path keeps the [instruments, 59 + days, 6] float32 panel "
        "and each sample's day and instrument (int32, 8 bytes), against 1,440 bytes per sample "
        "flat; hence about 40x, not 60x. Labels, weights and day numbers (12 bytes per sample) "
        "are the same on both paths and not counted.",
        "- Norm fit: RobustZScoreNorm over the whole train span at CSI300 size, and over "
        + (
            f"the last {meta['large_fit_days']} days of the large market"
            if meta["large_fit_days"]
            else "the whole train span of the large market too"
        )
        + " ('build s' includes it: one column of the fit rows at a time, so memory holds "
        "one column, never [rows, 360]).",
        "- Peak RSS includes generating the market (a pandas frame of every row) and "
        "`handler_fields`; 'RSS after build' is what training holds.",
        "- Speed is per train sample of fixed-size steps; the large market's samples are not "
        "slower to gather: one window is a contiguous [60, 6] block of the "
        "instrument-major panel.",
    ]
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--large", type=size_arg, default=(5000, 3780), help="instruments x days")
    parser.add_argument("--steps", type=int, default=40, help="train steps per timed fit")
    parser.add_argument("--repeats", type=int, default=2, help="CSI300-size flat/gather pairs")
    parser.add_argument(
        "--large-fit-days",
        type=int,
        default=0,
        help="days of the large market's norm fit window, its last ones (0: the whole train "
        "span, as at CSI300 size); the fit reads one column of those rows at a time",
    )
    parser.add_argument("--out", default=None, help="folder for alpha360_memory.{md,json}")
    parser.add_argument(
        "--render", default=None, help="rewrite the .md of this results .json (no runs)"
    )
    parser.add_argument("--case", choices=("flat", "gather"), help=argparse.SUPPRESS)
    parser.add_argument("--size", type=size_arg, help=argparse.SUPPRESS)
    parser.add_argument("--fit-days", type=int, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.render:  # the report of a finished run, e.g. after changing its wording
        payload = json.loads(Path(args.render).read_text())
        lines = report(payload["cases"], payload)
        Path(args.render).with_suffix(".md").write_text("\n".join(lines) + "\n")
        return
    if args.case:  # one case in this fresh process
        print(json.dumps(run_case(args.case, *args.size, args.steps, args.fit_days)))
        return

    load_before = load_average()
    cases = []
    for _ in range(args.repeats):  # alternate, so the shared machine's load hits both
        for path in ("flat", "gather"):
            cases.append(spawn(path, CSI300, args.steps, None))
            print(json.dumps(cases[-1]), file=sys.stderr)
    cases.append(spawn("gather", args.large, args.steps, args.large_fit_days))
    print(json.dumps(cases[-1]), file=sys.stderr)

    def speed(path, size):
        return median(
            [
                c["train_samples_per_s"]
                for c in cases
                if (c["path"], c["instruments"]) == (path, size)
            ]
        )

    flat, gather, large = speed("flat", CSI300[0]), speed("gather", CSI300[0]), cases[-1]
    summary = {
        "samples_per_s": {
            "flat CSI300-size": flat,
            "gather CSI300-size": gather,
            f"gather {args.large[0]}x{args.large[1]}": large["train_samples_per_s"],
        },
        "ratios": {
            "gather / flat, CSI300 size (speed)": gather / flat,
            "gather large / flat CSI300 size (speed; target >= 0.8)": large["train_samples_per_s"]
            / flat,
            "flat / gather feature storage, CSI300 size": median(
                [c["feature_storage_gib"] for c in cases if c["path"] == "flat"]
            )
            / median(
                [
                    c["feature_storage_gib"]
                    for c in cases
                    if c["path"] == "gather" and c["instruments"] == CSI300[0]
                ]
            ),
            "flat / gather feature storage, large (flat not run: computed)": large[
                "flat_storage_would_be_gib"
            ]
            / large["feature_storage_gib"],
        },
    }
    meta = {
        "command": command_line(),
        "machine": machine(),
        "load_before": load_before,
        "load_after": load_average(),
        "large_fit_days": args.large_fit_days,
        "summary": summary,
        "env": {k: os.environ.get(k) for k in ("XLA_FLAGS", "JAX_PLATFORMS") if k in os.environ},
    }
    publish(report(cases, meta), args.out, "alpha360_memory", {**meta, "cases": cases})


if __name__ == "__main__":
    main()
