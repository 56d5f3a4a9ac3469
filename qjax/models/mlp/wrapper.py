"""Qlib's DNNModelPytorch (pytorch_nn) as a spec: steps with replacement, ReduceLROnPlateau."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping

from qjax.models.spec import Adapter, ModelSpec
from qjax.train.config import Plateau


def module_kwargs(kw: dict, is_ts: bool) -> dict:
    uri = kw["pt_model_uri"]
    if uri not in ("qlib.contrib.model.pytorch_nn.Net", "mlp", "Net"):
        raise ValueError(
            f"pt_model_uri={uri!r}: this wrapper builds Qlib's Net; for any other network use "
            "qjax.estimator('general', pt_model_uri=...)"
        )
    if is_ts:
        raise ValueError("DNNModelPytorch takes a flat Dataset, not a TSDataset")
    return dict(kw["pt_model_kwargs"])


def train_fields(kw: dict) -> dict:
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


@dataclasses.dataclass(frozen=True)
class InputWidth(Adapter):
    """``pt_model_kwargs["input_dim"]`` must equal the dataset's feature columns."""

    def check_input(self, kw: dict, shape: tuple[int, ...]) -> None:
        input_dim = kw["pt_model_kwargs"].get("input_dim")
        if input_dim != shape[-1]:
            raise ValueError(
                f"pt_model_kwargs.input_dim={input_dim} but the dataset has {shape[-1]} feature "
                f"columns; set pt_model_kwargs={{'input_dim': {shape[-1]}, ...}}"
            )


MLP = ModelSpec(
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
    module_kwargs,
    train_fields=train_fields,
    adapters=(InputWidth(),),
    cpu_predict_batch=4096,
)
