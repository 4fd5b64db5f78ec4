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
MAX_NDIM = 32  # numpy's limit is 64; no checkpoint tensor comes near either
MAX_ELEMENTS = 2**62  # product of the non-zero dimensions: numpy refuses arrays beyond this


def shape_error(shape: tuple) -> str | None:
    """Why numpy cannot make an array of this shape of non-negative ints, or None."""
    if len(shape) > MAX_NDIM:
        return f"has {len(shape)} dimensions (at most {MAX_NDIM})"
    n = 1
    for d in shape:
        n *= max(d, 1)
        if n >= MAX_ELEMENTS:
            return f"has an impossible shape {list(shape) if len(shape) <= 8 else '[...]'}"
    return None


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
        header = json.loads(f.read(header_len), object_pairs_hook=_unique_members)
    except _DuplicateKey as exc:
        raise CorruptCheckpointError(f"{path}: safetensors header has the key {_name(exc.args[0])} twice") from None
    except (ValueError, RecursionError):
        raise CorruptCheckpointError(f"{path}: safetensors header is not valid JSON") from None
    if not isinstance(header, dict):
        raise CorruptCheckpointError(f"{path}: safetensors header is not a JSON object")
    metadata = header.pop("__metadata__", None)
    metadata = {} if metadata is None else metadata
    if not isinstance(metadata, dict) or not all(isinstance(v, str) for v in metadata.values()):
        raise CorruptCheckpointError(f"{path}: safetensors __metadata__ is not a JSON object of strings")
    data_start = 8 + header_len
    entries = {name: _entry(path, name, spec, data_start, size) for name, spec in header.items()}
    _check_layout(path, entries, data_start, size)
    return metadata, entries


class _DuplicateKey(ValueError):
    pass


def _unique_members(pairs: list) -> dict:
    """json object hook: a key given twice is ambiguous (which tensor is meant?), so refused."""
    out = dict(pairs)
    if len(out) != len(pairs):
        seen = set()
        raise _DuplicateKey(next(k for k, _ in pairs if k in seen or seen.add(k)))
    return out


def _name(name: str, limit: int = 80) -> str:
    """A tensor name (or any header string) for an error message: quoted, at most `limit` characters."""
    text = repr(name)
    return text if len(text) <= limit else text[: limit - 4] + "...'"


def _check_layout(path: str, entries: dict[str, _Entry], data_start: int, file_size: int) -> None:
    """The reference implementation's rule: the tensors tile the data area exactly, in
    offset order, with no gap, overlap or trailing bytes."""
    end = data_start
    for name, entry in sorted(entries.items(), key=lambda item: (item[1].start, item[1].nbytes)):
        if entry.start != end:
            raise CorruptCheckpointError(
                f"{path}: tensor {_name(name)} starts at data offset {entry.start - data_start}, expected {end - data_start} "
                "(tensors must tile the data area without gaps or overlaps)"
            )
        end += entry.nbytes
    if end != file_size:
        raise CorruptCheckpointError(
            f"{path}: {file_size - end} bytes after the last tensor (the header does not cover the file)"
        )


def _entry(path: str, name: str, spec, data_start: int, file_size: int) -> _Entry:
    """Validate one header entry against the file size."""
    label = _name(name)
    if not isinstance(spec, dict) or set(spec) != {"dtype", "shape", "data_offsets"}:
        raise CorruptCheckpointError(
            f"{path}: malformed header entry for tensor {label} (needs exactly dtype, shape, data_offsets)")
    code, shape, offsets = spec["dtype"], spec["shape"], spec["data_offsets"]
    if not isinstance(shape, list) or not isinstance(offsets, list) or len(offsets) != 2:
        raise CorruptCheckpointError(f"{path}: malformed shape or data_offsets for tensor {label}")
    shape, (begin, end) = tuple(shape), offsets
    if not all(type(v) is int and v >= 0 for v in (*shape, begin, end)):
        raise CorruptCheckpointError(f"{path}: tensor {label} has a non-integer or negative shape or offset")
    problem = shape_error(shape)
    if problem:
        raise CorruptCheckpointError(f"{path}: tensor {label} {problem}")
    if not isinstance(code, str) or code not in SAFETENSORS_DTYPES:
        raise CheckpointError(f"{path}: tensor {label} has unsupported dtype {_name(code, 24)}")
    dtype = numpy_dtype(SAFETENSORS_DTYPES[code])
    expected = math.prod(shape) * dtype.itemsize
    if end - begin != expected:
        raise CorruptCheckpointError(
            f"{path}: tensor {label} has data_offsets [{begin}, {end}] "
            f"but {code} shape {_name(list(shape), 40)} needs {expected} bytes"
        )
    if data_start + end > file_size:
        raise CorruptCheckpointError(
            f"{path}: truncated: tensor {label} ends at byte {data_start + end} but the file has {file_size} bytes"
        )
    return _Entry(dtype, shape, data_start + begin, expected)
