"""The 20-seed job on 2 CPU cores: how many replicas to vmap side by side per device.

qjax trains several seeds as replicas of one compiled program. ``TrainConfig.replica_chunk``
sets how many replicas each device runs side by side under ``vmap``; groups of that many run
one after another inside the same program (``lax.map``). XLA:CPU runs matmuls with a replica
(batch) dimension slower than plain ones, so all replicas at once is not always fastest.
Per model, one epoch per seed for ``--seeds`` seeds, in the layout ``fit`` picks:

- **chunk N**: ``replica_chunk=N`` (``all``: every replica at once, the engine's old rule);
- **torch**: Qlib's train loop (``train_vs_torch.TorchRunner``), one fit per seed in turn.

Each variant compiles once, then all are timed in turns (the order rotates every repeat);
rates are medians of seed-samples per second; ratios are within this run.

    python benchmarks/replica_groups_cpu.py --models mlp,lstm --seeds 20 --out benchmarks/results
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import sys
from pathlib import Path

import jax
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import train_vs_torch as tvt  # noqa: E402
from _common import (  # noqa: E402
    command_line,
    load_average,
    machine,
    median,
    publish,
    results_table,
    timed,
)
from replicas_cpu import torch_for_cpu_runs  # noqa: E402

from qjax.compilation import CompileClock  # noqa: E402
from qjax.train import fit  # noqa: E402
from qjax.train.parallel import CPU_REPLICA_CHUNK  # noqa: E402

ALL = 10**6  # a chunk no device holds that many replicas of: every replica at once


def run_model(case: tvt.Case, n_samples: int, n_seeds: int, chunks: list, repeats: int) -> dict:
    import torch

    import qjax.models

    module = qjax.models.get(case.name)(**case.qjax_kwargs)
    n = tvt.case_samples(case, n_samples)
    data = tvt.make_data(case, n, seed=0)
    samples = tvt.qjax_samples(case, data)
    base = dataclasses.replace(tvt.train_config(case, data.n), n_epochs=1)
    seeds = list(range(n_seeds))

    def qjax_job(chunk):
        config = dataclasses.replace(base, replica_chunk=ALL if chunk == "all" else chunk)

        def run():
            result = fit(module, samples, None, config, seeds=seeds, verbose=False)
            jax.block_until_ready(result.variables)
            return result

        return run

    def torch_job():
        for seed in seeds:
            runner = tvt.TorchRunner(case, data, torch.device("cpu"))
            torch.manual_seed(seed)
            np.random.seed(seed)  # noqa: NPY002
            runner.train_epoch()

    jobs = {f"chunk {c}": qjax_job(c) for c in chunks}
    compile_s, layout = {}, {}
    for name, job in jobs.items():
        with CompileClock.measure() as got:
            result = job()
        compile_s[name] = got["seconds"]
        layout[name] = {
            "batch_devices": result.n_devices,
            "replica_devices": result.replica_devices,
            "group": result.replica_group,
        }
    tvt.TorchRunner(case, data, torch.device("cpu")).train_epoch(max_steps=1)  # warm-up
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
        "seeds": n_seeds,
        "seconds": seconds,
        "compile_s": compile_s,
        "layout": layout,
        "seed_samples_per_s": rate,
        "speedup_vs_torch": {k: rate[k] / rate["torch"] for k in rate if k != "torch"},
    }


def report(record: dict) -> list[str]:
    m, chunks = record["machine"], record["chunks"]
    names = [f"chunk {c}" for c in chunks]

    def row(model: str, r: dict) -> str:
        up, lay = r["speedup_vs_torch"], r["layout"]
        first = lay[names[0]]
        best = max(names, key=lambda k: r["seed_samples_per_s"][k])
        return (
            f"| {model} | {r['samples']} | {first['batch_devices']} / "
            f"{first['replica_devices']} | "
            + " | ".join(f"{up[k]:.2f}x (group {lay[k]['group']})" for k in names)
            + f" | {r['seed_samples_per_s']['torch']:,.0f} | {best} |"
        )

    return [
        f"# The {record['seeds']}-seed job on {m.get('cpu', 'cpu')}: replicas vmapped side by "
        "side per device, the groups in turn",
        "",
        f"Command: `{record['command']}`",
        "",
        f"Run {record['started']}, {record['repeats']} repeats (medians); load average "
        f"(1/5/15 min) before {record['load_average_before']}, after "
        f"{record['load_average_after']}. Speed-up = qjax seed-samples/s / torch's (one epoch "
        "per seed; torch: Qlib's loop, the seeds in turn, "
        f"{m.get('torch_threads', 'all')} threads). Group: replicas vmapped at once over all "
        f"devices. The engine's default on XLA:CPU is chunk {record['default_chunk']}.",
        "",
        *results_table(
            ["model", "samples", "batch / replica devices", *names, "torch/s", "fastest"],
            "llr" + "r" * len(names) + "rl",
            record["models"],
            row,
            failed="error",
        ),
        "",
        f"Versions: {m['versions']}; environment: {m['env'] or 'none set'}.",
    ]


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", default="mlp,lstm,gru,alstm,tabnet,transformer")
    p.add_argument("--samples", type=int, default=1600, help="train samples (scaled per model)")
    p.add_argument("--seeds", type=int, default=20)
    p.add_argument("--chunks", default="1,2,all", help="replica_chunk values ('all': at once)")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--out", default=None)
    p.add_argument("--tag", default="", help="result name suffix: replica_groups_cpu_<tag>.*")
    args = p.parse_args(argv)
    names = [m.strip().lower() for m in args.models.split(",") if m.strip()]
    unknown = sorted(set(names) - set(tvt.CASES))
    if unknown:
        p.error(f"unknown model(s) {unknown}; choose from {', '.join(tvt.CASES)}")
    chunks = [c if c == "all" else int(c) for c in args.chunks.split(",")]
    if args.repeats < 3 or args.seeds < 2:
        p.error("--repeats must be >= 3 (medians of at least three) and --seeds >= 2")

    torch = torch_for_cpu_runs()
    record = {
        "command": command_line(),
        "started": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "repeats": args.repeats,
        "seeds": args.seeds,
        "chunks": chunks,
        "default_chunk": CPU_REPLICA_CHUNK,
        "load_average_before": load_average(),
        "machine": machine(torch),
        "models": {},
    }
    for name in names:
        print(f"[replica groups] {name} ...", file=sys.stderr, flush=True)
        try:
            record["models"][name] = run_model(
                tvt.CASES[name], args.samples, args.seeds, chunks, args.repeats
            )
        except Exception as err:  # keep the other models' numbers
            import traceback

            traceback.print_exc()
            record["models"][name] = {"error": f"{type(err).__name__}: {err}"}
        else:
            up = record["models"][name]["speedup_vs_torch"]
            print("    " + ", ".join(f"{k} {v:.2f}x" for k, v in up.items()), file=sys.stderr)
        record["load_average_after"] = load_average()  # written after every model: a cut-off
        publish(
            report(record),
            args.out,
            (f"replica_groups_cpu_{args.tag}" if args.tag else "replica_groups_cpu"),
            record,
        )  # run keeps its rows


if __name__ == "__main__":
    main()
