"""Host-streamed training (``TrainConfig.stream_batches``): feature rows stay in host memory.

The resident engine keeps every sample's features on the device and runs an epoch as one
compiled program. When the feature matrix does not fit the device, this module runs the same
epoch with the matrix (and the labels, weights and keyword inputs the batches read) in host
numpy:

1. a small program draws the epoch's batch plan from the state's rng exactly as the resident
   program does (same ids, order and dropout keys), and the host fetches it;
2. the plan is cut into chunks of ``stream_batches`` steps; for each chunk the host gathers
   the rows (``numpy.take``) into a ``[K, batch, ...]`` block, ``jax.device_put`` s it, and one
   compiled chunk program scans the resident step body over its K batches;
3. evaluation streams its fixed batches the same way, and a last program turns the chunk
   outputs into the epoch's metrics, early stopping and best variables
   (:meth:`Trainer.conclude`, shared with the resident program).

Double buffering: a worker thread gathers chunk i+1 while chunk i computes, and JAX's
asynchronous dispatch overlaps its transfer with that computation; the host waits for chunk
i-1 to finish before sending i+1, so at most two blocks are on the device. The last chunk of
an epoch is padded to K steps that a ``lax.cond`` skips (no state change, no second
compilation). What stays on the device besides the model: each segment's labels and day numbers
(8 bytes a sample, for the plans and the daily IC) and the day table of daily batching.

The step bodies are the resident ones (:meth:`Trainer.train_step`, :meth:`Trainer.eval_step`),
so a streamed run ends with the resident run's parameters and history
(``tests/train/test_stream.py``). Flat feature rows only (``Samples`` with an ``[n, F]``
matrix); one process.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec

from qjax.data.samples import Batch, Samples, take_rows
from qjax.train import batching
from qjax.train.batching import Segment
from qjax.train.config import TrainConfig
from qjax.train.engine import _EVAL_KEY, Trainer, _over_replicas
from qjax.train.losses import apply_model
from qjax.train.parallel import DATA_AXIS, DataParallel
from qjax.train.state import FitState, TrainState

# -- checks and the host / device halves of the samples -----------------------------------------


def check_supported(config: TrainConfig, samples: dict[str, Any], several_processes: bool) -> None:
    """Refuse what streaming cannot run, before any work starts."""
    setting = f"TrainConfig.stream_batches={config.stream_batches}"
    if several_processes:
        raise ValueError(
            f"{setting} streams to one process's devices; a run over several processes "
            "(qjax train --distributed) already holds a share of the samples per process: "
            "remove stream_batches or run on one process"
        )
    for name, s in samples.items():
        if s is None:
            continue
        if not isinstance(s, Samples):
            raise TypeError(f"{name} must be qjax.data.Samples, got {type(s).__name__}")
        if s.take is not take_rows or np.ndim(s.features) != 2:
            raise ValueError(
                f"{setting} streams flat feature rows (a qjax.data.Dataset's [n, F] matrix), but "
                f"the {name} samples build their rows in the gather (TSDataset windows or "
                "Alpha360GatherDataset), whose tables are already small: use a flat Dataset, or "
                "remove stream_batches (dataset.storage_dtype='bfloat16' halves the device bytes)"
            )


def to_host(samples: Samples) -> Samples:
    """``samples`` with every array in host numpy (device arrays are copied back), in C order:
    the blocks gather rows, and a column-major matrix gathers them many times slower."""
    return jax.tree.map(np.ascontiguousarray, jax.device_get(samples))


def index_of(samples: Samples) -> Samples:
    """What the device keeps of streamed samples: no feature rows and weights, only what plans
    and metrics read (labels, day numbers, batch groups). Its ``size`` is the segment's."""
    return Samples(
        features=None,
        labels=jnp.asarray(samples.labels),
        weights=None,
        day=jnp.asarray(samples.day),
        take=samples.take,
        batch_group=None if samples.batch_group is None else jnp.asarray(samples.batch_group),
    )


