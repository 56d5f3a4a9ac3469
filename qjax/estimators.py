"""Qlib-style model wrappers: ``qjax.estimator(name, **kwargs).fit(dataset).predict(dataset)``.

Each wrapper accepts exactly the keyword arguments of its Qlib class, with the same defaults
(an unknown keyword is an error; Qlib silently swallows it), builds the registered Flax network
and trains it with the one engine in :mod:`qjax.train`. A spec is data: the Qlib defaults, how
those arguments become module arguments, and which batching the model uses. The dataset decides
between the flat (``Dataset``) and the window (``TSDataset``) variant, as Qlib's ``*_ts``
classes do; defaults that differ between Qlib's two classes follow the dataset.

Keywords that only concern PyTorch are accepted for compatibility and have no effect: ``GPU``
(JAX places work on its default backend; install ``qjax[cuda]`` for GPUs) and ``n_jobs``
(windows are gathered on the device, no loader workers). ``seed=None`` means seed 0, so runs
are reproducible.
"""

from __future__ import annotations

import dataclasses
import functools
import os
import warnings
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd
from flax import traverse_util

from qjax import models
from qjax.data.dataset import Dataset, TSDataset
from qjax.data.samples import Samples, qlib_legacy_day_groups, with_keyword_inputs
from qjax.model_checks import check_flat_layout, check_model_kwargs
from qjax.train import FitResult, LossFn, Plateau, TrainConfig, fit, predict
from qjax.train.objectives import SparsityRegularisedMSE, TabNetPretrainObjective

# Keywords every Qlib epoch-loop wrapper shares (LSTM, GRU, ALSTM, KRNN, SFM, TCN, ...).
EPOCH_LOOP = {
    "n_epochs": 200,
    "lr": 0.001,
    "metric": "",
    "batch_size": 2000,
    "early_stop": 20,
    "loss": "mse",
    "optimizer": "adam",
    "GPU": 0,
    "seed": None,
}
# qjax additions every wrapper accepts (Qlib's behaviour is one setting away).
QJAX_EXTRAS = {
    "eval_protocol": "exact",  # "qlib": mean of per-batch means, last partial batch dropped
    "eval_train": False,  # Qlib re-evaluates the whole train set every epoch
    "eval_batch_size": None,
}


@dataclasses.dataclass(frozen=True)
class ModelSpec:
    """How a Qlib wrapper maps onto a qjax network and a :class:`TrainConfig`."""

    name: str  # registry name of the network
    qlib_class: str  # the Qlib wrapper this mirrors, for messages and docs
    defaults: Mapping[str, Any]  # the wrapper's keyword arguments and defaults (flat variant)
    module_kwargs: Callable[[dict, bool], dict]  # (kwargs, is_ts) -> network constructor kwargs
    ts_defaults: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    train_kwargs: Callable[[dict], dict] | None = None  # kwargs -> TrainConfig fields
    check_input: Callable[[dict, tuple[int, ...]], None] | None = None
    daily: bool = False  # one batch per trading day (GATs, HIST)
    # kwargs -> (index -> {name: per-sample array}) keyword inputs of the module (HIST)
    keyword_inputs: Callable[[dict], Callable[[pd.MultiIndex], dict]] | None = None
    # kwargs -> init_variables hook of qjax.train.fit (pretrained weights), or None
    init_variables: Callable[[dict], Callable | None] | None = None
    # (kwargs, segment name, samples, index) -> samples: the model's own input handling
    # (TabNet's NaN fill, GATs_ts's legacy day groups)
    prepare_samples: Callable[[dict, str, Samples, pd.MultiIndex], Samples] | None = None
    # kwargs -> objective of qjax.train.fit, or None for the NaN-masked MSE
    loss_fn: Callable[[dict], LossFn | None] | None = None
    # A training stage before the main fit (TabNet's self-supervised pretraining):
    # (kwargs, dataset, module, verbose) -> (init_variables or None, its FitResult or None).
    # An init_variables it returns takes precedence over the one above.
    pretrain: Callable[[dict, Dataset, nn.Module, bool], tuple[Callable | None, FitResult | None]] | None = None

    def resolve(self, user: Mapping[str, Any], is_ts: bool) -> dict:
        resolved = {**self.defaults, **QJAX_EXTRAS}
        if is_ts:
            resolved.update(self.ts_defaults)
        resolved.update(user)
        return resolved


