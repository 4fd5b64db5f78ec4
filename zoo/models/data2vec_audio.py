"""Data2VecAudio: the wav2vec2-style speech model of data2vec, with its five HF heads.

Inputs are raw 16 kHz waveforms ``input_values [B, T]`` with an optional sample-level
``attention_mask [B, T]``. Training (``deterministic=False``) needs a ``"dropout"`` rng,
which also drives SpecAugment and LayerDrop.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from converters.mapping import KeyTable
from zoo import outputs as out
from zoo.config import ZooConfig, config_dataclass
from zoo.nn import audio, losses
from zoo.nn.audio_heads import AudioHead, CTCHead, SequenceClassificationHead
from zoo.nn.layers import ACT2FN, normal_init, zeros_init
from zoo.nn.inputs import check_audio, check_mask
from zoo.nn.module import PretrainedModule
from zoo.nn.spec_augment import apply_spec_augment

Array = jax.Array


@config_dataclass
class Data2VecAudioConfig(ZooConfig):
    """HF ``Data2VecAudioConfig``."""

    model_type = "data2vec-audio"

    vocab_size: int | None = 32
    hidden_size: int = 768
    num_hidden_layers: int = 12
    num_attention_heads: int = 12
    intermediate_size: int = 3072
    hidden_act: str = "gelu"
    hidden_dropout: float = 0.1
    activation_dropout: float = 0.1
    attention_dropout: float = 0.1
    feat_proj_dropout: float = 0.0
    final_dropout: float = 0.1
    layerdrop: float = 0.1
    initializer_range: float = 0.02
    layer_norm_eps: float = 1e-5
    feat_extract_activation: str = "gelu"
    conv_dim: tuple[int, ...] = (512, 512, 512, 512, 512, 512, 512)
    conv_stride: tuple[int, ...] = (5, 2, 2, 2, 2, 2, 2)
    conv_kernel: tuple[int, ...] = (10, 3, 3, 3, 3, 2, 2)
    conv_bias: bool = False
    num_conv_pos_embedding_groups: int = 16
    conv_pos_kernel_size: int = 19
    num_conv_pos_embeddings: int = 5
    apply_spec_augment: bool = True
    mask_time_prob: float = 0.05
    mask_time_length: int = 10
    mask_time_min_masks: int = 2
    mask_feature_prob: float = 0.0
    mask_feature_length: int = 10
    mask_feature_min_masks: int = 0
    ctc_loss_reduction: str = "sum"
    ctc_zero_infinity: bool = False
    use_weighted_layer_sum: bool = False
    classifier_proj_size: int = 256
    tdnn_dim: tuple[int, ...] = (512, 512, 512, 512, 1500)
    tdnn_kernel: tuple[int, ...] = (5, 3, 3, 1, 1)
    tdnn_dilation: tuple[int, ...] = (1, 2, 3, 1, 1)
    xvector_output_dim: int = 512
    pad_token_id: int | None = 0
    bos_token_id: int | None = 1
    eos_token_id: int | tuple[int, ...] | None = 2
    add_adapter: bool = False
    adapter_kernel_size: int = 3
    adapter_stride: int = 2
    num_adapter_layers: int = 3
    output_hidden_size: int | None = None

    def __post_init__(self):
        if self.output_hidden_size is None:  # HF: output_hidden_size or hidden_size
            object.__setattr__(self, "output_hidden_size", self.hidden_size)

    def validate(self) -> None:
        super().validate()
        if not (len(self.conv_dim) == len(self.conv_stride) == len(self.conv_kernel)):
            self._unsupported("conv_dim", self.conv_dim,
                              "conv_dim, conv_stride and conv_kernel must have the same length")
        if not (len(self.tdnn_dim) == len(self.tdnn_kernel) == len(self.tdnn_dilation)):
            self._unsupported("tdnn_dim", self.tdnn_dim, "tdnn_dim, tdnn_kernel and tdnn_dilation lengths differ")
        for name in ("hidden_act", "feat_extract_activation"):
            self._require_choice(name, set(ACT2FN))
        self._require_choice("ctc_loss_reduction", {"sum", "mean"})
        self._require_heads_divide()
        if self.hidden_size % self.num_conv_pos_embedding_groups:
            self._unsupported("num_conv_pos_embedding_groups", self.num_conv_pos_embedding_groups,
                              "must divide hidden_size")

    @property
    def num_feat_extract_layers(self) -> int:
        return len(self.conv_dim)


KEY_TABLE = KeyTable(
    base_model_prefix="data2vec_audio",
    init_if_missing=(r"^lm_head/", r"^projector/", r"^classifier/", r"^layer_weights$", r"^tdnn_\d+/",
                     r"^feature_extractor/", r"^objective/", r"^(data2vec_audio/)?masked_spec_embed$"),
)


# Parameter paths of the transformer layers, per layer and stacked (scan_layers=True).
LAYER_LAYOUT = tuple(f"encoder/{name}" for name in audio.Encoder.layer_names)


class Data2VecAudioModel(PretrainedModule):
    """``[B, T]`` waveform -> ``last_hidden_state [B, F, hidden]`` (F frames, ~T / 320).

    Module options (every head has them too, e.g. ``zoo.from_pretrained(path,
    scan_layers=True, remat_policy="dots")``): ``scan_layers=True`` runs the transformer
    layers as one ``nn.scan``, parameters stacked under ``encoder/layers/`` with a leading
    layer axis (checkpoints convert both ways, see :mod:`zoo.nn.scan`); ``remat_policy``
    (``"full"``, ``"dots"``, ``"dots_with_no_batch_dims"``) recomputes each layer's
    activations in the backward pass. Outputs are the same in every combination.
    """

    config: Data2VecAudioConfig
    attention_fn: Callable | None = None  # a custom dense kernel, else attention_kernel's choice
    attention_kernel: str = "auto"  # see zoo.attention.kernels
    freeze_feature_encoder: bool = False
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32
    scan_layers: bool = False
    remat_policy: str | None = None

    layer_layout = LAYER_LAYOUT

    @nn.compact
    def __call__(self, input_values, attention_mask=None, mask_time_indices=None, output_attentions=False,
                 output_hidden_states=False, deterministic=True) -> out.Wav2Vec2BaseModelOutput:
        cfg = self.config
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        waveform, attention_mask = check_audio(cfg, input_values, attention_mask)
        features = audio.FeatureEncoder(cfg, name="feature_extractor", **kw)(waveform)
        if self.freeze_feature_encoder:
            features = jax.lax.stop_gradient(features)
        frames = None
        if attention_mask is not None:
            frames = audio.frame_mask(cfg, attention_mask, features.shape[1], add_adapter=False)
        hidden, extract_features = audio.FeatureProjection(cfg, name="feature_projection", **kw)(
            features, deterministic)

        needs_embed = cfg.mask_time_prob > 0.0 or cfg.mask_feature_prob > 0.0
        if mask_time_indices is not None and not needs_embed:
            raise ValueError("mask_time_indices needs masked_spec_embed, which exists only when "
                             "mask_time_prob > 0 or mask_feature_prob > 0 in the config")
        if needs_embed:
            embed = self.param("masked_spec_embed", nn.with_logical_partitioning(
                nn.initializers.uniform(1.0), ("embed",)), (cfg.hidden_size,), self.param_dtype)
            training = not deterministic and (cfg.mask_time_prob > 0 or cfg.mask_feature_prob > 0)
            hidden, _ = apply_spec_augment(
                self.make_rng("dropout") if training else None, hidden,
                masked_spec_embed=embed.astype(hidden.dtype),
                mask_time_prob=cfg.mask_time_prob, mask_time_length=cfg.mask_time_length,
                mask_time_min_masks=cfg.mask_time_min_masks, mask_feature_prob=cfg.mask_feature_prob,
                mask_feature_length=cfg.mask_feature_length, mask_feature_min_masks=cfg.mask_feature_min_masks,
                lengths=None if frames is None else frames.sum(-1),
                mask_time_indices=None if mask_time_indices is None else check_mask(
                    "mask_time_indices", mask_time_indices, (waveform.shape[0], features.shape[1]), "[batch, frames]"
                ).astype(bool),
                deterministic=deterministic, apply_spec_augment=cfg.apply_spec_augment,
            )

        enc = audio.Encoder(cfg, self.dense_attention(), scan_layers=self.scan_layers, remat_policy=self.remat_policy,
                            name="encoder", **kw)(
            hidden, frames, deterministic, output_attentions, output_hidden_states)
        last = enc["last_hidden_state"]
        if cfg.add_adapter:
            last = audio.Adapter(cfg, name="adapter", **kw)(last, deterministic)
        return out.Wav2Vec2BaseModelOutput(last_hidden_state=last, extract_features=extract_features,
                                           hidden_states=enc["hidden_states"], attentions=enc["attentions"])

    @staticmethod
    def dummy_inputs(config: Data2VecAudioConfig) -> dict:
        """One waveform long enough for every conv (and the adapter) to produce frames."""
        length = 1
        for k, s in reversed(list(zip(config.conv_kernel, config.conv_stride))):
            length = (length - 1) * s + k
        return {"input_values": jnp.zeros((1, length * 4), jnp.float32)}


class _Head(AudioHead):
    """The ``data2vec_audio`` body under the shared audio heads."""

    attention_fn: Callable | None = None  # a custom dense kernel, else attention_kernel's choice
    attention_kernel: str = "auto"  # see zoo.attention.kernels
    scan_layers: bool = False  # see Data2VecAudioModel
    remat_policy: str | None = None

    layer_layout = LAYER_LAYOUT
    dummy_inputs = staticmethod(Data2VecAudioModel.dummy_inputs)

    def body(self, **inputs) -> out.Wav2Vec2BaseModelOutput:
        return Data2VecAudioModel(config=self.config, attention_fn=self.attention_fn, attention_kernel=self.attention_kernel,
                                  freeze_feature_encoder=self.freeze_feature_encoder, dtype=self.dtype,
                                  param_dtype=self.param_dtype, scan_layers=self.scan_layers,
                                  remat_policy=self.remat_policy, name="data2vec_audio")(**inputs)


class Data2VecAudioForCTC(_Head, CTCHead):
    pass


class Data2VecAudioForSequenceClassification(_Head, SequenceClassificationHead):
    pass


class Data2VecAudioForAudioFrameClassification(_Head):
    """Frame logits ``[B, F, num_labels]``; labels are one-hot-like ``[B, F, num_labels]`` (argmax taken)."""

    @nn.compact
    def __call__(self, input_values, attention_mask=None, labels=None, output_attentions=False,
                 output_hidden_states=False, deterministic=True) -> out.TokenClassifierOutput:
        cfg = self.config
        self.reject_adapter("Audio frame classification")
        o = self.body(input_values=input_values, attention_mask=attention_mask, output_attentions=output_attentions,
                      output_hidden_states=output_hidden_states or cfg.use_weighted_layer_sum,
                      deterministic=deterministic)
        logits = self.dense(cfg.num_labels, ("embed", "classes"), "classifier")(self.features(o))
        loss = None
        if labels is not None:
            targets = jnp.argmax(jnp.asarray(labels).reshape(-1, cfg.num_labels), axis=1)
            loss = losses.cross_entropy(logits.reshape(-1, cfg.num_labels), targets)
        return out.TokenClassifierOutput(loss=loss, logits=logits,
                                         hidden_states=o.hidden_states if output_hidden_states else None,
                                         attentions=o.attentions)


class _LinearParams(nn.Module):
    """The ``kernel [in, out]`` / ``bias [out]`` of a Linear, returned instead of applied."""

    in_dim: int
    out_dim: int
    std: float
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self) -> tuple[Array, Array]:
        kernel = self.param("kernel", normal_init(self.std, ("mlp", "mlp_out")), (self.in_dim, self.out_dim),
                            self.param_dtype)
        return kernel, self.param("bias", zeros_init(("mlp_out",)), (self.out_dim,), self.param_dtype)


class TDNNLayer(nn.Module):
    """Dilated 1-D conv stored as HF's ``kernel`` Linear ``[k * in, out]`` (k-major), then ReLU."""

    in_dim: int
    out_dim: int
    kernel_size: int
    dilation: int
    std: float = 0.02
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: Array) -> Array:
        kernel, bias = _LinearParams(self.in_dim * self.kernel_size, self.out_dim, self.std, self.param_dtype,
                                     name="kernel")()
        kernel = kernel.astype(self.dtype).reshape(self.kernel_size, self.in_dim, self.out_dim)
        y = jax.lax.conv_general_dilated(x.astype(self.dtype), kernel, (1,), "VALID", rhs_dilation=(self.dilation,),
                                         dimension_numbers=("NWC", "WIO", "NWC"))
        return jax.nn.relu(y + bias.astype(self.dtype))


