"""Time qjax's TopK-dropout backtest against ``qlib.backtest.backtest`` (what PortAnaRecord runs).

    python benchmarks/backtest_vs_qlib.py --data ../shared/data/cn_csi300 \
        --start 2017-01-03 --end 2020-07-31 --repeats 3

The case is Qlib's benchmark backtest: CSI300, TopkDropoutStrategy(topk=50, n_drop=5), account
1e8, deal price close, open/close cost 5e-4/1.5e-3, min cost 5, over 3.5 years, on seeded random
scores for every CSI300 member and day (random scores swap n_drop stocks every day: the most
trading work). The benchmark is an instrument code of the data (``--benchmark``; the shared
data has no index series). ``--limit`` defaults to 9.5 because the shared data stores $change
in percent (0.095, the YAML's value, would block most trades there, in Qlib as in qjax).

Timed, alternating in one process, ``--repeats`` rounds of:

- Qlib: ``qlib.backtest.backtest(...)`` end to end (its exchange loads the quote of the
  ``all`` universe, then the day loop), with Qlib's in-memory feature cache cleared first;
- qjax end to end: ``qjax.backtest.backtest(pred, data_dir, ...)`` (reads the binaries too);
- qjax simulation: the same on prices already loaded (``market_from_qlib`` once).

Every round's outputs are compared: report columns and risk analysis within 1e-6 relative
(1e-12 absolute), positions equal. Writes ``<out>.md`` and ``<out>.json``.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import logging
import statistics
import time
from pathlib import Path

import numpy as np
import pandas as pd
from _common import args_record, command_line, host, load_average

from qjax.backtest import backtest, market_from_qlib
from qjax.data.qlib_binary import QlibBinaryData

REPO = Path(__file__).resolve().parents[1]
RTOL, ATOL = 1e-6, 1e-12


def member_predictions(data_dir: Path, market: str, start: str, end: str, seed: int) -> pd.Series:
    data = QlibBinaryData(data_dir)
    first, last = data.locate(start, end)
    days = data.calendar()[first : last + 1]
    pairs = [
        (day, code)
        for code, spans in data.instruments(market, start, end).items()
        for begin, stop in spans
        for day in days[(days >= begin) & (days <= stop)]
    ]
    index = pd.MultiIndex.from_tuples(sorted(pairs), names=["datetime", "instrument"])
    return pd.Series(np.random.default_rng(seed).standard_normal(len(index)), index=index)


def run_qlib(pred: pd.Series, args) -> tuple[pd.DataFrame, pd.DataFrame]:
    from qlib.backtest import backtest as qlib_backtest
    from qlib.contrib.evaluate import risk_analysis
    from qlib.data.cache import H

    H["f"].clear()  # Qlib memoises loaded features in-process; each run reads the files
    strategy = {
        "class": "TopkDropoutStrategy",
        "module_path": "qlib.contrib.strategy",
        "kwargs": {"signal": pred, "topk": args.topk, "n_drop": args.n_drop},
    }
    executor = {
        "class": "SimulatorExecutor",
        "module_path": "qlib.backtest.executor",
        "kwargs": {"time_per_step": "day", "generate_portfolio_metrics": True},
    }
    with contextlib.redirect_stderr(io.StringIO()):
        portfolio, _ = qlib_backtest(
            start_time=args.start,
            end_time=args.end,
            strategy=strategy,
            executor=executor,
            account=args.account,
            benchmark=args.benchmark,
            exchange_kwargs=exchange_kwargs(args),
        )
    report, _ = portfolio["1day"]
    excess = report["return"] - report["bench"]
    analysis = pd.concat(
        {
            "excess_return_without_cost": risk_analysis(excess, freq="day"),
            "excess_return_with_cost": risk_analysis(excess - report["cost"], freq="day"),
        }
    )
    return report, analysis


def exchange_kwargs(args) -> dict:
    return {
        "limit_threshold": args.limit,
        "deal_price": "close",
        "open_cost": 0.0005,
        "close_cost": 0.0015,
        "min_cost": 5,
    }


def run_qjax(pred: pd.Series, market, args):
    return backtest(
        pred,
        market,
        strategy={"topk": args.topk, "n_drop": args.n_drop},
        exchange=exchange_kwargs(args),
        account=args.account,
        benchmark=args.benchmark,
        start_time=args.start,
        end_time=args.end,
    )


def compare(mine, report: pd.DataFrame, analysis: pd.DataFrame) -> dict:
    worst = {}
    for column in report.columns:
        a, b = mine.report[column].to_numpy(), report[column].to_numpy()
        np.testing.assert_allclose(a, b, rtol=RTOL, atol=ATOL, err_msg=column)
        big = np.abs(b) > 1e-9
        worst[column] = float((np.abs(a - b)[big] / np.abs(b[big])).max(initial=0.0))
    np.testing.assert_allclose(
        mine.analysis["risk"].to_numpy(), analysis["risk"].to_numpy(), rtol=RTOL, atol=ATOL
    )
    return worst


def markdown(report: dict, args, n_pred: int, medians: tuple) -> str:
    q, e, s = medians

    def rounds(key: str, digits: int) -> str:
        return ", ".join(f"{x:.{digits}f}" for x in report[key])

    m = report["machine"]
    errors = ", ".join(f"{k} {v:.1e}" for k, v in report["max_rel_err"].items())
    risk = ", ".join(f"{k} {v:.4f}" for k, v in report["risk"].items() if k != "benchmark")
    lines = [
        "# qjax vs Qlib: TopK-dropout backtest (PortAnaRecord's `qlib.backtest`)",
        "",
        f"Command: `{report['command']}`",
        "",
        f"CSI300 ({args.start} .. {args.end}, {report['days']} trading days, {n_pred} "
        f"predictions), TopkDropoutStrategy(topk={args.topk}, n_drop={args.n_drop}), account "
        f"{args.account:g}, deal price close, costs 5e-4 / 1.5e-3 / min 5, limit {args.limit} "
        f"($change is in percent in this data), benchmark {args.benchmark}. Seeded random "
        f"scores (seed {args.seed}).",
        "",
        f"Machine: {m['cpu']}, {m['logical_cores']} logical cores, shared with other jobs (load "
        f"average {report['load_before']} before, {report['load_after']} after); Qlib with "
        f"kernels=1. Medians of {args.repeats} alternating rounds.",
        "",
        "| | seconds (median) | all rounds | speed-up vs Qlib |",
        "|---|---:|---|---:|",
        f"| Qlib `qlib.backtest.backtest` (end to end) | {q:.2f} | {rounds('qlib_s', 2)} | 1x |",
        f"| qjax `backtest(pred, data_dir)` (end to end) | {e:.3f} | "
        f"{rounds('qjax_e2e_s', 3)} | {q / e:.0f}x |",
        f"| qjax simulation on loaded prices | {s:.3f} | {rounds('qjax_sim_s', 3)} | "
        f"{q / s:.0f}x |",
        "",
        "Same result: every report column and the risk analysis agree within 1e-6 relative "
        "(asserted each round); worst relative error per report column (values above 1e-9): "
        f"{errors}.",
        "",
        f"Risk analysis (qjax): {risk}.",
    ]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data" / "cn_csi300")
    parser.add_argument("--market", default="csi300")
    parser.add_argument("--start", default="2017-01-03")
    parser.add_argument("--end", default="2020-07-31")
    parser.add_argument("--topk", type=int, default=50)
    parser.add_argument("--n-drop", type=int, default=5)
    parser.add_argument("--account", type=float, default=1e8)
    parser.add_argument("--benchmark", default="SH600000")
    parser.add_argument("--limit", type=float, default=9.5)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument(
        "--out", type=Path, default=REPO / "benchmarks" / "results" / "backtest_vs_qlib"
    )
    args = parser.parse_args(argv)

    import qlib
    from qlib.constant import REG_CN

    qlib.init(provider_uri=str(args.data), region=REG_CN, kernels=1)
    logging.getLogger("qlib").setLevel(logging.ERROR)
    pred = member_predictions(args.data, args.market, args.start, args.end, args.seed)
    report = {
        "command": command_line(),
        "args": args_record(args),
        "machine": host("numpy", "pandas", "qlib"),
        "predictions": len(pred),
        "load_before": load_average(),
        "qlib_s": [],
        "qjax_e2e_s": [],
        "qjax_sim_s": [],
        "max_rel_err": {},
    }
    run_qjax(pred, args.data, args)  # warm-up: imports, OS file cache
    market = market_from_qlib(
        args.data,
        args.start,
        args.end,
        "all",
        None,
        set(pred.index.get_level_values(1)) | {args.benchmark},
    )
    for round_ in range(args.repeats):
        t0 = time.perf_counter()
        theirs = run_qlib(pred, args)
        report["qlib_s"].append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        mine = run_qjax(pred, args.data, args)
        report["qjax_e2e_s"].append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        on_loaded = run_qjax(pred, market, args)
        report["qjax_sim_s"].append(time.perf_counter() - t0)
        report["max_rel_err"] = compare(mine, *theirs)
        compare(on_loaded, *theirs)
        times = [report[k][-1] for k in ("qlib_s", "qjax_e2e_s", "qjax_sim_s")]
        print(
            "round {}: qlib {:.2f}s, qjax end-to-end {:.3f}s, simulation {:.3f}s".format(
                round_, *times
            ),
            flush=True,
        )
    report["load_after"] = load_average()
    q, e, s = (statistics.median(report[k]) for k in ("qlib_s", "qjax_e2e_s", "qjax_sim_s"))
    report["speedup_e2e"], report["speedup_sim"] = q / e, q / s
    report["days"] = len(mine.report)
    report["risk"] = mine.metrics()

    text = markdown(report, args, len(pred), (q, e, s))

    print(text)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".json").write_text(json.dumps(report, indent=2, default=str) + "\n")
    args.out.with_suffix(".md").write_text(text)
    return report


if __name__ == "__main__":
    main()
