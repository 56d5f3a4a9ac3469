"""What a finished run keeps so that new dates can be scored without refitting anything.

``qjax train`` ends by writing ``RUN_DIR/model/``::

    saved_run.json   format and qjax version, the resolved config, the estimator's seeds and
                     scores, each processor's settings (JSON)
    arrays/          Orbax: the best variables of every seed and the processors' fitted arrays
                     (RobustZScoreNorm's median and scale, ...), fitted on the train period

:func:`load` reads it back into a :class:`SavedRun` (``qjax.load(run_dir)``), whose
``predict(start, end)`` scores any dates of the data (:mod:`qjax.predict`). The directory is
written under a temporary name and renamed, so it is either complete or absent.
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import os
import shutil
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from qjax.errors import SavedRunError

FORMAT = "qjax-saved-run"
FORMAT_VERSION = 1  # bump when a change makes older readers misread the files
MODEL_DIR = "model"
META_FILE = "saved_run.json"
ARRAYS_DIR = "arrays"
STAGES = ("shared", "infer")  # the processors inference runs through, in order


def _qjax_version() -> str:
    import qjax

    return qjax.__version__


@dataclasses.dataclass
class SavedRun:
    """A loaded run: ``estimator`` (best variables), the fitted ``processors`` per stage,
    ``config`` (the run's resolved config) and ``meta`` (saved_run.json)."""

    run_dir: Path
    config: dict
    estimator: Any
    processors: dict[str, list]
    meta: dict

    def predict(self, start: Any, end: Any, data: Any = None) -> pd.Series | pd.DataFrame:
        """Scores of the days in [start, end] indexed (datetime, instrument): a Series, or one
        column per seed. ``data``: the run's own data when None, else a Qlib data directory,
        a CSV/Parquet file of daily bars or an OHLCV DataFrame (see :mod:`qjax.predict`)."""
        from qjax.predict import predict

        return predict(self, start, end, data)


# -- writing --------------------------------------------------------------------------------------


def write(out: str | os.PathLike, cfg: Mapping[str, Any], model: Any, handler: Any) -> Path:
    """Write ``out/model/`` for a fitted estimator and the handler it was trained with.

    A processor whose state qjax cannot save (a foreign class) leaves a saved_run.json that
    says so, and a warning: the run itself is fine, only ``predict`` will refuse."""
    from qjax.data.processor_state import UnsavableProcessorError, export_processor
    from qjax.train.checkpoint import save_variables

    out = Path(out)
    result = model.result
    meta: dict[str, Any] = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "qjax_version": _qjax_version(),
        "config": dict(cfg),
        "estimator": {
            "name": model.model.name,
            "is_ts": bool(model._is_ts),
            "seeds": [int(s) for s in result.seeds],
            "best_epoch": np.asarray(result.best_epoch).tolist(),
            "best_score": np.asarray(result.best_score).tolist(),
            "history": {k: np.asarray(v).tolist() for k, v in result.history.items()},
        },
    }
    arrays: dict[str, Any] = {"variables": result.variables}
    try:
        settings: dict[str, list] = {}
        for stage in STAGES:
            settings[stage] = []
            for k, proc in enumerate(getattr(handler, f"{stage}_processors", [])):
                entry, fitted = export_processor(proc)
                settings[stage].append(entry)
                if fitted:
                    arrays.setdefault("processors", {}).setdefault(stage, {})[str(k)] = fitted
        meta["processors"] = settings
    except UnsavableProcessorError as err:
        warnings.warn(f"the run cannot be loaded to predict new dates: {err}", stacklevel=2)
        meta["unsaved"] = str(err)
        arrays = {}

    text = json.dumps(meta, indent=1, default=_iso_date)
    target = out / MODEL_DIR
    staging = out / f".{MODEL_DIR}.partial"
    shutil.rmtree(staging, ignore_errors=True)
    try:
        staging.mkdir(parents=True)
        if arrays:
            save_variables(staging / ARRAYS_DIR, arrays)
        (staging / META_FILE).write_text(text)
        shutil.rmtree(target, ignore_errors=True)
        os.replace(staging, target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target


def _iso_date(value: Any) -> str:
    """Dates in a config (YAML reads 2015-01-05 as a date) as ISO strings."""
    if isinstance(value, (datetime.date, pd.Timestamp)):
        return value.isoformat()
    raise TypeError(f"Object of type {type(value).__name__} is not JSON serializable")


# -- reading --------------------------------------------------------------------------------------


def load(run_dir: str | os.PathLike) -> SavedRun:
    """The run in ``run_dir`` ready to predict: its estimator with the best variables and the
    processors as fitted on the train period. Raises :class:`SavedRunError` naming the fix."""
    from qjax import rundir

    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        what = "is a file" if run_dir.exists() else "does not exist"
        raise SavedRunError(
            f"{str(run_dir)!r} {what}; give the --out directory of a finished `qjax train` run"
        )
    model_dir = run_dir / MODEL_DIR
    meta_path = model_dir / META_FILE
    if not model_dir.exists():
        if not rundir.is_qjax_run(run_dir):
            raise SavedRunError(
                f"{str(run_dir)!r} is not a qjax run directory (no {rundir.MARKER} marker and no "
                f"{MODEL_DIR}/); give the --out directory of a finished `qjax train` run"
            )
        raise SavedRunError(
            f"the run in {str(run_dir)!r} has no saved model ({MODEL_DIR}/{META_FILE}): it has not "
            "finished, or an older qjax wrote it. Run its `qjax train` command again: it resumes "
            "from the checkpoints without retraining finished epochs and saves the model"
        )
    meta = _read_meta(meta_path)
    _check_format(meta, meta_path)
    if meta.get("unsaved"):
        raise SavedRunError(f"the run in {str(run_dir)!r} cannot predict: {meta['unsaved']}")
    try:
        config, info, settings = meta["config"], meta["estimator"], meta["processors"]
        arrays = _read_arrays(model_dir / ARRAYS_DIR)
        model = _estimator(config, info, arrays["variables"])
        processors = _processors(settings, arrays.get("processors", {}))
    except (KeyError, TypeError, ValueError) as err:
        if isinstance(err, SavedRunError):
            raise
        raise SavedRunError(
            f"{meta_path} or {model_dir / ARRAYS_DIR} is damaged ({type(err).__name__}: {err}); "
            "run the run's `qjax train` command again to rewrite it"
        ) from None
    return SavedRun(run_dir, config, model, processors, meta)


def _missing(path: Path) -> SavedRunError:
    return SavedRunError(
        f"{path} is missing, so the saved model cannot be read; run the "
        "run's `qjax train` command again to rewrite it"
    )


def _read_meta(path: Path) -> dict:
    if not path.is_file():
        raise _missing(path)
    try:
        meta = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, ValueError) as err:
        raise SavedRunError(
            f"{path} is damaged ({err}); run the run's `qjax train` command again to rewrite it"
        ) from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise SavedRunError(
            f"{path} is not a qjax saved-run file; run the run's `qjax train` "
            "command again to rewrite it"
        )
    return meta


