"""Qlib workflow YAMLs (what ``qrun`` reads), unchanged, translated into a qjax run config.

``qjax run workflow_config_lstm_Alpha360.yaml`` reads Qlib's file, maps each part onto the
sections of :mod:`qjax.run_config` and runs :func:`qjax.workflow.train`::

    qlib_init.provider_uri, region       -> data: {source: qlib, provider_uri}  (region: cn)
    task.dataset.kwargs.handler          -> handler (Alpha360 | Alpha158, times, processors)
      handler kwargs.instruments         -> data.instruments
    task.dataset (DatasetH | TSDatasetH) -> dataset (Dataset | TSDataset, segments, step_len)
    task.model (class + module_path)     -> model: {name, kwargs as Qlib passes them}
    task.record: SignalRecord            -> predictions.parquet
                 SigAnaRecord            -> metrics.json (IC, ICIR, Rank IC, Rank ICIR;
                                            ana_long_short, ann_scaler -> signal_analysis)
                 PortAnaRecord(config)   -> backtest (Qlib's port_analysis_config unchanged)

``market``, ``benchmark``, ``data_handler_config`` and ``port_analysis_config`` at the top level
only hold YAML anchors (Qlib's qrun reads them through aliases only), so they are accepted.
Every other key must be one qjax implements: an unknown one is an error naming it, never
silently dropped. Numbers such as ``1e-3`` read as floats, as Qlib's YAML 1.2 reader does.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml

from qjax import run_config
from qjax.run_config import ConfigError

# Qlib wrapper class -> (qjax model name, flat module, window module or None).
MODEL_CLASSES: dict[str, tuple[str, str, str | None]] = {
    "DNNModelPytorch": ("mlp", "qlib.contrib.model.pytorch_nn", None),
    "LSTM": ("lstm", "qlib.contrib.model.pytorch_lstm", "qlib.contrib.model.pytorch_lstm_ts"),
    "GRU": ("gru", "qlib.contrib.model.pytorch_gru", "qlib.contrib.model.pytorch_gru_ts"),
    "ALSTM": ("alstm", "qlib.contrib.model.pytorch_alstm", "qlib.contrib.model.pytorch_alstm_ts"),
    "TransformerModel": (
        "transformer",
        "qlib.contrib.model.pytorch_transformer",
        "qlib.contrib.model.pytorch_transformer_ts",
    ),
    "LocalformerModel": (
        "localformer",
        "qlib.contrib.model.pytorch_localformer",
        "qlib.contrib.model.pytorch_localformer_ts",
    ),
    "GATs": ("gats", "qlib.contrib.model.pytorch_gats", "qlib.contrib.model.pytorch_gats_ts"),
    "TabnetModel": ("tabnet", "qlib.contrib.model.pytorch_tabnet", None),
    "KRNN": ("krnn", "qlib.contrib.model.pytorch_krnn", None),
    "SFM": ("sfm", "qlib.contrib.model.pytorch_sfm", None),
    "HIST": ("hist", "qlib.contrib.model.pytorch_hist", None),
    "TCN": ("tcn", "qlib.contrib.model.pytorch_tcn", "qlib.contrib.model.pytorch_tcn_ts"),
    # Qlib's GeneralPTNN takes either dataset (the network decides).
    "GeneralPTNN": (
        "general",
        "qlib.contrib.model.pytorch_general_nn",
        "qlib.contrib.model.pytorch_general_nn",
    ),
}
DATASET_CLASSES = {"DatasetH": "Dataset", "TSDatasetH": "TSDataset"}
HANDLER_MODULE = "qlib.contrib.data.handler"
DATASET_MODULE = "qlib.data.dataset"
RECORD_MODULE = "qlib.workflow.record_temp"
TOP_LEVEL = (
    "qlib_init",
    "task",
    "market",
    "benchmark",
    "data_handler_config",
    "port_analysis_config",
)
QLIB_INIT_KEYS = ("provider_uri", "region")
HANDLER_KEYS = ("instruments", *run_config.HANDLER_SETTINGS, "label", "freq")
# Qlib's handler defaults (qlib.contrib.data.handler) where a YAML leaves a key out.
DEFAULT_LEARN = [
    {"class": "DropnaLabel"},
    {"class": "CSZScoreNorm", "kwargs": {"fields_group": "label"}},
]
DEFAULT_INFER = {
    "Alpha360": [{"class": "ProcessInf"}, {"class": "ZScoreNorm"}, {"class": "Fillna"}],
    "Alpha158": [],
}
DEFAULT_INSTRUMENTS = "csi500"
# The label qjax computes; Qlib's YAMLs spell it with spaces.
LABEL = "Ref($close,-2)/Ref($close,-1)-1"
# Paths in model kwargs that Qlib opens at fit time; checked before any data is read.
MODEL_FILES = ("model_path", "stock2concept", "stock_index", "pretrain_file")


def is_qlib_workflow(cfg: Any) -> bool:
    """True for a mapping shaped like Qlib's workflow files (a ``task`` section)."""
    return isinstance(cfg, Mapping) and "task" in cfg and "model" not in cfg


