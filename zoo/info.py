"""What a checkpoint or a model holds (``zoo info``, ``zoo convert``'s summary).

    checkpoint_info("path/or/repo-id")   # {"path", "family", "architecture", "format", "tensors",
                                         #  "parameters", "dtype", "bytes"}
    parameter_count(model)               # trainable parameters (batch statistics excluded)
"""

from __future__ import annotations

import math
import os
from collections import Counter
from typing import Any


def parameter_count(model) -> int:
    """The number of parameters of ``model`` (batch statistics excluded); nothing is allocated."""
    from zoo.initialization import param_shapes

    return sum(math.prod(s) for s in param_shapes(model, state=False).values())


def checkpoint_info(path_or_repo_id: str | os.PathLike) -> dict[str, Any]:
    """Family, architecture, format (``zoo`` or the HF file format), tensor and parameter
    counts, dtypes (``{dtype: tensors}``) and bytes of a checkpoint, from its headers only."""
    from converters.readers import open_checkpoint
    from zoo import pretrained

    src = pretrained.resolve_checkpoint(path_or_repo_id)
    family, config = pretrained.read_config(src)
    arch = pretrained.choose_architecture(family, config, None)
    weights = src / pretrained.ZOO_WEIGHTS
    with open_checkpoint(weights if weights.exists() else src) as ckpt:
        keys = ckpt.keys()
        return {
            "path": str(src), "family": family.model_type, "architecture": arch,
            "format": "zoo" if weights.exists() else ckpt.format, "tensors": len(keys),
            "parameters": sum(math.prod(ckpt.shape(k)) for k in keys),
            "dtype": dict(Counter(str(ckpt.dtype(k)) for k in keys)), "bytes": ckpt.nbytes,
        }


__all__ = ["checkpoint_info", "parameter_count"]
