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

    python benchmarks/compile_programs_cpu.py --out benchmarks/results
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


def one_model(name: str) -> dict:
    """Run in a fresh process: the per-program compile seconds of one cold estimator fit, and
    the initialisation program at each optimisation level."""
    os.environ["QJAX_COMPILATION_CACHE"] = "off"
    import jax
    import jax.monitoring
    import jax.numpy as jnp
    import numpy as np
    from train_vs_torch import CASES, e2e_frame, make_data, qjax_samples

    import qjax
    from qjax.data.dataset import Dataset
    from qjax.data.handler import DataHandler

    case = CASES[name]
    seconds: dict = collections.defaultdict(lambda: dict.fromkeys(STAGES, 0.0))

    def listen(event: str, duration: float, **kw) -> None:
        stage = event.rsplit("/", 1)[-1]
        if stage in STAGES:
            program = str(kw.get("fun_name", "?")).removeprefix("jit(").removesuffix(")")
            seconds[program][stage] += duration

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
    programs = {k: v for k, v in seconds.items() if sum(v.values()) >= 0.05}

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


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--models", default=",".join(MODELS))
    p.add_argument("--out", help="write compile_programs_cpu.{md,json} here")
    p.add_argument("--tag", help="write compile_programs_cpu_<tag>.{md,json} instead")
    p.add_argument("--one", help=argparse.SUPPRESS)  # internal: measure one model, print JSON
    args = p.parse_args(argv)
    if args.one:
        print(json.dumps(one_model(args.one)))
        return 0
    from _common import chosen_models, command_line, load_average, machine, publish

    models = chosen_models(p, args.models, MODELS)
    before = load_average()
    results = {}
    for name in models:
        print(f"[compile] {name} ...", file=sys.stderr, flush=True)
        done = subprocess.run(
            [sys.executable, __file__, "--one", name],
            capture_output=True,
            text=True,
            cwd=HERE,
            check=False,
        )
        lines = done.stdout.strip().splitlines()
        if done.returncode or not lines:
            results[name] = {"error": (done.stderr.strip().splitlines() or ["?"])[-1]}
            continue
        results[name] = json.loads(lines[-1])
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
        total = {k: sum(v.values()) for k, v in r["programs"].items()}
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
