"""Dropout masks: ``jax.random.bernoulli``'s exact bits, as one fused elementwise kernel.

JAX lowers Threefry-2x32 for a CPU as a rolled ``while`` loop of 5 steps (to keep compile time
down); XLA:CPU then runs every step as its own pass over the whole ``uint32`` counter arrays,
so a dropout mask costs 5 reads and writes of two arrays of its size. In the Data2VecText base
fine-tuning step that is 164 ms of the step's op time for the 37 masks. :func:`bernoulli`
computes the same hash with its 20 rounds written out (GPU and TPU lower it this way anyway),
which XLA fuses with the compare and the dropout's select into one pass.

The result equals ``jax.random.bernoulli(key, p, shape)`` bit for bit for a Threefry key (the
default; raw ``uint32[2]`` keys and typed keys alike) in JAX's partitionable counter layout
(``jax_threefry_partitionable``, the default): counter ``i`` of the flat row-major shape,
hash ``(x0, x1) = threefry2x32(key, (0, i))``, bits ``x0 ^ x1``, uniform ``(bits >> 9) / 2**23``,
kept where ``uniform < p``. Anything else (another PRNG implementation, the legacy counter
layout, 64-bit mode, 2**32 or more values, an array ``p``) goes to ``jax.random.bernoulli``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

_ROTATIONS = ((13, 15, 26, 6), (17, 29, 16, 24))
_PARITY = np.uint32(0x1BD11BDA)
_MANTISSA_BITS = 23  # float32


def threefry2x32(key: jax.Array, x0: jax.Array, x1: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Threefry-2x32 (20 rounds, Salmon et al. 2011) of the counters ``(x0, x1)`` under ``key``
    (``uint32[2]``), unrolled; equal to JAX's ``threefry2x32_p``."""
    k0, k1 = key[0], key[1]
    ks = (k0, k1, k0 ^ k1 ^ _PARITY)
    x = [x0 + ks[0], x1 + ks[1]]
    for block in range(5):
        for r in _ROTATIONS[block % 2]:
            x[0] = x[0] + x[1]
            x[1] = (x[1] << np.uint32(r)) | (x[1] >> np.uint32(32 - r))
            x[1] = x[0] ^ x[1]
        x[0] = x[0] + ks[(block + 1) % 3]
        x[1] = x[1] + ks[(block + 2) % 3] + np.uint32(block + 1)
    return x[0], x[1]


def _flat_index(shape: tuple[int, ...]) -> jax.Array:
    """``uint32`` row-major position of every element of ``shape``."""
    index = jnp.zeros(shape, jnp.uint32)
    stride = 1
    for axis in reversed(range(len(shape))):
        index = index + lax.broadcasted_iota(jnp.uint32, shape, axis) * np.uint32(stride)
        stride *= shape[axis]
    return index


def _threefry_key_data(key) -> jax.Array | None:
    """The ``uint32[2]`` data of a single Threefry key, or None for anything else."""
    key = jnp.asarray(key) if not isinstance(key, jax.Array) else key
    if jax.dtypes.issubdtype(key.dtype, jax.dtypes.prng_key):
        if key.shape != () or "threefry" not in str(jax.random.key_impl(key)):
            return None
        return jax.random.key_data(key)
    if key.shape != (2,) or key.dtype != jnp.uint32 or jax.config.jax_default_prng_impl != "threefry2x32":
        return None
    return key


def bernoulli(key, p: float, shape: Sequence[int]) -> jax.Array:
    """``bool[shape]``, True with probability ``p``; ``jax.random.bernoulli(key, p, shape)``'s
    values exactly (see the module docstring for when it simply calls it)."""
    shape = tuple(int(d) for d in shape)
    data = _threefry_key_data(key)
    size = math.prod(shape)
    if (data is None or not isinstance(p, (int, float)) or jax.config.jax_enable_x64
            or not jax.config.jax_threefry_partitionable or size >= 2 ** 32 or size == 0):
        return jax.random.bernoulli(key, p, shape)
    # uniform = m / 2**23 with m = bits >> 9 is exact, so uniform < p  <=>  m < ceil(p * 2**23)
    threshold = math.ceil(float(np.float32(p)) * 2 ** _MANTISSA_BITS)
    if threshold <= 0:
        return jnp.zeros(shape, bool)
    if threshold >= 2 ** _MANTISSA_BITS:
        return jnp.ones(shape, bool)
    hi, lo = threefry2x32(data, jnp.zeros(shape, jnp.uint32), _flat_index(shape))
    return ((hi ^ lo) >> np.uint32(32 - _MANTISSA_BITS)) < np.uint32(threshold)


__all__ = ["bernoulli", "threefry2x32"]
