"""The micro-batch cache budget on XLA:CPU: one epoch per budget, per model, against torch.

The engine splits a row batch into chunks whose widest activation fits a byte budget
(``qjax.train.microbatch.CACHE_BUDGET_BYTES``). This sweeps that budget: for each one, ``fit``
with its defaults (every CPU device, ``micro_batch`` automatic) picks its chunk count under the
budget; variants that pick the same count are timed once. Whole batches (no chunks) and Qlib's
torch loop are timed alongside, in turns (the order rotates every repeat), after one compiling
call each; rates are medians. The caches this process's CPU reports are recorded, since the
best budget depends on them.

    python benchmarks/microbatch_budget_cpu.py --models lstm,gru,alstm,transformer,tcn \\
        --budgets 2,8,32,128 --samples 4800 --repeats 5 --out benchmarks/results
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import logging
import sys
import warnings
from pathlib import Path
from unittest import mock

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
    timed,
)

from qjax.train import fit, microbatch  # noqa: E402


def cpu_caches() -> list[dict]:
    """Level, type, size and sharing of each cache of CPU 0, as Linux reports them."""
    out = []
    for index in sorted(Path("/sys/devices/system/cpu/cpu0/cache").glob("index*")):
        try:
            read = lambda name: (index / name).read_text().strip()  # noqa: E731
            out.append(
                {
                    "level": int(read("level")),
                    "type": read("type"),
                    "size": read("size"),
                    "shared_cpu_list": read("shared_cpu_list"),
                }
            )
        except OSError:
            continue
    return out


def run_model(case: tvt.Case, budgets_mib: list[int], args, device) -> dict:
    import qjax.models

    module = qjax.models.get(case.name)(**case.qjax_kwargs)
    n = tvt.case_samples(case, args.samples)
    data = tvt.make_data(case, n, seed=0)
    samples = tvt.qjax_samples(case, data)
    base = tvt.train_config(case, data.n)
    runner = tvt.TorchRunner(case, data, device)
    rows = tvt.trained_samples(case, data.n)

    def epoch(budget_bytes: int | None):
        config = dataclasses.replace(base, micro_batch="off" if budget_bytes is None else None)

        def run():
            with mock.patch.object(microbatch, "CACHE_BUDGET_BYTES", budget_bytes):
                result = fit(module, samples, None, config, verbose=False)
            jax.block_until_ready(result.variables)
            return result

        return run

    # Compile every budget's variant; keep one per distinct chunk count.
    runs, chunks_of, budgets_of = {}, {}, {}
    for budget in [None, *budgets_mib]:
        run = epoch(None if budget is None else budget * 2**20)
        chunks = run().micro_batches
        label = "whole" if chunks == 1 else f"{base.batch_size // chunks} rows"
        budgets_of.setdefault(label, []).append("off" if budget is None else budget)
        if label not in runs:
            runs[label], chunks_of[label] = run, chunks
    runner.train_epoch(max_steps=1)  # torch warm-up
    order = [*runs, "torch"]
    seconds: dict[str, list[float]] = {name: [] for name in order}
    for r in range(args.repeats):
        for name in order[r % len(order) :] + order[: r % len(order)]:
            seconds[name].append(timed(runs[name] if name != "torch" else runner.train_epoch))
    torch_rate = rows / median(seconds["torch"])
    return {
        "samples": data.n,
        "batch_size": base.batch_size,
        "chunks": chunks_of,
        "budgets_mib": budgets_of,
        "train_seconds": seconds,
        "torch_samples_per_s": torch_rate,
        "speedup_vs_torch": {k: rows / median(seconds[k]) / torch_rate for k in runs},
        "speedup_vs_whole": {k: median(seconds["whole"]) / median(seconds[k]) for k in runs},
    }


def report(record: dict) -> str:
    m = record["machine"]
    caches = ", ".join(
        f"L{c['level']} {c['type'].lower()} {c['size']} (CPUs {c['shared_cpu_list']})"
        for c in record["caches"]
    )
    lines = [
        "# Micro-batch cache budget on XLA:CPU, per model",
        "",
        *([] if record["complete"] else ["**Partial: cut off after the models below.**", ""]),
        f"Command: `{record['command']}`",
        "",
        f"Run {record['started']}; load average (1/5/15 min) before "
        f"{record['load_average_before']}, after {record['load_average_after']}; "
        f"{m['logical_cores']} logical cores ({m['cpu']}), JAX devices: {len(m['jax_devices'])} "
        f"CPU; allocators: {m['allocators']}.",
        "",
        f"Caches of CPU 0: {caches or 'not reported'}.",
        "",
        "One epoch of `fit` with its defaults (batch split over every device), per chunk size "
        f"the budgets pick; median of {record['repeats']} rotating repeats. `vs whole` = whole "
        "batches' epoch seconds / this variant's; `vs torch` = against Qlib's torch loop in the "
        "same run.",
        "",
        "| model | batch | variant | budgets (MiB) | epoch s | vs whole | vs torch |",
        "|---|---:|---|---|---:|---:|---:|",
    ]
    for name, r in record["models"].items():
        if "error" in r:
            lines.append(f"| {name} | | failed: {r['error']} | | | | |")
            continue
        for label in r["chunks"]:
            lines.append(
                f"| {name} | {r['batch_size']} | {label} | "
                + ", ".join(str(b) for b in r["budgets_mib"][label])
                + f" | {median(r['train_seconds'][label]):.2f} | "
                f"{r['speedup_vs_whole'][label]:.2f}x | {r['speedup_vs_torch'][label]:.2f}x |"
            )
        lines.append(
            f"| {name} | {r['batch_size']} | torch | | {median(r['train_seconds']['torch']):.2f} "
            "| | |"
        )
    lines += ["", f"Versions: {m['versions']}; environment: {m['env'] or 'none set'}.", ""]
    return "\n".join(lines)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", default="lstm,gru,alstm,transformer,tcn")
    p.add_argument("--budgets", default="2,8,32,128", help="MiB, comma-separated")
    p.add_argument("--samples", type=int, default=4800, help="train samples (scaled per model)")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--out", type=Path, default=None)
    p.add_argument("--tag", default="", help="result name suffix")
    args = p.parse_args(argv)
    names = chosen_models(p, args.models.lower(), tvt.CASES)
    daily = [name for name in names if tvt.CASES[name].batching == "daily"]
    if daily:
        p.error(f"{daily} train one whole day per step, which is never split into micro-batches")
    if args.repeats < 3:
        p.error("--repeats must be >= 3 (medians of at least three)")
    try:
        budgets = sorted({int(b) for b in args.budgets.split(",") if b.strip()})
    except ValueError:
        p.error(f"--budgets takes whole MiB separated by commas, got {args.budgets!r}")

    from qlib.config import C

    C.logging_level = logging.WARNING
    warnings.filterwarnings("ignore")
    import torch

    torch.set_num_threads(tvt.usable_cores())
    device = torch.device("cpu")
    started = datetime.datetime.now().astimezone().isoformat(timespec="seconds")
    record = {
        "command": command_line(),
        "started": started,
        "repeats": args.repeats,
        "load_average_before": load_average(),
        "caches": cpu_caches(),
        "models": {},
        "complete": False,
    }
    for name in names:
        print(f"[budget] {name} ...", file=sys.stderr, flush=True)
        try:
            record["models"][name] = run_model(tvt.CASES[name], budgets, args, device)
        except Exception as err:  # keep the other models' numbers
            import traceback

            traceback.print_exc()
            record["models"][name] = {"error": f"{type(err).__name__}: {err}"}
        if args.out is not None:  # a cut-off run keeps the models it finished
            write(args, record, torch)
    record["complete"] = True
    write(args, record, torch)


def write(args, record: dict, torch) -> None:
    """The report so far: printed, and written to ``--out``."""
    record["load_average_after"] = load_average()
    record["machine"] = machine(torch)
    if args.out is not None:
        args.out.mkdir(parents=True, exist_ok=True)
    stem = "microbatch_budget_cpu" + (f"_{args.tag}" if args.tag else "")
    publish(report(record).splitlines(), args.out, stem, record)


if __name__ == "__main__":
    main()
