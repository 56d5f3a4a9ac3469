"""`qjax rolling`: Qlib's RollingGen window arithmetic, a tiny rolling run whose windows tile the
test span, window-level resume, and bad input refused before any training."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from qjax import cli, rolling, run_config
from qjax.data.market import generate_market
from tests.workflow import tiny_run

REPO = Path(__file__).resolve().parents[2]
CONFIG = REPO / "configs" / "gru_alpha360.yaml"
TINY = tiny_run.overrides(
    data__n_instruments=30,
    handler__fit_start_time="2015-01-05",
    model__kwargs__hidden_size=8,
    model__kwargs__batch_size=512,
    model__kwargs__n_epochs=1,
)
STEP = 20  # the 44 test days -> windows of 20, 20 and 4 days
PORT_ANALYSIS = """
strategy:
    class: TopkDropoutStrategy
    kwargs: {signal: <PRED>, topk: 5, n_drop: 1}
backtest:
    start_time:
    end_time:
    account: 100000000
    exchange_kwargs: {limit_threshold: 0.095, deal_price: close, open_cost: 0.0005,
                      close_cost: 0.0015, min_cost: 5}
"""
# Qlib-style segments for the arithmetic tests: unaligned dates (weekends).
SEGMENTS = {
    "train": ("2015-01-10", "2015-06-30"),  # not day 0: Qlib's truncate refuses index 0
    "valid": ("2015-07-01", "2015-08-30"),
    "test": ("2015-09-05", "2015-12-20"),
}


def _calendar(n_days: int = 260) -> pd.DatetimeIndex:
    panel = generate_market(n_instruments=3, n_days=n_days, seed=0)
    return pd.DatetimeIndex(panel.index.get_level_values("datetime").unique()).sort_values()


@pytest.fixture(scope="module")
def qlib_calendar_dir(qlib, tmp_path_factory):
    """A generated market in Qlib's layout with qlib initialised on it (restored afterwards)."""
    from qlib.config import C
    from qlib.constant import REG_CN

    from qjax.data.qlib_writer import write_qlib_binary

    panel = generate_market(n_instruments=3, n_days=260, seed=0)
    root = write_qlib_binary(panel, tmp_path_factory.mktemp("qlib_cal"))
    previous = (C.get("provider_uri"), C.get("region")) if C.registered else None
    qlib.init(provider_uri=str(root), region=REG_CN, kernels=1)
    yield root
    if previous is not None:
        qlib.init(provider_uri=previous[0], region=previous[1], kernels=1)


@pytest.mark.parametrize("trunc_days", [None, 3, 45])
@pytest.mark.parametrize("rtype", ["expanding", "sliding"])
@pytest.mark.parametrize("step", [1, 7, 20, 50])
def test_windows_equal_qlib_rolling_gen(qlib_calendar_dir, rtype, step, trunc_days):
    from qlib.data import D
    from qlib.workflow.task.gen import RollingGen

    task = {"dataset": {"kwargs": {"segments": dict(SEGMENTS)}}}
    made = RollingGen(
        step=step, rtype=rtype, ds_extra_mod_func=None, trunc_days=trunc_days
    ).generate(task)
    expected = [t["dataset"]["kwargs"]["segments"] for t in made]
    calendar = D.calendar(freq="day")
    got = rolling.qlib_segments(SEGMENTS, calendar, step, rtype, trunc_days)
    assert len(got) == len(expected) > 1
    assert got == expected
    # qjax trains the same windows, the last test segment clipped to the config's test end.
    planned = rolling.plan_windows(SEGMENTS, calendar, step, rtype, trunc_days)
    for mine, theirs in zip(planned, expected):
        for name, (start, end) in theirs.items():
            if name == "test":  # the test segment's last trading day: Friday 2015-12-18
                end = (
                    pd.Timestamp("2015-12-18")
                    if end is None
                    else min(end, pd.Timestamp("2015-12-18"))
                )
            assert mine[name] == [f"{start:%Y-%m-%d}", f"{end:%Y-%m-%d}"], (name, step)


@pytest.mark.parametrize(
    "step, segments, message",
    [
        (0, SEGMENTS, "positive"),
        (-3, SEGMENTS, "positive"),
        (200, SEGMENTS, "leaves no window"),
        (5, dict(SEGMENTS, test=("2016-03-01", "2016-06-01")), "no trading day in the data"),
        (5, dict(SEGMENTS, train=("2014-01-01", "2014-06-30")), "outside the data"),
        (5, dict(SEGMENTS, test=("2015-01-06", "2015-03-01")), "leaves no data before"),
    ],
)
def test_bad_rolling_requests_are_refused(step, segments, message):
    with pytest.raises(rolling.RollingError, match=message):
        rolling.plan_windows(segments, _calendar(), step, "sliding", trunc_days=3)


