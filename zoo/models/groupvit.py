"""GroupViT: a CLIP-style text tower and a grouping vision tower (work in progress: the
model and its parity tests; preprocessing, CLI, notebook and benchmark follow).

Parameter paths mirror ``transformers``' ``GroupViT*`` modules
(``vision_model/encoder/stages_1/downsample/assign/q_proj``). The projection heads'
BatchNorm1d statistics live in the ``batch_stats`` collection.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from converters.mapping import KeyTable
from zoo.attention.dense import dot_product_attention
from zoo.config import ZooConfig, as_pair, config_dataclass
from zoo.nn.attention_projection import QKV_PROJ, QKVProjection
from zoo.nn.clip import CLIPEncoderLayer, CLIPMLP, clip_attention
from zoo.nn.dropout import Dropout
from zoo.nn.layers import ACT2FN, Dense, Embed, LayerNorm
from zoo.nn.losses import cross_entropy
from zoo.nn.inputs import check_ids, check_images, check_length, check_mask
from zoo.nn.module import PretrainedModule
from zoo.nn.resize import resize
from zoo.nn.upernet import BatchNorm
from zoo.nn.vision import PatchEmbeddings
from zoo.nn.vision import interpolate_pos_encoding as resample_positions
from zoo import outputs as out

Array = jax.Array


# ---------------------------------------------------------------------------- configs
@config_dataclass
class GroupViTTextConfig(ZooConfig):
    """HF ``GroupViTTextConfig``."""

    model_type = "groupvit_text_model"

    vocab_size: int = 49408
    hidden_size: int = 256
    intermediate_size: int = 1024
    num_hidden_layers: int = 12
    num_attention_heads: int = 4
    max_position_embeddings: int = 77
    hidden_act: str = "quick_gelu"
    layer_norm_eps: float = 1e-5
    dropout: float = 0.0
    attention_dropout: float = 0.0
    initializer_range: float = 0.02
    initializer_factor: float = 1.0
    pad_token_id: int | None = 1
    bos_token_id: int | None = 49406
    eos_token_id: int | None = 49407

    def validate(self) -> None:
        super().validate()
        self._require_choice("hidden_act", set(ACT2FN))
        self._require_heads_divide()
        if not isinstance(self.eos_token_id, int):
            self._unsupported("eos_token_id", self.eos_token_id, "pooling needs one end-of-text id")


@config_dataclass
class GroupViTVisionConfig(ZooConfig):
    """HF ``GroupViTVisionConfig``."""

    model_type = "groupvit_vision_model"

    hidden_size: int = 384
    intermediate_size: int = 1536
    num_hidden_layers: int = 12
    depths: tuple[int, ...] = (6, 3, 3)
    num_group_tokens: tuple[int, ...] = (64, 8, 0)
    num_output_groups: tuple[int, ...] = (64, 8, 8)
    num_attention_heads: int = 6
    image_size: int | tuple[int, int] = 224
    patch_size: int | tuple[int, int] = 16
    num_channels: int = 3
    hidden_act: str = "gelu"
    layer_norm_eps: float = 1e-5
    dropout: float = 0.0
    attention_dropout: float = 0.0
    initializer_range: float = 0.02
    initializer_factor: float = 1.0
    assign_eps: float = 1.0
    assign_mlp_ratio: tuple[float, ...] = (0.5, 4)

    def validate(self) -> None:
        super().validate()
        self._require_choice("hidden_act", set(ACT2FN))
        self._require_heads_divide()
        if not len(self.depths) == len(self.num_group_tokens) == len(self.num_output_groups):
            self._unsupported("depths", self.depths, "depths, num_group_tokens and num_output_groups differ in length")
        patch = as_pair(self.patch_size, "patch_size")
        if patch[0] != patch[1]:
            self._unsupported("patch_size", self.patch_size, "only square patches")
        for i in range(1, len(self.depths)):
            if self.num_group_tokens[i] and self.num_group_tokens[i - 1] != self.num_output_groups[i - 1]:
                self._unsupported("num_output_groups", self.num_output_groups,
                                  f"stage {i}'s group projector takes num_output_groups[{i - 1}] tokens but "
                                  f"stage {i - 1} passes num_group_tokens[{i - 1}]={self.num_group_tokens[i - 1]} "
                                  "(HF builds such a model and fails in its forward)")

    @property
    def patch(self) -> int:
        return as_pair(self.patch_size, "patch_size")[0]


@config_dataclass
class GroupViTConfig(ZooConfig):
    """HF ``GroupViTConfig``: ``text_config`` / ``vision_config`` dicts (``.text`` / ``.vision``)."""

    model_type = "groupvit"

    text_config: Mapping[str, Any] | None = None
    vision_config: Mapping[str, Any] | None = None
    projection_dim: int = 256
    projection_intermediate_dim: int = 4096
    logit_scale_init_value: float = 2.6592
    initializer_range: float = 0.02
    initializer_factor: float = 1.0
    output_segmentation: bool = False

    @functools.cached_property
    def text(self) -> GroupViTTextConfig:
        """The text tower's config, built (and validated) once."""
        return GroupViTTextConfig.from_dict(dict(self.text_config or {}, model_type=GroupViTTextConfig.model_type))

    @functools.cached_property
    def vision(self) -> GroupViTVisionConfig:
        """The vision tower's config, built (and validated) once."""
        return GroupViTVisionConfig.from_dict(dict(self.vision_config or {},
                                                   model_type=GroupViTVisionConfig.model_type))

    def validate(self) -> None:
        super().validate()
        _ = (self.text, self.vision)  # building the tower configs validates them

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "GroupViTConfig":
        """A ``groupvit`` config, or a bare text / vision tower config (the other tower defaults)."""
        data = dict(data)
        kind = data.get("model_type")
        if kind in (GroupViTTextConfig.model_type, GroupViTVisionConfig.model_type):
            key = "text_config" if kind == GroupViTTextConfig.model_type else "vision_config"
            data = {"model_type": cls.model_type, key: data}
        for key in ("text_config", "vision_config"):
            if isinstance(data.get(key), Mapping):
                data[key] = {k: v for k, v in data[key].items()}
        return super().from_dict(data)


