"""Two more TabNet levers on 2 CPU cores: sparsemax's threshold search, and ghost batches per device.

TabNet is one of the models whose training stays below 1.5x torch; its epoch profile
(``results/profile_cpu_all_models.md``) shows the matrix products at a small share and the
sparsemax bisection's row sums (XLA rewrites them as ``reduce-window``) as the costliest
operation. Two levers, each compiled first and then timed in turns with the order rotating
(medians of ``--repeats``):

1. **Sparsemax threshold**, forward and backward of ``sparsemax`` over [4096, F] logits
   (N(0, s^2) rows, s in 0.05, 0.3, 1, 3, 30, as batch-normalised logits times priors are):
   - ``bisect``: 24 halvings of [-1, 0], then the exact threshold from the support (qjax's
     method until this comparison);
   - ``newton``: Newton's method on sum(max(z - tau, 0)) = 1 from tau = -1 (Michelot's
     algorithm): each step recomputes tau from the shrinking support, exact once the support
     stops changing (the most steps any row took is reported), now qjax's default;
   - ``sort``: Qlib's algorithm.
   Each against ``sort``: the largest output difference and whether the supports agree.
2. **Ghost batches per device**, one fine-tuning step of Qlib's TabNet (batch 4096, ghost
   batches of 2048, Adam at lr 0.01, Alpha360's width) with Eigen's dots (TabNet's home choice):
   - ``one device`` (the engine's choice for TabNet);
   - ``split, partitioned``: rows split over the CPU devices, left to XLA's partitioner;
   - ``split, per device``: each device runs its own ghost batch under ``shard_map`` and the
     gradients are summed once. Its input batch norm uses each device's half of the batch, so it
     is not Qlib's step (the loss difference is reported): an upper bound on what a faithful
     per-device step could gain.

    python benchmarks/tabnet_levers_cpu.py --out benchmarks/results
"""

from __future__ import annotations

import argparse
import os
import sys

import jax
import jax.numpy as jnp
import numpy as np
import optax
from _common import command_line, load_average, machine, median, publish, rotate
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from qjax.compilation import CPU_DOTS
from qjax.models.tabnet import network
from qjax.models.tabnet.network import TabNetFinetune
from qjax.models.tabnet.wrapper import DEFAULTS

ROWS = 4096
SCALES = (0.05, 0.3, 1.0, 3.0, 30.0)


# -- 1. sparsemax's threshold -----------------------------------------------------------------


def _sparsemax_and_gradient(method: str):
    def value_and_grad(x, g):
        out, vjp = jax.vjp(lambda a: network.sparsemax(a, method), x)
        return out, vjp(g)[0]

    return jax.jit(value_and_grad)


def newton_steps(x: np.ndarray) -> int:
    """The most Newton steps any row takes (a float64 count in numpy, as the method steps)."""
    z = x - x.max(axis=-1, keepdims=True)
    support, steps = z > -1.0, 0
    while True:
        tau = ((np.where(support, z, 0.0).sum(-1) - 1.0) / support.sum(-1))[:, None]
        shrunk = support & (z > tau)
        if (shrunk == support).all():
            return steps
        support, steps = shrunk, steps + 1


METHODS = ("bisect", "newton", "sort")


