"""``qjax sweep``: the product of config settings as independent fits, one table of results.

    qjax sweep configs/lstm_alpha360.yaml --grid model.kwargs.lr=1e-3,5e-4 \\
        --grid model.name=lstm,gru --seeds 20 --out runs/sweep

Each setting (one value per ``--grid`` key) is one ``qjax train`` run in its own folder under
``--out``, with the seeds as replicas of one compiled program. The fits are independent, so they
run as Ray tasks when Ray is installed (``pip install qjax[ray]``): a local Ray instance by
default, a cluster with ``--address``. Without Ray, or with ``--no-ray``, they run one after
another in this process. Either way the results are the same: each fit is the run ``qjax train``
would make of that config.

Every setting's config is validated before the first fit starts. A fit whose worker dies is
retried by Ray and resumes from its last checkpoint, and running the same sweep again resumes
it: finished settings are read back, unfinished ones resume.

The table (``sweep.md``, ``sweep.json``) has one row per setting with the mean ± std over seeds
of each test metric, in the shape of Qlib's benchmark tables.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import math
import os
import re
import sys
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

from qjax.errors import ConfigError

METRICS = ("IC", "ICIR", "Rank IC", "Rank ICIR")
BACKTEST_METRICS = ("Annualized Return", "Information Ratio", "Max Drawdown")
# A Ray worker that dies (kill -9, lost node) is replaced and its fit retried this many times.
RAY_RETRIES = 3


@dataclasses.dataclass(frozen=True)
class Fit:
    """One setting of the sweep: its overrides, validated config and run folder."""

    setting: tuple[tuple[str, str], ...]  # (key, value) per --grid key, in grid order
    cfg: dict
    out: Path

    @property
    def label(self) -> str:
        return _label(self.setting)


def _label(setting: Iterable[tuple[str, str]]) -> str:
    return ", ".join(f"{key}={value}" for key, value in setting) or "the base config"


def parse_grid(items: Sequence[str]) -> list[tuple[str, list[str]]]:
    """``["model.kwargs.lr=1e-3,5e-4", ...]`` -> ``[("model.kwargs.lr", ["1e-3", "5e-4"]), ...]``.

    Values split at commas outside brackets, so a list value stays whole:
    ``dataset.segments.test=[2017-01-03, 2017-06-30],[2017-07-03, 2017-12-29]``.
    """
    grid: list[tuple[str, list[str]]] = []
    for item in items:
        key, sep, raw = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise ConfigError(
                f"--grid {item!r} must look like key=value1,value2, "
                "e.g. --grid model.kwargs.lr=1e-3,5e-4"
            )
        values = [v.strip() for v in _split_top_level(raw)]
        if not values or any(not v for v in values):
            raise ConfigError(
                f"--grid {item!r} has an empty value; list values separated by "
                "commas, e.g. --grid model.kwargs.lr=1e-3,5e-4"
            )
        if key in (k for k, _ in grid):
            raise ConfigError(f"--grid {key} is given twice; put all its values in one --grid")
        if len(set(values)) != len(values):
            raise ConfigError(f"--grid {item!r} repeats a value")
        grid.append((key, values))
    return grid


def _split_top_level(text: str) -> list[str]:
    parts, depth, start = [], 0, 0
    for i, char in enumerate(text):
        depth += char in "[{"
        depth -= char in "]}"
        if char == "," and depth == 0:
            parts.append(text[start:i])
            start = i + 1
    parts.append(text[start:])
    return parts


def plan(
    config: str | Path,
    grid: Sequence[tuple[str, list[str]]],
    seeds: int | None,
    out: Path,
    overrides: Sequence[str] = (),
) -> list[Fit]:
    """Every setting of ``grid`` as a validated :class:`Fit`, before any training starts."""
    from qjax.qlib_workflow import load_any
    from qjax.workflow import checked

    if seeds is not None and seeds < 1:
        raise ConfigError(
            f"--seeds {seeds}: give the number of seeds, at least 1 (e.g. --seeds 20)"
        )
    seed_override = [f"train.seeds=[{', '.join(map(str, range(seeds)))}]"] if seeds else []
    keys = [key for key, _ in grid]
    fits = []
    for index, values in enumerate(itertools.product(*(vals for _, vals in grid))):
        setting = tuple(zip(keys, values))
        sets = [*overrides, *(f"{k}={v}" for k, v in setting), *seed_override]
        try:
            cfg, _ = checked(load_any(config, sets))
        except (ConfigError, KeyError, TypeError, ValueError) as err:
            message = err.args[0] if isinstance(err, KeyError) and err.args else err
            raise ConfigError(f"setting {_label(setting)}: {message}") from None
        fits.append(Fit(setting, cfg, out / _folder_name(index, setting)))
    return fits


def _folder_name(index: int, setting: Iterable[tuple[str, str]]) -> str:
    words = [f"{key.split('.')[-1]}={value}" for key, value in setting]
    slug = re.sub(r"[^A-Za-z0-9=._+-]+", "_", "-".join(words)).strip("_")[:80]
    return f"{index:03d}-{slug}" if slug else f"{index:03d}"


def run_fit(cfg: dict, out: str, verbose: bool) -> dict:
    """One fit, as ``qjax train`` runs it (resuming a partial run in ``out``): its metrics."""
    from qjax import workflow

    return workflow.train(cfg, out, verbose=verbose)


def run_in_process(
    fits: Sequence[Fit], verbose: bool, done: Callable[[Fit, dict], None]
) -> list[dict]:
    """The fits one after another in this process."""
    results = []
    for fit in fits:
        metrics = run_fit(fit.cfg, str(fit.out), verbose)
        done(fit, metrics)
        results.append(metrics)
    return results


def run_on_ray(
    fits: Sequence[Fit], address: str | None, done: Callable[[Fit, dict], None]
) -> list[dict]:
    """The fits as Ray tasks (a local instance unless ``address`` names a cluster)."""
    import jax
    import ray

    from qjax.cpu_devices import with_device_count

    # Workers are fresh processes, perhaps on other machines: give them this process's CPU
    # device layout, so that each fit splits its batches as it would here.
    if not ray.is_initialized():  # before JAX starts its threads: Ray forks its daemons
        ray.init(
            address=address, log_to_driver=False, include_dashboard=False, logging_level="ERROR"
        )
    flags = with_device_count(os.environ.get("XLA_FLAGS", ""), len(jax.devices("cpu")))
    remote = ray.remote(run_fit).options(
        max_retries=RAY_RETRIES,
        retry_exceptions=False,
        runtime_env={"env_vars": {"XLA_FLAGS": flags}},
    )
    pending = {remote.remote(fit.cfg, str(fit.out.resolve()), False): fit for fit in fits}
    results: dict[int, dict] = {}
    order = {id(fit): i for i, fit in enumerate(fits)}
    while pending:
        ready, _ = ray.wait(list(pending), num_returns=1)
        fit = pending.pop(ready[0])
        try:
            metrics = ray.get(ready[0])
        except ray.exceptions.RayTaskError as err:  # the fit's own error, e.g. diverged
            for ref in pending:
                ray.cancel(ref)
            raise err.as_instanceof_cause() from None
        done(fit, metrics)
        results[order[id(fit)]] = metrics
    return [results[i] for i in range(len(fits))]


def ray_available() -> bool:
    try:
        import ray  # noqa: F401
    except ImportError:
        return False
    return True


def summary_rows(fits: Sequence[Fit], results: Sequence[dict]) -> list[dict]:
    """One row per setting: its values and each test metric's mean and std over seeds."""
    rows = []
    for fit, metrics in zip(fits, results):
        row: dict[str, Any] = dict(fit.setting)
        row["seeds"] = len(metrics.get("test_per_seed") or {}) or 1
        row["run"] = fit.out.name
        test = metrics["test"]
        for name in METRICS:
            row[name] = test.get(name)
            row[f"{name} std"] = test.get(f"{name} std")
        for name, value in (metrics.get("seven_columns") or {}).items():
            if name in BACKTEST_METRICS:  # the backtest of the first seed's scores
                row[name] = value
        rows.append(row)
    return rows