KEY_TABLE = KeyTable(base_model_prefix="groupvit", ignore_unused=(r"position_ids$",))


# ------------------------------------------------------------------------ shared pieces
GroupViTMLP = CLIPMLP
GroupViTEncoderLayer = CLIPEncoderLayer


class GroupViTMixerMLP(CLIPMLP):
    """The MLP across tokens: ``[B, tokens, C]`` -> ``[B, output_size tokens, C]``."""

    def __call__(self, x: Array) -> Array:
        return jnp.swapaxes(super().__call__(jnp.swapaxes(x, 1, 2)), 1, 2)


# ------------------------------------------------------------------------- text tower
class GroupViTTextTransformer(nn.Module):
    """Causal text encoder; pooled output at the end-of-text token (HF's rule: the largest id
    when ``eos_token_id == 2``, the legacy configs, else the first ``eos_token_id``)."""

    config: GroupViTTextConfig
    attention_fn: Callable = dot_product_attention
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, input_ids: Array, attention_mask: Array | None = None, position_ids: Array | None = None,
                 output_attentions: bool = False, output_hidden_states: bool = False,
                 deterministic: bool = True) -> out.BaseModelOutputWithPooling:
        cfg = self.config
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        if input_ids is None:
            raise ValueError("You have to specify input_ids")
        input_ids = jnp.asarray(input_ids)
        check_ids("input_ids", input_ids, "[batch, length]" if input_ids.ndim != 3 else "[batch, num_texts, length]")
        attention_mask = check_mask("attention_mask", attention_mask, input_ids.shape, "[batch, length] (as input_ids)")
        input_ids = input_ids.reshape(-1, input_ids.shape[-1])
        batch, length = input_ids.shape
        if position_ids is None:
            check_length("input_ids", length, cfg.max_position_embeddings,
                         f"max_position_embeddings={cfg.max_position_embeddings}")
            position_ids = jnp.arange(length)[None]
        else:
            position_ids = check_ids("position_ids", position_ids, shape=(None, length))
        x = _TextEmbeddings(cfg, name="embeddings", **kw)(input_ids, position_ids)
        mask = jnp.tril(jnp.ones((length, length), bool))[None, None]
        if attention_mask is not None:
            mask = mask & (attention_mask.reshape(batch, length) != 0)[:, None, None, :]
        x, hidden_states, attentions = GroupViTTextEncoder(cfg, self.attention_fn, name="encoder", **kw)(
            x, mask, deterministic, output_attentions)
        x = LayerNorm(cfg.layer_norm_eps, name="final_layer_norm", **kw)(x)
        if cfg.eos_token_id == 2:
            eos = jnp.argmax(input_ids, axis=-1)
        else:
            eos = jnp.argmax((input_ids == cfg.eos_token_id).astype(jnp.int32), axis=-1)
        pooled = x[jnp.arange(batch), eos]
        return out.BaseModelOutputWithPooling(
            last_hidden_state=x, pooler_output=pooled,
            hidden_states=tuple(hidden_states) if output_hidden_states else None,
            attentions=tuple(attentions) if output_attentions else None)


