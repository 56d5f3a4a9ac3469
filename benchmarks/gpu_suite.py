"""The GPU suite: every model of the zoo, qjax vs Qlib's PyTorch, on one GPU, in one run.

Run through ``benchmarks/gpu_suite.sh OUTDIR`` (which installs carried wheels, sets the
environment and enforces the wall-clock limit). Items, in order of importance, each under a
global deadline:

1. ``throughput <model>``: training and inference samples/s of qjax's engine vs Qlib's torch
   module on ``cuda:0`` driven as Qlib's wrapper drives it (per-batch ``.to(device)`` from host
   numpy arrays); exactly ``train_vs_torch.run_case``.
2. ``seeds <model>`` (LSTM, GRU, ALSTM, Transformer): Qlib's benchmark job, 20 seeds of the
   same epochs. qjax: ``fit(..., seeds=range(20))``, the seeds as vmapped replicas of one
   compiled program (cold: compilation included; warm: the same call again). torch: 20 fits
   one after another, each a fresh network and optimiser.
3. ``cudnn lstm``: Qlib's LSTM with its recurrence through ``jax.experimental.rnn`` (cuDNN) vs
   qjax's ``lax.scan`` LSTM, both trained and run by qjax's engine, after a parity check of
   both against Qlib's module on one batch.

An item starts only if its budget fits before the deadline; the others are recorded as skipped.
Results are rewritten after every item, so a run stopped from outside keeps what it measured
(``--finalize OUTDIR`` then marks the rest as not run).

``--dry-run``: tiny sizes, JAX and torch on the CPU, two seeds; every item runs (the cuDNN
timing is skipped with its reason, the parity check runs on ``lstm_ref``).
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import functools
import json
import math
import os
import re
import subprocess
import sys
import time
import traceback
from pathlib import Path
from typing import Any

SEED_MODELS = ("lstm", "gru", "alstm", "transformer")
# Seconds an item may take on an H100/H200 (compilation included); an item starts only if this
# much time is left before the deadline. Daily models compile bigger programs.
BUDGET_S = {"throughput": 25.0, "throughput_daily": 40.0, "seeds": 45.0, "cudnn": 45.0}
RESULT_KEYS = ("throughput", "seeds", "cudnn")


@dataclasses.dataclass(frozen=True)
class Sizes:
    samples: int  # train samples per model before train_vs_torch's per-model share
    repeats: int  # alternating qjax/torch repeats (medians)
    seeds: int
    seed_epochs: int
    seed_samples: int
    max_batch: int | None = None  # dry run: cap every batch size (the code paths stay the same)
    seed_repeats: int = 1


GPU_SIZES = Sizes(samples=25600, repeats=3, seeds=20, seed_epochs=2, seed_samples=25600)
DRY_SIZES = Sizes(samples=64, repeats=1, seeds=2, seed_epochs=1, seed_samples=64, max_batch=32)
# --cpu: the same items measured on the CPU (2 cores: smaller epochs, one of each job a repeat).
CPU_SIZES = Sizes(
    samples=3200, repeats=3, seeds=20, seed_epochs=1, seed_samples=3200, seed_repeats=3
)
# Dry run: small networks, so that compiling ~30 programs on two CPU cores stays short.
DRY_KWARGS = {
    "hidden_size": 8,
    "d_model": 8,
    "num_layers": 1,
    "layers": (16,),
    "output_dim": 4,
    "freq_dim": 3,
    "cnn_dim": 4,
    "rnn_dim": 4,
}


# -- items -----------------------------------------------------------------------------------


@dataclasses.dataclass
class Item:
    kind: str  # "throughput" | "seeds" | "cudnn"
    model: str
    budget_s: float

    @property
    def key(self) -> str:
        return f"{self.kind} {self.model}"


def plan(models: list[str], seed_models: list[str], cudnn: bool, tvt) -> list[Item]:
    """The seed models first (throughput, then the seed job), the cuDNN LSTM, then the rest."""

    def throughput(name):
        daily = tvt.CASES[name].batching == "daily"
        return Item("throughput", name, BUDGET_S["throughput_daily" if daily else "throughput"])

    items = []
    for name in [m for m in models if m in seed_models]:
        items += [throughput(name), Item("seeds", name, BUDGET_S["seeds"])]
    items += [Item("seeds", m, BUDGET_S["seeds"]) for m in seed_models if m not in models]
    if cudnn:
        items.append(Item("cudnn", "lstm", BUDGET_S["cudnn"]))
    items += [throughput(m) for m in models if m not in seed_models]
    return items


def small_case(case, sizes: Sizes):
    """The dry run's version of a train_vs_torch Case: capped batches, smaller networks."""
    if sizes.max_batch is None:
        return case

    def shrink(kwargs):
        out = {k: DRY_KWARGS.get(k, v) for k, v in kwargs.items()}
        if "num_channels" in out:  # TCN: two small levels
            out["num_channels"] = type(out["num_channels"])([8, 8])
        return out

    return dataclasses.replace(
        case,
        torch_kwargs=shrink(case.torch_kwargs),
        qjax_kwargs=shrink(case.qjax_kwargs),
        batch_size=min(case.batch_size, sizes.max_batch),
        predict_batch=None
        if case.predict_batch is None
        else min(case.predict_batch, sizes.max_batch),
    )


