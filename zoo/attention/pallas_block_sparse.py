"""BigBird ITC block-sparse attention as fused Pallas kernels (forward and blocked backward).

Same semantics as :func:`zoo.attention.block_sparse.block_sparse_attention` (HF's BigBird
ITC), which stays the reference; this module only changes how it is computed.

The sparsity pattern is a flat list of *pairs* (query block, key block, flags) per
(batch, head): the global query rows 0 and n-1 pair with every key block, rows 1..n-2 with
the first block, the window i-1, i, i+1, their random blocks and the last block (rows 1 and
n-2 without the duplicated global slot). A duplicate random block is one more pair, so it
counts once per slot, as in the XLA kernel. Flags: whether the query's own padding applies
to the pair (``_slot_tables``), and whether the pair starts / ends its run.

Every kernel walks *runs* of pairs that share one output block:

* forward and dq: pairs in query-block order (runs = query blocks);
* dk/dv: the same pairs sorted by key block on device (``argsort`` of the key blocks), the
  transpose of the pattern, random slots included; runs = key blocks. This is the
  "inverse table" design: no [.., slots, bs, D] buffer and no segment-sum in XLA.

Two drivers launch the same per-pair math (:func:`_fwd_step`, :func:`_dq_step`,
:func:`_dkv_step`):

* ``"tpu"`` (Mosaic): grid (B, H, pairs), the packed pair table fed by scalar prefetch,
  BlockSpec index maps pick each pair's blocks, the pair axis is "arbitrary", running
  statistics live in VMEM scratch, initialised at a run's first pair and written at its last
  (splash-attention style, without padding slot counts to the longest row);
* ``"gpu"`` (Triton): grid (B, H, runs), the table an ordinary operand, each program loops
  over its run's pairs with dynamic ref loads (``ref[pl.ds(blk * bs, bs), :]``).

``backend=None`` picks by lowering platform (:func:`zoo.attention.pallas_support.by_platform`);
on CPU both drivers run under Pallas' interpreter (``driver=`` chooses which, for tests).

Costs and limits: the packed table is ``[B or 1, H, pairs]`` int32 (pairs = 2n + (n-2)(5+r) - 2)
and sits in TPU SMEM whole (L=4096, bs=64, r=3, H=12: 7.5k words); per-batch ``rand_attn``
multiplies it by B. The per-row statistics (logsumexp, ``do . out``) are ``[.., L, 1]`` arrays,
lane-padded on TPU. Triton needs power-of-two block sizes (16/32/64 use dots; 4/8 use
dot-free products); head_dim is zero-padded to a power of two >= 16 there (exact).
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import pallas as pl

from zoo.attention import pallas_support as ps
from zoo.attention.block_sparse import (
    MASK_PENALTY,
    _key_padding,
    _slot_tables,
)

Array = jax.Array
DRIVERS = ("tpu", "gpu")


# --------------------------------------------------------------------------------------
# The pair tables (static layout from numpy; random key blocks filled in on device)
# --------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class _Plan:
    n: int
    r: int
    q: np.ndarray  # [P] query block of each pair (forward order)
    k: np.ndarray  # [P] key block (non-random pairs)
    rand: np.ndarray  # [P] index into rand_attn[..., rows * r] or -1
    uq: np.ndarray  # [P] the query's padding applies
    starts: np.ndarray  # [n + 1] first pair of each query block

    @property
    def pairs(self) -> int:
        return self.q.size

    @property
    def bits(self) -> int:
        return max(1, (self.n - 1).bit_length())


@functools.lru_cache(maxsize=64)
def _plan(n: int, r: int) -> _Plan:
    present, uses_query = _slot_tables(n, r)
    q, k, rand, uq = [], [], [], []

    def add(qb, kb, ri, u):
        q.append(qb), k.append(kb), rand.append(ri), uq.append(u)

    for j in range(n):
        add(0, j, -1, False)
    for row in range(n - 2):
        i = row + 1
        slots = [(0, -1), (i - 1, -1), (i, -1), (i + 1, -1)]
        slots += [(0, row * r + s) for s in range(r)] + [(n - 1, -1)]
        for s, (kb, ri) in enumerate(slots):
            if present[row, s]:
                add(i, kb, ri, bool(uses_query[row, s]))
    for j in range(n):
        add(n - 1, j, -1, False)
    q = np.asarray(q, np.int32)
    starts = np.searchsorted(q, np.arange(n + 1)).astype(np.int32)
    return _Plan(n, r, q, np.asarray(k, np.int32), np.asarray(rand, np.int32), np.asarray(uq, bool), starts)


def _pair_keys(plan: _Plan, rand_attn: Array) -> Array:
    """``[Bt, H, P]`` key block of every pair (``rand_attn`` ``[Bt, H, n-2, r]``)."""
    bt, h = rand_attn.shape[:2]
    static = jnp.broadcast_to(jnp.asarray(plan.k), (bt, h, plan.pairs))
    if plan.r == 0:
        return static
    flat = rand_attn.reshape(bt, h, -1).astype(jnp.int32)
    picked = jnp.take(flat, jnp.asarray(np.maximum(plan.rand, 0)), axis=-1)
    return jnp.where(jnp.asarray(plan.rand >= 0), picked, static)


def _pack(plan: _Plan, run: Array, pair: Array, uq: Array) -> Array:
    """``run << (bits + 3) | pair << 3 | last << 2 | first << 1 | uq`` (int32)."""
    first = jnp.concatenate([jnp.ones_like(run[..., :1], bool), run[..., 1:] != run[..., :-1]], -1)
    last = jnp.concatenate([run[..., 1:] != run[..., :-1], jnp.ones_like(run[..., :1], bool)], -1)
    flags = uq.astype(jnp.int32) | (first.astype(jnp.int32) << 1) | (last.astype(jnp.int32) << 2)
    return (run << (plan.bits + 3)) | (pair << 3) | flags


def _forward_table(plan: _Plan, keys: Array):
    q = jnp.broadcast_to(jnp.asarray(plan.q), keys.shape)
    table = _pack(plan, q, keys, jnp.broadcast_to(jnp.asarray(plan.uq), keys.shape))
    starts = jnp.broadcast_to(jnp.asarray(plan.starts), (*keys.shape[:2], plan.n + 1))
    return table, starts


def _transposed_table(plan: _Plan, keys: Array):
    """Pairs sorted by key block (stable), and the first pair of every key block."""
    order = jnp.argsort(keys, axis=-1, stable=True)
    run = jnp.take_along_axis(keys, order, -1)
    q = jnp.asarray(plan.q)[order]
    uq = jnp.asarray(plan.uq)[order]
    bounds = jnp.arange(plan.n + 1, dtype=run.dtype)
    starts = jax.vmap(jax.vmap(lambda row: jnp.searchsorted(row, bounds, side="left")))(run).astype(jnp.int32)
    return _pack(plan, run, q, uq), starts


# --------------------------------------------------------------------------------------
# Per-pair math, shared by both drivers
# --------------------------------------------------------------------------------------


def _nt(a, b):
    """``a @ b.T`` in fp32."""
    return jax.lax.dot_general(a, b, (((1,), (1,)), ((), ())), preferred_element_type=jnp.float32)


def _nn(a, b):
    return jax.lax.dot_general(a, b, (((1,), (0,)), ((), ())), preferred_element_type=jnp.float32)


def _nt_small(a, b):
    """``a @ b.T`` without a dot: Triton's dots need every dimension >= 16 (block_size 4, 8)."""
    return jnp.sum(a.astype(jnp.float32)[:, None, :] * b.astype(jnp.float32)[None, :, :], axis=2)


