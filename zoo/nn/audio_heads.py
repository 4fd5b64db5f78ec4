"""Task heads shared by the wav2vec2-style audio families (Data2VecAudio, SEW-D).

A family subclasses :class:`AudioHead` once, defining ``body()`` (its bare model, named as
HF's attribute, e.g. ``data2vec_audio``), and mixes that base with the heads below.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from zoo import outputs as out
from zoo.nn import audio, losses
from zoo.nn.dropout import Dropout
from zoo.nn.inputs import check_ids
from zoo.nn.layers import Dense
from zoo.nn.module import PretrainedModule

Array = jax.Array


class AudioHead(PretrainedModule):
    config: Any
    freeze_feature_encoder: bool = False
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32

    def body(self, **inputs):
        """The family's bare model, built with keywords, called with ``inputs`` as keywords; its output (``last_hidden_state``, ``hidden_states``, ``attentions``)."""
        raise NotImplementedError

    def dense(self, features: int, axes, name: str) -> nn.Dense:
        return Dense(features, axes, std=self.config.initializer_range, dtype=self.dtype,
                     param_dtype=self.param_dtype, name=name)

    def features(self, o) -> Array:
        """``use_weighted_layer_sum``: softmax-weighted sum of all hidden states, else the last."""
        if not self.config.use_weighted_layer_sum:
            return o.last_hidden_state
        return audio.weighted_layer_sum(self, self.config, o.hidden_states)

    def reject_adapter(self, head: str) -> None:
        if getattr(self.config, "add_adapter", False):
            raise ValueError(f"{head} does not support the adapter (config.add_adapter=True), as in HF")


class CTCHead(AudioHead):
    """Frame logits ``[B, F, vocab_size]``; CTC loss from ``labels [B, U]`` (-100 / pad ignored)."""

    @nn.compact
    def __call__(self, input_values, attention_mask=None, labels=None, mask_time_indices=None,
                 output_attentions=False, output_hidden_states=False, deterministic=True) -> out.CausalLMOutput:
        cfg = self.config
        if cfg.vocab_size is None:
            raise ValueError(f"{type(self).__name__} needs config.vocab_size (the size of the CTC vocabulary)")
        o = self.body(input_values=input_values, attention_mask=attention_mask, mask_time_indices=mask_time_indices,
                      output_attentions=output_attentions, output_hidden_states=output_hidden_states,
                      deterministic=deterministic)
        x = Dropout(cfg.final_dropout)(o.last_hidden_state, deterministic=deterministic)
        logits = self.dense(cfg.vocab_size, ("embed", "vocab"), "lm_head")(x)
        loss = None
        if labels is not None:
            labels = check_ids("labels", labels, "[batch, target_length]", shape=(logits.shape[0], None))
            loss = audio.ctc_head_loss(cfg, logits, labels, input_values, attention_mask)
        return out.CausalLMOutput(loss=loss, logits=logits, hidden_states=o.hidden_states, attentions=o.attentions)


class SequenceClassificationHead(AudioHead):
    """Utterance logits ``[B, num_labels]``: projector, mean over unpadded frames, classifier.

    With a weighted layer sum HF's frame mask spans the hidden states' length (SEW-D: the
    squeezed one); reproduced as is.
    """

    @nn.compact
    def __call__(self, input_values, attention_mask=None, labels=None, output_attentions=False,
                 output_hidden_states=False, deterministic=True) -> out.SequenceClassifierOutput:
        cfg = self.config
        self.reject_adapter("Sequence classification")
        o = self.body(input_values=input_values, attention_mask=attention_mask, output_attentions=output_attentions,
                      output_hidden_states=output_hidden_states or cfg.use_weighted_layer_sum,
                      deterministic=deterministic)
        x = self.dense(cfg.classifier_proj_size, ("embed", "mlp"), "projector")(self.features(o))
        pooled = audio.masked_frame_mean(cfg, x, attention_mask)
        logits = self.dense(cfg.num_labels, ("mlp", "classes"), "classifier")(pooled)
        loss = None
        if labels is not None:
            loss = losses.cross_entropy(logits.reshape(-1, cfg.num_labels), jnp.asarray(labels).reshape(-1))
        return out.SequenceClassifierOutput(loss=loss, logits=logits,
                                            hidden_states=o.hidden_states if output_hidden_states else None,
                                            attentions=o.attentions)
