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

``--levels N`` compiles the epoch and prediction programs at XLA's default backend optimisation
level and at -O1, and times cold and warm fits in fresh processes, N of each in turns:

    python benchmarks/compile_programs_cpu.py --levels 2 --out benchmarks/results
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


def cold_fit(name: str, in_turn: bool = False, level: int | None = None, warm: int = 0) -> dict:
    """Run in a fresh process: one cold estimator fit of ``name`` like Qlib's, the persistent
    cache off; its wall seconds (``fit_s``) and per-program seconds and compile counts
    (``programs``). ``in_turn``: every program compiles on the calling thread, one after
    another, as before the engine overlapped them (the initialisation program no longer
    compiles while the epoch program is traced).
    ``level``: the epoch and prediction programs compile at this XLA backend optimisation level
    (None: XLA's default). ``warm``: then this many more fits with fresh estimators (compiled
    programs reused): ``warm_s``, their wall seconds, and ``predictions``, the last one's on
    the test day."""
    os.environ["QJAX_COMPILATION_CACHE"] = "off"
    from qjax import compilation

    # Before the engine's programs are jitted, at its import: every level a model's home may
    # pick (TrainConfig.cpu_opt_level) compiles at ``level`` instead.
    for options in compilation.CPU_OPT_LEVELS.values():
        options.clear()
        if level is not None:
            options["xla_backend_optimization_level"] = level
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
    train_days = max(20 if warm else 10, -(-case.wrapper_kwargs.get("batch_size", 1) // stocks))
    frame = e2e_frame(stocks, 2 * train_days + 1, case.input_dim, seed=1)
    dates = frame.index.get_level_values("datetime").unique()
    segments = {
        "train": (dates[0], dates[train_days - 1]),
        "valid": (dates[train_days], dates[2 * train_days - 1]),
        "test": (dates[-1], dates[-1]),
    }
    epochs = 3 if warm else 1
    kwargs = {**case.wrapper_kwargs, "n_epochs": epochs, "early_stop": epochs + 1}
    with tempfile.TemporaryDirectory() as folder:
        if case.wrapper_files is not None:
            instruments = sorted(frame.index.get_level_values("instrument").unique())
            kwargs.update(case.wrapper_files(Path(folder), instruments))
        dataset = Dataset(DataHandler(frame), segments)

        def one_fit():
            started = time.perf_counter()
            fitted = qjax.estimator(name, **kwargs, eval_train=True, eval_protocol="qlib")
            fitted.fit(dataset, verbose=False)
            return time.perf_counter() - started, fitted

        fit_s, fitted = one_fit()
        stages = (*STAGES, "compiles")
        programs = {k: v for k, v in seconds.items() if sum(v[s] for s in STAGES) >= 0.05}
        answer = {
            "fit_s": fit_s,
            "programs": {k: {s: v[s] for s in stages} for k, v in programs.items()},
        }
        if warm:
            answer["warm_s"] = []
            for _ in range(warm):
                wall, fitted = one_fit()
                answer["warm_s"].append(wall)
            answer["predictions"] = [float(v) for v in fitted.predict(dataset).to_numpy()]
    return answer


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
    cold = cold_fit(name)

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
    return {**cold, "init_levels": levels}


def stem(kind: str, tag: str | None) -> str:
    """The report's file name without suffix: compile_programs_cpu{kind}[_{tag}]."""
    return f"compile_programs_cpu{kind}" + (f"_{tag}" if tag else "")


def in_fresh_process(*args: str) -> dict:
    """This script's JSON answer to ``args`` from a fresh Python process ({"error": ...})."""
    done = subprocess.run(
        [sys.executable, __file__, *args], capture_output=True, text=True, cwd=HERE, check=False
    )
    lines = done.stdout.strip().splitlines()
    if done.returncode or not lines:
        return {"error": (done.stderr.strip().splitlines() or ["?"])[-1]}
    return json.loads(lines[-1])


def fits_in_turns(models: list[str], variants: dict, turns: int, label: str) -> dict:
    """Per model, ``turns`` cold fits per variant (its extra ``--one-fit`` arguments), each in
    a fresh process, the order alternating -> the run's record, its ``models`` {model:
    {variant: [answers]} or {"error": ...}}."""
    from _common import command_line, load_average, machine

    before = load_average()
    results = {}
    for name in models:
        runs = {variant: [] for variant in variants}
        for turn in range(turns):
            order = list(variants)[turn % 2 :] + list(variants)[: turn % 2]
            for variant in order:
                print(f"[{label}] {name} {variant} {turn + 1}/{turns}", file=sys.stderr)
                runs[variant].append(in_fresh_process("--one-fit", name, *variants[variant]))
        errors = [r["error"] for rs in runs.values() for r in rs if "error" in r]
        results[name] = {"error": errors[0]} if errors else runs
    return {
        "command": command_line(),
        "load_before": before,
        "load_after": load_average(),
        "machine": machine(),
        "turns": turns,
        "models": results,
    }


def levels_report(models: list[str], args) -> int:
    """Cold and warm fits with the epoch and prediction programs at XLA's default backend
    optimisation level and at -O1 (the initialisation program is at -O1 in both)."""
    from statistics import median

    import numpy as np
    from _common import publish

    args.warm = args.warm or 3
    warm = ("--warm", str(args.warm))
    variants = {"default": warm, "O1": (*warm, "--level", "1")}
    record = fits_in_turns(models, variants, args.levels, "levels")
    before = record["load_before"]
    rows = []
    for name, runs in record["models"].items():
        if "error" in runs:
            rows.append(f"| {name} | failed: {runs['error']} | | | | | | | |")
            continue

        def compile_s(r):
            return sum(v[s] for v in r["programs"].values() for s in STAGES)

        cold = {k: median(r["fit_s"] for r in rs) for k, rs in runs.items()}
        comp = {k: median(compile_s(r) for r in rs) for k, rs in runs.items()}
        warm_s = {k: median(t for r in rs for t in r["warm_s"]) for k, rs in runs.items()}
        gap = max(
            float(np.max(np.abs(np.subtract(a["predictions"], b["predictions"]))))
            for a in runs["O1"]
            for b in runs["default"]
        )
        rows.append(
            f"| {name} | {comp['default']:.2f} | {comp['O1']:.2f} | "
            f"{comp['default'] / comp['O1']:.2f}x | {cold['default']:.2f} | {cold['O1']:.2f} | "
            f"{warm_s['default']:.2f} | {warm_s['O1']:.2f} | "
            f"{warm_s['default'] / warm_s['O1']:.2f}x | {gap:.1e} |"
        )
    m = record["machine"]
    lines = [
        "# The epoch and prediction programs at XLA:CPU's -O1",
        "",
        f"Command: `{record['command']}`",
        "",
        f"{m['cpu']}, {m['logical_cores']} logical cores; load average before {before}, after "
        f"{record['load_after']}. Per model, a fresh process with the persistent compilation "
        f"cache off runs a cold estimator fit like Qlib's (3 epochs, train re-evaluated; at least 20 days "
        "of 300 stocks to train on, 20 to validate), then "
        f"{args.warm} warm fits with fresh estimators (compiled programs reused); "
        f"{args.levels} processes per level in turns (the order alternating), medians. The "
        "epoch and prediction programs compile at XLA's default backend optimisation level or "
        "at `xla_backend_optimization_level=1` (LLVM -O1); the initialisation program is at -O1 "
        "in both. compile s: tracing + lowering + XLA compile, summed over programs and the "
        "two compiling threads. gap: the largest |difference| of the test predictions after a "
        "warm fit, -O1 against the default.",
        "",
        "| model | compile s, default | compile s, -O1 | compile speed-up | cold fit s, default "
        "| cold fit s, -O1 | warm fit s, default | warm fit s, -O1 | warm speed-up | gap |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
        *rows,
        "",
        f"Versions: {m['versions']}; environment: {m['env']}.",
    ]
    publish(lines, args.out, stem("_levels", args.tag), record)
    return 0


def overlap_report(models: list[str], args) -> int:
    """Cold fits with the initialisation program compiled on a worker thread while the epoch
    program is traced and compiled (the engine's way) against one program after another."""
    from statistics import median

    from _common import publish

    variants = {"overlapped": (), "in_turn": ("--in-turn",)}
    record = fits_in_turns(models, variants, args.turns, "overlap")
    before = record["load_before"]
    rows = []
    for name, runs in record["models"].items():
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
    publish(lines, args.out, stem("_overlap", args.tag), record)
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
    p.add_argument(
        "--levels",
        type=int,
        help="instead: cold and warm fits with the epoch and prediction programs at XLA's "
        "default optimisation and at -O1, in fresh processes, this many times each in turns",
    )
    p.add_argument("--warm", type=int, default=0, help="warm fits per process (--levels: 3)")
    p.add_argument("--one", help=argparse.SUPPRESS)  # internal: measure one model, print JSON
    p.add_argument("--level", type=int, help=argparse.SUPPRESS)
    p.add_argument("--one-fit", help=argparse.SUPPRESS)  # internal: one cold fit, print JSON
    p.add_argument("--in-turn", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.one:
        print(json.dumps(one_model(args.one)))
        return 0
    if args.one_fit:
        print(json.dumps(cold_fit(args.one_fit, args.in_turn, args.level, args.warm)))
        return 0
    from _common import chosen_models, command_line, load_average, machine, publish

    models = chosen_models(p, args.models, MODELS)
    if args.turns:
        return overlap_report(models, args)
    if args.levels:
        return levels_report(models, args)
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
    publish(lines, args.out, stem("", args.tag), record)
    return 0


if __name__ == "__main__":
    sys.exit(main())
