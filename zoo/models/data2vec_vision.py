"""Data2VecVision: the BEiT-style image encoder of data2vec, image classification and
UperNet semantic segmentation.

Parameter paths mirror ``transformers``' ``Data2VecVision*`` modules
(``data2vec_vision/encoder/layer_3/attention/attention/query``); ``KEY_TABLE`` is the one
table for import and export. Batch-norm statistics of the segmentation heads are in the
``batch_stats`` collection. Inputs are HF's ``pixel_values`` ``[B, C, H, W]``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from converters.mapping import KeyTable
from zoo import outputs as out
from zoo.attention.dense import dot_product_attention
from zoo.config import ZooConfig, as_pair, config_dataclass
from zoo.nn import losses, scan
from zoo.nn.attention_projection import QKVProjection
from zoo.nn.dropout import Dropout
from zoo.nn.inputs import check_ids, check_images, check_mask
from zoo.nn.module import PretrainedModule
from zoo.nn.bert import BertIntermediate
from zoo.nn.layers import ACT2FN, Dense, LayerNorm, gelu
from zoo.nn.resize import max_pool, resize
from zoo.nn.upernet import BatchNorm, ConvTranspose2x2, FCNHead, UperHead
from zoo.nn.vision import (
    DropPath,
    PatchEmbeddings,
    RelativePositionBias,
    drop_path_rates,
    interpolate_pos_encoding,
)

Array = jax.Array


@config_dataclass
class Data2VecVisionConfig(ZooConfig):
    """HF ``Data2VecVisionConfig``."""

    model_type = "data2vec-vision"

    hidden_size: int = 768
    num_hidden_layers: int = 12
    num_attention_heads: int = 12
    intermediate_size: int = 3072
    hidden_act: str = "gelu"
    hidden_dropout_prob: float = 0.0
    attention_probs_dropout_prob: float = 0.0
    initializer_range: float = 0.02
    layer_norm_eps: float = 1e-12
    image_size: int | tuple[int, int] = 224
    patch_size: int | tuple[int, int] = 16
    num_channels: int = 3
    use_mask_token: bool = False
    use_absolute_position_embeddings: bool = False
    use_relative_position_bias: bool = False
    use_shared_relative_position_bias: bool = False
    layer_scale_init_value: float = 0.1
    drop_path_rate: float = 0.1
    use_mean_pooling: bool = True
    out_indices: tuple[int, ...] = (3, 5, 7, 11)
    pool_scales: tuple[int, ...] = (1, 2, 3, 6)
    use_auxiliary_head: bool = True
    auxiliary_loss_weight: float = 0.4
    auxiliary_channels: int = 256
    auxiliary_num_convs: int = 1
    auxiliary_concat_input: bool = False
    semantic_loss_ignore_index: int = 255

    def validate(self) -> None:
        super().validate()
        self._require_choice("hidden_act", set(ACT2FN))
        self._require_heads_divide()
        patch = as_pair(self.patch_size, "patch_size")
        if patch[0] != patch[1]:
            self._unsupported("patch_size", self.patch_size, "only square patches (HF's relative bias assumes them)")
        as_pair(self.image_size, "image_size")
        if not 0.0 <= self.drop_path_rate < 1.0:
            self._unsupported("drop_path_rate", self.drop_path_rate, "must be in [0, 1)")
        if self.auxiliary_num_convs == 0 and self.auxiliary_channels != self.hidden_size:
            self._unsupported("auxiliary_num_convs", self.auxiliary_num_convs,
                              "0 convolutions need auxiliary_channels == hidden_size (the classifier's input)")

    @property
    def patch(self) -> int:
        return as_pair(self.patch_size, "patch_size")[0]

    @property
    def window(self) -> tuple[int, int]:
        """The trained patch grid (rows, columns)."""
        height, width = as_pair(self.image_size, "image_size")
        return height // self.patch, width // self.patch


KEY_TABLE = KeyTable(
    base_model_prefix="data2vec_vision",
    ignore_unused=(r"relative_position_index$",),
    init_if_missing=(r"^(data2vec_vision/)?pooler/", r"^classifier/",
                     r"^(batch_stats/)?(decode_head|auxiliary_head|fpn\d+_\d+)/"),
)


# --------------------------------------------------------------------------- encoder
class Data2VecVisionEmbeddings(nn.Module):
    """CLS token + patch embeddings (mask token at ``bool_masked_pos``) + absolute positions."""

    config: Data2VecVisionConfig
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, pixel_values: Array, bool_masked_pos: Array | None = None,
                 deterministic: bool = True) -> tuple[Array, tuple[int, int]]:
        cfg = self.config
        param = lambda name, shape: self.param(
            name, nn.with_logical_partitioning(nn.initializers.zeros_init(), (None,) * (len(shape) - 1) + ("embed",)),
            shape, self.param_dtype)
        cls_token = param("cls_token", (1, 1, cfg.hidden_size))
        x, grid = PatchEmbeddings(cfg.hidden_size, cfg.patch, cfg.num_channels, dtype=self.dtype,
                                  param_dtype=self.param_dtype, name="patch_embeddings")(pixel_values)
        batch, length, _ = x.shape
        if cfg.use_mask_token:
            mask_token = param("mask_token", (1, 1, cfg.hidden_size))
        if bool_masked_pos is not None:
            if not cfg.use_mask_token:
                raise ValueError("bool_masked_pos needs a mask token: the config has use_mask_token=False")
            bool_masked_pos = check_mask("bool_masked_pos", bool_masked_pos, (batch, length), "[batch, num_patches]")
            w = bool_masked_pos[..., None].astype(x.dtype)
            x = x * (1 - w) + mask_token.astype(x.dtype) * w
        x = jnp.concatenate([jnp.broadcast_to(cls_token.astype(x.dtype), (batch, 1, cfg.hidden_size)), x], axis=1)
        if cfg.use_absolute_position_embeddings:
            pos = param("position_embeddings", (1, cfg.window[0] * cfg.window[1] + 1, cfg.hidden_size))
            # HF interpolates whenever the image is not square, even at the trained grid.
            height, width = pixel_values.shape[2:]
            x = x + interpolate_pos_encoding(pos, grid, force=height != width).astype(x.dtype)
        x = Dropout(cfg.hidden_dropout_prob)(x, deterministic=deterministic)
        return x, grid


class Data2VecVisionSelfAttention(nn.Module):
    """Multi-head attention (key without bias) + optional per-layer relative position bias."""

    config: Data2VecVisionConfig
    has_relative_position_bias: bool = False
    attention_fn: Callable = dot_product_attention
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: Array, grid: tuple[int, int], shared_bias: Array | None,
                 interpolate_pos_encoding: bool, deterministic: bool, output_attentions: bool):
        cfg = self.config
        heads = cfg.num_attention_heads
        head_dim = cfg.hidden_size // heads
        query, key, value = QKVProjection(heads, head_dim, use_bias=(True, False, True),  # BEiT: no key bias
                                          std=cfg.initializer_range, dtype=self.dtype,
                                          param_dtype=self.param_dtype)(x)
        bias = shared_bias
        if self.has_relative_position_bias:
            own = RelativePositionBias(cfg.window, heads, self.param_dtype, name="relative_position_bias")(
                grid, interpolate_pos_encoding, x.shape[1])
            bias = own if bias is None else own + bias
        rate = cfg.attention_probs_dropout_prob
        rng = self.make_rng("dropout") if (not deterministic and rate > 0) else None
        ctx, probs = self.attention_fn(query, key, value, bias=bias, dropout_rate=rate, dropout_rng=rng,
                                       deterministic=deterministic, return_probs=output_attentions)
        return ctx.reshape(*ctx.shape[:-2], cfg.hidden_size), probs


class Data2VecVisionProjection(nn.Module):
    """``dense`` back to ``hidden_size`` + dropout (HF's ``SelfOutput`` and ``Output``)."""

    config: Data2VecVisionConfig
    in_axis: str
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: Array, deterministic: bool = True) -> Array:
        cfg = self.config
        x = Dense(cfg.hidden_size, (self.in_axis, "embed"), std=cfg.initializer_range, dtype=self.dtype,
                  param_dtype=self.param_dtype, name="dense")(x)
        return Dropout(cfg.hidden_dropout_prob)(x, deterministic=deterministic)


