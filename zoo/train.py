"""Fine-tuning utilities (optax)."""

from __future__ import annotations

import re
from collections.abc import Sequence

import jax
import optax


def _path(key_path) -> str:
    return "/".join(str(getattr(k, "key", getattr(k, "idx", k))) for k in key_path)


def trainable_labels(params, frozen: Sequence[str]):
    """``"frozen"`` for parameters whose ``/``-joined path matches one of the regexes, else ``"trainable"``."""
    patterns = [re.compile(p) for p in frozen]
    return jax.tree_util.tree_map_with_path(
        lambda kp, _: "frozen" if any(p.search(_path(kp)) for p in patterns) else "trainable", params)


def freeze(tx: optax.GradientTransformation, params, frozen: Sequence[str]) -> optax.GradientTransformation:
    """``tx`` for the trainable parameters; no update at all (no weight decay) for the frozen ones.

    Freezing the feature encoder of an audio model for fine-tuning, as HF's
    ``freeze_feature_encoder()``::

        tx = zoo.train.freeze(optax.adamw(3e-5), params, ["feature_extractor/"])

    (Alternatively build the model with ``freeze_feature_encoder=True``: its gradients are
    then zero, but weight decay would still move the weights.)
    """
    return optax.multi_transform({"trainable": tx, "frozen": optax.set_to_zero()},
                                 trainable_labels(params, frozen))
