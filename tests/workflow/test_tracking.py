"""``qjax train --mlflow``: a finished run in a real MLflow store, read back through its client."""

from __future__ import annotations

import json

import numpy as np
import pytest
import yaml

from qjax import cli
from qjax.tracking import final_metrics, flat_params
from tests.workflow.tiny_run import REPO, sets, train_argv

CONFIG = str(REPO / "configs" / "gru_alpha360.yaml")


def test_config_flattens_to_dotted_params():
    tree = {"model": {"name": "gru", "kwargs": {"lr": 1e-3, "layers": [1, 2]}}, "empty": {}}
    assert dict(flat_params(tree)) == {
        "model.name": "gru",
        "model.kwargs.lr": "0.001",
        "model.kwargs.layers": "[1, 2]",
        "empty": "{}",
    }


def test_final_metrics_keep_finite_test_numbers():
    metrics = {
        "test": {"IC": 0.05, "IC std": 0.01, "Rank IC": None, "ICIR": float("nan")},
        "seven_columns": {"Annualized Return": 0.1},
        "epochs_run": 4,
        "model": "gru",
    }
    assert final_metrics(metrics) == {
        "test IC": 0.05,
        "test IC std": 0.01,
        "Annualized Return": 0.1,
        "epochs_run": 4.0,
    }


@pytest.fixture(scope="module")
def logged(tmp_path_factory):
    pytest.importorskip("mlflow")
    root = tmp_path_factory.mktemp("tracking")
    out, store = root / "run", root / "mlruns"
    argv = train_argv(
        CONFIG,
        out,
        "--mlflow",
        str(store),
        "--experiment",
        "tiny",
        *sets("train.seeds=[0, 1]"),
        model__kwargs__n_epochs=3,
    )
    assert cli.main(argv) == 0
    return out, store, argv


def _client(store):
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=store.resolve().as_uri())


def test_params_per_epoch_scores_test_metrics_and_artifacts_read_back(logged):
    out, store, _ = logged
    client = _client(store)
    experiment = client.get_experiment_by_name("tiny")
    (run,) = client.search_runs([experiment.experiment_id])
    config = yaml.safe_load((out / "config.yaml").read_text())
    assert run.data.params["model.kwargs.lr"] == str(config["model"]["kwargs"]["lr"])
    assert run.data.params["train.seeds"] == "[0, 1]"

    evals = json.loads((out / "evals.json").read_text())  # name -> [epochs][seeds]
    for name, rows in evals.items():
        for seed_index, seed in enumerate((0, 1)):
            history = client.get_metric_history(run.info.run_id, f"{name}/seed_{seed}")
            assert [m.step for m in history] == list(range(1, len(rows) + 1))
            np.testing.assert_allclose(
                [m.value for m in history], [row[seed_index] for row in rows], rtol=1e-12
            )

    test = json.loads((out / "metrics.json").read_text())["test"]
    assert run.data.metrics["test IC"] == pytest.approx(test["IC"], rel=1e-12)
    assert run.data.metrics["test IC std"] == pytest.approx(test["IC std"], rel=1e-12)
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"config.yaml", "metrics.json", "predictions.parquet", "report.html"} <= artifacts


def test_the_same_command_again_does_not_log_twice(logged):
    out, store, argv = logged
    assert cli.main(argv) == 0
    client = _client(store)
    experiment = client.get_experiment_by_name("tiny")
    assert len(client.search_runs([experiment.experiment_id])) == 1


def test_a_failed_logging_keeps_the_finished_run(logged, tmp_path, capsys):
    out, _, argv = logged
    not_a_store = tmp_path / "file"
    not_a_store.write_text("not an MLflow store")
    argv = [a if a != str(logged[1]) else str(not_a_store) for a in argv]
    assert cli.main(argv) == 1
    err = capsys.readouterr().err
    assert "is complete, but logging it to MLflow" in err and "run the same command again" in err
    assert (out / "metrics.json").exists()
