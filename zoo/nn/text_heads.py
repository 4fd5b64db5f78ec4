"""Task heads shared by the BERT-like text families (BigBird, Data2VecText).

A family subclasses :class:`TextHead` once: its fields (``config``, ``attention_fn``,
``dtype``, ... the module options of its bare model), ``body_class`` (the bare model) and
``body()``, which builds that model with keyword arguments under HF's attribute name
(``bert``, ``data2vec_text``) and calls it with the keyword inputs it is given. Each head
below mixes in with that base and implements ``forward(**inputs)``; the family's head
class only declares HF's ``__call__`` signature (input names and their order differ per
family, e.g. ``head_mask``) and returns ``self.forward(**call_inputs(locals()))``.

What the families do differently stays with them: the LM head module (``lm_head()``:
BigBird's ``cls/predictions``, Data2VecText's ``lm_head``), the classifier activation,
whether the bare model has its pooler by default, BigBird's pre-training and
question-answering heads.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from zoo import outputs as out
from zoo.nn import losses
from zoo.nn.bert import BertClassificationHead, BertHead, flatten_choices, init_cache
from zoo.nn.dropout import Dropout
from zoo.nn.inputs import check_ids
from zoo.nn.kv_cache import KVCache
from zoo.nn.module import PretrainedModule

Array = jax.Array


def call_inputs(frame_locals: dict) -> dict:
    """The keyword inputs of a head's ``__call__`` (its ``locals()`` without ``self``)."""
    return {k: v for k, v in frame_locals.items() if k not in ("self", "__class__")}


class TextHead(BertHead, PretrainedModule):
    """Base of a family's text heads: ``body()`` and the family's differences."""

    # Class attributes, not fields: the family's bare model class, and whether the body has
    # its pooler unless a head says otherwise.
    body_class = None
    pooling_by_default = False

    def body(self, *, add_pooling_layer: bool, **inputs):
        """The family's bare model (built with keywords, named as HF's attribute), called with
        ``inputs`` as keywords."""
        raise NotImplementedError

    def encode(self, add_pooling_layer: bool | None = None, **inputs):
        return self.body(add_pooling_layer=self.pooling_by_default if add_pooling_layer is None
                         else add_pooling_layer, **inputs)

    def lm_head(self) -> nn.Module:
        """The masked / causal LM head: ``(sequence_output, tied_embedding or None) -> logits``."""
        raise NotImplementedError

    def classifier_activation(self) -> str:
        """Activation between the classification head's ``dense`` and ``out_proj``."""
        return "tanh"

    @classmethod
    def dummy_inputs(cls, config) -> dict:
        """Smallest inputs that create every parameter of the head."""
        return {"input_ids": cls.body_class.dummy_inputs(config)["input_ids"]}


class MaskedLMHead(TextHead):
    """Vocabulary logits ``[B, L, vocab]``; cross entropy over the ``labels`` (-100 ignored)."""

    @classmethod
    def dummy_inputs(cls, config) -> dict:
        return cls.body_class.dummy_inputs(config)

    def forward(self, *, labels=None, **inputs) -> out.MaskedLMOutput:
        o = self.encode(use_cache=False, **inputs)
        logits = self.lm_head()(o.last_hidden_state, self.shared_embedding())
        labels = check_ids("labels", labels, shape=logits.shape[:2])
        loss = None if labels is None else losses.cross_entropy(logits, labels)
        return out.MaskedLMOutput(loss=loss, logits=logits, hidden_states=o.hidden_states,
                                  attentions=o.attentions)


class CausalLMHead(TextHead):
    """Left-to-right LM; shifted cross entropy over ``labels``; fixed-size KV cache for decoding
    (``past_key_values=model.init_cache(batch, max_length)``)."""

    @classmethod
    def dummy_inputs(cls, config) -> dict:
        return cls.body_class.dummy_inputs(config)

    def init_cache(self, batch_size: int, max_length: int, dtype=None) -> KVCache:
        """Empty fixed-size cache for ``max_length`` positions."""
        return init_cache(self.config, batch_size, max_length, dtype or self.dtype)

    def forward(self, *, labels=None, use_cache=None, **inputs) -> out.CausalLMOutputWithCrossAttentions:
        if labels is not None:
            use_cache = False
        o = self.encode(use_cache=use_cache, **inputs)
        logits = self.lm_head()(o.last_hidden_state, self.shared_embedding())
        labels = check_ids("labels", labels, shape=logits.shape[:2])
        loss = None if labels is None else losses.causal_lm_loss(logits, labels)
        return out.CausalLMOutputWithCrossAttentions(
            loss=loss, logits=logits, past_key_values=o.past_key_values, hidden_states=o.hidden_states,
            attentions=o.attentions, cross_attentions=o.cross_attentions)