class Data2VecAudioForXVector(_Head):
    """Speaker embeddings (x-vectors): TDNN, statistics pooling, AMSoftmax loss."""

    @nn.compact
    def __call__(self, input_values, attention_mask=None, labels=None, output_attentions=False,
                 output_hidden_states=False, deterministic=True) -> out.XVectorOutput:
        cfg = self.config
        o = self.body(input_values=input_values, attention_mask=attention_mask, output_attentions=output_attentions,
                      output_hidden_states=output_hidden_states or cfg.use_weighted_layer_sum,
                      deterministic=deterministic)
        x = self.dense(cfg.tdnn_dim[0], ("embed", "mlp"), "projector")(self.features(o))
        dims = list(cfg.tdnn_dim)
        for i, (dim, k, d) in enumerate(zip(dims, cfg.tdnn_kernel, cfg.tdnn_dilation)):
            x = TDNNLayer(dims[i - 1] if i else dims[0], dim, k, d, cfg.initializer_range, self.dtype,
                          self.param_dtype, name=f"tdnn_{i}")(x)
        # Statistics pooling over HF's TDNN lengths (which ignore dilation; clipped to the frames).
        if attention_mask is None:
            n = jnp.full((x.shape[0],), x.shape[1])
        else:
            lengths = audio.feat_extract_output_lengths(cfg, jnp.sum(jnp.asarray(attention_mask), -1))
            n = jnp.minimum(audio.conv_output_lengths(lengths, cfg.tdnn_kernel, [1] * len(dims)), x.shape[1])
        keep = (jnp.arange(x.shape[1])[None, :] < n[:, None])[..., None]
        count = n[:, None].astype(x.dtype)
        mean = jnp.where(keep, x, 0.0).sum(1) / count
        std = jnp.sqrt(jnp.where(keep, jnp.square(x - mean[:, None]), 0.0).sum(1) / (count - 1))
        embeddings = self.dense(cfg.xvector_output_dim, ("mlp", "embed_out"), "feature_extractor")(
            jnp.concatenate([mean, std], axis=-1))
        logits = self.dense(cfg.xvector_output_dim, ("embed_out", "classes"), "classifier")(embeddings)
        loss = AMSoftmaxLoss(cfg.xvector_output_dim, cfg.num_labels, param_dtype=self.param_dtype,
                             name="objective")(logits, labels)
        return out.XVectorOutput(loss=loss, logits=logits, embeddings=embeddings,
                                 hidden_states=o.hidden_states if output_hidden_states else None,
                                 attentions=o.attentions)


