"""Disentangled (c2p / p2c) attention against HF PyTorch's SEW-D ``DisentangledSelfAttention``."""

from __future__ import annotations

import functools
import re

import jax
import jax.extend
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from transformers import SEWDConfig
from transformers.models.sew_d import modeling_sew_d as hf

from zoo.attention.disentangled import (
    build_relative_position,
    disentangled_attention,
    make_log_bucket_position,
    relative_attention_span,
)

ATOL = 1e-5
# jitted once per static configuration: much faster than op-by-op dispatch
attention = jax.jit(disentangled_attention, static_argnames=(
    "att_span", "pos_att_type", "dropout_rate", "deterministic", "return_probs", "position_buckets",
    "max_relative_positions", "query_block", "key_block"))
HIDDEN, HEADS = 32, 4
HEAD_DIM = HIDDEN // HEADS

# (position_buckets, max_relative_positions, max_position_embeddings, sequence length)
BUCKETS = {
    "buckets8": (8, 32, 64, 24),
    "buckets16": (16, 64, 64, 40),
    "nobuckets": (-1, -1, 16, 24),  # falls back to max_position_embeddings=16; |i - j| > 16 is clamped
}
TYPES = [(), ("c2p",), ("p2c",), ("c2p", "p2c")]


def _np(t: torch.Tensor) -> np.ndarray:
    return t.detach().cpu().numpy()


def _module(pos_att_type, share_att_key, buckets, seed=0):
    position_buckets, max_rel, max_pos, _ = BUCKETS[buckets]
    config = SEWDConfig(
        hidden_size=HIDDEN, num_attention_heads=HEADS, relative_attention=True, pos_att_type=list(pos_att_type),
        share_att_key=share_att_key, position_buckets=position_buckets, max_relative_positions=max_rel,
        max_position_embeddings=max_pos, attention_dropout=0.0, activation_dropout=0.0,
    )
    torch.manual_seed(seed)
    module = hf.DisentangledSelfAttention(config).eval()
    span = relative_attention_span(position_buckets, max_rel, max_pos)
    assert span == module.pos_ebd_size
    return module, span


def _linear(x, lin: torch.nn.Linear):
    return x @ jnp.asarray(_np(lin.weight)).T + jnp.asarray(_np(lin.bias))


def _heads(x):
    return x.reshape(*x.shape[:-1], HEADS, HEAD_DIM)


def _projections(module, hidden, rel_embeddings, span, query_states=None):
    """q, k, v [B, L, H, D] and pos_key / pos_query [2 span, H, D], in JAX from the torch weights."""
    hidden = jnp.asarray(hidden)
    q_in = hidden if query_states is None else jnp.asarray(query_states)
    q = _heads(_linear(q_in, module.query_proj))
    k = _heads(_linear(hidden, module.key_proj))
    v = _heads(_linear(hidden, module.value_proj))
    pos_key, pos_query = _pos_layers(module, jnp.asarray(rel_embeddings), span)
    return q, k, v, pos_key, pos_query


def _pos_layers(module, rel_embeddings, span):
    rel = rel_embeddings[: 2 * span]
    types = module.pos_att_type
    key_lin = module.key_proj if module.share_att_key else getattr(module, "pos_key_proj", None)
    query_lin = module.query_proj if module.share_att_key else getattr(module, "pos_query_proj", None)
    pos_key = _heads(_linear(rel, key_lin)) if "c2p" in types else None
    pos_query = _heads(_linear(rel, query_lin)) if "p2c" in types else None
    return pos_key, pos_query


def _inputs(batch, length, span, seed=0, lq=None):
    g = torch.Generator().manual_seed(seed)
    hidden = torch.randn(batch, length, HIDDEN, generator=g)
    query_states = None if lq is None else torch.randn(batch, lq, HIDDEN, generator=g)
    rel_embeddings = torch.randn(2 * span, HIDDEN, generator=g)
    return hidden, query_states, rel_embeddings


def _key_mask(batch, length, fully_masked_row=True):
    """[B, 1, 1, L] key padding mask; the last batch element is fully masked."""
    lengths = [length - 3 * b for b in range(batch)]
    if fully_masked_row:
        lengths[-1] = 0
    return torch.tensor([[j < n for j in range(length)] for n in lengths])[:, None, None, :]


def _kernel(module, span, buckets, q, k, v, pos_key, pos_query, mask, **kw):
    position_buckets, max_rel, _, _ = BUCKETS[buckets]
    rel = build_relative_position(q.shape[1], k.shape[1], position_buckets, module.max_relative_positions)
    return attention(
        q, k, v, pos_key=pos_key, pos_query=pos_query, relative_pos=rel, att_span=span,
        pos_att_type=tuple(module.pos_att_type), mask=None if mask is None else jnp.asarray(_np(mask)),
        return_probs=True, **kw,
    )