def _nn_small(a, b):
    return jnp.sum(a.astype(jnp.float32)[:, :, None] * b.astype(jnp.float32)[None, :, :], axis=1)


DOTS = (_nt, _nn)
SMALL_DOTS = (_nt_small, _nn_small)


def _scores(x, y, key_keep, query_keep, uq, scale, nt):
    """Scores ``x @ y.T * scale`` plus HF's additive penalty. ``key_keep`` / ``query_keep`` are
    (1, bs) / (bs, 1) (or transposed, for the key-major backward); ``uq`` 1.0 where the
    query's own padding applies to this pair."""
    allowed = key_keep * (uq * query_keep + (1.0 - uq))
    return nt(x, y) * scale + (1.0 - allowed) * MASK_PENALTY


def _fwd_init(bs, d):
    return [((bs, 1), -jnp.inf), ((bs, 1), 0.0), ((bs, d), 0.0)]


def _fwd_step(carry, run, pair, uq, scale, dots):
    nt, nn = dots
    m, l, acc = carry
    q, q_keep = run
    k, v, k_keep = pair
    s = _scores(q, k, k_keep, q_keep, uq, scale, nt)
    m_new = jnp.maximum(m, jnp.max(s, axis=1, keepdims=True))
    alpha = jnp.exp(m - m_new)
    p = jnp.exp(s - m_new)
    l = alpha * l + jnp.sum(p, axis=1, keepdims=True)
    acc = alpha * acc + nn(p.astype(v.dtype), v)
    return m_new, l, acc


