"""The training engine: ``fit`` and ``predict`` for every qjax model.

One evaluation period (an epoch, or ``eval_steps`` steps in DNNModelPytorch's "steps" mode) is
ONE compiled program: draw the batch plan from the state's rng, ``lax.scan`` over the batches
(gathering each batch from the device-resident samples inside the scan), evaluate on
fixed-shape batches, step ReduceLROnPlateau, and update the early-stopping bookkeeping and the
best variables. The samples enter the program as arguments, the state is donated, and the host
sees the program once per epoch (to read a handful of scalars, checkpoint and draw the bar).
Each batch is split over the devices of a data-parallel mesh (:mod:`qjax.train.parallel`; on
XLA:CPU one device per core, :mod:`qjax.cpu_devices`), and a train step may walk its batch in
micro-batches whose gradients it sums (:mod:`qjax.train.microbatch`). With
``TrainConfig.stream_batches`` the feature rows stay in host memory instead, and
:mod:`qjax.train.stream` runs the same steps on blocks of batches sent during the epoch.

Several seeds train as independent replicas of that program under ``jax.vmap``: every leaf of
the state has a leading replica axis, each replica has its own initialisation, batch order,
dropout and early stopping, and a replica that has stopped keeps its state (and best variables)
while the others go on. ``replica_chunk`` replicas per device run side by side; groups of them
take turns inside the same program (on XLA:CPU one per device by default, see
:func:`qjax.train.parallel.replica_group`). A single seed keeps the replica axis (of size one)
in its state but runs the program unbatched.

Typical use from an estimator::

    config = TrainConfig(n_epochs=200, lr=1e-3, batch_size=800, early_stop=20)
    result = fit(module, train_samples, valid_samples, config, evals_result=evals_result)
    scores = predict(module, result.replica(0), test_samples, batch_size=config.batch_size)
"""

from __future__ import annotations

import dataclasses
import functools
import os
import sys
import time
import warnings
from collections.abc import Callable, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import PartitionSpec

from qjax import row_split
from qjax.compilation import (
    CPU_DOTS,
    CPU_OPT_LEVELS,
    CompileClock,
    before_compiling,
    check_cpu_choice,
    compile_in_background,
    jit_per_cpu_choice,
    jit_run_once,
)
from qjax.data.samples import Samples
from qjax.errors import Interrupted, TrainingDiverged
from qjax.train import batching, distributed, levers, microbatch
from qjax.train.batching import Segment
from qjax.train.checkpoint import RunCheckpoints
from qjax.train.config import Batching, TrainConfig
from qjax.train.losses import (
    Batch,
    LossFn,
    Variables,
    apply_model,
    batch_loss,
    is_supervised,
    supervised_mse,
)
from qjax.train.metrics import daily_ic_sum
from qjax.train.optim import make_optimizer, make_plateau
from qjax.train.parallel import (
    DATA_AXIS,
    DataParallel,
    auto_devices,
    choose_parallel,
    data_parallel,
    replica_group,
)
from qjax.train.progress import Progress
from qjax.train.state import FitState, TrainState, as_variables, initial_fit_state

Metrics = dict[str, jax.Array]

# Evaluation runs in eval mode, which draws no randomness; objectives still receive a key.
_EVAL_KEY = np.array([0, 0], np.uint32)


