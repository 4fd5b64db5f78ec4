"""Compare a zoo model with the Hugging Face PyTorch original on a random input
(``zoo convert --verify``). Needs torch and transformers (the ``test`` extra), imported
when called; the rest of the zoo never does.

    diffs = compare_with_pytorch(hf_checkpoint_dir, model, variables)   # {field: max abs diff}
"""

from __future__ import annotations

import os
from collections.abc import Mapping

import numpy as np


def missing_pytorch() -> list[str]:
    """Which of torch and transformers (what verifying needs) are not installed."""
    import importlib.util

    return [m for m in ("torch", "transformers") if importlib.util.find_spec(m) is None]


def require_pytorch() -> None:
    """Raise one clear line when torch or transformers is missing (before any work is done)."""
    missing = missing_pytorch()
    if missing:
        raise RuntimeError(f"verifying against PyTorch needs {' and '.join(missing)}: pip install 'zoo[test]'")


def verification_inputs(model, *, seed: int = 0) -> dict[str, np.ndarray]:
    """A random batch of 2 for ``model``, padded where the model takes a mask: 16 token ids
    (the last 3 padding), 1 s of audio at 16 kHz (the second row a quarter shorter), images
    of the configured size (IDEFICS: one image per prompt, seen by every token)."""
    rng = np.random.RandomState(seed)
    cfg = model.config
    dummy = {k: np.asarray(v) for k, v in model.dummy_inputs(cfg).items()}
    if "input_values" in dummy:
        length = max(dummy["input_values"].shape[-1], 16000)
        audio = rng.randn(2, length).astype(np.float32)
        mask = np.ones((2, length), np.int32)
        audio[1, 3 * length // 4:], mask[1, 3 * length // 4:] = 0.0, 0
        return {"input_values": audio, "attention_mask": mask}
    inputs = {}
    if "input_ids" in dummy:
        text = getattr(cfg, "text", cfg)
        pad = text.pad_token_id if text.pad_token_id is not None else 0
        ids = rng.randint(pad + 1, text.vocab_size, (2, *dummy["input_ids"].shape[1:-1], 16))
        mask = np.ones_like(ids)
        ids[..., -3:], mask[..., -3:] = pad, 0
        inputs.update(input_ids=ids, attention_mask=mask)
    if "pixel_values" in dummy:
        vision = getattr(cfg, "vision", cfg)
        size = getattr(vision, "image_size", 224)
        height, width = (size, size) if isinstance(size, int) else size
        shape = (2, vision.num_channels, height, width)
        if "pixel_values" in dummy and dummy["pixel_values"].ndim == 5:  # IDEFICS: [B, images, C, H, W]
            shape = (2, 1) + shape[1:]
            inputs["image_attention_mask"] = np.ones((2, inputs["input_ids"].shape[1], 1), np.int64)
        inputs["pixel_values"] = rng.randn(*shape).astype(np.float32)
    return inputs


def compare_with_pytorch(src: str | os.PathLike, model, variables: Mapping, *, seed: int = 0) -> dict[str, float]:
    """Run the HF PyTorch model of ``src`` (``transformers.<ModelClass>.from_pretrained``, eager
    attention) and ``model`` on the same :func:`verification_inputs` and return the max abs
    difference of every output field they both give (nested outputs as ``outer.inner``)."""
    require_pytorch()
    import torch
    import transformers

    transformers.logging.disable_progress_bar()
    name = type(model).__name__
    hf_cls = getattr(transformers, name, None)
    if hf_cls is None:
        raise RuntimeError(f"transformers {transformers.__version__} has no {name} to compare with")
    hf = hf_cls.from_pretrained(os.fspath(src), attn_implementation="eager").eval()
    inputs = verification_inputs(model, seed=seed)
    with torch.no_grad():
        ref = hf(**{k: torch.from_numpy(v) for k, v in inputs.items()}, output_hidden_states=True)
    got = model.apply(variables, **inputs, output_hidden_states=True)
    return _differences(got, ref)


def _differences(got, ref, prefix: str = "") -> dict[str, float]:
    diffs = {}
    for field, value in ref.items():
        ours = getattr(got, field, None)
        if value is None or ours is None or field == "past_key_values":
            continue
        if hasattr(value, "items"):  # a nested output (GroupViT's text_model_output, ...)
            diffs.update(_differences(ours, value, f"{prefix}{field}."))
            continue
        pairs = zip(ours, value) if isinstance(value, tuple) else [(ours, value)]
        diffs[prefix + field] = max(float(np.max(np.abs(np.asarray(a, np.float64) - b.double().numpy())))
                                    for a, b in pairs)
    return diffs


__all__ = ["compare_with_pytorch", "missing_pytorch", "require_pytorch", "verification_inputs"]
