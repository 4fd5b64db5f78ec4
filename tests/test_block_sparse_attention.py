"""The block-sparse kernel against HF's BigBirdBlockSparseAttention and a dense reference."""

from __future__ import annotations

import jax
import jax.extend
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import transformers
from transformers.models.big_bird.modeling_big_bird import BigBirdBlockSparseAttention, BigBirdModel

from hf_parity import max_diff
from zoo.attention.block_sparse import (
    BigBirdBlockSparse,
    block_sparse_attention,
    random_block_plan,
    sample_random_blocks,
)
from zoo.attention.dense import dot_product_attention

transformers.logging.set_verbosity_error()
HEADS, HEAD_DIM = 4, 8


def hf_attention(block_size, num_random_blocks, max_position_embeddings=4096, seed=0):
    torch.manual_seed(seed)
    cfg = transformers.BigBirdConfig(hidden_size=HEADS * HEAD_DIM, num_attention_heads=HEADS,
                                     block_size=block_size, num_random_blocks=num_random_blocks,
                                     max_position_embeddings=max_position_embeddings)
    return BigBirdBlockSparseAttention(cfg, seed=seed).eval()


def run_hf(att, x, mask, block_size):
    """HF's context, probs and its q/k/v as [B, L, H, D] numpy."""
    blocked, band, from_mask, to_mask = BigBirdModel.create_masks_for_block_sparse_attn(mask, block_size)
    with torch.no_grad():
        ctx, probs = att(x, band, from_mask, to_mask, blocked, blocked)
        qkv = [getattr(att, n)(x).view(*x.shape[:2], HEADS, HEAD_DIM).numpy() for n in ("query", "key", "value")]
    return ctx.numpy().reshape(*x.shape[:2], HEADS, HEAD_DIM), probs.numpy(), qkv


def padded_batch(batch, length, seed=0):
    x = torch.from_numpy(np.random.RandomState(seed).randn(batch, length, HEADS * HEAD_DIM).astype(np.float32))
    mask = torch.ones(batch, length)
    for row in range(1, batch):
        mask[row, length - 9 * row:] = 0
    return x, mask


@pytest.mark.parametrize("length,block_size,num_random_blocks,batch", [
    (64, 8, 2, 2), (96, 8, 3, 3), (32, 8, 1, 1), (128, 16, 2, 2), (40, 4, 5, 2)])
def test_inference_equals_hf(length, block_size, num_random_blocks, batch):
    att = hf_attention(block_size, num_random_blocks)
    x, mask = padded_batch(batch, length)
    ctx, probs, (q, k, v) = run_hf(att, x, mask, block_size)
    out, p = block_sparse_attention(q, k, v, mask=mask.numpy(), block_size=block_size,
                                    num_random_blocks=num_random_blocks, return_probs=True)
    fast, none = block_sparse_attention(q, k, v, mask=mask.numpy()[:, None, None, :], block_size=block_size,
                                        num_random_blocks=num_random_blocks)
    assert none is None
    assert max_diff(out, ctx) <= 1e-6 and max_diff(fast, ctx) <= 1e-6
    assert max_diff(p, probs) <= 1e-6


