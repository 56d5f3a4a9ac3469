"""A run's report: PNG figures and one self-contained HTML page that collects them.

``write_report(run_dir)`` (run by ``qjax train`` and ``qjax report RUN_DIR``) writes
``report/*.png`` and ``report.html`` from the run directory's files; see :mod:`.artifacts`.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from qjax.report.artifacts import RunArtifacts, load_run, save_report_inputs

__all__ = ["RunArtifacts", "load_run", "save_report_inputs", "write_report"]

# file -> (section heading, caption)
SECTIONS = {
    "learning_curves.png": (
        "Learning curves",
        "Train and valid score per epoch; the star marks the epoch whose parameters were kept.",
    ),
    "ic_daily.png": (
        "Information coefficient",
        (
            "Daily cross-sectional IC (Pearson) and Rank IC (Spearman) of the test scores against "
            "the raw label."
        ),
    ),
    "ic_distribution.png": (
        "IC by month and its distribution",
        "Monthly mean IC and Rank IC; histogram of the daily IC.",
    ),
    "group_returns.png": (
        "Return by score quantile",
        (
            "Each day the scored stocks are split into five equal groups by score (G1 highest); "
            "the mean label return of each group."
        ),
    ),
    "long_short.png": (
        "Long-short and score autocorrelation",
        (
            "Long-short = G1 − G5, long-average = G1 − the day's mean; autocorrelation of the "
            "score's daily rank with the previous day's."
        ),
    ),
    "backtest.png": (
        "Backtest",
        (
            "Qlib's report_graph quantities: returns are summed, not compounded; the shaded span "
            "is the largest drawdown of the excess return with cost."
        ),
    ),
}


def write_report(run_dir: str | Path) -> Path:
    """Build the figures and the page for a finished run; return the HTML page's path."""
    from qjax.report import analysis, curves, page, portfolio, signal, style
    from qjax.report.artifacts import describe

    run = load_run(run_dir)
    folder = Path(run_dir) / "report"
    folder.mkdir(exist_ok=True)
    figures = {}  # file name -> Figure, in page order
    notes = list(run.notes)
    if run.evals:
        figures["learning_curves.png"] = curves.learning_curves(run.evals, run.best_epochs)
    ic, rank_ic = (
        analysis.daily_ic(run.scores, run.label) if run.label is not None else (None, None)
    )
    if ic is not None and ic.isna().all().all():
        notes.append(
            "the daily IC is undefined on every test day (fewer than two instruments "
            "with a score and a label): no IC or quantile-group figures"
        )
    elif ic is not None:
        figures["ic_daily.png"] = signal.ic_daily(ic, rank_ic)
        figures["ic_distribution.png"] = signal.ic_distribution(ic, rank_ic)
        groups = [analysis.group_returns(run.scores[c], run.label) for c in run.scores]
        if all(g.empty for g in groups):
            notes.append("fewer than 5 scored stocks on every day: no quantile-group figures")
        else:
            figures["group_returns.png"] = signal.group_returns(groups)
            autocorr = pd.DataFrame({c: analysis.score_autocorr(run.scores[c]) for c in run.scores})
            figures["long_short.png"] = signal.long_short(groups, autocorr)
    if run.portfolio is not None:
        traded = (
            f"the first seed's scores ({run.seeds[0]})" if len(run.seeds) > 1 else "the test scores"
        )
        figures["backtest.png"] = portfolio.backtest(run.portfolio, run.benchmark, traded)
    sections = [
        (SECTIONS[name][0], style.save(fig, folder / name), SECTIONS[name][1])
        for name, fig in figures.items()
    ]
    title, subtitle = describe(run)
    return page.write_page(
        Path(run_dir) / "report.html",
        title,
        subtitle,
        page.metric_tables(run.metrics),
        sections,
        notes,
    )
