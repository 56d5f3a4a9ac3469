"""The CPU levers (``micro_batch``, ``cpu_split``, ``replica_chunk``, ``cpu_dots``,
``cpu_opt_level``) a TrainConfig leaves at None: a direct ``fit`` gets the model family's measured
choice, as the estimators and the CLI do; ``predict`` takes the family's matrix-product backend
and optimisation level the same way."""

from __future__ import annotations

import dataclasses

import jax
import numpy as np
import pytest
from train_synthetic import TinyGRU, panel

from qjax.compilation import eigen_dots_available
from qjax.models import registry
from qjax.models.rnn import LSTMModel
from qjax.models.spec import OneCpuDevice
from qjax.models.tabnet.pretrain import PretrainStage, pretrain_config
from qjax.train import TrainConfig, engine, fit, predict
from qjax.train.levers import predict_choice, resolve
from qjax.train.parallel import auto_devices

# The measured choices (benchmarks/results/levers_cpu_more.md, levers_cpu_rnn_rows.md), written
# out here rather than read from the specs under test.
MEASURED = {
    "krnn": ("auto", False),
    "tabnet": ("auto", False),
    "transformer": ("auto", True),
    "tcn": ("auto", True),
    "sfm": ("auto", True),
}


def _levers(config: TrainConfig) -> tuple:
    return config.micro_batch, config.cpu_split


@pytest.mark.parametrize("name", sorted(registry.models()))
def test_a_direct_fit_gets_the_levers_of_the_estimator_route(name):
    entry = registry.model(name)
    direct = resolve(TrainConfig(), entry.network)
    if entry.spec is None:  # a network without a wrapper (TabNet's encoder): the engine's
        assert _levers(direct) == ("auto", True)
        return
    fields = entry.spec.train_config_fields(entry.spec.resolve({}, True))
    estimator = resolve(TrainConfig(**fields), entry.network)
    assert _levers(direct) == _levers(estimator), name
    assert _levers(direct) == MEASURED.get(name, ("auto", True)), name


def test_every_model_trains_one_replica_per_cpu_device_at_a_time_unless_told():
    # benchmarks/results/replica_groups_cpu*.md: every model measured fastest one replica per
    # device at a time; TabNet too once it trains with Eigen's dots (20 seeds 1.62x torch, 1.35x
    # two at a time; with XLA's default dots it had been 0.66x and 1.52x).
    for name in sorted(registry.models()):
        entry = registry.model(name)
        direct = resolve(TrainConfig(), entry.network)
        assert direct.replica_chunk is None, name  # the engine's rule: one per device on CPU
        if entry.spec is not None:
            fields = entry.spec.train_config_fields(entry.spec.resolve({}, True))
            assert resolve(TrainConfig(**fields), entry.network).replica_chunk is None, name
    tabnet = registry.model("tabnet")
    assert resolve(TrainConfig(replica_chunk=5), tabnet.network).replica_chunk == 5
    fields = tabnet.spec.train_config_fields(tabnet.spec.resolve({"replica_chunk": 3}, False))
    assert TrainConfig(**fields).replica_chunk == 3


def test_an_explicit_setting_always_wins():
    lstm = LSTMModel
    assert _levers(resolve(TrainConfig(micro_batch=100, cpu_split=False), lstm)) == (100, False)
    assert _levers(resolve(TrainConfig(cpu_split=False), lstm)) == ("auto", False)
    assert _levers(resolve(TrainConfig(micro_batch="off"), lstm)) == ("off", True)
    krnn = registry.get("krnn")
    assert _levers(resolve(TrainConfig(micro_batch="off"), krnn)) == ("off", False)
    assert _levers(resolve(TrainConfig(cpu_split=True), krnn)) == ("auto", True)
    assert _levers(resolve(TrainConfig(micro_batch=0), krnn)) == ("auto", False)  # 0 reads as auto


