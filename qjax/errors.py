"""The errors qjax raises on purpose: bad input, or a run that cannot go on.

Every one derives from :class:`QjaxError`, and its message names the problem and the fix, so
the command line prints it as one line instead of a traceback. Most also derive from the
built-in error a Python user would expect (``ValueError`` for a bad value, ``TypeError`` for an
unknown keyword), so ``except ValueError`` keeps working.
"""

from __future__ import annotations


class QjaxError(Exception):
    """Base class: something the user can fix; the message says what."""


class ConfigError(QjaxError, ValueError):
    """A run configuration or model keyword that cannot be used."""


class UnknownKeywordError(ConfigError, TypeError):
    """An unknown keyword argument (a typo, usually); the message suggests the closest name."""


class DataError(QjaxError, ValueError):
    """Input data that cannot be trusted (missing columns, NaN/inf where values are needed...)."""


class RunDirError(QjaxError):
    """An output directory that cannot hold this run (a file, read-only, someone else's)."""


class CheckpointError(QjaxError, ValueError):
    """A checkpoint that cannot be read (truncated, corrupted, of a different run)."""


class SavedRunError(QjaxError, ValueError):
    """A run directory that cannot be loaded to predict: not a run, unfinished, written by an
    incompatible qjax, or damaged (the message names the file)."""


class DistributedError(QjaxError, ValueError):
    """Several processes that cannot train together: missing or invalid cluster settings, or
    a run setting the multi-process engine does not support (the message names the fix)."""


class TrainingDiverged(QjaxError, FloatingPointError):
    """The training loss became NaN or infinite; the run stopped before saving that epoch."""

    def __init__(self, message: str, epoch: int):
        super().__init__(message)
        self.epoch = epoch  # 1-based epoch whose loss was not finite


class Interrupted(KeyboardInterrupt):
    """Ctrl-C during training; ``epoch`` (1-based) is the epoch that was running."""

    def __init__(self, epoch: int, resumable: bool):
        super().__init__(epoch)
        self.epoch = epoch
        self.resumable = resumable