class GroupViTTextEncoder(nn.Module):
    """``layers_i``; returns the output, the hidden states (input of each layer + output) and the probs."""

    config: GroupViTTextConfig
    attention_fn: Callable = dot_product_attention
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x, mask, deterministic: bool = True, output_attentions: bool = False):
        hidden_states, attentions = [], []
        for i in range(self.config.num_hidden_layers):
            hidden_states.append(x)
            x, probs = GroupViTEncoderLayer(self.config, self.attention_fn, self.dtype, self.param_dtype,
                                            name=f"layers_{i}")(x, mask, deterministic, output_attentions)
            attentions.append(probs)
        hidden_states.append(x)
        return x, hidden_states, attentions


class _TextEmbeddings(nn.Module):
    config: GroupViTTextConfig
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, input_ids: Array, position_ids: Array) -> Array:
        cfg = self.config
        kw = dict(std=cfg.initializer_range, dtype=self.dtype, param_dtype=self.param_dtype)
        tokens = Embed(cfg.vocab_size, cfg.hidden_size, name="token_embedding", **kw)(input_ids)
        return tokens + Embed(cfg.max_position_embeddings, cfg.hidden_size, (None, "embed"),
                              name="position_embedding", **kw)(position_ids)


# ----------------------------------------------------------------------- vision tower
class GroupViTVisionEmbeddings(nn.Module):
    """patch embedding -> LayerNorm -> + position embeddings (no class token) -> dropout."""

    config: GroupViTVisionConfig
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, pixel_values: Array, interpolate_pos_encoding: bool = False,
                 deterministic: bool = True) -> Array:
        cfg = self.config
        height, width = as_pair(cfg.image_size, "image_size")
        pixel_values = check_images(pixel_values, cfg.num_channels, image_size=(height, width),
                                    interpolate=interpolate_pos_encoding)
        x, grid = PatchEmbeddings(cfg.hidden_size, cfg.patch, cfg.num_channels, dtype=self.dtype,
                                  param_dtype=self.param_dtype, name="patch_embeddings")(pixel_values)
        x = LayerNorm(cfg.layer_norm_eps, name="layernorm", dtype=self.dtype, param_dtype=self.param_dtype)(x)
        pos = self.param("position_embeddings", nn.with_logical_partitioning(
            nn.initializers.zeros_init(), (None, None, "embed")),
            (1, (height // cfg.patch) * (width // cfg.patch), cfg.hidden_size), self.param_dtype)
        if interpolate_pos_encoding:
            pos = resample_positions(pos, grid, force=pixel_values.shape[2] != pixel_values.shape[3],
                                              class_token=False)
        x = x + pos.astype(x.dtype)
        return Dropout(cfg.dropout)(x, deterministic=deterministic)



class GroupViTCrossAttentionLayer(nn.Module):
    """query + attn(query -> key); + mlp(norm2(.)); norm_post."""

    config: GroupViTVisionConfig
    attention_fn: Callable = dot_product_attention
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, query: Array, key: Array, deterministic: bool = True) -> Array:
        cfg = self.config
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        x = query + clip_attention(cfg, "attn", self.attention_fn, **kw)(
            query, key_value_states=key, deterministic=deterministic)[0]
        x = x + GroupViTMLP(cfg, name="mlp", **kw)(LayerNorm(cfg.layer_norm_eps, name="norm2", **kw)(x))
        return LayerNorm(cfg.layer_norm_eps, name="norm_post", **kw)(x)


def hard_softmax(logits: Array, axis: int) -> Array:
    """One-hot of the argmax along ``axis`` in the forward pass, softmax gradients (straight
    through), computed as HF does: ``y_hard - stop_gradient(y_soft) + y_soft``."""
    y_soft = jax.nn.softmax(logits, axis=axis)
    y_hard = jax.nn.one_hot(jnp.argmax(y_soft, axis=axis), logits.shape[axis], dtype=logits.dtype, axis=axis)
    return y_hard - jax.lax.stop_gradient(y_soft) + y_soft


class GroupViTAssignAttention(nn.Module):
    """Assign image tokens to groups: a softmax over the *groups* axis, hard (straight-through
    one-hot) in eval and gumbel-hard in training (rng stream ``"gumbel"``), as HF.
    ``[B, G, C]`` groups, ``[B, L, C]`` tokens -> (``[B, G, C]``, soft attention ``[B, G, L]``)."""

    config: GroupViTVisionConfig
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, query: Array, key: Array, deterministic: bool = True):
        cfg = self.config
        dense = lambda name: Dense(cfg.hidden_size, ("embed", "heads"), std=cfg.initializer_range, dtype=self.dtype,
                                   param_dtype=self.param_dtype, name=name)
        # one head over all channels; the scores are a softmax over the groups (queries), so this is
        # no attention kernel's signature: computed here
        q, k, v = (t[..., 0, :] for t in QKVProjection(1, cfg.hidden_size, QKV_PROJ, std=cfg.initializer_range,
                                                       dtype=self.dtype, param_dtype=self.param_dtype)(query, key))
        raw = jnp.einsum("bgc,blc->bgl", q, k) * jnp.asarray(cfg.hidden_size**-0.5, q.dtype)
        if deterministic:
            attn = hard_softmax(raw, axis=-2)
        else:
            gumbels = jax.random.gumbel(self.make_rng("gumbel"), raw.shape, raw.dtype)
            attn = hard_softmax(raw + gumbels, axis=-2)
        soft = jax.nn.softmax(raw, axis=-2)
        attn = attn / (attn.sum(axis=-1, keepdims=True) + cfg.assign_eps)
        return dense("proj")(jnp.einsum("bgl,blc->bgc", attn, v)), soft


class GroupViTTokenAssign(nn.Module):
    """Group tokens -> ``num_output_group`` groups that absorb the image tokens (``downsample``)."""

    config: GroupViTVisionConfig
    num_group_token: int
    num_output_group: int
    attention_fn: Callable = dot_product_attention
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, image_tokens: Array, group_tokens: Array, deterministic: bool = True):
        cfg = self.config
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        norm = lambda name: LayerNorm(cfg.layer_norm_eps, name=name, **kw)
        ratio = cfg.assign_mlp_ratio if isinstance(cfg.assign_mlp_ratio, (tuple, list)) else (cfg.assign_mlp_ratio,) * 2
        tokens_dim, channels_dim = (int(r * cfg.hidden_size) for r in ratio)
        group_tokens = norm("norm_tokens")(group_tokens)
        image_tokens = norm("norm_x")(image_tokens)
        projected = GroupViTMixerMLP(cfg, self.num_group_token, tokens_dim, self.num_output_group,
                                     name="mlp_inter", **kw)(group_tokens)
        projected = norm("norm_post_tokens")(projected)
        projected = GroupViTCrossAttentionLayer(cfg, self.attention_fn, name="pre_assign_attn", **kw)(
            projected, image_tokens, deterministic)
        new, attention = GroupViTAssignAttention(cfg, name="assign", **kw)(projected, image_tokens, deterministic)
        new = new + projected
        new = new + GroupViTMLP(cfg, cfg.hidden_size, channels_dim, cfg.hidden_size, name="mlp_channels", **kw)(
            norm("norm_new_x")(new))
        return new, attention


