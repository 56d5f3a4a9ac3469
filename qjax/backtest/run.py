"""One call from predictions and prices to Qlib's PortAnaRecord outputs.

``backtest(pred, market, ...)`` returns the daily report (Qlib's ``report_normal`` columns),
the holdings after each close and ``port_analysis`` (risk of the excess return without and with
cost). ``port_analysis(pred, config, market)`` takes Qlib's ``port_analysis_config`` (the
``strategy`` and ``backtest`` sections of a workflow YAML) unchanged.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from qjax.backtest.benchmark import resolve_benchmark
from qjax.backtest.exchange import Exchange, trading_arrays
from qjax.backtest.market import MarketData, market_from_panel, market_from_qlib
from qjax.backtest.portfolio import REPORT_COLUMNS, simulate
from qjax.backtest.risk import excess_return_analysis
from qjax.backtest.strategy import TopkDropout

BACKTEST_KEYS = ("start_time", "end_time", "account", "benchmark", "exchange_kwargs", "pos_type")


@dataclass(frozen=True)
class BacktestResult:
    report: pd.DataFrame  # Qlib's report_normal columns, indexed by datetime
    positions: pd.DataFrame  # (datetime, instrument) -> amount, price, weight, count_day
    analysis: (
        pd.DataFrame
    )  # Qlib's port_analysis: (excess_return_without/with_cost, metric) x "risk"
    benchmark_name: str
    settings: dict = field(default_factory=dict)

    def metrics(self) -> dict:
        """Flat ``{"excess_return_with_cost.max_drawdown": ..., ...}`` and the benchmark name."""
        flat = {f"{a}.{m}": float(v) for (a, m), v in self.analysis["risk"].items()}
        return {"benchmark": self.benchmark_name, **flat}

    def qlib_positions(self) -> dict:
        """Positions in the shape of Qlib's ``positions_normal``: per day ``{code: {amount,
        price, weight, count_day}, "cash": ..., "now_account_value": ...}``."""
        out = {
            day: {"cash": row.cash, "now_account_value": row.account}
            for day, row in self.report[["cash", "account"]].iterrows()
        }
        for (day, code), row in self.positions.iterrows():
            out[day][code] = {
                "amount": row.amount,
                "price": row.price,
                "weight": row.weight,
                "count_day": int(row.count_day),
            }
        return out

    def save(self, directory: str | os.PathLike) -> Path:
        """Write report.csv, positions.csv and port_analysis.json under ``directory``."""
        out = Path(directory)
        out.mkdir(parents=True, exist_ok=True)
        self.report.to_csv(out / "report.csv")
        self.positions.to_csv(out / "positions.csv")
        payload = {
            "benchmark": self.benchmark_name,
            "settings": self.settings,
            "port_analysis": self.metrics(),
        }
        (out / "port_analysis.json").write_text(json.dumps(payload, indent=2, default=str) + "\n")
        return out


def backtest(
    pred: pd.Series | pd.DataFrame,
    market: MarketData | pd.DataFrame | str | os.PathLike,
    strategy: TopkDropout | Mapping | None = None,
    exchange: Exchange | Mapping | None = None,
    account: float = 1e9,
    benchmark=None,
    start_time=None,
    end_time=None,
    seed: int | None = None,
    risk_freq: str = "day",
    risk_mode: str = "sum",
    universe: str | None = None,
) -> BacktestResult:
    """TopK-dropout backtest of ``pred`` on ``market`` with Qlib's rules (see the package doc).

    pred: scores indexed by (datetime, instrument) (a DataFrame's first column is used, as in
        Qlib). The score of day d is traded on the next trading day.
    market: a :class:`MarketData`, a qjax price panel, or a Qlib data directory.
    start_time/end_time: default to PortAnaRecord's: the first prediction day and the trading
        day after the last one.
    benchmark: an instrument code, codes, a return series/CSV, or None for the equal-weighted
        mean of the universe's members (``universe``: a market name of a Qlib directory).
    seed: seeds the random draws of ``method_sell/method_buy="random"``.
    """
    strategy = _as_strategy(strategy)
    exchange = exchange if isinstance(exchange, Exchange) else Exchange.from_qlib(exchange)
    scores = _check_pred(pred)
    if not isinstance(account, (int, float)) or isinstance(account, bool) or not account > 0:
        raise ValueError(f"account (initial cash) must be a positive number, got {account!r}")
    if strategy.uses_random and seed is None:
        raise ValueError(
            "method_sell/method_buy 'random' needs a seed (seed=...) for a reproducible backtest"
        )
    pred_days = scores.index.get_level_values("datetime")
    if isinstance(market, (str, os.PathLike)):
        first_pred, last_pred = pred_days.min(), pred_days.max()
        codes = exchange.codes if isinstance(exchange.codes, str) else list(exchange.codes)
        extra = set(_instrument_codes(scores))
        if isinstance(benchmark, str):
            extra.add(benchmark)
        elif isinstance(benchmark, (list, tuple)):
            extra.update(benchmark)
        market = market_from_qlib(
            market,
            start_time or first_pred,
            end_time or _pad_end(last_pred),
            codes,
            universe,
            extra,
        )
    elif isinstance(market, pd.DataFrame):
        market = market_from_panel(market)
    elif not isinstance(market, MarketData):
        raise TypeError(
            f"market must be MarketData, a price panel or a Qlib data directory, got {type(market)}"
        )
    market = _with_instruments(market, _instrument_codes(scores))
    rows = _trade_rows(market.dates, pred_days, start_time, end_time)

    score, scored, has_signal = _score_matrix(scores, market, rows)
    trading = trading_arrays(market, exchange, rows)
    bench = resolve_benchmark(benchmark, market, rows)
    sim = simulate(score, scored, has_signal, trading, strategy, exchange, float(account), seed)

    days = market.dates[rows]
    report = pd.DataFrame(
        {c: sim.report[c] for c in REPORT_COLUMNS}, index=pd.DatetimeIndex(days, name="datetime")
    )
    report["bench"] = bench.returns
    report.attrs["benchmark"] = bench.name
    names = np.asarray(market.instruments, dtype=object)
    positions = pd.DataFrame(
        {
            "amount": sim.position_amount,
            "price": sim.position_price,
            "weight": sim.position_weight,
            "count_day": sim.position_count,
        },
        index=pd.MultiIndex.from_arrays(
            [days[sim.position_day], names[sim.position_code]], names=["datetime", "instrument"]
        ),
    )
    analysis = excess_return_analysis(report, freq=risk_freq, mode=risk_mode)
    settings = {
        "strategy": strategy.__dict__,
        "exchange": exchange.__dict__,
        "account": account,
        "start_time": str(days[0].date()),
        "end_time": str(days[-1].date()),
        "seed": seed,
    }
    return BacktestResult(report, positions, analysis, bench.name, settings)


def port_analysis(
    pred: pd.Series | pd.DataFrame,
    config: Mapping,
    market: MarketData | pd.DataFrame | str | os.PathLike,
    seed: int | None = None,
    universe: str | None = None,
) -> BacktestResult:
    """Run Qlib's ``port_analysis_config`` (``strategy`` + ``backtest`` sections) unchanged."""
    unknown = sorted(set(config) - {"strategy", "backtest", "executor"})
    if unknown:
        raise ValueError(
            f"port_analysis_config has unsupported section(s) {unknown}; "
            "expected strategy, backtest"
        )
    executor = config.get("executor")
    if executor is not None:
        kwargs = executor.get("kwargs", {})
        if (
            executor.get("class", "SimulatorExecutor") != "SimulatorExecutor"
            or kwargs.get("time_per_step", "day") != "day"
        ):
            raise ValueError(
                "only Qlib's daily SimulatorExecutor is supported (time_per_step: day)"
            )
        if kwargs.get("trade_type", "serial") != "serial":
            raise ValueError("only the executor's serial trade_type is supported")
    run = dict(config.get("backtest", {}))
    bad = sorted(set(run) - set(BACKTEST_KEYS))
    if bad:
        raise ValueError(
            f"port_analysis_config.backtest has unsupported key(s) {bad}; "
            f"supported: {list(BACKTEST_KEYS)}"
        )
    if run.pop("pos_type", "Position") != "Position":
        raise ValueError("only pos_type 'Position' is supported")
    account = run.get("account", 1e9)
    if isinstance(account, str):
        account = float(account)
    if isinstance(account, Mapping):
        raise ValueError(
            "an account with initial positions is not supported; give the initial cash"
        )
    return backtest(
        pred,
        market,
        strategy=TopkDropout.from_qlib(config.get("strategy", {})),
        exchange=Exchange.from_qlib(run.get("exchange_kwargs")),
        account=account,
        benchmark=run.get("benchmark"),
        start_time=run.get("start_time"),
        end_time=run.get("end_time"),
        seed=seed,
        universe=universe,
    )


