"""Training and inference throughput: qjax's engine vs Qlib's real PyTorch modules and wrappers.

For every model of :data:`CASES` (Qlib's Alpha360 benchmark settings, §5 of the reference):

1. train samples/s. qjax: ``qjax.train.fit(module, train, None, TrainConfig(n_epochs=1, ...))``
   on N random samples, timed after a first (compiling) call, so one epoch of the engine's
   compiled program plus its per-call host work. torch: Qlib's torch module driven the way the
   Qlib wrapper's ``train_epoch`` drives it: a shuffled numpy index cut into ``batch_size``
   slices (last partial batch dropped), ``torch.from_numpy(x[rows])``, forward, the NaN-masked
   MSE, ``backward``, ``clip_grad_value_(3.0)``, Adam step. Daily models (GATs, HIST) take one
   shuffled day (280-300 stocks) per step; DNNModelPytorch's MLP draws ``batch_size`` rows with
   replacement per step, no clipping, ``N // batch_size`` steps.
2. inference samples/s. qjax: ``qjax.train.predict`` in the prediction batch its estimator
   uses (``ModelSpec.cpu_predict_batch`` on CPU); torch: eval mode under ``no_grad`` in the
   wrapper's ``predict`` batching (consecutive slices of the batch size, last one kept; one day
   per batch for daily models; 8096 rows for the MLP).
3. end-to-end fit seconds on one in-memory frame: Qlib's wrapper (``pytorch_lstm.LSTM`` ...)
   on ``DatasetH(DataHandlerLP(data_loader=StaticDataLoader(frame)))`` vs
   ``qjax.estimator(name, **same_kwargs).fit(Dataset(DataHandler(frame)))``; qjax with
   ``eval_train=True, eval_protocol="qlib"`` (Qlib re-evaluates the train set every epoch) and
   with qjax's defaults, each first cold (compile included, reported separately), then Qlib's fit
   and both warm qjax fits ``--e2e-repeats`` times in turns (medians).

qjax and torch repeats alternate, so a change in machine load hits both sides alike; rates are
medians. Both sides use every core the process may run on (``torch.set_num_threads`` to that
count, XLA's default pool) and share the process's malloc (glibc unless ``LD_PRELOAD`` swaps it);
the allocator variables set, glibc's tuning ones included, are recorded with the machine. They
matter: ``MALLOC_MMAP_THRESHOLD_``/``MALLOC_TRIM_THRESHOLD_``/``MALLOC_TOP_PAD_`` (large buffers kept
on the heap instead of mapped afresh) double torch's LSTM training rate and move qjax's recurrent
models by under 10%, so compare runs only under the same settings. ``taskset -c 0 python ...`` gives a
one-core comparison. A short probe records torch's LSTM step rate at 1 thread and at all threads:
on an oversubscribed machine torch's OpenMP pool can lose several times its speed while XLA's
pool does not, which the probe makes visible. On a machine with CUDA, torch runs on ``cuda:0``
and JAX on its default (GPU) backend.

    python benchmarks/train_vs_torch.py --models lstm,gru --samples 25600 --repeats 3 \\
        --out benchmarks/results --tag cpu
"""

from __future__ import annotations

import argparse
import atexit
import contextlib
import dataclasses
import datetime
import importlib
import json
import logging
import os
import shutil
import sys
import tempfile
import traceback
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

try:
    import torch
except ImportError as err:  # pragma: no cover - the benchmark needs the reference side
    raise SystemExit(
        "this benchmark compares against Qlib's PyTorch models: pip install qjax[parity]"
    ) from err

if torch.cuda.is_available():
    # torch and JAX share the GPU: let XLA grow its pool instead of taking 75% up front.
    os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")

import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd

import qjax
import qjax.models
from qjax.data.samples import Samples, tabular_samples, with_keyword_inputs
from qjax.models.spec import predict_batch as predict_batch_for
from qjax.train import TrainConfig, fit, predict, supervised_mse

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import (
    CompileWatch,
    command_line,
    load_average,
    machine,
    median,
    results_table,
    rotate,
    timed,
)  # noqa: E402
from _flops import flops_lines, matmul_flops, matmul_peak  # noqa: E402

DEVICE = "<device>"  # placeholder in torch kwargs for the torch device
DAY_SIZES = (280, 300)  # stocks per trading day (CSI300 after suspensions), inclusive range
N_CONCEPTS = 100  # synthetic HIST stock2concept columns (each stock in ~3% of them)

RNN = {"d_feat": 6, "hidden_size": 64, "num_layers": 2, "dropout": 0.0}
EPOCH_LOOP = {"lr": 1e-3, "metric": "loss", "loss": "mse", "optimizer": "adam", "GPU": 0, "seed": 0}
TRANSFORMER = {"d_feat": 6, "d_model": 64, "nhead": 2, "num_layers": 2, "dropout": 0.0}
KRNN = {
    "fea_dim": 6,
    "cnn_dim": 8,
    "cnn_kernel_size": 3,
    "rnn_dim": 8,
    "rnn_dups": 2,
    "rnn_layers": 2,
}


@dataclasses.dataclass(frozen=True)
class Case:
    """One model: Qlib's torch network and qjax's, with Qlib's Alpha360 benchmark settings."""

    name: str  # qjax registry / estimator name
    torch_module: str  # "module:Class" of Qlib's torch network
    torch_kwargs: dict
    qjax_kwargs: dict  # for qjax.models.get(name)
    batch_size: int  # the benchmark YAML's (daily models: one day per step instead)
    batching: str = "shuffle"  # "shuffle" | "daily" | "steps" (DNNModelPytorch)
    input_dim: int = 360  # Alpha360: 6 fields x 60 days, feature-major
    lr: float = 1e-3
    weight_decay: float = 0.0  # Transformer/Localformer `reg`: torch Adam's coupled L2
    clip: bool = True  # clip_grad_value_(3.0)
    sample_share: float = 1.0  # fraction of --samples (compute-heavy models get fewer)
    predict_batch: int | None = None  # Qlib's predict slices (default: batch_size)
    inputs: str = "x"  # "x" | "priors" (TabNet: ones priors) | "concepts" (HIST: concept rows)
    finetune_head: tuple[int, int] | None = None  # TabNet: FinetuneModel(out, final_out, encoder)
    qlib_wrapper: str | None = None  # "module:Class" of Qlib's model wrapper, for the e2e fit
    wrapper_kwargs: dict = dataclasses.field(
        default_factory=dict
    )  # YAML kwargs (qjax takes them too)
    # (folder, instruments) -> more wrapper kwargs naming files it wrote there (HIST's concept .npy)
    wrapper_files: Callable[[Path, list[str]], dict] | None = None
    wrapper_patch: Callable[[Any], None] | None = None  # makes the wrapper run here (see HIST)
    needs_recorder: bool = False  # the wrapper's fit logs to an active Qlib recorder (GRU)
    note: str = ""