def head(samples: Samples) -> Segment:
    """A segment of the first two rows (as ``Trainer.init`` reads them) for the model's
    initialisation and the shapes of a batch."""
    rows = np.arange(2) % samples.size
    return batching.make_segment(jax.tree.map(lambda leaf: jnp.asarray(leaf[rows]), samples), False)


def gather(samples: Samples, ids: np.ndarray, mask: np.ndarray, mask_input: bool) -> Batch:
    """The host half of ``Samples.batch``: rows ``ids [..., B]`` in their stored dtype."""
    inputs = {name: np.take(values, ids, axis=0) for name, values in samples.inputs.items()}
    if mask_input:
        inputs["mask"] = mask
    return Batch(
        x=np.take(samples.features, ids, axis=0),
        y=np.take(samples.labels, ids),
        w=np.take(samples.weights, ids),
        mask=mask,
        inputs=inputs,
    )


def _as_float32(batch: Batch) -> Batch:
    """The device half of ``take_rows``: stored rows (maybe compact, see
    :mod:`qjax.data.storage`) as float32."""
    return batch.replace(x=batch.x.astype(jnp.float32))


# -- the compiled programs ----------------------------------------------------------------------


@functools.partial(jax.jit, static_argnames=("trainer", "n_steps"))
def _plan(fit: FitState, train: Segment, *, trainer: Trainer, n_steps: int | None):
    """Every replica's batch plan and train state with its rng moved on (as the epoch does)."""
    return _over_replicas(
        lambda fit, data: trainer.epoch_plan(fit.train, data, n_steps),
        fit,
        train,
        group=trainer.replica_group,
    )


@functools.partial(jax.jit, static_argnames="trainer", donate_argnames="state")
def _train_chunk(state: TrainState, block: Batch, keys, active, *, trainer: Trainer):
    """K train steps over a block ``[S, K, B, ...]``; steps with ``active`` False change nothing."""

    def run(replica, active):
        state, block, keys = replica

        def step(state, xs):
            batch, key, on = xs
            batch = trainer.parallel.split_batch(_as_float32(batch))
            train = functools.partial(trainer.train_step, batch=batch, rng=key)
            return jax.lax.cond(on, train, lambda s: (s, jnp.float32(0.0)), state)

        return jax.lax.scan(step, state, (block, keys, active))

    return _over_replicas(run, (state, block, keys), active, group=trainer.replica_group)


@functools.partial(jax.jit, static_argnames="trainer")
def _eval_chunk(state: TrainState, block: Batch, *, trainer: Trainer):
    """``eval_step`` over a block ``[K, B, ...]`` (shared by the replicas)."""

    def run(state, block):
        def step(_, batch):
            batch = trainer.parallel.split_batch(_as_float32(batch))
            return None, trainer.eval_step(state.variables, batch)

        return jax.lax.scan(step, None, block)[1]

    return _over_replicas(run, state, block, group=trainer.replica_group)


@functools.partial(jax.jit, static_argnames=("trainer", "n_steps"), donate_argnames="fit")
def _conclude(fit, state, losses, train_out, valid_out, train, valid, *, trainer, n_steps):
    """The epoch's end from the chunks' outputs: the resident program's ``conclude``."""

    def run(replica, train, valid):
        fit, state, losses, train_out, valid_out = replica
        train_loss = jnp.mean(_joined(losses, n_steps))
        evaluations = [
            None if out is None else _metrics(trainer, out, data)
            for out, data in ((train_out, train), (valid_out, valid))
        ]
        return trainer.conclude(fit, state, train_loss, *evaluations)

    replicas = (fit, state, losses, train_out, valid_out)
    return _over_replicas(run, replicas, train, valid, group=trainer.replica_group)


def _joined(outputs: Any, n_steps: int) -> Any:
    """Outputs of the chunks ``[C * K, ...]`` as the plan's ``[n_steps, ...]`` (padding dropped)."""
    return jax.tree.map(lambda leaf: leaf[:n_steps], outputs)


