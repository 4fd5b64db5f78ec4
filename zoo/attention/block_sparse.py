"""BigBird ITC block-sparse attention, built from reshapes, gathers and einsums over blocks.

Each query block ``i`` of ``n = L // block_size`` blocks attends to

* every key, if ``i`` is the first or last block (the two global blocks);
* otherwise the first and last key blocks (global), the window ``i-1, i, i+1`` and
  ``num_random_blocks`` random blocks, chosen per head by ``rand_attn``.

No ``L x L`` matrix is formed (except the probabilities, built only when asked for, as
HF does). Rows ``1`` and ``n-2`` use the same layout as the middle rows with the one
duplicated global slot removed, so all ``n-2`` non-global rows run as one batched einsum.
Masking follows HF exactly: an additive ``-10000`` for padded keys, applied with the query's
own padding on window and random slots (HF's band/rand masks), and padded query rows
are zeroed in the output.

Random blocks (:func:`sample_random_blocks`) are drawn on device with ``jax.random`` from a
key, per head, among the blocks HF's rules allow (:func:`random_block_plan`, computed from
static shapes). Without a key, all indices are 0: HF's inference behaviour. Block 0 then
counts ``1 + num_random_blocks`` times in the softmax of rows 1..n-2, and the dense
probabilities (which hold one copy, as HF's) sum to less than 1 on those rows.
"""

from __future__ import annotations

import dataclasses
import functools
import re

import jax
import jax.numpy as jnp
import numpy as np

from zoo.rng import bernoulli

Array = jax.Array

MASK_PENALTY = -10000.0  # HF's attn_mask_penalty
LEGACY_LENGTHS = (1024, 3072, 4096)  # lengths with the paper's fixed plan in HF


# --------------------------------------------------------------------------------------
# Which random blocks are legal (host side, static shapes only)
# --------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class RandomSegment:
    """``count`` random slots per row, drawn from ``legal[row]`` (rows are blocks 1..n-2).

    ``assigned[row]`` False means HF never fills these slots for that row (they stay 0).
    """

    count: int
    legal: np.ndarray  # [n - 2, n] bool
    assigned: np.ndarray  # [n - 2] bool


