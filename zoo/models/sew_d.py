"""SEW-D: squeezed wav2vec2-style audio encoder with DeBERTa-v2 disentangled attention.

Shares the conv feature encoder, weight-normed positional conv and frame-length
arithmetic with Data2VecAudio (``zoo.nn.audio``); the encoder runs at ``1 / squeeze_factor``
of the frame rate and is upsampled back. Heads: ForCTC, ForSequenceClassification.

``scan_layers=True`` (a field of every module here) runs the DeBERTa layers as one ``nn.scan``,
parameters stacked under ``encoder/encoder/layers/`` with a leading layer axis (checkpoints
convert both ways, see :mod:`zoo.nn.scan`); with DeBERTa's conv branch
(``conv_kernel_size > 0``), which follows the first layer only, layer 0 runs before the scan
and keeps its per-layer parameters (``encoder/encoder/layer_0/``), the scan stacks layers
1..N-1. ``remat_policy`` (``"full"``, ``"dots"``, ``"dots_with_no_batch_dims"``) recomputes
each layer's activations in the backward pass. Outputs are the same in every combination.
"""

from __future__ import annotations

import functools
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from converters.mapping import KeyTable
from zoo import outputs as out
from zoo.attention.kernels import DisentangledAttention
from zoo.config import ZooConfig, config_dataclass
from zoo.nn import audio, scan
from zoo.nn.attention_projection import QKVProjection
from zoo.nn.bert import BertIntermediate, BertResidualOutput
from zoo.nn.audio_heads import AudioHead, CTCHead, SequenceClassificationHead
from zoo.nn.dropout import Dropout
from zoo.nn.layers import ACT2FN, Dense, Embed, LayerNorm, activation, zeros_init
from zoo.nn.inputs import check_audio, check_mask
from zoo.nn.module import PretrainedModule
from zoo.nn.spec_augment import apply_spec_augment

Array = jax.Array


@config_dataclass
class SEWDConfig(ZooConfig):
    """HF ``SEWDConfig`` (plus DeBERTa's optional ``conv_kernel_size`` / ``conv_groups`` / ``conv_act``)."""

    model_type = "sew-d"

    vocab_size: int | None = 32
    hidden_size: int = 768
    num_hidden_layers: int = 12
    num_attention_heads: int = 12
    intermediate_size: int = 3072
    squeeze_factor: int = 2
    max_position_embeddings: int = 512
    position_buckets: int = 256
    share_att_key: bool = True
    relative_attention: bool = True
    pos_att_type: tuple[str, ...] = ("p2c", "c2p")
    norm_rel_ebd: str = "layer_norm"
    hidden_act: str = "gelu_python"
    hidden_dropout: float = 0.1
    activation_dropout: float = 0.1
    attention_dropout: float = 0.1
    feat_proj_dropout: float = 0.0
    final_dropout: float = 0.1
    initializer_range: float = 0.02
    layer_norm_eps: float = 1e-7
    feature_layer_norm_eps: float = 1e-5
    feat_extract_norm: str = "group"
    feat_extract_activation: str = "gelu"
    conv_dim: tuple[int, ...] = (64, 128, 128, 128, 128, 256, 256, 256, 256, 512, 512, 512, 512)
    conv_stride: tuple[int, ...] = (5, 2, 1, 2, 1, 2, 1, 2, 1, 2, 1, 2, 1)
    conv_kernel: tuple[int, ...] = (10, 3, 1, 3, 1, 3, 1, 3, 1, 2, 1, 2, 1)
    conv_bias: bool = False
    num_conv_pos_embeddings: int = 128
    num_conv_pos_embedding_groups: int = 16
    apply_spec_augment: bool = True
    mask_time_prob: float = 0.05
    mask_time_length: int = 10
    mask_time_min_masks: int = 2
    mask_feature_prob: float = 0.0
    mask_feature_length: int = 10
    mask_feature_min_masks: int = 0
    ctc_loss_reduction: str = "mean"
    ctc_zero_infinity: bool = False
    use_weighted_layer_sum: bool = False
    classifier_proj_size: int = 256
    pad_token_id: int | None = 0
    bos_token_id: int | None = 1
    eos_token_id: int | tuple[int, ...] | None = 2
    max_relative_positions: int = -1
    conv_kernel_size: int = 0
    conv_groups: int = 1
    conv_act: str = "tanh"
    hidden_dropout_prob: float = 0.1  # DeBERTa's ConvLayer dropout (HF reads this name)

    def validate(self) -> None:
        super().validate()
        if not (len(self.conv_dim) == len(self.conv_stride) == len(self.conv_kernel)):
            self._unsupported("conv_dim", self.conv_dim,
                              "conv_dim, conv_stride and conv_kernel must have the same length")
        for name in ("hidden_act", "feat_extract_activation", "conv_act"):
            self._require_choice(name, set(ACT2FN))
        self._require_choice("feat_extract_norm", {"group", "layer"})
        self._require_choice("ctc_loss_reduction", {"sum", "mean"})
        if not set(self.pos_att_type) <= {"c2p", "p2c"}:
            self._unsupported("pos_att_type", self.pos_att_type, "supported position terms are c2p and p2c")
        if not set(x.strip() for x in self.norm_rel_ebd.lower().split("|")) <= {"layer_norm", "none"}:
            self._unsupported("norm_rel_ebd", self.norm_rel_ebd, "supported: 'layer_norm' or 'none'")
        self._require_heads_divide()
        if self.extra.get("add_adapter"):
            self._unsupported("add_adapter", True, "SEW-D has no adapter")

    @property
    def max_relative(self) -> int:
        """HF: max_relative_positions, falling back to max_position_embeddings when < 1."""
        return self.max_relative_positions if self.max_relative_positions >= 1 else self.max_position_embeddings

    @property
    def att_span(self) -> int:
        """HF's pos_ebd_size: position_buckets when bucketing, else max_relative_positions."""
        return self.position_buckets if self.position_buckets > 0 else self.max_relative


