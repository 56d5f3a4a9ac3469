"""Wrapper specs: each named adapter on its own, and how a spec folds them."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd
import pytest

from qjax.data.samples import tabular_samples
from qjax.interop import from_qlib
from qjax.models.gats.network import GATModel
from qjax.models.gats.wrapper import GATS, LegacyDayGroups, PretrainedBase
from qjax.models.general.wrapper import GENERAL
from qjax.models.hist.wrapper import ConceptInputs
from qjax.models.mlp.wrapper import InputWidth
from qjax.models.spec import (
    Adapter,
    DailyBatches,
    LRPlateau,
    ModelSpec,
    SequenceInput,
    epoch_loop_train,
)
from qjax.models.tabnet.network import TabNetFinetune
from qjax.models.tabnet.objectives import SparsityRegularisedMSE, TabNetPretrainObjective
from qjax.models.tabnet.pretrain import PretrainStage, with_encoder
from qjax.models.tabnet.wrapper import (
    TABNET,
    FlatInputs,
    FrozenHead,
    Pretraining,
    SparsityPenalty,
)
from qjax.train import TrainConfig
from qjax.train.config import Batching, Plateau
from qjax.train.losses import is_supervised
from tests.models.parity import random_rnn_state_dict

BASE = {
    "n_epochs": 3,
    "lr": 1e-3,
    "early_stop": 2,
    "optimizer": "adam",
    "metric": "",
    "seed": None,
    "loss": "mse",
    "eval_protocol": "exact",
    "eval_train": False,
    "eval_batch_size": None,
}


def _index(days: int, stocks: list[str]) -> pd.MultiIndex:
    return pd.MultiIndex.from_product(
        [pd.bdate_range("2021-01-04", periods=days), stocks], names=["datetime", "instrument"]
    )


def _samples(seed, days=3, stocks=("A", "B"), width=4):
    index = _index(days, list(stocks))
    x = np.random.default_rng(seed).standard_normal((len(index), width)).astype(np.float32)
    return tabular_samples(x, np.zeros(len(index)), index), index


def test_sequence_input_checks_windows_and_flat_rows():
    check = SequenceInput("fea_dim").check_input
    check({"fea_dim": 6}, (1, 20, 6))
    check({"fea_dim": 6}, (1, 360))
    with pytest.raises(ValueError, match="fea_dim=6 but the dataset's windows have 8 features"):
        check({"fea_dim": 6}, (1, 20, 8))
    with pytest.raises(ValueError, match="fea_dim=7 does not divide the 360 feature columns"):
        check({"fea_dim": 7}, (1, 360))


def test_daily_batches_is_the_one_place_that_makes_a_model_daily():
    fields = DailyBatches().train_fields(BASE, epoch_loop_train(BASE))
    assert TrainConfig(**fields).batching is Batching.DAILY
    assert TrainConfig(**epoch_loop_train(BASE)).batching is Batching.SHUFFLE
    assert (
        GATS.train_config_fields({**GATS.resolve({}, False), "daily_batch": "true_daily"})[
            "batching"
        ]
        == "daily"
    )


def test_lr_plateau_sets_the_schedule_and_general_uses_qlibs():
    plateau = Plateau(factor=0.3, patience=2)
    assert LRPlateau(plateau).train_fields(BASE, {"lr": 1.0}) == {"lr": 1.0, "lr_plateau": plateau}
    general = TrainConfig(**GENERAL.train_config_fields(GENERAL.resolve({}, True)))
    assert general.lr_plateau == Plateau(factor=0.5, patience=5, threshold=1e-5, min_lr=1e-6)


def test_recurrent_models_leave_the_cpu_levers_to_the_engine():
    from qjax.models.alstm.wrapper import ALSTM
    from qjax.models.rnn.wrapper import GRU, LSTM
    from qjax.models.transformer.wrapper import TRANSFORMER

    # benchmarks/results/levers_cpu_rnn_rows.md: split over the cores (each device's rows
    # under shard_map) in micro-batches, as the engine's defaults do (tests/train/test_levers.py)
    for spec in (LSTM, GRU, ALSTM, TRANSFORMER):
        config = TrainConfig(**spec.train_config_fields(spec.resolve({}, True)))
        assert (config.micro_batch, config.cpu_split) == (None, None), spec.qlib_class
        asked = TrainConfig(**spec.train_config_fields(spec.resolve({"micro_batch": 100}, True)))
        assert (asked.micro_batch, asked.cpu_split) == (100, None), spec.qlib_class


def test_krnn_and_tabnet_train_on_one_cpu_device_in_automatic_micro_batches():
    from qjax.models.krnn.wrapper import KRNN
    from qjax.models.tabnet.wrapper import TABNET

    for spec in (KRNN, TABNET):
        config = TrainConfig(**spec.train_config_fields(spec.resolve({}, True)))
        assert (config.micro_batch, config.cpu_split) == (None, False), spec.qlib_class


def test_mlp_input_width_must_equal_the_feature_columns():
    InputWidth().check_input({"pt_model_kwargs": {"input_dim": 158}}, (1, 158))
    with pytest.raises(ValueError, match="input_dim=360 but the dataset has 158 feature columns"):
        InputWidth().check_input({"pt_model_kwargs": {"input_dim": 360}}, (1, 158))


def test_legacy_day_groups_only_when_asked(seed):
    adapter = LegacyDayGroups()
    samples, index = _samples(seed, days=3, stocks=("A", "B"))
    assert adapter.samples({"daily_batch": "true_daily"}, "train", samples, index) is samples
    legacy = adapter.samples({"daily_batch": "qlib_legacy"}, "train", samples, index)
    # Instrument-major order A1 A2 A3 B1 B2 B3 cut into runs of 2 (samples per date): A's first
    # two days, then A's third and B's first, then B's last two; in (date, instrument) order:
    np.testing.assert_array_equal(np.asarray(legacy.batch_group), [0, 1, 0, 2, 1, 2])
    assert adapter.train_fields({"daily_batch": "qlib_legacy"}, {})["shuffle_days"] is False
    assert adapter.train_fields({"daily_batch": "true_daily"}, {})["shuffle_days"] is True
    with pytest.raises(ValueError, match="needs a TSDataset"):
        adapter.check_input({"daily_batch": "qlib_legacy"}, (1, 60))
    with pytest.raises(ValueError, match="daily_batch='days'"):
        adapter.check_input({"daily_batch": "days"}, (1, 20, 6))


def test_pretrained_base_copies_a_saved_qlib_gru(torch, tmp_path, seed):
    state = random_rnn_state_dict("gru", d_feat=6, hidden=8, layers=2)  # seeded inside (0)
    path = tmp_path / "gru.pkl"
    torch.save({k: torch.tensor(v, dtype=torch.float32) for k, v in state.items()}, path)
    kw = {"model_path": str(path), "base_model": "GRU", "num_layers": 2}
    assert PretrainedBase().init_variables({**kw, "model_path": None}) is None
    start = PretrainedBase().init_variables(kw)
    module = GATModel(d_feat=6, hidden_size=8, num_layers=2, base_model="GRU")
    fresh = module.init(jax.random.PRNGKey(seed), jnp.zeros((3, 6)))
    loaded = start(fresh)["params"]
    _, gru = from_qlib("gru", state, d_feat=6, hidden_size=8, num_layers=2)
    for group in ("rnn", "fc_out"):  # copied, as Qlib copies them
        jax.tree.map(np.testing.assert_array_equal, loaded[group], gru["params"][group])
    jax.tree.map(np.testing.assert_array_equal, loaded["fc"], fresh["params"]["fc"])  # kept


def test_concept_inputs_give_each_sample_its_stocks_row(seed):
    samples, index = _samples(seed, days=2, stocks=("A", "B"))
    table = pd.DataFrame([[1.0, 0.0], [0.0, 1.0]], index=["A", "B"])
    out = ConceptInputs().samples(
        {"stock2concept": table, "stock_index": None}, "test", samples, index
    )
    batch = out.batch(jnp.arange(4))
    np.testing.assert_array_equal(batch.inputs["concept_matrix"], [[1, 0], [0, 1], [1, 0], [0, 1]])
    np.testing.assert_array_equal(batch.x, samples.batch(jnp.arange(4)).x)
    with pytest.raises(ValueError, match="HIST needs stock2concept"):
        ConceptInputs().samples(
            {"stock2concept": None, "stock_index": None}, "test", samples, index
        )


def test_tabnet_flat_inputs_check_width_and_fill_nan():
    FlatInputs().check_input({"d_feat": 4}, (1, 4))
    with pytest.raises(ValueError, match="d_feat=5 but the dataset has 4 feature columns"):
        FlatInputs().check_input({"d_feat": 5}, (1, 4))
    index = _index(2, ["A"])
    x = np.array([[1.0, np.nan], [3.0, np.nan]], np.float32)
    filled = FlatInputs().samples({}, "train", tabular_samples(x, None, index), index)
    np.testing.assert_array_equal(np.asarray(filled.features), [[1.0, 0.0], [3.0, 0.0]])


def test_tabnet_frozen_head_and_sparsity_penalty_follow_paper():
    small = {**TABNET.resolve({}, False), "d_feat": 6, "n_d": 4, "n_a": 4, "n_steps": 1}
    assert FrozenHead().train_fields(small, {})["frozen"] == ("fc",)
    assert FrozenHead().train_fields({**small, "paper": True}, {})["frozen"] == ()
    assert SparsityPenalty().loss_fn(small) is None
    penalty = SparsityPenalty().loss_fn({**small, "paper": True, "lambda_sparse": 0.25})
    assert penalty == SparsityRegularisedMSE(0.25)
    # The engine's all-NaN-label check reads what an objective declares.
    assert is_supervised(penalty) and not is_supervised(TabNetPretrainObjective(0.3))


def test_tabnet_pretraining_stage_keeps_the_pretrainers_names_and_feeds_the_encoder(seed):
    assert Pretraining().pretrain({"pretrain": False}, None, None, False) == (None, None)
    no_segments = type("NoPretrainSegments", (), {"segments": {"train": None}})()
    with pytest.raises(KeyError, match="pretrain=True needs the dataset segments"):
        Pretraining().pretrain({"pretrain": True}, no_segments, None, False)

    module = TabNetFinetune(
        inp_dim=4, out_dim=4, n_d=4, n_a=4, n_steps=1, n_shared=1, n_ind=1, vbs=8
    )
    stage = PretrainStage(module.pretrainer())
    shapes = jax.eval_shape(stage.init, jax.random.PRNGKey(seed), jnp.ones((8, 4)))
    # nn.share_scope: the encoder's variables are named as in the fine-tuning model's "model"
    # (flax < 0.10 nested them under "pretrainer", and the copy below would find nothing).
    assert set(shapes["params"]) == {"encoder", "decoder"}
    fine = module.init(jax.random.PRNGKey(seed), jnp.ones((8, 4)))
    assert jax.tree.structure(shapes["params"]["encoder"]) == jax.tree.structure(
        fine["params"]["model"]
    )
    encoder = {"params": {"marker": 1}}
    started = with_encoder(fine, encoder)
    assert started["params"]["model"] == {"marker": 1}
    assert started["params"]["fc"] is fine["params"]["fc"]


def test_a_spec_folds_its_adapters_in_order_and_refuses_two_objectives():
    @dataclasses.dataclass(frozen=True)
    class Tag(Adapter):
        tag: str

        def train_fields(self, kw, fields):
            return {**fields, "tags": fields.get("tags", ()) + (self.tag,)}

        def loss_fn(self, kw):
            return self.tag

    spec = ModelSpec(
        "test", {}, lambda kw, is_ts: {}, train_fields=lambda kw: {}, adapters=(Tag("a"), Tag("b"))
    )
    assert spec.train_config_fields({})["tags"] == ("a", "b")
    with pytest.raises(ValueError, match="two adapters both set loss_fn"):
        spec.loss_fn({})
    no_stage = ModelSpec("test", {}, lambda kw, is_ts: {})
    assert no_stage.pretrain({}, None, None, False) == (None, None)


def test_replica_chunk_reaches_the_train_config():
    fields = GENERAL.train_config_fields(GENERAL.resolve({"replica_chunk": 3}, False))
    assert TrainConfig(**fields).replica_chunk == 3
    assert (
        TrainConfig(**GENERAL.train_config_fields(GENERAL.resolve({}, False))).replica_chunk is None
    )


def test_stream_batches_reaches_the_train_config_and_tabnet_refuses_it():
    fields = GENERAL.train_config_fields(GENERAL.resolve({"stream_batches": 8}, False))
    assert TrainConfig(**fields).stream_batches == 8
    assert (
        TrainConfig(**GENERAL.train_config_fields(GENERAL.resolve({}, False))).stream_batches
        is None
    )
    with pytest.raises(ValueError, match="stream_batches is not supported"):
        TABNET.train_config_fields(TABNET.resolve({"stream_batches": 8}, False))


def test_cpu_prediction_batch_comes_from_the_home_else_the_train_batch():
    from qjax.models.spec import predict_batch
    from qjax.models.tcn.wrapper import TCN

    assert jax.local_devices()[0].platform == "cpu"  # the suite runs on CPU
    assert predict_batch(TCN, 2000) == TCN.cpu_predict_batch == 128
    assert predict_batch(dataclasses.replace(TCN, cpu_predict_batch=None), 2000) == 2000
