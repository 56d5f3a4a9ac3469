"""qjax's backtest against Qlib's on the shared real CSI300 data (a short span, to stay fast).

Same tolerance as the generated-data parity tests: 1e-6 relative, 1e-12 absolute floor.
"""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
import pytest

from qjax.backtest import backtest
from qjax.data.qlib_binary import QlibBinaryData
from tests.backtest.qlib_backtest import run_qlib_backtest
from tests.backtest.test_backtest_parity import _assert_same

pytestmark = [pytest.mark.parity, pytest.mark.shared_data]

START, END = "2020-01-02", "2020-03-31"
EXCHANGE = dict(
    limit_threshold=0.095, deal_price="close", open_cost=0.0005, close_cost=0.0015, min_cost=5
)


def _member_predictions(root, seed: int) -> pd.Series:
    """Seeded random scores for every CSI300 member on every day of its membership."""
    data = QlibBinaryData(root)
    days = data.calendar()[slice(*np.add(data.locate(START, END), (0, 1)))]
    pairs = [
        (day, code)
        for code, spans in data.instruments("csi300", START, END).items()
        for begin, end in spans
        for day in days[(days >= begin) & (days <= end)]
    ]
    index = pd.MultiIndex.from_tuples(sorted(pairs), names=["datetime", "instrument"])
    return pd.Series(np.random.default_rng(seed).standard_normal(len(index)), index=index)


@pytest.mark.parametrize("deal_price, limit, seed", [("close", 0.095, 0), ("open", 9.5, 1)])
def test_csi300_top50_equals_qlib(qlib_csi300, deal_price, limit, seed):
    """The shared data stores $change in percent, so Qlib's 0.095 limit blocks most trades; a
    9.5 threshold is the real 9.5% limit there and fills the 50 slots. Both must equal Qlib."""
    pred = _member_predictions(qlib_csi300, seed)
    exchange = dict(EXCHANGE, deal_price=deal_price, limit_threshold=limit)
    common = dict(account=1e8, benchmark="SH600000", start_time=START, end_time=END)
    strategy = dict(topk=50, n_drop=5)
    theirs = run_qlib_backtest(pred, strategy, dict(common, exchange_kwargs=exchange))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        mine = backtest(pred, qlib_csi300, strategy=strategy, exchange=exchange, **common)
    _assert_same(mine, theirs, f"csi300 {deal_price} limit={limit} seed={seed}")
    held = mine.positions.groupby(level="datetime").size()
    if limit > 1:
        assert held.iloc[-1] >= 45  # a stock or two may be suspended on its buying day
    else:
        assert any("percent" in str(w.message) for w in caught)
