"""Shared test fixtures: the Qlib reference implementation and the internal shared data.

Parity tests skip when torch/qlib are absent on a developer machine, but under CI
(``CI=true``) a missing reference is an error: CI must run them.
"""

from __future__ import annotations

import importlib
import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")


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


def pytest_configure(config):
    # Most of the suite's time is XLA compilation; a persistent cache makes re-runs cheap.
    from qjax.cli import use_compilation_cache

    use_compilation_cache(
        os.environ.get("QJAX_TEST_COMPILATION_CACHE", str(Path.home() / ".cache" / "qjax-tests-xla"))
    )
