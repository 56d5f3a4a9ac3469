"""Experiment tracking: a finished run logged to MLflow, as Qlib's ``Recorder`` logs its runs.

``qjax train CONFIG --mlflow URI`` (or :func:`log_run` on any finished run directory) records
one MLflow run in the experiment named by ``--experiment`` (default: the config's name):

- **params**: the run config, flattened to dotted keys (``model.kwargs.lr``, ``train.seeds``);
- **metrics**: every per-epoch score of ``evals.json`` (``train_loss``, ``valid`` ...) with the
  epoch (from 1) as the step, one series per seed (``valid/seed_1``) when there are several;
  then the test metrics of ``metrics.json`` (IC, ICIR, Rank IC, Rank ICIR, their std over
  seeds, the long-short returns, the backtest's seven columns) as final values;
- **artifacts**: config.yaml, metrics.json, predictions.parquet, the report and the backtest.

``URI`` is any MLflow tracking URI: a local folder (``./mlruns``, Qlib's default store),
``sqlite:///mlflow.db`` or a tracking server. The run directory remembers the MLflow run it
was logged to (``mlflow_run.json``), so running the same command again does not log it twice.
Needs MLflow: ``pip install 'qjax[mlflow]'`` (pyqlib already brings it).
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from qjax.errors import ConfigError

LOGGED_FILE = "mlflow_run.json"
ARTIFACTS = ("config.yaml", "metrics.json", "predictions.parquet", "report.html", "evals.json")
ARTIFACT_DIRS = ("report", "backtest")
# MLflow's limits on one log_batch call and on a param value's length.
MAX_BATCH, MAX_PARAM_CHARS = 100, 6000


def tracking_uri(uri: str) -> str:
    """A local folder as a ``file:`` URI (MLflow needs it absolute); other URIs as given."""
    if "://" in uri or uri.startswith("file:"):
        return uri
    return Path(uri).expanduser().resolve().as_uri()


def flat_params(tree: Mapping[str, Any], prefix: str = "") -> Iterator[tuple[str, str]]:
    """``{"model": {"kwargs": {"lr": 1e-3}}}`` -> ``("model.kwargs.lr", "0.001")``."""
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping) and value:
            yield from flat_params(value, name + ".")
        else:
            yield name, str(value)[:MAX_PARAM_CHARS]


def final_metrics(metrics: Mapping[str, Any]) -> dict[str, float]:
    """The finite numbers among the run's test results, named as in metrics.json."""
    out = {}
    sections = {"test": "test", "seven_columns": ""}  # test holds the long-short returns too
    for section, prefix in sections.items():
        for name, value in (metrics.get(section) or {}).items():
            if isinstance(value, (int, float)) and math.isfinite(value):
                out[f"{prefix} {name}".strip() if prefix else name] = float(value)
    if isinstance(metrics.get("epochs_run"), int):
        out["epochs_run"] = float(metrics["epochs_run"])
    return out


def log_run(run_dir: str | Path, uri: str, experiment: str) -> str:
    """Log a finished run directory to MLflow; returns the MLflow run id (see the module doc)."""
    from mlflow.entities import Metric, Param
    from mlflow.tracking import MlflowClient

    from qjax.report.artifacts import load_run

    run_dir = Path(run_dir)
    run = load_run(run_dir)  # names what is missing in an unfinished run
    uri = tracking_uri(uri)
    logged = run_dir / LOGGED_FILE
    if logged.exists():
        previous = json.loads(logged.read_text())
        if previous.get("tracking_uri") == uri:
            return previous["run_id"]
    if uri.startswith("file:"):
        # MLflow 3 keeps its folder store only on request; it is what Qlib's Recorder writes.
        os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
    client = MlflowClient(tracking_uri=uri)
    found = client.get_experiment_by_name(experiment)
    experiment_id = found.experiment_id if found else client.create_experiment(experiment)
    mlflow_run = client.create_run(
        experiment_id, run_name=run_dir.name, tags={"qjax.run_dir": str(run_dir.resolve())}
    )
    run_id = mlflow_run.info.run_id

    params = [Param(k, v) for k, v in flat_params(run.config)]
    metrics = []
    for name, series in run.evals.items():  # [epochs, seeds]
        for seed_index, seed in enumerate(run.seeds):
            key = name if len(run.seeds) == 1 else f"{name}/{seed}"
            for epoch, value in enumerate(series[:, seed_index], start=1):
                if math.isfinite(float(value)):
                    metrics.append(Metric(key, float(value), 0, epoch))
    final_step = max((len(s) for s in run.evals.values()), default=0) + 1
    metrics += [Metric(k, v, 0, final_step) for k, v in final_metrics(run.metrics).items()]
    for start in range(0, len(params), MAX_BATCH):
        client.log_batch(run_id, params=params[start : start + MAX_BATCH])
    for start in range(0, len(metrics), MAX_BATCH * 10):
        client.log_batch(run_id, metrics=metrics[start : start + MAX_BATCH * 10])
    for name in ARTIFACTS:
        if (run_dir / name).is_file():
            client.log_artifact(run_id, str(run_dir / name))
    for name in ARTIFACT_DIRS:
        if (run_dir / name).is_dir():
            client.log_artifacts(run_id, str(run_dir / name), artifact_path=name)
    client.set_terminated(run_id)
    logged.write_text(
        json.dumps({"tracking_uri": uri, "run_id": run_id, "experiment": experiment}, indent=2)
    )
    return run_id


def check_available() -> None:
    """Fail before training when ``--mlflow`` is asked for without MLflow installed."""
    try:
        import mlflow  # noqa: F401
    except ImportError:
        raise ConfigError("--mlflow needs MLflow: pip install 'qjax[mlflow]'") from None
