"""Torch-free reader for PyTorch zip checkpoints (``torch.save`` with torch >= 1.6).

The archive holds ``<archive>/data.pkl`` (the pickled object) and one ``<archive>/data/<key>``
entry per storage. ``data.pkl`` is unpickled with an allow-list of globals whose stand-ins
only record where each tensor lives; tensor bytes are read later, one tensor at a time.

Integrity: every zip entry's CRC-32 (from the central directory) is checked as it is read,
with no second pass over the file. The small entries (``data.pkl``, ``byteorder``,
``version``, ...) are verified on open. A storage entry is verified the first time a tensor
on it is read: the whole entry is streamed once, ``zlib.crc32`` updated chunk by chunk; the
bytes of the tensor's view go to the output, those outside it (other views of a shared
storage) are checksummed and dropped. Later reads of an already-verified storage read only
their view. A storage no tensor is read from is never read, so never checked.
"""

import collections
import io
import math
import pickle
import pickletools
import struct
import zipfile
import zlib
from contextlib import nullcontext
from typing import NamedTuple

import numpy as np

from .dtypes import TORCH_DTYPES, TORCH_STORAGE_DTYPES, numpy_dtype
from .errors import CheckpointError, CorruptCheckpointError, UnsafePickleError
from .fileio import byte_view, open_binary, read_exact
from .safetensors_io import shape_error

_LOCAL_HEADER = struct.Struct("<4s22xHH")  # zip local file header: signature ... name length, extra length
_CHUNK = 1 << 20  # bytes read (and checksummed) at a time
# What zipfile raises on a corrupt archive: bad data, unknown compression, "encrypted" flags...
_ZIP_ERRORS = (zipfile.BadZipFile, zlib.error, EOFError, OSError, NotImplementedError, RuntimeError,
               ValueError, OverflowError, struct.error)


class _DtypeTag(NamedTuple):
    """Stand-in for a torch storage class (``torch.FloatStorage``) or dtype (``torch.uint16``)."""

    dtype_name: str


class _Storage(NamedTuple):
    key: str
    dtype_name: str
    nbytes: int


class _TensorRef(NamedTuple):
    """Where a tensor's elements live: a strided view (in elements) of one storage entry."""

    storage: str
    dtype: np.dtype
    offset: int
    shape: tuple
    stride: tuple


def _rebuild_tensor(storage, storage_offset, size, stride):
    """``torch._utils._rebuild_tensor``: a typed storage viewed with offset/size/stride."""
    return _tensor_ref(storage, storage_offset, size, stride, getattr(storage, "dtype_name", None))


def _rebuild_tensor_v2(storage, storage_offset, size, stride, requires_grad, backward_hooks, metadata=None):
    """``torch._utils._rebuild_tensor_v2``; gradient flags and hooks are ignored."""
    _refuse_metadata(metadata)
    return _rebuild_tensor(storage, storage_offset, size, stride)


def _rebuild_tensor_v3(storage, storage_offset, size, stride, requires_grad, backward_hooks, dtype, metadata=None):
    """``torch._utils._rebuild_tensor_v3``: an untyped (byte) storage plus a dtype (uint16, float8...)."""
    _refuse_metadata(metadata)
    return _tensor_ref(storage, storage_offset, size, stride, getattr(dtype, "dtype_name", None))


def _rebuild_parameter(data, requires_grad, backward_hooks):
    """``torch._utils._rebuild_parameter``: a Parameter is just its tensor here."""
    return data


def _rebuild_parameter_with_state(data, requires_grad, backward_hooks, state):
    """``torch._utils._rebuild_parameter_with_state``: the Python attributes in `state` are dropped."""
    return data


def _refuse_metadata(metadata):
    if metadata:
        raise ValueError(f"tensors with metadata {_short(metadata)} (conj/neg bits) are not supported")


def _tensor_ref(storage, offset, size, stride, dtype_name) -> _TensorRef:
    """Validate a view of `storage` and record it without reading any data."""
    shape, strides = _int_tuple(size), _int_tuple(stride)
    if not isinstance(storage, _Storage) or dtype_name is None or shape is None or strides is None:
        raise ValueError("malformed tensor record")
    if len(shape) != len(strides):
        raise ValueError(f"tensor record has shape {_short(shape)} but stride {_short(strides)}")
    problem = shape_error(shape)
    if problem:
        raise ValueError(f"tensor record {problem}")
    if type(offset) is not int or offset < 0:
        raise ValueError(f"bad storage offset {_short(offset)} for storage data/{storage.key}")
    dtype = numpy_dtype(dtype_name)
    if math.prod(shape) and (offset + _span(shape, strides)) * dtype.itemsize > storage.nbytes:
        raise ValueError(
            f"tensor view (offset {offset}, shape {shape}, stride {strides}) "
            f"reaches past the end of storage data/{storage.key}"
        )
    return _TensorRef(storage.key, dtype, offset, shape, strides)


