"""Each speed lever of the engine on and off, per model, against Qlib's PyTorch loop in one run.

Levers (see ``qjax/cpu_devices.py``, ``qjax/train/parallel.py``, ``qjax/train/microbatch.py``):

- **devices**: each batch split over one XLA CPU device per core (``import qjax`` creates them)
  vs one device;
- **micro**: the train step walks its batch in micro-batches (``TrainConfig.micro_batch``): the
  engine's automatic size where it picks one, else a forced quarter batch (to record what the
  automatic choice declines);
- **both** levers together, and **default**: ``fit`` with no device or micro-batch argument,
  which is what a user gets.

Per model, one epoch (``fit(..., n_epochs=1)``) of every variant and of the torch loop of
``train_vs_torch.py`` is timed in turns (the order rotates every repeat), after one compiling
call each; rates are medians. Inference: ``predict`` on one device vs all, against Qlib's
predict loop. Speed-ups are ratios within this run, so a shared machine's load hits every
column alike; the load average is recorded.

    python benchmarks/levers_cpu.py --models lstm,gru,transformer --samples 4800 --repeats 3 \\
        --out benchmarks/results
"""

from __future__ import annotations

import argparse
import datetime
import json
import logging
import sys
import warnings
from pathlib import Path

import jax

sys.path.insert(0, str(Path(__file__).resolve().parent))
import train_vs_torch as tvt  # noqa: E402
from _common import command_line, load_average, machine, median, results_table, timed  # noqa: E402

from qjax.compilation import CompileClock  # noqa: E402
from qjax.train import fit, predict  # noqa: E402

VARIANTS = ("baseline", "devices", "micro", "both", "default")


def variant_settings(name: str, case: tvt.Case, micro_rows: int) -> dict:
    one, every = jax.devices()[:1], jax.devices()
    daily = case.batching == "daily"
    micro = "off" if daily else micro_rows
    return {
        "baseline": {"devices": one, "micro_batch": "off"},
        "devices": {"devices": every, "micro_batch": "off"},
        "micro": {"devices": one, "micro_batch": micro},
        "both": {"devices": every, "micro_batch": micro},
        "default": {"devices": None, "micro_batch": None},
    }[name]


def run_model(case: tvt.Case, n_samples: int, repeats: int, device) -> dict:
    import dataclasses

    import qjax.models

    module = qjax.models.get(case.name)(**case.qjax_kwargs)
    n = tvt.case_samples(case, n_samples)
    data = tvt.make_data(case, n, seed=0)
    samples = tvt.qjax_samples(case, data)
    base_config = tvt.train_config(case, data.n)
    runner = tvt.TorchRunner(case, data, device)
    rows = tvt.trained_samples(case, data.n)

    # What the defaults choose (devices, chunks); a forced quarter batch where auto declines.
    default = fit(module, samples, None, base_config, verbose=False)
    auto_chunks = default.micro_batches
    forced = auto_chunks == 1 and case.batching != "daily"
    chunks = 4 if forced else auto_chunks
    micro_rows = base_config.batch_size // chunks

    def epoch(name: str):
        settings = variant_settings(name, case, micro_rows)
        config = dataclasses.replace(base_config, micro_batch=settings["micro_batch"])

        def run():
            result = fit(module, samples, None, config, devices=settings["devices"], verbose=False)
            jax.block_until_ready(result.variables)
            return result

        return run

    runs = {name: epoch(name) for name in VARIANTS}
    compile_s, refused = {}, {}
    for name, run in list(runs.items()):
        try:
            with CompileClock.measure() as got:
                run()
        except ValueError as err:  # micro-batches refused (BatchNorm statistics)
            refused[name] = str(err)
            del runs[name]
            continue
        compile_s[name] = got["seconds"]
    runner.train_epoch(max_steps=1)  # torch warm-up
    order = [*runs, "torch"]
    seconds: dict[str, list[float]] = {name: [] for name in order}
    for r in range(repeats):
        for name in order[r % len(order) :] + order[: r % len(order)]:
            seconds[name].append(timed(runs[name] if name != "torch" else runner.train_epoch))

    variables = default.replica(0)
    daily = case.batching == "daily"
    predict_batch = case.predict_batch or case.batch_size

    def infer(devices):
        return lambda: predict(
            module, variables, samples, batch_size=predict_batch, daily=daily, devices=devices
        )

    infer_runs = {
        "one": infer(jax.devices()[:1]),
        "all": infer(jax.devices()),
        "torch": runner.predict,
    }
    for run in infer_runs.values():
        run()
    infer_s: dict[str, list[float]] = {name: [] for name in infer_runs}
    names = list(infer_runs)
    for r in range(repeats):
        for name in names[r % 3 :] + names[: r % 3]:
            infer_s[name].append(timed(infer_runs[name]))

    torch_rate = rows / median(seconds["torch"])
    torch_infer = data.n / median(infer_s["torch"])
    return {
        "samples": data.n,
        "batch_size": "one day" if daily else case.batch_size,
        "default_devices": default.n_devices,
        "auto_micro_batches": auto_chunks,
        "micro_rows": None if daily else micro_rows,
        "micro_forced": forced,
        "train_seconds": seconds,
        "compile_seconds": compile_s,
        "torch_samples_per_s": torch_rate,
        "train_speedup": {name: rows / median(seconds[name]) / torch_rate for name in runs},
        "refused": refused,
        "infer_seconds": infer_s,
        "torch_infer_per_s": torch_infer,
        "infer_speedup": {
            name: data.n / median(infer_s[name]) / torch_infer for name in ("one", "all")
        },
    }


