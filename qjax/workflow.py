"""A training run from a config: market -> features -> handler -> dataset -> model -> report.

This is what ``qjax train CONFIG.yaml`` executes. The run directory receives::

    .qjax-run            marks a directory qjax created; --overwrite deletes no other
    config.yaml          the resolved configuration (overrides applied)
    model/               the best variables and fitted processors, for ``qjax predict``
                         (:mod:`qjax.saved_run`)
    checkpoints/         Orbax checkpoints (latest train state, best parameters)
    predictions.parquet  test-segment scores indexed (datetime, instrument)
    metrics.json         IC, ICIR, Rank IC, Rank ICIR on the test segment (and the long-short
                         returns with signal_analysis.ana_long_short), training summary
                         (epochs numbered from 1; null where a value is undefined, e.g. IC of
                         a one-instrument universe)
    backtest/            with a ``backtest:`` section: Qlib's report, positions, risk analysis
    labels.parquet       the test segment's raw label; evals.json: per-epoch train/valid scores
    report.html          the report (qjax.report): report/*.png embedded in one page

A run that was interrupted resumes from its last checkpoint when started again with the same
configuration and output directory.
"""

from __future__ import annotations

import contextlib
import json
import time
import warnings
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from qjax import run_config, rundir, runlock, saved_run
from qjax.data.checks import nonfinite_report, reject_infinite
from qjax.data.dataset import Dataset, TSDataset
from qjax.data.handler import DataHandler
from qjax.errors import TrainingDiverged
from qjax.estimators import estimator
from qjax.train.metrics import signal_metrics


def load_market(data_cfg: Mapping[str, Any]) -> pd.DataFrame:
    """The OHLCV panel named by a config's ``data`` section (not used for Qlib directories)."""
    source = data_cfg.get("source", "generated")
    if source == "generated":
        from qjax.data.market import generate_market

        kwargs = {
            k: data_cfg[k] for k in ("n_instruments", "n_days", "start", "seed") if k in data_cfg
        }
        return generate_market(**kwargs)
    from qjax.data.sources import load_ohlcv

    return load_ohlcv(
        data_cfg["path"],
        column_map=data_cfg.get("column_map"),
        **{k: data_cfg[k] for k in ("date_col", "instrument_col") if k in data_cfg},
    )


def handler_input(
    data_cfg: Mapping[str, Any],
    handler_name: str,
    start: Any,
    end: Any,
    panel: pd.DataFrame | None = None,
) -> pd.DataFrame:
    """The handler's raw frame (features and label) for the days in [start, end], computed
    from the data section (or from ``panel``, an OHLCV panel loaded before)."""
    from qjax.data import features

    if data_cfg.get("source", "generated") == "qlib":
        return features.load_handler(
            handler_name,
            data_cfg["provider_uri"],
            instruments=data_cfg.get("instruments", "csi300"),
            start_time=start,
            end_time=end,
        )
    panel = load_market(data_cfg) if panel is None else panel
    return features.handler_frame(handler_name, panel, start, end)


def build_dataset(cfg: Mapping[str, Any]) -> Dataset:
    """Features, processors and segments as the config says (Qlib's ``DatasetH``/``TSDatasetH``)."""
    handler_cfg, dataset_cfg = cfg["handler"], cfg["dataset"]
    segments = dataset_cfg["segments"]
    start = handler_cfg.get("start_time") or min(s for s, _ in segments.values())
    end = handler_cfg.get("end_time") or max(e for _, e in segments.values())
    if handler_cfg.get("compute_in_gather"):
        return _alpha360_in_gather(cfg, start, end)
    frame = handler_input(cfg["data"], handler_cfg["name"], start, end)
    handler = DataHandler(
        frame,
        infer_processors=handler_cfg.get("infer_processors", ()),
        learn_processors=handler_cfg.get("learn_processors", ()),
        process_type=handler_cfg.get("process_type", "append"),
        fit_start_time=handler_cfg.get("fit_start_time"),
        fit_end_time=handler_cfg.get("fit_end_time"),
    )
    storage = dataset_cfg.get("storage_dtype", "float32")
    if dataset_cfg.get("class", "Dataset") == "TSDataset":
        return TSDataset(handler, segments, step_len=step_len(cfg), storage_dtype=storage)
    return Dataset(handler, segments, storage_dtype=storage)


