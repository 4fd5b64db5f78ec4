"""Data2VecText: the RoBERTa-style text model of data2vec, with every HF head.

Parameter paths mirror ``transformers``' ``Data2VecText*`` modules; ``KEY_TABLE`` is the
one table used to import PyTorch checkpoints and to export back.
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
from zoo.nn.bert import (
    BertEncoder,
    BertPooler,
    cross_attention_inputs,
    embedding_tables,
    expand_head_mask,
    init_cache,
    self_attention_setup,
    text_inputs,
    vocab_logits,
)
from zoo.nn.dropout import Dropout
from zoo.nn.inputs import check_length, text_input_name
from zoo.nn.kv_cache import KVCache
from zoo.nn.layers import ACT2FN, Dense, LayerNorm, activation
from zoo.nn.module import PretrainedModule
from zoo.nn.text_heads import (
    CausalLMHead,
    MaskedLMHead,
    MultipleChoiceHead,
    QuestionAnsweringHead,
    SequenceClassificationHead,
    TextHead,
    TokenClassificationHead,
    call_inputs,
)

Array = jax.Array


@config_dataclass
class Data2VecTextConfig(ZooConfig):
    """HF ``Data2VecTextConfig`` (plus v4's ``position_embedding_type``)."""

    model_type = "data2vec-text"

    vocab_size: int = 30522
    hidden_size: int = 768
    num_hidden_layers: int = 12
    num_attention_heads: int = 12
    intermediate_size: int = 3072
    hidden_act: str = "gelu"
    hidden_dropout_prob: float = 0.1
    attention_probs_dropout_prob: float = 0.1
    max_position_embeddings: int = 512
    type_vocab_size: int = 2
    initializer_range: float = 0.02
    layer_norm_eps: float = 1e-12
    pad_token_id: int | None = 1
    bos_token_id: int | None = 0
    eos_token_id: int | tuple[int, ...] | None = 2
    position_embedding_type: str = "absolute"
    use_cache: bool = True
    classifier_dropout: float | None = None
    is_decoder: bool = False
    add_cross_attention: bool = False
    tie_word_embeddings: bool = True

    def validate(self) -> None:
        super().validate()
        self._require_choice("position_embedding_type", {"absolute", "relative_key", "relative_key_query"})
        self._require_choice("hidden_act", set(ACT2FN))
        self._require_heads_divide()
        if self.add_cross_attention and not self.is_decoder:
            self._unsupported("add_cross_attention", True, "cross-attention needs is_decoder=True (as in HF)")
        if self.pad_token_id is None:
            self._unsupported("pad_token_id", None, "position ids are derived from the padding token")
        self._require_padding_index()
        if self.max_position_embeddings <= self.pad_token_id + 1:
            self._invalid("max_position_embeddings", self.max_position_embeddings,
                          f"positions start after pad_token_id={self.pad_token_id}, so the table needs "
                          f"more than {self.pad_token_id + 1} rows")


KEY_TABLE = KeyTable(
    base_model_prefix="data2vec_text",
    aliases=(
        ("lm_head.decoder.weight", "data2vec_text.embeddings.word_embeddings.weight"),
        ("lm_head.decoder.bias", "lm_head.bias"),
    ),
    ignore_unused=(r"embeddings\.position_ids$", r"embeddings\.token_type_ids$"),
    init_if_missing=(r"^(data2vec_text/)?pooler/", r"^classifier/", r"^qa_outputs/", r"^lm_head/"),
)


# Parameter paths of the encoder layers, per layer and stacked (scan_layers=True).
LAYER_LAYOUT = tuple(f"encoder/{name}" for name in BertEncoder.layer_names)


def position_ids_from_input_ids(input_ids: Array, padding_idx: int, past_length=0) -> Array:
    """fairseq positions: non-pad tokens count from ``padding_idx + 1``; pads stay ``padding_idx``."""
    keep = (input_ids != padding_idx).astype(jnp.int32)
    return (jnp.cumsum(keep, axis=1) + past_length) * keep + padding_idx


class Data2VecTextEmbeddings(nn.Module):
    config: Data2VecTextConfig
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, input_ids, token_type_ids, position_ids, inputs_embeds, past_length,
                 deterministic: bool = True) -> Array:
        cfg = self.config
        inputs_embeds, position, token_type = embedding_tables(self, input_ids, inputs_embeds)
        batch, length = inputs_embeds.shape[:2]
        if position_ids is None:
            if input_ids is not None:
                position_ids = position_ids_from_input_ids(input_ids, cfg.pad_token_id, past_length)
            else:
                position_ids = jnp.arange(length)[None] + cfg.pad_token_id + 1
        if token_type_ids is None:
            token_type_ids = jnp.zeros((batch, length), jnp.int32)
        x = inputs_embeds.astype(self.dtype) + token_type(token_type_ids)
        pos = position(position_ids)
        if cfg.position_embedding_type == "absolute":
            x = x + pos
        x = LayerNorm(cfg.layer_norm_eps, dtype=self.dtype, param_dtype=self.param_dtype, name="LayerNorm")(x)
        return Dropout(cfg.hidden_dropout_prob)(x, deterministic=deterministic)


