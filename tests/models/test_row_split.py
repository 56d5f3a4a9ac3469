"""Recurrent models with each batch split over CPU devices (``qjax.row_split``) equal one device.

The split runs the recurrent layers on each device's share of the rows (a day's stocks for GATs
and HIST) under ``shard_map`` and sums their parameter gradients across devices once; only the
summation order of those gradients differs from one device, so in float64 values and gradients
agree to ~1e-13.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import jax
import numpy as np
import pytest

from qjax.row_split import map_rows

# Each part runs in a fresh interpreter: the device count is fixed when JAX initialises.
HEADER = """
    import sys
    import jax, jax.numpy as jnp, numpy as np
    jax.config.update("jax_enable_x64", True)
    from qjax.models.alstm import ALSTMModel
    from qjax.models.gats import GATModel
    from qjax.models.hist import HISTModel
    from qjax.models.rnn import LSTMModel
    from qjax.row_split import rows_split_over
    from qjax.train import TrainConfig, engine, fit, predict
    from qjax.train.parallel import data_parallel
    from train_synthetic import max_abs_diff, panel

    seed = int(sys.argv[1])
    assert jax.device_count() == 4, jax.devices()
"""

# The layers split: every model's value and gradient on 2 and 4 devices against one, in float64.
LAYERS = """
    rng = np.random.default_rng(seed)
    n = 44  # 11 stocks per device on 4, 22 on 2; the last 6 rows are padding
    x = jnp.asarray(rng.standard_normal((n, 36)))
    mask = jnp.asarray(np.arange(n) < n - 6)
    concepts = jnp.asarray((rng.random((n, 7)) < 0.3).astype(np.float64))
    # (module, its keywords besides x): daily models take the padding mask. Every model splits
    # through the one RNN layer; these cover both cells, the daily models' whole-day parts and
    # a model reading the split sequence (ALSTM's attention). LSTM and Localformer add nothing
    # but compile time; the engine part below fits an LSTM split.
    cases = [
        (GATModel(d_feat=6, base_model="LSTM"), {"mask": mask}),
        (HISTModel(d_feat=6, base_model="GRU"), {"mask": mask, "concept_matrix": concepts}),
        (ALSTMModel(d_feat=6), {}),
    ]
    worst = 0.0
    for module, extra in cases:
        first_two = {k: v[:2] for k, v in extra.items()}
        variables = module.init(jax.random.PRNGKey(seed), x[:2], **first_two)
        params = jax.tree.map(lambda a: a.astype(jnp.float64), variables["params"])

        def loss(params, train):
            pred = module.apply({"params": params}, x, train=train, **extra)
            return jnp.sum(jnp.where(mask, pred, 0.0) ** 2)

        for train in (True, False):  # the training layout and the per-gate inference layout
            whole = jax.jit(jax.value_and_grad(loss), static_argnums=1)(params, train)
            for devices in (jax.devices()[:2], jax.devices()):
                with rows_split_over(data_parallel(devices).mesh):
                    # a fresh jit: the split is decided when the function is traced
                    split = jax.jit(jax.value_and_grad(loss), static_argnums=1)(params, train)
                gap = max_abs_diff(whole, split)
                assert gap < 1e-10, (type(module).__name__, train, len(devices), gap, seed)
                worst = max(worst, gap)

    print("OK", worst)
