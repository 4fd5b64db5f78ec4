"""The query/key/value projection of every attention in the zoo.

``QKVProjection`` projects hidden states to ``[B, L, H, D]`` query, key and value, the
layout of the :mod:`zoo.attention` kernels. Its three ``Dense`` layers are created in the
*calling* module (call it from that module's compact method), so their parameters sit
where each family's checkpoints put them, e.g. ``.../attention/self/query/kernel``
(BERT names ``query/key/value``, the default) or ``.../self_attn/q_proj/kernel``
(``names=QKV_PROJ``). Per projection: a bias or not (BEiT's key has none), logical axes
and the initialiser (normal with ``std``, as HF).

    qkv = QKVProjection(heads, head_dim, names=QKV_PROJ, std=cfg.initializer_range,
                        dtype=self.dtype, param_dtype=self.param_dtype)
    q, k, v = qkv(hidden_states, key_value_states)   # key/value from another source if given

A family that reuses a projection for something else (DeBERTa's shared position keys)
takes the layers first: ``layers = qkv.layers()``, ``q, k, v = qkv(x, layers=layers)``,
``qkv.split(layers[1](rel))``.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from zoo.nn.layers import Dense

Array = jax.Array

QKV_BERT = ("query", "key", "value")
QKV_PROJ = ("q_proj", "k_proj", "v_proj")


@dataclasses.dataclass(frozen=True)
class QKVProjection:
    """Query/key/value projections ``[..., E] -> [..., H, D]`` created in the calling module.

    use_bias: one flag for all three, or a ``(query, key, value)`` triple.
    axes: logical axes ``(in, out)`` of the kernels (out is the ``heads * head_dim`` axis).
    """

    num_heads: int
    head_dim: int
    names: tuple[str, str, str] = QKV_BERT
    use_bias: bool | tuple[bool, bool, bool] = True
    axes: tuple[str | None, str | None] = ("embed", "heads")
    std: float = 0.02
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32

    @property
    def features(self) -> int:
        return self.num_heads * self.head_dim

    def layers(self) -> tuple[nn.Dense, nn.Dense, nn.Dense]:
        """The query, key and value ``Dense`` layers (children of the module being run)."""
        biases = self.use_bias if isinstance(self.use_bias, tuple) else (self.use_bias,) * 3
        return tuple(Dense(self.features, self.axes, std=self.std, use_bias=bias, dtype=self.dtype,
                           param_dtype=self.param_dtype, name=name)
                     for name, bias in zip(self.names, biases, strict=True))

    def split(self, x: Array) -> Array:
        """``[..., H * D]`` -> ``[..., H, D]``."""
        return x.reshape(*x.shape[:-1], self.num_heads, self.head_dim)

    def __call__(self, hidden_states: Array, key_value_states: Array | None = None, *,
                 layers: tuple[nn.Dense, nn.Dense, nn.Dense] | None = None) -> tuple[Array, Array, Array]:
        """``(query, key, value)`` ``[B, L, H, D]``; key and value from ``key_value_states``
        (cross-attention) when given, else from ``hidden_states``."""
        query_proj, key_proj, value_proj = self.layers() if layers is None else layers
        source = hidden_states if key_value_states is None else key_value_states
        return (self.split(query_proj(hidden_states)), self.split(key_proj(source)),
                self.split(value_proj(source)))


__all__ = ["QKVProjection", "QKV_BERT", "QKV_PROJ"]