def _epoch_loop_train(kw: dict) -> dict:
    if str(kw["loss"]).lower() != "mse":
        raise ValueError(f"loss={kw['loss']!r} is not supported; Qlib's models train with loss='mse'")
    return {
        "n_epochs": kw["n_epochs"],
        "lr": kw["lr"],
        "batch_size": kw.get("batch_size", 2000),
        "early_stop": kw["early_stop"],
        "optimizer": kw["optimizer"],
        "metric": kw["metric"],
        "weight_decay": kw.get("reg", kw.get("weight_decay", 0.0)),
        "seed": 0 if kw["seed"] is None else kw["seed"],
        "eval_protocol": kw["eval_protocol"],
        "eval_train": kw["eval_train"],
        "eval_batch_size": kw["eval_batch_size"],
    }


def _pick(*names: str) -> Callable[[dict, bool], dict]:
    return lambda kw, is_ts: {name: kw[name] for name in names}


def _check_sequence_input(feature_key: str) -> Callable[[dict, tuple[int, ...]], None]:
    def check(kw: dict, shape: tuple[int, ...]) -> None:
        d_feat = kw[feature_key]
        if len(shape) == 3 and shape[-1] != d_feat:
            raise ValueError(
                f"{feature_key}={d_feat} but the dataset's windows have {shape[-1]} features per "
                f"step; set {feature_key}={shape[-1]}"
            )
        if len(shape) == 2 and shape[-1] % d_feat:
            raise ValueError(
                f"{feature_key}={d_feat} does not divide the {shape[-1]} feature columns; "
                f"Alpha360 has {feature_key}=6 (60 steps x 6 fields)"
            )

    return check


# GeneralPTNN's fixed ReduceLROnPlateau(patience 5, threshold 1e-5, min_lr 1e-6), per epoch.
GENERAL_PLATEAU = Plateau(factor=0.5, patience=5, threshold=1e-5, min_lr=1e-6)

RNN_DEFAULTS = {"d_feat": 6, "hidden_size": 64, "num_layers": 2, "dropout": 0.0, **EPOCH_LOOP}


def _alstm_module(kw: dict, is_ts: bool) -> dict:
    # Qlib's ALSTM wrappers never pass rnn_type to the network, so it is always a GRU.
    rnn_type = kw["rnn_type"] if kw["honour_rnn_type"] else "GRU"
    return {**_pick("d_feat", "hidden_size", "num_layers", "dropout")(kw, is_ts), "rnn_type": rnn_type}


def _mlp_module(kw: dict, is_ts: bool) -> dict:
    uri = kw["pt_model_uri"]
    if uri not in ("qlib.contrib.model.pytorch_nn.Net", "mlp", "Net"):
        raise ValueError(
            f"pt_model_uri={uri!r}: this wrapper builds Qlib's Net; for any other network use "
            "qjax.estimator('general', pt_model_uri=...)"
        )
    if is_ts:
        raise ValueError("DNNModelPytorch takes a flat Dataset, not a TSDataset")
    return dict(kw["pt_model_kwargs"])


def _mlp_train(kw: dict) -> dict:
    if str(kw["loss"]).lower() != "mse":
        raise ValueError(f"loss={kw['loss']!r} is not supported; use loss='mse'")
    scheduler = kw["scheduler"]
    if scheduler == "default":
        plateau = Plateau()
    elif scheduler is None:
        plateau = None
    elif isinstance(scheduler, (Plateau, Mapping)):
        plateau = scheduler
    else:
        raise ValueError(
            f"scheduler={scheduler!r}: use 'default' (ReduceLROnPlateau as Qlib), None, or a dict "
            "of qjax.train.Plateau fields"
        )
    if kw["init_model"] is not None:
        raise ValueError(
            "init_model takes a torch module in Qlib; convert it with qjax.interop.from_qlib "
            "and pass the variables to qjax.train.fit(init_variables=...) instead"
        )
    return {
        "batching": "steps",
        "lr": kw["lr"],
        "max_steps": kw["max_steps"],
        "batch_size": kw["batch_size"],
        "early_stop": kw["early_stop_rounds"],
        "eval_steps": kw["eval_steps"],
        "optimizer": kw["optimizer"],
        "weight_decay": kw["weight_decay"],
        "clip_value": None,  # DNNModelPytorch does not clip gradients
        "lr_plateau": plateau,
        "seed": 0 if kw["seed"] is None else kw["seed"],
        "eval_train": kw["eval_train_metric"] or kw["eval_train"],
        "eval_protocol": kw["eval_protocol"],
        "eval_batch_size": kw["eval_batch_size"],
    }


def _check_mlp_input(kw: dict, shape: tuple[int, ...]) -> None:
    input_dim = kw["pt_model_kwargs"].get("input_dim")
    if input_dim != shape[-1]:
        raise ValueError(
            f"pt_model_kwargs.input_dim={input_dim} but the dataset has {shape[-1]} feature "
            f"columns; set pt_model_kwargs={{'input_dim': {shape[-1]}, ...}}"
        )