def _alpha360_in_gather(cfg: Mapping[str, Any], start: Any, end: Any) -> Dataset:
    """``handler.compute_in_gather``: Alpha360 rows built per batch from the fields panel."""
    from qjax.data import features
    from qjax.data.alpha360 import Alpha360GatherDataset, alpha360_panel

    data_cfg, handler_cfg = cfg["data"], cfg["handler"]
    if data_cfg.get("source", "generated") == "qlib":
        fields = features.load_handler_fields(
            data_cfg["provider_uri"], data_cfg.get("instruments", "csi300"), start, end
        )
    else:
        fields = features.handler_fields(load_market(data_cfg), start, end)
    return Alpha360GatherDataset(
        alpha360_panel(*fields),
        cfg["dataset"]["segments"],
        handler_cfg.get("infer_processors") or (),
        handler_cfg.get("learn_processors") or (),
        handler_cfg.get("fit_start_time"),
        handler_cfg.get("fit_end_time"),
    )


def step_len(cfg: Mapping[str, Any]) -> int:
    """A TSDataset config's window length (TSDataset's default when unset)."""
    return int(cfg["dataset"].get("step_len", 30))


def train(
    cfg: Mapping[str, Any],
    out_dir: str | Path,
    *,
    verbose: bool = True,
    overwrite: bool = False,
    init_variables: Callable | None = None,
    on_fitted: Callable[[Any], None] | None = None,
) -> dict:
    """Run a config into ``out_dir`` and return the metrics written to metrics.json.

    Everything that can be checked is checked before the output directory is touched and
    before training: the config's keys, the model's keywords, ``out_dir`` (see
    :mod:`qjax.rundir`), every segment against the data, inf in the training data.
    ``overwrite`` replaces a previous qjax run in ``out_dir`` (only after those checks). While
    it runs, ``out_dir`` is locked (:mod:`qjax.runlock`): a second process raises
    :class:`~qjax.errors.RunDirError` at once instead of mixing its checkpoints in.
    ``init_variables`` warm-starts the model (see ``Estimator.fit``); ``on_fitted(model)`` is
    called with the fitted estimator (``qjax rolling`` keeps its best variables).
    """
    cfg, model = checked(cfg)
    plan = rundir.plan(out_dir, cfg, overwrite)  # checks the directory (writes nothing)
    primary = is_primary()  # several processes (`qjax train --distributed`): process 0 writes
    lock = runlock.exclusive(out_dir) if primary else contextlib.nullcontext()
    with lock:  # one run per run directory
        # Planned again under the lock: a run that held it may have changed the directory.
        plan = rundir.plan(out_dir, cfg, overwrite) if primary else plan
        return _run(
            cfg, model, plan, verbose=verbose, init_variables=init_variables, on_fitted=on_fitted
        )


