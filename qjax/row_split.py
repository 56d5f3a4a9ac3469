"""Per-row model parts run per device when the engine splits a batch's rows over devices.

A recurrent encoder reads each row (a stock's sequence) on its own; a cross-sectional model
(GATs, HIST) then relates the day's stocks. GSPMD partitions such an encoder by rows, but in the
backward scan it all-reduces the recurrent kernel's gradient at every time step (120
cross-device reductions per step for a 2-layer, 60-step LSTM), which made a split batch slower
than one device. Under ``shard_map`` each device accumulates its own gradient through the scan
and the parameters' gradients are summed once, at the boundary (``qjax.models.layers.RNN``).

The engine traces its programs inside :func:`rows_split_over` with the mesh that splits the
batch (``qjax.train.parallel``); :func:`map_rows` then runs ``fn`` on each device's share of the
rows. Outside that context, or when the rows do not divide evenly, ``fn`` runs on all rows.
"""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Callable, Iterator
from typing import Any

import jax
from jax.sharding import Mesh, NamedSharding, PartitionSpec

AXIS = "data"  # the mesh axis the batch rows are split along (qjax.train.parallel.DATA_AXIS)

_MESH: contextvars.ContextVar[Mesh | None] = contextvars.ContextVar("qjax_row_mesh", default=None)


@contextlib.contextmanager
def rows_split_over(mesh: Mesh | None) -> Iterator[None]:
    """Trace model code with batch rows split over ``mesh``'s ``"data"`` axis (None: not)."""
    split = mesh is not None and AXIS in mesh.axis_names and mesh.shape[AXIS] > 1
    token = _MESH.set(mesh if split else None)
    try:
        yield
    finally:
        _MESH.reset(token)


def current_mesh() -> Mesh | None:
    """The mesh the rows are split over while tracing, or None."""
    return _MESH.get()


def map_rows(
    fn: Callable[[Any, jax.Array, jax.Array | None], jax.Array],
    shared: Any,
    rows: jax.Array,
    key: jax.Array | None = None,
) -> jax.Array:
    """``fn(shared, rows, key)`` -> ``[rows, ...]``, each device on its share of the rows.

    ``shared`` (e.g. parameters) is the same on every device and its gradient is summed over
    them; ``rows`` and the result are split along their leading axis (a cross-row part that
    follows takes the result :func:`whole`). ``key``: each device folds in its index, so random
    draws (dropout) differ from the unsplit run's, with the same law.
    """
    mesh = _MESH.get()
    # JAX < 0.6 has no jax.shard_map with typed replication: XLA's partitioner splits it there.
    if mesh is None or rows.shape[0] % mesh.shape[AXIS] or not hasattr(jax, "shard_map"):
        return fn(shared, rows, key)

    def local(shared, rows, key):
        # Mark the shared values per-device here, once: a replicated value meeting per-device
        # rows inside a scan would otherwise be marked (and its gradient summed) every step.
        shared = _per_device(shared)
        if key is not None:
            key = jax.random.fold_in(key, jax.lax.axis_index(AXIS))
        return fn(shared, rows, key)

    return jax.shard_map(
        local,
        mesh=mesh,
        in_specs=(PartitionSpec(), PartitionSpec(AXIS), PartitionSpec()),
        out_specs=PartitionSpec(AXIS),
    )(shared, rows, key)


def whole(x: Any) -> Any:
    """``x`` gathered onto every device while rows are split (else as is): the cross-row part
    of a model then runs on each device without exchanging partial results step by step."""
    mesh = _MESH.get()
    if mesh is None:
        return x
    return jax.lax.with_sharding_constraint(x, NamedSharding(mesh, PartitionSpec()))


def _per_device(tree: Any) -> Any:
    """``tree`` typed as varying over the devices (``lax.pcast``/``pvary``; older JAX: as is)."""
    if hasattr(jax.lax, "pcast"):
        return jax.lax.pcast(tree, AXIS, to="varying")
    if hasattr(jax.lax, "pvary"):  # pragma: no cover - JAX 0.6-0.7
        return jax.lax.pvary(tree, AXIS)
    return tree  # pragma: no cover
