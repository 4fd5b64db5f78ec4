"""The wav2vec2-style audio stack shared by Data2VecAudio and SEW-D.

Raw waveform ``[B, T]`` -> conv feature encoder ``[B, F, C]`` -> feature projection
``[B, F, hidden]`` -> positional conv + transformer encoder. Names mirror HF's modules
(``feature_extractor/conv_layers_0/conv``, ``encoder/pos_conv_embed/layers_0/conv``, ...).
Configs are duck-typed: the HF wav2vec2-family field names are read.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from zoo.attention.dense import dot_product_attention
from zoo.nn import masks, scan
from zoo.nn.ctc import ctc_loss
from zoo.nn.dropout import Dropout
from zoo.nn.layers import Dense, LayerNorm, activation, ones_init, zeros_init
from zoo.nn.mha import MultiHeadAttention

Array = jax.Array


def _conv_init(axes=(None, "conv_in", "conv_out")):
    return nn.with_logical_partitioning(nn.initializers.he_normal(), axes)


# ------------------------------------------------------------------ lengths and masks
def conv_output_lengths(lengths, kernels: Sequence[int], strides: Sequence[int]):
    """Frames after a stack of unpadded 1-D convs: ``(L - k) // s + 1`` per layer."""
    for k, s in zip(kernels, strides):
        lengths = (lengths - k) // s + 1
    return lengths


def feat_extract_output_lengths(config, lengths, add_adapter: bool | None = None):
    """HF's ``_get_feat_extract_output_lengths`` (the adapter's convs count as kernel 1)."""
    lengths = conv_output_lengths(lengths, config.conv_kernel, config.conv_stride)
    add_adapter = getattr(config, "add_adapter", False) if add_adapter is None else add_adapter
    if add_adapter:
        n = config.num_adapter_layers
        lengths = conv_output_lengths(lengths, [1] * n, [config.adapter_stride] * n)
    return lengths


def frame_mask(config, sample_mask: Array, num_frames: int, add_adapter: bool | None = None) -> Array:
    """Sample-level ``[B, T]`` 1/0 mask -> frame-level boolean ``[B, num_frames]``."""
    lengths = feat_extract_output_lengths(config, jnp.sum(sample_mask, axis=-1), add_adapter)
    return jnp.arange(num_frames)[None, :] < lengths[:, None]


# ------------------------------------------------------------------- feature encoder
class ConvLayer(nn.Module):
    """conv -> (LayerNorm over channels | per-channel GroupNorm | nothing) -> activation."""

    in_dim: int
    out_dim: int
    kernel: int
    stride: int
    use_bias: bool
    norm: str | None  # "layer", "group" or None
    act: str
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: Array) -> Array:
        x = nn.Conv(self.out_dim, (self.kernel,), (self.stride,), padding="VALID", use_bias=self.use_bias,
                    kernel_init=_conv_init(), bias_init=zeros_init(("conv_out",)), dtype=self.dtype,
                    param_dtype=self.param_dtype, name="conv")(x)
        if self.norm == "layer":
            x = LayerNorm(1e-5, axis_name="conv_out", dtype=self.dtype, param_dtype=self.param_dtype,
                          name="layer_norm")(x)
        elif self.norm == "group":
            x = nn.GroupNorm(num_groups=self.out_dim, epsilon=1e-5, use_fast_variance=False, dtype=self.dtype,
                             param_dtype=self.param_dtype, scale_init=ones_init(("conv_out",)),
                             bias_init=zeros_init(("conv_out",)), name="layer_norm")(x)
        return activation(self.act)(x)


class FeatureEncoder(nn.Module):
    """``[B, T]`` waveform -> ``[B, F, conv_dim[-1]]`` features.

    feat_extract_norm "layer": every conv is followed by a LayerNorm (Data2Vec, wav2vec2-large);
    "group": only the first conv has a per-channel GroupNorm (wav2vec2-base, SEW-D).
    """

    config: Any
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, input_values: Array) -> Array:
        cfg = self.config
        norm_kind = getattr(cfg, "feat_extract_norm", "layer")
        x = input_values[..., None].astype(self.dtype)
        dims = list(cfg.conv_dim)
        for i, (dim, k, s) in enumerate(zip(dims, cfg.conv_kernel, cfg.conv_stride)):
            norm = "layer" if norm_kind == "layer" else ("group" if i == 0 else None)
            x = ConvLayer(dims[i - 1] if i else 1, dim, k, s, cfg.conv_bias, norm, cfg.feat_extract_activation,
                          self.dtype, self.param_dtype, name=f"conv_layers_{i}")(x)
        return x


