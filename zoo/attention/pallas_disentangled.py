"""DeBERTa-v2 / SEW-D disentangled attention as a fused (flash-style) Pallas kernel.

Same semantics as :func:`zoo.attention.disentangled.disentangled_attention` (HF's
``DisentangledSelfAttention`` after the projections), without any ``[Lq, Lk]`` array in
memory: scores, XSoftmax and the position terms are formed per ``[bq, bk]`` tile with an
online softmax; the backward pass is blocked as in FlashAttention-2 (a dq kernel over key
tiles, a dk/dv kernel over query tiles, ``delta = rowsum(dO * O)``) from the saved output
and logsumexp.

Relative positions are computed, never passed in: the bucket of ``r = i - j`` depends on
the distance only, so an ``O(Lq + Lk)`` per-distance table of embedding rows (index
``clamp(bucket(delta) + span, 0, 2 span - 1)``, HF's float32 log-bucket rule through
:func:`make_log_bucket_position`) is built with XLA and the kernels read windows of it.
For every tile the distances form a contiguous window of ``bq + bk - 1`` values, so:

* ``driver="tpu"`` (Mosaic; also runs interpreted): the relative term of a tile is a
  matmul of the tile's queries (c2p) / keys (p2c) against the window of per-distance rows,
  followed by a strided ``pltpu.roll`` (the Transformer-XL skew). The backward is all
  matmul too: the roll runs the other way (stride ``W - 1`` = ``-1`` mod ``W``), and the
  per-distance gradient window accumulates in a per-(batch, head) output block that stays
  in VMEM across the sequential grid axis; XLA then scatter-adds distances into buckets.
* ``driver="gpu"`` (Triton; also runs interpreted): the forward gathers the tile's terms
  from ``q @ pos_key^T`` / ``k @ pos_query^T`` tables ``[B H, L, 2 span]`` (pointer-gather
  loads). The backward un-skews ``dS`` through a small per-program workspace in global
  memory (store, barrier, gather load), then uses the same per-distance matmuls as the
  TPU driver; the per-distance gradient is accumulated with atomic adds (Triton programs
  run in parallel), so its summation order, and the last bits of d pos_key / d pos_query,
  are not deterministic on GPU.

``backend=None`` picks by lowering platform (:func:`zoo.attention.pallas_support.by_platform`):
TPU -> Mosaic with the tpu driver, CUDA/ROCm -> Triton with the gpu driver, anything else
-> Pallas' interpreter (tests; ``driver=`` chooses which formulation it interprets).

Memory: per (batch, head) the kernels keep K and V (forward, dq) or Q and dO (dk/dv) and
the ``[Lq + Lk, D]`` per-distance rows resident (VMEM on TPU; the vmem limit is raised
from the blocks' size), masks come in query- or key-tile blocks; outside the kernels
everything is ``O(B H L (D + 2 span))``. Very long sequences on TPU (beyond ~8k at
``D = 64`` fp32) would need the key axis as a grid axis instead of an in-kernel loop.

Not supported (use the XLA kernel; the model's kernel selector does): returned
probabilities, attention dropout in training, an additive ``bias``, head masks that are not
per (batch, head). A ``relative_pos`` array is accepted only when it is concrete and
Toeplitz (it then defines the per-distance buckets); pass ``position_buckets`` /
``max_relative_positions`` instead.
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import pallas as pl
from jax.experimental.pallas import tpu as pltpu
from jax.experimental.pallas import triton as plgpu

from zoo.attention.disentangled import (
    POS_ATT_TYPES,
    _check_buckets,
    _check_pos,
    make_log_bucket_position,
)
from zoo.attention.dense import check_qkv
from zoo.attention.pallas_support import (by_platform, check_backend, interpret_flag, pad_axis, refuse_unfused,
                                          round_up)

Array = jax.Array
NEG = float(np.finfo(np.float32).min)
DRIVERS = ("tpu", "gpu")


def block_size(backend: str) -> int:
    """Query and key tile size (equal, so the distance window ``2 b`` is a power of two)."""
    return {"tpu": 128, "gpu": 64, "interpret": 16}[backend]


class _Cfg(NamedTuple):
    driver: str
    interpret: bool
    heads: int
    bq: int
    bk: int
    lq: int  # true lengths
    lk: int
    lq_p: int  # padded lengths
    lk_p: int
    dp: int  # padded head dim
    s2p: int  # padded 2 * span (gpu tables)
    c2p: bool
    p2c: bool
    mask_q: int  # 0: no mask, 1: mask without a query axis, 2: mask with one
    mask_b: bool  # mask has a batch axis
    mask_h: bool  # mask has a head axis
    inv_scale: float

    @property
    def width(self):  # distance window of a tile (>= bq + bk - 1)
        return self.bq + self.bk

    @property
    def ldist(self):
        return self.lq_p + self.lk_p


# ------------------------------------------------------------------------ tile helpers
def _dot(a, b, ta=False, tb=False):
    dims = (((0,) if ta else (1,), (1,) if tb else (0,)), ((), ()))
    return jax.lax.dot_general(a, b, dims, preferred_element_type=jnp.float32)


def _iota(shape, axis):
    return jax.lax.broadcasted_iota(jnp.int32, shape, axis)


def _valid(cfg: _Cfg, r, i0, j0, by_query: bool):
    """[1 or bq, bk] bool: real (not padded) keys the mask keeps.

    The mask block is the query tile's rows (``by_query``: forward and dq kernels) or the key
    tile's columns (dk/dv kernel), so a full ``[Lq, Lk]`` mask is never resident whole.
    """
    valid = (j0 + _iota((1, cfg.bk), 1)) < cfg.lk
    if cfg.mask_q:
        rows = pl.ds(0, 1) if cfg.mask_q == 1 else pl.ds(0, cfg.bq) if by_query else pl.ds(i0, cfg.bq)
        cols = pl.ds(j0, cfg.bk) if by_query else pl.ds(0, cfg.bk)
        valid = jnp.logical_and(valid, r["mask"][rows, cols] != 0)
    return valid


def _rel_windows(cfg: _Cfg, i0, j0):
    """Starts of the c2p (decreasing distances) and p2c (increasing) windows of a tile."""
    m_c = pl.multiple_of(cfg.lq_p - cfg.bq - i0 + j0, cfg.bq)  # (bq == bk divides every term)
    m_p = pl.multiple_of(cfg.lk_p - cfg.bk + i0 - j0, cfg.bq)
    return m_c, m_p


def _scores(cfg: _Cfg, r, q_t, k_t, i0, j0):
    """Raw (unscaled) scores of the tile, f32 [bq, bk]."""
    s = _dot(q_t, k_t, tb=True)
    if not (cfg.c2p or cfg.p2c):
        return s
    bq, bk, w = cfg.bq, cfg.bk, cfg.width
    if cfg.driver == "tpu":
        m_c, m_p = _rel_windows(cfg, i0, j0)
        if cfg.c2p:  # c2p[a, b] = S_r[a, b + bq - 1 - a]
            s_r = _dot(q_t, r["R"][pl.ds(m_c, w), :], tb=True)  # [bq, W]
            s = s + pltpu.roll(s_r, w - bq + 1, 1, stride=1, stride_axis=0)[:, :bk]
        if cfg.p2c:  # p2c^T[b, a] = S_2[b, a + bk - 1 - b]
            s_2 = _dot(k_t, r["F"][pl.ds(m_p, w), :], tb=True)  # [bk, W]
            s = s + pltpu.roll(s_2, w - bk + 1, 1, stride=1, stride_axis=0)[:, :bq].T
        return s
    a, b = _iota((bq, bk), 0), _iota((bq, bk), 1)
    t = a - b + (i0 - j0 + cfg.lk_p - 1)  # distance + lk_p - 1
    if cfg.c2p:
        s = s + r["Tc"][a + i0, r["Ic"][t]].astype(jnp.float32)
    if cfg.p2c:
        s = s + r["Tp"][b + j0, r["Ip"][t]].astype(jnp.float32)
    return s


def _unskew(cfg: _Cfg, r, ds, kind):
    """Per-distance gradient window of a tile's score gradient ``ds`` [bq, bk].

    ``kind="c2p"``: ``G[a, m] = ds[a, m - bq + 1 + a]`` ([bq, W]); ``"p2c"``:
    ``G[b, m] = ds[m - bk + 1 + b, b]`` ([bk, W]); zero outside the tile.
    """
    bq, bk, w = cfg.bq, cfg.bk, cfg.width
    if cfg.driver == "tpu":
        x, rows, cols = (ds, bq, bk) if kind == "c2p" else (ds.T, bk, bq)
        x = jnp.concatenate([x, jnp.zeros((rows, w - cols), x.dtype)], axis=1)
        return pltpu.roll(x, rows - 1, 1, stride=w - 1, stride_axis=0)
    ws = r["ws"]
    ws[...] = ds
    if not cfg.interpret:
        plgpu.debug_barrier()
    if kind == "c2p":
        a, m = _iota((bq, w), 0), _iota((bq, w), 1)
        col = m - bq + 1 + a
        ok = jnp.logical_and(col >= 0, col < bk)
        g = ws[a, jnp.clip(col, 0, bk - 1)]
    else:
        b, m = _iota((bk, w), 0), _iota((bk, w), 1)
        row = m - bk + 1 + b
        ok = jnp.logical_and(row >= 0, row < bq)
        g = ws[jnp.clip(row, 0, bq - 1), b]
    g = jnp.where(ok, g, 0.0)
    if not cfg.interpret:
        plgpu.debug_barrier()
    return g


def _accumulate(cfg: _Cfg, ref, start, value):
    """``ref[start : start + W] += value`` (per-distance gradient buffer)."""
    if cfg.driver == "tpu":
        ref[pl.ds(start, cfg.width), :] += value
    else:
        plgpu.atomic_add(ref, (pl.ds(start, cfg.width), slice(None)), value)


# --------------------------------------------------------------------------- kernels
def _fwd_kernel(cfg: _Cfg, names, *refs):
    r = dict(zip(names, refs))
    qi = pl.program_id(1)
    i0 = pl.multiple_of(qi * cfg.bq, cfg.bq)
    q_t = r["q"][...]
    nk = cfg.lk_p // cfg.bk

    def body(kj, carry):
        m_i, l_i, acc = carry
        j0 = pl.multiple_of(kj * cfg.bk, cfg.bk)
        k_t = r["k"][pl.ds(j0, cfg.bk), :]
        v_t = r["v"][pl.ds(j0, cfg.bk), :]
        s = _scores(cfg, r, q_t, k_t, i0, j0) * cfg.inv_scale
        valid = _valid(cfg, r, i0, j0, True)
        s = jnp.where(valid, s, NEG)
        m_new = jnp.maximum(m_i, jnp.max(s, axis=1, keepdims=True))
        p = jnp.where(valid, jnp.exp(s - m_new), 0.0)
        alpha = jnp.exp(m_i - m_new)
        l_new = alpha * l_i + jnp.sum(p, axis=1, keepdims=True)
        acc = alpha * acc + _dot(p.astype(v_t.dtype), v_t)
        return m_new, l_new, acc

    init = (jnp.full((cfg.bq, 1), NEG, jnp.float32), jnp.zeros((cfg.bq, 1), jnp.float32),
            jnp.zeros((cfg.bq, cfg.dp), jnp.float32))
    m_i, l_i, acc = jax.lax.fori_loop(0, nk, body, init)
    has = l_i > 0
    r["o"][...] = (acc / jnp.where(has, l_i, 1.0)).astype(r["o"].dtype)
    r["lse"][...] = jnp.where(has, m_i + jnp.log(jnp.where(has, l_i, 1.0)), 0.0)


def _dq_kernel(cfg: _Cfg, names, *refs):
    r = dict(zip(names, refs))
    qi = pl.program_id(1)
    i0 = pl.multiple_of(qi * cfg.bq, cfg.bq)
    q_t, do_t = r["q"][...], r["do"][...]
    lse, delta = r["lse"][...], r["delta"][...]
    nk = cfg.lk_p // cfg.bk
    if cfg.c2p and cfg.driver == "tpu":
        @pl.when(qi == 0)
        def _():
            r["dR"][...] = jnp.zeros(r["dR"].shape, r["dR"].dtype)

    def body(kj, dq):
        j0 = pl.multiple_of(kj * cfg.bk, cfg.bk)
        k_t = r["k"][pl.ds(j0, cfg.bk), :]
        v_t = r["v"][pl.ds(j0, cfg.bk), :]
        s = _scores(cfg, r, q_t, k_t, i0, j0) * cfg.inv_scale
        valid = _valid(cfg, r, i0, j0, True)
        p = jnp.where(valid, jnp.exp(s - lse), 0.0)
        dp = _dot(do_t, v_t, tb=True)
        ds = p * (dp - delta) * cfg.inv_scale  # gradient of the raw scores
        dq = dq + _dot(ds.astype(k_t.dtype), k_t)
        if cfg.c2p:
            m_c, _ = _rel_windows(cfg, i0, j0)
            g = _unskew(cfg, r, ds, "c2p")  # [bq, W]
            win = r["R"][pl.ds(m_c, cfg.width), :]
            dq = dq + _dot(g.astype(win.dtype), win)
            _accumulate(cfg, r["dR"], m_c, _dot(g.astype(q_t.dtype), q_t, ta=True))
        return dq

    dq = jax.lax.fori_loop(0, nk, body, jnp.zeros((cfg.bq, cfg.dp), jnp.float32))
    r["dq"][...] = dq.astype(r["dq"].dtype)


def _dkv_kernel(cfg: _Cfg, names, *refs):
    r = dict(zip(names, refs))
    kj = pl.program_id(1)
    j0 = pl.multiple_of(kj * cfg.bk, cfg.bk)
    k_t, v_t = r["k"][...], r["v"][...]
    nq = cfg.lq_p // cfg.bq
    if cfg.p2c and cfg.driver == "tpu":
        @pl.when(kj == 0)
        def _():
            r["dF"][...] = jnp.zeros(r["dF"].shape, r["dF"].dtype)

    def body(qi, carry):
        dk, dv = carry
        i0 = pl.multiple_of(qi * cfg.bq, cfg.bq)
        q_t = r["q"][pl.ds(i0, cfg.bq), :]
        do_t = r["do"][pl.ds(i0, cfg.bq), :]
        lse = r["lse"][pl.ds(i0, cfg.bq), :]
        delta = r["delta"][pl.ds(i0, cfg.bq), :]
        s = _scores(cfg, r, q_t, k_t, i0, j0) * cfg.inv_scale
        valid = _valid(cfg, r, i0, j0, False)
        p = jnp.where(valid, jnp.exp(s - lse), 0.0)
        dv = dv + _dot(p.astype(do_t.dtype), do_t, ta=True)
        dp = _dot(do_t, v_t, tb=True)
        ds = p * (dp - delta) * cfg.inv_scale
        dk = dk + _dot(ds.astype(q_t.dtype), q_t, ta=True)
        if cfg.p2c:
            _, m_p = _rel_windows(cfg, i0, j0)
            g = _unskew(cfg, r, ds, "p2c")  # [bk, W]
            win = r["F"][pl.ds(m_p, cfg.width), :]
            dk = dk + _dot(g.astype(win.dtype), win)
            _accumulate(cfg, r["dF"], m_p, _dot(g.astype(k_t.dtype), k_t, ta=True))
        return dk, dv

    zeros = jnp.zeros((cfg.bk, cfg.dp), jnp.float32)
    dk, dv = jax.lax.fori_loop(0, nq, body, (zeros, zeros))
    r["dk"][...] = dk.astype(r["dk"].dtype)
    r["dv"][...] = dv.astype(r["dv"].dtype)


# ------------------------------------------------------------------------ pallas calls
def _vmem_bytes(arrays, specs, out_shape, out_specs) -> int:
    """Double-buffered VMEM of a call's blocks (TPU), plus a margin for the tile temporaries."""
    total = 0
    for a, spec in list(zip(arrays, specs)) + list(zip(out_shape, out_specs)):
        block = [d for d in spec.block_shape if d is not None]
        block[-1] = round_up(block[-1], 128)  # VMEM tiles pad lanes to 128, sublanes to 8
        if len(block) > 1:
            block[-2] = round_up(block[-2], 8)
        total += 2 * int(np.prod(block)) * max(4, jnp.dtype(a.dtype).itemsize)
    return total + 8 * 2**20