def _max_diff(a, b) -> float:
    return float(np.max(np.abs(np.asarray(a, np.float64) - np.asarray(b, np.float64))))


# ------------------------------------------------------------------------ forward parity
# every pos_att_type subset x share_att_key, with and without buckets; the second bucket
# setting only with both position terms (keeps the file fast)
PARITY_CASES = [(t, share, b) for b in ("buckets8", "nobuckets") for share in (True, False) for t in TYPES] + [
    (("c2p", "p2c"), share, "buckets16") for share in (True, False)]


@pytest.mark.parametrize("pos_att_type,share_att_key,buckets", PARITY_CASES,
                         ids=lambda x: ("+".join(x) or "none") if isinstance(x, tuple) else str(x))
def test_matches_hf(pos_att_type, share_att_key, buckets):
    module, span = _module(pos_att_type, share_att_key, buckets)
    batch, length = 3, BUCKETS[buckets][3]
    hidden, _, rel_embeddings = _inputs(batch, length, span)
    mask = _key_mask(batch, length)
    with torch.no_grad():
        ctx, probs = module(hidden, mask, rel_embeddings=rel_embeddings)
    q, k, v, pos_key, pos_query = _projections(module, _np(hidden), _np(rel_embeddings), span)
    out, got_probs = _kernel(module, span, buckets, q, k, v, pos_key, pos_query, mask)
    assert _max_diff(got_probs, _np(probs)) <= ATOL
    assert _max_diff(out.reshape(batch, length, HIDDEN), _np(ctx)) <= ATOL
    # the fully masked batch element attends nowhere: zero probabilities and outputs (XSoftmax)
    assert np.all(np.asarray(got_probs[-1]) == 0) and np.all(np.asarray(out[-1]) == 0)


def test_matches_hf_square_mask_and_no_mask():
    """A [B, 1, L, L] query x key mask (fully masked rows at padded queries), and no mask."""
    module, span = _module(("c2p", "p2c"), True, "buckets8")
    batch, length = 2, 24
    hidden, _, rel_embeddings = _inputs(batch, length, span, seed=1)
    key_mask = _key_mask(batch, length, fully_masked_row=False)[:, 0, 0, :].long()
    square = (key_mask[:, None, :, None] * key_mask[:, None, None, :]).bool()
    q, k, v, pos_key, pos_query = _projections(module, _np(hidden), _np(rel_embeddings), span)
    for mask in (square, torch.ones(batch, 1, 1, length, dtype=torch.bool)):
        with torch.no_grad():
            ctx, probs = module(hidden, mask, rel_embeddings=rel_embeddings)
        out, got_probs = _kernel(module, span, "buckets8", q, k, v, pos_key, pos_query,
                                 None if bool(mask.all()) else mask)
        assert _max_diff(got_probs, _np(probs)) <= ATOL
        assert _max_diff(out.reshape(batch, length, HIDDEN), _np(ctx)) <= ATOL


def test_c2p_with_fewer_queries_than_keys():
    """c2p alone works for Lq != Lk (HF's query_states); p2c refuses, as HF cannot add it."""
    module, span = _module(("c2p",), False, "buckets16")
    batch, lk, lq = 2, 20, 12
    hidden, query_states, rel_embeddings = _inputs(batch, lk, span, seed=2, lq=lq)
    mask = _key_mask(batch, lk, fully_masked_row=False)
    with torch.no_grad():
        ctx, probs = module(hidden, mask, query_states=query_states, rel_embeddings=rel_embeddings)
    q, k, v, pos_key, pos_query = _projections(module, _np(hidden), _np(rel_embeddings), span, _np(query_states))
    out, got_probs = _kernel(module, span, "buckets16", q, k, v, pos_key, pos_query, mask)
    assert _max_diff(got_probs, _np(probs)) <= ATOL
    assert _max_diff(out.reshape(batch, lq, HIDDEN), _np(ctx)) <= ATOL
    with pytest.raises(ValueError, match="p2c.*Lq=12, Lk=20"):
        disentangled_attention(q, k, v, pos_key=pos_key, pos_query=pos_key, relative_pos=jnp.zeros((lq, lk), jnp.int32),
                               att_span=span, pos_att_type=("p2c",))