@pytest.mark.parametrize("length,block_size,num_random_blocks", [(96, 8, 2), (1024, 64, 3), (200, 8, 3)])
def test_training_equals_hf_given_its_random_blocks(length, block_size, num_random_blocks):
    """HF draws with numpy in training; fed the same blocks, the kernel gives the same result."""
    att = hf_attention(block_size, num_random_blocks, max_position_embeddings=max(length, 128)).train()
    drawn = []
    for name in ("_bigbird_block_rand_mask", "_bigbird_block_rand_mask_with_head"):
        original = getattr(att, name)

        def spy(*a, _original=original, **kw):
            result = _original(*a, **kw)
            drawn.append(result)
            return result
        setattr(att, name, spy)
    x, mask = padded_batch(2, length, seed=1)
    ctx, probs, (q, k, v) = run_hf(att, x, mask, block_size)
    if length in (1024, 3072, 4096):  # one call per head, rows cut to the sequence
        rand_attn = np.stack([d[: length // block_size - 2] for d in drawn])
    else:
        rand_attn = np.stack(drawn[0])
    assert rand_attn.any()
    out, p = block_sparse_attention(q, k, v, mask=mask.numpy(), block_size=block_size, rand_attn=rand_attn,
                                    return_probs=True)
    assert max_diff(out, ctx) <= 1e-6
    assert max_diff(p, probs) <= 1e-6


def hf_support(length, block_size, num_random_blocks, max_seqlen, draws=300):
    """The blocks HF's own numpy drawing ever picks per row, over many seeds."""
    att = hf_attention(block_size, num_random_blocks, max_position_embeddings=max_seqlen).train()
    n = length // block_size
    seen = np.zeros((n - 2, n), bool)
    for seed in range(draws):
        np.random.seed(seed)
        if length in (1024, 3072, 4096):
            r = att._bigbird_block_rand_mask(max_seqlen, max_seqlen, block_size, block_size, num_random_blocks,
                                             last_idx=1024)[: n - 2]
        else:
            plan = att._get_rand_attn_plan(length, block_size, num_random_blocks)
            r = att._bigbird_block_rand_mask_with_head(length, length, block_size, block_size, 1, *plan)[0]
        np.put_along_axis(seen, r, True, axis=1)
    return seen


@pytest.mark.parametrize("length,block_size,num_random_blocks,max_seqlen", [
    (96, 8, 2, 128),  # 12 blocks: plan "2r + 5 < n", random blocks among the first 9
    (64, 8, 3, 128),  # 8 blocks, n <= r + 5: one segment over the whole sequence
    (1024, 32, 3, 2048),  # HF's fixed paper plan (1024 / 3072 / 4096), rows laid out for 2048
    (1024, 64, 2, 1024),
])
def test_plan_legal_blocks_equal_hf_rules(length, block_size, num_random_blocks, max_seqlen):
    legal = np.zeros((length // block_size - 2, length // block_size), bool)
    for segment in random_block_plan(length, block_size, num_random_blocks, max_seqlen):
        legal |= segment.legal
    np.testing.assert_array_equal(legal, hf_support(length, block_size, num_random_blocks, max_seqlen))


@pytest.mark.parametrize("length,block_size,num_random_blocks,max_seqlen", [
    (96, 8, 2, 128), (64, 8, 3, 128), (1024, 32, 3, 2048), (3072, 64, 3, 4096), (4032, 64, 3, 4096)])
def test_drawn_blocks_are_legal_distinct_per_head_and_per_key(length, block_size, num_random_blocks, max_seqlen):
    plan = random_block_plan(length, block_size, num_random_blocks, max_seqlen)
    draw = jax.jit(lambda key: sample_random_blocks(key, 6, length, block_size, num_random_blocks, max_seqlen))
    a, b = np.asarray(draw(jax.random.key(0))), np.asarray(draw(jax.random.key(1)))
    assert a.shape == (6, length // block_size - 2, num_random_blocks)
    start = 0
    for segment in plan:
        part = a[..., start:start + segment.count]
        start += segment.count
        picked_legal = np.take_along_axis(np.broadcast_to(segment.legal, (6, *segment.legal.shape)), part, axis=-1)
        assert picked_legal.all(), "a drawn block is not legal under HF's rules"
        sorted_part = np.sort(part, axis=-1)
        assert (np.diff(sorted_part, axis=-1) > 0).all(), "a row drew the same block twice"
    assert not np.array_equal(a[0], a[1]), "heads share one random pattern"
    assert not np.array_equal(a, b), "different keys gave the same blocks"
    np.testing.assert_array_equal(a, np.asarray(draw(jax.random.key(0))))


def test_draws_cover_the_legal_blocks_uniformly():
    length, bs, r = 96, 8, 2
    (segment,) = random_block_plan(length, bs, r)
    keys = jax.random.split(jax.random.key(0), 400)
    draws = np.asarray(jax.vmap(lambda k: sample_random_blocks(k, 1, length, bs, r))(keys))[:, 0]  # [400, rows, r]
    counts = np.zeros(segment.legal.shape)
    for row in range(counts.shape[0]):
        np.add.at(counts[row], draws[:, row].ravel(), 1)
    expected = 400 * r / segment.legal.sum(-1, keepdims=True)
    assert ((counts > 0) == segment.legal).all()
    assert np.abs(counts - expected)[segment.legal].max() < 5 * np.sqrt(expected.max())


def dense_reference(q, k, v, rand_attn, block_size, mask):
    """softmax over exactly the attended blocks, built as an L x L mask (no duplicates)."""
    batch, length, heads, _ = q.shape
    n = length // block_size
    attend = np.zeros((heads, n, n), bool)
    attend[:, [0, -1], :] = True
    attend[:, :, [0, -1]] = True
    for i in range(1, n - 1):
        attend[:, i, i - 1:i + 2] = True
        for h in range(heads):
            attend[h, i, rand_attn[h, i - 1]] = True
    dense = np.kron(attend, np.ones((block_size, block_size), bool))[None]  # [1, H, L, L]
    full = dense & (mask[:, None, None, :] > 0)
    out, _ = dot_product_attention(q, k, v, mask=jnp.asarray(full))
    return out * mask[:, :, None, None]


def test_gradients_equal_the_dense_reference_on_the_same_mask():
    length, bs, r, batch = 96, 8, 2, 2
    rng = np.random.RandomState(3)
    q, k, v = (jnp.asarray(rng.randn(batch, length, HEADS, HEAD_DIM).astype(np.float32)) for _ in range(3))
    mask = np.ones((batch, length), np.float32)
    mask[1, -20:] = 0
    rand_attn = np.asarray(sample_random_blocks(jax.random.key(5), HEADS, length, bs, r))
    weights = jnp.asarray(rng.randn(batch, length, HEADS, HEAD_DIM).astype(np.float32))

    def loss(fn, q, k, v):
        return jnp.sum(fn(q, k, v) * weights)

    sparse = lambda q, k, v: block_sparse_attention(q, k, v, mask=mask, block_size=bs, rand_attn=rand_attn)[0]
    dense = lambda q, k, v: dense_reference(q, k, v, rand_attn, bs, mask)
    assert max_diff(sparse(q, k, v), dense(q, k, v)) <= 1e-6
    g_sparse = jax.grad(lambda *a: loss(sparse, *a), argnums=(0, 1, 2))(q, k, v)
    g_dense = jax.grad(lambda *a: loss(dense, *a), argnums=(0, 1, 2))(q, k, v)
    for gs, gd in zip(g_sparse, g_dense):
        assert max_diff(gs, gd) <= 1e-5


def test_no_random_blocks_is_sliding_window_plus_global():
    length, bs = 64, 8
    rng = np.random.RandomState(4)
    q, k, v = (jnp.asarray(rng.randn(1, length, HEADS, HEAD_DIM).astype(np.float32)) for _ in range(3))
    mask = np.ones((1, length), np.float32)
    out, _ = block_sparse_attention(q, k, v, mask=mask, block_size=bs, num_random_blocks=0)
    empty = np.zeros((HEADS, length // bs - 2, 0), np.int64)
    assert max_diff(out, dense_reference(q, k, v, empty, bs, mask)) <= 1e-6


def test_plan_where_hf_cannot_draw_is_an_error_not_a_silent_pattern():
    """With r + 5 < n <= 2r + 5 blocks HF's training draw crashes (row 1 has no legal block
    in the second plan segment); the zoo says so. The model never gets there: such lengths
    use full attention."""
    att = hf_attention(8, 3, 128).train()
    with pytest.raises(ValueError, match="broadcast"):
        att._bigbird_block_rand_mask_with_head(80, 80, 8, 8, 1, *att._get_rand_attn_plan(80, 8, 3))
    with pytest.raises(ValueError, match="block row 1 has only 0 legal random blocks"):
        random_block_plan(80, 8, 3)


def test_probabilities_rows_sum_to_one_and_reproduce_the_output():
    length, bs = 96, 8
    rng = np.random.RandomState(6)
    q, k, v = (jnp.asarray(rng.randn(2, length, HEADS, HEAD_DIM).astype(np.float32)) for _ in range(3))
    rand_attn = sample_random_blocks(jax.random.key(1), HEADS, length, bs, 2)
    out, probs = block_sparse_attention(q, k, v, block_size=bs, rand_attn=rand_attn, return_probs=True)
    np.testing.assert_allclose(np.asarray(probs).sum(-1), 1.0, atol=1e-6)
    assert max_diff(out, jnp.einsum("bhqk,bkhd->bqhd", probs, v)) <= 1e-5


def test_dropout_and_head_mask():
    length, bs = 64, 8
    rng = np.random.RandomState(7)
    q, k, v = (jnp.asarray(rng.randn(2, length, HEADS, HEAD_DIM).astype(np.float32)) for _ in range(3))
    kw = dict(block_size=bs, num_random_blocks=2)
    base, _ = block_sparse_attention(q, k, v, **kw)
    dropped, _ = block_sparse_attention(q, k, v, dropout_rate=0.5, dropout_rng=jax.random.key(0),
                                        deterministic=False, **kw)
    assert max_diff(dropped, base) > 1e-2
    same, _ = block_sparse_attention(q, k, v, dropout_rate=0.5, deterministic=True, **kw)
    assert max_diff(same, base) == 0.0
    head_mask = jnp.array([1.0, 0.0, 1.0, 1.0])[None, :, None, None]
    masked, _ = block_sparse_attention(q, k, v, head_mask=head_mask, **kw)
    assert float(jnp.abs(masked[:, :, 1]).max()) == 0.0
    assert max_diff(masked[:, :, 0], base[:, :, 0]) <= 1e-6


def test_never_builds_a_length_by_length_matrix():
    length, bs = 256, 16
    q = jnp.zeros((1, length, HEADS, HEAD_DIM))
    kernel = BigBirdBlockSparse(bs, 2)
    fn = lambda q, key: kernel(q, q, q, mask=jnp.ones((1, length)), rng=key)[0]
    jaxpr = jax.make_jaxpr(jax.grad(lambda q, key: fn(q, key).sum()))(q, jax.random.key(0))

    def shapes(jpr):
        for eqn in jpr.eqns:
            for var in eqn.outvars:
                yield getattr(var.aval, "shape", ())
            for sub in jax.extend.core.jaxprs_in_params(eqn.params):
                yield from shapes(sub)
    too_big = [s for s in shapes(jaxpr.jaxpr) if sum(d == length for d in s) >= 2]
    assert not too_big, too_big


def test_seeded_inference_plan_is_fixed_and_differs_per_layer():
    kernel = BigBirdBlockSparse(8, 2, inference_seed=3)
    a0, a1 = kernel.random_blocks(None, HEADS, 96, layer=0), kernel.random_blocks(None, HEADS, 96, layer=1)
    assert np.array_equal(a0, kernel.random_blocks(None, HEADS, 96, layer=0))
    assert not np.array_equal(a0, a1) and np.asarray(a0).any()
    assert not np.asarray(BigBirdBlockSparse(8, 2).random_blocks(None, HEADS, 96)).any()  # HF: zeros


def test_bad_inputs_get_clear_errors():
    q = jnp.zeros((1, 60, HEADS, HEAD_DIM))
    with pytest.raises(ValueError, match="multiple of block_size=8"):
        block_sparse_attention(q, q, q, block_size=8, num_random_blocks=1)
    q = jnp.zeros((1, 64, HEADS, HEAD_DIM))
    with pytest.raises(ValueError, match="dense score bias"):
        block_sparse_attention(q, q, q, bias=jnp.zeros((1, 1, 64, 64)), block_size=8)
    with pytest.raises(ValueError, match="key-padding mask"):
        block_sparse_attention(q, q, q, mask=jnp.ones((1, 1, 64, 64), bool), block_size=8)
    with pytest.raises(ValueError, match="rand_attn must be"):
        block_sparse_attention(q, q, q, block_size=8, rand_attn=jnp.zeros((HEADS, 3, 2), jnp.int32))
    with pytest.raises(ValueError, match="legal random blocks"):
        random_block_plan(48, 8, 5)
