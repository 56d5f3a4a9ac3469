"""Where one training epoch of each model goes on XLA:CPU, by kind of operation.

Each model trains one epoch with the device split and micro-batches its home picks (what a
user of ``qjax.estimator`` or ``qjax train`` gets) on ``train_vs_torch.py``'s data and Qlib settings, under
``jax.profiler``. The trace's XLA operations are summed by kind (matmuls, convolutions,
gathers, scan bookkeeping, copies, reductions, cross-device collectives, other fusions) and
divided by the wall time: ``busy cores`` is op-seconds per wall second, so on two cores a value
well under 2 means cores wait (a sequential recurrence, dispatch, the host).

    python benchmarks/profile_cpu.py --models transformer,tcn --samples 3200 \\
        --out benchmarks/results

``--predict`` profiles ``qjax.train.predict`` instead (the prediction program at Qlib's
prediction batch size, with the variables of one training epoch) and writes
``profile_cpu_predict.{md,json}``.
"""

from __future__ import annotations

import argparse
import collections
import dataclasses
import logging
import re
import sys
import warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import train_vs_torch as tvt  # noqa: E402
from _common import command_line, load_average, machine, publish, traced  # noqa: E402

from qjax.models import registry  # noqa: E402
from qjax.train import TrainConfig, fit, predict  # noqa: E402

WAITING = "waiting for the other devices"
KINDS = {  # first match wins; XLA:CPU names trace events after the HLO instruction
    WAITING: ("Wait", "Rendezvous"),
    "matmul": ("ynn", "xnn", "dot", "onednn", "__onednn", "custom-call"),
    "convolution": ("convolution", "conv"),
    "gather / scatter / dynamic-slice": ("gather", "scatter", "dynamic-slice"),
    "scan outputs (dynamic-update-slice)": ("dynamic-update-slice",),
    "collectives across CPU devices": (
        "all-reduce",
        "all-gather",
        "reduce-scatter",
        "collective",
        "all-to-all",
    ),
    "copies, concatenations, transposes": ("copy", "concatenate", "transpose", "pad", "slice"),
    "reductions and sorts": ("reduce", "sort"),
    "buffer initialisation (broadcast)": ("broadcast", "iota"),
    "loop control": ("while", "conditional", "call"),
}


def op_kind(name: str) -> str | None:
    """The kind of an XLA:CPU trace event, or None for runtime and Python frames."""
    runtime = ("Thunk", "ThreadPool", "PjRt", "::")
    if name.startswith(("$", "np.")) or (
        any(w in name for w in runtime) and not name.startswith("Wait")
    ):
        return None
    for kind, prefixes in KINDS.items():
        if name.startswith(prefixes) or any(f".{p}" in name or f"_{p}" in name for p in prefixes):
            return kind
    return "other fusions (elementwise, loss, optimiser)"


def exclusive_seconds(events: list[dict]) -> list[tuple[dict, float]]:
    """Each complete event with its own time: nested events (a loop's body, a fusion's
    kernels) are subtracted from their parent on the same thread, so nothing counts twice."""
    by_thread = collections.defaultdict(list)
    for event in events:
        if event.get("ph") == "X":
            by_thread[(event.get("pid"), event.get("tid"))].append(event)
    out = []
    for thread in by_thread.values():
        thread.sort(key=lambda e: (e["ts"], -e["dur"]))
        stack: list[list] = []  # [event, end, own seconds]
        for event in thread:
            while stack and event["ts"] >= stack[-1][1]:
                done = stack.pop()
                out.append((done[0], done[2]))
            if stack:
                stack[-1][2] -= event["dur"] / 1e6
            stack.append([event, event["ts"] + event["dur"], event["dur"] / 1e6])
        out += [(event, own) for event, _, own in stack]
    return out


def home_levers(name: str, config: TrainConfig) -> TrainConfig:
    """``config`` with the device split and micro-batches the model's home picks for a user."""
    spec = registry.model(name).spec
    fields = spec.train_config_fields(spec.resolve({}, True))
    return dataclasses.replace(
        config, micro_batch=fields.get("micro_batch"), cpu_split=fields.get("cpu_split", True)
    )


