"""Shared helpers for the benchmark scripts: machine description, load average, compile watch.

Import from a script in this folder (``python benchmarks/<script>.py`` puts the folder on
``sys.path``). Nothing here imports torch or qlib at module level, so a script can describe a
machine that lacks them.
"""

from __future__ import annotations

import contextlib
import dataclasses
import gzip
import importlib
import json
import os
import platform
import shlex
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

# glibc malloc tuning: with a high mmap threshold and no trimming, large freed buffers stay on
# the heap for reuse instead of going back to the kernel and being mapped again.
GLIBC_MALLOC_ENV = (
    "MALLOC_MMAP_THRESHOLD_",
    "MALLOC_TRIM_THRESHOLD_",
    "MALLOC_TOP_PAD_",
    "MALLOC_ARENA_MAX",
    "GLIBC_TUNABLES",
)
# Environment variables that change threading or memory allocation on either side.
ALLOCATION_ENV = (
    "LD_PRELOAD",  # jemalloc/tcmalloc swap glibc malloc under torch (and XLA's CPU buffers)
    *GLIBC_MALLOC_ENV,
    "OMP_NUM_THREADS",
    "MKL_NUM_THREADS",
    "XLA_FLAGS",
    "XLA_PYTHON_CLIENT_PREALLOCATE",
    "XLA_PYTHON_CLIENT_ALLOCATOR",
    "XLA_PYTHON_CLIENT_MEM_FRACTION",
    "TF_CPP_MIN_LOG_LEVEL",
)


def command_line() -> str:
    """The command that produced this run, as one shell line (relative paths as typed).

    A process restricted to some cores (``taskset``) gets the same ``taskset`` prefix, so the
    line reproduces the run.
    """
    command = shlex.join(["python", *sys.argv])
    if hasattr(os, "sched_getaffinity"):
        cpus = sorted(os.sched_getaffinity(0))
        if len(cpus) < (os.cpu_count() or len(cpus)):
            command = f"taskset -c {','.join(map(str, cpus))} {command}"
    return command


def load_average() -> list[float]:
    """1, 5 and 15 minute load averages (what else ran on the machine)."""
    try:
        return [float(v) for v in Path("/proc/loadavg").read_text().split()[:3]]
    except OSError:
        return [float(v) for v in os.getloadavg()]


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def ram_gib() -> float | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return round(int(line.split()[1]) / 2**20, 1)
    except OSError:
        pass
    return None


def versions(*names: str) -> dict[str, str | None]:
    found = {}
    for name in names:
        try:
            found[name] = getattr(importlib.import_module(name), "__version__", "?")
        except ImportError:
            found[name] = None
    return found


def host(*packages: str) -> dict:
    """CPU, memory, platform, Python and the versions of ``packages`` (no JAX imported)."""
    return {
        "cpu": cpu_model(),
        "logical_cores": os.cpu_count(),
        "ram_gib": ram_gib(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "versions": versions(*packages),
    }


def machine(torch_module=None) -> dict:
    """CPU, memory, accelerators, library versions, threads and allocators of this process."""
    import jax

    info = {
        **host("jax", "jaxlib", "flax", "optax", "numpy", "pandas", "torch", "qlib"),
        "jax_backend": jax.default_backend(),
        "jax_devices": [str(d) for d in jax.devices()],
        "env": {k: os.environ[k] for k in ALLOCATION_ENV if k in os.environ},
    }
    gpu = jax.default_backend() == "gpu"
    preloaded = os.environ.get("LD_PRELOAD", "")
    tuning = ", ".join(f"{k}={os.environ[k]}" for k in GLIBC_MALLOC_ENV if k in os.environ)
    malloc = (
        f"LD_PRELOAD={preloaded}"
        if preloaded
        else "glibc malloc" + (f" ({tuning})" if tuning else " (defaults)")
    )
    info["allocators"] = {
        "jax": (
            f"XLA GPU BFC allocator (preallocate={os.environ.get('XLA_PYTHON_CLIENT_PREALLOCATE', 'true')})"
            if gpu
            else f"XLA CPU default (aligned malloc on {malloc})"
        ),
    }
    if torch_module is not None:
        torch = torch_module
        cuda = torch.cuda.is_available()
        info["torch_device"] = torch.cuda.get_device_name(0) if cuda else "cpu"
        info["torch_threads"] = torch.get_num_threads()
        info["torch_interop_threads"] = torch.get_num_interop_threads()
        info["torch_parallel_info"] = torch.__config__.parallel_info().splitlines()[:8]
        info["allocators"]["torch"] = (
            "CUDA caching allocator (default)" if cuda else f"c10 default CPU allocator on {malloc}"
        )
    info["jax_threads"] = "XLA default: intra-op pool sized to the visible cores"
    return info


def publish(lines: list[str], out: str | None, stem: str, payload: dict) -> None:
    """Print the markdown report; with ``out``, also write ``<out>/<stem>.md`` and ``.json``."""
    text = "\n".join(lines) + "\n"
    print(text)
    if out:
        (Path(out) / f"{stem}.md").write_text(text)
        (Path(out) / f"{stem}.json").write_text(json.dumps(payload, indent=2, default=str))


def measure_each_model(
    label: str, names: list[str], measure: Callable[[str], dict], report, args, stem: str
) -> None:
    """``measure(name)`` per model (progress on stderr), then ``report(results, machine, loads,
    args)`` published as ``stem`` with the command, the machine and the load average around it."""
    before = load_average()
    results = {}
    for name in names:
        print(f"[{label}] {name} ...", file=sys.stderr, flush=True)
        results[name] = measure(name)
    loads = (before, load_average())
    info = machine()
    publish(
        report(results, info, loads, args),
        args.out,
        stem,
        {"command": command_line(), "machine": info, "load": loads, "results": results},
    )


def args_record(args, leave_out: tuple[str, ...] = ("data", "out")) -> dict:
    """The parsed command-line arguments for a report, paths as text, ``leave_out`` dropped."""
    return {
        k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items() if k not in leave_out
    }


def table_head(columns: list[str], align: str) -> list[str]:
    """A Markdown table's header and rule lines; ``align`` has a letter a column: ``l`` or
    ``r``."""
    rule = {"l": "---", "r": "---:"}
    return ["| " + " | ".join(columns) + " |", "|" + "|".join(rule[a] for a in align) + "|"]


def results_table(
    columns: list[str],
    align: str,
    results: dict[str, dict],
    row: Callable[[str, dict], str],
    failed: str = "failed",
) -> list[str]:
    """A Markdown table with a row for each ``name: result``: ``row(name, result)``, or, for a
    result holding an ``"error"``, the name, ``failed: <error>`` and empty cells."""
    blank = " |" * (len(columns) - 2)
    return [
        *table_head(columns, align),
        *(
            f"| {name} | {failed}: {res['error']} |" + blank if "error" in res else row(name, res)
            for name, res in results.items()
        ),
    ]


def chosen_models(parser, text: str, known) -> list[str]:
    """The comma-separated model names of ``--models``; an unknown one is a usage error."""
    names = [m.strip() for m in text.split(",") if m.strip()]
    unknown = sorted(set(names) - set(known))
    if unknown:
        parser.error(f"unknown models {unknown}; choose from {list(known)}")
    return names


def median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def largest_relative_difference(a, b) -> float:
    """Over the leaves of two pytrees: the largest |a - b| relative to the largest |b|."""
    import jax
    import jax.numpy as jnp

    return max(
        float(jnp.abs(x - y).max() / jnp.abs(y).max())
        for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b))
    )


