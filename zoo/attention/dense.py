"""Dense (full) scaled dot-product attention: the reference kernel of the zoo.

Every kernel in ``zoo.attention`` has this signature::

    out, probs = kernel(query, key, value, *, mask=None, bias=None, head_mask=None,
                        scale=None, dropout_rate=0.0, dropout_rng=None,
                        deterministic=True, return_probs=False)

with ``query`` ``[B, Lq, H, D]``, ``key``/``value`` ``[B, Lk, H, D]``, ``out``
``[B, Lq, H, D]`` and ``probs`` ``[B, H, Lq, Lk]`` (``None`` unless requested).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from zoo.rng import bernoulli

Array = jax.Array


IMPLEMENTATIONS = (None, "xla", "cudnn")


def _check_cudnn(return_probs: bool, dropout_active: bool, head_mask) -> None:
    """``implementation="cudnn"`` asked for explicitly: refuse what cuDNN's fused kernel cannot do
    (rather than silently dropping it). The automatic choice falls back to XLA instead."""
    unsupported = [what for what, asked in (
        ("attention dropout in training (dropout_rate > 0 with deterministic=False)", dropout_active),
        ("head_mask", head_mask is not None),
        ("returning the attention probabilities (return_probs / output_attentions)", return_probs),
    ) if asked]
    if unsupported:
        raise ValueError(f"implementation='cudnn' cannot do {', '.join(unsupported)}: cuDNN's fused attention "
                         "has no such input or output; use implementation=None (XLA where cuDNN does not "
                         "apply) or 'xla'")


def check_qkv(query: Array, key: Array, value: Array) -> None:
    """The shapes every kernel takes: ``query [B, Lq, H, D]``, ``key``/``value [B, Lk, H, D]``."""
    if query.ndim != 4 or key.ndim != 4 or value.ndim != 4:
        raise ValueError(
            f"attention expects [batch, length, heads, head_dim] arrays, got query {query.shape}, "
            f"key {key.shape}, value {value.shape}"
        )
    if key.shape != value.shape or query.shape[0] != key.shape[0] or query.shape[2:] != key.shape[2:]:
        raise ValueError(f"attention shapes disagree: query {query.shape}, key {key.shape}, value {value.shape}")


def _full_scores(x: Array | None, query: Array, key: Array) -> Array | None:
    """``x`` (a mask or bias broadcastable to ``[B, H, Lq, Lk]``) as 4-d with full ``Lq, Lk``.

    jax's cuDNN wrapper takes batch and head axes of size 1 but requires both length axes in
    full, so a key-padding mask ``[B, 1, 1, Lk]`` (what the models pass) is broadcast over the
    queries; without this the cuDNN path raises "Bias must have same seq length as QKV".
    """
    if x is None:
        return None
    x = jnp.asarray(x)
    x = x.reshape((1,) * (4 - x.ndim) + x.shape)
    return jnp.broadcast_to(x, x.shape[:2] + (query.shape[1], key.shape[1]))


def _use_cudnn(query: Array, return_probs: bool, dropout_active: bool, head_mask) -> bool:
    """cuDNN flash attention applies on GPU in half precision when no probs are needed."""
    return jax.default_backend() == "gpu" and cudnn_applies(query, return_probs, dropout_active, head_mask)


def cudnn_applies(query: Array, return_probs: bool, dropout_active: bool, head_mask) -> bool:
    """What cuDNN's fused kernel can do, whatever the platform: half precision, head_dim <= 128
    and a multiple of 8, no probabilities, no dropout, no head mask."""
    return (
        query.dtype in (jnp.bfloat16, jnp.float16)
        and not return_probs
        and not dropout_active
        and head_mask is None
        and query.shape[-1] <= 128
        and query.shape[-1] % 8 == 0
    )


def dot_product_attention(
    query: Array,
    key: Array,
    value: Array,
    *,
    mask: Array | None = None,
    bias: Array | None = None,
    head_mask: Array | None = None,
    scale: float | None = None,
    dropout_rate: float = 0.0,
    dropout_rng: Array | None = None,
    deterministic: bool = True,
    return_probs: bool = False,
    implementation: str | None = None,
) -> tuple[Array, Array | None]:
    """softmax(q k^T * scale + bias, masked) v.

    Args:
      query: ``[B, Lq, H, D]``. key, value: ``[B, Lk, H, D]``.
      mask: boolean, broadcastable to ``[B, H, Lq, Lk]``; True keeps a score. Masked
        scores are set to the dtype's minimum (as HF's eager path), so a fully masked
        row attends uniformly instead of producing NaN.
      bias: additive float scores broadcastable to ``[B, H, Lq, Lk]``, added after scaling.
      head_mask: multiplies the probabilities (after dropout), broadcastable to
        ``[B, H, Lq, Lk]`` (e.g. ``[H, 1, 1]``), as HF's ``head_mask``.
      scale: defaults to ``D ** -0.5``.
      dropout_rate, dropout_rng, deterministic: dropout on the probabilities.
      return_probs: also return the probabilities ``[B, H, Lq, Lk]``.
      implementation: ``None`` (cuDNN when it applies, else XLA), ``"xla"`` or ``"cudnn"``
        (a ValueError if dropout in training, ``head_mask`` or ``return_probs`` is asked for,
        which cuDNN's fused kernel cannot do).
    """
    check_qkv(query, key, value)
    head_dim = query.shape[-1]
    scale = head_dim**-0.5 if scale is None else scale
    dropout_active = dropout_rate > 0.0 and not deterministic

    if implementation not in IMPLEMENTATIONS:
        raise ValueError(f"attention implementation {implementation!r} is not one of {IMPLEMENTATIONS}")
    if implementation == "cudnn":
        _check_cudnn(return_probs, dropout_active, head_mask)
    if implementation == "cudnn" or (
        implementation is None and _use_cudnn(query, return_probs, dropout_active, head_mask)
    ):
        out = jax.nn.dot_product_attention(
            query, key, value, bias=_full_scores(bias, query, key), mask=_full_scores(mask, query, key),
            scale=scale, implementation="cudnn",
        )
        return out, None

    q, k, v = (jnp.swapaxes(x, 1, 2) for x in (query, key, value))  # [B, H, L, D]: batched matmuls
    keep = None
    if dropout_active:
        if dropout_rng is None:
            raise ValueError("attention dropout in training mode needs a dropout_rng")
        keep = bernoulli(dropout_rng, 1.0 - dropout_rate, q.shape[:3] + k.shape[2:3])
    # CPU only (see QUERY_BLOCK); decided when tracing, as a lax.platform_dependent switch
    # would stand between the attention and its neighbours' fusions
    blocks = query_blocks(q.shape[2]) if jax.default_backend() == "cpu" else ((0, q.shape[2]),)
    out, probs = _xla_attention_blocked(q, k, v, mask, bias, head_mask, keep, blocks=blocks, scale=scale,
                                        dropout_rate=dropout_rate, return_probs=return_probs)
    return jnp.swapaxes(out, 1, 2), probs


# XLA:CPU fuses a whole attention (q k^T, softmax, p v) into one YNNPACK subgraph, which
# slows down 4-5x once the query length passes 256 (8 x 6 heads x 64, Lk = 260: 21.7 ms, the
# same in query blocks of 130: 5.8 ms; Lq 256: 4.4 ms; benchmarks/README.md). Every query row's
# softmax is its own, so on a CPU the queries go in blocks of at most this many rows: the
# same values up to float32 rounding (tests/test_attention_query_blocks.py).
QUERY_BLOCK = 256


def query_blocks(length: int, block: int = QUERY_BLOCK) -> tuple[tuple[int, int], ...]:
    """``(start, stop)`` of equal query blocks of at most ``block`` rows covering ``length``."""
    count = -(-length // block)
    step = -(-length // count)
    return tuple((i, min(i + step, length)) for i in range(0, length, step))


def _rows(x: Array | None, start: int, stop: int, length: int) -> Array | None:
    """Query rows ``start:stop`` of an array broadcastable to ``[B, H, Lq, Lk]``."""
    if x is None or x.ndim < 2 or x.shape[-2] != length:
        return x
    return x[..., start:stop, :]


def _xla_attention_blocked(q, k, v, mask, bias, head_mask, keep, *, blocks, scale, dropout_rate, return_probs):
    length = q.shape[2]
    outs, probs = [], []
    for start, stop in blocks:
        rows = lambda x: _rows(x, start, stop, length)
        out, p = _xla_attention(q[:, :, start:stop], k, v,
                                rows(mask), rows(bias), rows(head_mask), rows(keep), scale=scale,
                                dropout_rate=dropout_rate, return_probs=return_probs)
        outs.append(out)
        probs.append(p)
    if len(blocks) == 1:
        return outs[0], probs[0]
    return jnp.concatenate(outs, 2), (jnp.concatenate(probs, 2) if return_probs else None)


def _xla_attention(q, k, v, mask, bias, head_mask, keep, *, scale, dropout_rate, return_probs):
    """softmax(q k^T * scale + bias, masked) v on ``[B, H, L, D]`` operands; ``keep`` the
    dropout mask (or None)."""
    dtype = q.dtype
    scores = jnp.matmul(q, jnp.swapaxes(k, -1, -2)) * jnp.asarray(scale, dtype)
    # Softmax statistics in at least float32 for half-precision inputs.
    scores = scores.astype(jnp.promote_types(scores.dtype, jnp.float32))
    if bias is not None:
        scores = scores + bias.astype(scores.dtype)
    if mask is not None:  # additive, as HF's eager path: a fully masked row attends uniformly
        scores = scores + jnp.where(mask, jnp.zeros((), scores.dtype), jnp.finfo(scores.dtype).min)
    weights = jnp.exp(scores - jax.lax.stop_gradient(scores.max(axis=-1, keepdims=True)))
    denominator = weights.sum(axis=-1, keepdims=True)  # [B, H, Lq, 1]
    if return_probs:
        weights = weights / denominator
    if keep is not None:
        weights = jnp.where(keep, weights / (1.0 - dropout_rate), jnp.zeros_like(weights))
    if head_mask is not None:
        weights = weights * head_mask.astype(weights.dtype)
    out = jnp.matmul(weights.astype(dtype), v)
    if not return_probs:  # late normalisation: divide [B, H, Lq, D] instead of [B, H, Lq, Lk]
        out = (out.astype(denominator.dtype) / denominator).astype(dtype)
    probs = weights.astype(dtype) if return_probs else None
    return out, probs
