"""`qjax run` on Qlib's own benchmark workflow YAMLs (vendored unchanged in qlib_yamls/).

Every YAML of the zoo is translated against a small generated market written in Qlib's binary
layout (cheap); a representative handful trains one epoch end to end through the CLI.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from qjax import cli, qlib_workflow
from qjax.run_config import ConfigError

YAMLS = sorted((Path(__file__).parent / "qlib_yamls").glob("*/*.yaml"))
MARKET_SEED = 0  # the generated market (fixed: the tests check translation, not statistics)
N_INSTRUMENTS = 12
# Segments inside the generated market's 2015 (Alpha360 reads 60 days of history before start).
SEGMENTS = {
    "train": "[2015-03-02, 2015-08-31]",
    "valid": "[2015-09-01, 2015-10-30]",
    "test": "[2015-11-02, 2015-12-29]",
}
# Qlib's model wrapper module -> the qjax name and dataset class the translation must give.
EXPECTED = {
    "DNNModelPytorch": "mlp",
    "LSTM": "lstm",
    "GRU": "gru",
    "ALSTM": "alstm",
    "TransformerModel": "transformer",
    "LocalformerModel": "localformer",
    "GATs": "gats",
    "TabnetModel": "tabnet",
    "KRNN": "krnn",
    "SFM": "sfm",
    "HIST": "hist",
    "TCN": "tcn",
    "GeneralPTNN": "general",
}


@pytest.fixture(scope="module")
def qlib_dir(tmp_path_factory) -> Path:
    """A generated market in Qlib's binary layout, with csi300/csi500 universes and HIST's
    concept files (Qlib's .npy formats)."""
    from qjax.data.market import generate_concepts, generate_market
    from qjax.data.qlib_writer import write_qlib_binary

    root = tmp_path_factory.mktemp("qlib_data")
    panel = generate_market(
        n_instruments=N_INSTRUMENTS, n_days=260, start="2015-01-05", seed=MARKET_SEED
    )
    codes = sorted(set(panel.index.get_level_values("instrument")))
    write_qlib_binary(panel, root, markets={"csi300": codes, "csi500": codes})
    concepts = generate_concepts(n_instruments=N_INSTRUMENTS, seed=MARKET_SEED)
    np.save(root / "stock2concept.npy", concepts.to_numpy(np.float32))
    np.save(root / "stock_index.npy", {code: k for k, code in enumerate(concepts.index)})
    return root


def tiny(root: Path, workflow: dict) -> list[str]:
    """`--set` overrides (Qlib's own keys) that point a workflow at the tiny market: one epoch."""
    sets = [
        f"qlib_init.provider_uri={root}",
        # Anchors: these reach the handler and PortAnaRecord through the YAML's aliases.
        "data_handler_config.start_time=2015-03-02",
        "data_handler_config.end_time=2015-12-31",
        "data_handler_config.fit_start_time=2015-03-02",
        "data_handler_config.fit_end_time=2015-08-31",
        "port_analysis_config.backtest.start_time=2015-11-02",
        "port_analysis_config.backtest.end_time=2015-12-29",
        "port_analysis_config.strategy.kwargs.topk=4",
        "port_analysis_config.strategy.kwargs.n_drop=1",
    ]
    segments = workflow["task"]["dataset"]["kwargs"]["segments"]
    sets += [f"task.dataset.kwargs.segments.{k}={v}" for k, v in SEGMENTS.items()]
    model = workflow["task"]["model"]
    if model["class"] not in ("GATs", "HIST"):  # one day per batch: no batch_size
        # qjax trains on full batches only (so does Qlib's loop); fit them to ~1400 samples
        sets.append("task.model.kwargs.batch_size=256")
    if "pretrain" in segments:  # TabNet pretrains on the train span, validates on valid
        sets += [
            f"task.dataset.kwargs.segments.pretrain={SEGMENTS['train']}",
            f"task.dataset.kwargs.segments.pretrain_validation={SEGMENTS['valid']}",
            "task.model.kwargs.pretrain_n_epochs=1",
            "task.model.kwargs.vbs=128",
        ]
    kwargs = model.get("kwargs") or {}
    sets.append(
        "task.model.kwargs.max_steps=2"
        if model["class"] == "DNNModelPytorch"
        else "task.model.kwargs.n_epochs=1"
    )
    if "model_path" in kwargs:  # the pretrained LSTM of Qlib's benchmark run is not here
        sets.append("task.model.kwargs.model_path=null")
    if "stock2concept" in kwargs:
        sets += [
            f"task.model.kwargs.stock2concept={root / 'stock2concept.npy'}",
            f"task.model.kwargs.stock_index={root / 'stock_index.npy'}",
        ]
    return sets


def qlib_reading(path: Path) -> dict:
    """The file as Qlib's qrun reads it (ruamel, YAML 1.2: `1e-3` is a float)."""
    ruamel = pytest.importorskip("ruamel.yaml")
    return ruamel.YAML(typ="safe", pure=True).load(path.read_text())


def test_every_model_of_the_zoo_has_its_qlib_yamls_vendored():
    classes = {qlib_reading(p)["task"]["model"]["class"] for p in YAMLS}
    assert classes == set(EXPECTED), sorted(classes ^ set(EXPECTED))
    handlers = {qlib_reading(p)["task"]["dataset"]["kwargs"]["handler"]["class"] for p in YAMLS}
    assert handlers == {"Alpha158", "Alpha360"}


@pytest.mark.parametrize("path", YAMLS, ids=lambda p: f"{p.parent.name}/{p.stem}")
def test_translation_keeps_what_qlib_reads(path, qlib_dir):
    qlib_cfg = qlib_reading(path)
    raw = qlib_workflow.read(path)
    cfg = qlib_workflow.load(path, tiny(qlib_dir, raw))
    task = qlib_cfg["task"]
    handler = task["dataset"]["kwargs"]["handler"]
    assert cfg["model"]["name"] == EXPECTED[task["model"]["class"]]
    assert cfg["handler"]["name"] == handler["class"]
    assert cfg["data"] == {
        "source": "qlib",
        "provider_uri": str(qlib_dir),
        "instruments": handler["kwargs"]["instruments"],
    }
    is_ts = task["dataset"]["class"] == "TSDatasetH"
    assert cfg["dataset"]["class"] == ("TSDataset" if is_ts else "Dataset")
    if is_ts:
        assert cfg["dataset"]["step_len"] == task["dataset"]["kwargs"]["step_len"]
    # Model kwargs as Qlib passes them (its reader's floats), apart from the test's overrides.
    overridden = {
        item.split("=")[0].rsplit(".", 1)[1]
        for item in tiny(qlib_dir, raw)
        if item.startswith("task.model.kwargs.")
    }
    expected_kwargs = {
        k: v for k, v in (task["model"].get("kwargs") or {}).items() if k not in overridden
    }
    got = {k: v for k, v in cfg["model"]["kwargs"].items() if k not in overridden}
    assert got == expected_kwargs
    assert all(not isinstance(v, str) or not v[0].isdigit() for v in got.values()), got
    for group in ("infer_processors", "learn_processors"):
        assert cfg["handler"][group] == handler["kwargs"][group]
    assert cfg["handler"].get("process_type", "append") == handler["kwargs"].get(
        "process_type", "append"
    )
    # PortAnaRecord's config is the port_analysis_config anchor, with the test's overrides.
    (port,) = [r["kwargs"]["config"] for r in task["record"] if r["class"] == "PortAnaRecord"]
    assert cfg["backtest"]["strategy"]["class"] == port["strategy"]["class"]
    assert cfg["backtest"]["strategy"]["kwargs"]["topk"] == 4
    assert cfg["backtest"]["backtest"]["exchange_kwargs"] == port["backtest"]["exchange_kwargs"]
    assert cfg["backtest"]["backtest"]["benchmark"] == qlib_cfg["benchmark"]
    assert cfg["backtest"]["backtest"]["start_time"] == "2015-11-02"


def test_unchanged_file_fails_only_for_the_missing_data_directory(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    path = YAMLS[0]
    with pytest.raises(ConfigError, match=r"no Qlib daily data at .*qlib_data.cn_data"):
        qlib_workflow.load(path)


def test_provider_uri_with_a_tilde_is_expanded(tmp_path, monkeypatch, qlib_dir):
    (tmp_path / "data").symlink_to(qlib_dir)
    monkeypatch.setenv("HOME", str(tmp_path))
    path = next(p for p in YAMLS if p.stem == "workflow_config_lstm_Alpha360")
    cfg = qlib_workflow.load(
        path, tiny(qlib_dir, qlib_workflow.read(path)) + ["qlib_init.provider_uri=~/data"]
    )
    assert cfg["data"]["provider_uri"] == str(tmp_path / "data")


@pytest.mark.parametrize(
    "override, message",
    [
        ("task.model.class=LGBModel", r"'LGBModel' is not supported; supported: .*LSTM"),
        ("task.model.kwargs.not_a_qlib_key=1", r"not_a_qlib_key"),
        ("experiment_name=mine", r"\['experiment_name'\] not implemented"),
        ("qlib_init.expression_cache=None", r"\['expression_cache'\] not implemented"),
        ("data_handler_config.inst_processors=[]", r"\['inst_processors'\] not implemented"),
        ("data_handler_config.label=[Ref($vwap, -2)]", r"label .* is not supported"),
        ("task.dataset.class=TSDatasetH", r"takes DatasetH but task.dataset is TSDatasetH; use"),
        (
            "task.model.module_path=null;task.dataset.class=TSDatasetH",
            r"SFM takes DatasetH but task.dataset is TSDatasetH",
        ),
        ("task.dataset.kwargs.fillna_type=ffill", r"\['fillna_type'\] not implemented"),
        ("qlib_init.region=us", r"region 'us' is not supported"),
        ("port_analysis_config.backtest.verbose=true", r"unsupported key.*verbose"),
    ],
)
def test_what_qjax_does_not_implement_is_an_error_naming_it(override, message, qlib_dir):
    path = next(p for p in YAMLS if p.stem == "workflow_config_lstm_Alpha360")
    if "SFM" in message:  # a flat-only model on windows
        path = next(p for p in YAMLS if p.stem == "workflow_config_sfm_Alpha360")
    raw = qlib_workflow.read(path, tiny(qlib_dir, qlib_workflow.read(path)))
    from qjax.run_config import apply_override

    for item in override.split(";"):
        apply_override(raw, item)
    with pytest.raises(ConfigError, match=message):
        qlib_workflow.translate(raw)


def test_sigana_long_short_becomes_the_signal_analysis_section(qlib_dir):
    path = next(p for p in YAMLS if p.stem == "workflow_config_lstm_Alpha360")
    raw = qlib_workflow.read(path, tiny(qlib_dir, qlib_workflow.read(path)))
    record = raw["task"]["record"][1]
    assert record["class"] == "SigAnaRecord" and "signal_analysis" not in qlib_workflow.translate(
        raw
    )
    record["kwargs"].update(ana_long_short=True, ann_scaler=250)  # a list index: edit directly
    assert qlib_workflow.translate(raw)["signal_analysis"] == {
        "ana_long_short": True,
        "ann_scaler": 250,
    }


# One epoch end to end, through `qjax run`: one file of every model class always (both
# handlers and both dataset classes among them), each the quicker of its class's files; the
# other files of the zoo under the `zoo_files` marker, which the default run deselects (the
# translation test above reads every file). All of them: -m "zoo_files or not zoo_files".
TRAINED = [
    "ALSTM/workflow_config_alstm_Alpha360",
    "GATs/workflow_config_gats_Alpha158",
    "GRU/workflow_config_gru_Alpha158",
    "GeneralPtNN/workflow_config_gru",
    "HIST/workflow_config_hist_Alpha360",
    "KRNN/workflow_config_krnn_Alpha360",
    "LSTM/workflow_config_lstm_Alpha158",
    "Localformer/workflow_config_localformer_Alpha360",
    "MLP/workflow_config_mlp_Alpha158",
    "SFM/workflow_config_sfm_Alpha360",
    "TCN/workflow_config_tcn_Alpha360",
    "TabNet/workflow_config_TabNet_Alpha360",
    "Transformer/workflow_config_transformer_Alpha360",
]
ALL_NAMES = [f"{p.parent.name}/{p.stem}" for p in YAMLS]


def test_every_model_class_trains_by_default():
    classes = {
        qlib_reading(p)["task"]["model"]["class"]
        for p in YAMLS
        if p.parent.name + "/" + p.stem in TRAINED
    }
    assert classes == set(EXPECTED), sorted(set(EXPECTED) - classes)


@pytest.mark.parametrize(
    "name",
    TRAINED
    + [
        pytest.param(name, marks=pytest.mark.zoo_files) for name in ALL_NAMES if name not in TRAINED
    ],
)
def test_qjax_run_trains_a_qlib_workflow_for_one_epoch(name, qlib_dir, tmp_path, capsys):
    path = Path(__file__).parent / "qlib_yamls" / f"{name}.yaml"
    sets = tiny(qlib_dir, qlib_workflow.read(path))
    out = tmp_path / "run"
    argv = ["run", str(path), "--out", str(out), "--quiet", "--compilation-cache", "off"]
    for item in sets:
        argv += ["--set", item]
    assert cli.main(argv) == 0, capsys.readouterr().err
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["epochs_run"] == 1
    assert list(metrics["seven_columns"])[-1] == "Max Drawdown"
    assert all(np.isfinite(v) for v in metrics["seven_columns"].values()), metrics
    pred = pd.read_parquet(out / "predictions.parquet")
    assert pred.index.names == ["datetime", "instrument"]
    days = pred.index.get_level_values("datetime")
    assert days.min() >= pd.Timestamp("2015-11-02") and days.max() <= pd.Timestamp("2015-12-29")
    report = pd.read_csv(out / "backtest" / "report.csv", index_col=0, parse_dates=True)
    assert report.index.min() >= pd.Timestamp("2015-11-02") and len(report) > 20


def test_qjax_train_recognises_a_qlib_workflow_and_stops_before_work(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("HOME", str(tmp_path))  # no ~/.qlib data here
    path = next(p for p in YAMLS if p.stem == "workflow_config_lstm_Alpha360")
    assert cli.main(["train", str(path), "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err
    assert "qlib_init.provider_uri" in err and "unknown config section" not in err
    assert not (tmp_path / "run").exists()