class GroupViTStage(nn.Module):
    """Transformer layers over image + group tokens, then (with group tokens) the grouping block."""

    config: GroupViTVisionConfig
    depth: int
    num_prev_group_token: int
    num_group_token: int
    num_output_group: int
    attention_fn: Callable = dot_product_attention
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: Array, prev_group_token: Array | None, deterministic: bool = True):
        cfg = self.config
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        group_token = None
        if self.num_group_token > 0:
            group_token = self.param("group_token", nn.with_logical_partitioning(
                nn.initializers.zeros_init(), (None, None, "embed")),
                (1, self.num_group_token, cfg.hidden_size), self.param_dtype).astype(x.dtype)
            group_token = jnp.broadcast_to(group_token, (x.shape[0], *group_token.shape[1:]))
            if self.num_prev_group_token > 0:
                prev = LayerNorm(cfg.layer_norm_eps, name="group_projector_0", **kw)(prev_group_token)
                group_token = group_token + GroupViTMixerMLP(
                    cfg, self.num_prev_group_token, cfg.hidden_size // 2, self.num_group_token,
                    name="group_projector_1", **kw)(prev)
            x = jnp.concatenate([x, group_token], axis=1)
        for i in range(self.depth):
            x, _ = GroupViTEncoderLayer(cfg, self.attention_fn, name=f"layers_{i}", **kw)(x, None, deterministic)
        attention = None
        if self.num_group_token > 0:
            x, group_token = x[:, :-self.num_group_token], x[:, -self.num_group_token:]
            x, attention = GroupViTTokenAssign(cfg, self.num_group_token, self.num_output_group, self.attention_fn,
                                               name="downsample", **kw)(x, group_token, deterministic)
        return x, group_token, attention