def _compiler_params(cfg: _Cfg, sequential: bool, vmem: int = 0):
    if cfg.interpret:
        return None
    if cfg.driver == "tpu":
        # the scoped VMEM default (16 MiB on most chips) is raised only when the resident
        # per-(batch, head) blocks need it (long sequences)
        limit = None if vmem <= 12 * 2**20 else min(int(vmem * 1.25), 100 * 2**20)
        return pltpu.CompilerParams(
            dimension_semantics=("parallel", "arbitrary" if sequential else "parallel"),
            vmem_limit_bytes=limit)
    return plgpu.CompilerParams(num_warps=4, num_stages=2)


def _full(shape, head_only=False, heads=1):
    """BlockSpec of a whole per-(batch, head) (or per-head) slab ``[bh, *shape]``."""
    nd = len(shape)
    if head_only:
        return pl.BlockSpec((None, *shape), lambda bh, i: (jax.lax.rem(bh, heads),) + (0,) * nd)
    return pl.BlockSpec((None, *shape), lambda bh, i: (bh,) + (0,) * nd)


def _tile(rows, cols):
    return pl.BlockSpec((None, rows, cols), lambda bh, i: (bh, i, 0))


def _mask_spec(cfg: _Cfg, mask, by_query: bool):
    heads = cfg.heads
    mb, mh = cfg.mask_b, cfg.mask_h
    rows = 1 if cfg.mask_q == 1 else cfg.bq if by_query else cfg.lq_p
    cols = cfg.lk_p if by_query else cfg.bk

    def index(bh, i):
        # lax.div / rem (non-negative): jnp's floor division lowers through sign, which Mosaic
        # lowers per chip
        b = jax.lax.div(bh, heads) if mb else 0
        h = jax.lax.rem(bh, heads) if mh else 0
        return (b, h, i if (by_query and cfg.mask_q == 2) else 0, 0 if by_query else i)

    return pl.BlockSpec((None, None, rows, cols), index)


