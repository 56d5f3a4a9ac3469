"""Where a cold ``fit`` spends its compile time on XLA:CPU, program by program.

A first ``fit`` in a process without the persistent compilation cache traces, lowers and
compiles every program it runs; on short runs that is most of the fit
(``benchmarks/results/train_vs_torch_cpu_e2e_all.md``). Per model, one estimator fit as Qlib's
wrapper would run it (``eval_train=True, eval_protocol="qlib"``, 1 epoch, a small random frame)
in a fresh process each, the cache off; JAX's ``jax.monitoring`` durations are summed per
program name (tracing, lowering to StableHLO, XLA's backend compile).

Then the initialisation program alone (``module.init`` on two rows, as the engine runs it)
compiled at XLA's default optimisation and at ``xla_backend_optimization_level`` 1 and 0: its
compile seconds, the size of the compiled HLO text and the largest difference of the initial
variables from the default's.

``--turns N`` times cold fits instead: with the initialisation program compiled on a worker
thread while the epoch program is traced and compiled (the engine's way), and with every
program compiled in turn (as before that change); fresh processes, N of each in turns.

    python benchmarks/compile_programs_cpu.py --out benchmarks/results
    python benchmarks/compile_programs_cpu.py --turns 3 --out benchmarks/results
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
MODELS = (
    *("lstm", "gru", "alstm", "krnn", "transformer", "localformer"),
    *("tabnet", "gats", "hist", "sfm", "tcn"),
)
STAGES = ("jaxpr_trace_duration", "jaxpr_to_mlir_module_duration", "backend_compile_duration")
LEVELS = {"default": None, "O1": 1, "O0": 0}


def cold_fit(name: str, in_turn: bool = False) -> tuple[float, dict]:
    """Run in a fresh process: one cold estimator fit of ``name`` like Qlib's, the persistent
    cache off; (wall seconds, per-program seconds and compile counts). ``in_turn``: every
    program compiles on the calling thread, one after another, as before the engine overlapped
    them (the initialisation program no longer compiles while the epoch program is traced)."""
    os.environ["QJAX_COMPILATION_CACHE"] = "off"
    import jax
    import jax.monitoring
    from train_vs_torch import CASES, e2e_frame

    import qjax
    from qjax.data.dataset import Dataset
    from qjax.data.handler import DataHandler
    from qjax.train import engine

    if in_turn:
        engine.compile_in_background = _compiled_now
    case = CASES[name]
    seconds: dict = collections.defaultdict(lambda: {**dict.fromkeys(STAGES, 0.0), "compiles": 0})

    def listen(event: str, duration: float, **kw) -> None:
        stage = event.rsplit("/", 1)[-1]
        if stage in STAGES:
            program = str(kw.get("fun_name", "?")).removeprefix("jit(").removesuffix(")")
            seconds[program][stage] += duration
            seconds[program]["compiles"] += stage == STAGES[-1]

    jax.monitoring.register_event_duration_secs_listener(listen)
    stocks = 300
    train_days = max(10, -(-case.wrapper_kwargs.get("batch_size", 1) // stocks))
    frame = e2e_frame(stocks, 2 * train_days + 1, case.input_dim, seed=1)
    dates = frame.index.get_level_values("datetime").unique()
    segments = {
        "train": (dates[0], dates[train_days - 1]),
        "valid": (dates[train_days], dates[2 * train_days - 1]),
        "test": (dates[-1], dates[-1]),
    }
    kwargs = {**case.wrapper_kwargs, "n_epochs": 1, "early_stop": 2}
    with tempfile.TemporaryDirectory() as folder:
        if case.wrapper_files is not None:
            instruments = sorted(frame.index.get_level_values("instrument").unique())
            kwargs.update(case.wrapper_files(Path(folder), instruments))
        dataset = Dataset(DataHandler(frame), segments)
        started = time.perf_counter()
        qjax.estimator(name, **kwargs, eval_train=True, eval_protocol="qlib").fit(
            dataset, verbose=False
        )
        fit_s = time.perf_counter() - started
    stages = (*STAGES, "compiles")
    programs = {k: v for k, v in seconds.items() if sum(v[s] for s in STAGES) >= 0.05}
    return fit_s, {k: {s: v[s] for s in stages} for k, v in programs.items()}


def _compiled_now(lowered):
    from concurrent.futures import Future

    done = Future()
    done.set_result(lowered.compile())
    return done


def one_model(name: str) -> dict:
    """Run in a fresh process: the per-program compile seconds of one cold estimator fit, and
    the initialisation program at each optimisation level."""
    import jax
    import jax.numpy as jnp
    import numpy as np
    from train_vs_torch import CASES, make_data, qjax_samples

    import qjax

    case = CASES[name]
    fit_s, programs = cold_fit(name)

    module = qjax.models.get(name)(**case.qjax_kwargs)
    samples = qjax_samples(case, make_data(case, 2 * case.batch_size, seed=0))
    example = samples.batch(jnp.arange(2, dtype=jnp.int32), mask_input=case.batching == "daily")

    def init(key):
        return module.init(
            {"params": key, "dropout": key}, example.x, train=False, **example.inputs
        )

    key = jax.random.PRNGKey(0)
    levels, reference = {}, None
    for label, level in LEVELS.items():
        options = None if level is None else {"xla_backend_optimization_level": level}
        lowered = jax.jit(init, compiler_options=options).lower(key)
        started = time.perf_counter()
        compiled = lowered.compile()
        compile_s = time.perf_counter() - started
        values = jax.tree.map(np.asarray, compiled(key))
        reference = values if reference is None else reference
        diff = max(
            float(np.max(np.abs(a - b)))
            for a, b in zip(jax.tree.leaves(reference), jax.tree.leaves(values))
        )
        levels[label] = {
            "compile_s": compile_s,
            "hlo_chars": len(compiled.as_text()),
            "max_abs_diff": diff,
        }
    return {"fit_s": fit_s, "programs": programs, "init_levels": levels}


def in_fresh_process(*args: str) -> dict:
    """This script's JSON answer to ``args`` from a fresh Python process ({"error": ...})."""
    done = subprocess.run(
        [sys.executable, __file__, *args], capture_output=True, text=True, cwd=HERE, check=False
    )
    lines = done.stdout.strip().splitlines()
    if done.returncode or not lines:
        return {"error": (done.stderr.strip().splitlines() or ["?"])[-1]}
    return json.loads(lines[-1])


