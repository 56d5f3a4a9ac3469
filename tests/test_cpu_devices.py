"""The CPU device layout chosen at ``import qjax``, and 1 vs 2 devices training alike."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from qjax import cpu_devices

REPO = Path(__file__).resolve().parents[1]


def _run(code: str, timeout: int = 600, **env: str) -> subprocess.CompletedProcess:
    """``code`` in a fresh interpreter with no inherited device-count settings."""
    clean = {
        k: v
        for k, v in os.environ.items()
        if k not in ("XLA_FLAGS", "JAX_NUM_CPU_DEVICES", "JAX_PLATFORMS", cpu_devices.ENV)
    }
    clean["PYTHONPATH"] = os.pathsep.join(
        [str(REPO), str(REPO / "tests" / "train"), os.environ.get("PYTHONPATH", "")]
    )
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        env={**clean, **env},
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def test_requested_count_and_user_choice():
    assert cpu_devices.requested_count({}) == cpu_devices.usable_cores()
    assert cpu_devices.requested_count({cpu_devices.ENV: "3"}) == 3
    assert cpu_devices.requested_count({cpu_devices.ENV: "off"}) == 1
    with pytest.raises(ValueError, match="QJAX_CPU_DEVICES='-2' is invalid"):
        cpu_devices.requested_count({cpu_devices.ENV: "-2"})
    assert cpu_devices.user_chose({"XLA_FLAGS": "--xla_force_host_platform_device_count=4"})
    assert cpu_devices.user_chose({"JAX_NUM_CPU_DEVICES": "2"})
    assert cpu_devices.user_chose({"JAX_PLATFORMS": "cuda"})
    assert not cpu_devices.user_chose({"JAX_PLATFORMS": "cpu", "XLA_FLAGS": "--xla_cpu_foo"})
    flags = cpu_devices.default_xla_flags({cpu_devices.ENV: "3", "XLA_FLAGS": "--xla_cpu_foo"})
    assert flags == "--xla_cpu_foo --xla_force_host_platform_device_count=3"
    user = {cpu_devices.ENV: "3", "XLA_FLAGS": "--xla_force_host_platform_device_count=5"}
    assert cpu_devices.default_xla_flags(user) is None
    assert cpu_devices.default_xla_flags({cpu_devices.ENV: "off"}) is None
    assert (
        cpu_devices.with_device_count("--a --xla_force_host_platform_device_count=5 --b", 2)
        == "--a --b --xla_force_host_platform_device_count=2"
    )


def test_import_qjax_sets_the_count_and_set_cpu_devices_fails_once_running():
    done = _run(
        """
        import qjax, jax
        from qjax.train.parallel import auto_devices
        assert jax.device_count() == 3, jax.devices()
        qjax.set_cpu_devices(3)  # the current count: accepted
        try:
            qjax.set_cpu_devices(2)
        except RuntimeError as err:
            assert "already initialised with 3" in str(err), err
        else:
            raise AssertionError("no error")
        # the most devices that split the batch into shares of >= 64 rows
        # (daily batches, None: one device)
        assert [len(auto_devices(n)) for n in (800, 801, 192, 128, 100, None)] == [2, 3, 3, 2, 1, 1]
        print("OK")
        """,
        QJAX_CPU_DEVICES="3",
    )
    assert done.returncode == 0 and done.stdout.startswith("OK"), done.stdout + done.stderr
    done = _run(
        "import qjax, jax; assert jax.device_count() == 1; print('OK')", QJAX_CPU_DEVICES="off"
    )
    assert done.returncode == 0, done.stdout + done.stderr
    done = _run("import qjax", QJAX_CPU_DEVICES="many")
    assert done.returncode != 0 and "QJAX_CPU_DEVICES='many' is invalid" in done.stderr


def test_two_devices_train_like_one(seed):
    """Batches split over 2 CPU devices (with and without micro-batches): the same run up to
    summation order. SGD and no dropout keep rounding noise from being amplified."""
    done = _run(
        f"""
        import jax, numpy as np, qjax
        from qjax.train import TrainConfig, fit, predict
        from train_synthetic import TinyGRU, max_abs_diff, panel
        from test_microbatch import TinyAttention

        assert jax.device_count() == 2
        one, two = jax.devices()[:1], jax.devices()
        train, valid = panel(n_feat=20, seed={seed}), panel(n_days=8, n_feat=20, seed={seed + 1})
        for micro in ("off", 8):
            config = TrainConfig(n_epochs=3, lr=0.05, optimizer="gd", batch_size=32,
                                 early_stop=5, micro_batch=micro)
            runs = [fit(TinyAttention(), train, valid, config, devices=d, verbose=False)
                    for d in (one, two)]
            diff = max_abs_diff(runs[0].variables, runs[1].variables)
            assert diff < 1e-5, (micro, diff, {seed})
            np.testing.assert_allclose(runs[0].history["valid_loss"],
                                       runs[1].history["valid_loss"], rtol=1e-5)
        preds = [predict(TinyAttention(), runs[0].replica(0), valid, batch_size=64, devices=d)
                 for d in (one, two)]
        np.testing.assert_allclose(preds[0], preds[1], rtol=1e-5, atol=1e-6)
        print("OK", diff)
        """,
        QJAX_CPU_DEVICES="2",
    )
    assert done.returncode == 0 and done.stdout.startswith("OK"), done.stdout + done.stderr


def test_seeds_split_over_the_devices_train_like_one_device(seed, tmp_path):
    """Several seeds on XLA:CPU: whole replicas per device by default (the most devices that
    divide the seeds), each replica computing what it computes alone; an interrupted run
    resumes into the same layout and ends where an uninterrupted one does."""
    done = _run(
        f"""
        import dataclasses, jax, numpy as np, qjax
        from qjax.errors import Interrupted
        from qjax.train import TrainConfig, fit
        from qjax.train.parallel import choose_parallel
        from train_synthetic import TinyGRU, max_abs_diff, panel

        assert jax.device_count() == 3
        # a 64-row batch stays on one device (shares of >= 64 rows), so seeds split instead
        layouts = [choose_parallel(None, None, 64, n) for n in (1, 2, 3, 4, 6)]
        assert [p.over_replicas for p in layouts] == [False, True, True, True, True]
        assert [p.mesh.size for p in layouts[1:]] == [2, 3, 2, 3]
        assert all(p.size == 1 for p in layouts[1:])  # no batch is split as well
        # a batch that splits keeps splitting; daily batches (None) split the seeds
        assert choose_parallel(None, None, 192, 4).size == 3
        assert choose_parallel(None, None, None, 4).over_replicas
        forced = choose_parallel(None, "seeds", 192, 4)
        assert forced.over_replicas and forced.mesh.size == 2
        assert choose_parallel(jax.devices()[:2], None, None, 4).size == 2  # devices: batch
        try:
            choose_parallel(None, "replicas", 64, 4)
        except ValueError as err:
            assert "split='replicas' is not one of ('batch', 'seeds')" in str(err), err
        else:
            raise AssertionError("no error")
        train, valid = panel(seed={seed}), panel(n_days=8, seed={seed + 1})
        # Plain SGD where layouts are compared: two replicas vmapped on one device round their
        # batched dots differently, and Adam's first steps divide by |g| + eps, so a gradient
        # element near eps turns that rounding into steps of 1e-5 and more (2 of 25 draws);
        # SGD passes it through linearly (under 6e-8 in all 25). Adam where runs must be equal.
        config = TrainConfig(n_epochs=3, lr=0.05, optimizer="gd", batch_size=64, early_stop=5)
        seeds = [0, 1, 2, 3, 4, 5]
        split = fit(TinyGRU(), train, valid, config, seeds=seeds, verbose=False)
        assert split.replica_devices == 3 and split.n_devices == 1
        assert len(jax.tree.leaves(split.variables)[0].sharding.device_set) == 3
        alone = fit(TinyGRU(), train, valid, config, seeds=[4], devices=jax.devices()[:1],
                    verbose=False)
        diff = max_abs_diff(split.replica(4), alone.replica(0))
        assert diff < 1e-5, (diff, {seed})
        # by default one replica per device at a time: the 6 seeds run in 2 turns of 3, every
        # device busy in each turn; all 6 at once (2 vmapped per device) trains the same
        assert split.replica_group == 3
        assert len(jax.tree.leaves(split.variables)[0].sharding.device_set) == 3
        turns = fit(TinyGRU(), train, valid, dataclasses.replace(config, replica_chunk=2),
                    seeds=seeds, verbose=False)
        assert turns.replica_group == 6 and turns.replica_devices == 3
        assert max_abs_diff(turns.variables, split.variables) < 1e-5, {seed}

        def stop(epoch, metrics):
            if epoch == 1:
                raise KeyboardInterrupt
        adam = dataclasses.replace(config, optimizer="adam", lr=0.01)
        uninterrupted = fit(TinyGRU(), train, valid, adam, seeds=seeds, verbose=False)
        try:
            fit(TinyGRU(), train, valid, adam, seeds=seeds, checkpoint_dir=r"{tmp_path}",
                on_epoch=stop, verbose=False)
        except Interrupted:
            pass
        resumed = fit(TinyGRU(), train, valid, adam, seeds=seeds,
                      checkpoint_dir=r"{tmp_path}", resume=True, verbose=False)
        assert resumed.resumed_from == 2 and resumed.replica_devices == 3
        assert max_abs_diff(resumed.variables, uninterrupted.variables) == 0.0
        print("OK", diff)
        """,
        QJAX_CPU_DEVICES="3",
    )
    assert done.returncode == 0 and done.stdout.startswith("OK"), done.stdout + done.stderr


def test_several_seeds_of_a_model_with_orthogonal_init_train_on_two_devices():
    """SFM (orthogonal init, a QR per recurrent matrix) with two seeds, each batch split over
    two CPU devices: the run hung in its initialisation before the replicas were initialised
    one at a time (see ``qjax.train.engine._init_replicas``); it must now finish, quickly."""
    done = _run(
        """
        import jax, numpy as np
        from qjax.models.sfm import SFM_Model
        from qjax.train import TrainConfig, fit
        from train_synthetic import panel

        assert jax.device_count() == 2
        train = panel(n_feat=30, seed=0)  # 600 samples, 5 steps of 6 features
        config = TrainConfig(n_epochs=1, batch_size=128, optimizer="gd", micro_batch="off")
        result = fit(SFM_Model(d_feat=6, hidden_size=64), train, train, config, seeds=[0, 1],
                     verbose=False)
        assert result.n_devices == 2 and result.replica_devices == 1  # each batch split
        assert np.isfinite(result.history["train_loss"]).all(), result.history
        print("OK")
        """,
        timeout=240,
        QJAX_CPU_DEVICES="2",
    )
    assert done.returncode == 0 and done.stdout.startswith("OK"), done.stdout + done.stderr
