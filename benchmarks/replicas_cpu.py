"""Several seeds on 2 CPU cores: the seeds split over the CPU devices, against a split batch,
one device and Qlib's PyTorch loop over the seeds, in one run.

Qlib's published tables are means over many seeds, so a user trains the same model several
times. qjax trains the seeds as replicas of one compiled program (``fit(..., seeds=[...])``).
Layouts timed, per model, for ``--seeds`` seeds of one epoch:

- **replicas**: whole replicas per CPU device, no traffic between devices (``split="seeds"``);
- **batch**: every batch split over all CPU devices (``split="batch"``, ``devices=jax.devices()``);
- **one**: one CPU device (``devices=jax.devices()[:1]``);
- **torch**: Qlib's train loop (``train_vs_torch.TorchRunner``), one fit per seed in turn.

Each variant compiles once, then all are timed in turns (the order rotates every repeat);
rates are medians of seed-samples per second. Ratios are within this run. ``fit``'s own choice
(:func:`qjax.train.parallel.choose_parallel`) follows from these numbers.

    python benchmarks/replicas_cpu.py --models lstm,gru,krnn --seeds 8 --out benchmarks/results
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
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import train_vs_torch as tvt  # noqa: E402
from _common import (
    command_line,
    load_average,
    machine,
    median,
    publish,
    results_table,
    timed,
)  # noqa: E402

from qjax.compilation import CompileClock  # noqa: E402
from qjax.train import fit  # noqa: E402

LAYOUTS = ("replicas", "batch", "one")


def layout(name: str) -> dict:
    """``fit``'s keyword arguments for a layout."""
    return {
        "replicas": {"split": "seeds"},
        "batch": {"split": "batch", "devices": jax.devices()},
        "one": {"devices": jax.devices()[:1]},
    }[name]


def run_model(case: tvt.Case, n_samples: int, n_seeds: int, repeats: int, device) -> dict:
    import torch

    import qjax.models

    module = qjax.models.get(case.name)(**case.qjax_kwargs)
    n = tvt.case_samples(case, n_samples)
    data = tvt.make_data(case, n, seed=0)
    samples = tvt.qjax_samples(case, data)
    config = dataclasses.replace(tvt.train_config(case, data.n), n_epochs=1)
    seeds = list(range(n_seeds))

    def qjax_job(name: str):
        def run():
            result = fit(module, samples, None, config, seeds=seeds, verbose=False, **layout(name))
            jax.block_until_ready(result.variables)
            return result

        return run

    def torch_job():  # a loop over seeds of Qlib's fit, one epoch each
        for seed in seeds:
            runner = tvt.TorchRunner(case, data, device)
            torch.manual_seed(seed)
            np.random.seed(seed)  # noqa: NPY002
            runner.train_epoch()

    jobs = {name: qjax_job(name) for name in LAYOUTS}
    compile_s, devices = {}, {}
    for name, job in jobs.items():
        with CompileClock.measure() as got:
            result = job()
        compile_s[name] = got["seconds"]
        devices[name] = {"batch": result.n_devices, "replicas": result.replica_devices}
    tvt.TorchRunner(case, data, device).train_epoch(max_steps=1)  # torch warm-up
    jobs["torch"] = torch_job
    order = list(jobs)
    seconds: dict[str, list[float]] = {name: [] for name in order}
    for r in range(repeats):
        for name in order[r % len(order) :] + order[: r % len(order)]:
            seconds[name].append(timed(jobs[name]))
    rows = tvt.trained_samples(case, data.n) * len(seeds)
    rate = {name: rows / median(s) for name, s in seconds.items()}
    return {
        "samples": data.n,
        "batch_size": case.batch_size,
        "seeds": n_seeds,
        "seconds": seconds,
        "compile_s": compile_s,
        "devices": devices,
        "seed_samples_per_s": rate,
        "speedup_vs_torch": {name: rate[name] / rate["torch"] for name in LAYOUTS},
        "replicas_vs_batch": rate["replicas"] / rate["batch"],
    }


