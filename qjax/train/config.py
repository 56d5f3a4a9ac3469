"""Training configuration: one frozen dataclass per run, validated on construction.

The fields mirror the knobs of Qlib's PyTorch models (``n_epochs``, ``lr``, ``batch_size``,
``early_stop``, ``optimizer``, ``weight_decay``, ``metric``; DNNModelPytorch's ``max_steps``,
``eval_steps`` and ReduceLROnPlateau) plus the choices Qlib hard-codes (gradient value clipping,
its evaluation protocol, the full re-evaluation of the train set every epoch).
"""

from __future__ import annotations

import dataclasses
import enum
import math
import numbers
from collections.abc import Mapping
from typing import Any

from qjax.compilation import CPU_DOTS, CPU_OPT_LEVELS, check_cpu_choice

OPTIMIZERS = ("adam", "gd")
METRICS = ("loss", "ic")
# Qlib spells the -MSE score "" or "loss" (and ALSTM_ts also "mse").
METRIC_ALIASES = {"": "loss", "mse": "loss"}


class Batching(str, enum.Enum):
    """How training batches are drawn (see :class:`TrainConfig`); compares equal to its name."""

    SHUFFLE = "shuffle"  # a fresh permutation per epoch, full batches of batch_size
    DAILY = "daily"  # one batch per trading day, padded, with a row mask for the module
    STEPS = "steps"  # DNNModelPytorch: max_steps batches drawn with replacement

    def __str__(self) -> str:
        return self.value

    @property
    def daily(self) -> bool:
        """Every batch (training, evaluation, prediction) is one day of a cross-section."""
        return self is Batching.DAILY

    @property
    def by_steps(self) -> bool:
        """Evaluations come every ``eval_steps`` steps rather than every epoch."""
        return self is Batching.STEPS


BATCHINGS = tuple(mode.value for mode in Batching)
EVAL_PROTOCOLS = ("exact", "qlib")


