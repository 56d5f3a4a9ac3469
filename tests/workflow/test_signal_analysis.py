"""`signal_analysis.ana_long_short`: metrics.json's long-short returns equal Qlib's SigAnaRecord
run on the same predictions and labels (generated data, a one-epoch run)."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from qjax import cli, run_config
from qjax.workflow import LONG_SHORT_METRICS
from tests.workflow import tiny_run

CONFIG = str(tiny_run.REPO / "configs" / "lstm_alpha360.yaml")


class _Recorder:
    """The two recorder methods SigAnaRecord calls: objects by file name, metrics kept."""

    def __init__(self, objects: dict):
        self.objects, self.metrics = objects, {}

    def load_object(self, path: str):
        return self.objects[path.split("/")[-1]]

    def log_metrics(self, **metrics):
        self.metrics.update(metrics)


@pytest.mark.parity
def test_long_short_metrics_equal_qlibs_sigana_record(qlib, tmp_path):
    from qlib.workflow.record_temp import SigAnaRecord

    out = tmp_path / "run"
    flags = tiny_run.set_flags(
        model__kwargs__hidden_size=8,
        model__kwargs__n_epochs=1,
        signal_analysis__ana_long_short="true",
        signal_analysis__ann_scaler=250,
    )
    assert cli.main(["train", CONFIG, "--out", str(out), "--quiet", *flags]) == 0
    ours = json.loads((out / "metrics.json").read_text())["test"]

    pred = pd.read_parquet(out / "predictions.parquet")
    label = pd.read_parquet(out / "labels.parquet")
    recorder = _Recorder({"pred.pkl": pred, "label.pkl": label})
    SigAnaRecord(recorder, ana_long_short=True, ann_scaler=250)._generate()
    theirs = recorder.metrics
    assert set(LONG_SHORT_METRICS) <= set(ours) and set(LONG_SHORT_METRICS) <= set(theirs)
    for name in LONG_SHORT_METRICS:
        # The same float64 formula on the same float32 inputs: agreement to round-off.
        np.testing.assert_allclose(ours[name], theirs[name], rtol=1e-10, err_msg=name)
    for name in ("IC", "Rank IC"):  # the metrics qjax had before, for the same inputs
        np.testing.assert_allclose(ours[name], theirs[name], rtol=1e-6, err_msg=name)
    assert all(np.isfinite(ours[name]) for name in LONG_SHORT_METRICS)


def test_signal_analysis_settings_are_checked():
    cfg = run_config.load(CONFIG)
    for section, message in (
        ({"ana_long_short": "yes"}, "must be true or false"),
        ({"ann_scaler": 0}, "positive number"),
        ({"ana_long_shrt": True}, "did you mean 'ana_long_short'"),
    ):
        with pytest.raises(run_config.ConfigError, match=message):
            run_config.validate({**cfg, "signal_analysis": section})
