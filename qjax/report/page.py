"""One self-contained HTML page: title, metrics tables and every figure embedded as base64
(one file that can be mailed or attached without its folder)."""

from __future__ import annotations

import base64
import html
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

CSS = """
body{font-family:-apple-system,Segoe UI,Helvetica,Arial,sans-serif;max-width:1240px;
margin:24px auto;padding:0 16px;color:#222}
h1{font-size:22px;margin-bottom:2px}.sub{color:#555;margin-top:0}
h2{font-size:16px;margin:28px 0 6px;border-bottom:1px solid #ddd;padding-bottom:3px}
table{border-collapse:collapse;font-size:13px;margin:6px 24px 6px 0;display:inline-table;
vertical-align:top}
th,td{border:1px solid #ddd;padding:4px 10px;text-align:right}th{background:#f4f4f4}
td:first-child,th:first-child{text-align:left}
figure{margin:10px 0 22px}img{max-width:100%;border:1px solid #eee}
figcaption{color:#555;font-size:13px;margin-top:4px}.note{color:#a15c00;font-size:13px}
"""


def table(title: str, rows: Sequence[tuple[str, Any]], header: Sequence[str] = ()) -> str:
    """A small HTML table: rows of (name, value, ...); floats get four significant places."""
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join(
        "<tr>" + "".join(f"<td>{html.escape(_fmt(v))}</td>" for v in row) + "</tr>" for row in rows
    )
    caption = f"<caption><b>{html.escape(title)}</b></caption>"
    return f"<table>{caption}{'<tr>' + head + '</tr>' if head else ''}{body}</table>"


def write_page(
    path: str | Path,
    title: str,
    subtitle: str,
    tables: Sequence[str],
    figures: Sequence[tuple[str, Path, str]],
    notes: Sequence[str] = (),
) -> Path:
    """``figures``: (section heading, PNG path, caption), embedded in this order."""
    parts = [f"<h1>{html.escape(title)}</h1>", f"<p class='sub'>{html.escape(subtitle)}</p>"]
    parts += [f"<p class='note'>{html.escape(n)}</p>" for n in notes]
    parts += ["<h2>Metrics</h2>", *tables]
    for heading, png, caption in figures:
        data = base64.b64encode(Path(png).read_bytes()).decode("ascii")
        parts.append(
            f"<h2>{html.escape(heading)}</h2><figure><img alt='{Path(png).name}' "
            f"src='data:image/png;base64,{data}'><figcaption>{html.escape(caption)}"
            "</figcaption></figure>"
        )
    page = (
        "<!DOCTYPE html><html><head><meta charset='utf-8'>"
        f"<title>{html.escape(title)}</title><style>{CSS}</style></head><body>"
        + "\n".join(parts)
        + "</body></html>\n"
    )
    Path(path).write_text(page, encoding="utf-8")
    return Path(path)


def metric_tables(metrics: Mapping[str, Any]) -> list[str]:
    """The test signal metrics (mean ± std over seeds), per seed, and the backtest's."""
    out = []
    test = metrics.get("test", {})
    rows = []
    long_short = (
        "Long-Short Ann Return",
        "Long-Short Ann Sharpe",
        "Long-Avg Ann Return",
        "Long-Avg Ann Sharpe",
    )  # with signal_analysis.ana_long_short
    for name in ("IC", "ICIR", "Rank IC", "Rank ICIR", *long_short):
        if name in test:
            std = test.get(f"{name} std")
            rows.append(
                (name, _fixed(test[name]) + (f" ± {_fixed(std)}" if std is not None else ""))
            )
    best = metrics.get("best_epoch_1based")
    if best is None and metrics.get("best_epoch") is not None:  # runs before 1-based numbering
        best = [e + 1 for e in metrics["best_epoch"]]
    if best is not None:
        rows.append(("best epoch", ", ".join("n/a" if e is None else str(e) for e in best)))
    if "epochs_run" in metrics:
        rows.append(("epochs run", metrics["epochs_run"]))
    if "samples" in metrics:
        rows.append(("test samples", metrics["samples"].get("test")))
    out.append(table("Test signal", rows))
    per_seed = metrics.get("test_per_seed")
    if per_seed:
        names = ["IC", "ICIR", "Rank IC", "Rank ICIR"]
        out.append(
            table(
                "Per seed",
                [(s, *(v.get(n) for n in names)) for s, v in per_seed.items()],
                header=["seed", *names],
            )
        )
    # The backtest trades the first seed's scores; say so where seed means sit beside it.
    traded = f" (backtest of {next(iter(per_seed))}'s scores)" if per_seed else ""
    seven = metrics.get("seven_columns")
    if seven:
        ic_note = "; IC columns: seed means" if per_seed else ""
        out.append(
            table(
                f"Qlib's benchmark columns{traded[:-1]}{ic_note})"
                if per_seed
                else "Qlib's benchmark columns",
                list(seven.items()),
            )
        )
    bt = metrics.get("backtest")
    if bt:
        names = ("mean", "std", "annualized_return", "information_ratio", "max_drawdown")
        rows = [
            (kind.replace("_", " "), *(bt.get(f"{kind}.{n}") for n in names))
            for kind in ("excess_return_without_cost", "excess_return_with_cost")
        ]
        out.append(
            table(
                f"Risk analysis{traded} against {bt.get('benchmark', '?')}",
                rows,
                header=["", *(n.replace("_", " ") for n in names)],
            )
        )
    return out


def _fixed(value: Any) -> str:
    return "n/a" if value is None else f"{value:.4f}"


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}" if abs(value) >= 1e-3 or value == 0 else f"{value:.3e}"
    return "n/a" if value is None else str(value)