class Data2VecVisionAttention(nn.Module):
    """``attention`` (self-attention) -> ``output`` (projection)."""

    config: Data2VecVisionConfig
    has_relative_position_bias: bool = False
    attention_fn: Callable = dot_product_attention
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x, grid, shared_bias, interpolate_pos_encoding, deterministic, output_attentions):
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        ctx, probs = Data2VecVisionSelfAttention(
            self.config, self.has_relative_position_bias, self.attention_fn, name="attention", **kw)(
            x, grid, shared_bias, interpolate_pos_encoding, deterministic, output_attentions)
        return Data2VecVisionProjection(self.config, "heads", name="output", **kw)(ctx, deterministic), probs


class Data2VecVisionLayer(nn.Module):
    """Pre-LayerNorm block with layer scale and stochastic depth:
    ``x + drop_path(lambda_1 * attn(LN(x)))``, then the same with the MLP. ``drop_path_rate``
    (an input, not an attribute: it differs per layer, and a scan passes it as a traced
    scalar) is the layer's stochastic-depth rate."""

    config: Data2VecVisionConfig
    has_relative_position_bias: bool = False
    attention_fn: Callable = dot_product_attention
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: Array, grid, shared_bias, interpolate_pos_encoding: bool = False,
                 deterministic: bool = True, output_attentions: bool = False, drop_path_rate: float | Array = 0.0):
        cfg = self.config
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        norm = lambda name: LayerNorm(cfg.layer_norm_eps, name=name, **kw)
        drop_path = DropPath(drop_path_rate)
        scale = cfg.layer_scale_init_value
        lam = lambda name: self.param(name, nn.with_logical_partitioning(nn.initializers.constant(scale), ("embed",)),
                                      (cfg.hidden_size,), self.param_dtype).astype(self.dtype)

        attn, probs = Data2VecVisionAttention(cfg, self.has_relative_position_bias, self.attention_fn,
                                              name="attention", **kw)(
            norm("layernorm_before")(x), grid, shared_bias, interpolate_pos_encoding, deterministic,
            output_attentions)
        if scale > 0:
            attn = lam("lambda_1") * attn
        x = drop_path(attn, deterministic) + x

        y = BertIntermediate(cfg, name="intermediate", **kw)(norm("layernorm_after")(x))
        y = Data2VecVisionProjection(cfg, "mlp", name="output", **kw)(y, deterministic)
        if scale > 0:
            y = lam("lambda_2") * y
        return drop_path(y, deterministic) + x, probs


