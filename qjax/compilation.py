"""Compilation: JAX's persistent compilation cache on by default, and compile seconds measured.

A cold ``fit`` spends seconds tracing and compiling its programs, often more than a short run
trains. JAX can keep compiled XLA programs on disk and reuse them in a later process; qjax turns
that on the first time ``fit`` runs (and in the CLI), in ``$QJAX_COMPILATION_CACHE`` (default
``~/.cache/qjax/xla``). ``QJAX_COMPILATION_CACHE=off`` leaves it off; a cache directory the
process configured itself (``jax.config.update("jax_compilation_cache_dir", ...)``) is kept.

:class:`CompileClock` adds up the seconds JAX spends tracing, lowering, compiling (or fetching a
compiled program from the cache), read through ``jax.monitoring``; ``fit`` reports them as
``FitResult.compile_seconds``.

:data:`CPU_DOTS` names the XLA:CPU matrix-product backends and :data:`CPU_OPT_LEVELS` the
backend optimisation levels a model's programs can be compiled for (:func:`jit_per_cpu_choice`).

:func:`keep_below_map_limit` keeps a long process (a rolling run, a notebook fitting model
after model, a test session) from dying inside XLA's compiler: see its docstring.
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import logging
import os
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

ENV = "QJAX_COMPILATION_CACHE"
DEFAULT_DIR = Path.home() / ".cache" / "qjax" / "xla"
# A bounded cache is JAX's LRU mode, the only one that takes a file lock around each read and
# write. Unbounded, JAX writes an entry in place, and a second process (a pytest-xdist worker, a
# second run) can read it half written and abort while deserialising it.
MAX_CACHE_BYTES = 4 * 2**30
# jax.monitoring events that together make a program's compile cost.
COMPILE_EVENTS = (
    "/jax/core/compile/jaxpr_trace_duration",
    "/jax/core/compile/jaxpr_to_mlir_module_duration",
    "/jax/core/compile/backend_compile_duration",
    "/jax/compilation_cache/cache_retrieval_time_sec",
)


def default_cache_dir() -> str:
    """``$QJAX_COMPILATION_CACHE`` or ``~/.cache/qjax/xla`` ("off" when opted out)."""
    return os.environ.get(ENV, str(DEFAULT_DIR))


def use_compilation_cache(path: str) -> None:
    """Turn on JAX's persistent compilation cache in ``path`` ("" or "off": leave it off).

    A cache the process already configured is kept (the CLI also runs inside the test suite).
    """
    import jax

    if not path or path.lower() == "off" or jax.config.jax_compilation_cache_dir:
        return
    jax.config.update("jax_compilation_cache_dir", str(Path(path).expanduser()))
    jax.config.update("jax_compilation_cache_max_size", MAX_CACHE_BYTES)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)


_default_done = False


def enable_default_cache() -> None:
    """The library default: :func:`use_compilation_cache` in :func:`default_cache_dir`, once."""
    global _default_done
    if not _default_done:
        _default_done = True
        use_compilation_cache(default_cache_dir())


def before_compiling() -> None:
    """What ``fit`` and ``predict`` do first: :func:`enable_default_cache` and
    :func:`keep_below_map_limit`."""
    enable_default_cache()
    keep_below_map_limit()


class CompileClock:
    """Seconds of JAX compilation work in this process (all threads), as a running total."""

    _lock = threading.Lock()
    _seconds = 0.0
    _registered = False

    @classmethod
    def total(cls) -> float:
        cls._register()
        return cls._seconds

    @classmethod
    @contextlib.contextmanager
    def measure(cls) -> Iterator[dict]:
        """``with CompileClock.measure() as got:`` -> ``got["seconds"]`` on exit."""
        start = cls.total()
        got: dict = {}
        try:
            yield got
        finally:
            got["seconds"] = cls._seconds - start

    @classmethod
    def _register(cls) -> None:
        with cls._lock:
            if cls._registered:
                return
            import jax.monitoring

            jax.monitoring.register_event_duration_secs_listener(cls._on_event)
            cls._registered = True

    @classmethod
    def _on_event(cls, event: str, duration: float, **_) -> None:
        if event in COMPILE_EVENTS:
            with cls._lock:
                cls._seconds += duration


# -- XLA:CPU's compile choices per model --------------------------------------------------------

# XLA:CPU hands its dots to YNNPACK fusions; this compiler option, set empty, leaves them to
# Eigen, which runs some models' programs faster (benchmarks/results/xla_dots_cpu.md). A
# compiler option holds for a whole program, so each choice is a program of its own.
CPU_DOTS = {"default": {}, "eigen": {"xla_cpu_experimental_ynn_fusion_type": ""}}

# LLVM's optimisation level for XLA:CPU's code. Neither allows fast-math, but the levels may
# fuse multiply-adds or vectorise sums differently: predictions moved by at most 1.3e-7, TabNet's
# by 2.6e-3. -O1 compiles faster and ran SFM's epoch program faster too
# (benchmarks/results/compile_programs_cpu_levels*.md).
CPU_OPT_LEVELS = {"default": {}, "O1": {"xla_backend_optimization_level": 1}}

# A program that runs once per fit (initialisation) is compiled at LLVM's -O1: the same values
# bit for bit in every model, 15-45% less compile time than the default level; -O0 saves more
# but changes initial values by up to 1e-6 (benchmarks/results/compile_programs_cpu.md).
RUN_ONCE = dict(CPU_OPT_LEVELS["O1"])  # a copy: benchmarks rewrite the levels


def jit_takes_options() -> bool:
    """Whether ``jax.jit`` takes ``compiler_options`` (newer than the jax 0.4.30 floor)."""
    import jax

    return "compiler_options" in inspect.signature(jax.jit).parameters


def jit_with_options(fn: Callable, options: dict, **jit_kwargs) -> Callable:
    """``jax.jit(fn, **jit_kwargs)`` compiled with XLA ``options``; plainly jitted where ``jit``
    takes no compiler options."""
    import jax

    if not options or not jit_takes_options():
        return jax.jit(fn, **jit_kwargs)
    return jax.jit(fn, compiler_options=options, **jit_kwargs)


def jit_run_once(fn: Callable, **jit_kwargs) -> Callable:
    """``fn`` jitted with :data:`RUN_ONCE`'s compiler options (``jit_kwargs`` as ``jax.jit``)."""
    return jit_with_options(fn, RUN_ONCE, **jit_kwargs)