class FeatureProjection(nn.Module):
    """LayerNorm -> Linear -> dropout; returns (projected, normed features)."""

    config: Any
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, features: Array, deterministic: bool = True) -> tuple[Array, Array]:
        cfg = self.config
        normed = LayerNorm(cfg.layer_norm_eps, axis_name="conv_out", dtype=self.dtype,
                           param_dtype=self.param_dtype, name="layer_norm")(features)
        x = Dense(cfg.hidden_size, ("conv_out", "embed"), std=cfg.initializer_range, dtype=self.dtype,
                  param_dtype=self.param_dtype, name="projection")(normed)
        return Dropout(cfg.feat_proj_dropout)(x, deterministic=deterministic), normed


# ------------------------------------------------------------- positional conv embeddings
class PositionalConvLayer(nn.Module):
    """Data2Vec: same-padded grouped conv -> LayerNorm (no affine) -> activation."""

    config: Any
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: Array) -> Array:
        cfg = self.config
        k = cfg.conv_pos_kernel_size
        x = nn.Conv(cfg.hidden_size, (k,), padding=[(k // 2, k // 2)],
                    feature_group_count=cfg.num_conv_pos_embedding_groups, kernel_init=_conv_init(),
                    bias_init=zeros_init(("conv_out",)), dtype=self.dtype, param_dtype=self.param_dtype,
                    name="conv")(x)
        if k % 2 == 0:
            x = x[:, :-1]
        x = nn.LayerNorm(epsilon=1e-5, use_scale=False, use_bias=False, use_fast_variance=False,
                         dtype=self.dtype)(x)
        return activation(cfg.feat_extract_activation)(x)


class PositionalConvStack(nn.Module):
    """Data2Vec's ``num_conv_pos_embeddings`` stacked PositionalConvLayers."""

    config: Any
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: Array) -> Array:
        for i in range(self.config.num_conv_pos_embeddings):
            x = PositionalConvLayer(self.config, self.dtype, self.param_dtype, name=f"layers_{i}")(x)
        return x


class WeightNormConv1D(nn.Module):
    """PyTorch ``weight_norm(Conv1d, dim=2)``: params ``weight_g [1, 1, k]``, ``weight_v [out, in/g, k]``.

    The weight is ``g * v / ||v||`` with the norm over every axis but the kernel axis,
    kept in PyTorch layout so both checkpoint spellings import unchanged.
    """

    features: int
    kernel_size: int
    groups: int
    padding: int
    stride: int = 1
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: Array) -> Array:
        in_per_group = x.shape[-1] // self.groups
        v = self.param("weight_v", _conv_init(("conv_out", "conv_in", None)),
                       (self.features, in_per_group, self.kernel_size), self.param_dtype)
        g = self.param("weight_g", nn.with_logical_partitioning(nn.initializers.ones_init(), (None, None, "conv_kernel")),
                       (1, 1, self.kernel_size), self.param_dtype)
        bias = self.param("bias", zeros_init(("conv_out",)), (self.features,), self.param_dtype)
        norm = jnp.sqrt(jnp.sum(jnp.square(v.astype(jnp.float32)), axis=(0, 1), keepdims=True))
        weight = (g * v / norm).astype(self.dtype)
        y = jax.lax.conv_general_dilated(
            x.astype(self.dtype), weight, (self.stride,), [(self.padding, self.padding)],
            dimension_numbers=("NWC", "OIW", "NWC"), feature_group_count=self.groups,
        )
        return y + bias.astype(self.dtype)