class Data2VecVisionEncoder(nn.Module):
    """The layers (+ the shared relative position bias); collects hidden states and attentions.

    scan_layers / remat_policy: as :class:`zoo.nn.bert.BertEncoder` (stacked parameters
    under ``layers/``, a per-layer relative position bias included; the shared one stays
    outside the stack). The drop-path rate of each layer is a scanned input.
    """

    config: Data2VecVisionConfig
    attention_fn: Callable = dot_product_attention
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32
    scan_layers: bool = False
    remat_policy: str | None = None

    layer_names = ("layer_{i}", "layers")  # per-layer, stacked

    @nn.compact
    def __call__(self, x: Array, grid, interpolate_pos_encoding: bool = False, deterministic: bool = True,
                 output_attentions: bool = False, output_hidden_states: bool = False) -> dict:
        cfg = self.config
        shared_bias = None
        if cfg.use_shared_relative_position_bias:
            shared_bias = RelativePositionBias(cfg.window, cfg.num_attention_heads, self.param_dtype,
                                               name="relative_position_bias")(
                grid, interpolate_pos_encoding, x.shape[1])

        def step(layer, x, rate, shared_bias):
            y, probs = layer(x, grid, shared_bias, interpolate_pos_encoding, deterministic, output_attentions,
                             0.0 if rate is None else rate)
            return y, (x if output_hidden_states else None, probs)

        rates = None  # per layer, linear in the layer index; a scanned input (no draw at all when all 0)
        if not deterministic and cfg.drop_path_rate > 0:
            rates = drop_path_rates(cfg.drop_path_rate, cfg.num_hidden_layers)
        rngs = scan.layer_rngs(self, deterministic, required=("drop_path",) if rates else ())
        x, ys = scan.run_layers(
            lambda name: Data2VecVisionLayer(cfg, cfg.use_relative_position_bias, self.attention_fn, self.dtype,
                                             self.param_dtype, name=name),
            step, x, rates, (shared_bias,), num_layers=cfg.num_hidden_layers, scan_layers=self.scan_layers,
            remat_policy=self.remat_policy, rng=rngs, name=self.layer_names[0],
            stacked_name=self.layer_names[1])
        hidden, attentions = (tuple(y) for y in zip(*ys)) if ys else ((), ())
        return {
            "last_hidden_state": x,
            "hidden_states": (*hidden, x) if output_hidden_states else None,
            "attentions": attentions if output_attentions else None,
        }


