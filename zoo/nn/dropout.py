"""``Dropout``: ``flax.linen.Dropout`` with its mask drawn by :func:`zoo.rng.bernoulli`.

Same fields, same ``"dropout"`` rng stream, same module name (so the same per-module keys) and
the same values bit for bit; the mask is one fused kernel instead of XLA:CPU's five passes of
a rolled Threefry loop (see :mod:`zoo.rng`).
"""

from __future__ import annotations

from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax

from zoo.rng import bernoulli


class Dropout(nn.Module):
    """Inverted dropout: ``x / (1 - rate)`` where kept, 0 elsewhere. ``broadcast_dims`` share one
    mask; ``deterministic=True`` (here or at the call) returns ``x`` unchanged."""

    rate: float
    broadcast_dims: Sequence[int] = ()
    deterministic: bool | None = None
    rng_collection: str = "dropout"

    @nn.compact
    def __call__(self, inputs: jax.Array, deterministic: bool | None = None, rng=None) -> jax.Array:
        deterministic = nn.merge_param("deterministic", self.deterministic, deterministic)
        if self.rate == 0.0 or deterministic:
            return inputs
        if self.rate == 1.0:  # no division by zero, no NaN gradients
            return jnp.zeros_like(inputs)
        keep = 1.0 - self.rate
        if rng is None:
            rng = self.make_rng(self.rng_collection)
        shared = {d % inputs.ndim for d in self.broadcast_dims}
        shape = [1 if d in shared else n for d, n in enumerate(inputs.shape)]
        mask = jnp.broadcast_to(bernoulli(rng, keep, shape), inputs.shape)
        return lax.select(mask, inputs / keep, jnp.zeros_like(inputs))


__all__ = ["Dropout"]