def read(path: str | Path, overrides: Sequence[str] = ()) -> dict:
    """Qlib's workflow file as a dict, with ``key.sub=value`` overrides applied.

    Overrides address Qlib's own keys (``task.model.kwargs.n_epochs=1``,
    ``qlib_init.provider_uri=DIR``). A YAML alias is the anchored object itself, so an override
    of an anchor (``data_handler_config.start_time=...``) reaches every place that uses it, as
    editing the anchor in the file would.
    """
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"workflow file {str(path)!r} does not exist")
    try:
        raw = run_config.parse_yaml(path.read_text())
    except yaml.YAMLError as err:
        raise ConfigError(f"{path} is not valid YAML: {err}") from err
    if not is_qlib_workflow(raw):
        raise ConfigError(f"{path} is not a Qlib workflow file (it has no 'task' section)")
    for item in overrides:
        run_config.apply_override(raw, item)
    return raw


def load(path: str | Path, overrides: Sequence[str] = ()) -> dict:
    """Read Qlib's workflow file and return the validated qjax run config it means."""
    return translate(read(path, overrides))


def load_any(path: str | Path, overrides: Sequence[str] = ()) -> dict:
    """A validated qjax run config from a qjax config or a Qlib workflow file (detected)."""
    path = Path(path)
    if path.is_file():
        try:
            raw = run_config.parse_yaml(run_config.read_config_text(path))
        except yaml.YAMLError:
            raw = None  # run_config.load reports it
        if is_qlib_workflow(raw):
            return load(path, overrides)
    return run_config.load(path, overrides)


def translate(workflow: Mapping[str, Any]) -> dict:
    """Map a Qlib workflow dict onto a validated qjax run config (see the module docstring)."""
    workflow = copy.deepcopy(dict(workflow))
    _no_unknown(workflow, TOP_LEVEL, "the workflow's top level")
    task = _mapping(workflow.get("task"), "task")
    _no_unknown(task, ("model", "dataset", "record"), "task")
    for name in ("model", "dataset"):
        if name not in task:
            raise ConfigError(f"task needs a {name!r} section, as Qlib's qrun does")

    dataset_cfg, handler_name, handler_kwargs = _dataset(task["dataset"])
    is_ts = dataset_cfg["class"] == "TSDataset"
    model = _model(task["model"], is_ts)
    cfg = {
        "data": _data(workflow.get("qlib_init"), handler_kwargs),
        "handler": _handler(handler_name, handler_kwargs),
        "dataset": dataset_cfg,
        "model": model,
        "train": {},
    }
    backtest, analysis = _records(task.get("record"))
    if backtest is not None:
        cfg["backtest"] = backtest
    if analysis is not None:
        cfg["signal_analysis"] = analysis
    try:
        cfg = run_config.validate(cfg)
    except ConfigError as err:
        raise ConfigError(f"the translated workflow is not valid: {err}") from err
    _check_model_kwargs(cfg["model"])
    _check_processors(cfg["handler"])
    return cfg


def _data(qlib_init: Any, handler_kwargs: Mapping[str, Any]) -> dict:
    init = _mapping(qlib_init, "qlib_init")
    _no_unknown(init, QLIB_INIT_KEYS, "qlib_init")
    uri = init.get("provider_uri")
    if not isinstance(uri, (str, Path)):
        raise ConfigError(f"qlib_init.provider_uri must be one Qlib data directory, got {uri!r}")
    region = init.get("region", "cn")
    if region != "cn":
        raise ConfigError(
            f"qlib_init.region {region!r} is not supported; qjax's backtest follows Qlib's cn "
            "region rules (trade unit 100, limit threshold 0.095)"
        )
    root = Path(uri).expanduser()
    if not (root / "calendars" / "day.txt").is_file():
        raise ConfigError(
            f"qlib_init.provider_uri {str(uri)!r}: no Qlib daily data at {root} "
            "(calendars/day.txt missing); download it with Qlib's "
            "`python -m qlib.run.get_data qlib_data --target_dir DIR --region cn` or point at "
            "your data with --set qlib_init.provider_uri=DIR"
        )
    instruments = handler_kwargs.get("instruments", DEFAULT_INSTRUMENTS)
    if not isinstance(instruments, (str, list)):
        raise ConfigError(
            "handler kwargs.instruments must be a market name (csi300) or a list of codes, "
            f"got {instruments!r}"
        )
    return {"source": "qlib", "provider_uri": str(root), "instruments": instruments}


