"""Base of the per-family config dataclasses, built from an HF ``config.json`` dict.

Every field of the HF config is accepted: fields the family declares become typed
attributes, everything else is kept in ``extra`` (so ``to_dict`` writes the same
``config.json`` back). A value the zoo does not implement raises
:class:`UnsupportedConfigError` naming the field; a value of the wrong type or outside
its range (a string ``hidden_size``, ``num_attention_heads=0``, ``2**62`` layers, a
dropout of 1.5) raises :class:`InvalidConfigError`, before anything is built.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import types
import typing
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar


class UnsupportedConfigError(ValueError):
    """A config value the zoo does not implement (the message names the field)."""


class InvalidConfigError(UnsupportedConfigError):
    """A config value of the wrong type or out of range (the message names the field)."""


# Range rules for the typed fields, applied to every integer (also inside tuples).
MAX_INT = 2**31 - 1  # sizes and ids are int32 in the compiled model
MAX_LAYERS = 1000  # the largest published model of these families has 80
_LAYER_COUNTS = frozenset({"num_hidden_layers", "resampler_depth", "num_adapter_layers", "depths",
                           "auxiliary_num_convs"})
_MAY_BE_NEGATIVE = frozenset({"max_relative_positions", "position_buckets", "semantic_loss_ignore_index",
                              "pad_token_id", "bos_token_id", "eos_token_id", "sep_token_id", "out_indices"})
_MAY_BE_ZERO = frozenset({"additional_vocab_size", "num_random_blocks", "num_group_tokens", "depths",
                          "mask_time_min_masks", "mask_feature_min_masks", "num_adapter_layers",
                          "auxiliary_num_convs", "conv_kernel_size"})
_PROBABILITY_SUFFIXES = ("dropout", "_prob", "layerdrop", "drop_path_rate")


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
        hints = _field_types(cls)
        kwargs = {k: v for k, v in data.items() if k in hints}
        extra = {k: v for k, v in data.items() if k not in hints and k != "extra"}
        if kwargs.get("id2label") is not None:
            kwargs["id2label"] = _label_map(cls, kwargs["id2label"])
            kwargs.setdefault("num_labels", len(kwargs["id2label"]))
        for name, value in kwargs.items():
            if isinstance(value, list):  # lists -> tuples: configs stay hashable
                kwargs[name] = value = tuple(value)
            if _accepts_float(hints[name]) and type(value) is int and abs(value) <= 2**1023:
                kwargs[name] = float(value)  # JSON's 1 for 1.0
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
        """Raise :class:`InvalidConfigError` for a field of the wrong type or range and
        :class:`UnsupportedConfigError` for values the zoo does not implement."""
        for name, hint in _field_types(type(self)).items():
            self._check_field(name, getattr(self, name), hint)
        if self.extra.get("pruned_heads"):
            self._unsupported("pruned_heads", self.extra["pruned_heads"], "head pruning is not implemented")
        if self.extra.get("is_encoder_decoder"):
            self._unsupported("is_encoder_decoder", True, "encoder-decoder wrappers are not implemented")
        if self.problem_type not in (None, "regression", "single_label_classification",
                                     "multi_label_classification"):
            self._unsupported("problem_type", self.problem_type, "unknown problem type")

    def _check_field(self, name: str, value: Any, hint) -> None:
        if not _conforms(value, hint):
            self._invalid(name, value, f"expected {_describe(hint)}, got {_kind(value)}")
        numbers = _numbers(value)
        if any(isinstance(v, float) and not math.isfinite(v) for v in numbers):
            self._invalid(name, value, "not a finite number")
        if name.endswith(_PROBABILITY_SUFFIXES) and any(not 0 <= v <= 1 for v in numbers):
            self._invalid(name, value, "a probability must lie in [0, 1]")
        if name.endswith("_eps") and any(v < 0 for v in numbers):
            self._invalid(name, value, "must not be negative")
        for v in (v for v in numbers if isinstance(v, int)):
            if abs(v) > MAX_INT:
                self._invalid(name, value, f"beyond the int32 range the compiled model uses (|value| <= {MAX_INT})")
            if v < 0 and name not in _MAY_BE_NEGATIVE:
                self._invalid(name, value, "must not be negative")
            if v == 0 and name not in _MAY_BE_ZERO | _MAY_BE_NEGATIVE and not name.endswith(
                    ("_token_id", "_index", "_init_value", "_initializer_range")):
                self._invalid(name, value, "must be at least 1")
        if name in _LAYER_COUNTS and sum(v for v in numbers if isinstance(v, int)) > MAX_LAYERS:
            self._invalid(name, value, f"more than {MAX_LAYERS} layers (a corrupt config.json?)")

    def _invalid(self, field: str, value: Any, why: str) -> None:
        raise InvalidConfigError(f"{self.model_type} config field {field}={_short(value)} is invalid: {why}")

    def _unsupported(self, field: str, value: Any, why: str) -> None:
        raise UnsupportedConfigError(
            f"{self.model_type} config field {field}={_short(value)} is not supported: {why}"
        )

    def _require_heads_divide(self, field: str = "hidden_size") -> None:
        """``field`` (the attention width) must split evenly into ``num_attention_heads``."""
        if getattr(self, field) % self.num_attention_heads:
            self._unsupported(field, getattr(self, field),
                              f"not a multiple of num_attention_heads={self.num_attention_heads}")

    def _require_padding_index(self) -> None:
        """``pad_token_id`` is the word embedding's ``padding_idx``: a row of the table (HF's rule)."""
        if not 0 <= self.pad_token_id < self.vocab_size:
            self._invalid("pad_token_id", self.pad_token_id,
                          f"the padding index must be a token id in [0, vocab_size={self.vocab_size})")

    def _require_choice(self, field: str, allowed) -> None:
        value = getattr(self, field)
        if value not in allowed:
            self._unsupported(field, value, f"choose one of {', '.join(map(str, sorted(allowed)))}")

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


@functools.cache
def _field_types(cls) -> dict[str, Any]:
    """The resolved annotation of each config field of ``cls`` (``extra`` excluded)."""
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls) if f.name != "extra"}


def _conforms(value: Any, hint) -> bool:
    """Whether ``value`` has the type ``hint`` describes (bools are not ints; ints are floats)."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if hint is Any:
        return True
    if hint is type(None):
        return value is None
    if origin in (typing.Union, types.UnionType):
        return any(_conforms(value, arg) for arg in args)
    if hint is bool:
        return isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if hint is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if hint is str:
        return isinstance(value, str)
    if origin is tuple:
        if not isinstance(value, tuple):
            return False
        if len(args) == 2 and args[1] is Ellipsis:
            return all(_conforms(v, args[0]) for v in value)
        return len(value) == len(args) and all(_conforms(v, a) for v, a in zip(value, args))
    if origin is Mapping or hint is Mapping:
        if not isinstance(value, Mapping):
            return False
        key, item = args or (Any, Any)
        return all(_conforms(k, key) and _conforms(v, item) for k, v in value.items())
    return isinstance(value, hint)


