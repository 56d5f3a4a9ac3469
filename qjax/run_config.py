"""Run configurations as data: YAML files, ``--set key=value`` overrides, validation.

A run configuration has five sections::

    data:     where the market comes from (source: generated | qlib | csv | parquet | dataframe)
    handler:  features (Alpha360 | Alpha158), time range, processors
    dataset:  Dataset or TSDataset (step_len), named segments, storage_dtype of the features
    model:    the registry name and the Qlib wrapper's keyword arguments
    train:    optional: seeds (multi-seed training), resume behaviour
    backtest: optional: Qlib's port_analysis_config (strategy, backtest) run on the test scores
    signal_analysis: optional: Qlib's SigAnaRecord settings (ana_long_short, ann_scaler)
"""

from __future__ import annotations

import copy
import datetime as _dt
import difflib
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

from qjax.errors import ConfigError

SECTIONS = ("data", "handler", "dataset", "model", "train", "backtest", "signal_analysis")
REQUIRED = ("data", "handler", "dataset", "model")
SOURCES = ("generated", "qlib", "csv", "parquet")


class _Loader(yaml.SafeLoader):
    """YAML 1.1 reads ``1e-3`` as a string; configs mean a float (as YAML 1.2 does)."""


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(
        r"""^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+]?[0-9]+)?
        |[-+]?(?:[0-9][0-9_]*)(?:[eE][-+]?[0-9]+)
        |\.[0-9_]+(?:[eE][-+][0-9]+)?
        |[-+]?\.(?:inf|Inf|INF)
        |\.(?:nan|NaN|NAN))$""",
        re.X,
    ),
    list("-+0123456789."),
)


def parse_yaml(text: str):
    try:
        return yaml.load(text, Loader=_Loader)
    except (ValueError, OverflowError) as err:  # YAML reads 2015-02-30 as a date, then fails
        raise yaml.constructor.ConstructorError(
            problem=f"{err}: a value that YAML reads as a date is not a valid date"
        ) from err


def read_config_text(path: Path) -> str:
    """The text of a config file; :class:`ConfigError` if it cannot be read as UTF-8 text."""
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as err:
        raise ConfigError(
            f"{path} is not a text file (byte {err.start} is not UTF-8); give a "
            "YAML config file, e.g. configs/lstm_alpha360.yaml"
        ) from err
    except OSError as err:
        raise ConfigError(
            f"cannot read the config file {path}: {err.strerror or err}; check its permissions"
        ) from err


# The keys each section reads. A key no code reads is an error (a typo would otherwise run
# silently with the default), and so is a key that only another data source reads.
DATA_KEYS = {
    "generated": ("n_instruments", "n_days", "start", "seed"),
    "qlib": ("provider_uri", "instruments"),
    "csv": ("path", "column_map", "date_col", "instrument_col"),
    "parquet": ("path", "column_map", "date_col", "instrument_col"),
}
# Keywords of Qlib's handlers that a qjax handler section takes as they are (qlib_workflow too).
HANDLER_SETTINGS = (
    "start_time",
    "end_time",
    "fit_start_time",
    "fit_end_time",
    "infer_processors",
    "learn_processors",
    "process_type",
)
# qjax's own: Alpha360 rows computed in the batch gather from the fields panel (qjax.data.alpha360)
HANDLER_KEYS = ("name", *HANDLER_SETTINGS, "compute_in_gather")
# storage_dtype: the device dtype of the feature matrix (qjax.data.storage)
DATASET_KEYS = ("class", "segments", "step_len", "storage_dtype")
MODEL_KEYS = ("name", "kwargs")
TRAIN_KEYS = ("seeds",)
SIGNAL_ANALYSIS_KEYS = ("ana_long_short", "ann_scaler")  # SigAnaRecord's keyword arguments
SEGMENT_NAMES = ("train", "valid", "test", "pretrain", "pretrain_validation")


