"""Fixed-size key/value cache for incremental decoding inside ``jax.jit``.

The cache is preallocated at ``max_length`` so every decoding step has the same
shapes (no recompilation per token); ``length`` counts the filled positions.
"""

from __future__ import annotations

import flax.struct
import jax
import jax.numpy as jnp


@flax.struct.dataclass
class KVCache:
    """Per-layer keys/values ``[B, max_length, H, D]`` and the filled ``length``."""

    keys: tuple[jax.Array, ...]
    values: tuple[jax.Array, ...]
    length: jax.Array  # int32 scalar

    @classmethod
    def create(cls, num_layers: int, batch_size: int, max_length: int, num_heads: int,
               head_dim: int, dtype=jnp.float32) -> "KVCache":
        shape = (batch_size, max_length, num_heads, head_dim)
        zeros = tuple(jnp.zeros(shape, dtype) for _ in range(num_layers))
        return cls(keys=zeros, values=zeros, length=jnp.zeros((), jnp.int32))

    @property
    def max_length(self) -> int:
        return self.keys[0].shape[1]

    def pad_to(self, max_length: int) -> "KVCache":
        """The same cache with room for ``max_length`` positions."""
        extra = max_length - self.max_length
        if extra < 0:
            raise ValueError(f"cannot shrink a KV cache of {self.max_length} positions to {max_length}")
        pad = lambda x: jnp.pad(x, ((0, 0), (0, extra), (0, 0), (0, 0)))
        return KVCache(tuple(map(pad, self.keys)), tuple(map(pad, self.values)), self.length)


def write(cache_k: jax.Array, cache_v: jax.Array, k: jax.Array, v: jax.Array, index: jax.Array):
    """Write ``k, v`` ``[B, L, H, D]`` at position ``index`` of the cache arrays."""
    start = (0, index, 0, 0)
    return (jax.lax.dynamic_update_slice(cache_k, k.astype(cache_k.dtype), start),
            jax.lax.dynamic_update_slice(cache_v, v.astype(cache_v.dtype), start))