def _rel_inputs(cfg: _Cfg, ops, *, need_tables: bool):
    """(names, arrays, specs) of the relative-position operands."""
    names, arrays, specs = [], [], []
    h = cfg.heads
    if cfg.c2p:
        names.append("R"); arrays.append(ops["R"]); specs.append(_full((cfg.ldist, cfg.dp), True, h))
    if cfg.p2c:
        names.append("F"); arrays.append(ops["F"]); specs.append(_full((cfg.ldist, cfg.dp), True, h))
    if need_tables and cfg.driver == "gpu":
        for kind, tab, idx, length in (("c", "Tc", "Ic", cfg.lq_p), ("p", "Tp", "Ip", cfg.lk_p)):
            if (cfg.c2p if kind == "c" else cfg.p2c):
                names += [tab, idx]
                arrays += [ops[tab], ops[idx]]
                specs += [_full((length, cfg.s2p)), pl.BlockSpec((cfg.ldist,), lambda bh, i: (0,))]
    return names, arrays, specs


def _gpu_tables(cfg: _Cfg, q, k, pk, pq):
    """``q @ pos_key^T`` / ``k @ pos_query^T`` tables [BH, L, 2 span (padded)], f32."""
    out = {}
    bh = q.shape[0]
    b = bh // cfg.heads
    if cfg.c2p:
        t = jnp.einsum("bhld,hsd->bhls", q.reshape(b, cfg.heads, *q.shape[1:]), pk,
                       preferred_element_type=jnp.float32)
        out["Tc"] = pad_axis(t.reshape(bh, cfg.lq_p, -1), 2, cfg.s2p)
    if cfg.p2c:
        t = jnp.einsum("bhld,hsd->bhls", k.reshape(b, cfg.heads, *k.shape[1:]), pq,
                       preferred_element_type=jnp.float32)
        out["Tp"] = pad_axis(t.reshape(bh, cfg.lk_p, -1), 2, cfg.s2p)
    return out


