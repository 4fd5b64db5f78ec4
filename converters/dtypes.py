"""Dtype tables shared by the readers and writers (numpy, with ml_dtypes for bfloat16/float8)."""

import numpy as np

# dtypes numpy lacks; they come from the optional ml_dtypes package.
_ML_DTYPES = ("bfloat16", "float8_e4m3fn", "float8_e5m2")

# safetensors dtype code -> numpy dtype name.
SAFETENSORS_DTYPES = {
    "BOOL": "bool",
    "U8": "uint8",
    "I8": "int8",
    "U16": "uint16",
    "I16": "int16",
    "F16": "float16",
    "BF16": "bfloat16",
    "U32": "uint32",
    "I32": "int32",
    "F32": "float32",
    "U64": "uint64",
    "I64": "int64",
    "F64": "float64",
    "F8_E4M3": "float8_e4m3fn",
    "F8_E5M2": "float8_e5m2",
}
SAFETENSORS_CODES = {name: code for code, name in SAFETENSORS_DTYPES.items()}

# torch legacy typed-storage class name (global "torch.<name>") -> numpy dtype name.
TORCH_STORAGE_DTYPES = {
    "DoubleStorage": "float64",
    "FloatStorage": "float32",
    "HalfStorage": "float16",
    "BFloat16Storage": "bfloat16",
    "LongStorage": "int64",
    "IntStorage": "int32",
    "ShortStorage": "int16",
    "CharStorage": "int8",
    "ByteStorage": "uint8",
    "BoolStorage": "bool",
}

# torch dtype objects (global "torch.<name>") that may appear in a pickle; same name in numpy/ml_dtypes.
TORCH_DTYPES = frozenset(SAFETENSORS_DTYPES.values())


def numpy_dtype(name: str) -> np.dtype:
    """Return the numpy dtype called `name`, importing ml_dtypes only when it is needed."""
    if name not in _ML_DTYPES:
        return np.dtype(name)
    try:
        import ml_dtypes
    except ImportError as exc:
        raise ImportError(f"{name} tensors need the 'ml_dtypes' package: pip install ml_dtypes") from exc
    return np.dtype(getattr(ml_dtypes, name))