def _fwd_finish(carry, run, scale):
    m, l, acc = carry
    return acc / l, m + jnp.log(l)


def _dq_init(bs, d):
    return [((bs, d), 0.0)]


def _dq_step(carry, run, pair, uq, scale, dots):
    nt, nn = dots
    (dq,) = carry
    q, do, lse, di, q_keep = run
    k, v, k_keep = pair
    p = jnp.exp(_scores(q, k, k_keep, q_keep, uq, scale, nt) - lse)
    ds = p * (nt(do, v) - di)
    return (dq + nn(ds.astype(k.dtype), k),)


def _dq_finish(carry, run, scale):
    return (carry[0] * scale,)


def _dkv_init(bs, d):
    return [((bs, d), 0.0), ((bs, d), 0.0)]


def _dkv_step(carry, run, pair, uq, scale, dots):
    """Key-major: scores transposed ``[keys, queries]``, so every product is NN or NT."""
    nt, nn = dots
    dk, dv = carry
    k, v, k_keep = run  # k_keep (bs, 1)
    q, do, lse, di, q_keep = pair  # lse, di, q_keep (1, bs)
    p_t = jnp.exp(_scores(k, q, k_keep, q_keep, uq, scale, nt) - lse)
    dv = dv + nn(p_t.astype(do.dtype), do)
    ds_t = p_t * (nt(v, do) - di)
    dk = dk + nn(ds_t.astype(q.dtype), q)
    return dk, dv


def _dkv_finish(carry, run, scale):
    dk, dv = carry
    return dk * scale, dv


# --------------------------------------------------------------------------------------
# Drivers
# --------------------------------------------------------------------------------------
# An operand is (array, kind, has_heads) with kind "mat" [B, H, L, D] -> (bs, D) blocks,
# "col" [B, (H), L, 1] -> (bs, 1), "row" -> (1, bs) ([B, (H), n, 1, bs] for the TPU driver,
# [B, (H), 1, L] for the GPU driver). "run" operands follow the run's block, "pair"
# operands the pair's other block. Outputs are run-side ("mat" or "col").


@dataclasses.dataclass(frozen=True)
class _Kernel:
    init: callable
    step: callable
    finish: callable


_KERNELS = {
    "fwd": _Kernel(_fwd_init, _fwd_step, _fwd_finish),
    "dq": _Kernel(_dq_init, _dq_step, _dq_finish),
    "dkv": _Kernel(_dkv_init, _dkv_step, _dkv_finish),
}


def _to_layout(x, kind, driver, n, bs):
    if kind == "row":
        lead = x.shape[:-2]  # x is [.., L, 1]
        return x.reshape(*lead, n, 1, bs) if driver == "tpu" else x.reshape(*lead, 1, n * bs)
    return x


def _decode(v, bits):
    pair = jnp.right_shift(v, 3) & ((1 << bits) - 1)
    run = jnp.right_shift(v, bits + 3)
    return run, pair, v & 1, (v & 2) != 0, (v & 4) != 0


