"""A synthetic daily equity panel with a planted, learnable signal.

``generate_market`` returns a frame in the standard qjax panel format (the same as
:func:`qjax.data.sources.load_ohlcv`): a MultiIndex ``(datetime, instrument)`` sorted by date
then instrument, and float32 columns ``open, high, low, close, volume, vwap, factor``. As in
Qlib, prices and volume are split/dividend *adjusted* and ``factor`` is the adjustment factor
(raw price = ``close / factor``).

How the panel is built
----------------------
* Returns: ``r[t, i] = drift + beta_i * m_t + gamma_i * s[sector(i), t] + sum_k th_k * theme_k,t
  + e[t, i] + planted[t, i]``. The market, the 10 sectors, the 4 overlapping themes and each
  instrument's idiosyncratic term are GARCH(1,1) processes driven by unit-variance Student-t
  (5 dof) shocks, so returns are fat-tailed with volatility clustering. Idiosyncratic volatility
  differs by instrument (about 1% to 3% a day).
* Volume is log-normal: an AR(1) log level per instrument that rises with the size of the day's
  standardised move and with the instrument's current volatility.
* Open, high, low and vwap come from a Brownian bridge between the previous close and the close,
  so ``low <= open, close <= high`` and ``low <= vwap <= high`` hold exactly.
* The panel is ragged: some instruments list late, some delist early, and instruments are
  suspended now and then (a suspended day is a *missing row*; the price is frozen during the
  suspension and the missed move is released on the day trading resumes).
* ``factor`` starts at 1 at listing and steps up at random splits and dividends.

The planted signal
------------------
Let ``C`` be the close and ``V`` the volume on the trading calendar, forward-filled over
suspensions. On each day ``t`` the signal uses only data up to and including ``t``::

    rev_t  = -(log C_t - log C_{t-5})                   # short-term reversal
    mom_t  = log C_{t-20} - log C_{t-59}                 # medium-term momentum (skips a month)
    vol_t  = (log V_t - mean(log V_{t-20..t-1})) * (log C_t - log C_{t-1})
                                                        # volume-confirmed moves continue
    alpha_t = 0.6 * z(rev_t) + 0.4 * z(mom_t) + 0.4 * z(vol_t)

where ``z`` is the cross-sectional z-score (clipped to +-3) over the instruments that trade on
``t`` and have been listed for at least 60 trading days (``alpha = 0`` for the others). The
return from close ``t+1`` to close ``t+2`` (exactly the Qlib label
``Ref($close,-2)/Ref($close,-1)-1`` at ``t``) has expected value ``SIGNAL_SCALE * alpha_t``.
Every input is a ratio of prices or volumes within a 60-day window, so Alpha360 (and most of
it Alpha158) can see the signal.

Measured at the defaults (300 instruments, 1000 days, seed 0; ``tests/data/test_market.py``):
the oracle daily IC (Pearson correlation of ``alpha_t`` with the realised label, averaged over
days) is 0.149 (ICIR 1.45; 0.15-0.17 for seeds 1-3), and a least-squares fit of the label on six
generic z-scored features (returns over days 1, 2-5, 6-20, 21-59, the volume shock and volume
shock x last return), fit on the first 60% of days, reaches a test IC of 0.147 on the last 40%.
Generating the default 300 x 1000 panel takes 0.2-0.8 s on a shared 2-core CPU.
"""

from __future__ import annotations

import numbers
from typing import NamedTuple

import numpy as np
import pandas as pd

FIELDS = ("open", "high", "low", "close", "volume", "vwap", "factor")

N_SECTORS = 10
N_THEMES = 4
THEME_MEMBERSHIP = 0.12  # chance an instrument belongs to a given theme

# Planted signal (see the module docstring).
REVERSAL_DAYS = 5
MOMENTUM_SKIP, MOMENTUM_END = 20, 59
VOLUME_MEAN_DAYS = 20
SIGNAL_HISTORY = 60  # trading days listed before an instrument gets a signal
SIGNAL_WEIGHTS = (0.6, 0.4, 0.4)  # reversal, momentum, volume-return interaction
SIGNAL_SCALE = 0.0050  # expected label per unit of alpha (daily return units)
Z_CLIP = 3.0

T_DOF = 5.0
OVERNIGHT_SHARE = 0.25  # share of a day's variance realised between close and open