def _per_distance(cfg: _Cfg, pk, pq, idx_c, idx_p):
    """Per-distance rows (R: c2p, decreasing distance; F: p2c, increasing) and the gpu
    gather indices (by ``distance + lk_p - 1``)."""
    ops = {}
    m = jnp.arange(cfg.ldist, dtype=jnp.int32)
    if cfg.c2p:
        ops["R_idx"] = idx_c(cfg.lq_p - 1 - m)
        ops["R"] = jnp.take(pk, ops["R_idx"], axis=1)
        ops["Ic"] = idx_c(m - (cfg.lk_p - 1))
    if cfg.p2c:
        ops["F_idx"] = idx_p(m - (cfg.lk_p - 1))
        ops["F"] = jnp.take(pq, ops["F_idx"], axis=1)
        ops["Ip"] = ops["F_idx"]
    return ops


def _forward(cfg: _Cfg, q, k, v, pk, pq, mask, idx_c, idx_p):
    bh = q.shape[0]
    nq = cfg.lq_p // cfg.bq
    ops = _per_distance(cfg, pk, pq, idx_c, idx_p)
    ops.update(_gpu_tables(cfg, q, k, pk, pq) if cfg.driver == "gpu" else {})
    names = ["q", "k", "v"]
    arrays = [q, k, v]
    specs = [_tile(cfg.bq, cfg.dp), _full((cfg.lk_p, cfg.dp)), _full((cfg.lk_p, cfg.dp))]
    n2, a2, s2 = _rel_inputs(cfg, ops, need_tables=True)
    names += n2; arrays += a2; specs += s2
    if cfg.mask_q:
        names.append("mask"); arrays.append(mask); specs.append(_mask_spec(cfg, mask, True))
    out_shape = [jax.ShapeDtypeStruct((bh, cfg.lq_p, cfg.dp), q.dtype),
                 jax.ShapeDtypeStruct((bh, cfg.lq_p, 1), jnp.float32)]
    out_specs = [_tile(cfg.bq, cfg.dp), _tile(cfg.bq, 1)]
    o, lse = pl.pallas_call(
        functools.partial(_fwd_kernel, cfg, tuple(names) + ("o", "lse")),
        grid=(bh, nq), in_specs=specs, out_specs=out_specs, out_shape=out_shape,
        interpret=cfg.interpret, compiler_params=_compiler_params(cfg, False, _vmem_bytes(arrays, specs, out_shape, out_specs)),
    )(*arrays)
    return o, lse


