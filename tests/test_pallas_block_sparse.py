"""The fused block-sparse kernel (zoo.attention.pallas_block_sparse) against the XLA one.

On CPU the kernels run under Pallas' interpreter, through both drivers (the TPU one with
scalar prefetch and the Triton one); TPU and CUDA are checked by lowering (jax.export).
"""

from __future__ import annotations

import functools

import jax
import jax.extend
import jax.numpy as jnp
import numpy as np
import pytest

from zoo.attention.block_sparse import block_sparse_attention, sample_random_blocks
from zoo.attention.kernels import BlockSparseAttention
from zoo.attention.pallas_block_sparse import block_sparse_flash_attention
from zoo.attention.pallas_support import export_for

TOL = 1e-5


def _inputs(batch, length, heads, head_dim, seed=0, padded=True):
    rng = np.random.RandomState(seed)
    q, k, v, ct = (jnp.asarray(rng.randn(batch, length, heads, head_dim).astype(np.float32)) for _ in range(4))
    mask = np.ones((batch, length), np.float32)
    if padded:
        for row in range(1, batch):
            mask[row, length - 5 * row - 3 * row * row:] = 0  # ends inside and across blocks
    return q, k, v, ct, jnp.asarray(mask)


def _rand_attn(kind, batch, heads, length, bs, r):
    if kind == "zeros":  # HF at inference: every random slot is block 0
        return jnp.zeros((heads, length // bs - 2, r), jnp.int32)
    if kind == "batched":  # [B, H, n-2, r]
        keys = jax.random.split(jax.random.key(11), batch)
        return jnp.stack([sample_random_blocks(key, heads, length, bs, r) for key in keys])
    return sample_random_blocks(jax.random.key(7), heads, length, bs, r)


@functools.partial(jax.jit, static_argnums=0)
def _out_and_grads(fn, q, k, v, ct):
    out, vjp = jax.vjp(fn, q, k, v)
    return (out, *vjp(ct))


def _compare(drivers, batch, length, heads, head_dim, bs, r, rand, padded=True, head_mask=None):
    """Output and input gradients of each driver (interpreted) against the XLA kernel."""
    q, k, v, ct, mask = _inputs(batch, length, heads, head_dim, padded=padded)
    rand_attn = _rand_attn(rand, batch, heads, length, bs, r)
    kw = dict(mask=mask if padded else None, block_size=bs, rand_attn=rand_attn, head_mask=head_mask)
    want = _out_and_grads(lambda q, k, v: block_sparse_attention(q, k, v, **kw)[0], q, k, v, ct)
    results = []
    for driver in drivers:
        fused = lambda q, k, v: block_sparse_flash_attention(q, k, v, driver=driver, **kw)[0]  # noqa: E731
        got = _out_and_grads(fused, q, k, v, ct)
        for name, a, b in zip(("out", "dq", "dk", "dv"), got, want):
            assert a.shape == b.shape
            diff = float(jnp.max(jnp.abs(a - b)))
            assert diff <= TOL, f"{driver} driver, {name}: max |fused - xla| = {diff}"
        results.append(got)
    return results


# Every (block_size, num_random_blocks) of the zoo's block-sparse and BigBird parity tests,
# at the shortest length where HF's training draw is legal, each with another mix of batch,
# heads, head_dim and random blocks (drawn, all-zero at inference, per batch).
SETTINGS = [  # block_size, num_random_blocks, length, batch, heads, head_dim, rand, drivers
    (8, 2, 96, 2, 3, 8, "drawn", ("tpu",)),
    (8, 3, 96, 2, 1, 12, "zeros", ("tpu",)),
    (8, 1, 64, 3, 2, 8, "batched", ("gpu",)),
    (16, 2, 192, 2, 1, 8, "drawn", ("tpu",)),
    (4, 5, 64, 2, 1, 12, "drawn", ("tpu",)),
    (64, 3, 768, 1, 1, 8, "drawn", ("tpu",)),
    (16, 1, 128, 2, 3, 12, "zeros", ("gpu",)),
    (4, 3, 48, 2, 1, 8, "batched", ("tpu",)),
]


@pytest.mark.parametrize("bs,r,length,batch,heads,head_dim,rand,drivers", SETTINGS)
def test_interpreted_drivers_equal_xla(bs, r, length, batch, heads, head_dim, rand, drivers):
    _compare(drivers, batch, length, heads, head_dim, bs, r, rand)


def test_no_mask_no_random_blocks_and_head_mask():
    head_mask = jnp.array([1.0, 0.0, 0.5])[None, :, None, None]
    for out, *_ in _compare(("tpu", "gpu"), 1, 64, 3, 8, 8, 0, "drawn", padded=False, head_mask=head_mask):
        assert float(jnp.abs(out[:, :, 1]).max()) == 0.0


def test_training_draws_new_blocks_per_step_without_recompiling():
    length, bs, r, heads = 96, 8, 2, 2
    q, k, v, _, mask = _inputs(1, length, heads, 8)
    kernel = BlockSparseAttention(bs, r, kernel="pallas")  # the plug-in BigBird's layers call
    traces = []

    @jax.jit
    def step(q, key):
        traces.append(None)
        return jax.value_and_grad(lambda q: kernel(q, k, v, mask=mask, rng=key, layer=0)[0].sum() ** 2)(q)

    (l1, g1), (l2, g2) = step(q, jax.random.key(1)), step(q, jax.random.key(2))
    assert len(traces) == 1
    assert abs(float(l1) - float(l2)) > 1e-3 and float(jnp.abs(g1 - g2).max()) > 1e-3
    # the same blocks as the XLA plug-in draws from the same key
    xla = BlockSparseAttention(bs, r, kernel="xla")
    both = jax.jit(lambda q, key: (kernel(q, k, v, mask=mask, rng=key)[0], xla(q, k, v, mask=mask, rng=key)[0]))
    got, want = both(q, jax.random.key(2))
    assert float(jnp.abs(got - want).max()) <= TOL


def test_never_builds_a_length_by_length_matrix():
    length, bs = 256, 16
    q = jnp.zeros((1, length, 2, 8))
    mask = jnp.ones((1, 1, 1, length), bool)  # the model's mask form
    rand_attn = sample_random_blocks(jax.random.key(0), 2, length, bs, 2)
    loss = lambda q: block_sparse_flash_attention(q, q, q, mask=mask, block_size=bs, rand_attn=rand_attn)[0].sum()
    jaxpr = jax.make_jaxpr(jax.grad(loss))(q)

    def shapes(jpr):
        for eqn in jpr.eqns:
            for var in eqn.outvars:
                yield getattr(var.aval, "shape", ())
            for sub in jax.extend.core.jaxprs_in_params(eqn.params):
                yield from shapes(sub)
    too_big = [s for s in shapes(jaxpr.jaxpr) if sum(d == length for d in s) >= 2]
    assert not too_big, too_big


@pytest.mark.parametrize("platform", ["tpu", "cuda"])
@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float32])
@pytest.mark.parametrize("length", [512, 4096])
def test_lowers_for_chips_we_do_not_have(platform, dtype, length):
    batch, heads, head_dim, bs, r = 1, 12, 64, 64, 3
    x = jax.ShapeDtypeStruct((batch, length, heads, head_dim), dtype)
    mask = jax.ShapeDtypeStruct((batch, length), jnp.bool_)
    rand_attn = jax.ShapeDtypeStruct((heads, length // bs - 2, r), jnp.int32)

    def forward(q, k, v, mask, rand_attn):
        return block_sparse_flash_attention(q, k, v, mask=mask, block_size=bs, rand_attn=rand_attn)[0]

    def backward(q, k, v, mask, rand_attn):
        loss = lambda q, k, v: forward(q, k, v, mask, rand_attn).astype(jnp.float32).sum()
        return jax.grad(loss, argnums=(0, 1, 2))(q, k, v)

    marker = "tpu_custom_call" if platform == "tpu" else "triton"
    for fn, kernels in ((forward, 1), (backward, 3)):
        text = export_for(fn, platform, x, x, x, mask, rand_attn).mlir_module()
        assert text.count(marker) >= kernels, (fn.__name__, text.count(marker))


def test_unsupported_arguments_are_clear_errors():
    q = jnp.zeros((2, 64, 3, 8))
    kw = dict(block_size=8, num_random_blocks=1)
    with pytest.raises(ValueError, match="return_probs"):
        block_sparse_flash_attention(q, q, q, return_probs=True, **kw)
    with pytest.raises(ValueError, match="dropout"):
        block_sparse_flash_attention(q, q, q, dropout_rate=0.1, dropout_rng=jax.random.key(0),
                                     deterministic=False, **kw)
    jax.eval_shape(lambda q: block_sparse_flash_attention(q, q, q, dropout_rate=0.1, **kw), q)  # inactive: fine
    with pytest.raises(ValueError, match="dense score bias"):
        block_sparse_flash_attention(q, q, q, bias=jnp.zeros((2, 3, 64, 64)), **kw)
    for bad in (jnp.ones((3,)), jnp.ones((2, 3, 64, 1)), jnp.ones((1, 4, 1, 1))):
        with pytest.raises(ValueError, match="head_mask"):
            block_sparse_flash_attention(q, q, q, head_mask=bad, **kw)
    with pytest.raises(ValueError, match="multiple of block_size"):
        block_sparse_flash_attention(q[:, :60], q[:, :60], q[:, :60], **kw)
    with pytest.raises(ValueError, match="rand_attn must be"):
        block_sparse_flash_attention(q, q, q, block_size=8, rand_attn=jnp.zeros((3, 3, 1), jnp.int32))
    with pytest.raises(ValueError, match="backend"):
        block_sparse_flash_attention(q, q, q, backend="cpu", **kw)
    with pytest.raises(ValueError, match="no block-sparse kernel"):
        BlockSparseAttention(8, 1, kernel="cudnn")
