"""The fused disentangled (c2p / p2c) Pallas kernel against the XLA ``disentangled_attention``.

On CPU the kernels run in Pallas' interpreter; both formulations (``driver="tpu"``: matmul
against per-distance rows + strided roll; ``driver="gpu"``: table gathers forward,
workspace un-skew + atomics backward) are interpreted. Lowering for TPU (Mosaic) and CUDA
(Triton) is checked with ``jax.export`` on abstract inputs.
"""

from __future__ import annotations

import jax
import jax.extend
import jax.numpy as jnp
import numpy as np
import pytest

from zoo.attention.disentangled import build_relative_position, disentangled_attention, relative_attention_span
from zoo.attention.pallas_disentangled import disentangled_flash_attention
from zoo.attention.pallas_support import TRITON_CUSTOM_CALL, export_for

ATOL = 1e-5
TYPES = [(), ("c2p",), ("p2c",), ("c2p", "p2c")]
# (position_buckets, max_relative_positions, max_position_embeddings), as tests/test_disentangled_attention.py
BUCKETS = {
    "buckets8": (8, 32, 64),
    "buckets16": (16, 64, 64),
    "nobuckets": (-1, -1, 16),  # span 16: |i - j| > 16 is clamped
}


def _span(buckets):
    return relative_attention_span(*BUCKETS[buckets])


def _key_mask(batch, length):
    """[B, 1, 1, L] key padding; the last batch element is fully masked."""
    lengths = np.array([length - 5 * b for b in range(batch)])
    lengths[-1] = 0
    return jnp.asarray(np.arange(length)[None, None, None, :] < lengths[:, None, None, None])


def _max_diff(a, b):
    return float(np.max(np.abs(np.asarray(a, np.float64) - np.asarray(b, np.float64))))


# The interpreted tests pass backend="interpret" (backend=None would trace the tpu and gpu
# branches of lax.platform_dependent as well, only to drop them on CPU); the lowering tests
# use backend=None.


def _loss(out):
    return jnp.sum(out * jnp.cos(out))  # a non-trivial cotangent


def _compare(driver, types, buckets, *, batch, lq, lk, heads, head_dim, mask=None, head_mask=None, seed=0):
    """Forward output and gradients of q, k, v, pos_key, pos_query: fused vs XLA."""
    pb, mr, _ = BUCKETS[buckets]
    span = _span(buckets)
    ks = jax.random.split(jax.random.PRNGKey(seed), 5)
    q = jax.random.normal(ks[0], (batch, lq, heads, head_dim))
    k, v = (jax.random.normal(x, (batch, lk, heads, head_dim)) for x in ks[1:3])
    pk, pq = (jax.random.normal(x, (2 * span, heads, head_dim)) for x in ks[3:])
    kw = dict(att_span=span, pos_att_type=types, mask=mask, head_mask=head_mask)
    rel = build_relative_position(lq, lk, pb, mr)

    def fused(q, k, v, pk, pq):
        out, probs = disentangled_flash_attention(q, k, v, pos_key=pk, pos_query=pq, position_buckets=pb,
                                                  max_relative_positions=mr, driver=driver, backend="interpret", **kw)
        assert probs is None
        return _loss(out), out

    def xla(q, k, v, pk, pq):
        out, _ = disentangled_attention(q, k, v, pos_key=pk, pos_query=pq, relative_pos=rel, **kw)
        return _loss(out), out

    grads = [jax.jit(jax.grad(f, argnums=(0, 1, 2, 3, 4), has_aux=True))(q, k, v, pk, pq) for f in (fused, xla)]
    (g_f, out_f), (g_x, out_x) = grads
    assert out_f.shape == out_x.shape and out_f.dtype == out_x.dtype
    assert _max_diff(out_f, out_x) <= ATOL
    for name, a, b in zip(("q", "k", "v", "pos_key", "pos_query"), g_f, g_x):
        assert _max_diff(a, b) <= ATOL, name
    return out_f


# every pos_att_type subset, both formulations; odd length (3 tiles of 16), 3 heads,
# batch 2 with a fully masked batch element. The other settings run with one formulation
# each (all but the position windows is shared code), except the cross-length c2p case,
# whose window arithmetic differs between the formulations. (The file runs ~40 s of CPU.)
@pytest.mark.parametrize("types", TYPES, ids=lambda t: "+".join(t) or "none")
@pytest.mark.parametrize("driver", ["tpu", "gpu"])
def test_matches_xla_every_type(driver, types):
    out = _compare(driver, types, "buckets8", batch=2, lq=37, lk=37, heads=3, head_dim=8, mask=_key_mask(2, 37))
    assert np.all(np.asarray(out[-1]) == 0)  # the fully masked element attends nowhere (XSoftmax)


