"""Small file helpers shared by the checkpoint readers."""

import numpy as np

from .errors import CheckpointError, CheckpointNotFoundError, CorruptCheckpointError


def open_binary(path: str):
    """Open `path` for binary reading, turning OS errors into checkpoint errors."""
    try:
        return open(path, "rb")
    except FileNotFoundError:
        raise CheckpointNotFoundError(f"{path}: no such file") from None
    except OSError as exc:
        raise CheckpointError(f"{path}: cannot open: {exc.strerror or exc}") from exc


def byte_view(arr: np.ndarray) -> np.ndarray:
    """Flat uint8 view of a C-contiguous array (works for 0-d and bfloat16 arrays)."""
    return arr.reshape(-1).view(np.uint8)


def read_exact(f, offset: int, buf: np.ndarray, path: str, what: str) -> None:
    """Fill the uint8 array `buf` with the bytes of `f` starting at `offset`."""
    f.seek(offset)
    got = f.readinto(buf)
    if got != buf.size:
        raise CorruptCheckpointError(f"{path}: truncated: {what} needs {buf.size} bytes at offset {offset}, got {got}")
