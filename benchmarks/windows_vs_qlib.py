"""Windows per second: qjax's jitted device window gather vs Qlib's TSDataSampler + DataLoader.

Both sides read the same ragged panel (instruments x days, a few percent of suspended days, late
listings) with ``fillna_type="ffill+bfill"`` and produce float32 [batch, step_len, features]
windows. Qlib: ``TSDataSampler`` under ``torch.utils.data.DataLoader(batch_size, shuffle=True,
num_workers=0)``, as the *_ts models train. qjax: (a) one jitted gather call per batch of random
ids, and (b) a whole epoch of batches gathered inside one compiled ``lax.scan`` (how the training
engine calls ``Samples.take``). Reports the median of repeats.

    python benchmarks/windows_vs_qlib.py [--instruments 300 --days 1000 --out benchmarks/results]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd

from qjax.data.windows import WindowSampler


def ragged_panel(n_inst: int, n_days: int, n_feat: int, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    dates = pd.bdate_range("2015-01-01", periods=n_days)
    listed = np.where(rng.random(n_inst) < 0.2, rng.integers(0, n_days // 2, n_inst), 0)
    present = (np.arange(n_days)[:, None] >= listed[None, :]) & (
        rng.random((n_days, n_inst)) > 0.03
    )
    day, inst = np.nonzero(present)
    index = pd.MultiIndex.from_arrays(
        [dates[day], pd.Index([f"SH{k:06d}" for k in range(n_inst)])[inst]],
        names=["datetime", "instrument"],
    )
    cols = pd.MultiIndex.from_tuples(
        [("feature", f"f{k}") for k in range(n_feat)] + [("label", "y")]
    )
    values = rng.standard_normal((len(index), n_feat + 1)).astype(np.float32)
    return pd.DataFrame(values, index=index, columns=cols)


def time_qlib(df, step_len: int, batch: int, n_batches: int, repeats: int) -> dict:
    import torch
    from qlib.data.dataset import TSDataSampler

    torch.set_num_threads(1)
    t0 = time.perf_counter()
    ts = TSDataSampler(df.copy(), None, None, step_len, fillna_type="ffill+bfill")
    build_s = time.perf_counter() - t0
    rates = []
    for r in range(repeats):
        torch.manual_seed(r)
        loader = torch.utils.data.DataLoader(ts, batch_size=batch, shuffle=True, num_workers=0)
        it = iter(loader)
        t0 = time.perf_counter()
        for _ in range(n_batches):
            x = next(it)
        rates.append(n_batches * batch / (time.perf_counter() - t0))
    assert tuple(x.shape) == (batch, step_len, df.shape[1])
    return {"windows_per_s": statistics.median(rates), "all": rates, "build_s": build_s}


def time_qjax(df, step_len: int, batch: int, n_batches: int, repeats: int) -> dict:
    t0 = time.perf_counter()
    sampler = WindowSampler(df, None, None, step_len, fillna_type="ffill+bfill")
    samples, _ = sampler.samples()
    jax.block_until_ready(samples)
    build_s = time.perf_counter() - t0

    gather = jax.jit(lambda s, ids: s.take(s.features, ids))

    @jax.jit
    def epoch(s, ids):  # [n_batches, batch] ids -> a checksum, all batches inside one program
        return jax.lax.scan(lambda c, i: (c + jnp.nansum(s.take(s.features, i)), None), 0.0, ids)[0]

    keys = jax.random.split(jax.random.key(0), repeats + 1)
    all_ids = [jax.random.randint(k, (n_batches, batch), 0, len(sampler)) for k in keys]
    jax.block_until_ready(gather(samples, all_ids[0][0]))  # compile
    jax.block_until_ready(epoch(samples, all_ids[0]))
    per_call, scanned = [], []
    for ids in all_ids[1:]:
        t0 = time.perf_counter()
        for b in range(n_batches):
            x = gather(samples, ids[b])
        jax.block_until_ready(x)
        per_call.append(n_batches * batch / (time.perf_counter() - t0))
        t0 = time.perf_counter()
        jax.block_until_ready(epoch(samples, ids))
        scanned.append(n_batches * batch / (time.perf_counter() - t0))
    assert x.shape == (batch, step_len, df.shape[1] - 1)
    return {
        "per_call_windows_per_s": statistics.median(per_call),
        "per_call_all": per_call,
        "scan_windows_per_s": statistics.median(scanned),
        "scan_all": scanned,
        "build_s": build_s,
    }


def machine() -> dict:
    cpu = platform.processor()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    import qlib
    import torch

    return {
        "cpu": cpu,
        "cores_visible": os.cpu_count(),
        "load_average_1_5_15": os.getloadavg(),
        "jax_backend": jax.default_backend(),
        "jax_devices": [str(d) for d in jax.devices()],
        "python": platform.python_version(),
        "jax": jax.__version__,
        "numpy": np.__version__,
        "pandas": pd.__version__,
        "torch": torch.__version__,
        "qlib": qlib.__version__,
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--instruments", type=int, default=300)
    p.add_argument("--days", type=int, default=1000)
    p.add_argument("--features", type=int, default=20)
    p.add_argument("--step-len", type=int, default=20)
    p.add_argument("--batch", type=int, default=800)
    p.add_argument("--batches", type=int, default=30, help="batches per timed repeat")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--out", type=Path, default=None, help="folder for windows_vs_qlib.{md,json}")
    a = p.parse_args()

    df = ragged_panel(a.instruments, a.days, a.features)
    qjax_res = time_qjax(df, a.step_len, a.batch, a.batches, a.repeats)
    qlib_res = time_qlib(df, a.step_len, a.batch, a.batches, a.repeats)
    result = {
        "command": "python " + " ".join(sys.argv),
        "config": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(a).items()},
        "rows": len(df),
        "machine": machine(),
        "qjax": qjax_res,
        "qlib": qlib_res,
        "ratio_per_call": qjax_res["per_call_windows_per_s"] / qlib_res["windows_per_s"],
        "ratio_scan": qjax_res["scan_windows_per_s"] / qlib_res["windows_per_s"],
    }
    print(json.dumps(result, indent=1))
    if a.out is not None:
        a.out.mkdir(parents=True, exist_ok=True)
        (a.out / "windows_vs_qlib.json").write_text(json.dumps(result, indent=1) + "\n")
        (a.out / "windows_vs_qlib.md").write_text(report(result))


def report(r: dict) -> str:
    m, c = r["machine"], r["config"]
    return f"""# Window gather: qjax vs Qlib TSDataSampler

