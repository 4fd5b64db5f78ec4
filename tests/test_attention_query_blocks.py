"""On a CPU the dense XLA attention runs its queries in blocks of at most 256 rows
(zoo.attention.dense.QUERY_BLOCK, a YNNPACK slowdown past 256): the same values as one block
up to float32 rounding (XLA fuses each block on its own; measured: within 1e-6 of each output's
largest magnitude, outputs and gradients: 6.9e-7), with
masks, biases, head masks, dropout, probabilities and gradients."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from zoo.attention import dense
from zoo.attention.dense import dot_product_attention, query_blocks


def test_query_blocks_cover_the_rows_in_equal_parts():
    assert query_blocks(256) == ((0, 256),)
    assert query_blocks(260) == ((0, 130), (130, 260))
    assert query_blocks(1601) == tuple((i, min(i + 229, 1601)) for i in range(0, 1601, 229))
    assert all(b - a <= 256 for a, b in query_blocks(1601))


def _inputs(lq, lk, rng):
    f = lambda *s: jnp.asarray(rng.standard_normal(s, dtype=np.float32))
    q, k, v = f(2, lq, 3, 8), f(2, lk, 3, 8), f(2, lk, 3, 8)
    return q, k, v, dict(mask=jnp.asarray(rng.random((2, 1, lq, lk)) > 0.2), bias=f(1, 3, lq, lk),
                         head_mask=jnp.asarray([1.0, 0.5, 0.0])[:, None, None])


@pytest.mark.parametrize("lq,lk", [(300, 300), (520, 40), (40, 520)])
@pytest.mark.parametrize("probs,train", [(False, False), (True, False), (False, True)])
def test_blocked_equals_one_block(monkeypatch, lq, lk, probs, train):
    q, k, v, extra = _inputs(lq, lk, np.random.default_rng(0))
    kw = dict(extra, return_probs=probs, dropout_rate=0.1 if train else 0.0, deterministic=not train,
              dropout_rng=jax.random.PRNGKey(3) if train else None)

    def run():
        f = lambda q, k, v: dot_product_attention(q, k, v, **kw)
        out, p = jax.jit(f)(q, k, v)
        grads = jax.jit(jax.grad(lambda q, k, v: jnp.sum(jnp.sin(f(q, k, v)[0])), (0, 1, 2)))(q, k, v)
        return out, p, grads

    blocked = run()
    assert len(query_blocks(lq)) == (1 if lq <= 256 else -(-lq // 256))
    monkeypatch.setattr(dense, "query_blocks", lambda length, block=None: ((0, length),))
    whole = run()
    worst = max(float(np.max(np.abs(np.asarray(a) - np.asarray(b))) / np.max(np.abs(np.asarray(b))))
                for a, b in zip(jax.tree.leaves(blocked), jax.tree.leaves(whole)))
    print(f"max diff / largest magnitude {worst:.2e}")
    assert worst <= 1e-6, worst