def _run(
    cfg: dict,
    model: Any,
    plan: rundir.Plan,
    *,
    verbose: bool,
    init_variables: Callable | None,
    on_fitted: Callable[[Any], None] | None,
) -> dict:
    """:func:`train` once the config, the model's keywords and the directory are checked."""
    out = plan.out
    checkpoint_dir = out / "checkpoints"
    primary = is_primary()

    t0 = time.perf_counter()
    dataset = build_dataset(cfg)
    check_dataset(dataset)
    model.preflight(dataset)
    model.check_inputs(dataset, "test")  # fit checks train and valid; this one is scored later
    t_data = time.perf_counter() - t0
    if primary:
        rundir.prepare(plan, cfg)
    plan = _plan_of_process_0(plan)

    evals: dict = {}
    seeds = cfg["train"].get("seeds")
    t0 = time.perf_counter()
    try:
        model.fit(
            dataset,
            evals_result=evals,
            checkpoint_dir=str(checkpoint_dir.resolve()),
            resume=plan.resume,
            seeds=seeds,
            verbose=verbose,
            init_variables=init_variables,
        )
    except TrainingDiverged as err:
        raise _diagnosed(err, dataset) from None
    finally:
        if primary:
            rundir.settle(plan)
    if on_fitted is not None:
        on_fitted(model)
    if primary:
        saved_run.write(out, cfg, model, dataset.handler)  # what `qjax predict` loads
    result = model.result
    t_fit = time.perf_counter() - t0 + result.earlier_seconds

    scores = model.predict(dataset, "test")
    label = dataset.label("test")
    per_seed = scores.to_frame() if isinstance(scores, pd.Series) else scores
    test_metrics = {col: signal_metrics(per_seed[col], label) for col in per_seed.columns}
    analysis = cfg.get("signal_analysis") or {}
    if analysis.get("ana_long_short"):  # SigAnaRecord(ana_long_short=True)
        from qjax.backtest.risk import signal_analysis_long_short

        for col in per_seed.columns:
            test_metrics[col].update(
                signal_analysis_long_short(per_seed[col], label, analysis.get("ann_scaler", 252))
            )
    summary = _summarise(test_metrics)
    stopped = result.early_stopped if result.early_stopped is not None else ()
    metrics = {
        "model": cfg["model"]["name"],
        "test": summary,
        "test_per_seed": test_metrics if len(test_metrics) > 1 else None,
        # Epochs are numbered from 1 everywhere qjax reports them (table, logs, this file).
        "best_epoch_1based": [int(e) + 1 if e >= 0 else None for e in result.best_epoch],
        "best_valid_score": result.best_score.tolist(),
        "epochs_run": int(len(result.history.get("lr", []))),
        "early_stopped_at_epoch": [
            int(n) if s else None for n, s in zip(result.epochs_run, stopped)
        ]
        if len(stopped)
        else None,
        "resumed_from_epoch": result.resumed_from + 1 if result.resumed_from else None,
        "seconds": {
            "data": round(t_data, 2),
            "fit": round(t_fit, 2),
            "compile": round(_compile_seconds(model), 2),
        },
        "samples": {"test": int(len(per_seed))},
    }
    if not primary:  # the same metrics; process 0 writes the files
        return _json_safe(metrics)
    if cfg.get("backtest"):  # PortAnaRecord: TopK-dropout backtest of the (first seed's) scores
        from qjax.backtest.record import record_backtest

        metrics.update(
            record_backtest(cfg["backtest"], per_seed.iloc[:, 0], cfg["data"], out, summary)
        )
    per_seed.to_parquet(out / "predictions.parquet")
    (out / "metrics.json").write_text(json.dumps(_json_safe(metrics), indent=2, allow_nan=False))
    from qjax.report import save_report_inputs, write_report

    save_report_inputs(out, evals, label)
    write_report(out)
    return _json_safe(metrics)


def _plan_of_process_0(plan: rundir.Plan) -> rundir.Plan:
    """Several processes: whether to resume, as process 0 decided, once it has prepared the
    directory (the others wait for it here: an --overwrite may be moving the old run aside)."""
    import jax

    if jax.process_count() == 1:
        return plan
    from jax.experimental import multihost_utils

    resume = bool(multihost_utils.broadcast_one_to_all(np.int32(plan.resume)))
    if is_primary():
        return plan
    return rundir.Plan(plan.out, "resume" if resume else "reuse")


def is_primary() -> bool:
    """Whether this process writes the run's files: always, unless it is one of several
    processes (``qjax train --distributed``) other than process 0."""
    import jax

    return jax.process_index() == 0


def checked(cfg: Mapping[str, Any]) -> tuple[dict, Any]:
    """The validated config and its (unfitted) estimator: every check that needs no data."""
    cfg = run_config.validate(cfg)
    if "test" not in cfg["dataset"]["segments"]:
        raise run_config.ConfigError("dataset.segments needs a 'test' segment: the run scores it")
    check_segments_inside_handler(cfg)
    _warn_about_look_ahead(cfg)
    return cfg, estimator(cfg["model"]["name"], **_model_kwargs(cfg))  # checks the keywords


