"""Time qjax's Alpha158/Alpha360 handlers against Qlib's on a Qlib binary data directory.

    python benchmarks/handler_vs_qlib.py --data ../shared/data/cn_csi300 \
        --start 2019-07-01 --end 2019-12-31

qjax: one warm-up call (it also warms the OS file cache), then the median of ``--repeats``.
Qlib: ``Alpha158/Alpha360(..., infer_processors=[], learn_processors=[]).fetch(col_set=
["feature", "label"], data_key="raw")`` with ``qlib.init(kernels=--qlib-kernels)``, timed
``--qlib-repeats`` times with its in-memory expression cache cleared before each run (Qlib's
own first run is after qjax's warm-up, so the file cache is warm for both). Each pair of frames
is also compared (row index, columns, NaN masks, worst relative error). Writes
``<out>.md`` and ``<out>.json``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import numpy as np
import pandas as pd
from _common import args_record, command_line, host, load_average

from qjax.data.features import HANDLERS, load_handler

REPO = Path(__file__).resolve().parents[1]


def _compare(theirs: pd.DataFrame, ours: pd.DataFrame) -> dict:
    """Row/column equality, NaN-mask equality and the worst relative error of finite values."""
    same_index, same_columns = ours.index.equals(theirs.index), ours.columns.equals(theirs.columns)
    result = {"index_equal": bool(same_index), "columns_equal": bool(same_columns)}
    if not (same_index and same_columns):
        return result
    a, b = theirs.to_numpy(np.float64), ours.to_numpy(np.float64)
    finite = np.isfinite(a) & np.isfinite(b)
    diff = np.abs(a - b)[finite]
    scale = np.abs(a)[finite]
    big = scale > 1e-3  # relative error is only meaningful away from zero
    result.update(
        nan_mask_equal=bool((np.isnan(a) == np.isnan(b)).all()),
        max_abs_err=float(diff.max(initial=0.0)),
        max_rel_err=float((diff[big] / scale[big]).max(initial=0.0)),  # over |Qlib value| > 1e-3
        allclose=bool(np.allclose(b[finite], a[finite], rtol=1e-5, atol=1e-6)),
    )
    return result


def _time_qjax(name: str, args) -> tuple[list[float], float, pd.DataFrame]:
    t0 = time.perf_counter()
    frame = load_handler(name, args.data, args.market, args.start, args.end)
    first = time.perf_counter() - t0
    times = []
    for _ in range(args.repeats):
        t0 = time.perf_counter()
        frame = load_handler(name, args.data, args.market, args.start, args.end)
        times.append(time.perf_counter() - t0)
    return times, first, frame


def _time_qlib(name: str, args) -> tuple[list[float], pd.DataFrame]:
    from qlib.contrib.data import handler as qlib_handlers
    from qlib.data.cache import H

    times, frame = [], None
    for _ in range(args.qlib_repeats):
        H["f"].clear()  # Qlib memoises expressions in-process; every run must compute from files
        t0 = time.perf_counter()
        handler = getattr(qlib_handlers, name)(
            instruments=args.market,
            start_time=args.start,
            end_time=args.end,
            infer_processors=[],
            learn_processors=[],
        )
        frame = handler.fetch(col_set=["feature", "label"], data_key="raw")
        times.append(time.perf_counter() - t0)
    return times, frame


def _markdown(report: dict) -> str:
    m, a = report["machine"], report["args"]
    lines = [
        "# qjax vs Qlib: Alpha158 / Alpha360 handlers",
        "",
        f"Command: `{report['command']}`",
        "",
        f"Data: `{a['market']}` from {a['start']} to {a['end']} (Qlib binary layout; path given on the command line).",
        f"Machine: {m['cpu']}, {m['logical_cores']} logical cores, {m['ram_gib']} GiB RAM, {m['platform']}; "
        f"Python {m['python']}, " + ", ".join(f"{k} {v}" for k, v in m["versions"].items()) + ".",
        f"Load average (1/5/15 min) before: {report['load_before']}, after: {report['load_after']}. "
        "The machine is shared with other jobs, so absolute times are noisy; both sides ran in the "
        "same process back to back.",
        f"qjax: single-threaded NumPy, median of {a['repeats']} runs after one warm-up. "
        f"Qlib: `kernels={a['qlib_kernels']}`, {a['qlib_repeats']} run(s), expression cache cleared before each.",
        "",
        "| handler | rows x cols | qjax median (s) | qjax first call (s) | Qlib (s) | speed-up | parity |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, r in report["results"].items():
        qlib_s = f"{statistics.median(r['qlib_s']):.1f}" if r["qlib_s"] else "skipped"
        speedup = f"{r['speedup']:.0f}x" if r.get("speedup") else "-"
        parity = r.get("parity")
        parity_text = "-"
        if parity:
            index_eq = "=" if parity["index_equal"] else "!="
            columns_eq = "=" if parity["columns_equal"] else "!="
            parity_text = f"index {index_eq}, columns {columns_eq}"
            if "nan_mask_equal" in parity:
                parity_text += (
                    f", NaN masks {'=' if parity['nan_mask_equal'] else '!='}, "
                    f"max rel err {parity['max_rel_err']:.1e} (where \\|x\\| > 1e-3), "
                    f"max abs err {parity['max_abs_err']:.1e}, "
                    f"allclose(rtol=1e-5, atol=1e-6) {parity['allclose']}"
                )
        lines.append(
            f"| {name} | {r['shape'][0]} x {r['shape'][1]} | {statistics.median(r['qjax_s']):.3f} | "
            f"{r['qjax_first_s']:.3f} | {qlib_s} | {speedup} | {parity_text} |"
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--data",
        type=Path,
        default=REPO.parent / "shared" / "data" / "cn_csi300",
        help="Qlib binary data directory (default: ../shared/data/cn_csi300 beside the repo)",
    )
    parser.add_argument("--market", default="csi300")
    parser.add_argument("--start", default="2019-07-01")
    parser.add_argument("--end", default="2019-12-31")
    parser.add_argument("--handlers", nargs="+", default=list(HANDLERS), choices=HANDLERS)
    parser.add_argument(
        "--repeats", type=int, default=5, help="timed qjax runs (after one warm-up)"
    )
    parser.add_argument(
        "--qlib-repeats", type=int, default=1, help="timed Qlib runs (0 skips Qlib)"
    )
    parser.add_argument("--qlib-kernels", type=int, default=1, help="qlib.init(kernels=...)")
    parser.add_argument(
        "--out",
        type=Path,
        default=REPO / "benchmarks" / "results" / "handler_vs_qlib",
        help="output path without extension (.md and .json are written)",
    )
    args = parser.parse_args(argv)

    if args.qlib_repeats > 0:
        import qlib
        from qlib.constant import REG_CN

        qlib.init(provider_uri=str(args.data), region=REG_CN, kernels=args.qlib_kernels)

    report = {
        "command": command_line(),
        "args": args_record(args),
        "machine": host("numpy", "pandas", "qlib"),
        "load_before": load_average(),
        "results": {},
    }
    for name in args.handlers:
        qjax_s, first_s, ours = _time_qjax(name, args)
        result = {
            "shape": list(ours.shape),
            "qjax_s": qjax_s,
            "qjax_first_s": first_s,
            "qlib_s": [],
        }
        median = statistics.median(qjax_s)
        print(
            f"{name}: qjax median {median:.3f}s (first {first_s:.3f}s), shape {ours.shape}",
            flush=True,
        )
        if args.qlib_repeats > 0:
            result["qlib_s"], theirs = _time_qlib(name, args)
            result["speedup"] = statistics.median(result["qlib_s"]) / statistics.median(qjax_s)
            result["parity"] = _compare(theirs, ours)
            qlib_median = statistics.median(result["qlib_s"])
            print(
                f"{name}: qlib {qlib_median:.1f}s, speed-up {result['speedup']:.0f}x, {result['parity']}",
                flush=True,
            )
        report["results"][name] = result
    report["load_after"] = load_average()

    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".json").write_text(json.dumps(report, indent=2) + "\n")
    markdown = _markdown(report)
    args.out.with_suffix(".md").write_text(markdown)
    print(markdown)
    return report


if __name__ == "__main__":
    main()