def test_custom_modules_get_the_engine_defaults_unless_registered_with_a_spec():
    assert _levers(resolve(TrainConfig(), TinyGRU)) == ("auto", True)
    spec = dataclasses.replace(registry.model("lstm").spec, adapters=(OneCpuDevice(),))
    registry.register("tiny_gru_for_levers", spec=spec)(TinyGRU)
    try:
        assert _levers(resolve(TrainConfig(), TinyGRU)) == ("auto", False)
    finally:
        registry.unregister("tiny_gru_for_levers")
    assert _levers(resolve(TrainConfig(), TinyGRU)) == ("auto", True)


def test_bad_cpu_split_is_refused():
    with pytest.raises(ValueError, match="cpu_split=1 is invalid"):
        TrainConfig(cpu_split=1)


def test_a_direct_fit_of_an_lstm_splits_its_batches_unless_told_not_to():
    train = panel(n_days=20, n_inst=16, n_feat=12, seed=3)  # 320 samples, 2 steps of 6
    config = TrainConfig(n_epochs=1, batch_size=128, early_stop=2)
    module = LSTMModel(d_feat=6, hidden_size=8, num_layers=1)
    run = fit(module, train, None, config, verbose=False)
    assert run.n_devices == len(auto_devices(128)), jax.devices()
    whole = fit(module, train, None, dataclasses.replace(config, cpu_split=False), verbose=False)
    assert whole.n_devices == 1


# benchmarks/results/xla_dots_cpu*.md, three runs against XLA's default: Eigen trained TabNet
# 0.93-1.17x as fast (median 1.09x) and predicted KRNN 1.13-1.30x as fast (median 1.28x); HIST's
# prediction (0.98-1.09x) and the other models gained nothing consistent.
EIGEN_TRAIN = {"tabnet"}
EIGEN_PREDICT = {"krnn"}


@pytest.mark.parametrize("name", sorted(registry.models()))
def test_the_matrix_product_backend_is_the_measured_one(name):
    entry = registry.model(name)
    direct = resolve(TrainConfig(), entry.network)
    assert direct.cpu_dots == ("eigen" if name in EIGEN_TRAIN else "default"), name
    assert predict_choice(entry.network)[0] == ("eigen" if name in EIGEN_PREDICT else "default")
    if entry.spec is None:
        return
    fields = entry.spec.train_config_fields(entry.spec.resolve({}, True))
    assert resolve(TrainConfig(**fields), entry.network).cpu_dots == direct.cpu_dots, name


# benchmarks/results/compile_programs_cpu_levels*.md, two runs against XLA's default level:
# every SFM fit compiled at -O1 ran faster than every default one (warm medians 1.44x, 1.29x);
# TCN's 1.23x in the first run did not hold (0.89x), and the other models gained nothing clear.
O1_MODELS = {"sfm"}


@pytest.mark.parametrize("name", sorted(registry.models()))
def test_the_optimisation_level_is_the_measured_one(name):
    entry = registry.model(name)
    level = "O1" if name in O1_MODELS else "default"
    assert resolve(TrainConfig(), entry.network).cpu_opt_level == level, name
    assert predict_choice(entry.network)[1] == level, name
    if entry.spec is not None:
        fields = entry.spec.train_config_fields(entry.spec.resolve({}, True))
        assert resolve(TrainConfig(**fields), entry.network).cpu_opt_level == level, name


@pytest.mark.parametrize(
    "lever,model,bad", [("cpu_dots", "tabnet", "mkl"), ("cpu_opt_level", "sfm", "O3")]
)
def test_a_compile_choice_the_user_sets_wins_and_a_bad_one_is_refused(lever, model, bad):
    entry = registry.model(model)  # a family whose home picks the other choice
    told = {lever: "default"}
    assert getattr(resolve(TrainConfig(**told), entry.network), lever) == "default"
    fields = entry.spec.train_config_fields(entry.spec.resolve(told, False))
    assert getattr(TrainConfig(**fields), lever) == "default"
    with pytest.raises(ValueError, match=rf"{lever}='{bad}' is invalid; expected one of"):
        TrainConfig(**{lever: bad})
    with pytest.raises(ValueError, match=rf"predict\({lever}\)='{bad}' is invalid"):
        predict(TinyGRU(), {}, panel(n_days=2, n_inst=4), **{lever: bad})


