"""The persistent compilation cache is on by default in the library, compile time is reported
per fit, a long process keeps clear of its memory-map limit, and each XLA:CPU matrix-product
backend compiles programs of its own."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from qjax.compilation import (
    eigen_dots_available,
    jit_per_cpu_choice,
    keep_below_map_limit,
    map_count,
    map_limit,
)

REPO = Path(__file__).resolve().parents[1]

CHILD = textwrap.dedent(
    """
    import sys
    import jax
    from qjax.train import TrainConfig, fit
    from train_synthetic import TinyGRU, panel

    assert jax.config.jax_compilation_cache_dir is None  # nothing before the first fit
    config = TrainConfig(n_epochs=1, batch_size=48)
    first = fit(TinyGRU(), panel(seed=0), None, config, verbose=False)
    again = fit(TinyGRU(), panel(seed=0), None, config, verbose=False)  # programs reused
    print(jax.config.jax_compilation_cache_dir, first.compile_seconds, again.compile_seconds)
    """
)


def _child(cache: str) -> list[str]:
    env = {k: v for k, v in os.environ.items() if k != "QJAX_COMPILATION_CACHE"}
    env.update(
        QJAX_COMPILATION_CACHE=cache,
        PYTHONPATH=os.pathsep.join(
            [str(REPO), str(REPO / "tests" / "train"), os.environ.get("PYTHONPATH", "")]
        ),
    )
    done = subprocess.run(
        [sys.executable, "-c", CHILD], env=env, capture_output=True, text=True, timeout=600
    )
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout.split()


def test_first_fit_turns_the_cache_on_and_reports_compile_seconds(tmp_path):
    cache_dir, first, again = _child(str(tmp_path / "xla"))
    assert cache_dir == str(tmp_path / "xla")
    # the cold fit traced and compiled (a GRU epoch: seconds); the warm one only re-traced
    # nothing, or a little
    assert float(first) > 0.2 and float(again) < 0.5 * float(first), (first, again)
    assert any((tmp_path / "xla").iterdir())  # programs written for the next process
    cache_dir, _, _ = _child("off")
    assert cache_dir == "None"


WRITER_READER = textwrap.dedent(
    """
    import sys
    import jax
    import jax.numpy as jnp
    from qjax.compilation import use_compilation_cache

    use_compilation_cache(sys.argv[1])
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)
    assert jax.config.jax_compilation_cache_max_size > 0  # the file-locked LRU mode
    for k in range(40):  # the same 40 programs in both processes: each reads what the other wrote
        f = jax.jit(lambda x, k=k: jnp.tanh(x @ x.T + k).sum() * (k + 1))
        assert float(f(jnp.full((64, 64), 0.01))) != 0.0
    print("ok")
    """
)


def test_two_processes_share_one_cache_directory(tmp_path):
    """Two processes writing and reading one cache at once, in JAX's file-locked mode: both
    finish. (Unbounded, JAX writes entries in place: a reader can load a half-written executable
    and abort, as a test-suite worker did.)"""
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
    }
    cache = str(tmp_path / "xla")
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", WRITER_READER, cache],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(2)
    ]
    for proc in procs:
        out, err = proc.communicate(timeout=600)
        assert proc.returncode == 0 and out.strip() == "ok", err[-2000:]
    # one entry per program: "<name>-<key>" (jax 0.4.30) or "<name>-<key>-cache" beside an
    # "-atime" file (newer jax)
    entries = {
        path.name.removesuffix("-cache")
        for path in (tmp_path / "xla").glob("jit_*")
        if not path.name.endswith("-atime")
    }
    assert len(entries) >= 40, sorted(entries)


@pytest.mark.skipif(map_count() is None, reason="needs /proc/self/maps (Linux)")
def test_near_the_map_limit_compiled_programs_are_released(caplog):
    """JAX keeps the program of every eager ``lax.scan`` over a fresh closure for good, several
    memory maps each; clearing the caches gives them back, and a jitted function still runs."""
    x = jnp.arange(12.0).reshape(4, 3)
    for k in range(40):
        jax.lax.scan(lambda carry, row, k=k: (carry + k * row.sum(), carry), 0.0, x)
    held = map_count()
    assert map_limit() and held < map_limit()
    assert not keep_below_map_limit(share=1.0)  # below the limit: nothing is cleared
    assert map_count() > held - 40
    with caplog.at_level(logging.WARNING, logger="qjax.compilation"):
        assert keep_below_map_limit(share=0.0)
    assert map_count() < held - 80  # at least two maps per program came back
    assert "vm.max_map_count" in caplog.text
    assert float(jax.jit(lambda a: a.sum())(x)) == 66.0


@pytest.mark.parametrize("seed", [0, 1])
def test_each_cpu_choice_compiles_its_own_program_and_the_same_products(seed):
    """Eigen's program holds no YNNPACK fusion (the option is not silently ignored), and every
    backend's and level's float32 matrix products stay within the float32 bound of a float64
    product."""
    if jax.default_backend() != "cpu" or not eigen_dots_available():
        pytest.skip("an XLA:CPU compiler option this XLA does not have (its dots are Eigen's)")
    rng = np.random.default_rng(seed)
    a = rng.standard_normal((96, 200)).astype(np.float32)
    b = rng.standard_normal((200, 64)).astype(np.float32)
    programs = jit_per_cpu_choice(lambda a, b: jnp.tanh(a @ b))
    assert set(programs) == {(d, o) for d in ("default", "eigen") for o in ("default", "O1")}
    texts = {key: program.lower(a, b).compile().as_text() for key, program in programs.items()}
    assert "ynn" not in texts["eigen", "default"] and "ynn" not in texts["eigen", "O1"]
    exact = np.tanh(a.astype(np.float64) @ b.astype(np.float64))
    # |fl(a @ b) - a @ b| <= K u |a| @ |b| (K = 200 terms, u = 2^-24), and tanh is 1-Lipschitz
    bound = 200 * 2.0**-24 * (np.abs(a).astype(np.float64) @ np.abs(b)) + 2.0**-23
    for key, program in programs.items():
        error = np.abs(np.asarray(program(a, b), np.float64) - exact)
        assert (error <= bound).all(), f"{key}: seed {seed}, worst {np.max(error / bound):.2f}"
    if "ynn" not in texts["default", "default"]:
        pytest.skip("this jaxlib's XLA:CPU does not run dots in YNNPACK by default")