# ------------------------------------------------------------------ relative positions
@pytest.mark.parametrize("query_size,key_size,bucket_size,max_position", [
    (1, 1, -1, -1), (5, 7, -1, -1), (9, 4, -1, 32), (64, 64, 8, 32), (24, 24, 16, 64), (7, 5, 16, 64),
    (300, 300, 256, 512), (600, 600, 256, 512), (129, 129, 32, 64), (50, 80, 6, 20),
])
def test_build_relative_position_matches_hf(query_size, key_size, bucket_size, max_position):
    ref = _np(hf.build_relative_position(query_size, key_size, bucket_size, max_position))[0]
    got = build_relative_position(query_size, key_size, bucket_size, max_position)
    assert got.dtype == jnp.int32 and got.shape == (query_size, key_size)
    np.testing.assert_array_equal(np.asarray(got), ref)


@pytest.mark.parametrize("bucket_size,max_position", [
    (8, 32), (16, 64), (32, 512), (64, 128), (128, 512), (256, 512), (256, 1024), (512, 2048), (6, 20), (3, 16),
])
def test_log_buckets_match_torch_float_math(bucket_size, max_position):
    """Every |r| <= 40000 (eager and traced): the float32 log / ceil of PyTorch, exactly.

    (XLA's own float32 log differs from PyTorch's by an ulp at e.g. r = max_position - 1
    for (128, 512), which flips the ceil; the kernel does not use it.)"""
    r = np.arange(-40000, 40001)
    ref = _np(hf.make_log_bucket_position(torch.from_numpy(r), bucket_size, max_position))
    got = make_log_bucket_position(jnp.asarray(r, jnp.int32), bucket_size, max_position)
    assert got.dtype == jnp.float32
    np.testing.assert_array_equal(np.asarray(got), ref)
    traced = jax.jit(lambda x: make_log_bucket_position(x, bucket_size, max_position))(jnp.asarray(r, jnp.int32))
    np.testing.assert_array_equal(np.asarray(traced), ref)


def test_bad_bucket_settings_raise():
    with pytest.raises(ValueError, match="max_relative_positions"):
        build_relative_position(8, 8, 16, 9)
    with pytest.raises(ValueError, match="position_buckets"):
        make_log_bucket_position(jnp.arange(4), 1, 16)


# ------------------------------------------------------------------------- gradients
@pytest.mark.parametrize("share_att_key", [True, False])
@pytest.mark.parametrize("pos_att_type", [("c2p",), ("p2c",), ("c2p", "p2c")], ids="+".join)
def test_gradients_match_torch(pos_att_type, share_att_key):
    buckets = "buckets8"
    module, span = _module(pos_att_type, share_att_key, buckets, seed=3)
    batch, length = 2, 24
    hidden, _, rel_embeddings = _inputs(batch, length, span, seed=3)
    mask = _key_mask(batch, length, fully_masked_row=False)
    g = torch.Generator().manual_seed(5)
    w_out = torch.randn(batch, length, HIDDEN, generator=g)
    w_probs = torch.randn(batch, HEADS, length, length, generator=g)

    # torch: capture the projected relative embeddings (Linear outputs on rel_embeddings)
    captured = {}

    def hook(name):
        def fn(mod, inp, out):
            if inp[0].shape[-2] == 2 * span and inp[0].dim() == 3 and inp[0].shape[0] == 1:
                out.retain_grad()
                captured.setdefault(name, out)
        return fn

    key_lin = module.key_proj if share_att_key else getattr(module, "pos_key_proj", None)
    query_lin = module.query_proj if share_att_key else getattr(module, "pos_query_proj", None)
    handles = []
    if "c2p" in pos_att_type:
        handles.append(key_lin.register_forward_hook(hook("c2p")))
    if "p2c" in pos_att_type:
        handles.append(query_lin.register_forward_hook(hook("p2c")))
    rel_t = rel_embeddings.clone().requires_grad_(True)
    ctx, probs = module(hidden, mask, rel_embeddings=rel_t)
    ((ctx * w_out).sum() + (probs * w_probs).sum()).backward()
    for h in handles:
        h.remove()

    q, k, v, _, _ = _projections(module, _np(hidden), _np(rel_embeddings), span)
    rel = build_relative_position(length, length, 8, module.max_relative_positions)
    jmask = jnp.asarray(_np(mask))

    def loss_from_pos(pos_key, pos_query):
        out, p = attention(q, k, v, pos_key=pos_key, pos_query=pos_query, relative_pos=rel,
                                        att_span=span, pos_att_type=pos_att_type, mask=jmask, return_probs=True)
        return (out.reshape(batch, length, HIDDEN) * _np(w_out)).sum() + (p * _np(w_probs)).sum()

    def loss_from_rel(rel_emb):
        return loss_from_pos(*_pos_layers(module, rel_emb, span))

    pos_key, pos_query = _pos_layers(module, jnp.asarray(_np(rel_embeddings)), span)
    g_pk, g_pq = jax.grad(loss_from_pos, argnums=(0, 1), allow_int=True)(pos_key, pos_query)
    if "c2p" in pos_att_type:
        assert _max_diff(g_pk.reshape(2 * span, HIDDEN), _np(captured["c2p"].grad[0])) <= ATOL
        assert float(jnp.abs(g_pk).max()) > 1e-3
    if "p2c" in pos_att_type:
        assert _max_diff(g_pq.reshape(2 * span, HIDDEN), _np(captured["p2c"].grad[0])) <= ATOL
        assert float(jnp.abs(g_pq).max()) > 1e-3
    g_rel = jax.grad(loss_from_rel)(jnp.asarray(_np(rel_embeddings)))
    assert _max_diff(g_rel, _np(rel_t.grad)) <= ATOL


