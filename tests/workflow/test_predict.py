"""`qjax.load(run_dir)` and `qjax predict`: a finished run scores new dates without refitting,
and a bad run directory, bad dates or bad data end in one line naming the fix."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import qjax
from qjax import cli
from qjax.data.market import generate_market
from qjax.errors import DataError, SavedRunError
from tests.workflow import tiny_run

REPO = tiny_run.REPO
TEST = ("2015-11-02", "2015-12-31")
STEP_LEN = 20  # configs/gru_alpha158.yaml


def _train(config: str, out: Path, **changes) -> Path:
    flags = tiny_run.set_flags(model__kwargs__hidden_size=8, model__kwargs__n_epochs=2, **changes)
    assert (
        cli.main(["train", str(REPO / "configs" / config), "--out", str(out), "--quiet", *flags])
        == 0
    )
    return out


@pytest.fixture(scope="module")
def flat_run(tmp_path_factory) -> Path:
    return _train("lstm_alpha360.yaml", tmp_path_factory.mktemp("flat") / "run")


@pytest.fixture(scope="module")
def window_run(tmp_path_factory) -> Path:
    """Two seeds: the scores come back as one column per seed."""
    return _train(
        "gru_alpha158.yaml", tmp_path_factory.mktemp("window") / "run", train__seeds="[0, 1]"
    )


def _predict_test(run: Path, *extra: str) -> list[str]:
    """``qjax predict RUN`` over the test segment, then ``extra``."""
    return ["predict", str(run), "--start", TEST[0], "--end", TEST[1], *extra]


def _saved_scores(run: Path) -> pd.Series:
    return pd.read_parquet(run / "predictions.parquet")["score"]


def _market(run: Path) -> pd.DataFrame:
    cfg = qjax.load(run).config["data"]
    return generate_market(**{k: cfg[k] for k in ("n_instruments", "n_days", "start", "seed")})


@pytest.mark.parametrize("which", ["flat_run", "window_run"])
def test_a_loaded_run_scores_its_test_segment_as_the_run_did(which, request):
    run = request.getfixturevalue(which)
    scores = qjax.load(run).predict(*TEST)
    expected = pd.read_parquet(run / "predictions.parquet")
    if which == "window_run":
        assert list(scores.columns) == list(expected.columns) == ["seed_0", "seed_1"]
    else:
        assert isinstance(scores, pd.Series) and list(expected.columns) == ["score"]
        scores = scores.to_frame()
    assert scores.index.equals(expected.index)
    # Exact: the same float32 rows through the same elementwise processors and the same batches;
    # only the handler's span differs (the test dates plus the history they need).
    np.testing.assert_array_equal(scores.to_numpy(), expected.to_numpy())


def test_the_processors_keep_their_train_period_fit(flat_run):
    """No refit: rewriting the prices of the fit period (Apr-Aug) changes nothing for test dates
    whose features look back only to August; a refit of the norms would move every score."""
    market = _market(flat_run)
    changed = market.copy()
    early = changed.index.get_level_values("datetime") < pd.Timestamp("2015-07-01")
    changed.loc[early, ["open", "high", "low", "close", "vwap"]] *= 3.0
    changed.loc[early, "volume"] *= 0.1
    saved = qjax.load(flat_run)
    scores = saved.predict(*TEST, data=changed)
    np.testing.assert_array_equal(scores.to_numpy(), _saved_scores(flat_run).to_numpy())
    norm = saved.processors["infer"][0]
    assert type(norm).__name__ == "RobustZScoreNorm" and norm.fit_end_time == "2015-08-31"


def test_the_last_day_without_a_label_is_scored(flat_run):
    """Tomorrow's forecast: the data's last day has features but no label (it needs the next
    two days' prices), and it is scored for every instrument."""
    market = _market(flat_run)
    last = market.index.get_level_values("datetime").max()
    scores = qjax.load(flat_run).predict(last, last)
    assert set(scores.index.get_level_values("datetime")) == {last}
    assert len(scores) == market.loc[last].shape[0] and np.isfinite(scores).all()
    from qjax.data.features import handler_frame

    assert handler_frame("Alpha360", market, last, last)[("label", "LABEL0")].isna().all()


def test_a_window_model_reads_its_history_from_the_data(window_run):
    saved = qjax.load(window_run)
    days = _market(window_run).index.get_level_values("datetime").unique().sort_values()
    first = days[STEP_LEN - 1]  # the first day with a full window of data behind it
    scores = saved.predict(first, days[STEP_LEN + 2])
    assert scores.index.get_level_values("datetime").min() == first
    with pytest.raises(DataError, match=rf"step_len={STEP_LEN}.*Use --start {first.date()}"):
        saved.predict(days[STEP_LEN - 2], days[STEP_LEN + 2])


def test_qjax_predict_writes_the_scores_from_a_fresh_process(flat_run, tmp_path):
    out = tmp_path / "scores.csv"
    done = subprocess.run(
        [sys.executable, "-m", "qjax.cli", *_predict_test(flat_run, "--out", str(out))],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
        env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin", "QJAX_CPU_DEVICES": "1"},
    )
    assert done.returncode == 0, done.stderr
    assert f"scored {len(_saved_scores(flat_run))} rows" in done.stdout
    written = pd.read_csv(out, index_col=[0, 1], parse_dates=[0])["score"].to_numpy()
    saved = _saved_scores(flat_run).to_numpy()
    # The run scored its test days split over the CPU devices, this process on one
    # (QJAX_CPU_DEVICES=1): the same float32 network, its matmuls blocked differently. The
    # largest gap measured 2.5e-7 of the largest score (two float32 epsilons), so a score near
    # zero can miss a relative bound alone.
    np.testing.assert_allclose(written, saved, rtol=1e-6, atol=1e-6 * np.abs(saved).max())


def test_cli_default_output_is_a_parquet_file_in_the_run(flat_run, tmp_path, capsys):
    run = tmp_path / "copy"
    shutil.copytree(flat_run, run)
    assert cli.main(["predict", str(run), "--start", "2015/12/01", "--end", "2015-12-04"]) == 0
    written = pd.read_parquet(run / "predictions_2015-12-01_2015-12-04.parquet")
    assert sorted(written.index.get_level_values("datetime").unique().day) == [1, 2, 3, 4]


def _corrupt(run: Path, tmp_path: Path, damage) -> Path:
    copy = tmp_path / "damaged"
    shutil.copytree(run, copy)
    damage(copy)
    return copy


def _set_version(copy: Path) -> None:
    path = copy / "model" / "saved_run.json"
    meta = json.loads(path.read_text())
    meta.update(format_version=99, qjax_version="9.9.9")
    path.write_text(json.dumps(meta))


def _truncate_arrays(copy: Path) -> None:
    for path in sorted((copy / "model" / "arrays").rglob("*")):
        if path.is_file() and path.stat().st_size > 0:
            path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


DAMAGES = {
    "no saved model": (lambda c: shutil.rmtree(c / "model"), r"has no saved model.*again"),
    "another format": (_set_version, r"qjax 9\.9\.9 in saved-run format 99.*reads format 1"),
    "truncated json": (
        lambda c: (c / "model" / "saved_run.json").write_text('{"form'),
        r"saved_run\.json is damaged",
    ),
    "missing json": (
        lambda c: (c / "model" / "saved_run.json").unlink(),
        r"saved_run\.json is missing",
    ),
    "missing arrays": (lambda c: shutil.rmtree(c / "model" / "arrays"), r"arrays is missing"),
    "damaged arrays": (_truncate_arrays, r"arrays.* damaged"),
}


@pytest.mark.parametrize("case", sorted(DAMAGES))
def test_a_damaged_or_foreign_run_is_named(flat_run, tmp_path, capsys, case):
    damage, message = DAMAGES[case]
    copy = _corrupt(flat_run, tmp_path, damage)
    with pytest.raises(SavedRunError, match=message):
        qjax.load(copy)
    assert cli.main(_predict_test(copy)) == 2
    err = capsys.readouterr().err
    assert err.startswith("qjax: ") and err.count("\n") == 1 and "Traceback" not in err


def test_a_directory_that_is_not_a_run_is_named(tmp_path, capsys):
    (tmp_path / "notes.txt").write_text("hello")
    for path, message in (
        (tmp_path / "absent", "does not exist"),
        (tmp_path, "is not a qjax run directory"),
        (tmp_path / "notes.txt", "is a file"),
    ):
        with pytest.raises(SavedRunError, match=message):
            qjax.load(path)
        assert cli.main(_predict_test(path)) == 2
        assert message in capsys.readouterr().err


@pytest.mark.parametrize(
    "start, end, message",
    [
        ("2015-12-31", "2015-11-02", "is after --end 2015-11-02; swap them"),
        ("2015-11-02", "2019-01-01", "reach outside the data: the data covers 2015-01-05.."),
        ("2014-01-01", "2015-01-09", "reach outside the data"),
        ("2015-11-07", "2015-11-08", "no trading day between"),  # a weekend
        ("yesterday-ish", "2015-11-08", "is not a date"),
    ],
)
def test_bad_dates_are_named(flat_run, capsys, start, end, message):
    assert (
        cli.main(
            ["predict", str(flat_run), "--start", start, "--end", end, "--out", "unused.parquet"]
        )
        == 2
    )
    assert message in capsys.readouterr().err


def test_bad_data_or_output_paths_are_named(flat_run, tmp_path, capsys):
    cases = [
        (["--data", str(tmp_path / "nope.csv")], "does not exist"),
        (["--data", str(tmp_path)], "not a Qlib data directory"),
        (["--out", str(tmp_path / "scores.txt")], "must end in .parquet or .csv"),
    ]
    for extra, message in cases:
        assert cli.main(_predict_test(flat_run, *extra)) == 2
        assert message in capsys.readouterr().err


def test_a_run_with_a_foreign_processor_finishes_but_cannot_predict(flat_run, tmp_path):
    from types import SimpleNamespace

    from qjax import saved_run
    from qjax.data.processors import Processor

    class Mine(Processor):  # a user's processor: qjax cannot know its fitted state
        def __call__(self, df):
            return df

    saved = qjax.load(flat_run)
    handler = SimpleNamespace(shared_processors=[], infer_processors=[Mine()])
    with pytest.warns(UserWarning, match="cannot be loaded to predict"):
        saved_run.write(tmp_path, saved.config, saved.estimator, handler)
    with pytest.raises(SavedRunError, match="cannot predict: .*Mine is not one of qjax's"):
        qjax.load(tmp_path)


def test_data_from_a_file_of_daily_bars(flat_run, tmp_path, capsys):
    bars = tmp_path / "bars.parquet"  # the long table a user exports: one row per date x stock
    _market(flat_run).reset_index().rename(columns={"datetime": "date"}).to_parquet(bars)
    out = tmp_path / "scores.parquet"
    assert cli.main(_predict_test(flat_run, "--data", str(bars), "--out", str(out))) == 0, (
        capsys.readouterr().err
    )
    written = pd.read_parquet(out)["score"]
    np.testing.assert_array_equal(written.to_numpy(), _saved_scores(flat_run).to_numpy())


def test_data_from_a_qlib_data_directory(flat_run, tmp_path):
    """The run's market written in Qlib's binary layout (calendar, instruments/all.txt, float32
    bins) scores the test segment exactly as the in-memory market did."""
    from qjax.data.qlib_writer import write_qlib_binary

    root = write_qlib_binary(_market(flat_run), tmp_path / "qlib_data")
    scores = qjax.load(flat_run).predict(*TEST, data=root)
    assert scores.index.equals(_saved_scores(flat_run).index)
    np.testing.assert_array_equal(scores.to_numpy(), _saved_scores(flat_run).to_numpy())


def test_python_data_of_another_type_is_named(flat_run):
    with pytest.raises(DataError, match="data must be None .* got dict"):
        qjax.load(flat_run).predict(*TEST, data={"source": "generated"})


def test_a_streamed_run_scores_as_the_resident_run(flat_run, tmp_path):
    """``--set model.kwargs.stream_batches=3`` from the command line to the engine: the same
    test scores, and the saved run predicts new dates streamed."""
    streamed = _train("lstm_alpha360.yaml", tmp_path / "run", model__kwargs__stream_batches=3)
    assert qjax.load(streamed).config["model"]["kwargs"]["stream_batches"] == 3
    # The streamed epoch sums some float32 reductions in another order: equal to 1e-5 of the
    # scores' scale. A relative tolerance alone fails on scores near 0 (3e-8 apart on 1.45e-3).
    resident = _saved_scores(flat_run)
    scale = float(resident.abs().max())
    pd.testing.assert_series_equal(_saved_scores(streamed), resident, atol=1e-5 * scale)
    again = qjax.load(streamed).predict(*TEST)
    pd.testing.assert_series_equal(
        again.sort_index(), _saved_scores(streamed).sort_index(), check_names=False
    )
