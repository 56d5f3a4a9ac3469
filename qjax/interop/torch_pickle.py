"""Read PyTorch zip-format checkpoints (``torch.save`` >= 1.6) into NumPy, without torch.

The archive holds ``<name>/data.pkl`` (a pickle whose tensors are persistent references to
storages) and one raw little-endian blob per storage under ``<name>/data/<key>``. A restricted
unpickler resolves only the handful of globals a state dict needs, so loading never executes
arbitrary code, and the device a tensor was saved on (e.g. ``cuda:0``) is irrelevant.
"""

from __future__ import annotations

import collections
import pickle
import struct
import zipfile
import zlib
from os import PathLike
from typing import BinaryIO

import numpy as np

from qjax.errors import CheckpointError

_STORAGE_DTYPES = {
    "FloatStorage": np.float32,
    "DoubleStorage": np.float64,
    "HalfStorage": np.float16,
    "BFloat16Storage": None,  # widened to float32 below: NumPy has no bfloat16
    "LongStorage": np.int64,
    "IntStorage": np.int32,
    "ShortStorage": np.int16,
    "CharStorage": np.int8,
    "ByteStorage": np.uint8,
    "BoolStorage": np.bool_,
}


class _StorageType:
    def __init__(self, name: str):
        if name not in _STORAGE_DTYPES:
            raise CheckpointError(f"unsupported torch storage type {name!r} in checkpoint")
        self.name = name


def _rebuild_tensor(storage, offset, size, stride, *_unused):
    if not size:
        return storage[offset].copy()
    itemsize = storage.itemsize
    view = np.lib.stride_tricks.as_strided(
        storage[offset:], shape=tuple(size), strides=tuple(s * itemsize for s in stride)
    )
    return np.array(view)


def _rebuild_parameter(data, *_unused):
    return data


class _StateDictUnpickler(pickle.Unpickler):
    def __init__(self, file, archive: zipfile.ZipFile, prefix: str):
        super().__init__(file)
        self._archive = archive
        self._prefix = prefix
        self._storages: dict[str, np.ndarray] = {}

    def find_class(self, module, name):
        if module == "collections" and name == "OrderedDict":
            return collections.OrderedDict
        if module == "torch._utils" and name == "_rebuild_tensor_v2":
            return _rebuild_tensor
        if module == "torch._utils" and name == "_rebuild_parameter":
            return _rebuild_parameter
        if module == "torch" and name.endswith("Storage"):
            return _StorageType(name)
        if module == "torch" and name in (
            "float32",
            "float64",
            "float16",
            "int64",
            "int32",
            "bool",
        ):
            return name
        raise pickle.UnpicklingError(
            f"checkpoint references {module}.{name}, which a plain state_dict does not contain; "
            "only tensor state dicts can be read without torch"
        )

    def persistent_load(self, pid):
        kind, storage_type, key, _location, numel = pid[:5]
        if kind != "storage":
            raise pickle.UnpicklingError(f"unexpected persistent id {kind!r}")
        if key not in self._storages:
            raw = self._archive.read(f"{self._prefix}/data/{key}")
            stype = storage_type.name if isinstance(storage_type, _StorageType) else storage_type
            if stype == "BFloat16Storage":
                bits = np.frombuffer(raw, dtype="<u2").astype(np.uint32) << 16
                arr = bits.view(np.float32)
            else:
                arr = np.frombuffer(raw, dtype=np.dtype(_STORAGE_DTYPES[stype]).newbyteorder("<"))
            self._storages[key] = arr[:numel]
        return self._storages[key]


def read_torch_state_dict(path: str | PathLike | BinaryIO) -> dict[str, np.ndarray]:
    """Load a torch ``state_dict`` saved with ``torch.save`` as ``{name: numpy array}``.

    Works for tensors saved on any device (e.g. Qlib's pretrained ``cuda:0`` pickles) and does
    not import torch. Legacy (pre-1.6, non-zip) checkpoints, truncated and corrupted files raise
    :class:`~qjax.errors.CheckpointError` (a ``ValueError``) saying which it is.
    """
    try:
        archive = zipfile.ZipFile(path)
    # a damaged zip directory can also fail to decode names or sizes
    except (zipfile.BadZipFile, ValueError, EOFError, struct.error, NotImplementedError) as err:
        if _starts_like_zip(path):
            raise CheckpointError(
                f"{path!r} is a truncated or corrupted torch checkpoint (its zip directory is "
                "unreadable); copy or download it again"
            ) from err
        raise CheckpointError(
            f"{path!r} is not a torch zip checkpoint; re-save it with torch>=1.6 "
            "(torch.save(state_dict, f)) or load it with torch"
        ) from err
    try:
        with archive:
            obj = _load_state_dict(archive, path)
    except (
        zipfile.BadZipFile,
        zlib.error,
        EOFError,
        OSError,
        KeyError,
        IndexError,
        RuntimeError,
        NotImplementedError,
        struct.error,
        ValueError,
        pickle.UnpicklingError,
    ) as err:
        if isinstance(err, CheckpointError):
            raise
        raise CheckpointError(
            f"{path!r} is a corrupted torch checkpoint ({type(err).__name__}: {err}); copy or "
            "download it again"
        ) from err
    if not isinstance(obj, dict):
        raise CheckpointError(f"{path!r} holds a {type(obj).__name__}, not a state_dict")
    return {str(k): np.asarray(v) for k, v in obj.items()}


def _load_state_dict(archive: zipfile.ZipFile, path) -> object:
    pkl_names = [n for n in archive.namelist() if n.endswith("/data.pkl")]
    if not pkl_names:
        raise CheckpointError(f"{path!r} has no data.pkl: not a torch checkpoint")
    prefix = pkl_names[0][: -len("/data.pkl")]
    with archive.open(pkl_names[0]) as f:
        try:
            return _StateDictUnpickler(f, archive, prefix).load()
        except pickle.UnpicklingError as err:
            if "which a plain state_dict does not contain" in str(err):
                raise CheckpointError(f"{path!r}: {err}") from err
            raise


def _starts_like_zip(path) -> bool:
    """A zip's first bytes are a local file header; legacy torch pickles start otherwise."""
    try:
        if hasattr(path, "read"):
            position = path.tell()
            path.seek(0)
            head = path.read(4)
            path.seek(position)
        else:
            with open(path, "rb") as file:
                head = file.read(4)
    except (OSError, ValueError):
        return False
    return head == b"PK\x03\x04"
