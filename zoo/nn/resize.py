"""PyTorch-exact resampling: ``F.interpolate`` (bilinear, bicubic) and adaptive average pooling.

``jax.image.resize`` antialiases when it shrinks and uses Keys' ``a = -0.5`` cubic, so it
differs from PyTorch; the functions here reproduce ``torch.nn.functional.interpolate``
(no antialiasing, ``a = -0.75`` cubic, PyTorch's source-index rule and border clamping)
and ``nn.AdaptiveAvgPool2d``. The sampling positions and weights depend only on static
shapes: they are computed once on the host (float32, as PyTorch computes them) and the
resampling itself is a gather of 2 (bilinear) or 4 (bicubic) taps per output and axis,
so it works under ``jit`` at any size, in any dtype.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

Array = jax.Array
_CUBIC_A = -0.75  # PyTorch's bicubic coefficient


def _source_positions(in_size: int, out_size: int, align_corners: bool, cubic: bool,
                      scale_factor: float | None = None) -> np.ndarray:
    """PyTorch's ``area_pixel_compute_source_index`` for every output index, in float32
    (``scale_factor``: the one given to ``F.interpolate``, which then sets the spacing)."""
    dst = np.arange(out_size, dtype=np.float32)
    if align_corners:
        scale = np.float32((in_size - 1) / (out_size - 1)) if out_size > 1 else np.float32(0.0)
        return scale * dst
    scale = np.float32(1.0 / scale_factor if scale_factor else in_size / out_size)
    # PyTorch's CPU kernels compute this with one fused multiply-add: round once.
    src = (np.float64(scale) * (dst.astype(np.float64) + 0.5) - 0.5).astype(np.float32)
    return src if cubic else np.maximum(src, np.float32(0.0))


def _fma(a, b, c) -> np.ndarray:
    """float32 fused multiply-add (the float64 product of two float32 values is exact)."""
    return (np.asarray(a, np.float64) * np.asarray(b, np.float64) + np.float64(c)).astype(np.float32)


def _cubic_weights(t: np.ndarray) -> np.ndarray:
    """PyTorch's ``get_cubic_upsample_coefficients`` for fractions ``t`` -> ``[n, 4]``.

    The cubic polynomials are evaluated with fused multiply-adds, as PyTorch's compiled
    CPU kernel does (5x closer to it than plain float32 arithmetic).
    """
    a, one = np.float32(_CUBIC_A), np.float32(1.0)
    near = lambda x: _fma((_fma(a + 2, x, -(a + 3)) * x).astype(np.float32), x, one)
    far = lambda x: _fma(_fma(_fma(a, x, -5 * a), x, 8 * a), x, -4 * a)
    t = t.astype(np.float32)
    rest = one - t
    return np.stack([far(t + one), near(t), near(rest), far(rest + one)], axis=-1).astype(np.float32)


@functools.lru_cache(maxsize=256)
def interpolation_taps(in_size: int, out_size: int, method: str, align_corners: bool,
                       scale_factor: float | None = None) -> tuple[np.ndarray, np.ndarray]:
    """``(indices, weights)``, both ``[out_size, taps]``: output ``i`` = sum_t w[i, t] x[idx[i, t]]."""
    if method == "bilinear":
        src = _source_positions(in_size, out_size, align_corners, cubic=False, scale_factor=scale_factor)
        i0 = np.minimum(src.astype(np.int64), in_size - 1)  # src >= 0: truncation is floor
        frac = (src - i0).astype(np.float32)
        i1 = np.minimum(i0 + 1, in_size - 1)
        return np.stack([i0, i1], -1), np.stack([1 - frac, frac], -1).astype(np.float32)
    if method == "bicubic":
        src = _source_positions(in_size, out_size, align_corners, cubic=True, scale_factor=scale_factor)
        base = np.floor(src).astype(np.int64)
        frac = (src - base).astype(np.float32)
        idx = np.clip(base[:, None] + np.arange(-1, 3)[None, :], 0, in_size - 1)
        return idx, _cubic_weights(frac)
    raise ValueError(f"interpolation method {method!r} is not supported; choose 'bilinear' or 'bicubic'")


def _resize_axis(x: Array, axis: int, out_size: int, method: str, align_corners: bool,
                 scale_factor: float | None = None) -> Array:
    in_size = x.shape[axis]
    if in_size == out_size and (scale_factor is None or align_corners or method == "bilinear"):
        # PyTorch maps every output exactly onto its input; given a scale factor != 1, its
        # bicubic kernel still resamples an unchanged size (the bilinear one copies).
        return x
    idx, w = interpolation_taps(in_size, out_size, method, align_corners, scale_factor)
    x = jnp.moveaxis(x, axis, -1)
    taps = jnp.take(x, jnp.asarray(idx), axis=-1)  # [..., out, taps]
    y = jnp.einsum("...ot,ot->...o", taps, jnp.asarray(w, x.dtype), precision=jax.lax.Precision.HIGHEST)
    return jnp.moveaxis(y, -1, axis)


def resize(x: Array, size: Sequence[int] | None, axes: Sequence[int], method: str = "bilinear",
           align_corners: bool = False, scale_factor: Sequence[float] | None = None) -> Array:
    """``F.interpolate(x, size, mode=method, align_corners=align_corners)`` over ``axes``.

    x: any layout, e.g. ``[B, H, W, C]`` with ``axes=(1, 2)``. size: one output size per axis.
    scale_factor (instead of ``size``): ``F.interpolate(x, scale_factor=...)``: output sizes
    ``floor(in * s)`` and PyTorch's sampling spacing ``1 / s`` (not ``in / out``).
    """
    if (size is None) == (scale_factor is None):
        raise ValueError("resize: pass exactly one of size or scale_factor")
    if scale_factor is not None:
        if len(scale_factor) != len(axes) or any(s <= 0 for s in scale_factor):
            raise ValueError(f"resize: need one positive scale factor per axis, got {tuple(scale_factor)}")
        size = [math.floor(x.shape[a] * float(s)) for a, s in zip(axes, scale_factor)]
    if len(size) != len(axes):
        raise ValueError(f"resize: {len(size)} sizes for {len(axes)} axes")
    if any(int(s) < 1 for s in size):
        raise ValueError(f"resize: output sizes must be positive, got {tuple(size)}")
    # last axis first: PyTorch interpolates along rows (width), then combines the rows
    scales = [None] * len(axes) if scale_factor is None else [float(s) for s in scale_factor]
    for axis, out_size, scale in reversed(list(zip(axes, size, scales))):
        x = _resize_axis(x, axis, int(out_size), method, align_corners, scale)
    return x


@functools.lru_cache(maxsize=256)
def _adaptive_pool_matrix(in_size: int, out_size: int) -> np.ndarray:
    """``[out, in]`` averaging weights of PyTorch's adaptive pooling bins."""
    m = np.zeros((out_size, in_size), np.float32)
    for i in range(out_size):
        start = (i * in_size) // out_size
        end = math.ceil((i + 1) * in_size / out_size)
        m[i, start:end] = 1.0 / (end - start)
    return m


def adaptive_avg_pool(x: Array, size: Sequence[int], axes: Sequence[int]) -> Array:
    """``nn.AdaptiveAvgPool2d(size)`` over ``axes`` (e.g. ``[B, H, W, C]``, ``axes=(1, 2)``)."""
    for axis, out_size in zip(axes, size):
        m = jnp.asarray(_adaptive_pool_matrix(x.shape[axis], int(out_size)), x.dtype)
        x = jnp.moveaxis(jnp.tensordot(x, m, axes=([axis], [1]), precision=jax.lax.Precision.HIGHEST), -1, axis)
    return x


def max_pool(x: Array, window: int, axes: Sequence[int] = (1, 2)) -> Array:
    """``nn.MaxPool2d(window, stride=window)`` (floor mode) over ``axes``."""
    dims = [1] * x.ndim
    for axis in axes:
        dims[axis] = window
    return jax.lax.reduce_window(x, -jnp.inf, jax.lax.max, tuple(dims), tuple(dims), "VALID")