_ALLOWED = {
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("torch._utils", "_rebuild_tensor"): _rebuild_tensor,
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor_v2,
    ("torch._utils", "_rebuild_tensor_v3"): _rebuild_tensor_v3,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
    ("torch._utils", "_rebuild_parameter_with_state"): _rebuild_parameter_with_state,
    ("torch", "UntypedStorage"): _DtypeTag("uint8"),
    ("torch.storage", "UntypedStorage"): _DtypeTag("uint8"),
    **{("torch", name): _DtypeTag(dtype_name) for name, dtype_name in TORCH_STORAGE_DTYPES.items()},
    **{("torch", name): _DtypeTag(name) for name in TORCH_DTYPES},
}
ALLOWED_GLOBALS = frozenset(f"{module}.{name}" for module, name in _ALLOWED)


class _SafeUnpickler(pickle.Unpickler):
    """Unpickler that resolves only the allow-listed globals, to stand-ins that read no data."""

    def __init__(self, data: bytes, path: str, storage_sizes: dict[str, int]):
        super().__init__(io.BytesIO(data), encoding="utf-8")
        self._path = path
        self._storage_sizes = storage_sizes

    def find_class(self, module, name):
        try:
            return _ALLOWED[module, name]
        except KeyError:
            raise UnsafePickleError(
                f"refusing to unpickle global '{module}.{name}' from {self._path}: "
                "only tensor-rebuild globals are allowed"
            ) from None

    def persistent_load(self, pid):
        """Accept only ``('storage', storage_type, key, location, numel)`` records of existing entries."""
        if not (isinstance(pid, tuple) and len(pid) == 5 and pid[0] == "storage"):
            raise ValueError(f"unexpected persistent id {_short(pid)}")
        _, storage_type, key, _location, numel = pid
        if not isinstance(storage_type, _DtypeTag) or not isinstance(key, str) or type(numel) is not int:
            raise ValueError(f"malformed storage record {_short(pid)}")
        nbytes = numel * numpy_dtype(storage_type.dtype_name).itemsize
        stored = self._storage_sizes.get(key)
        if stored is None:
            raise ValueError(f"storage entry data/{key} is missing from the archive")
        if stored != nbytes:
            raise ValueError(f"storage data/{key} has {stored} bytes, expected {nbytes}")
        return _Storage(key, storage_type.dtype_name, nbytes)