def _tpu_block(kind, heads, d, bs, blk_fn):
    """BlockSpec of one operand for the TPU driver; ``blk_fn(b, h, p, tbl)`` -> block."""
    if kind == "mat":
        return pl.BlockSpec((None, None, bs, d), lambda b, h, p, t: (b, h, blk_fn(b, h, p, t), 0))
    if kind == "col":
        if heads:
            return pl.BlockSpec((None, None, bs, 1), lambda b, h, p, t: (b, h, blk_fn(b, h, p, t), 0))
        return pl.BlockSpec((None, bs, 1), lambda b, h, p, t: (b, blk_fn(b, h, p, t), 0))
    if heads:
        return pl.BlockSpec((None, None, None, 1, bs), lambda b, h, p, t: (b, h, blk_fn(b, h, p, t), 0, 0))
    return pl.BlockSpec((None, None, 1, bs), lambda b, h, p, t: (b, blk_fn(b, h, p, t), 0, 0))


def _launch_tpu(name, table, run_ops, pair_ops, outs, *, bs, n, bits, scale, interpret):
    from jax.experimental.pallas import tpu as pltpu

    kernel = _KERNELS[name]
    bt, heads, pairs = table.shape
    batch = run_ops[0][0].shape[0]
    d = run_ops[0][0].shape[-1]

    def entry(b, h, p, t):
        return t[(b if bt > 1 else 0) * heads * pairs + h * pairs + p]

    run_blk = lambda b, h, p, t: jnp.right_shift(entry(b, h, p, t), bits + 3)
    pair_blk = lambda b, h, p, t: jnp.right_shift(entry(b, h, p, t), 3) & ((1 << bits) - 1)
    in_specs = [_tpu_block(k, hh, d, bs, run_blk) for _, k, hh in run_ops]
    in_specs += [_tpu_block(k, hh, d, bs, pair_blk) for _, k, hh in pair_ops]
    out_specs = [_tpu_block(k, True, d, bs, run_blk) for k, _ in outs]
    out_shape = [jax.ShapeDtypeStruct((batch, heads, n * bs, d if k == "mat" else 1), dt) for k, dt in outs]
    init = kernel.init(bs, d)
    n_run, n_pair, n_out = len(run_ops), len(pair_ops), len(outs)

    def body(t_ref, *refs):
        ins, out_refs, scratch = refs[:n_run + n_pair], refs[n_run + n_pair:][:n_out], refs[n_run + n_pair + n_out:]
        b, h, p = pl.program_id(0), pl.program_id(1), pl.program_id(2)
        _, _, uq, first, last = _decode(entry(b, h, p, t_ref), bits)

        @pl.when(first)
        def _init():
            for ref, (_, fill) in zip(scratch, init):
                ref[...] = jnp.full(ref.shape, fill, jnp.float32)

        run = [ref[...] for ref in ins[:n_run]]
        pair = [ref[...] for ref in ins[n_run:]]
        carry = kernel.step(tuple(ref[...] for ref in scratch), run, pair, uq.astype(jnp.float32), scale, DOTS)
        for ref, c in zip(scratch, carry):
            ref[...] = c

        @pl.when(last)
        def _write():
            for ref, res in zip(out_refs, kernel.finish(carry, run, scale)):
                ref[...] = res.astype(ref.dtype)

    grid_spec = pltpu.PrefetchScalarGridSpec(
        num_scalar_prefetch=1, grid=(batch, heads, pairs), in_specs=in_specs, out_specs=out_specs,
        scratch_shapes=[pltpu.VMEM(shape, jnp.float32) for shape, _ in init])
    return pl.pallas_call(
        body, out_shape=out_shape, grid_spec=grid_spec, interpret=interpret, name=f"block_sparse_{name}",
        compiler_params=pltpu.CompilerParams(dimension_semantics=("parallel", "parallel", "arbitrary")),
    )(table.reshape(-1), *[x for x, _, _ in run_ops], *[x for x, _, _ in pair_ops])


