"""Rolling retraining (Qlib's ``RollingGen`` + ``RollingEnsemble``): ``qjax rolling CONFIG``.

The config's test segment is cut into windows of ``step`` trading days. Window 1 keeps the
train and valid segments and tests the first ``step`` days; each later window shifts every
segment ``step`` trading days forward on the data's calendar ("sliding": both ends move;
"expanding": the train segment keeps its start). Qlib's arithmetic is kept exactly (see
:func:`qlib_segments`); qjax then clips the last test segment to the config's test end so that
the windows tile the test span without overlap or overhang.

Each window is an ordinary run directory ``OUT/window_000K`` trained by
:func:`qjax.workflow.train` (checkpoints, resume). Differences from Qlib's rolling, on purpose:
the processors' fit period (``handler.fit_start_time/fit_end_time``) moves with the train
segment, so each window normalises with its own training data; per-window backtests are not
run. ``OUT`` then receives the concatenated test predictions and labels, the IC metrics over
the whole span, one backtest over it (with a ``backtest:`` section) and the report.

Rerunning the same command skips finished windows and resumes an interrupted one from its
checkpoint. Windows of equal sample counts (sliding windows on a fixed universe) reuse the
compiled training programs of the first (JAX's in-process cache, and the persistent cache
across processes); ``metrics.json`` lists each window's compile seconds.
"""

from __future__ import annotations

import bisect
import copy
import json
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd

from qjax import run_config, runlock

RTYPES = ("sliding", "expanding")
PLAN_FILE = "rolling.json"
WARM_START_DIR = "warm_start"


class RollingError(ValueError):
    """A rolling request that cannot run (raised before any training)."""


# -- window arithmetic (Qlib's TimeAdjuster / RollingGen) -------------------------------------


def _start_idx(cal: pd.DatetimeIndex, day: Any) -> int | None:
    return None if day is None else bisect.bisect_left(cal, pd.Timestamp(day))


def _end_idx(cal: pd.DatetimeIndex, day: Any) -> int | None:
    return None if day is None else bisect.bisect_right(cal, pd.Timestamp(day)) - 1


def _day(cal: pd.DatetimeIndex, idx: int | None) -> pd.Timestamp | None:
    return None if idx is None or idx >= len(cal) else cal[idx]


def qlib_segments(
    segments: Mapping[str, Sequence[Any]],
    calendar: Sequence[Any],
    step: int,
    rtype: str = "expanding",
    trunc_days: int | None = None,
) -> list[dict[str, tuple]]:
    """The windows' segments exactly as Qlib's ``RollingGen(step, rtype, trunc_days=...)``
    makes them on ``calendar`` (a day past the calendar is None, as in Qlib).

    ``trunc_days``: the other segments end at least that many trading days before the test
    start, so that no training label looks into the test period (Qlib's rolling uses the
    label horizon + 1)."""
    cal = pd.DatetimeIndex(calendar)
    aligned = {
        k: (_day(cal, _start_idx(cal, s)), _day(cal, _end_idx(cal, e)))
        for k, (s, e) in segments.items()
    }
    test_end = min(pd.Timestamp(segments["test"][1]), cal[-1])
    first = _start_idx(cal, aligned["test"][0])
    aligned["test"] = (_day(cal, first), _day(cal, first + step - 1))
    if trunc_days is not None:
        last = first - trunc_days
        if last <= 0:
            raise RollingError(f"--trunc-days {trunc_days} leaves no data before the test start")
        aligned = {
            k: v if k == "test" else tuple(_day(cal, min(_start_idx(cal, d), last)) for d in v)
            for k, v in aligned.items()
        }
    windows = [aligned]
    while True:
        shifted = {}
        for name, (s, e) in windows[-1].items():
            lo, hi = _start_idx(cal, s), _end_idx(cal, e)
            if not (name == "train" and rtype == "expanding"):
                lo = None if lo is None else lo + step
            hi = None if hi is None else hi + step
            if lo is not None and lo > len(cal):
                return windows  # Qlib: the segment left the calendar, no more windows
            shifted[name] = (_day(cal, lo), _day(cal, hi))
        test_start = shifted["test"][0]
        if test_start is None or test_start > test_end:
            return windows
        windows.append(shifted)


