"""Data parallelism with ``jax.sharding``: the batch axis split over devices, all else replicated.

The engine runs every program on a one-axis :class:`jax.sharding.Mesh` named ``"data"``. The
samples, the train state and the best variables are replicated on every device; inside the
compiled program each batch's ids are constrained to be split along ``"data"``, so each device
gathers and runs its share of the rows, and XLA inserts the cross-device reductions of the loss,
the gradients and BatchNorm statistics. The arithmetic is that of one device with a different
summation order, so results agree to float tolerance. With a single device the constraints are
no-ops.

Multi-host (several machines, each with local accelerators)::

    import jax
    jax.distributed.initialize()          # before any other JAX call; reads the cluster env
    result = fit(module, train, valid, config, devices=jax.devices())

Every process runs the same script with the same data and config. ``jax.devices()`` lists the
devices of all processes, so the mesh spans the cluster and every batch is split over all of
them; the replicated samples and state must be identical on every host (they are when each host
builds them from the same data and seed). The batch size (and the daily width, rounded
automatically) must be divisible by the total number of devices. Checkpoints are written through
Orbax, which coordinates multi-process saves; give every process the same ``checkpoint_dir`` on
a shared file system.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

DATA_AXIS = "data"


@dataclasses.dataclass(frozen=True)
class DataParallel:
    mesh: Mesh

    @property
    def size(self) -> int:
        return self.mesh.size

    @property
    def replicated(self) -> NamedSharding:
        return NamedSharding(self.mesh, PartitionSpec())

    def replicate(self, tree: Any) -> Any:
        """Place (copies of) every array of ``tree`` on every device."""
        return jax.device_put(tree, self.replicated)

    def split_batch(self, ids: jax.Array) -> jax.Array:
        """Inside a compiled program: split a batch's ids ``[B]`` over the devices."""
        return jax.lax.with_sharding_constraint(
            ids, NamedSharding(self.mesh, PartitionSpec(DATA_AXIS))
        )

    def check_divides(self, rows: int, what: str) -> None:
        if rows % self.size:
            raise ValueError(
                f"{what}={rows} is not divisible by the {self.size} devices the batch is split "
                f"over; use a multiple of {self.size}, or pass devices=jax.local_devices()[:1]"
            )


# A CPU device's share of a batch must stay large enough that its matmuls stay efficient.
MIN_ROWS_PER_CPU_DEVICE = 64


def auto_devices(batch_rows: int | None) -> list[jax.Device]:
    """The devices the engine splits a batch of ``batch_rows`` over when the caller names none.

    Accelerators: every local device (the batch must divide evenly). XLA:CPU, where
    :mod:`qjax.cpu_devices` makes one device per core: the most devices that split the batch
    evenly into shares of at least :data:`MIN_ROWS_PER_CPU_DEVICE` rows, so a batch size that
    does not divide keeps working on fewer devices. ``batch_rows=None`` (daily batches: one
    padded day of ~300 stocks per step) stays on one CPU device: GATs trained 0.85x as fast on
    two (``benchmarks/README.md``, levers); pass ``devices=`` to split anyway. Inference splits
    too: on 2 quiet cores it gained for 5 of 6 models (``benchmarks/results/levers_cpu.md``).
    """
    devices = jax.local_devices()
    if devices[0].platform != "cpu":
        return devices
    if batch_rows is None:
        return devices[:1]
    for count in range(len(devices), 1, -1):
        if batch_rows % count == 0 and batch_rows // count >= MIN_ROWS_PER_CPU_DEVICE:
            return devices[:count]
    return devices[:1]


def data_parallel(devices: Sequence[jax.Device] | None = None) -> DataParallel:
    """A data-parallel mesh over ``devices`` (default: all local devices)."""
    devices = list(jax.local_devices() if devices is None else devices)
    if not devices:
        raise ValueError("devices is empty; pass at least one jax.Device")
    return DataParallel(Mesh(np.asarray(devices), (DATA_AXIS,)))
