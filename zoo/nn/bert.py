"""The post-LayerNorm BERT/RoBERTa encoder shared by the text families.

Submodule names mirror HF's PyTorch paths
(``encoder/layer_3/attention/self/query`` <-> ``encoder.layer.3.attention.self.query``).
The config is duck-typed: any family config with the BERT field names works
(``hidden_size``, ``num_attention_heads``, ``intermediate_size``, ``hidden_act``,
``hidden_dropout_prob``, ``attention_probs_dropout_prob``, ``layer_norm_eps``,
``initializer_range``, ``is_decoder``, ``add_cross_attention``,
``position_embedding_type``, ``max_position_embeddings``; optionally ``use_bias`` for the
query/key/value projections).

Kernels that draw random numbers (BigBird's block-sparse attention) declare an
``rng_stream`` attribute; the self-attention then passes them ``rng`` (a key of that
stream in training, ``None`` when deterministic) and ``layer`` (the layer index: the
encoder's, a scanned input under ``scan_layers``, else the ``N`` of ``layer_N``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from zoo.attention.block_sparse import layer_index
from zoo.attention.dense import dot_product_attention
from zoo.nn import kv_cache, masks, scan
from zoo.nn.attention_projection import QKVProjection
from zoo.nn.dropout import Dropout
from zoo.nn.inputs import check_mask, check_text
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
        layer: int | Array | None = None,
        deterministic: bool = True,
        output_attentions: bool = False,
    ):
        cfg = self.config
        heads = cfg.num_attention_heads
        head_dim = cfg.hidden_size // heads
        query, key, value = QKVProjection(heads, head_dim, use_bias=getattr(cfg, "use_bias", True),
                                          std=cfg.initializer_range, dtype=self.dtype,
                                          param_dtype=self.param_dtype)(hidden_states, key_value_states)

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
        kernel_kwargs = {}
        rng_stream = getattr(self.attention_fn, "rng_stream", None)
        if rng_stream is not None:
            if not deterministic and not self.has_rng(rng_stream):
                raise ValueError(f"training mode (deterministic=False) with {type(self.attention_fn).__name__} "
                                 f"attention needs an rng for its random blocks: "
                                 f"apply(..., rngs={{'dropout': key1, '{rng_stream}': key2}})")
            kernel_kwargs = dict(rng=None if deterministic else self.make_rng(rng_stream),
                                 layer=layer_index(self.scope.path) if layer is None else layer)
        out, probs = self.attention_fn(
            query, key, value,
            mask=mask, bias=bias, head_mask=head_mask, scale=scale,
            dropout_rate=cfg.attention_probs_dropout_prob, dropout_rng=dropout_rng,
            deterministic=deterministic, return_probs=output_attentions, **kernel_kwargs,
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
        x = Dropout(rate)(x, deterministic=deterministic)
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
        layer: int | Array | None = None,
        deterministic: bool = True,
        output_attentions: bool = False,
    ):
        cfg = self.config
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        x, self_probs, new_cache = BertAttention(cfg, False, self.attention_fn, name="attention", **kw)(
            hidden_states, mask, query_positions=query_positions, head_mask=head_mask,
            cache=cache, cache_index=cache_index, layer=layer, deterministic=deterministic,
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
    """``num_hidden_layers`` BertLayers; collects hidden states, attentions and cache.

    scan_layers: run the layers as one ``nn.scan`` with parameters stacked under
    ``layers/`` (leading layer axis) instead of ``layer_0/`` ... (see :mod:`zoo.nn.scan`);
    outputs are the same. remat_policy: ``"full"``, ``"dots"``,
    ``"dots_with_no_batch_dims"`` or None (see :data:`zoo.nn.scan.REMAT_POLICIES`).
    A kernel with an ``rng_stream`` (BigBird's random blocks) gets one key of that stream
    per layer and the layer index as a scanned input, so both layouts draw the same blocks.
    """

    config: Any
    attention_fn: Callable = dot_product_attention
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32
    scan_layers: bool = False
    remat_policy: str | None = None

    layer_names = ("layer_{i}", "layers")  # per-layer, stacked

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
        rng_stream = getattr(self.attention_fn, "rng_stream", None)

        def step(layer, x, per_layer, mask, encoder_hidden_states, encoder_mask, query_positions, cache_index):
            layer_head_mask, layer_cache, index = per_layer
            x, probs, cross, new_cache = layer(
                x, mask,
                encoder_hidden_states=encoder_hidden_states, encoder_mask=encoder_mask,
                query_positions=query_positions, head_mask=layer_head_mask,
                cache=layer_cache, cache_index=cache_index, layer=index,
                deterministic=deterministic, output_attentions=output_attentions,
            )
            return x, (x if output_hidden_states else None, probs, cross, new_cache)

        per_layer = [(None if head_mask is None else head_mask[i],
                      None if cache is None else (cache.keys[i], cache.values[i]),
                      None if rng_stream is None else i)
                     for i in range(cfg.num_hidden_layers)]
        rng = scan.layer_rngs(self, deterministic, ("dropout", rng_stream))
        last, ys = scan.run_layers(
            lambda name: BertLayer(cfg, self.attention_fn, dtype=self.dtype, param_dtype=self.param_dtype,
                                   name=name),
            step, hidden_states, per_layer,
            (mask, encoder_hidden_states, encoder_mask, query_positions, None if cache is None else cache.length),
            num_layers=cfg.num_hidden_layers, scan_layers=self.scan_layers, remat_policy=self.remat_policy,
            rng=rng, name=self.layer_names[0], stacked_name=self.layer_names[1],
        )
        hidden, attentions, cross_attentions, new_caches = (tuple(y) for y in zip(*ys)) if ys else ((),) * 4
        new_cache = None
        if cache is not None:
            new_cache = kv_cache.KVCache(tuple(k for k, _ in new_caches), tuple(v for _, v in new_caches),
                                         cache.length + hidden_states.shape[1])
        has_cross = encoder_hidden_states is not None and cfg.add_cross_attention
        return dict(
            last_hidden_state=last,
            hidden_states=(hidden_states, *hidden) if output_hidden_states else None,
            attentions=attentions if output_attentions else None,
            cross_attentions=cross_attentions if (output_attentions and has_cross) else None,
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


class BertPredictionHeadTransform(nn.Module):
    """dense -> hidden_act -> LayerNorm (HF's ``BertPredictionHeadTransform``)."""

    config: Any
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, hidden_states: Array) -> Array:
        cfg = self.config
        x = Dense(cfg.hidden_size, ("embed", "embed_out"), std=cfg.initializer_range,
                  dtype=self.dtype, param_dtype=self.param_dtype, name="dense")(hidden_states)
        x = activation(cfg.hidden_act)(x)
        return LayerNorm(cfg.layer_norm_eps, dtype=self.dtype, param_dtype=self.param_dtype,
                         name="LayerNorm")(x)


class BertLMPredictionHead(nn.Module):
    """``transform`` -> ``decoder`` (tied to the word embeddings when given) + ``bias``."""

    config: Any
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, hidden_states: Array, shared_embedding: Array | None) -> Array:
        cfg = self.config
        x = BertPredictionHeadTransform(cfg, self.dtype, self.param_dtype, name="transform")(hidden_states)
        return vocab_logits(self, x, shared_embedding)