def logits(features: int, seed: int) -> jax.Array:
    rng = np.random.default_rng(seed)
    scale = np.repeat(SCALES, -(-ROWS // len(SCALES)))[:ROWS, None]
    return jnp.asarray(rng.standard_normal((ROWS, features)) * scale, jnp.float32)


def measure_sparsemax(features: int, repeats: int) -> dict:
    x, g = logits(features, 0), logits(features, 1)
    functions = {name: _sparsemax_and_gradient(name) for name in METHODS}
    outputs = {name: jax.block_until_ready(fn(x, g)) for name, fn in functions.items()}
    steps = newton_steps(np.asarray(x, np.float64))
    runs = {name: (lambda fn=fn: jax.block_until_ready(fn(x, g))) for name, fn in functions.items()}
    seconds = rotate(runs, repeats)
    want = outputs["sort"][0]
    return {
        "features": features,
        "newton_steps": steps,
        "seconds": seconds,
        "largest_difference_from_sort": {
            name: float(jnp.max(jnp.abs(out - want))) for name, (out, _) in outputs.items()
        },
        "supports_equal_sort": {
            name: bool(jnp.all((out > 0) == (want > 0))) for name, (out, _) in outputs.items()
        },
    }


# -- 2. ghost batches per device --------------------------------------------------------------


def _tabnet_step(features: int, per_device: bool):
    """(loss, new params, stats, optimiser state) of one Adam step; ``per_device``: the step of
    one device under ``shard_map``, gradients summed over the devices."""
    model = TabNetFinetune(inp_dim=features, vbs=DEFAULTS["vbs"])
    optimiser = optax.adam(DEFAULTS["lr"])

    def loss_fn(params, stats, x, y):
        out, updates = model.apply(
            {"params": params, "batch_stats": stats}, x, train=True, mutable=["batch_stats"]
        )
        return jnp.sum(jnp.square(out - y)) / ROWS, updates["batch_stats"]

    def step(params, stats, opt_state, x, y):
        (loss, stats), grads = jax.value_and_grad(loss_fn, has_aux=True)(params, stats, x, y)
        if per_device:
            grads, loss = jax.lax.psum((grads, loss), "data")
            stats = jax.lax.pmean(stats, "data")
        updates, opt_state = optimiser.update(grads, opt_state, params)
        return loss, optax.apply_updates(params, updates), stats, opt_state

    return model, optimiser, step


def measure_ghost_batches(features: int, repeats: int) -> dict:
    devices = jax.devices()
    mesh = Mesh(np.array(devices), ("data",))
    whole, rows = NamedSharding(mesh, P()), NamedSharding(mesh, P("data"))
    rng = np.random.default_rng(2)
    x = jnp.asarray(rng.standard_normal((ROWS, features)), jnp.float32)
    y = jnp.asarray(rng.standard_normal(ROWS), jnp.float32)
    model, optimiser, step = _tabnet_step(features, per_device=False)
    variables = model.init(jax.random.key(0), x[:8])
    state = (variables["params"], variables["batch_stats"])
    state = (*state, optimiser.init(state[0]))
    eigen = CPU_DOTS["eigen"]

    one = jax.jit(step, compiler_options=eigen)
    partitioned = jax.jit(
        step,
        in_shardings=(whole, whole, whole, rows, rows),
        out_shardings=whole,
        compiler_options=eigen,
    )
    _, _, local = _tabnet_step(features, per_device=True)
    per_device_step = jax.jit(
        jax.shard_map(
            local,
            mesh=mesh,
            in_specs=(P(), P(), P(), P("data"), P("data")),
            out_specs=P(),
            check_vma=False,  # sparsemax's threshold loop starts from replicated carries
        ),
        compiler_options=eigen,
    )
    placed = (jax.device_put(state, whole), jax.device_put(x, rows), jax.device_put(y, rows))
    args = {
        "one device": (*state, x, y),
        "split, partitioned": (*placed[0], placed[1], placed[2]),
        "split, per device": (*placed[0], placed[1], placed[2]),
    }
    functions = {
        "one device": one,
        "split, partitioned": partitioned,
        "split, per device": per_device_step,
    }
    losses = {
        name: float(jax.block_until_ready(fn(*args[name]))[0]) for name, fn in functions.items()
    }
    runs = {
        name: (lambda fn=fn, a=args[name]: jax.block_until_ready(fn(*a)))
        for name, fn in functions.items()
    }
    seconds = rotate(runs, repeats)
    return {"features": features, "devices": len(devices), "seconds": seconds, "loss": losses}


# -- report -----------------------------------------------------------------------------------


def report(record: dict) -> list[str]:
    m = record["machine"]
    lines = [
        "# TabNet on XLA:CPU: sparsemax's threshold search, and ghost batches per device",
        "",
        f"Command: `{record['command']}`",
        "",
        f"{m['cpu']}, {m['logical_cores']} logical cores, JAX devices {m['jax_devices']}; "
        f"load average before {record['load_before']}, "
        f"after {record['load_after']}. Medians of {record['repeats']} in turns.",
        "",
        f"Sparsemax forward and backward over [{ROWS}, F] (rows N(0, s^2), s in "
        f"{', '.join(map(str, SCALES))}); speed-up = bisect ms / the method's ms; newton: the most steps a row took:",
        "",
        "| F | method | ms | speed-up | largest difference from sort | same support as sort |",
        "|---:|---|---:|---:|---:|---|",
    ]
    for res in record["sparsemax"]:
        base = median(res["seconds"]["bisect"]["wall"])
        for name, clocks in res["seconds"].items():
            times = clocks["wall"]
            label = name + (f" ({res['newton_steps']} steps)" if name == "newton" else "")
            lines.append(
                f"| {res['features']} | {label} | {median(times) * 1e3:.2f} | "
                f"{base / median(times):.2f}x | {res['largest_difference_from_sort'][name]:.1e} | "
                f"{'yes' if res['supports_equal_sort'][name] else 'NO'} |"
            )
    res = record["ghost_batches"]
    base = median(res["seconds"]["one device"]["wall"])
    lines += [
        "",
        f"One TabNet fine-tuning step (batch {ROWS}, ghost batches of {DEFAULTS['vbs']}, "
        f"{res['features']} features, Eigen's dots, {res['devices']} CPU devices); "
        "speed-up = one device ms / the layout's ms:",
        "",
        "| layout | ms | speed-up | loss |",
        "|---|---:|---:|---:|",
    ]
    for name, clocks in res["seconds"].items():
        times = clocks["wall"]
        lines.append(
            f"| {name} | {median(times) * 1e3:.1f} | {base / median(times):.2f}x | "
            f"{res['loss'][name]:.6f} |"
        )
    flags = os.environ.get("XLA_FLAGS", "")
    lines += ["", f"Versions: {m['versions']}; XLA_FLAGS: `{flags}`; {m['allocators']['jax']}."]
    return lines


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--repeats", type=int, default=9)
    p.add_argument("--features", default="158,360", help="sparsemax widths")
    p.add_argument("--out", default=None, help="write tabnet_levers_cpu.{md,json} here")
    args = p.parse_args(argv)
    record = {"command": command_line(), "repeats": args.repeats, "load_before": load_average()}
    widths = [int(f) for f in args.features.split(",")]
    record["sparsemax"] = [measure_sparsemax(f, args.repeats) for f in widths]
    record["ghost_batches"] = measure_ghost_batches(360, args.repeats)
    record["load_after"] = load_average()
    record["machine"] = machine()
    lines = report(record)
    publish(lines, args.out, "tabnet_levers_cpu", record)
    return 0


if __name__ == "__main__":
    sys.exit(main())