def _rates_row(name: str, r: dict) -> str:
    rate, up = r["seed_samples_per_s"], r["speedup_vs_torch"]
    return (
        f"| {name} | {r['samples']} | "
        + " | ".join(f"{rate[k]:,.0f}" for k in (*LAYOUTS, "torch"))
        + " | "
        + " | ".join(f"{up[k]:.2f}x" for k in LAYOUTS)
        + f" | {r['replicas_vs_batch']:.2f}x |"
    )


def report(record: dict) -> list[str]:
    m = record["machine"]
    lines = [
        f"# {record['seeds']} seeds per model on {m.get('cpu', 'cpu')}: seeds split over the "
        "CPU devices vs a split batch vs torch",
        "",
        f"Command: `{record['command']}`",
        "",
        f"Run {record['started']}, {record['repeats']} repeats (medians); load average "
        f"(1/5/15 min) before {record['load_average_before']}, after "
        f"{record['load_average_after']}. Rates are seed-samples per second of one epoch per "
        "seed; speed-up = qjax rate / torch rate (above 1: qjax is faster).",
        "",
        *results_table(
            [
                *("model", "samples", "replicas/s", "batch/s", "one/s", "torch/s"),
                *("replicas vs torch", "batch vs torch", "one vs torch", "replicas vs batch"),
            ],
            "l" + "r" * 9,
            record["models"],
            _rates_row,
            failed="error",
        ),
        "",
        'Layouts: replicas = whole replicas per CPU device (`split="seeds"`); batch = each '
        "batch split over all CPU devices; one = one CPU device. torch = Qlib's "
        f"train loop, the seeds in turn, {m.get('torch_threads', 'all')} threads.",
        "",
        f"Versions: {m['versions']}; environment: {m['env'] or 'none set'}.",
    ]
    return lines


def torch_for_cpu_runs():
    """torch on every usable core, Qlib's logging quiet (and its HIST kept off CUDA)."""
    from qlib.config import C

    C.logging_level = logging.WARNING
    warnings.filterwarnings("ignore")
    import torch

    torch.set_num_threads(tvt.usable_cores())
    torch.get_device = lambda tensor: "cpu"  # Qlib's HIST asks for a CUDA device
    return torch


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", default="lstm,gru,alstm,krnn,tabnet,gats,transformer,tcn")
    p.add_argument("--samples", type=int, default=3200, help="train samples (scaled per model)")
    p.add_argument("--seeds", type=int, default=8)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--out", default=None)
    p.add_argument("--tag", default="", help="result name suffix: replicas_cpu_<tag>.{md,json}")
    args = p.parse_args(argv)
    names = [m.strip().lower() for m in args.models.split(",") if m.strip()]
    unknown = sorted(set(names) - set(tvt.CASES))
    if unknown:
        p.error(f"unknown model(s) {unknown}; choose from {', '.join(tvt.CASES)}")
    if args.repeats < 3 or args.seeds < 2:
        p.error("--repeats must be >= 3 (medians of at least three) and --seeds >= 2")

    torch = torch_for_cpu_runs()
    record = {
        "command": command_line(),
        "started": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "repeats": args.repeats,
        "seeds": args.seeds,
        "load_average_before": load_average(),
        "machine": machine(torch),
        "models": {},
    }
    for name in names:
        print(f"[replicas] {name} ...", file=sys.stderr, flush=True)
        try:
            record["models"][name] = run_model(
                tvt.CASES[name], args.samples, args.seeds, args.repeats, torch.device("cpu")
            )
        except Exception as err:  # keep the other models' numbers
            import traceback

            traceback.print_exc()
            record["models"][name] = {"error": f"{type(err).__name__}: {err}"}
            continue
        up = record["models"][name]["speedup_vs_torch"]
        print("    " + ", ".join(f"{k} {v:.2f}x" for k, v in up.items()), file=sys.stderr)
    record["load_average_after"] = load_average()
    name = f"replicas_cpu_{args.tag}" if args.tag else "replicas_cpu"
    publish(report(record), args.out, name, record)


if __name__ == "__main__":
    main()
