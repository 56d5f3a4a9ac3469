"""The training engine shared by every qjax model: ``fit``, ``predict`` and their pieces."""

from qjax.train.config import Plateau, TrainConfig
from qjax.train.engine import FitResult, Trainer, fit, predict
from qjax.train.losses import (
    Batch,
    LossFn,
    LossOutput,
    apply_model,
    masked_squared_error,
    supervised_mse,
)
from qjax.train.metrics import daily_ic, ic_series, signal_metrics
from qjax.train.state import FitState, TrainState

__all__ = [
    "Batch",
    "FitResult",
    "FitState",
    "LossFn",
    "LossOutput",
    "Plateau",
    "TrainConfig",
    "TrainState",
    "Trainer",
    "apply_model",
    "daily_ic",
    "fit",
    "ic_series",
    "masked_squared_error",
    "predict",
    "signal_metrics",
    "supervised_mse",
]