def check_segments_inside_handler(cfg: Mapping[str, Any]) -> None:
    """A segment reaching past ``handler.start_time``/``end_time`` would be cut silently to the
    handler's dates (the metrics then cover fewer days than the config says)."""
    handler = cfg["handler"]
    first, last = handler.get("start_time"), handler.get("end_time")
    for name, (start, end) in cfg["dataset"]["segments"].items():
        if first is not None and pd.Timestamp(start) < pd.Timestamp(first):
            raise run_config.ConfigError(
                f"dataset.segments.{name} starts {start}, before handler.start_time {first}: "
                "the handler loads no data before it, so the segment would silently start "
                "later; move handler.start_time back or the segment's start forward"
            )
        if last is not None and pd.Timestamp(end) > pd.Timestamp(last):
            raise run_config.ConfigError(
                f"dataset.segments.{name} ends {end}, after handler.end_time {last}: the "
                "handler loads no data after it, so the segment would silently end earlier; "
                "move handler.end_time forward or end the segment earlier"
            )


def _warn_about_look_ahead(cfg: Mapping[str, Any]) -> None:
    """Processors fitted on dates after the train segment see validation or test data; a test
    segment before the train segment is scored by a model that learned from its future."""
    fit_end = cfg["handler"].get("fit_end_time")
    train_start, train_end = cfg["dataset"]["segments"]["train"]
    test_start, test_end = cfg["dataset"]["segments"]["test"]
    if pd.Timestamp(test_end) < pd.Timestamp(train_start):
        warnings.warn(
            f"the test segment ({test_start}..{test_end}) ends before the train segment starts "
            f"({train_start}): the model learns from data after the days it is scored on, a "
            "look-ahead that flatters the test metrics; put the test segment after train and "
            "valid",
            stacklevel=3,
        )
    if pd.Timestamp(train_start) > pd.Timestamp(train_end):
        return  # a reversed segment: its own error follows
    if fit_end is not None and pd.Timestamp(fit_end) > pd.Timestamp(train_end):
        warnings.warn(
            f"handler.fit_end_time {fit_end} is after the train segment's end {train_end}: the "
            "normalising processors are fitted on later (validation/test) data, a look-ahead "
            "that flatters the test metrics; set fit_end_time to the train end",
            stacklevel=3,
        )


def check_dataset(dataset: Dataset) -> None:
    """Before any training: every segment has rows in the data it is read from, the training
    data holds no inf, and the test segment has several instruments per day (IC needs them)."""
    from qjax.data.alpha360 import Alpha360GatherDataset

    if isinstance(dataset, Alpha360GatherDataset):  # no frames: its inputs are checked on fit
        dataset.check_segments()
        return
    if isinstance(dataset, TSDataset):
        dataset.check_step_len()
    check_storage_range(dataset)
    test = None
    for name in dataset.segments:
        if name == "test":  # predicted from the inference data, scored on the raw labels
            test = Dataset._prepare_one(dataset, name, "feature", "infer")
        else:
            Dataset._prepare_one(dataset, name, "label", "learn")
    reject_infinite(dataset, [n for n in dataset.segments if n != "test"])
    if test is not None and int(test.groupby(level="datetime").size().max()) < 2:
        warnings.warn(
            "the test segment has one instrument per day, so its daily IC (a correlation across "
            "instruments) is undefined; IC, ICIR, Rank IC and Rank ICIR will be null. Use a "
            "universe of several instruments",
            stacklevel=3,
        )


def check_storage_range(dataset: Dataset) -> None:
    """A compact ``storage_dtype`` that cannot hold some feature (float16 beyond 65504) is
    refused here, before the run directory is touched, rather than when the samples are built."""
    if dataset.storage_dtype == "float32":
        return
    from qjax.data.storage import check_range

    for data_key in ("learn", "infer"):
        frame = dataset.handler.fetch(slice(None, None), col_set="feature", data_key=data_key)
        check_range(frame.to_numpy(), dataset.storage_dtype, dataset.feature_names(data_key))


