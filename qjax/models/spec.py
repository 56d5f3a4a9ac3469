"""Wrapper specs: how a Qlib model wrapper's keyword arguments become a qjax network and training.

A :class:`ModelSpec` is data: the Qlib wrapper's keyword defaults, how they map to the network's
constructor (``module_kwargs``) and to :class:`qjax.train.TrainConfig` fields (``train_fields``),
and a tuple of :class:`Adapter` s, small named pieces for what only some models need (checking
the input width, daily batches, extra per-sample inputs, pretrained weights, another objective, a
pretraining stage). Each family's spec lives in its home, ``qjax.models.<family>.wrapper``;
:class:`qjax.estimators.Estimator` runs it.

Keywords that only concern PyTorch are accepted for compatibility and have no effect: ``GPU``
(JAX places work on its default backend) and ``n_jobs`` (windows are gathered on the device, no
loader workers). ``seed=None`` means seed 0, so runs are reproducible.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, ClassVar

import pandas as pd

from qjax.data.samples import Samples

if TYPE_CHECKING:
    import flax.linen as nn

    from qjax.data.dataset import Dataset
    from qjax.train import FitResult, LossFn

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
    "micro_batch": None,  # rows per micro-batch inside a train step; None = the model's choice
    "stream_batches": None,  # train batches per host-to-device block; None = device-resident
    "replica_chunk": None,  # seeds vmapped side by side per device; None = the engine's choice
    "cpu_dots": None,  # XLA:CPU's matrix-product backend in training; None = the model's choice
    "cpu_opt_level": None,  # XLA:CPU's LLVM optimisation level; None = the model's choice
    "cpu_eval_rows": None,  # rows per forward chunk when evaluating on CPU; None = the model's
}

InitVariables = Callable[[dict], dict]  # fresh variables -> starting variables


class Adapter:
    """One named piece of a wrapper's behaviour. Each method defaults to "no change"; an
    adapter overrides the one or two it is about. ``kw`` is the resolved keyword arguments."""

    def check_input(self, kw: dict, shape: tuple[int, ...]) -> None:
        """Raise a clear error if one train sample's input ``shape`` does not fit ``kw``."""

    def train_fields(self, kw: dict, fields: dict) -> dict:
        """The :class:`TrainConfig` fields, given the spec's (and earlier adapters') ones."""
        return fields

    def levers(self, micro_batch: int | str | None) -> dict:
        """The CPU speed levers (``micro_batch``, ``cpu_split``, ``replica_chunk``, ``cpu_dots``,
        ``cpu_opt_level``, ``cpu_eval_rows``) this piece chooses, given the user's
        ``micro_batch`` (None: not given). Read by the estimators through ``train_fields`` and
        by ``qjax.train.fit`` for a registered module it is given."""
        return {}

    def samples(self, kw: dict, segment: str, samples: Samples, index: pd.MultiIndex) -> Samples:
        """The model's own handling of a segment's samples (NaN fill, extra inputs, groups)."""
        return samples

    def init_variables(self, kw: dict) -> InitVariables | None:
        """A map from fresh to starting variables (pretrained weights), or None."""
        return None

    def loss_fn(self, kw: dict) -> LossFn | None:
        """The training objective, or None for the engine's NaN-masked MSE."""
        return None

    def pretrain(
        self, kw: dict, dataset: Dataset, module: nn.Module, verbose: bool
    ) -> tuple[InitVariables | None, FitResult | None]:
        """A training stage before the main fit: (starting variables or None, its result)."""
        return None, None


def epoch_loop_train(kw: dict) -> dict:
    """TrainConfig fields of Qlib's epoch-loop wrappers."""
    if str(kw["loss"]).lower() != "mse":
        raise ValueError(
            f"loss={kw['loss']!r} is not supported; Qlib's models train with loss='mse'"
        )
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


def predict_batch(spec: ModelSpec, batch_size: int) -> int:
    """Rows per prediction batch for a model trained in batches of ``batch_size``: the spec's
    ``cpu_predict_batch`` on XLA:CPU, else ``batch_size``."""
    import jax

    if spec.cpu_predict_batch is not None and jax.local_devices()[0].platform == "cpu":
        return spec.cpu_predict_batch
    return batch_size