def _check_positive_int(value, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value <= 0:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return int(value)


def _check_seed(seed) -> int:
    if isinstance(seed, bool) or not isinstance(seed, numbers.Integral) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
    return int(seed)


def instrument_names(n_instruments: int) -> list[str]:
    """``SIM0000, SIM0001, ...`` (zero-padded so that name order equals number order)."""
    width = max(4, len(str(n_instruments - 1)))
    return [f"SIM{i:0{width}d}" for i in range(n_instruments)]


class _Membership(NamedTuple):
    sector: np.ndarray  # [N] int, the instrument's sector
    themes: np.ndarray  # [N, N_THEMES] bool


def _membership(n_instruments: int, seed: int) -> _Membership:
    """Sector and theme membership; drawn from its own seed stream so that it depends only on
    ``(n_instruments, seed)``, which is what lets ``generate_concepts`` reproduce it."""
    rng = np.random.default_rng([seed, 0])
    n_sectors = min(N_SECTORS, n_instruments)
    # Unequal sector sizes, but every sector gets at least one member.
    weights = rng.dirichlet(np.full(n_sectors, 4.0))
    sector = np.concatenate(
        [np.arange(n_sectors), rng.choice(n_sectors, n_instruments - n_sectors, p=weights)]
    )
    sector = rng.permutation(sector)
    themes = rng.random((n_instruments, N_THEMES)) < THEME_MEMBERSHIP
    empty = ~themes.any(axis=0)
    themes[rng.integers(n_instruments, size=N_THEMES)[empty], np.flatnonzero(empty)] = True
    return _Membership(sector, themes)


def _garch(
    z: np.ndarray, variance: np.ndarray, alpha: float, beta: float
) -> tuple[np.ndarray, np.ndarray]:
    """GARCH(1,1) innovations for unit-variance shocks ``z`` [T, K] with long-run ``variance`` [K].

    Returns (innovations, conditional standard deviations), both [T, K].
    """
    omega = variance * (1.0 - alpha - beta)
    h = variance.copy()
    eps_prev = np.zeros_like(variance)
    eps = np.empty_like(z)
    sigma = np.empty_like(z)
    for t in range(z.shape[0]):
        h = omega + alpha * eps_prev**2 + beta * h
        sigma[t] = np.sqrt(h)
        eps_prev = eps[t] = sigma[t] * z[t]
    return eps, sigma


def _student_t(rng: np.random.Generator, shape: tuple[int, ...]) -> np.ndarray:
    """Student-t shocks scaled to unit variance, with the rare >10-sigma draw clipped."""
    z = rng.standard_t(T_DOF, size=shape) / np.sqrt(T_DOF / (T_DOF - 2.0))
    return np.clip(z, -10.0, 10.0)


def _lifetimes(rng: np.random.Generator, n: int, n_days: int) -> tuple[np.ndarray, np.ndarray]:
    """First and one-past-last trading day of each instrument: 8% list late, 5% delist early."""
    listed = np.where(rng.random(n) < 0.08, rng.integers(1, max(2, int(0.8 * n_days)), n), 0)
    early = rng.random(n) < 0.05
    delisted = np.where(
        early, listed + 20 + (rng.random(n) * (n_days - listed)).astype(int), n_days
    )
    return listed, np.minimum(delisted, n_days)


def _suspensions(rng: np.random.Generator, alive: np.ndarray) -> np.ndarray:
    """[T, N] bool: a two-state Markov chain (start 0.2%/day, mean length 4 days) while alive."""
    start, stay = rng.random(alive.shape) < 0.002, rng.random(alive.shape) < 0.75
    suspended = np.zeros(alive.shape, bool)
    for t in range(1, alive.shape[0]):
        suspended[t] = np.where(suspended[t - 1], stay[t], start[t]) & alive[t] & alive[t - 1]
    return suspended


def _ffill_rows(values: np.ndarray, keep: np.ndarray) -> np.ndarray:
    """Replace ``values[t, i]`` where ``~keep[t, i]`` with the last kept value above it."""
    source = np.where(keep, np.arange(values.shape[0])[:, None], 0)
    np.maximum.accumulate(source, axis=0, out=source)
    return np.take_along_axis(values, source, axis=0)


def _zscore(x: np.ndarray) -> np.ndarray:
    std = x.std()
    return np.clip((x - x.mean()) / std, -Z_CLIP, Z_CLIP) if std > 0 else np.zeros_like(x)


def _alpha(
    log_close: np.ndarray, volume_shock: np.ndarray, t: int, eligible: np.ndarray
) -> np.ndarray:
    """The planted alpha of day ``t`` from forward-filled log closes up to ``t`` (module docstring)."""
    alpha = np.zeros(log_close.shape[1])
    if eligible.sum() < 3:
        return alpha
    lags = (0, 1, REVERSAL_DAYS, MOMENTUM_SKIP, MOMENTUM_END)
    now, prev, week, month, quarter = log_close[[t - lag for lag in lags]][:, eligible]
    reversal = week - now
    momentum = month - quarter
    volume_return = volume_shock[t, eligible] * (now - prev)
    w_rev, w_mom, w_vol = SIGNAL_WEIGHTS
    alpha[eligible] = (
        w_rev * _zscore(reversal) + w_mom * _zscore(momentum) + w_vol * _zscore(volume_return)
    )
    return alpha


def generate_market(
    n_instruments: int = 300, n_days: int = 1000, start: str = "2015-01-05", seed: int = 0
) -> pd.DataFrame:
    """A synthetic equity panel in the standard qjax format, with a planted learnable signal.

    Args:
        n_instruments: number of instruments (named ``SIM0000``, ``SIM0001``, ...).
        n_days: number of business days, starting at ``start``.
        start: first date (anything ``pd.Timestamp`` parses).
        seed: the frame is a deterministic function of all four arguments.

    Returns:
        DataFrame indexed by ``(datetime, instrument)`` (sorted) with float32 columns
        ``open, high, low, close, volume, vwap, factor``; one row per trading instrument-day
        (late listings, early delistings and suspensions are absent rows). The model, the signal
        and its measured oracle IC are described in the module docstring; the sector/theme
        membership is ``generate_concepts(n_instruments, seed)``.
    """
    n = _check_positive_int(n_instruments, "n_instruments")
    n_days = _check_positive_int(n_days, "n_days")
    seed = _check_seed(seed)
    try:
        first_day = pd.Timestamp(start)
    except (ValueError, TypeError) as err:
        raise ValueError(
            f"start must be a date such as '2015-01-05', got {start!r} ({err})"
        ) from None
    if pd.isna(first_day):
        raise ValueError(f"start must be a date such as '2015-01-05', got {start!r}")
    dates = pd.bdate_range(first_day, periods=n_days).astype("datetime64[ns]")

    member = _membership(n, seed)
    rng = np.random.default_rng([seed, 1])

    # Factor model: market, sectors, themes (each a GARCH process) and per-instrument loadings.
    n_sectors = int(member.sector.max()) + 1
    factor_var = np.concatenate(
        [[0.010**2], np.full(n_sectors, 0.007**2), np.full(N_THEMES, 0.005**2)]
    )
    factor_eps, _ = _garch(_student_t(rng, (n_days, factor_var.size)), factor_var, 0.08, 0.90)
    loadings = np.zeros((n, factor_var.size))
    loadings[:, 0] = rng.normal(1.0, 0.3, n)
    loadings[np.arange(n), 1 + member.sector] = rng.normal(1.0, 0.25, n)
    loadings[:, 1 + n_sectors :] = member.themes * rng.normal(1.0, 0.3, (n, N_THEMES))
    idio_vol = np.exp(rng.uniform(np.log(0.010), np.log(0.030), n))
    idio_eps, idio_sigma = _garch(_student_t(rng, (n_days, n)), idio_vol**2, 0.08, 0.90)
    base_return = 0.0003 + factor_eps @ loadings.T + idio_eps
    day_sigma = np.sqrt(
        idio_sigma**2 + (loadings**2) @ factor_var
    )  # [T, N] (factors at long-run vol)

    # Who trades when.
    listed, delisted = _lifetimes(rng, n, n_days)
    day = np.arange(n_days)[:, None]
    alive = (day >= listed) & (day < delisted)
    suspended = _suspensions(rng, alive)
    present = alive & ~suspended
    eligible = present & (day - listed >= SIGNAL_HISTORY - 1)

    # Volume: log-normal around an instrument level, driven by |standardised move| (centred on
    # its mean, about 0.75) and by how far current volatility is above the instrument's norm.
    level = rng.normal(np.log(2e6), 1.0, n)
    drive = 0.35 * (np.abs(base_return / day_sigma) - 0.75) + 0.8 * np.log(idio_sigma / idio_vol)
    drive += rng.normal(0.0, 0.25, (n_days, n))
    log_volume = np.empty((n_days, n))
    x = np.zeros(n)
    for t in range(n_days):
        x = 0.7 * x + drive[t]
        log_volume[t] = level + x
    seen_volume = _ffill_rows(log_volume, present)
    trailing = np.cumsum(np.vstack([np.zeros(n), seen_volume]), axis=0)
    volume_shock = np.zeros((n_days, n))
    k = VOLUME_MEAN_DAYS
    volume_shock[k:] = seen_volume[k:] - (trailing[k:-1] - trailing[: -k - 1]) / k

    # Prices, with the planted expected return: alpha of day t moves the return of day t+2.
    log_close = np.empty((n_days, n))
    alpha = np.zeros((n_days, n))
    latent = rng.uniform(np.log(5.0), np.log(200.0), n)
    for t in range(n_days):
        latent = latent + base_return[t] + (SIGNAL_SCALE * alpha[t - 2] if t >= 2 else 0.0)
        log_close[t] = np.where(suspended[t], log_close[t - 1], latent)
        if t >= MOMENTUM_END:
            alpha[t] = _alpha(log_close, volume_shock, t, eligible[t])

    frame = _bars(rng, log_close, base_return, day_sigma, log_volume)
    frame["factor"] = _adjustment_factor(rng, alive, listed)
    return _to_panel(frame, present, dates, instrument_names(n))


def _bars(
    rng: np.random.Generator,
    log_close: np.ndarray,
    base_return: np.ndarray,
    sigma: np.ndarray,
    log_volume: np.ndarray,
) -> dict[str, np.ndarray]:
    """Open/high/low/vwap from a Brownian bridge between the previous close and the close."""
    prev = np.vstack([log_close[:1] - base_return[:1], log_close[:-1]])
    w = OVERNIGHT_SHARE
    log_open = (
        prev
        + w * (log_close - prev)
        + np.sqrt(w * (1 - w)) * sigma * rng.standard_normal(prev.shape)
    )
    # Exact draws of the max and min of a Brownian bridge from open to close with variance v.
    v = (1 - w) * sigma**2
    mid, half_gap2 = log_open + log_close, (log_close - log_open) ** 2
    log_high = 0.5 * (mid + np.sqrt(half_gap2 - 2 * v * np.log(rng.random(prev.shape))))
    log_low = 0.5 * (mid - np.sqrt(half_gap2 - 2 * v * np.log(rng.random(prev.shape))))
    log_vwap = 0.5 * mid + np.sqrt(v / 12) * rng.standard_normal(prev.shape)  # mean of the bridge
    f32 = {
        k: np.exp(a).astype(np.float32)
        for k, a in dict(
            open=log_open, high=log_high, low=log_low, close=log_close, vwap=log_vwap
        ).items()
    }
    # Re-impose the bar ordering after rounding to float32.
    f32["high"] = np.maximum.reduce([f32["high"], f32["open"], f32["close"]])
    f32["low"] = np.minimum.reduce([f32["low"], f32["open"], f32["close"]])
    f32["vwap"] = np.clip(f32["vwap"], f32["low"], f32["high"])
    f32["volume"] = np.exp(log_volume).astype(np.float32)
    return {k: f32[k] for k in ("open", "high", "low", "close", "volume", "vwap")}


def _adjustment_factor(
    rng: np.random.Generator, alive: np.ndarray, listed: np.ndarray
) -> np.ndarray:
    """1 at listing, times the split ratio at a split, times ~1.005 at a quarterly-ish dividend."""
    shape = alive.shape
    split = np.where(rng.random(shape) < 1 / 4000, rng.choice([1.5, 2.0, 3.0], shape), 1.0)
    dividend = np.where(rng.random(shape) < 1 / 63, 1.0 + rng.uniform(0.002, 0.01, shape), 1.0)
    after_listing = np.arange(shape[0])[:, None] > listed
    step = np.where(after_listing & alive, split * dividend, 1.0)
    return np.cumprod(step, axis=0).astype(np.float32)


def _to_panel(
    columns: dict[str, np.ndarray], present: np.ndarray, dates: pd.DatetimeIndex, names: list[str]
) -> pd.DataFrame:
    """Rows of the [T, N] arrays where ``present``, in (datetime, instrument) order."""
    day_code, inst_code = np.nonzero(present)  # row-major: date-major, then instrument
    index = pd.MultiIndex(
        levels=[dates, pd.Index(names)],
        codes=[day_code, inst_code],
        names=["datetime", "instrument"],
    )
    return pd.DataFrame({k: columns[k][present] for k in FIELDS}, index=index)


def generate_concepts(n_instruments: int = 300, seed: int = 0) -> pd.DataFrame:
    """The stock-to-concept matrix of ``generate_market(n_instruments, ..., seed=seed)``.

    Membership depends only on ``(n_instruments, seed)`` (not on ``n_days`` or ``start``), so
    pass the same two values you gave ``generate_market``.

    Returns:
        float32 0/1 DataFrame, index = instrument names, columns = ``SECTOR00..SECTOR09`` (each
        instrument is in exactly one; fewer sectors when ``n_instruments < 10``) followed by
        ``THEME0..THEME3`` (overlapping themes that also carry a return factor; each has at
        least one member). Use it as HIST's ``stock2concept``.
    """
    n = _check_positive_int(n_instruments, "n_instruments")
    member = _membership(n, _check_seed(seed))
    n_sectors = int(member.sector.max()) + 1
    sectors = member.sector[:, None] == np.arange(n_sectors)
    matrix = np.hstack([sectors, member.themes]).astype(np.float32)
    columns = [f"SECTOR{s:02d}" for s in range(n_sectors)] + [f"THEME{k}" for k in range(N_THEMES)]
    return pd.DataFrame(
        matrix, index=pd.Index(instrument_names(n), name="instrument"), columns=columns
    )
