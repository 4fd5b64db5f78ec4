"""Open safetensors / PyTorch checkpoints (single file or sharded) without torch.

``open_checkpoint`` returns a ``Checkpoint`` that knows every tensor's name, shape and dtype
from the file headers and reads tensor data only on ``get``/``items``, one tensor at a time.

Integrity: a ``.bin``'s zip entries are CRC-checked as they are read (``torch_pickle``); a
safetensors header must tile the data area exactly (the reference implementation's rule); a
sharded index must name existing shards that hold the tensors it places there, and its
``metadata.total_size``, when present, must match the shards' headers.
"""

import json
import os
from contextlib import ExitStack
from typing import Iterator

import numpy as np

from .errors import CheckpointError, CheckpointNotFoundError, CorruptCheckpointError
from .safetensors_io import SafetensorsFile
from .torch_pickle import TorchZipFile

DIRECTORY_CANDIDATES = (
    "model.safetensors.index.json",
    "model.safetensors",
    "pytorch_model.bin.index.json",
    "pytorch_model.bin",
)
_TORCH_SUFFIXES = (".bin", ".pt", ".pth")


class Checkpoint:
    """Tensors of one checkpoint, possibly spread over several shard files.

    ``format`` is "safetensors", "safetensors-sharded", "pytorch" or "pytorch-sharded".
    ``metadata`` is the safetensors ``__metadata__`` of a single file, the index's ``metadata``
    of a sharded checkpoint, or {}.
    """

    def __init__(self, path: str, format: str, where: dict, metadata: dict):
        self.path = path
        self.format = format
        self.metadata = metadata
        self._where = where  # tensor name -> open shard (SafetensorsFile or TorchZipFile)
        self._shards = sorted({id(s): s for s in where.values()}.values(), key=lambda s: s.path)

    def keys(self) -> list[str]:
        return sorted(self._where)

    def __contains__(self, key) -> bool:
        return key in self._where

    def __len__(self) -> int:
        return len(self._where)

    def shape(self, key: str) -> tuple[int, ...]:
        return self._shard(key).shape(key)

    def dtype(self, key: str) -> np.dtype:
        return self._shard(key).dtype(key)

    def get(self, key: str) -> np.ndarray:
        """Read one tensor into a fresh C-contiguous array that owns its memory."""
        return self._shard(key).read(key)

    def read_slice(self, key: str, index: tuple) -> np.ndarray:
        """Read ``tensor[index]`` (a tuple of slices) into a fresh array. Safetensors shards
        are memory-mapped and copy only the slice (the format has no checksum: nothing is
        verified beyond the header); PyTorch shards read the whole tensor, so the CRC-32 of its
        storage entry is checked on the first read from it, as for :meth:`get` (see
        :meth:`sliceable`)."""
        shard = self._shard(key)
        if isinstance(shard, SafetensorsFile):
            return shard.read_slice(key, index)
        return np.array(shard.read(key)[index], order="C")

    def sliceable(self, key: str) -> bool:
        """True when :meth:`read_slice` reads only the slice (not the whole tensor)."""
        return isinstance(self._shard(key), SafetensorsFile)

    def items(self) -> Iterator[tuple[str, np.ndarray]]:
        """Yield (name, array) for every tensor, shard by shard, reading one tensor at a time."""
        for shard in self._shards:
            for key in sorted(k for k, s in self._where.items() if s is shard):
                yield key, shard.read(key)

    @property
    def nbytes(self) -> int:
        """Total size of all tensors in bytes, from the headers."""
        return sum(shard.nbytes(key) for key, shard in self._where.items())

    def close(self) -> None:
        for shard in self._shards:
            shard.close()

    def __enter__(self) -> "Checkpoint":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Checkpoint({self.path!r}, format={self.format!r}, tensors={len(self)})"

    def _shard(self, key: str):
        try:
            return self._where[key]
        except KeyError:
            raise KeyError(f"tensor {key!r} not found in {self.path}") from None


def open_checkpoint(path: str | os.PathLike) -> Checkpoint:
    """Open a checkpoint file (.safetensors, .bin/.pt/.pth, .index.json) or a model directory."""
    path = os.fspath(path)
    if os.path.isdir(path):
        for name in DIRECTORY_CANDIDATES:
            candidate = os.path.join(path, name)
            if os.path.isfile(candidate):
                return _open_file(candidate)
        raise CheckpointNotFoundError(f"{path}: no checkpoint found; looked for {', '.join(DIRECTORY_CANDIDATES)}")
    if not os.path.exists(path):
        raise CheckpointNotFoundError(f"{path}: no such file or directory")
    return _open_file(path)