_TRANSFORMER_DEFAULTS = {
    "d_feat": 20,
    "d_model": 64,
    "batch_size": 2048,
    "nhead": 2,
    "num_layers": 2,
    "dropout": 0.0,
    "n_epochs": 100,
    "lr": 0.0001,
    "metric": "",
    "early_stop": 5,
    "loss": "mse",
    "optimizer": "adam",
    "reg": 0.001,
    "n_jobs": 10,
    "GPU": 0,
    "seed": None,
}


def _daily_train(kw: dict) -> dict:
    return {**_epoch_loop_train(kw), "batching": "daily"}


DAILY_BATCHES = ("true_daily", "qlib_legacy")


def _gats_train(kw: dict) -> dict:
    # Qlib's GATs_ts sampler walks its "days" in the same order every epoch.
    return {**_daily_train(kw), "shuffle_days": kw["daily_batch"] != "qlib_legacy"}


def _gats_check_input(kw: dict, shape: tuple[int, ...]) -> None:
    _check_sequence_input("d_feat")(kw, shape)
    if kw["daily_batch"] not in DAILY_BATCHES:
        raise ValueError(f"daily_batch={kw['daily_batch']!r}; expected one of {DAILY_BATCHES}")
    if kw["daily_batch"] == "qlib_legacy" and len(shape) != 3:
        raise ValueError(
            "daily_batch='qlib_legacy' reproduces the sampler of Qlib's GATs_ts (pytorch_gats_ts) "
            "and needs a TSDataset; Qlib's static GATs already batches real days (the default)"
        )


def _gats_day_groups(kw: dict, segment: str, samples: Samples, index: pd.MultiIndex) -> Samples:
    """``daily_batch="qlib_legacy"``: GATs_ts's pseudo-days instead of real ones (Qlib #2319)."""
    if kw["daily_batch"] != "qlib_legacy":
        return samples
    return samples.replace(batch_group=jnp.asarray(qlib_legacy_day_groups(index)))


def _pretrained_base(kw: dict) -> Callable | None:
    """GATs/HIST ``model_path``: copy a Qlib LSTM/GRU state dict's rnn and fc_out, as Qlib does."""
    path = kw.get("model_path")
    if path is None:
        return None
    from qjax.interop import read_torch_state_dict
    from qjax.interop.qlib.gats import load_base_weights

    state_dict = read_torch_state_dict(path)
    return lambda variables: load_base_weights(variables, state_dict, kw["base_model"], kw["num_layers"])


def _hist_concepts(kw: dict) -> Callable[[pd.MultiIndex], dict]:
    """Each sample's stock-to-concept row, from a DataFrame or Qlib's .npy files."""
    table = _concept_table(kw["stock2concept"], kw["stock_index"])

    def rows(index: pd.MultiIndex) -> dict:
        instruments = index.get_level_values("instrument")
        known = instruments.isin(table.index)
        if not known.any():
            raise ValueError(
                "no instrument of the dataset is in stock2concept; check that the concept matrix "
                "belongs to this market (instrument names must match)"
            )
        if not known.all():
            # Qlib maps unknown stocks to row 733, a real stock; qjax gives them no concept.
            warnings.warn(
                f"{int((~known).sum())} samples belong to instruments missing from stock2concept; "
                "they get an all-zero concept row",
                stacklevel=3,
            )
        matrix = table.reindex(instruments).fillna(0.0).to_numpy(np.float32)
        return {"concept_matrix": matrix}

    return rows


def _concept_table(stock2concept: Any, stock_index: Any) -> pd.DataFrame:
    if isinstance(stock2concept, pd.DataFrame):
        return stock2concept.astype(np.float32)
    if stock2concept is None:
        raise ValueError(
            "HIST needs stock2concept: a DataFrame (instruments x concepts, e.g. "
            "qjax.data.market.generate_concepts(...)) or the path of Qlib's "
            "qlib_csi300_stock2concept.npy together with stock_index"
        )
    if stock_index is None:
        raise ValueError("stock2concept given as a .npy file needs stock_index (Qlib's stock index .npy)")
    matrix = np.load(stock2concept)
    mapping = np.load(stock_index, allow_pickle=True).item()
    names = sorted(mapping, key=mapping.get)
    rows = [mapping[name] for name in names]
    if max(rows) >= matrix.shape[0]:
        raise ValueError(
            f"stock_index points at row {max(rows)} but stock2concept has {matrix.shape[0]} rows"
        )
    return pd.DataFrame(matrix[rows], index=[str(n).upper() for n in names]).astype(np.float32)


def _general_module(kw: dict, is_ts: bool) -> dict:
    return {"module_path": kw["pt_model_uri"], "module_kwargs": dict(kw["pt_model_kwargs"])}


