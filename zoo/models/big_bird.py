"""BigBird: a BERT encoder with block-sparse attention for long sequences, with every HF head.

``attention_type="block_sparse"`` runs :mod:`zoo.attention.block_sparse` when the sequence
is long enough (more than ``(5 + 2 * num_random_blocks) * block_size`` tokens), padding it
to a multiple of ``block_size`` and removing the padding again, as HF does. Shorter
sequences, ``attention_type="original_full"`` and decoders use dense attention.

Random blocks: in training (``deterministic=False``) each layer draws its own blocks, per
head, from the ``"random_blocks"`` rng stream (``rngs={"random_blocks": key, ...}``). At
inference they are all 0, as in HF; ``inference_random_seed=N`` gives a fixed random plan
instead (per layer, from ``PRNGKey(N)``).

``scan_layers=True`` (a field of every module here) runs the encoder layers as one ``nn.scan``,
parameters stacked under ``encoder/layers/`` with a leading layer axis (checkpoints convert both
ways, see :mod:`zoo.nn.scan`), in both attention types: under block-sparse attention each layer
still draws its own random blocks (one ``"random_blocks"`` key per layer, split from the
encoder's, and the layer index as a scanned input), the same in both layouts.
``remat_policy`` (``"full"``, ``"dots"``, ``"dots_with_no_batch_dims"``) recomputes each
layer's activations in the backward pass.

Outputs are cut back to the input length: ``last_hidden_state``, every entry of
``hidden_states`` ``[B, L, hidden]`` and ``attentions`` ``[B, H, L, L]`` (HF returns the
block-padded length for some of them; the values agree on the first ``L`` positions).
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from converters.mapping import KeyTable
from zoo import outputs as out
from zoo.attention.kernels import BlockSparseAttention
from zoo.config import ZooConfig, config_dataclass
from zoo.nn import losses
from zoo.nn.bert import (
    BertEncoder,
    BertIntermediate,
    BertPreTrainingHeads,
    BertResidualOutput,
    cross_attention_inputs,
    embedding_tables,
    init_cache,
    self_attention_setup,
    text_inputs,
)
from zoo.nn.dropout import Dropout
from zoo.nn.inputs import check_length, check_mask, text_input_name
from zoo.nn.kv_cache import KVCache
from zoo.nn.layers import ACT2FN, Dense, LayerNorm
from zoo.nn.module import PretrainedModule
from zoo.nn.text_heads import (
    CausalLMHead,
    MaskedLMHead,
    MultipleChoiceHead,
    SequenceClassificationHead,
    TextHead,
    TokenClassificationHead,
    call_inputs,
    span_logits,
)

Array = jax.Array


@config_dataclass
class BigBirdConfig(ZooConfig):
    """HF ``BigBirdConfig``."""

    model_type = "big_bird"
    position_embedding_type = "absolute"  # not an HF field; the shared BERT stack reads it

    vocab_size: int = 50358
    hidden_size: int = 768
    num_hidden_layers: int = 12
    num_attention_heads: int = 12
    intermediate_size: int = 3072
    hidden_act: str = "gelu_new"
    hidden_dropout_prob: float = 0.1
    attention_probs_dropout_prob: float = 0.1
    max_position_embeddings: int = 4096
    type_vocab_size: int = 2
    initializer_range: float = 0.02
    layer_norm_eps: float = 1e-12
    use_cache: bool = True
    pad_token_id: int | None = 0
    bos_token_id: int | None = 1
    eos_token_id: int | tuple[int, ...] | None = 2
    sep_token_id: int | None = 66
    attention_type: str = "block_sparse"
    use_bias: bool = True
    rescale_embeddings: bool = False
    block_size: int = 64
    num_random_blocks: int = 3
    classifier_dropout: float | None = None
    is_decoder: bool = False
    add_cross_attention: bool = False
    tie_word_embeddings: bool = True

    def validate(self) -> None:
        super().validate()
        self._require_choice("attention_type", {"block_sparse", "original_full"})
        self._require_choice("hidden_act", set(ACT2FN))
        self._require_heads_divide()
        if self.add_cross_attention:
            self._unsupported("add_cross_attention", True,
                              "HF's BigBird decoder also feeds encoder_hidden_states to its self-attention "
                              "and drops encoder_attention_mask; the zoo does not reproduce that")
        if self.pad_token_id is None:
            self._unsupported("pad_token_id", None, "block padding fills with the padding token")
        self._require_padding_index()

    @property
    def max_tokens_to_attend(self) -> int:
        """Sequences up to this length fall back to full attention (HF's rule)."""
        return (5 + 2 * self.num_random_blocks) * self.block_size


KEY_TABLE = KeyTable(
    base_model_prefix="bert",
    aliases=(
        ("cls.predictions.decoder.weight", "bert.embeddings.word_embeddings.weight"),
        ("cls.predictions.decoder.bias", "cls.predictions.bias"),
    ),
    ignore_unused=(r"embeddings\.position_ids$", r"embeddings\.token_type_ids$"),
    init_if_missing=(r"^(bert/)?pooler/", r"^classifier/", r"^qa_classifier/", r"^cls/"),
)


# Parameter paths of the encoder layers, per layer and stacked (scan_layers=True).
LAYER_LAYOUT = tuple(f"encoder/{name}" for name in BertEncoder.layer_names)


def uses_block_sparse(config: BigBirdConfig, length: int) -> bool:
    """Whether a sequence of ``length`` tokens runs block-sparse (else dense) attention."""
    if config.attention_type != "block_sparse":
        return False
    if config.is_decoder:
        warnings.warn("BigBird decoders use full (causal) attention: HF's block-sparse decoder would "
                      "attend to future tokens", stacklevel=3)
        return False
    if length <= config.max_tokens_to_attend:
        warnings.warn(
            f"block-sparse attention needs more than (5 + 2 * num_random_blocks) * block_size = "
            f"{config.max_tokens_to_attend} tokens; a sequence of {length} uses full attention (as HF)",
            stacklevel=3)
        return False
    return True


def _pad_right(x: Array | None, pad: int, value) -> Array | None:
    if x is None or pad == 0:
        return x
    return jnp.pad(x, ((0, 0), (0, pad)) + ((0, 0),) * (x.ndim - 2), constant_values=value)


class BigBirdEmbeddings(nn.Module):
    """word (x sqrt(hidden) if ``rescale_embeddings``) + token type + position; dropout; LayerNorm."""

    config: BigBirdConfig
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, input_ids, token_type_ids, position_ids, inputs_embeds, past_length=0,
                 deterministic: bool = True) -> Array:
        cfg = self.config
        inputs_embeds, position, token_type = embedding_tables(self, input_ids, inputs_embeds)
        batch, length = inputs_embeds.shape[:2]
        if position_ids is None:
            position_ids = (jnp.arange(length) + past_length)[None]
        if token_type_ids is None:
            token_type_ids = jnp.zeros((batch, length), jnp.int32)
        x = inputs_embeds.astype(self.dtype)
        if cfg.rescale_embeddings:
            x = x * cfg.hidden_size**0.5
        x = x + token_type(token_type_ids) + position(position_ids)
        x = Dropout(cfg.hidden_dropout_prob)(x, deterministic=deterministic)
        return LayerNorm(cfg.layer_norm_eps, dtype=self.dtype, param_dtype=self.param_dtype, name="LayerNorm")(x)