def hist_concept_files(folder: Path, instruments: list[str]) -> dict:
    """Qlib-format stock2concept / stock_index .npy files for the e2e instruments.

    Qlib's HIST maps unknown stocks to row 733, so the matrix has at least 734 rows.
    """
    rows = max(len(instruments), 734)
    matrix = (np.random.default_rng(7).random((rows, N_CONCEPTS)) < 0.03).astype(np.float32)
    np.save(folder / "stock2concept.npy", matrix)
    np.save(folder / "stock_index.npy", {name: k for k, name in enumerate(instruments)})
    return {
        "stock2concept": str(folder / "stock2concept.npy"),
        "stock_index": str(folder / "stock_index.npy"),
    }


def qlib_recorder():
    """An active Qlib recorder on a throwaway MLflow file store (Qlib's GRU.fit logs to one).

    Qlib is initialised once per process with the store in a temporary folder (removed at exit).
    Qlib puts the store's lock file at a path relative to the working directory (whatever the
    URI says), so the recorder runs with that folder as working directory.
    """
    import qlib
    from qlib.workflow import R

    folder = getattr(qlib_recorder, "folder", None)
    if folder is None:
        os.environ.setdefault(
            "MLFLOW_ALLOW_FILE_STORE", "true"
        )  # MLflow 3 wants opting in to files
        folder = qlib_recorder.folder = tempfile.mkdtemp(prefix="qjax-bench-qlib-")
        atexit.register(shutil.rmtree, folder, ignore_errors=True)
        qlib.init(
            provider_uri=folder,
            region="cn",
            exp_manager={
                "class": "MLflowExpManager",
                "module_path": "qlib.workflow.expm",
                "kwargs": {"uri": Path(folder, "mlruns").as_uri(), "default_exp_name": "benchmark"},
            },
        )
    stack = contextlib.ExitStack()
    stack.enter_context(contextlib.chdir(folder))
    stack.enter_context(R.start(experiment_name="benchmark"))
    return stack


def hist_writable_stock_index(model) -> None:
    """Qlib's HIST writes into ``stock_index.values``, read-only under pandas 3's copy-on-write;
    hand its epoch functions a writable copy (nothing else changes)."""
    import types

    for name in ("train_epoch", "test_epoch"):
        original = getattr(model, name)

        def patched(x, y, stock_index, _original=original):
            return _original(x, y, types.SimpleNamespace(values=stock_index.to_numpy(copy=True)))

        setattr(model, name, patched)