_PLURALS = {int: "integers", float: "numbers", str: "strings", bool: "booleans"}


def _describe(hint) -> str:
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_describe(a) for a in args)
    if hint is type(None):
        return "null"
    if origin is tuple:
        if len(args) == 2 and args[1] is Ellipsis:
            return f"a list of {_PLURALS.get(args[0], 'values')}"
        return f"a list of {len(args)} {_PLURALS.get(args[0], 'values')}"
    if origin is Mapping or hint is Mapping:
        return "an object"
    return {int: "an integer", float: "a number", bool: "true or false", str: "a string"}.get(hint, str(hint))


def _kind(value: Any) -> str:
    if isinstance(value, (tuple, list)):
        if not value:
            return "an empty list"
        kinds = {_PLURALS.get(type(v), "lists" if isinstance(v, (tuple, list)) else "objects") for v in value}
        return "a list of " + " and ".join(sorted(kinds))
    return {bool: "a boolean", int: "an integer", float: "a number", str: "a string",
            type(None): "null"}.get(type(value), "an object" if isinstance(value, Mapping) else type(value).__name__)


def _accepts_float(hint) -> bool:
    return hint is float or (typing.get_origin(hint) in (typing.Union, types.UnionType)
                             and float in typing.get_args(hint) and int not in typing.get_args(hint))


def _numbers(value: Any) -> list:
    """The ints and floats in a field's value (tuples flattened; bools, strings and maps skipped)."""
    if isinstance(value, tuple):
        return [n for v in value for n in _numbers(v)]
    return [value] if isinstance(value, (int, float)) and not isinstance(value, bool) else []


def _label_map(cls, id2label: Any) -> dict[int, str]:
    """``id2label`` with integer keys, as HF reads it."""
    def invalid(why):
        return InvalidConfigError(f"{cls.model_type} config field id2label={_short(id2label)} is invalid: {why}")

    if not isinstance(id2label, Mapping):
        raise invalid(f"expected an object mapping class ids to names, got {_kind(id2label)}")
    out = {}
    for key, label in id2label.items():
        try:
            out[int(key)] = label
        except (TypeError, ValueError):
            raise invalid(f"the key {_short(key)} is not a class id") from None
    return out


def _short(value: Any, limit: int = 40) -> str:
    """``repr`` cut to ``limit`` characters, tuples shown as the JSON lists they were read from."""
    def as_lists(v):
        if isinstance(v, (tuple, list)):
            return [as_lists(x) for x in v]
        return {k: as_lists(x) for k, x in v.items()} if isinstance(v, Mapping) else v

    text = repr(as_lists(value))
    return text if len(text) <= limit else text[: limit - 3] + "..."


def as_pair(value: int | Sequence[int], name: str) -> tuple[int, int]:
    """An image or patch size from a config: ``224`` or ``[224, 224]`` -> ``(224, 224)``."""
    if isinstance(value, int) or hasattr(value, "__index__"):
        return int(value), int(value)
    value = tuple(int(v) for v in value)
    if len(value) != 2:
        raise ValueError(f"{name} must be an int or a (height, width) pair, got {value}")
    return value