@dataclasses.dataclass(frozen=True)
class Trainer:
    """The static half of a run: model, objective, config (optimiser, batching), devices.

    Every method is a pure function of its array arguments, safe to ``jit`` and ``vmap``.
    """

    module: nn.Module
    loss_fn: LossFn
    config: TrainConfig
    parallel: DataParallel
    micro_batches: int = 1  # chunks per train batch (see qjax.train.microbatch)
    eval_chunks: int = 1  # chunks per evaluation batch's forward (TrainConfig.cpu_eval_rows)
    replica_group: int | None = None  # replicas side by side (None: all; see parallel)
    across: str | None = None  # mesh axis of several processes (qjax.train.distributed)

    # Trainers compare equal when their settings do, so ``jit`` (which takes the trainer as a
    # static argument) reuses compiled programs across ``fit`` calls with the same setup.

    @property
    def tx(self) -> optax.GradientTransformation:
        return make_optimizer(self.config)

    @property
    def plateau(self) -> optax.GradientTransformationExtraArgs | None:
        settings = self.config.lr_plateau
        return None if settings is None else make_plateau(settings, self.config.lr)

    @property
    def daily(self) -> bool:
        return self.config.batching.daily

    def reduce(self, tree: Any) -> Any:
        """Sum a tree over the processes (each holds part of the rows); one process: as is."""
        return tree if self.across is None else jax.lax.psum(tree, self.across)

    @property
    def mean_of_batch_means(self) -> bool:
        """Qlib's epoch-loop evaluation; DNNModelPytorch ("steps") uses the whole-set mean."""
        return self.config.eval_protocol == "qlib" and not self.config.batching.by_steps

    # -- initialisation -------------------------------------------------------------------

    def init(
        self,
        key: jax.Array,
        train: Segment,
        init_variables: Callable[[Variables], Variables] | None = None,
    ) -> FitState:
        """A fresh state: ``module.init`` on two training rows, then ``init_variables``."""
        init_key, rng = jax.random.split(key)
        rows = jnp.arange(2, dtype=jnp.int32) % train.samples.size
        example = train.samples.batch(rows, mask_input=self.daily)
        variables = self.module.init(
            {"params": init_key, "dropout": init_key}, example.x, train=False, **example.inputs
        )
        if init_variables is not None:
            variables = init_variables(variables)
        return initial_fit_state(dict(variables), self.tx, self.plateau, rng)

    # -- training -------------------------------------------------------------------------

    def train_step(
        self, state: TrainState, batch: Batch, rng: jax.Array
    ) -> tuple[TrainState, jax.Array]:
        """One optimiser step on ``batch``; returns the new state and the batch loss."""

        def objective(params):
            variables = as_variables(params, state.batch_stats)
            out = self.loss_fn(self.module.apply, variables, batch, rng, True)
            return batch_loss(out), out

        if self.micro_batches > 1 or self.across is not None:
            loss, grads = self._chunked_loss_and_grad(state, batch, rng)
            out = None
        else:
            (loss, out), grads = jax.value_and_grad(objective, has_aux=True)(state.params)
        updates, opt_state = self.tx.update(grads, state.opt_state, state.params)
        if state.plateau is not None:
            updates = optax.tree.scale(state.plateau.scale, updates)
        new_state = state.replace(
            step=state.step + 1,
            params=optax.apply_updates(state.params, updates),
            batch_stats=state.batch_stats
            if out is None or out.batch_stats is None
            else out.batch_stats,
            opt_state=opt_state,
        )
        return new_state, loss

    def _chunked_loss_and_grad(self, state: TrainState, batch: Batch, rng: jax.Array):
        def objective(params, chunk, key):
            variables = as_variables(params, state.batch_stats)
            return self.loss_fn(self.module.apply, variables, chunk, key, True)

        return microbatch.accumulated_loss_and_grad(
            objective,
            state.params,
            batch,
            rng,
            self.micro_batches,
            self.parallel.split_batch,
            self.reduce,
        )

    def train_plan(self, key: jax.Array, data: Segment, n_steps: int | None):
        config = self.config
        if config.batching.daily:
            return batching.by_day(data.days, key if config.shuffle_days else None)
        if config.batching.by_steps:
            return batching.with_replacement(key, data.size, config.batch_size, n_steps)
        return batching.shuffled(key, data.size, config.batch_size)

    def epoch_plan(
        self, state: TrainState, data: Segment, n_steps: int | None = None
    ) -> tuple[TrainState, tuple[jax.Array, jax.Array, jax.Array]]:
        """The epoch's batch plan ``(ids, mask, step_keys)`` and the state with its rng moved on."""
        rng, plan_key, steps_key = jax.random.split(state.rng, 3)
        ids, mask = data.localize(*self.train_plan(plan_key, data, n_steps))
        step_keys = jax.random.split(steps_key, ids.shape[0])
        return state.replace(rng=rng), (ids, mask, step_keys)

    def train_epoch(
        self, state: TrainState, data: Segment, n_steps: int | None = None
    ) -> tuple[TrainState, jax.Array]:
        """All steps of one epoch in one ``lax.scan``; returns the mean batch loss."""
        state, plan = self.epoch_plan(state, data, n_steps)

        def step(state, xs):
            ids, mask, key = xs
            ids, mask = self.parallel.split_batch((ids, mask))
            batch = data.samples.batch(ids, mask, mask_input=self.daily)
            return self.train_step(state, batch, key)

        state, losses = jax.lax.scan(step, state, plan)
        return state, jnp.mean(losses)

    # -- evaluation -----------------------------------------------------------------------

    def eval_plan(self, data: Segment):
        if self.daily:
            return batching.by_day(data.days)
        batch_size = _round_up(self.config.validation_batch_size, self.parallel.size)
        # Qlib's test_epoch drops the last partial batch.
        return batching.sequential(data.size, batch_size, drop_last=self.mean_of_batch_means)

    def evaluate(self, variables: Variables, data: Segment) -> Metrics:
        """Loss (per ``eval_protocol``) and score (``-loss`` or mean daily IC) on a segment."""
        ids, mask = data.localize(*self.eval_plan(data))

        def one_batch(variables, samples, ids, mask):
            return self.eval_step(variables, samples.batch(ids, mask, mask_input=self.daily))

        spread = self.across is None and _days_spread(self.daily, self.parallel)
        outputs, plan = _map_batches(
            one_batch, variables, data.samples, ids, mask, self.parallel, spread
        )
        return self.eval_metrics(outputs, *plan, data)

    def eval_step(self, variables: Variables, batch: Batch):
        """One evaluation batch: the objective's (total, count, pred) in eval mode, the forward
        run in ``eval_chunks`` chunks of rows (the same numbers up to summation order)."""

        def forward(rows: Batch):
            out = self.loss_fn(self.module.apply, variables, rows, _EVAL_KEY, False)
            return out.total, out.count, out.pred

        if self.eval_chunks == 1:
            return forward(batch)
        chunks = microbatch.split_rows(batch, self.eval_chunks)
        totals, counts, preds = jax.lax.map(
            lambda chunk: forward(self.parallel.split_batch(chunk)), chunks
        )
        return jnp.sum(totals), jnp.sum(counts), microbatch.join_rows(preds)

    def eval_metrics(self, outputs, ids: jax.Array, mask: jax.Array, data: Segment) -> Metrics:
        """The metrics of a segment from its per-batch ``eval_step`` outputs (plan order);
        reads only the segment's labels and days."""
        totals, counts, preds = outputs
        totals, counts = self.reduce((totals, counts))
        if self.mean_of_batch_means:
            counted = counts > 0
            batch_means = jnp.where(counted, totals / jnp.maximum(counts, 1), 0.0)
            loss = jnp.sum(batch_means) / jnp.sum(counted)
        else:
            loss = jnp.sum(totals) / jnp.sum(counts)
        if self.config.metric == "loss":
            return {"loss": loss, "score": -loss}
        if preds is None:
            raise ValueError("metric='ic' needs predictions, but the objective returned pred=None")
        samples = data.samples
        pred = _scatter(preds, ids, mask, samples.size)
        ic_sum, days = self.reduce(daily_ic_sum(pred, samples.labels, samples.day, data.num_days))
        return {"loss": loss, "score": ic_sum / days}

    # -- one evaluation period: the compiled program --------------------------------------

    def epoch(
        self, fit: FitState, train: Segment, valid: Segment | None, n_steps: int | None = None
    ) -> tuple[FitState, Metrics]:
        """Train one epoch, evaluate, track the best variables and early stopping."""
        state, train_loss = self.train_epoch(fit.train, train, n_steps)
        train_eval = self.evaluate(state.variables, train) if self.config.eval_train else None
        valid_eval = None if valid is None else self.evaluate(state.variables, valid)
        return self.conclude(fit, state, train_loss, train_eval, valid_eval)

    def conclude(
        self,
        fit: FitState,
        state: TrainState,
        train_loss: jax.Array,
        train_eval: Metrics | None,
        valid_eval: Metrics | None,
    ) -> tuple[FitState, Metrics]:
        """The end of an evaluation period: ``fit`` moved on to the trained ``state``, given
        its evaluations (None: not evaluated; no valid segment). ReduceLROnPlateau steps, the
        best variables and early stopping are tracked; a stopped replica keeps ``fit``."""
        metrics = {"train_loss": train_loss}
        if train_eval is not None:
            metrics["train_score"] = train_eval["score"]
        if valid_eval is None:  # retraining without validation: the latest variables are the result
            score, improved = jnp.float32(jnp.nan), jnp.bool_(True)
        else:
            score, improved = valid_eval["score"], valid_eval["score"] > fit.best_score
            metrics.update(valid_loss=valid_eval["loss"], valid_score=score)
            if self.plateau is not None:
                _, plateau = self.plateau.update({}, state.plateau, value=valid_eval["loss"])
                state = state.replace(plateau=plateau)
        stall = jnp.where(improved, 0, fit.stall + 1)
        updated = FitState(
            train=state,
            best=_select(improved, state.variables, fit.best),
            best_score=jnp.where(improved, score, fit.best_score),
            best_epoch=jnp.where(improved, fit.epoch, fit.best_epoch),
            stall=stall,
            stopped=stall >= self.config.early_stop,
            epoch=fit.epoch + 1,
        )
        # A replica that stopped earlier keeps everything; its metrics read NaN.
        metrics = {name: jnp.where(fit.stopped, jnp.nan, value) for name, value in metrics.items()}
        new = _select(fit.stopped, fit, updated)
        metrics.update(lr=self.config.lr * new.train.lr_scale, stopped=new.stopped)
        return new, metrics


