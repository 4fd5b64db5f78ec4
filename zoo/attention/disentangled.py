"""DeBERTa-v2 disentangled attention (content->position ``c2p`` and position->content ``p2c``).

The kernel of SEW-D (and DeBERTa-v2/v3), with the signature shared by every kernel of
``zoo.attention`` plus the relative-position inputs::

    out, probs = disentangled_attention(
        query, key, value, *, pos_key=..., pos_query=..., relative_pos=..., att_span=...,
        pos_att_type=("c2p", "p2c"), mask=None, dropout_rate=0.0, dropout_rng=None,
        deterministic=True, return_probs=False)

Semantics are those of Hugging Face's ``DisentangledSelfAttention`` (``modeling_sew_d.py``):
with ``sf = 1 + ("c2p" in types) + ("p2c" in types)`` and ``s = sqrt(D * sf)``::

    scores[i, j] = q_i . k_j / s
                 + q_i . pos_key[clamp(rel[i, j] + span, 0, 2 span - 1)] / s      (c2p)
                 + k_j . pos_query[clamp(-rel[j, i] + span, 0, 2 span - 1)] / s   (p2c)
    probs = XSoftmax(scores, mask)        # masked -> dtype min, softmax, masked probs -> 0
    out = dropout(probs) @ v

The position terms never materialise a ``[B, H, L, L, 2 span]`` array: ``q @ pos_key^T``
and ``k @ pos_query^T`` are formed as ``[B, H, L, 2 span]`` tables and gathered along their
last axis, both terms in one fused gather-and-add (memory ``O(B H L (L + 2 span))``).
Gradients flow into ``pos_key`` / ``pos_query`` (and so into the relative embeddings and
their projections): the gather has a custom VJP, a scatter-add with the (batch, head)
axis as the scatter window (reverse mode only: ``jax.jvp`` through the kernel is not
supported).

As in ``zoo.attention.dense``, q/k/v are used as ``[B, H, L, D]`` with batched matmuls, and
without ``return_probs`` the softmax normalisation divides the ``[B, H, Lq, D]`` output
rather than the ``[B, H, Lq, Lk]`` weights.

From ``Lq >= AUTO_BLOCK_MIN_LENGTH`` (or with ``query_block=n``) a query-blocked path runs
instead: a ``lax.map`` over tiles of query rows, each computing its own scores, c2p table,
gathered position terms, XSoftmax and output tile, with a FlashAttention-style custom VJP that
is blocked too (probabilities recomputed from the per-row log-sum-exp; dk, dv, d pos_key and
the p2c table gradient accumulated in the scan carry). Only one tile of ``[B, H, tile, Lk]``
temporaries is live at a time, and with positions from the bucket settings no ``[L, L]``
array exists at all; the ``[B, H, Lk, 2 span]`` p2c table remains.

By default (``query_block=None``, no active dropout) the forward tiles the keys too, flash-style
in XLA (``key_block``): per query tile of ``AUTO_TILED_QUERY_BLOCK`` rows its c2p table, then a
``lax.scan`` over key tiles of ``AUTO_KEY_BLOCK`` columns with an online softmax (running max,
denominator, accumulator), each key tile's p2c table ``k_u @ pos_query^T`` recomputed per query
tile, so the full p2c table is never formed; tiles are sliced from the ``[B, L, H, D]`` inputs
(no transposed copies). The backward is the query-blocked one, from the same log-sum-exp. On
CPU at SEW-D base shapes (L = 4096, 12 x 64, 512 position rows, fp32) the forward needs about 21
MiB of XLA temp memory (dense ``xla``: 36 MiB; query-blocked: 194 MiB; unblocked: 1.1 GiB); its
forward was faster than the unblocked one at L = 1024, 2048 and 4096, and than the query-blocked
one at 4096 (at 1024 / 2048 within about 15% of it, either way depending on the run;
``benchmarks/disentangled_memory.py``, ``benchmarks/results/disentangled_memory.md``). ``return_probs`` (and ``bias``) take the unblocked path.

Relative positions follow HF's ``build_relative_position`` / ``make_log_bucket_position``
bit for bit; see :func:`make_log_bucket_position` for how the float32 ``log``/``ceil`` of
PyTorch is reproduced without depending on XLA's ``log`` rounding.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from zoo.attention.dense import check_qkv
from zoo.rng import bernoulli

Array = jax.Array

POS_ATT_TYPES = ("c2p", "p2c")


# ------------------------------------------------------------------ relative positions
def _check_buckets(bucket_size: int, max_position: int) -> None:
    mid = bucket_size // 2
    if mid < 1:
        raise ValueError(f"position_buckets must be >= 2 to bucket relative positions, got {bucket_size}")
    if max_position - 1 <= mid:
        raise ValueError(
            f"max_relative_positions ({max_position}) must be larger than position_buckets // 2 + 1 "
            f"({mid + 1}) for log-bucketed relative positions (position_buckets={bucket_size}); HF's formula "
            "divides by log((max_position - 1) / (position_buckets // 2)), which is <= 0 otherwise"
        )


def _torch_log_bucket_offset(abs_pos: np.ndarray, mid: int, max_position: int) -> np.ndarray:
    """``ceil(log(a / mid) / log((max_position - 1) / mid) * (mid - 1))`` in PyTorch's float32
    arithmetic (every step rounded to float32; ``log`` correctly rounded), as int64."""
    f32 = np.float32
    x = abs_pos.astype(f32) / f32(mid)
    with np.errstate(divide="ignore"):
        log_x = np.log(x.astype(np.float64)).astype(f32)
    log_c = np.log(np.float64(f32((max_position - 1) / mid))).astype(f32)
    v = ((log_x / log_c).astype(f32) * f32(mid - 1)).astype(f32)
    return np.ceil(v).astype(np.int64)


@functools.lru_cache(maxsize=64)
def _log_bucket_thresholds(bucket_size: int, max_position: int) -> np.ndarray:
    """``t[m]`` = the smallest ``|relative position| > mid`` whose log bucket offset exceeds ``m``.

    The offset ``ceil(v(a))`` is non-decreasing in ``a`` (a correctly rounded ``log``,
    float32 division and multiplication are monotone), so for ``a > mid`` it equals
    ``#{m : t[m] <= a}``. Thresholds are found by bisection over all int32 magnitudes.
    """
    mid = bucket_size // 2
    lo_a, hi_a = mid + 1, 2**31 - 1
    top = int(_torch_log_bucket_offset(np.array([hi_a]), mid, max_position)[0])
    if top <= 0:
        return np.zeros((0,), np.int32)
    levels = np.arange(top, dtype=np.int64)  # offset > m for m in [0, top)
    lo = np.full(levels.shape, lo_a, np.int64)  # invariant: answer in [lo, hi]
    hi = np.full(levels.shape, hi_a, np.int64)
    while np.any(lo < hi):
        mid_a = (lo + hi) // 2
        above = _torch_log_bucket_offset(mid_a, mid, max_position) > levels
        hi = np.where(above, mid_a, hi)
        lo = np.where(above, lo, mid_a + 1)
    return lo.astype(np.int32)


def make_log_bucket_position(relative_pos, bucket_size: int, max_position: int) -> Array:
    """HF's ``make_log_bucket_position``: float32 bucketed relative positions.

    ``|r| <= bucket_size // 2`` stays ``r``; beyond, ``sign(r) * (mid + ceil(log(|r| / mid) /
    log((max_position - 1) / mid) * (mid - 1)))`` with ``mid = bucket_size // 2``, evaluated
    as PyTorch does in float32. The float part depends only on the static
    ``(bucket_size, max_position)``, so it is tabulated once on the host as integer
    thresholds, with a correctly rounded float32 ``log``. That reproduces PyTorch's CPU
    result on every ``|r| < 340000`` for every (bucket_size in 4..512, max_position in
    16..2048) pair we compared; XLA's own float32 ``log`` is off by an ulp at positions such
    as ``max_position - 1`` for (128, 512), which flips the ``ceil``. ``relative_pos`` itself
    may be traced. Returns float32, like PyTorch.
    """
    _check_buckets(bucket_size, max_position)
    mid = bucket_size // 2
    rel = jnp.asarray(relative_pos)
    if not jnp.issubdtype(rel.dtype, jnp.integer):
        raise TypeError(f"relative positions must be integers, got {rel.dtype}")
    rel = rel.astype(jnp.int32)
    abs_pos = jnp.abs(rel)
    thresholds = jnp.asarray(_log_bucket_thresholds(bucket_size, max_position))
    offset = jnp.searchsorted(thresholds, abs_pos, side="right").astype(jnp.int32)
    bucket = jnp.where(abs_pos <= mid, rel, jnp.sign(rel) * (mid + offset))
    return bucket.astype(jnp.float32)


def build_relative_position(query_size: int, key_size: int, bucket_size: int = -1,
                            max_position: int = -1) -> Array:
    """HF's ``build_relative_position`` without the leading unit axis: int32 ``[Lq, Lk]``
    with ``r[i, j] = i - j``, log-bucketed when ``bucket_size > 0 and max_position > 0``.

    Sizes are static; the result is built with jnp (one bucket lookup per distinct
    distance, then a Toeplitz expansion), so it is cheap inside ``jax.jit``.
    """
    query_size, key_size = int(query_size), int(key_size)
    if query_size < 1 or key_size < 1:
        raise ValueError(f"relative positions need positive sizes, got query {query_size}, key {key_size}")
    if bucket_size > 0 and max_position > 0:
        _check_buckets(bucket_size, max_position)
    # one compiled program per setting (also inlined when called inside a trace)
    return _build_relative_position(query_size, key_size, int(bucket_size), int(max_position))


@functools.partial(jax.jit, static_argnums=(0, 1, 2, 3))
def _build_relative_position(query_size: int, key_size: int, bucket_size: int, max_position: int) -> Array:
    distances = jnp.arange(-(key_size - 1), query_size, dtype=jnp.int32)  # every value of i - j
    if bucket_size > 0 and max_position > 0:
        distances = make_log_bucket_position(distances, bucket_size, max_position).astype(jnp.int32)
    i = jnp.arange(query_size, dtype=jnp.int32)[:, None]
    j = jnp.arange(key_size, dtype=jnp.int32)[None, :]
    return jnp.take(distances, i - j + (key_size - 1), axis=0)


# --------------------------------------------------------------------------- kernel
def _as_2d_positions(relative_pos, lq: int, lk: int, name: str) -> Array:
    rel = jnp.asarray(relative_pos)
    if not jnp.issubdtype(rel.dtype, jnp.integer):
        raise TypeError(f"{name} must be integers, got {rel.dtype}")
    if rel.ndim < 2 or rel.shape[-2:] != (lq, lk) or any(d != 1 for d in rel.shape[:-2]):
        raise ValueError(
            f"{name} must have shape [{lq}, {lk}] (or with leading unit axes, as HF's "
            f"build_relative_position returns), got {rel.shape}"
        )
    return rel.reshape(lq, lk).astype(jnp.int32)


def _check_pos(pos: Array | None, kind: str, arg: str, att_span: int, heads: int, head_dim: int) -> Array:
    if pos is None:
        raise ValueError(f'pos_att_type contains "{kind}" but {arg} is None')
    if pos.ndim != 3 or pos.shape[1:] != (heads, head_dim) or pos.shape[0] < 2 * att_span:
        raise ValueError(
            f"{arg} must have shape [2 * att_span = {2 * att_span}, heads = {heads}, head_dim = {head_dim}] "
            f"(the projected relative embeddings), got {pos.shape}"
        )
    return pos[: 2 * att_span]  # HF slices rel_embeddings[0 : 2 * att_span]


def _relative_scores(tables: list[Array], indices: list[tuple[Array, str]]) -> Array:
    """Sum of the gathered position terms, ``[B, H, Lq, Lk]``.

    ``tables[t]`` is ``[B, H, R, 2 span]`` and ``indices[t] = (index [Lq, Lk], kind)``: with
    kind ``"row"`` the term is ``table[b, h, i, index[i, j]]`` (c2p: row ``i`` of the
    ``q @ pos_key^T`` table), with ``"col"`` it is ``table[b, h, j, index[i, j]]`` (p2c: row
    ``j`` of ``k @ pos_query^T``, i.e. HF's gather followed by its transpose, without
    materialising the transpose).

    Each table is flattened per (batch, head) and read with one flat index shared by all
    heads, so both terms become a single fused gather-and-add loop over ``[B, H, Lq, Lk]``.
    (``jnp.take_along_axis`` with an index broadcast over batch and heads makes XLA:CPU
    gather heads-innermost and then transpose, and keeps one ``[B, H, Lq, Lk]`` buffer per
    term.) The backward pass is a scatter-add with the (batch, head) axis as the scatter
    window, about 1.8x faster on CPU than the per-element scatter autodiff would emit.
    """
    b, h, _, span2 = tables[0].shape
    lq, lk = indices[0][0].shape
    flat_idx = []
    for index, kind in indices:
        rows = jnp.arange(lq if kind == "row" else lk, dtype=jnp.int32)
        flat_idx.append(index + (rows[:, None] if kind == "row" else rows[None, :]) * span2)
    flat_idx = _materialize(tuple(flat_idx))
    flat_tables = tuple(t.reshape(b * h, t.shape[2] * span2) for t in tables)
    return _gather_sum(flat_tables, flat_idx).reshape(b, h, lq, lk)


def _materialize(arrays: tuple[Array, ...], blocks: int = 2) -> tuple[Array, ...]:
    """The same arrays, computed once into buffers of their own.

    Fused into the gather loop, XLA would recompute the index arithmetic (and whatever built
    the relative positions) for every batch and head element. ``optimization_barrier`` is
    dropped by XLA:CPU, but a loop's outputs are always materialised: the arrays are copied
    out by a ``lax.map`` over ``blocks`` row blocks (row counts must divide evenly, else one block).
    """
    rows = arrays[0].shape[0]
    blocks = blocks if rows % blocks == 0 else 1
    stacked = tuple(a.reshape(blocks, rows // blocks, *a.shape[1:]) for a in arrays)
    # (an identity body would be forwarded away by JAX; "+ 0" per block keeps the loop)
    out = jax.lax.map(lambda xs: tuple(x + jnp.zeros((), x.dtype) for x in xs), stacked)
    return tuple(o.reshape(a.shape) for o, a in zip(out, arrays))


def _gather_sum_impl(tables: tuple[Array, ...], indices: tuple[Array, ...]) -> Array:
    """``out[n, i, j] = sum_t tables[t][n, indices[t][i, j]]`` for ``tables[t] [N, S_t]``."""

    def one_row(*rows):
        out = None
        for row, idx in zip(rows, indices):
            term = row.at[idx].get(mode="promise_in_bounds")
            out = term if out is None else out + term
        return out

    return jax.vmap(one_row)(*tables)


@jax.custom_vjp
def _gather_sum(tables, indices):
    return _gather_sum_impl(tables, indices)


def _gather_sum_fwd(tables, indices):
    return _gather_sum_impl(tables, indices), (indices, tuple(t.shape[1] for t in tables))


def _gather_sum_bwd(res, g):
    indices, sizes = res
    n = g.shape[0]
    g_t = jnp.transpose(g, (1, 2, 0)).reshape(-1, n)  # [Lq * Lk, N]: (batch, head) innermost
    grads = tuple(
        jnp.zeros((size, n), g.dtype).at[idx.reshape(-1)].add(g_t, mode="promise_in_bounds").T
        for idx, size in zip(indices, sizes)
    )
    return grads, tuple(None for _ in indices)


_gather_sum.defvjp(_gather_sum_fwd, _gather_sum_bwd)


# ------------------------------------------------------------ query-blocked (memory-lean) path
# Lq at and above which ``query_block=None`` picks the blocked path (measured on CPU: from about
# L = 1024 the blocked forward is faster than the unblocked one and needs a fraction of its memory;
# fwd+bwd is 15-20% slower (the backward recomputes each tile), at a fifth of the memory).
# Tiles of 128 rows beat 256 and 512 in both time and memory at L = 2048 and 4096.
AUTO_BLOCK_MIN_LENGTH = 1024
AUTO_BLOCK = 128


def _tile_positions(t, block, lq, rel, dist, transpose):
    """int32 ``[block, Lk]`` relative positions of query tile ``t`` (rows past ``Lq`` repeat the
    last one): ``rel[i, j]`` or, with ``transpose`` (p2c), ``rel[j, i]``. ``rel`` is an ``[Lq, Lk]``
    array, or None with ``dist`` the Toeplitz vector ``dist[i - j + Lk - 1]`` (positions built from
    the bucket settings: no ``[L, L]`` array at all)."""
    rows = jnp.minimum(t * block + jnp.arange(block, dtype=jnp.int32), lq - 1)
    if rel is not None:
        return jnp.take(rel, rows, axis=1).T if transpose else jnp.take(rel, rows, axis=0)
    lk = dist.shape[0] - lq + 1
    j = jnp.arange(lk, dtype=jnp.int32)[None, :]
    diff = (j - rows[:, None]) if transpose else (rows[:, None] - j)
    return jnp.take(dist, diff + (lk - 1), axis=0)


def _tile_scores(t, cfg, q, k_s, v, pk_t, t_p, rel, dist, mask):
    """Scores of query tile ``t``: ``[B, H, block, Lk]`` (masked to dtype min), the tile's
    queries, mask, c2p table and flat gather indices."""
    block, _, lq, span, _ = cfg
    acc = jnp.promote_types(q.dtype, jnp.float32)
    b, h, _, _ = q.shape
    lk = k_s.shape[2]
    i0 = t * block
    q_t = jax.lax.dynamic_slice_in_dim(q, i0, block, axis=2)
    s = jnp.matmul(q_t, jnp.swapaxes(k_s, -1, -2), preferred_element_type=acc)
    tables, idxs, t_c = [], [], None
    if pk_t is not None:  # c2p: this tile's q @ pos_key^T table, row i
        t_c = jnp.matmul(q_t, pk_t, preferred_element_type=acc)  # [B, H, block, 2 span]
        pos = jnp.clip(_tile_positions(t, block, lq, rel, dist, False) + span, 0, 2 * span - 1)
        tables.append(t_c.reshape(b * h, -1))
        idxs.append(pos + (jnp.arange(block, dtype=jnp.int32) * (2 * span))[:, None])
    if t_p is not None:  # p2c: row j of the whole k @ pos_query^T table
        pos = jnp.clip(-_tile_positions(t, block, lq, rel, dist, True) + span, 0, 2 * span - 1)
        tables.append(t_p.reshape(b * h, -1))
        idxs.append(pos + (jnp.arange(lk, dtype=jnp.int32) * (2 * span))[None, :])
    if tables:
        s = s + _gather_sum_impl(tuple(tables), tuple(idxs)).reshape(b, h, block, lk)
    m_t = None
    if mask is not None:
        m_t = mask if mask.shape[2] == 1 else jax.lax.dynamic_slice_in_dim(mask, i0, block, axis=2)
        s = jnp.where(m_t, s, jnp.finfo(acc).min)
    return q_t, s, m_t, idxs


def _tile_keep(rng, t, rate, shape):
    return bernoulli(jax.random.fold_in(rng, t), 1.0 - rate, shape)


def _blocked_forward(cfg, q, k_s, v, pk_t, t_p, rel, dist, mask, rng):
    block, rate = cfg[0], cfg[1]
    acc = jnp.promote_types(q.dtype, jnp.float32)
    b, h, lp, d = q.shape

    def tile(t):
        _, s, m_t, _ = _tile_scores(t, cfg, q, k_s, v, pk_t, t_p, rel, dist, mask)
        mx = s.max(axis=-1, keepdims=True)
        w = jnp.exp(s - mx)
        if m_t is not None:
            w = jnp.where(m_t, w, jnp.zeros((), acc))
        den = w.sum(axis=-1, keepdims=True)
        if m_t is not None:  # fully masked rows: 0 / 1 instead of 0 / 0
            den = jnp.where(den > 0, den, jnp.ones((), acc))
        if rate > 0.0:
            keep = _tile_keep(rng, t, rate, w.shape)
            w = jnp.where(keep, w / jnp.asarray(1.0 - rate, acc), jnp.zeros((), acc))
        o = jnp.matmul(w.astype(v.dtype), v, preferred_element_type=acc) / den
        return o.astype(v.dtype), (mx + jnp.log(den))[..., 0]

    outs, lse = jax.lax.map(tile, jnp.arange(lp // block, dtype=jnp.int32))
    out = jnp.moveaxis(outs, 0, 2).reshape(b, h, lp, d)
    return out, jnp.moveaxis(lse, 0, 2).reshape(b, h, lp)


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def _blocked_attention(cfg, q, k_s, v, pk_t, t_p, rel, dist, mask, rng):
    """Softmax attention over query tiles: ``[B, H, Lp, D]``.

    ``cfg = (block, dropout rate, Lq, span, _)``; ``q`` ``[B, H, Lp, D]`` (``Lp`` a multiple of
    ``block``, rows past ``Lq`` padding), ``k_s`` (keys already divided by the scale), ``v``
    ``[B, H, Lk, D]``; ``pk_t`` ``[H, D, 2 span]`` (``pos_key / s``, transposed) or None, ``t_p``
    ``[B, H, Lk, 2 span]`` the p2c table or None; positions ``rel`` ``[Lq, Lk]`` or the Toeplitz
    ``dist`` (see :func:`_tile_positions`); ``mask`` bool ``[B|1, H|1, Lp|1, Lk]`` or None; ``rng``
    the dropout key (rate > 0).
    """
    return _blocked_forward(cfg, q, k_s, v, pk_t, t_p, rel, dist, mask, rng)[0]


def _blocked_attention_fwd(cfg, q, k_s, v, pk_t, t_p, rel, dist, mask, rng):
    out, lse = _blocked_forward(cfg, q, k_s, v, pk_t, t_p, rel, dist, mask, rng)
    return out, (q, k_s, v, pk_t, t_p, rel, dist, mask, rng, out, lse)


def _blocked_attention_bwd(cfg, res, g):
    """FlashAttention-style backward, tile by tile: the tile's probabilities are recomputed from
    the saved per-row log-sum-exp; dq is per tile; dk, dv, d pos_key and the p2c table gradient
    (a scatter-add with (batch, head) innermost) accumulate in the scan carry."""
    block, rate = cfg[0], cfg[1]
    q, k_s, v, pk_t, t_p, rel, dist, mask, rng, out, lse = res
    acc = jnp.promote_types(q.dtype, jnp.float32)
    b, h, lp, d = q.shape
    lk = k_s.shape[2]
    g = g.astype(v.dtype)
    di = jnp.sum(g.astype(acc) * out.astype(acc), axis=-1)  # [B, H, Lp]: rowsum(dO * O)

    def body(carry, t):
        dk, dv, dpk, dtp = carry
        i0 = t * block
        q_t, s, m_t, idxs = _tile_scores(t, cfg, q, k_s, v, pk_t, t_p, rel, dist, mask)
        lse_t = jax.lax.dynamic_slice_in_dim(lse, i0, block, axis=2)[..., None]
        p = jnp.exp(s - lse_t)
        if m_t is not None:
            p = jnp.where(m_t, p, jnp.zeros((), acc))
        g_t = jax.lax.dynamic_slice_in_dim(g, i0, block, axis=2)
        if rate > 0.0:
            keep = _tile_keep(rng, t, rate, p.shape)
            inv = jnp.asarray(1.0 - rate, acc)
            pd = jnp.where(keep, p / inv, jnp.zeros((), acc))
        else:
            pd = p
        dv = dv + jnp.matmul(jnp.swapaxes(pd, -1, -2).astype(v.dtype), g_t, preferred_element_type=acc)
        dp = jnp.matmul(g_t, jnp.swapaxes(v, -1, -2), preferred_element_type=acc)
        if rate > 0.0:
            dp = jnp.where(keep, dp / inv, jnp.zeros((), acc))
        ds = p * (dp - jax.lax.dynamic_slice_in_dim(di, i0, block, axis=2)[..., None])
        dq_t = jnp.matmul(ds.astype(q.dtype), k_s, preferred_element_type=acc)
        dk = dk + jnp.matmul(jnp.swapaxes(ds, -1, -2).astype(q.dtype), q_t, preferred_element_type=acc)
        if pk_t is not None or t_p is not None:
            ds_t = ds.reshape(b * h, block * lk).T  # [block * Lk, B * H]: (batch, head) innermost
        if pk_t is not None:
            span2 = pk_t.shape[-1]
            dtc = jnp.zeros((block * span2, b * h), acc).at[idxs[0].reshape(-1)].add(ds_t, mode="promise_in_bounds")
            dtc = jnp.transpose(dtc.reshape(block, span2, b, h), (2, 3, 0, 1))  # [B, H, block, 2 span]
            dq_t = dq_t + jnp.matmul(dtc.astype(q.dtype), jnp.swapaxes(pk_t, -1, -2), preferred_element_type=acc)
            dpk = dpk + jnp.matmul(jnp.swapaxes(q_t, -1, -2), dtc.astype(q.dtype),
                                   preferred_element_type=acc).sum(axis=0)
        if t_p is not None:
            dtp = dtp.at[idxs[-1].reshape(-1)].add(ds_t, mode="promise_in_bounds")
        return (dk, dv, dpk, dtp), dq_t.astype(q.dtype)

    carry = (jnp.zeros(k_s.shape, acc), jnp.zeros(v.shape, acc),
             None if pk_t is None else jnp.zeros(pk_t.shape, acc),
             None if t_p is None else jnp.zeros((lk * t_p.shape[3], b * h), acc))
    (dk, dv, dpk, dtp), dq = jax.lax.scan(body, carry, jnp.arange(lp // block, dtype=jnp.int32))
    dq = jnp.moveaxis(dq, 0, 2).reshape(b, h, lp, d)
    if pk_t is not None:
        dpk = dpk.astype(pk_t.dtype)
    if t_p is not None:
        dtp = dtp.T.reshape(b, h, lk, t_p.shape[3]).astype(t_p.dtype)
    return (dq, dk.astype(k_s.dtype), dv.astype(v.dtype), dpk, dtp, None, None, None, None)


_blocked_attention.defvjp(_blocked_attention_fwd, _blocked_attention_bwd)


# ------------------------------------------------- key-tiled forward (flash-style, lean on memory)
# With query_block=None and no active dropout, from AUTO_BLOCK_MIN_LENGTH the forward also tiles the
# keys: query tiles of AUTO_TILED_QUERY_BLOCK rows, key tiles of AUTO_KEY_BLOCK columns. Measured on
# CPU (shared 2 cores, L = 1024 / 2048 / 4096): 512 x 32 was faster than 512 x {16, 64, 128, 256, 512},
# 256 x 32 and 1024 x 32, at 21 MiB temp at L = 4096 (512 x 512: 68 MiB; 512 x 128: 30 MiB).
AUTO_TILED_QUERY_BLOCK = 512
AUTO_KEY_BLOCK = 32


def _block_positions(rows, cols, lk, rel, dist, transpose):
    """int32 ``[tq, tk]`` relative positions ``rel[i, j]`` (or, with ``transpose``, ``rel[j, i]``)
    for query rows ``rows`` and key columns ``cols`` (both already clamped in range)."""
    if rel is not None:
        if transpose:
            return jnp.take(jnp.take(rel, cols, axis=0), rows, axis=1).T
        return jnp.take(jnp.take(rel, rows, axis=0), cols, axis=1)
    diff = (cols[None, :] - rows[:, None]) if transpose else (rows[:, None] - cols[None, :])
    return jnp.take(dist, diff + (lk - 1), axis=0)


def _tiled_forward(cfg, q, k, v, pk_t, pq_t, rel, dist, mask):
    """Forward over (query tile, key tile) pairs with an online softmax: ``(out [B, Lp, H, D],
    lse [B, H, Lp])`` from q ``[B, Lp, H, D]``, k, v ``[B, Lk, H, D]`` in the caller's layout
    (tiles are sliced and transposed inside the loops: no transposed or scaled copy of q, k, v).
    Per query tile (``lax.map``): its c2p table ``q_t @ pos_key^T`` ``[B, H, tq, 2 span]``; per
    key tile (``lax.scan``, carry = running max, denominator, output accumulator): content
    scores ``q_t @ (k_u / s)^T``, the key tile's p2c table ``k_u @ pos_query^T`` ``[B, H, tk, 2
    span]`` (recomputed for every query tile; the full ``[B, H, Lk, 2 span]`` table never
    exists), both gathered terms, XSoftmax. Keys are padded to a multiple of ``tk``, the padding
    masked. The running max starts at dtype min and includes masked (dtype min) scores, as the
    unblocked row max does: a row with any kept entry gets the max over its kept entries, a fully
    masked row ends with max = dtype min, denominator 0 -> 1, output 0 and lse = dtype min, as
    in the query-blocked forward."""
    tq, tk, _, lq, span, scale = cfg
    acc = jnp.promote_types(q.dtype, jnp.float32)
    b, lp, h, d = q.shape
    lk = k.shape[1]
    nk = -(-lk // tk)
    padk = nk * tk - lk
    if padk:
        padw = ((0, 0), (0, padk), (0, 0), (0, 0))
        k, v = jnp.pad(k, padw), jnp.pad(v, padw)
        if mask is None:
            mask = (jnp.arange(lk + padk) < lk)[None, None, None, :]
        else:
            mask = jnp.pad(mask, ((0, 0), (0, 0), (0, 0), (0, padk)), constant_values=False)
    span2 = 2 * span
    fmin = jnp.finfo(acc).min
    s_val = jnp.asarray(scale, k.dtype)

    def tile(x, start, size):  # [B, size, H, D] rows of x -> [B, H, size, D]
        return jnp.swapaxes(jax.lax.dynamic_slice_in_dim(x, start, size, axis=1), 1, 2)

    def q_tile(t):
        i0 = t * tq
        q_t = tile(q, i0, tq)
        rows = jnp.minimum(i0 + jnp.arange(tq, dtype=jnp.int32), lq - 1)
        t_c = None
        if pk_t is not None:
            t_c = jnp.matmul(q_t, pk_t, preferred_element_type=acc).reshape(b * h, tq * span2)
        m_rows = None
        if mask is not None:
            m_rows = mask if mask.shape[2] == 1 else jax.lax.dynamic_slice_in_dim(mask, i0, tq, axis=2)

        def k_tile(carry, u):
            mx, den, o = carry
            j0 = u * tk
            cols = jnp.minimum(j0 + jnp.arange(tk, dtype=jnp.int32), lk - 1)
            k_u = tile(k, j0, tk)
            sc = jnp.matmul(q_t, jnp.swapaxes(k_u / s_val, -1, -2), preferred_element_type=acc)
            tables, idxs = [], []
            if t_c is not None:
                pos = jnp.clip(_block_positions(rows, cols, lk, rel, dist, False) + span, 0, span2 - 1)
                tables.append(t_c)
                idxs.append(pos + (jnp.arange(tq, dtype=jnp.int32) * span2)[:, None])
            if pq_t is not None:
                t_p = jnp.matmul(k_u, pq_t, preferred_element_type=acc).reshape(b * h, tk * span2)
                pos = jnp.clip(-_block_positions(rows, cols, lk, rel, dist, True) + span, 0, span2 - 1)
                tables.append(t_p)
                idxs.append(pos + (jnp.arange(tk, dtype=jnp.int32) * span2)[None, :])
            if tables:
                sc = sc + _gather_sum_impl(tuple(tables), tuple(idxs)).reshape(b, h, tq, tk)
            m_u = None
            if m_rows is not None:
                m_u = jax.lax.dynamic_slice_in_dim(m_rows, j0, tk, axis=3)
                sc = jnp.where(m_u, sc, fmin)
            mx_new = jnp.maximum(mx, sc.max(axis=-1, keepdims=True))
            w = jnp.exp(sc - mx_new)
            if m_u is not None:
                w = jnp.where(m_u, w, jnp.zeros((), acc))
            alpha = jnp.exp(mx - mx_new)
            den = den * alpha + w.sum(axis=-1, keepdims=True)
            o = o * alpha + jnp.matmul(w.astype(v.dtype), tile(v, j0, tk), preferred_element_type=acc)
            return (mx_new, den, o), None

        init = (jnp.full((b, h, tq, 1), fmin, acc), jnp.zeros((b, h, tq, 1), acc), jnp.zeros((b, h, tq, d), acc))
        (mx, den, o), _ = jax.lax.scan(k_tile, init, jnp.arange(nk, dtype=jnp.int32))
        den = jnp.where(den > 0, den, jnp.ones((), acc))  # fully masked rows: 0 / 1 instead of 0 / 0
        return jnp.swapaxes((o / den).astype(v.dtype), 1, 2), (mx + jnp.log(den))[..., 0]

    outs, lse = jax.lax.map(q_tile, jnp.arange(lp // tq, dtype=jnp.int32))  # [nq, B, tq, H, D]
    out = jnp.moveaxis(outs, 0, 1).reshape(b, lp, h, d)
    return out, jnp.moveaxis(lse, 0, 2).reshape(b, h, lp)


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def _tiled_attention(cfg, q, k, v, pk_t, pq_t, rel, dist, mask):
    """The key-tiled forward (:func:`_tiled_forward`) with the query-blocked backward:
    ``[B, Lp, H, D]``.

    ``cfg = (tq, tk, backward query tile, Lq, span, scale)``; ``q`` ``[B, Lp, H, D]`` (``Lp`` a
    multiple of ``tq``), ``k``, ``v`` ``[B, Lk, H, D]`` unscaled; ``pk_t``, ``pq_t`` ``[H, D, 2
    span]`` (``pos_key / s``, ``pos_query / s``, transposed) or None; positions and mask as in
    :func:`_blocked_attention`. No dropout.
    """
    return _tiled_forward(cfg, q, k, v, pk_t, pq_t, rel, dist, mask)[0]


def _tiled_attention_fwd(cfg, q, k, v, pk_t, pq_t, rel, dist, mask):
    out, lse = _tiled_forward(cfg, q, k, v, pk_t, pq_t, rel, dist, mask)
    return out, (q, k, v, pk_t, pq_t, rel, dist, mask, out, lse)


def _tiled_attention_bwd(cfg, res, g):
    """:func:`_blocked_attention_bwd` (query tiles of ``cfg[2]`` rows) from the same per-row lse,
    in its ``[B, H, L, D]`` layout; the p2c table ``k @ pos_query^T`` and ``k / s`` are formed
    here, their gradients taken back to ``k`` and ``pq_t``."""
    _, _, bq, lq, span, scale = cfg
    q, k, v, pk_t, pq_t, rel, dist, mask, out, lse = res
    acc = jnp.promote_types(q.dtype, jnp.float32)
    sw = lambda x: jnp.swapaxes(x, 1, 2)
    q_h, k_h, v_h = sw(q), sw(k), sw(v)
    s_val = jnp.asarray(scale, k.dtype)
    t_p = p2c_vjp = None
    if pq_t is not None:
        t_p, p2c_vjp = jax.vjp(lambda k, p: jnp.matmul(k, p, preferred_element_type=acc), k_h, pq_t)
    k_s, scale_vjp = jax.vjp(lambda k: k / s_val, k_h)
    grads = _blocked_attention_bwd((bq, 0.0, lq, span, None),
                                   (q_h, k_s, v_h, pk_t, t_p, rel, dist, mask, None, sw(out), lse), sw(g))
    dq, dk_s, dv, dpk, dtp = grads[:5]
    (dk,) = scale_vjp(dk_s)
    dpq = None
    if pq_t is not None:
        dk_p, dpq = p2c_vjp(dtp)
        dk = dk + dk_p.astype(dk.dtype)
    return (sw(dq), sw(dk), sw(dv), dpk, dpq, None, None, None)


_tiled_attention.defvjp(_tiled_attention_fwd, _tiled_attention_bwd)


def _per_head(head_mask, ndim: int = 4) -> bool:
    """``head_mask`` scales whole (batch, head) rows: its last two (query, key) axes are unit."""
    shape = (1,) * (ndim - head_mask.ndim) + tuple(head_mask.shape)
    return len(shape) == ndim and shape[-2:] == (1, 1)


def _choose_block(query_block, key_block, lq: int, return_probs: bool, bias, head_mask,
                  dropout: bool) -> tuple[int, int]:
    """``(query tile, key tile)``: ``(0, 0)`` the unblocked path, ``(n, 0)`` the query-blocked
    path, ``(n, m)`` the key-tiled forward (with the query-blocked backward)."""
    if query_block is not None and int(query_block) < 0:
        raise ValueError(f"query_block must be None (automatic), 0 (never) or a positive tile size, got {query_block}")
    if key_block is not None and int(key_block) < 0:
        raise ValueError(f"key_block must be None (automatic), 0 (never) or a positive tile size, got {key_block}")
    if return_probs or bias is not None or (head_mask is not None and not _per_head(jnp.asarray(head_mask))):
        return 0, 0  # probabilities (L x L anyway), bias and per-position head masks: the unblocked path
    if query_block is None:
        if lq < AUTO_BLOCK_MIN_LENGTH:
            return 0, 0
        if key_block == 0 or (key_block is None and dropout):
            return AUTO_BLOCK, 0
        return min(AUTO_TILED_QUERY_BLOCK, lq), int(key_block or AUTO_KEY_BLOCK)
    if int(query_block) == 0:
        return 0, 0
    return min(int(query_block), lq), int(key_block or 0)


def _blocked(q, k, v, s, pk, pq, rel, dist, att_span, mask, head_mask, dropout_rate, dropout_rng, block, acc,
             key_block=0, scale=None):
    """The blocked path from ``[B, H, L, D]`` q, k, v: pads the queries to a multiple of ``block``,
    runs :func:`_blocked_attention`, slices. Positions: ``rel`` ``[Lq, Lk]`` or the Toeplitz
    ``dist``. ``[B, H, Lq, D]``."""
    b, h, lq, _ = q.shape
    lk = k.shape[2]
    lp = -(-lq // block) * block
    pad = lp - lq
    q_p = jnp.pad(q, ((0, 0), (0, 0), (0, pad), (0, 0))) if pad else q
    pk_t = None if pk is None else jnp.transpose(pk / s, (1, 2, 0))  # [H, D, 2 span]
    pq_t = None if pq is None else jnp.transpose(pq / s, (1, 2, 0))
    t_p = None if pq is None or key_block else jnp.matmul(k, pq_t, preferred_element_type=acc)
    if pk is None and pq is None:
        rel = dist = None
    if mask is not None:
        mask = jnp.asarray(mask)
        if mask.dtype != jnp.bool_:
            mask = mask != 0
        mask = mask.reshape((1,) * (4 - mask.ndim) + mask.shape)
        if mask.shape[2] != 1:
            mask = jnp.broadcast_to(mask, (*mask.shape[:2], lq, lk))
            if pad:
                mask = jnp.pad(mask, ((0, 0), (0, 0), (0, pad), (0, 0)), constant_values=True)
        elif mask.shape[3] != lk:
            mask = jnp.broadcast_to(mask, (*mask.shape[:3], lk))
    rate = float(dropout_rate) if dropout_rng is not None else 0.0
    if key_block:
        if rate > 0.0:
            raise ValueError("the key-tiled forward (key_block > 0) has no dropout; pass key_block=0 (or None)")
        bq = AUTO_BLOCK if block % AUTO_BLOCK == 0 else block  # backward query tile (divides Lp)
        cfg = (int(block), int(min(key_block, lk)), bq, lq, int(att_span or 0),
               float(s) if scale is None else float(scale))
        # the caller's [B, L, H, D] layout (these transposes cancel the caller's): the kernel slices
        # and transposes tiles itself, no [B, H, L, D] copies
        out = jnp.swapaxes(_tiled_attention(cfg, jnp.swapaxes(q_p, 1, 2), jnp.swapaxes(k, 1, 2),
                                            jnp.swapaxes(v, 1, 2), pk_t, pq_t, rel, dist, mask), 1, 2)
    else:
        cfg = (int(block), rate, lq, int(att_span or 0), None)
        out = _blocked_attention(cfg, q_p, k / s, v, pk_t, t_p, rel, dist, mask,
                                 dropout_rng if rate > 0.0 else None)
    out = out[:, :, :lq] if pad else out
    if head_mask is not None:
        out = (out.astype(acc) * jnp.asarray(head_mask).astype(acc)).astype(v.dtype)
    return out


def disentangled_attention(
    query: Array,
    key: Array,
    value: Array,
    *,
    pos_key: Array | None = None,
    pos_query: Array | None = None,
    relative_pos: Array | None = None,
    att_span: int | None = None,
    pos_att_type: tuple[str, ...] | list[str] = ("c2p", "p2c"),
    position_buckets: int = -1,
    max_relative_positions: int = -1,
    mask: Array | None = None,
    bias: Array | None = None,
    head_mask: Array | None = None,
    scale: float | None = None,
    dropout_rate: float = 0.0,
    dropout_rng: Array | None = None,
    deterministic: bool = True,
    return_probs: bool = False,
    query_block: int | None = None,
    key_block: int | None = None,
) -> tuple[Array, Array | None]:
    """Disentangled attention exactly as HF's ``DisentangledSelfAttention`` (after projections).

    Args:
      query: ``[B, Lq, H, D]``; key, value: ``[B, Lk, H, D]`` (already projected, unscaled).
      pos_key: ``[2 * att_span, H, D]``, the relative embeddings projected by the key
        projection (``share_att_key``) or ``pos_key_proj``; needed for ``"c2p"``.
      pos_query: ``[2 * att_span, H, D]``, projected by the query projection or
        ``pos_query_proj``; needed for ``"p2c"``. Extra rows beyond ``2 * att_span`` are
        ignored, as HF slices ``rel_embeddings[:2 * att_span]``.
      relative_pos: int ``[Lq, Lk]`` (or ``[1, Lq, Lk]``), from :func:`build_relative_position`.
        When None (and ``pos_att_type`` is not empty) the kernel builds
        ``build_relative_position(Lq, Lk, position_buckets, max_relative_positions)`` itself.
      position_buckets, max_relative_positions: the bucket settings used when ``relative_pos``
        is None (HF's config fields; ``-1`` = no log buckets, the plain ``i - j``). Passing them
        together with ``relative_pos`` is an error (one source of positions).
      att_span: HF's ``pos_ebd_size``: ``position_buckets`` if > 0 else ``max_relative_positions``
        (see :func:`relative_attention_span`); needed when ``pos_att_type`` is not empty.
      pos_att_type: any subset of ``("c2p", "p2c")``. ``"p2c"`` needs ``Lq == Lk`` (as in
        HF, where the p2c term is ``[Lk, Lk]`` and must add onto ``[Lq, Lk]`` scores).
      mask: broadcastable to ``[B, H, Lq, Lk]``, True (or non-zero) keeps (SEW-D: ``[B, 1, 1, Lk]``).
        As HF's ``XSoftmax``: masked scores -> dtype minimum before the softmax, masked
        probabilities -> 0 after it, so a fully masked row gives zeros (not uniform).
      bias: optional additive scores broadcastable to ``[B, H, Lq, Lk]`` (not used by HF).
      head_mask: optional, multiplies the probabilities after dropout, as in ``dense``.
      scale: must be None: the scale is HF's ``sqrt(D * scale_factor)``.
      dropout_rate, dropout_rng, deterministic: dropout on the probabilities (HF's
        ``StableDropout`` is ordinary inverted dropout). Dropout of the relative embeddings
        (``pos_dropout``) belongs to the caller, before the projections.
      return_probs: also return the (post-dropout, as HF) probabilities ``[B, H, Lq, Lk]``.
      query_block: the memory-lean query-blocked path: a ``lax.map`` over tiles of
        ``query_block`` query rows (queries padded to a multiple), so only one tile of
        ``[B, H, query_block, Lk]`` temporaries is live, with a custom VJP that is blocked too
        (FlashAttention-style recomputation from the per-row log-sum-exp). ``None``
        (default): when ``Lq >= AUTO_BLOCK_MIN_LENGTH``, the key-tiled forward (see
        ``key_block``) with query tiles of ``AUTO_TILED_QUERY_BLOCK`` rows, or with active dropout
        (or ``key_block=0``) the query-blocked one with tiles of ``AUTO_BLOCK`` rows; the
        backward is query-blocked either way. ``0``: never; ``n > 0``: tiles of ``n`` rows. ``return_probs``, ``bias`` and a
        ``head_mask`` that varies over queries or keys always take the unblocked path. With
        dropout, the blocked path draws each tile's mask from ``fold_in(dropout_rng, tile)``:
        the same distribution, but not the same mask as the unblocked path for the same key.
      key_block: the key-tiled forward: for each query tile, a ``lax.scan`` over tiles of
        ``key_block`` keys (padded, the padding masked) with an online softmax, the p2c table
        formed per key tile, so only ``[B, H, query tile, key_block]`` temporaries and one query
        tile's c2p table are live. ``None`` (default): ``AUTO_KEY_BLOCK`` when ``query_block`` is
        None too (and no dropout is active), else off; ``0``: off; ``n > 0``: tiles of ``n``
        keys (with a positive or automatic ``query_block``; no dropout: raises).

    Returns:
      ``(out [B, Lq, H, D], probs [B, H, Lq, Lk] or None)``.
    """
    check_qkv(query, key, value)
    if scale is not None:
        raise ValueError(
            "disentangled_attention fixes the scale to HF's sqrt(head_dim * scale_factor); pass scale=None"
        )
    types = tuple(pos_att_type or ())
    unknown = [t for t in types if t not in POS_ATT_TYPES]
    if unknown:
        raise ValueError(f"pos_att_type entries must be among {POS_ATT_TYPES}, got {unknown}")
    use_c2p, use_p2c = "c2p" in types, "p2c" in types
    if use_c2p or use_p2c:
        if att_span is None or int(att_span) < 1:
            raise ValueError(f"pos_att_type {types} needs att_span >= 1, got {att_span}")
        att_span = int(att_span)
    if relative_pos is not None and (position_buckets > 0 or max_relative_positions > 0):
        raise ValueError(
            "pass either relative_pos or the bucket settings (position_buckets / max_relative_positions) "
            f"to build it from, not both (got position_buckets={position_buckets}, "
            f"max_relative_positions={max_relative_positions} and a relative_pos array)"
        )

    dropout_active = dropout_rate > 0.0 and not deterministic
    if dropout_active and dropout_rng is None:
        raise ValueError("attention dropout in training mode needs a dropout_rng")

    _, lq, heads, head_dim = query.shape
    lk = key.shape[1]
    rel = dist = None
    block, kblock = _choose_block(query_block, key_block, lq, return_probs, bias, head_mask, dropout_active)
    if (use_c2p or use_p2c) and relative_pos is None and block:
        # the blocked path reads positions from the Toeplitz vector of every i - j: no [L, L] array
        dist = jnp.arange(-(lk - 1), lq, dtype=jnp.int32)  # dist[i - j + Lk - 1] = i - j
        if position_buckets > 0 and max_relative_positions > 0:
            dist = make_log_bucket_position(dist, position_buckets, max_relative_positions).astype(jnp.int32)
    elif use_c2p or use_p2c:
        if relative_pos is None:
            relative_pos = build_relative_position(lq, lk, position_buckets, max_relative_positions)
        rel = _as_2d_positions(relative_pos, lq, lk, "relative_pos")
    if use_c2p:
        pk = _check_pos(pos_key, "c2p", "pos_key", att_span, heads, head_dim).astype(query.dtype)
    if use_p2c:
        if lq != lk:
            raise ValueError(
                f'"p2c" attention needs as many queries as keys (HF adds a [Lk, Lk] position->content '
                f"term to the [Lq, Lk] scores), got Lq={lq}, Lk={lk}"
            )
        pq = _check_pos(pos_query, "p2c", "pos_query", att_span, heads, head_dim).astype(query.dtype)
    scale_factor = 1 + int(use_c2p) + int(use_p2c)
    # torch: sqrt(tensor(D, float32) * scale_factor), cast to the input dtype.
    scale_value = float(np.sqrt(np.float32(head_dim) * np.float32(scale_factor), dtype=np.float32))
    acc = jnp.promote_types(query.dtype, jnp.float32)  # softmax statistics in >= float32
    s = jnp.asarray(scale_value, query.dtype)

    # [B, H, L, D] and batched matmuls (einsums on [B, L, H, D] make XLA:CPU pick slower layouts)
    q, k, v = (jnp.swapaxes(x, 1, 2) for x in (query, key, value))
    if block:
        out = _blocked(q, k, v, s, pk if use_c2p else None, pq if use_p2c else None, rel, dist, att_span,
                       mask, head_mask,
                       dropout_rate if dropout_active else 0.0, dropout_rng if dropout_active else None,
                       block, acc, kblock, scale_value)
        return jnp.swapaxes(out, 1, 2), None
    # HF: bmm(q, k^T / s)
    scores = jnp.matmul(q, jnp.swapaxes(k / s, -1, -2), preferred_element_type=acc)
    if use_c2p or use_p2c:
        # HF divides the gathered [Lq, Lk] terms by s; dividing the [2 span, H, D] tables is the same
        # up to rounding and much cheaper.
        tables, indices = [], []
        if use_c2p:  # c2p[i, j] = (q_i . pos_key[clamp(rel[i, j] + span)]) / s
            tables.append(jnp.matmul(q, jnp.transpose(pk / s, (1, 2, 0)), preferred_element_type=acc))
            indices.append((jnp.clip(rel + att_span, 0, 2 * att_span - 1), "row"))
        if use_p2c:  # p2c[i, j] = (k_j . pos_query[clamp(-rel[j, i] + span)]) / s
            tables.append(jnp.matmul(k, jnp.transpose(pq / s, (1, 2, 0)), preferred_element_type=acc))
            indices.append((jnp.clip(-rel.T + att_span, 0, 2 * att_span - 1), "col"))
        scores = scores + _relative_scores(tables, indices)
    if bias is not None:
        scores = scores + bias.astype(acc)

    # XSoftmax: masked scores -> dtype min, softmax, masked probabilities -> 0 (a fully masked
    # row gives zeros). Unnormalised weights; the normalisation divides the [B, H, Lq, D]
    # output instead of the [B, H, Lq, Lk] weights unless the probabilities are returned.
    if mask is not None:
        mask = jnp.asarray(mask)
        if mask.dtype != jnp.bool_:
            mask = mask != 0
        scores = jnp.where(mask, scores, jnp.finfo(acc).min)
    weights = jnp.exp(scores - jax.lax.stop_gradient(scores.max(axis=-1, keepdims=True)))
    if mask is not None:
        weights = jnp.where(mask, weights, jnp.zeros((), acc))
    denominator = weights.sum(axis=-1, keepdims=True)  # [B, H, Lq, 1]
    if mask is not None:  # fully masked rows: 0 / 1 instead of 0 / 0
        denominator = jnp.where(denominator > 0, denominator, jnp.ones((), acc))
    if return_probs:
        weights = weights / denominator

    if dropout_active:
        keep = bernoulli(dropout_rng, 1.0 - dropout_rate, weights.shape)
        weights = jnp.where(keep, weights / jnp.asarray(1.0 - dropout_rate, acc), jnp.zeros((), acc))
    if head_mask is not None:
        weights = weights * head_mask.astype(acc)
    out = jnp.matmul(weights.astype(value.dtype), v, preferred_element_type=acc)
    if not return_probs:
        out = out / denominator
    out = jnp.swapaxes(out.astype(value.dtype), 1, 2)
    probs = weights.astype(value.dtype) if return_probs else None
    return out, probs


def relative_attention_span(position_buckets: int, max_relative_positions: int,
                            max_position_embeddings: int) -> int:
    """HF's ``pos_ebd_size``: ``position_buckets`` if > 0, else ``max_relative_positions``
    (which falls back to ``max_position_embeddings`` when < 1)."""
    if max_relative_positions < 1:
        max_relative_positions = max_position_embeddings
    return position_buckets if position_buckets > 0 else max_relative_positions


__all__ = [
    "build_relative_position",
    "disentangled_attention",
    "make_log_bucket_position",
    "relative_attention_span",
]
