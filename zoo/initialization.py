"""A module's variables from its own initialisers (HF's): as shapes only, all of them, or some.

Every function here gives or reads the Flax variables dict (``{"params": ...}`` plus
``"batch_stats"`` for models with batch norm, see :mod:`zoo.tree`), unboxed of its logical
axis names except where the names are the point (:func:`abstract_variables`,
:func:`logical_axes`).
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence

import flax.linen as nn
import jax

from zoo.tree import COLLECTIONS, flatten_variables


def _init(module: nn.Module, rng: jax.Array) -> dict:
    """``module.init`` on its dummy inputs (their warnings, e.g. about short inputs, muted)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return module.init(rng, **type(module).dummy_inputs(module.config))


def _variables(boxed: Mapping) -> dict:
    """``module.init``'s output as the variables dict, unboxed, without other collections."""
    unboxed = nn.unbox(boxed)
    return {c: unboxed[c] for c in COLLECTIONS if c in unboxed}


def abstract_variables(module: nn.Module) -> dict:
    """``module.init``'s variables as shapes only (``jax.ShapeDtypeStruct`` leaves, still boxed
    with their logical axis names); nothing is allocated."""
    return jax.eval_shape(lambda: _init(module, jax.random.key(0)))


def param_shapes(module: nn.Module, *, state: bool = True,
                 abstract: Mapping | None = None) -> dict[str, tuple[int, ...]]:
    """Flax path -> shape of every parameter (and, with ``state``, of every batch statistic
    under ``"batch_stats/..."``), without allocating anything (``abstract``: the
    :func:`abstract_variables` of ``module`` if already at hand)."""
    variables = _variables(abstract_variables(module) if abstract is None else abstract)
    if not state:
        variables = {"params": variables["params"]}
    return {p: tuple(v.shape) for p, v in flatten_variables(variables).items()}


def init_params(module: nn.Module, rng: jax.Array | int = 0) -> dict:
    """Random variables (HF's initialisers), unboxed: ``{"params": ...}`` plus
    ``"batch_stats"`` for models with batch norm, what ``module.apply`` takes."""
    rng = jax.random.key(rng) if isinstance(rng, int) else rng
    return jax.jit(lambda key: _variables(_init(module, key)))(rng)


def init_flat(module: nn.Module, rng: jax.Array | int, paths: Sequence[str],
              shardings: Mapping[str, jax.sharding.Sharding] | None = None) -> dict[str, jax.Array]:
    """Fresh values of the variables at ``paths`` only (flat paths, state under
    ``"batch_stats/..."``), the same values :func:`init_params` gives them; the other
    initialisers are never run. ``shardings`` ({path: Sharding}) places each one (each
    device then holds only its shard)."""
    paths = list(paths)
    if not paths:
        return {}
    rng = jax.random.key(rng) if isinstance(rng, int) else rng

    def pick(key):
        flat = flatten_variables(_variables(_init(module, key)))
        return {p: flat[p] for p in paths}

    out = None if shardings is None else {p: shardings[p] for p in paths}
    return jax.jit(pick, out_shardings=out)(rng)


def logical_axes(module: nn.Module) -> dict:
    """The logical axis names of every parameter (a ``PartitionSpec`` tree, params only)."""
    return nn.get_partition_spec(abstract_variables(module))["params"]


__all__ = ["abstract_variables", "init_flat", "init_params", "logical_axes", "param_shapes"]