def plan_windows(
    segments: Mapping[str, Sequence[Any]],
    calendar: Sequence[Any],
    step: int,
    rtype: str,
    trunc_days: int | None = None,
) -> list[dict[str, list[str]]]:
    """The windows qjax trains: Qlib's segments with each test segment clipped to the config's
    test end (so they tile it), as ISO dates. Raises :class:`RollingError` on bad input."""
    if isinstance(step, bool) or not isinstance(step, (int, np.integer)) or step <= 0:
        raise RollingError(f"--step must be a positive number of trading days, got {step!r}")
    if rtype not in RTYPES:
        raise RollingError(f"--rtype must be one of {', '.join(RTYPES)}, got {rtype!r}")
    if "test" not in segments:
        raise RollingError("dataset.segments needs a 'test' segment: rolling cuts it into windows")
    if trunc_days is not None and (isinstance(trunc_days, bool) or trunc_days < 0):
        raise RollingError(f"--trunc-days must be a non-negative number, got {trunc_days!r}")
    cal = pd.DatetimeIndex(calendar)
    test_start, test_end = (pd.Timestamp(d) for d in segments["test"])
    if test_start > cal[-1] or test_end < cal[0] or test_end < test_start:
        raise RollingError(
            f"the test segment {test_start:%Y-%m-%d}..{test_end:%Y-%m-%d} has no trading day in "
            f"the data ({cal[0]:%Y-%m-%d}..{cal[-1]:%Y-%m-%d}); set dataset.segments.test inside it"
        )
    for name, (s, e) in segments.items():
        if name != "test" and (pd.Timestamp(e) < cal[0] or pd.Timestamp(s) > cal[-1]):
            raise RollingError(
                f"the {name} segment {s}..{e} falls outside the data ({cal[0]:%Y-%m-%d}.."
                f"{cal[-1]:%Y-%m-%d}); set dataset.segments.{name} inside it"
            )
    n_test = _end_idx(cal, test_end) - _start_idx(cal, test_start) + 1
    if step >= n_test:
        raise RollingError(
            f"--step {step} leaves no window to roll: the test segment has {n_test} trading "
            f"days, so the first window already covers it; use a step below {n_test} "
            "(or `qjax train` for one window)"
        )
    end = cal[_end_idx(cal, test_end)]  # the last trading day of the test segment
    out = []
    for window in qlib_segments(segments, cal, step, rtype, trunc_days):
        lo, hi = window["test"]
        window = dict(window, test=(lo, end if hi is None else min(hi, end)))
        for name, (s, e) in window.items():
            if s is None or e is None or e < s:
                raise RollingError(
                    f"window {len(out) + 1}'s {name} segment {s}..{e} falls outside the data "
                    f"({cal[0]:%Y-%m-%d}..{cal[-1]:%Y-%m-%d}); use a smaller step or data "
                    "that reaches further"
                )
        out.append({k: [f"{s:%Y-%m-%d}", f"{e:%Y-%m-%d}"] for k, (s, e) in window.items()})
    return out


def trading_calendar(data_cfg: Mapping[str, Any]) -> pd.DatetimeIndex:
    """The trading days of a config's data (Qlib's calendar file for Qlib data)."""
    if data_cfg.get("source", "generated") == "qlib":
        from qjax.data.qlib_binary import QlibBinaryData

        return QlibBinaryData(data_cfg["provider_uri"]).calendar()
    from qjax.workflow import load_market

    return pd.DatetimeIndex(
        load_market(data_cfg).index.get_level_values("datetime").unique()
    ).sort_values()