KEY_TABLE = KeyTable(
    base_model_prefix="sew_d",
    init_if_missing=(r"^lm_head/", r"^projector/", r"^classifier/", r"^layer_weights$",
                     r"^(sew_d/)?masked_spec_embed$"),
)


class DisentangledSelfAttention(nn.Module):
    """DeBERTa-v2 attention: content-content plus c2p / p2c relative terms (``zoo.attention.disentangled``)."""

    config: SEWDConfig
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32
    kernel: DisentangledAttention = DisentangledAttention()  # which disentangled kernel runs

    @nn.compact
    def __call__(self, x: Array, mask: Array, rel_embeddings: Array | None,
                 deterministic: bool = True, output_attentions: bool = False):
        cfg = self.config
        heads = cfg.num_attention_heads
        head_dim = cfg.hidden_size // heads
        qkv = QKVProjection(heads, head_dim, ("query_proj", "key_proj", "value_proj"), std=cfg.initializer_range,
                            dtype=self.dtype, param_dtype=self.param_dtype)
        layers = query_proj, key_proj, _ = qkv.layers()
        query, key, value = qkv(x, layers=layers)
        split = qkv.split
        dense = lambda name: Dense(heads * head_dim, ("embed", "heads"), std=cfg.initializer_range,
                                   dtype=self.dtype, param_dtype=self.param_dtype, name=name)
        types = tuple(cfg.pos_att_type or ()) if cfg.relative_attention else ()
        pos_key = pos_query = None
        if cfg.relative_attention:
            rel = Dropout(cfg.activation_dropout)(rel_embeddings, deterministic=deterministic)
            rel = rel[: 2 * cfg.att_span]
            if cfg.share_att_key:
                pos_key = split(key_proj(rel)) if "c2p" in types else None
                pos_query = split(query_proj(rel)) if "p2c" in types else None
            else:
                pos_key = split(dense("pos_key_proj")(rel)) if "c2p" in types else None
                pos_query = split(dense("pos_query_proj")(rel)) if "p2c" in types else None
        rng = self.make_rng("dropout") if (not deterministic and cfg.attention_dropout > 0) else None
        context, probs = self.kernel(
            query, key, value, pos_key=pos_key, pos_query=pos_query,
            position_buckets=cfg.position_buckets, max_relative_positions=cfg.max_relative,
            att_span=cfg.att_span, pos_att_type=types, mask=mask, dropout_rate=cfg.attention_dropout,
            dropout_rng=rng, deterministic=deterministic, return_probs=output_attentions,
        )
        return context.reshape(*context.shape[:-2], heads * head_dim), probs