def closest(name: str, candidates) -> str:
    """`` (did you mean 'x'?)`` for the candidate nearest to ``name``, or ''."""
    match = difflib.get_close_matches(str(name), [str(c) for c in candidates], n=1, cutoff=0.6)
    return f" (did you mean {match[0]!r}?)" if match else ""


def check_keys(where: str, mapping: Mapping, allowed, elsewhere: Mapping[str, str] = {}) -> None:
    """Raise for a key of ``mapping`` not in ``allowed``; ``elsewhere`` explains keys that
    belong to another setting (``{key: "is read only when ..."}``)."""
    for key in mapping:
        if key in allowed:
            continue
        if key in elsewhere:
            raise ConfigError(f"{where}.{key} {elsewhere[key]}; remove it")
        raise ConfigError(
            f"unknown key {where}.{key}{closest(key, [*allowed, *elsewhere])}; {where} accepts "
            f"{', '.join(sorted(allowed))}"
        )


def load(path: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> dict:
    """Read a YAML config, apply ``key.sub=value`` overrides, validate and return it."""
    path = Path(path)
    if path.is_dir():
        raise ConfigError(
            f"{str(path)!r} is a directory; give a YAML config file, e.g. "
            "configs/lstm_alpha360.yaml"
        )
    if not path.is_file():
        raise ConfigError(f"config file {str(path)!r} does not exist; see configs/ for examples")
    try:
        cfg = parse_yaml(read_config_text(path))
    except yaml.YAMLError as err:
        raise ConfigError(f"{path} is not valid YAML: {err}") from err
    if not isinstance(cfg, dict):
        raise ConfigError(f"{path} must hold a mapping with sections {', '.join(SECTIONS)}")
    for item in overrides:
        apply_override(cfg, item)
    return validate(cfg)


def apply_override(cfg: dict, item: str) -> None:
    """Set ``cfg[a][b] = value`` for ``"a.b=value"`` (value parsed as YAML: 1e-3, [1, 2], true)."""
    if "=" not in item:
        raise ConfigError(
            f"override {item!r} must look like section.key=value, e.g. model.kwargs.lr=1e-3"
        )
    key, raw = item.split("=", 1)
    parts = [p for p in key.strip().split(".") if p]
    if not parts:
        raise ConfigError(f"override {item!r} has an empty key")
    try:
        value = parse_yaml(raw)
    except yaml.YAMLError as err:
        raise ConfigError(f"override {item!r}: value is not valid YAML ({err})") from err
    node = cfg
    for part in parts[:-1]:
        child = node.get(part)
        if child is None:
            child = node[part] = {}
        if not isinstance(child, dict):
            raise ConfigError(f"override {item!r}: {part!r} is a value, not a section")
        node = child
    node[parts[-1]] = value


def validate(cfg: Mapping[str, Any]) -> dict:
    """Check the structure of a config and normalise dates to ISO strings."""
    cfg = copy.deepcopy(dict(cfg))
    unknown = sorted(set(cfg) - set(SECTIONS))
    if unknown:
        hint = closest(unknown[0], SECTIONS)
        raise ConfigError(
            f"unknown config section(s) {unknown}{hint}; allowed: {', '.join(SECTIONS)}"
        )
    for name in REQUIRED:
        if not isinstance(cfg.get(name), dict):
            raise ConfigError(
                f"config needs a {name!r} section (a mapping); see configs/lstm_alpha360.yaml"
            )
    if cfg.setdefault("train", {}) is None:
        cfg["train"] = {}
    if not isinstance(cfg["train"], dict):
        raise ConfigError("the 'train' section must be a mapping (e.g. train: {seeds: [0, 1]})")

    source = cfg["data"].get("source", "generated")
    if source not in SOURCES:
        raise ConfigError(
            f"data.source must be one of {', '.join(SOURCES)}, got {source!r}"
            f"{closest(source, SOURCES)}"
        )
    _check_data(cfg["data"], source)
    check_keys("handler", cfg["handler"], HANDLER_KEYS)
    check_keys("model", cfg["model"], MODEL_KEYS)
    check_keys("train", cfg["train"], TRAIN_KEYS)
    if source == "qlib" and not cfg["data"].get("provider_uri"):
        raise ConfigError("data.source 'qlib' needs data.provider_uri (a Qlib data directory)")
    if source in ("csv", "parquet") and not cfg["data"].get("path"):
        raise ConfigError(f"data.source {source!r} needs data.path (the {source} file)")

    if cfg["handler"].get("name") not in ("Alpha360", "Alpha158"):
        raise ConfigError(
            f"handler.name must be Alpha360 or Alpha158, got {cfg['handler'].get('name')!r}"
        )

    in_gather = cfg["handler"].get("compute_in_gather", False)
    if not isinstance(in_gather, bool):
        raise ConfigError(f"handler.compute_in_gather must be true or false, got {in_gather!r}")
    if in_gather and (
        cfg["handler"]["name"] != "Alpha360"
        or cfg["dataset"].get("class", "Dataset") != "Dataset"
        or cfg["handler"].get("process_type", "append") != "append"
    ):
        raise ConfigError(
            "handler.compute_in_gather computes Alpha360 rows for dataset.class Dataset "
            "(process_type append); remove it for other handlers or a TSDataset"
        )

    if cfg["handler"].get("process_type", "append") not in ("append", "independent"):
        raise ConfigError(
            f"handler.process_type must be append or independent, got "
            f"{cfg['handler']['process_type']!r}"
        )
    dataset = cfg["dataset"]
    if dataset.get("class", "Dataset") not in ("Dataset", "TSDataset"):
        raise ConfigError(
            f"dataset.class must be Dataset or TSDataset, got {dataset.get('class')!r}"
        )
    is_ts = dataset.get("class") == "TSDataset"
    check_keys(
        "dataset",
        dataset,
        DATASET_KEYS if is_ts else tuple(k for k in DATASET_KEYS if k != "step_len"),
        {"step_len": "is read only when dataset.class is TSDataset"},
    )
    if "step_len" in dataset:
        _positive_int(dataset["step_len"], "dataset.step_len")
    _check_storage_dtype(dataset.get("storage_dtype", "float32"), in_gather)
    segments = dataset.get("segments")
    if not isinstance(segments, dict) or "train" not in segments:
        raise ConfigError(
            "dataset.segments must map names to [start, end]; a 'train' segment is required"
        )
    for name in segments:
        if name not in SEGMENT_NAMES:  # a misspelt 'valid' would silently drop model selection
            raise ConfigError(
                f"unknown segment dataset.segments.{name}{closest(name, SEGMENT_NAMES)}; "
                f"segments are {', '.join(SEGMENT_NAMES)}"
            )
    for name, span in segments.items():
        if not isinstance(span, (list, tuple)) or len(span) != 2:
            raise ConfigError(f"dataset.segments.{name} must be [start, end], got {span!r}")
        segments[name] = [_iso(v, f"dataset.segments.{name}") for v in span]
    for key in ("start_time", "end_time", "fit_start_time", "fit_end_time"):
        if cfg["handler"].get(key) is not None:
            cfg["handler"][key] = _iso(cfg["handler"][key], f"handler.{key}")

    model = cfg["model"]
    if not isinstance(model.get("name"), str):
        raise ConfigError("model.name is required (e.g. lstm); `qjax models` lists the names")
    if not isinstance(model.setdefault("kwargs", {}), dict):
        raise ConfigError("model.kwargs must be a mapping of the Qlib wrapper's keyword arguments")
    if model["kwargs"].get("stream_batches") is not None and (is_ts or in_gather):
        other = "dataset.class TSDataset" if is_ts else "handler.compute_in_gather"
        raise ConfigError(
            f"model.kwargs.stream_batches streams the feature rows of a flat Dataset, but {other} "
            "builds its rows in the gather from tables that are already small; remove one of the two"
        )
    seeds = cfg["train"].get("seeds")
    if seeds is not None and (
        not isinstance(seeds, list)
        or not seeds
        or not all(isinstance(s, int) and not isinstance(s, bool) and s >= 0 for s in seeds)
    ):
        raise ConfigError(
            f"train.seeds must be a non-empty list of non-negative integers, got {seeds!r}"
        )
    if seeds is not None and len(set(seeds)) != len(seeds):
        raise ConfigError(f"train.seeds lists a seed twice ({seeds}); each seed trains one replica")
    if "signal_analysis" in cfg:
        _check_signal_analysis(cfg["signal_analysis"])
    if "backtest" in cfg:
        from qjax.backtest.record import check_section

        try:
            cfg["backtest"] = check_section(cfg["backtest"])
        except (ValueError, TypeError) as err:
            raise ConfigError(f"backtest: {err}") from err
    return cfg


def _check_storage_dtype(name: Any, in_gather: bool) -> None:
    from qjax.data.storage import STORAGE_DTYPES

    if name not in STORAGE_DTYPES:
        raise ConfigError(
            f"dataset.storage_dtype must be one of {', '.join(STORAGE_DTYPES)}, got {name!r}"
            f"{closest(name, STORAGE_DTYPES)}"
        )
    if in_gather and name != "float32":
        # The gather path stores six price/volume fields, not features: rounding the prices
        # before Alpha360's divisions would cost far more precision than rounding the features.
        raise ConfigError(
            f"dataset.storage_dtype {name!r} applies to stored feature matrices; "
            "handler.compute_in_gather stores the price/volume fields (already ~40x smaller) in "
            "float32; remove one of the two"
        )


def _check_signal_analysis(section: Any) -> None:
    if not isinstance(section, dict):
        raise ConfigError("signal_analysis must be a mapping, e.g. {ana_long_short: true}")
    check_keys("signal_analysis", section, SIGNAL_ANALYSIS_KEYS)
    if not isinstance(section.get("ana_long_short", False), bool):
        raise ConfigError(
            f"signal_analysis.ana_long_short must be true or false, got "
            f"{section['ana_long_short']!r}"
        )
    scaler = section.get("ann_scaler", 252)
    if isinstance(scaler, bool) or not isinstance(scaler, (int, float)) or not scaler > 0:
        raise ConfigError(
            f"signal_analysis.ann_scaler must be a positive number (periods per "
            f"year, 252 for daily data), got {scaler!r}"
        )


def _check_data(data: Mapping[str, Any], source: str) -> None:
    allowed = ("source", *DATA_KEYS[source])
    elsewhere = {
        key: f"is read only when data.source is {' or '.join(sources)} (it is {source!r})"
        for key, sources in _sources_by_key().items()
        if key not in allowed
    }
    check_keys("data", data, allowed, elsewhere)
    for key in ("n_instruments", "n_days"):
        if key in data:
            _positive_int(data[key], f"data.{key}")


def _sources_by_key() -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for source, keys in DATA_KEYS.items():
        for key in keys:
            out.setdefault(key, []).append(source)
    return out


def _positive_int(value: Any, where: str) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(f"{where} must be a positive integer, got {value!r}")


def _iso(value: Any, where: str) -> str:
    if isinstance(value, (_dt.date, _dt.datetime)):
        return value.strftime("%Y-%m-%d")
    try:
        import pandas as pd

        return pd.Timestamp(str(value)).strftime("%Y-%m-%d")
    except (ValueError, TypeError) as err:
        raise ConfigError(f"{where}: {value!r} is not a date (use YYYY-MM-DD)") from err


def dump(cfg: Mapping[str, Any], path: str | Path) -> None:
    Path(path).write_text(yaml.safe_dump(dict(cfg), sort_keys=False))
