"""Torch-free PyTorch checkpoint reading, writing and key mapping (numpy + safetensors)."""

from converters.errors import (
    CheckpointError,
    CheckpointNotFoundError,
    CorruptCheckpointError,
    KeyMappingError,
    UnsafePickleError,
)
from converters.mapping import ConversionReport, KeyTable, flax_to_torch, torch_to_flax

__all__ = [
    "CheckpointError", "CheckpointNotFoundError", "CorruptCheckpointError", "KeyMappingError",
    "UnsafePickleError", "ConversionReport", "KeyTable", "flax_to_torch", "torch_to_flax",
]