@pytest.mark.parametrize("driver", ["gpu"])
def test_matches_xla_buckets16_head_dim12(driver):
    _compare(driver, ("c2p", "p2c"), "buckets16", batch=2, lq=40, lk=40, heads=3, head_dim=12,
             mask=_key_mask(2, 40), seed=1)


@pytest.mark.parametrize("driver", ["tpu"])
def test_matches_xla_unbucketed_clamped_one_head_no_mask(driver):
    # span 16, length 45: most distances are clamped to the first / last relative embedding
    _compare(driver, ("c2p", "p2c"), "nobuckets", batch=1, lq=45, lk=45, heads=1, head_dim=12, seed=2)


@pytest.mark.parametrize("driver", ["tpu", "gpu"])
def test_c2p_with_fewer_queries_than_keys(driver):
    _compare(driver, ("c2p",), "buckets8", batch=2, lq=19, lk=37, heads=3, head_dim=8, mask=_key_mask(2, 37), seed=3)


@pytest.mark.parametrize("driver", ["tpu"])
def test_full_mask_and_head_mask(driver):
    batch, length, heads = 2, 29, 3
    m = jax.random.bernoulli(jax.random.PRNGKey(7), 0.7, (batch, heads, length, length))
    m = m.at[0, 1, 5].set(False)  # one fully masked query row
    head_mask = jnp.array([1.0, 0.0, 0.5])[:, None, None]  # [H, 1, 1]
    out = _compare(driver, ("c2p", "p2c"), "buckets8", batch=batch, lq=length, lk=length, heads=heads,
                   head_dim=8, mask=m, head_mask=head_mask, seed=4)
    assert np.all(np.asarray(out[0, 5, 1]) == 0) and np.all(np.asarray(out[:, :, 1]) == 0)


@pytest.mark.parametrize("driver", ["gpu"])
def test_shared_attention_key(driver):
    """share_att_key: q, k and pos_key, pos_query from the same two projections; gradients
    reach the hidden states, the relative embeddings and the shared weights."""
    batch, length, heads, head_dim = 2, 24, 2, 8
    hidden = heads * head_dim
    span = _span("nobuckets")
    ks = jax.random.split(jax.random.PRNGKey(5), 4)
    x = jax.random.normal(ks[0], (batch, length, hidden))
    rel_emb = jax.random.normal(ks[1], (2 * span, hidden))
    wq, wk = (jax.random.normal(k, (hidden, hidden)) / 4 for k in ks[2:])
    mask = _key_mask(batch, length)
    rel = build_relative_position(length, length)

    def loss(fn, x, rel_emb, wq, wk):
        split = lambda t: t.reshape(*t.shape[:-1], heads, head_dim)
        q, k, v = split(x @ wq), split(x @ wk), split(x)
        out, _ = fn(q, k, v, pos_key=split(rel_emb @ wk), pos_query=split(rel_emb @ wq), att_span=span, mask=mask)
        return _loss(out)

    fused = lambda *a, **kw: disentangled_flash_attention(*a, driver=driver, backend="interpret", **kw)
    xla = lambda *a, **kw: disentangled_attention(*a, relative_pos=rel, **kw)
    args = (x, rel_emb, wq, wk)
    g_f = jax.jit(jax.grad(lambda *a: loss(fused, *a), argnums=(0, 1, 2, 3)))(*args)
    g_x = jax.jit(jax.grad(lambda *a: loss(xla, *a), argnums=(0, 1, 2, 3)))(*args)
    for a, b in zip(g_f, g_x):
        assert _max_diff(a, b) <= 2 * ATOL