TABNET = {
    "d_feat": 360,
    "out_dim": 64,
    "final_out_dim": 1,
    "n_d": 64,
    "n_a": 64,
    "n_shared": 2,
    "n_ind": 2,
    "n_steps": 5,
    "relax": 1.3,
    "vbs": 2048,
}
QC = "qlib.contrib.model."
CASES: dict[str, Case] = {
    case.name: case
    for case in [
        Case(
            "mlp",
            QC + "pytorch_nn:Net",
            {"input_dim": 360, "layers": (256,)},
            {"input_dim": 360, "layers": (256,)},
            batch_size=4096,
            batching="steps",
            lr=2e-3,
            clip=False,
            predict_batch=8096,
            # 4x: ~9 steps of 4,096 rows an epoch, like the ~12 the recurrent models take; at
            # 1x an epoch is 2-3 steps (40 ms), and fit's fixed per-call work dominates it.
            sample_share=4.0,
            note="DNNModelPytorch: steps of batch_size rows drawn with replacement, no clipping; no e2e: "
            "its fit passes ReduceLROnPlateau(verbose=...), which torch 2.13 no longer accepts",
        ),
        Case(
            "lstm",
            QC + "pytorch_lstm:LSTMModel",
            RNN,
            RNN,
            batch_size=800,
            qlib_wrapper=QC + "pytorch_lstm:LSTM",
            wrapper_kwargs={**RNN, **EPOCH_LOOP, "batch_size": 800},
        ),
        Case(
            "gru",
            QC + "pytorch_gru:GRUModel",
            RNN,
            RNN,
            batch_size=800,
            qlib_wrapper=QC + "pytorch_gru:GRU",
            wrapper_kwargs={**RNN, **EPOCH_LOOP, "batch_size": 800},
            needs_recorder=True,
            note="e2e: Qlib's GRU.fit runs inside a recorder on a temporary MLflow store (it logs to one)",
        ),
        Case(
            "alstm",
            QC + "pytorch_alstm:ALSTMModel",
            {**RNN, "rnn_type": "GRU"},
            {**RNN, "rnn_type": "GRU"},
            batch_size=800,
            qlib_wrapper=QC + "pytorch_alstm:ALSTM",
            wrapper_kwargs={**RNN, **EPOCH_LOOP, "batch_size": 800, "rnn_type": "GRU"},
        ),
        Case(
            "krnn",
            QC + "pytorch_krnn:KRNNModel",
            {**KRNN, "dropout": 0, "device": DEVICE},
            {**KRNN, "dropout": 0.0},
            batch_size=2000,
            qlib_wrapper=QC + "pytorch_krnn:KRNN",
            wrapper_kwargs={**KRNN, "dropout": 0, **EPOCH_LOOP, "batch_size": 2000},
        ),
        Case(
            "transformer",
            QC + "pytorch_transformer:Transformer",
            {**TRANSFORMER, "device": DEVICE},
            TRANSFORMER,
            batch_size=2048,
            lr=1e-4,
            weight_decay=1e-3,
            sample_share=0.16,
            qlib_wrapper=QC + "pytorch_transformer:TransformerModel",
            wrapper_kwargs={
                **TRANSFORMER,
                **EPOCH_LOOP,
                "lr": 1e-4,
                "reg": 1e-3,
                "batch_size": 2048,
            },
        ),
        Case(
            "localformer",
            QC + "pytorch_localformer:Transformer",
            {**TRANSFORMER, "device": DEVICE},
            TRANSFORMER,
            batch_size=2048,
            lr=1e-4,
            weight_decay=1e-3,
            sample_share=0.16,
            qlib_wrapper=QC + "pytorch_localformer:LocalformerModel",
            wrapper_kwargs={
                **TRANSFORMER,
                **EPOCH_LOOP,
                "lr": 1e-4,
                "reg": 1e-3,
                "batch_size": 2048,
            },
        ),
        Case(
            "tabnet",
            QC + "pytorch_tabnet:TabNet",
            {"inp_dim": 360, "out_dim": 64, "vbs": 2048, "relax": 1.3},
            {"inp_dim": 360},
            batch_size=4096,
            lr=0.01,
            sample_share=0.64,
            inputs="priors",
            finetune_head=(64, 1),
            qlib_wrapper=QC + "pytorch_tabnet:TabnetModel",
            wrapper_kwargs={
                **TABNET,
                **EPOCH_LOOP,
                "lr": 0.01,
                "batch_size": 4096,
                "pretrain": False,
            },
            note="fine-tuning only (no pretraining, also in the e2e fit); Qlib's optimizer holds the "
            "encoder, not the head",
        ),
        Case(
            "gats",
            QC + "pytorch_gats:GATModel",
            {**RNN, "dropout": 0.7, "base_model": "LSTM"},
            {**RNN, "dropout": 0.7, "base_model": "LSTM"},
            batch_size=1,
            batching="daily",
            lr=1e-4,
            qlib_wrapper=QC + "pytorch_gats:GATs",
            wrapper_kwargs={**RNN, "dropout": 0.7, "base_model": "LSTM", **EPOCH_LOOP, "lr": 1e-4},
        ),
        Case(
            "hist",
            QC + "pytorch_hist:HISTModel",
            {**RNN, "base_model": "LSTM"},
            {**RNN, "base_model": "LSTM"},
            batch_size=1,
            batching="daily",
            lr=1e-4,
            inputs="concepts",
            qlib_wrapper=QC + "pytorch_hist:HIST",
            wrapper_kwargs={**RNN, "base_model": "LSTM", **EPOCH_LOOP, "lr": 1e-4, "metric": "ic"},
            wrapper_files=hist_concept_files,
            wrapper_patch=hist_writable_stock_index,
            note=f"synthetic stock2concept with {N_CONCEPTS} concepts",
        ),
        Case(
            "sfm",
            QC + "pytorch_sfm:SFM_Model",
            {
                "d_feat": 6,
                "output_dim": 32,
                "freq_dim": 25,
                "hidden_size": 64,
                "dropout_W": 0.5,
                "dropout_U": 0.5,
                "device": DEVICE,
            },
            {
                "d_feat": 6,
                "output_dim": 32,
                "freq_dim": 25,
                "hidden_size": 64,
                "dropout_W": 0.5,
                "dropout_U": 0.5,
            },
            batch_size=1600,
            sample_share=0.125,
            qlib_wrapper=QC + "pytorch_sfm:SFM",
            wrapper_kwargs={
                "d_feat": 6,
                "hidden_size": 64,
                "output_dim": 32,
                "freq_dim": 25,
                "dropout_W": 0.5,
                "dropout_U": 0.5,
                **EPOCH_LOOP,
                "batch_size": 1600,
            },
        ),
        Case(
            "tcn",
            QC + "pytorch_tcn:TCNModel",
            {
                "num_input": 6,
                "output_size": 1,
                "num_channels": [128] * 5,
                "kernel_size": 3,
                "dropout": 0.5,
            },
            {
                "num_input": 6,
                "output_size": 1,
                "num_channels": (128,) * 5,
                "kernel_size": 3,
                "dropout": 0.5,
            },
            batch_size=2000,
            sample_share=0.25,
            qlib_wrapper=QC + "pytorch_tcn:TCN",
            wrapper_kwargs={
                "d_feat": 6,
                "n_chans": 128,
                "kernel_size": 3,
                "num_layers": 5,
                "dropout": 0.5,
                **EPOCH_LOOP,
                "batch_size": 2000,
            },
        ),
    ]
}


# -- data -----------------------------------------------------------------------------------


@dataclasses.dataclass
class Data:
    """Random float32 samples, sorted by day, with a (datetime, instrument) index."""

    x: np.ndarray  # [n, input_dim]
    y: np.ndarray  # [n]
    index: pd.MultiIndex
    day_starts: np.ndarray  # first row of each day
    day_counts: np.ndarray  # rows of each day
    stock: np.ndarray  # [n] row of stock2concept
    stock2concept: np.ndarray  # [stocks, N_CONCEPTS]

    @property
    def n(self) -> int:
        return len(self.y)


def case_samples(case: Case, n_samples: int) -> int:
    """Samples of ``case`` for a run of ``n_samples``: scaled by its share, at least one batch
    (two of the widest days for daily models)."""
    return max(int(round(n_samples * case.sample_share)), case.batch_size, 2 * DAY_SIZES[1])