def pick(*names: str) -> Callable[[dict, bool], dict]:
    """``module_kwargs`` passing the keyword arguments ``names`` through unchanged."""
    return lambda kw, is_ts: {name: kw[name] for name in names}


@dataclasses.dataclass(frozen=True)
class ModelSpec:
    """How a Qlib wrapper maps onto a qjax network and a :class:`TrainConfig`."""

    qlib_class: str  # the Qlib wrapper this mirrors, for messages and docs
    defaults: Mapping[str, Any]  # the wrapper's keyword arguments and defaults (flat variant)
    module_kwargs: Callable[[dict, bool], dict]  # (kwargs, is_ts) -> network constructor kwargs
    ts_defaults: Mapping[str, Any] = dataclasses.field(default_factory=dict)  # *_ts variant
    train_fields: Callable[[dict], dict] = epoch_loop_train  # kwargs -> TrainConfig fields
    adapters: tuple[Adapter, ...] = ()
    # Rows per prediction batch on XLA:CPU, where it differs from batch_size: inference keeps
    # no activations for a backward pass, and batches whose activations fit the caches predict
    # faster (benchmarks/results/predict_levers_cpu.md). None: the train batch size. fit's
    # evaluations run their forward in chunks of as many rows (TrainConfig.cpu_eval_rows).
    cpu_predict_batch: int | None = None
    # XLA:CPU's matrix-product backend for prediction (qjax.compilation.CPU_DOTS): "eigen" where
    # Eigen predicted faster than XLA's default in every run (benchmarks/results/xla_dots_cpu*.md).
    cpu_predict_dots: str = "default"

    def accepted(self) -> set[str]:
        return set(self.defaults) | set(QJAX_EXTRAS) | set(self.ts_defaults)

    def resolve(self, user: Mapping[str, Any], is_ts: bool) -> dict:
        resolved = {**self.defaults, **QJAX_EXTRAS}
        if is_ts:
            resolved.update(self.ts_defaults)
        resolved.update(user)
        return resolved

    # The adapters folded in order.

    def check_input(self, kw: dict, shape: tuple[int, ...]) -> None:
        for adapter in self.adapters:
            adapter.check_input(kw, shape)

    def train_config_fields(self, kw: dict) -> dict:
        fields = {
            **self.train_fields(kw),
            "micro_batch": kw.get("micro_batch"),
            "stream_batches": kw.get("stream_batches"),
            "replica_chunk": kw.get("replica_chunk"),
            "cpu_dots": kw.get("cpu_dots"),
            "cpu_opt_level": kw.get("cpu_opt_level"),
            "cpu_eval_rows": kw.get("cpu_eval_rows"),
        }
        for adapter in self.adapters:
            fields = adapter.train_fields(kw, fields)
        return fields

    def levers(self, micro_batch: int | str | None = None) -> dict:
        """The CPU levers the adapters choose (:meth:`Adapter.levers`), and evaluation in chunks
        of ``cpu_predict_batch`` rows; {} leaves the engine's."""
        chosen: dict = {}
        if self.cpu_predict_batch is not None:
            chosen["cpu_eval_rows"] = self.cpu_predict_batch
        for adapter in self.adapters:
            chosen.update(adapter.levers(micro_batch))
        return chosen

    def samples(self, kw: dict, segment: str, samples: Samples, index: pd.MultiIndex) -> Samples:
        for adapter in self.adapters:
            samples = adapter.samples(kw, segment, samples, index)
        return samples

    def init_variables(self, kw: dict) -> InitVariables | None:
        return _only_one("init_variables", [a.init_variables(kw) for a in self.adapters])

    def loss_fn(self, kw: dict) -> LossFn | None:
        return _only_one("loss_fn", [a.loss_fn(kw) for a in self.adapters])

    def pretrain(self, kw: dict, dataset: Dataset, module: nn.Module, verbose: bool):
        stages = [a for a in self.adapters if type(a).pretrain is not Adapter.pretrain]
        if len(stages) > 1:
            raise ValueError(f"a spec takes at most one pretraining stage, got {stages}")
        return stages[0].pretrain(kw, dataset, module, verbose) if stages else (None, None)