class AMSoftmaxLoss(nn.Module):
    """Additive-margin softmax: ``scale * (cos - margin [target])``, cross entropy."""

    input_dim: int
    num_labels: int
    scale: float = 30.0
    margin: float = 0.4
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, hidden_states: Array, labels: Array | None) -> Array | None:
        """hidden_states ``[B, input_dim]``, labels ``[B]`` -> scalar loss (None without labels)."""
        weight = self.param("weight", normal_init(1.0, ("embed_out", "classes")),
                            (self.input_dim, self.num_labels), self.param_dtype).astype(jnp.float32)
        if labels is None:
            return None
        labels = jnp.asarray(labels).reshape(-1)
        normalize = lambda v, axis: v / jnp.maximum(jnp.linalg.norm(v, axis=axis, keepdims=True), 1e-12)
        cos = normalize(hidden_states.astype(jnp.float32), 1) @ normalize(weight, 0)
        onehot = jax.nn.one_hot(labels, self.num_labels, dtype=bool)
        logits = self.scale * jnp.where(onehot, cos - self.margin, cos)
        return losses.cross_entropy(logits, labels)


ARCHITECTURES = {
    cls.__name__: cls
    for cls in (
        Data2VecAudioModel, Data2VecAudioForCTC, Data2VecAudioForSequenceClassification,
        Data2VecAudioForAudioFrameClassification, Data2VecAudioForXVector,
    )
}
