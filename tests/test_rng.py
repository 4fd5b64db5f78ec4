"""zoo.rng.bernoulli and zoo.nn.dropout.Dropout: jax.random.bernoulli's and flax's Dropout's
exact values, computed without XLA:CPU's rolled Threefry loop."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from zoo.nn.dropout import Dropout
from zoo.rng import bernoulli

KEYS = {
    "raw": jax.random.PRNGKey(3),
    "typed": jax.random.key(7),
    "folded": jax.random.fold_in(jax.random.PRNGKey(1), 5),
    "split": jax.random.split(jax.random.PRNGKey(11))[1],
}
SHAPES = [(1,), (3,), (2, 5, 7), (8, 12, 16, 16), (4, 1, 33)]


@pytest.mark.parametrize("key", list(KEYS), ids=list(KEYS))
@pytest.mark.parametrize("p", [0.9, 0.5, 0.1, 0.0, 1.0, 0.999999, 1e-7, np.float32(0.8)])
def test_bernoulli_equals_jax_random_bernoulli_bit_for_bit(key, p):
    for shape in SHAPES:
        got = jax.jit(lambda k: bernoulli(k, p, shape))(KEYS[key])
        want = jax.random.bernoulli(KEYS[key], p, shape)
        assert got.shape == want.shape and got.dtype == want.dtype == jnp.bool_
        assert np.array_equal(np.asarray(got), np.asarray(want)), (key, p, shape)


def test_bernoulli_is_one_fused_pass_without_a_loop():
    """The point of it: no while loop in the optimized HLO (JAX's CPU lowering of Threefry is a
    rolled 5-step loop), and the kept fraction is right."""
    key, shape = jax.random.PRNGKey(0), (64, 1024)
    hlo = jax.jit(lambda k: bernoulli(k, 0.9, shape)).lower(key).compile().as_text()
    assert " while(" not in hlo
    assert " while(" in jax.jit(lambda k: jax.random.bernoulli(k, 0.9, shape)).lower(key).compile().as_text()
    assert abs(float(bernoulli(key, 0.9, shape).mean()) - 0.9) < 0.005


def test_bernoulli_falls_back_to_jax_for_what_it_does_not_compute():
    rbg = jax.random.key(0, impl="rbg")
    assert np.array_equal(bernoulli(rbg, 0.7, (5, 6)), jax.random.bernoulli(rbg, 0.7, (5, 6)))
    p = jnp.full((5, 6), 0.3)  # an array p
    key = jax.random.PRNGKey(2)
    assert np.array_equal(bernoulli(key, p, (5, 6)), jax.random.bernoulli(key, p, (5, 6)))
    assert bernoulli(key, 0.5, (0, 3)).shape == (0, 3)


@pytest.mark.parametrize("rate,broadcast_dims", [(0.1, ()), (0.5, (1,)), (0.3, (-1,)), (0.0, ()), (1.0, ())])
def test_dropout_equals_flax_dropout(rate, broadcast_dims):
    """Same values and the same gradient as flax.linen.Dropout: the same module name, so the same
    key per module, and the same mask."""
    x = jax.random.normal(jax.random.PRNGKey(0), (3, 8, 16))

    class Net(nn.Module):
        cls: type

        @nn.compact
        def __call__(self, x):
            return self.cls(rate, broadcast_dims=broadcast_dims)(x * 2.0, deterministic=False) + \
                self.cls(rate)(x, deterministic=False)

    rngs = {"dropout": jax.random.PRNGKey(4)}
    ours = lambda x: Net(Dropout).apply({}, x, rngs=rngs)
    theirs = lambda x: Net(nn.Dropout).apply({}, x, rngs=rngs)
    assert np.array_equal(np.asarray(jax.jit(ours)(x)), np.asarray(theirs(x)))
    g_ours = jax.grad(lambda x: jnp.sum(ours(x) ** 2))(x)
    g_theirs = jax.grad(lambda x: jnp.sum(theirs(x) ** 2))(x)
    assert np.array_equal(np.asarray(g_ours), np.asarray(g_theirs))
    assert np.array_equal(np.asarray(Dropout(rate).apply({}, x, deterministic=True)), np.asarray(x))
