"""Qlib's GATs wrappers (pytorch_gats, pytorch_gats_ts) as a spec: daily batches, an optional
pretrained LSTM/GRU base, and Qlib GATs_ts's pseudo-days on request."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import jax.numpy as jnp
import pandas as pd

from qjax.data.samples import Samples, qlib_legacy_day_groups
from qjax.interop.torch_pickle import read_torch_state_dict
from qjax.models.gats.qlib import load_base_weights
from qjax.models.spec import Adapter, DailyBatches, ModelSpec, SequenceInput, pick

DAILY_BATCHES = ("true_daily", "qlib_legacy")
# Keywords of Qlib's GATs wrapper; its HIST wrapper takes the same (metric "ic") plus concepts.
BASE_MODEL_DEFAULTS = {
    "d_feat": 6,
    "hidden_size": 64,
    "num_layers": 2,
    "dropout": 0.0,
    "n_epochs": 200,
    "lr": 0.001,
    "metric": "",
    "early_stop": 20,
    "loss": "mse",
    "base_model": "GRU",
    "model_path": None,
    "optimizer": "adam",
    "GPU": 0,
    "seed": None,
}
MODULE_ARGS = ("d_feat", "hidden_size", "num_layers", "dropout", "base_model")


@dataclasses.dataclass(frozen=True)
class PretrainedBase(Adapter):
    """``model_path``: copy a Qlib LSTM/GRU state dict's rnn and fc_out, as Qlib's GATs/HIST do."""

    def init_variables(self, kw: dict) -> Callable | None:
        path = kw.get("model_path")
        if path is None:
            return None
        state_dict = read_torch_state_dict(path)
        base, layers = kw["base_model"], kw["num_layers"]
        return lambda variables: load_base_weights(variables, state_dict, base, layers)


@dataclasses.dataclass(frozen=True)
class LegacyDayGroups(Adapter):
    """``daily_batch="qlib_legacy"``: the "days" of Qlib GATs_ts's sampler, which are runs of the
    instrument-major sample order (microsoft/qlib#2319), walked in the same order every epoch."""

    def check_input(self, kw: dict, shape: tuple[int, ...]) -> None:
        if kw["daily_batch"] not in DAILY_BATCHES:
            raise ValueError(f"daily_batch={kw['daily_batch']!r}; expected one of {DAILY_BATCHES}")
        if kw["daily_batch"] == "qlib_legacy" and len(shape) != 3:
            raise ValueError(
                "daily_batch='qlib_legacy' reproduces the sampler of Qlib's GATs_ts "
                "(pytorch_gats_ts) and needs a TSDataset; Qlib's static GATs already batches "
                "real days (the default)"
            )

    def train_fields(self, kw: dict, fields: dict) -> dict:
        return {**fields, "shuffle_days": kw["daily_batch"] != "qlib_legacy"}

    def samples(self, kw: dict, segment: str, samples: Samples, index: pd.MultiIndex) -> Samples:
        if kw["daily_batch"] != "qlib_legacy":
            return samples
        return samples.replace(batch_group=jnp.asarray(qlib_legacy_day_groups(index)))


GATS = ModelSpec(
    "qlib.contrib.model.pytorch_gats.GATs / pytorch_gats_ts.GATs",
    {
        **BASE_MODEL_DEFAULTS,
        # qjax: "qlib_legacy" batches GATs_ts's contiguous instrument-major ranges (not days)
        "daily_batch": "true_daily",
    },
    pick(*MODULE_ARGS),
    ts_defaults={"d_feat": 20, "n_jobs": 10},
    adapters=(SequenceInput("d_feat"), DailyBatches(), LegacyDayGroups(), PretrainedBase()),
)
