"""SpecAugment masks: same distribution as HF's numpy ``_compute_mask_indices``, jit-able.

Statistics compare many independent draws (calls) of HF's sampler (numpy, seeded) and ours.
Rows of one call share HF's epsilon, so rows are not independent: every statistic is first
averaged per call and its standard error taken across calls (independent units); the two
samples are then compared with a two-sample z-score, |z| <= Z_SCALAR for one statistic and
<= Z_MAX for the max over a profile (positions, histogram bins). Where both samples have zero
spread (a deterministic statistic) the values must be equal.
"""

import functools
import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from transformers.models.data2vec.modeling_data2vec_audio import Data2VecAudioModel, _compute_mask_indices

from zoo.nn.spec_augment import apply_spec_augment, compute_mask_indices

DRAWS = 1000  # independent calls per sampler; x batch of 4 -> 4000 rows
Z_SCALAR = 4.0
Z_MAX = 4.5  # max over up to a few hundred positions/bins per config

# (sequence_length, mask_prob, mask_length, min_masks, lengths or None)
CONFIGS = {
    "p0.3_len2": (50, 0.3, 2, 0, None),
    "p0.65_len10_min2_overlaps": (50, 0.65, 10, 2, None),
    "min_masks_dominate_padded": (40, 0.05, 1, 2, (40, 30, 5, 20)),
    "epsilon_rounding_2.5_spans": (50, 0.05, 1, 0, None),
    "mostly_empty_dummy_frame": (20, 0.05, 10, 0, (20, 15, 9, 12)),
    "p0.3_len10_padded": (30, 0.3, 10, 0, (30, 25, 9, 20)),
    "caps_and_min_masks": (12, 0.65, 5, 4, (12, 7, 3, 10)),
}


def _lengths(length, lengths):
    return np.array(lengths if lengths is not None else [length] * 4)


@functools.lru_cache(maxsize=None)
def _hf_draws(length, prob, span, min_masks, lengths):
    np.random.seed(1234)
    lens = _lengths(length, lengths)
    attention_mask = torch.tensor((np.arange(length)[None] < lens[:, None]).astype(np.int64))
    return np.stack(
        [_compute_mask_indices((4, length), prob, span, attention_mask, min_masks) for _ in range(DRAWS)]
    )


@functools.lru_cache(maxsize=None)
def _our_draws(length, prob, span, min_masks, lengths):
    sample = jax.jit(
        jax.vmap(
            lambda key, lens: compute_mask_indices(key, (4, length), prob, span, lengths=lens, min_masks=min_masks),
            in_axes=(0, None),
        )
    )
    keys = jax.random.split(jax.random.key(7), DRAWS)
    return np.asarray(sample(keys, jnp.asarray(_lengths(length, lengths))))


@pytest.fixture(scope="module", params=list(CONFIGS), ids=list(CONFIGS))
def draws(request):
    config = CONFIGS[request.param]
    return config, _hf_draws(*config), _our_draws(*config)


def _max_z(stat_hf, stat_ours):
    """Max two-sample |z| over the trailing entries of per-call statistics ``[DRAWS, ...]``."""
    mean_a, mean_b = stat_hf.mean(0), stat_ours.mean(0)
    se = np.sqrt(stat_hf.var(0, ddof=1) / len(stat_hf) + stat_ours.var(0, ddof=1) / len(stat_ours))
    diff = np.abs(mean_a - mean_b)
    assert np.all(diff[se == 0] < 1e-12), "a deterministic statistic differs"
    return float(np.max(np.where(se > 0, diff / np.where(se > 0, se, 1), 0.0)))


def test_mean_masked_fraction(draws):
    _, hf, ours = draws
    assert hf.shape == ours.shape and ours.dtype == bool
    assert _max_z(hf.mean((1, 2))[:, None], ours.mean((1, 2))[:, None]) <= Z_SCALAR
    assert _max_z(hf.mean(2), ours.mean(2)) <= Z_MAX  # per row (rows have their own lengths)


def test_position_profile(draws):
    _, hf, ours = draws
    assert _max_z(hf.astype(float), ours.astype(float)) <= Z_MAX  # [DRAWS, B, L]


def test_masked_count_histogram(draws):
    """Per row: P(#masked frames == k) (== #spans for mask_length 1, merged spans otherwise)."""
    (length, *_), hf, ours = draws
    bins = np.arange(length + 1)
    hist_hf = hf.sum(2)[..., None] == bins
    hist_ours = ours.sum(2)[..., None] == bins
    assert _max_z(hist_hf.astype(float), hist_ours.astype(float)) <= Z_MAX


def test_nothing_masked_in_padding_except_hf_dummy_frame(draws):
    """Spans end before each row's length; HF's dummy index only masks frame L-1 of span-less rows."""
    (length, _, _, _, lengths), hf, ours = draws
    lens = _lengths(length, lengths)
    pos = np.arange(length)
    for sample in (hf, ours):
        inside = sample & (pos < lens[:, None])
        padding = sample & (pos >= lens[:, None])
        assert not np.any(padding[..., :-1])
        dummy = padding[..., -1]
        assert not np.any(dummy & inside.any(-1))
    np.testing.assert_array_equal(hf[..., -1].any(0), ours[..., -1].any(0))


def test_shared_epsilon_rounding():
    """mask_length 1, full rows: one epsilon per call -> all rows of a call mask the same count."""
    for sample in (_hf_draws(50, 0.05, 1, 0, None), _our_draws(50, 0.05, 1, 0, None)):
        counts = sample.sum(2)
        assert np.all(counts == counts[:, :1])
        assert set(np.unique(counts)) == {2, 3}  # int(2.5 + eps)
        assert abs(np.mean(counts[:, 0] == 3) - 0.5) < 4 * 0.5 / np.sqrt(DRAWS)


