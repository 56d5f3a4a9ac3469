"""Speed levers of the daily-batch models (GATs, HIST) on XLA:CPU, against Qlib's torch loop.

Per model, on ``train_vs_torch.py``'s data (days of 280-300 stocks) and Qlib settings, timed in
turns with the order rotating every repeat (rates are medians; wall and process CPU seconds):

- **train**: one epoch of ``fit`` with each day on one CPU device (**one**), split over every
  CPU device with the recurrent encoder partitioned by GSPMD (**two_gspmd**: the kernel
  gradient is all-reduced at every step of the backward scan) or mapped per device with
  ``shard_map`` (**two**: ``qjax.row_split``, one all-reduce per step), and **default** (``fit``
  with no device argument), against Qlib's torch loop;
- **infer**: ``predict`` in the same layouts, the split ones with each day's rows split over
  the devices as ``predict`` did before (**two_gspmd**, **two**), and with whole days spread
  over the devices, one day per device per step (**days**, ``predict``'s default since);
- **narrow days** (inference): days cut to 30 and 100 stocks, which the row split (>= 64 stocks
  a device) kept on one device, there vs ``predict``'s default (days spread over every device);
- **several days per program step** (inference): the recurrent encoder alone over 4 days of
  290 stocks, one day per scan step vs the 4 days at once (``vmap``), one device;
- **padding**: the share of padded rows when every day is padded to the widest, the most that
  padding days to width buckets could save.

The machine may be shared: the ratios within one run are what to read, and the load average is
recorded.

    python benchmarks/daily_levers.py --models gats,hist --samples 4800 --repeats 5 \\
        --out benchmarks/results
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import datetime
import logging
import sys
import warnings
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import train_vs_torch as tvt  # noqa: E402
from _common import command_line, load_average, machine, median, publish, rotate  # noqa: E402

import qjax.models  # noqa: E402
from qjax import row_split  # noqa: E402
from qjax.models import layers  # noqa: E402
from qjax.train import engine, fit, predict  # noqa: E402

LAYOUTS = ("one", "two_gspmd", "two", "default")
INFER_LAYOUTS = (*LAYOUTS[:3], "days", "default")
NARROW_DAYS = (30, 100)  # stocks a day: too few for the row split on 2 devices


@contextlib.contextmanager
def days_split_by_rows():
    """``predict`` splits each day's rows over the devices, as before it spread whole days."""
    chosen = engine._days_spread
    engine._days_spread = lambda daily, parallel: False
    try:
        yield
    finally:
        engine._days_spread = chosen


def gspmd_encoder(cls):
    """``cls`` with its encoder traced outside ``qjax.row_split`` (left to GSPMD), as before."""

    class Partitioned(cls):
        def encode_stocks(self, x, mask, train):
            with row_split.rows_split_over(None):
                return super().encode_stocks(x, mask, train)

    Partitioned.__name__ = Partitioned.__qualname__ = f"{cls.__name__}GSPMD"
    return Partitioned


def run_model(name: str, n_samples: int, repeats: int, device) -> dict:
    case = tvt.CASES[name]
    module = qjax.models.get(name)(**case.qjax_kwargs)
    old = gspmd_encoder(type(module))(**case.qjax_kwargs)
    n = max(n_samples, 2 * tvt.DAY_SIZES[1])
    data = tvt.make_data(case, n, seed=0)
    samples = tvt.qjax_samples(case, data)
    config = tvt.train_config(case, data.n)
    runner = tvt.TorchRunner(case, data, device)
    one, every = jax.devices()[:1], jax.devices()
    layouts = {
        "one": (module, one),
        "two_gspmd": (old, every),
        "two": (module, every),
        "default": (module, None),
    }

    def train(layout):
        net, devices = layouts[layout]

        def run():
            result = fit(net, samples, None, config, devices=devices, verbose=False)
            jax.block_until_ready(result.variables)
            return result

        return run

    fitted = {layout: train(layout)() for layout in layouts}  # compiles
    runner.train_epoch(max_steps=1)  # torch warm-up
    train_s = rotate({**{k: train(k) for k in layouts}, "torch": runner.train_epoch}, repeats)

    variables = fitted["one"].replica(0)

    def infer(layout):
        net, devices = layouts["two" if layout == "days" else layout]
        by_rows = layout in ("two_gspmd", "two")

        def run():
            with days_split_by_rows() if by_rows else contextlib.nullcontext():
                return predict(net, variables, samples, daily=True, devices=devices)

        return run

    preds = {layout: infer(layout)() for layout in INFER_LAYOUTS}
    runner.predict()
    infer_s = rotate({**{k: infer(k) for k in INFER_LAYOUTS}, "torch": runner.predict}, repeats)

    def param_gap(layout):
        pairs = zip(
            jax.tree.leaves(fitted["one"].variables), jax.tree.leaves(fitted[layout].variables)
        )
        return max(float(np.max(np.abs(np.asarray(a) - np.asarray(b)))) for a, b in pairs)

    width = int(data.day_counts.max())
    return {
        "narrow_days": {
            stocks: narrow_days(module, variables, case, data, stocks, repeats)
            for stocks in NARROW_DAYS
        },
        "samples": data.n,
        "days": len(data.day_counts),
        "dropout": case.qjax_kwargs.get("dropout", 0.0),
        "default_devices": fitted["default"].n_devices,
        "train_seconds": train_s,
        "infer_seconds": infer_s,
        "train_rate": {k: data.n / median(v["wall"]) for k, v in train_s.items()},
        "infer_rate": {k: data.n / median(v["wall"]) for k, v in infer_s.items()},
        "param_gap_vs_one": {k: param_gap(k) for k in layouts},
        "pred_gap_vs_one": {k: float(np.max(np.abs(p - preds["one"]))) for k, p in preds.items()},
        "padding": {
            "widest_day": width,
            "mean_day": float(data.day_counts.mean()),
            "padded_share": 1.0 - data.n / (len(data.day_counts) * width),
        },
    }


