"""Run configs: YAML loading, overrides, validation errors; every shipped config is valid."""

from pathlib import Path

import pytest

from qjax import run_config
from qjax.estimators import wrappers

CONFIGS = sorted((Path(__file__).resolve().parents[1] / "configs").glob("*.yaml"))


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.stem)
def test_shipped_configs_are_valid_and_name_known_models(path):
    cfg = run_config.load(path)
    assert cfg["model"]["name"] in wrappers()
    assert set(cfg["dataset"]["segments"]) >= {"train", "valid", "test"}


def test_override_sets_nested_values_parsed_as_yaml(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text(CONFIGS[0].read_text())
    cfg = run_config.load(path, ["model.kwargs.lr=2e-4", "data.n_days=300", "train.seeds=[1, 2]"])
    assert cfg["model"]["kwargs"]["lr"] == 2e-4
    assert cfg["data"]["n_days"] == 300
    assert cfg["train"]["seeds"] == [1, 2]


SEGMENTS = "dataset: {segments: {train: [2015-01-01, 2015-02-01]}}\n"


@pytest.mark.parametrize(
    "text, message",
    [
        ("data: [1, 2\n", "not valid YAML"),
        ("- a\n- b\n", "must hold a mapping"),
        (
            "data: {}\nhandler: {name: Alpha360}\ndataset: {segments: {train: [2015-01-01, 2015-02-01]}}\n",
            "needs a 'model' section",
        ),
        (
            "data: {source: ftp}\nhandler: {name: Alpha360}\n" + SEGMENTS + "model: {name: lstm}\n",
            "data.source must be one of",
        ),
        (
            "data: {}\nhandler: {name: Alpha999}\n" + SEGMENTS + "model: {name: lstm}\n",
            "handler.name must be Alpha360 or Alpha158",
        ),
        (
            "data: {}\nhandler: {name: Alpha360}\ndataset: {segments: {train: [2015-01-01]}}\nmodel: {name: lstm}\n",
            r"segments.train must be \[start, end\]",
        ),
        (
            "data: {}\nhandler: {name: Alpha360}\n"
            "dataset: {segments: {train: [yesterday, 2015-02-01]}}\nmodel: {name: lstm}\n",
            "is not a date",
        ),
        (
            "data: {}\nhandler: {name: Alpha360}\n" + SEGMENTS + "model: {name: lstm}\nextra: 1\n",
            "unknown config section",
        ),
        (
            "data: {}\nhandler: {name: Alpha158}\n"
            "dataset: {class: TSDataset, segments: {train: [2015-01-01, 2015-02-01]}}\n"
            "model: {name: lstm, kwargs: {stream_batches: 4}}\n",
            "stream_batches streams the feature rows of a flat Dataset, but dataset.class TSDataset",
        ),
    ],
)
def test_malformed_configs_raise_a_clear_error(tmp_path, text, message):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(run_config.ConfigError, match=message):
        run_config.load(path)


def test_bad_override_and_missing_file_are_clear_errors(tmp_path):
    with pytest.raises(run_config.ConfigError, match="must look like section.key=value"):
        run_config.load(CONFIGS[0], ["model.kwargs.lr"])
    with pytest.raises(run_config.ConfigError, match="does not exist"):
        run_config.load(tmp_path / "missing.yaml")
