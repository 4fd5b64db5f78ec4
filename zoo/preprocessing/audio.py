"""Raw-waveform feature extractor, equivalent to HF's ``Wav2Vec2FeatureExtractor``.

Used by Data2Vec-audio and SEW-D (their ``preprocessor_config.json`` names
``Wav2Vec2FeatureExtractor``). numpy + stdlib only.

    fe = AudioFeatureExtractor.from_pretrained("path/to/checkpoint")
    batch = fe([wave_a, wave_b], sampling_rate=16000)
    batch["input_values"]    # float32 [B, T]
    batch["attention_mask"]  # int32 [B, T] (when return_attention_mask)

Semantics follow HF exactly (truncate -> pad -> normalize):

* Truncation to ``max_length`` (rounded up to ``pad_to_multiple_of``) when
  ``truncation=True``; padding with ``padding_value`` to the longest utterance
  (``padding=True``/``"longest"``) or to ``max_length`` (``"max_length"``), rounded up
  to ``pad_to_multiple_of``.
* ``do_normalize``: per utterance ``(x - mean) / sqrt(var + 1e-7)`` in float32. When an
  attention mask is returned and padding was requested, the statistics cover only the
  real samples and padded positions are reset to ``padding_value`` afterwards. Without
  an attention mask (``return_attention_mask=False``) HF normalizes the *padded* row,
  padding included, and so does this class (models with group-norm feature encoders were
  trained that way).

Deliberate differences from HF (all on inputs where HF returns something unusable):
``padding`` defaults to ``True`` (HF: ``False``, which gives ragged object arrays for
unequal lengths; the two agree whenever HF's result is rectangular); with
``padding_side="left"`` and an attention mask the statistics cover the real (right-hand)
samples (HF takes the first ``length`` samples, i.e. the padding, and then zeroes the
speech); inputs are cast to float32 before anything else (HF keeps integer inputs as
integers and normalizes them in float64); empty utterances, ragged outputs and
multi-channel arrays raise ``ValueError``.
"""

from __future__ import annotations

import dataclasses
import os
import warnings
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from zoo.preprocessing.config_file import (
    read_preprocessor_config,
    reject_unknown_keys,
    write_preprocessor_config,
)

FEATURE_EXTRACTOR_TYPE = "Wav2Vec2FeatureExtractor"

# preprocessor_config.json keys that never change the computation.
_NEUTRAL_KEYS = frozenset({"feature_extractor_type", "processor_class", "_processor_class", "transformers_version"})
# A 2-D array whose last axis is at most this long (and shorter than the first) is taken
# for multi-channel audio [T, C] rather than a batch [B, T].
_MAX_CHANNELS = 8
_PADDING_CHOICES = ("longest", "max_length", "do_not_pad")


def _is_int(value: Any) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_))


def _is_real(value: Any) -> bool:
    return isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, (bool, np.bool_))


