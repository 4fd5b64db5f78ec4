"""Semantic-segmentation decode heads from mmsegmentation, as HF ports them:
UperNet (pyramid pooling + FPN) and the auxiliary FCN head, with PyTorch's BatchNorm.

Feature maps are channels-last ``[B, H, W, C]``. Module names mirror HF's
(``decode_head/psp_modules/blocks_0/conv/convolution``), batch-norm running statistics
live in the ``batch_stats`` collection (``mean``, ``var``, ``num_batches_tracked``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from zoo.nn.conv import Conv2D
from zoo.nn.layers import ones_init, zeros_init
from zoo.nn.resize import adaptive_avg_pool, resize

Array = jax.Array


def conv_kernel_init(axes=(None, None, "conv_in", "conv_out")):
    return nn.with_logical_partitioning(nn.initializers.lecun_normal(), axes)


class BatchNorm(nn.Module):
    """``nn.BatchNorm2d`` over the last axis, PyTorch's numerics.

    Inference (``use_running_average=True``) normalizes with the running statistics of
    the ``batch_stats`` collection. Training uses the batch's biased variance and updates
    the running statistics (pass ``mutable=["batch_stats"]``) with ``momentum`` and the
    *unbiased* variance, as PyTorch does (``flax.linen.BatchNorm`` stores the biased one).
    """

    epsilon: float = 1e-5
    momentum: float = 0.1
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: Array, use_running_average: bool = True) -> Array:
        features = x.shape[-1]
        scale = self.param("scale", ones_init(("conv_out",)), (features,), self.param_dtype)
        bias = self.param("bias", zeros_init(("conv_out",)), (features,), self.param_dtype)
        ra_mean = self.variable("batch_stats", "mean", lambda: jnp.zeros((features,), jnp.float32))
        ra_var = self.variable("batch_stats", "var", lambda: jnp.ones((features,), jnp.float32))
        count = self.variable("batch_stats", "num_batches_tracked", lambda: jnp.zeros((), jnp.int32))
        stats_dtype = jnp.promote_types(x.dtype, jnp.float32)
        if use_running_average:
            mean, var = ra_mean.value, ra_var.value
        else:
            axes = tuple(range(x.ndim - 1))
            xf = x.astype(stats_dtype)
            mean = xf.mean(axes)
            var = jnp.mean(jnp.square(xf - mean), axes)
            if not self.is_initializing() and self.is_mutable_collection("batch_stats"):
                n = x.size // features
                m = self.momentum
                ra_mean.value = (1 - m) * ra_mean.value + m * mean
                ra_var.value = (1 - m) * ra_var.value + m * var * (n / max(n - 1, 1))
                count.value = count.value + 1
        inv = jax.lax.rsqrt(var.astype(stats_dtype) + self.epsilon) * scale.astype(stats_dtype)
        y = x.astype(stats_dtype) * inv + (bias.astype(stats_dtype) - mean * inv)
        return y.astype(self.dtype)


class ConvModule(nn.Module):
    """conv (no bias) -> BatchNorm -> ReLU: HF's ``BeitConvLayer``."""

    features: int
    kernel_size: int = 1
    padding: int = 0
    dilation: int = 1
    conv_implementation: str | None = None
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: Array, use_running_average: bool = True) -> Array:
        k, p = self.kernel_size, self.padding
        x = Conv2D(self.features, k, p, self.dilation, use_bias=False, implementation=self.conv_implementation,
                   dtype=self.dtype, param_dtype=self.param_dtype, name="convolution")(x)
        x = BatchNorm(dtype=self.dtype, param_dtype=self.param_dtype, name="normalization")(x, use_running_average)
        return jax.nn.relu(x)


class ConvTranspose2x2(nn.Module):
    """``nn.ConvTranspose2d(c, features, kernel_size=2, stride=2)``: each pixel -> a 2x2 block.

    The kernel is ``[2, 2, features, in]`` (PyTorch's ``[in, features, 2, 2]`` through the
    generic conv-weight rule).
    """

    features: int
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: Array) -> Array:
        batch, height, width, channels = x.shape
        kernel = self.param("kernel", conv_kernel_init((None, None, "conv_out", "conv_in")),
                            (2, 2, self.features, channels), self.param_dtype)
        bias = self.param("bias", zeros_init(("conv_out",)), (self.features,), self.param_dtype)
        y = jnp.einsum("bhwc,ijoc->bhiwjo", x.astype(self.dtype), kernel.astype(self.dtype))
        y = y.reshape(batch, 2 * height, 2 * width, self.features)
        return y + bias.astype(self.dtype)