def _as_strategy(strategy) -> TopkDropout:
    if strategy is None:
        return TopkDropout()
    if isinstance(strategy, TopkDropout):
        return strategy
    if isinstance(strategy, Mapping):
        return TopkDropout.from_qlib(strategy)
    raise TypeError(
        f"strategy must be a TopkDropout or a Qlib strategy config dict, got {type(strategy)}"
    )


def _check_pred(pred) -> pd.Series:
    if isinstance(pred, pd.DataFrame):
        if pred.shape[1] == 0:
            raise ValueError("pred has no columns")
        pred = pred.iloc[:, 0]
    if not isinstance(pred, pd.Series):
        raise TypeError(
            "pred must be a pd.Series of scores indexed by (datetime, instrument), "
            f"got {type(pred)}"
        )
    if not isinstance(pred.index, pd.MultiIndex) or set(pred.index.names) != {
        "datetime",
        "instrument",
    }:
        raise ValueError(
            "pred must be indexed by (datetime, instrument); "
            f"its index levels are {pred.index.names}"
        )
    if len(pred) == 0:
        raise ValueError("pred is empty: nothing to backtest")
    pred = pred.reorder_levels(["datetime", "instrument"]).astype(np.float64)
    dates = pd.DatetimeIndex(pd.to_datetime(pred.index.get_level_values("datetime")))
    pred.index = pd.MultiIndex.from_arrays(
        [dates, pred.index.get_level_values("instrument").astype(str)],
        names=["datetime", "instrument"],
    )
    return pred.sort_index(kind="stable")


