"""Small file helpers shared by the checkpoint readers."""

import os
import signal

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


# ------------------------------------------------------------------ crash testing
# ``ZOO_CRASH_AT=LABEL`` (or ``LABEL:N``, the N-th time it is reached) makes the process
# SIGKILL itself at that named point; read once at import, one comparison when unset.
_CRASH_LABEL, _, _CRASH_COUNT = os.environ.get("ZOO_CRASH_AT", "").partition(":")
_CRASH_LEFT = [int(_CRASH_COUNT or 1)] if _CRASH_LABEL else None


def crash_point(label: str) -> None:
    """Kill this process with SIGKILL here when ``ZOO_CRASH_AT`` names ``label`` (crash tests).

    Labels: ``tensor-written`` (a tensor of a safetensors file), ``file-before-rename``,
    ``dir-before-rename``, ``dir-after-rename``, ``train-step``, ``checkpoint-saved``,
    ``metrics-written``."""
    if _CRASH_LEFT is None or label != _CRASH_LABEL:
        return
    _CRASH_LEFT[0] -= 1
    if _CRASH_LEFT[0] <= 0:
        os.kill(os.getpid(), signal.SIGKILL)