def _gpu_run_block(kind, heads, d, bs):
    if kind == "mat":
        return pl.BlockSpec((None, None, bs, d), lambda b, h, i: (b, h, i, 0))
    if kind == "col":
        return (pl.BlockSpec((None, None, bs, 1), lambda b, h, i: (b, h, i, 0)) if heads
                else pl.BlockSpec((None, bs, 1), lambda b, h, i: (b, i, 0)))
    return (pl.BlockSpec((None, None, 1, bs), lambda b, h, i: (b, h, 0, i)) if heads
            else pl.BlockSpec((None, 1, bs), lambda b, h, i: (b, 0, i)))


def _gpu_pair_block(kind, heads, d, length):
    shape = {"mat": (length, d), "col": (length, 1), "row": (1, length)}[kind]
    if heads:
        return pl.BlockSpec((None, None, *shape), lambda b, h, i: (b, h, 0, 0))
    return pl.BlockSpec((None, *shape), lambda b, h, i: (b, 0, 0))


def _gpu_load(ref, kind, blk, bs):
    start = pl.multiple_of(blk * bs, bs)
    if kind == "row":
        return ref[:, pl.ds(start, bs)]
    return ref[pl.ds(start, bs), :]


def _launch_gpu(name, table, starts, run_ops, pair_ops, outs, *, bs, n, bits, scale, interpret):
    from jax.experimental.pallas import triton as pltr

    dots = SMALL_DOTS if bs < 16 else DOTS

    kernel = _KERNELS[name]
    bt, heads, pairs = table.shape
    batch = run_ops[0][0].shape[0]
    d = run_ops[0][0].shape[-1]
    length = n * bs
    tsel = (lambda b, h, i: (b, h, 0)) if bt > 1 else (lambda b, h, i: (0, h, 0))
    in_specs = [pl.BlockSpec((None, None, pairs), tsel), pl.BlockSpec((None, None, n + 1), tsel)]
    in_specs += [_gpu_run_block(k, hh, d, bs) for _, k, hh in run_ops]
    in_specs += [_gpu_pair_block(k, hh, d, length) for _, k, hh in pair_ops]
    out_specs = [_gpu_run_block(k, True, d, bs) for k, _ in outs]
    out_shape = [jax.ShapeDtypeStruct((batch, heads, length, d if k == "mat" else 1), dt) for k, dt in outs]
    init = kernel.init(bs, d)
    n_run, n_pair = len(run_ops), len(pair_ops)
    pair_kinds = [k for _, k, _ in pair_ops]

    def body(t_ref, s_ref, *refs):
        ins, out_refs = refs[:n_run + n_pair], refs[n_run + n_pair:]
        i = pl.program_id(2)
        run = [ref[...] for ref in ins[:n_run]]

        def visit(p, carry):
            _, blk, uq, _, _ = _decode(t_ref[p], bits)
            pair = [_gpu_load(ref, kind, blk, bs) for ref, kind in zip(ins[n_run:], pair_kinds)]
            return kernel.step(carry, run, pair, uq.astype(jnp.float32), scale, dots)

        carry = tuple(jnp.full(shape, fill, jnp.float32) for shape, fill in init)
        carry = jax.lax.fori_loop(s_ref[i], s_ref[i + 1], visit, carry)
        for ref, res in zip(out_refs, kernel.finish(carry, run, scale)):
            ref[...] = res.astype(ref.dtype)

    return pl.pallas_call(
        body, out_shape=out_shape, grid=(batch, heads, n), in_specs=in_specs, out_specs=out_specs,
        interpret=interpret, name=f"block_sparse_{name}",
        compiler_params=pltr.CompilerParams(num_warps=4, num_stages=2),
    )(table, starts, *[x for x, _, _ in run_ops], *[x for x, _, _ in pair_ops])


def _gpu_dims(d):
    return max(16, 1 << max(0, (d - 1).bit_length()))