@dataclasses.dataclass(frozen=True)
class Plateau:
    """``torch.optim.lr_scheduler.ReduceLROnPlateau(mode="min", threshold_mode="rel")`` settings.

    Stepped with the validation loss after every evaluation. Defaults are DNNModelPytorch's
    (GeneralPTNN uses ``patience=5, threshold=1e-5, min_lr=1e-6``).
    """

    factor: float = 0.5
    patience: int = 10
    threshold: float = 1e-4
    min_lr: float = 1e-5
    cooldown: int = 0

    def __post_init__(self):
        for name in ("factor", "threshold", "min_lr"):
            _set_float(self, name, prefix="lr_plateau.")
        _check(0.0 < self.factor < 1.0, "lr_plateau.factor", self.factor, "a number in (0, 1)")
        _set_int(self, "patience", minimum=0, prefix="lr_plateau.")
        _check(0.0 < self.threshold <= 1.0, "lr_plateau.threshold", self.threshold, "in (0, 1]")
        _check(self.min_lr >= 0.0, "lr_plateau.min_lr", self.min_lr, ">= 0")
        _set_int(self, "cooldown", minimum=0, prefix="lr_plateau.")


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """How to train a model.

    Batching (``batching``), after Qlib's modes:
      "shuffle": every epoch a fresh permutation cut into ``batch_size`` minibatches, the last
                 partial batch dropped (LSTM, GRU, ALSTM, Transformer, TCN, ... ).
      "daily":   one step per trading day, all of that day's samples in one batch padded to a
                 fixed width (``daily_width``, default: the largest day) with a row mask that the
                 module receives as keyword ``mask``; days shuffled every epoch (GATs, HIST)
                 unless ``shuffle_days=False`` (then in day order, as Qlib's GATs_ts sampler).
      "steps":   DNNModelPytorch: ``max_steps`` steps of ``batch_size`` samples drawn with
                 replacement, an evaluation every ``eval_steps`` steps; ``n_epochs`` is unused
                 and ``early_stop`` counts evaluations.

    Evaluation (``eval_protocol``):
      "exact" (default): loss over every sample of the segment (sum of losses / count), computed
                 in fixed-shape batches of ``eval_batch_size`` (default ``batch_size``; raise it
                 for speed where memory allows), the last one padded and masked; the number
                 does not depend on how the segment is cut.
      "qlib":    Qlib's ``test_epoch``: mean of per-batch mean losses over consecutive batches of
                 ``batch_size`` with the last partial batch dropped; with daily batching the
                 mean of per-day means. In "steps" mode both protocols use the whole segment,
                 as DNNModelPytorch does.
    The score is ``-loss`` (``metric="loss"``, Qlib's ``""``) or the mean daily Pearson IC of
    the evaluated samples (``metric="ic"``, HIST's choice). Early stopping keeps the best score
    (strict ``>``) and stops after ``early_stop`` consecutive evaluations without improvement.
    ReduceLROnPlateau (``lr_plateau``) is stepped with the validation loss at every evaluation.

    Optimiser: ``clip(clip_value)`` (elementwise, Qlib's ``clip_grad_value_(3.0)``; ``None``
    disables it, as DNNModelPytorch) -> ``+ weight_decay * param`` (torch's coupled L2, not AdamW)
    -> Adam(0.9, 0.999, eps 1e-8) or plain SGD ("gd") -> ``* lr`` (``* plateau scale``).
    ``frozen`` names top-level parameter groups (keys of ``params``, e.g. TabNet's head ``"fc"``)
    that receive no update at all: gradients still flow through them, but they keep their
    initial values bit for bit and get no optimiser state, as parameters left out of a torch
    optimiser do. The chain for the other parameters is unchanged.

    ``eval_train=True`` re-evaluates the whole train set after every epoch, as Qlib does (off by
    default: it costs a forward pass over the train set and only feeds the logs). ``seed`` is
    the seed of a single-seed run (``fit(seeds=...)`` trains several).

    ``micro_batch``: rows per micro-batch. A train step then walks its batch in chunks of this
    many rows inside the compiled program and sums their gradients (the full batch's gradient up
    to summation order, see :mod:`qjax.train.microbatch`); it must divide ``batch_size``.
    "auto" (or 0): the engine chooses from the model's activation footprint (on XLA:CPU); "off"
    (or any value >= ``batch_size``): whole batches. Models with BatchNorm statistics and daily
    batching are never split.

    ``cpu_split``: split each batch over the XLA:CPU devices (one per core, see
    :mod:`qjax.cpu_devices`) when ``fit`` is given no devices; a daily batch is split by its
    stocks (``benchmarks/daily_levers.py``). Accelerators are always all used.

    Both levers default to None: the choice measured for the module's model family
    (:mod:`qjax.train.levers`; KRNN and TabNet train on one device in automatic micro-batches,
    ``benchmarks/results/levers_cpu_more.md``), and "auto" and True for every other model and
    for a module no family registered. A value set here always wins.

    ``stream_batches``: keep the feature rows in host memory and stream them to the device in
    blocks of this many train batches, double buffered (:mod:`qjax.train.stream`), for feature
    matrices larger than the device's memory. The same batches, steps and results as the
    device-resident run (``None``, the default), which is faster when the features fit. Flat
    feature rows only (``qjax.data.Dataset``), on one process.

    ``replica_chunk``: with several seeds on XLA:CPU, how many replicas train side by side
    (vmapped) on each device; the groups then run one after another inside the same compiled
    program (``lax.map``). ``None``: the model family's choice, else one
    (:func:`qjax.train.parallel.replica_group`). Accelerators run every replica at once.
    Results do not depend on it beyond float summation order.

    ``cpu_dots``: which library runs the matrix products of the epoch program on XLA:CPU,
    ``"default"`` (XLA's choice, YNNPACK) or ``"eigen"`` (:data:`qjax.compilation.CPU_DOTS`).
    ``None``: the model family's measured choice (TabNet: Eigen), else the default. The same
    products up to summation order; ignored on accelerators and by streamed and multi-process
    training, which compile XLA's default.

    ``cpu_opt_level``: LLVM's optimisation level for the epoch program's code on XLA:CPU,
    ``"default"`` (XLA's) or ``"O1"`` (:data:`qjax.compilation.CPU_OPT_LEVELS`), which compiles
    faster and runs some models' programs faster. ``None``: the model family's measured choice
    (SFM: ``"O1"``), else the default. Results are the same up to float rounding (LLVM may fuse
    multiply-adds differently); ignored where ``cpu_dots`` is.

    ``cpu_eval_rows``: on XLA:CPU, evaluation runs each batch's forward pass in chunks of at most
    this many rows (the fewest even chunks, each a multiple of the devices) inside the compiled
    program. A row batch's eval-mode forward is row by row, so losses, scores and predictions
    are the whole batch's up to summation order, under either ``eval_protocol``; what changes is
    that a chunk's activations stay in cache (an epoch of one train batch and a validation set
    ran 1.28x as fast for the Transformer in chunks of 128 rows as in its 2048-row batches,
    ``benchmarks/results/eval_rows_cpu.md``). ``None``: the model family's choice, the rows
    ``predict`` uses on XLA:CPU (``ModelSpec.cpu_predict_batch``), else whole batches;
    ``"off"``: whole batches. Daily batches (one cross-section per batch) and objectives other
    than the default are never chunked; accelerators ignore the setting.
    """

    n_epochs: int = 200
    lr: float = 1e-3
    batch_size: int = 2000
    early_stop: int = 20
    optimizer: str = "adam"
    weight_decay: float = 0.0
    clip_value: float | None = 3.0
    metric: str = "loss"
    batching: Batching | str = Batching.SHUFFLE
    max_steps: int = 300
    eval_steps: int = 20
    eval_train: bool = False
    eval_protocol: str = "exact"
    eval_batch_size: int | None = None
    daily_width: int | None = None
    shuffle_days: bool = True
    lr_plateau: Plateau | None = None
    seed: int = 0
    frozen: tuple[str, ...] = ()
    micro_batch: int | str | None = None
    cpu_split: bool | None = None
    stream_batches: int | None = None
    replica_chunk: int | None = None
    cpu_dots: str | None = None
    cpu_opt_level: str | None = None
    cpu_eval_rows: int | str | None = None

    def __post_init__(self):
        # Normalise Qlib's spellings so that equal configurations compare (and resume) equal.
        metric = str(self.metric).lower()
        object.__setattr__(self, "metric", METRIC_ALIASES.get(metric, metric))
        object.__setattr__(self, "optimizer", str(self.optimizer).lower())
        if isinstance(self.lr_plateau, Mapping):
            object.__setattr__(self, "lr_plateau", Plateau(**self.lr_plateau))
        for name in ("lr", "weight_decay") + (() if self.clip_value is None else ("clip_value",)):
            _set_float(self, name)  # YAML reads "1e-3" as a string

        _set_int(self, "n_epochs", minimum=1)
        _check(math.isfinite(self.lr) and self.lr > 0, "lr", self.lr, "a positive number")
        _set_int(self, "batch_size", minimum=1)
        _set_int(self, "early_stop", minimum=1)
        _check(self.optimizer in OPTIMIZERS, "optimizer", self.optimizer, f"one of {OPTIMIZERS}")
        _check(self.weight_decay >= 0, "weight_decay", self.weight_decay, ">= 0")
        _check(
            self.clip_value is None or self.clip_value > 0,
            "clip_value",
            self.clip_value,
            "a positive number, or None to disable clipping",
        )
        _check(
            self.metric in METRICS,
            "metric",
            self.metric,
            f"one of {METRICS} (Qlib's '' and 'mse' mean 'loss')",
        )
        _check(self.batching in BATCHINGS, "batching", self.batching, f"one of {BATCHINGS}")
        object.__setattr__(self, "batching", Batching(self.batching))
        _set_int(self, "max_steps", minimum=1)
        _set_int(self, "eval_steps", minimum=1)
        _check(
            self.eval_protocol in EVAL_PROTOCOLS,
            "eval_protocol",
            self.eval_protocol,
            f"one of {EVAL_PROTOCOLS}",
        )
        if self.eval_batch_size is not None:
            _set_int(self, "eval_batch_size", minimum=1)
            _check(
                self.eval_protocol == "exact",
                "eval_batch_size",
                self.eval_batch_size,
                "None with eval_protocol='qlib' (Qlib evaluates in batches of batch_size)",
            )
        if self.daily_width is not None:
            _set_int(self, "daily_width", minimum=1)
        _check(
            self.lr_plateau is None or isinstance(self.lr_plateau, Plateau),
            "lr_plateau",
            self.lr_plateau,
            "None, a Plateau or a dict of its fields",
        )
        if self.lr_plateau is not None:
            _check(
                self.lr_plateau.min_lr <= self.lr,
                "lr_plateau.min_lr",
                self.lr_plateau.min_lr,
                f"<= lr ({self.lr})",
            )
        _set_int(self, "seed", minimum=0)
        frozen = (self.frozen,) if isinstance(self.frozen, str) else self.frozen
        _check(
            isinstance(frozen, (tuple, list)) and all(isinstance(n, str) and n for n in frozen),
            "frozen",
            self.frozen,
            "a tuple of top-level parameter names such as ('fc',)",
        )
        object.__setattr__(self, "frozen", tuple(frozen))  # hashable: the config is a jit static
        object.__setattr__(self, "micro_batch", _micro_batch(self.micro_batch))
        if self.stream_batches is not None:
            _set_int(self, "stream_batches", minimum=1)
        if self.replica_chunk is not None:
            _set_int(self, "replica_chunk", minimum=1)
        _check(
            self.cpu_split is None or isinstance(self.cpu_split, bool),
            "cpu_split",
            self.cpu_split,
            "True, False or None (the model's measured choice)",
        )
        check_cpu_choice(self.cpu_dots, CPU_DOTS, "TrainConfig.cpu_dots")
        check_cpu_choice(self.cpu_opt_level, CPU_OPT_LEVELS, "TrainConfig.cpu_opt_level")
        object.__setattr__(self, "cpu_eval_rows", _cpu_eval_rows(self.cpu_eval_rows))

    @property
    def n_evaluations(self) -> int:
        """Evaluations (= epochs, or ``eval_steps`` periods in "steps" mode) of a full run."""
        if self.batching.by_steps:
            return -(-self.max_steps // self.eval_steps)
        return self.n_epochs

    def steps_in_period(self, evaluation: int) -> int:
        """Train steps before evaluation ``evaluation`` in "steps" mode (the last may be short)."""
        return min(self.eval_steps, self.max_steps - evaluation * self.eval_steps)

    @property
    def validation_batch_size(self) -> int:
        """Rows per evaluation batch (Qlib's protocol evaluates in training-size batches)."""
        return self.eval_batch_size or self.batch_size

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _micro_batch(value: Any) -> int | str | None:
    """``micro_batch`` as None (the model's choice), "auto", "off" or a positive int (YAML may
    give "64")."""
    text = str(value).strip().lower()
    if value is None or text in ("none", ""):
        return None
    if text in ("0", "auto", "off"):
        return "auto" if text == "0" else text
    ok = not isinstance(value, bool) and text.isdigit() and int(text) >= 1
    expected = "rows per micro-batch (an int >= 1), 'auto', 'off' or None (the model's choice)"
    _check(ok, "micro_batch", value, expected)
    return int(text)


def _cpu_eval_rows(value: Any) -> int | str | None:
    """``cpu_eval_rows`` as None (the model's choice), "off" or a positive int (YAML may give
    "128")."""
    text = str(value).strip().lower()
    if value is None or text in ("none", ""):
        return None
    if text == "off":
        return text
    ok = not isinstance(value, bool) and text.isdigit() and int(text) >= 1
    expected = "rows per evaluation chunk (an int >= 1), 'off' or None (the model's choice)"
    _check(ok, "cpu_eval_rows", value, expected)
    return int(text)


def _check(ok: bool, name: str, value: Any, expected: str) -> None:
    if not ok:
        raise ValueError(f"TrainConfig.{name}={value!r} is invalid; expected {expected}")


def _set_float(config: Any, name: str, prefix: str = "") -> None:
    """Store field ``name`` as a Python float (accepting numeric strings such as "1e-3")."""
    value = getattr(config, name)
    try:
        number = float(value)
    except (TypeError, ValueError):
        number = None
    _check(number is not None and not isinstance(value, bool), prefix + name, value, "a number")
    object.__setattr__(config, name, number)


def _set_int(config: Any, name: str, minimum: int, prefix: str = "") -> None:
    """Check that field ``name`` is an integer >= ``minimum`` and store it as a Python int."""
    value = getattr(config, name)
    is_int = isinstance(value, numbers.Integral) and not isinstance(value, bool)
    _check(is_int and value >= minimum, prefix + name, value, f"an int >= {minimum}")
    object.__setattr__(config, name, int(value))
