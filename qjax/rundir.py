"""Run directories: what ``qjax train --out DIR`` may use, resume, replace or must refuse.

qjax writes a marker file (:data:`MARKER`) into every run directory it creates. ``--overwrite``
replaces only a directory carrying that marker, and only once the new run's configuration and
data have been validated; the old run is moved aside and deleted when the new run has written
its first checkpoint (put back if the new run fails before). A directory qjax did not create is
never deleted or written into.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from qjax import run_config, runlock
from qjax.errors import RunDirError

MARKER = ".qjax-run"


@dataclasses.dataclass(frozen=True)
class Plan:
    """What to do with the output directory once the run has been validated."""

    out: Path
    action: str  # "create" | "reuse" (a qjax run without checkpoints) | "resume" | "replace"

    @property
    def resume(self) -> bool:
        return self.action == "resume"


def has_checkpoints(out: Path) -> bool:
    directory = out / "checkpoints"
    return directory.is_dir() and any(p.name.isdigit() for p in directory.iterdir())


def is_qjax_run(out: Path) -> bool:
    return (out / MARKER).is_file()


def plan(out: str | os.PathLike, cfg: Mapping[str, Any], overwrite: bool) -> Plan:
    """Decide (without touching anything) how ``out`` will hold a run of ``cfg``."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise RunDirError(
            f"--out {str(out)!r} is an existing file, not a directory; choose a "
            "directory path for the run"
        )
    if not out.exists():
        _check_creatable(out)
        return Plan(out, "create")
    _check_writable(out)
    entries = [p for p in out.iterdir() if p.name != runlock.INSIDE]  # a killed run's lock
    if not entries:
        return Plan(out, "create")
    saved = out / "config.yaml"
    marked = is_qjax_run(out)
    if not marked and (not saved.is_file() or _saved_config(saved) is None):
        raise RunDirError(
            f"--out {str(out)!r} is a non-empty directory that qjax did not create (it has no "
            f"{MARKER} marker); qjax never writes into or deletes it, even with --overwrite. "
            "Choose a new or empty directory"
        )
    if overwrite:
        if not marked:
            raise RunDirError(
                f"--overwrite refuses to delete {str(out)!r}: it lacks qjax's {MARKER} marker "
                "(an older qjax run or someone else's files); delete it yourself or use a new --out"
            )
        return Plan(out, "replace")
    if not has_checkpoints(out):
        return Plan(out, "reuse")  # a run that stopped before its first checkpoint
    previous = _saved_config(saved)
    if previous is None:
        raise RunDirError(
            f"{saved} cannot be read, so qjax cannot tell whether the checkpoints beside it "
            "belong to this configuration; pass --overwrite to replace the run, or another --out"
        )
    if previous != run_config.validate(cfg):
        raise RunDirError(
            f"{out} holds a run of a different configuration; choose another --out directory "
            "or pass --overwrite to discard it"
        )
    return Plan(out, "resume")


def _saved_config(path: Path) -> dict | None:
    try:
        return run_config.validate(run_config.parse_yaml(path.read_text()))
    except (OSError, ValueError, run_config.yaml.YAMLError):
        return None  # unreadable: a different configuration as far as resuming goes


def prepare(plan: Plan, cfg: Mapping[str, Any]) -> None:
    """Carry out ``plan``: replace a marked run, create the directory, write marker and config."""
    out = plan.out
    try:
        if plan.action == "replace":
            if not is_qjax_run(out):  # checked again: nothing else is ever deleted
                raise RunDirError(f"refusing to delete {out}: it has no {MARKER} marker")
            backup = _backup_path(out)
            if backup.exists():
                shutil.rmtree(backup)
            os.replace(out, backup)  # deleted by settle() once the new run has a checkpoint
        elif plan.action == "reuse":
            shutil.rmtree(out / "checkpoints", ignore_errors=True)
        out.mkdir(parents=True, exist_ok=True)
        (out / MARKER).write_text(json.dumps({"created_by": "qjax train"}) + "\n")
        run_config.dump(cfg, out / "config.yaml")
    except OSError as err:
        settle(plan)  # put a replaced run back
        raise RunDirError(
            f"cannot write the run directory {str(out)!r}: {err.strerror or err}; "
            "choose a writable --out"
        ) from err


def _check_writable(directory: Path) -> None:
    if not os.access(directory, os.W_OK | os.X_OK):
        raise RunDirError(f"--out {str(directory)!r} is not writable; choose a writable directory")


def _check_creatable(out: Path) -> None:
    parent = out.parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if not parent.is_dir():
        raise RunDirError(f"cannot create --out {str(out)!r}: {str(parent)!r} is a file")
    _check_writable(parent)


def _backup_path(out: Path) -> Path:
    return out.parent / f".{out.name}.replaced-by-qjax"


def settle(plan: Plan) -> None:
    """After the run ended (or failed): the run that ``--overwrite`` replaced is deleted once
    the new run has a checkpoint, and put back if the new one failed before its first."""
    backup = _backup_path(plan.out)
    if plan.action != "replace" or not backup.exists():
        return
    if has_checkpoints(plan.out):
        shutil.rmtree(backup, ignore_errors=True)
    else:
        shutil.rmtree(plan.out, ignore_errors=True)
        os.replace(backup, plan.out)
