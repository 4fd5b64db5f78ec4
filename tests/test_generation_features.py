"""zoo.generation: HF's logits processors, num_return_sequences and the streaming DecodeLoop."""

from __future__ import annotations

import jax
import numpy as np
import pytest
import torch
import transformers

from hf_parity import to_zoo
from zoo.generation import DecodeLoop, _generate, _step_jit, generate, left_pad
from zoo.models.data2vec_text import Data2VecTextForCausalLM

VOCAB, PAD, N = 99, 1, 8
IDS, MASK = left_pad([[5, 6, 7], [8, 9, 10, 11, 12], [40, 41]], PAD)  # [3, 5], left padded
L = IDS.shape[1]


@pytest.fixture(scope="module")
def models():
    torch.manual_seed(0)
    config = transformers.Data2VecTextConfig(
        vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=37,
        max_position_embeddings=64, is_decoder=True, attn_implementation="eager")
    hf = transformers.Data2VecTextForCausalLM(config).eval()
    hf.generation_config.eos_token_id = None  # else HF falls back to the config's eos (2) when given None
    module, params = to_zoo(hf)
    return hf, module, params


def collect(loop, *args, **kwargs) -> np.ndarray:
    return np.stack(list(loop.stream(*args, **kwargs)), axis=1)  # [R, steps]


@pytest.mark.parametrize("do_sample", [False, True])
def test_decode_loop_equals_generate(models, do_sample):
    _, module, params = models
    settings = dict(max_new_tokens=N, do_sample=do_sample, top_k=5 if do_sample else 0, pad_token_id=PAD)
    ref = generate(module, params, IDS, MASK, rng=3, **settings)
    tokens = collect(DecodeLoop(module, params, **settings), IDS, MASK, rng=3)
    assert tokens.shape == (3, N)
    np.testing.assert_array_equal(tokens, np.asarray(ref.sequences)[:, L:])


def test_decode_loop_donates_and_does_not_retrace(models):
    _, module, params = models
    loop = DecodeLoop(module, params, max_new_tokens=N, eos_token_id=[3, 4], pad_token_id=PAD)
    state = loop.prefill(IDS, MASK)
    state = loop.step(state)
    traced = _step_jit._cache_size()
    for _ in range(3):
        cache = jax.tree.leaves(state.cache)[0]
        new = loop.step(state)
        assert cache.is_deleted()  # the cache buffers were donated to the step
        state = new
    assert _step_jit._cache_size() == traced
    assert int(state.step) == 5 and state.tokens.shape == (3,) and not loop.done(state)


def test_decode_loop_compile_ahead(models):
    _, module, params = models
    loop = DecodeLoop(module, params, max_new_tokens=4, do_sample=True, temperature=0.8, pad_token_id=PAD)
    assert loop.compile(IDS, MASK, rng=0) > 0
    got = collect(loop, IDS, MASK, rng=5)
    ref = generate(module, params, IDS, MASK, max_new_tokens=4, do_sample=True, temperature=0.8,
                   pad_token_id=PAD, rng=5)
    np.testing.assert_array_equal(got, np.asarray(ref.sequences)[:, L:])
