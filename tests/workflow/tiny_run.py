"""The `--set` overrides that shrink a shipped config to a run of a few seconds on generated
data (260 days from 2015-01-05: train Jan-Aug, valid Sep-Oct, test Nov-Dec 2015)."""

from __future__ import annotations

from pathlib import Path

REPO = Path(__file__).resolve().parents[2]

TINY = {
    "data.n_instruments": "40",
    "data.n_days": "260",
    "handler.fit_end_time": "2015-08-31",
    "dataset.segments.train": "[2015-01-05, 2015-08-31]",
    "dataset.segments.valid": "[2015-09-01, 2015-10-30]",
    "dataset.segments.test": "[2015-11-02, 2015-12-31]",
    "model.kwargs.hidden_size": "16",
    "model.kwargs.batch_size": "256",
}


def overrides(**changes: object) -> list[str]:
    """``key=value`` items of :data:`TINY` with ``changes`` (keys with ``__`` for ``.``)."""
    items = dict(TINY)
    items.update({key.replace("__", "."): str(value) for key, value in changes.items()})
    return [f"{key}={value}" for key, value in items.items()]


def set_flags(**changes: object) -> list[str]:
    """The same as ``--set key=value`` command-line arguments."""
    return sets(*overrides(**changes))


def sets(*items: str) -> list[str]:
    """``--set`` before each ``key=value`` item."""
    return [arg for item in items for arg in ("--set", item)]


def train_argv(config: object, out: object, *extra: str, **changes: object) -> list[str]:
    """``qjax train CONFIG --out OUT --quiet``, shrunk by :data:`TINY` with ``changes``, then
    ``extra`` (later ``--set`` items win)."""
    return ["train", str(config), "--out", str(out), "--quiet", *set_flags(**changes), *extra]
