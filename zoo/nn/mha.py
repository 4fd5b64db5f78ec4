"""Multi-head attention with ``q_proj/k_proj/v_proj/out_proj`` (wav2vec2/BART/CLIP names)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from zoo.attention.dense import dot_product_attention
from zoo.nn.attention_projection import QKV_PROJ, QKVProjection
from zoo.nn.layers import Dense

Array = jax.Array


class MultiHeadAttention(nn.Module):
    """``[B, L, E]`` -> ``[B, L, E]`` (+ probabilities ``[B, H, L, Lk]`` when asked).

    mask: boolean ``[B, 1, L, Lk]`` (True = attend); key_value_states: cross-attention source.
    """

    embed_dim: int
    num_heads: int
    dropout: float = 0.0
    use_bias: bool = True
    std: float = 0.02
    attention_fn: Callable = dot_product_attention
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, hidden_states: Array, mask: Array | None = None, *, key_value_states: Array | None = None,
                 bias: Array | None = None, deterministic: bool = True, output_attentions: bool = False):
        head_dim = self.embed_dim // self.num_heads
        if head_dim * self.num_heads != self.embed_dim:
            raise ValueError(f"embed_dim {self.embed_dim} is not divisible by num_heads {self.num_heads}")
        query, key, value = QKVProjection(self.num_heads, head_dim, QKV_PROJ, self.use_bias, std=self.std,
                                          dtype=self.dtype, param_dtype=self.param_dtype)(
            hidden_states, key_value_states)
        rng = self.make_rng("dropout") if (not deterministic and self.dropout > 0) else None
        out, probs = self.attention_fn(
            query, key, value, mask=mask, bias=bias, dropout_rate=self.dropout, dropout_rng=rng,
            deterministic=deterministic, return_probs=output_attentions,
        )
        out = Dense(self.embed_dim, ("heads", "embed"), std=self.std, use_bias=self.use_bias, dtype=self.dtype,
                    param_dtype=self.param_dtype, name="out_proj")(out.reshape(*out.shape[:-2], self.embed_dim))
        return out, probs
