"""Exceptions raised by the checkpoint readers, writers and key mapping."""


class CheckpointError(ValueError):
    """Base: every message names the file and the problem, one line, for people."""


class CheckpointNotFoundError(CheckpointError, FileNotFoundError):
    """The checkpoint file or directory (or a file inside it) does not exist."""


class CorruptCheckpointError(CheckpointError):
    """Truncated or corrupt file, bad header, bad zip, or a missing shard."""


class UnsafePickleError(CheckpointError):
    """A pickle asked for a global outside the tensor-rebuild allow-list."""


class KeyMappingError(CheckpointError):
    """Checkpoint tensor names do not match what the target model expects."""