class SEWDAttention(nn.Module):
    """``self`` (disentangled attention) + ``output`` (dense, dropout, LayerNorm with residual)."""

    config: SEWDConfig
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32
    kernel: DisentangledAttention = DisentangledAttention()  # which disentangled kernel runs

    @nn.compact
    def __call__(self, x, mask, rel_embeddings, deterministic, output_attentions):
        cfg = self.config
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        context, probs = DisentangledSelfAttention(cfg, kernel=self.kernel, name="self", **kw)(
            x, mask, rel_embeddings, deterministic, output_attentions)
        out_ = BertResidualOutput(cfg, dropout=cfg.activation_dropout, name="output", **kw)(context, x, deterministic)
        return out_, probs


class SEWDLayer(nn.Module):
    config: SEWDConfig
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32
    kernel: DisentangledAttention = DisentangledAttention()  # which disentangled kernel runs

    @nn.compact
    def __call__(self, x, mask, rel_embeddings, deterministic=True, output_attentions=False):
        cfg = self.config
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        attn, probs = SEWDAttention(cfg, kernel=self.kernel, name="attention", **kw)(
            x, mask, rel_embeddings, deterministic, output_attentions)
        h = BertIntermediate(cfg, name="intermediate", **kw)(attn)
        return BertResidualOutput(cfg, "mlp", cfg.activation_dropout, name="output", **kw)(h, attn, deterministic), probs