def profile(case: tvt.Case, n_samples: int, predicting: bool = False) -> dict:
    import jax
    import numpy as np

    import qjax.models

    module = qjax.models.get(case.name)(**case.qjax_kwargs)
    n = tvt.case_samples(case, n_samples)
    data = tvt.make_data(case, n, seed=0)
    samples = tvt.qjax_samples(case, data)
    config = home_levers(case.name, tvt.train_config(case, data.n))
    first = fit(module, samples, None, config, verbose=False)  # compiles
    if predicting:
        variables, daily = first.replica(0), case.batching == "daily"
        batch = case.predict_batch or case.batch_size

        def run():
            return np.asarray(predict(module, variables, samples, batch_size=batch, daily=daily))

        run()  # compiles
        wall, events = traced(run)
        by_kind, by_op = _summed(events)
        return {
            "samples": data.n,
            "batch_size": "one day" if daily else batch,
            "batching": case.batching,
            "devices": len(jax.local_devices()),
            "micro_batches": "-",
            "wall_s": wall,
            "op_s_by_kind": dict(by_kind.most_common()),
            "busy_cores": (sum(by_kind.values()) - by_kind[WAITING]) / wall,
            "top_ops_s": dict(by_op.most_common(8)),
        }
    wall, events = traced(lambda: fit(module, samples, None, config, verbose=False))
    by_kind, by_op = _summed(events)
    return {
        "samples": data.n,
        "batch_size": case.batch_size,
        "batching": case.batching,
        "devices": first.n_devices,
        "micro_batches": first.micro_batches,
        "wall_s": wall,
        "op_s_by_kind": dict(by_kind.most_common()),
        "busy_cores": (sum(by_kind.values()) - by_kind[WAITING]) / wall,
        "top_ops_s": dict(by_op.most_common(8)),
    }


def _summed(events: list[dict]) -> tuple[collections.Counter, collections.Counter]:
    """Exclusive operation seconds by kind and by operation name."""
    by_kind, by_op = collections.Counter(), collections.Counter()
    for event, seconds in exclusive_seconds(events):
        kind = op_kind(event.get("name", ""))
        if kind is not None:
            by_kind[kind] += seconds
            by_op[re.sub(r"[.:]\d+$", "", event["name"])] += seconds
    return by_kind, by_op


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--models", default=",".join(tvt.CASES))
    p.add_argument("--samples", type=int, default=3200, help="train samples (scaled per model)")
    p.add_argument("--out", help="write profile_cpu.{md,json} here")
    p.add_argument("--tag", default="", help="write profile_cpu_TAG.{md,json} instead")
    p.add_argument(
        "--predict", action="store_true", help="profile predict (profile_cpu_predict.{md,json})"
    )
    args = p.parse_args(argv)
    logging.getLogger("qlib").setLevel(logging.WARNING)
    warnings.filterwarnings("ignore", category=UserWarning)
    before = load_average()
    models = [m.strip() for m in args.models.split(",") if m.strip()]
    profiles = {}
    for name in models:
        print(f"profiling {name} ...", file=sys.stderr, flush=True)
        profiles[name] = profile(tvt.CASES[name], args.samples, args.predict)
    meta = {
        "command": command_line(),
        "load_before": before,
        "load_after": load_average(),
        "machine": machine(),
    }
    kinds = [*KINDS, "other fusions (elementwise, loss, optimiser)"]
    what = "a predict call" if args.predict else "a training epoch"
    setting = (
        "One `predict` call over the samples at Qlib's prediction batch size, after a "
        "compiling call."
        if args.predict
        else "One epoch with the devices and micro-batches each model's home picks, after a "
        "compiling call."
    )
    lines = [
        f"# Where {what} goes on XLA:CPU, per model",
        "",
        f"Command: `{meta['command']}`",
        "",
        f"{meta['machine']['cpu']}, {meta['machine']['logical_cores']} logical cores; load average "
        f"before {before}, after {meta['load_after']}. {setting}",
        "",
        "Share of the XLA operation time by kind (summed over threads), and busy cores "
        "(operation seconds per wall second, waits excluded):",
        "",
        "| model | samples | devices / chunks | wall s | busy cores | " + " | ".join(kinds) + " |",
        "|---|---:|---|---:|---:|" + "---:|" * len(kinds),
    ]
    for name, r in profiles.items():
        total = sum(r["op_s_by_kind"].values()) or 1.0
        shares = [f"{100 * r['op_s_by_kind'].get(k, 0.0) / total:.0f}%" for k in kinds]
        lines.append(
            f"| {name} | {r['samples']} | {r['devices']} / {r['micro_batches']} | "
            f"{r['wall_s']:.2f} | {r['busy_cores']:.2f} | " + " | ".join(shares) + " |"
        )
    lines += ["", "The costliest operations (seconds summed over threads; the JSON has more):", ""]
    for name, r in profiles.items():
        top = ", ".join(f"`{op}` {sec:.2f}" for op, sec in list(r["top_ops_s"].items())[:5])
        lines.append(f"- **{name}**: {top}")
    stem = "profile_cpu_predict" if args.predict else "profile_cpu"
    stem = f"{stem}_{args.tag}" if args.tag else stem
    publish(lines, args.out, stem, {**meta, "profiles": profiles})
    return 0


if __name__ == "__main__":
    sys.exit(main())
