"""Boolean attention masks ``[B, 1, Lq, Lk]`` (True = attend), as HF builds them."""

from __future__ import annotations

import jax
import jax.numpy as jnp


def padding_mask(attention_mask: jax.Array | None, query_length: int) -> jax.Array | None:
    """``[B, Lk]`` 1/0 mask -> ``[B, 1, Lq, Lk]`` boolean (None stays None)."""
    if attention_mask is None:
        return None
    if attention_mask.ndim != 2:
        raise ValueError(f"attention_mask must be [batch, length], got shape {attention_mask.shape}")
    keep = attention_mask.astype(bool)[:, None, None, :]
    return jnp.broadcast_to(keep, (keep.shape[0], 1, query_length, keep.shape[-1]))


def causal_mask(query_positions: jax.Array, key_length: int) -> jax.Array:
    """``[1, 1, Lq, Lk]``: query at absolute position p sees keys at positions <= p."""
    return (jnp.arange(key_length)[None, :] <= query_positions[:, None])[None, None]


def combine(*masks: jax.Array | None) -> jax.Array | None:
    out = None
    for m in masks:
        if m is not None:
            out = m if out is None else jnp.logical_and(out, m)
    return out
