"""zoo.generation: KV-cache decoding inside one jit, equal to HF's ``generate`` token for token."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import transformers
from transformers.generation.logits_process import (
    LogitsProcessorList,
    TemperatureLogitsWarper,
    TopKLogitsWarper,
    TopPLogitsWarper,
)

from hf_parity import max_diff, to_zoo
from zoo.generation import _generate, generate, left_pad, warp_logits, warp_top_k, warp_top_p
from zoo.models.data2vec_text import Data2VecTextForCausalLM

VOCAB, PAD, N = 99, 1, 8
IDS, MASK = left_pad([[5, 6, 7], [8, 9, 10, 11, 12], [40, 41]], PAD)  # [3, 5], left padded
TYPES = np.zeros_like(IDS)
TYPES[:, -1] = 1  # HF continues token_type_ids with their last column: the generated tokens get type 1
L = IDS.shape[1]


class HookedCausalLM(Data2VecTextForCausalLM):
    """Uses the ``decode_inputs`` hook: decode steps get token type 1, and traces are counted."""

    traces = []

    def decode_inputs(self, outputs, model_inputs):
        HookedCausalLM.traces.append(outputs.logits.shape)
        return {**model_inputs, "token_type_ids": jnp.ones_like(model_inputs["token_type_ids"])}


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


def hf_generate(hf, eos=None, pad=PAD, **kwargs):
    config = transformers.GenerationConfig(eos_token_id=eos, pad_token_id=pad, do_sample=False,
                                           max_new_tokens=N, **kwargs)
    with torch.no_grad():
        return hf.generate(input_ids=torch.from_numpy(IDS).long(), attention_mask=torch.from_numpy(MASK).long(),
                           token_type_ids=torch.from_numpy(TYPES).long(), generation_config=config)


def full_forward(hf, sequences, token_type_ids):
    """Logits of one forward over prompt + generated tokens, positions as HF's generate gives them:
    cumsum(mask) - 1, padding at 0."""
    mask = np.concatenate([MASK, np.ones((3, N), np.int32)], axis=1)
    positions = np.where(mask == 0, 0, np.cumsum(mask, axis=1) - 1)
    t = lambda x: torch.from_numpy(np.array(x)).long()
    with torch.no_grad():
        return hf(input_ids=t(sequences), attention_mask=t(mask), position_ids=t(positions),
                  token_type_ids=t(token_type_ids)).logits


@pytest.fixture(scope="module")
def greedy(models):
    _, module, params = models
    return generate(module, params, IDS, MASK, max_new_tokens=N, pad_token_id=PAD, output_logits=True,
                    token_type_ids=TYPES)


def test_left_pad():
    ids, mask = left_pad([[5, 6, 7], [8]], PAD)
    np.testing.assert_array_equal(ids, [[5, 6, 7], [PAD, PAD, 8]])
    np.testing.assert_array_equal(mask, [[1, 1, 1], [0, 0, 1]])
    assert ids.dtype == mask.dtype == np.int32


def test_greedy_equals_hf_left_padded(models, greedy):
    hf, _, _ = models
    ref = hf_generate(hf, return_dict_in_generate=True, output_logits=True)
    assert greedy.sequences.shape == ref.sequences.shape == (3, L + N) and int(greedy.length) == L + N
    np.testing.assert_array_equal(greedy.sequences, ref.sequences.numpy())
    assert max_diff(greedy.logits, torch.stack(ref.logits, 1)) <= 1e-5


def test_incremental_logits_equal_full_forward(models, greedy):
    hf, _, _ = models
    types = np.concatenate([TYPES, np.ones((3, N), np.int32)], axis=1)
    assert max_diff(greedy.logits, full_forward(hf, greedy.sequences, types)[:, L - 1:L + N - 1]) <= 1e-5


def test_eos_some_rows_early_then_pad_like_hf(models, greedy):
    hf, module, params = models
    generated = np.asarray(greedy.sequences[:, L:])
    # an eos row 0 produces early and that some other row never produces
    eos = next(int(t) for t in generated[0, :N - 2] if not all(t in row for row in generated[1:]))
    got = generate(module, params, IDS, MASK, max_new_tokens=N, eos_token_id=eos, pad_token_id=PAD,
                   output_logits=True, token_type_ids=TYPES)
    ref = hf_generate(hf, eos=eos).numpy()
    assert int(got.length) == ref.shape[1]
    np.testing.assert_array_equal(got.sequences[:, :ref.shape[1]], ref)
    assert (got.sequences[:, ref.shape[1]:] == PAD).all()
    assert (ref[0, L:] == PAD).any() and (ref[1:, L:] != PAD).all(axis=1).any()  # row 0 padded, another not


def test_eos_list_stops_early_and_pad_none_uses_eos(models, greedy):
    hf, module, params = models
    eos = sorted({int(t) for t in greedy.sequences[:, L + 2]})  # every row ends by its third token
    for pad in (PAD, None):
        got = generate(module, params, IDS, MASK, max_new_tokens=N, eos_token_id=eos, pad_token_id=pad,
                       output_logits=True, token_type_ids=TYPES)
        hf.generation_config.pad_token_id = pad  # else HF falls back to it
        try:
            ref = hf_generate(hf, eos=eos, pad=pad).numpy()
        finally:
            hf.generation_config.pad_token_id = PAD
        length = ref.shape[1]
        assert length <= L + 3 and int(got.length) == length
        np.testing.assert_array_equal(got.sequences[:, :length], ref)
        assert (got.sequences[:, length:] == (eos[0] if pad is None else pad)).all()
        # the loop stopped: no logits for the steps after the last row finished
        assert (got.logits[:, length - L:] == 0).all() and (got.logits[:, :length - L] != 0).any()


def test_attention_mask_inferred_from_padding_as_hf(models, greedy):
    _, module, params = models
    got = generate(module, params, IDS, max_new_tokens=N, pad_token_id=PAD, output_logits=True,
                   token_type_ids=TYPES)
    np.testing.assert_array_equal(got.sequences, greedy.sequences)


def test_decode_inputs_hook_is_traced_once(models):
    hf, base, params = models
    module = HookedCausalLM(base.config)
    zeros = np.zeros_like(IDS)
    HookedCausalLM.traces.clear()
    out = generate(module, params, IDS, MASK, max_new_tokens=N, output_logits=True, token_type_ids=zeros)
    generate(module, params, IDS[::-1], MASK[::-1], max_new_tokens=N, output_logits=True, token_type_ids=zeros,
             eos_token_id=[3, 4], pad_token_id=0)
    assert HookedCausalLM.traces == [(3, L, VOCAB)]  # one trace for both calls, hook fed the prefill outputs
    # the decode steps ran with the hook's token type 1, not the prompt's last type 0
    types = np.concatenate([zeros, np.ones((3, N), np.int32)], axis=1)
    assert max_diff(out.logits, full_forward(hf, out.sequences, types)[:, L - 1:L + N - 1]) <= 1e-5
    assert max_diff(out.logits, full_forward(hf, out.sequences, 0 * types)[:, L - 1:L + N - 1]) > 1e-3


SAMPLING = dict(max_new_tokens=N, do_sample=True, top_k=5, output_logits=True, token_type_ids=TYPES)


def test_sampling_rng_and_no_recompilation(models):
    _, module, params = models
    a = generate(module, params, IDS, MASK, temperature=0.7, top_p=0.9, rng=jax.random.key(1), **SAMPLING)
    compiled = _generate._cache_size()
    b = generate(module, params, IDS, MASK, temperature=0.7, top_p=0.9, rng=jax.random.key(1), **SAMPLING)
    c = generate(module, params, IDS, MASK, temperature=1.3, top_p=0.8, rng=jax.random.key(2), **SAMPLING)
    d = generate(module, params, IDS[::-1], MASK, temperature=0.5, top_p=0.95, rng=3,
                 eos_token_id=[7, 8, 9], pad_token_id=0, **SAMPLING)
    assert _generate._cache_size() == compiled  # new prompts, values, eos and rng: no new compilation
    np.testing.assert_array_equal(a.sequences, b.sequences)
    assert (np.asarray(a.sequences) != np.asarray(c.sequences)).any()
    # every sampled token is in the set the warpers keep for that step
    for out, temperature, top_p in ((a, 0.7, 0.9), (c, 1.3, 0.8), (d, 0.5, 0.95)):
        kept = np.isfinite(warp_logits(out.logits, temperature, 5, top_p))
        steps = int(out.length) - L
        tokens = np.asarray(out.sequences[:, L:L + steps])
        assert np.take_along_axis(kept[:, :steps], tokens[..., None], -1).all()
        assert (kept.sum(-1)[:, :steps] <= 5).all()


def test_sampling_at_low_temperature_is_greedy(models, greedy):
    _, module, params = models
    got = generate(module, params, IDS, MASK, temperature=1e-3, top_p=0.9, rng=0, pad_token_id=PAD, **SAMPLING)
    np.testing.assert_array_equal(got.sequences, greedy.sequences)


@pytest.mark.parametrize("temperature, top_k, top_p", [
    (1.0, 0, 0.9), (0.7, 5, 1.0), (1.3, 20, 0.7), (0.5, 50, 0.95), (2.0, 100, 0.3), (1.0, 1, 0.0),
])
def test_warpers_equal_hf(temperature, top_k, top_p):
    rng = np.random.RandomState(top_k)
    scores = (rng.randn(16, 80) * 3).astype(np.float32)
    if top_p == 1.0:  # ties at the top-k boundary (HF's top-p order among ties is torch.sort's, unspecified)
        scores[:4] = np.round(scores[:4])
    processors = LogitsProcessorList()
    if temperature != 1.0:
        processors.append(TemperatureLogitsWarper(temperature))
    if top_k:
        processors.append(TopKLogitsWarper(top_k))
    if top_p < 1.0:
        processors.append(TopPLogitsWarper(top_p))
    ref = processors(None, torch.from_numpy(scores)).numpy()
    got = np.asarray(warp_logits(scores, temperature, top_k, top_p))
    np.testing.assert_array_equal(np.isfinite(got), np.isfinite(ref))  # the same kept set
    np.testing.assert_array_equal(got[np.isfinite(got)], ref[np.isfinite(ref)])  # the same values


def test_min_tokens_to_keep_equal_hf():
    scores = torch.from_numpy((np.random.RandomState(0).randn(16, 80) * 4).astype(np.float32))
    np.testing.assert_array_equal(np.asarray(warp_top_p(scores.numpy(), 0.2, min_tokens_to_keep=3)),
                                  TopPLogitsWarper(0.2, min_tokens_to_keep=3)(None, scores).numpy())
    np.testing.assert_array_equal(np.asarray(warp_top_k(scores.numpy(), 2, min_tokens_to_keep=4)),
                                  TopKLogitsWarper(2, min_tokens_to_keep=4)(None, scores).numpy())


def test_errors(models):
    _, module, params = models
    with pytest.raises(ValueError, match="rng"):
        generate(module, params, IDS, MASK, max_new_tokens=2, do_sample=True)
    with pytest.raises(ValueError, match="max_new_tokens"):
        generate(module, params, IDS, MASK, max_new_tokens=0)
    with pytest.raises(ValueError, match="temperature"):
        generate(module, params, IDS, MASK, max_new_tokens=2, do_sample=True, temperature=0.0, rng=0)
    with pytest.raises(ValueError, match="attention_mask"):
        generate(module, params, IDS, MASK[:, 1:], max_new_tokens=2)
