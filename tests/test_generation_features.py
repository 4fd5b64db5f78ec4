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


def test_stream_stops_when_every_row_has_ended(models):
    _, module, params = models
    free = np.asarray(generate(module, params, IDS, MASK, max_new_tokens=N).sequences)
    eos = sorted({int(t) for t in free[:, L + 2]})  # every row ends by its third token
    ref = generate(module, params, IDS, MASK, max_new_tokens=N, eos_token_id=eos, pad_token_id=PAD)
    tokens = collect(DecodeLoop(module, params, max_new_tokens=N, eos_token_id=eos, pad_token_id=PAD), IDS, MASK)
    assert tokens.shape[1] == int(ref.length) - L <= 3
    np.testing.assert_array_equal(tokens, np.asarray(ref.sequences)[:, L:int(ref.length)])


def test_errors(models):
    _, module, params = models
    bad = [(dict(repetition_penalty=0.0), "repetition_penalty"), (dict(min_new_tokens=-1), "min_new_tokens"),
           (dict(num_return_sequences=0), "num_return_sequences"), (dict(bad_words_ids=[[3, -1]]), "bad_words_ids"),
           (dict(bad_words_ids=[[VOCAB]]), "vocabulary size"),
           (dict(bad_words_ids=[[VOCAB + 5, 3]]), "vocabulary size"), (dict(bad_words_ids=[]), "bad_words_ids")]
    for kwargs, match in bad:
        with pytest.raises(ValueError, match=match):
            generate(module, params, IDS, MASK, max_new_tokens=2, **kwargs)
        with pytest.raises(ValueError, match=match):
            DecodeLoop(module, params, max_new_tokens=2, **kwargs)
    with pytest.raises(ValueError, match="rng"):
        DecodeLoop(module, params, max_new_tokens=2, do_sample=True).prefill(IDS, MASK)
    with pytest.raises(ValueError, match="max_new_tokens"):
        DecodeLoop(module, params, max_new_tokens=0)


def test_decode_loop_compile_ahead(models):
    _, module, params = models
    loop = DecodeLoop(module, params, max_new_tokens=4, do_sample=True, temperature=0.8, pad_token_id=PAD)
    assert loop.compile(IDS, MASK) > 0  # no rng needed to compile a sampling loop
    state = loop.prefill(IDS, MASK, rng=5)
    assert loop._step_executable is not None  # the ahead-of-time executables are the ones used
    cache = jax.tree.leaves(state.cache)[0]
    loop.step(state)
    assert cache.is_deleted()  # the ahead-of-time step donates too
    got = collect(loop, IDS, MASK, rng=5)
    ref = generate(module, params, IDS, MASK, max_new_tokens=4, do_sample=True, temperature=0.8,
                   pad_token_id=PAD, rng=5)
    np.testing.assert_array_equal(got, np.asarray(ref.sequences)[:, L:])


# --- processors vs HF's classes on random scores -----------------------------------------
from transformers.generation.logits_process import (  # noqa: E402
    MinNewTokensLengthLogitsProcessor,
    NoBadWordsLogitsProcessor,
    RepetitionPenaltyLogitsProcessor,
)

from zoo.generation import (  # noqa: E402
    apply_bad_words,
    apply_min_new_tokens,
    apply_repetition_penalty,
    bad_words_table,
)


def random_case(seed, batch=6, length=12, vocab=40):
    rng = np.random.RandomState(seed)
    scores = (rng.randn(batch, vocab) * 3).astype(np.float32)
    ids = rng.randint(0, vocab, (batch, length))
    return scores, ids


def equal_scores(got, ref):
    got, ref = np.asarray(got), ref.numpy()
    np.testing.assert_array_equal(np.isneginf(got), np.isneginf(ref))
    finite = np.isfinite(ref)
    assert np.abs(got[finite] - ref[finite]).max(initial=0) <= 1e-6


