"""Compact storage dtypes: features stored in bfloat16/float16, gathered as float32."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import pandas as pd
import pytest

from qjax import run_config, workflow
from qjax.data.dataset import Dataset, TSDataset
from qjax.data.handler import DataHandler
from qjax.data.processors import DropnaLabel
from qjax.data.storage import STORAGE_DTYPES, to_storage
from qjax.errors import ConfigError, DataError
from tests.workflow import tiny_run

COMPACT = {"bfloat16": jnp.bfloat16, "float16": np.float16}
SEGMENTS = {"train": ("2020-01-01", "2020-02-28"), "test": ("2020-03-02", "2020-03-31")}


def frame(seed: int, scale: float = 1.0, n_days: int = 65, n_inst: int = 6) -> pd.DataFrame:
    """Ragged (datetime, instrument) frame with NaN features and labels, values of ``scale``."""
    rng = np.random.default_rng(seed)
    dates = pd.bdate_range("2020-01-01", periods=n_days)
    rows = [(d, f"I{k}") for k in range(n_inst) for d in dates if rng.random() > 0.15]
    index = pd.MultiIndex.from_tuples(rows, names=["datetime", "instrument"])
    columns = pd.MultiIndex.from_tuples(
        [("feature", "f0"), ("feature", "f1"), ("feature", "f2"), ("label", "LABEL0")]
    )
    values = rng.standard_normal((len(index), 4)) * scale
    values[rng.random(values.shape) < 0.05] = np.nan  # NaN features must stay NaN
    return pd.DataFrame(values, index=index, columns=columns).sort_index()


def dataset(kind: str, data: pd.DataFrame, storage_dtype: str) -> Dataset:
    handler = DataHandler(data, learn_processors=[DropnaLabel()])
    if kind == "windows":
        return TSDataset(handler, SEGMENTS, step_len=5, storage_dtype=storage_dtype)
    return Dataset(handler, SEGMENTS, storage_dtype=storage_dtype)


def stored(samples) -> jnp.ndarray:
    """The stored feature matrix (flat rows) or panel (windows)."""
    features = samples.features
    return features["panel"] if isinstance(features, dict) else features


@pytest.mark.parametrize("kind", ["rows", "windows"])
@pytest.mark.parametrize("storage_dtype", ["bfloat16", "float16"])
def test_a_compact_batch_is_the_float32_batch_rounded_through_the_dtype(kind, storage_dtype, seed):
    data = frame(seed)
    reference, _ = dataset(kind, data, "float32").samples("train")
    compact, index = dataset(kind, data, storage_dtype).samples("train")
    ids = jnp.asarray(np.random.default_rng(seed).permutation(compact.size)[:64], jnp.int32)

    want = np.asarray(reference.batch(ids).x)
    got = compact.batch(ids)
    rounded = want.astype(COMPACT[storage_dtype]).astype(np.float32)
    assert got.x.dtype == jnp.float32, "the model must receive float32"
    np.testing.assert_array_equal(np.asarray(got.x), rounded, err_msg=f"seed {seed}")
    assert np.isnan(want).any(), f"seed {seed}: the frame should hold NaN features"
    assert not np.array_equal(np.asarray(got.x), want, equal_nan=True), "nothing was rounded"
    # Labels, weights and days are the float32 path's.
    np.testing.assert_array_equal(np.asarray(got.y), np.asarray(reference.batch(ids).y))
    assert compact.labels.dtype == jnp.float32 and compact.weights.dtype == jnp.float32
    assert index.equals(dataset(kind, data, "float32").samples("train")[1])


@pytest.mark.parametrize("kind", ["rows", "windows"])
@pytest.mark.parametrize("storage_dtype", ["bfloat16", "float16"])
def test_the_stored_features_take_half_the_bytes(kind, storage_dtype, seed):
    data = frame(seed)
    full = stored(dataset(kind, data, "float32").samples("train")[0])
    half = stored(dataset(kind, data, storage_dtype).samples("train")[0])
    assert full.dtype == jnp.float32 and half.dtype == np.dtype(COMPACT[storage_dtype])
    assert half.shape == full.shape and half.nbytes * 2 == full.nbytes


@pytest.mark.parametrize("kind", ["rows", "windows"])
def test_float16_refuses_values_it_would_turn_into_inf(kind, seed):
    data = frame(seed)
    # a train row with a label: DropnaLabel drops unlabelled rows before the features are stored
    labelled = data.index[data[("label", "LABEL0")].notna().to_numpy()]
    big = labelled[len(labelled) // 3]
    data.loc[big, ("feature", "f1")] = 70000.0  # above float16's 65504; |x| < 65520 would round
    with pytest.raises(DataError, match=r"'float16'.*feature f1 \(\|x\| up to 7e\+04\).*bfloat16"):
        dataset(kind, data, "float16").samples("train")
    # bfloat16 has float32's range: the same value is stored (rounded), not refused.
    samples, _ = dataset(kind, data, "bfloat16").samples("train")
    assert np.isfinite(np.asarray(stored(samples), np.float32)).sum() > 0


def test_float16_keeps_nan_and_the_largest_finite_values(seed):
    rng = np.random.default_rng(seed)
    values = rng.uniform(-65504, 65504, size=(50, 3)).astype(np.float32)
    values[0] = [np.nan, 65519.0, -65504.0]  # 65519 rounds down to float16's largest, 65504
    values[1, 0] = -np.inf  # already infinite: the NaN/inf checks report it, not this one
    out = to_storage(values, "float16", ["a", "b", "c"])
    assert out.dtype == np.float16 and np.isnan(out[0, 0]) and out[0, 1] == 65504, f"seed {seed}"
    assert np.isfinite(out[:, 1:]).all() and np.isfinite(out[2:]).all(), f"seed {seed}"
    values[rng.integers(1, 50), 2] = -65520.0  # rounds to -inf
    with pytest.raises(DataError, match=r"feature c \(\|x\| up to 6.552e\+04\)"):
        to_storage(values, "float16", ["a", "b", "c"])


@pytest.mark.parametrize("kind", ["rows", "windows"])
def test_an_unknown_storage_dtype_lists_the_valid_ones(kind, seed):
    with pytest.raises(DataError, match="storage_dtype='bf16' is not one of float32, bfloat16"):
        dataset(kind, frame(seed), "bf16")


def test_float32_storage_is_unchanged(seed):
    data = frame(seed)
    samples, _ = dataset("rows", data, "float32").samples("train")
    train = data.loc[pd.Timestamp(SEGMENTS["train"][0]) : pd.Timestamp(SEGMENTS["train"][1])]
    train = train[train[("label", "LABEL0")].notna()]
    assert samples.features.dtype == jnp.float32
    np.testing.assert_array_equal(
        np.asarray(samples.features), train["feature"].to_numpy(np.float32)
    )


# ----------------------------------------------------------------------------- run configs
CONFIGS = {"rows": "mlp_alpha158.yaml", "windows": "gru_alpha158.yaml"}


@pytest.mark.parametrize("kind", ["rows", "windows"])
def test_the_config_key_reaches_the_stored_features(kind):
    path = tiny_run.REPO / "configs" / CONFIGS[kind]
    items = [i for i in tiny_run.overrides() if not i.startswith("model.")]
    cfg = run_config.load(path, [*items, "dataset.storage_dtype=bfloat16"])
    built = workflow.build_dataset(cfg)
    assert built.storage_dtype == "bfloat16"
    samples, _ = built.samples("train")
    assert stored(samples).dtype == jnp.bfloat16 and samples.labels.dtype == jnp.float32
    assert samples.batch(jnp.arange(4, dtype=jnp.int32)).x.dtype == jnp.float32
    default = workflow.build_dataset(run_config.load(path, items))
    assert stored(default.samples("train")[0]).dtype == jnp.float32


@pytest.mark.parametrize(
    "change, message",
    [
        ("dataset.storage_dtype=bf16", r"one of float32, bfloat16, float16, got 'bf16'"),
        ("dataset.storage_dtype=float64", r"dataset.storage_dtype must be one of"),
    ],
)
def test_a_bad_storage_dtype_in_a_config_is_an_error(change, message):
    with pytest.raises(ConfigError, match=message):
        run_config.load(tiny_run.REPO / "configs" / "mlp_alpha158.yaml", [change])


def test_a_run_refuses_float16_overflow_before_touching_its_directory(tmp_path, monkeypatch):
    path = tiny_run.REPO / "configs" / "mlp_alpha158.yaml"
    items = [i for i in tiny_run.overrides() if not i.startswith("model.")]
    cfg = run_config.load(path, [*items, "dataset.storage_dtype=float16"])
    workflow.check_dataset(workflow.build_dataset(cfg))  # generated Alpha158 fits float16
    handler_input = workflow.handler_input

    def one_big_feature(*args, **kwargs):  # one KMID value beyond float16's 65504
        frame = handler_input(*args, **kwargs)
        frame.loc[frame.index[len(frame) // 2], ("feature", "KMID")] = 1e6
        return frame

    monkeypatch.setattr(workflow, "handler_input", one_big_feature)
    with pytest.raises(DataError, match=r"'float16'.*feature KMID \(\|x\| up to 1e\+06\)"):
        workflow.check_dataset(workflow.build_dataset(cfg))
    with pytest.raises(DataError, match="storage_dtype='float16'"):
        workflow.train(cfg, tmp_path / "run", verbose=False)
    assert not (tmp_path / "run").exists(), "the run directory was touched"


def test_compute_in_gather_keeps_float32_storage():
    config = tiny_run.REPO / "configs" / "lstm_alpha360.yaml"
    with pytest.raises(ConfigError, match="compute_in_gather"):
        run_config.load(config, ["handler.compute_in_gather=true", "dataset.storage_dtype=float16"])
    assert set(STORAGE_DTYPES) == {"float32", "bfloat16", "float16"}


def test_a_saved_run_predicts_with_the_storage_dtype_it_trained_with(tmp_path):
    """``qjax predict`` rebuilds the features as the run stored them: its scores of the test
    segment equal the run's own bfloat16 scores exactly (float32 rows would differ)."""
    import qjax
    from qjax import cli

    run = tmp_path / "run"
    flags = tiny_run.set_flags(
        model__kwargs__hidden_size=8, model__kwargs__n_epochs=2, dataset__storage_dtype="bfloat16"
    )
    config = str(tiny_run.REPO / "configs" / "lstm_alpha360.yaml")
    assert cli.main(["train", config, "--out", str(run), "--quiet", *flags]) == 0
    saved = pd.read_parquet(run / "predictions.parquet")["score"]
    start, end = tiny_run.TINY["dataset.segments.test"].strip("[]").split(", ")
    scores = qjax.load(run).predict(start, end)
    assert scores.index.equals(saved.index)
    np.testing.assert_array_equal(scores.to_numpy(), saved.to_numpy())
