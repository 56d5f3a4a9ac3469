"""`handler.compute_in_gather: true`: a run whose Alpha360 rows are built per batch trains,
scores and saves as the default (flat) run does."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import qjax
from qjax import cli, run_config
from qjax.errors import ConfigError
from tests.workflow import tiny_run

REPO = tiny_run.REPO
TEST = ("2015-11-02", "2015-12-31")


def _train(out: Path, config: str = "lstm_alpha360.yaml", **changes) -> Path:
    items = tiny_run.overrides(model__kwargs__hidden_size=8, model__kwargs__n_epochs=2, **changes)
    if config != "lstm_alpha360.yaml":  # the daily models take no batch_size: a batch is a day
        items = [item for item in items if not item.startswith("model.kwargs.batch_size=")]
    flags = tiny_run.sets(*items)
    config = str(REPO / "configs" / config)
    assert cli.main(["train", config, "--out", str(out), "--quiet", *flags]) == 0
    return out


# LSTM: batches of rows; GATs and HIST: one trading day per batch (their daily sampler).
@pytest.mark.parametrize(
    "config", ["lstm_alpha360.yaml", "gats_alpha360.yaml", "hist_alpha360.yaml"]
)
def test_a_gather_run_equals_the_flat_run(tmp_path, config):
    flat = _train(tmp_path / "flat", config)
    gather = _train(tmp_path / "gather", config, handler__compute_in_gather="true")
    expected = pd.read_parquet(flat / "predictions.parquet")
    scores = pd.read_parquet(gather / "predictions.parquet")
    assert scores.index.equals(expected.index)
    # The rows are equal bit for bit (tests/data/test_alpha360.py); training may still sum
    # in another order, hence float tolerance.
    np.testing.assert_allclose(scores.to_numpy(), expected.to_numpy(), rtol=1e-5, atol=1e-6)
    ic = [json.loads((run / "metrics.json").read_text())["test"]["IC"] for run in (flat, gather)]
    assert ic[0] == pytest.approx(ic[1], abs=1e-5)
    # The saved run keeps the fitted processors: `qjax predict` scores on the flat path.
    np.testing.assert_allclose(
        qjax.load(gather).predict(*TEST).to_numpy(), scores["score"].to_numpy(), atol=1e-6
    )


@pytest.mark.parametrize(
    "change",
    ["handler.name=Alpha158", "dataset.class=TSDataset", "handler.compute_in_gather=2"],
)
def test_compute_in_gather_is_refused_where_it_does_not_apply(change):
    config = REPO / "configs" / "lstm_alpha360.yaml"
    with pytest.raises(ConfigError, match="compute_in_gather"):
        run_config.load(config, ["handler.compute_in_gather=true", change])