def _reference_kernel(q, k, v, pk, pq, rel, span, types):
    """Plain jnp transcription of HF (take_along_axis + autodiff), to check the custom VJP."""
    sf = 1 + ("c2p" in types) + ("p2c" in types)
    s = np.float32(np.sqrt(np.float32(q.shape[-1]) * sf))
    scores = jnp.einsum("bqhd,bkhd->bhqk", q, k / s)
    if "c2p" in types:
        table = jnp.einsum("bqhd,phd->bhqp", q, pk)
        scores += jnp.take_along_axis(table, jnp.clip(rel + span, 0, 2 * span - 1)[None, None], axis=-1) / s
    if "p2c" in types:
        table = jnp.einsum("bkhd,phd->bhkp", k, pq)
        p2c = jnp.take_along_axis(table, jnp.clip(-rel + span, 0, 2 * span - 1)[None, None], axis=-1)
        scores += jnp.swapaxes(p2c, -1, -2) / s
    return jnp.einsum("bhqk,bkhd->bqhd", jax.nn.softmax(scores, axis=-1), v)


@pytest.mark.parametrize("lq,types", [(12, ("c2p",)), (20, ("c2p", "p2c"))])
def test_custom_vjp_matches_autodiff_reference(lq, types):
    """All input gradients (q, k, v, pos_key, pos_query), batch 2, Lq != Lk for c2p alone."""
    lk, span = 20, 8
    q, k, v, pk, pq = _random_qkv(2, lk, 4, 8, span, seed=7)
    q = q[:, :lq]
    rel = build_relative_position(lq, lk, 16, 64)
    w = jnp.asarray(np.random.default_rng(8).standard_normal((2, lq, 4, 8), np.float32))

    def loss(fn):
        return lambda *a: (fn(*a) * w).sum()

    ours = loss(lambda q, k, v, pk, pq: disentangled_attention(
        q, k, v, pos_key=pk, pos_query=pq, relative_pos=rel, att_span=span, pos_att_type=types)[0])
    ref = loss(lambda q, k, v, pk, pq: _reference_kernel(q, k, v, pk, pq, rel, span, types))
    got = jax.jit(jax.grad(ours, argnums=(0, 1, 2, 3, 4)))(q, k, v, pk, pq)
    want = jax.jit(jax.grad(ref, argnums=(0, 1, 2, 3, 4)))(q, k, v, pk, pq)
    for g, r in zip(got, want):
        assert _max_diff(g, r) <= 1e-5


# ------------------------------------------------------------------- jit, memory, dropout
def _random_qkv(batch, length, heads, dim, span, seed=0):
    rng = np.random.default_rng(seed)
    q, k, v = (jnp.asarray(rng.standard_normal((batch, length, heads, dim), np.float32)) for _ in range(3))
    pos_key, pos_query = (jnp.asarray(rng.standard_normal((2 * span, heads, dim), np.float32)) for _ in range(2))
    return q, k, v, pos_key, pos_query


def test_jit_with_positions_built_inside_and_passed_in():
    q, k, v, pk, pq = _random_qkv(2, 24, 4, 8, 8)
    rel = build_relative_position(24, 24, 8, 32)
    mask = jnp.arange(24)[None, None, None, :] < jnp.array([24, 17])[:, None, None, None]
    kw = dict(att_span=8, pos_att_type=("p2c", "c2p"), return_probs=True)
    passed = attention(q, k, v, pos_key=pk, pos_query=pq, relative_pos=rel, mask=mask, **kw)  # traced argument

    @jax.jit
    def run(q, k, v, pk, pq, mask):
        r = build_relative_position(24, 24, 8, 32)  # built inside the trace
        return disentangled_attention(q, k, v, pos_key=pk, pos_query=pq, relative_pos=r, mask=mask, **kw)

    inside = run(q, k, v, pk, pq, mask)
    assert _max_diff(inside[0], passed[0]) <= 1e-6 and _max_diff(inside[1], passed[1]) <= 1e-6
    assert bool(jnp.all(jnp.isfinite(inside[0])))


