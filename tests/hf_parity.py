"""Helpers to compare zoo models with their HF PyTorch originals (fp32, max abs diff)."""

from __future__ import annotations

import numpy as np
import torch

import zoo

ATOL = 1e-5


def to_zoo(hf_model, architecture: str | None = None, **module_kwargs) -> zoo.Loaded:
    """``(module, variables)`` equal to ``hf_model``, converted through the family's key table
    by :func:`zoo.from_state_dict` (every key used, nothing initialised)."""
    state = {k: v.detach().cpu().numpy() for k, v in hf_model.state_dict().items()}
    loaded = zoo.from_state_dict(state, hf_model.config.to_dict(), architecture or type(hf_model).__name__,
                                 **module_kwargs)
    assert not loaded.report.unused and not loaded.report.missing, loaded.report.summary()
    return loaded


def max_diff(a, b) -> float:
    a = np.asarray(a, dtype=np.float64)
    b = b.detach().cpu().double().numpy() if isinstance(b, torch.Tensor) else np.asarray(b, np.float64)
    assert a.shape == b.shape, f"shape {a.shape} != {b.shape}"
    if not (np.isfinite(a).all() and np.isfinite(b).all()):  # NaN / inf must sit at the same places
        assert np.array_equal(np.isnan(a), np.isnan(b)), "NaN pattern differs"
        assert np.array_equal(np.isposinf(a), np.isposinf(b)) and np.array_equal(np.isneginf(a), np.isneginf(b)), \
            "inf pattern differs"
        a, b = np.where(np.isfinite(a), a, 0.0), np.where(np.isfinite(b), b, 0.0)
    return float(np.max(np.abs(a - b))) if a.size else 0.0


def assert_outputs_match(zoo_out, hf_out, atol: float = ATOL, skip=("past_key_values",)) -> dict:
    """Every non-None field of the HF output exists in the zoo output and matches."""
    diffs = {}
    for name, ref in hf_out.items():
        if ref is None or name in skip:
            continue
        got = getattr(zoo_out, name)
        if isinstance(ref, tuple) and not ref and got is None:  # HF's empty cross_attentions
            continue
        assert got is not None, f"zoo output lacks {name}"
        if isinstance(ref, (tuple, list)):
            assert len(got) == len(ref), f"{name}: {len(got)} entries vs {len(ref)}"
            diffs[name] = max((max_diff(g, r) for g, r in zip(got, ref)), default=0.0)
        else:
            diffs[name] = max_diff(got, ref)
    # 1e-5 is the contract; a field whose values reach past 128 (a sum-reduced loss of 282)
    # has a float32 spacing above 1e-5 there, so one unit in the last place is the floor.
    bad = {k: v for k, v in diffs.items() if not v <= max(atol, _fp32_spacing(hf_out[k]))}
    assert not bad, f"fields differ beyond {atol}: {bad} (all: {diffs})"
    assert diffs, "nothing was compared"
    return diffs


def _fp32_spacing(ref) -> float:
    """The float32 spacing at the largest finite magnitude of ``ref`` (a tensor or a tuple of them)."""
    top = 0.0
    for part in ref if isinstance(ref, (tuple, list)) else (ref,):
        a = part.detach().cpu().double().numpy() if isinstance(part, torch.Tensor) else np.asarray(part, np.float64)
        a = np.abs(a[np.isfinite(a)])
        top = max(top, float(a.max()) if a.size else 0.0)
    return float(np.spacing(np.float32(top)))


def torch_inputs(inputs: dict) -> dict:
    return {k: (torch.from_numpy(np.asarray(v)) if v is not None and not isinstance(v, bool) else v)
            for k, v in inputs.items()}