def _classifier(num_labels: int, dtype, param_dtype) -> Conv2D:
    return Conv2D(num_labels, 1, dtype=dtype, param_dtype=param_dtype, name="classifier")


class PyramidPoolingBlock(nn.Module):
    """Adaptive average pool to ``scale x scale`` -> 1x1 ConvModule -> bilinear back to the input size."""

    scale: int
    channels: int
    conv_implementation: str | None = None
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: Array, use_running_average: bool = True) -> Array:
        y = adaptive_avg_pool(x, (self.scale, self.scale), axes=(1, 2))
        y = ConvModule(self.channels, 1, conv_implementation=self.conv_implementation, dtype=self.dtype,
                       param_dtype=self.param_dtype, name="conv")(y, use_running_average)
        return resize(y, x.shape[1:3], axes=(1, 2))


class PyramidPoolingModule(nn.Module):
    """PSPNet pooling: one :class:`PyramidPoolingBlock` per scale (``blocks_i``)."""

    pool_scales: Sequence[int]
    channels: int
    conv_implementation: str | None = None
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: Array, use_running_average: bool = True) -> list[Array]:
        return [PyramidPoolingBlock(scale, self.channels, self.conv_implementation, self.dtype, self.param_dtype,
                                    name=f"blocks_{i}")(
                    x, use_running_average) for i, scale in enumerate(self.pool_scales)]


class UperHead(nn.Module):
    """UperNet decode head on 4 feature maps ``[B, Hi, Wi, C]`` -> logits ``[B, H0, W0, num_labels]``."""

    channels: int
    num_labels: int
    pool_scales: Sequence[int] = (1, 2, 3, 6)
    conv_implementation: str | None = None
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, features: Sequence[Array], use_running_average: bool = True) -> Array:
        conv = lambda k, name: ConvModule(self.channels, k, padding=k // 2,
                                          conv_implementation=self.conv_implementation, dtype=self.dtype,
                                          param_dtype=self.param_dtype, name=name)
        laterals = [conv(1, f"lateral_convs_{i}")(x, use_running_average) for i, x in enumerate(features[:-1])]
        top = features[-1]
        psp = PyramidPoolingModule(self.pool_scales, self.channels, self.conv_implementation, self.dtype,
                                   self.param_dtype, name="psp_modules")(top, use_running_average)
        laterals.append(conv(3, "psp_bottleneck")(jnp.concatenate([top, *psp], axis=-1), use_running_average))
        for i in range(len(laterals) - 1, 0, -1):  # top-down path
            laterals[i - 1] = laterals[i - 1] + resize(laterals[i], laterals[i - 1].shape[1:3], axes=(1, 2))
        outs = [conv(3, f"fpn_convs_{i}")(laterals[i], use_running_average) for i in range(len(laterals) - 1)]
        outs.append(laterals[-1])
        size = outs[0].shape[1:3]
        outs = [outs[0]] + [resize(x, size, axes=(1, 2)) for x in outs[1:]]
        x = conv(3, "fpn_bottleneck")(jnp.concatenate(outs, axis=-1), use_running_average)
        return _classifier(self.num_labels, self.dtype, self.param_dtype)(x)


class FCNHead(nn.Module):
    """Auxiliary FCN head on ``features[in_index]``: ``num_convs`` ConvModules
    (+ a concat-input conv) -> 1x1 classifier."""

    channels: int
    num_labels: int
    num_convs: int = 1
    concat_input: bool = False
    in_index: int = 2
    kernel_size: int = 3
    dilation: int = 1
    conv_implementation: str | None = None
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, features: Sequence[Array], use_running_average: bool = True) -> Array:
        k = self.kernel_size
        residual = x = features[self.in_index]
        for i in range(self.num_convs):
            x = ConvModule(self.channels, k, padding=(k // 2) * self.dilation, dilation=self.dilation,
                           conv_implementation=self.conv_implementation, dtype=self.dtype,
                           param_dtype=self.param_dtype, name=f"convs_{i}")(x, use_running_average)
        if self.concat_input:
            x = ConvModule(self.channels, k, padding=k // 2, conv_implementation=self.conv_implementation,
                           dtype=self.dtype, param_dtype=self.param_dtype,
                           name="conv_cat")(jnp.concatenate([residual, x], axis=-1), use_running_average)
        return _classifier(self.num_labels, self.dtype, self.param_dtype)(x)
