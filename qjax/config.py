"""Run configurations as data: YAML files, ``--set key=value`` overrides, validation.

A run configuration has five sections::

    data:     where the market comes from (source: generated | qlib | csv | parquet | dataframe)
    handler:  features (Alpha360 | Alpha158), time range, processors
    dataset:  Dataset or TSDataset (step_len), named segments
    model:    the registry name and the Qlib wrapper's keyword arguments
    train:    optional: seeds (multi-seed training), resume behaviour
    backtest: optional: Qlib's port_analysis_config (strategy, backtest) run on the test scores
"""

from __future__ import annotations

import copy
import datetime as _dt
import re
from pathlib import Path
from typing import Any, Mapping

import yaml

SECTIONS = ("data", "handler", "dataset", "model", "train", "backtest")
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
    return yaml.load(text, Loader=_Loader)


class ConfigError(ValueError):
    """A run configuration that cannot be used; the message says what to change."""


def load(path: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> dict:
    """Read a YAML config, apply ``key.sub=value`` overrides, validate and return it."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {str(path)!r} does not exist; see configs/ for examples")
    try:
        cfg = parse_yaml(path.read_text())
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
        raise ConfigError(f"override {item!r} must look like section.key=value, e.g. model.kwargs.lr=1e-3")
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
        raise ConfigError(f"unknown config section(s) {unknown}; allowed: {', '.join(SECTIONS)}")
    for name in REQUIRED:
        if not isinstance(cfg.get(name), dict):
            raise ConfigError(f"config needs a {name!r} section (a mapping); see configs/lstm_alpha360.yaml")
    cfg.setdefault("train", {})

    source = cfg["data"].get("source", "generated")
    if source not in SOURCES:
        raise ConfigError(f"data.source must be one of {', '.join(SOURCES)}, got {source!r}")
    if source == "qlib" and not cfg["data"].get("provider_uri"):
        raise ConfigError("data.source 'qlib' needs data.provider_uri (a Qlib data directory)")
    if source in ("csv", "parquet") and not cfg["data"].get("path"):
        raise ConfigError(f"data.source {source!r} needs data.path (the {source} file)")

    if cfg["handler"].get("name") not in ("Alpha360", "Alpha158"):
        raise ConfigError(f"handler.name must be Alpha360 or Alpha158, got {cfg['handler'].get('name')!r}")

    dataset = cfg["dataset"]
    if dataset.get("class", "Dataset") not in ("Dataset", "TSDataset"):
        raise ConfigError(f"dataset.class must be Dataset or TSDataset, got {dataset.get('class')!r}")
    segments = dataset.get("segments")
    if not isinstance(segments, dict) or "train" not in segments:
        raise ConfigError("dataset.segments must map names to [start, end]; a 'train' segment is required")
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
    seeds = cfg["train"].get("seeds")
    if seeds is not None and (not isinstance(seeds, list) or not all(isinstance(s, int) for s in seeds)):
        raise ConfigError(f"train.seeds must be a list of integers, got {seeds!r}")
    if "backtest" in cfg:
        from qjax.backtest.record import check_section

        try:
            cfg["backtest"] = check_section(cfg["backtest"])
        except (ValueError, TypeError) as err:
            raise ConfigError(f"backtest: {err}") from err
    return cfg


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