def narrow_days(module, variables, case, data, stocks: int, repeats: int) -> dict:
    """``predict`` on the first ``stocks`` stocks of every day: on one device (what the row
    split rule, >= 64 stocks a device, kept such days on) vs ``predict``'s default (whole days
    spread over every device): wall and CPU seconds per call, and the predictions' gap."""
    keep = data.stock < stocks
    narrow = dataclasses.replace(data, x=data.x[keep], y=data.y[keep], index=data.index[keep])
    samples = tvt.qjax_samples(case, dataclasses.replace(narrow, stock=data.stock[keep]))
    runs = {
        "one": lambda: predict(module, variables, samples, daily=True, devices=jax.devices()[:1]),
        "default": lambda: predict(module, variables, samples, daily=True),
    }
    preds = {k: run() for k, run in runs.items()}
    return {
        "samples": samples.size,
        "seconds": rotate(runs, repeats),
        "gap": float(np.max(np.abs(preds["one"] - preds["default"]))),
    }


def chunked_encoder(repeats: int, days: int = 4, stocks: int = 290) -> dict:
    """The 2-layer LSTM encoder (hidden 64, 60 steps of 6 features) over ``days`` days, one day
    per scan step vs all at once, on one device: wall and CPU seconds per call."""
    rnn = layers.RNN(64, 2, cell="lstm")
    x = jax.random.normal(jax.random.PRNGKey(0), (days, stocks, 60, 6))
    params = rnn.init(jax.random.PRNGKey(1), x[0, :2])
    device = jax.devices()[0]
    x, params = jax.device_put((x, params), device)

    @jax.jit
    def per_day(params, x):
        return jax.lax.scan(lambda c, day: (c, rnn.apply(params, day)[:, -1]), None, x)[1]

    @jax.jit
    def together(params, x):
        return jax.vmap(lambda day: rnn.apply(params, day)[:, -1])(x)

    gap = float(jnp.max(jnp.abs(per_day(params, x) - together(params, x))))
    runs = {
        "one_day_per_step": lambda: jax.block_until_ready(per_day(params, x)),
        f"{days}_days_per_step": lambda: jax.block_until_ready(together(params, x)),
    }
    for run in runs.values():
        run()
    return {"days": days, "stocks": stocks, "seconds": rotate(runs, repeats), "gap": gap}


def _rate(res: dict, kind: str, layout: str) -> str:
    return f"{res[f'{kind}_rate'][layout]:,.0f}"