class TorchZipFile:
    """One open PyTorch zip checkpoint (a shard of a Checkpoint)."""

    def __init__(self, path: str):
        self.path = path
        self.metadata: dict = {}  # zip checkpoints carry no string metadata
        self._file = open_binary(path)
        self._data_offsets: dict[str, int] = {}
        self._verified: set[str] = set()  # storage keys whose whole entry passed its CRC-32
        try:
            self._zip = _open_zip(self._file, path)
            self._prefix = _archive_prefix(self._zip, path)
            self._big_endian = _is_big_endian(self._zip, self._prefix, path)
            self._refs = self._load_refs()
            self._verify_small_entries()
        except BaseException:
            self._file.close()
            raise

    def keys(self) -> list[str]:
        return list(self._refs)

    def __contains__(self, key: str) -> bool:
        return key in self._refs

    def shape(self, key: str) -> tuple:
        return self._refs[key].shape

    def dtype(self, key: str) -> np.dtype:
        return self._refs[key].dtype

    def nbytes(self, key: str) -> int:
        ref = self._refs[key]
        return math.prod(ref.shape) * ref.dtype.itemsize

    def storage_of(self, key: str) -> str:
        """The storage entry (``data/<key>``) tensor `key` is a view of."""
        return self._refs[key].storage

    def storage_nbytes(self, key: str) -> int:
        """Size in bytes of the whole storage tensor `key` is a view of."""
        return self._storage_sizes[self._refs[key].storage]

    def read(self, key: str) -> np.ndarray:
        """Read one tensor into a fresh C-contiguous array. The first read from a storage
        streams its whole zip entry and checks its CRC-32 (see the module docstring); later
        reads from it read only the bytes their view spans."""
        ref = self._refs[key]
        itemsize = ref.dtype.itemsize
        if not math.prod(ref.shape):
            return np.empty(ref.shape, ref.dtype)
        if _is_c_contiguous(ref.shape, ref.stride):
            out = np.empty(ref.shape, ref.dtype)
            self._read_storage(ref.storage, ref.offset * itemsize, out, key)
            return out
        buf = np.empty(_span(ref.shape, ref.stride), ref.dtype)
        self._read_storage(ref.storage, ref.offset * itemsize, buf, key)
        view = np.lib.stride_tricks.as_strided(buf, ref.shape, [s * itemsize for s in ref.stride], writeable=False)
        return np.array(view, order="C")

    def close(self) -> None:
        self._zip.close()
        self._file.close()

    def _load_refs(self) -> dict[str, _TensorRef]:
        """Unpickle data.pkl and keep the top-level tensors."""
        self._storage_sizes = sizes = {
            info.filename[len(self._prefix) + 5 :]: info.file_size
            for info in self._zip.infolist()
            if info.filename.startswith(self._prefix + "data/")
        }
        data = self._read_entry(self._prefix + "data.pkl")
        try:
            _check_memo_indices(data)
            obj = _SafeUnpickler(data, self.path, sizes).load()
        except (CheckpointError, ImportError):
            raise
        except Exception as exc:
            raise CorruptCheckpointError(f"{self.path}: cannot unpickle data.pkl: {_short(exc)}") from exc
        if not isinstance(obj, dict):
            raise CorruptCheckpointError(f"{self.path}: expected a dict of tensors, found {type(obj).__name__}")
        refs = {k: v for k, v in obj.items() if isinstance(k, str) and isinstance(v, _TensorRef)}
        if not refs:
            names = ", ".join(map(str, list(obj)[:5]))
            raise CorruptCheckpointError(f"{self.path}: no tensors at the top level of the saved dict (keys: {names})")
        return refs

    def _read_entry(self, name: str) -> bytes:
        try:
            return self._zip.read(name)
        except KeyError:
            raise CorruptCheckpointError(f"{self.path}: {name} is missing") from None
        except _ZIP_ERRORS as exc:
            raise CorruptCheckpointError(f"{self.path}: cannot read {name}: {_short(exc)}") from exc

    def _verify_small_entries(self) -> None:
        """Check the CRC-32 of every entry that is not a storage (data.pkl and byteorder were
        checked by zipfile as they were read); streamed, so a lying size costs no memory."""
        storages = self._prefix + "data/"
        done = {self._prefix + "data.pkl", self._prefix + "byteorder"}
        for info in self._zip.infolist():
            if info.filename.startswith(storages) or info.filename in done or info.is_dir():
                continue
            try:
                with self._zip.open(info) as src:
                    while src.read(_CHUNK):
                        pass
            except CheckpointError:
                raise
            except _ZIP_ERRORS as exc:
                raise CorruptCheckpointError(f"{self.path}: cannot read {_short(info.filename, 80)}: {_short(exc)}") from exc

    def _read_storage(self, key: str, byte_offset: int, out: np.ndarray, tensor: str) -> None:
        """Fill `out` with storage `key`'s bytes from `byte_offset` on, converting to native
        byte order; the first time, the whole entry is streamed and its CRC-32 checked."""
        info = self._zip.getinfo(f"{self._prefix}data/{key}")
        what = f"storage data/{key} of tensor {tensor!r}"
        stored = info.compress_type == zipfile.ZIP_STORED
        try:
            start = self._data_offset(info) if stored else 0
            with nullcontext(self._file) if stored else self._zip.open(info) as src:
                if key in self._verified:
                    read_exact(src, start + byte_offset, byte_view(out), self.path, what)
                else:
                    crc = _read_checksummed(src, start, byte_offset, byte_view(out), info.file_size, self.path, what)
                    if crc != info.CRC:
                        raise CorruptCheckpointError(_crc_message(self.path, tensor, info, crc))
                    self._verified.add(key)
        except CheckpointError:
            raise
        except _ZIP_ERRORS as exc:
            if "CRC" in str(exc):  # zipfile's own check at the end of a compressed entry
                raise CorruptCheckpointError(_crc_message(self.path, tensor, info, None)) from None
            raise CorruptCheckpointError(f"{self.path}: cannot read {what}: {_short(exc)}") from exc
        if self._big_endian and out.dtype.itemsize > 1:
            byte_view(out).view(f"u{out.dtype.itemsize}").byteswap(inplace=True)

    def _data_offset(self, info: zipfile.ZipInfo) -> int:
        """File offset of an uncompressed entry's data, from its local header."""
        if info.filename not in self._data_offsets:
            self._file.seek(info.header_offset)
            head = self._file.read(_LOCAL_HEADER.size)
            if len(head) != _LOCAL_HEADER.size or not head.startswith(b"PK\x03\x04"):
                raise CorruptCheckpointError(f"{self.path}: bad zip local header for {info.filename}")
            _, name_len, extra_len = _LOCAL_HEADER.unpack(head)
            self._data_offsets[info.filename] = info.header_offset + _LOCAL_HEADER.size + name_len + extra_len
        return self._data_offsets[info.filename]


