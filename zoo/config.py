"""Base of the per-family config dataclasses, built from an HF ``config.json`` dict.

Every field of the HF config is accepted: fields the family declares become typed
attributes, everything else is kept in ``extra`` (so ``to_dict`` writes the same
``config.json`` back). A value the zoo does not implement raises
:class:`UnsupportedConfigError` naming the field.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar


class UnsupportedConfigError(ValueError):
    """A config value the zoo does not implement (the message names the field)."""


# Fields of HF's PreTrainedConfig that only steer PyTorch/transformers machinery and
# do not change the computation. They are accepted and kept, never interpreted.
_NEUTRAL_FIELDS = frozenset(
    {
        "transformers_version", "_name_or_path", "dtype", "torch_dtype", "return_dict",
        "output_hidden_states", "output_attentions", "torchscript", "use_bfloat16",
        "chunk_size_feed_forward", "finetuning_task", "tokenizer_class", "prefix",
        "task_specific_params", "label2id", "_attn_implementation", "initializer_range",
        "sep_token_id", "decoder_start_token_id", "tf_legacy_loss", "gradient_checkpointing",
    }
)


def config_dataclass(cls):
    """``@dataclass(frozen=True)`` keeping ZooConfig's JSON-based hash (dict fields)."""
    cls = dataclasses.dataclass(frozen=True)(cls)
    cls.__hash__ = ZooConfig.__hash__
    return cls


@dataclasses.dataclass(frozen=True)
class ZooConfig:
    """Fields shared by every family. Subclasses add the family's HF fields."""

    model_type: ClassVar[str] = ""

    architectures: tuple[str, ...] | None = None
    id2label: Mapping[int, str] | None = None
    num_labels: int = 2
    problem_type: str | None = None
    pad_token_id: int | None = None
    bos_token_id: int | None = None
    eos_token_id: int | tuple[int, ...] | None = None
    extra: Mapping[str, Any] = dataclasses.field(default_factory=dict)

    # ------------------------------------------------------------------ building
    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "ZooConfig":
        """Build from an HF ``config.json`` dict; raises on unimplemented values."""
        data = dict(data)
        model_type = data.pop("model_type", cls.model_type)
        if model_type != cls.model_type:
            raise UnsupportedConfigError(
                f"config.json has model_type={model_type!r}, expected {cls.model_type!r} "
                f"for {cls.__name__}"
            )
        known = {f.name for f in dataclasses.fields(cls)} - {"extra"}
        kwargs = {k: v for k, v in data.items() if k in known}
        extra = {k: v for k, v in data.items() if k not in known}
        if kwargs.get("id2label") is not None:
            kwargs["id2label"] = {int(k): v for k, v in kwargs["id2label"].items()}
            kwargs.setdefault("num_labels", len(kwargs["id2label"]))
        for name, value in kwargs.items():  # lists -> tuples: configs stay hashable
            if isinstance(value, list):
                kwargs[name] = tuple(value)
        config = cls(**kwargs, extra=extra)
        config.validate()
        return config

    @classmethod
    def from_json_file(cls, path) -> "ZooConfig":
        with open(path, encoding="utf-8") as f:
            return cls.from_dict(json.load(f))

    def replace(self, **changes) -> "ZooConfig":
        config = dataclasses.replace(self, **changes)
        config.validate()
        return config

    # ---------------------------------------------------------------- validation
    def validate(self) -> None:
        """Raise :class:`UnsupportedConfigError` for values the zoo does not implement."""
        if self.extra.get("pruned_heads"):
            self._unsupported("pruned_heads", self.extra["pruned_heads"], "head pruning is not implemented")
        if self.extra.get("is_encoder_decoder"):
            self._unsupported("is_encoder_decoder", True, "encoder-decoder wrappers are not implemented")
        if self.problem_type not in (None, "regression", "single_label_classification",
                                     "multi_label_classification"):
            self._unsupported("problem_type", self.problem_type, "unknown problem type")
        if self.num_labels < 1:
            self._unsupported("num_labels", self.num_labels, "must be >= 1")

    def _unsupported(self, field: str, value: Any, why: str) -> None:
        raise UnsupportedConfigError(
            f"{self.model_type} config field {field}={value!r} is not supported: {why}"
        )

    def _require_heads_divide(self, field: str = "hidden_size") -> None:
        """``field`` (the attention width) must split evenly into ``num_attention_heads``."""
        if getattr(self, field) % self.num_attention_heads:
            self._unsupported(field, getattr(self, field),
                              f"not a multiple of num_attention_heads={self.num_attention_heads}")

    def _require_choice(self, field: str, allowed) -> None:
        value = getattr(self, field)
        if value not in allowed:
            self._unsupported(field, value, f"supported values are {sorted(allowed)}")

    # ------------------------------------------------------------------- export
    def to_dict(self) -> dict[str, Any]:
        """The HF ``config.json`` dict (extra fields included)."""
        out: dict[str, Any] = {"model_type": self.model_type}
        for f in dataclasses.fields(self):
            if f.name == "extra":
                continue
            value = getattr(self, f.name)
            if isinstance(value, tuple):
                value = list(value)
            if f.name == "id2label":
                if value is None:
                    continue
                value = {str(k): v for k, v in value.items()}
            out[f.name] = value
        out.update(self.extra)
        return out

    def to_json_string(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True) + "\n"

    def __hash__(self) -> int:  # Mapping fields are not hashable; hash the JSON form.
        return hash(self.to_json_string())


def as_pair(value: int | Sequence[int], name: str) -> tuple[int, int]:
    """An image or patch size from a config: ``224`` or ``[224, 224]`` -> ``(224, 224)``."""
    if isinstance(value, int) or hasattr(value, "__index__"):
        return int(value), int(value)
    value = tuple(int(v) for v in value)
    if len(value) != 2:
        raise ValueError(f"{name} must be an int or a (height, width) pair, got {value}")
    return value