def _launch(name, table, starts, run_ops, pair_ops, outs, *, cfg, backend):
    """One kernel on one backend: layouts, head_dim padding (Triton), launch, unpadding."""
    n, bs, bits, scale, driver = cfg.n, cfg.block_size, cfg.bits, cfg.scale, cfg.driver
    if backend != "interpret":
        driver = backend
    interpret = ps.interpret_flag(backend)
    d = run_ops[0][0].shape[-1]
    dp = d
    if driver == "gpu":
        dp = _gpu_dims(d)
    fix = lambda ops: [(ps.pad_axis(x, x.ndim - 1, dp) if k == "mat" else _to_layout(x, k, driver, n, bs), k, hh)
                       for x, k, hh in ops]
    run_ops, pair_ops = fix(run_ops), fix(pair_ops)
    kw = dict(bs=bs, n=n, bits=bits, scale=scale, interpret=interpret)
    if driver == "tpu":
        res = _launch_tpu(name, table, run_ops, pair_ops, outs, **kw)
    else:
        res = _launch_gpu(name, table, starts, run_ops, pair_ops, outs, **kw)
    return [r[..., :d] if k == "mat" else r for r, (k, _) in zip(res, outs)]


def _dispatch(name, table, starts, run_ops, pair_ops, outs, cfg):
    arrays = [table, starts] + [x for x, _, _ in run_ops] + [x for x, _, _ in pair_ops]
    nr = len(run_ops)

    def launch(table, starts, *xs, backend):
        rops = [(x, k, hh) for x, (_, k, hh) in zip(xs[:nr], run_ops)]
        pops = [(x, k, hh) for x, (_, k, hh) in zip(xs[nr:], pair_ops)]
        return tuple(_launch(name, table, starts, rops, pops, outs, cfg=cfg, backend=backend))

    return ps.by_platform(launch, *arrays, backend=cfg.backend)


# --------------------------------------------------------------------------------------
# custom_vjp
# --------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class _Config:
    n: int
    r: int
    block_size: int
    scale: float
    backend: str | None
    driver: str

    @property
    def bits(self):
        return _plan(self.n, self.r).bits


def _forward(cfg, q, k, v, keep_col, keys):
    plan = _plan(cfg.n, cfg.r)
    table, starts = _forward_table(plan, keys)
    out, lse = _dispatch("fwd", table, starts, [(q, "mat", True), (keep_col, "col", False)],
                         [(k, "mat", True), (v, "mat", True), (keep_col, "row", False)],
                         [("mat", q.dtype), ("col", jnp.float32)], cfg)
    return out, lse


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def _attend(cfg, q, k, v, keep_col, keys):
    return _forward(cfg, q, k, v, keep_col, keys)[0]


def _attend_fwd(cfg, q, k, v, keep_col, keys):
    out, lse = _forward(cfg, q, k, v, keep_col, keys)
    return out, (q, k, v, keep_col, keys, out, lse)


def _attend_bwd(cfg, res, g):
    q, k, v, keep_col, keys, out, lse = res
    plan = _plan(cfg.n, cfg.r)
    do = g.astype(q.dtype)
    di = jnp.sum(g.astype(jnp.float32) * out.astype(jnp.float32), axis=-1, keepdims=True)  # [B, H, L, 1]
    table, starts = _forward_table(plan, keys)
    (dq,) = _dispatch("dq", table, starts,
                      [(q, "mat", True), (do, "mat", True), (lse, "col", True), (di, "col", True),
                       (keep_col, "col", False)],
                      [(k, "mat", True), (v, "mat", True), (keep_col, "row", False)],
                      [("mat", q.dtype)], cfg)
    table_t, starts_t = _transposed_table(plan, keys)
    dk, dv = _dispatch("dkv", table_t, starts_t,
                       [(k, "mat", True), (v, "mat", True), (keep_col, "col", False)],
                       [(q, "mat", True), (do, "mat", True), (lse, "row", True), (di, "row", True),
                        (keep_col, "row", False)],
                       [("mat", k.dtype), ("mat", v.dtype)], cfg)
    return dq, dk, dv, None, None


_attend.defvjp(_attend_fwd, _attend_bwd)