# -- public API ---------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class FitResult:
    """What ``fit`` returns. Arrays have one entry per seed (replica), in ``seeds`` order."""

    variables: Variables  # best variables, every leaf with a leading replica axis [S, ...]
    seeds: tuple[int, ...]
    best_epoch: np.ndarray  # [S] evaluation index of the best score; -1 if it never improved
    best_score: np.ndarray  # [S] best validation score (NaN without validation)
    history: dict[str, np.ndarray]  # per evaluation and replica [n_evals, S]; NaN once stopped
    epochs_run: np.ndarray | None = None  # [S] evaluations each replica ran (stops freeze it)
    early_stopped: np.ndarray | None = None  # [S] early stopping triggered
    resumed_from: int = 0  # evaluations restored from a checkpoint (0: a fresh run)
    earlier_seconds: float = 0.0  # wall time of the earlier parts of a resumed run, as saved
    compile_seconds: float = 0.0  # tracing + compiling (or loading from the cache) in this fit
    n_devices: int = 1  # devices each batch was split over
    replica_devices: int = 1  # devices the replicas (seeds) were split over
    micro_batches: int = 1  # chunks per train batch (1: whole batches)
    eval_chunks: int = 1  # chunks per evaluation batch's forward (1: whole batches)
    replica_group: int = 1  # replicas trained side by side; groups ran in turn

    def replica(self, index: int = 0) -> Variables:
        """The best variables of one seed, ready for ``module.apply`` or :func:`predict`."""
        return jax.tree.map(lambda leaf: leaf[index], self.variables)


def fit(
    module: nn.Module,
    train: Samples,
    valid: Samples | None,
    config: TrainConfig,
    *,
    seeds: Sequence[int] | None = None,
    loss_fn: LossFn | None = None,
    init_variables: Callable[[Variables], Variables] | None = None,
    checkpoint_dir: str | os.PathLike | None = None,
    resume: bool = False,
    evals_result: dict | None = None,
    devices: Sequence[jax.Device] | None = None,
    split: str | None = None,
    on_epoch: Callable[[int, dict[str, np.ndarray]], None] | None = None,
    verbose: bool = True,
) -> FitResult:
    """Train ``module`` on ``train``, select on ``valid``; see :class:`TrainConfig`.

    Args:
      module: a Flax module called as ``module.apply(variables, x, train=bool, **kwargs)``,
        dropout on rng stream "dropout", BatchNorm state in "batch_stats".
      train, valid: the samples, put on the device for the whole fit (with
        ``config.stream_batches``: kept in host memory and streamed). ``valid=None`` trains
        ``n_epochs`` (or ``max_steps``) and returns the last variables.
      seeds: train one independent replica per seed in one compiled program (default:
        ``[config.seed]``).
      loss_fn: the objective (default: NaN-masked weighted MSE), see :mod:`qjax.train.losses`.
      init_variables: maps each replica's fresh ``module.init`` variables to its starting
        variables (load pretrained weights here).
      checkpoint_dir: save the full run state after every evaluation (Orbax); ``resume=True``
        continues the run found there and ends with the same parameters as an uninterrupted run.
      evals_result: filled like Qlib's: ``"valid"`` the validation score per evaluation,
        ``"train"`` the train score if ``config.eval_train`` else minus the mean minibatch loss
        of the epoch. Floats for one seed, per-seed lists for several.
      devices: the devices of the run (default: every accelerator, or the CPU devices, one
        per core), see :mod:`qjax.train.parallel` and :mod:`qjax.cpu_devices`.
      split: what is split over the devices: ``"batch"`` (each batch), ``"seeds"`` (whole
        replicas per device, no traffic between devices) or None: chosen per run by
        :func:`parallel.choose_parallel` (on XLA:CPU, several seeds whose batch stays on one
        device split the seeds). Given ``devices`` and no ``split``, each batch is split.
      on_epoch: ``on_epoch(evaluation_index, metrics)`` after every evaluation (e.g. to log to
        a Qlib recorder); metrics hold one value per seed.
      verbose: show a progress bar.
    """
    before_compiling()
    with CompileClock.measure() as compiling:
        result = _fit(
            module,
            train,
            valid,
            config,
            seeds=seeds,
            loss_fn=loss_fn,
            init_variables=init_variables,
            checkpoint_dir=checkpoint_dir,
            resume=resume,
            devices=devices,
            split=split,
            on_epoch=on_epoch,
            verbose=verbose,
        )
    result = dataclasses.replace(result, compile_seconds=compiling["seconds"])
    if evals_result is not None:
        _fill_evals_result(evals_result, result.history, config.eval_train, len(result.seeds))
    return result