@dataclasses.dataclass(frozen=True)
class AudioFeatureExtractor:
    """Zero-mean unit-variance normalization, padding and truncation of raw mono waveforms.

    Fields mirror ``preprocessor_config.json``. ``return_attention_mask`` defaults to
    ``False`` like HF's ``Wav2Vec2FeatureExtractor`` (Data2Vec-audio configs set it to
    ``true``).
    """

    feature_size: int = 1
    sampling_rate: int = 16000
    padding_value: float = 0.0
    do_normalize: bool = True
    return_attention_mask: bool = False
    padding_side: str = "right"

    def __post_init__(self):
        if not _is_int(self.feature_size) or self.feature_size != 1:
            raise ValueError(
                f"feature_size={self.feature_size!r} is not supported: AudioFeatureExtractor handles raw mono "
                "waveforms only (feature_size=1)."
            )
        if not _is_int(self.sampling_rate) or self.sampling_rate <= 0:
            raise ValueError(f"sampling_rate must be a positive integer (Hz), got {self.sampling_rate!r}.")
        if not _is_real(self.padding_value) or not np.isfinite(self.padding_value):
            raise ValueError(f"padding_value must be a finite number, got {self.padding_value!r}.")
        for name in ("do_normalize", "return_attention_mask"):
            if not isinstance(getattr(self, name), (bool, np.bool_)):
                raise ValueError(f"{name} must be a bool, got {getattr(self, name)!r}.")
        if self.padding_side not in ("right", "left"):
            raise ValueError(f"padding_side must be 'right' or 'left', got {self.padding_side!r}.")

    # ------------------------------------------------------------------ config IO
    @classmethod
    def from_dict(cls, config: Mapping[str, Any]) -> "AudioFeatureExtractor":
        """Build from a ``preprocessor_config.json`` dict.

        Keys that do not change the computation (``processor_class``, ...) are ignored;
        any other unknown key or an unsupported value raises ``ValueError`` naming it.
        """
        if not isinstance(config, Mapping):
            raise TypeError(f"expected a dict (preprocessor_config.json), got {type(config).__name__}")
        config = dict(config)
        fe_type = config.get("feature_extractor_type", FEATURE_EXTRACTOR_TYPE)
        if fe_type != FEATURE_EXTRACTOR_TYPE:
            raise ValueError(
                f"feature_extractor_type={fe_type!r} is not supported: AudioFeatureExtractor implements "
                f"{FEATURE_EXTRACTOR_TYPE!r} only."
            )
        fields = {f.name for f in dataclasses.fields(cls)}
        reject_unknown_keys(config, fields, _NEUTRAL_KEYS, "AudioFeatureExtractor", FEATURE_EXTRACTOR_TYPE)
        return cls(**{k: v for k, v in config.items() if k in fields})

    @classmethod
    def from_pretrained(cls, path: str | os.PathLike) -> "AudioFeatureExtractor":
        """Read ``<path>/preprocessor_config.json`` (``path`` may also be the JSON file)."""
        return cls.from_dict(read_preprocessor_config(path))

    def to_dict(self) -> dict[str, Any]:
        """The ``preprocessor_config.json`` dict (HF layout, with ``feature_extractor_type``)."""
        out = dataclasses.asdict(self)
        out["feature_extractor_type"] = FEATURE_EXTRACTOR_TYPE
        return dict(sorted(out.items()))

    def save_pretrained(self, directory: str | os.PathLike) -> str:
        """Write ``<directory>/preprocessor_config.json`` atomically; returns its path."""
        return write_preprocessor_config(directory, self.to_dict())

    # ------------------------------------------------------------------ call
    def __call__(
        self,
        raw_speech,
        sampling_rate: int | None = None,
        padding: bool | str = True,
        max_length: int | None = None,
        truncation: bool = False,
        pad_to_multiple_of: int | None = None,
        return_attention_mask: bool | None = None,
    ) -> dict[str, np.ndarray]:
        """Featurize one waveform ``[T]`` or a batch (list of ``[T_i]``, or array ``[B, T]``).

        Returns ``{"input_values": float32 [B, T], "attention_mask": int32 [B, T]}``
        (``attention_mask`` only when ``return_attention_mask`` -- argument, else the
        field -- is true; 1 = real sample, 0 = padding).
        """
        if sampling_rate is not None:
            if sampling_rate != self.sampling_rate:
                raise ValueError(
                    f"The audio was sampled at {sampling_rate} Hz but this feature extractor (and its model) expects "
                    f"{self.sampling_rate} Hz. Resample the audio to {self.sampling_rate} Hz first."
                )
        else:
            warnings.warn(
                "It is strongly recommended to pass the `sampling_rate` argument to AudioFeatureExtractor(); "
                f"it expects {self.sampling_rate} Hz audio and cannot check it otherwise.",
                UserWarning,
                stacklevel=2,
            )
        strategy = _padding_strategy(padding, max_length)
        for name, value in (("max_length", max_length), ("pad_to_multiple_of", pad_to_multiple_of)):
            if value is not None and (not _is_int(value) or value <= 0):
                raise ValueError(f"{name} must be a positive integer, got {value!r}.")
        if truncation and max_length is None:
            raise ValueError("truncation=True needs max_length.")
        return_attention_mask = self.return_attention_mask if return_attention_mask is None else return_attention_mask

        batch = _as_batch(raw_speech)

        # 1. truncation (HF rounds max_length up to pad_to_multiple_of first).
        if truncation:
            limit = _round_up(max_length, pad_to_multiple_of)
            batch = [x[:limit] for x in batch]
        lengths = [len(x) for x in batch]

        # 2. padding.
        if strategy == "longest":
            target = _round_up(max(lengths), pad_to_multiple_of)
        elif strategy == "max_length":
            target = _round_up(max_length, pad_to_multiple_of)
        else:
            target = None
        if target is not None:
            too_long = [i for i, n in enumerate(lengths) if n > target]
            if too_long:
                i = too_long[0]
                raise ValueError(
                    f"utterance {i} has {lengths[i]} samples, more than the padding length {target}; "
                    "pass truncation=True to cut it (or a larger max_length)."
                )
        else:
            target = max(lengths)
            if min(lengths) != target:
                raise ValueError(
                    f"padding={padding!r} with utterances of different lengths ({min(lengths)} to {target} samples) "
                    "cannot form a [B, T] batch; "
                    "use padding=True."
                )
        values = np.full((len(batch), target), np.float32(self.padding_value), dtype=np.float32)
        mask = np.zeros((len(batch), target), dtype=np.int32)
        for i, x in enumerate(batch):
            sl = slice(0, len(x)) if self.padding_side == "right" else slice(target - len(x), target)
            values[i, sl] = x
            mask[i, sl] = 1

        # 3. normalization (statistics over the real samples only when a mask is used).
        if self.do_normalize:
            use_mask = return_attention_mask and strategy != "do_not_pad"
            for i, n in enumerate(lengths):
                row = values[i]
                real = (row[:n] if self.padding_side == "right" else row[target - n:]) if use_mask else row
                normed = (row - real.mean()) / np.sqrt(real.var() + 1e-7)
                if use_mask and n < target:
                    if self.padding_side == "right":
                        normed[n:] = self.padding_value
                    else:
                        normed[: target - n] = self.padding_value
                values[i] = normed

        out = {"input_values": values}
        if return_attention_mask:
            out["attention_mask"] = mask
        return out

    def __repr__(self) -> str:  # short: it appears in error messages
        return (
            f"AudioFeatureExtractor(sampling_rate={self.sampling_rate}, do_normalize={self.do_normalize}, "
            f"return_attention_mask={self.return_attention_mask}, padding_value={self.padding_value}, "
            f"padding_side={self.padding_side!r})"
        )


