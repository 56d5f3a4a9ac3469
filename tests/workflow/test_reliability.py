"""`qjax train` as a new user meets it: bad input, damaged or foreign directories, divergence,
Ctrl-C, one-stock universes. Each case ends in one clear line and an exit code, never in a
traceback, a silent wrong answer or lost work (docs/reliability.md lists them)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from qjax import cli, rundir, runlock, workflow
from qjax.data.market import generate_market
from qjax.train import engine
from tests.workflow import tiny_run

REPO = Path(__file__).resolve().parents[2]
CONFIG = str(REPO / "configs" / "lstm_alpha360.yaml")
# A smaller run than tiny_run's default: 12 instruments, 200 days, two epochs.
SMALL = dict(
    data__n_instruments=12,
    data__n_days=200,
    handler__fit_end_time="2015-06-30",
    dataset__segments__train="[2015-01-05, 2015-06-30]",
    dataset__segments__valid="[2015-07-01, 2015-08-14]",
    dataset__segments__test="[2015-08-17, 2015-09-30]",
    model__kwargs__hidden_size=8,
    model__kwargs__batch_size=64,
    model__kwargs__n_epochs=2,
)
TINY = tiny_run.set_flags(**SMALL)
NO_FILLNA = ["--set", "handler.infer_processors=[]"]


def train(out: Path, *extra: str) -> int:
    return cli.main(tiny_run.train_argv(CONFIG, out, *extra, **SMALL))


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory) -> Path:
    """One completed tiny run; tests work on copies of it."""
    out = tmp_path_factory.mktemp("finished") / "run"
    assert train(out) == 0
    return out


def copy_of(run: Path, tmp_path: Path) -> Path:
    target = tmp_path / "run"
    shutil.copytree(run, target)
    return target


def snapshot(directory: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(directory)): p.read_bytes()
        for p in sorted(directory.rglob("*"))
        if p.is_file()
    }


# -- 2. data loss ------------------------------------------------------------------------------


def test_overwrite_never_deletes_a_directory_qjax_did_not_create(tmp_path, capsys):
    foreign = tmp_path / "mine"
    (foreign / "sub").mkdir(parents=True)
    (foreign / "important.txt").write_text("keep me")
    (foreign / "sub" / "notes.md").write_text("and me")
    before = snapshot(foreign)
    assert train(foreign, "--overwrite") == 2
    assert "qjax did not create" in capsys.readouterr().err
    assert snapshot(foreign) == before
    assert train(foreign) == 2  # nor is it written into without --overwrite
    assert snapshot(foreign) == before


def test_a_legacy_run_without_the_marker_is_not_overwritten(finished_run, tmp_path, capsys):
    legacy = copy_of(finished_run, tmp_path)
    (legacy / rundir.MARKER).unlink()
    before = snapshot(legacy)
    assert train(legacy, "--overwrite", "--set", "model.kwargs.n_epochs=3") == 2
    assert "--overwrite refuses to delete" in capsys.readouterr().err
    assert snapshot(legacy) == before


@pytest.mark.parametrize(
    "bad",
    [
        ["--set", "handler.fit_end_tme=2015-06-30"],  # a config typo
        ["--set", "model.name=lstmm"],  # an unknown model
        ["--set", "model.kwargs.hidden_size=0"],  # a bad keyword value
        ["--set", "dataset.segments.test=[2019-01-02, 2019-03-01]"],  # a segment outside the data
        ["--set", "model.kwargs.d_feat=12"],  # a d_feat that scrambles Alpha360's days
        ["--set", "model.kwargs.batch_size=100000"],  # found by fit, after the directory was set up
        ["--set", "model.kwargs.optimizer=adamm"],  # found when the train config is built
        ["--set", "train.seeds=[0, 0]"],  # a seed twice
    ],
)
def test_overwrite_keeps_the_old_run_when_the_new_config_is_invalid(
    finished_run, tmp_path, capsys, bad
):
    run = copy_of(finished_run, tmp_path)
    before = snapshot(run)
    assert train(run, "--overwrite", *bad) == 2
    err = capsys.readouterr().err
    assert err.startswith("qjax: ") and "Traceback" not in err
    assert snapshot(run) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]  # no backup left behind


def test_overwrite_replaces_a_marked_run_after_validation(finished_run, tmp_path):
    run = copy_of(finished_run, tmp_path)
    (run / "stale.txt").write_text("from the old run")
    assert train(run, "--overwrite", "--set", "model.kwargs.n_epochs=1") == 0
    assert not (run / "stale.txt").exists() and (run / rundir.MARKER).is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]  # the old run is gone
    assert json.loads((run / "metrics.json").read_text())["epochs_run"] == 1


def test_out_naming_a_file_or_a_read_only_directory_is_a_clear_error(tmp_path, capsys, monkeypatch):
    existing = tmp_path / "file.txt"
    existing.write_text("x")
    assert train(existing) == 2
    assert "is an existing file, not a directory" in capsys.readouterr().err
    assert existing.read_text() == "x"

    # (Tests may run as root, which writes anywhere: the permission check is simulated.)
    read_only = tmp_path / "ro"
    read_only.mkdir()
    monkeypatch.setattr(rundir.os, "access", lambda path, mode: Path(path) != read_only)
    assert train(read_only) == 2
    assert f"--out {str(read_only)!r} is not writable" in capsys.readouterr().err
    assert train(read_only / "new") == 2
    assert "is not writable" in capsys.readouterr().err


# -- 3. silent wrong answers / 5. blocked work ------------------------------------------------


def test_nan_features_stop_the_run_before_training_naming_segment_columns_and_fix(
    tmp_path, capsys, monkeypatch
):
    # Without Fillna, Alpha360's lagged prices are NaN where a day is missing. This used to
    # train a whole epoch and stop on a NaN loss; it stops before the directory is set up.
    monkeypatch.setattr(engine, "_run_epoch", lambda *a, **k: pytest.fail("training started"))
    out = tmp_path / "run"
    assert train(out, *NO_FILLNA) == 2
    err = capsys.readouterr().err
    assert err.startswith(
        "qjax: DataError: segment 'test': the model's input features hold "
        "NaN/inf that the processors leave in the 'infer' data: CLOSE59 ("
    )
    assert "add a Fillna processor for NaN features" in err and "Traceback" not in err
    assert not out.exists()  # nothing written, so the corrected rerun is not blocked


def test_a_one_stock_universe_warns_and_writes_null_ic(tmp_path, capsys):
    market = generate_market(n_instruments=3, n_days=200, seed=0)
    one = market.xs("SIM0000", level="instrument", drop_level=False).reset_index()
    path = tmp_path / "one.parquet"
    one.rename(columns={"datetime": "date"}).to_parquet(path)
    out = tmp_path / "run"
    with pytest.warns(UserWarning, match="one instrument per day, so its daily IC"):
        code = train(
            out,
            *tiny_run.sets(
                "data={source: parquet, path: " + str(path) + "}",
                "model.kwargs.batch_size=16",
                "model.kwargs.n_epochs=1",
            ),
        )
    captured = capsys.readouterr()
    assert code == 0, captured.err
    text = (out / "metrics.json").read_text()
    metrics = json.loads(text)  # valid JSON: no bare NaN
    assert "NaN" not in text
    assert metrics["test"] == {"IC": None, "ICIR": None, "Rank IC": None, "Rank ICIR": None}
    assert "test IC        | n/a" in captured.out
    assert "daily IC is undefined on every test day" in (out / "report.html").read_text()


def test_metrics_json_numbers_epochs_from_1_like_the_table(finished_run, capsys):
    metrics = json.loads((finished_run / "metrics.json").read_text())
    history = np.asarray(
        json.loads((finished_run / "checkpoints" / "1" / "meta" / "metadata").read_text())[
            "history"
        ]["valid_score"],
        float,
    ).reshape(-1)
    assert metrics["best_epoch_1based"] == [int(np.nanargmax(history)) + 1]
    assert "best_epoch" not in metrics  # the 0-based key is gone, not silently reinterpreted
    table = workflow.format_table(metrics)
    assert f"best epoch     | {metrics['best_epoch_1based'][0]}" in table


# -- 4. Ctrl-C, 6. what a resumed run reports ------------------------------------------------


def test_ctrl_c_prints_one_line_and_the_rerun_resumes_and_counts_all_time(
    tmp_path, capsys, monkeypatch
):
    out = tmp_path / "run"
    real, calls = engine._run_epoch, []

    def interrupted_at_epoch_2(state, train, valid, *, trainer, n_steps):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(state, train, valid, trainer=trainer, n_steps=n_steps)

    monkeypatch.setattr(engine, "_run_epoch", interrupted_at_epoch_2)
    assert cli.main(["train", CONFIG, "--out", str(out), *TINY]) == 130
    err = capsys.readouterr().err
    assert "qjax: interrupted at epoch 2; run the same command again to resume" in err
    assert "Traceback" not in err and "KeyboardInterrupt" not in err
    monkeypatch.undo()

    assert cli.main(["train", CONFIG, "--out", str(out), *TINY]) == 0
    assert "resuming from epoch 2 (1 of 2 done)" in capsys.readouterr().err
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["resumed_from_epoch"] == 2
    last = json.loads((out / "checkpoints" / "1" / "meta" / "metadata").read_text())
    # the last checkpoint's elapsed time includes the first part; fit seconds include it all
    first_part = json.loads((out / "checkpoints" / "0" / "meta" / "metadata").read_text())
    assert last["elapsed_seconds"] > first_part["elapsed_seconds"] > 0
    assert metrics["seconds"]["fit"] >= round(last["elapsed_seconds"], 2)


# -- 6. the multi-seed report -----------------------------------------------------------------


def test_report_lines_show_every_seed_with_its_own_mean(seed):
    from qjax.report import curves, signal

    # seed_1 stopped early: its scores read NaN afterwards; the mean line uses the seeds it has
    evals = {
        "train": np.array([[-1.0, -1.1], [-0.9, np.nan]]),
        "valid": np.array([[-1.2, -1.3], [-1.1, np.nan]]),
    }
    ax = curves.learning_curves(evals, [2, 1]).axes[0]
    lines = {line.get_label(): line for line in ax.get_lines()}
    np.testing.assert_allclose(lines["train: mean of 2 seeds"].get_ydata(), [-1.05, -0.9])
    np.testing.assert_allclose(lines["valid: mean of 2 seeds"].get_ydata(), [-1.25, -1.1])
    stars = [
        (x, y)
        for line in ax.get_lines()
        if line.get_marker() == "*"
        for x, y in zip(line.get_xdata(), line.get_ydata())
    ]
    assert stars == [(2, -1.1), (1, -1.3)]  # each seed's own best epoch and valid score

    rng = np.random.default_rng(seed)
    index = pd.MultiIndex.from_product(
        [pd.bdate_range("2020-01-01", periods=6), list("ABCDE")], names=["datetime", "instrument"]
    )
    label = pd.Series(rng.standard_normal(len(index)), index=index)
    ic = (
        pd.DataFrame(
            {"seed_0": label + 0.1 * rng.standard_normal(len(index)), "seed_1": -label}, index=index
        )
        .groupby(level="datetime")
        .apply(lambda day: day.corrwith(label.loc[day.index]))
    )
    top, bottom = signal.ic_daily(ic, ic).axes
    # the legend's mean is the mean of the two seeds' mean IC, the mean line's own mean
    overall = (ic["seed_0"].mean() + ic["seed_1"].mean()) / 2
    assert f"IC, 20-day mean (overall {overall:.4f})" in [ln.get_label() for ln in top.get_lines()]
    cumulative = {ln.get_label(): ln.get_ydata() for ln in bottom.get_lines()}
    mean_line = cumulative["cumulative IC: mean of 2 seeds"]
    assert mean_line[-1] / len(mean_line) == pytest.approx(overall, abs=1e-12)
    assert ic["seed_1"].max() == pytest.approx(-1.0)  # seed_1 scores -label: IC exactly -1


# -- the checks reject nothing that is right ----------------------------------------------------

SPANS = {
    "train": ["2015-01-05", "2015-05-29"],
    "pretrain": ["2015-01-05", "2015-05-29"],
    "valid": ["2015-06-01", "2015-06-30"],
    "pretrain_validation": ["2015-06-01", "2015-06-30"],
    "test": ["2015-07-01", "2015-07-31"],
}


@pytest.mark.parametrize(
    "path", sorted(p.name for p in (REPO / "configs").glob("*.yaml") if "csi300" not in p.name)
)
def test_every_shipped_config_passes_the_checks_before_training(path):
    from qjax import run_config
    from qjax.estimators import estimator

    cfg = run_config.load(REPO / "configs" / path)
    cfg["data"].update(n_instruments=8, n_days=160)
    cfg["handler"].update(fit_start_time="2015-01-05", fit_end_time="2015-05-29")
    cfg["dataset"]["segments"] = {name: SPANS[name] for name in cfg["dataset"]["segments"]}
    cfg = run_config.validate(cfg)
    dataset = workflow.build_dataset(cfg)
    workflow.check_dataset(dataset)
    estimator(cfg["model"]["name"], **workflow._model_kwargs(cfg)).preflight(dataset)


def test_an_unreadable_saved_config_is_named(finished_run, tmp_path, capsys):
    run = copy_of(finished_run, tmp_path)
    (run / "config.yaml").write_text("data: [unclosed")
    assert train(run) == 2
    assert "config.yaml cannot be read" in capsys.readouterr().err


def test_the_python_api_checks_the_layout_before_training(tmp_path):
    from qjax import run_config
    from qjax.errors import ConfigError
    from qjax.estimators import estimator

    cfg = run_config.load(CONFIG, tiny_run.overrides(**SMALL))
    dataset = workflow.build_dataset(cfg)
    with pytest.raises(ConfigError, match=r"d_feat=12, but the 360 feature columns are 6 fields"):
        estimator("lstm", d_feat=12, n_epochs=1).fit(dataset, verbose=False)


def test_a_fit_window_reaching_past_the_train_segment_warns_of_look_ahead(tmp_path, capsys):
    message = "fit_end_time 2015-09-30 is after the train segment's end"
    with pytest.warns(UserWarning, match=message):
        # hidden_size=0 ends the run before training; the warning came first
        assert (
            train(
                tmp_path / "run",
                "--set",
                "handler.fit_end_time=2015-09-30",
                "--set",
                "model.kwargs.hidden_size=0",
            )
            == 2
        )
    assert "hidden_size must be a positive integer" in capsys.readouterr().err


def test_a_directory_given_as_the_config_is_named(tmp_path, capsys):
    assert cli.main(["train", str(tmp_path)]) == 2
    assert "is a directory; give a YAML config file" in capsys.readouterr().err


# -- 7. two runs in one directory ---------------------------------------------------------------


def _holder_record(lock: Path, timeout: float = 120.0) -> dict:
    """The lock file's record once the process holding it has written it."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            record = json.loads(lock.read_text() or "{}")
        except (OSError, ValueError):
            record = {}
        if record.get("pid"):
            return record
        time.sleep(0.05)
    raise AssertionError(f"no process took the lock {lock} within {timeout} s")


