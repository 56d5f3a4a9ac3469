"""A vectorised TopK-dropout backtest equal to ``qlib.backtest`` as Qlib's PortAnaRecord runs it.

- :mod:`qjax.backtest.market`: dense price arrays from a qjax panel or a Qlib data directory;
- :mod:`qjax.backtest.exchange`: Qlib's exchange rules (limits, deal prices, trade units, costs);
- :mod:`qjax.backtest.strategy`: the TopK-dropout choice of one day;
- :mod:`qjax.backtest.portfolio`: the day loop and its accounting (cash, holdings, report);
- :mod:`qjax.backtest.benchmark`: the benchmark's daily return;
- :mod:`qjax.backtest.risk`: risk analysis and SigAna's long-short return;
- :mod:`qjax.backtest.run`: ``backtest(pred, market, ...)`` and ``port_analysis(pred, config,
  market)`` returning the report, the positions and the risk analysis.
"""

from qjax.backtest.benchmark import equal_weight_name
from qjax.backtest.exchange import Exchange
from qjax.backtest.market import MarketData, market_from_panel, market_from_qlib
from qjax.backtest.risk import long_short_return, risk_analysis, signal_analysis_long_short
from qjax.backtest.run import BacktestResult, backtest, port_analysis
from qjax.backtest.strategy import TopkDropout

__all__ = [
    "BacktestResult",
    "Exchange",
    "MarketData",
    "TopkDropout",
    "backtest",
    "equal_weight_name",
    "long_short_return",
    "market_from_panel",
    "market_from_qlib",
    "port_analysis",
    "risk_analysis",
    "signal_analysis_long_short",
]
