"""The XLA CPU device layout: one CPU device per usable core, chosen before JAX initialises.

XLA:CPU runs a program on one device with one intra-op thread pool, and much of a training
step (small matmuls, elementwise fusions, the recurrent loop) is not split over its threads.
With one CPU *device per core*, the engine's data-parallel mesh (:mod:`qjax.train.parallel`)
hands each core its own share of every batch, which keeps every core busy.

The device count is fixed when JAX creates its CPU backend (at the first JAX computation), so
it is chosen here, without importing JAX:

- ``import qjax`` calls :func:`apply_default`: unless the user already chose (the environment
  variable ``JAX_NUM_CPU_DEVICES`` or ``--xla_force_host_platform_device_count`` in
  ``XLA_FLAGS``), or ``JAX_PLATFORMS`` excludes the CPU, it appends
  ``--xla_force_host_platform_device_count=$QJAX_CPU_DEVICES`` to ``XLA_FLAGS`` (default: the
  cores this process may run on, as ``taskset`` allows; ``QJAX_CPU_DEVICES=1`` or ``off`` keeps
  JAX's single CPU device). Child processes inherit it.
- :func:`set_cpu_devices` sets the count from code (``qjax.set_cpu_devices(4)``) and fails
  clearly once JAX's backends exist.
- ``qjax train --cpu-devices N`` does the same from the command line.

On a GPU machine the setting only shapes the (unused) host platform; the engine splits over the
default backend's devices. Whether a given run *uses* the CPU devices is the engine's choice
(:func:`qjax.train.parallel.auto_devices`), taken per model from measurements.
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import MutableMapping

ENV = "QJAX_CPU_DEVICES"
JAX_ENV = "JAX_NUM_CPU_DEVICES"
XLA_FLAG = "--xla_force_host_platform_device_count"


def usable_cores() -> int:
    """Cores this process may run on (honours ``taskset``; ``os.cpu_count()`` does not)."""
    if hasattr(os, "sched_getaffinity"):
        return max(1, len(os.sched_getaffinity(0)))
    return max(1, os.cpu_count() or 1)


def requested_count(environ: MutableMapping[str, str] = os.environ) -> int:
    """The device count ``$QJAX_CPU_DEVICES`` asks for (default: :func:`usable_cores`)."""
    value = environ.get(ENV, "").strip().lower()
    if value in ("", "auto"):
        return usable_cores()
    if value in ("off", "0"):
        return 1
    try:
        count = int(value)
    except ValueError:
        count = 0
    if count < 1:
        raise ValueError(
            f"{ENV}={environ[ENV]!r} is invalid; use a positive device count, 'auto' (one per "
            "usable core) or 'off' (one CPU device)"
        )
    return count


def user_chose(environ: MutableMapping[str, str] = os.environ) -> bool:
    """Whether the environment already fixes the CPU device count or keeps JAX off the CPU."""
    if environ.get(JAX_ENV, "").strip() or XLA_FLAG in environ.get("XLA_FLAGS", ""):
        return True
    platforms = environ.get("JAX_PLATFORMS", "").strip().lower()
    return bool(platforms) and "cpu" not in platforms.split(",")


def default_xla_flags(environ: MutableMapping[str, str] = os.environ) -> str | None:
    """The ``XLA_FLAGS`` :func:`apply_default` sets, or None where it leaves them alone (the
    user chose, or one device is asked for). A bad ``$QJAX_CPU_DEVICES`` raises ValueError."""
    if user_chose(environ):
        return None
    count = requested_count(environ)
    return None if count == 1 else with_device_count(environ.get("XLA_FLAGS", ""), count)


def apply_default(environ: MutableMapping[str, str] = os.environ) -> str | None:
    """Set the CPU device count from ``$QJAX_CPU_DEVICES`` unless the user chose already.

    Returns the ``XLA_FLAGS`` set, or None when nothing changed (also once JAX is running: the
    count then stays as it is).
    """
    flags = default_xla_flags(environ)
    if flags is None or _backends_initialised():
        return None
    environ["XLA_FLAGS"] = flags
    _update_jax(flags)
    return flags


def with_device_count(xla_flags: str, count: int) -> str:
    """``xla_flags`` with the host device count flag set to ``count`` (replacing one there)."""
    kept = [flag for flag in xla_flags.split() if not flag.startswith(XLA_FLAG)]
    return " ".join([*kept, f"{XLA_FLAG}={count}"])


def set_cpu_devices(count: int) -> None:
    """Give JAX ``count`` CPU devices; call before the first JAX computation.

    Raises RuntimeError once JAX's backends are initialised (the count can no longer change),
    ValueError for a count below one.
    """
    if isinstance(count, bool) or not isinstance(count, int) or count < 1:
        raise ValueError(f"set_cpu_devices needs a positive int, got {count!r}")
    if _backends_initialised():
        import jax

        current = jax.local_device_count("cpu")
        if current == count:
            return
        raise RuntimeError(
            f"JAX's backends are already initialised with {current} CPU device(s), so the count "
            f"cannot change to {count}; call qjax.set_cpu_devices({count}) (or set {ENV}={count}) "
            "before the first JAX computation, e.g. right after `import qjax`"
        )
    os.environ["XLA_FLAGS"] = with_device_count(os.environ.get("XLA_FLAGS", ""), count)
    _update_jax(os.environ["XLA_FLAGS"])


def _update_jax(flags: str) -> None:
    """Where JAX is imported already, set its own count too (it takes precedence over the flag,
    which is what child processes inherit; a child setting its own ``XLA_FLAGS`` replaces it)."""
    if "jax" in sys.modules:
        count = int(flags.rsplit(f"{XLA_FLAG}=", 1)[1].split()[0])
        # A JAX without the option (0.4.x) raises here; it reads the flag at backend start.
        with contextlib.suppress(AttributeError):
            sys.modules["jax"].config.update("jax_num_cpu_devices", count)


def _backends_initialised() -> bool:
    if "jax" not in sys.modules:
        return False
    from jax._src import xla_bridge

    return xla_bridge.backends_are_initialized()
