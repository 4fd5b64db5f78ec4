"""Reader for one .safetensors file: the header is parsed on open, tensors are read on demand."""

import json
import math
import os
import struct
from typing import NamedTuple

import numpy as np

from .dtypes import SAFETENSORS_DTYPES, numpy_dtype
from .errors import CheckpointError, CorruptCheckpointError
from .fileio import byte_view, open_binary, read_exact

MAX_HEADER_BYTES = 100 * 1024 * 1024  # same limit as the reference implementation


class _Entry(NamedTuple):
    dtype: np.dtype
    shape: tuple
    start: int  # absolute file offset of the first byte
    nbytes: int


class SafetensorsFile:
    """One open .safetensors file (a shard of a Checkpoint)."""

    def __init__(self, path: str):
        self.path = path
        self._file = open_binary(path)
        self._map: np.memmap | None = None  # the whole file, mapped on the first view()
        try:
            self.metadata, self._entries = _parse_header(self._file, path)
        except BaseException:
            self._file.close()
            raise

    def keys(self) -> list[str]:
        return list(self._entries)

    def __contains__(self, key: str) -> bool:
        return key in self._entries

    def shape(self, key: str) -> tuple:
        return self._entries[key].shape

    def dtype(self, key: str) -> np.dtype:
        return self._entries[key].dtype

    def nbytes(self, key: str) -> int:
        return self._entries[key].nbytes

    def read(self, key: str) -> np.ndarray:
        """Read one tensor into a fresh array."""
        entry = self._entries[key]
        out = np.empty(entry.shape, entry.dtype)
        read_exact(self._file, entry.start, byte_view(out), self.path, f"tensor {key!r}")
        return out

    def view(self, key: str) -> np.ndarray:
        """A read-only array over the memory-mapped bytes of one tensor (nothing is read
        until it is indexed; pages are loaded as they are touched)."""
        entry = self._entries[key]
        if self._map is None:
            self._map = np.memmap(self._file, dtype=np.uint8, mode="r")
        return self._map[entry.start:entry.start + entry.nbytes].view(entry.dtype).reshape(entry.shape)

    def read_slice(self, key: str, index: tuple) -> np.ndarray:
        """Copy ``tensor[index]`` into a fresh C-contiguous array; only the slice's bytes are copied."""
        return np.array(self.view(key)[index], order="C")

    def close(self) -> None:
        self._map = None  # views handed out keep their own reference to the mapping
        self._file.close()


def _parse_header(f, path: str) -> tuple[dict, dict[str, _Entry]]:
    """Validate the header of an open safetensors file; return (metadata, entries)."""
    size = os.fstat(f.fileno()).st_size
    if size < 8:
        raise CorruptCheckpointError(f"{path}: file is {size} bytes, too small for a safetensors header")
    (header_len,) = struct.unpack("<Q", f.read(8))
    if header_len > size - 8:
        raise CorruptCheckpointError(
            f"{path}: header length {header_len} exceeds the {size - 8} bytes after it (truncated or not safetensors)"
        )
    if header_len > MAX_HEADER_BYTES:
        raise CorruptCheckpointError(f"{path}: header length {header_len} exceeds the {MAX_HEADER_BYTES}-byte limit")
    try:
        header = json.loads(f.read(header_len))
    except ValueError:
        raise CorruptCheckpointError(f"{path}: safetensors header is not valid JSON") from None
    if not isinstance(header, dict):
        raise CorruptCheckpointError(f"{path}: safetensors header is not a JSON object")
    metadata = header.pop("__metadata__", None) or {}
    if not isinstance(metadata, dict):
        raise CorruptCheckpointError(f"{path}: safetensors __metadata__ is not a JSON object")
    data_start = 8 + header_len
    entries = {name: _entry(path, name, spec, data_start, size) for name, spec in header.items()}
    return metadata, entries


def _entry(path: str, name: str, spec, data_start: int, file_size: int) -> _Entry:
    """Validate one header entry against the file size."""
    try:
        code, shape, (begin, end) = spec["dtype"], tuple(spec["shape"]), spec["data_offsets"]
    except (TypeError, KeyError, ValueError):
        raise CorruptCheckpointError(f"{path}: malformed header entry for tensor {name!r}") from None
    if not all(type(v) is int and v >= 0 for v in (*shape, begin, end)):
        raise CorruptCheckpointError(f"{path}: tensor {name!r} has a non-integer or negative shape or offset")
    if code not in SAFETENSORS_DTYPES:
        raise CheckpointError(f"{path}: tensor {name!r} has unsupported dtype {code!r}")
    dtype = numpy_dtype(SAFETENSORS_DTYPES[code])
    expected = math.prod(shape) * dtype.itemsize
    if end - begin != expected:
        raise CorruptCheckpointError(
            f"{path}: tensor {name!r} has data_offsets [{begin}, {end}] "
            f"but {code} shape {list(shape)} needs {expected} bytes"
        )
    if data_start + end > file_size:
        raise CorruptCheckpointError(
            f"{path}: truncated: tensor {name!r} ends at byte {data_start + end} but the file has {file_size} bytes"
        )
    return _Entry(dtype, shape, data_start + begin, expected)
