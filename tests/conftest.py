"""Shared test fixtures: the Qlib reference implementation and the internal shared data.

Parity tests skip when torch/qlib are absent on a developer machine, but under CI
(``CI=true``) a missing reference is an error: CI must run them.
"""

from __future__ import annotations

import importlib
import os
import random
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest

# The suite checks values, not speed: XLA compiles its code at LLVM -O0 without the expensive
# passes, which took a fifth off the wall time of the model, engine and compilation tests.
# Both sides of every in-suite comparison compile alike, and parity with Qlib holds within the
# same float64-justified tolerances. Set before JAX starts its backends; child processes
# inherit it. QJAX_TEST_XLA=default compiles as users' runs do.
CHEAP_XLA_FLAGS = "--xla_backend_optimization_level=0 --xla_llvm_disable_expensive_passes=true"
if os.environ.get("QJAX_TEST_XLA", "cheap") == "cheap":
    os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} {CHEAP_XLA_FLAGS}".strip()

from qjax.compilation import keep_below_map_limit  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")
SEED_ENV = "QJAX_TEST_SEED"


def session_seed() -> int:
    """The run's base seed: ``QJAX_TEST_SEED`` if set, else drawn fresh once per run.

    ``pytest_configure`` writes a fresh draw into the environment before pytest-xdist starts
    its workers, so every worker derives its tests' seeds from the same base.
    """
    return int(os.environ[SEED_ENV])


def seed_for(nodeid: str) -> int:
    """Each test's own seed: the run's base seed mixed with the test's id, so tests draw
    independent streams and one test's seed does not depend on which others ran before it."""
    return (session_seed() ^ zlib.crc32(nodeid.encode())) % 2**31


def _shared_data_dir() -> Path:
    return Path(os.environ.get("QJAX_SHARED_DATA", REPO.parent / "shared" / "data"))


def require(module: str):
    """Import ``module`` for a parity test: skip if absent locally, fail if absent in CI."""
    try:
        return importlib.import_module(module)
    except ImportError as err:
        if IN_CI:
            pytest.fail(f"CI must run parity tests but {module!r} is not importable: {err}")
        pytest.skip(f"reference implementation not installed ({module}); pip install '.[parity]'")


@pytest.fixture(scope="session")
def torch():
    mod = require("torch")
    mod.set_num_threads(1)
    return mod


@pytest.fixture(scope="session")
def qlib():
    return require("qlib")


@pytest.fixture(scope="session")
def shared_data() -> Path:
    path = _shared_data_dir()
    if not path.is_dir():
        pytest.skip(f"internal shared data not present at {path}")
    return path


@pytest.fixture(scope="session")
def csi300_dir(shared_data) -> Path:
    path = shared_data / "cn_csi300"
    if not (path / "calendars" / "day.txt").is_file():
        pytest.skip("cn_csi300 qlib data not present")
    return path


@pytest.fixture(scope="session")
def qlib_csi300(qlib, csi300_dir):
    """qlib initialised once per session on the shared csi300 data directory."""
    from qlib.constant import REG_CN

    qlib.init(provider_uri=str(csi300_dir), region=REG_CN, kernels=1)
    return csi300_dir


@pytest.fixture
def seed(request) -> int:
    """This test's seed (see ``seed_for``); a failing test's report names the base seed."""
    return seed_for(request.node.nodeid)


@pytest.fixture(autouse=True)
def _seed_global_generators(request):
    """Seed the global generators (torch's weight initialisation above all) per test, so a
    module built without an explicit generator still draws reproducibly from the test's seed."""
    value = seed_for(request.node.nodeid)
    random.seed(value)
    np.random.seed(value)
    if "torch" in sys.modules:
        sys.modules["torch"].manual_seed(value)


@pytest.fixture(autouse=True)
def _room_for_compiled_programs():
    """A worker compiles thousands of programs that JAX keeps for the whole session (eager
    scans over fresh closures above all); clear them before the process nears its memory-map
    cap, where XLA's compiler would segfault (see ``qjax.compilation.keep_below_map_limit``)."""
    yield
    keep_below_map_limit()


def pytest_report_header(config):
    return f"{SEED_ENV}={session_seed()} (set it to rerun with this run's random draws)"


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    if report.failed:
        report.sections.append(
            (
                "random seed",
                f"rerun with {SEED_ENV}={session_seed()} to repeat this test's draws "
                f"(its own seed: {seed_for(item.nodeid)})",
            )
        )


def pytest_configure(config):
    os.environ.setdefault(SEED_ENV, str(int.from_bytes(os.urandom(4), "little") % 2**31))
    # No persistent compilation cache by default: twice in this suite a worker crashed inside
    # JAX while deserialising a cached executable (jax 0.10.2, XLA:CPU), once with the cache's
    # file lock held. QJAX_TEST_COMPILATION_CACHE=DIR opts in for faster local reruns.
    from qjax.cli import use_compilation_cache

    cache = os.environ.get("QJAX_TEST_COMPILATION_CACHE", "off")
    if cache == "off":
        os.environ["QJAX_COMPILATION_CACHE"] = "off"  # nor the library's or the CLI's default
    use_compilation_cache(cache)