"""

# The engine: fit, predict and evaluation over the devices, and the defaults that pick them.
ENGINE = """
    # The engine splits batches over the devices it is given, through shard_map.
    calls = []
    real_shard_map = jax.shard_map
    jax.shard_map = lambda *a, **k: calls.append(1) or real_shard_map(*a, **k)
    rows = panel(n_days=8, n_inst=16, n_feat=12, seed=seed)
    row_config = TrainConfig(n_epochs=1, batch_size=32, optimizer="gd", micro_batch="off")
    for count in (1, 2):
        calls.clear()
        fit(LSTMModel(d_feat=6, hidden_size=8), rows, None, row_config, devices=jax.devices()[:count], verbose=False)
        assert bool(calls) == (count == 2), (count, len(calls))
    train = panel(n_days=6, n_inst=23, n_feat=12, ragged=True, seed=seed)
    config = TrainConfig(n_epochs=2, lr=0.05, batching="daily", optimizer="gd", early_stop=5)
    module = GATModel(d_feat=6, hidden_size=8, base_model="LSTM")
    runs = {}
    for name, devices in (("one", jax.devices()[:1]), ("two", jax.devices()[:2])):
        calls.clear()
        runs[name] = fit(module, train, None, config, devices=devices, verbose=False)
        assert bool(calls) == (name == "two"), (name, len(calls))
    # float32 SGD: the encoder's gradient summed in another order, times lr, over 12 steps
    fit_gap = max_abs_diff(runs["one"].variables, runs["two"].variables)
    assert fit_gap < 1e-5, (fit_gap, seed)
    variables = runs["one"].replica(0)
    preds = [predict(module, variables, train, daily=True, devices=jax.devices()[:k]) for k in (1, 2)]
    np.testing.assert_allclose(preds[0], preds[1], rtol=1e-5, atol=1e-6, err_msg=str(seed))

    # Daily predictions and evaluations spread whole days over the devices, one day each per
    # step, each computed as on one device; 5 days leave the last step 1 (2 devices) or 3 (4)
    # empty days. A day put on the wrong device or rows scattered wrong would be off by O(1).
    five = panel(n_days=5, n_inst=23, n_feat=12, ragged=True, seed=seed + 1)
    assert engine._days_spread(True, data_parallel(jax.devices()[:2]))
    spread = [predict(module, variables, five, daily=True, devices=jax.devices()[:k]) for k in (1, 2, 4)]
    for k, pred in zip((2, 4), spread[1:]):
        np.testing.assert_allclose(pred, spread[0], rtol=1e-6, atol=1e-7, err_msg=f"{k} {seed}")
    both = jax.tree.map(lambda a: np.stack([a, 2 * a]), variables)
    per_seed = predict(module, both, five, daily=True, per_seed=True, devices=jax.devices()[:2])
    np.testing.assert_allclose(per_seed[0], spread[0], rtol=1e-6, atol=1e-7, err_msg=str(seed))
    doubled = predict(module, jax.tree.map(lambda a: a[1], both), five, daily=True,
                      devices=jax.devices()[:1])
    np.testing.assert_allclose(per_seed[1], doubled, rtol=1e-6, atol=1e-7, err_msg=str(seed))
    evaluated = TrainConfig(n_epochs=2, lr=0.05, batching="daily", optimizer="gd", early_stop=5,
                            eval_train=True, metric="ic")
    histories = [fit(module, train, five, evaluated, devices=jax.devices()[:k], verbose=False).history
                 for k in (1, 2)]
    for key in ("train_score", "train_loss", "valid_score", "valid_loss"):
        # the same float32 SGD run as above (parameters within 1e-5), scored on whole days
        np.testing.assert_allclose(histories[1][key], histories[0][key], rtol=1e-4, atol=1e-5,
                                   err_msg=f"{key} {seed}")

    # Defaults: a day splits where every device keeps >= 64 stocks (140 -> 2 x 70, not 4 x 35),
    # a 23-stock day stays on one device, several seeds split the seeds instead.
    wide = panel(n_days=3, n_inst=140, n_feat=12, seed=seed)
    one_epoch = TrainConfig(n_epochs=1, batching="daily", optimizer="gd")
    assert fit(module, wide, None, one_epoch, verbose=False).n_devices == 2
    assert fit(module, train, None, one_epoch, verbose=False).n_devices == 1
    seeds = fit(module, wide, None, one_epoch, seeds=[0, 1], verbose=False)
    assert (seeds.n_devices, seeds.replica_devices) == (1, 2), seeds
    # predict spreads days of any width over every device; its batch_size has no say
    for samples in (wide, train):
        calls.clear()
        predict(module, variables, samples, daily=True, batch_size=1)
        assert calls, samples.size
    print("OK", fit_gap)
"""


@pytest.mark.parametrize("part", ["layers", "engine"])
def test_split_days_match_one_device(part, seed):
    env = dict(
        os.environ,
        # Four devices; and XLA's cheap compilation (the test checks equality, not speed: both
        # sides of every comparison compile alike), which cuts its CPU time by about a third.
        XLA_FLAGS="--xla_force_host_platform_device_count=4 --xla_backend_optimization_level=0"
        " --xla_llvm_disable_expensive_passes=true",
        JAX_PLATFORMS="cpu",
        PYTHONPATH=os.pathsep.join(
            [str(Path(__file__).parents[1] / "train"), os.environ.get("PYTHONPATH", "")]
        ),
    )
    program = textwrap.dedent(HEADER) + textwrap.dedent({"layers": LAYERS, "engine": ENGINE}[part])
    done = subprocess.run(
        [sys.executable, "-c", program, str(seed)],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, f"seed {seed}\n" + done.stdout + done.stderr
    assert done.stdout.startswith("OK"), done.stdout


def test_map_rows_without_a_split_is_the_plain_call(seed):
    rows = jax.random.normal(jax.random.PRNGKey(seed), (5, 3))
    key = jax.random.PRNGKey(seed + 1)
    got = map_rows(lambda shared, rows, key: rows * shared + jax.random.normal(key), 2.0, rows, key)
    want = rows * 2.0 + jax.random.normal(key)  # no split active: the key is used as given
    np.testing.assert_array_equal(np.asarray(got), np.asarray(want), err_msg=str(seed))
