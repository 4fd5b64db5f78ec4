"""Atomic safetensors writers (single file and HF-style shards) and an atomic output directory.

Crash safety: every output is written under a temporary sibling name
(``.<name>.<host>-<pid>-<hex>.tmp``) and renamed into place at the end, so a process killed at
any point (SIGKILL, OOM) leaves either no output or a complete one. Before the rename the
files and the temporary directory are fsynced, after it the parent directory: after a power
loss or a kernel crash too (on a file system that honours fsync: ext4, xfs, APFS; not
necessarily NFS) the output is absent or complete. What a killed writer leaves behind is
removed by the next writer of the same output on the same host (its pid no longer runs).
"""

import contextlib
import json
import os
import re
import shutil
import socket
import struct
import uuid
from typing import Callable, Iterator, Mapping

import numpy as np

from .dtypes import SAFETENSORS_CODES
from .fileio import byte_view, crash_point


def save_safetensors(tensors: Mapping[str, np.ndarray], path, metadata: dict[str, str] | None = None) -> None:
    """Write `tensors` to `path` in the safetensors format, atomically.

    The data is streamed tensor by tensor after the header. Tensors are laid out like the
    reference implementation (largest itemsize first, then by name) so every tensor is
    aligned to its itemsize; the header is space-padded to a multiple of 8 bytes.
    """
    specs = {name: (_check_tensor(name, arr), tuple(arr.shape)) for name, arr in tensors.items()}
    save_safetensors_streamed(specs, tensors.__getitem__, path, metadata)


def save_safetensors_streamed(specs: Mapping[str, tuple[np.dtype, tuple[int, ...]]], load: Callable[[str], np.ndarray],
                              path, metadata: dict[str, str] | None = None) -> None:
    """Write a safetensors file whose tensors are produced one at a time: ``specs`` gives
    every name's ``(dtype, shape)`` up front (the header), ``load(name)`` the array when it is
    its turn to be written, so at most one tensor is in memory. Atomic, like
    :func:`save_safetensors`; a loaded array whose dtype or shape differs from its spec is
    an error (nothing is left behind)."""
    specs = {name: (np.dtype(dtype), tuple(shape)) for name, (dtype, shape) in specs.items()}
    for name, (dtype, _) in specs.items():
        _check_name(name)
        if dtype.name not in SAFETENSORS_CODES:
            raise TypeError(f"tensor {name!r}: dtype {dtype} cannot be stored in safetensors")
    order = sorted(specs, key=lambda name: (-specs[name][0].itemsize, name))
    header = _header(specs, order, metadata)

    def write(f):
        f.write(header)
        for name in order:
            arr = load(name)
            if _check_tensor(name, arr) != specs[name][0] or tuple(arr.shape) != specs[name][1]:
                raise ValueError(f"tensor {name!r}: got {arr.dtype} {tuple(arr.shape)}, the header says "
                                 f"{specs[name][0]} {specs[name][1]}")
            f.write(byte_view(_little_endian(arr)))
            del arr
            crash_point("tensor-written")

    _write_atomic(os.fspath(path), write)


def save_safetensors_sharded(
    tensors: Mapping[str, np.ndarray],
    directory,
    max_shard_bytes: int,
    weights_name: str = "model.safetensors",
    metadata: dict[str, str] | None = None,
) -> None:
    """Write ``model-0000i-of-0000N.safetensors`` shards plus ``model.safetensors.index.json``.

    Tensors are assigned in name order; a shard is closed when the next tensor would push it
    past `max_shard_bytes` (a bigger tensor gets a shard of its own). Each file is written
    atomically; `metadata` goes into every shard's ``__metadata__``.
    """
    if not weights_name.endswith(".safetensors"):
        raise ValueError(f"weights_name must end with .safetensors, got {weights_name!r}")
    if max_shard_bytes <= 0:
        raise ValueError(f"max_shard_bytes must be positive, got {max_shard_bytes}")
    directory = os.fspath(directory)
    os.makedirs(directory, exist_ok=True)
    groups = _plan_shards(tensors, max_shard_bytes)
    stem = weights_name[: -len(".safetensors")]
    weight_map = {}
    for i, names in enumerate(groups, 1):
        shard_name = f"{stem}-{i:05d}-of-{len(groups):05d}.safetensors"
        save_safetensors({n: tensors[n] for n in names}, os.path.join(directory, shard_name), metadata)
        weight_map.update(dict.fromkeys(names, shard_name))
    index = {"metadata": {"total_size": sum(tensors[n].nbytes for n in tensors)}, "weight_map": weight_map}
    text = json.dumps(index, indent=2, sort_keys=True) + "\n"
    _write_atomic(os.path.join(directory, weights_name + ".index.json"), lambda f: f.write(text.encode()))


@contextlib.contextmanager
def atomic_directory(final_path) -> Iterator[str]:
    """Yield a temporary sibling directory that becomes `final_path` only if the block succeeds.

    Refuses (FileExistsError) when `final_path` exists and is not an empty directory. On failure
    the temporary directory, and any parent directories created for it, are removed.
    """
    final = os.path.abspath(os.fspath(final_path))
    _refuse_existing(final)
    parent = os.path.dirname(final)
    created = _first_missing_ancestor(parent)
    os.makedirs(parent, exist_ok=True)
    remove_stale_temporaries(final)
    tmp = _temporary_name(final)
    os.mkdir(tmp)
    try:
        yield tmp
        _fsync_tree(tmp)
        crash_point("dir-before-rename")
        _refuse_existing(final)
        os.replace(tmp, final)
        _fsync_dir(parent)
        crash_point("dir-after-rename")
    except BaseException:
        shutil.rmtree(created or tmp, ignore_errors=True)
        raise


