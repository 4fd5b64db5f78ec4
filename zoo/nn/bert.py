"""The post-LayerNorm BERT/RoBERTa encoder shared by the text families.

Submodule names mirror HF's PyTorch paths
(``encoder/layer_3/attention/self/query`` <-> ``encoder.layer.3.attention.self.query``).
The config is duck-typed: any family config with the BERT field names works
(``hidden_size``, ``num_attention_heads``, ``intermediate_size``, ``hidden_act``,
``hidden_dropout_prob``, ``attention_probs_dropout_prob``, ``layer_norm_eps``,
``initializer_range``, ``is_decoder``, ``add_cross_attention``,
``position_embedding_type``, ``max_position_embeddings``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from zoo.attention.dense import dot_product_attention
from zoo.nn import kv_cache
from zoo.nn.layers import Dense, Embed, LayerNorm, activation

Array = jax.Array


class BertSelfAttention(nn.Module):
    """Multi-head attention with optional relative-position scores and KV cache.

    ``position_embedding_type`` ``relative_key`` / ``relative_key_query`` add
    ``q . E[i - j]`` (and ``k . E[i - j]``) to the scores, as transformers v4's BERT.
    """

    config: Any
    is_cross_attention: bool = False
    attention_fn: Callable = dot_product_attention
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(
        self,
        hidden_states: Array,
        mask: Array | None,
        *,
        key_value_states: Array | None = None,
        query_positions: Array | None = None,
        head_mask: Array | None = None,
        cache: tuple[Array, Array] | None = None,
        cache_index: Array | None = None,
        deterministic: bool = True,
        output_attentions: bool = False,
    ):
        cfg = self.config
        heads = cfg.num_attention_heads
        head_dim = cfg.hidden_size // heads
        dense = lambda name: Dense(
            heads * head_dim, ("embed", "heads"), std=cfg.initializer_range,
            dtype=self.dtype, param_dtype=self.param_dtype, name=name,
        )
        split = lambda x: x.reshape(*x.shape[:-1], heads, head_dim)
        kv_input = hidden_states if key_value_states is None else key_value_states
        query = split(dense("query")(hidden_states))
        key = split(dense("key")(kv_input))
        value = split(dense("value")(kv_input))

        new_cache = None
        if cache is not None:
            key, value = kv_cache.write(cache[0], cache[1], key, value, cache_index)
            new_cache = (key, value)

        scale = head_dim**-0.5
        bias = None
        relative = cfg.position_embedding_type in ("relative_key", "relative_key_query")
        if relative and not self.is_cross_attention:  # v4 cross-attention is always absolute
            max_pos = cfg.max_position_embeddings
            distance_embedding = Embed(
                2 * max_pos - 1, head_dim, (None, "kv"), std=cfg.initializer_range,
                dtype=self.dtype, param_dtype=self.param_dtype, name="distance_embedding",
            )
            if query_positions is None:
                query_positions = jnp.arange(query.shape[1])
            distance = query_positions[:, None] - jnp.arange(key.shape[1])[None, :]
            positional = distance_embedding(distance + max_pos - 1)  # [Lq, Lk, D]
            bias = jnp.einsum("bqhd,qkd->bhqk", query, positional)
            if cfg.position_embedding_type == "relative_key_query":
                bias = bias + jnp.einsum("bkhd,qkd->bhqk", key, positional)
            bias = bias * scale

        dropout_rng = None
        if not deterministic and cfg.attention_probs_dropout_prob > 0:
            dropout_rng = self.make_rng("dropout")
        out, probs = self.attention_fn(
            query, key, value,
            mask=mask, bias=bias, head_mask=head_mask, scale=scale,
            dropout_rate=cfg.attention_probs_dropout_prob, dropout_rng=dropout_rng,
            deterministic=deterministic, return_probs=output_attentions,
        )
        out = out.reshape(*out.shape[:-2], heads * head_dim)
        return out, probs, new_cache


class BertResidualOutput(nn.Module):
    """dense -> dropout -> LayerNorm(x + residual) (HF's SelfOutput / Output)."""

    config: Any
    in_axis: str = "heads"
    dropout: float | None = None  # default: config.hidden_dropout_prob
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, hidden_states: Array, residual: Array, deterministic: bool = True) -> Array:
        cfg = self.config
        rate = cfg.hidden_dropout_prob if self.dropout is None else self.dropout
        x = Dense(cfg.hidden_size, (self.in_axis, "embed"), std=cfg.initializer_range,
                  dtype=self.dtype, param_dtype=self.param_dtype, name="dense")(hidden_states)
        x = nn.Dropout(rate)(x, deterministic=deterministic)
        return LayerNorm(cfg.layer_norm_eps, dtype=self.dtype, param_dtype=self.param_dtype,
                         name="LayerNorm")(x + residual)


class BertAttention(nn.Module):
    config: Any
    is_cross_attention: bool = False
    attention_fn: Callable = dot_product_attention
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, hidden_states, mask, *, deterministic=True, **kwargs):
        out, probs, new_cache = BertSelfAttention(
            self.config, self.is_cross_attention, self.attention_fn,
            dtype=self.dtype, param_dtype=self.param_dtype, name="self",
        )(hidden_states, mask, deterministic=deterministic, **kwargs)
        out = BertResidualOutput(self.config, dtype=self.dtype, param_dtype=self.param_dtype,
                                 name="output")(out, hidden_states, deterministic)
        return out, probs, new_cache


