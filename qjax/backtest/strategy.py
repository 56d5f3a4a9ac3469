"""Qlib's TopK-dropout choice (``TopkDropoutStrategy``) for one trading day.

Each day, with the scores predicted the day before:

1. ``last``: the held stocks by descending score (a held stock without a score sorts last).
2. ``today``, the stocks it may buy: ``method_buy="top"`` takes the best-scored stocks not held,
   ``n_drop + topk - len(last)`` of them; ``"random"`` draws that many (without replacement)
   from the top ``topk`` scores that are not held.
3. ``sell``: ``method_sell="bottom"`` sells the held stocks among the ``n_drop`` lowest of
   ``last`` and ``today`` together (so a stock is not swapped for a worse one); ``"random"``
   draws ``n_drop`` held stocks.
4. ``buy``: the first ``len(sell) + topk - len(last)`` of ``today``.

With ``only_tradable`` the picks skip stocks that cannot trade that day. Qlib slices Python
lists here, and its quirks are kept on purpose (they decide results): a negative count slices
from the end, ``n_drop=0`` with ``"bottom"`` offers every held stock for sale, and the
tradable-only picker returns one stock when asked for none. Random draws use
``numpy.random.RandomState(seed).choice`` in Qlib's order (buy draw, then sell draw), so a
seeded run equals Qlib run after ``numpy.random.seed(seed)``.

Scores are sorted descending with missing scores last; ties (equal scores, or several missing)
keep instrument order, where pandas' unstable sort and Python's set order leave Qlib's order
unspecified.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, fields

import numpy as np

METHODS_SELL = ("bottom", "random")
METHODS_BUY = ("top", "random")


@dataclass(frozen=True)
class TopkDropout:
    """Qlib's ``TopkDropoutStrategy`` keyword arguments, with its defaults."""

    topk: int = 50
    n_drop: int = 5
    method_sell: str = "bottom"
    method_buy: str = "top"
    hold_thresh: int = 1
    only_tradable: bool = False
    forbid_all_trade_at_limit: bool = True
    risk_degree: float = 0.95

    def __post_init__(self):
        for name in ("topk", "n_drop", "hold_thresh"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 0:
                raise ValueError(f"{name} must be a non-negative integer, got {value!r}")
        if self.topk == 0:
            raise ValueError("topk must be at least 1")
        if self.method_sell not in METHODS_SELL:
            raise ValueError(
                f"method_sell must be one of {list(METHODS_SELL)}, got {self.method_sell!r}"
            )
        if self.method_buy not in METHODS_BUY:
            raise ValueError(
                f"method_buy must be one of {list(METHODS_BUY)}, got {self.method_buy!r}"
            )
        if not 0 < self.risk_degree <= 1:
            raise ValueError(f"risk_degree must be in (0, 1], got {self.risk_degree!r}")

    @property
    def uses_random(self) -> bool:
        return "random" in (self.method_sell, self.method_buy)

    @classmethod
    def from_qlib(cls, strategy: Mapping) -> TopkDropout:
        """From Qlib's strategy config (``{"class": "TopkDropoutStrategy", "kwargs": {...}}``) or
        its kwargs alone; ``signal`` is the predictions and is dropped here."""
        if "kwargs" in strategy or "class" in strategy:
            name = strategy.get("class", "TopkDropoutStrategy")
            if name != "TopkDropoutStrategy":
                raise ValueError(
                    f"strategy class {name!r} is not supported; supported: ['TopkDropoutStrategy']"
                )
            strategy = strategy.get("kwargs", {})
        kwargs = {k: v for k, v in strategy.items() if k != "signal"}
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(kwargs) - known)
        if unknown:
            raise ValueError(
                f"TopkDropoutStrategy kwargs {unknown} are not supported; "
                f"supported: {sorted(known)}"
            )
        return cls(**kwargs)


@dataclass(frozen=True)
class DayChoice:
    """Instrument indices: ``sell`` (a set to test membership) and ``buy`` (in buying order)."""

    sell: frozenset
    buy: list


def sort_by_score(codes, score: np.ndarray) -> list:
    """``codes`` (instrument indices) by descending score, NaN last, ties in instrument order."""
    codes = np.sort(np.fromiter(codes, dtype=np.int64))
    s = score[codes]
    missing = np.isnan(s)
    order = np.lexsort((codes, -np.where(missing, 0.0, s), missing))
    return codes[order].tolist()


def choose(
    strategy: TopkDropout,
    score: np.ndarray,
    scored: np.ndarray,
    held: list,
    tradable: np.ndarray,
    rng: np.random.RandomState | None,
) -> DayChoice:
    """The day's sell set and buy list.

    score: float64 [N], the previous day's predictions (NaN where missing).
    scored: bool [N], the instruments that have a prediction that day.
    held: instrument indices held now. tradable: bool [N], no suspension and no limit today
    (used only with ``only_tradable``).
    """
    k, n_drop = strategy.topk, strategy.n_drop
    if strategy.only_tradable:
        first_n, last_n = _tradable_first_n(tradable), _tradable_last_n(tradable)
    else:
        first_n, last_n = _first_n, _last_n
    held_set = set(held)
    last = sort_by_score(held, score)
    candidates = np.flatnonzero(scored)
    if strategy.method_buy == "top":
        not_held = scored.copy()
        not_held[held] = False
        today = first_n(sort_by_score(np.flatnonzero(not_held), score), n_drop + k - len(last))
    else:
        pool = [c for c in first_n(sort_by_score(candidates, score), k) if c not in held_set]
        try:
            today = rng.choice(pool, n_drop + k - len(last), replace=False).tolist()
        except ValueError:  # fewer candidates than wanted: take them all, as Qlib does
            today = pool
    if strategy.method_sell == "bottom":
        worst = set(last_n(sort_by_score(set(last) | set(today), score), n_drop))
        sell = [c for c in last if c in worst]
    else:
        pool = [c for c in last if tradable[c]] if strategy.only_tradable else last
        try:
            sell = rng.choice(pool, n_drop, replace=False).tolist() if last else []
        except ValueError:
            sell = pool
    return DayChoice(frozenset(sell), list(today)[: len(sell) + k - len(last)])


def _first_n(items: list, n: int) -> list:
    return list(items)[:n]


def _last_n(items: list, n: int) -> list:
    return list(items)[-n:]


def _tradable_first_n(tradable: np.ndarray):
    def first_n(items: list, n: int, reverse: bool = False) -> list:
        picked = []
        for c in reversed(items) if reverse else items:
            if tradable[c]:
                picked.append(c)
                if len(picked) >= n:
                    break
        return picked[::-1] if reverse else picked

    return first_n


def _tradable_last_n(tradable: np.ndarray):
    first_n = _tradable_first_n(tradable)
    return lambda items, n: first_n(items, n, reverse=True)
