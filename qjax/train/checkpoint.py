"""Resumable runs: an Orbax checkpoint of the whole :class:`FitState` after every evaluation.

Each checkpoint (step = evaluation index) holds the full state (params, batch stats, optimiser
and plateau state, rng, best variables, early-stopping counters) and, as JSON, the run's
history and a fingerprint of its setup. Orbax writes into a temporary directory and renames it
when complete, so a process killed at any moment (even ``kill -9`` during a save) leaves the
previous checkpoint intact. Resuming restores the latest complete checkpoint and replays the
remaining epochs with the same compiled programs and the saved rng, which gives the same final
parameters as an uninterrupted run.
"""

from __future__ import annotations

import json
import os
from typing import Any

import jax
import orbax.checkpoint as ocp

from qjax.train.state import FitState

History = dict[str, list]


class RunCheckpoints:
    """The checkpoints of one run in ``directory``."""

    def __init__(self, directory: str | os.PathLike, fingerprint: dict[str, Any], resume: bool):
        self.fingerprint = json.loads(json.dumps(fingerprint))  # as it reads back from JSON
        self.manager = ocp.CheckpointManager(
            os.path.abspath(directory),
            options=ocp.CheckpointManagerOptions(max_to_keep=2, create=True),
        )
        if self.manager.latest_step() is not None and not resume:
            raise ValueError(
                f"checkpoint_dir {str(directory)!r} already holds checkpoints of a run; pass "
                "resume=True to continue it, or use an empty directory"
            )

    def restore(self, target: FitState) -> tuple[FitState, History] | None:
        """The latest checkpoint restored into ``target``'s structure and shardings, or None."""
        step = self.manager.latest_step()
        if step is None:
            return None
        abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, target)
        restored = self.manager.restore(
            step,
            args=ocp.args.Composite(
                state=ocp.args.StandardRestore(abstract), meta=ocp.args.JsonRestore()
            ),
        )
        saved = restored.meta["fingerprint"]
        if saved != self.fingerprint:
            changed = sorted(k for k in self.fingerprint if saved.get(k) != self.fingerprint[k])
            raise ValueError(
                f"cannot resume: the checkpoint was written with a different {', '.join(changed)}; "
                "use the original settings or a new checkpoint_dir"
            )
        return restored.state, restored.meta["history"]

    def save(self, epoch: int, state: FitState, history: History) -> None:
        meta = {"fingerprint": self.fingerprint, "history": history}
        self.manager.save(
            epoch,
            args=ocp.args.Composite(
                state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta)
            ),
        )

    def close(self) -> None:
        self.manager.wait_until_finished()
        self.manager.close()