def markdown_table(rows: Sequence[dict], keys: Sequence[str]) -> str:
    """Qlib's benchmark-table shape: settings, then mean ± std of each metric."""
    metrics = [m for m in (*METRICS, *BACKTEST_METRICS) if any(m in row for row in rows)]
    header = [*keys, "seeds", *metrics, "run"]
    lines = [
        "| " + " | ".join(header) + " |",
        "|" + "|".join("---" if h in (*keys, "run") else "---:" for h in header) + "|",
    ]
    for row in rows:
        cells = [str(row[k]) for k in keys] + [str(row["seeds"])]
        for name in metrics:
            cells.append(_mean_std(row.get(name), row.get(f"{name} std")))
        cells.append(row["run"])
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _mean_std(mean: float | None, std: float | None) -> str:
    if mean is None or (isinstance(mean, float) and math.isnan(mean)):
        return "n/a"
    return f"{mean:.4f}" + (f" ± {std:.4f}" if std is not None else "")


def sweep(
    config: str | Path,
    grid_items: Sequence[str],
    out: str | Path,
    *,
    seeds: int | None,
    overrides: Sequence[str] = (),
    use_ray: bool | None = None,
    address: str | None = None,
    verbose: bool = True,
) -> list[dict]:
    """Plan, run and tabulate a sweep; returns the table's rows (also in ``out/sweep.json``).

    ``use_ray``: ``None`` uses Ray where it is installed, ``True`` requires it, ``False`` runs
    the fits in this process.
    """
    out = Path(out)
    grid = parse_grid(grid_items)
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out {out} is a file; name a folder for the sweep's runs")
    fits = plan(config, grid, seeds, out, overrides)
    if use_ray is None:
        use_ray = ray_available() or address is not None
    if use_ray and not ray_available():
        raise ConfigError(
            "Ray is not installed: pip install 'qjax[ray]', or run the fits in "
            "this process with --no-ray"
        )
    out.mkdir(parents=True, exist_ok=True)

    finished = 0

    def done(fit: Fit, metrics: dict) -> None:
        nonlocal finished
        finished += 1
        ic = _mean_std(metrics["test"].get("IC"), metrics["test"].get("IC std"))
        print(f"[{finished}/{len(fits)}] {fit.label}: test IC {ic}", file=sys.stderr, flush=True)

    where = f"Ray ({address or 'local'})" if use_ray else "this process"
    print(f"qjax sweep: {len(fits)} fit(s) in {where}, runs under {out}", file=sys.stderr)
    results = run_on_ray(fits, address, done) if use_ray else run_in_process(fits, verbose, done)
    rows = summary_rows(fits, results)
    keys = [key for key, _ in grid]
    (out / "sweep.json").write_text(
        json.dumps({"grid": dict(grid), "seeds": seeds, "rows": rows}, indent=2, allow_nan=False)
    )
    title = f"# Sweep of {Path(config).name}\n\nSeeds per setting: {seeds or 'as configured'}. "
    title += "Test metrics, mean ± std over seeds.\n\n"
    (out / "sweep.md").write_text(title + markdown_table(rows, keys) + "\n")
    return rows
