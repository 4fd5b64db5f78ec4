"""CLIP's transformer pieces, shared by the CLIP-style towers (GroupViT's text and vision
layers, IDEFICS' vision encoder).

Parameter names mirror HF's ``CLIPEncoderLayer``: ``self_attn/{q,k,v,out}_proj``,
``layer_norm1``, ``mlp/fc1``, ``mlp/fc2``, ``layer_norm2``. ``config`` is any config with
``hidden_size``, ``intermediate_size``, ``num_attention_heads``, ``hidden_act``,
``layer_norm_eps``, ``attention_dropout`` and ``initializer_range``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from zoo.attention.dense import dot_product_attention
from zoo.nn.layers import Dense, LayerNorm, activation
from zoo.nn.mha import MultiHeadAttention

Array = jax.Array


class CLIPMLP(nn.Module):
    """fc1 -> activation -> fc2 (sizes default to the config's): ``[..., C]`` -> ``[..., out]``."""

    config: Any
    hidden_size: int | None = None
    intermediate_size: int | None = None
    output_size: int | None = None
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: Array) -> Array:
        cfg = self.config
        inter = self.intermediate_size or cfg.intermediate_size
        outs = self.output_size or self.hidden_size or cfg.hidden_size
        kw = dict(std=cfg.initializer_range, dtype=self.dtype, param_dtype=self.param_dtype)
        x = Dense(inter, ("embed", "mlp"), name="fc1", **kw)(x)
        return Dense(outs, ("mlp", "embed"), name="fc2", **kw)(activation(cfg.hidden_act)(x))


def clip_attention(config, name: str, attention_fn: Callable = dot_product_attention, dtype=jnp.float32,
                   param_dtype=jnp.float32) -> MultiHeadAttention:
    """CLIP's multi-head attention (biased q/k/v/out projections) of ``config``'s sizes."""
    return MultiHeadAttention(config.hidden_size, config.num_attention_heads, config.attention_dropout,
                              std=config.initializer_range, attention_fn=attention_fn, dtype=dtype,
                              param_dtype=param_dtype, name=name)


class CLIPEncoderLayer(nn.Module):
    """Pre-LayerNorm transformer layer: ``x + attn(ln1(x))``, then ``+ mlp(ln2(.))``.

    ``[B, L, C]`` (+ boolean mask ``[B, 1, L, L]``) -> (``[B, L, C]``, probs ``[B, H, L, L]`` or None).
    """

    config: Any
    attention_fn: Callable = dot_product_attention
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: Array, mask: Array | None = None, deterministic: bool = True,
                 output_attentions: bool = False):
        cfg = self.config
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        h, probs = clip_attention(cfg, "self_attn", self.attention_fn, **kw)(
            LayerNorm(cfg.layer_norm_eps, name="layer_norm1", **kw)(x), mask, deterministic=deterministic,
            output_attentions=output_attentions)
        x = x + h
        x = x + CLIPMLP(cfg, name="mlp", **kw)(LayerNorm(cfg.layer_norm_eps, name="layer_norm2", **kw)(x))
        return x, probs