def vocab_logits(module: nn.Module, x: Array, shared_embedding: Array | None) -> Array:
    """``decoder`` (the tied word embeddings when given, else a Dense) + ``bias``, created in
    ``module`` (call from its compact method): HF's LM-head output layer."""
    cfg = module.config
    if shared_embedding is not None:
        logits = x @ shared_embedding.astype(module.dtype).T
    else:
        logits = Dense(cfg.vocab_size, ("embed", "vocab"), std=cfg.initializer_range, use_bias=False,
                       dtype=module.dtype, param_dtype=module.param_dtype, name="decoder")(x)
    bias = module.param("bias", nn.with_logical_partitioning(nn.initializers.zeros_init(), ("vocab",)),
                        (cfg.vocab_size,), module.param_dtype)
    return logits + bias.astype(module.dtype)


def embedding_tables(module: nn.Module, input_ids: Array | None, inputs_embeds: Array | None):
    """Create ``word_embeddings``, ``position_embeddings``, ``token_type_embeddings`` in
    ``module`` (call from its compact method); returns the word embeddings of ``input_ids``
    (or ``inputs_embeds`` as given) and the position and token-type tables."""
    cfg = module.config
    kw = dict(std=cfg.initializer_range, dtype=module.dtype, param_dtype=module.param_dtype)
    word = Embed(cfg.vocab_size, cfg.hidden_size, ("vocab", "embed"), name="word_embeddings", **kw)
    position = Embed(cfg.max_position_embeddings, cfg.hidden_size, (None, "embed"),
                     name="position_embeddings", **kw)
    token_type = Embed(cfg.type_vocab_size, cfg.hidden_size, (None, "embed"), name="token_type_embeddings", **kw)
    if inputs_embeds is None:
        inputs_embeds = word(input_ids)
    else:
        word(jnp.zeros((1, 1), jnp.int32))  # keep the table in the parameter tree
    return inputs_embeds, position, token_type