def _tcn_module(kw: dict, is_ts: bool) -> dict:
    return {
        "num_input": kw["d_feat"],
        "output_size": 1,
        "num_channels": (kw["n_chans"],) * kw["num_layers"],
        "kernel_size": kw["kernel_size"],
        "dropout": kw["dropout"],
    }


# -- TabNet -------------------------------------------------------------------------------------
# TabnetModel = self-supervised pretraining of the encoder (segments "pretrain" and
# "pretrain_validation"), then supervised fine-tuning of TabNetFinetune on "train"/"valid".
# Deliberate differences from Qlib, all in the pretraining stage:
# - early stopping counts consecutive non-improving epochs (the engine's rule); Qlib's counter
#   is never reset, so it stops after `early_stop` non-improving epochs in total;
# - evaluation masks S come from a fixed key (the same for every evaluation and batch), where
#   Qlib re-draws them, which makes its validation loss (and so its early stopping) noisy;
# - the masks come from JAX's generator, not torch's.
# NaN labels are left NaN and masked out of the loss (Qlib fills train labels with their mean and
# valid labels with 0); after DropnaLabel, in every benchmark config, there are none.
# With several seeds, pretraining runs once (seed `seed`) and every replica fine-tunes from it.

_TABNET_DEFAULTS = {
    "d_feat": 158,
    "out_dim": 64,
    "final_out_dim": 1,
    "batch_size": 4096,
    "n_d": 64,
    "n_a": 64,
    "n_shared": 2,
    "n_ind": 2,
    "n_steps": 5,
    "n_epochs": 100,
    "pretrain_n_epochs": 50,
    "relax": 1.3,
    "vbs": 2048,
    "seed": 993,
    "optimizer": "adam",
    "loss": "mse",
    "metric": "",
    "early_stop": 20,
    "GPU": 0,
    "pretrain_loss": "custom",  # accepted and unused, as in Qlib
    "ps": 0.3,
    "lr": 0.01,
    "pretrain": True,
    "pretrain_file": None,  # a .npz of the best pretrained encoder's variables (flat "a/b/c" keys)
    # qjax switches: the paper's TabNet (module docstring of qjax.models.tabnet), which also
    # trains the head and adds lambda_sparse * the sparsity loss to the fine-tuning loss
    "paper": False,
    "lambda_sparse": 1e-3,
}
# Segments whose NaN features Qlib fills with the segment's column means first (then with 0).
_MEAN_FILLED_SEGMENTS = ("train", "pretrain", "pretrain_validation")
_PRETRAIN_SEGMENTS = ("pretrain", "pretrain_validation")


def _tabnet_module(kw: dict, is_ts: bool) -> dict:
    names = ("out_dim", "final_out_dim", "n_d", "n_a", "n_shared", "n_ind", "n_steps", "relax", "vbs", "paper")
    return {"inp_dim": kw["d_feat"], **{name: kw[name] for name in names}}


def _tabnet_train(kw: dict) -> dict:
    module = models.get("tabnet")(**_tabnet_module(kw, False))
    return {**_epoch_loop_train(kw), "frozen": module.frozen_param_names()}  # Qlib never trains fc


def _check_tabnet_input(kw: dict, shape: tuple[int, ...]) -> None:
    if shape[-1] != kw["d_feat"]:
        raise ValueError(
            f"d_feat={kw['d_feat']} but the dataset has {shape[-1]} feature columns; set d_feat={shape[-1]}"
        )


def _tabnet_inputs(kw: dict, segment: str, samples: Samples, index: pd.MultiIndex) -> Samples:
    """Qlib's NaN handling: column means of the segment first where Qlib uses them, then 0."""
    x = samples.features
    if not isinstance(x, jax.Array) or x.ndim != 2:
        raise ValueError(
            "TabnetModel takes a flat qjax.data.Dataset (one row of d_feat features per sample), "
            "not a TSDataset"
        )
    if segment in _MEAN_FILLED_SEGMENTS:
        x = jnp.where(jnp.isnan(x), jnp.nanmean(x, axis=0), x)  # an all-NaN column stays NaN
    return samples.replace(features=jnp.where(jnp.isnan(x), 0.0, x))


def _tabnet_loss(kw: dict) -> LossFn | None:
    return SparsityRegularisedMSE(float(kw["lambda_sparse"])) if kw["paper"] else None


class _PretrainStage(nn.Module):
    """A :class:`~qjax.models.tabnet.TabNetPretrainer` whose mask may be omitted (zeros), so the
    engine can ``init`` it from ``x`` alone; its variables keep the pretrainer's names."""

    pretrainer: nn.Module

    def setup(self):
        nn.share_scope(self, self.pretrainer)

    def __call__(self, x: jax.Array, s_mask: jax.Array | None = None, train: bool = False) -> jax.Array:
        return self.pretrainer(x, jnp.zeros_like(x) if s_mask is None else s_mask, train)