def _concatenated(chunks: list, axis: int) -> Any:
    """The chunks' outputs ``[..., K, ...]`` joined along the step ``axis``, in a program of
    their own: a reduction over the concatenation inside ``_conclude`` would be rewritten into
    a sum of per-chunk reductions, rounding differently from the resident program."""
    return jax.tree.map(lambda *parts: jnp.concatenate(parts, axis=axis), *chunks)


def _metrics(trainer: Trainer, outputs: Any, data: Segment):
    ids, mask = trainer.eval_plan(data)
    return trainer.eval_metrics(_joined(outputs, ids.shape[0]), ids, mask, data)


@functools.partial(jax.jit, static_argnames=("module", "per_seed", "parallel"))
def _predict_chunk(variables, block: Batch, *, module, per_seed: bool, parallel: DataParallel):
    def run(variables, block):
        def step(_, batch):
            batch = parallel.split_batch(_as_float32(batch))
            return None, apply_model(module.apply, variables, batch, _EVAL_KEY, False)[0]

        return jax.lax.scan(step, None, block)[1]

    return _over_replicas(run, variables, block) if per_seed else run(variables, block)


# -- the host loop ------------------------------------------------------------------------------


class StreamedEpochs:
    """``run_epoch`` of :func:`qjax.train.fit` for host samples: called as the resident
    program is, with the device index segments (:func:`index_of`) as ``train`` and ``valid``."""

    def __init__(self, train: Samples, valid: Samples | None, parallel: DataParallel, chunk: int):
        self.host = {"train": train, "valid": valid}
        self.parallel = parallel
        self.chunk = chunk
        self.eval_plans: dict[str, tuple[np.ndarray, np.ndarray]] = {}

    def __call__(self, fit: FitState, train: Segment, valid: Segment | None, *, trainer, n_steps):
        state, plan = _plan(fit, train, trainer=trainer, n_steps=n_steps)
        ids, mask, keys = jax.device_get(plan)  # [S, steps, B], [S, steps, B], [S, steps, 2]
        steps = ids.shape[1]
        host = self.host["train"]

        def block(rows: slice):
            return gather(host, ids[:, rows], mask[:, rows], trainer.daily), keys[:, rows]

        def run(batch, chunk_keys, active):
            nonlocal state
            state, loss = _train_chunk(state, batch, chunk_keys, active, trainer=trainer)
            return loss

        losses = run_chunks(block, steps, self.chunk, self.parallel, True, run)
        evaluations = {
            name: self._evaluate(trainer, state, name, data)
            for name, data in (("train", train), ("valid", valid))
            if data is not None and (name == "valid" or trainer.config.eval_train)
        }
        return _conclude(
            fit,
            state,
            _concatenated(losses, axis=1),
            evaluations.get("train"),
            evaluations.get("valid"),
            train,
            valid,
            trainer=trainer,
            n_steps=steps,
        )

    def _evaluate(self, trainer: Trainer, state: TrainState, name: str, data: Segment) -> Any:
        if name not in self.eval_plans:  # fixed batches: drawn once per run
            self.eval_plans[name] = jax.device_get(trainer.eval_plan(data))
        ids, mask = self.eval_plans[name]
        host = self.host[name]

        def block(rows: slice):
            return gather(host, ids[rows], mask[rows], trainer.daily), None

        def run(batch, _, active):
            return _eval_chunk(state, batch, trainer=trainer)

        outputs = run_chunks(block, ids.shape[0], self.chunk, self.parallel, False, run)
        return _concatenated(outputs, axis=1)  # [S, C * K, ...]


