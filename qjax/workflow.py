"""A training run from a config: market -> features -> handler -> dataset -> model -> report.

This is what ``qjax train CONFIG.yaml`` executes. The run directory receives::

    config.yaml          the resolved configuration (overrides applied)
    checkpoints/         Orbax checkpoints (latest train state, best parameters)
    predictions.parquet  test-segment scores indexed (datetime, instrument)
    metrics.json         IC, ICIR, Rank IC, Rank ICIR on the test segment, training summary
    backtest/            with a ``backtest:`` section: Qlib's report, positions, risk analysis
    report.png           learning curves and the cumulative daily IC of the test segment

A run that was interrupted resumes from its last checkpoint when started again with the same
configuration and output directory.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import pandas as pd

from qjax import config as config_lib
from qjax.data.dataset import Dataset, TSDataset
from qjax.data.handler import DataHandler
from qjax.estimators import estimator
from qjax.train.metrics import ic_series, signal_metrics


def load_market(data_cfg: Mapping[str, Any]) -> pd.DataFrame:
    """The OHLCV panel named by a config's ``data`` section (not used for Qlib directories)."""
    source = data_cfg.get("source", "generated")
    if source == "generated":
        from qjax.data.market import generate_market

        kwargs = {k: data_cfg[k] for k in ("n_instruments", "n_days", "start", "seed") if k in data_cfg}
        return generate_market(**kwargs)
    from qjax.data.sources import load_ohlcv

    return load_ohlcv(data_cfg["path"], column_map=data_cfg.get("column_map"),
                      **{k: data_cfg[k] for k in ("date_col", "instrument_col") if k in data_cfg})


def build_dataset(cfg: Mapping[str, Any]) -> Dataset:
    """Features, processors and segments as the config says (Qlib's ``DatasetH``/``TSDatasetH``)."""
    from qjax.data import features

    data_cfg, handler_cfg, dataset_cfg = cfg["data"], cfg["handler"], cfg["dataset"]
    segments = dataset_cfg["segments"]
    start = handler_cfg.get("start_time") or min(s for s, _ in segments.values())
    end = handler_cfg.get("end_time") or max(e for _, e in segments.values())
    if data_cfg.get("source", "generated") == "qlib":
        frame = features.load_handler(
            handler_cfg["name"],
            data_cfg["provider_uri"],
            instruments=data_cfg.get("instruments", "csi300"),
            start_time=start,
            end_time=end,
        )
    else:
        frame = features.handler_frame(handler_cfg["name"], load_market(data_cfg), start, end)
    handler = DataHandler(
        frame,
        infer_processors=handler_cfg.get("infer_processors", ()),
        learn_processors=handler_cfg.get("learn_processors", ()),
        process_type=handler_cfg.get("process_type", "append"),
        fit_start_time=handler_cfg.get("fit_start_time"),
        fit_end_time=handler_cfg.get("fit_end_time"),
    )
    if dataset_cfg.get("class", "Dataset") == "TSDataset":
        return TSDataset(handler, segments, step_len=dataset_cfg.get("step_len", 30))
    return Dataset(handler, segments)


def train(cfg: Mapping[str, Any], out_dir: str | Path, *, verbose: bool = True) -> dict:
    """Run a validated config into ``out_dir`` and return the metrics written to metrics.json."""
    out = Path(out_dir)
    checkpoint_dir = out / "checkpoints"
    resume = _prepare_out_dir(out, cfg)
    config_lib.dump(cfg, out / "config.yaml")

    t0 = time.perf_counter()
    dataset = build_dataset(cfg)
    t_data = time.perf_counter() - t0
    model = estimator(cfg["model"]["name"], **_model_kwargs(cfg))
    evals: dict = {}
    seeds = cfg["train"].get("seeds")
    t0 = time.perf_counter()
    model.fit(dataset, evals_result=evals, checkpoint_dir=str(checkpoint_dir.resolve()),
              resume=resume, seeds=seeds, verbose=verbose)
    t_fit = time.perf_counter() - t0

    scores = model.predict(dataset, "test")
    label = dataset.label("test")
    per_seed = scores.to_frame() if isinstance(scores, pd.Series) else scores
    test_metrics = {col: signal_metrics(per_seed[col], label) for col in per_seed.columns}
    summary = _summarise(test_metrics)
    metrics = {
        "model": cfg["model"]["name"],
        "test": summary,
        "test_per_seed": test_metrics if len(test_metrics) > 1 else None,
        "best_epoch": model.result.best_epoch.tolist(),
        "best_valid_score": model.result.best_score.tolist(),
        "epochs_run": int(len(model.result.history.get("lr", []))),
        "seconds": {"data": round(t_data, 2), "fit": round(t_fit, 2)},
        "samples": {"test": int(len(per_seed))},
    }
    if cfg.get("backtest"):  # PortAnaRecord: TopK-dropout backtest of the (first seed's) scores
        from qjax.backtest.record import record_backtest

        metrics.update(record_backtest(cfg["backtest"], per_seed.iloc[:, 0], cfg["data"], out, summary))
    per_seed.to_parquet(out / "predictions.parquet")
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2))
    write_report(out / "report.png", evals, per_seed.iloc[:, 0], label, cfg["model"]["name"], summary)
    return metrics