def _backward(cfg: _Cfg, q, k, v, pk, pq, mask, idx_c, idx_p, o, lse, do):
    bh = q.shape[0]
    nq, nk = cfg.lq_p // cfg.bq, cfg.lk_p // cfg.bk
    ops = _per_distance(cfg, pk, pq, idx_c, idx_p)
    ops.update(_gpu_tables(cfg, q, k, pk, pq) if cfg.driver == "gpu" else {})
    delta = jnp.sum(do.astype(jnp.float32) * o.astype(jnp.float32), axis=-1, keepdims=True)
    f32 = jnp.float32
    dist_shape = jax.ShapeDtypeStruct((bh, cfg.ldist, cfg.dp), f32)
    gpu = cfg.driver == "gpu"

    # dq (+ per-distance c2p gradient): one program per query tile, loop over key tiles
    names = ["q", "k", "v", "do", "lse", "delta"]
    arrays = [q, k, v, do, lse, delta]
    specs = [_tile(cfg.bq, cfg.dp), _full((cfg.lk_p, cfg.dp)), _full((cfg.lk_p, cfg.dp)),
             _tile(cfg.bq, cfg.dp), _tile(cfg.bq, 1), _tile(cfg.bq, 1)]
    n2, a2, s2 = _rel_inputs(cfg, ops, need_tables=True)
    names += n2; arrays += a2; specs += s2
    if cfg.mask_q:
        names.append("mask"); arrays.append(mask); specs.append(_mask_spec(cfg, mask, True))
    out_names = ["dq"]
    out_shape = [jax.ShapeDtypeStruct((bh, cfg.lq_p, cfg.dp), q.dtype)]
    out_specs = [_tile(cfg.bq, cfg.dp)]
    aliases = {}
    if cfg.c2p:
        if gpu:  # atomics accumulate into a zeroed buffer
            aliases[len(arrays)] = len(out_shape)
            names.append("dR_init"); arrays.append(jnp.zeros(dist_shape.shape, f32))
            specs.append(_full((cfg.ldist, cfg.dp)))
        out_names.append("dR"); out_shape.append(dist_shape); out_specs.append(_full((cfg.ldist, cfg.dp)))
        if gpu:
            out_names.append("ws")
            out_shape.append(jax.ShapeDtypeStruct((bh, nq, cfg.bq, cfg.bk), f32))
            out_specs.append(pl.BlockSpec((None, None, cfg.bq, cfg.bk), lambda b, i: (b, i, 0, 0)))
    res = pl.pallas_call(
        functools.partial(_dq_kernel, cfg, tuple(names) + tuple(out_names)),
        grid=(bh, nq), in_specs=specs, out_specs=out_specs, out_shape=out_shape,
        input_output_aliases=aliases, interpret=cfg.interpret,
        compiler_params=_compiler_params(cfg, cfg.c2p, _vmem_bytes(arrays, specs, out_shape, out_specs)),
    )(*arrays)
    dq = res[0]
    d_r = res[1] if cfg.c2p else None

    # dk, dv (+ per-distance p2c gradient): one program per key tile, loop over query tiles
    names = ["q", "k", "v", "do", "lse", "delta"]
    arrays = [q, k, v, do, lse, delta]
    specs = [_full((cfg.lq_p, cfg.dp)), _tile(cfg.bk, cfg.dp), _tile(cfg.bk, cfg.dp),
             _full((cfg.lq_p, cfg.dp)), _full((cfg.lq_p, 1)), _full((cfg.lq_p, 1))]
    n2, a2, s2 = _rel_inputs(cfg, ops, need_tables=True)
    names += n2; arrays += a2; specs += s2
    if cfg.mask_q:
        names.append("mask"); arrays.append(mask); specs.append(_mask_spec(cfg, mask, False))
    out_names = ["dk", "dv"]
    out_shape = [jax.ShapeDtypeStruct((bh, cfg.lk_p, cfg.dp), k.dtype),
                 jax.ShapeDtypeStruct((bh, cfg.lk_p, cfg.dp), v.dtype)]
    out_specs = [_tile(cfg.bk, cfg.dp), _tile(cfg.bk, cfg.dp)]
    aliases = {}
    if cfg.p2c:
        if gpu:
            aliases[len(arrays)] = len(out_shape)
            names.append("dF_init"); arrays.append(jnp.zeros(dist_shape.shape, f32))
            specs.append(_full((cfg.ldist, cfg.dp)))
        out_names.append("dF"); out_shape.append(dist_shape); out_specs.append(_full((cfg.ldist, cfg.dp)))
        if gpu:
            out_names.append("ws")
            out_shape.append(jax.ShapeDtypeStruct((bh, nk, cfg.bq, cfg.bk), f32))
            out_specs.append(pl.BlockSpec((None, None, cfg.bq, cfg.bk), lambda b, i: (b, i, 0, 0)))
    res = pl.pallas_call(
        functools.partial(_dkv_kernel, cfg, tuple(names) + tuple(out_names)),
        grid=(bh, nk), in_specs=specs, out_specs=out_specs, out_shape=out_shape,
        input_output_aliases=aliases, interpret=cfg.interpret,
        compiler_params=_compiler_params(cfg, cfg.p2c, _vmem_bytes(arrays, specs, out_shape, out_specs)),
    )(*arrays)
    dk, dv = res[0], res[1]
    d_f = res[2] if cfg.p2c else None

    # per-distance gradients -> bucket rows (sum over batch, then scatter-add over distances)
    dpk = dpq = None
    b = bh // cfg.heads
    if cfg.c2p:  # (the gpu tables are not differentiated: their gradient is taken per distance too)
        g = d_r.reshape(b, cfg.heads, cfg.ldist, cfg.dp).sum(0)
        dpk = jnp.zeros(pk.shape, f32).at[:, ops["R_idx"]].add(g).astype(pk.dtype)
    if cfg.p2c:
        g = d_f.reshape(b, cfg.heads, cfg.ldist, cfg.dp).sum(0)
        dpq = jnp.zeros(pq.shape, f32).at[:, ops["F_idx"]].add(g).astype(pq.dtype)
    return dq, dk, dv, dpk, dpq


