"""CTC loss with Hugging Face (``ForCTCLoss`` / ``torch.nn.functional.ctc_loss``) semantics, via optax."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax

_REDUCTIONS = ("mean", "sum", "none")


def compact_labels(labels: jax.Array, keep: jax.Array, pad_value: int) -> tuple[jax.Array, jax.Array]:
    """Move kept labels to the left of each row (stable, as torch's ``masked_select``).

    labels, keep ``[B, U]`` -> (compacted labels ``[B, U]`` padded with ``pad_value``, lengths ``[B]``).
    """
    order = jnp.argsort(~keep, axis=1, stable=True)
    lengths = jnp.sum(keep, axis=1).astype(jnp.int32)
    compact = jnp.take_along_axis(labels, order, axis=1)
    padded = jnp.arange(labels.shape[1])[None, :] >= lengths[:, None]
    return jnp.where(padded, pad_value, compact), lengths


def min_frames_needed(labels: jax.Array, lengths: jax.Array) -> jax.Array:
    """Fewest frames a CTC alignment of each (compacted) row needs: U + adjacent repeats; ``[B]``."""
    repeats = labels[:, 1:] == labels[:, :-1]
    inside = jnp.arange(1, labels.shape[1])[None, :] < lengths[:, None]
    return lengths + jnp.sum(repeats & inside, axis=1).astype(jnp.int32)


def ctc_loss(
    logits: jax.Array,
    labels: jax.Array,
    logit_lengths: jax.Array,
    *,
    blank_id: int,
    reduction: str = "mean",
    zero_infinity: bool = False,
    ignore_index: int = -100,
) -> jax.Array:
    """CTC loss equal to HF's ``ForCTCLoss``.

    Args:
        logits: ``[B, T, V]`` any float dtype (log-softmax taken in float32).
        labels: ``[B, U]`` int; entries equal to ``ignore_index`` or ``blank_id`` are dropped
            (anywhere in the row, the rest keeps its order).
        logit_lengths: ``[B]`` int valid frames per row.
        reduction: ``"mean"`` (per-row loss / max(target length, 1), then batch mean),
            ``"sum"``, or ``"none"`` (``[B]``).
        zero_infinity: infeasible rows (target needs more frames than given) give 0 and zero
            gradient instead of ``inf``.
    """
    if reduction not in _REDUCTIONS:
        raise ValueError(f"ctc_loss: reduction must be one of {_REDUCTIONS}, got {reduction!r}.")
    if logits.ndim != 3 or labels.ndim != 2 or labels.shape[0] != logits.shape[0]:
        raise ValueError(
            f"ctc_loss: expected logits [B, T, V] and labels [B, U], got {logits.shape} and {labels.shape}."
        )
    log_probs = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
    keep = (labels != ignore_index) & (labels != blank_id)
    # Pad with blank: never equal to a real label, so optax sees no repeat across the end.
    targets, target_lengths = compact_labels(labels, keep, blank_id)
    logit_lengths = jnp.asarray(logit_lengths).astype(jnp.int32)
    num_frames = logits.shape[1]
    logit_paddings = (jnp.arange(num_frames)[None, :] >= logit_lengths[:, None]).astype(jnp.float32)
    label_paddings = (jnp.arange(labels.shape[1])[None, :] >= target_lengths[:, None]).astype(jnp.float32)
    losses = optax.ctc_loss(log_probs, logit_paddings, targets, label_paddings, blank_id=blank_id)

    # optax uses a finite log(0); torch gives inf when no alignment fits in the frames.
    feasible = min_frames_needed(targets, target_lengths) <= logit_lengths
    losses = jnp.where(feasible, losses, 0.0 if zero_infinity else jnp.inf)

    if reduction == "none":
        return losses
    if reduction == "sum":
        return jnp.sum(losses)
    return jnp.mean(losses / jnp.maximum(target_lengths, 1).astype(jnp.float32))