def remove_stale_temporaries(final_path) -> list[str]:
    """Delete the temporary siblings of `final_path` that writers on this host which no longer
    run left behind (killed mid-write); returns their paths. Those of live processes, and of
    other hosts (a shared file system), are kept."""
    final = os.path.abspath(os.fspath(final_path))
    parent, name = os.path.split(final)
    pattern = re.compile(rf"\.{re.escape(name)}\.(?P<host>.+)-(?P<pid>\d+)-[0-9a-f]{{12}}\.tmp")
    host, removed = _host(), []
    try:
        entries = os.listdir(parent)
    except FileNotFoundError:
        return removed
    for entry in entries:
        m = pattern.fullmatch(entry)
        if m is None or m["host"] != host or _alive(int(m["pid"])):
            continue
        path = os.path.join(parent, entry)
        if os.path.isdir(path) and not os.path.islink(path):
            shutil.rmtree(path, ignore_errors=True)
        else:
            with contextlib.suppress(FileNotFoundError):
                os.remove(path)
        removed.append(path)
    return removed


def _host() -> str:
    return re.sub(r"[^A-Za-z0-9_.-]", "_", socket.gethostname()) or "host"


def _temporary_name(final: str) -> str:
    parent, name = os.path.split(final)
    return os.path.join(parent, f".{name}.{_host()}-{os.getpid()}-{uuid.uuid4().hex[:12]}.tmp")


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's live process
        return True
    return True


def _fsync_dir(path: str) -> None:
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_tree(root: str) -> None:
    """fsync every file under `root`, then every directory (deepest first)."""
    for directory, _, files in os.walk(root, topdown=False):
        for name in files:
            path = os.path.join(directory, name)
            if os.path.islink(path):
                continue
            fd = os.open(path, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        _fsync_dir(directory)


def write_bytes_atomically(path, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary sibling (fsynced, then renamed)."""
    _write_atomic(os.fspath(path), lambda f: f.write(data))


def _check_name(name) -> None:
    if not isinstance(name, str) or name == "__metadata__":
        raise TypeError(f"tensor names must be strings other than '__metadata__', got {name!r}")


def _check_tensor(name, arr) -> np.dtype:
    """Validate one entry of the mapping; return its dtype."""
    _check_name(name)
    if not isinstance(arr, np.ndarray):
        raise TypeError(f"tensor {name!r}: expected a numpy array, got {type(arr).__name__}")
    if arr.dtype.name not in SAFETENSORS_CODES:
        raise TypeError(f"tensor {name!r}: dtype {arr.dtype} cannot be stored in safetensors")
    return arr.dtype


def _header(specs: Mapping[str, tuple[np.dtype, tuple[int, ...]]], order: list[str], metadata: dict | None) -> bytes:
    """The 8-byte length prefix plus the space-padded JSON header (``specs``: name -> (dtype, shape))."""
    if metadata is not None and not all(isinstance(k, str) and isinstance(v, str) for k, v in metadata.items()):
        raise TypeError("safetensors metadata must map str to str")
    header = {"__metadata__": dict(metadata)} if metadata else {}
    offset = 0
    for name in order:
        dtype, shape = specs[name]
        nbytes = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
        header[name] = {"dtype": SAFETENSORS_CODES[dtype.name], "shape": list(shape),
                        "data_offsets": [offset, offset + nbytes]}
        offset += nbytes
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)
    return struct.pack("<Q", len(raw)) + raw


def _little_endian(arr: np.ndarray) -> np.ndarray:
    """C-contiguous little-endian version of `arr` (no copy when it already is one)."""
    arr = np.ascontiguousarray(arr)
    if arr.dtype.byteorder == ">":
        arr = arr.byteswap().view(arr.dtype.newbyteorder("<"))
    return arr


def _plan_shards(tensors: Mapping[str, np.ndarray], max_shard_bytes: int) -> list[list[str]]:
    """Split tensor names (in sorted order) into groups of at most `max_shard_bytes` each."""
    groups, size = [[]], 0
    for name in sorted(tensors):
        nbytes = tensors[name].nbytes
        if groups[-1] and size + nbytes > max_shard_bytes:
            groups.append([])
            size = 0
        groups[-1].append(name)
        size += nbytes
    return groups


def _write_atomic(path: str, write: Callable) -> None:
    """Call ``write(f)`` on a temporary sibling file, then rename it to `path`; clean up on failure."""
    path = os.path.abspath(path)
    remove_stale_temporaries(path)
    tmp = _temporary_name(path)
    try:
        with open(tmp, "xb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        crash_point("file-before-rename")
        os.replace(tmp, path)
        _fsync_dir(os.path.dirname(path))
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.remove(tmp)
        raise


def _refuse_existing(path: str) -> None:
    if os.path.lexists(path) and not (os.path.isdir(path) and not os.listdir(path)):
        raise FileExistsError(f"{path}: already exists and is not an empty directory; refusing to overwrite it")


def _first_missing_ancestor(path: str) -> str | None:
    """The outermost directory of `path` that does not exist yet (None if `path` exists)."""
    missing = None
    while not os.path.exists(path):
        missing, path = path, os.path.dirname(path)
    return missing
