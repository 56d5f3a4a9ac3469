"""Every config section's keys are checked: a typo is an error that suggests the right name."""

from __future__ import annotations

from pathlib import Path

import pytest

from qjax import run_config
from qjax.errors import ConfigError, QjaxError

REPO = Path(__file__).resolve().parents[1]
CONFIG = REPO / "configs" / "lstm_alpha360.yaml"
TS_CONFIG = REPO / "configs" / "gru_alpha158.yaml"


@pytest.mark.parametrize(
    "override, message",
    [
        # the three typos of issue 10, each of which used to run with exit code 0
        (
            "data.n_instrumnts=5",
            r"unknown key data.n_instrumnts \(did you mean 'n_instruments'\?\)",
        ),
        (
            "handler.fit_end_tme=2015-06-30",
            r"unknown key handler.fit_end_tme \(did you mean 'fit_end_time'\?\)",
        ),
        ("dataset.step_length=20", r"dataset.step_length \(did you mean 'step_len'\?\)"),
        ("model.kwarg={}", r"unknown key model.kwarg \(did you mean 'kwargs'\?\)"),
        ("train.seed=[0]", r"unknown key train.seed \(did you mean 'seeds'\?\)"),
        # a key that another data source reads is ignored by this one: say so
        ("data.path=x.csv", r"data.path is read only when data.source is csv or parquet"),
        ("data.provider_uri=x", r"data.provider_uri is read only when data.source is qlib"),
        # step_len only shapes TSDataset windows
        ("dataset.step_len=20", r"dataset.step_len is read only when dataset.class is TSDataset"),
        # a misspelt valid segment would silently drop model selection
        (
            "dataset.segments.vaild=[2016-01-04, 2016-05-31]",
            r"unknown segment dataset.segments.vaild \(did you mean 'valid'\?\)",
        ),
        ("data.n_instruments=0", r"data.n_instruments must be a positive integer"),
        ("data.n_days=-5", r"data.n_days must be a positive integer"),
        ("data.source=csvv", r"data.source must be one of .* \(did you mean 'csv'\?\)"),
        ("handler.process_type=apend", r"handler.process_type must be append or independent"),
    ],
)
def test_a_mistyped_or_misplaced_key_is_an_error_naming_the_fix(override, message):
    with pytest.raises(ConfigError, match=message):
        run_config.load(CONFIG, [override])


def test_a_mistyped_section_suggests_the_section():
    with pytest.raises(ConfigError, match=r"\['handlr'\] \(did you mean 'handler'\?\)"):
        run_config.validate({"handlr": {}, **run_config.load(CONFIG)})


def test_ts_dataset_accepts_step_len_and_checks_it():
    assert run_config.load(TS_CONFIG, ["dataset.step_len=10"])["dataset"]["step_len"] == 10
    with pytest.raises(ConfigError, match="dataset.step_len must be a positive integer"):
        run_config.load(TS_CONFIG, ["dataset.step_len=0"])


def test_config_errors_are_qjax_errors_and_value_errors():
    # qjax's own class for callers who catch qjax's errors, ValueError for everyone else
    assert issubclass(ConfigError, QjaxError) and issubclass(ConfigError, ValueError)


def test_every_shipped_config_is_valid():
    for path in sorted((REPO / "configs").glob("*.yaml")):
        run_config.load(path)
