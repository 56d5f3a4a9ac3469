"""`qjax train` as a new user meets it: bad input, damaged or foreign directories, divergence,
Ctrl-C, one-stock universes. Each case ends in one clear line and an exit code, never in a
traceback, a silent wrong answer or lost work (docs/reliability.md lists them)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from qjax import cli, rundir, workflow
from qjax.data.market import generate_market
from qjax.train import engine

REPO = Path(__file__).resolve().parents[2]
CONFIG = str(REPO / "configs" / "lstm_alpha360.yaml")
TINY = [
    "--set", "data.n_instruments=12", "--set", "data.n_days=200",
    "--set", "handler.fit_end_time=2015-06-30",
    "--set", "dataset.segments.train=[2015-01-05, 2015-06-30]",
    "--set", "dataset.segments.valid=[2015-07-01, 2015-08-14]",
    "--set", "dataset.segments.test=[2015-08-17, 2015-09-30]",
    "--set", "model.kwargs.hidden_size=8", "--set", "model.kwargs.batch_size=64",
    "--set", "model.kwargs.n_epochs=2",
]
NO_FILLNA = ["--set", "handler.infer_processors=[]"]


def train(out: Path, *extra: str) -> int:
    return cli.main(["train", CONFIG, "--out", str(out), "--quiet", *TINY, *extra])


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
    return {str(p.relative_to(directory)): p.read_bytes()
            for p in sorted(directory.rglob("*")) if p.is_file()}


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


@pytest.mark.parametrize("bad", [
    ["--set", "handler.fit_end_tme=2015-06-30"],  # a config typo
    ["--set", "model.name=lstmm"],  # an unknown model
    ["--set", "model.kwargs.hidden_size=0"],  # a bad keyword value
    ["--set", "dataset.segments.test=[2019-01-02, 2019-03-01]"],  # a segment outside the data
    ["--set", "model.kwargs.d_feat=12"],  # a d_feat that scrambles Alpha360's days
    ["--set", "model.kwargs.batch_size=100000"],  # found by fit, after the directory was set up
    ["--set", "model.kwargs.optimizer=adamm"],  # found when the train config is built
    ["--set", "train.seeds=[0, 0]"],  # a seed twice
])
def test_overwrite_keeps_the_old_run_when_the_new_config_is_invalid(finished_run, tmp_path,
                                                                     capsys, bad):
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


def test_out_naming_a_file_or_a_read_only_directory_is_a_clear_error(tmp_path, capsys,
                                                                      monkeypatch):
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

def test_nan_features_stop_the_run_naming_the_columns_and_a_fixed_rerun_is_not_blocked(
        tmp_path, capsys):
    out = tmp_path / "run"
    assert train(out, *NO_FILLNA) == 1
    err = capsys.readouterr().err
    assert "qjax: training stopped: the training loss became nan at epoch 1" in err
    assert "segment 'train' features: CLOSE59 (" in err and "NaN)" in err
    assert "Add a Fillna processor" in err and "Traceback" not in err
    assert not (out / "metrics.json").exists()
    assert not rundir.has_checkpoints(out)
    # The corrected config (a different one) reruns in the same directory without --overwrite.
    assert train(out) == 0
    assert (out / "metrics.json").exists()


def test_a_one_stock_universe_warns_and_writes_null_ic(tmp_path, capsys):
    market = generate_market(n_instruments=3, n_days=200, seed=0)
    one = market.xs("SIM0000", level="instrument", drop_level=False).reset_index()
    path = tmp_path / "one.parquet"
    one.rename(columns={"datetime": "date"}).to_parquet(path)
    out = tmp_path / "run"
    with pytest.warns(UserWarning, match="one instrument per day, so its daily IC"):
        code = cli.main([
            "train", CONFIG, "--out", str(out), "--quiet", *TINY,
            "--set", "data={source: parquet, path: " + str(path) + "}",
            "--set", "model.kwargs.batch_size=16", "--set", "model.kwargs.n_epochs=1",
        ])
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
    history = np.asarray(json.loads(
        (finished_run / "checkpoints" / "1" / "meta" / "metadata").read_text())["history"][
            "valid_score"], float).reshape(-1)
    assert metrics["best_epoch_1based"] == [int(np.nanargmax(history)) + 1]
    assert "best_epoch" not in metrics  # the 0-based key is gone, not silently reinterpreted
    table = workflow.format_table(metrics)
    assert f"best epoch     | {metrics['best_epoch_1based'][0]}" in table


# -- 4. Ctrl-C, 6. what a resumed run reports ------------------------------------------------

def test_ctrl_c_prints_one_line_and_the_rerun_resumes_and_counts_all_time(tmp_path, capsys,
                                                                          monkeypatch):
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
    evals = {"train": np.array([[-1.0, -1.1], [-0.9, np.nan]]),
             "valid": np.array([[-1.2, -1.3], [-1.1, np.nan]])}
    ax = curves.learning_curves(evals, [2, 1]).axes[0]
    lines = {line.get_label(): line for line in ax.get_lines()}
    np.testing.assert_allclose(lines["train: mean of 2 seeds"].get_ydata(), [-1.05, -0.9])
    np.testing.assert_allclose(lines["valid: mean of 2 seeds"].get_ydata(), [-1.25, -1.1])
    stars = [(x, y) for line in ax.get_lines() if line.get_marker() == "*"
             for x, y in zip(line.get_xdata(), line.get_ydata())]
    assert stars == [(2, -1.1), (1, -1.3)]  # each seed's own best epoch and valid score

    rng = np.random.default_rng(seed)
    index = pd.MultiIndex.from_product(
        [pd.bdate_range("2020-01-01", periods=6), list("ABCDE")], names=["datetime", "instrument"])
    label = pd.Series(rng.standard_normal(len(index)), index=index)
    ic = pd.DataFrame({"seed_0": label + 0.1 * rng.standard_normal(len(index)), "seed_1": -label},
                      index=index).groupby(level="datetime").apply(
        lambda day: day.corrwith(label.loc[day.index]))
    top, bottom = signal.ic_daily(ic, ic).axes
    # the legend's mean is the mean of the two seeds' mean IC, the mean line's own mean
    overall = (ic["seed_0"].mean() + ic["seed_1"].mean()) / 2
    assert f"IC, 20-day mean (overall {overall:.4f})" in [ln.get_label() for ln in top.get_lines()]
    cumulative = {ln.get_label(): ln.get_ydata() for ln in bottom.get_lines()}
    mean_line = cumulative["cumulative IC: mean of 2 seeds"]
    assert mean_line[-1] / len(mean_line) == pytest.approx(overall, abs=1e-12)
    assert ic["seed_1"].max() == pytest.approx(-1.0)  # seed_1 scores -label: IC exactly -1


# -- the checks reject nothing that is right ----------------------------------------------------

SPANS = {"train": ["2015-01-05", "2015-05-29"], "pretrain": ["2015-01-05", "2015-05-29"],
         "valid": ["2015-06-01", "2015-06-30"], "pretrain_validation": ["2015-06-01", "2015-06-30"],
         "test": ["2015-07-01", "2015-07-31"]}


@pytest.mark.parametrize("path", sorted(p.name for p in (REPO / "configs").glob("*.yaml")
                                        if "csi300" not in p.name))
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

    cfg = run_config.load(CONFIG, [item for item in TINY if item != "--set"])
    dataset = workflow.build_dataset(cfg)
    with pytest.raises(ConfigError, match=r"d_feat=12, but the 360 feature columns are 6 fields"):
        estimator("lstm", d_feat=12, n_epochs=1).fit(dataset, verbose=False)


def test_a_fit_window_reaching_past_the_train_segment_warns_of_look_ahead(tmp_path, capsys):
    message = "fit_end_time 2015-09-30 is after the train segment's end"
    with pytest.warns(UserWarning, match=message):
        # hidden_size=0 ends the run before training; the warning came first
        assert train(tmp_path / "run", "--set", "handler.fit_end_time=2015-09-30",
                     "--set", "model.kwargs.hidden_size=0") == 2
    assert "hidden_size must be a positive integer" in capsys.readouterr().err


def test_a_directory_given_as_the_config_is_named(tmp_path, capsys):
    assert cli.main(["train", str(tmp_path)]) == 2
    assert "is a directory; give a YAML config file" in capsys.readouterr().err