def init_cache(config: Any, batch_size: int, max_length: int, dtype=jnp.float32) -> kv_cache.KVCache:
    """Empty fixed-size KV cache of a BERT stack for ``max_length`` positions."""
    return kv_cache.KVCache.create(config.num_hidden_layers, batch_size, max_length, config.num_attention_heads,
                                   config.hidden_size // config.num_attention_heads, dtype)


def text_inputs(config: Any, input_ids, token_type_ids, position_ids, inputs_embeds):
    """Checked ``(input_ids, token_type_ids, position_ids, inputs_embeds, batch, length)``
    (:func:`zoo.nn.inputs.check_text`)."""
    return check_text(config, input_ids, token_type_ids, position_ids, inputs_embeds)


def flatten_choices(input_ids, attention_mask, token_type_ids, position_ids, inputs_embeds):
    """Multiple-choice inputs ``[B, C, L]`` -> ``(C, [B*C, L] inputs in the same order)``."""
    ref = input_ids if input_ids is not None else inputs_embeds
    if ref is None or jnp.ndim(ref) < 3:
        raise ValueError("multiple choice inputs must be [batch, num_choices, length], "
                         f"got shape {None if ref is None else jnp.shape(ref)}")
    flat = lambda x: None if x is None else jnp.reshape(x, (-1, jnp.shape(x)[-1]))
    embeds = None if inputs_embeds is None else jnp.reshape(inputs_embeds, (-1, *jnp.shape(inputs_embeds)[-2:]))
    return jnp.shape(ref)[1], (flat(input_ids), flat(attention_mask), flat(token_type_ids), flat(position_ids),
                               embeds)


class BertHead:
    """Helpers of the task-head modules of a BERT-like family (a mixin for ``nn.Module``s
    with ``config``, ``dtype``, ``param_dtype``); ``base_name`` names the encoder submodule."""

    base_name: str = "bert"

    def dense(self, features: int, axes, name: str) -> nn.Dense:
        return Dense(features, axes, std=self.config.initializer_range, dtype=self.dtype,
                     param_dtype=self.param_dtype, name=name)

    @property
    def classifier_dropout(self) -> float:
        cfg = self.config
        return cfg.classifier_dropout if cfg.classifier_dropout is not None else cfg.hidden_dropout_prob

    def shared_embedding(self) -> Array | None:
        """The word embeddings when the LM head is tied to them (after ``base()`` ran)."""
        if not self.config.tie_word_embeddings:
            return None
        return nn.unbox(self.variables["params"][self.base_name]["embeddings"]["word_embeddings"])["embedding"]


def self_attention_setup(config: Any, attention_mask: Array | None, batch: int, length: int,
                         past_key_values: kv_cache.KVCache | None, use_cache: bool | None,
                         cache_dtype=jnp.float32):
    """Cache, past length, query positions and the ``[B, 1, Lq, Lk]`` mask of a BERT stack.

    Decoders (``config.is_decoder``) get a causal mask and, with ``use_cache``, a fresh
    fixed-size cache of ``length`` positions unless ``past_key_values`` is given; then
    ``attention_mask`` spans the cache's ``max_length``.
    """
    use_cache = config.use_cache if use_cache is None else use_cache
    if past_key_values is not None and not config.is_decoder:
        raise ValueError("past_key_values needs a decoder: set is_decoder=True in the config")
    cache = past_key_values
    if config.is_decoder and use_cache and cache is None:
        cache = init_cache(config, batch, length, cache_dtype)
    past_length = 0 if cache is None else cache.length
    query_positions = jnp.arange(length) + past_length
    key_length = length if cache is None else cache.max_length
    attention_mask = check_mask("attention_mask", attention_mask, (batch, key_length),
                                "[batch, cache max_length]" if cache is not None else "[batch, length]")
    mask = masks.padding_mask(attention_mask, length)
    if config.is_decoder:
        mask = masks.combine(mask, masks.causal_mask(query_positions, key_length))
    return cache, past_length, query_positions, mask


def cross_attention_inputs(encoder_hidden_states, encoder_attention_mask, length: int):
    """``(encoder_hidden_states, [B, 1, Lq, Lenc] mask or None)`` as arrays."""
    if encoder_hidden_states is None:
        return None, None
    mask = None
    if encoder_attention_mask is not None:
        mask = masks.padding_mask(jnp.asarray(encoder_attention_mask), length)
    return jnp.asarray(encoder_hidden_states), mask


class BertClassificationHead(nn.Module):
    """First token -> dropout -> dense -> ``act`` -> dropout -> out_proj (RoBERTa-style heads)."""

    config: Any
    dropout: float
    act: str = "tanh"
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, hidden_states: Array, deterministic: bool = True) -> Array:
        cfg = self.config
        kw = dict(std=cfg.initializer_range, dtype=self.dtype, param_dtype=self.param_dtype)
        x = Dropout(self.dropout)(hidden_states[:, 0], deterministic=deterministic)
        x = activation(self.act)(Dense(cfg.hidden_size, ("embed", "embed_out"), name="dense", **kw)(x))
        x = Dropout(self.dropout)(x, deterministic=deterministic)
        return Dense(cfg.num_labels, ("embed_out", "classes"), name="out_proj", **kw)(x)


class BertPreTrainingHeads(nn.Module):
    """``predictions`` (masked-LM logits) and, with ``next_sentence``, ``seq_relationship``."""

    config: Any
    next_sentence: bool = False
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, sequence_output: Array, shared_embedding: Array | None,
                 pooled_output: Array | None = None):
        cfg = self.config
        logits = BertLMPredictionHead(cfg, self.dtype, self.param_dtype, name="predictions")(
            sequence_output, shared_embedding)
        if not self.next_sentence:
            return logits
        seq_relationship = Dense(2, ("embed", "classes"), std=cfg.initializer_range, dtype=self.dtype,
                                 param_dtype=self.param_dtype, name="seq_relationship")(pooled_output)
        return logits, seq_relationship