def _fit(
    module,
    train,
    valid,
    config,
    *,
    seeds,
    loss_fn,
    init_variables,
    checkpoint_dir,
    resume,
    devices,
    split,
    on_epoch,
    verbose,
) -> FitResult:
    started = time.perf_counter()
    config = levers.resolve(config, type(module))  # the levers left to the model family
    seeds = _check_seeds(config.seed if seeds is None else seeds)
    loss_fn = supervised_mse if loss_fn is None else loss_fn
    cluster = distributed.current()  # None: one process
    if cluster is None:
        split_rows = _split_rows(config, train, valid, len(seeds))
        parallel = choose_parallel(devices, split, split_rows, len(seeds))
    else:
        distributed.check_supported(config, devices, split)
        parallel = data_parallel(jax.local_devices()[:1])
        verbose = verbose and cluster.index == 0
    fetch, run_epoch = jax.device_get, _run_epoch
    if config.stream_batches is not None:  # features stay on the host (qjax.train.stream)
        from qjax.train import stream

        stream.check_supported(config, {"train": train, "valid": valid}, cluster is not None)
        train, valid = (None if s is None else stream.to_host(s) for s in (train, valid))
        run_epoch = stream.StreamedEpochs(train, valid, parallel, config.stream_batches)
        host_train = train
        train, valid = (None if s is None else stream.index_of(s) for s in (train, valid))
    train_seg, valid_seg = _prepare_segments(train, valid, config, loss_fn, parallel, cluster)
    example = train_seg  # what initialisation and the batch shapes read
    if config.stream_batches is not None:
        example = parallel.replicate(stream.head(host_train))
    # The seeds reach the programs as keys: a trainer without the config's seed lets a fit with
    # other seeds reuse the programs compiled for the last one instead of adding new ones.
    trainer = Trainer(
        module,
        loss_fn,
        dataclasses.replace(config, seed=0),
        parallel,
        across=None if cluster is None else distributed.AXIS,
    )
    keys = parallel.place_replicas(jnp.stack([jax.random.PRNGKey(seed) for seed in seeds]))
    # XLA compiles the initialisation program on a worker thread while this thread traces,
    # lowers and compiles the epoch program: until the first epoch both need only shapes.
    init_lowered = _INIT_PROGRAM.lower(
        keys, example, trainer=trainer, init_variables=init_variables
    )
    init_compiling = compile_in_background(init_lowered)
    state_like = parallel.placed_replicas_like(init_lowered.out_info)
    trainer = dataclasses.replace(
        trainer,
        micro_batches=_micro_batches(trainer, example, state_like),
        eval_chunks=_eval_chunks(trainer),
        replica_group=replica_group(config.replica_chunk, len(seeds), parallel),
    )
    if cluster is None and config.stream_batches is None:
        first_steps = config.steps_in_period(0) if config.batching.by_steps else None
        _compile_epoch(state_like, train_seg, valid_seg, trainer=trainer, n_steps=first_steps)
    state = parallel.place_replicas(init_compiling.result()(keys, example))
    if cluster is not None:  # from here on, arrays span the processes
        distributed.check_no_batch_stats(state.train.batch_stats)
        state = cluster.replicate(state)
        train_seg, valid_seg = cluster.place(train_seg), cluster.place(valid_seg)
        fetch, run_epoch = cluster.fetch, functools.partial(_run_epoch_across, cluster=cluster)

    history: dict[str, list] = {}
    checkpoints = None
    earlier_seconds = 0.0  # training time of earlier parts of a resumed run
    if checkpoint_dir is not None:
        # Streamed or resident, a run trains the same: either may resume the other. The dots
        # backend, LLVM level and evaluation chunks only change float rounding; leaving them
        # out keeps older checkpoints resumable.
        order_only = ("cpu_dots", "cpu_opt_level", "cpu_eval_rows")
        setup = {k: v for k, v in config.to_dict().items() if k not in order_only}
        fingerprint = {
            "config": {**setup, "stream_batches": None},
            "seeds": seeds,
            "module": repr(module),
            "objective": getattr(loss_fn, "__qualname__", repr(loss_fn)),
            "samples": [train.size, None if valid is None else valid.size],
        }
        checkpoints = RunCheckpoints(checkpoint_dir, fingerprint, resume)
        restored = checkpoints.restore(state) if resume else None
        if restored is not None:
            state, history, earlier_seconds = restored

    done = len(history.get("lr", []))
    if done and verbose:
        _say(f"resuming from epoch {done + 1} ({done} of {config.n_evaluations} done)")
    stopped = np.asarray(fetch(state.stopped))
    progress = Progress(config.n_evaluations, done, verbose)
    epoch = done
    try:
        for epoch in range(done, config.n_evaluations):
            if stopped.all():
                break
            n_steps = config.steps_in_period(epoch) if config.batching.by_steps else None
            state, metrics = run_epoch(
                state, train_seg, valid_seg, trainer=trainer, n_steps=n_steps
            )
            metrics = fetch(metrics)
            _check_finite(metrics, stopped, epoch, seeds)  # before the epoch is checkpointed
            progress.update(metrics, stopped, np.asarray(fetch(state.best_score)))
            stopped = metrics.pop("stopped")
            for name, values in metrics.items():
                history.setdefault(name, []).append(np.asarray(values).tolist())
            if checkpoints is not None:
                elapsed = earlier_seconds + time.perf_counter() - started
                checkpoints.save(epoch, state, history, elapsed)
            if on_epoch is not None:
                on_epoch(epoch, metrics)
    except KeyboardInterrupt:
        raise Interrupted(epoch + 1, resumable=checkpoints is not None) from None
    finally:
        progress.close()
        if checkpoints is not None:
            checkpoints.close()

    result = FitResult(
        # several processes: this process's copy, for predictions on its own devices
        variables=state.best if cluster is None else jax.tree.map(jnp.asarray, fetch(state.best)),
        seeds=seeds,
        best_epoch=np.asarray(fetch(state.best_epoch)),
        best_score=np.asarray(fetch(state.best_score)),
        history={name: np.asarray(values, np.float32) for name, values in history.items()},
        epochs_run=np.asarray(fetch(state.epoch)),
        early_stopped=np.asarray(fetch(state.stopped)),
        resumed_from=done,
        earlier_seconds=earlier_seconds,
        n_devices=parallel.size,
        replica_devices=parallel.mesh.size if parallel.over_replicas else 1,
        micro_batches=trainer.micro_batches,
        eval_chunks=trainer.eval_chunks,
        replica_group=trainer.replica_group,
    )
    if verbose and result.early_stopped.any():
        _say(_stop_summary(result, config.early_stop))
    if valid is not None and (result.best_epoch < 0).any():
        warnings.warn(
            "the validation score never improved (NaN on every evaluation?) for seeds "
            f"{[s for s, e in zip(seeds, result.best_epoch) if e < 0]}; they return their "
            "initial variables",
            stacklevel=3,
        )
    return result


