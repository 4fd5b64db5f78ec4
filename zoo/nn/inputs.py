"""Checks of model inputs, shared by every family.

Trace-time checks (``check_*``) look only at static shapes and dtypes, in Python, while
a model traces: they add nothing to the compiled function. Each raises one
``ValueError`` line naming the argument, what it got (shape and dtype) and what was
expected. Values (token ids below ``vocab_size``, 0/1 masks, finite audio) cannot be
seen at trace time: :func:`check_inputs` checks them on the host (numpy), before a call.

Inside ``jax.jit`` an out-of-range id raises nothing; it reads what JAX's gather gives:
in Data2VecText, BigBird and GroupViT an id >= ``vocab_size`` gives a NaN embedding row
(``jnp.take``'s default ``"fill"`` mode) and a negative id counts from the end of the
table (NumPy indexing); IDEFICS' decoupled embedding clamps ids into its tables.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

Array = jax.Array


def describe(x) -> str:
    """``"shape (2, 5) dtype int32"`` of an array (or a traced value)."""
    return f"shape {tuple(np.shape(x))} dtype {x.dtype if hasattr(x, 'dtype') else np.asarray(x).dtype}"


def _rank(layout: str) -> int:
    return len([p for p in layout.strip("[]").split(",") if p.strip()])


def _is_int(x) -> bool:
    return jnp.issubdtype(x.dtype, jnp.integer)


def _as_array(x):
    return jnp.asarray(x)  # a no-op on arrays and tracers


def check_ids(name: str, x, layout: str = "[batch, length]", *, shape: tuple | None = None) -> Array | None:
    """Integer array of ``layout``'s rank (and ``shape`` when given); None passes."""
    if x is None:
        return None
    x = _as_array(x)
    if x.ndim != _rank(layout) or not _is_int(x):
        raise ValueError(f"{name} must be an integer array of rank {_rank(layout)} {layout}, got {describe(x)}")
    if shape is not None:
        check_shape(name, x, shape, layout)
    return x


def check_mask(name: str, x, shape: tuple, layout: str = "[batch, length]") -> Array | None:
    """A 1/0 mask (integer, bool or float, as HF takes) of exactly ``shape``; None passes."""
    if x is None:
        return None
    x = _as_array(x)
    if not (_is_int(x) or x.dtype == jnp.bool_ or jnp.issubdtype(x.dtype, jnp.floating)):
        raise ValueError(f"{name} must be a 1/0 {layout} array, got {describe(x)}")
    check_shape(name, x, shape, layout)
    return x


def check_shape(name: str, x, shape: tuple, layout: str) -> None:
    """``x.shape == shape`` (``None`` entries match anything), else one line naming both."""
    got = tuple(np.shape(x))
    if len(got) != len(shape) or any(w is not None and g != w for g, w in zip(got, shape)):
        want = "(" + ", ".join("?" if w is None else str(w) for w in shape) + ("," if len(shape) == 1 else "") + ")"
        raise ValueError(f"{name} must have shape {want} {layout}, got {describe(x)}")


def check_float(name: str, x, layout: str, *, last_dim: int | None = None, hint: str = "") -> Array:
    """Floating-point array of ``layout``'s rank (last axis ``last_dim`` when given); ``hint``
    joins the message when the dtype is the problem."""
    if x is None:
        raise ValueError(f"{name} is required ({layout}, a float array)")
    x = _as_array(x)
    floating = jnp.issubdtype(x.dtype, jnp.floating)
    if x.ndim != _rank(layout) or not floating or (last_dim is not None and x.shape[-1] != last_dim):
        raise ValueError(f"{name} must be {layout}, a float array{'' if floating else hint}, got {describe(x)}")
    return x


def check_length(name: str, length: int, limit: int, what: str) -> None:
    """A sequence of ``length`` positions fits a table of ``limit`` (``what`` says which)."""
    if length > limit:
        raise ValueError(f"{name} has {length} positions, more than the {limit} of the position table ({what})")


def text_input_name(input_ids, cache=None) -> str:
    """What a length error names: the ids, the embeddings, or the KV cache that sets the length."""
    if cache is not None:
        return "past_key_values (its max_length)"
    return "input_ids" if input_ids is not None else "inputs_embeds"