class SequenceClassificationHead(TextHead):
    """First token -> dense -> activation -> out_proj; regression / single- / multi-label loss."""

    def forward(self, *, labels=None, deterministic=True, **inputs) -> out.SequenceClassifierOutput:
        cfg = self.config
        o = self.encode(deterministic=deterministic, **inputs)
        logits = BertClassificationHead(cfg, self.classifier_dropout, self.classifier_activation(), self.dtype,
                                        self.param_dtype, name="classifier")(o.last_hidden_state, deterministic)
        loss = None
        if labels is not None:
            loss = losses.sequence_classification_loss(logits, jnp.asarray(labels), cfg.num_labels,
                                                       cfg.problem_type)
        return out.SequenceClassifierOutput(loss=loss, logits=logits, hidden_states=o.hidden_states,
                                            attentions=o.attentions)


class TokenClassificationHead(TextHead):
    """Per-token logits ``[B, L, num_labels]``: dropout, ``classifier``."""

    def forward(self, *, labels=None, deterministic=True, **inputs) -> out.TokenClassifierOutput:
        cfg = self.config
        o = self.encode(deterministic=deterministic, **inputs)
        x = Dropout(self.classifier_dropout)(o.last_hidden_state, deterministic=deterministic)
        logits = self.dense(cfg.num_labels, ("embed", "classes"), "classifier")(x)
        loss = None
        if labels is not None:
            labels = check_ids("labels", labels, shape=logits.shape[:2])
            loss = losses.cross_entropy(logits.reshape(-1, cfg.num_labels), labels.reshape(-1))
        return out.TokenClassifierOutput(loss=loss, logits=logits, hidden_states=o.hidden_states,
                                         attentions=o.attentions)


class MultipleChoiceHead(TextHead):
    """Inputs ``[B, num_choices, L]``; logits ``[B, num_choices]`` from the pooled output."""

    @classmethod
    def dummy_inputs(cls, config) -> dict:
        return {"input_ids": cls.body_class.dummy_inputs(config)["input_ids"][:, None]}

    def forward(self, *, input_ids=None, attention_mask=None, token_type_ids=None, position_ids=None,
                inputs_embeds=None, labels=None, deterministic=True, **inputs) -> out.MultipleChoiceModelOutput:
        cfg = self.config
        num_choices, flat = flatten_choices(input_ids, attention_mask, token_type_ids, position_ids, inputs_embeds)
        o = self.encode(add_pooling_layer=True, deterministic=deterministic,
                        **dict(zip(("input_ids", "attention_mask", "token_type_ids", "position_ids",
                                    "inputs_embeds"), flat)), **inputs)
        x = Dropout(cfg.hidden_dropout_prob)(o.pooler_output, deterministic=deterministic)
        logits = self.dense(1, ("embed", "classes"), "classifier")(x).reshape(-1, num_choices)
        labels = check_ids("labels", labels, "[batch]", shape=logits.shape[:1])
        loss = None if labels is None else losses.cross_entropy(logits, labels)
        return out.MultipleChoiceModelOutput(loss=loss, logits=logits, hidden_states=o.hidden_states,
                                             attentions=o.attentions)


def span_logits(logits: Array, start_positions=None, end_positions=None):
    """``[..., 2]`` span logits -> ``(start_logits, end_logits, loss or None)`` (HF's span loss,
    positions clamped to the length and ignored there)."""
    start_logits, end_logits = logits[..., 0], logits[..., 1]
    loss = None
    if start_positions is not None and end_positions is not None:
        loss = losses.span_loss(start_logits, end_logits, jnp.asarray(start_positions), jnp.asarray(end_positions))
    return start_logits, end_logits, loss


class QuestionAnsweringHead(TextHead):
    """Span logits from ``qa_outputs`` over the last hidden state."""

    def forward(self, *, start_positions=None, end_positions=None, **inputs) -> out.QuestionAnsweringModelOutput:
        o = self.encode(**inputs)
        logits = self.dense(self.config.num_labels, ("embed", "classes"), "qa_outputs")(o.last_hidden_state)
        start_logits, end_logits, loss = span_logits(logits, start_positions, end_positions)
        return out.QuestionAnsweringModelOutput(loss=loss, start_logits=start_logits, end_logits=end_logits,
                                                hidden_states=o.hidden_states, attentions=o.attentions)


__all__ = ["CausalLMHead", "MaskedLMHead", "MultipleChoiceHead", "QuestionAnsweringHead",
           "SequenceClassificationHead", "TextHead", "TokenClassificationHead", "call_inputs", "span_logits"]