@pytest.mark.parametrize("driver", ["gpu"])
def test_bfloat16(driver):
    """bf16 inputs: bf16 output and gradients, close to the fp32 XLA result."""
    span = _span("buckets8")
    ks = jax.random.split(jax.random.PRNGKey(6), 4)
    q, k, v = (jax.random.normal(x, (2, 21, 2, 8)) for x in ks[:3])
    pk = jax.random.normal(ks[3], (2 * span, 2, 8))
    mask = _key_mask(2, 21)
    kw = dict(pos_key=pk, pos_query=pk, att_span=span, mask=mask)
    want, _ = disentangled_attention(q, k, v, relative_pos=build_relative_position(21, 21, 8, 32), **kw)
    bf = lambda x: x.astype(jnp.bfloat16)

    def loss(q, k, v, pk):
        out, _ = disentangled_flash_attention(q, k, v, **{**kw, "pos_key": pk, "pos_query": pk},
                                              position_buckets=8, max_relative_positions=32, driver=driver,
                                              backend="interpret")
        return out.astype(jnp.float32).sum(), out

    grads, got = jax.jit(jax.grad(loss, argnums=(0, 1, 2, 3), has_aux=True))(bf(q), bf(k), bf(v), bf(pk))
    assert got.dtype == jnp.bfloat16 and all(g.dtype == jnp.bfloat16 for g in grads)
    assert _max_diff(got, want) <= 3e-2
    assert all(np.all(np.isfinite(np.asarray(g, np.float32))) for g in grads)


def _outer_shapes(jaxpr):
    """Shapes of every value outside the Pallas kernels (sub-jaxprs included)."""
    for eqn in jaxpr.eqns:
        yield from (v.aval.shape for v in eqn.outvars if hasattr(v.aval, "shape"))
        if eqn.primitive.name == "pallas_call":
            continue
        for param in eqn.params.values():
            for sub in param if isinstance(param, (tuple, list)) else (param,):
                if isinstance(sub, jax.extend.core.ClosedJaxpr):
                    yield from _outer_shapes(sub.jaxpr)
                elif isinstance(sub, jax.extend.core.Jaxpr):
                    yield from _outer_shapes(sub)


@pytest.mark.parametrize("driver", ["tpu", "gpu"])
def test_no_length_by_length_intermediate(driver):
    """Forward + backward outside the kernels hold nothing of size [Lq, Lk] (positions are
    per distance, O(Lq + Lk)); with a key-padding mask."""
    length, span = 64, _span("buckets8")
    x = jnp.zeros((2, length, 3, 8))
    pk = jnp.zeros((2 * span, 3, 8))
    mask = _key_mask(2, length)

    def loss(q, k, v, pk, pq):
        out, _ = disentangled_flash_attention(q, k, v, pos_key=pk, pos_query=pq, att_span=span, mask=mask,
                                              position_buckets=8, max_relative_positions=32, driver=driver,
                                              backend="interpret")  # tiles of 16: 4 x 4 of them
        return out.sum()

    jaxpr = jax.make_jaxpr(jax.grad(loss, argnums=(0, 1, 2, 3, 4)))(x, x, x, pk, pk).jaxpr
    shapes = list(_outer_shapes(jaxpr))
    assert shapes and not [s for s in shapes if sum(d >= length for d in s) >= 2]


def test_toeplitz_relative_pos_array_is_accepted():
    span = _span("buckets8")
    q = jax.random.normal(jax.random.PRNGKey(0), (1, 20, 2, 8))
    pk = jax.random.normal(jax.random.PRNGKey(1), (2 * span, 2, 8))
    rel = build_relative_position(20, 20, 8, 32)
    got, _ = disentangled_flash_attention(q, q, q, pos_key=pk, pos_query=pk, att_span=span, relative_pos=rel,
                                         backend="interpret")
    want, _ = disentangled_attention(q, q, q, pos_key=pk, pos_query=pk, att_span=span, relative_pos=rel)
    assert _max_diff(got, want) <= ATOL