def window_config(
    cfg: Mapping[str, Any],
    window: Mapping[str, list[str]],
    calendar: pd.DatetimeIndex,
    shift: int,
    rtype: str,
) -> dict:
    """One window's run config: its segments, the processors' fit period moved like the train
    segment, the handler's end extended to the test end (Qlib's ``handler_mod``), no backtest."""
    out = copy.deepcopy(dict(cfg))
    out.pop("backtest", None)  # one backtest over the whole span instead
    out["dataset"]["segments"] = {k: list(v) for k, v in window.items()}
    handler = out["handler"]
    fit = (handler.get("fit_start_time"), handler.get("fit_end_time"))
    if shift and fit != (None, None):
        lo, hi = _start_idx(calendar, fit[0]), _end_idx(calendar, fit[1])
        if rtype == "sliding" and lo is not None:
            lo += shift
        hi = None if hi is None else hi + shift
        for key, idx in (("fit_start_time", lo), ("fit_end_time", hi)):
            if idx is not None:
                handler[key] = f"{calendar[min(idx, len(calendar) - 1)]:%Y-%m-%d}"
    test_end = window["test"][1]
    if handler.get("end_time") is not None and pd.Timestamp(handler["end_time"]) < pd.Timestamp(
        test_end
    ):
        handler["end_time"] = test_end
    return run_config.validate(out)


# -- warm start ---------------------------------------------------------------------------------


def save_variables(variables: Any, directory: Path) -> None:
    import orbax.checkpoint as ocp

    checkpointer = ocp.StandardCheckpointer()
    checkpointer.save(directory.resolve(), jax.device_get(variables), force=True)
    checkpointer.wait_until_finished()


def load_variables(directory: Path) -> Any:
    import orbax.checkpoint as ocp

    return ocp.StandardCheckpointer().restore(directory.resolve())


def warm_start(previous: Any) -> Callable:
    """``init_variables`` that starts every replica from ``previous`` (one replica's best
    variables, checked leaf by leaf against the fresh ones)."""

    def init(fresh):
        fresh_leaves, tree = jax.tree.flatten(fresh)
        old_leaves = jax.tree.leaves(previous)
        if len(old_leaves) != len(fresh_leaves) or any(
            np.shape(o) != f.shape for o, f in zip(old_leaves, fresh_leaves)
        ):
            raise RollingError(
                "the previous window's variables do not fit this window's model "
                "(a changed config?); rerun without --warm-start or a new --out"
            )
        return jax.tree.unflatten(
            tree, [jnp.asarray(o, f.dtype) for o, f in zip(old_leaves, fresh_leaves)]
        )

    return init


# -- compile time -------------------------------------------------------------------------------

_COMPILE_SECONDS = [0.0]
_LISTENING = [False]


def _listen_to_compiles() -> None:
    """Sum JAX's tracing, lowering and XLA compile (or persistent-cache load) durations."""
    if _LISTENING[0]:
        return

    def on_event(event: str, duration: float, **_: Any) -> None:
        if event.startswith("/jax/core/compile/"):
            _COMPILE_SECONDS[0] += duration

    jax.monitoring.register_event_duration_secs_listener(on_event)
    _LISTENING[0] = True


# -- the run ------------------------------------------------------------------------------------


def window_dir(out: Path, k: int) -> Path:
    return out / f"window_{k:04d}"


def is_finished(directory: Path, cfg: Mapping[str, Any]) -> bool:
    """A window whose run wrote its metrics for this very config."""
    saved = directory / "config.yaml"
    if not (
        (directory / "metrics.json").is_file()
        and (directory / "predictions.parquet").is_file()
        and saved.is_file()
    ):
        return False
    try:
        return run_config.validate(run_config.parse_yaml(saved.read_text())) == cfg
    except (OSError, ValueError, run_config.yaml.YAMLError):
        return False


def _check_out(out: Path, plan: Mapping[str, Any]) -> None:
    """OUT is new, empty, or a rolling run of the same plan (then it is resumed)."""
    if out.exists() and not out.is_dir():
        raise RollingError(f"--out {str(out)!r} is a file; choose a directory")
    if not out.exists() or not any(out.iterdir()):
        return
    saved = out / PLAN_FILE
    if not saved.is_file():
        raise RollingError(
            f"--out {str(out)!r} is a non-empty directory without {PLAN_FILE} "
            "(not a qjax rolling run); choose a new or empty directory"
        )
    try:
        previous = json.loads(saved.read_text())
    except (OSError, ValueError):
        previous = None
    if previous != json.loads(json.dumps(plan, default=str)):
        raise RollingError(
            f"{out} holds a rolling run of a different config, step, rtype or "
            "warm start; choose another --out (or delete it)"
        )