def report(record: dict) -> list[str]:
    lines = [
        "# Daily-batch models (GATs, HIST): speed levers on XLA:CPU",
        "",
        f"Command: `{record['command']}`",
        "",
        f"Run {record['started']}; load average before {record['load_before']}, after "
        f"{record['load_after']} on {record['machine'].get('logical_cores', '?')} logical cores. "
        "**The machine was shared with other jobs**: compare the ratios within a row (the "
        "variants ran in turns), not the absolute rates with other reports.",
        "",
        "Samples/s (wall-clock medians); speed-up = qjax / torch. one: each day on one CPU "
        "device; two_gspmd: each day's rows split over both, encoder partitioned by GSPMD; two: "
        "rows split, encoder per device under `shard_map` (`qjax.row_split`); days (inference "
        "only): whole days spread over the devices, one day per device per step; default: what "
        "`fit`/`predict` choose.",
        "",
        "| model | kind | one | two_gspmd | two | days | default | torch | two / one "
        "| days / two | default / torch |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name, res in record["models"].items():
        for kind in ("train", "infer"):
            rates = res[f"{kind}_rate"]
            days = rates.get("days")
            lines.append(
                f"| {name} | {kind} | "
                + " | ".join(
                    _rate(res, kind, k) if k in rates else "–"
                    for k in (*INFER_LAYOUTS[:4], "default", "torch")
                )
                + f" | {rates['two'] / rates['one']:.2f}x"
                + (f" | {days / rates['two']:.2f}x" if days else " | –")
                + f" | {rates['default'] / rates['torch']:.2f}x |"
            )
    lines += [
        "",
        "Process CPU seconds (medians; both cores' work summed): a split that only adds "
        "cross-device work shows up here even when the load hides it in the wall time.",
        "",
        "| model | kind | one | two_gspmd | two | days | default | torch |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for name, res in record["models"].items():
        for kind in ("train", "infer"):
            secs = res[f"{kind}_seconds"]
            lines.append(
                f"| {name} | {kind} | "
                + " | ".join(
                    f"{median(secs[k]['cpu']):.2f}" if k in secs else "–"
                    for k in (*INFER_LAYOUTS[:4], "default", "torch")
                )
                + " |"
            )
    lines += [
        "",
        "Agreement with `one` after the epoch (float32; GATs trains with dropout 0.7, "
        "and a split run draws its dropout masks per device, so its parameters differ "
        "by more than summation order):",
        "",
    ]
    for name, res in record["models"].items():
        gaps = ", ".join(f"{k} {v:.1e}" for k, v in res["param_gap_vs_one"].items())
        preds = ", ".join(f"{k} {v:.1e}" for k, v in res["pred_gap_vs_one"].items())
        pad = res["padding"]
        lines.append(
            f"- **{name}** (dropout {res['dropout']}): max |parameter difference| {gaps}; "
            f"predictions of one set of variables {preds}. Padding: widest day "
            f"{pad['widest_day']}, mean {pad['mean_day']:.1f}, so "
            f"{100 * pad['padded_share']:.1f}% of the rows are padding (the most width "
            "buckets could save)."
        )
    lines += [
        "",
        "Narrow days (inference): `predict` on the first N stocks of every day, on one device "
        "(where the row split, >= 64 stocks a device, kept such days) vs its default (whole "
        "days spread over every device). Wall / CPU seconds per call, medians:",
        "",
        "| model | stocks a day | samples | one | default | one / default (wall) | gap |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for name, res in record["models"].items():
        for stocks, narrow in res.get("narrow_days", {}).items():
            one, default = (
                tuple(median(v) for v in narrow["seconds"][k].values()) for k in ("one", "default")
            )
            lines.append(
                f"| {name} | {stocks} | {narrow['samples']:,} | {one[0]:.3f} / {one[1]:.3f} | "
                f"{default[0]:.3f} / {default[1]:.3f} | {one[0] / default[0]:.2f}x | "
                f"{narrow['gap']:.1e} |"
            )
    chunk = record.get("chunked_encoder")
    if chunk:
        secs = chunk["seconds"]
        one_w, one_c = (median(v) for v in secs["one_day_per_step"].values())
        many = f"{chunk['days']}_days_per_step"
        many_w, many_c = (median(v) for v in secs[many].values())
        lines += [
            "",
            f"Several days per inference step: the LSTM encoder over {chunk['days']} days of "
            f"{chunk['stocks']} stocks, one device: one day per scan step {1e3 * one_w:.1f} ms "
            f"wall / {1e3 * one_c:.1f} ms CPU, all {chunk['days']} at once {1e3 * many_w:.1f} ms"
            f" / {1e3 * many_c:.1f} ms ({one_c / many_c:.2f}x by CPU time; outputs equal to "
            f"{chunk['gap']:.0e}).",
        ]
    return lines


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", default="gats,hist")
    parser.add_argument("--samples", type=int, default=4800)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--out", default=None, help="folder for daily_levers[_TAG].{md,json}")
    parser.add_argument("--tag", default="", help="suffix of the report's file names")
    return parser.parse_args(argv)


def main(argv=None) -> None:
    args = parse_args(argv)
    logging.getLogger("qlib").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore")
    import torch

    torch.set_num_threads(tvt.usable_cores())
    torch.get_device = lambda tensor: "cpu"  # Qlib's HIST asks its input for a CUDA device
    record = {
        "command": command_line(),
        "started": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "load_before": load_average(),
        "machine": machine(torch),
        "models": {},
    }
    for name in args.models.split(","):
        record["models"][name] = run_model(name, args.samples, args.repeats, torch.device("cpu"))
    record["chunked_encoder"] = chunked_encoder(args.repeats)
    record["load_after"] = load_average()
    stem = f"daily_levers_{args.tag}" if args.tag else "daily_levers"
    publish(report(record), args.out, stem, record)


if __name__ == "__main__":
    main()