def _diagnosed(err: TrainingDiverged, dataset: Dataset) -> TrainingDiverged:
    """The engine's error with the dataset's NaN/inf columns named."""
    if not hasattr(dataset.handler, "fetch"):  # an Alpha360GatherDataset: no frames to report
        return err
    found = nonfinite_report(dataset, [n for n in dataset.segments if n != "test"])
    head = str(err).split(" NaN or inf in the features")[0]
    if found:
        cause = (
            f"{head} The training data holds non-finite values:\n  "
            + found.replace("\n", "\n  ")
            + "\nAdd a Fillna processor for NaN features (e.g. infer_processors: "
            "- {class: Fillna, kwargs: {fields_group: feature}}), or clean the data."
        )
    else:
        cause = (
            f"{head} The data holds no NaN/inf features, so the optimisation diverged: lower lr."
        )
    return TrainingDiverged(cause + " The last good checkpoint is kept.", epoch=err.epoch)


def _json_safe(value: Any) -> Any:
    """NaN/inf become null (JSON has no NaN); containers are copied."""
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    if isinstance(value, (float, np.floating)):
        return float(value) if np.isfinite(value) else None
    if isinstance(value, np.integer):
        return int(value)
    return value


def _model_kwargs(cfg: Mapping[str, Any]) -> dict:
    """The model's keyword arguments with config shorthands resolved to data."""
    kwargs = dict(cfg["model"]["kwargs"])
    if kwargs.get("stock2concept") == "generated":
        data_cfg = cfg["data"]
        if data_cfg.get("source", "generated") != "generated":
            raise run_config.ConfigError(
                "stock2concept: generated needs data.source generated; for Qlib data pass the "
                "paths of qlib_csi300_stock2concept.npy and stock_index"
            )
        from qjax.data.market import generate_concepts

        kwargs["stock2concept"] = generate_concepts(
            **{k: data_cfg[k] for k in ("n_instruments", "seed") if k in data_cfg}
        )
    return kwargs


def _summarise(per_seed: dict[str, dict[str, float]]) -> dict[str, Any]:
    """Mean (and std over seeds, Qlib's benchmark convention) of each metric."""
    frame = pd.DataFrame(per_seed).T
    out = {name: float(frame[name].mean()) for name in frame.columns}
    if len(frame) > 1:
        out.update({f"{name} std": float(frame[name].std()) for name in frame.columns})
    return out


def _compile_seconds(model) -> float:
    """Compile seconds of the fit, a pre-training stage (TabNet) included."""
    stages = [model.result, getattr(model, "pretrain_result", None)]
    return sum(stage.compile_seconds for stage in stages if stage is not None)


LONG_SHORT_METRICS = (
    "Long-Short Ann Return",
    "Long-Short Ann Sharpe",
    "Long-Avg Ann Return",
    "Long-Avg Ann Sharpe",
)


def format_table(metrics: Mapping[str, Any]) -> str:
    """The short table ``qjax train`` prints."""
    test = metrics["test"]
    rows = [("model", metrics["model"])]
    for name in ("IC", "ICIR", "Rank IC", "Rank ICIR", *LONG_SHORT_METRICS):
        if name not in test:  # long-short metrics only with signal_analysis.ana_long_short
            continue
        value = _number(test[name])
        if test.get(f"{name} std") is not None:
            value += f" ± {test[f'{name} std']:.4f}"
        rows.append((f"test {name}", value))
    rows += [
        ("best epoch", ", ".join(_number(e) for e in metrics["best_epoch_1based"])),
        ("epochs run", str(metrics["epochs_run"])),
        (
            "fit seconds",
            f"{metrics['seconds']['fit']:.1f}"
            + (
                f" (compiling {metrics['seconds']['compile']:.1f})"
                if "compile" in metrics["seconds"]
                else ""
            ),
        ),
        ("test samples", str(metrics["samples"]["test"])),
    ]
    width = max(len(k) for k, _ in rows)
    line = "-" * (width + 3 + max(len(str(v)) for _, v in rows))
    return "\n".join([line] + [f"{k:<{width}} | {v}" for k, v in rows] + [line])


def _number(value: Any) -> str:
    if value is None:
        return "n/a"
    return str(value) if isinstance(value, int) else f"{value:.4f}"