def _tabnet_pretrain(kw: dict, dataset: Dataset, module: nn.Module, verbose: bool):
    """Qlib's ``pretrain_fn``: train encoder + decoder to reconstruct masked features.

    Adam (or SGD) with ``lr`` on encoder and decoder, no clipping, ``batch_size`` shuffled full
    batches, ``pretrain_n_epochs`` epochs, early stopping on the "pretrain_validation" loss.
    Returns the fine-tuning ``init_variables`` (the best encoder copied into ``"model"``) and
    the stage's FitResult.
    """
    if not kw["pretrain"]:
        return None, None
    missing = [name for name in _PRETRAIN_SEGMENTS if name not in dataset.segments]
    if missing:
        raise KeyError(
            f"pretrain=True needs the dataset segments {list(_PRETRAIN_SEGMENTS)} (Qlib's benchmark "
            f"configs set them equal to train and valid); {missing} missing. Add them or pass pretrain=False"
        )
    segments = []
    for name in _PRETRAIN_SEGMENTS:
        samples = _tabnet_inputs(kw, name, *dataset.samples(name, data_key="learn", label=False))
        if samples.size < kw["batch_size"]:
            raise ValueError(
                f"segment {name!r} has {samples.size} samples, fewer than batch_size={kw['batch_size']}; "
                "pretraining uses full batches only (its loss is a sum over the batch), lower batch_size"
            )
        segments.append(samples)
    config = TrainConfig(
        n_epochs=kw["pretrain_n_epochs"],
        lr=kw["lr"],
        batch_size=kw["batch_size"],
        early_stop=kw["early_stop"],
        optimizer=kw["optimizer"],
        clip_value=None,
        eval_protocol="qlib",  # mean over full batches of the per-batch summed loss
        seed=0 if kw["seed"] is None else kw["seed"],
    )
    stage = _PretrainStage(module.pretrainer())
    result = fit(stage, *segments, config, loss_fn=TabNetPretrainObjective(float(kw["ps"])), verbose=verbose)
    best = result.replica(0)
    encoder = {collection: tree["encoder"] for collection, tree in best.items()}
    if kw["pretrain_file"] is not None:  # Qlib saves the best encoder and fine-tunes from the file
        _save_variables(kw["pretrain_file"], encoder)
        encoder = _load_variables(kw["pretrain_file"])
    return functools.partial(_with_encoder, encoder=encoder), result


def _with_encoder(variables: dict, encoder: dict) -> dict:
    """Fine-tuning variables whose encoder ``"model"`` is ``encoder`` (the head keeps its init)."""
    out = {collection: dict(tree) for collection, tree in variables.items()}
    for collection, tree in encoder.items():
        out[collection]["model"] = tree
    return out


def _save_variables(path: str | os.PathLike, variables: dict) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    flat = traverse_util.flatten_dict(jax.device_get(variables), sep="/")
    with open(path, "wb") as file:  # a file handle: np.savez would append ".npz" to the name
        np.savez(file, **{key: np.asarray(value) for key, value in flat.items()})


def _load_variables(path: str | os.PathLike) -> dict:
    with np.load(path) as arrays:
        flat = {key: jnp.asarray(arrays[key]) for key in arrays.files}
    return traverse_util.unflatten_dict(flat, sep="/")


