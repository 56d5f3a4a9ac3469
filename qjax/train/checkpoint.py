"""Resumable runs: an Orbax checkpoint of the whole :class:`FitState` after every evaluation.

Each checkpoint (step = evaluation index) holds the full state (params, batch stats, optimiser
and plateau state, rng, best variables, early-stopping counters) and, as JSON, the run's
history and a fingerprint of its setup. Orbax writes into a temporary directory and renames it
when complete, so a process killed at any moment (even ``kill -9`` during a save) leaves the
previous checkpoint intact. Resuming restores the latest readable checkpoint (a corrupted one
is set aside with a warning naming it) and replays the remaining epochs with the same compiled
programs and the saved rng, which gives the same final parameters as an uninterrupted run. The
JSON also holds the run's elapsed seconds, so a resumed run reports its whole training time.
"""

from __future__ import annotations

import json
import os
import shutil
import warnings
from typing import Any

import jax
import orbax.checkpoint as ocp

from qjax.errors import CheckpointError
from qjax.train.state import FitState

History = dict[str, list]


class RunCheckpoints:
    """The checkpoints of one run in ``directory``."""

    def __init__(self, directory: str | os.PathLike, fingerprint: dict[str, Any], resume: bool):
        self.fingerprint = json.loads(json.dumps(fingerprint))  # as it reads back from JSON
        self.directory = os.path.abspath(directory)
        self.manager = ocp.CheckpointManager(
            os.path.abspath(directory),
            options=ocp.CheckpointManagerOptions(max_to_keep=2, create=True),
            item_names=("state", "meta"),  # named up front: orbax < 0.7 needs it for Composite
        )
        if self.manager.latest_step() is not None and not resume:
            raise CheckpointError(
                f"checkpoint_dir {str(directory)!r} already holds checkpoints of a run; pass "
                "resume=True to continue it, or use an empty directory"
            )

    def restore(self, target: FitState) -> tuple[FitState, History, float] | None:
        """The newest readable checkpoint restored into ``target``'s structure and shardings
        (with its history and the run's elapsed seconds so far), or None without checkpoints.

        A checkpoint that cannot be read (truncated or corrupted files) is moved aside to
        ``corrupt-<step>`` with a warning naming it, and the next older one is tried.
        """
        steps = sorted(self.manager.all_steps(), reverse=True)
        abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, target)
        bad: list[str] = []
        for step in steps:
            try:
                restored = self.manager.restore(
                    step,
                    args=ocp.args.Composite(
                        state=ocp.args.StandardRestore(abstract), meta=ocp.args.JsonRestore()
                    ),
                )
                meta = restored.meta
                if not isinstance(meta, dict) or not {"fingerprint", "history"} <= set(meta):
                    raise ValueError("its metadata lacks the fingerprint or the history")
            except Exception as err:  # noqa: BLE001 - any unreadable checkpoint is skipped
                path = _broken_json(os.path.join(self.directory, str(step)))
                bad.append(f"{path} ({type(err).__name__}: {_first_line(err)})")
                self._set_aside(step)
                continue
            if bad:
                warnings.warn(
                    f"skipped unreadable checkpoint(s) {'; '.join(bad)}; resuming from the "
                    f"intact checkpoint of epoch {step + 1}",
                    stacklevel=3,
                )
            self._check_fingerprint(meta["fingerprint"])
            return restored.state, meta["history"], float(meta.get("elapsed_seconds", 0.0))
        if bad:
            raise CheckpointError(
                f"no checkpoint in {self.directory} can be read: {'; '.join(bad)}. They were "
                "moved aside (corrupt-<step>); run again to start over, or restore a backup"
            )
        return None

    def _check_fingerprint(self, saved: dict) -> None:
        if saved != self.fingerprint:
            changed = sorted(k for k in self.fingerprint if saved.get(k) != self.fingerprint[k])
            raise CheckpointError(
                f"cannot resume: the checkpoint was written with a different {', '.join(changed)}; "
                "use the original settings or a new checkpoint_dir"
            )

    def _set_aside(self, step: int) -> None:
        """Rename a broken step so that Orbax no longer lists it and the step can be rewritten."""
        source = os.path.join(self.directory, str(step))
        target = os.path.join(self.directory, f"corrupt-{step}")
        if os.path.exists(target):
            shutil.rmtree(target)
        os.replace(source, target)
        self.manager.reload()

    def save(self, epoch: int, state: FitState, history: History, elapsed_seconds: float) -> None:
        meta = {
            "fingerprint": self.fingerprint,
            # a snapshot: Orbax writes the JSON in a background thread, and the caller's lists grow
            # with the next epoch meanwhile (a resume then skipped an epoch it had not trained)
            "history": {name: list(values) for name, values in history.items()},
            "elapsed_seconds": float(elapsed_seconds),
        }
        self.manager.save(
            epoch,
            args=ocp.args.Composite(
                state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta)
            ),
        )

    def close(self) -> None:
        self.manager.wait_until_finished()
        self.manager.close()


def _broken_json(step_dir: str) -> str:
    """The first unparseable JSON metadata file of a checkpoint, else the checkpoint itself."""
    for root, _, files in sorted(os.walk(step_dir)):
        for name in sorted(files):
            if name not in ("metadata", "_CHECKPOINT_METADATA", "_METADATA"):
                continue
            path = os.path.join(root, name)
            try:
                with open(path, encoding="utf-8") as file:
                    json.load(file)
            except (OSError, ValueError):
                return path
    return step_dir


def _first_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return text[0][:200] if text else "unreadable"


def save_variables(path: str | os.PathLike, variables: Any) -> None:
    """Write a pytree of arrays (e.g. a module's variables) as an Orbax checkpoint directory at
    ``path``, replacing what is there (as a torch ``save`` replaces a file).

    One of several processes (``qjax train --distributed``) writes alone, without waiting for
    the others at Orbax's barriers."""
    options = {}
    if jax.process_count() > 1:
        alone = jax.process_index()
        options["multiprocessing_options"] = ocp.options.MultiprocessingOptions(
            primary_host=alone, active_processes={alone}
        )
    with ocp.StandardCheckpointer(**options) as checkpointer:
        checkpointer.save(os.path.abspath(path), jax.device_get(variables), force=True)


def load_variables(path: str | os.PathLike, like: Any = None) -> Any:
    """Read what :func:`save_variables` wrote; ``like`` (a pytree of arrays or shapes) fixes the
    structure, shapes and dtypes to restore into."""
    target = None if like is None else jax.tree.map(ocp.utils.to_shape_dtype_struct, like)
    with ocp.StandardCheckpointer() as checkpointer:
        return checkpointer.restore(os.path.abspath(path), target)
