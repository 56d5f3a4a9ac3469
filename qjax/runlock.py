"""One qjax process per output directory: two runs writing one ``--out`` would interleave their
checkpoints and outputs, so the second refuses at once, naming the first.

The lock is an OS file lock (``flock``) on a file beside the directory (``.NAME.qjax-lock`` in
its parent, so the run directory itself holds only the run; inside it when the parent is not
writable). The OS releases it when the process ends, however it ends: a run killed with
``kill -9`` leaves the file behind but not the lock, and the rerun resumes. The file records
the holder's pid and host for the message; it is deleted when the run ends normally.
"""

from __future__ import annotations

import contextlib
import datetime
import errno
import json
import os
import socket
from collections.abc import Iterator
from pathlib import Path

from qjax.errors import RunDirError

try:
    import fcntl
except ImportError:  # pragma: no cover (Windows): filelock's lock, without the holder's name
    fcntl = None

SUFFIX = ".qjax-lock"
INSIDE = SUFFIX  # the lock file's name inside a directory whose parent is not writable


def lock_path(out: str | os.PathLike) -> Path:
    """Where the lock of ``out`` lives (the same file for every spelling of the path)."""
    out = Path(os.path.abspath(out))
    if out.is_dir() and not os.access(out.parent, os.W_OK | os.X_OK):
        return out / INSIDE
    return out.parent / f".{out.name}{SUFFIX}"


@contextlib.contextmanager
def exclusive(out: str | os.PathLike, command: str = "qjax train") -> Iterator[None]:
    """Hold ``out``'s lock while the block runs; :class:`RunDirError` at once if another process
    holds it."""
    path = lock_path(out)
    if fcntl is None:  # pragma: no cover
        with _filelock(path, out):
            yield
        return
    created = _missing_directories(path.parent)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = _acquire(path, out, command)
    except OSError as err:
        _remove_empty(created)
        raise RunDirError(
            f"cannot create the lock file {str(path)!r} of --out {str(out)!r}: "
            f"{err.strerror or err}; choose a writable --out"
        ) from err
    try:
        yield
    finally:
        with contextlib.suppress(OSError):
            path.unlink()  # while still locked: a process that opened it re-checks the inode
        os.close(fd)  # closing releases the lock
        _remove_empty(created)  # a run that failed before writing leaves no parent behind


def _missing_directories(directory: Path) -> list[Path]:
    """``directory`` and its ancestors that do not exist yet, deepest first."""
    missing = []
    while not directory.exists() and directory != directory.parent:
        missing.append(directory)
        directory = directory.parent
    return missing


def _remove_empty(directories: list[Path]) -> None:
    for directory in directories:  # deepest first; one holding anything stays, with its parents
        try:
            directory.rmdir()
        except OSError:
            return


def _acquire(path: Path, out, command: str) -> int:
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as err:
            holder = _read(fd)
            os.close(fd)
            if err.errno in (errno.EAGAIN, errno.EWOULDBLOCK, errno.EACCES):
                raise RunDirError(busy_message(out, holder)) from None
            raise
        # The previous holder may have deleted the file between our open and our lock; then we
        # locked a file nobody else will see, so try again on the current one.
        try:
            same = os.path.samestat(os.fstat(fd), os.stat(path))
        except FileNotFoundError:
            same = False
        if same:
            break
        os.close(fd)
    os.ftruncate(fd, 0)
    os.write(fd, json.dumps(holder_record(command)).encode())
    return fd


def holder_record(command: str) -> dict:
    return {
        "pid": os.getpid(),
        "host": socket.gethostname(),
        "command": command,
        "started": datetime.datetime.now().isoformat(timespec="seconds"),
    }


def _read(fd: int) -> dict:
    try:
        os.lseek(fd, 0, os.SEEK_SET)
        return json.loads(os.read(fd, 4096).decode() or "{}")
    except (OSError, ValueError):
        return {}  # the holder has not written its record yet


def busy_message(out, holder: dict) -> str:
    who = "another qjax process"
    if holder.get("pid"):
        who = (
            f"{holder.get('command', 'qjax')} (pid {holder['pid']} on host "
            f"{holder.get('host', '?')}, started {holder.get('started', '?')})"
        )
    return (
        f"--out {str(out)!r} is in use by {who}; two runs in one directory would mix their "
        "checkpoints. Wait for it to finish, or stop it and run the same command again "
        "(it resumes from its last checkpoint), or choose another --out"
    )


@contextlib.contextmanager
def _filelock(path: Path, out) -> Iterator[None]:  # pragma: no cover (no fcntl)
    import filelock

    lock = filelock.FileLock(str(path), timeout=0)
    try:
        lock.acquire()
    except filelock.Timeout:
        raise RunDirError(busy_message(out, {})) from None
    try:
        yield
    finally:
        lock.release()