def jit_per_cpu_choice(fn: Callable, **jit_kwargs) -> dict[tuple[str, str], Callable]:
    """``fn`` jitted once per pair of a :data:`CPU_DOTS` and a :data:`CPU_OPT_LEVELS` choice,
    keyed by their names (``jit_kwargs`` as ``jax.jit``).

    A JAX whose ``jit`` takes no compiler options gets the default program under every key.
    """
    return {
        (dots, level): jit_with_options(
            fn, {**CPU_DOTS[dots], **CPU_OPT_LEVELS[level]}, **jit_kwargs
        )
        for dots in CPU_DOTS
        for level in CPU_OPT_LEVELS
    }


def compile_in_background(lowered: Any) -> Future:
    """Start XLA's compile of a lowered program on a worker thread; ``.result()`` waits for
    the compiled program (and raises what compiling raised).

    XLA compiles without holding Python's GIL, so the caller traces and lowers its next program
    meanwhile. The compiled program lands in JAX's caches, where a later call of the same
    ``jit`` with arguments of the lowered shapes and placements finds it.
    """
    return _compiler().submit(lowered.compile)


@functools.cache
def _compiler() -> ThreadPoolExecutor:
    return ThreadPoolExecutor(max_workers=1, thread_name_prefix="qjax-compile")


@functools.cache
def eigen_dots_available() -> bool:
    """Whether this XLA:CPU takes the Eigen option: older ones have no YNNPACK, so their dots
    are Eigen's already and the default program is the Eigen one. Compiles a one-op program
    once per process (a few milliseconds)."""
    import jax
    import numpy as np

    if not jit_takes_options():
        return False
    one = jax.device_put(np.zeros(1, np.float32), jax.devices("cpu")[0])
    try:
        jax.jit(lambda x: x + 1, compiler_options=CPU_DOTS["eigen"]).lower(one).compile()
    except Exception as error:  # XlaRuntimeError: INVALID_ARGUMENT: No such compile option
        if "compile option" not in str(error):
            raise
        return False
    return True


def check_cpu_choice(value: str | None, choices: dict, where: str) -> None:
    """A clear error unless ``value`` names one of ``choices`` (:data:`CPU_DOTS`,
    :data:`CPU_OPT_LEVELS`; None: the model's)."""
    if value is not None and value not in choices:
        raise ValueError(
            f"{where}={value!r} is invalid; expected one of {sorted(choices)} or None (the "
            "model's measured choice)"
        )


# -- memory maps --------------------------------------------------------------------------------

# XLA:CPU loads each compiled kernel into pages of its own (a code, a constant and a data map
# per kernel: 500-800 maps for one RNN's training programs), and JAX keeps every compiled
# program in its caches for the life of the process, also those that will never run again (a
# fit with other shapes, an eager ``lax.scan`` over a fresh closure). Linux caps a process's
# maps (``vm.max_map_count``, 65530 by default); at the cap LLVM's next allocation fails
# ("LLVM compilation error: Cannot allocate memory") and the process segfaults in the compiler.
MAP_LIMIT_FILE = Path("/proc/sys/vm/max_map_count")
PROCESS_MAPS_FILE = Path("/proc/self/maps")
MAP_LIMIT_SHARE = 0.5  # one large program adds a few thousand maps: keep ample headroom

_log = logging.getLogger(__name__)


def map_count() -> int | None:
    """The memory maps this process holds (None where ``/proc`` does not say)."""
    try:
        with PROCESS_MAPS_FILE.open("rb") as maps:
            return sum(1 for _ in maps)
    except OSError:
        return None


def map_limit() -> int | None:
    """The kernel's cap on a process's memory maps (None where ``/proc`` does not say)."""
    try:
        return int(MAP_LIMIT_FILE.read_text())
    except (OSError, ValueError):
        return None


def keep_below_map_limit(share: float = MAP_LIMIT_SHARE) -> bool:
    """Clear JAX's in-memory compile caches once this process holds ``share`` of its memory-map
    limit, so that compiling can go on; True when it cleared them.

    ``fit`` and ``predict`` call it before they compile. Clearing only costs recompiling what
    runs again; the cap otherwise ends the process (see ``MAP_LIMIT_FILE`` above). Off Linux:
    nothing to do.
    """
    limit = map_limit()
    count = map_count() if limit else None
    if count is None or count < share * limit:
        return False
    import jax

    jax.clear_caches()
    _log.warning(
        "this process held %d memory maps of the %d its kernel allows (vm.max_map_count), "
        "most of them compiled XLA programs; JAX's compile caches were cleared (%s maps now) "
        "so that compiling can go on",
        count,
        limit,
        map_count(),
    )
    return True