def _only_one(what: str, values: list) -> Any:
    given = [value for value in values if value is not None]
    if len(given) > 1:
        raise ValueError(f"two adapters both set {what}: {given}")
    return given[0] if given else None


# -- adapters shared by several families ----------------------------------------------------


@dataclasses.dataclass(frozen=True)
class SequenceInput(Adapter):
    """Windows [N, T, F] need F == ``kw[feature_key]``; flat rows a multiple of it."""

    feature_key: str = "d_feat"

    def check_input(self, kw: dict, shape: tuple[int, ...]) -> None:
        key = self.feature_key
        d_feat = kw[key]
        if len(shape) == 3 and shape[-1] != d_feat:
            raise ValueError(
                f"{key}={d_feat} but the dataset's windows have {shape[-1]} features per "
                f"step; set {key}={shape[-1]}"
            )
        if len(shape) == 2 and shape[-1] % d_feat:
            raise ValueError(
                f"{key}={d_feat} does not divide the {shape[-1]} feature columns; "
                f"Alpha360 has {key}=6 (60 steps x 6 fields)"
            )


@dataclasses.dataclass(frozen=True)
class OneCpuDevice(Adapter):
    """Each batch on one CPU device, in the engine's micro-batches: KRNN and TabNet trained
    slower split over the cores (0.85x and 0.69x of torch on 2 quiet cores, against 1.23x and
    1.43x on one device; KRNN's micro-batches 1.44x), ``benchmarks/results/levers_cpu_more.md``.
    """

    def train_fields(self, kw: dict, fields: dict) -> dict:
        return {**fields, **self.levers(kw.get("micro_batch"))}

    def levers(self, micro_batch: int | str | None) -> dict:
        return {"cpu_split": False}


@dataclasses.dataclass(frozen=True)
class CompileChoice(Adapter):
    """One XLA:CPU compile choice, ``lever`` = ``value``, for a family's programs (a
    :data:`qjax.compilation.CPU_DOTS` or :data:`~qjax.compilation.CPU_OPT_LEVELS` name); a
    value the user set for that lever wins."""

    lever: ClassVar[str]
    value: ClassVar[str]

    def train_fields(self, kw: dict, fields: dict) -> dict:
        if kw.get(self.lever) is not None:
            return fields
        return {**fields, **self.levers(kw.get("micro_batch"))}

    def levers(self, micro_batch: int | str | None) -> dict:
        return {self.lever: self.value}


@dataclasses.dataclass(frozen=True)
class EigenDots(CompileChoice):
    """Train with XLA:CPU's matrix products in Eigen rather than YNNPACK (XLA's default): TabNet's
    epoch ran 1.09x faster so, the median of three runs from 0.93x to 1.17x
    (``benchmarks/results/xla_dots_cpu*.md``)."""

    lever = "cpu_dots"
    value = "eigen"


@dataclasses.dataclass(frozen=True)
class CompileAtO1(CompileChoice):
    """Compile the epoch and prediction programs at LLVM's -O1 on XLA:CPU rather than XLA's
    default level: every SFM fit so compiled ran faster than every default one in two runs
    (warm fits 1.29x and 1.44x, medians), with the same predictions
    (``benchmarks/results/compile_programs_cpu_levels*.md``)."""

    lever = "cpu_opt_level"
    value = "O1"


@dataclasses.dataclass(frozen=True)
class DailyBatches(Adapter):
    """One batch per trading day (cross-sectional models: GATs, HIST); the fitted
    ``TrainConfig.batching`` is then the one place that says so, for fit and predict alike."""

    def train_fields(self, kw: dict, fields: dict) -> dict:
        return {**fields, "batching": "daily"}


@dataclasses.dataclass(frozen=True)
class LRPlateau(Adapter):
    """A fixed ReduceLROnPlateau (a :class:`qjax.train.Plateau`), stepped every epoch."""

    plateau: Any

    def train_fields(self, kw: dict, fields: dict) -> dict:
        return {**fields, "lr_plateau": self.plateau}