def seed_job(case, sizes: Sizes, device, watch, tvt) -> dict:
    """20 seeds of ``seed_epochs`` epochs: qjax replicas in one program vs torch fits in turn."""
    import jax
    import numpy as np
    import torch

    import qjax.models
    from qjax.train import fit

    module = qjax.models.get(case.name)(**case.qjax_kwargs)
    n = max(int(round(sizes.seed_samples * case.sample_share)), case.batch_size)
    data = tvt.make_data(case, n, seed=0)
    samples = tvt.qjax_samples(case, data)
    config = dataclasses.replace(tvt.train_config(case, data.n), n_epochs=sizes.seed_epochs)
    seeds = list(range(sizes.seeds))

    chunk = len(seeds)  # replicas per compiled program; halved if the device runs out of memory

    def qjax_job():
        for start in range(0, len(seeds), chunk):
            part = seeds[start : start + chunk]
            jax.block_until_ready(
                fit(module, samples, None, config, seeds=part, verbose=False).variables
            )

    def torch_job():  # what a loop over seeds of Qlib's `model.fit` trains
        for seed in seeds:
            # TorchRunner initialises from seed 0 (same cost); the seed drives shuffling and
            # dropout. Qlib's wrappers shuffle with numpy's global generator.
            runner = tvt.TorchRunner(case, data, device)
            torch.manual_seed(seed)
            np.random.seed(seed)  # noqa: NPY002
            for _ in range(sizes.seed_epochs):
                runner.train_epoch()

    while True:
        try:
            with watch.span() as cold:
                cold_s = tvt.timed(qjax_job)
            break
        except Exception as err:  # XLA reports an out-of-memory device as RESOURCE_EXHAUSTED
            if "RESOURCE_EXHAUSTED" not in str(err) or chunk == 1:
                raise
            chunk = max(1, chunk // 2)
    tvt.TorchRunner(case, data, device).train_epoch(max_steps=1)  # torch warm-up
    warm_s, torch_s, recompiles = tvt.alternate(qjax_job, torch_job, sizes.seed_repeats, watch)
    rows = tvt.trained_samples(case, data.n) * sizes.seed_epochs * len(seeds)
    warm, torch_rate = rows / tvt.median(warm_s), rows / tvt.median(torch_s)
    return {
        "seeds": len(seeds),
        "replicas_per_program": chunk,
        "epochs": sizes.seed_epochs,
        "samples": data.n,
        "batch_size": case.batch_size,
        "qjax_cold_s": cold_s,
        "qjax_compile_s": cold["compile_s"],
        "qjax_warm_s": warm_s,
        "torch_s": torch_s,
        "qjax_compiles_timed": recompiles,
        "qjax_seed_samples_per_s": warm,
        "qjax_cold_seed_samples_per_s": rows / cold_s,
        "torch_seed_samples_per_s": torch_rate,
        "speedup": warm / torch_rate,
        "speedup_cold": (rows / cold_s) / torch_rate,
    }


def cudnn_item(case, sizes: Sizes, device, watch, tvt, on_gpu: bool) -> dict:
    """Parity of the cuDNN and scan LSTMs with Qlib's module, then their engine throughput."""
    import _cudnn_lstm as cl
    import jax
    import numpy as np
    import torch

    from qjax.interop import from_qlib
    from qjax.train import fit, predict

    if cl.jax_rnn is None:
        return {"skipped": f"jax {jax.__version__} has no jax.experimental.rnn"}
    kw = case.qjax_kwargs
    sizes_kw = {
        "d_feat": kw["d_feat"],
        "hidden_size": kw["hidden_size"],
        "num_layers": kw["num_layers"],
    }
    torch.manual_seed(0)
    net = tvt.load(case.torch_module)(**case.torch_kwargs).eval()
    state = {k: v.detach().cpu().numpy() for k, v in net.state_dict().items()}
    x = np.random.default_rng(0).standard_normal((min(case.batch_size, 256), 360), dtype=np.float32)
    with torch.no_grad():
        reference = net(torch.from_numpy(x)).numpy()  # float32 on the CPU: no TF32
    cudnn = cl.CudnnLSTM(**sizes_kw, reference=not on_gpu, precision="highest")
    scan_module, scan_vars = from_qlib("lstm", state, **sizes_kw)
    with jax.default_matmul_precision("highest"):
        outputs = {
            "cudnn" if on_gpu else "lstm_ref": cudnn.apply(
                cl.variables_from_qlib(state, sizes_kw["num_layers"]), x
            ),
            "scan": scan_module.apply(scan_vars, x),
        }
    # float32 with the matmuls at full precision on both sides: 60 steps x 2 layers of
    # reordered sums stay near 1e-6; 1e-4 leaves room and still catches a wrong gate order.
    tolerance = 1e-4
    errors = {k: float(np.max(np.abs(np.asarray(v) - reference))) for k, v in outputs.items()}
    bad = {k: e for k, e in errors.items() if not e <= tolerance}
    if bad:
        raise AssertionError(f"LSTM outputs differ from Qlib's module by {bad} > {tolerance}")
    result: dict[str, Any] = {
        "parity_max_abs_error": errors,
        "parity_tolerance": tolerance,
        "parity_batch": x.shape[0],
        "kernel": "jax.experimental.rnn.lstm (cuDNN)" if on_gpu else "lstm_ref",
    }
    if not on_gpu:  # the timing code still runs, on lstm_ref, so that it cannot rot
        result["skipped"] = (
            "jax.experimental.rnn.lstm lowers on CUDA only; on this backend "
            "the parity check and the timing code ran through lstm_ref, "
            "whose numbers say nothing about cuDNN"
        )
    n = max(sizes.samples, case.batch_size)
    data = tvt.make_data(case, n, seed=0)
    samples = tvt.qjax_samples(case, data)
    config = tvt.train_config(case, data.n)
    modules = {"scan": scan_module, "cudnn": cl.CudnnLSTM(**sizes_kw, reference=not on_gpu)}
    rows = tvt.trained_samples(case, data.n)
    timings: dict[str, dict] = {}
    fitted = {}
    for name, module in modules.items():  # compile both first (train and predict programs)
        with watch.span() as got:
            fitted[name] = fit(module, samples, None, config, verbose=False)
            predict(module, fitted[name].replica(0), samples, batch_size=case.batch_size)
        timings[name] = {"compile_s": got["compile_s"], "train_s": [], "infer_s": []}

    def train(module):
        jax.block_until_ready(fit(module, samples, None, config, verbose=False).variables)

    for _ in range(sizes.repeats):  # alternate
        for name, module in modules.items():
            variables = fitted[name].replica(0)
            timings[name]["train_s"].append(tvt.timed(functools.partial(train, module)))
            timings[name]["infer_s"].append(
                tvt.timed(
                    functools.partial(
                        predict, module, variables, samples, batch_size=case.batch_size
                    )
                )
            )
    for t in timings.values():
        t["train_samples_per_s"] = rows / tvt.median(t["train_s"])
        t["infer_samples_per_s"] = data.n / tvt.median(t["infer_s"])
    result.update(
        timings=timings,
        samples=data.n,
        batch_size=case.batch_size,
        train_speedup=timings["cudnn"]["train_samples_per_s"]
        / timings["scan"]["train_samples_per_s"],
        infer_speedup=timings["cudnn"]["infer_samples_per_s"]
        / timings["scan"]["infer_samples_per_s"],
    )
    return result


# -- machine ---------------------------------------------------------------------------------


def gpu_description() -> dict:
    """GPU name, driver and memory from nvidia-smi (empty where there is none)."""
    try:
        text = subprocess.run(
            ["nvidia-smi", "--query-gpu=name,driver_version,memory.total", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=20,
            check=True,
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return {}
    rows = [[field.strip() for field in line.split(",")] for line in text.strip().splitlines()]
    return {"gpus": [dict(zip(("name", "driver", "memory"), row)) for row in rows]}


def machine_description(torch) -> dict:
    import importlib.metadata

    import jax
    from _common import machine

    info = machine(torch)
    info.update(gpu_description())
    info["jax_device_kind"] = jax.devices()[0].device_kind
    info["torch_cuda"] = torch.version.cuda
    info["torch_cudnn"] = (
        torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None
    )
    plugins = {}
    for dist in importlib.metadata.distributions():
        name = dist.metadata["Name"] or ""
        if name.startswith(("jax-cuda", "jax_cuda", "nvidia-cudnn")):
            plugins[name] = dist.version
    info["jax_plugins"] = plugins
    return info


def machine_tag(info: dict, dry_run: bool) -> str:
    if dry_run:
        return "cpu_dry_run"
    name = info["gpus"][0]["name"] if info.get("gpus") else info["jax_device_kind"]
    return re.sub(r"[^a-z0-9]+", "_", name.lower()).strip("_")


# -- report ----------------------------------------------------------------------------------


def _x(value) -> str:
    return "–" if value is None or not math.isfinite(value) else f"{value:.2f}x"


def _n(value) -> str:
    return "–" if value is None or not math.isfinite(value) else f"{value:,.0f}"


def _throughput_row(name: str, res: dict) -> str:
    t, i = res["train"], res["infer"]
    return (
        f"| {name} | {_n(t['qjax_samples_per_s'])} | {_n(t['torch_samples_per_s'])} | "
        f"{_x(t['speedup'])} | {_n(i['qjax_samples_per_s'])} | "
        f"{_n(i['torch_samples_per_s'])} | "
        f"{_x(i['speedup'])} | {t['qjax_compile_s'] + i['qjax_compile_s']:.1f} |"
    )


def _seeds_row(name: str, s: dict) -> str:
    return (
        f"| {name} | {s['samples']} ({s['seeds']} seeds, {s['replicas_per_program']} per "
        f"program) | {_n(s['qjax_seed_samples_per_s'])} | "
        f"{_n(s['qjax_cold_seed_samples_per_s'])} ({s['qjax_compile_s']:.1f}) | "
        f"{_n(s['torch_seed_samples_per_s'])} | {_x(s['speedup'])} | {_x(s['speedup_cold'])} |"
    )


def report(r: dict) -> str:
    from _common import results_table
    from _flops import flops_lines

    m, sizes = r["machine"], r["sizes"]
    gpus = m.get("gpus") or [{"name": m.get("jax_device_kind"), "driver": "?", "memory": "?"}]
    on_cpu = r["machine_tag"] == "cpu"
    lines = [
        f"# qjax vs Qlib's PyTorch on {gpus[0]['name']}"
        + (" (dry run)" if r["dry_run"] else "")
        + (
            f" ({m.get('cpu', 'CPU')}, {m.get('logical_cores', '?')} logical cores)"
            if on_cpu
            else ""
        ),
        "",
        f"Command: `{r['command']}`",
        "",
        f"Run {r['started']}, {r['elapsed_s']:.0f} s of a {r['budget_s']:.0f} s budget; state: "
        f"**{r['state']}**. Speed-up = qjax rate / torch rate (above 1: qjax is faster)."
        + (
            f" Load average (1/5/15 min) before {r.get('load_before')}, after "
            f"{r.get('load_after')}."
            if on_cpu
            else ""
        ),
        "",
        "## Training and inference throughput (samples/s)",
        "",
        *results_table(
            [
                "model",
                *("qjax train", "torch train", "speed-up"),
                *("qjax infer", "torch infer", "speed-up"),
                "qjax compile s",
            ],
            "lrrrrrrr",
            r["throughput"],
            _throughput_row,
        ),
        "",
        *flops_lines({"matmul_peak": r.get("matmul_peak"), "models": r["throughput"]}),
        f"## The {sizes['seeds']}-seed job (seeds x samples/s; {sizes['seed_epochs']} epochs each)",
        "",
        "qjax: one `fit(..., seeds=[...])`, the seeds as vmapped replicas of one compiled program; "
        "cold includes compilation. torch: one fit per seed, one after another.",
        "",
        *results_table(
            [
                "model",
                "samples",
                *("qjax warm", "qjax cold (compile s)", "torch"),
                *("speed-up warm", "speed-up cold"),
            ],
            "lrrrrrr",
            r["seeds"],
            _seeds_row,
        ),
        "",
        "## LSTM: cuDNN (`jax.experimental.rnn`) vs `lax.scan`, both in qjax's engine",
        "",
    ]
    c = r["cudnn"].get("lstm")
    if c is None:
        lines.append("Not run.")
    elif "error" in c:
        lines.append(f"Failed: {c['error']}")
    else:
        if "parity_max_abs_error" in c:
            errors = ", ".join(f"{k} {v:.1e}" for k, v in c["parity_max_abs_error"].items())
            lines.append(
                f"Parity with Qlib's `LSTMModel` on one batch of {c['parity_batch']} "
                f"(max abs error, tolerance {c['parity_tolerance']:g}): {errors}."
            )
        if "timings" in c:
            t = c["timings"]
            lines += [
                "",
                "| path | train samples/s | infer samples/s | compile s |",
                "|---|---:|---:|---:|",
                *[
                    f"| {'lax.scan' if k == 'scan' else c['kernel']} | "
                    f"{_n(v['train_samples_per_s'])} | {_n(v['infer_samples_per_s'])} | "
                    f"{v['compile_s']:.1f} |"
                    for k, v in t.items()
                ],
                "",
                f"{c['kernel']} / lax.scan: train {_x(c['train_speedup'])}, "
                f"inference {_x(c['infer_speedup'])}.",
            ]
        if "skipped" in c:
            lines += ["", f"cuDNN timing skipped: {c['skipped']}."]
    if r["skipped"]:
        lines += ["", "## Skipped", "", *[f"- {k}: {v}" for k, v in r["skipped"].items()]]
    lines += [
        "",
        "## Method",
        "",
        f"- Throughput: `train_vs_torch.run_case` with --samples {sizes['samples']} (scaled per "
        f"model as there), medians of {sizes['repeats']} alternating repeats; torch on "
        f"`{m.get('torch_device')}` with Qlib's per-batch `.to(device)` from host numpy arrays.",
        f"- Seed job: {sizes['seed_samples']} samples (scaled per model), "
        f"{sizes['seed_repeats']} timed repeat(s) after a cold call.",
        *(
            []
            if on_cpu
            else [
                "- JAX's allocator does not preallocate (`XLA_PYTHON_CLIENT_PREALLOCATE=false`), so "
                "torch and XLA share the device."
            ]
        ),
        "",
        "## Machine",
        "",
        *(
            []
            if on_cpu
            else [
                "- GPU: "
                + "; ".join(f"{g['name']} (driver {g['driver']}, {g['memory']})" for g in gpus)
            ]
        ),
        f"- JAX backend `{m['jax_backend']}` ({', '.join(m['jax_devices'])}); torch device "
        f"`{m.get('torch_device')}`, CUDA {m.get('torch_cuda')}, cuDNN {m.get('torch_cudnn')}",
        f"- CPU: {m['cpu']}, {m['logical_cores']} logical cores, {m['ram_gib']} GiB RAM; "
        f"{m['platform']}",
        "- Versions: "
        + ", ".join(f"{k} {v}" for k, v in m["versions"].items())
        + f", Python {m['python']}; JAX plugins {m.get('jax_plugins') or 'none'}",
        f"- Environment: {m['env'] or 'no threading/allocator variables set'}",
        "",
    ]
    return "\n".join(lines)


def write(record: dict, out: Path) -> None:
    tag = record["machine_tag"]
    stem = out / ("gpu_suite_on_cpu" if tag == "cpu" else f"gpu_{tag}")
    for suffix, text in (
        (".json", json.dumps(record, indent=1, default=str) + "\n"),
        (".md", report(record)),
    ):
        tmp = stem.with_suffix(suffix + ".tmp")
        tmp.write_text(text)
        tmp.replace(stem.with_suffix(suffix))  # never a half-written result file


def finalize(out: Path) -> None:
    """After the run was stopped from outside: the running and pending items become skipped."""
    for path in sorted(out.glob("gpu_*.json")):
        record = json.loads(path.read_text())
        if record.get("state") != "running":
            continue
        for key in [record.get("running")] + record.get("pending", []):
            if key:
                record["skipped"][key] = "stopped by the suite's hard time limit"
        record.update(state="stopped at the time limit", running=None, pending=[])
        write(record, out)
        print(f"finalized {path}", file=sys.stderr)


# -- main ------------------------------------------------------------------------------------


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, required=True, help="folder for gpu_<machine>.{md,json}")
    p.add_argument("--dry-run", action="store_true", help="tiny sizes, JAX and torch on the CPU")
    p.add_argument(
        "--cpu",
        action="store_true",
        help="measure on the CPU (both sides) at CPU "
        "sizes, e.g. the 20-seed job on a machine without a GPU",
    )
    p.add_argument(
        "--deadline-at",
        type=float,
        default=None,
        help="unix time by which every item must be done (default: now + --budget-s)",
    )
    p.add_argument("--budget-s", type=float, default=420.0)
    p.add_argument("--models", default=None, help="comma-separated (default: the whole zoo)")
    p.add_argument("--seed-models", default=",".join(SEED_MODELS))
    p.add_argument("--no-cudnn", action="store_true", help="skip the cuDNN LSTM comparison")
    p.add_argument(
        "--finalize",
        action="store_true",
        help="only mark a stopped run's unfinished items in --out as skipped",
    )
    args = p.parse_args(argv)
    if args.out.exists() and not args.out.is_dir():
        p.error(f"--out {args.out} is a file; give a folder for the results")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.finalize:
        finalize(args.out)
        return 0
    started_at = time.time()
    deadline = args.deadline_at if args.deadline_at is not None else started_at + args.budget_s
    if (args.dry_run or args.cpu) and os.environ.get("JAX_PLATFORMS") != "cpu":
        os.environ["JAX_PLATFORMS"] = "cpu"  # before JAX initialises
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import _flops
    import jax
    import torch
    import train_vs_torch as tvt  # imports torch, JAX and qjax

    known = list(tvt.CASES)
    models = (
        known if args.models is None else [m.strip() for m in args.models.split(",") if m.strip()]
    )
    seed_models = [m.strip() for m in args.seed_models.split(",") if m.strip()]
    unknown = sorted(set(models + seed_models) - set(known))
    if unknown:
        raise SystemExit(f"unknown model(s) {unknown}; choose from {', '.join(known)}")
    on_gpu = jax.default_backend() == "gpu"
    if args.dry_run:
        device = torch.device("cpu")
        torch.get_device = lambda tensor: "cpu"  # Qlib's HIST asks its input for a CUDA device
        # One thread: the dry run checks code paths, and an oversubscribed OpenMP pool on a
        # busy CI machine can make torch's side many times slower than the rest of the run.
        torch.set_num_threads(1)
    elif args.cpu:
        device = torch.device("cpu")
        torch.get_device = lambda tensor: "cpu"
    else:
        if not (on_gpu and torch.cuda.is_available()):
            raise SystemExit(
                f"the GPU suite needs a CUDA GPU for both sides (JAX backend: "
                f"{jax.default_backend()}, torch CUDA: {torch.cuda.is_available()}); "
                "run with --dry-run for a CPU check of the script"
            )
        device = torch.device("cuda:0")
    import logging
    import warnings

    from qlib.config import C

    C.logging_level = logging.WARNING
    warnings.filterwarnings("ignore", category=UserWarning)
    warnings.filterwarnings("ignore", category=FutureWarning, module="torch")

    sizes = DRY_SIZES if args.dry_run else CPU_SIZES if args.cpu else GPU_SIZES
    info = machine_description(torch)
    items = plan(models, seed_models, not (args.no_cudnn or args.cpu), tvt)
    record: dict[str, Any] = {
        # gpu_suite.sh passes the line it was called with (its output folder left out)
        "command": os.environ.get("QJAX_SUITE_COMMAND") or tvt.command_line(),
        "dry_run": args.dry_run,
        "state": "running",
        "started": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "budget_s": deadline - started_at,
        "elapsed_s": 0.0,
        "sizes": dataclasses.asdict(sizes),
        "machine": info,
        "machine_tag": "cpu" if args.cpu else machine_tag(info, args.dry_run),
        "load_before": tvt.load_average(),
        "matmul_peak": _flops.matmul_peak(256 if args.dry_run else 2048 if args.cpu else 8192),
        "running": None,
        "pending": [item.key for item in items],
        "skipped": {},
        **{key: {} for key in RESULT_KEYS},
    }
    args.out.mkdir(parents=True, exist_ok=True)
    watch = tvt.CompileWatch()
    for item in items:
        record["pending"].remove(item.key)
        left = deadline - time.time()
        if left < item.budget_s * (0.0 if args.dry_run else 1.0):
            record["skipped"][item.key] = (
                f"{left:.0f} s left before the deadline, budget {item.budget_s:.0f} s"
            )
            continue
        record["running"] = item.key
        write(record, args.out)
        print(f"[{time.time() - started_at:5.0f} s] {item.key} ...", file=sys.stderr, flush=True)
        case = small_case(tvt.CASES[item.model], sizes)
        try:
            if item.kind == "throughput":
                result = tvt.run_case(case, sizes.samples, sizes.repeats, watch, device)
            elif item.kind == "seeds":
                result = seed_job(case, sizes, device, watch, tvt)
            else:
                result = cudnn_item(case, sizes, device, watch, tvt, on_gpu)
        except Exception as err:  # keep the other items' numbers
            traceback.print_exc()
            result = {"error": f"{type(err).__name__}: {err}"}
        record[item.kind][item.model] = result
        record["running"] = None
        record["elapsed_s"] = time.time() - started_at
        write(record, args.out)
    record.update(
        state="complete", elapsed_s=time.time() - started_at, load_after=tvt.load_average()
    )
    write(record, args.out)
    print(report(record))
    failed = [
        f"{kind} {name}"
        for kind in RESULT_KEYS
        for name, res in record[kind].items()
        if "error" in res
    ]
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