def test_cli_refuses_a_bad_step_before_creating_anything(tmp_path, capsys):
    out = tmp_path / "roll"
    args = [
        "rolling",
        str(CONFIG),
        "--step",
        "0",
        "--out",
        str(out),
        "--quiet",
        "--compilation-cache",
        "off",
        *(a for item in TINY for a in ("--set", item)),
    ]
    assert cli.main(args) == 2
    assert "--step must be a positive number" in capsys.readouterr().err
    assert not out.exists()


@pytest.fixture(scope="module")
def rolled(tmp_path_factory):
    """A finished 3-window sliding rolling run with warm start and a backtest section."""
    cfg = run_config.load(CONFIG, TINY)
    cfg["backtest"] = run_config.parse_yaml(PORT_ANALYSIS)
    out = tmp_path_factory.mktemp("rolling") / "out"
    lines: list[str] = []
    original, applied = rolling.warm_start, []

    def spy(previous):  # counts the warm starts the engine really applied, per window
        init = original(previous)
        return lambda fresh: applied.append(len(lines)) or init(fresh)

    rolling.warm_start = spy
    try:
        metrics = rolling.run(
            cfg, out, step=STEP, rtype="sliding", warm=True, verbose=False, log=lines.append
        )
    finally:
        rolling.warm_start = original
    return cfg, out, metrics, lines, applied


def test_windows_tile_the_test_span_and_predictions_cover_it(rolled):
    cfg, out, metrics, lines, _ = rolled
    calendar = _calendar()
    start, end = (pd.Timestamp(d) for d in cfg["dataset"]["segments"]["test"])
    span = calendar[(calendar >= start) & (calendar <= end)]
    windows = [w["segments"] for w in metrics["windows"]]
    assert len(windows) == 3 and len(lines) == 3
    assert lines[0].startswith("window 1/3: train 2015-01-05..2015-08-31 test 2015-11-02..")
    days = []
    for k, window in enumerate(windows, 1):
        lo, hi = (pd.Timestamp(d) for d in window["test"])
        own = calendar[(calendar >= lo) & (calendar <= hi)]
        assert len(own) == (STEP if k < 3 else len(span) - 2 * STEP), window
        days += list(own)
        # Sliding: the train segment (starting on the first trading day) moves STEP days a window.
        assert calendar.get_loc(pd.Timestamp(window["train"][0])) == (k - 1) * STEP
        pred = pd.read_parquet(out / f"window_{k:04d}" / "predictions.parquet")
        pred_days = pred.index.get_level_values("datetime")
        assert pred_days.min() >= lo and pred_days.max() <= hi
    assert days == list(span)  # in order, no overlap, no gap
    joined = pd.read_parquet(out / "predictions.parquet")
    assert not joined.index.has_duplicates
    assert sorted(set(joined.index.get_level_values("datetime"))) == list(span)
    assert metrics["samples"]["test"] == len(joined)
    written = json.loads((out / "metrics.json").read_text())
    assert set(written["test"]) == {"IC", "ICIR", "Rank IC", "Rank ICIR"}
    report = pd.read_csv(out / "backtest" / "report.csv", index_col=0, parse_dates=True)
    assert report.index.min() == span[0] and report.index.max() >= span[-2]
    assert "Max Drawdown" in written["seven_columns"]
    assert (out / "report.html").is_file()
    for k in (1, 2, 3):  # each window is a normal run directory, without its own backtest
        assert (out / f"window_{k:04d}" / "checkpoints").is_dir()
        assert not (out / f"window_{k:04d}" / "backtest").exists()


def test_rerun_skips_finished_windows_and_retrains_an_unfinished_one(rolled):
    cfg, out, _, _, _ = rolled
    finished = {k: (out / f"window_{k:04d}" / "metrics.json").stat().st_mtime_ns for k in (1, 2)}
    (out / "window_0003" / "metrics.json").unlink()  # as if stopped before its end
    lines: list[str] = []
    metrics = rolling.run(
        cfg, out, step=STEP, rtype="sliding", warm=True, verbose=False, log=lines.append
    )
    assert [w["skipped"] for w in metrics["windows"]] == [True, True, False]
    assert lines[0].endswith("finished earlier, skipped") and lines[1].endswith("skipped")
    for k, mtime in finished.items():
        assert (out / f"window_{k:04d}" / "metrics.json").stat().st_mtime_ns == mtime
    assert (out / "window_0003" / "metrics.json").is_file()
    # train() resumed window 3 from its checkpoint instead of training it again.
    third = json.loads((out / "window_0003" / "metrics.json").read_text())
    assert third["resumed_from_epoch"] is not None