SPECS: dict[str, ModelSpec] = {
    spec.name: spec
    for spec in [
        ModelSpec(
            "mlp",
            "qlib.contrib.model.pytorch_nn.DNNModelPytorch",
            {
                "lr": 0.001,
                "max_steps": 300,
                "batch_size": 2000,
                "early_stop_rounds": 50,
                "eval_steps": 20,
                "optimizer": "gd",
                "loss": "mse",
                "GPU": 0,
                "seed": None,
                "weight_decay": 0.0,
                "data_parall": False,
                "scheduler": "default",
                "init_model": None,
                "eval_train_metric": False,
                "pt_model_uri": "qlib.contrib.model.pytorch_nn.Net",
                "pt_model_kwargs": {"input_dim": 360, "layers": (256,)},
                "valid_key": "learn",
            },
            _mlp_module,
            train_kwargs=_mlp_train,
            check_input=_check_mlp_input,
        ),
        ModelSpec(
            "lstm",
            "qlib.contrib.model.pytorch_lstm.LSTM / pytorch_lstm_ts.LSTM",
            RNN_DEFAULTS,
            _pick("d_feat", "hidden_size", "num_layers", "dropout"),
            ts_defaults={"n_jobs": 10},
            check_input=_check_sequence_input("d_feat"),
        ),
        ModelSpec(
            "gru",
            "qlib.contrib.model.pytorch_gru.GRU / pytorch_gru_ts.GRU",
            RNN_DEFAULTS,
            _pick("d_feat", "hidden_size", "num_layers", "dropout"),
            ts_defaults={"n_jobs": 10},
            check_input=_check_sequence_input("d_feat"),
        ),
        ModelSpec(
            "alstm",
            "qlib.contrib.model.pytorch_alstm.ALSTM / pytorch_alstm_ts.ALSTM",
            {**RNN_DEFAULTS, "rnn_type": "GRU", "honour_rnn_type": False},
            _alstm_module,
            ts_defaults={"n_jobs": 10},
            check_input=_check_sequence_input("d_feat"),
        ),
        ModelSpec(
            "transformer",
            "qlib.contrib.model.pytorch_transformer.TransformerModel (/ _ts)",
            _TRANSFORMER_DEFAULTS,
            _pick("d_feat", "d_model", "nhead", "num_layers", "dropout"),
            ts_defaults={"batch_size": 8192},
            check_input=_check_sequence_input("d_feat"),
        ),
        ModelSpec(
            "localformer",
            "qlib.contrib.model.pytorch_localformer.LocalformerModel (/ _ts)",
            _TRANSFORMER_DEFAULTS,
            _pick("d_feat", "d_model", "nhead", "num_layers", "dropout"),
            ts_defaults={"batch_size": 8192},
            check_input=_check_sequence_input("d_feat"),
        ),
        ModelSpec(
            "krnn",
            "qlib.contrib.model.pytorch_krnn.KRNN",
            {
                "fea_dim": 6,
                "cnn_dim": 64,
                "cnn_kernel_size": 3,
                "rnn_dim": 64,
                "rnn_dups": 3,
                "rnn_layers": 2,
                "dropout": 0,
                **EPOCH_LOOP,
                "layout": "qlib",  # qjax switch: "feature_major" fixes Qlib's row-major reshape
            },
            _pick("fea_dim", "cnn_dim", "cnn_kernel_size", "rnn_dim", "rnn_dups", "rnn_layers",
                  "dropout", "layout"),
            check_input=_check_sequence_input("fea_dim"),
        ),
        ModelSpec(
            "sfm",
            "qlib.contrib.model.pytorch_sfm.SFM",
            {
                "d_feat": 6,
                "hidden_size": 64,
                "output_dim": 1,
                "freq_dim": 10,
                "dropout_W": 0.0,
                "dropout_U": 0.0,
                **EPOCH_LOOP,
                "eval_steps": 5,  # accepted and unused, as in Qlib
                "optimizer": "gd",
            },
            _pick("d_feat", "output_dim", "freq_dim", "hidden_size", "dropout_W", "dropout_U"),
            check_input=_check_sequence_input("d_feat"),
        ),
        ModelSpec(
            "tcn",
            "qlib.contrib.model.pytorch_tcn.TCN / pytorch_tcn_ts.TCN",
            {"d_feat": 6, "n_chans": 128, "kernel_size": 5, "num_layers": 5, "dropout": 0.5,
             **EPOCH_LOOP, "lr": 0.0001},
            _tcn_module,
            ts_defaults={"num_layers": 2, "dropout": 0.0, "lr": 0.001, "n_jobs": 10},
            check_input=_check_sequence_input("d_feat"),
        ),
        ModelSpec(
            "gats",
            "qlib.contrib.model.pytorch_gats.GATs / pytorch_gats_ts.GATs",
            {"d_feat": 6, "hidden_size": 64, "num_layers": 2, "dropout": 0.0, "n_epochs": 200,
             "lr": 0.001, "metric": "", "early_stop": 20, "loss": "mse", "base_model": "GRU",
             "model_path": None, "optimizer": "adam", "GPU": 0, "seed": None,
             # qjax: "qlib_legacy" batches GATs_ts's contiguous instrument-major ranges (not days)
             "daily_batch": "true_daily"},
            _pick("d_feat", "hidden_size", "num_layers", "dropout", "base_model"),
            ts_defaults={"d_feat": 20, "n_jobs": 10},
            train_kwargs=_gats_train,
            check_input=_gats_check_input,
            prepare_samples=_gats_day_groups,
            daily=True,
            init_variables=_pretrained_base,
        ),
        ModelSpec(
            "hist",
            "qlib.contrib.model.pytorch_hist.HIST",
            {"d_feat": 6, "hidden_size": 64, "num_layers": 2, "dropout": 0.0, "n_epochs": 200,
             "lr": 0.001, "metric": "ic", "early_stop": 20, "loss": "mse", "base_model": "GRU",
             "model_path": None, "stock2concept": None, "stock_index": None, "optimizer": "adam",
             "GPU": 0, "seed": None},
            _pick("d_feat", "hidden_size", "num_layers", "dropout", "base_model"),
            train_kwargs=_daily_train,
            check_input=_check_sequence_input("d_feat"),
            daily=True,
            keyword_inputs=_hist_concepts,
            init_variables=_pretrained_base,
        ),
        ModelSpec(
            "general",
            "qlib.contrib.model.pytorch_general_nn.GeneralPTNN",
            {"n_epochs": 200, "lr": 0.001, "metric": "", "batch_size": 2000, "early_stop": 20,
             "loss": "mse", "weight_decay": 0.0, "optimizer": "adam", "n_jobs": 10, "GPU": 0,
             "seed": None, "pt_model_uri": "qlib.contrib.model.pytorch_gru_ts.GRUModel",
             "pt_model_kwargs": {"d_feat": 6, "hidden_size": 64, "num_layers": 2, "dropout": 0.0}},
            _general_module,
            train_kwargs=lambda kw: {**_epoch_loop_train(kw), "lr_plateau": GENERAL_PLATEAU},
        ),
        ModelSpec(
            "tabnet",
            "qlib.contrib.model.pytorch_tabnet.TabnetModel",
            _TABNET_DEFAULTS,
            _tabnet_module,
            train_kwargs=_tabnet_train,
            check_input=_check_tabnet_input,
            prepare_samples=_tabnet_inputs,
            loss_fn=_tabnet_loss,
            pretrain=_tabnet_pretrain,
        ),
    ]
}


