"""Data parallelism with ``jax.sharding``: the batch axis split over devices, all else replicated.

The engine runs every program on a one-axis :class:`jax.sharding.Mesh` named ``"data"``. The
samples, the train state and the best variables are replicated on every device; inside the
compiled program each batch's ids are constrained to be split along ``"data"``, so each device
gathers and runs its share of the rows, and XLA inserts the cross-device reductions of the loss,
the gradients and BatchNorm statistics. The arithmetic is that of one device with a different
summation order, so results agree to float tolerance. With a single device the constraints are
no-ops.

Several seeds (replicas, see :mod:`qjax.train.engine`) can instead be split over the devices:
each device then holds whole replicas (state, rng, best variables) and runs whole batches for
them, so the devices never exchange a byte during training and every replica computes exactly
what it computes alone. On XLA:CPU that is the default whenever the seeds divide over two or more
devices and the batch would stay on one (:func:`choose_parallel`).

Several processes (machines, ``jax.distributed``) are :mod:`qjax.train.distributed`'s: each
process holds its share of the samples (whole days) and uses one device, every batch plan is
drawn over all samples, and the gradients and losses are summed over the processes inside the
epoch program (``shard_map`` over a mesh of one device per process). ``qjax train
--distributed`` runs it; ``tests/train/test_distributed.py`` checks that two processes on
localhost end with the parameters of one.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Sequence
from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from qjax import compilation, row_split

DATA_AXIS = row_split.AXIS


@dataclasses.dataclass(frozen=True)
class DataParallel:
    mesh: Mesh
    over_replicas: bool = False  # devices hold whole replicas and run whole batches

    @property
    def size(self) -> int:
        """The devices each batch is split over (1 when the replicas are split instead)."""
        return 1 if self.over_replicas else self.mesh.size

    @property
    def on_cpu(self) -> bool:
        return all(d.platform == "cpu" for d in self.mesh.devices.flat)

    @property
    def replicated(self) -> NamedSharding:
        return NamedSharding(self.mesh, PartitionSpec())

    def replicate(self, tree: Any) -> Any:
        """Place (copies of) every array of ``tree`` on every device."""
        return jax.device_put(tree, self.replicated)

    def share(self, tree: Any) -> Any:
        """:meth:`replicate` for inputs a program only reads (never donated).

        On XLA:CPU an array held by one device goes through a host view: every CPU device
        then reads that one buffer, where ``device_put`` of the array itself copies it to each
        (3 ms for 9,600 Alpha360 rows, a fifth of the MLP's whole ``predict``). Such a buffer
        is borrowed from the original, so it must not be donated.
        """
        if self.on_cpu:
            tree = jax.tree.map(functools.partial(_host_view, target=self.replicated), tree)
        return jax.device_put(tree, self.replicated)

    @property
    def replica_sharding(self) -> NamedSharding:
        """Where :meth:`place_replicas` puts each leaf."""
        if not self.over_replicas:
            return self.replicated
        return NamedSharding(self.mesh, PartitionSpec(DATA_AXIS))

    def place_replicas(self, tree: Any) -> Any:
        """Place a tree whose leaves lead with the replica axis: split along it over the
        devices when the replicas are split, else copied to every device."""
        return jax.device_put(tree, self.replica_sharding)

    def placed_replicas_like(self, tree: Any) -> Any:
        """The shapes of ``tree`` (arrays or shape structs) as :meth:`place_replicas` would
        place them: what a program that takes the placed tree is compiled for."""
        sharding = self.replica_sharding
        return jax.tree.map(
            lambda leaf: jax.ShapeDtypeStruct(leaf.shape, leaf.dtype, sharding=sharding), tree
        )

    def split_batch(self, ids: jax.Array) -> jax.Array:
        """Inside a compiled program: split a batch's ids ``[B]`` over the devices."""
        if self.over_replicas or self.mesh.size == 1:
            return ids
        return jax.lax.with_sharding_constraint(
            ids, NamedSharding(self.mesh, PartitionSpec(DATA_AXIS))
        )

    def cpu_choice(self, dots: str | None, opt_level: str | None) -> tuple[str, str]:
        """The XLA:CPU matrix-product backend and optimisation level of this layout's programs
        (a key of :func:`qjax.compilation.jit_per_cpu_choice`): the choices on XLA:CPU devices
        (Eigen where this XLA offers it), XLA's defaults elsewhere."""
        if not self.on_cpu:
            return "default", "default"
        if dots in (None, "default") or not compilation.eigen_dots_available():
            dots = "default"
        return dots, opt_level or "default"

    def tracing(self):
        """Context for tracing a program: models see the mesh that splits each batch's rows
        (:func:`qjax.row_split.map_rows`); none when the batch stays whole on each device."""
        return row_split.rows_split_over(None if self.over_replicas else self.mesh)

    def check_divides(self, rows: int, what: str) -> None:
        if rows % self.size:
            raise ValueError(
                f"{what}={rows} is not divisible by the {self.size} devices the batch is split "
                f"over; use a multiple of {self.size}, or pass devices=jax.local_devices()[:1]"
            )


def _host_view(leaf: Any, target: NamedSharding) -> Any:
    """A single-device CPU array as a numpy view of its buffer (no copy); anything else as is."""
    if (
        isinstance(leaf, jax.Array)
        and leaf.is_fully_addressable
        and len(leaf.sharding.device_set) == 1
        and leaf.sharding != target
    ):
        return np.asarray(leaf)
    return leaf


# A CPU device's share of a batch must stay large enough that its matmuls stay efficient.
MIN_ROWS_PER_CPU_DEVICE = 64


def auto_devices(batch_rows: int | None) -> list[jax.Device]:
    """The devices the engine splits a batch of ``batch_rows`` over when the caller names none.

    Accelerators: every local device (the batch must divide evenly). XLA:CPU, where
    :mod:`qjax.cpu_devices` makes one device per core: the most devices that split the batch
    evenly into shares of at least :data:`MIN_ROWS_PER_CPU_DEVICE` rows, so a batch size that
    does not divide keeps working on fewer devices. ``batch_rows=None`` stays on one CPU
    device. Daily batches pass their widest day: GATs/HIST map their per-stock encoder over the
    devices (``qjax.row_split``; left to GSPMD, its backward scan all-reduced the kernel
    gradient at every time step and GATs trained 0.85x as fast on two). Inference splits too:
    on 2 quiet cores it gained for 5 of 6 models (``benchmarks/results/levers_cpu.md``).
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


SPLITS = ("batch", "seeds")


def choose_parallel(
    devices: Sequence[jax.Device] | None,
    split: str | None,
    batch_rows: int | None,
    n_replicas: int,
) -> DataParallel:
    """The layout of a run: ``split="batch"`` splits each batch over ``devices`` (default
    :func:`auto_devices`), ``split="seeds"`` puts whole replicas on each of the most
    ``devices`` (default: all local ones) that divide them; ``None`` chooses.

    The choice (measured in ``benchmarks/results/replicas_cpu.md``, 2 CPU cores, 4 seeds): on
    XLA:CPU, several seeds whose batch stays on one device (KRNN, TabNet, daily batches) split
    over the devices, 1.15-2x faster than a split batch; where the batch splits (Transformer,
    TCN, and since their layers run under ``shard_map`` the recurrent models) the split batch
    stays (for LSTM, GRU and ALSTM the split seeds measured 1.04-1.05x faster with 4 seeds,
    ``benchmarks/results/replicas_cpu_rnn_rows.md``).
    """
    if split not in (None, *SPLITS):
        raise ValueError(f"split={split!r} is not one of {SPLITS} (or None to choose)")
    if split is None and devices is None:
        batch_devices = auto_devices(batch_rows)
        on_cpu = batch_devices[0].platform == "cpu"
        split = "seeds" if on_cpu and len(batch_devices) == 1 and n_replicas > 1 else "batch"
        devices = None if split == "seeds" else batch_devices
    if split == "seeds":
        devices = list(jax.local_devices() if devices is None else devices)
        count = max(c for c in range(1, len(devices) + 1) if n_replicas % c == 0)
        return data_parallel(devices[:count], over_replicas=True)
    return data_parallel(auto_devices(batch_rows) if devices is None else devices)


def replica_group(chunk: int | None, n_replicas: int, parallel: DataParallel) -> int:
    """How many of ``n_replicas`` replicas train side by side (vmapped); groups of that many
    run one after another in the same program. ``chunk`` counts replicas per device.

    A group takes ``chunk`` replicas from every device that holds replicas, so all devices stay
    busy, and is the largest such group that divides the replicas. On XLA:CPU ``chunk=None`` is
    :data:`CPU_REPLICA_CHUNK`; accelerators run every replica at once, whatever ``chunk``.
    """
    holders = parallel.mesh.size if parallel.over_replicas else 1
    per_device = n_replicas // holders
    if parallel.mesh.devices.flat[0].platform != "cpu":
        return n_replicas
    chunk = CPU_REPLICA_CHUNK if chunk is None else chunk
    size = max(c for c in range(1, min(chunk, per_device) + 1) if per_device % c == 0)
    return size * holders


# Replicas per CPU device side by side: XLA:CPU runs matmuls with a replica (batch) dimension
# slower than plain ones: 20 seeds of MLP, LSTM, GRU and KRNN trained 1.3-1.7x faster one
# replica per device at a time than all vmapped at once (benchmarks/results/replica_groups_cpu.md).
CPU_REPLICA_CHUNK = 1


def data_parallel(
    devices: Sequence[jax.Device] | None = None, over_replicas: bool = False
) -> DataParallel:
    """A data-parallel mesh over ``devices`` (default: all local devices)."""
    devices = list(jax.local_devices() if devices is None else devices)
    if not devices:
        raise ValueError("devices is empty; pass at least one jax.Device")
    return DataParallel(Mesh(np.asarray(devices), (DATA_AXIS,)), over_replicas)