def _speedup_row(name: str, r: dict) -> str:
    s, i = r["train_speedup"], r["infer_speedup"]
    micro = "–" if r["micro_rows"] is None else str(r["micro_rows"])
    micro += "*" if r["micro_forced"] else ""
    return (
        f"| {name} | {r['torch_samples_per_s']:,.0f} | "
        + " | ".join(f"{s[v]:.2f}x" if v in s else "n/a" for v in VARIANTS)
        + f" | {micro} | {r['default_devices']} / {r['auto_micro_batches']} | "
        f"{r['torch_infer_per_s']:,.0f} | {i['one']:.2f}x | {i['all']:.2f}x |"
    )


def report(record: dict) -> str:
    m = record["machine"]
    lines = [
        "# Speed levers on XLA:CPU, per model, against Qlib's PyTorch loop",
        "",
        *(
            []
            if record.get("complete", True)
            else ["**Partial: the run was cut off after the models below.**", ""]
        ),
        f"Command: `{record['command']}`",
        "",
        f"Run {record['started']}; **load average (1/5/15 min) before "
        f"{record['load_average_before']}, after {record['load_average_after']}** on "
        f"{m['logical_cores']} logical cores ({m['cpu']}), JAX devices: "
        f"{len(m['jax_devices'])} CPU. "
        + (
            "**The machine was shared with other jobs**: absolute rates are noisy; the ratios "
            "compare variants timed in turns within this run."
            if record["load_average_before"][0] > 0.5 * m["logical_cores"]
            else "The machine was otherwise idle."
        ),
        "",
        *tvt._probe_lines(record.get("torch_thread_probe"), tvt.usable_cores()),
        "Train speed-up = qjax samples/s / torch samples/s for one epoch (median of "
        f"{record['repeats']} rotating repeats). baseline: one device, whole batches; devices: "
        "batch split over every CPU device; micro: one device, micro-batches (rows per chunk in "
        "the `micro rows` column; `*` = forced, the automatic choice takes whole batches); both; "
        "default: `fit` with no arguments (its device count and micro-batch count in the last "
        "columns).",
        "",
        *results_table(
            [
                *("model", "torch train/s", *VARIANTS, "micro rows"),
                *("default devices / chunks", "torch infer/s"),
                *("infer 1 device", "infer all devices"),
            ],
            "lrrrrrrrlrrr",
            record["models"],
            _speedup_row,
        ),
        "",
        "Epoch seconds (median; all repeats in the JSON) and first-call compile seconds:",
        "",
        "| model | "
        + " | ".join(VARIANTS)
        + " | torch | compile s ("
        + ", ".join(VARIANTS)
        + ") |",
        "|---|" + "---:|" * (len(VARIANTS) + 1) + "---|",
    ]
    for name, r in record["models"].items():
        if "error" in r:
            continue
        t = r["train_seconds"]
        lines.append(
            f"| {name} | "
            + " | ".join(f"{median(t[v]):.2f}" if v in t else "n/a" for v in (*VARIANTS, "torch"))
            + " | "
            + ", ".join(f"{r['compile_seconds'].get(v, float('nan')):.1f}" for v in VARIANTS)
            + " |"
        )
    refusals = {name: r["refused"] for name, r in record["models"].items() if r.get("refused")}
    if refusals:
        lines += [
            "",
            "n/a: "
            + "; ".join(
                f"{name} refuses micro-batches ({next(iter(v.values())).split(';')[0]})"
                for name, v in refusals.items()
            ),
        ]
    lines += ["", f"Versions: {m['versions']}; environment: {m['env'] or 'none set'}.", ""]
    return "\n".join(lines)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", default="lstm,gru,transformer")
    p.add_argument("--samples", type=int, default=4800, help="train samples (scaled per model)")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--out", type=Path, default=None)
    p.add_argument("--tag", default="", help="result name suffix: levers_cpu_<tag>.{md,json}")
    args = p.parse_args(argv)
    names = [m.strip().lower() for m in args.models.split(",") if m.strip()]
    unknown = sorted(set(names) - set(tvt.CASES))
    if unknown:
        p.error(f"unknown model(s) {unknown}; choose from {', '.join(tvt.CASES)}")
    if args.repeats < 3:
        p.error("--repeats must be >= 3 (medians of at least three)")

    from qlib.config import C

    C.logging_level = logging.WARNING
    warnings.filterwarnings("ignore")
    import torch

    torch.set_num_threads(tvt.usable_cores())
    device = torch.device("cpu")
    torch.get_device = lambda tensor: "cpu"  # Qlib's HIST asks for a CUDA device
    started = datetime.datetime.now().astimezone().isoformat(timespec="seconds")
    before = load_average()
    probe = tvt.torch_thread_probe(tvt.usable_cores())
    models = {}
    for name in names:
        print(f"[levers] {name} ...", file=sys.stderr, flush=True)
        try:
            models[name] = run_model(tvt.CASES[name], args.samples, args.repeats, device)
        except Exception as err:  # keep the other models' numbers
            import traceback

            traceback.print_exc()
            models[name] = {"error": f"{type(err).__name__}: {err}"}
            continue
        print(
            "    " + ", ".join(f"{k} {v:.2f}x" for k, v in models[name]["train_speedup"].items()),
            file=sys.stderr,
            flush=True,
        )
        write(args, started, before, probe, models, torch, final=False)  # a cut-off run keeps these
    print(write(args, started, before, probe, models, torch, final=True))


def write(args, started, before, probe, models, torch, final: bool) -> str:
    record = {
        "command": command_line(),
        "started": started,
        "repeats": args.repeats,
        "load_average_before": before,
        "load_average_after": load_average(),
        "machine": machine(torch),
        "torch_thread_probe": probe,
        "models": models,
        "complete": final,
    }
    text = report(record)
    if args.out is not None:
        args.out.mkdir(parents=True, exist_ok=True)
        stem = "levers_cpu" + (f"_{args.tag}" if args.tag else "")
        (args.out / f"{stem}.md").write_text(text)
        (args.out / f"{stem}.json").write_text(json.dumps(record, indent=1, default=str) + "\n")
    return text


if __name__ == "__main__":
    main()
