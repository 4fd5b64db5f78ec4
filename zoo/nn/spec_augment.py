"""SpecAugment masks (time and feature spans), drawn with ``jax.random`` inside ``jit``.

Mirrors Hugging Face's numpy ``_compute_mask_indices`` and ``_mask_hidden_states``
(Wav2Vec2 / Data2VecAudio / SEW-D): the same distribution of masks, with static shapes.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np


def _check_mask_length(mask_length: int, sequence_length: int) -> None:
    if mask_length < 1:
        raise ValueError("`mask_length` has to be bigger than 0.")
    if mask_length > sequence_length:
        raise ValueError(
            f"`mask_length` has to be smaller than `sequence_length`, but got `mask_length`: {mask_length}"
            f" and `sequence_length`: {sequence_length}`"
        )


def _cap_num_spans(num, input_length, sequence_length: int, mask_length: int, min_masks: int, xp=jnp):
    """HF's caps on a span count; ``xp=np`` for static Python values, ``jnp`` for traced ones."""
    num = xp.maximum(num, min_masks)
    num = xp.where(num * mask_length > sequence_length, sequence_length // mask_length, num)
    room = input_length - (mask_length - 1)
    return xp.where(room < num, xp.maximum(room, 0), num)


def _static_max_spans(sequence_length: int, mask_prob: float, mask_length: int, min_masks: int) -> int:
    """Largest span count any epsilon in [0, 1) can give for a full-length row."""
    exact = mask_prob * sequence_length / mask_length
    raw = math.floor(exact) + (exact > math.floor(exact))
    return int(_cap_num_spans(raw, sequence_length, sequence_length, mask_length, min_masks, xp=np))


def _num_spans(epsilon, input_lengths, sequence_length: int, mask_prob: float, mask_length: int, min_masks: int):
    """``int(mask_prob * len / mask_length + epsilon)`` then HF's caps, per row; int32 ``[B]``.

    The float part is tabulated in float64 for every length 0..L at trace time, so the
    rounding matches HF's Python-float arithmetic (not float32's).
    """
    exact = mask_prob * np.arange(sequence_length + 1, dtype=np.float64) / mask_length
    floor = np.floor(exact)
    # int(x + eps) == floor(x) + 1 exactly when eps >= 1 - frac(x) (never when frac(x) == 0).
    threshold = np.where(exact > floor, 1.0 - (exact - floor), 2.0).astype(np.float32)
    floor_j = jnp.asarray(floor.astype(np.int32))[input_lengths]
    num = floor_j + (epsilon >= jnp.asarray(threshold)[input_lengths]).astype(jnp.int32)
    return _cap_num_spans(num, input_lengths, sequence_length, mask_length, min_masks)


def _sample_starts(keys, input_lengths, mask_length: int, max_spans: int):
    """``max_spans`` distinct span starts per row, uniformly ordered, valid ones first; ``[B, K]``.

    ``keys`` are uniform ``[B, L - mask_length + 1]``, one per possible start. Valid starts of a
    row are ``[0, input_length - mask_length]``; pushing invalid keys below every valid one makes
    ``top_k`` a uniform draw without replacement among the valid starts.
    """
    positions = jnp.arange(keys.shape[1])[None, :]
    valid = positions < (input_lengths - (mask_length - 1))[:, None]
    _, starts = jax.lax.top_k(jnp.where(valid, keys, -1.0), max_spans)
    return starts


def _spans_to_mask(starts, keep, sequence_length: int, mask_length: int):
    """Union of spans ``[start, start + mask_length)`` over kept starts ``[B, K]``; bool ``[B, L]``."""
    pos = jnp.arange(sequence_length)[None, None, :]
    starts = starts[:, :, None]
    covered = (pos >= starts) & (pos < starts + mask_length) & keep[:, :, None]
    return jnp.any(covered, axis=1)


def compute_mask_indices(
    rng: jax.Array,
    shape: tuple[int, int],
    mask_prob: float,
    mask_length: int,
    *,
    lengths: jax.Array | None = None,
    min_masks: int = 0,
) -> jax.Array:
    """Random SpecAugment spans, distributed as HF's ``_compute_mask_indices``; bool ``[B, L]``.

    Args:
        rng: PRNG key (traced).
        shape: static ``(batch_size, sequence_length)``.
        mask_prob, mask_length, min_masks: static, as in HF.
        lengths: int ``[B]`` unpadded lengths (HF's ``attention_mask.sum(-1)``), traced;
            ``None`` = every row full length.

    As HF: one ``epsilon ~ U[0, 1)`` shared by the batch rounds ``mask_prob * len / mask_length``;
    span starts are drawn without replacement from ``[0, len - mask_length]``; overlapping
    spans merge. HF quirk kept: a row that gets no span while some full-length row would
    (``len < L``) has its last frame ``L - 1`` (a padding frame) masked, from HF's dummy index.
    """
    batch_size, sequence_length = shape
    _check_mask_length(mask_length, sequence_length)
    max_spans = _static_max_spans(sequence_length, mask_prob, mask_length, min_masks)
    if max_spans == 0:
        return jnp.zeros(shape, bool)
    if lengths is None:
        lengths = jnp.full((batch_size,), sequence_length, jnp.int32)
    lengths = jnp.clip(jnp.asarray(lengths).astype(jnp.int32), 0, sequence_length)

    # One draw (cheaper to compile than several): the shared epsilon, then one key per start.
    num_starts = sequence_length - mask_length + 1
    uniform = jax.random.uniform(rng, (1 + batch_size * num_starts,))
    epsilon, keys = uniform[0], uniform[1:].reshape(batch_size, num_starts)
    count = lambda lens: _num_spans(epsilon, lens, sequence_length, mask_prob, mask_length, min_masks)  # noqa: E731
    num = count(lengths)
    any_spans = count(jnp.full((1,), sequence_length, jnp.int32))[0] > 0

    starts = _sample_starts(keys, lengths, mask_length, max_spans)
    keep = jnp.arange(max_spans)[None, :] < num[:, None]
    mask = _spans_to_mask(starts, keep, sequence_length, mask_length)
    dummy = (num == 0)[:, None] & (jnp.arange(sequence_length) == sequence_length - 1)[None, :]
    return (mask | dummy) & any_spans


def apply_spec_augment(
    rng: jax.Array | None,
    hidden_states: jax.Array,
    *,
    masked_spec_embed: jax.Array | None,
    mask_time_prob: float,
    mask_time_length: int,
    mask_time_min_masks: int,
    mask_feature_prob: float,
    mask_feature_length: int,
    mask_feature_min_masks: int,
    lengths: jax.Array | None = None,
    mask_time_indices: jax.Array | None = None,
    deterministic: bool = True,
    apply_spec_augment: bool = True,
) -> tuple[jax.Array, jax.Array | None]:
    """HF's ``_mask_hidden_states`` on ``hidden_states [B, L, H]``.

    Given ``mask_time_indices`` (bool ``[B, L]``), those frames become ``masked_spec_embed``
    (``[H]``), also when ``deterministic`` (as HF). Otherwise, in training with
    ``mask_time_prob > 0``, a time mask is drawn (honouring ``lengths``). Then, in training with
    ``mask_feature_prob > 0``, a feature mask over ``(B, H)`` zeroes those channels at every frame.
    Returns ``(hidden_states, time_mask)`` where ``time_mask`` is the time mask used or ``None``.
    """
    if not apply_spec_augment:
        return hidden_states, None
    batch_size, sequence_length, hidden_size = hidden_states.shape
    training = not deterministic
    draw_time = mask_time_indices is None and training and mask_time_prob > 0
    draw_feature = training and mask_feature_prob > 0
    if (draw_time or draw_feature) and rng is None:
        raise ValueError("apply_spec_augment needs an `rng` key to draw masks in training (deterministic=False).")
    time_key, feature_key = jax.random.split(rng) if rng is not None else (None, None)

    if draw_time:
        mask_time_indices = compute_mask_indices(
            time_key, (batch_size, sequence_length), mask_time_prob, mask_time_length,
            lengths=lengths, min_masks=mask_time_min_masks,
        )
    if mask_time_indices is not None:
        if masked_spec_embed is None:
            raise ValueError("Time masking needs `masked_spec_embed` of shape [hidden_size].")
        embed = jnp.asarray(masked_spec_embed).astype(hidden_states.dtype)
        hidden_states = jnp.where(mask_time_indices[:, :, None], embed, hidden_states)

    if draw_feature:
        mask_feature_indices = compute_mask_indices(
            feature_key, (batch_size, hidden_size), mask_feature_prob, mask_feature_length,
            min_masks=mask_feature_min_masks,
        )
        hidden_states = jnp.where(mask_feature_indices[:, None, :], 0, hidden_states).astype(hidden_states.dtype)
    return hidden_states, mask_time_indices
