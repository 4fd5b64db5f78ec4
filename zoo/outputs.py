"""Model outputs: pytrees (usable from ``jax.jit``) with Hugging Face's field names."""

from __future__ import annotations

import dataclasses
from typing import Any

import flax.struct

Array = Any


class ModelOutput:
    """Attribute and ``out["field"]`` access; ``to_tuple()`` drops ``None`` fields like HF."""

    def __getitem__(self, name: str):
        if not isinstance(name, str):
            return self.to_tuple()[name]
        return getattr(self, name)

    def keys(self) -> list[str]:
        return [f.name for f in dataclasses.fields(self) if getattr(self, f.name) is not None]

    def to_tuple(self) -> tuple:
        return tuple(getattr(self, k) for k in self.keys())


@flax.struct.dataclass
class BaseModelOutputWithPoolingAndCrossAttentions(ModelOutput):
    last_hidden_state: Array = None
    pooler_output: Array = None
    past_key_values: Any = None
    hidden_states: tuple | None = None
    attentions: tuple | None = None
    cross_attentions: tuple | None = None


@flax.struct.dataclass
class MaskedLMOutput(ModelOutput):
    loss: Array = None
    logits: Array = None
    hidden_states: tuple | None = None
    attentions: tuple | None = None


@flax.struct.dataclass
class CausalLMOutputWithCrossAttentions(ModelOutput):
    loss: Array = None
    logits: Array = None
    past_key_values: Any = None
    hidden_states: tuple | None = None
    attentions: tuple | None = None
    cross_attentions: tuple | None = None


@flax.struct.dataclass
class SequenceClassifierOutput(ModelOutput):
    loss: Array = None
    logits: Array = None
    hidden_states: tuple | None = None
    attentions: tuple | None = None


@flax.struct.dataclass
class TokenClassifierOutput(ModelOutput):
    loss: Array = None
    logits: Array = None
    hidden_states: tuple | None = None
    attentions: tuple | None = None


@flax.struct.dataclass
class MultipleChoiceModelOutput(ModelOutput):
    loss: Array = None
    logits: Array = None
    hidden_states: tuple | None = None
    attentions: tuple | None = None


@flax.struct.dataclass
class QuestionAnsweringModelOutput(ModelOutput):
    loss: Array = None
    start_logits: Array = None
    end_logits: Array = None
    hidden_states: tuple | None = None
    attentions: tuple | None = None


@flax.struct.dataclass
class Wav2Vec2BaseModelOutput(ModelOutput):
    last_hidden_state: Array = None
    extract_features: Array = None
    hidden_states: tuple | None = None
    attentions: tuple | None = None


@flax.struct.dataclass
class CausalLMOutput(ModelOutput):
    loss: Array = None
    logits: Array = None
    hidden_states: tuple | None = None
    attentions: tuple | None = None


@flax.struct.dataclass
class XVectorOutput(ModelOutput):
    loss: Array = None
    logits: Array = None
    embeddings: Array = None
    hidden_states: tuple | None = None
    attentions: tuple | None = None


@flax.struct.dataclass
class BigBirdForPreTrainingOutput(ModelOutput):
    loss: Array = None
    prediction_logits: Array = None
    seq_relationship_logits: Array = None
    hidden_states: tuple | None = None
    attentions: tuple | None = None


@flax.struct.dataclass
class BigBirdForQuestionAnsweringModelOutput(ModelOutput):
    loss: Array = None
    start_logits: Array = None
    end_logits: Array = None
    pooler_output: Array = None
    hidden_states: tuple | None = None
    attentions: tuple | None = None


@flax.struct.dataclass
class BaseModelOutputWithPooling(ModelOutput):
    last_hidden_state: Array = None
    pooler_output: Array = None
    hidden_states: tuple | None = None
    attentions: tuple | None = None


@flax.struct.dataclass
class ImageClassifierOutput(ModelOutput):
    loss: Array = None
    logits: Array = None
    hidden_states: tuple | None = None
    attentions: tuple | None = None


@flax.struct.dataclass
class SemanticSegmenterOutput(ModelOutput):
    """``logits``: ``[B, num_labels, H/4, W/4]`` (channels first, as HF)."""

    loss: Array = None
    logits: Array = None
    hidden_states: tuple | None = None
    attentions: tuple | None = None


@flax.struct.dataclass
class GroupViTModelOutput(ModelOutput):
    loss: Array = None
    logits_per_image: Array = None
    logits_per_text: Array = None
    segmentation_logits: Array = None
    text_embeds: Array = None
    image_embeds: Array = None
    text_model_output: Any = None
    vision_model_output: Any = None


@flax.struct.dataclass
class IdeficsBaseModelOutputWithPast(ModelOutput):
    last_hidden_state: Array = None
    past_key_values: Any = None
    hidden_states: tuple | None = None
    attentions: tuple | None = None
    image_hidden_states: Array = None


@flax.struct.dataclass
class IdeficsCausalLMOutputWithPast(ModelOutput):
    loss: Array = None
    logits: Array = None
    past_key_values: Any = None
    hidden_states: tuple | None = None
    attentions: tuple | None = None
    image_hidden_states: Array = None