def _rand_attn_plan(seq_len: int, block_size: int, num_random_blocks: int):
    """HF's ``_get_rand_attn_plan``: (end lengths, random blocks per plan step)."""
    r, n = num_random_blocks, seq_len // block_size
    if 2 * r + 5 < n:
        return [(2 * r + 5) * block_size, seq_len], [r, 0]
    if r + 5 < n:
        return [(r + 5) * block_size, seq_len], [r // 2, r - r // 2]
    return [seq_len], [r]


def _row_candidates(block_id, to_start, to_end):
    """HF's ``_get_single_block_row_attention`` (window 1 left/right, 1 global each side)."""
    illegal = set(range(block_id - 1, block_id + 2)) | {0, to_end - 1}
    if block_id == 1:
        illegal.add(to_end - 2)
    if block_id == to_end - 2:
        illegal.add(1)
    return [b for b in range(to_start, to_end) if b not in illegal]


def _legacy_candidates(seq_len, block_size, max_seqlen):
    """HF's ``_bigbird_block_rand_mask`` (lengths 1024/3072/4096), rows 1..n-2."""
    n_max = max_seqlen // block_size
    middle = np.arange(1, n_max - 1)
    last = n_max - 1
    if 1024 > 2 * block_size:
        last = 1024 // block_size - 1
    rows = []
    for i in range(1, seq_len // block_size - 1):
        start, end = i - 2, i
        if i == 1:
            cands = middle[2:last]
        elif i == 2:
            cands = middle[3:last]
        elif i in (n_max - 3, n_max - 2):
            cands = middle[:last]
        elif start > last:
            cands = middle[:last]
        elif end + 1 == last:
            cands = middle[:start]
        else:
            cands = np.concatenate((middle[:start], middle[end + 1 : last]))
        rows.append(cands)
    return rows


@functools.lru_cache(maxsize=64)
def random_block_plan(seq_len: int, block_size: int, num_random_blocks: int,
                      max_seqlen: int | None = None) -> tuple[RandomSegment, ...]:
    """The legal random blocks of every row, exactly as HF draws them in training.

    Lengths 1024, 3072 and 4096 use the paper's plan (random blocks among the first
    1024 tokens, rows laid out for ``max_seqlen``); other lengths use
    ``_get_rand_attn_plan`` + ``_bigbird_block_rand_mask_with_head``.
    Raises ``ValueError`` where HF could not draw (too few legal blocks).
    """
    n, r = seq_len // block_size, num_random_blocks
    if seq_len % block_size or n < 4:
        raise ValueError(f"block-sparse attention needs a length that is a multiple of block_size={block_size} "
                         f"and at least 4 blocks, got length {seq_len}")
    rows = n - 2
    segments = []
    if r == 0:
        return ()
    if seq_len in LEGACY_LENGTHS:
        max_seqlen = seq_len if max_seqlen is None else max_seqlen
        if max_seqlen < seq_len:
            raise ValueError(f"length {seq_len} exceeds max_seqlen={max_seqlen} (max_position_embeddings)")
        legal = np.zeros((rows, n), bool)
        for row, cands in enumerate(_legacy_candidates(seq_len, block_size, max_seqlen)):
            if cands.size and cands.max() >= n:
                raise ValueError(f"HF's fixed plan for length {seq_len} with max_seqlen={max_seqlen} and "
                                 f"block_size={block_size} picks blocks beyond the sequence")
            legal[row, cands] = True
        segments.append((r, legal, np.ones(rows, bool)))
    else:
        ends, counts = _rand_attn_plan(seq_len, block_size, r)
        ends = [e // block_size for e in ends]
        legal = [np.zeros((n, n), bool) for _ in counts]
        assigned = [np.zeros(n, bool) for _ in counts]

        def fill(seg, row_range, to_start, to_end):
            for row in row_range:
                legal[seg][row, _row_candidates(row, to_start, to_end)] = True
                assigned[seg][row] = True

        for p in range(len(ends)):
            if p > 0:
                if counts[p] > 0:
                    fill(p, range(1, ends[p - 1]), ends[p - 1], ends[p])
                for q in range(p):
                    if counts[q] > 0:
                        fill(q, range(ends[p - 1], ends[p]), 0 if q == 0 else ends[q - 1], ends[q])
            if counts[p] > 0:
                start = 1 if p == 0 else ends[p - 1]
                fill(p, range(start, ends[p]), 0 if p == 0 else ends[p - 1], ends[p])
        for seg, count in enumerate(counts):
            if count:
                segments.append((count, legal[seg][1:-1], assigned[seg][1:-1]))
    out = []
    for count, legal, assigned in segments:
        short = np.flatnonzero(assigned & (legal.sum(-1) < count))
        if short.size:
            raise ValueError(
                f"block-sparse attention at length {seq_len} (block_size={block_size}, "
                f"num_random_blocks={num_random_blocks}): block row {short[0] + 1} has only "
                f"{legal[short[0]].sum()} legal random blocks for {count} slots; use a longer sequence "
                "or fewer random blocks"
            )
        legal.setflags(write=False)
        assigned.setflags(write=False)
        out.append(RandomSegment(count, legal, assigned))
    return tuple(out)


def sample_random_blocks(rng: Array | None, num_heads: int, seq_len: int, block_size: int,
                         num_random_blocks: int, max_seqlen: int | None = None) -> Array:
    """Random key blocks ``[num_heads, n - 2, num_random_blocks]`` (int32) for rows 1..n-2.

    ``rng=None`` gives all zeros (HF at inference). Otherwise every head and row draws
    its own blocks uniformly without replacement among the legal ones; jit-friendly.
    """
    rows = seq_len // block_size - 2
    if rng is None or num_random_blocks == 0:
        return jnp.zeros((num_heads, rows, num_random_blocks), jnp.int32)
    plan = random_block_plan(seq_len, block_size, num_random_blocks, max_seqlen)
    picks = []
    for segment, key in zip(plan, jax.random.split(rng, len(plan))):
        u = jax.random.uniform(key, (num_heads, *segment.legal.shape))
        u = jnp.where(jnp.asarray(segment.legal), u, -1.0)
        _, idx = jax.lax.top_k(u, segment.count)
        picks.append(jnp.where(jnp.asarray(segment.assigned)[:, None], idx, 0).astype(jnp.int32))
    return jnp.concatenate(picks, axis=-1)


# --------------------------------------------------------------------------------------
# The kernel
# --------------------------------------------------------------------------------------


def _key_padding(mask: Array | None, batch: int, length: int) -> Array:
    """``[B, L]`` float 1/0 from a key-padding mask ``[B, L]`` or ``[B, 1, 1, L]``."""
    if mask is None:
        return jnp.ones((batch, length), jnp.float32)
    mask = jnp.asarray(mask)
    if mask.ndim == 4:
        if mask.shape[1:3] != (1, 1):
            raise ValueError("block-sparse attention takes a key-padding mask [B, 1, 1, L] (queries share it), "
                             f"got shape {mask.shape}")
        mask = mask[:, 0, 0]
    if mask.ndim != 2 or mask.shape[-1] != length:
        raise ValueError(f"block-sparse mask must be [batch, {length}] or [batch, 1, 1, {length}], "
                         f"got shape {mask.shape}")
    return jnp.broadcast_to(mask.astype(jnp.float32), (batch, length))


def _slot_tables(n: int, r: int):
    """Per row 1..n-2 and slot (first, 3 window, r random, last): structurally present,
    and whether the query's padding applies (HF's band/rand masks) or only the key's."""
    rows = n - 2
    present = np.ones((rows, 5 + r), bool)
    present[0, 0] = False  # row 1: block 0 is already in its window
    present[-1, -1] = False  # row n-2: block n-1 is already in its window
    uses_query = np.zeros((rows, 5 + r), bool)
    uses_query[:, 4:4 + r] = True
    uses_query[1:-1, 1:4] = True  # only the middle rows use HF's band mask on the window
    return present, uses_query


def block_sparse_attention(
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
) -> tuple[Array, Array | None]:
    """BigBird block-sparse self-attention, with the signature of ``dot_product_attention``.

    Args:
      query, key, value: ``[B, L, H, D]``, ``L`` a multiple of ``block_size`` (>= 4 blocks).
      mask: key-padding mask ``[B, L]`` or ``[B, 1, 1, L]`` (True/1 = keep); queries share
        it (self-attention). Padded keys get ``-10000`` added, as HF.
      bias: not supported (no dense score matrix exists).
      head_mask: broadcastable to ``[B, H, 1, 1]``; multiplies the probabilities.
      rand_attn: ``[H, L // block_size - 2, R]`` (or ``[B, H, ...]``) random key blocks of
        rows 1..n-2, e.g. from :func:`sample_random_blocks`; ``None`` means
        ``num_random_blocks`` zeros (HF at inference).
      dropout_rate, dropout_rng, deterministic: dropout on the probabilities.
      return_probs: also return dense ``[B, H, L, L]`` probabilities, as HF assembles them.
    Returns:
      ``out [B, L, H, D]`` and the probabilities or ``None``.
    """
    if bias is not None:
        raise ValueError("block-sparse attention does not take a dense score bias")
    if query.ndim != 4 or query.shape != key.shape or key.shape != value.shape:
        raise ValueError("block-sparse attention expects query, key, value of one shape [batch, length, heads, "
                         f"head_dim], got {query.shape}, {key.shape}, {value.shape}")
    batch, length, heads, head_dim = query.shape
    bs = block_size
    if length % bs or length // bs < 4:
        raise ValueError(f"block-sparse attention needs a length that is a multiple of block_size={bs} "
                         f"and at least 4 blocks, got length {length}")
    n = length // bs
    if rand_attn is None:
        rand_attn = jnp.zeros((heads, n - 2, num_random_blocks or 0), jnp.int32)
    rand_attn = jnp.asarray(rand_attn)
    if rand_attn.ndim == 3:
        rand_attn = rand_attn[None]
    if rand_attn.ndim != 4 or rand_attn.shape[1:3] != (heads, n - 2):
        raise ValueError(f"rand_attn must be [heads={heads}, blocks-2={n - 2}, R] (optionally with a batch "
                         f"axis), got shape {rand_attn.shape}")
    r = rand_attn.shape[-1]
    scale = head_dim**-0.5 if scale is None else scale
    dtype = query.dtype
    stat_dtype = jnp.promote_types(dtype, jnp.float32)
    dropout_active = dropout_rate > 0.0 and not deterministic
    normalize_early = return_probs or dropout_active or head_mask is not None

    keep = _key_padding(mask, batch, length)  # [B, L]
    keep_blocks = keep.reshape(batch, n, bs)
    penalty = lambda allowed: (1.0 - allowed) * MASK_PENALTY

    q, k, v = (jnp.swapaxes(x, 1, 2) for x in (query, key, value))  # [B, H, L, D]
    qb, kb, vb = (x.reshape(batch, heads, n, bs, head_dim) for x in (q, k, v))

    # Global query blocks 0 and n-1 attend to every key.
    q_glob = jnp.concatenate([qb[:, :, 0], qb[:, :, -1]], axis=2)  # [B, H, 2bs, D]
    s_glob = jnp.einsum("bhqd,bhkd->bhqk", q_glob, k).astype(stat_dtype) * scale
    s_glob = s_glob + penalty(keep)[:, None, None, :]

    # Rows 1..n-2: first block, window of three, random blocks, last block.
    q_mid = qb[:, :, 1:-1]  # [B, H, n-2, bs, D]
    window = lambda x: jnp.concatenate([x[:, :, :-2], x[:, :, 1:-1], x[:, :, 2:]], axis=3)
    k_win, v_win = window(kb), window(vb)  # [B, H, n-2, 3bs, D]
    b_idx = jnp.arange(batch)[:, None, None, None]
    h_idx = jnp.arange(heads)[None, :, None, None]
    k_rand = kb[b_idx, h_idx, rand_attn].reshape(batch, heads, n - 2, r * bs, head_dim)
    v_rand = vb[b_idx, h_idx, rand_attn].reshape(batch, heads, n - 2, r * bs, head_dim)

    # Scores of the middle rows are laid out [B, H, n-2, keys, queries]: XLA's CPU batched
    # matmuls run about twice as fast in this orientation (and for probs^T @ values).
    s_first = jnp.einsum("bhmqd,bhkd->bhmkq", q_mid, kb[:, :, 0])
    s_win = jnp.einsum("bhmqd,bhmkd->bhmkq", q_mid, k_win)
    s_rand = jnp.einsum("bhmqd,bhmkd->bhmkq", q_mid, k_rand)
    s_last = jnp.einsum("bhmqd,bhkd->bhmkq", q_mid, kb[:, :, -1])
    s_mid = jnp.concatenate([s_first, s_win, s_rand, s_last], axis=-2).astype(stat_dtype) * scale

    # Which keys of each slot are not padding: [B, H, n-2, (5+r)bs] ...
    rand_keep = keep_blocks[b_idx, rand_attn].reshape(batch, heads, n - 2, r * bs)
    key_keep = jnp.concatenate([
        jnp.broadcast_to(keep_blocks[:, None, None, 0], (batch, heads, n - 2, bs)),
        jnp.broadcast_to(window(keep_blocks[:, None, :, :, None])[..., 0], (batch, heads, n - 2, 3 * bs)),
        jnp.broadcast_to(rand_keep, (batch, heads, n - 2, r * bs)),
        jnp.broadcast_to(keep_blocks[:, None, None, -1], (batch, heads, n - 2, bs)),
    ], axis=-1)
    # ... times the query's own padding on the slots where HF's band/rand masks apply it.
    present, uses_query = (np.repeat(t, bs, axis=1) for t in _slot_tables(n, r))  # [n-2, (5+r)bs]
    query_keep = keep_blocks[:, None, 1:-1, None, :]  # [B, 1, n-2, 1, bs]
    allowed = key_keep[..., None] * jnp.where(jnp.asarray(uses_query)[:, :, None], query_keep, 1.0)
    s_mid = s_mid + penalty(allowed)  # [B, H, n-2, (5+r)bs, bs]
    s_mid = jnp.where(jnp.asarray(present)[None, None, :, :, None], s_mid, -jnp.inf)

    def exp_weights(scores, axis):
        w = jnp.exp(scores - jax.lax.stop_gradient(scores.max(axis=axis, keepdims=True)))
        return w, w.sum(axis=axis, keepdims=True)

    w_glob, den_glob = exp_weights(s_glob, -1)
    w_mid, den_mid = exp_weights(s_mid, -2)
    if normalize_early:
        w_glob, w_mid = w_glob / den_glob, w_mid / den_mid
    probs_glob, probs_mid = w_glob, w_mid
    if dropout_active:
        if dropout_rng is None:
            raise ValueError("attention dropout in training mode needs a dropout_rng")
        k1, k2 = jax.random.split(dropout_rng)
        drop = lambda key_, w: jnp.where(bernoulli(key_, 1.0 - dropout_rate, w.shape),
                                         w / (1.0 - dropout_rate), jnp.zeros_like(w))
        w_glob, w_mid = drop(k1, w_glob), drop(k2, w_mid)
    if head_mask is not None:
        hm = jnp.asarray(head_mask)
        if hm.ndim != 4 or hm.shape[-2:] != (1, 1):
            raise ValueError(f"block-sparse head_mask must broadcast to [B, H, 1, 1], got shape {hm.shape}")
        w_glob, w_mid = w_glob * hm.astype(w_glob.dtype), w_mid * hm[..., None].astype(w_mid.dtype)

    o_glob = jnp.einsum("bhqk,bhkd->bhqd", w_glob.astype(dtype), v)
    w_mid_c = w_mid.astype(dtype)
    o_mid = (
        jnp.einsum("bhmkq,bhkd->bhmqd", w_mid_c[..., :bs, :], vb[:, :, 0])
        + jnp.einsum("bhmkq,bhmkd->bhmqd", w_mid_c[..., bs:4 * bs, :], v_win)
        + jnp.einsum("bhmkq,bhmkd->bhmqd", w_mid_c[..., 4 * bs:(4 + r) * bs, :], v_rand)
        + jnp.einsum("bhmkq,bhkd->bhmqd", w_mid_c[..., (4 + r) * bs:, :], vb[:, :, -1])
    )
    if not normalize_early:
        o_glob = (o_glob.astype(stat_dtype) / den_glob).astype(dtype)
        o_mid = (o_mid.astype(stat_dtype) / jnp.swapaxes(den_mid, -1, -2)).astype(dtype)
    out = jnp.concatenate([o_glob[:, :, None, :bs], o_mid, o_glob[:, :, None, bs:]], axis=2)
    out = out.reshape(batch, heads, length, head_dim) * keep[:, None, :, None].astype(dtype)
    out = jnp.swapaxes(out, 1, 2)

    probs = None
    if return_probs:
        probs = _dense_probs(probs_glob, jnp.swapaxes(probs_mid, -1, -2), rand_attn, batch, heads, n, bs, r).astype(dtype)
    return out, probs


def _dense_probs(p_glob, p_mid, rand_attn, batch, heads, n, bs, r):
    """Scatter block probabilities into ``[B, H, L, L]`` in HF's order (random slots last)."""
    m = n - 2
    view = jnp.zeros((n, n, batch, heads, bs, bs), p_mid.dtype)  # [q block, k block, B, H, bs, bs]
    glob = p_glob.reshape(batch, heads, 2, bs, n, bs).transpose(2, 4, 0, 1, 3, 5)
    view = view.at[0].set(glob[0]).at[-1].set(glob[1])
    rows = np.arange(1, n - 1)
    mid = lambda p: jnp.moveaxis(p, 2, 0)  # [B, H, m, bs, bs] -> [m, B, H, bs, bs]
    view = view.at[rows, 0].set(mid(p_mid[..., :bs])).at[rows, -1].set(mid(p_mid[..., (4 + r) * bs:]))
    win = p_mid[..., bs:4 * bs].reshape(batch, heads, m, bs, 3, bs).transpose(2, 4, 0, 1, 3, 5)
    view = view.at[np.repeat(rows[:, None], 3, axis=1), rows[:, None] + np.arange(-1, 2)].set(win)
    if r:
        rand = jnp.moveaxis(p_mid[..., 4 * bs:(4 + r) * bs].reshape(batch, heads, m, bs, r, bs), 3, 4)
        view = view.at[rows[None, None, :, None], rand_attn, jnp.arange(batch)[:, None, None, None],
                       jnp.arange(heads)[None, :, None, None]].set(rand)
    return view.transpose(2, 3, 0, 4, 1, 5).reshape(batch, heads, n * bs, n * bs)


# --------------------------------------------------------------------------------------
# The kernel as a model plugs it in
# --------------------------------------------------------------------------------------


_LAYER = re.compile(r"layer_(\d+)$")


def layer_index(path: tuple[str, ...]) -> int:
    """The ``N`` of the innermost ``layer_N`` in a module path (0 if none)."""
    for name in reversed(path):
        match = _LAYER.match(name)
        if match:
            return int(match.group(1))
    return 0


@dataclasses.dataclass(frozen=True)
class BigBirdBlockSparse:
    """``block_sparse_attention`` with its random blocks drawn per call.

    Attention layers see ``rng_stream`` and pass ``rng`` (a key of that stream in
    training, ``None`` when deterministic) and ``layer`` (the layer index). In training the
    blocks are drawn from ``rng``; at inference they are all 0 (HF), or, with
    ``inference_seed``, a fixed plan drawn from ``PRNGKey(inference_seed)`` folded with the
    layer index (like the original Google implementation's seeded plans).
    ``attention_dropout=False`` ignores ``dropout_rate``, as HF's block-sparse layer does.
    """

    block_size: int
    num_random_blocks: int
    max_seqlen: int | None = None
    inference_seed: int | None = None
    attention_dropout: bool = False
    rng_stream = "random_blocks"

    def random_blocks(self, rng: Array | None, heads: int, length: int, layer: int = 0) -> Array:
        if rng is None and self.inference_seed is not None:
            rng = jax.random.fold_in(jax.random.PRNGKey(self.inference_seed), layer)
        return sample_random_blocks(rng, heads, length, self.block_size, self.num_random_blocks,
                                    self.max_seqlen)

    def __call__(self, query, key, value, *, rng=None, layer=0, dropout_rate=0.0, **kwargs):
        rand_attn = self.random_blocks(rng, query.shape[2], query.shape[1], layer)
        return block_sparse_attention(
            query, key, value, block_size=self.block_size, rand_attn=rand_attn,
            dropout_rate=dropout_rate if self.attention_dropout else 0.0, **kwargs)
