"""Compact feature storage on real data: Alpha158 on CSI300 with float32, bfloat16 and float16.

The same handler (built once from a Qlib data directory) feeds a ``Dataset`` per storage dtype,
and Qlib's MLP (``DNNModelPytorch``, the keyword arguments of ``configs/mlp_alpha158.yaml``,
fewer steps) is fitted on each with the same seeds, all seeds of a dtype in one fit. Reported
per dtype: the test segment's IC, ICIR, Rank IC and Rank ICIR per seed, the bytes of the stored
train features, and how far the test predictions are from the float32 run of the same seed
(max |difference|, Pearson correlation). Fits are deterministic on XLA:CPU, so the difference
from float32 is the dtype's effect alone; the seed-to-seed spread beside it is the noise.

Two processor setups:

* ``robust`` (trained): the Alpha158 handler's default processors, which most of Qlib's
  Alpha158 benchmarks use (RobustZScoreNorm with clip_outlier + Fillna; DropnaLabel +
  CSRankNorm on the label);
* ``raw`` (storage only, not trained): Qlib's MLP Alpha158 benchmark processors
  (``process_type: independent``: raw features with CSZFillna; DropnaLabel, CSZScoreNorm on
  the label), as ``configs/mlp_alpha158.yaml``. On this data its volume ratios (VMA*, VSTD*)
  reach ~4e20 on zero-volume days and the MLP's predictions come out constant whatever the
  dtype, so only the stored bytes and float16's refusal are reported (``--train-raw`` fits it).

A dtype that cannot hold the features (float16 beyond 65504) is reported with qjax's error.

    python benchmarks/compact_storage.py --out benchmarks/results
    python benchmarks/compact_storage.py --data /path/to/cn_csi300 --seeds 0 1 --max-steps 2000

Without the data directory the script says so and exits 0.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

from _common import args_record, command_line, load_average, machine, publish

REPO = Path(__file__).resolve().parents[1]
DTYPES = ("float32", "bfloat16", "float16")
METRICS = ("IC", "ICIR", "Rank IC", "Rank ICIR")
SPLIT = {
    "handler.start_time": "2016-01-01",
    "handler.end_time": "2020-12-31",
    "handler.fit_start_time": "2016-01-01",
    "handler.fit_end_time": "2017-12-31",
    "dataset.segments.train": "[2016-01-01, 2017-12-31]",
    "dataset.segments.valid": "[2018-01-01, 2018-12-31]",
    "dataset.segments.test": "[2019-01-01, 2020-12-31]",
}
ROBUST = {
    "handler.process_type": "append",
    "handler.infer_processors": "[{class: RobustZScoreNorm, kwargs: {fields_group: feature, "
    "clip_outlier: true}}, {class: Fillna, kwargs: {fields_group: feature}}]",
    "handler.learn_processors": "[{class: DropnaLabel}, {class: CSRankNorm, kwargs: "
    "{fields_group: label}}]",
}


def default_data() -> Path:
    shared = Path(os.environ.get("QJAX_SHARED_DATA", REPO.parent / "shared" / "data"))
    return shared / "cn_csi300"


def config(setup: str, data: Path) -> dict:
    from qjax import run_config

    items = {
        "data": f"{{source: qlib, provider_uri: {data}, instruments: csi300}}",
        **SPLIT,
        **(ROBUST if setup == "robust" else {}),
    }
    return run_config.load(
        REPO / "configs" / "mlp_alpha158.yaml", [f"{k}={v}" for k, v in items.items()]
    )


def fit_one(
    handler, cfg: dict, dtype: str, seeds: list[int], max_steps: int, train_model: bool = True
) -> dict:
    """Fit the MLP on features stored in ``dtype``; metrics per seed and the test scores
    (``train_model=False``: only the stored train features' size, or the dtype's refusal)."""
    import qjax
    from qjax.data.dataset import Dataset
    from qjax.errors import DataError
    from qjax.train.metrics import signal_metrics

    dataset = Dataset(handler, cfg["dataset"]["segments"], storage_dtype=dtype)
    try:
        train, _ = dataset.samples("train")
    except DataError as err:
        return {"error": str(err)}
    n_features = int(train.features.shape[1])
    stored = {
        "train_rows": int(train.size),
        "features": n_features,
        "stored_bytes": int(train.features.nbytes),
    }
    if not train_model:
        return stored
    kwargs = {**cfg["model"]["kwargs"], "max_steps": max_steps}
    kwargs["pt_model_kwargs"] = {**kwargs["pt_model_kwargs"], "input_dim": n_features}
    model = qjax.estimator("mlp", **kwargs)
    start = time.perf_counter()
    model.fit(dataset, seeds=seeds, verbose=False)
    fit_s = time.perf_counter() - start
    scores = model.predict(dataset, "test")
    scores = scores.to_frame() if hasattr(scores, "to_frame") else scores
    label = dataset.label("test")
    return {
        **stored,
        "fit_s": round(fit_s, 1),
        "compile_s": round(model.result.compile_seconds, 1),
        "best_epoch": [int(e) for e in model.result.best_epoch],
        "per_seed": {
            str(seed): signal_metrics(scores.iloc[:, k], label) for k, seed in enumerate(seeds)
        },
        "scores": scores,
    }


def against_float32(result: dict, reference: dict, seeds: list[int]) -> dict:
    """Per seed: max |score - float32 score| and their Pearson correlation over test rows."""
    import numpy as np

    out = {}
    for k, seed in enumerate(seeds):
        a = result["scores"].iloc[:, k].to_numpy(np.float64)
        b = reference["scores"].iloc[:, k].to_numpy(np.float64)
        out[str(seed)] = {
            "max_abs": float(np.max(np.abs(a - b))),
            "corr": float(np.corrcoef(a, b)[0, 1]),
            "score_std": float(np.std(b)),
        }
    return out


def report(results: dict, meta: dict, seeds: list[int]) -> list[str]:
    lines = [
        "# Compact feature storage: Alpha158 MLP on CSI300, float32 vs bfloat16 vs float16",
        "",
        f"Command: `{meta['command']}`",
        "",
        f"Run {meta['started']}; load average before {meta['load_before']}, after "
        f"{meta['load_after']}; {meta['machine']['cpu']} ({meta['machine']['logical_cores']} "
        f"logical cores, JAX {meta['machine']['jax_backend']}). The machine was shared with "
        "other jobs: fit seconds are indicative only.",
        "",
        f"Data: Qlib binary CSI300 constituents; train {SPLIT['dataset.segments.train']}, "
        f"valid {SPLIT['dataset.segments.valid']}, test {SPLIT['dataset.segments.test']}. "
        f"Model: Qlib's MLP (`configs/mlp_alpha158.yaml` keyword arguments) with max_steps "
        f"{meta['args']['max_steps']} (Qlib: 8000), seeds {seeds} trained together in one fit "
        "per dtype. Metrics: daily Pearson IC / Spearman Rank IC of the test predictions "
        "against the raw label (mean over days; ICIR = mean / std).",
        "",
        "| setup | storage | seed | IC | ICIR | Rank IC | Rank ICIR | max abs diff vs f32 | "
        "corr vs f32 | stored train MiB | fit s |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for setup, by_dtype in results.items():
        for dtype, res in by_dtype.items():
            if "error" in res:
                error = res["error"].replace("|", "\\|")  # a table cell
                lines.append(f"| {setup} | {dtype} | – | refused: {error} |" + " |" * 7)
                continue
            if "per_seed" not in res:
                mib = f"{res['stored_bytes'] / 2**20:.1f}"
                lines.append(
                    f"| {setup} | {dtype} | – | not trained |" + " |" * 5 + f" {mib} | – |"
                )
                continue
            for seed, metrics in res["per_seed"].items():
                diff = res.get("vs_float32", {}).get(seed)
                cells = [f"{metrics[m]:.4f}" for m in METRICS]
                cells += [f"{diff['max_abs']:.2e}", f"{diff['corr']:.6f}"] if diff else ["–", "–"]
                cells += [f"{res['stored_bytes'] / 2**20:.1f}", f"{res['fit_s']:.0f}"]
                lines.append(f"| {setup} | {dtype} | {seed} | " + " | ".join(cells) + " |")
    lines += [
        "",
        "Mean over seeds, and the dtype's shift from float32 next to the seed spread:",
        "",
    ]
    lines += [
        "| setup | storage | IC | Rank IC | ICIR | Rank ICIR | IC - f32 IC | "
        "IC spread over seeds (f32) |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for setup, by_dtype in results.items():
        ref = by_dtype.get("float32", {})
        ref_ic = _mean(ref, "IC") if "per_seed" in ref else None
        spread = _spread(ref, "IC") if "per_seed" in ref else None
        for dtype, res in by_dtype.items():
            if "per_seed" not in res:
                continue
            ic = _mean(res, "IC")
            shift = "–" if ref_ic is None or dtype == "float32" else f"{ic - ref_ic:+.4f}"
            lines.append(
                f"| {setup} | {dtype} | {ic:.4f} | {_mean(res, 'Rank IC'):.4f} | "
                f"{_mean(res, 'ICIR'):.3f} | {_mean(res, 'Rank ICIR'):.3f} | {shift} | "
                + ("–" if spread is None else f"{spread:.4f}")
                + " |"
            )
    return lines


def _mean(res: dict, metric: str) -> float:
    values = [m[metric] for m in res["per_seed"].values()]
    return sum(values) / len(values)


def _spread(res: dict, metric: str) -> float:
    values = [m[metric] for m in res["per_seed"].values()]
    return max(values) - min(values)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", type=Path, default=None, help="Qlib data directory (CSI300)")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    p.add_argument("--max-steps", type=int, default=2000)
    p.add_argument("--setups", nargs="+", default=["robust", "raw"], choices=["robust", "raw"])
    p.add_argument("--train-raw", action="store_true", help="fit the raw setup too")
    p.add_argument("--dtypes", nargs="+", default=list(DTYPES), choices=DTYPES)
    p.add_argument("--out", help="write compact_storage.{md,json} here")
    args = p.parse_args(argv)
    data = args.data or default_data()
    if not (data / "calendars" / "day.txt").is_file():
        print(f"skipped: no Qlib data directory at {data} (give --data)")
        return 0
    if "float32" not in args.dtypes:
        p.error("--dtypes needs float32: the other dtypes are compared with it")

    from qjax import workflow

    meta = {
        "command": command_line(),
        "args": args_record(args),
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "load_before": load_average(),
        "machine": machine(),
    }
    results: dict = {}
    for setup in args.setups:
        cfg = config(setup, data)
        start = time.perf_counter()
        handler = workflow.build_dataset(cfg).handler  # one handler: every dtype reads it
        print(f"[{setup}] handler {time.perf_counter() - start:.1f} s", file=sys.stderr)
        results[setup] = {}
        for dtype in ["float32", *(d for d in args.dtypes if d != "float32")]:
            train_model = setup != "raw" or args.train_raw
            res = fit_one(handler, cfg, dtype, args.seeds, args.max_steps, train_model)
            if dtype != "float32" and "scores" in res and "scores" in results[setup]["float32"]:
                res["vs_float32"] = against_float32(res, results[setup]["float32"], args.seeds)
            results[setup][dtype] = res
            print(f"[{setup}] {dtype}: {res.get('error') or res.get('per_seed')}", file=sys.stderr)
    meta["load_after"] = load_average()
    for by_dtype in results.values():
        for res in by_dtype.values():
            res.pop("scores", None)
    publish(
        report(results, meta, args.seeds), args.out, "compact_storage", {**meta, "results": results}
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