@pytest.mark.parametrize("penalty", [1.3, 0.7, 2.0])
def test_repetition_penalty_equals_hf(penalty):
    scores, ids = random_case(int(penalty * 10))
    ids[0, :3] = 45  # ids beyond the scores' vocabulary are not penalised (HF clamps them away)
    ignore = np.array([0, 3, 5, 0, 11, 12])  # per row (HF generate: the left-padding lengths)
    t = torch.from_numpy
    ref = RepetitionPenaltyLogitsProcessor(penalty, prompt_ignore_length=t(ignore))(t(ids), t(scores).clone())
    equal_scores(apply_repetition_penalty(scores, ids, penalty, ignore), ref)
    ref = RepetitionPenaltyLogitsProcessor(penalty, prompt_ignore_length=4)(t(ids), t(scores).clone())
    equal_scores(apply_repetition_penalty(scores, ids, penalty, 4), ref)
    ref = RepetitionPenaltyLogitsProcessor(penalty)(t(ids[:, :7]), t(scores).clone())
    equal_scores(apply_repetition_penalty(scores, ids, penalty, length=7), ref)  # a buffer filled up to 7


@pytest.mark.parametrize("length, minimum", [(12, 5), (12, 2), (10, 0)])
def test_min_new_tokens_equals_hf(length, minimum):
    scores, ids = random_case(length + minimum)
    t = torch.from_numpy
    ref = MinNewTokensLengthLogitsProcessor(8, minimum, [3, 17])(t(ids[:, :length]), t(scores))
    equal_scores(apply_min_new_tokens(scores, length - 8, minimum, [3, 17, -1, -1]), ref)


def test_bad_words_equal_hf():
    scores, ids = random_case(7)
    ids[0, -2:] = [4, 5]  # row 0 ends with the prefix of [4, 5, 6]
    ids[1, -1:] = [5]  # row 1 with that of [5, 9] (and only part of [4, 5, 6]'s)
    ids[2, -3:] = [1, 2, 3]  # row 2 with that of [1, 2, 3, 7], longer than a group of 4
    ids[3, -1] = 11  # the prefix of [11, 3]: 3 is an eos id, kept as the end of a longer word
    words = [[4, 5, 6], [5, 9], [1, 2, 3, 7], [20], [3], [11, 3], [30, 31]]
    t = torch.from_numpy
    for eos in (None, [3, 8]):  # HF drops the single-token bad word equal to an eos id
        ref = NoBadWordsLogitsProcessor(words, eos)(t(ids), t(scores))
        got = apply_bad_words(scores, ids, bad_words_table(words, eos))
        equal_scores(got, ref)
        assert np.isneginf(np.asarray(got)[[0, 1, 2, 3], [6, 9, 7, 3]]).all()
    short = ids[:, :2]  # a context shorter than a prefix: that word is skipped
    equal_scores(apply_bad_words(scores, short, bad_words_table(words)),
                 NoBadWordsLogitsProcessor(words)(t(short), t(scores)))
    equal_scores(apply_bad_words(scores, ids, bad_words_table(words), length=5),
                 NoBadWordsLogitsProcessor(words)(t(ids[:, :5]), t(scores)))
    with pytest.raises(ValueError, match="bad_words_ids"):
        bad_words_table([[1], []])


# --- end to end vs HF generate -------------------------------------------------------------
def hf_generate(hf, ids=IDS, mask=MASK, **kwargs):
    kwargs.setdefault("pad_token_id", PAD)
    config = transformers.GenerationConfig(max_new_tokens=N, **kwargs)
    with torch.no_grad():
        return hf.generate(input_ids=torch.from_numpy(ids).long(), attention_mask=torch.from_numpy(mask).long(),
                           generation_config=config).numpy()


def zoo_generate(module, params, **kwargs):
    kwargs.setdefault("pad_token_id", PAD)
    out = generate(module, params, IDS, MASK, max_new_tokens=N, **kwargs)
    return np.asarray(out.sequences)[:, :int(out.length)]


@pytest.fixture(scope="module")
def free(models):
    """Greedy tokens without any processor."""
    hf, module, params = models
    return zoo_generate(module, params)


@pytest.mark.parametrize("penalty", [1.5, 0.6])
def test_repetition_penalty_generate_equals_hf(models, free, penalty):
    hf, module, params = models
    ref = hf_generate(hf, repetition_penalty=penalty)
    got = zoo_generate(module, params, repetition_penalty=penalty)
    np.testing.assert_array_equal(got, ref)
    assert (got != free).any()  # the penalty changed the output


def test_min_new_tokens_and_several_eos_equal_hf(models, free):
    hf, module, params = models
    eos = sorted({int(free[0, L + 1]), int(free[1, L + 2])})  # rows 0 and 1 would stop early
    for minimum in (0, 4):
        ref = hf_generate(hf, eos_token_id=eos, min_new_tokens=minimum)
        got = zoo_generate(module, params, eos_token_id=eos, min_new_tokens=minimum)
        np.testing.assert_array_equal(got, ref)
    assert (got[:, L:L + 4] != PAD).all() and got.shape[1] > L + 4  # no eos within the first 4 tokens


