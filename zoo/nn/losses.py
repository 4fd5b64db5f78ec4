"""Losses with Hugging Face semantics (``-100`` ignored, mean over kept items)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax

IGNORE_INDEX = -100


def cross_entropy(logits: jax.Array, labels: jax.Array, ignore_index: int = IGNORE_INDEX) -> jax.Array:
    """Mean cross entropy over labels != ignore_index (NaN if none kept, as torch).

    logits ``[..., C]``, labels ``[...]`` integer.
    """
    logits = logits.astype(jnp.promote_types(logits.dtype, jnp.float32))
    keep = labels != ignore_index
    safe = jnp.where(keep, labels, 0)
    losses = optax.softmax_cross_entropy_with_integer_labels(logits, safe)
    return jnp.sum(jnp.where(keep, losses, 0.0)) / jnp.sum(keep)


def causal_lm_loss(logits: jax.Array, labels: jax.Array, ignore_index: int = IGNORE_INDEX) -> jax.Array:
    """Next-token loss: position t predicts labels[t + 1]; ``[B, L, V]``, ``[B, L]``."""
    shifted = jnp.concatenate(
        [labels[:, 1:], jnp.full((labels.shape[0], 1), ignore_index, labels.dtype)], axis=1
    )
    return cross_entropy(logits, shifted, ignore_index)


def mse(predictions: jax.Array, targets: jax.Array) -> jax.Array:
    return jnp.mean((predictions.astype(jnp.float32) - targets.astype(jnp.float32)) ** 2)


def bce_with_logits(logits: jax.Array, targets: jax.Array) -> jax.Array:
    logits = logits.astype(jnp.float32)
    return jnp.mean(optax.sigmoid_binary_cross_entropy(logits, targets.astype(jnp.float32)))


def sequence_classification_loss(
    logits: jax.Array, labels: jax.Array, num_labels: int, problem_type: str | None
) -> jax.Array:
    """HF's problem_type dispatch: regression (MSE), single-label CE, multi-label BCE.

    With ``problem_type=None`` it is inferred as HF does: one label -> regression,
    integer labels -> single-label, otherwise multi-label.
    """
    if problem_type is None:
        if num_labels == 1:
            problem_type = "regression"
        elif jnp.issubdtype(labels.dtype, jnp.integer):
            problem_type = "single_label_classification"
        else:
            problem_type = "multi_label_classification"
    if problem_type == "regression":
        if num_labels == 1:
            return mse(jnp.squeeze(logits), jnp.squeeze(labels))
        return mse(logits, labels)
    if problem_type == "single_label_classification":
        return cross_entropy(logits.reshape(-1, num_labels), labels.reshape(-1))
    return bce_with_logits(logits, labels)


def span_loss(start_logits, end_logits, start_positions, end_positions) -> jax.Array:
    """Question answering: positions outside ``[0, L)`` are clamped to L and ignored."""
    length = start_logits.shape[1]
    if start_positions.ndim > 1:
        start_positions = start_positions.squeeze(-1)
    if end_positions.ndim > 1:
        end_positions = end_positions.squeeze(-1)
    start = jnp.clip(start_positions, 0, length)
    end = jnp.clip(end_positions, 0, length)
    return (cross_entropy(start_logits, start, length) + cross_entropy(end_logits, end, length)) / 2