class BigBirdModel(PretrainedModule):
    """The bare encoder (decoder when ``is_decoder``): ``[B, L]`` ids -> ``[B, L, hidden]``.

    Decoding: ``past_key_values=model.init_cache(batch, max_length)`` gives a fixed-size
    cache (one compilation for every step); ``attention_mask`` then spans ``max_length``.
    """

    config: BigBirdConfig
    add_pooling_layer: bool = True
    attention_fn: Callable | None = None  # a custom dense kernel, else attention_kernel's choice
    attention_kernel: str = "auto"  # see zoo.attention.kernels
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32
    inference_random_seed: int | None = None
    block_sparse_dropout: bool = False  # HF's block-sparse layer has no attention dropout
    scan_layers: bool = False  # see the module docstring
    remat_policy: str | None = None

    layer_layout = LAYER_LAYOUT

    def init_cache(self, batch_size: int, max_length: int, dtype=None) -> KVCache:
        return init_cache(self.config, batch_size, max_length, dtype or self.dtype)

    def block_sparse_kernel(self) -> BlockSparseAttention:
        cfg = self.config
        return BlockSparseAttention(cfg.block_size, cfg.num_random_blocks, cfg.max_position_embeddings,
                                    self.inference_random_seed, self.block_sparse_dropout, kernel=self.attention_kernel)

    @nn.compact
    def __call__(
        self,
        input_ids=None,
        attention_mask=None,
        token_type_ids=None,
        position_ids=None,
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
        use_cache = bool(cfg.use_cache if use_cache is None else use_cache) and cfg.is_decoder
        embeddings = BigBirdEmbeddings(cfg, self.dtype, self.param_dtype, name="embeddings")

        sparse = uses_block_sparse(cfg, length)
        if sparse:
            if past_key_values is not None or encoder_hidden_states is not None:
                raise ValueError("block-sparse attention takes neither a cache nor encoder_hidden_states")
            pad = (-length) % cfg.block_size
            if attention_mask is None:
                attention_mask = jnp.ones((batch, length), jnp.int32)
            attention_mask = check_mask("attention_mask", attention_mask, (batch, length))
            if token_type_ids is None:
                token_type_ids = jnp.zeros((batch, length), jnp.int32)
            if pad and inputs_embeds is not None:  # HF pads with the embedded padding token
                pad_ids = jnp.full((batch, pad), cfg.pad_token_id, jnp.int32)
                pad_embeds = embeddings(pad_ids, None, None, None, 0, deterministic)
                inputs_embeds = jnp.concatenate([inputs_embeds, pad_embeds.astype(inputs_embeds.dtype)], 1)
            input_ids = _pad_right(input_ids, pad, cfg.pad_token_id)
            position_ids = _pad_right(position_ids, pad, cfg.pad_token_id)
            token_type_ids = _pad_right(token_type_ids, pad, 0)
            attention_mask = _pad_right(attention_mask, pad, 0)
            cache, past_length, query_positions = None, 0, None
            mask = attention_mask.astype(bool)[:, None, None, :]
            attention_fn = self.block_sparse_kernel()
        else:
            cache, past_length, query_positions, mask = self_attention_setup(
                cfg, attention_mask, batch, length, past_key_values, use_cache, self.dtype)
            attention_fn = self.dense_attention()
        encoder_hidden_states, encoder_mask = cross_attention_inputs(
            encoder_hidden_states, encoder_attention_mask, length)
        if position_ids is None:
            used = length + (pad if sparse else 0) if cache is None else cache.max_length  # HF pads to blocks first
            check_length(text_input_name(input_ids, cache), used,
                         cfg.max_position_embeddings, f"max_position_embeddings={cfg.max_position_embeddings}")

        x = embeddings(input_ids, token_type_ids, position_ids, inputs_embeds, past_length, deterministic)
        enc = BertEncoder(cfg, attention_fn, self.dtype, self.param_dtype, self.scan_layers, self.remat_policy,
                          name="encoder")(
            x, mask,
            encoder_hidden_states=encoder_hidden_states, encoder_mask=encoder_mask,
            query_positions=query_positions, cache=cache, deterministic=deterministic,
            output_attentions=output_attentions, output_hidden_states=output_hidden_states,
        )
        pooled = None
        if self.add_pooling_layer:
            pooler = Dense(cfg.hidden_size, ("embed", "embed_out"), std=cfg.initializer_range,
                           dtype=self.dtype, param_dtype=self.param_dtype, name="pooler")
            pooled = jnp.tanh(pooler(enc["last_hidden_state"][:, 0]))
        if sparse:  # remove the block padding
            enc["last_hidden_state"] = enc["last_hidden_state"][:, :length]
            if enc["hidden_states"] is not None:
                enc["hidden_states"] = tuple(h[:, :length] for h in enc["hidden_states"])
            if enc["attentions"] is not None:
                enc["attentions"] = tuple(a[..., :length, :length] for a in enc["attentions"])
        if not use_cache:
            enc["past_key_values"] = None
        return out.BaseModelOutputWithPoolingAndCrossAttentions(pooler_output=pooled, **enc)

    @staticmethod
    def dummy_inputs(config: BigBirdConfig) -> dict:
        """Smallest inputs that create every parameter."""
        return {"input_ids": jnp.full((1, 4), config.pad_token_id + 1, jnp.int32)}


class _Head(TextHead):
    """Shared fields of the heads; ``body()`` builds the ``bert`` submodule (with its pooler
    unless a head says otherwise)."""

    config: BigBirdConfig
    attention_fn: Callable | None = None  # a custom dense kernel, else attention_kernel's choice
    attention_kernel: str = "auto"  # see zoo.attention.kernels
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32
    inference_random_seed: int | None = None
    block_sparse_dropout: bool = False
    scan_layers: bool = False  # see the module docstring
    remat_policy: str | None = None

    layer_layout = LAYER_LAYOUT
    body_class = BigBirdModel
    pooling_by_default = True

    def body(self, *, add_pooling_layer: bool, **inputs) -> out.BaseModelOutputWithPoolingAndCrossAttentions:
        return BigBirdModel(
            config=self.config, add_pooling_layer=add_pooling_layer, attention_fn=self.attention_fn, attention_kernel=self.attention_kernel,
            dtype=self.dtype, param_dtype=self.param_dtype, inference_random_seed=self.inference_random_seed,
            block_sparse_dropout=self.block_sparse_dropout, scan_layers=self.scan_layers,
            remat_policy=self.remat_policy, name="bert")(**inputs)

    def lm_head(self) -> BertPreTrainingHeads:
        return BertPreTrainingHeads(self.config, False, self.dtype, self.param_dtype, name="cls")

    def classifier_activation(self) -> str:
        return self.config.hidden_act


class BigBirdForPreTraining(_Head):
    """Masked-LM logits and next-sentence logits; loss = MLM (+ NSP when both labels are given)."""

    @nn.compact
    def __call__(self, input_ids=None, attention_mask=None, token_type_ids=None, position_ids=None,
                 inputs_embeds=None, labels=None, next_sentence_label=None, output_attentions=False,
                 output_hidden_states=False, deterministic=True) -> out.BigBirdForPreTrainingOutput:
        o = self.encode(input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids,
                        position_ids=position_ids, inputs_embeds=inputs_embeds,
                        output_attentions=output_attentions, output_hidden_states=output_hidden_states,
                        deterministic=deterministic)
        logits, seq_relationship = BertPreTrainingHeads(self.config, True, self.dtype, self.param_dtype,
                                                        name="cls")(
            o.last_hidden_state, self.shared_embedding(), o.pooler_output)
        loss = None
        if labels is not None:
            loss = losses.cross_entropy(logits, jnp.asarray(labels))
            if next_sentence_label is not None:
                loss = loss + losses.cross_entropy(seq_relationship, jnp.asarray(next_sentence_label))
        return out.BigBirdForPreTrainingOutput(loss=loss, prediction_logits=logits,
                                               seq_relationship_logits=seq_relationship,
                                               hidden_states=o.hidden_states, attentions=o.attentions)


class BigBirdForMaskedLM(_Head, MaskedLMHead):
    @nn.compact
    def __call__(self, input_ids=None, attention_mask=None, token_type_ids=None, position_ids=None,
                 inputs_embeds=None, encoder_hidden_states=None, encoder_attention_mask=None, labels=None,
                 output_attentions=False, output_hidden_states=False, deterministic=True) -> out.MaskedLMOutput:
        return self.forward(**call_inputs(locals()))


class BigBirdForCausalLM(_Head, CausalLMHead):
    """Left-to-right LM (full causal attention, as HF); fixed-size KV cache for decoding."""

    @nn.compact
    def __call__(self, input_ids=None, attention_mask=None, token_type_ids=None, position_ids=None,
                 inputs_embeds=None, encoder_hidden_states=None, encoder_attention_mask=None,
                 past_key_values=None, labels=None, use_cache=None, output_attentions=False,
                 output_hidden_states=False, deterministic=True) -> out.CausalLMOutputWithCrossAttentions:
        return self.forward(**call_inputs(locals()))


class BigBirdForSequenceClassification(_Head, SequenceClassificationHead):
    """First token -> dense -> hidden_act -> out_proj; regression / single- / multi-label loss."""

    @nn.compact
    def __call__(self, input_ids=None, attention_mask=None, token_type_ids=None, position_ids=None,
                 inputs_embeds=None, labels=None, output_attentions=False, output_hidden_states=False,
                 deterministic=True) -> out.SequenceClassifierOutput:
        return self.forward(**call_inputs(locals()))


class BigBirdForTokenClassification(_Head, TokenClassificationHead):
    @nn.compact
    def __call__(self, input_ids=None, attention_mask=None, token_type_ids=None, position_ids=None,
                 inputs_embeds=None, labels=None, output_attentions=False, output_hidden_states=False,
                 deterministic=True) -> out.TokenClassifierOutput:
        return self.forward(**call_inputs(locals()))


class BigBirdForMultipleChoice(_Head, MultipleChoiceHead):
    """Inputs ``[B, num_choices, L]``; logits ``[B, num_choices]`` from the pooled output."""

    @nn.compact
    def __call__(self, input_ids=None, attention_mask=None, token_type_ids=None, position_ids=None,
                 inputs_embeds=None, labels=None, output_attentions=False, output_hidden_states=False,
                 deterministic=True) -> out.MultipleChoiceModelOutput:
        return self.forward(**call_inputs(locals()))


class BigBirdQuestionAnsweringHead(nn.Module):
    """dropout -> intermediate -> output (residual + LayerNorm) -> qa_outputs (2 logits)."""

    config: BigBirdConfig
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, encoder_output: Array, deterministic: bool = True) -> Array:
        cfg = self.config
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        x = Dropout(cfg.hidden_dropout_prob)(encoder_output, deterministic=deterministic)
        x = BertIntermediate(cfg, name="intermediate", **kw)(x)
        x = BertResidualOutput(cfg, in_axis="mlp", name="output", **kw)(x, encoder_output, deterministic)
        return Dense(2, ("embed", "classes"), std=cfg.initializer_range, name="qa_outputs", **kw)(x)