class Estimator:
    """A Qlib-compatible model: ``fit(dataset)`` then ``predict(dataset, segment)``.

    After ``fit``: ``module`` (the Flax network), ``variables`` (best parameters of the first
    seed), ``result`` (:class:`qjax.train.FitResult`, every seed), ``config`` and, for models
    with a pre-training stage (TabNet), ``pretrain_result`` (that stage's FitResult, or None).
    """

    def __init__(self, spec: ModelSpec, **kwargs: Any):
        check_model_kwargs(
            spec.name, spec.qlib_class, kwargs,
            accepted=set(spec.defaults) | set(QJAX_EXTRAS) | set(spec.ts_defaults),
            documented=sorted(spec.defaults), extras=sorted(QJAX_EXTRAS), defaults=spec.defaults,
        )
        self.spec = spec
        self.user_kwargs = dict(kwargs)
        self.module: nn.Module | None = None
        self.result: FitResult | None = None
        self.pretrain_result: FitResult | None = None
        self.config: TrainConfig | None = None
        self.kwargs: dict | None = None
        self._is_ts: bool | None = None

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.user_kwargs.items())
        return f"qjax.estimator({self.spec.name!r}{', ' if args else ''}{args})"

    @property
    def variables(self) -> dict:
        self._require_fit()
        return self.result.replica(0)

    def fit(
        self,
        dataset: Dataset,
        evals_result: dict | None = None,
        checkpoint_dir: str | None = None,
        resume: bool = False,
        seeds: Sequence[int] | None = None,
        verbose: bool = True,
        reweighter: Any = None,
        init_variables: Callable | None = None,
    ) -> "Estimator":
        """Train on the "train" segment, early-stop on "valid" (if the dataset has one).

        ``init_variables`` maps each replica's fresh variables to its starting ones (a warm
        start, e.g. a previous rolling window's best variables); it replaces the model's own.
        """
        is_ts = _is_ts(dataset)
        kw = self.spec.resolve(self.user_kwargs, is_ts)
        self.kwargs = kw
        train, _ = self._samples(dataset, "train", "learn", label=True, reweighter=reweighter)
        valid = None
        if "valid" in dataset.segments:
            valid, _ = self._samples(dataset, "valid", kw.get("valid_key", "learn"), label=True)
        if self.spec.check_input is not None:
            self.spec.check_input(kw, _input_shape(train))
        if not is_ts:
            check_flat_layout(self.spec.name, kw, _feature_names(dataset))
        module = models.get(self.spec.name)(**self.spec.module_kwargs(kw, is_ts))
        config = TrainConfig(**(self.spec.train_kwargs or _epoch_loop_train)(kw))
        warm_start = init_variables
        init_variables = self.spec.init_variables(kw) if self.spec.init_variables else None
        self.pretrain_result = None
        if self.spec.pretrain is not None:
            pretrained, self.pretrain_result = self.spec.pretrain(kw, dataset, module, verbose)
            init_variables = pretrained or init_variables
        init_variables = warm_start or init_variables
        result = fit(
            module,
            train,
            valid,
            config,
            seeds=seeds,
            loss_fn=self.spec.loss_fn(kw) if self.spec.loss_fn else None,
            init_variables=init_variables,
            checkpoint_dir=checkpoint_dir,
            resume=resume,
            evals_result=evals_result,
            verbose=verbose,
        )
        self.kwargs, self.module, self.config, self.result, self._is_ts = kw, module, config, result, is_ts
        return self

    def preflight(self, dataset: Dataset) -> None:
        """The checks ``fit`` makes before training, without building samples (cheap): run
        them before committing to a long job. Raises what ``fit`` would raise."""
        is_ts = _is_ts(dataset)
        kw = self.spec.resolve(self.user_kwargs, is_ts)
        names = _feature_names(dataset)
        if self.spec.check_input is not None:
            shape = (1, dataset.step_len, len(names)) if is_ts else (1, len(names))
            self.spec.check_input(kw, shape)
        if not is_ts:
            check_flat_layout(self.spec.name, kw, names)
        self.spec.module_kwargs(kw, is_ts)
        TrainConfig(**(self.spec.train_kwargs or _epoch_loop_train)(kw))

    def predict(self, dataset: Dataset, segment: str = "test") -> pd.Series | pd.DataFrame:
        """Predictions indexed (datetime, instrument): a Series, or one column per seed."""
        self._require_fit()
        is_ts = _is_ts(dataset)
        if is_ts != self._is_ts:
            kind = "TSDataset" if self._is_ts else "Dataset"
            raise ValueError(f"this model was fitted on a {kind}; predict on the same kind of dataset")
        samples, index = self._samples(dataset, segment, "infer", label=False)
        # Qlib predicts in batches of batch_size; on CPU larger RNN batches are slower, and a
        # Transformer's 2048-wide feed-forward makes huge batches costly in memory.
        batch_size = self.config.batch_size
        n_seeds = len(self.result.seeds)
        pred = predict(self.module, self.result.variables, samples, batch_size=batch_size,
                       daily=self.spec.daily, per_seed=True)
        if n_seeds == 1:
            return pd.Series(pred[0], index=index, name="score")
        return pd.DataFrame(pred.T, index=index, columns=[f"seed_{s}" for s in self.result.seeds])

    def _samples(
        self, dataset, segment, data_key, label, reweighter=None
    ) -> tuple[Samples, pd.MultiIndex]:
        if segment not in dataset.segments:
            raise KeyError(
                f"the dataset has no {segment!r} segment; it has {sorted(dataset.segments)}"
            )
        samples, index = dataset.samples(segment, data_key=data_key, label=label)
        if reweighter is not None:
            frame = dataset.prepare(segment, col_set="__all", data_key=data_key)
            weights = np.asarray(reweighter.reweight(frame), np.float32).reshape(-1)
            if weights.shape[0] != samples.size:
                raise ValueError(
                    f"reweighter returned {weights.shape[0]} weights for {samples.size} samples"
                )
            samples = samples.replace(weights=_device(weights))
        if self.spec.prepare_samples is not None:
            samples = self.spec.prepare_samples(self.kwargs, segment, samples, index)
        if self.spec.keyword_inputs is not None:
            samples = with_keyword_inputs(samples, **self.spec.keyword_inputs(self.kwargs)(index))
        return samples, index

    def _require_fit(self) -> None:
        if self.result is None:
            raise RuntimeError("call fit(dataset) before predict")


def _device(array: np.ndarray):
    return jnp.asarray(array)


def _is_ts(dataset) -> bool:
    if isinstance(dataset, TSDataset):
        return True
    if isinstance(dataset, Dataset):
        return False
    raise TypeError(f"expected a qjax.data.Dataset or TSDataset, got {type(dataset).__name__}")


def _feature_names(dataset: Dataset) -> list[str]:
    columns = dataset.handler.fetch(slice(None, None), col_set="feature", data_key="learn").columns
    return [str(c[-1]) if isinstance(c, tuple) else str(c) for c in columns]


def _input_shape(samples: Samples) -> tuple[int, ...]:
    x = jax.eval_shape(lambda: samples.take(samples.features, np.zeros(1, np.int32)))
    x = x["x"] if isinstance(x, dict) else x
    return tuple(x.shape)


def estimator(name: str, **kwargs: Any) -> Estimator:
    """A Qlib-compatible wrapper for the model ``name`` (see :data:`SPECS` for the names)."""
    key = str(name).lower()
    if key not in SPECS:
        raise KeyError(f"unknown model {name!r}; available: {', '.join(sorted(SPECS))}")
    return Estimator(SPECS[key], **kwargs)