class ConvLayer(nn.Module):
    """DeBERTa's conv branch after the first layer (only when ``conv_kernel_size > 0``)."""

    config: SEWDConfig
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, hidden: Array, residual: Array, input_mask: Array, deterministic: bool = True) -> Array:
        cfg = self.config
        k = cfg.conv_kernel_size
        y = nn.Conv(cfg.hidden_size, (k,), padding=[((k - 1) // 2, (k - 1) // 2)], feature_group_count=cfg.conv_groups,
                    kernel_init=nn.with_logical_partitioning(nn.initializers.he_normal(), (None, "conv_in", "embed")),
                    bias_init=zeros_init(("embed",)), dtype=self.dtype, param_dtype=self.param_dtype, name="conv")(hidden)
        keep = input_mask[..., None].astype(bool)
        y = jnp.where(keep, y, 0.0)
        y = activation(cfg.conv_act)(Dropout(cfg.hidden_dropout_prob)(y, deterministic=deterministic))
        y = LayerNorm(cfg.layer_norm_eps, dtype=self.dtype, param_dtype=self.param_dtype, name="LayerNorm")(residual + y)
        return y * keep.astype(y.dtype)


class SEWDTransformerEncoder(nn.Module):
    """DeBERTa-v2 encoder: relative embeddings (+ LayerNorm), layers, optional conv branch.

    scan_layers / remat_policy: as :class:`zoo.nn.bert.BertEncoder`; the layers from
    :meth:`first_scanned` on are scanned (layer 0 runs alone when the conv branch follows it).
    """

    config: SEWDConfig
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32
    scan_layers: bool = False
    remat_policy: str | None = None
    kernel: DisentangledAttention = DisentangledAttention()  # which disentangled kernel runs

    layer_names = ("layer_{i}", "layers")  # per-layer, stacked

    @staticmethod
    def first_scanned(config: SEWDConfig) -> int:
        """The first layer of the stack (1 when the conv branch follows layer 0, else 0)."""
        return 1 if config.conv_kernel_size > 0 and config.num_hidden_layers > 0 else 0

    @nn.compact
    def __call__(self, x: Array, input_mask: Array, deterministic=True, output_attentions=False,
                 output_hidden_states=False) -> dict:
        cfg = self.config
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        rel_embeddings = None
        if cfg.relative_attention:
            rel_embeddings = Embed(2 * cfg.att_span, cfg.hidden_size, (None, "embed"), std=cfg.initializer_range,
                                   name="rel_embeddings", **kw)(jnp.arange(2 * cfg.att_span))
            if "layer_norm" in cfg.norm_rel_ebd.lower():
                rel_embeddings = LayerNorm(cfg.layer_norm_eps, name="LayerNorm", **kw)(rel_embeddings)
        mask = input_mask.astype(bool)[:, None, None, :]

        def step(layer, x, _, mask, rel_embeddings):
            y, probs = layer(x, mask, rel_embeddings, deterministic, output_attentions)
            # HF records each layer's own output (before the conv branch)
            return y, (y if output_hidden_states else None, probs)

        run = functools.partial(
            scan.run_layers, lambda name: SEWDLayer(cfg, kernel=self.kernel, name=name, **kw), step,
            consts=(mask, rel_embeddings), remat_policy=self.remat_policy,
            name=self.layer_names[0], stacked_name=self.layer_names[1])
        first, ys = self.first_scanned(cfg), []
        encoder_input = x
        if first:
            x, ys = run(x, num_layers=first, rng=scan.layer_rngs(self, deterministic))
            x = ConvLayer(cfg, name="conv", **kw)(encoder_input, x, input_mask, deterministic)
        if cfg.num_hidden_layers > first:
            x, rest = run(x, num_layers=cfg.num_hidden_layers - first, scan_layers=self.scan_layers,
                          rng=scan.layer_rngs(self, deterministic), first=first)
            ys += rest
        hidden, attentions = (tuple(y) for y in zip(*ys)) if ys else ((), ())
        return dict(last_hidden_state=x,
                    hidden_states=(encoder_input, *hidden) if output_hidden_states else None,
                    attentions=attentions if output_attentions else None)


def layer_layout(config: SEWDConfig) -> tuple[str, str, int]:
    """Parameter paths of the DeBERTa layers, per layer and stacked (``scan_layers=True``),
    and the first stacked layer."""
    per_layer, stacked = (f"encoder/{name}" for name in SEWDTransformerEncoder.layer_names)
    return per_layer, stacked, SEWDTransformerEncoder.first_scanned(config)


class SEWDEncoder(nn.Module):
    """Squeeze (avg-pool + strided positional conv) -> DeBERTa encoder -> upsample to frame rate."""

    config: SEWDConfig
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32
    scan_layers: bool = False
    remat_policy: str | None = None
    kernel: DisentangledAttention = DisentangledAttention()  # which disentangled kernel runs

    @nn.compact
    def __call__(self, x: Array, frames: Array | None, deterministic=True, output_attentions=False,
                 output_hidden_states=False) -> dict:
        cfg = self.config
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        s = cfg.squeeze_factor
        num_frames = x.shape[1]
        squeezed = num_frames // s
        if frames is None:
            input_mask = jnp.ones((x.shape[0], squeezed), jnp.int32)
        else:
            x = jnp.where(frames[..., None], x, 0.0)
            input_mask = frames[:, : squeezed * s].reshape(x.shape[0], squeezed, s).max(-1).astype(jnp.int32)
        positions = audio.WeightNormPositionalConv(cfg, stride=s, name="pos_conv_embed", **kw)(x)
        pooled = x[:, : squeezed * s].reshape(x.shape[0], squeezed, s, x.shape[2]).mean(2)
        x = pooled + positions[:, :squeezed]
        enc = SEWDTransformerEncoder(cfg, scan_layers=self.scan_layers, remat_policy=self.remat_policy,
                                     kernel=self.kernel, name="encoder", **kw)(x, input_mask, deterministic, output_attentions,
                                                           output_hidden_states)
        y = SEWDUpsampling(cfg, name="upsample", **kw)(enc["last_hidden_state"])
        if y.shape[1] < num_frames:
            y = jnp.pad(y, ((0, 0), (0, num_frames - y.shape[1]), (0, 0)))
        enc["last_hidden_state"] = y
        return enc


class SEWDUpsampling(nn.Module):
    """Linear to ``hidden * squeeze_factor``, activation, channels unfolded into time."""

    config: SEWDConfig
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: Array) -> Array:
        cfg = self.config
        s = cfg.squeeze_factor
        y = Dense(cfg.hidden_size * s, ("embed", "mlp"), std=cfg.initializer_range, dtype=self.dtype,
                  param_dtype=self.param_dtype, name="projection")(x)
        y = activation(cfg.feat_extract_activation)(y)
        return y.reshape(y.shape[0], y.shape[1] * s, cfg.hidden_size)


class SEWDModel(PretrainedModule):
    """``[B, T]`` waveform -> ``last_hidden_state [B, F, hidden]`` at the feature frame rate.

    ``scan_layers`` / ``remat_policy``: see the module docstring (every head has them too)."""

    config: SEWDConfig
    freeze_feature_encoder: bool = False
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32
    scan_layers: bool = False
    remat_policy: str | None = None
    attention_kernel: str = "auto"  # see zoo.attention.kernels

    layer_layout = property(lambda self: layer_layout(self.config))

    @nn.compact
    def __call__(self, input_values, attention_mask=None, mask_time_indices=None, output_attentions=False,
                 output_hidden_states=False, deterministic=True) -> out.BaseModelOutputWithPoolingAndCrossAttentions:
        cfg = self.config
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        waveform, attention_mask = check_audio(cfg, input_values, attention_mask)
        features = audio.FeatureEncoder(cfg, name="feature_extractor", **kw)(waveform)
        if self.freeze_feature_encoder:
            features = jax.lax.stop_gradient(features)
        x = LayerNorm(cfg.feature_layer_norm_eps, axis_name="conv_out", name="layer_norm", **kw)(features)
        if cfg.conv_dim[-1] != cfg.hidden_size:
            x = Dense(cfg.hidden_size, ("conv_out", "embed"), std=cfg.initializer_range,
                      name="feature_projection", **kw)(x)
        x = Dropout(cfg.feat_proj_dropout)(x, deterministic=deterministic)
        frames = None
        if attention_mask is not None:
            frames = audio.frame_mask(cfg, attention_mask, x.shape[1], add_adapter=False)
        if cfg.mask_time_prob > 0.0 or cfg.mask_feature_prob > 0.0:
            embed = self.param("masked_spec_embed", nn.with_logical_partitioning(
                nn.initializers.uniform(1.0), ("embed",)), (cfg.hidden_size,), self.param_dtype)
            training = not deterministic
            x, _ = apply_spec_augment(
                self.make_rng("dropout") if training else None, x, masked_spec_embed=embed.astype(x.dtype),
                mask_time_prob=cfg.mask_time_prob, mask_time_length=cfg.mask_time_length,
                mask_time_min_masks=cfg.mask_time_min_masks, mask_feature_prob=cfg.mask_feature_prob,
                mask_feature_length=cfg.mask_feature_length, mask_feature_min_masks=cfg.mask_feature_min_masks,
                mask_time_indices=None if mask_time_indices is None else check_mask(
                    "mask_time_indices", mask_time_indices, (waveform.shape[0], x.shape[1]), "[batch, frames]"
                ).astype(bool),
                deterministic=deterministic, apply_spec_augment=cfg.apply_spec_augment,
            )
        elif mask_time_indices is not None:
            raise ValueError("mask_time_indices needs masked_spec_embed, which exists only when "
                             "mask_time_prob > 0 or mask_feature_prob > 0 in the config")
        enc = SEWDEncoder(cfg, scan_layers=self.scan_layers, remat_policy=self.remat_policy,
                          kernel=DisentangledAttention(self.attention_kernel), name="encoder", **kw)(
            x, frames, deterministic, output_attentions, output_hidden_states)
        return out.BaseModelOutputWithPoolingAndCrossAttentions(
            last_hidden_state=enc["last_hidden_state"], hidden_states=enc["hidden_states"],
            attentions=enc["attentions"])

    @staticmethod
    def dummy_inputs(config: SEWDConfig) -> dict:
        length = 1
        for k, s in reversed(list(zip(config.conv_kernel, config.conv_stride))):
            length = (length - 1) * s + k
        return {"input_values": jnp.zeros((1, (length + 4) * 2 * config.squeeze_factor), jnp.float32)}


class _Head(AudioHead):
    """The ``sew_d`` body under the shared audio heads."""

    scan_layers: bool = False  # see SEWDModel
    remat_policy: str | None = None
    attention_kernel: str = "auto"  # see zoo.attention.kernels

    layer_layout = property(lambda self: layer_layout(self.config))
    dummy_inputs = staticmethod(SEWDModel.dummy_inputs)

    def body(self, **inputs) -> out.BaseModelOutputWithPoolingAndCrossAttentions:
        return SEWDModel(config=self.config, freeze_feature_encoder=self.freeze_feature_encoder, dtype=self.dtype,
                         param_dtype=self.param_dtype, scan_layers=self.scan_layers, remat_policy=self.remat_policy,
                         attention_kernel=self.attention_kernel, name="sew_d")(**inputs)


class SEWDForCTC(_Head, CTCHead):
    pass


class SEWDForSequenceClassification(_Head, SequenceClassificationHead):
    pass


ARCHITECTURES = {cls.__name__: cls for cls in (SEWDModel, SEWDForCTC, SEWDForSequenceClassification)}