class Data2VecTextModel(PretrainedModule):
    """The bare encoder (decoder when ``is_decoder``): ``[B, L]`` ids -> ``[B, L, hidden]``.

    Decoding: ``past_key_values=model.init_cache(batch, max_length)`` gives a fixed-size
    cache (one compilation for every step); ``attention_mask`` then spans ``max_length``.

    Module options (every head has them too, e.g. ``zoo.from_pretrained(path,
    scan_layers=True, remat_policy="dots")``): ``scan_layers=True`` runs the encoder layers
    as one ``nn.scan``, parameters stacked under ``encoder/layers/`` with a leading layer
    axis (checkpoints convert both ways, see :mod:`zoo.nn.scan`); ``remat_policy``
    (``"full"``, ``"dots"``, ``"dots_with_no_batch_dims"``) recomputes each layer's
    activations in the backward pass. Outputs are the same in every combination.
    """

    config: Data2VecTextConfig
    add_pooling_layer: bool = True
    attention_fn: Callable | None = None  # a custom dense kernel, else attention_kernel's choice
    attention_kernel: str = "auto"  # see zoo.attention.kernels
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32
    scan_layers: bool = False
    remat_policy: str | None = None

    layer_layout = LAYER_LAYOUT

    def init_cache(self, batch_size: int, max_length: int, dtype=None) -> KVCache:
        """Empty fixed-size cache for ``max_length`` positions (see the module docstring)."""
        return init_cache(self.config, batch_size, max_length, dtype or self.dtype)

    @nn.compact
    def __call__(
        self,
        input_ids=None,
        attention_mask=None,
        token_type_ids=None,
        position_ids=None,
        head_mask=None,
        inputs_embeds=None,
        encoder_hidden_states=None,
        encoder_attention_mask=None,
        past_key_values: KVCache | None = None,
        use_cache: bool | None = None,
        output_attentions: bool = False,
        output_hidden_states: bool = False,
        deterministic: bool = True,
    ) -> out.BaseModelOutputWithPoolingAndCrossAttentions:
        cfg = self.config
        input_ids, token_type_ids, position_ids, inputs_embeds, batch, length = text_inputs(
            cfg, input_ids, token_type_ids, position_ids, inputs_embeds)

        use_cache = cfg.use_cache if use_cache is None else use_cache
        cache, past_length, query_positions, mask = self_attention_setup(
            cfg, attention_mask, batch, length, past_key_values, use_cache, self.dtype)
        encoder_hidden_states, encoder_mask = cross_attention_inputs(
            encoder_hidden_states, encoder_attention_mask, length)
        if position_ids is None:  # fairseq positions start after padding_idx
            check_length(text_input_name(input_ids, cache), length if cache is None else cache.max_length,
                         cfg.max_position_embeddings - cfg.pad_token_id - 1,
                         f"max_position_embeddings={cfg.max_position_embeddings} less pad_token_id + 1: "
                         "positions start after the padding index")

        x = Data2VecTextEmbeddings(cfg, self.dtype, self.param_dtype, name="embeddings")(
            input_ids, token_type_ids, position_ids, inputs_embeds, past_length, deterministic
        )
        enc = BertEncoder(cfg, self.dense_attention(), self.dtype, self.param_dtype, self.scan_layers,
                          self.remat_policy, name="encoder")(
            x, mask,
            encoder_hidden_states=encoder_hidden_states, encoder_mask=encoder_mask,
            query_positions=query_positions,
            head_mask=expand_head_mask(head_mask, cfg.num_hidden_layers),
            cache=cache, deterministic=deterministic,
            output_attentions=output_attentions, output_hidden_states=output_hidden_states,
        )
        pooled = None
        if self.add_pooling_layer:
            pooled = BertPooler(cfg, self.dtype, self.param_dtype, name="pooler")(enc["last_hidden_state"])
        if not (cfg.is_decoder and use_cache):
            enc["past_key_values"] = None
        return out.BaseModelOutputWithPoolingAndCrossAttentions(pooler_output=pooled, **enc)

    @staticmethod
    def dummy_inputs(config: Data2VecTextConfig) -> dict:
        """Smallest inputs that create every parameter (cross-attention included)."""
        length = min(4, config.max_position_embeddings - config.pad_token_id - 1)
        inputs = {"input_ids": jnp.full((1, length), config.pad_token_id + 1, jnp.int32)}
        if config.is_decoder and config.add_cross_attention:
            inputs["encoder_hidden_states"] = jnp.zeros((1, 2, config.hidden_size))
        return inputs