class BigBirdForQuestionAnswering(_Head):
    """Span logits; the question (up to the first ``sep_token_id``, or ``question_lengths``)
    is masked out of the logits (-1e6) and gets token type 0, the context 1, as HF."""

    @nn.compact
    def __call__(self, input_ids=None, attention_mask=None, question_lengths=None, token_type_ids=None,
                 position_ids=None, inputs_embeds=None, start_positions=None, end_positions=None,
                 output_attentions=False, output_hidden_states=False,
                 deterministic=True) -> out.BigBirdForQuestionAnsweringModelOutput:
        cfg = self.config
        ref = input_ids if input_ids is not None else inputs_embeds
        length = jnp.shape(ref)[1]
        if question_lengths is None and input_ids is not None:
            question_lengths = jnp.argmax(jnp.asarray(input_ids) == cfg.sep_token_id, axis=-1) + 1
        logits_mask = None
        if question_lengths is not None:
            question_lengths = jnp.asarray(question_lengths).reshape(-1, 1)
            in_question = (jnp.arange(length)[None] < question_lengths).astype(jnp.int32)  # [B, L]
            if token_type_ids is None:
                token_type_ids = 1 - in_question
            logits_mask = in_question.at[:, 0].set(0)[..., None]
        o = self.encode(
            add_pooling_layer=False, input_ids=input_ids, attention_mask=attention_mask,
            token_type_ids=token_type_ids, position_ids=position_ids, inputs_embeds=inputs_embeds,
            output_attentions=output_attentions, output_hidden_states=output_hidden_states,
            deterministic=deterministic)
        logits = BigBirdQuestionAnsweringHead(cfg, self.dtype, self.param_dtype, name="qa_classifier")(
            o.last_hidden_state, deterministic)
        if logits_mask is not None:
            logits = logits - logits_mask.astype(logits.dtype) * 1e6
        start_logits, end_logits, loss = span_logits(logits, start_positions, end_positions)
        return out.BigBirdForQuestionAnsweringModelOutput(
            loss=loss, start_logits=start_logits, end_logits=end_logits, pooler_output=o.pooler_output,
            hidden_states=o.hidden_states, attentions=o.attentions)


ARCHITECTURES = {
    cls.__name__: cls
    for cls in (
        BigBirdModel, BigBirdForPreTraining, BigBirdForMaskedLM, BigBirdForCausalLM,
        BigBirdForSequenceClassification, BigBirdForTokenClassification, BigBirdForMultipleChoice,
        BigBirdForQuestionAnswering,
    )
}
