"""Micro-batches inside the compiled train step: the batch's gradient accumulated over chunks.

A Transformer batch of 2048 rows holds a [2048, 60, 2048] feed-forward activation (1 GB); it
spills out of every cache, and XLA:CPU's step slows down by more than the extra loop costs.
Splitting the batch into chunks that a ``lax.scan`` walks through, and summing each chunk's
gradient, keeps a chunk's activations in cache. The result is the full batch's gradient up to
summation order, because an objective's loss is ``total / count`` with ``total`` a sum over rows
(:class:`qjax.train.losses.LossOutput`): the step takes ``sum_c grad(total_c) / sum_c count_c``,
and NaN-masked labels or padding rows drop out of ``total_c`` and ``count_c`` exactly as they do
from the whole batch.

What cannot be chunked: a model with batch-level state (BatchNorm's ``batch_stats``, TabNet's
ghost batch norm: a chunk's statistics differ from the batch's), and objectives whose total is
not a sum over rows. Dropout draws one key per chunk, so its masks are different (equally
distributed) draws from the unchunked run's.

:func:`auto_chunks` picks the chunk count from the activation footprint (see there); the
``TrainConfig.micro_batch`` setting overrides it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp

from qjax.train.losses import Batch, LossOutput

# Keep one chunk's widest activation under this many bytes (a quarter of the shared 32 MiB L3
# of the 2-core AMD EPYC we measure on; a step holds several such buffers). There it puts LSTM
# at 100 rows per chunk, GRU/ALSTM at 160, TCN at 100 and the Transformer at 32, and one epoch
# trains 1.17x / 0.98x / 1.75x / 1.53x / 2.43x as fast as with whole batches
# (benchmarks/results/levers_cpu.md, one device). On an Intel Xeon (2 MiB L2, 260 MiB L3) it
# led or tied among budgets from 2 to 128 MiB for every model but GRU, which trained 1.15x as
# fast as whole batches at 2 MiB against 1.02x here (microbatch_budget_cpu_intel_xeon.md).
CACHE_BUDGET_BYTES = 8 * 2**20
MIN_CHUNK_ROWS = 32  # below this, per-chunk loop overhead outweighs the cache gain


def split_rows(batch: Batch, n_chunks: int) -> Batch:
    """Every leaf ``[B, ...]`` -> ``[n_chunks, B / n_chunks, ...]``; chunk ``c`` holds rows
    ``c, c + n_chunks, ...``, so a batch split over devices along rows stays split (each chunk
    takes rows from every device's share)."""

    def split(leaf):
        rows = leaf.shape[0]
        return jnp.swapaxes(leaf.reshape(rows // n_chunks, n_chunks, *leaf.shape[1:]), 0, 1)

    return jax.tree.map(split, batch)


def join_rows(chunks: Any) -> Any:
    """The inverse of :func:`split_rows`: leaves ``[n_chunks, B / n_chunks, ...]`` -> ``[B, ...]``
    in the batch's row order."""

    def join(leaf):
        return jnp.swapaxes(leaf, 0, 1).reshape(-1, *leaf.shape[2:])

    return jax.tree.map(join, chunks)


def accumulated_loss_and_grad(
    objective: Callable[[Any, Batch, jax.Array], LossOutput],
    params: Any,
    batch: Batch,
    rng: jax.Array,
    n_chunks: int,
    constrain: Callable[[Batch], Batch] = lambda chunk: chunk,
    reduce: Callable[[Any], Any] = lambda sums: sums,
) -> tuple[jax.Array, Any]:
    """``(total / count, its gradient)`` of the whole batch, computed chunk by chunk.

    ``objective(params, chunk, rng) -> LossOutput`` is the objective in train mode on one
    chunk; ``constrain`` places a chunk's rows (the data-parallel split); ``reduce`` sums
    ``(gradient, total, count)`` over processes that each hold part of the batch's rows
    (:mod:`qjax.train.distributed`). One chunk uses ``rng`` itself, as the unchunked step does.
    """

    def chunk_total(p, chunk, key):
        out = objective(p, chunk, key)
        if out.batch_stats is not None:
            raise ValueError(
                "micro_batch splits each batch into chunks, but this model updates batch "
                "statistics (BatchNorm), whose values depend on the whole batch; set "
                "micro_batch=1 (off) for it"
            )
        return out.total, out.count

    def body(carry, xs):
        grads, total, count = carry
        chunk, key = xs
        (chunk_sum, chunk_count), chunk_grads = jax.value_and_grad(chunk_total, has_aux=True)(
            params, constrain(chunk), key
        )
        grads = jax.tree.map(jnp.add, grads, chunk_grads)
        return (grads, total + chunk_sum, count + chunk_count), None

    chunks = split_rows(batch, n_chunks)
    keys = jax.random.split(rng, n_chunks) if n_chunks > 1 else rng[None]
    first = jax.tree.map(lambda leaf: leaf[0], chunks)
    sums = jax.eval_shape(chunk_total, params, first, keys[0])  # the objective's dtypes
    zeros = jax.tree.map(jnp.zeros_like, params)
    start = (zeros, *(jnp.zeros((), s.dtype) for s in sums))
    (grads, total, count), _ = jax.lax.scan(body, start, (chunks, keys))
    grads, total, count = reduce((grads, total, count))
    denominator = jnp.maximum(count, 1)
    return total / denominator, jax.tree.map(lambda g: g / denominator, grads)


# -- choosing the chunk count --------------------------------------------------------------


def chunks_for(batch_rows: int, chunk_rows: int, multiple: int = 1) -> int:
    """The fewest chunks of at most ``chunk_rows`` rows that split ``batch_rows`` evenly, each
    chunk a multiple of ``multiple`` rows (the device count); the most such chunks if none fit."""
    valid = [
        n
        for n in range(1, batch_rows + 1)
        if batch_rows % n == 0 and (batch_rows // n) % multiple == 0
    ] or [1]
    fitting = [n for n in valid if batch_rows // n <= chunk_rows]
    return min(fitting) if fitting else max(valid)


def footprint(fn: Callable[..., Any], *args: Any) -> tuple[int, bool]:
    """(bytes of the widest intermediate of ``fn(*args)``, whether it runs a loop).

    Traced, not compiled (``jax.make_jaxpr``); intermediates inside a loop body count per
    iteration. Sub-programs (jit, custom derivatives, remat) are looked into.
    """
    closed = jax.make_jaxpr(fn)(*args)
    widest, loops = 0, False
    pending = [closed.jaxpr]
    while pending:
        jaxpr = pending.pop()
        for eqn in jaxpr.eqns:
            loops |= eqn.primitive.name in ("scan", "while")
            for var in eqn.outvars:
                aval = getattr(var, "aval", None)
                if hasattr(aval, "shape") and hasattr(aval, "dtype"):
                    size = int(aval.dtype.itemsize) * int(max(1, _prod(aval.shape)))
                    widest = max(widest, size)
            for param in eqn.params.values():
                for sub in param if isinstance(param, (tuple, list)) else (param,):
                    inner = getattr(sub, "jaxpr", sub)
                    if hasattr(inner, "eqns"):
                        pending.append(inner)
    return widest, loops


def auto_chunks(
    forward: Callable[[Batch], Any], batch: Batch, batch_rows: int, multiple: int = 1
) -> tuple[int, str]:
    """The chunk count the engine uses when ``micro_batch`` is auto, and why.

    Heuristic: trace the model's train-mode objective on one batch (no compilation) and find
    its widest intermediate array: the stacked per-step activations of a recurrent model, a
    Transformer's feed-forward hidden layer. If it fits :data:`CACHE_BUDGET_BYTES`, one chunk;
    otherwise the fewest chunks that keep it under the budget, of at least
    :data:`MIN_CHUNK_ROWS` rows. Recurrent models gain too: a chunk's saved activations stay in
    cache while its backward loop reads them.
    """
    widest, _ = footprint(forward, batch)
    if widest <= CACHE_BUDGET_BYTES:
        return 1, f"widest activation {widest / 2**20:.1f} MiB fits the cache budget"
    per_row = widest / batch_rows
    rows = max(MIN_CHUNK_ROWS, int(CACHE_BUDGET_BYTES // per_row))
    n = chunks_for(batch_rows, rows, multiple)
    if batch_rows // n < min(MIN_CHUNK_ROWS, batch_rows):  # e.g. a prime batch size
        return 1, f"no even split of {batch_rows} rows into chunks of >= {MIN_CHUNK_ROWS}"
    return n, f"widest activation {widest / 2**20:.1f} MiB -> {n} chunks"


def _prod(shape) -> int:
    out = 1
    for dim in shape:
        out *= int(dim)
    return out


def resolve(
    setting: int | str | None,
    batch_rows: int,
    multiple: int,
    *,
    daily: bool,
    stateful: bool,
    default_objective: bool,
    on_cpu: bool,
    forward: Callable[[Batch], Any],
    example: Callable[[], Batch],
) -> int:
    """The chunk count for ``TrainConfig.micro_batch`` (rows per chunk, "auto", "off"; None
    reads as "auto").

    Auto chunks only row batches of the default objective on models without batch statistics
    (:func:`auto_chunks`), and only on XLA:CPU: the gain is a CPU cache's, and on a GPU the
    chunk loop serialises work the device would run in parallel (LSTM trained 8x slower in
    chunks of 100 rows on an H200, ``benchmarks/results/gpu_nvidia_h200.md``). An explicit size
    is checked here, before any compilation, and applies on every platform.
    """
    if setting == "off":
        return 1
    if setting in (None, "auto"):
        if daily or stateful or not default_objective or not on_cpu:
            return 1
        return auto_chunks(forward, example(), batch_rows, multiple)[0]
    if daily:
        raise ValueError(
            f"micro_batch={setting} splits row batches, but batching='daily' trains one whole "
            "day per step (the model relates that day's stocks); leave micro_batch unset"
        )
    if stateful:
        raise ValueError(
            f"micro_batch={setting}: this model updates batch statistics (BatchNorm), which "
            "depend on the whole batch, so its batches cannot be split; leave micro_batch unset"
        )
    if setting >= batch_rows:
        return 1
    if batch_rows % setting or setting % multiple:
        raise ValueError(
            f"micro_batch={setting} must divide batch_size={batch_rows} and be a multiple of "
            f"the {multiple} device(s) each chunk is split over; e.g. micro_batch="
            f"{batch_rows // chunks_for(batch_rows, setting, multiple)}"
        )
    return batch_rows // setting