@pytest.mark.parametrize("buckets,max_rel", [(8, 32), (-1, -1), (-1, 12)])
def test_positions_from_bucket_settings(buckets, max_rel):
    """relative_pos=None + (position_buckets, max_relative_positions): the kernel builds the positions
    itself, the same as passing build_relative_position(...) (jitted and eager; c2p alone with Lq != Lk)."""
    q, k, v, pk, pq = _random_qkv(2, 24, 4, 8, 8)
    mask = jnp.arange(24)[None, None, None, :] < jnp.array([24, 17])[:, None, None, None]
    for lq, types in ((24, ("c2p", "p2c")), (24, ("p2c",)), (10, ("c2p",))):
        rel = build_relative_position(lq, 24, buckets, max_rel)
        kw = dict(pos_key=pk, pos_query=pq, att_span=8, pos_att_type=types, mask=mask, return_probs=True)
        want = attention(q[:, :lq], k, v, relative_pos=rel, **kw)
        got = attention(q[:, :lq], k, v, position_buckets=buckets, max_relative_positions=max_rel, **kw)
        eager = disentangled_attention(q[:, :lq], k, v, position_buckets=buckets, max_relative_positions=max_rel, **kw)
        for a in (got, eager):
            assert _max_diff(a[0], want[0]) <= 1e-6 and _max_diff(a[1], want[1]) <= 1e-6
    # no position terms: the settings are not needed (and nothing is built)
    out, _ = attention(q, k, v, pos_att_type=(), position_buckets=8, max_relative_positions=32)
    ref, _ = attention(q, k, v, pos_att_type=())
    np.testing.assert_array_equal(np.asarray(out), np.asarray(ref))


def _shapes_in_jaxpr(jaxpr) -> list[tuple[int, ...]]:
    shapes = []
    for eqn in jaxpr.eqns:
        shapes += [tuple(v.aval.shape) for v in eqn.outvars if hasattr(v.aval, "shape")]
        for sub in jax.extend.core.jaxprs_in_params(eqn.params):
            shapes += _shapes_in_jaxpr(sub)
    return shapes


def test_no_length_by_length_by_span_intermediate():
    """Forward and backward never hold a [.., L, L, 2 span] array (L=64, 2 span=32)."""
    length, span = 64, 16
    q, k, v, pk, pq = _random_qkv(2, length, 4, 8, span)
    rel = build_relative_position(length, length, 2 * span, 128)
    mask = jnp.ones((2, 1, 1, length), bool)

    def loss(q, k, v, pk, pq):
        out, _ = disentangled_attention(q, k, v, pos_key=pk, pos_query=pq, relative_pos=rel, att_span=span,
                                        pos_att_type=("c2p", "p2c"), mask=mask)
        return out.sum()

    fn = jax.value_and_grad(loss, argnums=(0, 1, 2, 3, 4))

    def blown_up(shape):
        return shape.count(length) >= 2 and 2 * span in shape

    shapes = _shapes_in_jaxpr(jax.make_jaxpr(fn)(q, k, v, pk, pq).jaxpr)
    assert any(s[-2:] == (length, 2 * span) for s in shapes)  # the [.., L, 2 span] tables are there
    assert not [s for s in shapes if blown_up(s)]
    hlo = jax.jit(fn).lower(q, k, v, pk, pq).compile().as_text()
    hlo_shapes = [tuple(int(d) for d in m.split(",") if d) for m in re.findall(r"[a-z]+\d*\[([\d,]*)\]", hlo)]
    assert hlo_shapes and not [s for s in hlo_shapes if blown_up(s)]


