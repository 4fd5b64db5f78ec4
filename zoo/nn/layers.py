"""Basic layers with HF initializers and logical axis names on every parameter."""

from __future__ import annotations

import functools
from collections.abc import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp

Dtype = jnp.dtype | type

# HF activation names -> functions with the same numerics as transformers' ACT2FN.
def gelu(x: jax.Array) -> jax.Array:
    """Exact GELU with torch's formula ``x/2 (1 + erf(x / sqrt 2))`` (2x faster on CPU than
    ``jax.nn.gelu(approximate=False)``, which goes through ``erfc``)."""
    return x * 0.5 * (1.0 + jax.lax.erf(x * 0.7071067811865476))


ACT2FN: dict[str, Callable[[jax.Array], jax.Array]] = {
    "gelu": gelu,
    "gelu_python": gelu,
    "gelu_new": functools.partial(jax.nn.gelu, approximate=True),
    "gelu_pytorch_tanh": functools.partial(jax.nn.gelu, approximate=True),
    "gelu_fast": lambda x: 0.5 * x * (1.0 + jnp.tanh(x * 0.7978845608 * (1.0 + 0.044715 * x * x))),
    "quick_gelu": lambda x: x * jax.nn.sigmoid(1.702 * x),
    "relu": jax.nn.relu,
    "relu6": jax.nn.relu6,
    "silu": jax.nn.silu,
    "swish": jax.nn.silu,
    "tanh": jnp.tanh,
    "sigmoid": jax.nn.sigmoid,
    "leaky_relu": functools.partial(jax.nn.leaky_relu, negative_slope=0.01),
    "linear": lambda x: x,
}


def activation(name: str) -> Callable[[jax.Array], jax.Array]:
    try:
        return ACT2FN[name]
    except KeyError:
        raise ValueError(f"activation {name!r} is not supported; choose one of {sorted(ACT2FN)}") from None


def normal_init(std: float, axes: tuple[str | None, ...]):
    return nn.with_logical_partitioning(nn.initializers.normal(stddev=std), axes)


def zeros_init(axes: tuple[str | None, ...]):
    return nn.with_logical_partitioning(nn.initializers.zeros_init(), axes)


def ones_init(axes: tuple[str | None, ...]):
    return nn.with_logical_partitioning(nn.initializers.ones_init(), axes)


def Dense(
    features: int,
    axes: tuple[str | None, str | None],
    *,
    std: float = 0.02,
    use_bias: bool = True,
    dtype: Dtype | None = None,
    param_dtype: Dtype = jnp.float32,
    name: str | None = None,
) -> nn.Dense:
    """``nn.Dense`` with HF's normal(std) kernel init, zero bias, logical axes ``(in, out)``,
    and the backward pass of :func:`dense_dot_general`."""
    return nn.Dense(
        features,
        use_bias=use_bias,
        dtype=dtype,
        param_dtype=param_dtype,
        kernel_init=normal_init(std, axes),
        bias_init=zeros_init((axes[1],)),
        name=name,
        dot_general=dense_dot_general,
    )


def dense_dot_general(lhs, rhs, dimension_numbers, precision=None, preferred_element_type=None):
    """``lax.dot_general`` for ``nn.Dense`` (``[..., in] x [in, out]``) as one 2-D GEMM over the
    flattened leading axes (a free reshape): the same values, and a backward pass whose weight
    gradient ``x[N, in]^T g[N, out]`` is one 2-D GEMM too. Left to itself JAX contracts g and x
    over all their leading axes (``[B, L, in] x [B, L, out]``), and XLA:CPU builds a transposed
    ``[in, B * L]`` copy for its fast (YNNPACK) GEMM, fused into the elementwise backward that
    produces g (LayerNorm, dropout, GELU): a strided loop at 14-30 ns an element. Flattened,
    the fine-tuning step of Data2VecText base took 2.5 s instead of 3.0 s (benchmarks/README.md).
    Any other contraction is ``lax.dot_general`` as given."""
    (lc, rc), (lb, rb) = dimension_numbers
    if tuple(lc) != (lhs.ndim - 1,) or tuple(rc) != (0,) or lb or rb or rhs.ndim != 2 or lhs.ndim <= 2:
        return jax.lax.dot_general(lhs, rhs, dimension_numbers, precision=precision,
                                   preferred_element_type=preferred_element_type)
    out = jax.lax.dot_general(lhs.reshape(-1, lhs.shape[-1]), rhs, (((1,), (0,)), ((), ())), precision=precision,
                              preferred_element_type=preferred_element_type)
    return out.reshape(*lhs.shape[:-1], rhs.shape[-1])


def LayerNorm(
    eps: float,
    *,
    axis_name: str = "embed",
    dtype: Dtype | None = None,
    param_dtype: Dtype = jnp.float32,
    name: str | None = None,
) -> nn.LayerNorm:
    """PyTorch-exact LayerNorm (two-pass variance), params ``scale``/``bias``."""
    return nn.LayerNorm(
        epsilon=eps,
        use_fast_variance=False,
        dtype=dtype,
        param_dtype=param_dtype,
        scale_init=ones_init((axis_name,)),
        bias_init=zeros_init((axis_name,)),
        name=name,
    )


class _Embed(nn.Embed):
    """``nn.Embed`` for sharded training: inside :func:`zoo.parallel.activation_sharding` the
    table is gathered whole before the lookup (FSDP: a parameter is all-gathered where it is
    used) and the looked-up vectors keep the batch sharding of the ids. Without that context
    it is ``nn.Embed``. (Looking up rows of a table split along ``embed`` into a batch split
    over the same devices makes XLA replicate the whole result first.)"""

    def __call__(self, inputs):
        if not jnp.issubdtype(inputs.dtype, jnp.integer):
            raise ValueError(f"{self.name}: token ids must be integers, got {inputs.dtype}")
        (table,) = self.promote_dtype(self.embedding, dtype=self.dtype, inexact=False)
        if self.num_embeddings == 1:  # as nn.Embed: every id reads the one row
            out = jnp.broadcast_to(table, inputs.shape + (self.features,))
        else:
            out = jnp.take(nn.with_logical_constraint(table, (None, None)), inputs, axis=0)
        return nn.with_logical_constraint(out, ("batch",) + (None,) * (out.ndim - 1)) if out.ndim else out


def Embed(
    num_embeddings: int,
    features: int,
    axes: tuple[str | None, str | None] = ("vocab", "embed"),
    *,
    std: float = 0.02,
    dtype: Dtype | None = None,
    param_dtype: Dtype = jnp.float32,
    name: str | None = None,
) -> nn.Embed:
    return _Embed(
        num_embeddings,
        features,
        dtype=dtype,
        param_dtype=param_dtype,
        embedding_init=normal_init(std, axes),
        name=name,
    )
