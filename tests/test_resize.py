"""zoo.nn.resize against PyTorch: F.interpolate (bilinear, bicubic), adaptive average and max pooling."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from zoo.nn.resize import adaptive_avg_pool, max_pool, resize

SIZES = [((7, 9), (16, 5)), ((16, 16), (40, 40)), ((40, 24), (13, 31)), ((5, 6), (5, 6)), ((1, 3), (4, 1)),
         ((27, 27), (55, 55))]


def _nchw(seed=0, shape=(2, 3, 7, 9)):
    return np.random.RandomState(seed).randn(*shape).astype(np.float32)


@pytest.mark.parametrize("method", ["bilinear", "bicubic"])
@pytest.mark.parametrize("align_corners", [False, True])
@pytest.mark.parametrize("sizes", SIZES)
def test_interpolate_matches_torch(method, align_corners, sizes):
    (h, w), out = sizes
    x = _nchw(shape=(2, 3, h, w))
    want = F.interpolate(torch.from_numpy(x), size=out, mode=method, align_corners=align_corners).numpy()
    # channels-last, as the models use it, under jit
    got = jax.jit(lambda v: resize(v, out, axes=(1, 2), method=method, align_corners=align_corners))(
        jnp.asarray(x.transpose(0, 2, 3, 1)))
    np.testing.assert_allclose(np.asarray(got).transpose(0, 3, 1, 2), want, rtol=0, atol=2e-6)


@pytest.mark.parametrize("sizes", [((6, 6), (1, 1)), ((12, 12), (2, 3)), ((10, 7), (3, 6)), ((40, 40), (6, 6))])
def test_adaptive_avg_pool_matches_torch(sizes):
    (h, w), out = sizes
    x = _nchw(1, (2, 4, h, w))
    want = F.adaptive_avg_pool2d(torch.from_numpy(x), out).numpy()
    got = adaptive_avg_pool(jnp.asarray(x), out, axes=(2, 3))
    np.testing.assert_allclose(np.asarray(got), want, rtol=0, atol=1e-6)


@pytest.mark.parametrize("size", [(8, 8), (9, 7)])
def test_max_pool_matches_torch(size):
    x = _nchw(2, (2, 3, *size))
    want = F.max_pool2d(torch.from_numpy(x), 2, 2).numpy()
    np.testing.assert_array_equal(np.asarray(max_pool(jnp.asarray(x), 2, axes=(2, 3))), want)


def test_resize_bfloat16_and_errors():
    x = jnp.asarray(_nchw(3, (1, 5, 5, 2)), jnp.bfloat16)
    assert resize(x, (10, 10), axes=(1, 2)).dtype == jnp.bfloat16
    with pytest.raises(ValueError, match="'nearest' is not supported"):
        resize(x, (10, 10), axes=(1, 2), method="nearest")
    with pytest.raises(ValueError, match="2 sizes for 1 axes"):
        resize(x, (10, 10), axes=(1,))
    with pytest.raises(ValueError, match="positive"):
        resize(x, (0, 10), axes=(1, 2))


@pytest.mark.parametrize("method", ["bilinear", "bicubic"])
@pytest.mark.parametrize("shape,scale", [((16, 16), (16.1 / 16, 14.1 / 16)), ((7, 9), (2.5, 0.5)), ((6, 6), (1.0, 1.7))])
def test_interpolate_by_scale_factor_matches_torch(method, shape, scale):
    """``scale_factor=`` sets the output size (floor) and the sampling spacing 1/s: an unchanged
    size still resamples when s != 1 (IDEFICS' positions at (patches + 0.1) / side)."""
    x = _nchw(4, (1, 2, *shape))
    want = F.interpolate(torch.from_numpy(x), scale_factor=scale, mode=method, align_corners=False).numpy()
    got = resize(jnp.asarray(x), None, axes=(2, 3), method=method, scale_factor=scale)
    np.testing.assert_allclose(np.asarray(got), want, rtol=0, atol=2e-6)
    with pytest.raises(ValueError, match="exactly one of size or scale_factor"):
        resize(jnp.asarray(x), shape, axes=(2, 3), scale_factor=scale)
