"""Train every shipped config end to end with ``qjax train`` and tabulate its test IC.

Each config runs in its own process exactly as a user would run it (``qjax train CONFIG --out
RUNS/<name>``), so the table shows what the configs deliver on a fresh machine: test IC, ICIR,
Rank IC and Rank ICIR on the generated market, the best and the last epoch, and the wall time.
An interrupted sweep picks up where it stopped: finished runs are read back, unfinished ones
resume from their checkpoints (the CLI's own resume).

    python benchmarks/configs_ic.py --runs runs/configs --out benchmarks/results
    python benchmarks/configs_ic.py --configs 'configs/lstm_*.yaml' --runs runs/
"""

from __future__ import annotations

import argparse
import glob
import json
import subprocess
import sys
import time
from pathlib import Path

from _common import command_line, load_average, machine

REPO = Path(__file__).resolve().parents[1]


def run_config(path: Path, run_dir: Path, timeout: float | None) -> dict:
    """``qjax train`` on one config; its metrics.json plus the wall time (or the failure)."""
    metrics_file = run_dir / "metrics.json"
    if metrics_file.exists():
        return {**json.loads(metrics_file.read_text()), "wall_s": None, "reused": True}
    command = [
        sys.executable,
        "-m",
        "qjax.cli",
        "train",
        str(path),
        "--out",
        str(run_dir),
        "--quiet",
    ]
    start = time.perf_counter()
    try:
        done = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"error": f"stopped after {timeout:.0f} s (rerun to resume from its checkpoint)"}
    wall = time.perf_counter() - start
    if done.returncode != 0:
        tail = (done.stderr or done.stdout).strip().splitlines()[-3:]
        return {"error": f"exit {done.returncode}: {' / '.join(tail)}", "wall_s": wall}
    return {**json.loads(metrics_file.read_text()), "wall_s": wall}


def report(results: dict[str, dict], meta: dict) -> str:
    # Wall time is measured only for runs made by this sweep (not for runs read back).
    with_wall = any(r.get("wall_s") is not None for r in results.values())
    lines = [
        "# Every shipped config trained with `qjax train` (generated market)",
        "",
        f"Command: `{meta['command']}`",
        "",
        f"Run {meta['started']}; load average before {meta['load_before']}, after "
        f"{meta['load_after']}; {meta['machine']['cpu']} ({meta['machine']['logical_cores']} logical cores).",
        "",
        *([meta["note"], ""] if meta.get("note") else []),
        "Test segment metrics of the best-validation parameters (daily Pearson IC / Spearman "
        "Rank IC against the raw label, mean over days; ICIR = mean / std). The generated "
        "market's planted signal has an oracle daily IC of about 0.15.",
        "",
        "| config | model | IC | ICIR | Rank IC | Rank ICIR | best epoch | epochs run | fit s |"
        + (" wall s |" if with_wall else ""),
        "|---|---|---:|---:|---:|---:|---:|---:|---:|" + ("---:|" if with_wall else ""),
    ]
    for name, r in results.items():
        if "error" in r:
            lines.append(f"| {name} | – | {r['error']} |" + "  |" * (6 + with_wall))
            continue
        t = r["test"]
        wall = "–" if r.get("wall_s") is None else f"{r['wall_s']:.0f}"  # "–": read back
        lines.append(
            f"| {name} | {r['model']} | {t['IC']:.4f} | {t['ICIR']:.3f} | {t['Rank IC']:.4f} | "
            f"{t['Rank ICIR']:.3f} | {', '.join(_best_epochs(r))} | "
            f"{r['epochs_run']} | {r['seconds']['fit']:.0f} |" + (f" {wall} |" if with_wall else "")
        )
    return "\n".join(lines) + "\n"


def _best_epochs(result: dict) -> list[str]:
    """1-based best epochs; results written before metrics.json said "best_epoch_1based" held
    0-based "best_epoch"."""
    if "best_epoch_1based" in result:
        return ["–" if e is None else str(e) for e in result["best_epoch_1based"]]
    return [str(e + 1) for e in result["best_epoch"]]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument(
        "--configs",
        default="configs/*.yaml",
        help="comma-separated globs of configs (relative to the repo); several sweeps "
        "over disjoint lists can share one --runs directory",
    )
    p.add_argument(
        "--skip", default="csi300", help="comma-separated substrings of config names to leave out"
    )
    p.add_argument("--runs", required=True, help="directory for the run directories")
    p.add_argument("--timeout", type=float, default=None, help="seconds per config")
    p.add_argument("--out", help="write configs_ic.{md,json} here")
    p.add_argument("--note", default="", help="a line for the report (how the runs were made)")
    args = p.parse_args(argv)

    skip = [s for s in args.skip.split(",") if s]
    paths = sorted(
        {Path(p) for g in args.configs.split(",") for p in glob.glob(str(REPO / g.strip()))}
    )
    paths = [p for p in paths if not any(s in p.stem for s in skip)]
    if not paths:
        p.error(f"no config matches {args.configs!r}")
    meta = {
        "command": command_line(),
        "note": args.note,
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "load_before": load_average(),
        "machine": machine(),
    }
    results = {}
    for path in paths:
        print(f"[{path.stem}] ...", file=sys.stderr, flush=True)
        results[path.stem] = run_config(path, Path(args.runs) / path.stem, args.timeout)
        r = results[path.stem]
        print(
            f"[{path.stem}] " + (r["error"] if "error" in r else f"IC {r['test']['IC']:.4f}"),
            file=sys.stderr,
            flush=True,
        )
    results = {stem: results[stem] for stem in sorted(results)}
    meta["load_after"] = load_average()
    text = report(results, meta)
    print(text)
    if args.out:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        (out / "configs_ic.md").write_text(text)
        (out / "configs_ic.json").write_text(
            json.dumps({**meta, "results": results}, indent=2, default=str)
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