def run(
    cfg: Mapping[str, Any],
    out_dir: str | Path,
    *,
    step: int,
    rtype: str = "expanding",
    warm: bool = False,
    trunc_days: int | None = None,
    verbose: bool = True,
    log: Callable[[str], None] = print,
) -> dict:
    """Train every window into ``out_dir`` and evaluate their joined test predictions; return
    the metrics written to ``out_dir/metrics.json``. Bad input raises before any training."""
    from qjax import workflow
    from qjax.estimators import estimator

    cfg = run_config.validate(cfg)
    estimator(cfg["model"]["name"], **workflow._model_kwargs(cfg))  # checks the keywords
    workflow.check_segments_inside_handler(cfg)
    calendar = trading_calendar(cfg["data"])
    windows = plan_windows(cfg["dataset"]["segments"], calendar, step, rtype, trunc_days)
    configs = [window_config(cfg, w, calendar, k * step, rtype) for k, w in enumerate(windows)]
    out = Path(out_dir)
    plan = {
        "config": cfg,
        "step": int(step),
        "rtype": rtype,
        "warm_start": bool(warm),
        "trunc_days": trunc_days,
        "windows": windows,
    }
    _check_out(out, plan)
    with runlock.exclusive(out, "qjax rolling"):  # one process per output directory
        _check_out(out, plan)  # again under the lock: a run that held it may have changed it
        return _roll(cfg, out, plan, windows, configs, verbose=verbose, log=log)


def _roll(
    cfg: Mapping[str, Any],
    out: Path,
    plan: Mapping[str, Any],
    windows: list,
    configs: list,
    *,
    verbose: bool,
    log: Callable[[str], None],
) -> dict:
    """:func:`run` once the request and ``out`` are checked and ``out`` is locked."""
    from qjax import workflow
    from qjax.train.metrics import signal_metrics

    step, rtype, warm = plan["step"], plan["rtype"], plan["warm_start"]
    trunc_days = plan["trunc_days"]
    out.mkdir(parents=True, exist_ok=True)
    (out / PLAN_FILE).write_text(json.dumps(plan, indent=2, default=str) + "\n")
    _listen_to_compiles()

    n = len(windows)
    summaries = []
    for k, (window, wcfg) in enumerate(zip(windows, configs)):
        directory = window_dir(out, k + 1)
        train, test = window["train"], window["test"]
        head = f"window {k + 1}/{n}: train {train[0]}..{train[1]} test {test[0]}..{test[1]}"
        if is_finished(directory, wcfg):
            log(f"{head}: finished earlier, skipped")
            done = json.loads((directory / "metrics.json").read_text())
            summaries.append(
                {
                    "window": k + 1,
                    "segments": window,
                    "skipped": True,
                    "test": done.get("test"),
                    "best_epoch_1based": done.get("best_epoch_1based"),
                }
            )
            continue
        log(head)
        previous = window_dir(out, k) / WARM_START_DIR
        init = warm_start(load_variables(previous)) if warm and k > 0 else None
        compile0, t0 = _COMPILE_SECONDS[0], time.perf_counter()
        metrics = workflow.train(
            wcfg,
            directory,
            verbose=verbose,
            init_variables=init,
            on_fitted=lambda model, d=directory: save_variables(
                model.variables, d / WARM_START_DIR
            ),
        )
        summaries.append(
            {
                "window": k + 1,
                "segments": window,
                "skipped": False,
                "seconds": round(time.perf_counter() - t0, 2),
                "compile_seconds": round(_COMPILE_SECONDS[0] - compile0, 2),
                "test": metrics["test"],
                "best_epoch_1based": metrics["best_epoch_1based"],
            }
        )

    scores, label = join_windows(out, n)
    per_seed = {c: signal_metrics(scores[c], label) for c in scores.columns}
    summary = workflow._summarise(per_seed)
    metrics = {
        "model": cfg["model"]["name"],
        "rolling": {
            "step": int(step),
            "rtype": rtype,
            "warm_start": bool(warm),
            "trunc_days": trunc_days,
            "windows": n,
        },
        "test": summary,
        "test_per_seed": per_seed if len(per_seed) > 1 else None,
        "samples": {"test": int(len(scores))},
        "windows": summaries,
    }
    if cfg.get("backtest"):
        from qjax.backtest.record import record_backtest

        metrics.update(
            record_backtest(cfg["backtest"], scores.iloc[:, 0], cfg["data"], out, summary)
        )
    scores.to_parquet(out / "predictions.parquet")
    metrics = workflow._json_safe(metrics)
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2, allow_nan=False))
    from qjax.report import save_report_inputs, write_report

    run_config.dump(cfg, out / "config.yaml")  # the report's title reads it
    save_report_inputs(out, {}, label)
    write_report(out)
    return metrics