def predict(
    module: nn.Module,
    variables: Variables,
    samples: Samples,
    *,
    batch_size: int = 8192,
    daily: bool = False,
    per_seed: bool = False,
    devices: Sequence[jax.Device] | None = None,
    stream_batches: int | None = None,
    cpu_dots: str | None = None,
    cpu_opt_level: str | None = None,
) -> np.ndarray:
    """Eval-mode predictions for every sample, in sample order: [n], or [S, n] if ``per_seed``.

    ``daily=True`` feeds one padded day per batch with the ``mask`` keyword (cross-sectional
    models), whole days spread over the devices (a day per device at a time); otherwise
    consecutive batches of at most ``batch_size`` rows (rounded up to the devices), as few as
    that allows and of equal size, the last one padded (:func:`prediction_batch`).
    ``per_seed=True`` takes variables with a leading replica axis (``FitResult.variables``).
    ``stream_batches``: keep flat samples' features on the host and send them in blocks of this
    many batches (:mod:`qjax.train.stream`); None: put the samples on the device. ``devices``:
    default :func:`parallel.auto_devices` for the batch; daily, every local device (streamed:
    :func:`parallel.auto_devices` for the widest day, as ``fit`` would split it; days too
    narrow for that split predicted 1.05-1.51x faster spread over 2 CPU devices than on one,
    ``benchmarks/results/daily_levers_days.md``). ``cpu_dots``: the XLA:CPU matrix-product
    backend of the device-resident program (:data:`qjax.compilation.CPU_DOTS`; streamed
    predictions compile XLA's default); None: the model family's measured choice (its spec's
    ``cpu_predict_dots``: Eigen for KRNN), else XLA's default. ``cpu_opt_level``: the same
    program's LLVM optimisation level (:data:`qjax.compilation.CPU_OPT_LEVELS`); None: the level
    the model family trains at (``TrainConfig.cpu_opt_level``).
    """
    if samples.size == 0:
        raise ValueError("cannot predict on empty samples")
    check_cpu_choice(cpu_dots, CPU_DOTS, "predict(cpu_dots)")
    check_cpu_choice(cpu_opt_level, CPU_OPT_LEVELS, "predict(cpu_opt_level)")
    before_compiling()
    if devices is None and daily and stream_batches is None and _SHARD_MAP:
        devices = jax.local_devices()  # whole days go to the devices, however narrow
    elif devices is None:
        # a daily batch is one padded day, whatever batch_size says
        devices = auto_devices(_daily_rows(_widest_day(samples)) if daily else batch_size)
    parallel = data_parallel(devices)
    batch_size = prediction_batch(samples.size, batch_size, parallel.size)
    if stream_batches is not None:
        from qjax.train import stream

        config = TrainConfig(stream_batches=stream_batches)  # the setting's checks
        stream.check_supported(config, {"predicted": samples}, several_processes=False)
        return stream.predict(
            module,
            variables,
            samples,
            batch_size=batch_size,
            daily=daily,
            per_seed=per_seed,
            parallel=parallel,
            chunk=config.stream_batches,
        )
    data = parallel.share(batching.make_segment(samples, daily, multiple=parallel.size))
    model_dots, model_level = levers.predict_choice(type(module))
    program = _PREDICT_PROGRAMS[
        parallel.cpu_choice(cpu_dots or model_dots, cpu_opt_level or model_level)
    ]
    with parallel.tracing():
        preds = program(
            parallel.share(variables),
            data,
            module=module,
            batch_size=batch_size,
            daily=daily,
            per_seed=per_seed,
            parallel=parallel,
            days_spread=_days_spread(daily, parallel),
        )
    return np.asarray(preds)


# Whole days per device run under jax.shard_map (JAX >= 0.6); older JAX splits a day's rows.
_SHARD_MAP = hasattr(jax, "shard_map")


