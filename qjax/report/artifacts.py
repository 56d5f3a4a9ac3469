"""A finished run's files, read back for the report (``qjax report RUN_DIR``).

``qjax train`` writes two files for the report next to its usual outputs: ``labels.parquet``
(the test segment's raw label, indexed like the predictions) and ``evals.json`` (the per-epoch
train/valid scores). Runs written before them still get the figures their files allow.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

LABELS_FILE = "labels.parquet"
EVALS_FILE = "evals.json"


@dataclass(frozen=True)
class RunArtifacts:
    """What the report draws from. ``scores`` has one column per seed."""

    name: str
    config: Mapping[str, Any]
    metrics: Mapping[str, Any]
    scores: pd.DataFrame
    label: pd.Series | None = None
    evals: Mapping[str, np.ndarray] = field(default_factory=dict)  # name -> [epochs, seeds]
    portfolio: pd.DataFrame | None = None  # backtest/report.csv (Qlib's report_normal)
    benchmark: str | None = None
    notes: tuple[str, ...] = ()

    @property
    def seeds(self) -> list[str]:
        return [str(c) for c in self.scores.columns]

    @property
    def best_epochs(self) -> list[int | None]:
        """Per seed, numbered from 1 (None: no valid score); older runs stored them from 0."""
        if "best_epoch_1based" in self.metrics:
            return list(self.metrics["best_epoch_1based"] or [])
        return [e + 1 for e in self.metrics.get("best_epoch") or []]


def save_report_inputs(out_dir: str | Path, evals: Mapping[str, Any], label: pd.Series) -> None:
    """Write the two files the report needs beyond a run's other outputs."""
    out = Path(out_dir)
    label.rename("label").to_frame().to_parquet(out / LABELS_FILE)
    # A seed that stopped early reads NaN afterwards; JSON has no NaN, so it is stored as null.
    payload = {
        k: np.where(np.isfinite(a := np.asarray(v, dtype=float)), a, None).tolist()
        for k, v in evals.items()
    }
    (out / EVALS_FILE).write_text(json.dumps(payload, allow_nan=False) + "\n")


REWRITE = (
    "run the same `qjax train` command again to rewrite the run's outputs (its "
    "checkpoints are reused, nothing is retrained)"
)


class DamagedRunFileError(ValueError):
    """A run file that exists but cannot be read (edited, truncated, of another kind)."""


def _read(path: Path, reader, kind: type | None = None, fix: str = REWRITE):
    """``reader(path)``, or :class:`DamagedRunFileError` naming the file, the cause and ``fix``."""
    try:
        value = reader(path)
    except Exception as err:  # json, YAML, pandas and arrow each raise their own kinds
        raise DamagedRunFileError(
            f"{path} cannot be read ({type(err).__name__}: {' '.join(str(err).split())}); {fix}"
        ) from err
    if kind is not None and not isinstance(value, kind):
        raise DamagedRunFileError(
            f"{path} holds a {type(value).__name__}, not a {kind.__name__}; {fix}"
        )
    return value


def _json(path: Path) -> Any:
    return json.loads(path.read_text())


def load_run(run_dir: str | Path) -> RunArtifacts:
    """Read a run directory. Raises FileNotFoundError naming a missing file, and
    :class:`DamagedRunFileError` naming one that cannot be read, with the fix; an unreadable
    optional file (config, labels, per-epoch scores) only leaves its part out, with a note."""
    from qjax import run_config

    run = Path(run_dir)
    if not run.is_dir():
        raise FileNotFoundError(
            f"{run} is not a directory; pass the --out directory of a finished `qjax train` run"
        )
    for name in ("config.yaml", "metrics.json", "predictions.parquet"):
        if not (run / name).exists():
            raise FileNotFoundError(
                f"{run / name} is missing: {run} is not a finished run "
                "(run `qjax train` to completion first)"
            )
    notes = []

    def optional(path: Path, reader, kind: type, what: str):
        try:
            return _read(path, reader, kind)
        except DamagedRunFileError as err:
            notes.append(f"{what} left out: {err}")
            return None

    cfg = (
        optional(
            run / "config.yaml",
            lambda p: run_config.parse_yaml(p.read_text()),
            dict,
            "the configuration in the title",
        )
        or {}
    )
    metrics = _read(run / "metrics.json", _json, dict)
    scores = _read(run / "predictions.parquet", pd.read_parquet, pd.DataFrame)
    label = None
    if (run / LABELS_FILE).exists():
        frame = optional(
            run / LABELS_FILE, pd.read_parquet, pd.DataFrame, "IC and quantile-group figures"
        )
        label = None if frame is None else frame.iloc[:, 0]
    else:
        notes.append(
            f"no {LABELS_FILE} (a run from an older qjax): IC and quantile-group "
            "figures are left out"
        )
    evals = {}
    if (run / EVALS_FILE).exists():
        stored = optional(run / EVALS_FILE, _json, dict, "learning curves") or {}
        for key, values in stored.items():
            arr = np.asarray(values, dtype=float)
            evals[key] = arr[:, None] if arr.ndim == 1 else arr
    portfolio, benchmark = None, None
    if (run / "backtest" / "report.csv").exists():
        portfolio = _read(
            run / "backtest" / "report.csv", lambda p: pd.read_csv(p, index_col=0, parse_dates=True)
        )
        info = run / "backtest" / "port_analysis.json"
        if info.exists():
            benchmark = (_read(info, _json, dict)).get("benchmark")
    return RunArtifacts(
        name=run.resolve().name,
        config=cfg,
        metrics=metrics,
        scores=scores,
        label=label,
        evals=evals,
        portfolio=portfolio,
        benchmark=benchmark,
        notes=tuple(notes),
    )


def describe(run: RunArtifacts) -> tuple[str, str]:
    """The report's title and subtitle: config, model and handler; universe, dates, seeds."""
    cfg = run.config
    model = cfg.get("model", {}).get("name", run.metrics.get("model", "?"))
    handler = cfg.get("handler", {}).get("name", "")
    data = cfg.get("data", {})
    source = data.get("source", "generated")
    if source == "qlib":
        universe = f"{data.get('instruments', 'csi300')} (Qlib data)"
    elif source == "generated":
        universe = f"generated market, {data.get('n_instruments', '?')} instruments"
    else:
        universe = f"{Path(str(data.get('path', source))).name}"
    segments = cfg.get("dataset", {}).get("segments", {})
    dates = "; ".join(
        f"{k} {_day(v[0])} – {_day(v[1])}"
        for k, v in segments.items()
        if isinstance(v, (list, tuple)) and len(v) == 2
    )
    seeds = cfg.get("train", {}).get("seeds") or [
        cfg.get("model", {}).get("kwargs", {}).get("seed", 0)
    ]
    seed_text = f"seed {seeds[0]}" if len(seeds) == 1 else f"{len(seeds)} seeds {seeds}"
    title = f"{run.name}: {model} on {handler}" if handler else f"{run.name}: {model}"
    return title, f"{universe} · {dates} · {seed_text}"


def _day(value: Any) -> str:
    return pd.Timestamp(str(value)).strftime("%Y-%m-%d")