def _open_file(path: str) -> Checkpoint:
    if path.endswith(".index.json"):
        return _open_index(path)
    if path.endswith(".safetensors"):
        shard = SafetensorsFile(path)
        return Checkpoint(path, "safetensors", dict.fromkeys(shard.keys(), shard), shard.metadata)
    if path.endswith(_TORCH_SUFFIXES):
        shard = TorchZipFile(path)
        return Checkpoint(path, "pytorch", dict.fromkeys(shard.keys(), shard), shard.metadata)
    raise CheckpointError(f"{path}: unknown checkpoint type; expected .safetensors, .bin, .pt, .pth or .index.json")


def _open_index(path: str) -> Checkpoint:
    """Open every shard named by a HF index file and check that each promised tensor is there."""
    weight_map, metadata = _read_index(path)
    kind = _shard_kind(path, weight_map.values())
    opener = SafetensorsFile if kind == "safetensors" else TorchZipFile
    directory = os.path.dirname(path)
    with ExitStack() as stack:
        shards = {}
        for name in sorted(set(weight_map.values())):
            shard_path = os.path.join(directory, name)
            if not os.path.isfile(shard_path):
                raise CorruptCheckpointError(f"{path}: shard {name} listed in the index is missing")
            shards[name] = opener(shard_path)
            stack.callback(shards[name].close)
        for key, name in weight_map.items():
            if key not in shards[name]:
                raise CorruptCheckpointError(
                    f"{shards[name].path}: tensor {key!r} promised by {os.path.basename(path)} is not in this shard"
                )
        _check_total_size(path, metadata, weight_map, shards)
        checkpoint = Checkpoint(path, f"{kind}-sharded", {k: shards[n] for k, n in weight_map.items()}, metadata)
        stack.pop_all()
    return checkpoint


def _check_total_size(path: str, metadata: dict, weight_map: dict[str, str], shards: dict) -> None:
    """Compare the index's ``metadata.total_size`` (when present) with the shards' headers.

    Writers count it differently, so any of these totals is accepted: the bytes of the
    tensors the weight_map lists; of every tensor in the shards; of the distinct storages
    behind the listed tensors (huggingface_hub's count for torch shards, shared storages
    once); and the first with bool counted as 1/8 byte (transformers < 4.32)."""
    if "total_size" not in metadata:
        return
    total = metadata["total_size"]
    if isinstance(total, str) and total.strip().isdigit():
        total = int(total)
    if type(total) not in (int, float) or not total >= 0 or total == float("inf"):
        raise CorruptCheckpointError(f"{path}: metadata.total_size {_short(total)} is not a byte count")
    listed = sum(shards[n].nbytes(k) for k, n in weight_map.items())
    if total == listed:
        return
    candidates = {
        listed,
        sum(shard.nbytes(k) for shard in shards.values() for k in shard.keys()),
        sum(shards[n].nbytes(k) / (8 if shards[n].dtype(k) == np.bool_ else 1) for k, n in weight_map.items()),
    }
    storages = {}
    for key, name in weight_map.items():
        storage = getattr(shards[name], "storage_of", None)
        if storage is not None:
            storages[name, storage(key)] = shards[name].storage_nbytes(key)
    if storages:
        candidates.add(sum(storages.values()))
    if total not in candidates:
        raise CorruptCheckpointError(
            f"{path}: metadata.total_size is {_short(total)} bytes but the {len(weight_map)} tensors it lists "
            f"hold {listed} bytes in its {len(shards)} shards (stale index or replaced shards)"
        )


def _short(value, limit: int = 40) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _read_index(path: str) -> tuple[dict[str, str], dict]:
    """Parse and validate ``{"metadata": {...}, "weight_map": {tensor: shard file}}``."""
    try:
        with open(path, encoding="utf-8") as f:
            index = json.load(f)
    except ValueError:
        raise CorruptCheckpointError(f"{path}: index is not valid JSON") from None
    weight_map = index.get("weight_map") if isinstance(index, dict) else None
    if not isinstance(weight_map, dict) or not all(isinstance(v, str) for v in weight_map.values()):
        raise CorruptCheckpointError(f"{path}: index has no valid weight_map of tensor name -> shard file")
    if not weight_map:
        raise CorruptCheckpointError(f"{path}: index weight_map is empty")
    for name in set(weight_map.values()):
        if os.path.basename(name) != name or name in ("", ".", ".."):
            raise CorruptCheckpointError(f"{path}: shard {name!r} is not a plain file name")
    metadata = index.get("metadata") or {}
    if not isinstance(metadata, dict):
        raise CorruptCheckpointError(f"{path}: index metadata is not a JSON object")
    return weight_map, metadata


def _shard_kind(path: str, shard_names) -> str:
    """The shard file type, "safetensors" or "pytorch", from the shard suffixes."""
    names = set(shard_names)
    if all(n.endswith(".safetensors") for n in names):
        return "safetensors"
    if all(n.endswith(_TORCH_SUFFIXES) for n in names):
        return "pytorch"
    raise CheckpointError(f"{path}: shards must all be .safetensors or all .bin/.pt/.pth files")
