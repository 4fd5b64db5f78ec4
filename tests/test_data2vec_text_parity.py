"""Data2VecText parity with HF PyTorch: every head, fp32, max abs diff <= 1e-5 on every field."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import transformers
from transformers import AttentionInterface
from transformers.masking_utils import AttentionMaskInterface, eager_mask

from hf_parity import assert_outputs_match, max_diff, to_zoo, torch_inputs

VOCAB, PAD, B, L = 99, 1, 3, 9


def hf_config(**overrides):
    kw = dict(vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
              intermediate_size=37, max_position_embeddings=64, type_vocab_size=2,
              attn_implementation="eager")
    kw.update(overrides)
    return transformers.Data2VecTextConfig(**kw)


def make_inputs(seed=0, batch=B, length=L, pad_rows=True):
    rng = np.random.RandomState(seed)
    ids = rng.randint(3, VOCAB, (batch, length)).astype(np.int64)
    mask = np.ones_like(ids)
    if pad_rows:  # right padding of different lengths
        for row, n in enumerate([0, 3, 5][:batch]):
            if n:
                ids[row, -n:] = PAD
                mask[row, -n:] = 0
    token_type = (np.arange(length)[None] >= length // 2).astype(np.int64).repeat(batch, 0)
    return ids, mask, token_type


def build(hf_cls, seed=0, **config_overrides):
    torch.manual_seed(seed)
    model = hf_cls(hf_config(**config_overrides)).eval()
    return model


def run_both(hf_model, inputs, **flags):
    module, params = to_zoo(hf_model)
    with torch.no_grad():
        ref = hf_model(**torch_inputs(inputs), **flags)
    got = module.apply(params, **inputs, **flags)
    return got, ref


FLAGS = dict(output_hidden_states=True, output_attentions=True)


@pytest.mark.parametrize("pooling", [True, False])
def test_model(pooling):
    torch.manual_seed(0)
    hf = transformers.Data2VecTextModel(hf_config(), add_pooling_layer=pooling).eval()
    ids, mask, tt = make_inputs()
    module, params = to_zoo(hf, add_pooling_layer=pooling)
    with torch.no_grad():
        ref = hf(**torch_inputs(dict(input_ids=ids, attention_mask=mask, token_type_ids=tt)), **FLAGS)
    got = module.apply(params, input_ids=ids, attention_mask=mask, token_type_ids=tt, **FLAGS)
    diffs = assert_outputs_match(got, ref)
    assert ("pooler_output" in diffs) == pooling
    assert len(got.hidden_states) == 3 and len(got.attentions) == 2


def test_masked_lm_with_loss():
    hf = build(transformers.Data2VecTextForMaskedLM)
    ids, mask, tt = make_inputs(1)
    labels = np.where(np.random.RandomState(2).rand(*ids.shape) < 0.4, ids, -100)
    got, ref = run_both(hf, dict(input_ids=ids, attention_mask=mask, token_type_ids=tt, labels=labels), **FLAGS)
    assert_outputs_match(got, ref)


def test_masked_lm_untied_decoder():
    hf = build(transformers.Data2VecTextForMaskedLM, tie_word_embeddings=False)
    assert hf.lm_head.decoder.weight.data_ptr() != hf.data2vec_text.embeddings.word_embeddings.weight.data_ptr()
    ids, mask, _ = make_inputs(3)
    got, ref = run_both(hf, dict(input_ids=ids, attention_mask=mask, labels=ids), **FLAGS)
    assert_outputs_match(got, ref)


@pytest.mark.parametrize("problem_type,num_labels", [
    ("regression", 1), ("single_label_classification", 3), ("multi_label_classification", 4), (None, 3),
])
def test_sequence_classification(problem_type, num_labels):
    hf = build(transformers.Data2VecTextForSequenceClassification, num_labels=num_labels,
               problem_type=problem_type)
    ids, mask, tt = make_inputs(4)
    rng = np.random.RandomState(5)
    if problem_type == "regression":
        labels = rng.randn(B).astype(np.float32)
    elif problem_type == "multi_label_classification":
        labels = (rng.rand(B, num_labels) > 0.5).astype(np.float32)
    else:
        labels = rng.randint(0, num_labels, (B,)).astype(np.int64)
    got, ref = run_both(hf, dict(input_ids=ids, attention_mask=mask, token_type_ids=tt, labels=labels), **FLAGS)
    assert_outputs_match(got, ref)


def test_token_classification():
    hf = build(transformers.Data2VecTextForTokenClassification, num_labels=5)
    ids, mask, _ = make_inputs(6)
    labels = np.where(mask == 1, np.random.RandomState(7).randint(0, 5, ids.shape), -100)
    got, ref = run_both(hf, dict(input_ids=ids, attention_mask=mask, labels=labels), **FLAGS)
    assert_outputs_match(got, ref)


def test_multiple_choice():
    hf = build(transformers.Data2VecTextForMultipleChoice)
    rng = np.random.RandomState(8)
    ids = rng.randint(3, VOCAB, (2, 3, 7)).astype(np.int64)
    mask = np.ones_like(ids)
    ids[:, 1, 5:] = PAD
    mask[:, 1, 5:] = 0
    labels = np.array([2, 0])
    got, ref = run_both(hf, dict(input_ids=ids, attention_mask=mask, labels=labels), **FLAGS)
    assert got.logits.shape == (2, 3)
    assert_outputs_match(got, ref)


def test_question_answering_with_out_of_range_positions():
    hf = build(transformers.Data2VecTextForQuestionAnswering)
    ids, mask, tt = make_inputs(9)
    start = np.array([1, 4, 50])  # 50 is beyond the sequence: clamped and ignored as HF does
    end = np.array([3, 5, 2])
    got, ref = run_both(hf, dict(input_ids=ids, attention_mask=mask, token_type_ids=tt,
                                 start_positions=start, end_positions=end), **FLAGS)
    assert_outputs_match(got, ref)


def test_inputs_embeds_and_explicit_position_ids():
    hf = build(transformers.Data2VecTextModel)
    module, params = to_zoo(hf)
    embeds = np.random.RandomState(10).randn(2, 6, 32).astype(np.float32)
    with torch.no_grad():
        ref = hf(inputs_embeds=torch.from_numpy(embeds), **FLAGS)
    got = module.apply(params, inputs_embeds=embeds, **FLAGS)
    assert_outputs_match(got, ref)
    ids, mask, _ = make_inputs(11, batch=2)
    pos = np.arange(L)[None].repeat(2, 0) + 5
    with torch.no_grad():
        ref = hf(input_ids=torch.from_numpy(ids), position_ids=torch.from_numpy(pos))
    got = module.apply(params, input_ids=ids, position_ids=pos)
    assert_outputs_match(got, ref)


# --- v4 features that transformers v5 dropped: relative positions and head_mask -----------
# transformers v5 removed ``position_embedding_type`` and ``head_mask`` from Data2VecText, but
# v4 checkpoints use them. The reference below is transformers v4's BERT self-attention
# (``distance_embedding``, scores (qk + q.E [+ k.E]) / sqrt(d), probs * head_mask) plugged into
# the v5 modules through HF's attention interface.
def v4_attention(module, query, key, value, attention_mask, scaling=None, dropout=0.0, **kwargs):
    scores = query @ key.transpose(2, 3)
    kind = getattr(module.config, "position_embedding_type", "absolute")
    if kind in ("relative_key", "relative_key_query") and hasattr(module, "distance_embedding"):
        lq, lk = query.shape[2], key.shape[2]
        distance = torch.arange(lq)[:, None] - torch.arange(lk)[None, :]
        emb = module.distance_embedding(distance + module.config.max_position_embeddings - 1)
        scores = scores + torch.einsum("bhld,lrd->bhlr", query, emb)
        if kind == "relative_key_query":
            scores = scores + torch.einsum("bhrd,lrd->bhlr", key, emb)
    scores = scores * scaling
    if attention_mask is not None and attention_mask.dtype == torch.bool:  # sdpa-style mask
        scores = scores.masked_fill(~attention_mask, torch.finfo(scores.dtype).min)
    elif attention_mask is not None:
        scores = scores + attention_mask
    probs = torch.softmax(scores, dim=-1)
    head_mask = kwargs.get("head_mask")
    if head_mask is not None:
        probs = probs * head_mask[module.layer_idx][None, :, None, None]
    return (probs @ value).transpose(1, 2).contiguous(), probs


AttentionInterface.register("v4_reference", v4_attention)
AttentionMaskInterface.register("v4_reference", eager_mask)


def add_distance_embeddings(hf_model):
    cfg = hf_model.config
    head_dim = cfg.hidden_size // cfg.num_attention_heads
    for name, mod in hf_model.named_modules():
        if type(mod).__name__ == "Data2VecTextSelfAttention":
            mod.distance_embedding = torch.nn.Embedding(2 * cfg.max_position_embeddings - 1, head_dim)
            torch.nn.init.normal_(mod.distance_embedding.weight, std=0.5)


@pytest.mark.parametrize("kind", ["relative_key", "relative_key_query"])
@pytest.mark.parametrize("hf_cls", [transformers.Data2VecTextForMaskedLM, transformers.Data2VecTextForCausalLM])
def test_relative_position_embeddings(kind, hf_cls):
    decoder = hf_cls is transformers.Data2VecTextForCausalLM
    hf = build(hf_cls, position_embedding_type=kind, attn_implementation="v4_reference", is_decoder=decoder)
    add_distance_embeddings(hf)
    # v4 adds no absolute position embeddings for relative types; v5's embeddings always do,
    # so the reference gets zero absolute embeddings and the zoo random ones it must ignore.
    with torch.no_grad():
        hf.data2vec_text.embeddings.position_embeddings.weight.zero_()
    module, params = to_zoo(hf)
    table = params["params"]["data2vec_text"]["embeddings"]["position_embeddings"]
    table["embedding"] = jax.random.normal(jax.random.key(0), table["embedding"].shape)
    ids, mask, tt = make_inputs(12)
    inputs = dict(input_ids=ids, attention_mask=mask, token_type_ids=tt, labels=ids)
    with torch.no_grad():
        ref = hf(**torch_inputs(inputs), **FLAGS)
    assert_outputs_match(module.apply(params, **inputs, **FLAGS), ref)


def test_head_mask():
    hf = build(transformers.Data2VecTextForSequenceClassification, attn_implementation="v4_reference")
    ids, mask, _ = make_inputs(13)
    head_mask = np.array([[1, 0, 1, 1], [0.5, 1, 0, 1]], np.float32)
    module, params = to_zoo(hf)
    with torch.no_grad():
        ref = hf(input_ids=torch.from_numpy(ids), attention_mask=torch.from_numpy(mask),
                 head_mask=torch.from_numpy(head_mask), **FLAGS)
    got = module.apply(params, input_ids=ids, attention_mask=mask, head_mask=head_mask, **FLAGS)
    assert_outputs_match(got, ref)
    assert float(jnp.abs(got.attentions[0][:, 1]).max()) == 0.0


# --- decoder: causal mask, cross-attention, KV cache -----------------------------------
def test_causal_lm_with_cross_attention():
    hf = build(transformers.Data2VecTextForCausalLM, is_decoder=True, add_cross_attention=True)
    ids, mask, _ = make_inputs(14)
    rng = np.random.RandomState(15)
    enc = rng.randn(B, 5, 32).astype(np.float32)
    enc_mask = np.ones((B, 5), np.int64)
    enc_mask[1, 3:] = 0
    labels = np.where(mask == 1, ids, -100)
    got, ref = run_both(hf, dict(input_ids=ids, attention_mask=mask, encoder_hidden_states=enc,
                                 encoder_attention_mask=enc_mask, labels=labels), **FLAGS)
    diffs = assert_outputs_match(got, ref)
    assert "cross_attentions" in diffs and "loss" in diffs


def test_causal_lm_left_padding():
    hf = build(transformers.Data2VecTextForCausalLM, is_decoder=True)
    ids, _, _ = make_inputs(16, pad_rows=False)
    mask = np.ones_like(ids)
    ids[1, :3] = PAD
    mask[1, :3] = 0
    got, ref = run_both(hf, dict(input_ids=ids, attention_mask=mask, labels=ids), **FLAGS)
    assert_outputs_match(got, ref)


@pytest.mark.parametrize("kind", ["absolute", "relative_key_query"])
def test_kv_cache_step_by_step_equals_full_forward(kind):
    hf = build(transformers.Data2VecTextForCausalLM, is_decoder=True, add_cross_attention=True,
               position_embedding_type=kind)
    if kind != "absolute":
        add_distance_embeddings(hf)
    module, params = to_zoo(hf)
    ids, _, _ = make_inputs(17, batch=2, pad_rows=False)
    enc = np.random.RandomState(18).randn(2, 4, 32).astype(np.float32)
    full = module.apply(params, input_ids=ids, encoder_hidden_states=enc)

    step = jax.jit(lambda p, tok, cache: module.apply(
        p, input_ids=tok, encoder_hidden_states=enc, past_key_values=cache, use_cache=True))
    cache = module.init_cache(2, L)
    prefix = 4  # prefill several tokens at once, then one token at a time
    o = step(params, ids[:, :prefix], cache)
    logits = [o.logits]
    cache = o.past_key_values
    for t in range(prefix, L):
        o = step(params, ids[:, t:t + 1], cache)
        logits.append(o.logits)
        cache = o.past_key_values
    assert int(cache.length) == L
    incremental = jnp.concatenate(logits, axis=1)
    assert max_diff(incremental, full.logits) <= 1e-5
    if kind == "absolute":
        with torch.no_grad():
            ref = hf(input_ids=torch.from_numpy(ids), encoder_hidden_states=torch.from_numpy(enc))
        assert max_diff(incremental, ref.logits) <= 1e-5


def test_use_cache_returns_cache_like_hf():
    hf = build(transformers.Data2VecTextForCausalLM, is_decoder=True)
    module, params = to_zoo(hf)
    ids, _, _ = make_inputs(19, batch=2, pad_rows=False)
    with torch.no_grad():
        ref = hf(input_ids=torch.from_numpy(ids), use_cache=True)
    got = module.apply(params, input_ids=ids, use_cache=True)
    for layer in range(2):
        ref_k = ref.past_key_values.layers[layer].keys.numpy()  # [B, H, L, D]
        assert max_diff(jnp.swapaxes(got.past_key_values.keys[layer], 1, 2), ref_k) <= 1e-5


def test_training_mode_dropout_and_finite_gradients():
    hf = build(transformers.Data2VecTextForSequenceClassification, num_labels=3)
    module, params = to_zoo(hf)
    ids, mask, _ = make_inputs(20)
    labels = np.array([0, 2, 1])

    def loss_fn(p, rng):
        return module.apply(p, input_ids=ids, attention_mask=mask, labels=labels,
                            deterministic=False, rngs={"dropout": rng}).loss

    l1, grads = jax.value_and_grad(loss_fn)(params, jax.random.key(0))
    l2 = loss_fn(params, jax.random.key(1))
    assert float(l1) != float(l2)  # dropout is active and keyed
    leaves = jax.tree_util.tree_leaves(grads)
    assert all(bool(jnp.isfinite(g).all()) for g in leaves)
    assert sum(float(jnp.abs(g).sum()) > 0 for g in leaves) == len(leaves)
    eval_loss = module.apply(params, input_ids=ids, attention_mask=mask, labels=labels).loss
    with torch.no_grad():
        ref = hf(input_ids=torch.from_numpy(ids), attention_mask=torch.from_numpy(mask),
                 labels=torch.from_numpy(labels)).loss
    assert max_diff(eval_loss, ref) <= 1e-5


def test_jit_matches_eager():
    hf = build(transformers.Data2VecTextForMaskedLM)
    module, params = to_zoo(hf)
    ids, mask, _ = make_inputs(21)
    eager = module.apply(params, input_ids=ids, attention_mask=mask)
    jitted = jax.jit(lambda p, i, m: module.apply(p, input_ids=i, attention_mask=m))(params, ids, mask)
    assert max_diff(jitted.logits, eager.logits) <= 1e-6