def _dataset(section: Any) -> tuple[dict, str, dict]:
    section = _mapping(section, "task.dataset")
    _no_unknown(section, ("class", "module_path", "kwargs"), "task.dataset")
    cls, _ = _class_name(section, "task.dataset", DATASET_MODULE)
    if cls not in DATASET_CLASSES:
        raise ConfigError(
            f"task.dataset.class {cls!r} is not supported; supported: {sorted(DATASET_CLASSES)}"
        )
    kwargs = _mapping(section.get("kwargs"), "task.dataset.kwargs")
    allowed = ("handler", "segments") + (("step_len",) if cls == "TSDatasetH" else ())
    _no_unknown(kwargs, allowed, f"task.dataset.kwargs ({cls})")
    if "segments" not in kwargs:
        raise ConfigError("task.dataset.kwargs needs segments (train, valid, test)")
    out = {"class": DATASET_CLASSES[cls], "segments": dict(kwargs["segments"])}
    if cls == "TSDatasetH":
        out["step_len"] = kwargs.get("step_len", 30)  # Qlib's TSDatasetH default
    handler = _mapping(kwargs.get("handler"), "task.dataset.kwargs.handler")
    _no_unknown(handler, ("class", "module_path", "kwargs"), "task.dataset.kwargs.handler")
    name, _ = _class_name(handler, "task.dataset.kwargs.handler", HANDLER_MODULE)
    if name not in DEFAULT_INFER:
        raise ConfigError(
            f"handler class {name!r} is not supported; supported: {sorted(DEFAULT_INFER)}"
        )
    handler_kwargs = _mapping(handler.get("kwargs") or {}, "handler kwargs")
    _no_unknown(handler_kwargs, HANDLER_KEYS, f"the {name} handler's kwargs")
    return out, name, handler_kwargs


def _handler(name: str, kwargs: Mapping[str, Any]) -> dict:
    if kwargs.get("freq", "day") != "day":
        raise ConfigError(f"handler freq {kwargs['freq']!r} is not supported; only 'day'")
    if "label" in kwargs and not _is_default_label(kwargs["label"]):
        raise ConfigError(
            f"handler label {kwargs['label']!r} is not supported; qjax computes Qlib's default "
            "label Ref($close, -2) / Ref($close, -1) - 1 (remove the key or use that expression)"
        )
    out: dict[str, Any] = {"name": name}
    for key in ("start_time", "end_time", "fit_start_time", "fit_end_time", "process_type"):
        if kwargs.get(key) is not None:
            out[key] = kwargs[key]
    out["infer_processors"] = list(kwargs.get("infer_processors", DEFAULT_INFER[name]))
    out["learn_processors"] = list(kwargs.get("learn_processors", DEFAULT_LEARN))
    return out


def _is_default_label(label: Any) -> bool:
    # Qlib accepts ["expr", ...] or (["expr", ...], ["NAME", ...]).
    if isinstance(label, (list, tuple)) and len(label) == 2 and isinstance(label[0], list):
        label = label[0]
    if isinstance(label, str):
        label = [label]
    return (
        isinstance(label, (list, tuple))
        and len(label) == 1
        and isinstance(label[0], str)
        and re.sub(r"\s+", "", label[0]) == LABEL
    )


def _model(section: Any, is_ts: bool) -> dict:
    section = _mapping(section, "task.model")
    _no_unknown(section, ("class", "module_path", "kwargs"), "task.model")
    cls, path = _class_name(section, "task.model", None)
    supported = ", ".join(f"{c} ({m})" for c, (_, m, _t) in MODEL_CLASSES.items())
    if cls not in MODEL_CLASSES:
        raise ConfigError(f"task.model.class {cls!r} is not supported; supported: {supported}")
    name, flat_module, ts_module = MODEL_CLASSES[cls]
    module = path or (ts_module if is_ts and ts_module else flat_module)
    if module not in (flat_module, ts_module):
        modules = " or ".join(m for m in (flat_module, ts_module) if m)
        raise ConfigError(
            f"task.model: {cls} from {module!r} is not supported; use module_path {modules}"
        )
    if is_ts and module != ts_module:
        hint = f"; use module_path {ts_module}" if ts_module else ""
        raise ConfigError(
            f"task.model: {module}.{cls} takes DatasetH but task.dataset is TSDatasetH{hint}"
        )
    if not is_ts and module != flat_module:
        raise ConfigError(
            f"task.model: {module}.{cls} takes TSDatasetH but task.dataset is DatasetH; use "
            f"module_path {flat_module}"
        )
    kwargs = dict(_mapping(section.get("kwargs") or {}, "task.model.kwargs"))
    return {"name": name, "kwargs": kwargs}