def make_data(case: Case, n: int, seed: int) -> Data:
    rng = np.random.default_rng(seed)
    if case.batching == "daily":  # ragged days, as CSI300 after suspensions
        counts = rng.integers(DAY_SIZES[0], DAY_SIZES[1] + 1, size=max(2, n // sum(DAY_SIZES) * 2))
    else:
        counts = np.full(-(-n // DAY_SIZES[1]), DAY_SIZES[1])
        counts[-1] -= counts.sum() - n
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    day = np.repeat(np.arange(len(counts)), counts)
    slot = np.arange(counts.sum()) - starts[day]
    index = pd.MultiIndex.from_arrays(
        [
            pd.bdate_range("2010-01-04", periods=len(counts))[day],
            pd.Index([f"SH{k:06d}" for k in range(DAY_SIZES[1])])[slot],
        ],
        names=["datetime", "instrument"],
    )
    total = int(counts.sum())
    return Data(
        x=rng.standard_normal((total, case.input_dim), dtype=np.float32),
        y=rng.standard_normal(total, dtype=np.float32),
        index=index,
        day_starts=starts,
        day_counts=counts,
        stock=slot,
        stock2concept=(rng.random((DAY_SIZES[1], N_CONCEPTS)) < 0.03).astype(np.float32),
    )


def qjax_samples(case: Case, data: Data) -> Samples:
    samples = tabular_samples(data.x, data.y, data.index)
    if case.inputs == "concepts":  # HIST: each sample's stock row of stock2concept, as qjax does
        samples = with_keyword_inputs(samples, concept_matrix=data.stock2concept[data.stock])
    return samples


def train_config(case: Case, n: int) -> TrainConfig:
    settings: dict[str, Any] = dict(
        n_epochs=1,
        lr=case.lr,
        batch_size=case.batch_size,
        weight_decay=case.weight_decay,
        clip_value=3.0 if case.clip else None,
        optimizer="adam",
        batching=case.batching,
        seed=0,
    )
    if case.batching == "steps":  # one evaluation period of N // batch_size steps
        settings.update(max_steps=n // case.batch_size, eval_steps=n // case.batch_size)
    return TrainConfig(**settings, **home_levers(case.name))


def home_levers(name: str) -> dict:
    """The speed levers (``micro_batch``, ``cpu_split``, ``cpu_dots``, ``cpu_opt_level``,
    ``cpu_eval_rows``) that the model's home picks for it, as ``qjax train`` and the estimators
    apply them (e.g. one CPU device for KRNN and TabNet, Eigen's dots for TabNet, -O1 for SFM);
    empty where the home leaves the engine's defaults (``fit`` then resolves the rest from the
    model's family)."""
    model = qjax.estimators.wrappers().get(name)
    if model is None:
        return {}
    fields = model.spec.train_config_fields(model.spec.resolve({}, False))  # wrapper defaults
    levers = ("micro_batch", "cpu_split", "cpu_dots", "cpu_opt_level", "cpu_eval_rows")
    return {k: fields[k] for k in levers if fields.get(k) is not None}


def home_predict_batch(name: str, qlib_batch: int) -> int:
    """Rows per prediction batch as the model's estimator predicts (its home's CPU choice,
    ``ModelSpec.cpu_predict_batch``), else Qlib's prediction batch."""
    model = qjax.estimators.wrappers().get(name)
    return qlib_batch if model is None else predict_batch_for(model.spec, qlib_batch)


def trained_samples(case: Case, n: int) -> int:
    """Rows one epoch trains on (full batches only, except daily batching)."""
    return n if case.batching == "daily" else n // case.batch_size * case.batch_size


def step_flops(case: Case, module, samples: Samples, data: Data) -> dict:
    """Matmul and convolution FLOPs per sample: one train step (forward and backward) on a
    batch of the case's size (daily models: the first day, unpadded), and inference."""
    daily = case.batching == "daily"
    rows = int(data.day_counts[0]) if daily else case.batch_size
    start = int(data.day_starts[0]) if daily else 0
    batch = samples.batch(jnp.arange(start, start + rows, dtype=jnp.int32), mask_input=daily)
    key = jax.random.PRNGKey(0)
    variables = module.init({"params": key, "dropout": key}, batch.x, train=False, **batch.inputs)

    def loss(params):
        out = supervised_mse(module.apply, {**variables, "params": params}, batch, key, True)
        return out.total / out.count

    def infer(variables):
        return module.apply(variables, batch.x, train=False, **batch.inputs)

    return {
        "train_per_sample": matmul_flops(jax.grad(loss), variables["params"]) / rows,
        "infer_per_sample": matmul_flops(infer, variables) / rows,
    }


def qjax_param_count(variables: dict) -> int:
    return int(sum(np.size(leaf) for leaf in jax.tree.leaves(variables["params"])))


# -- the torch side, driven like Qlib's wrappers --------------------------------------------


def load(path: str):
    module, name = path.split(":")
    return getattr(importlib.import_module(module), name)


def usable_cores() -> int:
    """Cores this process may run on (honours ``taskset``; ``os.cpu_count()`` does not)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()


class TorchRunner:
    """Qlib's torch network with the wrapper's optimiser, train_epoch and predict loops."""

    def __init__(self, case: Case, data: Data, device: torch.device):
        torch.manual_seed(0)
        np.random.seed(0)
        self.case, self.data, self.device = case, data, device
        kwargs = {k: (device if v == DEVICE else v) for k, v in case.torch_kwargs.items()}
        net = load(case.torch_module)(**kwargs)
        optimised = net.parameters()
        if case.finetune_head is not None:  # Qlib builds the optimiser before adding the head
            head = load(case.torch_module.replace(":TabNet", ":FinetuneModel"))
            net = head(*case.finetune_head, net)
        self.model = net.to(device)
        self.optimizer = torch.optim.Adam(optimised, lr=case.lr, weight_decay=case.weight_decay)
        self.n_params = sum(p.numel() for p in self.model.parameters())
        if case.batching == "steps":  # DNNModelPytorch keeps the whole segment as tensors
            self.x_all = torch.from_numpy(data.x).float().to(device)
            self.y_all = torch.from_numpy(data.y[:, None]).float().to(device)
            self.w_all = torch.ones_like(self.y_all)

    def _forward(self, x: torch.Tensor, rows) -> torch.Tensor:
        if self.case.inputs == "priors":
            return self.model(x, torch.ones(x.shape[0], self.case.input_dim).to(self.device))
        if self.case.inputs == "concepts":
            concepts = self.data.stock2concept[self.data.stock[rows]]
            return self.model(x, torch.from_numpy(concepts).float().to(self.device))
        return self.model(x)

    @staticmethod
    def _masked_mse(pred: torch.Tensor, label: torch.Tensor) -> torch.Tensor:
        mask = ~torch.isnan(label)
        return torch.mean((pred[mask] - label[mask]) ** 2)

    def _step(self, x: torch.Tensor, y: torch.Tensor, rows) -> None:
        loss = self._masked_mse(self._forward(x, rows), y)
        self.optimizer.zero_grad()
        loss.backward()
        if self.case.clip:
            torch.nn.utils.clip_grad_value_(self.model.parameters(), 3.0)
        self.optimizer.step()

    def _batches(self, shuffle: bool, predict: bool):
        """Row selections in the wrapper's order (numpy ids or slices)."""
        data, case = self.data, self.case
        if case.batching == "daily":
            days = list(zip(data.day_starts, data.day_counts))
            if shuffle:
                np.random.shuffle(days)
            return [slice(start, start + count) for start, count in days]
        n = data.n
        size = (case.predict_batch or case.batch_size) if predict else case.batch_size
        if predict:  # consecutive slices, the last one short
            return [slice(begin, min(begin + size, n)) for begin in range(0, n, size)]
        indices = np.arange(n)
        np.random.shuffle(indices)
        return [indices[i : i + size] for i in range(0, n - size + 1, size)]

    def train_epoch(self, max_steps: int | None = None) -> None:
        self.model.train()
        data, device = self.data, self.device
        if self.case.batching == "steps":
            for _ in range(max_steps or data.n // self.case.batch_size):
                self.optimizer.zero_grad()
                choice = np.random.choice(data.n, self.case.batch_size)
                x, y, w = (t[choice].to(device) for t in (self.x_all, self.y_all, self.w_all))
                pred = self.model(x)
                loss = torch.mul((pred.reshape(-1) - y.reshape(-1)) ** 2, w.reshape(-1)).mean()
                loss.backward()
                self.optimizer.step()
                loss.item()
        else:
            x_values = data.x
            if (
                self.case.inputs == "priors"
            ):  # TabnetModel: a tensor view with NaNs zeroed per epoch
                x_values = torch.from_numpy(data.x)
                x_values[torch.isnan(x_values)] = 0
            for k, rows in enumerate(self._batches(shuffle=True, predict=False)):
                if max_steps is not None and k >= max_steps:
                    break
                x = x_values[rows]
                x = (x if isinstance(x, torch.Tensor) else torch.from_numpy(x)).float().to(device)
                y = torch.from_numpy(data.y[rows]).float().to(device)
                self._step(x, y, rows)
        self._sync()

    def predict(self) -> np.ndarray:
        self.model.eval()
        x_values = torch.Tensor(self.data.x) if self.case.batching == "steps" else self.data.x
        preds = []
        for rows in self._batches(shuffle=False, predict=True):
            x = x_values[rows]
            x = (x if isinstance(x, torch.Tensor) else torch.from_numpy(x)).float().to(self.device)
            with torch.no_grad():
                preds.append(self._forward(x, rows).detach().cpu().numpy().reshape(-1))
        return np.concatenate(preds)

    def _sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize()


# -- measurements -------------------------------------------------------------------------


def run_case(case: Case, n_samples: int, repeats: int, watch: CompileWatch, device) -> dict:
    module = qjax.models.get(case.name)(**case.qjax_kwargs)
    n = case_samples(case, n_samples)
    data = make_data(case, n, seed=0)
    samples = qjax_samples(case, data)
    config = train_config(case, data.n)
    runner = TorchRunner(case, data, device)
    rows = trained_samples(case, data.n)

    def qjax_epoch():
        result = fit(module, samples, None, config, verbose=False)
        jax.block_until_ready(result.variables)
        return result

    with watch.span() as first:
        first_s = timed(qjax_epoch)
    runner.train_epoch(max_steps=1)  # torch warm-up: allocator, oneDNN primitives
    qjax_s, torch_s, recompiles = alternate(qjax_epoch, runner.train_epoch, repeats, watch)
    result = qjax_epoch()
    variables = result.replica(0)

    daily = case.batching == "daily"
    predict_batch = home_predict_batch(case.name, case.predict_batch or case.batch_size)

    def qjax_predict():
        return predict(module, variables, samples, batch_size=predict_batch, daily=daily)

    with watch.span() as predict_first:
        first_pred = timed(qjax_predict)
    torch_pred = runner.predict()
    qjax_pred_s, torch_pred_s, predict_recompiles = alternate(
        qjax_predict, runner.predict, repeats, watch
    )
    if not (np.isfinite(qjax_predict()).all() and np.isfinite(torch_pred).all()):
        raise RuntimeError(f"{case.name}: non-finite predictions")

    qjax_rate, torch_rate = rows / median(qjax_s), rows / median(torch_s)
    qjax_infer, torch_infer = data.n / median(qjax_pred_s), data.n / median(torch_pred_s)
    return {
        "samples": data.n,
        "trained_samples_per_epoch": rows,
        "batch_size": "one day (280-300)" if daily else case.batch_size,
        "predict_batch": "one day" if daily else predict_batch,
        "batching": case.batching,
        "params": {"qjax": qjax_param_count(variables), "torch": runner.n_params},
        "train": {
            "qjax_samples_per_s": qjax_rate,
            "torch_samples_per_s": torch_rate,
            "speedup": qjax_rate / torch_rate,
            "qjax_epoch_s": qjax_s,
            "torch_epoch_s": torch_s,
            "qjax_first_call_s": first_s,
            "qjax_compile_s": first["compile_s"],
            "qjax_compiles_first_call": first["compiles"],
            "qjax_compiles_timed": recompiles,
        },
        "infer": {
            "qjax_samples_per_s": qjax_infer,
            "torch_samples_per_s": torch_infer,
            "speedup": qjax_infer / torch_infer,
            "qjax_s": qjax_pred_s,
            "torch_s": torch_pred_s,
            "qjax_first_call_s": first_pred,
            "qjax_compile_s": predict_first["compile_s"],
            "qjax_compiles_timed": predict_recompiles,
        },
        "flops": step_flops(case, module, samples, data),
        "note": case.note,
    }


def e2e_frame(stocks: int, days: int, input_dim: int, seed: int) -> pd.DataFrame:
    """A raw (datetime, instrument) frame with ("feature", ...) and ("label", "LABEL0") columns."""
    rng = np.random.default_rng(seed)
    index = pd.MultiIndex.from_product(
        [pd.bdate_range("2010-01-04", periods=days), [f"SH{k:06d}" for k in range(stocks)]],
        names=["datetime", "instrument"],
    )
    columns = pd.MultiIndex.from_tuples(
        [("feature", f"F{k:03d}") for k in range(input_dim)] + [("label", "LABEL0")]
    )
    values = rng.standard_normal((len(index), input_dim + 1), dtype=np.float32)
    return pd.DataFrame(values, index=index, columns=columns)


def alternate(qjax_fn, torch_fn, repeats: int, watch: CompileWatch) -> tuple[list, list, int]:
    """Time qjax and torch in turns; (qjax seconds, torch seconds, compilations in qjax calls)."""
    qjax_s, torch_s, compiles = [], [], 0
    for _ in range(repeats):
        with watch.span() as got:
            qjax_s.append(timed(qjax_fn))
        compiles += got["compiles"]
        torch_s.append(timed(torch_fn))
    return qjax_s, torch_s, compiles


def run_e2e(case: Case, args, watch: CompileWatch) -> dict:
    from qlib.data.dataset import DatasetH
    from qlib.data.dataset.handler import DataHandlerLP
    from qlib.data.dataset.loader import StaticDataLoader

    from qjax.data.dataset import Dataset
    from qjax.data.handler import DataHandler

    # Compute-heavy models get fewer days, in the share they get fewer samples above, but train
    # and valid keep at least one full batch (Qlib drops the last partial batch).
    full_batch_days = -(-case.wrapper_kwargs.get("batch_size", 1) // args.e2e_stocks)
    n_days = {
        name: max(
            1 if name == "test" else full_batch_days,
            int(round(getattr(args, f"e2e_{name}_days") * case.sample_share)),
        )
        for name in ("train", "valid", "test")
    }
    frame = e2e_frame(args.e2e_stocks, sum(n_days.values()), case.input_dim, seed=1)
    dates = frame.index.get_level_values("datetime").unique()
    bounds = np.cumsum([0, n_days["train"], n_days["valid"], n_days["test"]])
    segments = {
        name: (dates[bounds[k]], dates[bounds[k + 1] - 1])
        for k, name in enumerate(("train", "valid", "test"))
    }
    kwargs = {**case.wrapper_kwargs, "n_epochs": args.e2e_epochs, "early_stop": args.e2e_epochs + 1}
    for segment in ("train", "valid"):
        size = args.e2e_stocks * n_days[segment]
        if size < kwargs.get("batch_size", 1):
            raise ValueError(
                f"the e2e {segment} segment has {size} samples, fewer than "
                f"{case.name}'s batch_size={kwargs['batch_size']}: Qlib drops the last partial batch, "
                f"so it would train or score nothing; raise --e2e-{segment}-days or --e2e-stocks"
            )

    with tempfile.TemporaryDirectory() as folder:
        if case.wrapper_files is not None:
            instruments = sorted(frame.index.get_level_values("instrument").unique())
            kwargs.update(case.wrapper_files(Path(folder), instruments))
        qlib_dataset = DatasetH(
            DataHandlerLP(data_loader=StaticDataLoader(config=frame.copy())), segments
        )
        dataset = Dataset(DataHandler(frame), segments)
        like_qlib = {"eval_train": True, "eval_protocol": "qlib"}

        def qlib_fit():
            model = load(case.qlib_wrapper)(**kwargs)
            if case.wrapper_patch is not None:
                case.wrapper_patch(model)
            with qlib_recorder() if case.needs_recorder else contextlib.nullcontext():
                model.fit(qlib_dataset)

        def qjax_fit(extra):
            return lambda: qjax.estimator(case.name, **kwargs, **extra).fit(dataset, verbose=False)

        # Each qjax setting's first fit compiles (cold); then every fit runs in turns with
        # Qlib's, the order rotating, and the medians are compared.
        runs = {}
        for label, extra in (("like_qlib_cold", like_qlib), ("default_cold", {})):
            with watch.span() as got:
                seconds = timed(qjax_fit(extra))
            runs[label] = {"s": seconds, "compile_s": got["compile_s"], "compiles": got["compiles"]}
        turns = rotate(
            {"qlib": qlib_fit, "like_qlib": qjax_fit(like_qlib), "default": qjax_fit({})},
            args.e2e_repeats,
        )
    qlib_s = median(turns["qlib"]["wall"])
    for label in ("like_qlib", "default"):
        runs[f"{label}_warm"] = {"s": median(turns[label]["wall"]), "all_s": turns[label]["wall"]}
    return {
        "kwargs": {
            k: (Path(v).name if k in ("stock2concept", "stock_index") else v)
            for k, v in kwargs.items()
        },
        "segments": {k: [str(a.date()), str(b.date())] for k, (a, b) in segments.items()},
        "samples": {k: int(args.e2e_stocks * n_days[k]) for k in segments},
        "qlib_s": qlib_s,
        "qlib_all_s": turns["qlib"]["wall"],
        "qjax": runs,
        "speedup_like_qlib": qlib_s / runs["like_qlib_cold"]["s"],
        "speedup_default": qlib_s / runs["default_cold"]["s"],
        "speedup_like_qlib_warm": qlib_s / runs["like_qlib_warm"]["s"],
        "speedup_default_warm": qlib_s / runs["default_warm"]["s"],
    }


def torch_thread_probe(threads: int, steps: int = 3) -> dict:
    """Qlib LSTM train steps (batch 800) per second at 1 torch thread and at ``threads``."""
    from qlib.contrib.model.pytorch_lstm import LSTMModel

    gen = torch.Generator().manual_seed(0)
    x, y = torch.randn(800, 360, generator=gen), torch.randn(800, generator=gen)
    rates = {}
    for n_threads in sorted({1, threads}):
        torch.set_num_threads(n_threads)
        model = LSTMModel()
        optimizer = torch.optim.Adam(model.parameters())

        def step():
            loss = torch.mean((model(x) - y) ** 2)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()

        step()
        rates[n_threads] = 800 * steps / timed(lambda: [step() for _ in range(steps)])
    torch.set_num_threads(threads)
    return {
        "lstm_train_samples_per_s_by_threads": rates,
        "all_threads_vs_one": rates[threads] / rates[1],
    }


# -- report --------------------------------------------------------------------------------


def _fmt(value, spec=",.0f") -> str:
    return "–" if value is None else format(value, spec)


def _probe_lines(probe: dict | None, cores: int) -> list[str]:
    if not probe or cores == 1:
        return []
    rates = probe["lstm_train_samples_per_s_by_threads"]
    one, all_ = rates.get(1, rates.get("1")), rates.get(cores, rates.get(str(cores)))
    lines = [
        f"Thread probe (Qlib LSTM train steps, batch 800): torch {one:,.0f} samples/s at 1 thread, "
        f"{all_:,.0f} at {cores} threads ({probe['all_threads_vs_one']:.2f}x).",
    ]
    if probe["all_threads_vs_one"] < 0.9:
        lines[0] += (
            f" **torch ran slower on {cores} threads than on one: its OpenMP pool was starved by "
            "other processes, so the torch columns below understate torch; rerun on a quiet "
            "machine, or compare per core with `taskset -c 0`.**"
        )
    return [*lines, ""]


def _model_row(name: str, res: dict, e: dict) -> str:
    """The throughput row of one model, ``e`` its end-to-end record (empty if none)."""
    t, i = res["train"], res["infer"]
    e2e = (
        ("–", "–", "–")
        if "qlib_s" not in e
        else (
            f"{e['qjax']['like_qlib_cold']['s']:.1f}",
            f"{e['qlib_s']:.1f}",
            f"{e['speedup_like_qlib']:.2f}x",
        )
    )
    return (
        f"| {name} | {_fmt(t['qjax_samples_per_s'])} | {_fmt(t['torch_samples_per_s'])} | "
        f"{t['speedup']:.2f}x | {_fmt(i['qjax_samples_per_s'])} | {_fmt(i['torch_samples_per_s'])} | "
        f"{i['speedup']:.2f}x | {e2e[0]} | {e2e[1]} | {e2e[2]} |"
    )


def _e2e_row(name: str, e: dict) -> str:
    q = e["qjax"]
    return (
        f"| {name} | {e['samples']['train']} / {e['samples']['valid']} | {e['kwargs']['n_epochs']} | "
        f"{e['qlib_s']:.1f} | {q['like_qlib_cold']['s']:.1f} ({q['like_qlib_cold']['compile_s']:.1f}) | "
        f"{q['like_qlib_warm']['s']:.1f} | {q['default_cold']['s']:.1f} "
        f"({q['default_cold']['compile_s']:.1f}) | {q['default_warm']['s']:.1f} | "
        f"{e['speedup_like_qlib']:.2f}x / {e['speedup_default']:.2f}x | "
        f"{e['speedup_like_qlib_warm']:.2f}x / {e['speedup_default_warm']:.2f}x |"
    )


def report(r: dict) -> str:
    m, c = r["machine"], r["config"]
    lines = [
        f"# Training and inference throughput: qjax vs Qlib's PyTorch models ({r['tag']})",
        "",
        f"Command: `{r['command']}`",
        "",
        *([r["config"]["note"], ""] if r["config"].get("note") else []),
        f"Run {r['started']}; **load average (1/5/15 min) before {r['load_average_before']}, after "
        f"{r['load_average_after']}** on {m['logical_cores']} logical cores. "
        + (
            "The machine was shared with other jobs, so absolute numbers are noisy; compare ratios "
            "(qjax and torch repeats alternate, so load changes hit both sides)."
            if r["load_average_before"][0] > 0.5 * m["logical_cores"]
            else "The machine was otherwise idle."
        ),
        "",
        "Speed-up = qjax rate / torch rate (or Qlib seconds / qjax seconds): above 1 means qjax is faster.",
        "",
        *_probe_lines(r.get("torch_thread_probe"), m["usable_cores"]),
        *results_table(
            [
                "model",
                *("qjax train/s", "torch train/s", "speed-up"),
                *("qjax infer/s", "torch infer/s", "speed-up"),
                *("e2e qjax s", "e2e Qlib s", "speed-up"),
            ],
            "l" + "r" * 9,
            r["models"],
            lambda name, res: _model_row(name, res, r["e2e"].get(name, {})),
        ),
        "",
        *flops_lines(r),
        "## Details per model",
        "",
        "| model | samples | batch | params qjax / torch | qjax epoch s (median, all) | torch epoch s "
        "(median, all) | qjax first call s (compile s) | compiles in timed calls (train / predict) |",
        "|---|---:|---|---|---|---|---|---|",
    ]
    for name, res in r["models"].items():
        if "error" in res:
            continue
        t = res["train"]
        spread = lambda xs: f"{median(xs):.2f} ({', '.join(f'{x:.2f}' for x in xs)})"  # noqa: E731
        lines.append(
            f"| {name} | {res['samples']} | {res['batch_size']} | {res['params']['qjax']:,} / "
            f"{res['params']['torch']:,} | {spread(t['qjax_epoch_s'])} | {spread(t['torch_epoch_s'])} | "
            f"{t['qjax_first_call_s']:.1f} ({t['qjax_compile_s']:.1f}) | {t['qjax_compiles_timed']} / "
            f"{res['infer']['qjax_compiles_timed']} |"
        )
    notes = [f"- {name}: {res['note']}" for name, res in r["models"].items() if res.get("note")]
    if notes:
        lines += ["", *notes]
    if r["e2e"]:
        lines += [
            "",
            "## End-to-end `fit` (one in-memory frame, both libraries' data handling included)",
            "",
            *results_table(
                [
                    *("model", "train / valid samples", "epochs", "Qlib `fit` s (median)"),
                    *("qjax like Qlib, cold s (compile s)", "qjax like Qlib, warm s (median)"),
                    *("qjax defaults, cold s (compile s)", "qjax defaults, warm s (median)"),
                    *("speed-up cold: like Qlib / defaults", "speed-up warm: like Qlib / defaults"),
                ],
                "llrrlrlrll",
                r["e2e"],
                _e2e_row,
            ),
            "",
            '"like Qlib": `eval_train=True, eval_protocol="qlib"` (Qlib\'s wrappers re-evaluate the '
            "whole train set after every epoch and score batches the way `test_epoch` does); "
            '"defaults": qjax\'s defaults (no train re-evaluation, exact validation loss). '
            "Cold runs are each setting's first fit in the process, tracing and XLA compilation "
            "included (in parentheses: their seconds summed over threads; the initialisation "
            "program compiles beside the epoch program, so the sum can exceed the fit's wall "
            "time). Then Qlib's `fit` and both qjax settings (compiled "
            f"programs reused) ran {r['config'].get('e2e_repeats', 1)} times each in turns, the "
            "order rotating; their medians are shown, every time is in the JSON. The cold "
            "speed-up is Qlib's median over qjax's cold fit. early_stop = n_epochs + 1, so every "
            "run trains all epochs.",
        ]
    if r["skipped"]:
        lines += ["", "## Skipped", "", *[f"- {k}: {v}" for k, v in r["skipped"].items()]]
    if r["not_run"]:
        lines += ["", f"Not in `--models` for this run: {', '.join(r['not_run'])}."]
    lines += [
        "",
        "## Method",
        "",
        f"- Data: random float32 N(0, 1) features [N, {360}] (Alpha360 layout) and labels; daily models "
        f"get days of {DAY_SIZES[0]}-{DAY_SIZES[1]} stocks (qjax pads every day to the largest). "
        f"--samples {c['samples']} scaled per model (MLP 4, Transformer/Localformer 0.16, TabNet 0.64, "
        "TCN 0.25, SFM 0.125), at least one batch.",
        "- qjax train: `qjax.train.fit(module, samples, None, TrainConfig(n_epochs=1, ...))` per repeat "
        "(the engine's jitted epoch program plus its per-call host work: segment setup, init, one "
        "device-to-host read), after one compiling call. torch: Qlib's loop as described in the "
        "script's docstring, after a one-step warm-up. Both train the same number of rows.",
        "- Inference: `qjax.train.predict` with the prediction batch its estimator uses (the "
        "model home's `cpu_predict_batch` on CPU, else Qlib's predict batch size) vs Qlib's "
        "`predict` loop with Qlib's batch size "
        "(numpy slice -> `torch.from_numpy` -> eval forward under `no_grad` -> numpy).",
        f"- Medians of {c['repeats']} alternating repeats; every timing is in the JSON.",
        "",
        "## Machine",
        "",
        f"- CPU: {m['cpu']}, {m['logical_cores']} logical cores, {m['ram_gib']} GiB RAM; {m['platform']}",
        f"- JAX backend `{m['jax_backend']}` ({', '.join(m['jax_devices'])}); torch device "
        f"`{m.get('torch_device')}`, torch threads {m.get('torch_threads')} (interop "
        f"{m.get('torch_interop_threads')}); XLA: {m['jax_threads']}",
        f"- Allocators: JAX: {m['allocators']['jax']}; torch: {m['allocators'].get('torch')}",
        "- Versions: "
        + ", ".join(f"{k} {v}" for k, v in m["versions"].items())
        + f", Python {m['python']}",
        f"- Environment: {m['env'] or 'no threading/allocator variables set'}",
        "",
    ]
    return "\n".join(lines)


# -- main ----------------------------------------------------------------------------------


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", default=",".join(CASES), help="comma-separated names (default: all)")
    p.add_argument("--samples", type=int, default=25600, help="train samples N (scaled per model)")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument(
        "--e2e-models", default="lstm,alstm", help="models for the end-to-end fit; '' for none"
    )
    p.add_argument("--e2e-epochs", type=int, default=3)
    p.add_argument(
        "--e2e-repeats", type=int, default=3, help="Qlib and warm qjax fits, timed in turns"
    )
    p.add_argument("--e2e-stocks", type=int, default=300)
    p.add_argument("--e2e-train-days", type=int, default=85)
    p.add_argument("--e2e-valid-days", type=int, default=24)
    p.add_argument("--e2e-test-days", type=int, default=5)
    p.add_argument(
        "--out", type=Path, default=None, help="folder for train_vs_torch_<tag>.{md,json}"
    )
    p.add_argument("--tag", default=None, help="result file suffix (default: the JAX backend)")
    p.add_argument("--note", default="", help="a remark printed under the results' header")
    args = p.parse_args(argv)
    args.models = [m.strip().lower() for m in args.models.split(",") if m.strip()]
    args.e2e_models = [m.strip().lower() for m in args.e2e_models.split(",") if m.strip()]
    unknown = sorted(set(args.models + args.e2e_models) - set(CASES))
    if unknown:
        p.error(f"unknown model(s) {unknown}; choose from {', '.join(CASES)}")
    if args.repeats < 1 or args.samples < 1:
        p.error("--repeats and --samples must be >= 1")
    return args


def main(argv=None) -> None:
    args = parse_args(argv)
    from qlib.config import C

    C.logging_level = logging.WARNING  # Qlib's wrappers log every epoch at INFO
    warnings.filterwarnings("ignore", category=UserWarning)
    warnings.filterwarnings("ignore", category=FutureWarning, module="torch")
    threads = usable_cores()
    torch.set_num_threads(threads)
    device = torch.device("cuda:0" if torch.cuda.is_available() else "cpu")
    if device.type == "cpu":
        # Qlib's HISTModel.forward looks up the CUDA device of its input and fails on CPU
        # tensors; nothing else in its forward depends on the device.
        torch.get_device = lambda tensor: "cpu"
    watch = CompileWatch()
    started = datetime.datetime.now().astimezone().isoformat(timespec="seconds")
    load_before = load_average()
    probe = torch_thread_probe(threads) if device.type == "cpu" else None
    results: dict[str, Any] = {"models": {}, "e2e": {}, "skipped": {}}

    for name in args.models:
        case = CASES[name]
        try:
            qjax.models.get(name)
            load(case.torch_module)
        except (KeyError, ImportError, AttributeError) as err:
            results["skipped"][name] = f"{type(err).__name__}: {err}"
            print(f"[skip] {name}: {err}", file=sys.stderr)
            continue
        print(f"[train/infer] {name} ...", file=sys.stderr, flush=True)
        try:
            results["models"][name] = run_case(case, args.samples, args.repeats, watch, device)
        except Exception as err:  # keep the other models' numbers
            traceback.print_exc()
            results["models"][name] = {"error": f"{type(err).__name__}: {err}"}
            continue
        t = results["models"][name]["train"]
        print(
            f"    train {t['qjax_samples_per_s']:,.0f}/s vs {t['torch_samples_per_s']:,.0f}/s",
            file=sys.stderr,
            flush=True,
        )

    for name in args.e2e_models:
        case = CASES[name]
        if case.qlib_wrapper is None or name not in qjax.estimators.wrappers():
            results["skipped"][f"e2e {name}"] = (
                case.note or "no Qlib wrapper or qjax estimator for it"
            )
            continue
        print(f"[e2e] {name} ...", file=sys.stderr, flush=True)
        try:
            results["e2e"][name] = run_e2e(case, args, watch)
        except Exception as err:
            traceback.print_exc()
            results["e2e"][name] = {"error": f"{type(err).__name__}: {err}"}

    tag = args.tag or jax.default_backend()
    record = {
        "command": command_line(),
        "tag": tag,
        "started": started,
        "load_average_before": load_before,
        "load_average_after": load_average(),
        "config": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "machine": {**machine(torch), "usable_cores": threads},
        "torch_thread_probe": probe,
        "matmul_peak": matmul_peak(8192 if jax.default_backend() == "gpu" else 2048),
        "not_run": [name for name in CASES if name not in args.models],
        **results,
    }
    text = report(record)
    print(text)
    if args.out is not None:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / f"train_vs_torch_{tag}.json").write_text(
            json.dumps(record, indent=1, default=str) + "\n"
        )
        (args.out / f"train_vs_torch_{tag}.md").write_text(text)


if __name__ == "__main__":
    main()