class GroupViTVisionTransformer(nn.Module):
    """Patch tokens -> grouping stages -> LayerNorm; pooled = mean over the final groups.
    ``attentions`` are the stages' soft assignments ``[B, groups, tokens]`` (HF's)."""

    config: GroupViTVisionConfig
    attention_fn: Callable = dot_product_attention
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, pixel_values: Array, output_attentions: bool = False, output_hidden_states: bool = False,
                 interpolate_pos_encoding: bool = False, deterministic: bool = True) -> out.BaseModelOutputWithPooling:
        cfg = self.config
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        if pixel_values is None:
            raise ValueError("You have to specify pixel_values ([batch, channels, height, width])")
        x = GroupViTVisionEmbeddings(cfg, name="embeddings", **kw)(jnp.asarray(pixel_values), interpolate_pos_encoding,
                                                                   deterministic)
        x, hidden_states, groupings = GroupViTVisionEncoder(cfg, self.attention_fn, name="encoder", **kw)(
            x, deterministic)
        x = LayerNorm(cfg.layer_norm_eps, name="layernorm", **kw)(x)
        return out.BaseModelOutputWithPooling(
            last_hidden_state=x, pooler_output=x.mean(axis=1),
            hidden_states=tuple(hidden_states) if output_hidden_states else None,
            attentions=tuple(groupings) if output_attentions else None)


class GroupViTVisionEncoder(nn.Module):
    config: GroupViTVisionConfig
    attention_fn: Callable = dot_product_attention
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: Array, deterministic: bool = True):
        cfg = self.config
        hidden_states, groupings, group_tokens = [], [], None
        for i, depth in enumerate(cfg.depths):
            hidden_states.append(x)
            prev = cfg.num_output_groups[i - 1] if i > 0 else 0
            x, group_tokens, attention = GroupViTStage(
                cfg, depth, prev, cfg.num_group_tokens[i], cfg.num_output_groups[i], self.attention_fn,
                self.dtype, self.param_dtype, name=f"stages_{i}")(x, group_tokens, deterministic)
            if attention is not None:
                groupings.append(attention)
        hidden_states.append(x)
        return x, hidden_states, groupings


# ------------------------------------------------------------------------------ models
class GroupViTTextModel(PretrainedModule):
    """The text tower alone (``text_model``): ``input_ids [B, L]`` -> pooled ``[B, hidden]``."""

    config: GroupViTConfig
    attention_fn: Callable | None = None  # a custom dense kernel, else attention_kernel's choice
    attention_kernel: str = "auto"  # see zoo.attention.kernels
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, input_ids, attention_mask=None, position_ids=None, output_attentions: bool = False,
                 output_hidden_states: bool = False, deterministic: bool = True):
        return GroupViTTextTransformer(config=self.config.text, attention_fn=self.dense_attention(), dtype=self.dtype,
                                       param_dtype=self.param_dtype, name="text_model")(
            input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
            output_attentions=output_attentions, output_hidden_states=output_hidden_states,
            deterministic=deterministic)

    @staticmethod
    def dummy_inputs(config: GroupViTConfig) -> dict:
        return {"input_ids": jnp.full((1, 4), config.text.eos_token_id, jnp.int32)}