# Each lever's choices, and the stocks of a panel shape no other test compiles.
CHOICES = {"cpu_dots": (("default", "eigen"), 8), "cpu_opt_level": (("default", "O1"), 10)}


@pytest.mark.skipif(jax.default_backend() != "cpu", reason="XLA:CPU compiler options")
@pytest.mark.parametrize("lever", sorted(CHOICES))
def test_fit_and_predict_run_the_program_of_the_chosen_option(lever):
    if lever == "cpu_dots" and not eigen_dots_available():
        pytest.skip("this XLA:CPU's dots are Eigen's already")
    (default, other), stocks = CHOICES[lever]
    train = panel(n_days=6, n_inst=stocks, seed=5)
    config = TrainConfig(n_epochs=1, batch_size=2 * stocks, early_stop=2, seed=5)
    module = TinyGRU(d_feat=3)

    def compiled(choice):
        key = (choice, "default") if lever == "cpu_dots" else ("default", choice)
        return engine._EPOCH_PROGRAMS[key]._cache_size(), engine._PREDICT_PROGRAMS[
            key
        ]._cache_size()

    scores = {}
    for choice in (default, other):
        before = compiled(choice)
        chosen = dataclasses.replace(config, **{lever: choice})
        run = fit(module, train, None, chosen, verbose=False)
        assert np.isfinite(run.history["train_loss"]).all(), choice
        variables = run.replica(0)
        scores[choice] = predict(module, variables, train, batch_size=16, **{lever: choice})
        after = compiled(choice)
        assert after[0] > before[0] and after[1] > before[1], (choice, before, after)
    # Both programs score the last run's variables: the same float32 network, rounded
    # differently (Eigen's dots sum in another order; LLVM's levels allow no fast-math but may
    # fuse multiply-adds or vectorise sums differently). test_compilation bounds each
    # program's dot against float64.
    again = predict(module, variables, train, batch_size=16, **{lever: default})
    scale = np.abs(again).max()
    np.testing.assert_allclose(scores[other], again, rtol=0, atol=1e-6 * scale)


def test_tabnet_pretraining_splits_its_batches_with_eigen_dots_unless_told_otherwise():
    # benchmarks/results/tabnet_pretrain_cpu.md: split with Eigen's dots against the engine's
    # defaults (split, YNNPACK), which the unregistered stage used to get.
    tabnet = registry.model("tabnet").spec
    config = resolve(pretrain_config(tabnet.resolve({}, False)), PretrainStage)
    assert (config.cpu_split, config.cpu_dots) == (True, "eigen")
    told = pretrain_config(tabnet.resolve({"cpu_dots": "default"}, False))
    assert told.cpu_dots == "default"


# Evaluation runs its forward in the rows each family predicts in on CPU (the wrapper specs'
# cpu_predict_batch, benchmarks/results/predict_levers_cpu*.md and eval_rows_cpu.md), written out
# here rather than read from the specs under test.
EVAL_ROWS = {
    "alstm": 128,
    "gru": 128,
    "localformer": 128,
    "lstm": 128,
    "mlp": 4096,
    "tcn": 128,
    "transformer": 128,
}


@pytest.mark.parametrize("name", sorted(registry.models()))
def test_evaluation_chunks_are_the_rows_the_family_predicts_in(name):
    entry = registry.model(name)
    direct = resolve(TrainConfig(), entry.network)
    assert direct.cpu_eval_rows == EVAL_ROWS.get(name, "off"), name
    if entry.spec is None:
        return
    fields = entry.spec.train_config_fields(entry.spec.resolve({}, True))
    assert resolve(TrainConfig(**fields), entry.network).cpu_eval_rows == direct.cpu_eval_rows
    mine = entry.spec.train_config_fields(entry.spec.resolve({"cpu_eval_rows": "off"}, False))
    assert resolve(TrainConfig(**mine), entry.network).cpu_eval_rows == "off", name
