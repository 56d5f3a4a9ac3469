"""``qjax`` command line: ``qjax train CONFIG.yaml [--set key=value ...] [--out DIR]``."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from qjax import run_config
from qjax.compilation import default_cache_dir, use_compilation_cache  # noqa: F401 (re-export)
from qjax.cpu_devices import set_cpu_devices


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="qjax", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)

    train = commands.add_parser(
        "train",
        aliases=["run"],
        help="train a model from a YAML config "
        "(qjax's or Qlib's workflow_config_*.yaml, which qjax translates)",
    )
    train.add_argument("config", help="a YAML run config, e.g. configs/lstm_alpha360.yaml")
    _add_overrides(train, "override a config value, e.g. --set model.kwargs.lr=2e-4 (repeatable)")
    train.add_argument("--out", help="run directory (default: runs/<config name>)")
    train.add_argument(
        "--overwrite",
        action="store_true",
        help="discard an existing run in --out instead of resuming it",
    )
    train.add_argument("--quiet", action="store_true", help="no progress bar")
    train.add_argument(
        "--distributed",
        action="store_true",
        help="train as one of several processes (machines) through jax.distributed: "
        "JAX_COORDINATOR_ADDRESS=host:port, JAX_NUM_PROCESSES=N and JAX_PROCESS_ID=0..N-1 "
        "(or a SLURM / Open MPI launch); the same command and --out on every process, "
        "process 0 writes the run (README: From one machine to many)",
    )
    train.add_argument(
        "--mlflow",
        metavar="URI",
        help="log the finished run to MLflow: a folder (e.g. ./mlruns), sqlite:///mlflow.db or "
        "a server (params, per-epoch metrics, test metrics, artifacts; see qjax.tracking)",
    )
    train.add_argument(
        "--experiment", metavar="NAME", help="MLflow experiment (default: the config's name)"
    )
    _add_compile_options(
        train,
        cache_help="keep compiled XLA programs here so that a repeated run skips compilation "
        "(default: $QJAX_COMPILATION_CACHE or ~/.cache/qjax/xla; 'off' disables it)",
        devices_help="XLA CPU devices to split each batch over (default: $QJAX_CPU_DEVICES or "
        "one per usable core; 1 turns the split off); see qjax.cpu_devices",
    )

    rolling = commands.add_parser(
        "rolling",
        help="retrain on windows shifted through the test "
        "segment (Qlib's RollingGen); one backtest over all of it",
    )
    rolling.add_argument("config", help="a qjax config or Qlib workflow YAML")
    rolling.add_argument("--step", type=int, required=True, help="trading days per window")
    rolling.add_argument(
        "--rtype",
        choices=("sliding", "expanding"),
        default="expanding",
        help="sliding: the train segment moves; expanding (Qlib's default): its start stays",
    )
    rolling.add_argument(
        "--warm-start",
        action="store_true",
        help="start each window from the previous window's best variables",
    )
    rolling.add_argument(
        "--trunc-days",
        type=int,
        metavar="N",
        help="end the train and valid "
        "segments N trading days before each test start (Qlib's trunc_days)",
    )
    _add_overrides(rolling, "override a config value (repeatable)")
    rolling.add_argument("--out", help="output directory (default: runs/<config name>-rolling)")
    rolling.add_argument("--quiet", action="store_true", help="no progress bar")
    _add_compile_options(rolling)

    predict = commands.add_parser(
        "predict",
        help="score new dates with a finished run's model and fitted processors (no refit)",
    )
    predict.add_argument("run_dir", help="the --out directory of a finished `qjax train` run")
    predict.add_argument("--start", required=True, metavar="D1", help="first day to score")
    predict.add_argument(
        "--end",
        required=True,
        metavar="D2",
        help="last day to score (the data's last day gives tomorrow's forecast: no label needed)",
    )
    predict.add_argument(
        "--data",
        metavar="PATH",
        help="a Qlib data directory or a CSV/Parquet "
        "file of daily bars (default: the run's own data)",
    )
    predict.add_argument(
        "--out",
        metavar="FILE",
        help="where to write the scores, .parquet or "
        ".csv (default: RUN_DIR/predictions_D1_D2.parquet)",
    )

    sweep = commands.add_parser(
        "sweep",
        help="train every combination of --grid values as "
        "independent fits (Ray tasks where Ray is installed); one table",
    )
    sweep.add_argument("config", help="a qjax config or Qlib workflow YAML")
    sweep.add_argument(
        "--grid",
        action="append",
        default=[],
        metavar="KEY=V1,V2",
        help="values to sweep for one config key, e.g. --grid model.kwargs.lr="
        "1e-3,5e-4 (repeatable: the sweep runs their product)",
    )
    sweep.add_argument(
        "--seeds",
        type=_positive_int,
        metavar="N",
        help="seeds 0..N-1 per setting, trained as replicas of one program (default: the config's)",
    )
    _add_overrides(sweep, "override a config value for every setting")
    sweep.add_argument("--out", help="output directory (default: runs/<config name>-sweep)")
    sweep.add_argument("--address", help="a Ray cluster's address (default: a local Ray instance)")
    sweep.add_argument(
        "--no-ray", action="store_true", help="run the fits one after another in this process"
    )
    sweep.add_argument("--quiet", action="store_true", help="no progress bar")
    _add_compile_options(sweep)

    commands.add_parser("models", help="list the model names")
    report = commands.add_parser("report", help="rebuild a run's report.html and report/*.png")
    report.add_argument("run_dir", help="the --out directory of a finished `qjax train` run")

    args = parser.parse_args(argv)
    if args.command == "models":
        from qjax.estimators import wrappers

        for name, model in sorted(wrappers().items()):
            print(f"{name:<12} {model.spec.qlib_class}")
        return 0
    if args.command == "report":
        return _report(args.run_dir)
    if args.command == "predict":
        return _predict(args)

    if args.cpu_devices is not None:
        try:
            set_cpu_devices(args.cpu_devices)
        except RuntimeError as err:  # JAX already running (the CLI called from Python)
            print(f"qjax: {err}", file=sys.stderr)
            return 2
    if getattr(args, "distributed", False):
        from qjax.errors import DistributedError
        from qjax.train import distributed

        try:
            found = distributed.settings()
            if "coordinator_address" in found:  # JAX aborts the process if none comes in time
                print(
                    f"qjax: --distributed: process {found.get('process_id', '?')} of "
                    f"{found.get('num_processes', '?')} joining {found['coordinator_address']} "
                    f"(waiting up to {distributed.JOIN_SECONDS} s for the others)",
                    file=sys.stderr,
                )
            distributed.initialize()  # before any other JAX work
        except DistributedError as err:
            print(f"qjax: --distributed: {err}", file=sys.stderr)
            return 2
    use_compilation_cache(args.compilation_cache)
    if args.command == "sweep":
        return _sweep(args)

    try:
        from qjax.qlib_workflow import load_any

        cfg = load_any(args.config, args.overrides)
    except run_config.ConfigError as err:
        print(f"qjax: config error: {err}", file=sys.stderr)
        return 2
    if args.command == "rolling":
        from qjax.rolling import main as rolling_main

        out = Path(args.out or Path("runs") / f"{Path(args.config).stem}-rolling")
        return rolling_main(cfg, out, args)
    out = Path(args.out or Path("runs") / Path(args.config).stem)
    if args.mlflow:
        from qjax.tracking import check_available

        try:
            check_available()
        except run_config.ConfigError as err:
            print(f"qjax: {err}", file=sys.stderr)
            return 2
    return _train(cfg, out, args)


def _add_overrides(parser: argparse.ArgumentParser, help_text: str) -> None:
    """``--set KEY=VALUE`` (repeatable) into ``args.overrides``."""
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help=help_text,
    )


def _add_compile_options(
    parser: argparse.ArgumentParser,
    cache_help: str = "as for train",
    devices_help: str = "as for train",
) -> None:
    """``--compilation-cache DIR`` and ``--cpu-devices N``, the same for every training command."""
    parser.add_argument(
        "--compilation-cache", metavar="DIR", default=default_cache_dir(), help=cache_help
    )
    parser.add_argument(
        "--cpu-devices", metavar="N", type=_positive_int, default=None, help=devices_help
    )


def _guarded(work: Callable[[], Any], out: Path, resume_hint: str) -> tuple[int, Any]:
    """``(0, work())``, or the exit code of an expected failure, reported in one line on stderr:
    2 bad input (config, data, output directory), 1 the work failed (diverged, unreadable
    checkpoint, I/O), 130 interrupted. Warnings print in one line too."""
    import warnings

    from qjax.errors import Interrupted, QjaxError, RunDirError, TrainingDiverged

    default_format, warnings.formatwarning = warnings.formatwarning, _one_line_warning
    try:
        return 0, work()
    except Interrupted as stop:
        hint = "run the same command again to resume" if stop.resumable else "start it again"
        print(f"\nqjax: interrupted at epoch {stop.epoch}; {hint}", file=sys.stderr)
        return 130, None
    except KeyboardInterrupt:  # outside the epochs (data, prediction, between fits)
        print(f"\nqjax: interrupted; {resume_hint}", file=sys.stderr)
        return 130, None
    except TrainingDiverged as err:
        print(f"qjax: training stopped: {err}", file=sys.stderr)
        return 1, None
    except RunDirError as err:
        print(f"qjax: output directory: {err}", file=sys.stderr)
        return 2, None
    except (QjaxError, ValueError, KeyError, TypeError, FileNotFoundError) as err:
        message = err.args[0] if isinstance(err, KeyError) and err.args else err
        print(f"qjax: {type(err).__name__}: {message}", file=sys.stderr)
        return 2, None
    except OSError as err:
        print(f"qjax: {err.strerror or err}: {err.filename or out}", file=sys.stderr)
        return 1, None
    finally:
        warnings.formatwarning = default_format


def _train(cfg: dict, out: Path, args: argparse.Namespace) -> int:
    from qjax import workflow

    code, metrics = _guarded(
        lambda: workflow.train(cfg, out, verbose=not args.quiet, overwrite=args.overwrite),
        out,
        "run the same command again (finished epochs are kept)",
    )
    if code == 0 and workflow.is_primary():  # several processes: process 0 reports
        print(workflow.format_table(metrics))
        print(f"run directory: {out}")
    if code == 0 and args.mlflow and workflow.is_primary():
        return _log_to_mlflow(out, args.mlflow, args.experiment or Path(args.config).stem)
    return code


def _log_to_mlflow(out: Path, uri: str, experiment: str) -> int:
    from qjax.tracking import log_run

    try:
        run_id = log_run(out, uri, experiment)
    except Exception as err:  # MLflow's own errors have no common base; the run itself is safe
        print(
            f"qjax: the run in {out} is complete, but logging it to MLflow ({uri}) failed: "
            f"{type(err).__name__}: {err}; run the same command again to retry (nothing is "
            "retrained)",
            file=sys.stderr,
        )
        return 1
    print(f"MLflow: experiment {experiment!r}, run {run_id} ({uri})")
    return 0


def _sweep(args: argparse.Namespace) -> int:
    from qjax.sweep import sweep

    if args.no_ray and args.address:
        print("qjax: --no-ray and --address contradict each other; drop one", file=sys.stderr)
        return 2
    out = Path(args.out or Path("runs") / f"{Path(args.config).stem}-sweep")
    code, _ = _guarded(
        lambda: sweep(
            args.config,
            args.grid,
            out,
            seeds=args.seeds,
            overrides=args.overrides,
            use_ray=False if args.no_ray else None,
            address=args.address,
            verbose=not args.quiet,
        ),
        out,
        "run the same command again to resume the sweep",
    )
    if code == 0:
        print((out / "sweep.md").read_text())
    return code


def _one_line_warning(message, category, filename, lineno, line=None) -> str:
    return f"qjax: warning: {message}\n"


def _report(run_dir: str) -> int:
    from qjax.report import write_report

    try:
        print(f"report: {write_report(run_dir)}")
    except (FileNotFoundError, ValueError) as err:
        print(f"qjax: {err}", file=sys.stderr)
        return 2
    return 0


def _predict(args: argparse.Namespace) -> int:
    """``qjax predict``: exit 0 with the scores written, 2 bad input (run directory, dates,
    data, output file), 1 an I/O error."""
    import pandas as pd

    from qjax import saved_run
    from qjax.errors import QjaxError
    from qjax.predict import parse_dates

    try:
        start, end = parse_dates(args.start, args.end)
    except QjaxError as err:
        print(f"qjax: {err}", file=sys.stderr)
        return 2
    default = f"predictions_{start:%Y-%m-%d}_{end:%Y-%m-%d}.parquet"
    out = Path(args.out or Path(args.run_dir) / default)
    if not out.name.lower().endswith((".parquet", ".csv")):
        print(f"qjax: --out {str(out)!r} must end in .parquet or .csv", file=sys.stderr)
        return 2

    def score() -> pd.DataFrame:
        scores = saved_run.load(args.run_dir).predict(start, end, args.data)
        frame = scores.to_frame() if isinstance(scores, pd.Series) else scores
        out.parent.mkdir(parents=True, exist_ok=True)
        if out.name.lower().endswith(".csv"):
            frame.to_csv(out)
        else:
            frame.to_parquet(out)
        return frame

    code, frame = _guarded(score, out, "nothing was written; run the same command again")
    if code:
        return code
    days = frame.index.get_level_values("datetime")
    print(
        f"scored {len(frame)} rows, {days.nunique()} days {days.min().date()}.."
        f"{days.max().date()}: {out}"
    )
    return 0


def _positive_int(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"expected a positive device count, got {text!r}")
    return int(text)


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
