"""zoo.nn.conv: the Winograd 3x3 path against PyTorch (float32 and a float64 reference)."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from zoo.nn.conv import Conv2D, prefers_winograd, winograd_conv3x3


def _torch_conv(x, kernel, dtype=torch.float32, padding=1, dilation=1):
    xt = torch.from_numpy(x).to(dtype).permute(0, 3, 1, 2)
    kt = torch.from_numpy(kernel).to(dtype).permute(3, 2, 0, 1)
    return F.conv2d(xt, kt, padding=padding, dilation=dilation).permute(0, 2, 3, 1).numpy()


@pytest.mark.parametrize("shape", [(2, 9, 7, 16, 8), (1, 16, 16, 64, 32), (3, 1, 5, 4, 4), (1, 33, 40, 96, 96)])
def test_winograd_matches_torch_and_is_as_accurate(shape):
    batch, height, width, cin, cout = shape
    rng = np.random.RandomState(0)
    x = rng.randn(batch, height, width, cin).astype(np.float32)
    kernel = (rng.randn(3, 3, cin, cout) / np.sqrt(9 * cin)).astype(np.float32)
    got = np.asarray(jax.jit(winograd_conv3x3)(x, kernel))
    exact = _torch_conv(x, kernel, torch.float64)
    torch32 = _torch_conv(x, kernel)
    np.testing.assert_allclose(got, torch32, rtol=0, atol=1e-5)
    # error against float64 no worse than (2x) PyTorch's own float32 convolution's
    assert np.abs(got - exact).max() <= 2 * max(np.abs(torch32 - exact).max(), 1e-7)


def test_conv2d_module_paths_agree_and_validate():
    rng = np.random.RandomState(1)
    x = jnp.asarray(rng.randn(2, 12, 10, 8).astype(np.float32))
    module = lambda impl, **kw: Conv2D(6, 3, 1, implementation=impl, **kw)
    params = nn.unbox(module("xla").init(jax.random.key(0), x))
    ref = module("xla").apply(params, x)
    np.testing.assert_allclose(np.asarray(module("winograd").apply(params, x)), np.asarray(ref), atol=1e-5, rtol=0)
    kernel = np.asarray(params["params"]["kernel"])
    want = _torch_conv(np.asarray(x), kernel) + np.asarray(params["params"]["bias"])
    np.testing.assert_allclose(np.asarray(ref), want, atol=1e-5, rtol=0)
    dilated = Conv2D(6, 3, 2, dilation=2, implementation="xla")
    p = nn.unbox(dilated.init(jax.random.key(0), x))
    np.testing.assert_allclose(np.asarray(dilated.apply(p, x)),
                               _torch_conv(np.asarray(x), np.asarray(p["params"]["kernel"]), padding=2, dilation=2)
                               + np.asarray(p["params"]["bias"]), atol=1e-5, rtol=0)
    one = nn.unbox(Conv2D(6, 1, 0, implementation="winograd").init(jax.random.key(0), x))  # not 3x3: XLA
    np.testing.assert_allclose(np.asarray(Conv2D(6, 1, 0, implementation="winograd").apply(one, x)),
                               np.asarray(Conv2D(6, 1, 0, implementation="xla").apply(one, x)), atol=0, rtol=0)
    with pytest.raises(ValueError, match="not one of"):
        Conv2D(6, 3, 1, implementation="fft").init(jax.random.key(0), x)


def test_winograd_is_chosen_only_for_large_float32_3x3_on_cpu():
    big = jnp.zeros((1, 64, 64, 256), jnp.float32)
    assert prefers_winograd(big, 3, 1, 1, 256) == (jax.default_backend() == "cpu")
    assert not prefers_winograd(big, 1, 0, 1, 256)
    assert not prefers_winograd(big, 3, 2, 2, 256)
    assert not prefers_winograd(big.astype(jnp.bfloat16), 3, 1, 1, 256)
    assert not prefers_winograd(jnp.zeros((1, 32, 32, 256)), 3, 1, 1, 256)
    assert not prefers_winograd(big, 3, 1, 1, 16)