def test_dropout_training_and_eval():
    q, k, v, pk, pq = _random_qkv(2, 16, 4, 8, 8)
    rel = build_relative_position(16, 16, 8, 32)
    kw = dict(pos_key=pk, pos_query=pq, relative_pos=rel, att_span=8, pos_att_type=("c2p", "p2c"), return_probs=True)
    ref_out, ref_p = attention(q, k, v, **kw)
    # eval: dropout_rate is ignored when deterministic
    ev_out, ev_p = attention(q, k, v, dropout_rate=0.5, dropout_rng=jax.random.PRNGKey(0), **kw)
    np.testing.assert_array_equal(np.asarray(ev_out), np.asarray(ref_out))
    np.testing.assert_array_equal(np.asarray(ev_p), np.asarray(ref_p))
    # training: every probability is dropped (0) or scaled by 1 / (1 - rate); out = probs @ v
    tr = functools.partial(attention, q, k, v, dropout_rate=0.5, deterministic=False, **kw)
    out, p = tr(dropout_rng=jax.random.PRNGKey(1))
    p, ref_p = np.asarray(p), np.asarray(ref_p)
    dropped = p == 0
    assert 0.4 < dropped.mean() < 0.6
    np.testing.assert_allclose(p[~dropped], 2 * ref_p[~dropped], rtol=1e-6)
    np.testing.assert_allclose(np.asarray(out), np.einsum("bhqk,bkhd->bqhd", p, np.asarray(v)), atol=1e-5)
    again, _ = tr(dropout_rng=jax.random.PRNGKey(1))
    other, _ = tr(dropout_rng=jax.random.PRNGKey(2))
    assert np.array_equal(np.asarray(again), np.asarray(out)) and not np.allclose(np.asarray(other), np.asarray(out))
    with pytest.raises(ValueError, match="dropout_rng"):
        disentangled_attention(q, k, v, dropout_rate=0.5, deterministic=False, **kw)


def test_half_precision_and_argument_errors():
    q, k, v, pk, pq = _random_qkv(1, 16, 4, 8, 8)
    rel = build_relative_position(16, 16, 8, 32)
    kw = dict(relative_pos=rel, att_span=8, pos_att_type=("c2p", "p2c"))
    ref, _ = attention(q, k, v, pos_key=pk, pos_query=pq, **kw)
    half = [x.astype(jnp.bfloat16) for x in (q, k, v, pk, pq)]
    out, _ = attention(*half[:3], pos_key=half[3], pos_query=half[4], **kw)
    assert out.dtype == jnp.bfloat16 and _max_diff(out.astype(jnp.float32), ref) < 0.1
    with pytest.raises(ValueError, match="pos_key is None"):
        disentangled_attention(q, k, v, pos_query=pq, **kw)
    with pytest.raises(ValueError, match="pos_query must have shape"):
        disentangled_attention(q, k, v, pos_key=pk, pos_query=pq[:8], **kw)
    with pytest.raises(ValueError, match="either relative_pos or the bucket settings"):
        disentangled_attention(q, k, v, pos_key=pk, pos_query=pq, position_buckets=8, max_relative_positions=32, **kw)
    with pytest.raises(ValueError, match="scale"):
        disentangled_attention(q, k, v, pos_key=pk, pos_query=pq, scale=0.1, **kw)
    with pytest.raises(ValueError, match="pos_att_type"):
        disentangled_attention(q, k, v, pos_key=pk, pos_query=pq, relative_pos=rel, att_span=8, pos_att_type=("p2p",))
    with pytest.raises(ValueError, match="relative_pos must have shape"):
        disentangled_attention(q, k, v, pos_key=pk, pos_query=pq, relative_pos=rel[:8], att_span=8,
                               pos_att_type=("c2p",))


# ------------------------------------------------------------- query-blocked (memory-lean) path
def _both_paths(q, k, v, pk, pq, w, block, key_block=0, **kw):
    """(out, grads of q, k, v, pos_key, pos_query) of the unblocked and the blocked path (with
    ``key_block > 0`` the key-tiled forward)."""
    res = []
    for qb, kb in ((0, 0), (block, key_block)):
        def f(q, k, v, pk, pq, qb=qb, kb=kb):
            return disentangled_attention(q, k, v, pos_key=pk, pos_query=pq, query_block=qb, key_block=kb,
                                          **kw)[0]

        def loss(*a, f=f):
            out = f(*a)
            return (out * w).sum(), out

        (_, out), grads = jax.jit(jax.value_and_grad(loss, argnums=(0, 1, 2, 3, 4), has_aux=True))(q, k, v, pk, pq)
        res.append((out, grads))
    return res


