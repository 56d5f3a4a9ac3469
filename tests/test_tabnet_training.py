"""TabNet through the one engine: Qlib's pretraining then fine-tuning, frozen head, paper mode."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd
import pytest

import qjax
from qjax.data import DataHandler, Dataset, TSDataset, generate_market, handler_frame
from qjax.data.samples import Batch, tabular_samples
from qjax.models.tabnet.network import SPARSE_LOSS_COLLECTION, TabNetFinetune
from qjax.models.tabnet.objectives import SparsityRegularisedMSE
from qjax.models.tabnet.wrapper import TABNET
from qjax.train import fit, supervised_mse
from qjax.train.checkpoint import load_variables

SEGMENTS = {
    "train": ("2015-01-05", "2015-05-29"),
    "valid": ("2015-06-01", "2015-07-10"),
    "test": ("2015-07-13", "2015-08-14"),
    "pretrain": ("2015-01-05", "2015-05-29"),
    "pretrain_validation": ("2015-06-01", "2015-07-10"),
}
FEATURES = [
    "KMID",
    "KLEN",
    "KMID2",
    "KUP",
    "KUP2",
    "KLOW",
    "KLOW2",
    "KSFT",
    "KSFT2",
    "OPEN0",
    "HIGH0",
    "LOW0",
    "VWAP0",
    "ROC5",
    "ROC10",
    "ROC20",
    "ROC30",
    "ROC60",
    "MA5",
    "MA10",
]
# No Fillna processor: the long-window features start with NaN, which TabNet must fill itself.
PROCESSORS = dict(
    infer_processors=[
        {"class": "FilterCol", "kwargs": {"fields_group": "feature", "col_list": FEATURES}},
        {"class": "RobustZScoreNorm", "kwargs": {"fields_group": "feature", "clip_outlier": True}},
    ],
    learn_processors=["DropnaLabel", {"class": "CSRankNorm", "kwargs": {"fields_group": "label"}}],
    fit_start_time=SEGMENTS["train"][0],
    fit_end_time=SEGMENTS["train"][1],
)
TINY = dict(d_feat=len(FEATURES), batch_size=256, vbs=128, n_epochs=3, pretrain_n_epochs=3, seed=0)
# Paper mode honours the architecture fields, so it can be small.
TINY_PAPER = dict(TINY, paper=True, n_d=8, n_a=8, n_steps=2, n_shared=1, n_ind=1, out_dim=8)


@pytest.fixture(scope="module")
def handler():
    market = generate_market(n_instruments=24, n_days=160, start="2015-01-05", seed=3)
    return DataHandler(handler_frame("Alpha158", market), **PROCESSORS)


@pytest.fixture(scope="module")
def dataset(handler):
    return Dataset(handler, SEGMENTS)


@pytest.fixture(scope="module")
def qlib_mode(dataset, tmp_path_factory):
    path = tmp_path_factory.mktemp("tabnet") / "pretrain" / "best.model"
    model = qjax.estimator("tabnet", pretrain_file=str(path), **TINY)
    return model.fit(dataset, verbose=False), path


@pytest.fixture(scope="module")
def paper_mode(dataset):
    return qjax.estimator("tabnet", **TINY_PAPER).fit(dataset, verbose=False)


def _falls(history: dict) -> np.ndarray:
    loss = np.asarray(history["train_loss"])[:, 0]
    assert np.isfinite(loss).all()
    assert loss[-1] < loss[0], f"train loss did not fall: {loss}"
    return loss


def test_dataset_has_nan_features_to_fill(dataset):
    assert dataset.prepare("train", col_set="feature", data_key="learn").isna().to_numpy().any()


def test_pretraining_loss_falls(qlib_mode):
    model, _ = qlib_mode
    _falls(model.pretrain_result.history)
    assert np.isfinite(model.pretrain_result.history["valid_loss"]).all()


def test_fine_tuning_loss_falls_and_predict_gives_a_series(qlib_mode, dataset):
    model, _ = qlib_mode
    _falls(model.result.history)
    pred = model.predict(dataset, "test")
    test_index = dataset.prepare("test", col_set="feature").index
    assert isinstance(pred, pd.Series) and pred.index.names == ["datetime", "instrument"]
    assert pred.index.equals(test_index)
    assert np.isfinite(pred.to_numpy()).all()


def test_pretrained_encoder_is_saved_and_copied_into_the_fine_tuning_model(qlib_mode, dataset):
    model, path = qlib_mode
    best = model.pretrain_result.replica(0)
    saved = load_variables(path)  # an Orbax checkpoint written at exactly pretrain_file
    for collection in ("params", "batch_stats"):
        jax.tree.map(np.testing.assert_array_equal, saved[collection], best[collection]["encoder"])

    # The stage's init_variables: encoder and its batch statistics replaced, head untouched.
    init_variables, _ = TABNET.pretrain(model.kwargs, dataset, model.module, False)
    fresh = model.module.init(jax.random.PRNGKey(5), jnp.ones((2, TINY["d_feat"])))
    started = init_variables(fresh)
    for collection in ("params", "batch_stats"):
        jax.tree.map(
            np.testing.assert_array_equal, started[collection]["model"], best[collection]["encoder"]
        )
    jax.tree.map(np.testing.assert_array_equal, started["params"]["fc"], fresh["params"]["fc"])


def _refit_with_known_head(model, dataset, init_variables=None):
    """Re-run the estimator's fine-tuning from variables with a known head; (head before, after)."""
    spec, kw = TABNET, model.kwargs
    train, valid = (spec.samples(kw, name, *dataset.samples(name)) for name in ("train", "valid"))
    rng = np.random.default_rng(0)
    head = jax.tree.map(
        lambda leaf: rng.normal(size=leaf.shape).astype(np.float32), model.variables["params"]["fc"]
    )

    def start(variables):
        variables = init_variables(variables) if init_variables else variables
        return {**variables, "params": {**variables["params"], "fc": head}}

    result = fit(
        model.module,
        train,
        valid,
        model.config,
        loss_fn=spec.loss_fn(kw),
        init_variables=start,
        verbose=False,
    )
    return head, result.replica(0)["params"]