def _instrument_codes(scores: pd.Series) -> list:
    return scores.index.get_level_values("instrument").unique().tolist()


def _pad_end(last_pred: pd.Timestamp) -> pd.Timestamp:
    return last_pred + pd.Timedelta(days=20)  # reaches the next trading day after any holiday


def _trade_rows(dates: pd.DatetimeIndex, pred_days, start_time, end_time) -> slice:
    """Backtest rows: [start, end] with PortAnaRecord's defaults (first prediction day; the
    trading day after the last prediction)."""
    start = pd.Timestamp(start_time) if start_time is not None else pred_days.min()
    if end_time is not None:
        last = int(dates.searchsorted(pd.Timestamp(end_time), side="right")) - 1
    else:
        last = min(int(dates.searchsorted(pred_days.max(), side="right")), len(dates) - 1)
    first = int(dates.searchsorted(start, side="left"))
    if first > last or first >= len(dates):
        raise ValueError(
            f"no trading days between {start.date()} and "
            f"{end_time or 'the day after the last prediction'} "
            f"in the price data ({dates[0].date()} .. {dates[-1].date()})"
        )
    return slice(first, last + 1)


def _with_instruments(market: MarketData, codes) -> MarketData:
    """The market with columns for predicted instruments it lacks (never tradable), sorted."""
    extra = sorted(set(codes) - set(market.instruments))
    if not extra:
        return market
    names = sorted(market.instruments + tuple(extra))
    where = pd.Index(names).get_indexer(market.instruments)

    def widen(a: np.ndarray, fill) -> np.ndarray:
        out = np.full((a.shape[0], len(names)), fill, dtype=a.dtype)
        out[:, where] = a
        return out

    return MarketData(
        market.dates,
        tuple(names),
        {k: widen(v, np.nan) for k, v in market.fields.items()},
        widen(market.raw_close, np.nan),
        widen(market.members, False),
        market.universe,
    )


def _score_matrix(scores: pd.Series, market: MarketData, rows: slice):
    """Scores traded on each backtest day: those dated within the previous trading day (its
    date up to the next trading day, the last one of an instrument kept, as Qlib resamples)."""
    dates = market.dates
    n_days = rows.stop - rows.start
    n = len(market.instruments)
    score = np.full((n_days, n), np.nan)
    scored = np.zeros((n_days, n), dtype=bool)
    stamp = scores.index.get_level_values("datetime")
    made = dates.searchsorted(stamp, side="right") - 1  # the trading day each score belongs to
    day = made + 1 - rows.start  # the backtest row that trades on it
    keep = (made >= 0) & (day >= 0) & (day < n_days)
    col = pd.Index(market.instruments).get_indexer(scores.index.get_level_values("instrument"))
    # Later rows overwrite earlier ones (rows are sorted by date): the last score of the day wins.
    score[day[keep], col[keep]] = scores.to_numpy()[keep]
    scored[day[keep], col[keep]] = True
    return score, scored, scored.any(axis=1)