def test_all_false_cases():
    key = jax.random.key(0)
    assert not np.any(compute_mask_indices(key, (3, 20), 0.0, 2))  # static: no span possible
    np.random.seed(0)
    assert not np.any(_compute_mask_indices((3, 20), 0.0, 2))
    # mask_prob * L / mask_length = 0.1: no span unless epsilon >= 0.9 (traced all-False branch)
    sample = jax.jit(jax.vmap(lambda k: compute_mask_indices(k, (3, 20), 0.05, 10, lengths=jnp.array([20, 5, 12]))))
    masks = sample(jax.random.split(key, 400))
    empty = ~np.asarray(masks).any((1, 2))
    assert 0.8 < empty.mean() < 0.97
    # lengths shorter than mask_length: the row never gets a span
    assert not np.any(np.asarray(masks)[:, 1, :-1])


@pytest.mark.parametrize("span", [0, 21])
def test_bad_mask_length_raises(span):
    with pytest.raises(ValueError, match="mask_length"):
        _compute_mask_indices((2, 20), 0.5, span)
    with pytest.raises(ValueError, match="mask_length"):
        compute_mask_indices(jax.random.key(0), (2, 20), 0.5, span)
    with pytest.raises(ValueError, match="mask_length"):
        jax.jit(lambda k: compute_mask_indices(k, (2, 20), 0.5, span))(jax.random.key(0))


def test_jit_traced_lengths_and_keys():
    traces = []

    @jax.jit
    def sample(key, lens):
        traces.append(1)
        return compute_mask_indices(key, (3, 40), 0.5, 4, lengths=lens, min_masks=1)

    key = jax.random.key(3)
    a = np.asarray(sample(key, jnp.array([40, 20, 8])))
    b = np.asarray(sample(key, jnp.array([40, 30, 6])))
    c = np.asarray(sample(jax.random.key(4), jnp.array([40, 30, 6])))
    assert len(traces) == 1
    assert not a[1, 20:].any() and not b[2, 6:-1].any()
    assert not np.array_equal(b, c)
    np.testing.assert_array_equal(b, np.asarray(sample(key, jnp.array([40, 30, 6]))))  # same key, same mask


def _augment(key, hidden, **overrides):
    kwargs = dict(
        masked_spec_embed=jnp.arange(1.0, hidden.shape[-1] + 1),
        mask_time_prob=0.0, mask_time_length=2, mask_time_min_masks=0,
        mask_feature_prob=0.0, mask_feature_length=2, mask_feature_min_masks=0,
    )
    kwargs.update(overrides)
    return apply_spec_augment(key, hidden, **kwargs)


def test_given_time_mask_matches_hf_in_eval():
    hidden = np.random.default_rng(0).normal(size=(2, 6, 4)).astype(np.float32)
    time_mask = np.zeros((2, 6), bool)
    time_mask[0, 1:3] = time_mask[1, 5] = True
    embed = np.arange(1.0, 5.0, dtype=np.float32)
    fake = types.SimpleNamespace(
        config=types.SimpleNamespace(apply_spec_augment=True, mask_time_prob=0.5, mask_feature_prob=0.5),
        masked_spec_embed=torch.tensor(embed),
        training=False,
    )
    expected = Data2VecAudioModel._mask_hidden_states(fake, torch.tensor(hidden), torch.tensor(time_mask)).numpy()
    out, used = _augment(None, jnp.asarray(hidden), mask_time_indices=jnp.asarray(time_mask),
                         mask_time_prob=0.5, mask_feature_prob=0.5)
    np.testing.assert_array_equal(np.asarray(out), expected)
    np.testing.assert_array_equal(np.asarray(used), time_mask)
    out, used = _augment(None, jnp.asarray(hidden), mask_time_indices=jnp.asarray(time_mask), apply_spec_augment=False)
    assert used is None and np.array_equal(np.asarray(out), hidden)


def test_deterministic_is_identity():
    hidden = jnp.ones((2, 8, 6))
    out, used = _augment(jax.random.key(0), hidden, mask_time_prob=0.9, mask_feature_prob=0.9)
    assert used is None and np.array_equal(np.asarray(out), np.asarray(hidden))


def test_training_time_and_feature_masks():
    hidden = jnp.asarray(np.random.default_rng(1).normal(size=(3, 10, 16)).astype(np.float32)) + 100.0
    key = jax.random.key(5)
    run = jax.jit(lambda k, h, lens: _augment(
        k, h, deterministic=False, lengths=lens, mask_time_prob=0.4, mask_time_length=2,
        mask_feature_prob=0.4, mask_feature_length=3, mask_feature_min_masks=1,
    ))
    lengths = jnp.array([10, 7, 4])
    out, used = map(np.asarray, run(key, hidden, lengths))
    time_key, feature_key = jax.random.split(key)
    masks = jax.jit(lambda tk, fk, lens: (
        compute_mask_indices(tk, (3, 10), 0.4, 2, lengths=lens),
        compute_mask_indices(fk, (3, 16), 0.4, 3, min_masks=1),
    ))
    time_mask, features = map(np.asarray, masks(time_key, feature_key, lengths))
    np.testing.assert_array_equal(used, time_mask)
    assert used.any() and features.any(1).all()
    embed = np.arange(1.0, 17.0, dtype=np.float32)
    expected = np.where(used[:, :, None], embed, np.asarray(hidden))
    expected = np.where(features[:, None, :], 0.0, expected)
    np.testing.assert_array_equal(out, expected)
    # whole channels zeroed at every frame, and only those (hidden is far from 0)
    np.testing.assert_array_equal((out == 0).all(1), features)
    np.testing.assert_array_equal((out == 0).any(1), features)
