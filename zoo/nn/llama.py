"""LLaMA-style decoder pieces: RMSNorm, rotary position embeddings, the gated SiLU MLP."""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from zoo.nn.layers import Dense, activation, ones_init

Array = jax.Array


class RMSNorm(nn.Module):
    """``weight * x / sqrt(mean(x^2) + eps)`` over the last axis, statistics in float32 (HF's
    ``LlamaRMSNorm``/``IdeficsRMSNorm``: the normalised value is cast back to a half-precision
    weight's dtype before the multiplication). Param ``weight [C]``."""

    eps: float = 1e-6
    axis_name: str | None = "embed"
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: Array) -> Array:
        weight = self.param("weight", ones_init((self.axis_name,)), (x.shape[-1],), self.param_dtype)
        x32 = x.astype(jnp.float32)
        variance = jnp.mean(x32 * x32, axis=-1, keepdims=True)
        y = x32 * jax.lax.rsqrt(variance + self.eps)
        if jnp.dtype(self.param_dtype).itemsize < 4:
            y = y.astype(self.param_dtype)
        return (weight * y).astype(self.dtype)


def rotary_inverse_frequencies(head_dim: int, theta: float = 10000.0) -> np.ndarray:
    """``1 / theta^(2i / d)`` for ``i < d / 2``, in float32 as HF computes it."""
    exponents = np.arange(0, head_dim, 2, dtype=np.int64).astype(np.float32) / np.float32(head_dim)
    return (np.float32(1.0) / np.power(np.float32(theta), exponents, dtype=np.float32)).astype(np.float32)


def rotary_cos_sin(position_ids: Array, head_dim: int, theta: float = 10000.0, dtype=jnp.float32):
    """``position_ids [B, L]`` -> ``(cos, sin)``, each ``[B, L, head_dim]`` (the frequencies twice)."""
    freqs = position_ids.astype(jnp.float32)[..., None] * jnp.asarray(rotary_inverse_frequencies(head_dim, theta))
    emb = jnp.concatenate([freqs, freqs], axis=-1)
    return jnp.cos(emb).astype(dtype), jnp.sin(emb).astype(dtype)


def rotate_half(x: Array) -> Array:
    half = x.shape[-1] // 2
    return jnp.concatenate([-x[..., half:], x[..., :half]], axis=-1)


def apply_rotary(x: Array, cos: Array, sin: Array) -> Array:
    """Rotate ``x [B, L, H, D]`` by ``cos, sin [B, L, D]`` (HF's ``apply_rotary_pos_emb``)."""
    cos, sin = cos[:, :, None, :], sin[:, :, None, :]
    return x * cos + rotate_half(x) * sin


class GatedMLP(nn.Module):
    """``down_proj(act(gate_proj(x)) * up_proj(x))``, no biases (LLaMA's MLP)."""

    intermediate_size: int
    hidden_act: str = "silu"
    std: float = 0.02
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: Array) -> Array:
        kw = dict(std=self.std, use_bias=False, dtype=self.dtype, param_dtype=self.param_dtype)
        gate = Dense(self.intermediate_size, ("embed", "mlp"), name="gate_proj", **kw)(x)
        up = Dense(self.intermediate_size, ("embed", "mlp"), name="up_proj", **kw)(x)
        return Dense(x.shape[-1], ("mlp", "embed"), name="down_proj", **kw)(activation(self.hidden_act)(gate) * up)