class Data2VecTextLMHead(nn.Module):
    """dense -> gelu -> layer_norm -> decoder (tied to the word embeddings by default)."""

    config: Data2VecTextConfig
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, features: Array, shared_embedding: Array | None) -> Array:
        cfg = self.config
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        x = Dense(cfg.hidden_size, ("embed", "embed_out"), std=cfg.initializer_range, name="dense", **kw)(features)
        x = activation("gelu")(x)
        x = LayerNorm(cfg.layer_norm_eps, name="layer_norm", **kw)(x)
        return vocab_logits(self, x, shared_embedding)


class _Head(TextHead):
    """Shared fields of the head modules; ``body()`` builds the ``data2vec_text`` submodule
    (without its pooler unless a head says otherwise)."""

    base_name = "data2vec_text"
    config: Data2VecTextConfig
    attention_fn: Callable | None = None  # a custom dense kernel, else attention_kernel's choice
    attention_kernel: str = "auto"  # see zoo.attention.kernels
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32
    scan_layers: bool = False  # see Data2VecTextModel
    remat_policy: str | None = None

    layer_layout = LAYER_LAYOUT
    body_class = Data2VecTextModel

    def body(self, *, add_pooling_layer: bool, **inputs) -> out.BaseModelOutputWithPoolingAndCrossAttentions:
        return Data2VecTextModel(
            config=self.config, add_pooling_layer=add_pooling_layer, attention_fn=self.attention_fn, attention_kernel=self.attention_kernel,
            dtype=self.dtype, param_dtype=self.param_dtype, scan_layers=self.scan_layers,
            remat_policy=self.remat_policy, name="data2vec_text")(**inputs)

    def lm_head(self) -> Data2VecTextLMHead:
        return Data2VecTextLMHead(self.config, self.dtype, self.param_dtype, name="lm_head")


class Data2VecTextForMaskedLM(_Head, MaskedLMHead):
    @nn.compact
    def __call__(self, input_ids=None, attention_mask=None, token_type_ids=None, position_ids=None,
                 head_mask=None, inputs_embeds=None, encoder_hidden_states=None,
                 encoder_attention_mask=None, labels=None, output_attentions=False,
                 output_hidden_states=False, deterministic=True) -> out.MaskedLMOutput:
        return self.forward(**call_inputs(locals()))


class Data2VecTextForCausalLM(_Head, CausalLMHead):
    @nn.compact
    def __call__(self, input_ids=None, attention_mask=None, token_type_ids=None, position_ids=None,
                 head_mask=None, inputs_embeds=None, encoder_hidden_states=None,
                 encoder_attention_mask=None, labels=None, past_key_values=None, use_cache=None,
                 output_attentions=False, output_hidden_states=False,
                 deterministic=True) -> out.CausalLMOutputWithCrossAttentions:
        return self.forward(**call_inputs(locals()))


class Data2VecTextForSequenceClassification(_Head, SequenceClassificationHead):
    @nn.compact
    def __call__(self, input_ids=None, attention_mask=None, token_type_ids=None, position_ids=None,
                 head_mask=None, inputs_embeds=None, labels=None, output_attentions=False,
                 output_hidden_states=False, deterministic=True) -> out.SequenceClassifierOutput:
        return self.forward(**call_inputs(locals()))


class Data2VecTextForTokenClassification(_Head, TokenClassificationHead):
    @nn.compact
    def __call__(self, input_ids=None, attention_mask=None, token_type_ids=None, position_ids=None,
                 head_mask=None, inputs_embeds=None, labels=None, output_attentions=False,
                 output_hidden_states=False, deterministic=True) -> out.TokenClassifierOutput:
        return self.forward(**call_inputs(locals()))


class Data2VecTextForMultipleChoice(_Head, MultipleChoiceHead):
    """Inputs ``[B, num_choices, L]``; logits ``[B, num_choices]`` from the pooled output."""

    @nn.compact
    def __call__(self, input_ids=None, token_type_ids=None, attention_mask=None, labels=None,
                 position_ids=None, head_mask=None, inputs_embeds=None, output_attentions=False,
                 output_hidden_states=False, deterministic=True) -> out.MultipleChoiceModelOutput:
        return self.forward(**call_inputs(locals()))


class Data2VecTextForQuestionAnswering(_Head, QuestionAnsweringHead):
    @nn.compact
    def __call__(self, input_ids=None, attention_mask=None, token_type_ids=None, position_ids=None,
                 head_mask=None, inputs_embeds=None, start_positions=None, end_positions=None,
                 output_attentions=False, output_hidden_states=False,
                 deterministic=True) -> out.QuestionAnsweringModelOutput:
        return self.forward(**call_inputs(locals()))


ARCHITECTURES = {
    cls.__name__: cls
    for cls in (
        Data2VecTextModel, Data2VecTextForMaskedLM, Data2VecTextForCausalLM,
        Data2VecTextForSequenceClassification, Data2VecTextForTokenClassification,
        Data2VecTextForMultipleChoice, Data2VecTextForQuestionAnswering,
    )
}