# --------------------------------------------------------------------------------------
# Public API
# --------------------------------------------------------------------------------------


def block_sparse_flash_attention(
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
    block_size: int,
    rand_attn: Array | None = None,
    num_random_blocks: int | None = None,
    backend: str | None = None,
    driver: str = "tpu",
) -> tuple[Array, None]:
    """:func:`~zoo.attention.block_sparse.block_sparse_attention` as fused Pallas kernels.

    Same arguments and results (``out [B, L, H, D]``, ``None``), differentiable in
    ``query``, ``key``, ``value`` (and ``head_mask``); ``rand_attn`` gets no gradient.
    Not supported (``ValueError``): ``return_probs`` (no probabilities are formed; use the
    XLA kernel), active attention dropout (HF's block-sparse layer has none), ``bias``.
    ``backend``: ``"tpu"``, ``"gpu"``, ``"interpret"`` or ``None`` (the lowering platform's).
    ``driver`` (``"tpu"`` / ``"gpu"``): which launch the interpreter runs (tests).
    """
    if bias is not None:
        raise ValueError("block-sparse attention does not take a dense score bias")
    ps.refuse_unfused("block_sparse_flash_attention", return_probs=return_probs, dropout_rate=dropout_rate,
                      deterministic=deterministic)  # (HF's block-sparse layer has no attention dropout anyway)
    ps.check_backend(backend)
    if driver not in DRIVERS:
        raise ValueError(f"driver must be one of {DRIVERS}, got {driver!r}")
    if query.ndim != 4 or query.shape != key.shape or key.shape != value.shape:
        raise ValueError("block-sparse attention expects query, key, value of one shape [batch, length, heads, "
                         f"head_dim], got {query.shape}, {key.shape}, {value.shape}")
    batch, length, heads, head_dim = query.shape
    bs = block_size
    if length % bs or length // bs < 4:
        raise ValueError(f"block-sparse attention needs a length that is a multiple of block_size={bs} "
                         f"and at least 4 blocks, got length {length}")
    n = length // bs
    if 2 * max(1, (n - 1).bit_length()) + 3 > 31:
        raise ValueError(f"too many blocks ({n}) for the fused block-sparse kernel's pair table")
    if rand_attn is None:
        rand_attn = jnp.zeros((heads, n - 2, num_random_blocks or 0), jnp.int32)
    rand_attn = jnp.asarray(rand_attn)
    if rand_attn.ndim == 3:
        rand_attn = rand_attn[None]
    if rand_attn.ndim != 4 or rand_attn.shape[1:3] != (heads, n - 2) or rand_attn.shape[0] not in (1, batch):
        raise ValueError(f"rand_attn must be [heads={heads}, blocks-2={n - 2}, R] (optionally with a batch "
                         f"axis), got shape {rand_attn.shape}")
    hm = None
    if head_mask is not None:
        hm = jnp.asarray(head_mask)
        if hm.ndim != 4 or hm.shape[-2:] != (1, 1) or hm.shape[0] not in (1, batch) or hm.shape[1] not in (1, heads):
            raise ValueError(f"block-sparse head_mask must broadcast to [B, H, 1, 1], got shape {hm.shape}")
    r = rand_attn.shape[-1]
    scale = head_dim**-0.5 if scale is None else float(scale)
    cfg = _Config(n, r, bs, scale, backend, driver)

    keep = _key_padding(mask, batch, length)  # [B, L]
    keys = _pair_keys(_plan(n, r), jax.lax.stop_gradient(rand_attn))
    q, k, v = (jnp.swapaxes(x, 1, 2) for x in (query, key, value))  # [B, H, L, D]
    out = _attend(cfg, q, k, v, jax.lax.stop_gradient(keep)[:, :, None], keys)  # [B, H, L, D]
    out = out * keep[:, None, :, None].astype(out.dtype)
    if hm is not None:
        out = out * hm.astype(out.dtype)
    return jnp.swapaxes(out, 1, 2), None


__all__ = ["block_sparse_flash_attention"]