@pytest.mark.parametrize("key_block", [0, 7], ids=["query-blocked", "key-tiled"])
@pytest.mark.parametrize("buckets,max_rel", [(8, 32), (-1, -1)], ids=["buckets", "nobuckets"])
@pytest.mark.parametrize("pos_att_type", TYPES, ids=lambda t: "+".join(t) or "none")
def test_blocked_matches_unblocked(pos_att_type, buckets, max_rel, key_block):
    """Outputs and all five input gradients, L=45 with query tiles of 16 (padded) and, key-tiled,
    key tiles of 7 (padded), batch 2, a key mask with a fully masked batch element; and without
    a mask (key-tiled: only the key padding is masked)."""
    length, span = 45, 8
    q, k, v, pk, pq = _random_qkv(2, length, 4, 8, span, seed=11)
    w = jnp.asarray(np.random.default_rng(12).standard_normal(q.shape, np.float32))
    mask = jnp.arange(length)[None, None, None, :] < jnp.array([30, 0])[:, None, None, None]
    for m in (mask, None):
        (out0, g0), (out1, g1) = _both_paths(q, k, v, pk, pq, w, 16, key_block, att_span=span,
                                             pos_att_type=pos_att_type, position_buckets=buckets,
                                             max_relative_positions=max_rel, mask=m)
        assert _max_diff(out0, out1) <= 1e-5
        assert m is None or np.all(np.asarray(out1[1]) == 0)
        for a, b in zip(g0, g1):
            assert _max_diff(a, b) <= 1e-5


@pytest.mark.parametrize("key_block", [0, 16], ids=["query-blocked", "key-tiled"])
def test_blocked_square_mask_head_mask_fewer_queries_and_errors(key_block):
    length, span = 40, 8
    q, k, v, pk, pq = _random_qkv(2, length, 4, 8, span, seed=13)
    w = jnp.asarray(np.random.default_rng(14).standard_normal(q.shape, np.float32))
    keep = jnp.arange(length) < jnp.array([40, 25])[:, None]
    square = keep[:, None, :, None] & keep[:, None, None, :]  # fully masked rows at padded queries
    head_mask = jnp.array([1.0, 0.0, 0.5, 2.0])[:, None, None]
    kw = dict(att_span=span, pos_att_type=("c2p", "p2c"), position_buckets=8, max_relative_positions=32)
    (out0, g0), (out1, g1) = _both_paths(q, k, v, pk, pq, w, 32, key_block, mask=square, head_mask=head_mask,
                                         **kw)
    assert _max_diff(out0, out1) <= 1e-5 and all(_max_diff(a, b) <= 1e-5 for a, b in zip(g0, g1))
    # c2p with Lq != Lk, relative_pos passed in, no mask; both terms with relative_pos passed in
    rel = build_relative_position(19, length, 16, 64)
    (out0, g0), (out1, g1) = _both_paths(q[:, :19], k, v, pk, pq, w[:, :19], 8, key_block, att_span=span,
                                         pos_att_type=("c2p",), relative_pos=rel)
    assert _max_diff(out0, out1) <= 1e-5 and all(_max_diff(a, b) <= 1e-5 for a, b in zip(g0, g1))
    rel = build_relative_position(length, length, 16, 64)
    (out0, g0), (out1, g1) = _both_paths(q, k, v, pk, pq, w, 8, key_block, att_span=span,
                                         pos_att_type=("c2p", "p2c"), relative_pos=rel, mask=square)
    assert _max_diff(out0, out1) <= 1e-5 and all(_max_diff(a, b) <= 1e-5 for a, b in zip(g0, g1))
    with pytest.raises(ValueError, match="query_block"):
        disentangled_attention(q, k, v, pos_key=pk, pos_query=pq, query_block=-1, **kw)
    with pytest.raises(ValueError, match="key_block"):
        disentangled_attention(q, k, v, pos_key=pk, pos_query=pq, query_block=8, key_block=-1, **kw)
    with pytest.raises(ValueError, match="no dropout"):
        disentangled_attention(q, k, v, pos_key=pk, pos_query=pq, query_block=8, key_block=8, dropout_rate=0.1,
                               dropout_rng=jax.random.PRNGKey(0), deterministic=False, **kw)