# Parameter paths of the encoder layers, per layer and stacked (scan_layers=True).
LAYER_LAYOUT = tuple(f"encoder/{name}" for name in Data2VecVisionEncoder.layer_names)


class Data2VecVisionPooler(nn.Module):
    """Mean of the patch tokens + LayerNorm (``use_mean_pooling``), else the CLS token."""

    config: Data2VecVisionConfig
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, sequence: Array) -> Array:
        cfg = self.config
        if not cfg.use_mean_pooling:
            return sequence[:, 0]
        return LayerNorm(cfg.layer_norm_eps, dtype=self.dtype, param_dtype=self.param_dtype, name="layernorm")(
            sequence[:, 1:].mean(axis=1))


class Data2VecVisionModel(PretrainedModule):
    """The bare encoder: ``pixel_values [B, C, H, W]`` -> ``[B, 1 + (H/p)(W/p), hidden]``.

    Images of another size than ``config.image_size`` work directly: absolute position
    embeddings are interpolated bicubically and relative position biases bilinearly, as
    HF does (``interpolate_pos_encoding`` is accepted for HF compatibility).

    ``scan_layers`` / ``remat_policy`` (every head has them too): the encoder layers as one
    ``nn.scan`` (parameters under ``encoder/layers/``, the per-layer relative position
    biases with them) and per-layer rematerialisation, as in Data2VecTextModel; outputs,
    per-layer ``hidden_states`` / ``attentions`` included, are the same either way.
    """

    config: Data2VecVisionConfig
    add_pooling_layer: bool = False
    attention_fn: Callable | None = None  # a custom dense kernel, else attention_kernel's choice
    attention_kernel: str = "auto"  # see zoo.attention.kernels
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32
    scan_layers: bool = False
    remat_policy: str | None = None

    layer_layout = LAYER_LAYOUT

    @nn.compact
    def __call__(self, pixel_values: Array, bool_masked_pos: Array | None = None,
                 output_attentions: bool = False, output_hidden_states: bool = False,
                 interpolate_pos_encoding: bool = False, deterministic: bool = True) -> out.BaseModelOutputWithPooling:
        cfg = self.config
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        x, grid = Data2VecVisionEmbeddings(cfg, name="embeddings", **kw)(
            check_images(pixel_values, cfg.num_channels), bool_masked_pos, deterministic)
        enc = Data2VecVisionEncoder(cfg, self.dense_attention(), scan_layers=self.scan_layers,
                                    remat_policy=self.remat_policy, name="encoder", **kw)(
            x, grid, interpolate_pos_encoding, deterministic, output_attentions, output_hidden_states)
        sequence = enc["last_hidden_state"]
        if not cfg.use_mean_pooling:
            sequence = LayerNorm(cfg.layer_norm_eps, name="layernorm", **kw)(sequence)
        pooled = Data2VecVisionPooler(cfg, name="pooler", **kw)(sequence) if self.add_pooling_layer else None
        return out.BaseModelOutputWithPooling(last_hidden_state=sequence, pooler_output=pooled,
                                              hidden_states=enc["hidden_states"], attentions=enc["attentions"])

    @staticmethod
    def dummy_inputs(config: Data2VecVisionConfig) -> dict:
        height, width = as_pair(config.image_size, "image_size")
        return {"pixel_values": jnp.zeros((1, config.num_channels, height, width), jnp.float32)}