class BertLayer(nn.Module):
    """Self-attention, optional cross-attention (decoders), feed-forward."""

    config: Any
    attention_fn: Callable = dot_product_attention
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(
        self,
        hidden_states: Array,
        mask: Array | None,
        *,
        encoder_hidden_states: Array | None = None,
        encoder_mask: Array | None = None,
        query_positions: Array | None = None,
        head_mask: Array | None = None,
        cache: tuple[Array, Array] | None = None,
        cache_index: Array | None = None,
        deterministic: bool = True,
        output_attentions: bool = False,
    ):
        cfg = self.config
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        x, self_probs, new_cache = BertAttention(cfg, False, self.attention_fn, name="attention", **kw)(
            hidden_states, mask, query_positions=query_positions, head_mask=head_mask,
            cache=cache, cache_index=cache_index, deterministic=deterministic,
            output_attentions=output_attentions,
        )
        cross_probs = None
        if cfg.add_cross_attention and cfg.is_decoder and encoder_hidden_states is not None:
            x, cross_probs, _ = BertAttention(cfg, True, self.attention_fn, name="crossattention", **kw)(
                x, encoder_mask, key_value_states=encoder_hidden_states, head_mask=head_mask,
                deterministic=deterministic, output_attentions=output_attentions,
            )
        elif encoder_hidden_states is not None:
            raise ValueError(
                "encoder_hidden_states were given but the model has no cross-attention "
                "(config needs is_decoder=True and add_cross_attention=True)"
            )
        inter = BertIntermediate(cfg, name="intermediate", **kw)(x)
        out = BertResidualOutput(cfg, in_axis="mlp", name="output", **kw)(inter, x, deterministic)
        return out, self_probs, cross_probs, new_cache


class BertIntermediate(nn.Module):
    config: Any
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, hidden_states: Array) -> Array:
        cfg = self.config
        x = Dense(cfg.intermediate_size, ("embed", "mlp"), std=cfg.initializer_range,
                  dtype=self.dtype, param_dtype=self.param_dtype, name="dense")(hidden_states)
        return activation(cfg.hidden_act)(x)


class BertEncoder(nn.Module):
    """``num_hidden_layers`` BertLayers; collects hidden states, attentions and cache."""

    config: Any
    attention_fn: Callable = dot_product_attention
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(
        self,
        hidden_states: Array,
        mask: Array | None,
        *,
        encoder_hidden_states: Array | None = None,
        encoder_mask: Array | None = None,
        query_positions: Array | None = None,
        head_mask: Array | None = None,
        cache: kv_cache.KVCache | None = None,
        deterministic: bool = True,
        output_attentions: bool = False,
        output_hidden_states: bool = False,
    ):
        cfg = self.config
        all_hidden = [hidden_states] if output_hidden_states else None
        all_attn, all_cross = [], []
        new_keys, new_values = [], []
        for i in range(cfg.num_hidden_layers):
            layer_cache = (cache.keys[i], cache.values[i]) if cache is not None else None
            hidden_states, probs, cross, layer_new_cache = BertLayer(
                cfg, self.attention_fn, dtype=self.dtype, param_dtype=self.param_dtype, name=f"layer_{i}",
            )(
                hidden_states, mask,
                encoder_hidden_states=encoder_hidden_states, encoder_mask=encoder_mask,
                query_positions=query_positions,
                head_mask=None if head_mask is None else head_mask[i],
                cache=layer_cache, cache_index=None if cache is None else cache.length,
                deterministic=deterministic, output_attentions=output_attentions,
            )
            if output_hidden_states:
                all_hidden.append(hidden_states)
            all_attn.append(probs)
            all_cross.append(cross)
            if layer_new_cache is not None:
                new_keys.append(layer_new_cache[0])
                new_values.append(layer_new_cache[1])
        new_cache = None
        if cache is not None:
            new_cache = kv_cache.KVCache(
                tuple(new_keys), tuple(new_values), cache.length + hidden_states.shape[1]
            )
        has_cross = encoder_hidden_states is not None and cfg.add_cross_attention
        return dict(
            last_hidden_state=hidden_states,
            hidden_states=tuple(all_hidden) if output_hidden_states else None,
            attentions=tuple(all_attn) if output_attentions else None,
            cross_attentions=tuple(all_cross) if (output_attentions and has_cross) else None,
            past_key_values=new_cache,
        )


def expand_head_mask(head_mask: Array | None, num_layers: int) -> Array | None:
    """HF's head_mask ``[H]`` or ``[num_layers, H]`` -> ``[num_layers, 1, H, 1, 1]``."""
    if head_mask is None:
        return None
    head_mask = jnp.asarray(head_mask)
    if head_mask.ndim == 1:
        head_mask = jnp.broadcast_to(head_mask[None], (num_layers, head_mask.shape[0]))
    if head_mask.ndim != 2 or head_mask.shape[0] != num_layers:
        raise ValueError(f"head_mask must be [num_heads] or [num_layers={num_layers}, num_heads], "
                         f"got shape {head_mask.shape}")
    return head_mask[:, None, :, None, None]


class BertPooler(nn.Module):
    """tanh(dense(first token))."""

    config: Any
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, hidden_states: Array) -> Array:
        cfg = self.config
        x = Dense(cfg.hidden_size, ("embed", "embed_out"), std=cfg.initializer_range,
                  dtype=self.dtype, param_dtype=self.param_dtype, name="dense")(hidden_states[:, 0])
        return jnp.tanh(x)