def overlap_report(models: list[str], args) -> int:
    """Cold fits with the initialisation program compiled on a worker thread while the epoch
    program is traced and compiled (the engine's way) against one program after another."""
    from statistics import median

    from _common import command_line, load_average, machine, publish

    variants = {"overlapped": (), "in_turn": ("--in-turn",)}
    before = load_average()
    results = {}
    for name in models:
        runs = {label: [] for label in variants}
        for turn in range(args.turns):
            order = list(variants)[turn % 2 :] + list(variants)[: turn % 2]
            for label in order:
                print(f"[overlap] {name} {label} {turn + 1}/{args.turns}", file=sys.stderr)
                runs[label].append(in_fresh_process("--one-fit", name, *variants[label]))
        errors = [r["error"] for rs in runs.values() for r in rs if "error" in r]
        results[name] = {"error": errors[0]} if errors else runs
    record = {
        "command": command_line(),
        "load_before": before,
        "load_after": load_average(),
        "machine": machine(),
        "turns": args.turns,
        "models": results,
    }
    rows = []
    for name, runs in results.items():
        if "error" in runs:
            rows.append(f"| {name} | failed: {runs['error']} | | | | |")
            continue
        s = {label: median(r["fit_s"] for r in rs) for label, rs in runs.items()}
        compiles = {
            label: "/".join(
                str(max(r["programs"].get(p, {}).get("compiles", 0) for r in rs))
                for p in ("_init_replicas", "_epoch_program")
            )
            for label, rs in runs.items()
        }
        rows.append(
            f"| {name} | {s['overlapped']:.2f} | {s['in_turn']:.2f} | "
            f"{s['in_turn'] - s['overlapped']:+.2f} | {s['in_turn'] / s['overlapped']:.2f}x | "
            f"{compiles['overlapped']} | {compiles['in_turn']} |"
        )
    m = record["machine"]
    lines = [
        "# Cold fits on XLA:CPU: programs compiled overlapped or one after another",
        "",
        f"Command: `{record['command']}`",
        "",
        f"{m['cpu']}, {m['logical_cores']} logical cores; load average before {before}, after "
        f"{record['load_after']}. One estimator fit per model like Qlib's (1 epoch, train "
        "re-evaluated), each in a fresh process with the persistent compilation cache off, "
        f"{args.turns} times per variant in turns (the order alternating); medians.",
        "",
        "- **overlapped** (the engine): XLA compiles the initialisation program on a worker "
        "thread while the fit traces, lowers and compiles the epoch program.",
        "- **in turn**: the same steps, each compile on the calling thread, as before.",
        "- **compiles**: the most times one run compiled the initialisation / the epoch "
        "program (1 / 1: the ahead-of-time compile was found by the calls).",
        "",
        "| model | overlapped s | in turn s | saved s | speed-up | compiles, overlapped | "
        "compiles, in turn |",
        "|---|---:|---:|---:|---:|---:|---:|",
        *rows,
        "",
        f"Versions: {m['versions']}; environment: {m['env']}.",
    ]
    publish(
        lines,
        args.out,
        "compile_programs_cpu_overlap" + (f"_{args.tag}" if args.tag else ""),
        record,
    )
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--models", default=",".join(MODELS))
    p.add_argument("--out", help="write compile_programs_cpu.{md,json} here")
    p.add_argument("--tag", help="write compile_programs_cpu_<tag>.{md,json} instead")
    p.add_argument(
        "--turns",
        type=int,
        help="instead: time cold fits with the programs compiled overlapped (the engine's way) "
        "and one after another, in fresh processes, this many times each in turns",
    )
    p.add_argument("--one", help=argparse.SUPPRESS)  # internal: measure one model, print JSON
    p.add_argument("--one-fit", help=argparse.SUPPRESS)  # internal: one cold fit, print JSON
    p.add_argument("--in-turn", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.one:
        print(json.dumps(one_model(args.one)))
        return 0
    if args.one_fit:
        fit_s, programs = cold_fit(args.one_fit, in_turn=args.in_turn)
        print(json.dumps({"fit_s": fit_s, "programs": programs}))
        return 0
    from _common import chosen_models, command_line, load_average, machine, publish

    models = chosen_models(p, args.models, MODELS)
    if args.turns:
        return overlap_report(models, args)
    before = load_average()
    results = {}
    for name in models:
        print(f"[compile] {name} ...", file=sys.stderr, flush=True)
        results[name] = in_fresh_process("--one", name)
    record = {
        "command": command_line(),
        "load_before": before,
        "load_after": load_average(),
        "machine": machine(),
        "models": results,
    }
    m = record["machine"]
    rows, init_rows = [], []
    for name, r in results.items():
        if "error" in r:
            rows.append(f"| {name} | failed: {r['error']} | | | | |")
            continue
        total = {k: sum(v[s] for s in STAGES) for k, v in r["programs"].items()}
        compile_total = sum(total.values())
        parts = ", ".join(
            f"{k} {s:.2f}" for k, s in sorted(total.items(), key=lambda kv: -kv[1])[:4]
        )
        init = total.get("_init_replicas", 0.0)
        rows.append(
            f"| {name} | {r['fit_s']:.1f} | {compile_total:.1f} | {init:.2f} "
            f"({init / compile_total:.0%}) | {parts} |"
        )
        lv = r["init_levels"]
        init_rows.append(
            f"| {name} | {lv['default']['hlo_chars'] / 1e6:.2f} | "
            + " | ".join(f"{lv[k]['compile_s']:.2f} ({lv[k]['max_abs_diff']:.0e})" for k in LEVELS)
            + " |"
        )
    lines = [
        "# Compile time of a cold fit on XLA:CPU, program by program",
        "",
        f"Command: `{record['command']}`",
        "",
        f"{m['cpu']}, {m['logical_cores']} logical cores; load average before {before}, after "
        f"{record['load_after']}. One estimator fit per model like Qlib's (1 epoch, train "
        "re-evaluated), each in a fresh process with the persistent compilation cache off; "
        "seconds of tracing + lowering + XLA compile summed per program (programs under 0.05 s "
        "left out).",
        "",
        "| model | cold fit s | compile s | of which initialisation | largest programs (s) |",
        "|---|---:|---:|---:|---|",
        *rows,
        "",
        "The initialisation program alone (`module.init` on two rows), XLA compile seconds at "
        "each backend optimisation level, and in parentheses the largest absolute difference "
        "of the initial variables from the default level's:",
        "",
        "| model | compiled HLO, M chars | default | -O1 | -O0 |",
        "|---|---:|---:|---:|---:|",
        *init_rows,
        "",
        f"Versions: {m['versions']}; environment: {m['env']}.",
    ]
    publish(lines, args.out, "compile_programs_cpu" + (f"_{args.tag}" if args.tag else ""), record)
    return 0


if __name__ == "__main__":
    sys.exit(main())