def _check_format(meta: dict, path: Path) -> None:
    found = meta.get("format_version")
    if found == FORMAT_VERSION:
        return
    raise SavedRunError(
        f"{path} was written by qjax {meta.get('qjax_version', '?')} in saved-run format "
        f"{found}; this qjax ({_qjax_version()}) reads format {FORMAT_VERSION}. Load it with "
        f"qjax {meta.get('qjax_version', 'of that version')}, or retrain the run with this one"
    )


def _read_arrays(path: Path) -> dict:
    from qjax.train.checkpoint import load_variables

    if not path.is_dir():
        raise _missing(path)
    try:
        return load_variables(path)
    except Exception as err:  # Orbax raises many types for a damaged checkpoint
        first = str(err).strip().splitlines()[0][:200] if str(err).strip() else type(err).__name__
        raise SavedRunError(
            f"{path} is damaged ({first}); run the run's `qjax train` command again to rewrite it"
        ) from None


def _estimator(config: dict, info: dict, variables: Any) -> Any:
    from qjax.estimators import estimator, fitted
    from qjax.workflow import _model_kwargs

    model = estimator(info["name"], **_model_kwargs(config))
    return fitted(model, variables, info)


def _processors(settings: dict, arrays: dict) -> dict[str, list]:
    from qjax.data.processor_state import import_processor

    return {
        stage: [
            import_processor(entry, arrays.get(stage, {}).get(str(k), {}))
            for k, entry in enumerate(settings.get(stage, []))
        ]
        for stage in STAGES
    }