def test_qlib_mode_never_updates_the_head(qlib_mode, dataset):
    model, _ = qlib_mode
    assert model.config.frozen == ("fc",)
    assert model.config.clip_value == 3.0
    init_variables, _ = TABNET.pretrain(model.kwargs, dataset, model.module, False)
    head, trained = _refit_with_known_head(model, dataset, init_variables)
    for name in head:
        assert np.asarray(trained["fc"][name]).tobytes() == head[name].tobytes()
    encoder_kernel = trained["model"]["steps_0"]["atten_tran"]["fc"]["kernel"]
    pretrained = model.pretrain_result.replica(0)["params"]["encoder"]
    assert not np.array_equal(encoder_kernel, pretrained["steps_0"]["atten_tran"]["fc"]["kernel"])


def test_paper_mode_trains_the_head_and_adds_the_sparsity_penalty(paper_mode, dataset):
    model = paper_mode
    assert model.config.frozen == ()
    assert isinstance(TABNET.loss_fn(model.kwargs), SparsityRegularisedMSE)
    _falls(model.pretrain_result.history)
    _falls(model.result.history)
    head, trained = _refit_with_known_head(model, dataset)
    assert not np.array_equal(trained["fc"]["kernel"], head["kernel"])
    assert np.isfinite(model.predict(dataset, "test").to_numpy()).all()


def test_sparsity_penalty_is_lambda_times_the_sown_loss_in_training_only(seed):
    module = TabNetFinetune(
        inp_dim=6, out_dim=4, n_d=4, n_a=4, n_steps=2, n_shared=1, n_ind=1, vbs=8, paper=True
    )
    rng = np.random.default_rng(seed + 2)
    x = jnp.asarray(rng.normal(size=(16, 6)), jnp.float32)
    batch = Batch(
        x=x,
        y=jnp.asarray(rng.normal(size=16), jnp.float32),
        w=jnp.ones(16),
        mask=jnp.ones(16, bool),
    )
    key = jax.random.PRNGKey(1)
    penalised = SparsityRegularisedMSE(0.5)

    @jax.jit  # one compilation for every quantity compared
    def run(init_key):
        variables = module.init(init_key, x)
        _, sown = module.apply(
            variables, x, train=True, mutable=["batch_stats", SPARSE_LOSS_COLLECTION]
        )
        return sown[SPARSE_LOSS_COLLECTION]["sparse_loss"], {
            (name, train): objective(module.apply, variables, batch, key, train)
            for name, objective in (("plain", supervised_mse), ("penalised", penalised))
            for train in (True, False)
        }

    sparse, out = run(jax.random.PRNGKey(0))
    assert float(sparse) > 0
    plain, with_penalty = out["plain", True], out["penalised", True]
    np.testing.assert_allclose(
        with_penalty.total / with_penalty.count,
        plain.total / plain.count + 0.5 * float(sparse),
        rtol=1e-6,
    )
    jax.tree.map(np.testing.assert_array_equal, with_penalty.batch_stats, plain.batch_stats)
    assert float(out["penalised", False].total) == float(out["plain", False].total)


def test_nan_features_are_filled_as_qlib_does():
    values = np.array(
        [[1.0, np.nan, np.nan], [np.nan, 2.0, np.nan], [3.0, 4.0, np.nan]], np.float32
    )
    index = pd.MultiIndex.from_product(
        [pd.date_range("2020-01-01", periods=3), ["A"]], names=["datetime", "instrument"]
    )
    frame = pd.DataFrame(values)
    fill = TABNET.samples
    for segment, expected in [
        ("train", frame.fillna(frame.mean()).fillna(0.0)),
        ("pretrain_validation", frame.fillna(frame.mean()).fillna(0.0)),
        ("valid", frame.fillna(0.0)),
        ("test", frame.fillna(0.0)),
    ]:
        filled = fill({}, segment, tabular_samples(values, None, index), index)
        np.testing.assert_array_equal(np.asarray(filled.features), expected.to_numpy(np.float32))


def test_input_errors_are_clear(handler, dataset):
    no_pretrain = Dataset(
        handler, {k: v for k, v in SEGMENTS.items() if not k.startswith("pretrain")}
    )
    with pytest.raises(KeyError, match=r"pretrain=True needs the dataset segments.*pretrain=False"):
        qjax.estimator("tabnet", **TINY).fit(no_pretrain, verbose=False)
    with pytest.raises(ValueError, match="d_feat=158 but the dataset has 20 feature columns"):
        qjax.estimator("tabnet", **{**TINY, "d_feat": 158}).fit(dataset, verbose=False)
    with pytest.raises(ValueError, match="fewer than batch_size=4096"):
        qjax.estimator("tabnet", **{**TINY, "batch_size": 4096}).fit(dataset, verbose=False)
    windows = TSDataset(handler, SEGMENTS, step_len=4)
    with pytest.raises(ValueError, match="flat qjax.data.Dataset"):
        qjax.estimator("tabnet", **TINY).fit(windows, verbose=False)