class WeightNormPositionalConv(nn.Module):
    """wav2vec2 / SEW(-D): weight-normed grouped conv (kernel ``num_conv_pos_embeddings``) -> activation."""

    config: Any
    stride: int = 1
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: Array) -> Array:
        cfg = self.config
        k = cfg.num_conv_pos_embeddings
        x = WeightNormConv1D(cfg.hidden_size, k, cfg.num_conv_pos_embedding_groups, k // 2, self.stride,
                             self.dtype, self.param_dtype, name="conv")(x)
        if k % 2 == 0:
            x = x[:, :-1]
        return activation(cfg.feat_extract_activation)(x)


# ----------------------------------------------------------------------- encoder
class FeedForward(nn.Module):
    config: Any
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: Array, deterministic: bool = True) -> Array:
        cfg = self.config
        kw = dict(std=cfg.initializer_range, dtype=self.dtype, param_dtype=self.param_dtype)
        x = Dense(cfg.intermediate_size, ("embed", "mlp"), name="intermediate_dense", **kw)(x)
        x = activation(cfg.hidden_act)(x)
        x = Dropout(cfg.activation_dropout)(x, deterministic=deterministic)
        x = Dense(cfg.hidden_size, ("mlp", "embed"), name="output_dense", **kw)(x)
        return Dropout(cfg.hidden_dropout)(x, deterministic=deterministic)


class EncoderLayer(nn.Module):
    """Post-LN: x = LN(x + attn(x)); x = LN(x + ff(x))."""

    config: Any
    attention_fn: Callable = dot_product_attention
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: Array, mask: Array | None, deterministic: bool = True, output_attentions: bool = False):
        cfg = self.config
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        attn, probs = MultiHeadAttention(cfg.hidden_size, cfg.num_attention_heads, cfg.attention_dropout,
                                         std=cfg.initializer_range, attention_fn=self.attention_fn,
                                         name="attention", **kw)(
            x, mask, deterministic=deterministic, output_attentions=output_attentions)
        x = x + Dropout(cfg.hidden_dropout)(attn, deterministic=deterministic)
        x = LayerNorm(cfg.layer_norm_eps, name="layer_norm", **kw)(x)
        x = x + FeedForward(cfg, name="feed_forward", **kw)(x, deterministic)
        return LayerNorm(cfg.layer_norm_eps, name="final_layer_norm", **kw)(x), probs


class Encoder(nn.Module):
    """Padded frames zeroed -> + positional conv -> LayerNorm -> dropout -> post-LN layers.

    LayerDrop in training skips each layer with probability ``layerdrop`` (rng stream
    ``"dropout"``); a skipped layer repeats the previous hidden state in ``hidden_states``.
    scan_layers / remat_policy: as :class:`zoo.nn.bert.BertEncoder` (stacked parameters
    under ``layers/``, per-layer ones under ``layers_0/`` ...).
    """

    config: Any
    attention_fn: Callable = dot_product_attention
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32
    scan_layers: bool = False
    remat_policy: str | None = None

    layer_names = ("layers_{i}", "layers")  # per-layer, stacked

    @nn.compact
    def __call__(self, x: Array, frame_mask: Array | None, deterministic: bool = True,
                 output_attentions: bool = False, output_hidden_states: bool = False) -> dict:
        cfg = self.config
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        if frame_mask is not None:
            x = jnp.where(frame_mask[..., None], x, 0.0)
        x = x + PositionalConvStack(cfg, name="pos_conv_embed", **kw)(x)
        x = LayerNorm(cfg.layer_norm_eps, name="layer_norm", **kw)(x)
        x = Dropout(cfg.hidden_dropout)(x, deterministic=deterministic)
        mask = masks.padding_mask(frame_mask, x.shape[1])

        def step(layer, x, skip, mask):
            y, probs = layer(x, mask, deterministic, output_attentions)
            if skip is not None:
                y = jnp.where(skip, x, y)
            return y, (x if output_hidden_states else None, probs)

        rng = skips = None  # one dropout key per layer, and the LayerDrop draws
        if not deterministic and (self.has_rng("dropout") or cfg.layerdrop > 0):
            rng, drop_rng = jax.random.split(self.make_rng("dropout"))
            if cfg.layerdrop > 0:
                skips = list(jax.random.uniform(drop_rng, (cfg.num_hidden_layers,)) < cfg.layerdrop)
        x, ys = scan.run_layers(
            lambda name: EncoderLayer(cfg, self.attention_fn, name=name, **kw), step, x, skips, (mask,),
            num_layers=cfg.num_hidden_layers, scan_layers=self.scan_layers, remat_policy=self.remat_policy,
            rng=rng, name=self.layer_names[0], stacked_name=self.layer_names[1])
        hidden, attentions = (tuple(y) for y in zip(*ys)) if ys else ((), ())
        return dict(last_hidden_state=x, hidden_states=(*hidden, x) if output_hidden_states else None,
                    attentions=attentions if output_attentions else None)