def _days_spread(daily: bool, parallel: DataParallel) -> bool:
    """Whether daily evaluations and predictions put whole days on the devices, one each,
    rather than split each day's rows over them (:func:`_map_batches`): wherever a day would
    be split."""
    return daily and parallel.size > 1 and _SHARD_MAP


def prediction_batch(n: int, batch_size: int, devices: int) -> int:
    """Rows per prediction batch: ``n`` samples in the fewest batches of at most ``batch_size``
    rows, spread evenly and rounded up to a multiple of ``devices``.

    Padding costs compute like real rows: 9,600 samples in batches of 8,096 ran 16,192 rows,
    in two batches of 4,800 they run 9,600 (``benchmarks/results/predict_levers_cpu.md``).
    """
    steps = -(-n // batch_size)
    return _round_up(-(-n // steps), devices)


# -- helpers ----------------------------------------------------------------------------------


def _over_replicas(fn: Callable, replicated: Any, *shared: Any, group: int | None = None) -> Any:
    """``fn`` mapped over the leading replica axis of ``replicated`` (``shared`` is common).

    ``group`` replicas (default: all) run side by side under ``jax.vmap``; the groups run one
    after another (``lax.map``). Group ``g`` holds replicas ``g, g + G, g + 2G, ...`` (``G``
    groups), so that replicas split over devices in contiguous blocks fill every device in
    each group. A group of one runs unbatched with the axis squeezed and restored, because
    XLA's CPU code for matmuls with a batch dimension of one is ~25% slower than the plain
    matmul inside a recurrent scan.
    """
    n = jax.tree.leaves(replicated)[0].shape[0]
    group = n if group is None else group
    in_axes = (0,) + (None,) * len(shared)

    def one_group(members):
        if group > 1:
            return jax.vmap(fn, in_axes=in_axes)(members, *shared)
        out = fn(jax.tree.map(lambda leaf: leaf[0], members), *shared)
        return jax.tree.map(lambda leaf: leaf[None], out)

    if group == n:
        return one_group(replicated)
    turns = n // group
    grouped = jax.tree.map(
        lambda leaf: leaf.reshape(group, turns, *leaf.shape[1:]).swapaxes(0, 1), replicated
    )
    out = jax.lax.map(one_group, grouped)
    return jax.tree.map(lambda leaf: leaf.swapaxes(0, 1).reshape(n, *leaf.shape[2:]), out)


def _init_replicas(keys, train: Segment, *, trainer: Trainer, init_variables) -> FitState:
    """Every replica's fresh state, one replica after another (``lax.map``, not ``vmap``).

    Under ``vmap`` an initializer's linear algebra becomes a batched LAPACK call (SFM's
    orthogonal init: QR), which jaxlib's CPU kernel spreads over the intra-op thread pool and
    waits for; with the program running on two CPU devices at once the pool starved and the
    run hung before its first epoch (jax 0.10.2). One replica at a time calls each kernel
    unbatched, which runs inline; initialisation runs for milliseconds (compiling it takes a
    quarter to a third of a cold fit's compile seconds, ``compile_programs_cpu.md``).
    """
    init = functools.partial(trainer.init, init_variables=init_variables)
    return jax.lax.map(lambda key: init(key, train), keys)


# Runs once per fit: compiled for compile speed (qjax.compilation.RUN_ONCE, the same values).
_INIT_PROGRAM = jit_run_once(_init_replicas, static_argnames=("trainer", "init_variables"))


def _run_epoch(
    state: FitState, train: Segment, valid: Segment | None, *, trainer: Trainer, n_steps
):
    """The epoch program over all replicas; the state's buffers are donated."""
    with trainer.parallel.tracing():  # models may map their per-row parts over the devices
        return _epoch_jit(trainer)(state, train, valid, trainer=trainer, n_steps=n_steps)


def _compile_epoch(
    state: FitState, train: Segment, valid: Segment | None, *, trainer: Trainer, n_steps
) -> None:
    """Compile the epoch program ahead of its first call; ``state`` may hold shapes only
    (placed as the state will be). The call then finds the program in ``jit``'s cache."""
    with trainer.parallel.tracing():
        program = _epoch_jit(trainer).lower(state, train, valid, trainer=trainer, n_steps=n_steps)
    program.compile()


def _epoch_jit(trainer: Trainer) -> Callable:
    config = trainer.config
    return _EPOCH_PROGRAMS[trainer.parallel.cpu_choice(config.cpu_dots, config.cpu_opt_level)]


def _epoch_program(
    state: FitState, train: Segment, valid: Segment | None, *, trainer: Trainer, n_steps
):
    epoch = functools.partial(trainer.epoch, n_steps=n_steps)
    return _over_replicas(epoch, state, train, valid, group=trainer.replica_group)


# One compiled epoch program per XLA:CPU matrix-product backend and optimisation level
# (TrainConfig.cpu_dots, cpu_opt_level).
_EPOCH_PROGRAMS = jit_per_cpu_choice(
    _epoch_program, static_argnames=("trainer", "n_steps"), donate_argnames="state"
)


@functools.partial(
    jax.jit, static_argnames=("trainer", "n_steps", "cluster"), donate_argnames="state"
)
def _run_epoch_across(
    state: FitState, train: Segment, valid: Segment | None, *, trainer: Trainer, n_steps, cluster
):
    """The epoch program on every process of ``cluster``, each on its share of the samples."""
    epoch = functools.partial(trainer.epoch, n_steps=n_steps)
    over = functools.partial(_over_replicas, epoch, group=trainer.replica_group)
    return cluster.run(over, state, train, valid)


def _predict(
    variables, data: Segment, *, module, batch_size, daily, per_seed, parallel, days_spread
):
    ids, mask = (
        batching.by_day(data.days)
        if daily
        else batching.sequential(data.size, batch_size, drop_last=False)
    )

    def one_batch(variables, samples, ids, mask):
        batch = samples.batch(ids, mask, mask_input=daily)
        return apply_model(module.apply, variables, batch, _EVAL_KEY, False)[0]

    def run(variables):
        preds, plan = _map_batches(
            one_batch, variables, data.samples, ids, mask, parallel, days_spread
        )
        return _scatter(preds, *plan, data.size)

    return _over_replicas(run, variables) if per_seed else run(variables)


def _map_batches(
    per_batch: Callable, variables, samples: Samples, ids, mask, parallel, days_spread: bool
):
    """``per_batch(variables, samples, ids, mask)`` over a plan's batches ``ids, mask [B, W]``
    in one scan -> (outputs stacked along a leading batch axis, the plan they follow).

    By default each batch's rows are split over the devices. ``days_spread``: whole batches
    (days) go to the devices, one each per step, every day computed as on one device; the plan
    gains empty days up to a multiple of the devices. Days are independent in inference, so no
    device waits for another's share of a day, and GATs'/HIST's cross-stock part runs once per
    day instead of on every device (``benchmarks/results/daily_levers_days.md``).
    """
    if not days_spread:

        def step(_, xs):
            return None, per_batch(variables, samples, *parallel.split_batch(xs))

        return jax.lax.scan(step, None, (ids, mask))[1], (ids, mask)
    count = parallel.mesh.size
    ids, mask = (jnp.pad(a, ((0, -a.shape[0] % count), (0, 0))) for a in (ids, mask))

    def one_day(variables, samples, ids, mask):
        with row_split.rows_split_over(None):  # the device holds the whole day
            out = per_batch(variables, samples, ids[0], mask[0])
        return jax.tree.map(lambda a: a[None], out)

    whole, split = PartitionSpec(), PartitionSpec(DATA_AXIS)
    day_per_device = jax.shard_map(
        one_day, mesh=parallel.mesh, in_specs=(whole, whole, split, split), out_specs=split
    )

    def step(_, xs):
        return None, day_per_device(variables, samples, *xs)

    steps = tuple(a.reshape(-1, count, a.shape[1]) for a in (ids, mask))
    out = jax.lax.scan(step, None, steps)[1]
    return jax.tree.map(lambda a: a.reshape(-1, *a.shape[2:]), out), (ids, mask)


# One compiled prediction program per XLA:CPU matrix-product backend and optimisation level
# (predict's cpu_dots, cpu_opt_level).
_PREDICT_PROGRAMS = jit_per_cpu_choice(
    _predict,
    static_argnames=("module", "batch_size", "daily", "per_seed", "parallel", "days_spread"),
)


def _split_rows(
    config: TrainConfig, train: Samples, valid: Samples | None, n_seeds: int
) -> int | None:
    """Rows of one train batch that ``fit`` may split over the CPU devices (None: keep each
    batch whole on one device). A daily batch is the widest day, padded to a multiple of the
    devices; its models map their per-stock encoder over the devices (``qjax.row_split``).
    Several seeds of daily batches stay whole so that the seeds split instead, which needs no
    traffic between devices (``benchmarks/results/replicas_cpu.md``)."""
    if not config.cpu_split:
        return None
    if not config.batching.daily:
        return config.batch_size
    if n_seeds > 1:
        return None
    widest = config.daily_width
    if widest is None:
        # bad samples are reported by _prepare_segments; here they just count for nothing
        days = [_widest_day(s) for s in (train, valid) if isinstance(s, Samples) and s.size]
        widest = max(days, default=1)
    return _daily_rows(widest)


def _widest_day(samples: Samples) -> int:
    group = samples.day if samples.batch_group is None else samples.batch_group
    return int(np.bincount(np.asarray(jax.device_get(group))).max())


def _daily_rows(widest: int) -> int:
    """Rows of a daily batch: the widest day padded to a multiple of the local devices."""
    return _round_up(widest, len(jax.local_devices()))


def _micro_batches(trainer: Trainer, train: Segment, state: FitState) -> int:
    """Chunks per train batch for ``config.micro_batch`` (see :func:`microbatch.resolve`);
    reads only the shapes of ``state``."""
    config = trainer.config
    rows = config.batch_size

    def forward(inputs):
        batch, first = inputs
        variables = as_variables(first.params, first.batch_stats)
        return trainer.loss_fn(trainer.module.apply, variables, batch, _EVAL_KEY, True).total

    def example():
        # Shapes only: the state may not exist yet, and slicing the first replica eagerly
        # cost one dispatched program per leaf (TabNet: ~300 per fit).
        ids, mask = jnp.zeros(rows, jnp.int32), jnp.ones(rows, bool)
        batch = jax.eval_shape(lambda: train.samples.batch(ids, mask))
        first = jax.tree.map(
            lambda leaf: jax.ShapeDtypeStruct(leaf.shape[1:], leaf.dtype), state.train
        )
        return batch, first

    return microbatch.resolve(
        config.micro_batch,
        rows,
        trainer.parallel.size,
        daily=trainer.daily,
        stateful=bool(jax.tree.leaves(state.train.batch_stats)),
        default_objective=trainer.loss_fn is supervised_mse,
        on_cpu=trainer.parallel.on_cpu,
        forward=forward,
        example=example,
    )


def _eval_chunks(trainer: Trainer) -> int:
    """Chunks per evaluation batch for ``config.cpu_eval_rows`` on XLA:CPU: row batches of the
    default objective only (its total is a sum over rows, its forward row by row)."""
    rows = trainer.config.cpu_eval_rows
    if rows in (None, "off") or not trainer.parallel.on_cpu:
        return 1
    if trainer.daily or trainer.loss_fn is not supervised_mse:
        return 1
    batch_rows = _round_up(trainer.config.validation_batch_size, trainer.parallel.size)
    return microbatch.chunks_for(batch_rows, rows, trainer.parallel.size)


def _scatter(values: jax.Array, ids: jax.Array, mask: jax.Array, n: int) -> jax.Array:
    """Per-batch values [steps, B] back to sample order [n]; rows never evaluated are NaN."""
    slots = jnp.where(mask, ids, n).reshape(-1)  # padding rows go out of bounds and are dropped
    return jnp.full(n, jnp.nan, values.dtype).at[slots].set(values.reshape(-1), mode="drop")


def _select(condition: jax.Array, if_true: Any, if_false: Any) -> Any:
    return jax.tree.map(lambda a, b: jnp.where(condition, a, b), if_true, if_false)


def _round_up(value: int, multiple: int) -> int:
    return -(-value // multiple) * multiple


def _say(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def _stop_summary(result: FitResult, patience: int) -> str:
    """ "early-stopped at epoch N (best epoch B)", per seed when there are several."""
    parts = [
        f"epoch {int(run)} (best epoch {int(best) + 1})"
        for run, best in zip(result.epochs_run, result.best_epoch)
    ]
    reason = f"no validation improvement in {patience} epochs"
    if len(parts) == 1:
        return f"early-stopped at {parts[0]}: {reason}"
    seeds = [
        f"seed {seed} at {part}" if stopped else f"seed {seed} ran all epochs"
        for seed, part, stopped in zip(result.seeds, parts, result.early_stopped)
    ]
    return f"early-stopped ({reason}): {'; '.join(seeds)}"


def _check_finite(metrics: dict, stopped_before: np.ndarray, epoch: int, seeds) -> None:
    """Raise :class:`TrainingDiverged` if an active replica's training loss is NaN/inf.

    Once it is, the parameters are too, and every later epoch would be wasted. A non-finite
    validation loss is not an error: as in Qlib, that epoch just does not count as an improvement.
    """
    active = ~np.asarray(stopped_before, bool)
    values = np.asarray(metrics["train_loss"], np.float64).reshape(-1)
    broken = active & ~np.isfinite(values)
    if broken.any():
        bad_seeds = [int(seed) for seed, b in zip(seeds, broken) if b]
        raise TrainingDiverged(
            f"the training loss became {values[broken][0]} at epoch {epoch + 1} (seeds "
            f"{bad_seeds}); the run stopped and this epoch was not saved. NaN or inf in the "
            "features or labels is the usual cause (no Fillna processor, inf in the data): "
            "qjax.data.checks.nonfinite_report(dataset) lists the columns; otherwise lower lr",
            epoch=epoch + 1,
        )


def _check_seeds(seeds: int | Sequence[int]) -> tuple[int, ...]:
    seeds = (seeds,) if isinstance(seeds, (int, np.integer)) else tuple(seeds)
    if not seeds or not all(isinstance(s, (int, np.integer)) and s >= 0 for s in seeds):
        raise ValueError(f"seeds must be a non-empty list of non-negative ints, got {seeds!r}")
    return tuple(int(s) for s in seeds)


def _check_samples(samples: Samples, name: str, supervised: bool) -> None:
    if not isinstance(samples, Samples):
        raise TypeError(f"{name} must be qjax.data.Samples, got {type(samples).__name__}")
    if samples.size == 0:
        raise ValueError(f"the {name} samples are empty; check the segment's date range")
    if supervised and np.isnan(np.asarray(samples.labels)).all():
        raise ValueError(
            f"every {name} label is NaN, so there is nothing to fit; check the label expression "
            "and the segment's dates (the last days of a dataset have no future return)"
        )


def _prepare_segments(
    train: Samples,
    valid: Samples | None,
    config: TrainConfig,
    loss_fn: LossFn,
    parallel: DataParallel,
    cluster: distributed.Cluster | None = None,
) -> tuple[Segment, Segment | None]:
    supervised = is_supervised(loss_fn)  # only a supervised objective needs labels
    _check_samples(train, "train", supervised)
    if valid is not None:
        _check_samples(valid, "valid", supervised)
    if config.batching.daily:
        width = config.daily_width
        if width is None:  # one width for both segments: one padded shape, one compilation
            counts = [np.bincount(np.asarray(s.day)).max() for s in (train, valid) if s is not None]
            width = int(max(counts))
        segments = [
            None if s is None else batching.make_segment(s, True, width, parallel.size)
            for s in (train, valid)
        ]
    else:
        parallel.check_divides(config.batch_size, "batch_size")
        if config.batching is Batching.SHUFFLE and config.batch_size > train.size:
            raise ValueError(
                f"batch_size={config.batch_size} exceeds the {train.size} train samples, so an "
                "epoch has no full batch; lower batch_size"
            )
        if config.eval_protocol == "qlib" and config.batching is Batching.SHUFFLE:
            for name, s in (("train", train), ("valid", valid)):
                if s is not None and config.batch_size > s.size:
                    raise ValueError(
                        f"eval_protocol='qlib' drops the last partial batch, and the {name} "
                        f"segment ({s.size} samples) is smaller than batch_size="
                        f"{config.batch_size}; use eval_protocol='exact'"
                    )
        cut = (lambda s: batching.make_segment(s, False)) if cluster is None else cluster.share
        segments = [None if s is None else cut(s) for s in (train, valid)]
    train_seg, valid_seg = parallel.replicate(segments)
    if config.metric == "ic" and valid is None:
        warnings.warn("metric='ic' has no effect without a valid segment", stacklevel=4)
    return train_seg, valid_seg


def _fill_evals_result(evals_result: dict, history: dict, eval_train: bool, n_seeds: int) -> None:
    train = history["train_score"] if eval_train else -history["train_loss"]
    columns = {"train": train, "valid": history.get("valid_score")}
    for name, values in columns.items():
        if values is None:
            continue
        evals_result[name] = values[:, 0].tolist() if n_seeds == 1 else values.tolist()