Command: `{r["command"]}`

Panel: {c["instruments"]} instruments x {c["days"]} days ({r["rows"]} rows, ~3% suspended days,
20% late listings), {c["features"]} features, step_len {c["step_len"]}, batch {c["batch"]},
`fillna_type="ffill+bfill"`, {c["batches"]} batches per repeat, median of {c["repeats"]} repeats.

| | windows/s | vs Qlib |
|---|---:|---:|
| Qlib `TSDataSampler` + `DataLoader(shuffle=True, num_workers=0)` | {r["qlib"]["windows_per_s"]:,.0f} | 1.0x |
| qjax jitted gather, one call per batch | {r["qjax"]["per_call_windows_per_s"]:,.0f} | {r["ratio_per_call"]:.1f}x |
| qjax gather inside one `lax.scan` epoch program (+ a nansum per batch) | {r["qjax"]["scan_windows_per_s"]:,.0f} | {r["ratio_scan"]:.1f}x |

Setup time (host tables + device transfer): qjax {r["qjax"]["build_s"]:.2f} s, Qlib sampler {r["qlib"]["build_s"]:.2f} s.

Machine: {m["cpu"]}, {m["cores_visible"]} cores visible, JAX backend `{m["jax_backend"]}`
({", ".join(m["jax_devices"])}); Python {m["python"]}, jax {m["jax"]}, numpy {m["numpy"]},
pandas {m["pandas"]}, torch {m["torch"]}, qlib {m["qlib"]}.
The machine is shared with other jobs (load average {m["load_average_1_5_15"][0]:.1f} when the
run ended), so absolute rates are noisy (repeat spread is in the JSON); on this machine
repeated runs of the qjax gather varied by about 2x. Compare ratios, not absolutes.
"""


if __name__ == "__main__":
    main()
