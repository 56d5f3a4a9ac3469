"""Batch plans: which sample ids form each step, computed inside the compiled program.

A plan is a pair of arrays ``ids [steps, B]`` (int32 sample ids) and ``mask [steps, B]`` (False
on padding rows); ``lax.scan`` walks over the leading axis and gathers each batch with
``Samples.batch(ids, mask)``. Shapes are static (from the segment's size and the config), so one
epoch compiles once; a shorter final evaluation batch is padded and masked, never recompiled.

Daily batching needs each day's sample ids: :func:`day_table` builds a ``[days, width]`` table
once on the host, and it travels into the program as an argument inside :class:`Segment`.
"""

from __future__ import annotations

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np

from qjax.data.samples import Samples


@flax.struct.dataclass
class DayTable:
    """Sample ids of every trading day, padded to a common width."""

    ids: jax.Array  # [days, width] int32, padding points at sample 0
    mask: jax.Array  # [days, width] bool, False on padding


@flax.struct.dataclass
class Segment:
    """One dataset segment as the compiled program sees it."""

    samples: Samples
    days: DayTable | None  # only for daily batching
    num_days: int = flax.struct.field(pytree_node=False)  # day numbers lie in [0, num_days)
    # Several processes (qjax.train.distributed): this process holds a share of the segment's
    # samples; plans draw ids over all of them, and ``local_of`` maps each to its local row.
    local_of: jax.Array | None = None  # [all samples] int32 local row, -1 where held elsewhere
    total: int | None = flax.struct.field(pytree_node=False, default=None)  # all samples

    @property
    def size(self) -> int:
        """Samples of the whole segment (over every process): what batch plans draw from."""
        return self.samples.size if self.total is None else self.total

    def localize(self, ids: jax.Array, mask: jax.Array) -> tuple[jax.Array, jax.Array]:
        """A plan's ids as rows of ``samples``, masked where another process holds them."""
        if self.local_of is None:
            return ids, mask
        local = jnp.take(self.local_of, ids)
        return jnp.maximum(local, 0), mask & (local >= 0)


def day_table(day: np.ndarray, width: int | None = None, multiple: int = 1) -> DayTable:
    """Group sample ids by day (in day order, ids ascending within a day) into a padded table.

    ``width`` defaults to the largest day; it is rounded up to a multiple of ``multiple`` (the
    number of devices the batch axis is split over).
    """
    day = np.asarray(day)
    order = np.argsort(day, kind="stable")
    days, starts, counts = np.unique(day[order], return_index=True, return_counts=True)
    largest = int(counts.max())
    if width is None:
        width = largest
    elif width < largest:
        raise ValueError(
            f"daily_width={width} is smaller than the largest day ({largest} samples); "
            "raise daily_width or leave it None"
        )
    width = -(-width // multiple) * multiple
    slot = np.arange(width)
    mask = slot[None, :] < counts[:, None]
    ids = np.where(mask, order[np.minimum(starts[:, None] + slot[None, :], len(order) - 1)], 0)
    return DayTable(ids=jnp.asarray(ids, jnp.int32), mask=jnp.asarray(mask))


def make_segment(
    samples: Samples, daily: bool, width: int | None = None, multiple: int = 1
) -> Segment:
    """Wrap samples for the compiled programs (with a :func:`day_table` for daily batching).

    Daily batches group samples by ``samples.batch_group`` where it is set, else by day.
    """
    day = np.asarray(jax.device_get(samples.day))
    table = None
    if daily:
        group = (
            day if samples.batch_group is None else np.asarray(jax.device_get(samples.batch_group))
        )
        table = day_table(group, width, multiple)
    return Segment(samples=samples, days=table, num_days=int(day.max()) + 1)


def shuffled(key: jax.Array, n: int, batch_size: int) -> tuple[jax.Array, jax.Array]:
    """A permutation cut into ``n // batch_size`` full batches (the remainder is dropped)."""
    steps = n // batch_size
    ids = jax.random.permutation(key, n)[: steps * batch_size].reshape(steps, batch_size)
    return ids.astype(jnp.int32), jnp.ones(ids.shape, bool)


def with_replacement(key: jax.Array, n: int, batch_size: int, steps: int):
    """``steps`` batches of ids drawn uniformly with replacement (DNNModelPytorch)."""
    ids = jax.random.randint(key, (steps, batch_size), 0, n, dtype=jnp.int32)
    return ids, jnp.ones(ids.shape, bool)


def by_day(days: DayTable, key: jax.Array | None = None):
    """One batch per day, in day order, or in a random order of days when ``key`` is given."""
    if key is None:
        return days.ids, days.mask
    order = jax.random.permutation(key, days.ids.shape[0])
    return days.ids[order], days.mask[order]


def sequential(n: int, batch_size: int, drop_last: bool):
    """Consecutive batches in sample order: the last one padded (masked) or dropped."""
    steps = n // batch_size if drop_last else -(-n // batch_size)
    ids = jnp.arange(steps * batch_size, dtype=jnp.int32).reshape(steps, batch_size)
    return jnp.where(ids < n, ids, 0), ids < n