@dataclasses.dataclass
class CompileWatch:
    """Counts JAX compilations (and their trace + lower + XLA seconds) via ``jax.monitoring``.

    A compilation during a timed repeat means a program was rebuilt for a call that should have
    hit the cache, so the benchmarks report ``compiles`` for the timed part of every measurement.
    """

    compiles: int = 0
    seconds: float = 0.0

    _EVENTS = (
        "/jax/core/compile/jaxpr_trace_duration",
        "/jax/core/compile/jaxpr_to_mlir_module_duration",
        "/jax/core/compile/backend_compile_duration",
    )

    def __post_init__(self):
        import jax.monitoring

        jax.monitoring.register_event_duration_secs_listener(self._on_event)

    def _on_event(self, event: str, duration: float, **_) -> None:
        if event in self._EVENTS:
            self.seconds += duration
            if event == self._EVENTS[-1]:
                self.compiles += 1

    @contextlib.contextmanager
    def span(self) -> Iterator[dict]:
        """``with watch.span() as got:`` -> ``got["compiles"]``, ``got["compile_s"]`` on exit."""
        before = (self.compiles, self.seconds)
        got: dict = {}
        try:
            yield got
        finally:
            got["compiles"] = self.compiles - before[0]
            got["compile_s"] = self.seconds - before[1]


def traced(fn: Callable[[], object]) -> tuple[float, list[dict]]:
    """Wall seconds of ``fn()`` under ``jax.profiler`` and the trace's events (perfetto JSON)."""
    import jax

    with tempfile.TemporaryDirectory() as folder:
        jax.profiler.start_trace(folder, create_perfetto_trace=True)
        wall = timed(fn)
        jax.profiler.stop_trace()
        trace = next(Path(folder).rglob("perfetto_trace.json.gz"))
        with gzip.open(trace) as stream:
            return wall, json.load(stream)["traceEvents"]


def clocked(fn) -> tuple[float, float]:
    """(wall, process CPU) seconds of ``fn()``."""
    wall, cpu = time.perf_counter(), time.process_time()
    fn()
    return time.perf_counter() - wall, time.process_time() - cpu


def rotate(runs: dict, repeats: int) -> dict[str, dict[str, list[float]]]:
    """Each run ``repeats`` times, in turns, the order rotating every repeat."""
    names = list(runs)
    out = {name: {"wall": [], "cpu": []} for name in names}
    for r in range(repeats):
        for name in names[r % len(names) :] + names[: r % len(names)]:
            wall, cpu = clocked(runs[name])
            out[name]["wall"].append(wall)
            out[name]["cpu"].append(cpu)
    return out


def timed(fn: Callable[[], object]) -> float:
    """Wall seconds of ``fn()`` (``fn`` must block until its work is done)."""
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start