# ---------------------------------------------------------------------- helpers
def _round_up(n: int, multiple: int | None) -> int:
    if multiple is not None and n % multiple != 0:
        return (n // multiple + 1) * multiple
    return n


def _padding_strategy(padding, max_length) -> str:
    padding = getattr(padding, "value", padding)  # accepts HF's PaddingStrategy enum too
    if padding is True:
        strategy = "longest"
    elif padding is False or padding is None:
        strategy = "do_not_pad"
    elif isinstance(padding, str) and padding in _PADDING_CHOICES:
        strategy = padding
    else:
        raise ValueError(f"padding must be True, False, 'longest', 'max_length' or 'do_not_pad', got {padding!r}.")
    if strategy == "max_length" and max_length is None:
        raise ValueError("padding='max_length' needs max_length.")
    return strategy


def _as_utterance(x, where: str) -> np.ndarray:
    try:
        arr = np.asarray(x)
    except (ValueError, TypeError) as e:
        raise ValueError(f"{where} is not a 1-D sequence of numbers: {e}") from None
    if arr.ndim == 2:
        raise ValueError(
            f"{where} has shape {arr.shape}: multi-channel audio is not supported, the model takes mono "
            "waveforms [T]. Mix down first (zoo.preprocessing.to_mono)."
        )
    if arr.ndim != 1:
        raise ValueError(f"{where} must be a 1-D waveform [T], got shape {arr.shape}.")
    if not (np.issubdtype(arr.dtype, np.floating) or np.issubdtype(arr.dtype, np.integer)):
        raise ValueError(f"{where} must hold real numbers, got dtype {arr.dtype}.")
    if arr.shape[0] == 0:
        raise ValueError(f"{where} is empty (0 samples).")
    return arr.astype(np.float32, copy=False)


def _as_batch(raw_speech) -> list[np.ndarray]:
    """Normalize the accepted input forms to a list of float32 [T_i] arrays."""
    if isinstance(raw_speech, (list, tuple)):
        if len(raw_speech) == 0:
            raise ValueError("raw_speech is empty: pass a waveform [T] or a non-empty list of waveforms.")
        if np.ndim(raw_speech[0]) > 0:  # a list of waveforms
            return [_as_utterance(x, f"utterance {i}") for i, x in enumerate(raw_speech)]
        return [_as_utterance(raw_speech, "raw_speech")]
    if isinstance(raw_speech, (str, bytes, Mapping)) or not (
        isinstance(raw_speech, np.ndarray) or hasattr(raw_speech, "__array__") or isinstance(raw_speech, Sequence)
    ):
        raise TypeError(
            f"raw_speech must be a waveform (1-D array or list of floats) or a list of them, "
            f"got {type(raw_speech).__name__}."
        )
    arr = np.asarray(raw_speech)
    if arr.ndim == 1:
        return [_as_utterance(arr, "raw_speech")]
    if arr.ndim == 2:
        if arr.shape[1] <= _MAX_CHANNELS and arr.shape[0] > arr.shape[1]:
            raise ValueError(
                f"raw_speech has shape {arr.shape}, which looks like multi-channel audio [T, C]; the model takes "
                "mono waveforms. Mix down first (zoo.preprocessing.to_mono). A batch must be [B, T] or a list "
                "of 1-D waveforms."
            )
        return [_as_utterance(row, f"utterance {i}") for i, row in enumerate(arr)]
    raise ValueError(f"raw_speech must be [T] or a batch [B, T], got shape {arr.shape} (only mono audio is supported).")