def test_a_second_run_in_the_same_directory_refuses_and_a_killed_ones_lock_does_not_block(
    tmp_path, capsys
):
    out = tmp_path / "run"
    lock = runlock.lock_path(out)
    holder = subprocess.Popen(
        [sys.executable, "-m", "qjax.cli", *tiny_run.train_argv(CONFIG, out, **SMALL)],
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        record = _holder_record(lock)
        holder.send_signal(signal.SIGSTOP)  # frozen while it holds the lock: no race
        assert record["pid"] == holder.pid
        before = snapshot(out)
        assert train(out) == 2
        err = capsys.readouterr().err
        assert f"is in use by qjax train (pid {holder.pid} on host " in err, err
        assert "choose another --out" in err and "Traceback" not in err
        assert snapshot(out) == before  # the refused run wrote nothing
    finally:
        holder.kill()  # kill -9: the OS drops its lock; the lock file stays behind
        holder.wait()
    assert json.loads(lock.read_text())["pid"] == holder.pid  # stale file, no stale lock
    assert train(out) == 0, capsys.readouterr().err
    assert (out / "metrics.json").is_file()
    assert not lock.exists()  # a run that ends removes its lock file


def test_the_lock_is_one_per_directory_however_it_is_spelt(tmp_path, monkeypatch):
    from qjax.errors import RunDirError

    monkeypatch.chdir(tmp_path)
    out = tmp_path / "new" / "deep" / "run"
    assert runlock.lock_path("new/deep/run/") == runlock.lock_path(out)
    with runlock.exclusive(out):
        busy = r"is in use by qjax train \(pid \d+ on host"
        with pytest.raises(RunDirError, match=busy), runlock.exclusive("./new/deep/run"):
            pass
        assert (tmp_path / "new" / "deep").is_dir()
    # The parents it created for the lock are removed when the run wrote nothing into them.
    assert sorted(p.name for p in tmp_path.iterdir()) == []


def test_qjax_rolling_refuses_an_output_directory_in_use(tmp_path, capsys):
    out = tmp_path / "roll"
    argv = [
        "rolling",
        str(REPO / "configs" / "gru_alpha360.yaml"),
        "--step",
        "20",
        "--out",
        str(out),
        "--quiet",
        *TINY,
    ]
    with runlock.exclusive(out, "qjax rolling"):
        assert cli.main(argv) == 2
    assert "is in use by qjax rolling (pid" in capsys.readouterr().err
    assert not out.exists()


# -- 8. bad input a new user tries (docs/reliability.md lists each) ------------------------------


@pytest.mark.parametrize(
    "content, message",
    [
        (b"\xff\xfe\x00garbage", "is not a text file (byte 0 is not UTF-8)"),
        (b"", "must hold a mapping with sections data, handler"),
        (b"- a\n- b\n", "must hold a mapping with sections data, handler"),
        (b"data: [unclosed\n", "is not valid YAML"),
    ],
)
def test_a_config_file_that_is_not_a_yaml_mapping_is_named(tmp_path, capsys, content, message):
    path = tmp_path / "config.yaml"
    path.write_bytes(content)
    assert cli.main(["train", str(path), "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("qjax: config error: ") and message in err and "Traceback" not in err
    assert not (tmp_path / "run").exists()


def test_an_unreadable_config_file_is_named(tmp_path, capsys, monkeypatch):
    # (Tests may run as root, which reads anything: the permission error is simulated.)
    path = tmp_path / "config.yaml"
    path.write_text(Path(CONFIG).read_text())
    real = Path.read_text

    def read_text(self, *args, **kwargs):
        if self == path:
            raise PermissionError(13, "Permission denied", str(self))
        return real(self, *args, **kwargs)

    monkeypatch.setattr(Path, "read_text", read_text)
    assert cli.main(["train", str(path), "--out", str(tmp_path / "run")]) == 2
    assert (
        f"cannot read the config file {path}: Permission denied; check its permissions"
        in capsys.readouterr().err
    )


def _data(tmp_path: Path, name: str, content: bytes | pd.DataFrame | None = None) -> list[str]:
    path = tmp_path / name
    if content is None:
        path.mkdir()
    elif isinstance(content, pd.DataFrame):
        content.to_parquet(path)
    else:
        path.write_bytes(content)
    source = "csv" if ".csv" in name else "parquet"
    return ["--set", f"data={{source: {source}, path: {path}}}"]


def _ohlcv() -> pd.DataFrame:
    market = generate_market(n_instruments=4, n_days=200, seed=0).reset_index()
    return market.rename(columns={"datetime": "date"})


BAD_DATA = {
    "data-dir": lambda tmp: _data(tmp, "prices.parquet"),
    "empty-csv": lambda tmp: _data(tmp, "prices.csv", b""),
    "not-parquet": lambda tmp: _data(tmp, "prices.parquet", b"not parquet"),
    "missing-column": lambda tmp: _data(tmp, "prices.parquet", _ohlcv().drop(columns="volume")),
    "duplicate-rows": lambda tmp: _data(
        tmp, "prices.parquet", pd.concat([_ohlcv(), _ohlcv().iloc[:5]])
    ),
    "qlib-dir-without-data": lambda tmp: (
        (tmp / "qlib").mkdir() or ["--set", f"data={{source: qlib, provider_uri: {tmp / 'qlib'}}}"]
    ),
}


@pytest.mark.parametrize(
    "extra, message",
    [
        # Found in this round (each was a traceback, a silent wrong answer or a vague message):
        (
            ["--set", "dataset.segments.train=[2015-01-05, 2015-02-30]"],
            "day is out of range for month: a value that YAML reads as a date is not a valid date",
        ),
        (
            ["--set", "handler.infer_processors=5"],
            "infer_processors must be a list of processors, e.g. [{class: Fillna",
        ),
        (["--set", "handler.infer_processors={class: Fillna}"], "put a single one in a list"),
        (
            ["--set", "dataset.segments.valid=[2015-07-04, 2015-07-05]"],
            "segment 'valid' (2015-07-04..2015-07-05) holds no trading day of the 'learn' data",
        ),
        (
            ["--set", "handler.end_time=2015-08-31"],
            "dataset.segments.test ends 2015-09-30, after handler.end_time 2015-08-31",
        ),
        (
            ["--set", "handler.start_time=2015-02-02"],
            "dataset.segments.train starts 2015-01-05, before handler.start_time 2015-02-02",
        ),
        (
            ["--set", "dataset.class=TSDataset", "--set", "dataset.step_len=100000"],
            "step_len=100000 is longer than the data's",
        ),
        ("data-dir", "is a directory; give one .csv or .parquet file"),
        ("empty-csv", "as a CSV file: No columns to parse from file. Check that it is"),
        ("not-parquet", "as a Parquet file: "),
        # Handled before this round; kept here so that they stay handled:
        ("missing-column", "OHLCV input is missing required columns ['volume']"),
        ("duplicate-rows", "10 rows share a (date, instrument) pair with another row"),
        ("qlib-dir-without-data", "has no calendars/day.txt; expected Qlib's binary layout"),
        (["--set", "data.n_instruments=abc"], "data.n_instruments must be a positive integer"),
        (["--set", "data.seed=abc"], "seed must be a non-negative integer, got 'abc'"),
        (["--set", "model.kwargs.lr"], "must look like section.key=value"),
        (["--set", "=1"], "override '=1' has an empty key"),
        (
            ["--set", "dataset.segments.train=[2015-06-30, 2015-01-05]"],
            "segment 'train' starts after it ends (2015-06-30 > 2015-01-05); swap the dates",
        ),
        (["--set", "model.kwargs.lr=-1"], "lr must be a positive number, got -1"),
        (["--set", "model.kwargs.n_epochs=0"], "n_epochs must be a positive integer, got 0"),
        (["--set", "model.kwargs.batch_size=0"], "batch_size must be a positive integer, got 0"),
        (["--set", "train.seeds=[abc]"], "train.seeds must be a non-empty list of non-negative"),
        (["--set", "model.kwargs.seed=abc"], "TrainConfig.seed='abc' is invalid"),
        (["--set", "handler.infer_processors=[{class: Fillnaa}]"], "(did you mean 'Fillna'?)"),
    ],
)
def test_bad_input_ends_in_one_line_naming_the_fix_before_anything_is_written(
    tmp_path, capsys, monkeypatch, extra, message
):
    monkeypatch.setattr(engine, "_run_epoch", lambda *a, **k: pytest.fail("training started"))
    if isinstance(extra, str):
        extra = BAD_DATA[extra](tmp_path)
    out = tmp_path / "run"
    assert train(out, *extra) == 2
    err = capsys.readouterr().err
    assert err.startswith("qjax: ") and message in err, err
    assert "Traceback" not in err
    assert not out.exists()


def test_a_test_segment_before_the_train_segment_warns_of_look_ahead(tmp_path, capsys):
    with pytest.warns(
        UserWarning,
        match=r"the test segment \(2015-01-05..2015-02-27\) ends "
        r"before the train segment starts \(2015-03-02\)",
    ):
        # hidden_size=0 ends the run before training; the warning came first
        assert (
            train(
                tmp_path / "run",
                "--set",
                "dataset.segments.test=[2015-01-05, 2015-02-27]",
                "--set",
                "dataset.segments.train=[2015-03-02, 2015-06-30]",
                "--set",
                "model.kwargs.hidden_size=0",
            )
            == 2
        )


def test_qjax_report_names_a_damaged_file_and_leaves_out_only_what_it_cannot_read(
    finished_run, tmp_path, capsys
):
    for name, content in (
        ("metrics.json", "{trunc"),
        ("metrics.json", "[1, 2]"),
        ("predictions.parquet", "PAR1xx"),
    ):
        run = copy_of(finished_run, tmp_path / name / content.strip("{[")[:3])
        (run / name).write_text(content)
        assert cli.main(["report", str(run)]) == 2
        err = capsys.readouterr().err
        assert f"qjax: {run / name} " in err and "run the same `qjax train` command again" in err
    assert cli.main(["report", str(tmp_path)]) == 2  # not a run directory
    assert "config.yaml is missing" in capsys.readouterr().err
    # The configuration (only the title) and the per-epoch scores are optional: a note instead.
    run = copy_of(finished_run, tmp_path / "optional")
    (run / "config.yaml").write_text("[: bad")
    (run / "evals.json").write_text("{trunc")
    assert cli.main(["report", str(run)]) == 0
    page = (run / "report.html").read_text()
    assert "the configuration in the title left out: " in page
    assert "learning curves left out: " in page and "evals.json cannot be read" in page


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--step", "0"], "--step must be a positive number of trading days, got 0"),
        (["--step", "-3"], "--step must be a positive number of trading days, got -3"),
        (["--step", "10", "--trunc-days", "-1"], "--trunc-days must be a non-negative number"),
        (
            ["--step", "10", "--set", "handler.end_time=2015-08-31"],
            "dataset.segments.test ends 2015-09-30, after handler.end_time 2015-08-31",
        ),
        ("a file", "is a file; choose a directory"),
        ("a qjax train run", "is a non-empty directory without rolling.json"),
    ],
)
def test_qjax_rolling_bad_requests_end_in_one_line(tmp_path, capsys, extra, message):
    out = tmp_path / "roll"
    if isinstance(extra, str):
        if extra == "a file":
            out.write_text("x")
        else:
            out.mkdir()
            (out / rundir.MARKER).write_text("{}")
        before, extra = snapshot(tmp_path), ["--step", "10"]
    else:
        before = None
    assert cli.main(["rolling", CONFIG, "--out", str(out), "--quiet", *TINY, *extra]) == 2
    err = capsys.readouterr().err
    assert err.startswith("qjax: ") and message in err and "Traceback" not in err, err
    if before is None:
        assert not out.exists()
    else:
        assert snapshot(tmp_path) == before
