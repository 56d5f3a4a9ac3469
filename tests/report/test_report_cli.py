"""`qjax report RUN_DIR` rebuilds the report of a real (one-epoch, tiny) `qjax train` run."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import pandas as pd

from qjax import cli

REPO = Path(__file__).resolve().parents[2]
TINY = [
    "--set",
    "data.n_instruments=30",
    "--set",
    "data.n_days=260",
    "--set",
    "handler.fit_end_time=2015-08-31",
    "--set",
    "dataset.segments.train=[2015-01-05, 2015-08-31]",
    "--set",
    "dataset.segments.valid=[2015-09-01, 2015-10-30]",
    "--set",
    "dataset.segments.test=[2015-11-02, 2015-12-31]",
    "--set",
    "model.kwargs.hidden_size=8",
    "--set",
    "model.kwargs.batch_size=512",
    "--set",
    "model.kwargs.n_epochs=1",
]


def test_qjax_report_rebuilds_the_report_of_a_train_run(tmp_path, capsys):
    out = tmp_path / "tiny_lstm"
    config = str(REPO / "configs" / "lstm_alpha360.yaml")
    assert cli.main(["train", config, "--out", str(out), "--quiet", *TINY]) == 0
    label = pd.read_parquet(out / "labels.parquet").iloc[:, 0]
    pred = pd.read_parquet(out / "predictions.parquet")
    assert label.index.equals(pred.index) and label.notna().mean() > 0.9
    assert len(json.loads((out / "evals.json").read_text())["valid"]) == 1

    page = out / "report.html"
    page.unlink()
    for png in (out / "report").iterdir():
        png.unlink()
    capsys.readouterr()
    assert cli.main(["report", str(out)]) == 0
    assert str(page) in capsys.readouterr().out
    html = page.read_text()
    names = sorted(p.name for p in (out / "report").iterdir())
    # No backtest section in this config: every figure but the backtest's.
    assert names == [
        "group_returns.png",
        "ic_daily.png",
        "ic_distribution.png",
        "learning_curves.png",
        "long_short.png",
    ]
    for name in names:
        assert base64.b64encode((out / "report" / name).read_bytes()).decode() in html, name
    assert "tiny_lstm: lstm on Alpha360" in html
    assert "generated market, 30 instruments" in html and "seed 0" in html


def test_qjax_report_refuses_a_directory_that_is_not_a_run(tmp_path, capsys):
    assert cli.main(["report", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "config.yaml is missing" in err and "qjax train" in err
