"""Each exchange/strategy rule of the backtest on hand-made markets, with hand-computed answers."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from qjax.backtest import Exchange, TopkDropout, backtest, market_from_panel, market_from_qlib
from qjax.backtest.exchange import affordable_amount, round_to_trade_unit, trade_cost
from qjax.data import generate_market
from qjax.data.qlib_writer import write_qlib_binary

CODES = ["A", "B", "C", "D", "E", "F"]
DAYS = pd.bdate_range("2021-01-04", periods=6)
NO_COST = dict(open_cost=0.0, close_cost=0.0, min_cost=0.0)


def _panel(close: np.ndarray, factor: np.ndarray | None = None) -> pd.DataFrame:
    """A panel from a [T, N] close array (NaN = no row that day: suspended)."""
    t, n = close.shape
    factor = np.ones_like(close) if factor is None else factor
    rows = [
        (DAYS[i], CODES[j], close[i, j], factor[i, j])
        for i in range(t)
        for j in range(n)
        if not np.isnan(close[i, j])
    ]
    frame = pd.DataFrame(rows, columns=["datetime", "instrument", "close", "factor"])
    frame["open"] = frame["close"]
    return frame.set_index(["datetime", "instrument"]).astype(np.float32)


def _pred(scores: np.ndarray) -> pd.Series:
    """Scores [T, N] made on DAYS[t] (traded on DAYS[t + 1])."""
    t, n = scores.shape
    index = pd.MultiIndex.from_product([DAYS[:t], CODES[:n]], names=["datetime", "instrument"])
    return pd.Series(scores.ravel(), index=index)


def _held(result, day: int) -> dict:
    rows = (
        result.positions.xs(DAYS[day], level="datetime")
        if DAYS[day] in result.positions.index.levels[0]
        else None
    )
    return {} if rows is None else rows["amount"].round(6).to_dict()


def _run(close, scores, strategy, account=1e5, factor=None, **exchange):
    exchange = Exchange(**{"limit_threshold": 0.095, **NO_COST, **exchange})  # None: no limits
    return backtest(
        _pred(scores),
        _panel(close, factor),
        strategy=strategy,
        exchange=exchange,
        account=account,
        benchmark=None,
        start_time=DAYS[0],
        end_time=DAYS[-1],
    )


def test_round_to_trade_unit_counts_raw_shares():
    assert round_to_trade_unit(1234.5, 2.0, 100) == pytest.approx(1200.0)  # 2469 raw -> 2400 raw
    assert round_to_trade_unit(299.95, 1.0, 100) == 300.0  # 0.1 raw share of slack for float error
    assert round_to_trade_unit(950.0, 3.0, 100) == pytest.approx(2800 / 3)
    assert round_to_trade_unit(123.4, 3.0, None) == 123.4


def test_trade_cost_has_a_floor_and_nothing_for_no_trade():
    assert trade_cost(9000.0, 0.0005, 5.0) == 5.0
    assert trade_cost(20000.0, 0.0005, 5.0) == pytest.approx(10.0)
    assert trade_cost(1e-6, 0.0005, 5.0) == 0.0


def test_affordable_amount_pays_value_plus_fee():
    assert affordable_amount(10.0, 1000.0, 0.001, 5.0) == pytest.approx(99.5)  # fee at its floor
    assert affordable_amount(10.0, 1e6, 0.001, 5.0) == pytest.approx(1e6 / 1.001 / 10)
    assert affordable_amount(10.0, 4.0, 0.001, 5.0) == 0.0  # not even the fee


def test_limit_up_blocks_buying_and_limit_down_blocks_selling():
    close = np.full((4, 4), 10.0)
    close[1, 0] = 11.0  # A +10% on day 1: limit up, cannot be bought
    close[2:, 1] = 9.0  # B -10% on day 2: limit down, cannot be sold
    scores = np.array([[4, 3, 2, 1], [4, 1, 3, 2], [4, 1, 3, 2]], dtype=float)
    result = _run(close, scores, TopkDropout(topk=2, n_drop=1))
    assert _held(result, 1) == {"B": 4700.0}  # 1e5 * 0.95 / 2 / 10 = 4750 -> 47 lots
    assert "B" in _held(result, 2)  # ranked last on day 2 but limit-down
    no_limits = _run(close, scores, TopkDropout(topk=2, n_drop=1), limit_threshold=None)
    assert set(_held(no_limits, 1)) == {"A", "B"}
    assert "B" not in _held(no_limits, 2)


def test_forbid_all_trade_at_limit_false_sells_at_limit_up():
    close = np.full((4, 3), 10.0)
    close[2:, 0] = 11.0  # A +10% on day 2 while held and ranked last
    scores = np.array([[3, 2, 1], [1, 2, 3], [1, 2, 3]], dtype=float)
    strict = _run(close, scores, TopkDropout(topk=1, n_drop=1))
    assert set(_held(strict, 2)) == {"A", "C"}  # Qlib's default forbids any trade at a limit
    relaxed = _run(close, scores, TopkDropout(topk=1, n_drop=1, forbid_all_trade_at_limit=False))
    assert set(_held(relaxed, 2)) == {"C"}


def test_hold_thresh_keeps_a_stock_and_the_buy_still_happens():
    close = np.full((5, 3), 10.0)
    scores = np.array([[3, 2, 1], [1, 3, 2], [1, 3, 2]], dtype=float)
    once = _run(close, scores, TopkDropout(topk=1, n_drop=1, hold_thresh=1))
    assert set(_held(once, 2)) == {"B"}
    twice = _run(close, scores, TopkDropout(topk=1, n_drop=1, hold_thresh=2))
    # A (held through one close) may not be sold yet, but Qlib buys B anyway: two holdings.
    assert set(_held(twice, 2)) == {"A", "B"}
    assert set(_held(twice, 3)) == {"B"}


def test_dropout_replaces_at_most_n_drop_stocks_a_day():
    close = np.full((6, 6), 10.0)
    rng = np.random.default_rng(0)
    scores = np.array([rng.permutation(6) for _ in range(5)], dtype=float)
    result = _run(close, scores, TopkDropout(topk=3, n_drop=1), account=1e6)
    previous = set(_held(result, 1))
    assert len(previous) == 3, "seed 0"
    for day in range(2, 6):
        now = set(_held(result, day))
        assert len(now) == 3 and len(now - previous) <= 1 and len(previous - now) <= 1, (
            f"seed 0 day {day}"
        )
        previous = now
    assert any(set(_held(result, d)) != set(_held(result, d + 1)) for d in range(1, 5))


def test_min_cost_and_trade_unit_with_factor():
    close = np.full((3, 1), 10.0)
    factor = np.full((3, 1), 3.0)  # raw price 10 / 3: lots of 100 raw shares = 33.3 adjusted
    result = _run(
        close,
        np.array([[1.0], [1.0]]),
        TopkDropout(topk=1, n_drop=1),
        account=1e4,
        factor=factor,
        open_cost=0.0005,
        close_cost=0.0015,
        min_cost=5,
    )
    amount = 2800 / 3  # 9500 / 10 = 950 adjusted = 2850 raw -> 2800 raw
    assert _held(result, 1) == {"A": round(amount, 6)}
    day1 = result.report.iloc[1]
    assert day1["cost"] == pytest.approx(5 / 1e4)  # 0.05% of 9333 is 4.67 < the 5 floor
    assert day1["cash"] == pytest.approx(1e4 - amount * 10 - 5)
    assert day1["turnover"] == pytest.approx(amount * 10 / 1e4)
    qlib_shaped = result.qlib_positions()[DAYS[1]]
    assert (
        qlib_shaped["cash"] == day1["cash"] and qlib_shaped["now_account_value"] == day1["account"]
    )
    assert (
        qlib_shaped["A"]["amount"] == pytest.approx(amount) and qlib_shaped["A"]["count_day"] == 1
    )


def test_suspended_stock_keeps_its_price_and_cannot_be_sold():
    close = np.array([[10, 10], [10, 10], [12, 10], [np.nan, 10], [13, 10]], dtype=float)
    scores = np.array([[2, 1], [2, 1], [1, 2], [1, 2]], dtype=float)
    result = _run(close, scores, TopkDropout(topk=1, n_drop=1), limit_threshold=None)
    assert set(_held(result, 2)) == {"A"}
    # A is suspended on day 3: not sold (B is bought anyway) and valued at day 2's close.
    assert set(_held(result, 3)) == {"A", "B"}
    assert result.positions.loc[(DAYS[3], "A"), "price"] == 12.0
    assert (
        result.positions.loc[(DAYS[3], "A"), "amount"]
        == result.positions.loc[(DAYS[2], "A"), "amount"]
    )
    assert set(_held(result, 4)) == {"B"}


def test_equal_weighted_benchmark_is_named_and_averages_members():
    close = np.array([[10, 20], [11, 20], [11, 22]], dtype=float)
    result = _run(close, np.array([[1.0, 0.0], [1.0, 0.0]]), TopkDropout(topk=1, n_drop=0))
    assert result.benchmark_name == "equal-weighted mean return of panel members"
    np.testing.assert_allclose(result.report["bench"].to_numpy(), [0.0, 0.05, 0.05], rtol=1e-6)
    assert result.metrics()["benchmark"] == result.benchmark_name


def test_missing_benchmark_code_falls_back_with_a_name(recwarn):
    close = np.full((3, 2), 10.0)
    result = backtest(
        _pred(np.ones((2, 2))),
        _panel(close),
        strategy=TopkDropout(topk=1, n_drop=0),
        exchange=NO_COST,
        benchmark="SH000300",
        start_time=DAYS[0],
        end_time=DAYS[2],
    )
    assert "SH000300 not in the data" in result.benchmark_name
    assert any("SH000300" in str(w.message) for w in recwarn)


def test_writer_roundtrip_equals_panel_arrays(tmp_path):
    panel = generate_market(n_instruments=12, n_days=60, seed=1)
    root = write_qlib_binary(panel, tmp_path / "q")
    dates = panel.index.get_level_values("datetime").unique()
    from_dir = market_from_qlib(root, dates[1], dates[-1])
    from_panel = market_from_panel(panel)
    assert from_dir.instruments == from_panel.instruments
    for field in ("close", "open", "factor", "change"):
        np.testing.assert_array_equal(
            from_dir.fields[field], from_panel.fields[field], err_msg=field
        )


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(strategy=dict(topk=5, n_drop=1, bogus=1)), "bogus"),
        (dict(strategy=dict(topk=5, method_sell="worst")), "method_sell"),
        (dict(exchange=dict(deal_price="vwap")), "deal_price"),
        (dict(exchange=dict(volume_threshold=("cum", "$volume"))), "volume_threshold"),
        (dict(exchange=dict(shortable=True)), "shortable"),
        (dict(strategy=dict(topk=5, method_buy="random")), "seed"),
        (dict(account=-1), "account"),
    ],
)
def test_bad_input_is_named(kwargs, message):
    close = np.full((3, 2), 10.0)
    with pytest.raises((ValueError, TypeError), match=message):
        backtest(_pred(np.ones((2, 2))), _panel(close), **kwargs)


def test_predictions_need_the_datetime_instrument_index():
    with pytest.raises(ValueError, match=r"\(datetime, instrument\)"):
        backtest(pd.Series([1.0, 2.0]), _panel(np.full((3, 2), 10.0)))


def test_qlib_kwargs_follow_qlib_defaults():
    """As Qlib's get_exchange: a None limit means the region's (0.095 in cn), not "no limit"."""
    rules = Exchange.from_qlib(
        {"limit_threshold": None, "deal_price": "$open", "open_cost": "1e-3"}
    )
    assert rules.limit_threshold == 0.095 and rules.buy_price_field == "open"
    assert rules.open_cost == 0.001 and rules.trade_unit == 100 and rules.min_cost == 5.0
    assert Exchange.from_qlib({"trade_unit": None}).trade_unit is None


def test_limit_basis_close_ignores_a_percent_change_field():
    close = np.full((3, 2), 10.0)
    panel = _panel(close)
    panel["change"] = np.float32(5.0)  # 5%, stored in percent: "limit up" for a 0.095 threshold
    pred = _pred(np.array([[2.0, 1.0], [2.0, 1.0]]))
    span = dict(
        start_time=DAYS[0], end_time=DAYS[2], benchmark=None, strategy=TopkDropout(topk=1, n_drop=1)
    )
    with pytest.warns(UserWarning, match="percent"):
        blocked = backtest(pred, panel, exchange=Exchange(**NO_COST), **span)
    assert blocked.positions.empty
    by_close = backtest(pred, panel, exchange=Exchange(**NO_COST, limit_basis="close"), **span)
    assert set(_held(by_close, 1)) == {"A"}