def test_a_different_plan_in_the_same_out_is_refused(rolled):
    cfg, out, _, _, _ = rolled
    with pytest.raises(rolling.RollingError, match="different config, step"):
        rolling.run(
            cfg, out, step=STEP + 1, rtype="sliding", warm=True, verbose=False, log=lambda _: None
        )


def test_warm_start_hands_the_previous_variables_to_every_replica(seed):
    import jax.numpy as jnp
    import numpy as np

    rng = np.random.default_rng(seed)
    previous = {"params": {"w": rng.normal(size=(3, 2)), "b": rng.normal(size=2)}}
    fresh = {"params": {"w": jnp.zeros((3, 2), jnp.float32), "b": jnp.zeros(2, jnp.float32)}}
    started = rolling.warm_start(previous)(fresh)
    for name in ("w", "b"):
        assert started["params"][name].dtype == jnp.float32
        np.testing.assert_allclose(
            started["params"][name], previous["params"][name], rtol=1e-6, err_msg=f"seed {seed}"
        )
    with pytest.raises(rolling.RollingError, match="do not fit"):
        rolling.warm_start(previous)({"params": {"w": jnp.zeros((4, 2)), "b": jnp.zeros(2)}})


def test_windows_2_and_3_start_from_the_previous_windows_variables(rolled):
    _, out, _, _, applied = rolled
    # Traced once per window when the window's init program is compiled: windows 2 and 3.
    assert sorted(set(applied)) == [2, 3], applied
    first = rolling.load_variables(out / "window_0001" / rolling.WARM_START_DIR)
    second = rolling.load_variables(out / "window_0002" / rolling.WARM_START_DIR)
    import jax

    assert jax.tree.structure(first) == jax.tree.structure(second)


@pytest.fixture(scope="module")
def qlib_market(tmp_path_factory) -> Path:
    from qjax.data.qlib_writer import write_qlib_binary
    from tests.workflow.test_qlib_workflow import MARKET_SEED, N_INSTRUMENTS

    root = tmp_path_factory.mktemp("qlib_market")
    panel = generate_market(
        n_instruments=N_INSTRUMENTS, n_days=260, start="2015-01-05", seed=MARKET_SEED
    )
    codes = sorted(set(panel.index.get_level_values("instrument")))
    write_qlib_binary(panel, root, markets={"csi300": codes, "csi500": codes})
    return root


def test_qjax_rolling_runs_a_qlib_workflow_file_unchanged(qlib_market, tmp_path, capsys):
    import numpy as np

    from qjax import qlib_workflow
    from tests.workflow.test_qlib_workflow import tiny

    path = REPO / "tests" / "workflow" / "qlib_yamls" / "GRU" / "workflow_config_gru_Alpha360.yaml"
    out = tmp_path / "roll"
    argv = [
        "rolling",
        str(path),
        "--step",
        "25",
        "--out",
        str(out),
        "--quiet",
        "--compilation-cache",
        "off",
    ]
    for item in tiny(qlib_market, qlib_workflow.read(path)):
        argv += ["--set", item]
    assert cli.main(argv) == 0, capsys.readouterr().err
    printed = capsys.readouterr().out
    # Expanding (Qlib's default): the train segment keeps its start and grows by 25 days.
    cal = pd.DatetimeIndex((qlib_market / "calendars" / "day.txt").read_text().split())
    day = lambda d, shift=0: f"{cal[cal.get_loc(pd.Timestamp(d)) + shift]:%Y-%m-%d}"  # noqa: E731
    assert (
        f"window 1/2: train 2015-03-02..2015-08-31 test 2015-11-02..{day('2015-11-02', 24)}"
        in printed
    )
    assert (
        f"window 2/2: train 2015-03-02..{day('2015-08-31', 25)} "
        f"test {day('2015-11-02', 25)}..2015-12-29" in printed
    )
    metrics = json.loads((out / "metrics.json").read_text())
    assert all(np.isfinite(v) for v in metrics["seven_columns"].values()), metrics
    days = pd.read_parquet(out / "predictions.parquet").index.get_level_values("datetime")
    assert days.min() == pd.Timestamp("2015-11-02") and days.max() == pd.Timestamp("2015-12-29")


def test_each_window_loads_and_scores_its_test_days_as_it_did(rolled):
    # Each window keeps its own model and processors fitted on its own (moved) fit period.
    import qjax

    cfg, out, metrics, _, _ = rolled
    for k, window in enumerate(metrics["windows"], 1):
        saved = qjax.load(out / f"window_{k:04d}")
        assert saved.processors["infer"][0].fit_end_time == saved.config["handler"]["fit_end_time"]
        scores = saved.predict(*window["segments"]["test"])
        expected = pd.read_parquet(out / f"window_{k:04d}" / "predictions.parquet")["score"]
        assert scores.index.equals(expected.index)
        np.testing.assert_array_equal(scores.to_numpy(), expected.to_numpy())