def test_errors():
    span = 8
    q = jnp.zeros((2, 16, 2, 8))
    pk = jnp.zeros((2 * span, 2, 8))
    kw = dict(pos_key=pk, pos_query=pk, att_span=span, position_buckets=8, max_relative_positions=32)
    with pytest.raises(ValueError, match="probabilities"):
        disentangled_flash_attention(q, q, q, return_probs=True, **kw)
    with pytest.raises(ValueError, match="dropout"):
        disentangled_flash_attention(q, q, q, dropout_rate=0.1, deterministic=False,
                                     dropout_rng=jax.random.PRNGKey(0), **kw)
    with pytest.raises(ValueError, match="bias"):
        disentangled_flash_attention(q, q, q, bias=jnp.zeros((2, 2, 16, 16)), **kw)
    with pytest.raises(ValueError, match="head_mask"):
        disentangled_flash_attention(q, q, q, head_mask=jnp.ones((2, 2, 16, 16)), **kw)
    with pytest.raises(ValueError, match="head_mask"):
        disentangled_flash_attention(q, q, q, head_mask=jnp.ones((3,)), **kw)
    with pytest.raises(ValueError, match="scale"):
        disentangled_flash_attention(q, q, q, scale=0.5, **kw)
    with pytest.raises(ValueError, match="p2c"):
        disentangled_flash_attention(q, jnp.zeros((2, 12, 2, 8)), jnp.zeros((2, 12, 2, 8)), **kw)
    with pytest.raises(ValueError, match="driver"):
        disentangled_flash_attention(q, q, q, driver="cpu", **kw)
    kw_rel = dict(pos_key=pk, pos_query=pk, att_span=span)
    i = np.arange(16)
    not_toeplitz = jnp.asarray(i[:, None] - i[None, :] + (i[:, None] % 2))
    with pytest.raises(ValueError, match="Toeplitz"):
        disentangled_flash_attention(q, q, q, relative_pos=not_toeplitz, **kw_rel)
    with pytest.raises(ValueError, match="position_buckets"):  # traced: cannot be checked
        jax.jit(lambda r: disentangled_flash_attention(q, q, q, relative_pos=r, **kw_rel)[0])(
            build_relative_position(16, 16))
    with pytest.raises(ValueError, match="not both"):
        disentangled_flash_attention(q, q, q, relative_pos=build_relative_position(16, 16), **kw)


# ---------------------------------------------------------------------------- lowering
def _lowering_case(L, dtype):
    B, H, D, span = 1, 12, 64, 256
    sds = jax.ShapeDtypeStruct
    args = (sds((B, L, H, D), dtype),) * 3 + (sds((2 * span, H, D), dtype),) * 2 + (sds((B, 1, 1, L), jnp.bool_),)

    def forward(q, k, v, pk, pq, mask):
        return disentangled_flash_attention(q, k, v, pos_key=pk, pos_query=pq, att_span=span,
                                            pos_att_type=("c2p", "p2c"), position_buckets=256,
                                            max_relative_positions=512, mask=mask)[0]

    def forward_backward(q, k, v, pk, pq, mask):
        loss = lambda *a: forward(*a, mask).astype(jnp.float32).sum()
        return jax.grad(loss, argnums=(0, 1, 2, 3, 4))(q, k, v, pk, pq)

    return args, forward, forward_backward


@pytest.mark.parametrize("L", [512, 4096])
@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float32], ids=["bf16", "fp32"])
@pytest.mark.parametrize("platform", ["tpu", "cuda"])
def test_lowers(platform, dtype, L):
    args, forward, forward_backward = _lowering_case(L, dtype)
    marker = "tpu_custom_call" if platform == "tpu" else TRITON_CUSTOM_CALL
    for fn, calls in ((forward, 1), (forward_backward, 3)):
        text = export_for(fn, platform, *args).mlir_module()
        assert text.count(marker) >= calls, (fn.__name__, text.count(marker))


@pytest.mark.parametrize("types", [(), ("c2p", "p2c")], ids=lambda t: "+".join(t) or "none")
@pytest.mark.parametrize("platform", ["tpu", "cuda"])
def test_lowers_odd_shapes(platform, types):
    """batch 2, 3 heads, a length no tile divides, head_dim 12 (padded to 16 for Triton), a
    full [B, H, L, L] mask: forward + backward lower."""
    B, L, H, D, span = 2, 300, 3, 12, 256
    sds = jax.ShapeDtypeStruct
    args = (sds((B, L, H, D), jnp.float32),) * 3 + (sds((2 * span, H, D), jnp.float32),) * 2

    def forward_backward(q, k, v, pk, pq, mask):
        def loss(*a):
            return disentangled_flash_attention(*a[:3], pos_key=a[3], pos_query=a[4], att_span=span, mask=mask,
                                                pos_att_type=types, position_buckets=256,
                                                max_relative_positions=512)[0].sum()
        return jax.grad(loss, argnums=(0, 1, 2, 3, 4))(q, k, v, pk, pq)

    export_for(forward_backward, platform, *args, sds((B, H, L, L), jnp.bool_))