def test_blocked_dropout():
    """Per-tile dropout masks: reproducible from the key, about the rate dropped, the custom VJP equal
    to autodiff of the blocked forward itself; eval mode equals the unblocked path."""
    from zoo.attention import disentangled as dis

    length, span = 40, 8
    q, k, v, pk, pq = _random_qkv(2, length, 4, 8, span, seed=15)
    kw = dict(pos_key=pk, pos_query=pq, att_span=span, pos_att_type=("c2p", "p2c"), position_buckets=8,
              max_relative_positions=32, dropout_rate=0.5, query_block=16)
    run = jax.jit(lambda rng, d: disentangled_attention(q, k, v, dropout_rng=rng, deterministic=d, **kw)[0],
                  static_argnums=1)
    ev = run(jax.random.PRNGKey(0), True)
    ref = attention(q, k, v, pos_key=pk, pos_query=pq, att_span=span, pos_att_type=("c2p", "p2c"),
                    position_buckets=8, max_relative_positions=32, query_block=0)[0]
    assert _max_diff(ev, ref) <= 1e-5
    a, b, c = run(jax.random.PRNGKey(1), False), run(jax.random.PRNGKey(1), False), run(jax.random.PRNGKey(2), False)
    assert np.array_equal(np.asarray(a), np.asarray(b)) and not np.allclose(np.asarray(a), np.asarray(c))
    # the core, against autodiff through its own (plain jnp, lax.map) forward
    rel = build_relative_position(length, length, 8, 32)
    qt, kt, vt = (jnp.swapaxes(x, 1, 2) for x in (q, k, v))
    s = jnp.float32(np.sqrt(np.float32(8 * 3)))
    rng = jax.random.PRNGKey(3)
    w = jnp.asarray(np.random.default_rng(16).standard_normal(qt.shape, np.float32))

    def core(qt, kt, vt, pk, pq, fn):
        orig = dis._blocked_attention
        try:
            dis._blocked_attention = fn
            return (dis._blocked(qt, kt, vt, s, pk, pq, rel, None, span, None, None, 0.5, rng, 16,
                                 jnp.float32) * w).sum()
        finally:
            dis._blocked_attention = orig

    plain = lambda cfg, *a: dis._blocked_forward(cfg, *a)[0]
    got = jax.grad(core, argnums=(0, 1, 2, 3, 4))(qt, kt, vt, pk, pq, dis._blocked_attention)
    want = jax.grad(core, argnums=(0, 1, 2, 3, 4))(qt, kt, vt, pk, pq, plain)
    assert all(_max_diff(x, y) <= 1e-5 for x, y in zip(got, want))
    assert float(jnp.abs(got[4]).max()) > 1e-3


def test_blocked_memory_from_memory_analysis():
    """XLA's temp memory at L=2048 (SEW-D base: 12 heads x 64, 512 position rows, c2p + p2c): the
    blocked path needs well under half the unblocked forward, and less than the dense kernel's
    (materialised) backward. memory_analysis is deterministic: not a timed test."""
    from zoo.attention.dense import dot_product_attention

    length, span = 2048, 256
    x = jax.ShapeDtypeStruct((1, length, 12, 64), jnp.float32)
    p = jax.ShapeDtypeStruct((2 * span, 12, 64), jnp.float32)

    def temp(fn, *args, grad=False):
        f = jax.value_and_grad(lambda *a: fn(*a).sum(), argnums=tuple(range(len(args)))) if grad else fn
        return jax.jit(f).lower(*args).compile().memory_analysis().temp_size_in_bytes

    def dis(qb):
        return lambda q, k, v, pk, pq: disentangled_attention(
            q, k, v, pos_key=pk, pos_query=pq, att_span=span, position_buckets=256, max_relative_positions=512,
            query_block=qb)[0]

    dense_bwd = temp(lambda q, k, v: dot_product_attention(q, k, v, implementation="xla")[0], x, x, x, grad=True)
    unblocked_fwd = temp(dis(0), x, x, x, p, p)
    blocked_fwd, blocked_bwd = (temp(dis(256), x, x, x, p, p, grad=g) for g in (False, True))
    assert blocked_fwd <= 0.5 * unblocked_fwd
    assert blocked_bwd <= dense_bwd


def test_key_tiled_forward_memory_at_4096():
    """The automatic forward at L=4096 (SEW-D base: 12 heads x 64, buckets 256 / max_rel 512, c2p +
    p2c, fp32) is the key-tiled one, and XLA's temp memory is at most twice the dense kernel's
    (``implementation="xla"``) forward. Compiling both takes about a second; nothing is run."""
    from zoo.attention import disentangled as dis
    from zoo.attention.dense import dot_product_attention

    length, span = 4096, 256
    assert dis._choose_block(None, None, length, False, None, None, False) == (
        dis.AUTO_TILED_QUERY_BLOCK, dis.AUTO_KEY_BLOCK)
    x = jax.ShapeDtypeStruct((1, length, 12, 64), jnp.float32)
    p = jax.ShapeDtypeStruct((2 * span, 12, 64), jnp.float32)

    def temp(fn, *args):
        return jax.jit(fn).lower(*args).compile().memory_analysis().temp_size_in_bytes

    dense = temp(lambda q, k, v: dot_product_attention(q, k, v, implementation="xla")[0], x, x, x)
    tiled = temp(lambda q, k, v, pk, pq: disentangled_attention(
        q, k, v, pos_key=pk, pos_query=pq, att_span=span, position_buckets=256, max_relative_positions=512)[0],
        x, x, x, p, p)
    assert tiled <= 2 * dense