def check_images(x, num_channels: int, *, name: str = "pixel_values", image_size: tuple[int, int] | None = None,
                 interpolate: bool = False) -> Array:
    """Float channels-first ``[batch, num_channels, height, width]`` images; with
    ``image_size`` and not ``interpolate``, exactly that ``(height, width)``."""
    if x is None:
        raise ValueError(f"{name} is required (a float [batch, channels={num_channels}, height, width] array)")
    x = _as_array(x)
    layout = f"[batch, channels={num_channels}, height, width]"
    if x.ndim != 4:
        raise ValueError(f"{name} must be a float [batch, channels, height, width] array (channels first, "
                         f"num_channels={num_channels}), got {describe(x)}")
    if x.shape[1] != num_channels:
        hint = " (this looks channels-last: transpose to [B, C, H, W])" if x.shape[-1] == num_channels else ""
        raise ValueError(f"{name} must be channels-first {layout} (the config has num_channels={num_channels}), "
                         f"got {describe(x)}{hint}")
    if not jnp.issubdtype(x.dtype, jnp.floating):
        raise ValueError(f"{name} must be floating point (normalized images) {layout}, got {describe(x)}")
    if image_size is not None and not interpolate and tuple(x.shape[2:]) != tuple(image_size):
        raise ValueError(f"{name} must be {image_size[0]}x{image_size[1]} px (the config's image_size; "
                         f"pass interpolate_pos_encoding=True for other sizes), got {describe(x)}")
    return x


def check_text(config: Any, input_ids, token_type_ids, position_ids, inputs_embeds, *,
               hidden_size: int | None = None):
    """Checked ``(input_ids, token_type_ids, position_ids, inputs_embeds, batch, length)``:
    exactly one of integer ids ``[B, L]`` / float embeddings ``[B, L, hidden]``; token types
    and positions integer ``[B, L]`` (positions may be ``[1, L]``)."""
    if (input_ids is None) == (inputs_embeds is None):
        raise ValueError("pass exactly one of input_ids or inputs_embeds")
    hidden = config.hidden_size if hidden_size is None else hidden_size
    input_ids = check_ids("input_ids", input_ids)
    if inputs_embeds is not None:
        inputs_embeds = check_float("inputs_embeds", inputs_embeds, f"[batch, length, {hidden}]", last_dim=hidden)
    batch, length = (input_ids if input_ids is not None else inputs_embeds).shape[:2]
    token_type_ids = check_ids("token_type_ids", token_type_ids, shape=(batch, length))
    position_ids = check_ids("position_ids", position_ids)
    if position_ids is not None and (position_ids.shape[1] != length or position_ids.shape[0] not in (1, batch)):
        raise ValueError(f"position_ids must have shape {(batch, length)} [batch, length] (or (1, {length})), "
                         f"got {describe(position_ids)}")
    return input_ids, token_type_ids, position_ids, inputs_embeds, batch, length


def min_audio_samples(conv_kernel, conv_stride, frames: int = 1) -> int:
    """Fewest samples that give ``frames`` frames of a conv feature encoder."""
    length = frames
    for k, s in reversed(list(zip(conv_kernel, conv_stride))):
        length = (length - 1) * s + k
    return length


def check_audio(config: Any, input_values, attention_mask=None) -> tuple[Array, Array | None]:
    """Float waveforms ``[batch, samples]`` long enough for one frame (SEW-D: for
    ``squeeze_factor`` frames), and an optional mask of the same shape."""
    x = check_float("input_values", input_values, "[batch, samples]",
                    hint=" (integer PCM: convert to float, e.g. int16 / 32768, as the feature extractor does)")
    frames = int(getattr(config, "squeeze_factor", 1) or 1)
    need = min_audio_samples(config.conv_kernel, config.conv_stride, frames)
    if x.shape[1] < need:
        raise ValueError(f"input_values has {x.shape[1]} samples, fewer than the {need} the feature encoder "
                         f"needs for {frames} frame{'s' if frames > 1 else ''}, got {describe(x)}")
    return x, check_mask("attention_mask", attention_mask, x.shape, "[batch, samples] (as input_values)")


# --------------------------------------------------------------------- host-side values
def _host(name: str, x) -> np.ndarray:
    if isinstance(x, jax.core.Tracer):
        raise TypeError(f"check_inputs checks concrete values on the host; {name} is traced (call it outside jit)")
    return np.asarray(x)


def _range(name: str, x: np.ndarray, low: int, high: int, what: str, ignore: tuple = ()) -> None:
    vals = x[~np.isin(x, ignore)] if ignore else x
    if vals.size and (vals.min() < low or vals.max() >= high):
        raise ValueError(f"{name} must be in [{low}, {high}) ({what}), got values {vals.min()}..{vals.max()}")


def _config_of(config_or_model) -> Any:
    return getattr(config_or_model, "config", config_or_model)


def _text_config(cfg: Any, inputs: dict) -> Any:
    """The config that holds the text vocabulary (GroupViT: ``config.text``)."""
    return cfg.text if hasattr(cfg, "text") and "input_ids" in inputs else cfg


_ARRAYS = ("input_ids", "attention_mask", "token_type_ids", "position_ids", "input_values", "pixel_values",
           "image_attention_mask", "bool_masked_pos", "mask_time_indices", "labels")