def _model_kwargs(cfg: Mapping[str, Any]) -> dict:
    """The model's keyword arguments with config shorthands resolved to data."""
    kwargs = dict(cfg["model"]["kwargs"])
    if kwargs.get("stock2concept") == "generated":
        data_cfg = cfg["data"]
        if data_cfg.get("source", "generated") != "generated":
            raise config_lib.ConfigError(
                "stock2concept: generated needs data.source generated; for Qlib data pass the "
                "paths of qlib_csi300_stock2concept.npy and stock_index"
            )
        from qjax.data.market import generate_concepts

        kwargs["stock2concept"] = generate_concepts(
            **{k: data_cfg[k] for k in ("n_instruments", "seed") if k in data_cfg}
        )
    return kwargs


def _summarise(per_seed: dict[str, dict[str, float]]) -> dict[str, Any]:
    """Mean (and std over seeds, Qlib's benchmark convention) of each metric."""
    frame = pd.DataFrame(per_seed).T
    out = {name: float(frame[name].mean()) for name in frame.columns}
    if len(frame) > 1:
        out.update({f"{name} std": float(frame[name].std()) for name in frame.columns})
    return out


def _prepare_out_dir(out: Path, cfg: Mapping[str, Any]) -> bool:
    """Create ``out``; return True when it holds an interrupted run of this same config."""
    saved = out / "config.yaml"
    if not saved.exists():
        out.mkdir(parents=True, exist_ok=True)
        return False
    previous = config_lib.validate(config_lib.parse_yaml(saved.read_text()))
    if previous != config_lib.validate(cfg):
        raise config_lib.ConfigError(
            f"{out} holds a run of a different configuration; choose another --out directory "
            "or pass --overwrite to discard it"
        )
    return (out / "checkpoints").exists()


def write_report(path: Path, evals: Mapping[str, Any], pred: pd.Series, label: pd.Series,
                 title: str, summary: Mapping[str, float]) -> None:
    """Learning curves and the cumulative daily IC of the test predictions, as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    ic, rank_ic = ic_series(pred, label)
    fig, (ax_curve, ax_ic) = plt.subplots(1, 2, figsize=(12, 4.2))
    for name in ("train", "valid"):
        values = np.asarray(evals.get(name, []), dtype=float)
        if values.size:
            values = values if values.ndim == 1 else values[:, 0]
            ax_curve.plot(np.arange(1, len(values) + 1), values, label=name)
    ax_curve.set(title=f"{title}: score per epoch (higher is better)", xlabel="epoch", ylabel="score")
    ax_curve.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
    ax_curve.legend()
    ax_curve.grid(alpha=0.3)
    ax_ic.plot(ic.index, ic.fillna(0).cumsum(), label=f"IC (mean {summary['IC']:.4f})")
    ax_ic.plot(rank_ic.index, rank_ic.fillna(0).cumsum(), label=f"Rank IC (mean {summary['Rank IC']:.4f})")
    ax_ic.set(title="test segment: cumulative daily IC", xlabel="date")
    ax_ic.legend()
    ax_ic.grid(alpha=0.3)
    fig.autofmt_xdate()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def format_table(metrics: Mapping[str, Any]) -> str:
    """The short table ``qjax train`` prints."""
    test = metrics["test"]
    rows = [("model", metrics["model"])]
    for name in ("IC", "ICIR", "Rank IC", "Rank ICIR"):
        value = f"{test[name]:.4f}"
        if f"{name} std" in test:
            value += f" ± {test[f'{name} std']:.4f}"
        rows.append((f"test {name}", value))
    rows += [
        ("best epoch", ", ".join(str(e + 1) for e in metrics["best_epoch"])),
        ("epochs run", str(metrics["epochs_run"])),
        ("fit seconds", f"{metrics['seconds']['fit']:.1f}"),
        ("test samples", str(metrics["samples"]["test"])),
    ]
    width = max(len(k) for k, _ in rows)
    line = "-" * (width + 3 + max(len(str(v)) for _, v in rows))
    return "\n".join([line] + [f"{k:<{width}} | {v}" for k, v in rows] + [line])
