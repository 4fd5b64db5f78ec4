"""IDEFICS: a LLaMA-style decoder reading images through gated cross-attention (Flamingo).

A CLIP vision encoder (optionally followed by a perceiver resampler) turns each image into
a sequence of vectors; every ``cross_layer_interval``-th decoder layer is preceded by a
gated cross-attention block in which the text attends to the images its
``image_attention_mask`` allows, scaled by ``tanh(alpha)``. Parameter paths mirror
``transformers``' ``Idefics*`` modules (``model/gated_cross_attn_layers_0/cross_attn/q_proj``).

Decoding: ``model.init_cache(batch, max_length)`` gives a fixed-size cache of the decoder's
self-attention (one compilation for every step; ``attention_mask`` then spans
``max_length``). The image states of the first call (``image_hidden_states``) are passed
back as ``image_encoder_embeddings`` / ``perceiver_embeddings`` afterwards, so the vision
tower runs once per generation, and the image keys/values of every gated cross-attention
layer (``cross_attention_kv`` of the first call's output, an input of the later ones), so no
step projects the images again (:meth:`IdeficsForVisionText2Text.decode_inputs`).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Mapping
from typing import Any

import flax.linen as nn
import flax.struct
import jax
import jax.numpy as jnp

from converters.mapping import KeyTable
from zoo import outputs as out
from zoo.attention.dense import dot_product_attention
from zoo.config import ZooConfig, as_pair, config_dataclass
from zoo.nn import kv_cache, masks
from zoo.nn.attention_projection import QKV_PROJ, QKVProjection
from zoo.nn.clip import CLIPEncoderLayer
from zoo.nn.dropout import Dropout
from zoo.nn.layers import ACT2FN, Dense, LayerNorm, normal_init, ones_init, zeros_init
from zoo.nn.module import PretrainedModule
from zoo.nn.llama import GatedMLP, RMSNorm, apply_rotary, rotary_cos_sin
from zoo.nn.losses import causal_lm_loss
from zoo.nn.resize import resize
from zoo.nn.inputs import check_float, check_ids, check_mask
from zoo.nn.vision import PatchProjection, check_pixel_values

Array = jax.Array
ALPHA_INITIALIZERS = ("zeros", "ones", "normal", "gaussian", "random")


# ---------------------------------------------------------------------------- configs
@config_dataclass
class IdeficsVisionConfig(ZooConfig):
    """HF ``IdeficsVisionConfig`` (``embed_dim`` is the width; ``hidden_size`` aliases it)."""

    model_type = "idefics_vision"

    embed_dim: int = 768
    image_size: int = 224
    intermediate_size: int = 5120
    patch_size: int = 14
    num_hidden_layers: int = 32
    num_attention_heads: int = 16
    num_channels: int = 3
    hidden_act: str = "gelu"
    layer_norm_eps: float = 1e-5
    attention_dropout: float = 0.0
    initializer_range: float = 0.02
    initializer_factor: float = 1.0

    @property
    def hidden_size(self) -> int:
        return self.embed_dim

    def validate(self) -> None:
        super().validate()
        self._require_choice("hidden_act", set(ACT2FN))
        self._require_heads_divide("embed_dim")
        for name in ("image_size", "patch_size"):
            pair = as_pair(getattr(self, name), name)
            if pair[0] != pair[1]:
                self._unsupported(name, getattr(self, name), "HF's IDEFICS vision tower is square")


@config_dataclass
class IdeficsPerceiverConfig(ZooConfig):
    """HF ``IdeficsPerceiverConfig`` (HF spells its model_type ``idefics_perciever``)."""

    model_type = "idefics_perciever"

    use_resampler: bool = False
    resampler_n_latents: int = 64
    resampler_depth: int = 6
    resampler_n_heads: int = 16
    resampler_head_dim: int = 96
    qk_layer_norms_perceiver: bool = False


@config_dataclass
class IdeficsConfig(ZooConfig):
    """HF ``IdeficsConfig``: the decoder's fields, ``vision_config`` / ``perceiver_config`` dicts
    (``.vision`` / ``.perceiver``). ``freeze_*`` fields steer training only (see
    :func:`frozen_parameters`)."""

    model_type = "idefics"

    vocab_size: int = 32000
    additional_vocab_size: int = 0
    hidden_size: int = 4096
    intermediate_size: int = 11008
    num_hidden_layers: int = 32
    num_attention_heads: int = 32
    dropout: float = 0.0
    hidden_act: str = "silu"
    initializer_range: float = 0.02
    alpha_initializer: str = "zeros"
    alphas_initializer_range: float = 0.0
    alpha_type: str = "float"
    rms_norm_eps: float = 1e-6
    use_cache: bool = True
    pad_token_id: int | None = 0
    bos_token_id: int | None = 1
    eos_token_id: int | tuple[int, ...] | None = 2
    tie_word_embeddings: bool = False
    cross_layer_interval: int = 1
    qk_layer_norms: bool = False
    freeze_text_layers: bool = True
    freeze_text_module_exceptions: tuple[str, ...] = ()
    freeze_lm_head: bool = False
    freeze_vision_layers: bool = True
    freeze_vision_module_exceptions: tuple[str, ...] = ()
    use_resampler: bool = False
    vision_config: Mapping[str, Any] | None = None
    max_position_embeddings: int = 2048
    perceiver_config: Mapping[str, Any] | None = None
    rope_parameters: Mapping[str, Any] | None = None

    @functools.cached_property
    def vision(self) -> IdeficsVisionConfig:
        return IdeficsVisionConfig.from_dict(dict(self.vision_config or {}, model_type=IdeficsVisionConfig.model_type))

    @functools.cached_property
    def perceiver(self) -> IdeficsPerceiverConfig:
        return IdeficsPerceiverConfig.from_dict(dict(self.perceiver_config or {},
                                                     model_type=IdeficsPerceiverConfig.model_type))

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads

    @property
    def rope_theta(self) -> float:
        return float((self.rope_parameters or {}).get("rope_theta", 10000.0))

    @property
    def num_cross_layers(self) -> int:
        return self.num_hidden_layers // self.cross_layer_interval

    def validate(self) -> None:
        super().validate()
        _ = (self.vision, self.perceiver)
        self._require_choice("hidden_act", set(ACT2FN))
        self._require_choice("alpha_type", {"float", "vector"})
        self._require_choice("alpha_initializer", set(ALPHA_INITIALIZERS))
        self._require_heads_divide()
        if self.num_hidden_layers % self.cross_layer_interval:  # >= 1: ZooConfig's field checks
            self._unsupported("cross_layer_interval", self.cross_layer_interval,
                              f"must divide num_hidden_layers={self.num_hidden_layers} (HF builds "
                              f"{self.num_hidden_layers} // interval cross layers and indexes past them)")
        rope = dict(self.rope_parameters or {})
        if rope.get("rope_type", "default") != "default":
            self._unsupported("rope_parameters", self.rope_parameters, "only the default rotary embedding")
        if self.extra.get("rope_scaling"):
            self._unsupported("rope_scaling", self.extra["rope_scaling"], "rotary scaling is not implemented")
        for name in ("freeze_text_module_exceptions", "freeze_vision_module_exceptions"):
            unknown = set(getattr(self, name)) - set(_FREEZE_EXCEPTIONS)
            if unknown:
                self._unsupported(name, getattr(self, name), f"module kinds are {sorted(_FREEZE_EXCEPTIONS)}")

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "IdeficsConfig":
        data = dict(data)
        for key in ("vision_config", "perceiver_config", "rope_parameters"):
            if isinstance(data.get(key), Mapping):
                data[key] = dict(data[key])
        if data.get("rope_parameters") is None and "rope_theta" in data:  # older config.json spelling
            data["rope_parameters"] = {"rope_type": "default", "rope_theta": data.pop("rope_theta")}
        return super().from_dict(data)


# Module names of each HF module kind, for freeze_*_module_exceptions (IDEFICS' RMSNorms are
# not nn.LayerNorm, and the patch embedding is a Conv2d: neither is ever an exception).
_FREEZE_EXCEPTIONS = {
    "LayerNorm": r"layer_norm\d*|pre_layrnorm|post_layernorm",
    "Linear": r"[qkv]_proj|out_proj|o_proj|fc\d?|c_proj|gate_proj|up_proj|down_proj",
    "Embedding": r"position_embedding|embed_tokens",
}


def frozen_parameters(config: IdeficsConfig) -> list[str]:
    """Regexes of the parameter paths HF freezes (``requires_grad=False``) for this config, for
    ``zoo.train.freeze(tx, params, frozen_parameters(config))``: the decoder layers and final
    norm (``freeze_text_layers``, which also freezes the base token embeddings), the base LM
    head (``freeze_lm_head``), the vision tower (``freeze_vision_layers``), except modules of the
    kinds in ``freeze_*_module_exceptions``. Cross-attention layers, the resampler and the
    additional (decoupled) vocabulary always train."""

    def under(prefix: str, exceptions) -> str:
        kept = "|".join(_FREEZE_EXCEPTIONS[kind] for kind in exceptions)
        return rf"^(model/)?{prefix}/" + (rf"(?!(.*/)?({kept})/[^/]+$)" if kept else "")

    frozen = []
    if config.freeze_text_layers:
        frozen += [under(r"layers_\d+", config.freeze_text_module_exceptions), r"^(model/)?norm/",
                   r"^(model/)?embed_tokens/embedding$"]
    if config.freeze_lm_head:
        frozen.append(r"^lm_head/kernel$")
    if config.freeze_vision_layers:
        frozen.append(under("vision_model", config.freeze_vision_module_exceptions))
    return frozen


# ------------------------------------------------------------------- vision encoder
class IdeficsVisionEmbeddings(nn.Module):
    """Class token + patch embedding (bias-free) + positions: ``[B, C, H, W]`` -> ``[B, 1 + P, D]``.

    Other image sizes with ``interpolate_pos_encoding``: HF's rule, bicubic with the scale
    factor ``(patches + 0.1) / sqrt(positions)`` (not the size ratio)."""

    config: IdeficsVisionConfig
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, pixel_values: Array, interpolate_pos_encoding: bool = False) -> Array:
        cfg = self.config
        check_pixel_values(pixel_values, cfg.num_channels)
        height, width = pixel_values.shape[2:]
        size = as_pair(cfg.image_size, "image_size")[0]
        patch = as_pair(cfg.patch_size, "patch_size")[0]
        if not interpolate_pos_encoding and (height, width) != (size, size):
            raise ValueError(f"Input image size ({height}*{width}) doesn't match model ({size}*{size}); "
                             "pass interpolate_pos_encoding=True")
        x, grid = PatchProjection(cfg.embed_dim, patch, use_bias=False, dtype=self.dtype,
                                  param_dtype=self.param_dtype, name="patch_embedding")(pixel_values)
        cls = self.param("class_embedding", normal_init(1.0, ("embed",)), (cfg.embed_dim,), self.param_dtype)
        cls = jnp.broadcast_to(cls.astype(x.dtype), (x.shape[0], 1, cfg.embed_dim))
        x = jnp.concatenate([cls, x], axis=1)
        side = size // patch
        pos = nn.Embed(side * side + 1, cfg.embed_dim, dtype=self.dtype, param_dtype=self.param_dtype,
                       embedding_init=normal_init(cfg.initializer_range, (None, "embed")),
                       name="position_embedding")(jnp.arange(side * side + 1)[None])
        if interpolate_pos_encoding and (grid != (side, side) or height != width):
            scale = ((height // patch + 0.1) / math.sqrt(side * side), (width // patch + 0.1) / math.sqrt(side * side))
            grid_pos = resize(pos[:, 1:].reshape(1, side, side, -1).astype(jnp.float32), None, axes=(1, 2),
                              method="bicubic", scale_factor=scale)
            if grid_pos.shape[1:3] != grid:
                raise ValueError(f"Number of patches for images {grid} don't match the shape of position "
                                 f"embedding {grid_pos.shape[1:3]}")
            pos = jnp.concatenate([pos[:, :1], grid_pos.reshape(1, -1, cfg.embed_dim).astype(pos.dtype)], axis=1)
        return x + pos.astype(x.dtype)


class IdeficsVisionTransformer(nn.Module):
    """CLIP vision tower: embeddings -> ``pre_layrnorm`` (HF's spelling) -> layers.

    Returns ``(last_hidden_state [B, 1 + P, D], pooled [B, D])``; the pooled output
    (``post_layernorm`` of the class token) is not used by the decoder."""

    config: IdeficsVisionConfig
    attention_fn: Callable = dot_product_attention
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, pixel_values: Array, interpolate_pos_encoding: bool = False, deterministic: bool = True):
        cfg = self.config
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        x = IdeficsVisionEmbeddings(cfg, name="embeddings", **kw)(pixel_values, interpolate_pos_encoding)
        x = LayerNorm(cfg.layer_norm_eps, name="pre_layrnorm", **kw)(x)
        x = IdeficsVisionEncoder(cfg, self.attention_fn, name="encoder", **kw)(x, deterministic)
        pooled = LayerNorm(cfg.layer_norm_eps, name="post_layernorm", **kw)(x[:, 0])
        return x, pooled


class IdeficsVisionEncoder(nn.Module):
    """``layers_i``: CLIP encoder layers, no mask."""

    config: IdeficsVisionConfig
    attention_fn: Callable = dot_product_attention
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: Array, deterministic: bool = True) -> Array:
        for i in range(self.config.num_hidden_layers):
            x, _ = CLIPEncoderLayer(self.config, self.attention_fn, self.dtype, self.param_dtype,
                                    name=f"layers_{i}")(x, None, deterministic)
        return x


# --------------------------------------------------------------- perceiver resampler
class IdeficsPerceiverAttention(nn.Module):
    """Latents attend to ``[context; latents]`` (Flamingo): ``[B, S, D]``, ``[B, N, D]`` -> ``[B, N, D]``."""

    config: IdeficsConfig
    attention_fn: Callable = dot_product_attention
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, context: Array, latents: Array) -> Array:
        p, dim = self.config.perceiver, self.config.vision.embed_dim
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        dense = lambda n, axes, name: Dense(n, axes, std=self.config.initializer_range, use_bias=False, name=name,
                                            **kw)
        context = LayerNorm(1e-5, name="context_layer_norm", **kw)(context)
        latents = LayerNorm(1e-5, name="latents_layer_norm", **kw)(latents)
        both = jnp.concatenate([context, latents], axis=-2)
        inner = p.resampler_n_heads * p.resampler_head_dim
        q, k, v = QKVProjection(p.resampler_n_heads, p.resampler_head_dim, QKV_PROJ, False,
                                std=self.config.initializer_range, **kw)(latents, both)
        if p.qk_layer_norms_perceiver:
            q = LayerNorm(1e-5, axis_name="kv", name="q_layer_norm", **kw)(q)
            k = LayerNorm(1e-5, axis_name="kv", name="k_layer_norm", **kw)(k)
        o, _ = self.attention_fn(q, k, v, scale=p.resampler_head_dim**-0.5)
        return dense(dim, ("heads", "embed"), "output_proj")(o.reshape(*o.shape[:-2], inner))


class IdeficsPerceiverMLP(nn.Module):
    """``c_proj(relu(fc(ln(x))))``, no biases."""

    config: IdeficsConfig
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: Array) -> Array:
        dim = self.config.vision.embed_dim
        kw = dict(std=self.config.initializer_range, use_bias=False, dtype=self.dtype, param_dtype=self.param_dtype)
        x = LayerNorm(1e-5, name="ln", dtype=self.dtype, param_dtype=self.param_dtype)(x)
        return Dense(dim, ("mlp", "embed"), name="c_proj", **kw)(jax.nn.relu(Dense(4 * dim, ("embed", "mlp"),
                                                                                     name="fc", **kw)(x)))


class IdeficsPerceiverResampler(nn.Module):
    """``[B, S, D]`` image states -> ``[B, resampler_n_latents, D]``."""

    config: IdeficsConfig
    attention_fn: Callable = dot_product_attention
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, context: Array) -> Array:
        p, dim = self.config.perceiver, self.config.vision.embed_dim
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        latents = self.param("latents", normal_init(1.0, (None, "embed")), (p.resampler_n_latents, dim),
                             self.param_dtype)
        x = jnp.broadcast_to(latents.astype(self.dtype), (context.shape[0], *latents.shape))
        for i in range(p.resampler_depth):  # HF: blocks.{i}.0 (attention), blocks.{i}.1 (mlp)
            x = IdeficsPerceiverAttention(self.config, self.attention_fn, name=f"blocks_{i}_0", **kw)(context, x) + x
            x = IdeficsPerceiverMLP(self.config, name=f"blocks_{i}_1", **kw)(x) + x
        return LayerNorm(1e-5, name="layer_norm", **kw)(x)


# --------------------------------------------------------------------------- decoder
class IdeficsAttention(nn.Module):
    """Self-attention with rotary positions and a KV cache, or cross-attention to the image
    states (``key_value_states``, no rotary; optional RMSNorm on q and k: ``qk_layer_norms``).

    ``[B, L, E]`` -> (``[B, L, E]``, probs ``[B, H, L, Lk]`` or None, ``(k, v)``: the updated
    cache of self-attention (None without one), the image keys (k-normed) and values
    ``[B, N*S, H, D]`` of cross-attention). Cross-attention given ``cross_kv`` (those of an
    earlier call) projects only the queries.
    """

    config: IdeficsConfig
    is_cross_attention: bool = False
    qk_layer_norms: bool = False
    attention_fn: Callable = dot_product_attention
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: Array, mask: Array | None, *, key_value_states: Array | None = None,
                 cos_sin: tuple[Array, Array] | None = None, cache: tuple[Array, Array] | None = None,
                 cache_index: Array | None = None, cross_kv: tuple[Array, Array] | None = None,
                 deterministic: bool = True, output_attentions: bool = False):
        cfg = self.config
        kw = dict(std=cfg.initializer_range, use_bias=False, dtype=self.dtype, param_dtype=self.param_dtype)
        qkv = QKVProjection(cfg.num_attention_heads, cfg.head_dim, QKV_PROJ, False, std=cfg.initializer_range,
                            dtype=self.dtype, param_dtype=self.param_dtype)
        norm = lambda name: RMSNorm(cfg.rms_norm_eps, "kv", self.dtype, self.param_dtype, name=name)
        if cross_kv is not None:  # the image keys (k-normed) and values of an earlier call
            q_proj, _, _ = qkv.layers()
            q, (k, v) = qkv.split(q_proj(x)), cross_kv
            if self.qk_layer_norms:
                q = norm("q_layer_norm")(q)
        else:
            q, k, v = qkv(x, key_value_states)
            if not self.is_cross_attention:
                q, k = apply_rotary(q, *cos_sin), apply_rotary(k, *cos_sin)
            if self.qk_layer_norms:
                q, k = norm("q_layer_norm")(q), norm("k_layer_norm")(k)
        new_cache = None
        if cache is not None:
            k, v = new_cache = kv_cache.write(cache[0], cache[1], k, v, cache_index)
        elif self.is_cross_attention:
            new_cache = (k, v)
        rng = self.make_rng("dropout") if (not deterministic and cfg.dropout > 0) else None
        o, probs = self.attention_fn(q, k, v, mask=mask, dropout_rate=cfg.dropout, dropout_rng=rng,
                                     deterministic=deterministic, return_probs=output_attentions)
        o = Dense(cfg.hidden_size, ("heads", "embed"), name="o_proj", **kw)(o.reshape(*o.shape[:-2], cfg.hidden_size))
        return o, probs, new_cache


class IdeficsDecoderLayer(nn.Module):
    """Pre-RMSNorm LLaMA layer: ``x + attn(norm(x))``, then ``+ mlp(norm(.))``."""

    config: IdeficsConfig
    attention_fn: Callable = dot_product_attention
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x, mask, cos_sin, cache=None, cache_index=None, deterministic=True,
                 output_attentions=False):
        cfg = self.config
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        drop = Dropout(cfg.dropout)
        h, probs, new_cache = IdeficsAttention(cfg, attention_fn=self.attention_fn, name="self_attn", **kw)(
            RMSNorm(cfg.rms_norm_eps, name="input_layernorm", **kw)(x), mask, cos_sin=cos_sin, cache=cache,
            cache_index=cache_index, deterministic=deterministic, output_attentions=output_attentions)
        x = x + drop(h, deterministic=deterministic)
        h = GatedMLP(cfg.intermediate_size, cfg.hidden_act, cfg.initializer_range, name="mlp", **kw)(
            RMSNorm(cfg.rms_norm_eps, name="post_attention_layernorm", **kw)(x))
        return x + drop(h, deterministic=deterministic), probs, new_cache


def _alpha_init(config: IdeficsConfig):
    axes = (None,) if config.alpha_type == "float" else (None, None, "embed")
    if config.alpha_initializer == "zeros":
        return zeros_init(axes)
    if config.alpha_initializer == "ones":
        return ones_init(axes)
    return normal_init(config.alphas_initializer_range, axes)


class IdeficsGatedCrossAttentionLayer(nn.Module):
    """``x + tanh(alpha_cross_attn) * gate * xattn(norm(x), images)``, then
    ``+ tanh(alpha_dense) * mlp(norm(.))``; ``gate [B, L]`` zeroes tokens that see no image."""

    config: IdeficsConfig
    attention_fn: Callable = dot_product_attention
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x, images, image_mask, gate, deterministic=True, cross_kv=None):
        """-> (``[B, L, E]``, the image ``(keys, values)`` ``[B, N*S, H, D]``: ``cross_kv`` when given)."""
        cfg = self.config
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        shape = (1,) if cfg.alpha_type == "float" else (1, 1, cfg.hidden_size)
        alpha_attn = self.param("alpha_cross_attn", _alpha_init(cfg), shape, self.param_dtype)
        alpha_dense = self.param("alpha_dense", _alpha_init(cfg), shape, self.param_dtype)
        drop = Dropout(cfg.dropout)
        h, _, kv = IdeficsAttention(cfg, True, cfg.qk_layer_norms, self.attention_fn, name="cross_attn", **kw)(
            RMSNorm(cfg.rms_norm_eps, name="input_layernorm", **kw)(x), image_mask, key_value_states=images,
            cross_kv=cross_kv, deterministic=deterministic)
        h = jnp.where(gate[:, :, None], drop(h, deterministic=deterministic), 0.0)
        x = x + jnp.tanh(alpha_attn).astype(h.dtype) * h
        h = GatedMLP(cfg.intermediate_size, cfg.hidden_act, cfg.initializer_range, name="mlp", **kw)(
            RMSNorm(cfg.rms_norm_eps, name="post_attention_layernorm", **kw)(x))
        return x + jnp.tanh(alpha_dense).astype(h.dtype) * drop(h, deterministic=deterministic), kv


class IdeficsDecoupledEmbedding(nn.Module):
    """Ids ``< vocab_size`` read ``embedding``, ids above it ``additional_embedding/embedding``."""

    vocab_size: int
    additional_vocab_size: int
    features: int
    std: float = 0.02
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32

    def setup(self):
        init = normal_init(self.std, ("vocab", "embed"))
        self.embedding = self.param("embedding", init, (self.vocab_size, self.features), self.param_dtype)
        if self.additional_vocab_size:
            self.additional_embedding = nn.Embed(self.additional_vocab_size, self.features, dtype=self.dtype,
                                                 param_dtype=self.param_dtype, embedding_init=init)

    def __call__(self, ids: Array) -> Array:
        x = jnp.take(self.embedding, jnp.clip(ids, 0, self.vocab_size - 1), axis=0).astype(self.dtype)
        if self.additional_vocab_size:
            extra = self.additional_embedding(jnp.clip(ids - self.vocab_size, 0, self.additional_vocab_size - 1))
            x = jnp.where((ids >= self.vocab_size)[..., None], extra, x)
        return x

    def tables(self) -> list[Array]:
        """The base and (if any) additional tables ``[V, C]``, ``[A, C]`` (for a tied LM head)."""
        return [self.embedding] + ([self.additional_embedding.embedding] if self.additional_vocab_size else [])


class IdeficsDecoupledLinear(nn.Module):
    """``[..., C]`` -> ``[..., V + A]``: ``kernel [C, V]`` then ``additional_fc/kernel [C, A]`` (no biases)."""

    features: int
    additional_features: int
    std: float = 0.02
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: Array) -> Array:
        kernel = self.param("kernel", normal_init(self.std, ("embed", "vocab")), (x.shape[-1], self.features),
                            self.param_dtype)
        y = jnp.dot(x, kernel.astype(self.dtype))
        if self.additional_features:
            extra = Dense(self.additional_features, ("embed", "vocab"), std=self.std, use_bias=False, dtype=self.dtype,
                          param_dtype=self.param_dtype, name="additional_fc")(x)
            y = jnp.concatenate([y, extra], axis=-1)
        return y


def _image_inputs(cfg: IdeficsConfig, pixel_values, image_encoder_embeddings, perceiver_embeddings):
    given = [n for n, v in (("pixel_values", pixel_values), ("image_encoder_embeddings", image_encoder_embeddings),
                            ("perceiver_embeddings", perceiver_embeddings)) if v is not None]
    if len(given) != 1:
        raise ValueError("Exactly 1 of pixel_values, image_encoder_embeddings or perceiver_embeddings has to be "
                         f"given, got {given or 'none'}")
    if perceiver_embeddings is not None and not cfg.use_resampler:
        raise ValueError("perceiver_embeddings need use_resampler=True in the config")
    value = jnp.asarray({"pixel_values": pixel_values, "image_encoder_embeddings": image_encoder_embeddings,
                         "perceiver_embeddings": perceiver_embeddings}[given[0]])
    want = 5 if given[0] == "pixel_values" else 4
    if value.ndim != want:
        layout = "[batch, num_images, channels, height, width]" if want == 5 else \
            f"[batch, num_images, sequence, {cfg.vision.embed_dim}]"
        raise ValueError(f"{given[0]} must be {layout}, got shape {value.shape}")
    if want == 4 and value.shape[-1] != cfg.vision.embed_dim:
        raise ValueError(f"{given[0]} must have width vision_config.embed_dim={cfg.vision.embed_dim}, "
                         f"got shape {value.shape}")
    return given[0], value


@flax.struct.dataclass
class IdeficsBaseModelOutputWithPast(out.IdeficsBaseModelOutputWithPast):
    """HF's fields, plus ``cross_attention_kv``: per gated cross-attention layer the image
    ``(keys, values)`` ``[B, N*S, H, D]`` (keys after ``k_layer_norm``), returned when decoding
    with a cache (``use_cache`` and ``past_key_values``) and not given, for the later steps."""

    cross_attention_kv: tuple | None = None


@flax.struct.dataclass
class IdeficsCausalLMOutputWithPast(out.IdeficsCausalLMOutputWithPast):
    """HF's fields, plus ``cross_attention_kv`` (see :class:`IdeficsBaseModelOutputWithPast`)."""

    cross_attention_kv: tuple | None = None


def _check_cross_kv(cfg: IdeficsConfig, cross_kv, batch: int, image_keys: int):
    want = (batch, image_keys, cfg.num_attention_heads, cfg.head_dim)
    if (not isinstance(cross_kv, (tuple, list)) or len(cross_kv) != cfg.num_cross_layers
            or any(len(kv) != 2 or any(jnp.shape(a) != want for a in kv) for kv in cross_kv)):
        shapes = jax.tree.map(jnp.shape, cross_kv) if isinstance(cross_kv, (tuple, list)) else type(cross_kv)
        raise ValueError(f"cross_attention_kv must be {cfg.num_cross_layers} (keys, values) pairs of shape {want} "
                         f"(batch, images * image length, heads, head_dim), got {shapes}")


class IdeficsModel(PretrainedModule):
    """The decoder with its vision encoder and (optional) perceiver resampler.

    Inputs: ``input_ids [B, L]`` (or ``inputs_embeds``), ``attention_mask [B, L]`` (``[B,
    max_length]`` with a cache), exactly one of ``pixel_values [B, N, C, H, W]``,
    ``image_encoder_embeddings [B, N, S, Dv]`` or ``perceiver_embeddings [B, N, latents, Dv]``,
    and ``image_attention_mask [B, L, N]`` (1: the token may attend to image n; default: all
    images); when decoding, ``cross_attention_kv`` (an earlier call's, see
    :class:`IdeficsBaseModelOutputWithPast`) instead of projecting the images again.
    Output ``image_hidden_states [B, N, S', Dv]``: what the text attended to.
    """

    config: IdeficsConfig
    attention_fn: Callable | None = None  # a custom dense kernel, else attention_kernel's choice
    attention_kernel: str = "auto"  # see zoo.attention.kernels
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32

    def init_cache(self, batch_size: int, max_length: int, dtype=None) -> kv_cache.KVCache:
        """Empty fixed-size cache of the decoder's self-attention for ``max_length`` positions."""
        cfg = self.config
        return kv_cache.KVCache.create(cfg.num_hidden_layers, batch_size, max_length, cfg.num_attention_heads,
                                       cfg.head_dim, dtype or self.dtype)

    def setup(self):
        cfg = self.config
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        self.embed_tokens = IdeficsDecoupledEmbedding(cfg.vocab_size, cfg.additional_vocab_size, cfg.hidden_size,
                                                      cfg.initializer_range, **kw)
        self.vision_model = IdeficsVisionTransformer(config=cfg.vision, attention_fn=self.dense_attention(), **kw)
        if cfg.use_resampler:
            self.perceiver_resampler = IdeficsPerceiverResampler(config=cfg, attention_fn=self.dense_attention(), **kw)
        self.layers = [IdeficsDecoderLayer(cfg, self.dense_attention(), **kw) for _ in range(cfg.num_hidden_layers)]
        self.gated_cross_attn_layers = [IdeficsGatedCrossAttentionLayer(cfg, self.dense_attention(), **kw)
                                        for _ in range(cfg.num_cross_layers)]
        self.norm = RMSNorm(cfg.rms_norm_eps, **kw)

    def image_states(self, pixel_values=None, image_encoder_embeddings=None, perceiver_embeddings=None,
                     interpolate_pos_encoding: bool = False, deterministic: bool = True) -> Array:
        """What the text attends to: ``[B, N, S, Dv]`` (the resampler's latents when used)."""
        cfg = self.config
        kind, value = _image_inputs(cfg, pixel_values, image_encoder_embeddings, perceiver_embeddings)
        batch, num_images = value.shape[:2]
        if kind == "perceiver_embeddings":
            return value.astype(self.dtype)
        if kind == "pixel_values":
            states, _ = self.vision_model(value.reshape(batch * num_images, *value.shape[2:]),
                                          interpolate_pos_encoding, deterministic)
        else:
            states = value.reshape(batch * num_images, *value.shape[2:]).astype(self.dtype)
        if cfg.use_resampler:
            states = self.perceiver_resampler(states)
        return states.reshape(batch, num_images, *states.shape[1:])

    def __call__(self, input_ids=None, attention_mask=None, position_ids=None,
                 past_key_values: kv_cache.KVCache | None = None, inputs_embeds=None, pixel_values=None,
                 image_encoder_embeddings=None, perceiver_embeddings=None, image_attention_mask=None,
                 use_cache: bool | None = None, interpolate_pos_encoding: bool = False,
                 output_attentions: bool = False, output_hidden_states: bool = False,
                 deterministic: bool = True, cross_attention_kv=None) -> IdeficsBaseModelOutputWithPast:
        cfg = self.config
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("You must specify exactly one of input_ids or inputs_embeds")
        if input_ids is not None:
            x = self.embed_tokens(check_ids("input_ids", input_ids))
        else:
            x = check_float("inputs_embeds", inputs_embeds, f"[batch, length, {cfg.hidden_size}]",
                            last_dim=cfg.hidden_size).astype(self.dtype)
        batch, length = x.shape[:2]
        use_cache = (cfg.use_cache if use_cache is None else use_cache) and past_key_values is not None
        cache = past_key_values if use_cache else None
        past = 0 if cache is None else cache.length
        key_length = length if cache is None else cache.max_length
        attention_mask = check_mask("attention_mask", attention_mask, (batch, key_length),
                                    "[batch, cache max_length]" if cache is not None else "[batch, length]")
        position_ids = check_ids("position_ids", position_ids, shape=(None, length))
        if position_ids is None:
            if attention_mask is not None:  # HF: positions count the real tokens (left padding)
                positions = jnp.cumsum(attention_mask.astype(jnp.int32), axis=-1) - 1
                positions = jnp.where(attention_mask == 0, 1, positions)
                position_ids = jax.lax.dynamic_slice_in_dim(positions, past, length, axis=1)
            else:
                position_ids = jnp.broadcast_to(jnp.arange(length)[None] + past, (batch, length))
        position_ids = jnp.asarray(position_ids)
        mask = masks.combine(masks.padding_mask(attention_mask, length),
                             masks.causal_mask(jnp.arange(length) + past, key_length))

        images = self.image_states(pixel_values, image_encoder_embeddings, perceiver_embeddings,
                                   interpolate_pos_encoding, deterministic)
        num_images, image_len = images.shape[1], images.shape[2]
        if image_attention_mask is None:
            image_attention_mask = jnp.ones((batch, length, num_images), jnp.int32)
        image_attention_mask = jnp.asarray(image_attention_mask)
        if image_attention_mask.shape != (batch, length, num_images):
            raise ValueError(f"image_attention_mask must be [batch, length, num_images] = "
                             f"{(batch, length, num_images)}, got {image_attention_mask.shape}")
        image_keys = jnp.repeat(image_attention_mask.astype(bool), image_len, axis=-1)  # [B, L, N*S]
        image_mask = image_keys[:, None]
        gate = image_keys.any(axis=-1)
        flat_images = images.reshape(batch, num_images * image_len, images.shape[-1])
        if cross_attention_kv is not None:
            _check_cross_kv(cfg, cross_attention_kv, batch, num_images * image_len)
        new_cross_kv = []

        cos_sin = rotary_cos_sin(position_ids, cfg.head_dim, cfg.rope_theta, self.dtype)
        hidden_states, attentions, new_keys, new_values = [], [], [], []
        for i, layer in enumerate(self.layers):
            if i % cfg.cross_layer_interval == 0:
                j = i // cfg.cross_layer_interval
                x, kv = self.gated_cross_attn_layers[j](
                    x, flat_images, image_mask, gate, deterministic,
                    None if cross_attention_kv is None else tuple(cross_attention_kv[j]))
                new_cross_kv.append(kv)
            if i == 0:  # HF's hidden states: the first decoder layer's input, then each layer's output
                hidden_states.append(x)
            layer_cache = (cache.keys[i], cache.values[i]) if cache is not None else None
            x, probs, new = layer(x, mask, cos_sin, layer_cache, past, deterministic, output_attentions)
            attentions.append(probs)
            hidden_states.append(x)
            if new is not None:
                new_keys.append(new[0])
                new_values.append(new[1])
        x = self.norm(x)
        hidden_states[-1] = x  # the last one after the final norm
        new_cache = kv_cache.KVCache(tuple(new_keys), tuple(new_values), cache.length + length) if cache else None
        return IdeficsBaseModelOutputWithPast(
            last_hidden_state=x, past_key_values=new_cache,
            hidden_states=tuple(hidden_states) if output_hidden_states else None,
            attentions=tuple(attentions) if output_attentions else None, image_hidden_states=images,
            cross_attention_kv=tuple(new_cross_kv) if cache is not None and cross_attention_kv is None else None)

    @staticmethod
    def dummy_inputs(config: IdeficsConfig) -> dict:
        size = as_pair(config.vision.image_size, "image_size")[0]
        return {"input_ids": jnp.ones((1, 2), jnp.int32),
                "pixel_values": jnp.zeros((1, 1, config.vision.num_channels, size, size))}


class IdeficsForVisionText2Text(PretrainedModule):
    """``model`` + the decoupled LM head: ``logits [B, L, vocab_size + additional_vocab_size]``;
    ``labels [B, L]`` give the next-token loss (``-100`` ignored) over the whole vocabulary."""

    config: IdeficsConfig
    attention_fn: Callable | None = None  # a custom dense kernel, else attention_kernel's choice
    attention_kernel: str = "auto"  # see zoo.attention.kernels
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32

    def setup(self):
        cfg = self.config
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        self.model = IdeficsModel(config=cfg, attention_fn=self.attention_fn, attention_kernel=self.attention_kernel, **kw)
        if not cfg.tie_word_embeddings:
            self.lm_head = IdeficsDecoupledLinear(cfg.vocab_size, cfg.additional_vocab_size, cfg.initializer_range,
                                                  **kw)

    def init_cache(self, batch_size: int, max_length: int, dtype=None) -> kv_cache.KVCache:
        """Empty fixed-size cache of the decoder's self-attention for ``max_length`` positions."""
        return IdeficsModel.init_cache(self, batch_size, max_length, dtype)

    def logits(self, hidden: Array) -> Array:
        cfg = self.config
        if cfg.tie_word_embeddings:
            return jnp.concatenate([hidden @ t.astype(hidden.dtype).T for t in self.model.embed_tokens.tables()], -1)
        return self.lm_head(hidden)

    def __call__(self, input_ids=None, attention_mask=None, position_ids=None, past_key_values=None,
                 inputs_embeds=None, pixel_values=None, image_encoder_embeddings=None, perceiver_embeddings=None,
                 image_attention_mask=None, labels=None, use_cache: bool | None = None,
                 interpolate_pos_encoding: bool = False, logits_to_keep: int = 0, output_attentions: bool = False,
                 output_hidden_states: bool = False, deterministic: bool = True,
                 cross_attention_kv=None) -> IdeficsCausalLMOutputWithPast:
        o = self.model(input_ids, attention_mask, position_ids, past_key_values, inputs_embeds, pixel_values,
                       image_encoder_embeddings, perceiver_embeddings, image_attention_mask, use_cache,
                       interpolate_pos_encoding, output_attentions, output_hidden_states, deterministic,
                       cross_attention_kv)
        hidden = o.last_hidden_state if not logits_to_keep else o.last_hidden_state[:, -logits_to_keep:]
        logits = self.logits(hidden)
        loss = None if labels is None else causal_lm_loss(logits, jnp.asarray(labels))
        return IdeficsCausalLMOutputWithPast(
            loss=loss, logits=logits, past_key_values=o.past_key_values, hidden_states=o.hidden_states,
            attentions=o.attentions, image_hidden_states=o.image_hidden_states,
            cross_attention_kv=o.cross_attention_kv)

    def decode_inputs(self, outputs, model_inputs: dict) -> dict:
        """Inputs of the single-token steps after the first call (``zoo.generation``): the image
        states computed once, the image keys/values of every gated cross-attention layer
        (``cross_attention_kv``, when ``outputs`` carry them: then no step projects the images)
        and the last row of ``image_attention_mask`` (HF's rule)."""
        inputs = {k: v for k, v in model_inputs.items()
                  if k not in ("pixel_values", "image_encoder_embeddings", "perceiver_embeddings")}
        key = "perceiver_embeddings" if self.config.use_resampler else "image_encoder_embeddings"
        inputs[key] = outputs.image_hidden_states
        inputs.pop("interpolate_pos_encoding", None)
        if getattr(outputs, "cross_attention_kv", None) is not None:
            inputs["cross_attention_kv"] = outputs.cross_attention_kv
        if inputs.get("image_attention_mask") is not None:
            inputs["image_attention_mask"] = jnp.asarray(inputs["image_attention_mask"])[:, -1:]
        return inputs

    @staticmethod
    def dummy_inputs(config: IdeficsConfig) -> dict:
        return IdeficsModel.dummy_inputs(config)


KEY_TABLE = KeyTable(
    base_model_prefix="model",
    aliases=(("lm_head.weight", "model.embed_tokens.weight"),
             ("lm_head.additional_fc.weight", "model.embed_tokens.additional_embedding.weight")),
    ignore_unused=(r"position_ids$", r"inv_freq$"),
)

ARCHITECTURES = {
    "IdeficsModel": IdeficsModel,
    "IdeficsForVisionText2Text": IdeficsForVisionText2Text,
}