def _check_label_values(architecture: str, cfg: Any, labels: np.ndarray, arrays: dict) -> None:
    """Integer labels of a head (known from the model): vocabulary ids or class indices, -100 ignored."""
    if architecture.endswith(("MaskedLM", "CausalLM", "VisionText2Text", "ForCTC", "ForPreTraining")):
        vocab = cfg.vocab_size + int(getattr(cfg, "additional_vocab_size", 0) or 0)
        _range("labels", labels, 0, vocab, f"token ids, vocab_size={vocab}; -100 is ignored", ignore=(-100,))
    elif architecture.endswith(("TokenClassification", "SequenceClassification", "FrameClassification",
                                "ImageClassification", "SemanticSegmentation")) and getattr(cfg, "num_labels", 0) > 1:
        ignore = (-100, getattr(cfg, "semantic_loss_ignore_index", -100))
        _range("labels", labels, 0, cfg.num_labels, f"class indices, num_labels={cfg.num_labels}", ignore=ignore)


def check_inputs(config_or_model, **inputs) -> None:
    """Check the *values* of model inputs on the host (numpy), before a call.

    ``check_inputs(config_or_model, input_ids=..., attention_mask=..., ...)`` raises one
    ``ValueError`` line naming the first bad argument: token ids outside
    ``[0, vocab_size)`` (IDEFICS: ``vocab_size + additional_vocab_size``), masks other
    than 0/1, ``token_type_ids`` >= ``type_vocab_size``, ``position_ids`` outside the
    position table, non-finite ``input_values`` / ``pixel_values``, and (given a model,
    whose head says what they are) integer ``labels`` outside the vocabulary or the
    ``num_labels`` classes (-100 ignored); plus the shape and
    dtype checks the model makes when it traces (rank, dtype class, matching shapes,
    channels-first images). Inside ``jax.jit`` none of the value errors can raise: an
    out-of-range id reads what JAX's gather gives (NaN rows, clamped or wrapped ids; see
    the module docstring).
    """
    cfg = _config_of(config_or_model)
    arrays = {k: _host(k, v) for k, v in inputs.items() if k in _ARRAYS and v is not None}
    ids = arrays.get("input_ids")
    if ids is not None:
        text = _text_config(cfg, arrays)
        layout = "[batch, length]" if ids.ndim == 2 else "[batch, num_choices, length]"
        check_ids("input_ids", ids, layout)
        vocab = text.vocab_size + int(getattr(text, "additional_vocab_size", 0) or 0)
        _range("input_ids", ids, 0, vocab, f"vocab_size={vocab}")
        for key in ("token_type_ids", "position_ids"):
            if key in arrays:
                check_ids(key, arrays[key], layout, shape=ids.shape if key == "token_type_ids" else None)
        if "token_type_ids" in arrays and getattr(text, "type_vocab_size", None):
            _range("token_type_ids", arrays["token_type_ids"], 0, text.type_vocab_size,
                   f"type_vocab_size={text.type_vocab_size}")
        if "position_ids" in arrays and getattr(text, "max_position_embeddings", None) and not hasattr(
                text, "rope_parameters"):  # rotary positions (IDEFICS) have no table
            _range("position_ids", arrays["position_ids"], 0, text.max_position_embeddings,
                   f"max_position_embeddings={text.max_position_embeddings}")
    if "input_values" in arrays:
        check_audio(cfg, arrays["input_values"])
        x = arrays["input_values"]
        if not np.isfinite(x).all():
            raise ValueError(f"input_values holds {int((~np.isfinite(x)).sum())} non-finite samples (NaN or inf)")
    if "pixel_values" in arrays:
        x = arrays["pixel_values"]
        vision = getattr(cfg, "vision", None) or cfg
        if x.ndim == 5:  # IDEFICS: [batch, num_images, C, H, W]
            x = x.reshape(-1, *x.shape[2:])
        check_images(x, vision.num_channels)
        if not np.isfinite(x).all():
            raise ValueError(f"pixel_values holds {int((~np.isfinite(x)).sum())} non-finite values (NaN or inf)")
    labels = arrays.get("labels")
    if labels is not None and np.issubdtype(labels.dtype, np.integer) and cfg is not config_or_model:
        _check_label_values(type(config_or_model).__name__, cfg, labels, arrays)
    for key in ("attention_mask", "image_attention_mask", "bool_masked_pos", "mask_time_indices"):
        if key in arrays:
            m = arrays[key]
            if key == "attention_mask":
                ref = ids if ids is not None else arrays.get("input_values")
                if ref is not None and "past_key_values" not in inputs:
                    check_mask(key, m, ref.shape, "[batch, length] (as the inputs)")
            if not np.isin(m, (0, 1)).all():
                raise ValueError(f"{key} must hold only 0 and 1, got values {np.unique(m)[:6].tolist()}")


__all__ = ["check_audio", "check_float", "check_ids", "check_images", "check_inputs", "check_length", "check_mask",
           "check_shape", "check_text", "describe", "min_audio_samples", "text_input_name"]
