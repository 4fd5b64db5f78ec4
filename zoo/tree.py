"""Parameter trees: flat ``"a/b/kernel"`` paths, the Flax variables dict, dtypes.

The one shape a model's weights take everywhere in the zoo is the Flax **variables dict**
that ``model.apply`` takes: ``{"params": {...}}``, plus ``{"batch_stats": {...}}`` for
models with batch norm. Flat views name a parameter by its ``/``-joined path
(``data2vec_text/encoder/layer_0/attention/self/query/kernel``) and a batch statistic by
its collection and path (``batch_stats/decode_head/.../mean``).

This module depends on nothing else in the zoo; :mod:`zoo.pretrained` (loading) and
:mod:`zoo.parallel` (sharding) both build on it.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import jax.numpy as jnp

# Collections besides "params" that checkpoints carry (batch-norm running statistics).
STATE_COLLECTIONS = ("batch_stats",)
COLLECTIONS = ("params", *STATE_COLLECTIONS)
DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float16": jnp.float16}


def as_dtype(dtype) -> Any:
    """``"bfloat16"`` / ``jnp.bfloat16`` / ``np.float32`` -> a jnp dtype (clear error otherwise)."""
    if isinstance(dtype, str):
        if dtype not in DTYPES:
            raise ValueError(f"dtype {dtype!r} is not supported; choose one of {', '.join(DTYPES)}")
        return DTYPES[dtype]
    if jnp.dtype(dtype).name not in DTYPES:
        raise ValueError(f"dtype {jnp.dtype(dtype).name!r} is not supported; choose one of {', '.join(DTYPES)}")
    return jnp.dtype(dtype).type


def flatten(tree: Mapping) -> dict[str, Any]:
    """Nested dict -> ``{"a/b/kernel": leaf}``."""
    flat = {}
    for key, value in tree.items():
        if isinstance(value, Mapping):
            for sub, leaf in flatten(value).items():
                flat[f"{key}/{sub}"] = leaf
        else:
            flat[key] = value
    return flat


def unflatten(flat: Mapping[str, Any]) -> dict:
    """``{"a/b/kernel": leaf}`` -> nested dict (inverse of :func:`flatten`)."""
    tree: dict = {}
    for path, leaf in flat.items():
        node = tree
        *parents, name = path.split("/")
        for p in parents:
            node = node.setdefault(p, {})
        node[name] = leaf
    return tree


def pack_variables(flat: Mapping[str, Any]) -> dict:
    """Flat paths (state under ``"batch_stats/..."``) -> the variables dict ``{"params": ...,
    "batch_stats": ...}`` (``batch_stats`` only where there are statistics)."""
    tree = unflatten(flat)
    state = {c: tree.pop(c) for c in STATE_COLLECTIONS if c in tree}
    return {"params": tree, **state}


def flatten_variables(variables: Mapping, what: str = "model") -> dict[str, Any]:
    """Inverse of :func:`pack_variables`: parameter paths bare, state paths prefixed by their
    collection. Raises ValueError (see :func:`check_variables`, ``what`` names the owner) for
    anything else."""
    check_variables(variables, what)
    flat = flatten(variables["params"])
    for c in STATE_COLLECTIONS:
        flat.update({f"{c}/{k}": v for k, v in flatten(variables.get(c, {})).items()})
    return flat


def check_variables(variables: Any, what: str = "model") -> None:
    """Raise a ValueError that says what is wrong unless ``variables`` is a variables dict
    (``{"params": ...}`` plus optional state collections).

    The two usual mistakes get their own message: a variables dict wrapped once more
    (``{"params": variables}``) and a bare params tree (``model.apply(params)``).
    """
    if not isinstance(variables, Mapping):
        raise TypeError(f"{what}: variables must be a dict like {{'params': ...}}, got {type(variables).__name__}")
    params = variables.get("params")
    if isinstance(params, Mapping) and params and set(params) <= set(COLLECTIONS) and "params" in params:
        raise ValueError(
            f"{what}: the variables are wrapped twice ({{'params': {{'params': ...}}}}); zoo.from_pretrained, "
            "zoo.init and zoo.init_params return the variables dict itself: pass it as is, "
            "model.apply(variables, ...), not model.apply({'params': variables}, ...)")
    if params is None:
        raise ValueError(
            f"{what}: expected the variables dict {{'params': ...}}, "
            f"got a dict with keys {sorted(map(str, variables))[:6]}; a bare params tree goes in as "
            "model.apply({'params': params}, ...)")
    extra = [c for c in variables if c not in COLLECTIONS]
    if extra:
        raise ValueError(f"{what}: unknown variable collections {extra}; a zoo model has "
                         f"{', '.join(COLLECTIONS)}")


__all__ = ["COLLECTIONS", "DTYPES", "STATE_COLLECTIONS", "as_dtype", "check_variables", "flatten", "flatten_variables",
           "pack_variables", "unflatten"]