# ----------------------------------------------------------------------------- heads
class Data2VecVisionForImageClassification(PretrainedModule):
    """Pooled output -> ``classifier``; loss by HF's problem type (``labels`` ``[B]`` or ``[B, num_labels]``)."""

    config: Data2VecVisionConfig
    attention_fn: Callable | None = None  # a custom dense kernel, else attention_kernel's choice
    attention_kernel: str = "auto"  # see zoo.attention.kernels
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32
    scan_layers: bool = False  # see Data2VecVisionModel
    remat_policy: str | None = None

    layer_layout = LAYER_LAYOUT

    @nn.compact
    def __call__(self, pixel_values: Array, labels: Array | None = None, output_attentions: bool = False,
                 output_hidden_states: bool = False, interpolate_pos_encoding: bool = False,
                 deterministic: bool = True) -> out.ImageClassifierOutput:
        cfg = self.config
        o = Data2VecVisionModel(config=cfg, add_pooling_layer=True, attention_fn=self.attention_fn, attention_kernel=self.attention_kernel, dtype=self.dtype,
                                param_dtype=self.param_dtype, scan_layers=self.scan_layers,
                                remat_policy=self.remat_policy, name="data2vec_vision")(
            pixel_values=pixel_values, output_attentions=output_attentions, output_hidden_states=output_hidden_states,
            interpolate_pos_encoding=interpolate_pos_encoding, deterministic=deterministic)
        logits = Dense(cfg.num_labels, ("embed", "classes"), std=cfg.initializer_range, dtype=self.dtype,
                       param_dtype=self.param_dtype, name="classifier")(o.pooler_output)
        loss = None
        if labels is not None:
            loss = losses.sequence_classification_loss(logits, jnp.asarray(labels), cfg.num_labels, cfg.problem_type)
        return out.ImageClassifierOutput(loss=loss, logits=logits, hidden_states=o.hidden_states,
                                         attentions=o.attentions)

    dummy_inputs = staticmethod(Data2VecVisionModel.dummy_inputs)


