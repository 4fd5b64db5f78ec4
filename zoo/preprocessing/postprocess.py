"""Post-processing of model outputs into named predictions (numpy only).

    top_labels(logits, id2label, k)        # [(label, probability)], most likely first
    label_shares(label_map, names, k)      # [(label, share of pixels)], largest first
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np


def softmax(logits) -> np.ndarray:
    """Softmax over the last axis, in float64."""
    logits = np.asarray(logits, np.float64)
    probs = np.exp(logits - logits.max(-1, keepdims=True))
    return probs / probs.sum(-1, keepdims=True)


def _name(names: Mapping[int, str] | Sequence[str] | None, i: int):
    if names is None:
        return i
    if isinstance(names, Mapping):
        return names.get(i, i)
    return names[i] if 0 <= i < len(names) else i


def top_labels(logits, id2label: Mapping[int, str] | Sequence[str] | None, k: int) -> list[tuple[object, float]]:
    """The ``k`` most probable classes of one example's ``logits [num_labels]``:
    ``[(name, probability)]``, names from ``id2label`` (the id itself where it has none)."""
    logits = np.asarray(logits)
    if logits.ndim != 1:
        raise ValueError(f"top_labels takes one example's logits [num_labels], got shape {logits.shape}")
    probs = softmax(logits)
    return [(_name(id2label, int(i)), float(probs[i])) for i in np.argsort(-probs, kind="stable")[:k]]


def label_shares(label_map, names: Mapping[int, str] | Sequence[str] | None, k: int) -> list[tuple[object, float]]:
    """The ``k`` labels covering most of ``label_map`` (an integer map): ``[(name, share)]``."""
    label_map = np.asarray(label_map)
    classes, counts = np.unique(label_map, return_counts=True)
    order = np.argsort(-counts, kind="stable")[:k]
    return [(_name(names, int(classes[i])), float(counts[i] / label_map.size)) for i in order]


__all__ = ["label_shares", "softmax", "top_labels"]