@functools.partial(jax.custom_vjp, nondiff_argnums=(0, 7, 8))
def _flash(cfg, q, k, v, pk, pq, mask, idx_c, idx_p):
    return _forward(cfg, q, k, v, pk, pq, mask, idx_c, idx_p)[0]


def _flash_fwd(cfg, q, k, v, pk, pq, mask, idx_c, idx_p):
    o, lse = _forward(cfg, q, k, v, pk, pq, mask, idx_c, idx_p)
    return o, (q, k, v, pk, pq, mask, o, lse)


def _flash_bwd(cfg, idx_c, idx_p, res, do):
    q, k, v, pk, pq, mask, o, lse = res
    dq, dk, dv, dpk, dpq = _backward(cfg, q, k, v, pk, pq, mask, idx_c, idx_p, o, lse, do)
    return dq, dk, dv, dpk, dpq, None


_flash.defvjp(_flash_fwd, _flash_bwd)


# ------------------------------------------------------------------------------ wrapper
def _toeplitz_distances(relative_pos, lq: int, lk: int) -> np.ndarray:
    """The per-distance values of a concrete Toeplitz ``relative_pos`` (index ``delta + lk - 1``)."""
    hint = ("pass relative_pos=None with position_buckets / max_relative_positions (the fused kernel "
            "computes the positions from them)")
    try:
        rel = np.asarray(relative_pos)
    except (jax.errors.TracerArrayConversionError, jax.errors.ConcretizationTypeError, TypeError) as e:
        raise ValueError(f"disentangled_flash_attention cannot use a traced relative_pos array; {hint}") from e
    if not np.issubdtype(rel.dtype, np.integer):
        raise TypeError(f"relative_pos must be integers, got {rel.dtype}")
    if rel.ndim < 2 or rel.shape[-2:] != (lq, lk) or any(d != 1 for d in rel.shape[:-2]):
        raise ValueError(f"relative_pos must have shape [{lq}, {lk}], got {rel.shape}")
    rel = rel.reshape(lq, lk).astype(np.int64)
    dist = np.concatenate([rel[0, ::-1], rel[1:, 0]])  # delta = -(lk-1) .. lq-1
    i, j = np.arange(lq)[:, None], np.arange(lk)[None, :]
    if not np.array_equal(dist[i - j + lk - 1], rel):
        raise ValueError("relative_pos is not a function of i - j (not Toeplitz), which the fused kernel "
                         f"requires; {hint}, or use the XLA kernel")
    return dist


