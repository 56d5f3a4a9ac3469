"""Qlib-style model wrappers: ``qjax.estimator(name, **kwargs).fit(dataset).predict(dataset)``.

Each wrapper accepts exactly the keyword arguments of its Qlib class, with the same defaults
(an unknown keyword is an error; Qlib silently swallows it), builds the registered Flax network
and trains it with the one engine in :mod:`qjax.train`. What differs between models is data, a
:class:`~qjax.models.spec.ModelSpec` in the model's home (``qjax.models.<family>.wrapper``). The
dataset decides between the flat (``Dataset``) and the window (``TSDataset``) variant, as Qlib's
``*_ts`` classes do; defaults that differ between Qlib's two classes follow the dataset.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd

from qjax.data.checks import check_model_inputs
from qjax.data.dataset import Dataset, TSDataset
from qjax.data.samples import Samples
from qjax.model_checks import check_flat_layout, check_model_kwargs
from qjax.models import registry
from qjax.models.registry import Model
from qjax.models.spec import QJAX_EXTRAS, ModelSpec, predict_batch
from qjax.train import FitResult, TrainConfig, fit, predict
from qjax.train.checkpoint import load_variables, save_variables
from qjax.train.config import Batching


class Estimator:
    """A Qlib-compatible model: ``fit(dataset)`` then ``predict(dataset, segment)``; ``save``
    writes a fitted one and :func:`load` reads it back.

    After ``fit``: ``module`` (the Flax network), ``variables`` (best parameters of the first
    seed), ``result`` (:class:`qjax.train.FitResult`, every seed), ``config``, ``kwargs`` (the
    resolved keyword arguments) and, for models with a pre-training stage (TabNet),
    ``pretrain_result`` (that stage's FitResult, or None).
    """

    def __init__(self, model: Model, **kwargs: Any):
        if model.spec is None:
            raise KeyError(f"model {model.name!r} has no Qlib wrapper spec, so no estimator")
        spec = model.spec
        check_model_kwargs(
            model.name,
            spec.qlib_class,
            kwargs,
            accepted=spec.accepted(),
            documented=sorted(spec.defaults),
            extras=sorted(QJAX_EXTRAS),
            defaults=spec.defaults,
        )
        self.model = model
        self.user_kwargs = dict(kwargs)
        self.module: nn.Module | None = None
        self.result: FitResult | None = None
        self.pretrain_result: FitResult | None = None
        self.config: TrainConfig | None = None
        self.kwargs: dict | None = None
        self._is_ts: bool | None = None

    @property
    def spec(self) -> ModelSpec:
        return self.model.spec

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.user_kwargs.items())
        return f"qjax.estimator({self.model.name!r}{', ' if args else ''}{args})"

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
    ) -> Estimator:
        """Train on the "train" segment, early-stop on "valid" (if the dataset has one).

        ``init_variables`` maps each replica's fresh variables to its starting ones (a warm
        start, e.g. a previous rolling window's best variables); it replaces the model's own.
        """
        spec = self.spec
        is_ts = _is_ts(dataset)
        kw = spec.resolve(self.user_kwargs, is_ts)
        config = TrainConfig(**spec.train_config_fields(kw))
        host = _host_samples(config, dataset)
        train, _ = _samples(
            spec, kw, dataset, "train", "learn", label=True, reweighter=reweighter, host=host
        )
        valid = None
        if "valid" in dataset.segments:
            valid_key = kw.get("valid_key", "learn")
            valid, _ = _samples(spec, kw, dataset, "valid", valid_key, label=True, host=host)
        spec.check_input(kw, _input_shape(train))
        if not is_ts:
            check_flat_layout(self.model.name, kw, _feature_names(dataset))
        module = self.model.network(**spec.module_kwargs(kw, is_ts))
        pretrained, pretrain_result = spec.pretrain(kw, dataset, module, verbose)
        # A warm start wins over pretraining, which wins over the spec's (pretrained base).
        start = init_variables or pretrained or spec.init_variables(kw)
        result = fit(
            module,
            train,
            valid,
            config,
            seeds=seeds,
            loss_fn=spec.loss_fn(kw),
            init_variables=start,
            checkpoint_dir=checkpoint_dir,
            resume=resume,
            evals_result=evals_result,
            verbose=verbose,
        )
        self.kwargs, self.module, self.config, self._is_ts = kw, module, config, is_ts
        self.result, self.pretrain_result = result, pretrain_result
        return self

    def preflight(self, dataset: Dataset) -> None:
        """The checks ``fit`` makes before training, without building samples (cheap): run
        them before committing to a long job. Raises what ``fit`` would raise."""
        spec = self.spec
        is_ts = _is_ts(dataset)
        kw = spec.resolve(self.user_kwargs, is_ts)
        names = _feature_names(dataset)
        spec.check_input(kw, (1, dataset.step_len, len(names)) if is_ts else (1, len(names)))
        if not is_ts:
            check_flat_layout(self.model.name, kw, names)
        spec.module_kwargs(kw, is_ts)
        _host_samples(TrainConfig(**spec.train_config_fields(kw)), dataset)

    def check_inputs(
        self, dataset: Dataset, segment: str = "test", data_key: str = "infer"
    ) -> None:
        """Build ``segment``'s inputs as ``predict`` will and raise :class:`DataError` if they
        hold NaN/inf: run before training, so that a segment the model could not score stops
        the run before the training time is spent (``fit`` checks its own segments)."""
        kw = self.spec.resolve(self.user_kwargs, _is_ts(dataset))
        host = _host_samples(TrainConfig(**self.spec.train_config_fields(kw)), dataset)
        _samples(self.spec, kw, dataset, segment, data_key, label=False, host=host)

    def predict(self, dataset: Dataset, segment: str = "test") -> pd.Series | pd.DataFrame:
        """Predictions indexed (datetime, instrument): a Series, or one column per seed."""
        self._require_fit()
        is_ts = _is_ts(dataset)
        if is_ts != self._is_ts:
            kind = "TSDataset" if self._is_ts else "Dataset"
            raise ValueError(
                f"this model was fitted on a {kind}; predict on the same kind of dataset"
            )
        host = _host_samples(self.config, dataset)
        samples, index = _samples(
            self.spec, self.kwargs, dataset, segment, "infer", label=False, host=host
        )
        # Qlib predicts in batches of batch_size; on CPU the model's home may pick another
        # size (larger RNN batches are slower, a Transformer's 2048-wide feed-forward spills
        # the caches).
        pred = predict(
            self.module,
            self.result.variables,
            samples,
            batch_size=predict_batch(self.spec, self.config.batch_size),
            daily=self.config.batching is Batching.DAILY,  # as the model was trained
            per_seed=True,
            stream_batches=self.config.stream_batches,
            cpu_opt_level=self.config.cpu_opt_level,  # as the model was trained
        )
        if len(self.result.seeds) == 1:
            return pd.Series(pred[0], index=index, name="score")
        columns = [f"seed_{s}" for s in self.result.seeds]
        return pd.DataFrame(pred.T, index=index, columns=columns)

    def save(self, directory: str | os.PathLike) -> Path:
        """Write the fitted model to ``directory``: every seed's best variables as an Orbax
        checkpoint (``variables/``) and, as JSON (``estimator.json``), the model name, its keyword
        arguments, the dataset kind and the fit's scores and history. :func:`load` reads it."""
        self._require_fit()
        result = self.result
        meta = {
            "name": self.model.name,
            "kwargs": self.user_kwargs,
            "is_ts": self._is_ts,
            "seeds": list(result.seeds),
            "best_epoch": np.asarray(result.best_epoch).tolist(),
            "best_score": np.asarray(result.best_score).tolist(),
            "history": {name: np.asarray(v).tolist() for name, v in result.history.items()},
        }
        try:
            text = json.dumps(meta, indent=1)
        except TypeError as err:
            raise TypeError(
                f"cannot save {self!r}: its keyword arguments must be JSON data (numbers, "
                f"strings, lists, dicts) ({err}); pass e.g. HIST's stock2concept as .npy paths"
            ) from None
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        save_variables(directory / "variables", result.variables)
        (directory / "estimator.json").write_text(text)
        return directory

    def _require_fit(self) -> None:
        if self.result is None:
            raise RuntimeError("call fit(dataset) before predict")


def _host_samples(config: TrainConfig, dataset) -> bool:
    """Whether the samples stay in host memory (``stream_batches``); refuses the datasets
    whose rows are built in the gather, before any sample is built."""
    if config.stream_batches is None:
        return False
    if type(dataset).samples is not Dataset.samples:  # TSDataset, Alpha360GatherDataset
        raise ValueError(
            f"stream_batches={config.stream_batches} streams the feature rows of a flat "
            f"qjax.data.Dataset, but this is a {type(dataset).__name__}, whose rows are built "
            "in the gather from tables that are already small: remove stream_batches, or use "
            "a flat Dataset (or dataset.storage_dtype='bfloat16' to halve the device bytes)"
        )
    return True


def _samples(
    spec: ModelSpec, kw: dict, dataset, segment, data_key, label, reweighter=None, host=False
) -> tuple[Samples, pd.MultiIndex]:
    """A segment's samples (sample weights from ``reweighter``), as the model takes them: on
    the device, or in host memory if ``host`` (streamed training)."""
    if segment not in dataset.segments:
        raise KeyError(f"the dataset has no {segment!r} segment; it has {sorted(dataset.segments)}")
    options = {"on_device": False} if host else {}
    samples, index = dataset.samples(segment, data_key=data_key, label=label, **options)
    if reweighter is not None:
        frame = dataset.prepare(segment, col_set="__all", data_key=data_key)
        weights = np.asarray(reweighter.reweight(frame), np.float32).reshape(-1)
        if weights.shape[0] != samples.size:
            raise ValueError(
                f"reweighter returned {weights.shape[0]} weights for {samples.size} samples"
            )
        samples = samples.replace(weights=weights if host else jnp.asarray(weights))
    samples = spec.samples(kw, segment, samples, index)  # the model's own NaN fill, if any
    check_model_inputs(
        samples, segment, data_key, names=lambda: _feature_names(dataset, data_key)
    )  # only on failure
    return samples, index


def _is_ts(dataset) -> bool:
    if isinstance(dataset, TSDataset):
        return True
    if isinstance(dataset, Dataset):
        return False
    raise TypeError(f"expected a qjax.data.Dataset or TSDataset, got {type(dataset).__name__}")


def _feature_names(dataset: Dataset, data_key: str = "learn") -> list[str]:
    return dataset.feature_names(data_key)


def _input_shape(samples: Samples) -> tuple[int, ...]:
    x = jax.eval_shape(lambda: samples.take(samples.features, np.zeros(1, np.int32)))
    return tuple(x.shape)


def load(directory: str | os.PathLike) -> Estimator:
    """The fitted :class:`Estimator` that :meth:`Estimator.save` wrote to ``directory``."""
    directory = Path(directory)
    meta_path = directory / "estimator.json"
    if not meta_path.is_file():
        raise FileNotFoundError(
            f"{directory} holds no saved estimator (no estimator.json); write one with "
            "Estimator.save(directory)"
        )
    meta = json.loads(meta_path.read_text())
    model = estimator(meta["name"], **_tuples(meta["kwargs"]))
    return fitted(model, load_variables(directory / "variables"), meta)


def fitted(model: Estimator, variables: Any, meta: dict) -> Estimator:
    """``model`` (unfitted) made ready to predict with saved ``variables`` (every seed's) and
    ``meta``: the keys ``is_ts``, ``seeds``, ``best_epoch``, ``best_score``, ``history`` that
    :meth:`Estimator.save` writes."""
    spec, is_ts = model.spec, bool(meta["is_ts"])
    kw = spec.resolve(model.user_kwargs, is_ts)
    model.kwargs, model._is_ts = kw, is_ts
    model.module = model.model.network(**spec.module_kwargs(kw, is_ts))
    model.config = TrainConfig(**spec.train_config_fields(kw))
    model.result = FitResult(
        variables=jax.tree.map(jnp.asarray, variables),
        seeds=tuple(meta["seeds"]),
        best_epoch=np.asarray(meta["best_epoch"]),
        best_score=np.asarray(meta["best_score"], np.float32),
        history={name: np.asarray(v, np.float32) for name, v in meta["history"].items()},
    )
    return model


def _tuples(value: Any) -> Any:
    """JSON lists back to the tuples they were (module fields must be hashable)."""
    if isinstance(value, dict):
        return {key: _tuples(item) for key, item in value.items()}
    if isinstance(value, list):
        return tuple(_tuples(item) for item in value)
    return value


def wrappers() -> dict[str, Model]:
    """Every registered model with a Qlib wrapper spec, by name."""
    return {name: m for name, m in registry.models().items() if m.spec is not None}


def estimator(name: str, **kwargs: Any) -> Estimator:
    """A Qlib-compatible wrapper for the model ``name`` (:func:`wrappers` lists the names)."""
    available = wrappers()
    key = str(name).lower()
    if key not in available:
        raise KeyError(f"unknown model {name!r}; available: {', '.join(sorted(available))}")
    return Estimator(available[key], **kwargs)
