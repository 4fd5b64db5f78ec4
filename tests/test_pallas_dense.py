"""zoo.attention.pallas_dense: the fused (flash) kernel against the XLA reference, interpreted
on CPU, and lowered for TPU (Mosaic) and CUDA (Triton) from this machine."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from zoo.attention.dense import dot_product_attention
from zoo.attention.pallas_dense import flash_attention
from zoo.attention.pallas_support import export_for

# (B, Lq, Lk, H, D, mask kind, bias kind, head_mask, blocks): lengths off the tile,
# Lq != Lk, fully masked rows, one head and three, head_dim 8 and 12.
CASES = {
    "keypad_bias_bcast_headmask": (2, 37, 50, 3, 12, "keys", "bcast", True, (None, None)),
    "fullmask_fullbias_one_head": (2, 20, 20, 1, 8, "full", "full", False, (None, None)),
    "plain_explicit_blocks": (1, 5, 70, 3, 8, None, None, True, (8, 32)),
}


def _inputs(b, lq, lk, h, d, mask_kind, bias_kind, use_head_mask, dtype=jnp.float32, seed=0):
    r = np.random.RandomState(seed)
    q = jnp.asarray(r.randn(b, lq, h, d), dtype)
    k = jnp.asarray(r.randn(b, lk, h, d), dtype)
    v = jnp.asarray(r.randn(b, lk, h, d), dtype)
    mask = None
    if mask_kind == "keys":  # key padding, [B, 1, 1, Lk]; the last sample masks every key
        mask = np.arange(lk)[None, :] < np.array([lk - 7] + [0] * (b - 1))[:, None]
        mask = jnp.asarray(mask[:, None, None, :])
    elif mask_kind == "full":  # [B, 1, Lq, Lk] with a fully masked query row
        mask = r.rand(b, 1, lq, lk) > 0.4
        mask[0, 0, 3, :] = False
        mask = jnp.asarray(mask)
    bias = None
    if bias_kind == "bcast":
        bias = jnp.asarray(r.randn(1, h, lq, lk), dtype)
    elif bias_kind == "full":
        bias = jnp.asarray(r.randn(b, h, lq, lk), dtype)
    head_mask = jnp.asarray(r.rand(h, 1, 1), dtype) if use_head_mask else None
    return q, k, v, mask, bias, head_mask


def _loss_and_grads(kernel, mask, head_mask, weights, **kw):
    def loss(q, k, v, bias):
        if bias is not None:
            kw["bias"] = bias
        out, _ = kernel(q, k, v, mask=mask, head_mask=head_mask, **kw)
        return jnp.sum(out.astype(jnp.float32) * weights), out

    def run(q, k, v, bias):
        argnums = (0, 1, 2) if bias is None else (0, 1, 2, 3)
        return jax.value_and_grad(loss, argnums=argnums, has_aux=True)(q, k, v, bias)

    return jax.jit(run)


@pytest.mark.parametrize("case", list(CASES))
def test_interpret_matches_xla_forward_and_gradients(case):
    b, lq, lk, h, d, mask_kind, bias_kind, use_hm, (bq, bk) = CASES[case]
    q, k, v, mask, bias, hm = _inputs(b, lq, lk, h, d, mask_kind, bias_kind, use_hm)
    weights = jnp.asarray(np.random.RandomState(1).randn(b, lq, h, d), jnp.float32)
    scale = 0.3 if case == "fullmask_fullbias_one_head" else None
    (_, want), want_grads = _loss_and_grads(dot_product_attention, mask, hm, weights, scale=scale,
                                            implementation="xla")(q, k, v, bias)
    (_, got), got_grads = _loss_and_grads(flash_attention, mask, hm, weights, scale=scale, backend="interpret",
                                          block_q=bq, block_k=bk)(q, k, v, bias)
    assert got.shape == want.shape and got.dtype == want.dtype
    np.testing.assert_allclose(got, want, atol=1e-5, rtol=0)
    names = ("dq", "dk", "dv", "dbias")
    for name, g, w in zip(names, got_grads, want_grads):
        assert g.shape == w.shape, name
        np.testing.assert_allclose(g, w, atol=1e-5, rtol=0, err_msg=name)


def test_fully_masked_row_attends_uniformly_over_real_keys():
    # Lk = 50 is padded to the tile: the padded keys must get no weight.
    q, k, v, mask, _, _ = _inputs(2, 9, 50, 1, 8, "keys", None, False)
    out, _ = flash_attention(q, k, v, mask=mask, backend="interpret")
    np.testing.assert_allclose(out[1], jnp.broadcast_to(v[1].mean(axis=0), out[1].shape), atol=1e-5)


def test_bf16_forward_close_to_xla():
    # bf16 carries ~3 significant digits (eps 2^-8 = 0.0039). The XLA kernel rounds the
    # scores to bf16 before the softmax (its q k^T and scaling are bf16 ops), the fused kernel
    # keeps them in float32; both round the probabilities to bf16 for the value matmul and the
    # output to bf16. Outputs are O(1), so they agree to a few bf16 ulps: 3e-2 absolute, and the
    # fused one is at least as close to the float32 result as XLA's is.
    q, k, v, mask, bias, hm = _inputs(2, 37, 50, 3, 12, "keys", "bcast", True, dtype=jnp.bfloat16)
    got, _ = jax.jit(lambda q, k, v, b: flash_attention(q, k, v, mask=mask, bias=b, head_mask=hm,
                                                      backend="interpret"))(q, k, v, bias)
    want, _ = dot_product_attention(q, k, v, mask=mask, bias=bias, head_mask=hm, implementation="xla")
    f32 = lambda x: x.astype(jnp.float32)
    exact, _ = dot_product_attention(f32(q), f32(k), f32(v), mask=mask, bias=f32(bias), head_mask=f32(hm),
                                     implementation="xla")
    assert got.dtype == jnp.bfloat16
    np.testing.assert_allclose(f32(got), f32(want), atol=3e-2, rtol=0)
    assert float(jnp.abs(f32(got) - exact).max()) <= float(jnp.abs(f32(want) - exact).max()) + 8e-3


def test_jit_with_platform_dispatch_on_cpu():
    # backend=None: the CPU lowering takes the interpret branch, forward and backward. The bias
    # is a constant here (not differentiated), which skips the kernel's dS write-out.
    q, k, v, mask, bias, _ = _inputs(2, 12, 20, 2, 8, "keys", "bcast", False)
    weights = jnp.asarray(np.random.RandomState(1).randn(*q.shape), jnp.float32)
    (_, got), got_grads = _loss_and_grads(flash_attention, mask, None, weights, bias=bias)(q, k, v, None)
    (_, want), want_grads = _loss_and_grads(dot_product_attention, mask, None, weights, bias=bias,
                                            implementation="xla")(q, k, v, None)
    np.testing.assert_allclose(got, want, atol=1e-5, rtol=0)
    for name, g, w in zip(("dq", "dk", "dv"), got_grads, want_grads):
        np.testing.assert_allclose(g, w, atol=1e-5, rtol=0, err_msg=name)
    out, probs = jax.jit(lambda q: flash_attention(q, k, v))(q)
    assert probs is None and out.shape == q.shape


def test_unsupported_requests_raise():
    q, k, v, _, _, _ = _inputs(1, 8, 8, 2, 8, None, None, False)
    with pytest.raises(ValueError, match="return_probs"):
        flash_attention(q, k, v, return_probs=True)
    with pytest.raises(ValueError, match="dropout"):
        flash_attention(q, k, v, dropout_rate=0.1, deterministic=False, dropout_rng=jax.random.key(0))
    flash_attention(q, k, v, dropout_rate=0.1, deterministic=True, backend="interpret")  # inactive: fine
    with pytest.raises(ValueError, match=r"head_mask of shape \(2, 8, 1\)"):
        flash_attention(q, k, v, head_mask=jnp.ones((2, 8, 1)))
    with pytest.raises(ValueError, match="mask of shape"):
        flash_attention(q, k, v, mask=jnp.ones((1, 1, 3, 8), bool))
    with pytest.raises(ValueError, match="backend"):
        flash_attention(q, k, v, backend="cpu")


@pytest.mark.parametrize("platform", ["tpu", "cuda"])
@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float32], ids=["bf16", "fp32"])
@pytest.mark.parametrize("length", [512, 4096])
def test_lowers_forward_and_backward(platform, dtype, length):
    # Abstract arguments: nothing is allocated. backend=None, so the platform picks the branch.
    s = jax.ShapeDtypeStruct
    qkv = s((1, length, 12, 64), dtype)
    mask = s((1, 1, 1, length), jnp.bool_)
    bias_len = length if length <= 512 or dtype == jnp.bfloat16 else 512  # fp32 4096: a [1,H,L,L] bias is 800 MB
    bias = s((1, 12, bias_len, bias_len), dtype)
    if bias_len != length:
        qkv_q = s((1, bias_len, 12, 64), dtype)  # queries and keys as long as the bias
        qkv_k = s((1, bias_len, 12, 64), dtype)
        mask = s((1, 1, 1, bias_len), jnp.bool_)
    else:
        qkv_q = qkv_k = qkv

    def fwd(q, k, v, m, b):
        return flash_attention(q, k, v, mask=m, bias=b)[0]

    def grad(q, k, v, m, b):
        return jax.grad(lambda q, k, v, b: jnp.sum(fwd(q, k, v, m, b).astype(jnp.float32)),
                        argnums=(0, 1, 2, 3))(q, k, v, b)

    target = "tpu_custom_call" if platform == "tpu" else "__gpu$xla.gpu.triton"
    for fn, kernels in ((fwd, 1), (grad, 3)):
        exported = export_for(fn, platform, qkv_q, qkv_k, qkv_k, mask, bias)
        assert exported.mlir_module().count(f"custom_call @{target}") >= kernels, fn.__name__
    # long fp32 without a bias: the full 4096 length
    if bias_len != length:
        mask = s((1, 1, 1, length), jnp.bool_)
        exported = export_for(lambda q, k, v, m: jax.grad(
            lambda q, k, v: jnp.sum(flash_attention(q, k, v, mask=m)[0]), argnums=(0, 1, 2))(q, k, v),
            platform, qkv, qkv, qkv, mask)
        assert exported.mlir_module().count(f"custom_call @{target}") >= 3


def test_bf16_gradients_close_to_float32():
    # Gradients from bf16 inputs against the float32 XLA gradients of the same (rounded) inputs.
    # Inputs/cotangent tiles are rounded to bf16 inside the backward (p, dS before their matmuls)
    # and the results are bf16: at gradients of size O(1), a few bf16 ulps (eps 0.0039). Measured
    # max error 0.008 for the fused kernel (XLA's bf16 path: 0.009); bound 2e-2.
    q, k, v, mask, bias, hm = _inputs(2, 37, 50, 3, 12, "keys", "bcast", True, dtype=jnp.bfloat16)
    weights = jnp.asarray(np.random.RandomState(1).randn(*q.shape), jnp.float32)
    _, got = _loss_and_grads(flash_attention, mask, hm, weights, backend="interpret")(q, k, v, bias)
    f32 = lambda x: x.astype(jnp.float32)
    _, want = _loss_and_grads(dot_product_attention, mask, f32(hm), weights, implementation="xla")(
        f32(q), f32(k), f32(v), f32(bias))
    for name, g, w in zip(("dq", "dk", "dv", "dbias"), got, want):
        assert g.dtype == jnp.bfloat16, name
        np.testing.assert_allclose(f32(g), w, atol=2e-2, rtol=0, err_msg=name)


def test_block_sizes_fit_every_backend():
    from zoo.attention.pallas_dense import _tile

    assert _tile("interpret", 37, None) == (16, 48)
    assert _tile("interpret", 5, None) == (8, 8)
    assert _tile("tpu", 37, None) == (128, 128) and _tile("tpu", 4096, 200) == (256, 4096)
    assert _tile("gpu", 37, None) == (64, 64) and _tile("gpu", 10, 8) == (16, 16) and _tile("gpu", 577, 100) == (128, 640)
    with pytest.raises(ValueError, match="block size"):
        _tile("gpu", 64, 0)
    # an interpret-sized block with backend=None still lowers for the chips (rounded up there)
    s = jax.ShapeDtypeStruct((1, 256, 2, 64), jnp.bfloat16)
    for platform in ("tpu", "cuda"):
        export_for(lambda q: flash_attention(q, q, q, block_q=16, block_k=24)[0], platform, s)


def test_no_lq_by_lk_array_with_a_key_padding_mask():
    # Forward and backward, kernels included: every array is a tile or [L, D]-sized.
    q, k, v, mask, _, _ = _inputs(2, 40, 56, 2, 8, "keys", None, False)
    lqs, lks = {40, 48}, {56, 64}  # lengths and their padded sizes (tiles of 16)

    def loss(q, k, v):
        return jnp.sum(flash_attention(q, k, v, mask=mask, backend="interpret")[0])

    closed = jax.make_jaxpr(jax.grad(loss, argnums=(0, 1, 2)))(q, k, v)
    seen = []

    def walk(jaxpr):
        for eqn in jaxpr.eqns:
            for var in list(eqn.invars) + list(eqn.outvars):
                shape = getattr(getattr(var, "aval", None), "shape", ())
                seen.append(tuple(shape))
            for param in eqn.params.values():
                for sub in (param if isinstance(param, (tuple, list)) else (param,)):
                    inner = getattr(sub, "jaxpr", sub)
                    if hasattr(inner, "eqns"):
                        walk(inner)

    walk(closed.jaxpr)
    assert any(16 in s for s in seen)  # the kernels' tiles were visited
    big = [s for s in seen if set(s) & lqs and set(s) & lks]
    assert not big, big