class Data2VecVisionForSemanticSegmentation(PretrainedModule):
    """BEiT features at ``out_indices`` -> 4-scale FPN (x4, x2, x1, x1/2) -> UperNet
    (+ auxiliary FCN head) -> logits ``[B, num_labels, 4 H/p, 4 W/p]``.

    Batch norm uses the running statistics (``batch_stats``) unless
    ``use_running_average=False`` (PyTorch's ``train()``; pass ``mutable=["batch_stats"]``
    to update them). ``labels`` ``[B, H, W]``: cross entropy of the logits upsampled
    bilinearly to the labels' size, pixels equal to ``semantic_loss_ignore_index``
    ignored, plus ``auxiliary_loss_weight`` times the auxiliary head's.
    ``conv_implementation``: ``None`` (Winograd for large 3x3 convolutions on CPU, see
    ``zoo/nn/conv.py``), ``"xla"`` or ``"winograd"``.
    """

    config: Data2VecVisionConfig
    attention_fn: Callable | None = None  # a custom dense kernel, else attention_kernel's choice
    attention_kernel: str = "auto"  # see zoo.attention.kernels
    conv_implementation: str | None = None
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32
    scan_layers: bool = False  # see Data2VecVisionModel
    remat_policy: str | None = None

    layer_layout = LAYER_LAYOUT

    def setup_check(self) -> None:
        cfg = self.config
        if len(cfg.out_indices) != 4:
            raise ValueError("Data2VecVisionForSemanticSegmentation requires config.out_indices to be 4 integers "
                             f"(e.g. [3, 5, 7, 11] for a base model), got {list(cfg.out_indices)}")
        bad = [i for i in cfg.out_indices if not 1 <= i <= cfg.num_hidden_layers + 1]
        if bad or len(set(cfg.out_indices)) != 4:
            raise ValueError(f"config.out_indices {list(cfg.out_indices)} must be 4 distinct layers in "
                             f"1..{cfg.num_hidden_layers + 1} (index i takes hidden_states[i - 1], as HF)")

    @nn.compact
    def __call__(self, pixel_values: Array, labels: Array | None = None, output_attentions: bool = False,
                 output_hidden_states: bool = False, interpolate_pos_encoding: bool = False,
                 deterministic: bool = True, use_running_average: bool = True) -> out.SemanticSegmenterOutput:
        cfg = self.config
        self.setup_check()
        if labels is not None and cfg.num_labels == 1:
            raise ValueError("The number of labels should be greater than one")
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        o = Data2VecVisionModel(config=cfg, add_pooling_layer=False, attention_fn=self.attention_fn, attention_kernel=self.attention_kernel,
                                scan_layers=self.scan_layers, remat_policy=self.remat_policy,
                                name="data2vec_vision", **kw)(
            pixel_values=pixel_values, output_attentions=output_attentions, output_hidden_states=True,
            interpolate_pos_encoding=interpolate_pos_encoding, deterministic=deterministic)
        batch = o.last_hidden_state.shape[0]
        height, width = pixel_values.shape[2] // cfg.patch, pixel_values.shape[3] // cfg.patch
        # out index i takes hidden_states[i - 1] (as HF); channels-last maps of the patch tokens
        features = [o.hidden_states[i - 1][:, 1:].reshape(batch, height, width, cfg.hidden_size)
                    for i in sorted(cfg.out_indices)]
        up = lambda name: ConvTranspose2x2(cfg.hidden_size, name=name, **kw)
        f1 = up("fpn1_0")(features[0])
        f1 = gelu(BatchNorm(name="fpn1_1", **kw)(f1, use_running_average))
        features = [up("fpn1_3")(f1), up("fpn2_0")(features[1]), features[2], max_pool(features[3], 2)]

        logits = UperHead(cfg.hidden_size, cfg.num_labels, cfg.pool_scales, self.conv_implementation,
                          name="decode_head", **kw)(
            features, use_running_average)
        aux_logits = None
        if cfg.use_auxiliary_head:
            aux_logits = FCNHead(cfg.auxiliary_channels, cfg.num_labels, cfg.auxiliary_num_convs,
                                 cfg.auxiliary_concat_input, conv_implementation=self.conv_implementation,
                                 name="auxiliary_head", **kw)(features, use_running_average)
        loss = None
        if labels is not None:
            loss = self.loss(logits, aux_logits, jnp.asarray(labels))
        return out.SemanticSegmenterOutput(
            loss=loss, logits=jnp.transpose(logits, (0, 3, 1, 2)),
            hidden_states=o.hidden_states if output_hidden_states else None, attentions=o.attentions)

    def loss(self, logits: Array, aux_logits: Array | None, labels: Array) -> Array:
        """Channels-last logits ``[B, h, w, C]``, labels ``[B, H, W]``."""
        cfg = self.config
        if labels.ndim != 3 or labels.shape[0] != logits.shape[0]:
            raise ValueError(f"labels must be [batch, height, width] with batch {logits.shape[0]}, got {labels.shape}")
        labels = check_ids("labels", labels, "[batch, height, width]")
        ce = lambda x: losses.cross_entropy(resize(x, labels.shape[1:], axes=(1, 2)), labels,
                                            cfg.semantic_loss_ignore_index)
        loss = ce(logits)
        if aux_logits is not None:
            loss = loss + cfg.auxiliary_loss_weight * ce(aux_logits)
        return loss

    dummy_inputs = staticmethod(Data2VecVisionModel.dummy_inputs)


ARCHITECTURES = {
    "Data2VecVisionModel": Data2VecVisionModel,
    "Data2VecVisionForImageClassification": Data2VecVisionForImageClassification,
    "Data2VecVisionForSemanticSegmentation": Data2VecVisionForSemanticSegmentation,
}
