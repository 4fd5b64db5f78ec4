"""Compare a zoo model with the Hugging Face PyTorch original on a random input
(``zoo convert --verify``). Needs torch and transformers (the ``test`` extra), imported
when called; the rest of the zoo never does.

    diffs = compare_with_pytorch(hf_checkpoint_dir, model, variables)   # {field: max abs diff}
"""

from __future__ import annotations

import os
from collections.abc import Mapping

import numpy as np


def compare_with_pytorch(src: str | os.PathLike, model, variables: Mapping, *, seed: int = 0) -> dict[str, float]:
    """Run the HF PyTorch model of ``src`` (``transformers.<ModelClass>.from_pretrained``, eager
    attention) and ``model`` on the same random input (pixels, or 16 token ids of which the last 3
    are padding) and return the max abs difference of every output field they both give."""
    try:
        import torch
        import transformers
    except ImportError:
        raise RuntimeError("verifying against PyTorch needs torch and transformers: pip install 'zoo[test]'") \
            from None

    transformers.logging.disable_progress_bar()
    name = type(model).__name__
    hf_cls = getattr(transformers, name, None)
    if hf_cls is None:
        raise RuntimeError(f"transformers {transformers.__version__} has no {name} to compare with")
    hf = hf_cls.from_pretrained(os.fspath(src), attn_implementation="eager").eval()
    inputs = model.dummy_inputs(model.config)
    rng = np.random.RandomState(seed)
    if "pixel_values" in inputs:
        x = rng.randn(2, *np.asarray(inputs["pixel_values"]).shape[1:]).astype(np.float32)
        with torch.no_grad():
            ref = hf(pixel_values=torch.from_numpy(x), output_hidden_states=True)
        got = model.apply(variables, x, output_hidden_states=True)
    else:
        cfg = model.config
        shape = np.asarray(inputs["input_ids"]).shape[:-1] + (16,)
        ids = rng.randint(cfg.pad_token_id + 1, cfg.vocab_size, shape)
        mask = np.ones_like(ids)
        mask[..., -3:] = 0
        ids[..., -3:] = cfg.pad_token_id
        with torch.no_grad():
            ref = hf(input_ids=torch.from_numpy(ids), attention_mask=torch.from_numpy(mask),
                     output_hidden_states=True)
        got = model.apply(variables, input_ids=ids, attention_mask=mask, output_hidden_states=True)
    diffs = {}
    for field, value in ref.items():
        if value is None or field == "past_key_values":
            continue
        ours = getattr(got, field)
        pairs = zip(ours, value) if isinstance(value, tuple) else [(ours, value)]
        diffs[field] = max(float(np.max(np.abs(np.asarray(a, np.float64) - b.double().numpy()))) for a, b in pairs)
    return diffs


__all__ = ["compare_with_pytorch"]