def _check_memo_indices(data: bytes) -> None:
    """Refuse memo indices no valid pickle of this size uses: C's unpickler grows its memo
    array to the largest index it is given (PUT 2**32 - 1 would touch 32 GiB)."""
    for op, arg, _ in pickletools.genops(data):
        if op.name in ("PUT", "BINPUT", "LONG_BINPUT") and not 0 <= int(arg) <= len(data):
            raise ValueError(f"memo index {arg} of {op.name} is impossible in a {len(data)}-byte pickle")


def _read_checksummed(f, start: int, offset: int, dst: np.ndarray, total: int, path: str, what: str) -> int:
    """Stream the `total` bytes of an entry at `start` once, returning their CRC-32; the
    bytes `offset:offset + dst.size` land in the uint8 array `dst`, the rest is dropped."""
    f.seek(start)
    crc, scratch = 0, None
    view = memoryview(dst)
    pieces = [(offset, None), (dst.size, view), (total - offset - dst.size, None)]
    done = 0
    for size, target in pieces:
        for begin in range(0, size, _CHUNK):
            n = min(_CHUNK, size - begin)
            if target is None:
                scratch = scratch if scratch is not None and len(scratch) >= n else bytearray(min(_CHUNK, max(n, 1)))
                chunk = memoryview(scratch)[:n]
            else:
                chunk = target[begin:begin + n]
            got = f.readinto(chunk)
            if got != n:
                raise CorruptCheckpointError(
                    f"{path}: truncated: {what} needs {total} bytes at offset {start}, got {done + (got or 0)}")
            crc = zlib.crc32(chunk, crc)
            done += n
    return crc


def _crc_message(path: str, tensor: str, info: zipfile.ZipInfo, crc: int | None) -> str:
    got = "" if crc is None else f", read {crc:08x}"
    return (f"{path}: CRC-32 mismatch in tensor {tensor!r} (zip entry {info.filename}: "
            f"expected {info.CRC:08x}{got}): the file is corrupt")


def _open_zip(f, path: str) -> zipfile.ZipFile:
    """Open the zip archive, explaining what the file is when it is not one."""
    head = f.read(4)
    f.seek(0)
    try:
        if zipfile.is_zipfile(f):
            return zipfile.ZipFile(f)
    except _ZIP_ERRORS as exc:
        raise CorruptCheckpointError(f"{path}: corrupt zip archive: {_short(exc)}") from exc
    if head.startswith(b"PK"):
        raise CorruptCheckpointError(f"{path}: truncated or corrupt zip archive (no central directory)")
    if head.startswith(b"\x80"):
        raise CorruptCheckpointError(
            f"{path}: legacy (torch < 1.6) or plain-pickle format is not supported; "
            "re-save it with torch >= 1.6 (torch.save) or as safetensors"
        )
    raise CorruptCheckpointError(f"{path}: not a PyTorch zip checkpoint (unrecognized file signature {head!r})")


def _archive_prefix(zf: zipfile.ZipFile, path: str) -> str:
    """The ``<archive>/`` folder holding data.pkl."""
    prefixes = [n[: -len("data.pkl")] for n in zf.namelist() if n.endswith("/data.pkl") and n.count("/") == 1]
    if len(prefixes) != 1:
        raise CorruptCheckpointError(f"{path}: expected one <archive>/data.pkl entry, found {len(prefixes)}")
    return prefixes[0]


def _is_big_endian(zf: zipfile.ZipFile, prefix: str, path: str) -> bool:
    """Read ``<archive>/byteorder`` (absent in old files, which are little-endian)."""
    try:
        order = zf.read(prefix + "byteorder").decode("ascii", "replace").strip()
    except KeyError:
        return False
    except _ZIP_ERRORS as exc:
        raise CorruptCheckpointError(f"{path}: cannot read byteorder: {_short(exc)}") from exc
    if order not in ("little", "big"):
        raise CorruptCheckpointError(f"{path}: unknown byteorder {order!r}")
    return order == "big"


def _int_tuple(values) -> tuple | None:
    """`values` as a tuple of non-negative ints, or None if it is not one."""
    if not isinstance(values, (tuple, list)) or not all(type(v) is int and v >= 0 for v in values):
        return None
    return tuple(values)


def _span(shape: tuple, stride: tuple) -> int:
    """Number of storage elements from a non-empty view's first element to its last."""
    return 1 + sum((n - 1) * s for n, s in zip(shape, stride))


def _is_c_contiguous(shape: tuple, stride: tuple) -> bool:
    expected = 1
    for n, s in zip(reversed(shape), reversed(stride)):
        if n != 1 and s != expected:
            return False
        expected *= n
    return True


def _short(obj, limit: int = 120) -> str:
    """One-line, bounded repr for error messages."""
    text = " ".join(str(obj).split()) if isinstance(obj, BaseException) else repr(obj)
    return text if len(text) <= limit else text[: limit - 3] + "..."