class Adapter(nn.Module):
    """Optional down-projection, then ``num_adapter_layers`` strided conv + GLU layers.

    In training, LayerDrop skips only stride-1 adapter layers (see ``__call__``).
    """

    config: Any
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: Array, deterministic: bool = True) -> Array:
        cfg = self.config
        out = cfg.output_hidden_size
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        if out != cfg.hidden_size:
            x = Dense(out, ("embed", "embed_out"), std=cfg.initializer_range, name="proj", **kw)(x)
            x = LayerNorm(1e-5, axis_name="embed_out", name="proj_layer_norm", **kw)(x)
        for i in range(cfg.num_adapter_layers):
            y = AdapterLayer(cfg, name=f"layers_{i}", **kw)(x)
            # HF's adapter LayerDrop changes the output length when a strided layer is
            # skipped; static shapes allow it only for stride-1 layers.
            if not deterministic and cfg.layerdrop > 0 and y.shape == x.shape:
                y = jnp.where(jax.random.uniform(self.make_rng("dropout")) < cfg.layerdrop, x, y)
            x = y
        return x


class AdapterLayer(nn.Module):
    config: Any
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: Array) -> Array:
        cfg = self.config
        y = nn.Conv(2 * cfg.output_hidden_size, (cfg.adapter_kernel_size,), (cfg.adapter_stride,),
                    padding=[(1, 1)], kernel_init=_conv_init(), bias_init=zeros_init(("conv_out",)),
                    dtype=self.dtype, param_dtype=self.param_dtype, name="conv")(x)
        return jax.nn.glu(y, axis=-1)


# ------------------------------------------------------------ pieces of the audio heads
def weighted_layer_sum(module: nn.Module, config, hidden_states: Sequence[Array]) -> Array:
    """``use_weighted_layer_sum``: softmax(``layer_weights``)-weighted sum of all hidden states.

    Creates the ``layer_weights [num_hidden_layers + 1]`` parameter on ``module`` (a head).
    """
    n = config.num_hidden_layers + 1
    weights = module.param("layer_weights", nn.with_logical_partitioning(
        nn.initializers.constant(1.0 / n), ("layers",)), (n,), module.param_dtype)
    stacked = jnp.stack(hidden_states, axis=1)
    return jnp.einsum("blfh,l->bfh", stacked, jax.nn.softmax(weights).astype(stacked.dtype))


def masked_frame_mean(config, x: Array, attention_mask) -> Array:
    """Mean of ``x [B, F, C]`` over the frames the sample-level ``attention_mask`` keeps."""
    if attention_mask is None:
        return x.mean(axis=1)
    keep = frame_mask(config, jnp.asarray(attention_mask), x.shape[1])
    return jnp.where(keep[..., None], x, 0.0).sum(1) / keep.sum(1, keepdims=True).astype(x.dtype)


def ctc_head_loss(config, logits: Array, labels, input_values, attention_mask) -> Array:
    """HF's CTC head loss: logit lengths from the sample mask, blank = ``pad_token_id``."""
    labels = jnp.asarray(labels)
    try:
        too_large = int(labels.max()) >= config.vocab_size
    except jax.errors.ConcretizationTypeError:  # traced under jit: cannot check
        too_large = False
    if too_large:
        raise ValueError(f"Label values must be < vocab_size: {config.vocab_size}")
    samples = jnp.ones(jnp.shape(input_values), jnp.int32) if attention_mask is None else attention_mask
    lengths = feat_extract_output_lengths(config, jnp.sum(jnp.asarray(samples), -1))
    return ctc_loss(logits, labels, lengths, blank_id=config.pad_token_id,
                    reduction=config.ctc_loss_reduction, zero_infinity=config.ctc_zero_infinity)