def join_windows(out: Path, n: int) -> tuple[pd.DataFrame, pd.Series]:
    """The windows' test predictions and labels as one series over the span (windows tile it,
    so an index seen twice is a bug, not something to resolve)."""
    scores = pd.concat(
        [pd.read_parquet(window_dir(out, k) / "predictions.parquet") for k in range(1, n + 1)]
    )
    label = pd.concat(
        [pd.read_parquet(window_dir(out, k) / "labels.parquet").iloc[:, 0] for k in range(1, n + 1)]
    )
    if scores.index.has_duplicates:
        raise RuntimeError("the windows' test predictions overlap; their segments must tile")
    return scores.sort_index(), label.sort_index()


def main(cfg: Mapping[str, Any], out: Path, args: Any) -> int:
    """``qjax rolling``: every expected failure is one line on stderr and an exit code (2 bad
    input, 1 a failed run, 130 interrupted), as for ``qjax train``."""
    import sys
    import warnings

    from qjax.cli import _one_line_warning
    from qjax.errors import Interrupted, QjaxError, RunDirError, TrainingDiverged

    def fail(message: str, code: int) -> int:
        print(f"qjax: {message}", file=sys.stderr)
        return code

    default_format, warnings.formatwarning = warnings.formatwarning, _one_line_warning
    try:
        metrics = run(
            cfg,
            out,
            step=args.step,
            rtype=args.rtype,
            warm=args.warm_start,
            trunc_days=args.trunc_days,
            verbose=not args.quiet,
        )
    except (Interrupted, KeyboardInterrupt):
        return fail(
            "interrupted; run the same command again: finished windows are skipped "
            "and the interrupted one resumes from its checkpoint",
            130,
        )
    except RollingError as err:
        return fail(f"rolling: {err}", 2)
    except TrainingDiverged as err:
        return fail(f"training stopped: {err}", 1)
    except RunDirError as err:
        return fail(f"output directory: {err}", 2)
    except (QjaxError, ValueError, KeyError, TypeError, FileNotFoundError) as err:
        message = err.args[0] if isinstance(err, KeyError) and err.args else err
        return fail(f"{type(err).__name__}: {message}", 2)
    except OSError as err:
        return fail(f"{err.strerror or err}: {err.filename or out}", 1)
    finally:
        warnings.formatwarning = default_format
    test = metrics["test"]
    rows = [f"windows: {metrics['rolling']['windows']}, test samples {metrics['samples']['test']}"]
    rows += [
        f"test {k}: {test[k]:.4f}" if test.get(k) is not None else f"test {k}: n/a"
        for k in ("IC", "ICIR", "Rank IC", "Rank ICIR")
    ]
    for name, value in (metrics.get("seven_columns") or {}).items():
        if name not in test:
            rows.append(f"{name}: {value:.4f}" if value is not None else f"{name}: n/a")
    print("\n".join(rows + [f"rolling directory: {out}"]))
    return 0