class GroupViTVisionModel(PretrainedModule):
    """The grouping vision tower alone (``vision_model``): ``pixel_values [B, C, H, W]``."""

    config: GroupViTConfig
    attention_fn: Callable | None = None  # a custom dense kernel, else attention_kernel's choice
    attention_kernel: str = "auto"  # see zoo.attention.kernels
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, pixel_values, output_attentions: bool = False, output_hidden_states: bool = False,
                 interpolate_pos_encoding: bool = False, deterministic: bool = True):
        return GroupViTVisionTransformer(config=self.config.vision, attention_fn=self.dense_attention(), dtype=self.dtype,
                                         param_dtype=self.param_dtype, name="vision_model")(
            pixel_values=pixel_values, output_attentions=output_attentions,
            output_hidden_states=output_hidden_states, interpolate_pos_encoding=interpolate_pos_encoding,
            deterministic=deterministic)

    @staticmethod
    def dummy_inputs(config: GroupViTConfig) -> dict:
        height, width = as_pair(config.vision.image_size, "image_size")
        return {"pixel_values": jnp.zeros((1, config.vision.num_channels, height, width), jnp.float32)}


def _normalize(x: Array) -> Array:
    return x / jnp.linalg.norm(x, axis=-1, keepdims=True)


def grouping_from_attentions(attentions, hw_shape: tuple[int, int]) -> Array:
    """HF's ``get_grouping_from_attentions``: chain the stages' assignments ``[B, G_i, L_i]``
    into ``[B, G_last, H, W]`` (bilinear, ``align_corners=False``)."""
    prev = None
    for attn in attentions:
        masks = jnp.swapaxes(attn, 1, 2)  # [B, tokens, groups]
        prev = masks if prev is None else prev @ masks
    maps = jnp.swapaxes(prev, 1, 2)  # [B, groups, tokens]
    height, width = hw_shape
    scale = (height * width // maps.shape[2]) ** 0.5
    if height > width:
        feat_w = int(round(width / scale))
        feat_h = maps.shape[2] // feat_w
    else:
        feat_h = int(round(height / scale))
        feat_w = maps.shape[2] // feat_h
    maps = maps.reshape(maps.shape[0], maps.shape[1], feat_h, feat_w)
    return resize(maps, (height, width), axes=(2, 3))


class GroupViTModel(PretrainedModule):
    """Both towers, projections and the contrastive scores (``logits_per_image`` ``[B_img, B_txt]``).

    ``output_segmentation=True`` adds ``segmentation_logits`` ``[B_img, B_txt, H, W]`` at image
    resolution, as HF computes them (and, as HF, turns ``output_attentions`` on for both towers).
    ``return_loss``: CLIP's symmetric contrastive loss.
    """

    config: GroupViTConfig
    attention_fn: Callable | None = None  # a custom dense kernel, else attention_kernel's choice
    attention_kernel: str = "auto"  # see zoo.attention.kernels
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32

    def setup(self):
        cfg = self.config
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        self.text_model = GroupViTTextTransformer(config=cfg.text, attention_fn=self.dense_attention(), **kw)
        self.vision_model = GroupViTVisionTransformer(config=cfg.vision, attention_fn=self.dense_attention(), **kw)
        # HF's nn.Sequential(Linear, BatchNorm1d, ReLU, Linear): indices 0, 1, 3
        dense = lambda n, axes: Dense(n, axes, std=cfg.initializer_range, **kw)
        self.visual_projection_0 = dense(cfg.projection_intermediate_dim, ("embed", "mlp"))
        self.visual_projection_1 = BatchNorm(**kw)
        self.visual_projection_3 = dense(cfg.projection_dim, ("mlp", "embed"))
        self.text_projection_0 = dense(cfg.projection_intermediate_dim, ("embed", "mlp"))
        self.text_projection_1 = BatchNorm(**kw)
        self.text_projection_3 = dense(cfg.projection_dim, ("mlp", "embed"))
        self.logit_scale = self.param("logit_scale", nn.with_logical_partitioning(
            nn.initializers.constant(cfg.logit_scale_init_value), ()), (), self.param_dtype)

    def _project(self, prefix: str, x: Array, use_running_average: bool) -> Array:
        """Linear -> BatchNorm1d -> ReLU -> Linear."""
        x = getattr(self, f"{prefix}_1")(getattr(self, f"{prefix}_0")(x), use_running_average)
        return getattr(self, f"{prefix}_3")(jax.nn.relu(x))

    def get_text_features(self, input_ids, attention_mask=None, position_ids=None, deterministic: bool = True,
                          use_running_average: bool = True) -> Array:
        """Projected (not normalised) text embeddings ``[B, projection_dim]``."""
        pooled = self.text_model(input_ids, attention_mask, position_ids, deterministic=deterministic).pooler_output
        return self._project("text_projection", pooled, use_running_average)

    def get_image_features(self, pixel_values, interpolate_pos_encoding: bool = False, deterministic: bool = True,
                           use_running_average: bool = True) -> Array:
        """Projected (not normalised) image embeddings ``[B, projection_dim]``."""
        pooled = self.vision_model(pixel_values, interpolate_pos_encoding=interpolate_pos_encoding,
                                   deterministic=deterministic).pooler_output
        return self._project("visual_projection", pooled, use_running_average)

    def __call__(self, input_ids=None, pixel_values=None, attention_mask=None, position_ids=None,
                 return_loss: bool = False, output_attentions: bool = False, output_hidden_states: bool = False,
                 output_segmentation: bool | None = None, interpolate_pos_encoding: bool = False,
                 deterministic: bool = True, use_running_average: bool = True) -> "out.GroupViTModelOutput":
        cfg = self.config
        output_segmentation = cfg.output_segmentation if output_segmentation is None else output_segmentation
        output_attentions = output_attentions or output_segmentation  # as HF: both towers return them
        vision = self.vision_model(pixel_values, output_attentions, output_hidden_states,
                                   interpolate_pos_encoding, deterministic)
        text = self.text_model(input_ids, attention_mask, position_ids, output_attentions, output_hidden_states,
                               deterministic)
        image_embeds = _normalize(self._project("visual_projection", vision.pooler_output, use_running_average))
        text_embeds = _normalize(self._project("text_projection", text.pooler_output, use_running_average))
        scale = jnp.exp(self.logit_scale).astype(text_embeds.dtype)
        logits_per_text = text_embeds @ image_embeds.T * scale
        seg_logits = None
        if output_segmentation:
            groups = vision.last_hidden_state
            group_embeds = self._project("visual_projection", groups.reshape(-1, groups.shape[-1]),
                                         use_running_average)
            group_embeds = _normalize(group_embeds)
            per_group = (group_embeds @ text_embeds.T * scale).reshape(image_embeds.shape[0], -1, text_embeds.shape[0])
            grouping = grouping_from_attentions(vision.attentions, jnp.shape(pixel_values)[2:])
            flat = grouping.reshape(grouping.shape[0], grouping.shape[1], -1)
            seg_logits = (jnp.swapaxes(per_group, 1, 2) @ flat * scale).reshape(
                *per_group.shape[::2][:1], text_embeds.shape[0], *grouping.shape[2:])
        loss = None
        if return_loss:
            labels = jnp.arange(logits_per_text.shape[0])
            loss = (cross_entropy(logits_per_text, labels) + cross_entropy(logits_per_text.T, labels)) / 2
        return out.GroupViTModelOutput(
            loss=loss, logits_per_image=logits_per_text.T, logits_per_text=logits_per_text,
            segmentation_logits=seg_logits, text_embeds=text_embeds, image_embeds=image_embeds,
            text_model_output=text, vision_model_output=vision)

    @staticmethod
    def dummy_inputs(config: GroupViTConfig) -> dict:
        return {**GroupViTTextModel.dummy_inputs(config), **GroupViTVisionModel.dummy_inputs(config)}


ARCHITECTURES = {
    "GroupViTModel": GroupViTModel,
    "GroupViTTextModel": GroupViTTextModel,
    "GroupViTVisionModel": GroupViTVisionModel,
}