def run_chunks(
    block: Callable[[slice], tuple[Batch, Any]],
    steps: int,
    chunk: int,
    parallel: DataParallel,
    replica_axis: bool,
    run: Callable[[Batch, Any, np.ndarray], Any],
) -> list:
    """``run(batch, extra, active)`` on every chunk of ``chunk`` plan steps; its outputs.

    ``block(rows)`` builds the host arrays of plan steps ``rows`` (a slice): the batches
    ``[S, K, B, ...]`` (``replica_axis``) or ``[K, B, ...]``, and per-step extras (or None)
    with the same leading axes. The last chunk may be short: it is padded to ``chunk`` steps
    by repeating its first step, and ``active [chunk]`` marks the real ones. Double buffered:
    chunk i+1 is gathered (worker thread) and sent while chunk i computes; before sending it,
    the host waits for chunk i-1's outputs, so at most two blocks occupy the device.
    """
    n_chunks = -(-steps // chunk)
    rows_sharding, extra_sharding = _block_shardings(parallel, replica_axis)
    outputs: list = []
    with ThreadPoolExecutor(1, thread_name_prefix="qjax-stream") as pool:
        pending = pool.submit(_padded, block, 0, steps, chunk, replica_axis)
        for c in range(n_chunks):
            (batch, extra), active = pending.result()
            if c + 1 < n_chunks:
                pending = pool.submit(_padded, block, c + 1, steps, chunk, replica_axis)
            if len(outputs) > 1:  # chunk c-2 is done with its block (see the docstring)
                jax.block_until_ready(outputs[-2])
            batch = jax.device_put(batch, rows_sharding)
            extra = None if extra is None else jax.device_put(extra, extra_sharding)
            outputs.append(run(batch, extra, active))
    return outputs


def _padded(block, c: int, steps: int, chunk: int, replica_axis: bool):
    start = c * chunk
    real = min(chunk, steps - start)
    host = block(slice(start, start + real))
    if real < chunk:  # repeat the first step: a full-size block, its extra steps inactive
        pad = np.r_[np.arange(real), np.zeros(chunk - real, int)]
        host = jax.tree.map(lambda leaf: np.take(leaf, pad, axis=int(replica_axis)), host)
    return host, np.arange(chunk) < real


def _block_shardings(parallel: DataParallel, replica_axis: bool) -> tuple[Any, Any]:
    """Shardings of a block's batches ``[S, K, B, ...]`` (or ``[K, B, ...]``) and extras
    ``[S, K, ...]``: the replica axis over the devices that hold whole replicas, else the rows
    over the devices a batch is split over (extras copied)."""
    replicas = PartitionSpec(DATA_AXIS) if parallel.over_replicas and replica_axis else None
    if parallel.over_replicas:
        rows = replicas or PartitionSpec()
    else:
        rows = PartitionSpec(*(None,) * (1 + replica_axis), DATA_AXIS)
    mesh = parallel.mesh
    return NamedSharding(mesh, rows), NamedSharding(mesh, replicas or PartitionSpec())


def predict(
    module: Any,
    variables: Any,
    samples: Samples,
    *,
    batch_size: int,
    daily: bool,
    per_seed: bool,
    parallel: DataParallel,
    chunk: int,
) -> np.ndarray:
    """:func:`qjax.train.predict` for host samples, ``chunk`` batches per transfer."""
    samples = to_host(samples)
    if daily:
        segment = batching.make_segment(samples, True, multiple=parallel.size)
        plan = batching.by_day(segment.days)
    else:
        plan = batching.sequential(samples.size, batch_size, drop_last=False)
    ids, mask = jax.device_get(plan)
    variables = parallel.replicate(variables)

    def block(rows: slice):
        return gather(samples, ids[rows], mask[rows], daily), None

    def run(batch, _, active):
        preds = _predict_chunk(
            variables, batch, module=module, per_seed=per_seed, parallel=parallel
        )
        return preds

    chunks = run_chunks(block, ids.shape[0], chunk, parallel, False, run)
    preds = np.concatenate(jax.device_get(chunks), axis=-2)[..., : ids.shape[0], :]
    out = np.full((*preds.shape[:-2], samples.size), np.nan, preds.dtype)
    out[..., ids[mask]] = preds[..., mask]
    return out
