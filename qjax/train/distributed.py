"""Several processes (machines) training one model through ``jax.distributed``.

Launch one process per machine (or per accelerator), each with the same command and config;
:func:`initialize` connects them (``qjax train --distributed``). Then :func:`current` describes
the cluster, and ``fit`` trains with it, with no other change to the caller:

- **Data.** Each process keeps on its device only its share of every segment: whole days,
  consecutive ones, balanced by sample count (:func:`day_shares`), padded to a common
  capacity (the largest share) so that every process runs the same program. Tabular samples
  are cut to the held rows; window panels and the Alpha360 gather keep their tables whole and
  gather through the held ids (:func:`qjax.data.samples.subset`). The host pipeline (features,
  fitted processors such as RobustZScoreNorm) still runs over all days on every process, since
  a processor fitted on the train days needs all of them.
- **Batches.** The batch plan is drawn over *all* samples from the shared seed, so it is the
  same on every process and for every process count. Each process gathers the whole ``[B]``
  batch shape with the rows that another process holds masked out
  (:meth:`~qjax.train.batching.Segment.localize`), takes the gradient of its part of the
  loss's ``total`` and sums ``(gradient, total, count)`` over the processes (``psum``) before
  dividing, as the micro-batch step does over chunks (:mod:`qjax.train.microbatch`). Since a
  row keeps its position in the batch, dropout draws the same masks as in one process, and
  the result equals the single-process run up to the order of float summation.
- **Evaluation.** Per-batch loss totals and counts, and the daily IC's (sum, days) are summed
  over the processes (a day lives on one process), so every process computes the same
  metrics and takes the same early-stopping and learning-rate decisions.
- **Checkpoints.** The train state is one array replicated over the processes; every process
  calls the same Orbax save and restore, which coordinates them (the primary process writes).
  ``checkpoint_dir`` must be one directory that every process sees (a shared file system).

What it costs: every process computes the forward and backward pass of the whole batch shape,
most of whose rows it does not hold (masked), so a step costs each process what it costs one
process alone. Several machines thus buy room for data that one machine's memory cannot hold
(tabular samples; windowed ones share the whole panel on every process), not speed; the
masked rows are the price of static shapes (the rows a process holds vary from batch to
batch) and of results that do not depend on the process count. Each process uses one device
(launch one process per accelerator); the rest of its local devices stay idle.

Not supported (a clear error before training): daily batching (GATs/HIST: a day per step,
held by one process, so the others would run a batch with every row masked, which these
cross-sectional models are not written for), models with BatchNorm statistics (TabNet: each
process would normalise by its own rows), ``split="seeds"`` and explicit ``devices``. The
natural next step for speed is to compact each process's rows of a batch into a smaller
buffer (a few more rows than ``B / processes``, with a second pass for the rare batch that
overflows it); dropout masks would then differ from one process's (equally distributed).

Settings, read by :func:`initialize` before any other JAX call: ``JAX_COORDINATOR_ADDRESS``
(host:port of process 0), ``JAX_NUM_PROCESSES`` and ``JAX_PROCESS_ID`` (0 ... n-1); unset, JAX
detects them on a SLURM, Open MPI or other supported cluster. On CPU the processes exchange
data through JAX's Gloo collectives.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from qjax.data.samples import Samples, SubsetTake, subset
from qjax.errors import DistributedError
from qjax.train.batching import Segment

AXIS = "processes"
ADDRESS, COUNT, PROCESS_ID = "JAX_COORDINATOR_ADDRESS", "JAX_NUM_PROCESSES", "JAX_PROCESS_ID"
HOW = (
    f"set {ADDRESS}=host:port (process 0's machine, a free port), {COUNT}=N and "
    f"{PROCESS_ID}=0..N-1 for every process, or launch under SLURM / Open MPI"
)


def settings(environ: Mapping[str, str] = os.environ) -> dict[str, Any]:
    """``jax.distributed.initialize`` keywords from the environment (the ones that are set)."""
    found: dict[str, Any] = {}
    if environ.get(ADDRESS, "").strip():
        found["coordinator_address"] = environ[ADDRESS].strip()
    for name, key in ((COUNT, "num_processes"), (PROCESS_ID, "process_id")):
        text = environ.get(name, "").strip()
        if not text:
            continue
        if not text.isdigit():
            raise DistributedError(f"{name}={environ[name]!r} is not a whole number; {HOW}")
        found[key] = int(text)
    if "num_processes" in found and found["num_processes"] < 1:
        raise DistributedError(f"{COUNT} must be at least 1; {HOW}")
    if {"num_processes", "process_id"} <= set(found) and (
        found["process_id"] >= found["num_processes"]
    ):
        raise DistributedError(
            f"{PROCESS_ID}={found['process_id']} is not below {COUNT}={found['num_processes']}; "
            f"number the processes 0..{found['num_processes'] - 1}"
        )
    return found


JOIN_SECONDS = 300  # JAX's default wait for every process to join
CPU_COLLECTIVES = "jax_cpu_collectives_implementation"


def initialize(
    timeout_seconds: int = JOIN_SECONDS, environ: Mapping[str, str] = os.environ
) -> None:
    """Connect this process to the others (``jax.distributed.initialize``); call it before any
    other JAX work. A process waits up to ``timeout_seconds`` for the others to join; past it
    (or when a peer dies later, after JAX's heartbeat timeout) JAX ends the process with a
    fatal log, which Python cannot catch."""
    kwargs = settings(environ)
    # Older JAX has no CPU collectives by default ("none"); later versions use Gloo.
    if jax.config.values.get(CPU_COLLECTIVES, "none") in (None, "none"):
        jax.config.update(CPU_COLLECTIVES, "gloo")
    try:
        jax.distributed.initialize(**kwargs, initialization_timeout=timeout_seconds)
    except (ValueError, TypeError) as err:
        raise DistributedError(f"cannot start several processes ({err}); {HOW}") from None
    except RuntimeError as err:
        raise DistributedError(
            f"jax.distributed.initialize failed: {err}. It must come before any other JAX "
            f"work, and every process must reach the coordinator; {HOW}"
        ) from None


@dataclasses.dataclass(frozen=True)
class Cluster:
    """The processes of a run: a mesh of one device per process, along :data:`AXIS`."""

    mesh: Mesh

    @property
    def count(self) -> int:
        return self.mesh.size

    @property
    def index(self) -> int:
        return jax.process_index()

    # -- data ----------------------------------------------------------------------------------

    def share(self, samples: Samples) -> Segment:
        """This process's :func:`day_shares` share of ``samples`` as a local segment."""
        day = np.asarray(jax.device_get(samples.day))
        shares = day_shares(day, self.count)
        mine = shares[self.index]
        local_of = np.full(samples.size, -1, np.int32)
        local_of[mine] = np.arange(len(mine), dtype=np.int32)
        return Segment(
            samples=subset(samples, mine, max(1, max(len(s) for s in shares))),
            days=None,
            num_days=int(day.max()) + 1,
            local_of=jnp.asarray(local_of),
            total=samples.size,
        )

    # -- placement -----------------------------------------------------------------------------

    def replicate(self, tree: Any) -> Any:
        """A tree of equal values on every process as arrays replicated over the processes."""
        return self._global(tree, jax.tree.map(lambda _: False, tree))

    def place(self, segment: Segment | None) -> Segment | None:
        """A local segment as arrays split over the processes (each holds its own share)."""
        return None if segment is None else self._global(segment, _split_leaves(segment))

    def _global(self, tree: Any, split: Any) -> Any:
        def place(leaf, is_split):
            spec = PartitionSpec(AXIS) if is_split else PartitionSpec()
            return jax.make_array_from_process_local_data(
                NamedSharding(self.mesh, spec), np.asarray(jax.device_get(leaf))
            )

        return jax.tree.map(place, tree, split)

    def fetch(self, tree: Any) -> Any:
        """This process's copy of replicated arrays, as NumPy (``jax.device_get`` for them)."""
        return jax.tree.map(lambda leaf: np.asarray(leaf.addressable_data(0)), tree)

    # -- programs ------------------------------------------------------------------------------

    def run(self, fn: Callable[..., Any], state: Any, *segments: Segment | None) -> Any:
        """Inside ``jit``: ``fn(state, *segments)`` on every process, the state replicated and
        each segment this process's share; ``fn`` sums over :data:`AXIS` and returns values
        equal on every process."""
        args = (state, *segments)
        leaves, treedef = jax.tree.flatten(args)
        split = jax.tree.leaves(
            (jax.tree.map(lambda _: False, state), *(_split_leaves(s) for s in segments))
        )
        specs = tuple(PartitionSpec(AXIS) if s else PartitionSpec() for s in split)

        def flat(*leaves):
            return fn(*jax.tree.unflatten(treedef, leaves))

        return _shard_map(flat, self.mesh, specs, PartitionSpec())(*leaves)


def current() -> Cluster | None:
    """The cluster of this run (the first device of each process), None for one process."""
    if jax.process_count() == 1:
        return None
    first: dict[int, jax.Device] = {}
    for device in sorted(jax.devices(), key=lambda d: d.id):
        first.setdefault(device.process_index, device)
    return Cluster(Mesh(np.asarray([first[p] for p in sorted(first)]), (AXIS,)))


def day_shares(day: np.ndarray, count: int) -> list[np.ndarray]:
    """Sample ids of each of ``count`` processes: consecutive whole days, about equally many
    samples each. A day goes to the process in whose ``1/count`` of all samples it starts."""
    day = np.asarray(day)
    days, per_day = np.unique(day, return_counts=True)
    before = np.cumsum(per_day) - per_day  # samples of earlier days
    owner_of_day = np.minimum(before * count // len(day), count - 1)
    owner = owner_of_day[np.searchsorted(days, day)]
    return [np.flatnonzero(owner == p) for p in range(count)]


def check_supported(config: Any, devices: Any, split: str | None) -> None:
    """Refuse, before anything compiles, what the multi-process engine does not do."""
    if config.batching.daily:
        raise DistributedError(
            "several processes cannot train with daily batches (GATs, HIST: one whole day per "
            "step) yet; train this model on one machine"
        )
    if devices is not None or split is not None:
        raise DistributedError(
            "with several processes each uses one device and the batch is split by the rows "
            "each holds; leave devices= and split= unset"
        )


def check_no_batch_stats(batch_stats: Any) -> None:
    if jax.tree.leaves(batch_stats):
        raise DistributedError(
            "this model keeps BatchNorm statistics (TabNet), which would be computed over each "
            "process's rows instead of the batch's; train it on one machine"
        )


def _split_leaves(segment: Segment | None) -> Any:
    """Which leaves of a local segment differ between processes (True) or are equal (False):
    everything is per process but the whole tables a :class:`SubsetTake` gathers from."""
    if segment is None:
        return None
    split = jax.tree.map(lambda _: True, segment)
    if isinstance(segment.samples.take, SubsetTake):
        features = segment.samples.features
        whole = {"source": jax.tree.map(lambda _: False, features["source"]), "rows": True}
        split = split.replace(samples=split.samples.replace(features=whole))
    return split


def _shard_map(fn: Callable, mesh: Mesh, in_specs: Any, out_specs: Any) -> Callable:
    """``jax.shard_map`` (JAX >= 0.6), else the experimental one; replication is not checked:
    the outputs are psum results and values computed from them."""
    if hasattr(jax, "shard_map"):
        try:
            return jax.shard_map(
                fn, mesh=mesh, in_specs=in_specs, out_specs=out_specs, check_vma=False
            )
        except TypeError:  # pragma: no cover - before check_rep was renamed check_vma
            return jax.shard_map(
                fn, mesh=mesh, in_specs=in_specs, out_specs=out_specs, check_rep=False
            )
    from jax.experimental.shard_map import shard_map  # pragma: no cover - JAX < 0.6

    return shard_map(fn, mesh, in_specs, out_specs, check_rep=False)