def _check_model_kwargs(model: Mapping[str, Any]) -> None:
    """Unknown keywords and missing files, before any data is read."""
    from qjax.estimators import estimator

    try:
        estimator(model["name"], **model["kwargs"])
    except (TypeError, KeyError) as err:
        raise ConfigError(f"task.model.kwargs: {err}") from err
    for key in MODEL_FILES:
        value = model["kwargs"].get(key)
        if isinstance(value, str) and value != "generated" and not Path(value).is_file():
            raise ConfigError(
                f"task.model.kwargs.{key}: file {value!r} does not exist (relative paths are "
                f"read from the current directory, as Qlib does); give its path with "
                f"--set task.model.kwargs.{key}=PATH"
                + (" or drop it with =null" if key in ("model_path", "pretrain_file") else "")
            )


def _check_processors(handler: Mapping[str, Any]) -> None:
    from qjax.data.processors import build_processor

    for group in ("infer_processors", "learn_processors"):
        for spec in handler[group]:
            try:
                build_processor(spec, handler.get("fit_start_time"), handler.get("fit_end_time"))
            except (TypeError, ValueError, KeyError) as err:
                raise ConfigError(f"handler kwargs.{group}: {err}") from err


def _records(records: Any) -> tuple[dict | None, dict | None]:
    """Check ``task.record``; return PortAnaRecord's config (the backtest section) and
    SigAnaRecord's long-short settings (the signal_analysis section), each or None."""
    if records is None:
        return None, None
    if isinstance(records, Mapping):
        records = [records]
    if not isinstance(records, list):
        raise ConfigError("task.record must be a list of records (SignalRecord, ...)")
    backtest = analysis = None
    for k, record in enumerate(records):
        where = f"task.record[{k}]"
        record = _mapping(record, where)
        _no_unknown(record, ("class", "module_path", "kwargs"), where)
        cls, _ = _class_name(record, where, RECORD_MODULE)
        kwargs = _mapping(record.get("kwargs") or {}, f"{where}.kwargs")
        if cls == "SignalRecord":
            _no_unknown(kwargs, ("model", "dataset"), f"{where} (SignalRecord) kwargs")
        elif cls == "SigAnaRecord":
            _no_unknown(
                kwargs,
                ("ana_long_short", "ann_scaler", "label_col"),
                f"{where} (SigAnaRecord) kwargs",
            )
            if kwargs.get("ana_long_short", False):
                analysis = {"ana_long_short": True, "ann_scaler": kwargs.get("ann_scaler", 252)}
            if kwargs.get("label_col", 0) != 0:
                raise ConfigError(f"{where}: SigAnaRecord label_col must be 0 (one label)")
        elif cls == "PortAnaRecord":
            _no_unknown(kwargs, ("config",), f"{where} (PortAnaRecord) kwargs")
            backtest = _mapping(kwargs.get("config"), f"{where}.kwargs.config")
        else:
            raise ConfigError(
                f"{where}: record class {cls!r} is not supported; supported: "
                "SignalRecord, SigAnaRecord, PortAnaRecord"
            )
    return backtest, analysis


def _class_name(
    section: Mapping[str, Any], where: str, module: str | None
) -> tuple[str, str | None]:
    """The class name and module path of a Qlib ``{class, module_path}`` section."""
    cls = section.get("class")
    if not isinstance(cls, str):
        raise ConfigError(f"{where} needs a 'class' (a Qlib class name)")
    if "." in cls:  # Qlib also accepts "module.Class" in 'class'
        path, cls = cls.rsplit(".", 1)
        section = {**section, "module_path": path}
    path = section.get("module_path")
    if (
        module is not None
        and path is not None
        and path != module
        and not (path.startswith(module + ".") or module.startswith(path + "."))
    ):
        raise ConfigError(f"{where}: {path}.{cls} is not supported; qjax implements {module}")
    return cls, path


def _mapping(value: Any, where: str) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        raise ConfigError(f"{where} must be a mapping, got {value!r}")
    return value


def _no_unknown(section: Mapping[str, Any], allowed: Sequence[str], where: str) -> None:
    unknown = sorted(set(section) - set(allowed))
    if unknown:
        raise ConfigError(
            f"{where}: key(s) {unknown} not implemented by qjax; supported: {list(allowed)}"
        )