def test_bad_words_generate_equals_hf(models, free):
    hf, module, params = models
    words = [[int(free[0, L])], [int(free[1, L + 1]), int(free[1, L + 2])], [int(free[2, L + 3])]]
    ref = hf_generate(hf, bad_words_ids=words)
    got = zoo_generate(module, params, bad_words_ids=words)
    np.testing.assert_array_equal(got, ref)
    assert (got != free).any()


def test_all_processors_together_equal_hf(models, free):
    hf, module, params = models
    kwargs = dict(repetition_penalty=1.2, min_new_tokens=2, eos_token_id=[int(free[0, L + 2]), 50],
                  bad_words_ids=[[int(free[1, L])], [int(free[2, L]), int(free[2, L + 1])]])
    np.testing.assert_array_equal(zoo_generate(module, params, **kwargs), hf_generate(hf, **kwargs))


def test_num_return_sequences_equals_hf(models):
    """HF refuses greedy with num_return_sequences > 1; sampling with top_k=1 is greedy, so its
    rows are comparable: each prompt row repeated (repeat_interleave), penalty per row."""
    hf, module, params = models
    kwargs = dict(num_return_sequences=2, repetition_penalty=1.3)
    ref = hf_generate(hf, do_sample=True, top_k=1, **kwargs)
    got = zoo_generate(module, params, **kwargs)
    assert got.shape == (6, L + N)
    np.testing.assert_array_equal(got, ref)
    np.testing.assert_array_equal(got[::2], got[1::2])  # greedy: identical rows


def test_num_return_sequences_sampled(models):
    _, module, params = models
    kwargs = dict(num_return_sequences=3, do_sample=True, temperature=1.5)
    a, b = (zoo_generate(module, params, rng=7, **kwargs) for _ in range(2))
    assert a.shape == (9, L + N)
    np.testing.assert_array_equal(a, b)  # the same seed reproduces
    np.testing.assert_array_equal(a[:, :L], np.repeat(IDS, 3, axis=0))
    groups = a[:, L:].reshape(3, 3, N)
    assert all(len({tuple(r) for r in g}) > 1 for g in groups)  # each prompt's rows differ
    tokens = collect(DecodeLoop(module, params, max_new_tokens=N, pad_token_id=PAD, **kwargs), IDS, MASK, rng=7)
    np.testing.assert_array_equal(tokens, a[:, L:])


def test_new_traced_values_do_not_recompile(models, free):
    _, module, params = models
    kwargs = dict(repetition_penalty=1.2, min_new_tokens=2, eos_token_id=[5], bad_words_ids=[[7], [8, 9]])
    zoo_generate(module, params, **kwargs)
    compiled = _generate._cache_size()
    zoo_generate(module, params, repetition_penalty=0.8, min_new_tokens=5, eos_token_id=[6, 7, 8],
                 bad_words_ids=[[10, 11, 12], [13], [14, 15]], pad_token_id=0)
    assert _generate._cache_size() == compiled


def test_idefics_num_return_sequences_and_decode_loop_equal_hf():
    """IDEFICS' model inputs (pixel_values, image_attention_mask) are expanded with the rows,
    and DecodeLoop (through its decode_inputs hook) equals generate."""
    from test_idefics_parity import build, inputs, torch_inputs

    hf = build(use_resampler=True, cross_layer_interval=2, num_hidden_layers=4)
    module, params = to_zoo(hf)
    x = inputs(length=6)
    kwargs = dict(max_new_tokens=6, pad_token_id=0, repetition_penalty=1.3, num_return_sequences=2)
    with torch.no_grad():
        ref = hf.generate(**torch_inputs(x), do_sample=True, top_k=1, **kwargs).numpy()  # top_k=1: greedy
    images = dict(image_attention_mask=x["image_attention_mask"], pixel_values=x["pixel_values"])
    got = generate(module, params, x["input_ids"], x["attention_mask"], **kwargs, **images)
    np.testing.assert_array_equal(np.asarray(got.sequences)[:, :ref.shape[1]], ref)
    tokens = collect(DecodeLoop(module, params, **kwargs), x["input_ids"], x["attention_mask"], **images)
    np.testing.assert_array_equal(tokens, np.asarray(got.sequences)[:, 6:])