def _check_head_mask(head_mask, batch, heads):
    hm = jnp.asarray(head_mask)
    try:
        ok = hm.ndim <= 4 and np.broadcast_shapes(hm.shape, (batch, heads, 1, 1)) == (batch, heads, 1, 1)
    except ValueError:
        ok = False
    if not ok:
        raise ValueError(
            f"disentangled_flash_attention takes a head_mask broadcastable to [batch, heads, 1, 1] = "
            f"{[batch, heads, 1, 1]} (scaling whole heads), got shape {hm.shape}; use the XLA kernel otherwise")
    return jnp.broadcast_to(hm.reshape((1,) * (4 - hm.ndim) + hm.shape), (batch, heads, 1, 1))


def disentangled_flash_attention(
    query: Array,
    key: Array,
    value: Array,
    *,
    pos_key: Array | None = None,
    pos_query: Array | None = None,
    att_span: int | None = None,
    pos_att_type=("c2p", "p2c"),
    position_buckets: int = -1,
    max_relative_positions: int = -1,
    relative_pos: Array | None = None,
    mask: Array | None = None,
    bias: Array | None = None,
    head_mask: Array | None = None,
    scale: float | None = None,
    dropout_rate: float = 0.0,
    dropout_rng: Array | None = None,
    deterministic: bool = True,
    return_probs: bool = False,
    backend: str | None = None,
    driver: str | None = None,
    block: int | None = None,
) -> tuple[Array, None]:
    """Fused disentangled attention; arguments and result as
    :func:`zoo.attention.disentangled.disentangled_attention` (``[B, L, H, D]`` arrays).

    Relative positions come from ``position_buckets`` / ``max_relative_positions`` (HF's
    ``build_relative_position``), or from a concrete Toeplitz ``relative_pos``. ``backend``:
    None (the lowering platform's), "tpu", "gpu" or "interpret". ``driver`` ("tpu" or
    "gpu", testing only) chooses the formulation the interpreter runs (default: the
    backend's; "tpu" for interpret); ``block`` overrides the tile size (testing only).
    Returns ``(out, None)``.
    """
    check_backend(backend)
    if driver is not None and driver not in DRIVERS:
        raise ValueError(f"driver {driver!r} is not one of {DRIVERS}")
    check_qkv(query, key, value)
    if scale is not None:
        raise ValueError("disentangled attention fixes the scale to HF's sqrt(head_dim * scale_factor); pass scale=None")
    refuse_unfused("disentangled_flash_attention", return_probs=return_probs, dropout_rate=dropout_rate,
                   deterministic=deterministic)
    if bias is not None:
        raise ValueError("disentangled_flash_attention takes no additive bias; use the XLA kernel")
    types = tuple(pos_att_type or ())
    unknown = [t for t in types if t not in POS_ATT_TYPES]
    if unknown:
        raise ValueError(f"pos_att_type entries must be among {POS_ATT_TYPES}, got {unknown}")
    use_c2p, use_p2c = "c2p" in types, "p2c" in types
    batch, lq, heads, head_dim = query.shape
    lk = key.shape[1]
    span = None
    dist = None
    if use_c2p or use_p2c:
        if att_span is None or int(att_span) < 1:
            raise ValueError(f"pos_att_type {types} needs att_span >= 1, got {att_span}")
        span = int(att_span)
        if relative_pos is not None:
            if position_buckets > 0 or max_relative_positions > 0:
                raise ValueError("pass either relative_pos or the bucket settings (position_buckets / "
                                 "max_relative_positions), not both")
            dist = _toeplitz_distances(relative_pos, lq, lk)
        elif position_buckets > 0 and max_relative_positions > 0:
            _check_buckets(position_buckets, max_relative_positions)
    if use_p2c and lq != lk:
        raise ValueError(f'"p2c" attention needs as many queries as keys, got Lq={lq}, Lk={lk}')
    pk = _check_pos(pos_key, "c2p", "pos_key", span, heads, head_dim) if use_c2p else None
    pq = _check_pos(pos_query, "p2c", "pos_query", span, heads, head_dim) if use_p2c else None
    hm = None if head_mask is None else _check_head_mask(head_mask, batch, heads)
    scale_factor = 1 + int(use_c2p) + int(use_p2c)
    scale_value = float(np.sqrt(np.float32(head_dim) * np.float32(scale_factor), dtype=np.float32))

    # mask -> int32 [Bm, Hm, 1 or Lq, Lk]
    mask4 = None
    if mask is not None:
        m = jnp.asarray(mask)
        if m.ndim > 4:
            raise ValueError(f"mask must be broadcastable to [B, H, Lq, Lk], got {m.shape}")
        m = m.reshape((1,) * (4 - m.ndim) + m.shape)
        try:
            np.broadcast_shapes(m.shape, (batch, heads, lq, lk))
        except ValueError as e:
            raise ValueError(f"mask {m.shape} is not broadcastable to [B, H, Lq, Lk] = {(batch, heads, lq, lk)}") from e
        m = (m != 0) if m.dtype != jnp.bool_ else m
        mask4 = jnp.broadcast_to(m, m.shape[:3] + (lk,)).astype(jnp.int32)

    def distance_values(delta):
        """bucketed relative position of distance ``delta`` (an int32 array)."""
        delta = jnp.clip(delta, -(lk - 1), lq - 1)
        if dist is not None:
            return jnp.asarray(dist.astype(np.int32))[delta + lk - 1]
        if position_buckets > 0 and max_relative_positions > 0:
            return make_log_bucket_position(delta, position_buckets, max_relative_positions).astype(jnp.int32)
        return delta

    def idx_c(delta):  # c2p row of pos_key: clamp(rel[i, j] + span)
        return jnp.clip(distance_values(delta) + span, 0, 2 * span - 1)

    def idx_p(delta):  # p2c row of pos_query: clamp(-rel[j, i] + span), rel[j, i] at distance -delta
        return jnp.clip(-distance_values(-delta) + span, 0, 2 * span - 1)

    def launch(query, key, value, pk, pq, mask4, *, backend):
        drv = driver or ("gpu" if backend == "gpu" else "tpu")
        b = block or block_size(backend)
        lq_p, lk_p = round_up(lq, b), round_up(lk, b)
        dp = head_dim if drv == "tpu" else max(16, int(pl.next_power_of_2(head_dim)))
        cfg = _Cfg(
            driver=drv, interpret=interpret_flag(backend), heads=heads, bq=b, bk=b, lq=lq, lk=lk,
            lq_p=lq_p, lk_p=lk_p, dp=dp, s2p=int(pl.next_power_of_2(2 * span)) if span else 1,
            c2p=use_c2p, p2c=use_p2c, mask_q=0 if mask4 is None else (2 if mask4.shape[2] > 1 else 1),
            mask_b=mask4 is not None and mask4.shape[0] > 1, mask_h=mask4 is not None and mask4.shape[1] > 1,
            inv_scale=1.0 / scale_value)

        def prep(x, length_p):  # [B, L, H, D] -> [B H, L_p, Dp]
            x = jnp.swapaxes(x, 1, 2).reshape(batch * heads, x.shape[1], head_dim)
            return pad_axis(pad_axis(x, 1, length_p), 2, dp)

        q, k, v = prep(query, lq_p), prep(key, lk_p), prep(value, lk_p)
        pos = [None if p is None else pad_axis(jnp.transpose(p.astype(query.dtype), (1, 0, 2)), 2, dp)
               for p in (pk, pq)]
        mk = None
        if mask4 is not None:
            mk = pad_axis(mask4, 3, lk_p)
            if mk.shape[2] > 1:
                mk = pad_axis(mk, 2, lq_p)
        o = _flash(cfg, q, k, v, pos[0], pos[1], mk, idx_c, idx_p)
        o = o[:, :lq, :head_dim].reshape(batch, heads, lq, head_dim)
        return jnp.swapaxes(o, 1, 2)

    out = by_platform(launch, query, key, value, pk, pq, mask4, backend=backend)
    if hm is not None:
        out = (out * jnp.swapaxes(hm, 1, 2).astype(out.dtype)).astype(query.dtype)
    return out, None


__all__ = ["block_size", "disentangled_flash_attention"]
