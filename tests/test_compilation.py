"""The persistent compilation cache is on by default in the library, and compile time is
reported per fit."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

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
    env.update(QJAX_COMPILATION_CACHE=cache, PYTHONPATH=os.pathsep.join(
        [str(REPO), str(REPO / "tests" / "train"), os.environ.get("PYTHONPATH", "")]))
    done = subprocess.run([sys.executable, "-c", CHILD], env=env, capture_output=True,
                          text=True, timeout=600)
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
