"""Fused (flash) dense attention in Pallas: forward and blocked backward.

Same signature as :func:`zoo.attention.dense.dot_product_attention` (plus ``backend``,
``block_q``, ``block_k``), same semantics: masked scores get ``finfo(float32).min`` added
(HF eager: a fully masked row attends uniformly over the real keys), ``bias`` is added
after scaling, ``head_mask`` (per head, broadcastable to ``[B, H, 1, 1]``) scales the output.

Structure (FlashAttention-2): the wrapper moves to ``[B, H, L, D]`` and pads lengths to
the tile (and, for Triton, head_dim to a power of two >= 16). The forward grid is
(B, H, query tiles); each program holds one query tile and the keys/values of its (b, h)
and loops over key tiles with an online softmax (running max, denominator and
accumulator in float32), never building an Lq x Lk array. Padded keys are excluded
outright (-inf), not given ``finfo.min``. Residuals are the output and the per-row max
and denominator (not their logsumexp: for a fully masked row the max is ``finfo.min``
and ``min + log(l)`` rounds back to ``min``). The backward is two kernels: dq (and the
bias gradient, the dS tiles) looping over key tiles, and dk/dv looping over query tiles,
with ``delta = rowsum(dO * O)``. The bias gradient is written as the dS tiles of every
(b, h), ``[B, H, Lq, Lk]`` float32, and summed over the dims the bias broadcasts; it is
skipped when the bias is not differentiated (``symbolic_zeros``).

Masks and biases travel in their compact broadcast shapes (``[B or 1, H or 1, Lq or 1,
Lk]``): their BlockSpecs index 0 on broadcast dims. Not supported (ValueError):
``return_probs=True``, dropout in training, a ``head_mask`` that varies over queries/keys.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl
from jax.experimental.pallas import tpu as pltpu
from jax.experimental.pallas import triton as plgpu_triton

from zoo.attention.dense import check_qkv
from zoo.attention.pallas_support import (by_platform, check_backend, interpret_flag, pad_axis, refuse_unfused,
                                          round_up)

Array = jax.Array

_MASKED = float(jnp.finfo(jnp.float32).min)  # what a masked score gets added (dense.py's value)
_GPU_NUM_WARPS = 4
_GPU_NUM_STAGES = 2


def _next_pow2(n: int) -> int:
    return 1 << max(0, (n - 1).bit_length())


def _tile(backend: str, length: int, asked: int | None) -> tuple[int, int]:
    """(tile, padded length) for one sequence axis on ``backend``.

    An asked size is a hint, rounded up to what the backend needs (with ``backend=None``
    every backend's branch is traced, so one value has to suit them all)."""
    if asked is not None and (isinstance(asked, bool) or not isinstance(asked, int) or asked <= 0):
        raise ValueError(f"block size must be a positive int, got {asked!r}")
    if backend == "tpu":  # Mosaic: tiles on the lane dim are multiples of 128
        # 128 by default: the dq kernel holds a (block_q, Lk) bias block and dS block
        # (double-buffered), 4 MB at Lk = 4096 in float32; 256 fits larger VMEM budgets only.
        tile = round_up(asked, 128) if asked else 128
        tile = min(tile, round_up(length, 128))
    elif backend == "gpu":  # Triton: power-of-two tiles, dots need every dim >= 16
        tile = _next_pow2(max(asked, 16)) if asked else 64
        tile = min(tile, max(16, _next_pow2(length)))
    else:  # interpret: small tiles, so tests cross many tile boundaries
        tile = min(asked or 16, round_up(length, 8))
    return tile, round_up(length, tile)


def _head_dim_padded(backend: str, d: int) -> int:
    return max(16, _next_pow2(d)) if backend == "gpu" else d


def _compiler_params(backend: str, ndims: int = 3):
    if backend == "tpu":
        return pltpu.CompilerParams(dimension_semantics=("parallel",) * ndims)
    if backend == "gpu":
        return plgpu_triton.CompilerParams(num_warps=_GPU_NUM_WARPS, num_stages=_GPU_NUM_STAGES)
    return None


def _dot(a, b, *, trans_a=False, trans_b=False, precision=None):
    """2-D matmul with float32 accumulation; ``trans_b`` as contracting dims (q k^T, dO v^T)."""
    if trans_a:  # an explicit transpose, as the reference TPU/GPU kernels write p.T @ dO
        a = a.T
    dims = (((1,), (1 if trans_b else 0,)), ((), ()))
    return lax.dot_general(a, b, dims, precision=precision, preferred_element_type=jnp.float32)


def _precision(dtype):
    return lax.Precision.HIGHEST if jnp.dtype(dtype) == jnp.float32 else lax.Precision.DEFAULT


def _scores(q, k, *, scale, precision, bias=None, mask=None, key_valid=None):
    """Scores of a (query tile, key tile): q k^T * scale + bias + mask term, padded keys -inf."""
    s = _dot(q, k, trans_b=True, precision=precision) * scale
    if bias is not None:
        s = s + bias.astype(jnp.float32)
    if mask is not None:
        s = s + jnp.where(mask != 0, jnp.float32(0.0), jnp.float32(_MASKED))
    if key_valid is not None:
        s = jnp.where(key_valid, s, -jnp.inf)
    return s


def _key_valid(start, bk: int, lk: int, lk_pad: int, column: bool = False):
    """Which keys of the tile at ``start`` are real (None: all): a [1, bk] row, or [bk, 1]."""
    if lk == lk_pad:
        return None
    shape, axis = ((bk, 1), 0) if column else ((1, bk), 1)
    return (start + lax.broadcasted_iota(jnp.int32, shape, axis)) < lk


# ----------------------------------------------------------------------------- kernels


def _fwd_kernel(*refs, scale, bk, lk, lk_pad, has_mask, has_bias, precision):
    q_ref, k_ref, v_ref, *rest = refs
    mask_ref = rest.pop(0) if has_mask else None
    bias_ref = rest.pop(0) if has_bias else None
    o_ref, m_ref, l_ref = rest
    q = q_ref[...]
    bq = q.shape[0]

    def body(j, carry):
        acc, m, l = carry
        start = pl.multiple_of(j * bk, bk)
        keys = pl.ds(start, bk)
        k = k_ref[keys, :]
        v = v_ref[keys, :]
        s = _scores(q, k, scale=scale, precision=precision,
                    bias=None if bias_ref is None else bias_ref[:, keys],
                    mask=None if mask_ref is None else mask_ref[:, keys],
                    key_valid=_key_valid(start, bk, lk, lk_pad))
        m_new = jnp.maximum(m, jnp.max(s, axis=-1, keepdims=True))
        alpha = jnp.exp(m - m_new)
        p = jnp.exp(s - m_new)
        l = alpha * l + jnp.sum(p, axis=-1, keepdims=True)
        acc = alpha * acc + _dot(p.astype(v.dtype), v, precision=precision)
        return acc, m_new, l

    init = (jnp.zeros((bq, q.shape[1]), jnp.float32),
            jnp.full((bq, 1), -jnp.inf, jnp.float32),
            jnp.zeros((bq, 1), jnp.float32))
    acc, m, l = lax.fori_loop(0, lk_pad // bk, body, init)
    o_ref[...] = (acc / l).astype(o_ref.dtype)
    m_ref[...] = m
    l_ref[...] = l


def _dq_kernel(*refs, scale, bk, lk, lk_pad, has_mask, has_bias, with_dbias, precision):
    q_ref, k_ref, v_ref, do_ref, m_ref, l_ref, delta_ref, *rest = refs
    mask_ref = rest.pop(0) if has_mask else None
    bias_ref = rest.pop(0) if has_bias else None
    dq_ref = rest.pop(0)
    dbias_ref = rest.pop(0) if with_dbias else None
    q = q_ref[...]
    do = do_ref[...]
    m = m_ref[...]
    inv_l = 1.0 / l_ref[...]
    delta = delta_ref[...]

    def body(j, dq):
        start = pl.multiple_of(j * bk, bk)
        keys = pl.ds(start, bk)
        k = k_ref[keys, :]
        v = v_ref[keys, :]
        s = _scores(q, k, scale=scale, precision=precision,
                    bias=None if bias_ref is None else bias_ref[:, keys],
                    mask=None if mask_ref is None else mask_ref[:, keys],
                    key_valid=_key_valid(start, bk, lk, lk_pad))
        p = jnp.exp(s - m) * inv_l
        dp = _dot(do, v, trans_b=True, precision=precision)
        ds = p * (dp - delta)
        if dbias_ref is not None:
            dbias_ref[:, keys] = ds.astype(dbias_ref.dtype)
        return dq + _dot(ds.astype(k.dtype), k, precision=precision)

    dq = lax.fori_loop(0, lk_pad // bk, body, jnp.zeros(q.shape, jnp.float32))
    dq_ref[...] = (dq * scale).astype(dq_ref.dtype)


def _dkv_kernel(*refs, scale, bq, bk, lk, lk_pad, lq_pad, has_mask, mask_rows, has_bias, precision):
    """dK, dV of one key tile, looping over query tiles, in transposed orientation: tiles are
    [keys, queries] (s^T = k q^T), so the per-query statistics are lane-dense rows
    ``[1, Lq]`` (not ``[Lq, 1]`` columns, which a TPU pads to 128 lanes) and p^T dO, dS^T q
    need no transposes. Mask and bias arrive transposed, ``[.., Lk, Lq or 1]``."""
    q_ref, k_ref, v_ref, do_ref, m_ref, l_ref, delta_ref, *rest = refs
    mask_ref = rest.pop(0) if has_mask else None
    bias_ref = rest.pop(0) if has_bias else None
    dk_ref, dv_ref = rest
    k = k_ref[...]
    v = v_ref[...]
    key_valid = _key_valid(pl.program_id(2) * bk, bk, lk, lk_pad, column=True)
    mask_all = mask_ref[...] if (mask_ref is not None and not mask_rows) else None  # [bk, 1]

    def body(i, carry):
        dk, dv = carry
        rows = pl.ds(pl.multiple_of(i * bq, bq), bq)
        q = q_ref[rows, :]
        do = do_ref[rows, :]
        mask = mask_all if mask_all is not None else (None if mask_ref is None else mask_ref[:, rows])
        s_t = _scores(k, q, scale=scale, precision=precision,
                      bias=None if bias_ref is None else bias_ref[:, rows],
                      mask=mask, key_valid=key_valid)  # [bk, bq]
        p_t = jnp.exp(s_t - m_ref[:, rows]) * (1.0 / l_ref[:, rows])
        dv = dv + _dot(p_t.astype(do.dtype), do, precision=precision)
        dp_t = _dot(v, do, trans_b=True, precision=precision)
        ds_t = p_t * (dp_t - delta_ref[:, rows])
        dk = dk + _dot(ds_t.astype(q.dtype), q, precision=precision)
        return dk, dv

    zeros = jnp.zeros(k.shape, jnp.float32)
    dk, dv = lax.fori_loop(0, lq_pad // bq, body, (zeros, zeros))
    dk_ref[...] = (dk * scale).astype(dk_ref.dtype)
    dv_ref[...] = dv.astype(dv_ref.dtype)


# ----------------------------------------------------------------------------- launches


class _Layout:
    """Padded [B, H, L, D] geometry of one call on one backend."""

    def __init__(self, backend, q, k, block_q, block_k):
        self.b, self.lq, self.h, self.d = q.shape
        self.lk = k.shape[1]
        self.bq, self.lq_pad = _tile(backend, self.lq, block_q)
        self.bk, self.lk_pad = _tile(backend, self.lk, block_k)
        self.dp = _head_dim_padded(backend, self.d)

    def heads_first(self, x, length):  # [B, L, H, D] -> padded [B, H, Lpad, Dp]
        x = jnp.swapaxes(x, 1, 2)
        return pad_axis(pad_axis(x, 2, length), 3, self.dp)

    def back(self, x, length):  # padded [B, H, Lpad, Dp] -> [B, L, H, D]
        return jnp.swapaxes(x[:, :, :length, : self.d], 1, 2)


def _bh(shape):  # index-map pieces for a compact [b or 1, h or 1, ...] operand
    return (shape[0] > 1, shape[1] > 1)


def _compact_spec(shape, rows_block, cols_block, rows_index, cols_index):
    """BlockSpec of a compact [b|1, h|1, rows, cols] operand on a (b, h, t) grid."""
    vary_b, vary_h = _bh(shape)

    def index(b, h, t):
        return (b if vary_b else 0, h if vary_h else 0, rows_index(t), cols_index(t))

    return pl.BlockSpec((None, None, rows_block, cols_block), index)


def _prep_mask_bias(lay, mask, bias):
    if mask is not None:  # [mb, mh, 1 or Lq, Lk] int8; padded query rows keep (1), keys are cut anyway
        mask = pad_axis(mask, 3, lay.lk_pad, 1)
        if mask.shape[2] > 1:
            mask = pad_axis(mask, 2, lay.lq_pad, 1)
    if bias is not None:  # [bb, bh, Lq, Lk]
        bias = pad_axis(pad_axis(bias, 2, lay.lq_pad), 3, lay.lk_pad)
    return mask, bias


def _fwd_launch(q, k, v, mask, bias, *, scale, block_q, block_k, backend):
    lay = _Layout(backend, q, k, block_q, block_k)
    qp, kp, vp = lay.heads_first(q, lay.lq_pad), lay.heads_first(k, lay.lk_pad), lay.heads_first(v, lay.lk_pad)
    mask, bias = _prep_mask_bias(lay, mask, bias)
    bq, bk = lay.bq, lay.bk
    row = lambda t: t
    zero = lambda t: 0
    in_specs = [
        pl.BlockSpec((None, None, bq, lay.dp), lambda b, h, i: (b, h, i, 0)),
        pl.BlockSpec((None, None, lay.lk_pad, lay.dp), lambda b, h, i: (b, h, 0, 0)),
        pl.BlockSpec((None, None, lay.lk_pad, lay.dp), lambda b, h, i: (b, h, 0, 0)),
    ]
    args = [qp, kp, vp]
    if mask is not None:
        rows = mask.shape[2] > 1
        in_specs.append(_compact_spec(mask.shape, bq if rows else 1, lay.lk_pad, row if rows else zero, zero))
        args.append(mask)
    if bias is not None:
        in_specs.append(_compact_spec(bias.shape, bq, lay.lk_pad, row, zero))
        args.append(bias)
    stat_spec = pl.BlockSpec((None, None, bq, 1), lambda b, h, i: (b, h, i, 0))
    kernel = functools.partial(
        _fwd_kernel, scale=scale, bk=bk, lk=lay.lk, lk_pad=lay.lk_pad,
        has_mask=mask is not None, has_bias=bias is not None, precision=_precision(q.dtype))
    stat_shape = jax.ShapeDtypeStruct((lay.b, lay.h, lay.lq_pad, 1), jnp.float32)
    o, m, l = pl.pallas_call(
        kernel,
        grid=(lay.b, lay.h, lay.lq_pad // bq),
        in_specs=in_specs,
        out_specs=[pl.BlockSpec((None, None, bq, lay.dp), lambda b, h, i: (b, h, i, 0)), stat_spec, stat_spec],
        out_shape=[jax.ShapeDtypeStruct(qp.shape, q.dtype), stat_shape, stat_shape],
        compiler_params=_compiler_params(backend),
        interpret=interpret_flag(backend),
        name="flash_attention_fwd",
    )(*args)
    return lay.back(o, lay.lq), m[:, :, : lay.lq], l[:, :, : lay.lq]


def _bwd_launch(q, k, v, mask, bias, out, m, l, dout, *, with_dbias, scale, block_q, block_k, backend):
    lay = _Layout(backend, q, k, block_q, block_k)
    bq, bk = lay.bq, lay.bk
    qp, kp, vp = lay.heads_first(q, lay.lq_pad), lay.heads_first(k, lay.lk_pad), lay.heads_first(v, lay.lk_pad)
    dop = lay.heads_first(dout, lay.lq_pad)
    delta = jnp.sum(dout.astype(jnp.float32) * out.astype(jnp.float32), axis=-1)  # [B, Lq, H]
    delta = pad_axis(jnp.swapaxes(delta, 1, 2)[..., None], 2, lay.lq_pad)
    m = pad_axis(m, 2, lay.lq_pad)
    l = pad_axis(l, 2, lay.lq_pad, 1)
    mask, bias = _prep_mask_bias(lay, mask, bias)
    precision = _precision(q.dtype)
    has_mask, has_bias = mask is not None, bias is not None
    with_dbias = with_dbias and has_bias
    mask_rows = has_mask and mask.shape[2] > 1
    row = lambda t: t
    zero = lambda t: 0
    extra_args = ([mask] if has_mask else []) + ([bias] if has_bias else [])

    # dq (+ dbias): grid over query tiles, loop over key tiles
    qtile = pl.BlockSpec((None, None, bq, lay.dp), lambda b, h, i: (b, h, i, 0))
    kfull = pl.BlockSpec((None, None, lay.lk_pad, lay.dp), lambda b, h, i: (b, h, 0, 0))
    stat = pl.BlockSpec((None, None, bq, 1), lambda b, h, i: (b, h, i, 0))
    specs = [qtile, kfull, kfull, qtile, stat, stat, stat]
    if has_mask:
        specs.append(_compact_spec(mask.shape, bq if mask_rows else 1, lay.lk_pad, row if mask_rows else zero, zero))
    if has_bias:
        specs.append(_compact_spec(bias.shape, bq, lay.lk_pad, row, zero))
    out_specs = [qtile]
    out_shape = [jax.ShapeDtypeStruct(qp.shape, q.dtype)]
    if with_dbias:  # the dS tiles, [B, H, Lq, Lk] float32 (summed below over broadcast b/h)
        out_specs.append(pl.BlockSpec((None, None, bq, lay.lk_pad), lambda b, h, i: (b, h, i, 0)))
        out_shape.append(jax.ShapeDtypeStruct((lay.b, lay.h, lay.lq_pad, lay.lk_pad), jnp.float32))
    res = pl.pallas_call(
        functools.partial(_dq_kernel, scale=scale, bk=bk, lk=lay.lk, lk_pad=lay.lk_pad,
                          has_mask=has_mask, has_bias=has_bias, with_dbias=with_dbias, precision=precision),
        grid=(lay.b, lay.h, lay.lq_pad // bq),
        in_specs=specs,
        out_specs=out_specs,
        out_shape=out_shape,
        compiler_params=_compiler_params(backend),
        interpret=interpret_flag(backend),
        name="flash_attention_dq",
    )(qp, kp, vp, dop, m, l, delta, *extra_args)
    dq = res[0]
    dbias = None
    if with_dbias:
        dbias = res[1][:, :, : lay.lq, : lay.lk]
        sum_axes = tuple(a for a in (0, 1) if bias.shape[a] == 1 and dbias.shape[a] > 1)
        if sum_axes:
            dbias = jnp.sum(dbias, axis=sum_axes, keepdims=True)
        dbias = dbias.astype(bias.dtype)

    # dk, dv: grid over key tiles, loop over query tiles
    # (transposed orientation: statistics as [1, Lq] rows, mask and bias as [.., Lk, Lq or 1])
    qfull = pl.BlockSpec((None, None, lay.lq_pad, lay.dp), lambda b, h, j: (b, h, 0, 0))
    ktile = pl.BlockSpec((None, None, bk, lay.dp), lambda b, h, j: (b, h, j, 0))
    statrow = pl.BlockSpec((None, None, 1, lay.lq_pad), lambda b, h, j: (b, h, 0, 0))
    specs = [qfull, ktile, ktile, qfull, statrow, statrow, statrow]
    as_rows = lambda x: x.reshape(x.shape[:2] + (1, x.shape[2]))  # [B, H, L, 1] -> [B, H, 1, L]
    extra_args = []
    if has_mask:
        mask_t = jnp.swapaxes(mask, 2, 3)
        specs.append(_compact_spec(mask_t.shape, bk, lay.lq_pad if mask_rows else 1, row, zero))
        extra_args.append(mask_t)
    if has_bias:
        bias_t = jnp.swapaxes(bias, 2, 3)
        specs.append(_compact_spec(bias_t.shape, bk, lay.lq_pad, row, zero))
        extra_args.append(bias_t)
    dk, dv = pl.pallas_call(
        functools.partial(_dkv_kernel, scale=scale, bq=bq, bk=bk, lk=lay.lk, lk_pad=lay.lk_pad,
                          lq_pad=lay.lq_pad, has_mask=has_mask, mask_rows=mask_rows,
                          has_bias=has_bias, precision=precision),
        grid=(lay.b, lay.h, lay.lk_pad // bk),
        in_specs=specs,
        out_specs=[ktile, ktile],
        out_shape=[jax.ShapeDtypeStruct(kp.shape, k.dtype), jax.ShapeDtypeStruct(vp.shape, v.dtype)],
        compiler_params=_compiler_params(backend),
        interpret=interpret_flag(backend),
        name="flash_attention_dkv",
    )(qp, kp, vp, dop, as_rows(m), as_rows(l), as_rows(delta), *extra_args)
    return lay.back(dq, lay.lq), lay.back(dk, lay.lk), lay.back(dv, lay.lk), dbias


# ----------------------------------------------------------------------------- custom vjp


@functools.partial(jax.custom_vjp, nondiff_argnums=(5, 6, 7, 8))
def _flash(q, k, v, mask, bias, scale, block_q, block_k, backend):
    out, _, _ = by_platform(functools.partial(_fwd_launch, scale=scale, block_q=block_q, block_k=block_k),
                            q, k, v, mask, bias, backend=backend)
    return out


def _value(x):
    return None if x is None else x.value


def _flash_fwd(q, k, v, mask, bias, scale, block_q, block_k, backend):
    # symbolic_zeros: leaves arrive as CustomVJPPrimal(value, perturbed). A bias that is not
    # differentiated (a constant, e.g. a mask folded into a bias) gets no dS write-out, which
    # would otherwise be a [B, H, Lq, Lk] float32 array in the backward.
    want_dbias = () if bias is not None and bias.perturbed else None  # flag in the pytree structure
    q, k, v, mask, bias = q.value, k.value, v.value, _value(mask), _value(bias)
    out, m, l = by_platform(functools.partial(_fwd_launch, scale=scale, block_q=block_q, block_k=block_k),
                            q, k, v, mask, bias, backend=backend)
    return out, (q, k, v, mask, bias, out, m, l, want_dbias)


def _flash_bwd(scale, block_q, block_k, backend, residuals, dout):
    q, k, v, mask, bias, out, m, l, want_dbias = residuals
    if isinstance(dout, jax.custom_derivatives.SymbolicZero):
        return (jnp.zeros_like(q), jnp.zeros_like(k), jnp.zeros_like(v), None,
                None if want_dbias is None else jnp.zeros_like(bias))
    dq, dk, dv, dbias = by_platform(
        functools.partial(_bwd_launch, with_dbias=want_dbias is not None, scale=scale, block_q=block_q,
                          block_k=block_k),
        q, k, v, mask, bias, out, m, l, dout, backend=backend)
    return dq, dk, dv, None, dbias


_flash.defvjp(_flash_fwd, _flash_bwd, symbolic_zeros=True)


# ----------------------------------------------------------------------------- public


def _as_4d(x, name: str, full: tuple[int, int, int, int]):
    """``x`` as a 4-D array broadcastable to ``full`` (size-1 dims kept), or a ValueError."""
    if x.ndim > 4:
        raise ValueError(f"{name} of shape {x.shape} has more than 4 dims; expected broadcastable to {full}")
    x4 = x.reshape((1,) * (4 - x.ndim) + x.shape)
    if any(s not in (1, f) for s, f in zip(x4.shape, full)):
        raise ValueError(f"{name} of shape {x.shape} is not broadcastable to [B, H, Lq, Lk] = {list(full)}")
    return x4


def flash_attention(
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
    backend: str | None = None,
    block_q: int | None = None,
    block_k: int | None = None,
) -> tuple[Array, None]:
    """Fused softmax(q k^T * scale + bias, masked) v, as :func:`zoo.attention.dense.dot_product_attention`.

    ``backend``: ``"tpu"`` (Mosaic), ``"gpu"`` (Triton), ``"interpret"`` or ``None`` (the
    lowering platform's). ``block_q``/``block_k``: tile sizes (defaults per backend: TPU
    128, GPU 64, interpret 16); an asked size is rounded up to the backend's constraint
    (TPU: a multiple of 128, GPU: a power of two >= 16) and clamped to the padded length.
    Differentiable in query, key, value and bias (the mask gets no gradient).
    Raises ValueError for ``return_probs=True``, dropout in training and a ``head_mask``
    not broadcastable to ``[B, H, 1, 1]``.
    """
    del dropout_rng
    check_qkv(query, key, value)
    refuse_unfused("flash_attention", return_probs=return_probs, dropout_rate=dropout_rate,
                   deterministic=deterministic)
    check_backend(backend)
    b, lq, h, d = query.shape
    lk = key.shape[1]
    full = (b, h, lq, lk)
    scale = d**-0.5 if scale is None else float(scale)

    hm = None
    if head_mask is not None:
        head_mask = jnp.asarray(head_mask)
        hm4 = head_mask.reshape((1,) * (4 - head_mask.ndim) + head_mask.shape) if head_mask.ndim <= 4 else None
        if hm4 is None or hm4.shape[2:] != (1, 1) or hm4.shape[0] not in (1, b) or hm4.shape[1] not in (1, h):
            raise ValueError(f"flash_attention supports only a per-head head_mask broadcastable to [B, H, 1, 1] "
                             f"= {[b, h, 1, 1]}; got head_mask of shape {head_mask.shape}")
        hm = jnp.swapaxes(hm4, 1, 2)  # [b|1, 1, h|1, 1], to scale out [B, Lq, H, D]

    m4 = None
    if mask is not None:
        m4 = _as_4d(jnp.asarray(mask), "mask", full)
        m4 = jnp.broadcast_to(m4, m4.shape[:3] + (lk,)).astype(bool).astype(jnp.int8)  # nonzero keeps
    b4 = None
    if bias is not None:
        b4 = _as_4d(jnp.asarray(bias), "bias", full)
        b4 = jnp.broadcast_to(b4, b4.shape[:2] + (lq, lk))

    out = _flash(query, key, value, m4, b4, scale, block_q, block_k, backend)
    if hm is not None:
        out = (out.astype(jnp.promote_types(out.dtype, hm.dtype)) * hm).astype(query.dtype)
    return out, None


__all__ = ["flash_attention"]
