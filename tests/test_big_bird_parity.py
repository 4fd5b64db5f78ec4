"""BigBird parity with HF PyTorch: every head, block_sparse and original_full, fp32, <= 1e-5.

HF returns some hidden states and all attentions at the block-padded length; the zoo
cuts them to the input length, so the HF tensors are compared on their first L positions
(the padded positions are HF's internal padding, not part of the input).
"""

from __future__ import annotations

import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import transformers

from hf_parity import assert_outputs_match, max_diff, to_zoo, torch_inputs
from zoo.models.big_bird import BigBirdConfig
from zoo.outputs import BigBirdForPreTrainingOutput, BigBirdForQuestionAnsweringModelOutput

transformers.logging.set_verbosity_error()

VOCAB, PAD, SEP = 99, 0, 5
FLAGS = dict(output_hidden_states=True, output_attentions=True)


def hf_config(**overrides):
    kw = dict(vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=37,
              max_position_embeddings=1024, block_size=8, num_random_blocks=2, pad_token_id=PAD,
              sep_token_id=SEP, hidden_act="gelu_new", attn_implementation="eager")
    kw.update(overrides)
    return transformers.BigBirdConfig(**kw)


def build(hf_cls, seed=0, **overrides):
    torch.manual_seed(seed)
    return hf_cls(hf_config(**overrides)).eval()


def make_inputs(length, batch=3, seed=0, pad=(0, 13, 30)):
    rng = np.random.RandomState(seed)
    ids = rng.randint(SEP + 1, VOCAB, (batch, length)).astype(np.int64)
    ids[:, 7] = SEP  # a question of 8 tokens for the QA head
    mask = np.ones_like(ids)
    for row, n in enumerate(pad[:batch]):
        if n:
            ids[row, -n:] = PAD
            mask[row, -n:] = 0
    token_type = (np.arange(length)[None] >= 8).astype(np.int64).repeat(batch, 0)
    return ids, mask, token_type


def cut(hf_out, length):
    """HF's output with hidden states / attentions cut to the input length."""
    d = {k: v for k, v in hf_out.items()}
    if d.get("hidden_states"):
        d["hidden_states"] = tuple(h[:, :length] for h in d["hidden_states"])
    if d.get("attentions"):
        d["attentions"] = tuple(a[..., :length, :length] for a in d["attentions"])
    return d


def run_both(hf_model, inputs, **flags):
    module, params = to_zoo(hf_model)
    with torch.no_grad():
        ref = hf_model(**torch_inputs(inputs), **flags)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        got = module.apply(params, **inputs, **flags)
    return got, ref


# (block_size, num_random_blocks, length): every length above the full-attention threshold
# (5 + 2r) * block_size and not a multiple of the block size.
SPARSE_SHAPES = [(8, 2, 77), (16, 1, 130), (4, 3, 61), (8, 1, 63)]


@pytest.mark.parametrize("block_size,num_random_blocks,length", SPARSE_SHAPES)
def test_model_block_sparse(block_size, num_random_blocks, length):
    hf = build(transformers.BigBirdModel, block_size=block_size, num_random_blocks=num_random_blocks)
    ids, mask, tt = make_inputs(length)
    got, ref = run_both(hf, dict(input_ids=ids, attention_mask=mask, token_type_ids=tt), **FLAGS)
    assert hf.attention_type == "block_sparse"
    assert got.attentions[0].shape == (3, 4, length, length)
    assert_outputs_match(got, cut(ref, length))


def test_model_original_full():
    hf = build(transformers.BigBirdModel, attention_type="original_full")
    ids, mask, tt = make_inputs(77)
    got, ref = run_both(hf, dict(input_ids=ids, attention_mask=mask, token_type_ids=tt), **FLAGS)
    assert_outputs_match(got, ref)


def test_short_sequence_falls_back_to_full_attention():
    hf = build(transformers.BigBirdModel)  # block 8, 2 random: full attention up to 72 tokens
    ids, mask, tt = make_inputs(72)
    inputs = dict(input_ids=ids, attention_mask=mask, token_type_ids=tt)
    module, params = to_zoo(hf)
    with pytest.warns(UserWarning, match="uses full attention"):
        got = module.apply(params, **inputs, **FLAGS)
    with torch.no_grad():
        ref = hf(**torch_inputs(inputs), output_hidden_states=True)
    assert hf.attention_type == "original_full"  # HF switched
    assert_outputs_match(got, ref)
    # HF's switched model records no attentions; a model built full from the start does.
    full = build(transformers.BigBirdModel, attention_type="original_full")
    full.load_state_dict(hf.state_dict())
    with torch.no_grad():
        ref_full = full(**torch_inputs(inputs), **FLAGS)
    assert_outputs_match(got, ref_full)


@pytest.mark.parametrize("attention_type", ["block_sparse", "original_full"])
def test_masked_lm_with_loss(attention_type):
    hf = build(transformers.BigBirdForMaskedLM, attention_type=attention_type)
    ids, mask, _ = make_inputs(77, seed=1)
    labels = np.where(np.random.RandomState(2).rand(*ids.shape) < 0.2, ids, -100)
    got, ref = run_both(hf, dict(input_ids=ids, attention_mask=mask, labels=labels), **FLAGS)
    assert_outputs_match(got, cut(ref, 77))


def test_masked_lm_untied_decoder():
    hf = build(transformers.BigBirdForMaskedLM, tie_word_embeddings=False)
    with torch.no_grad():
        hf.cls.predictions.decoder.weight.normal_()
    ids, mask, _ = make_inputs(77, seed=3)
    got, ref = run_both(hf, dict(input_ids=ids, attention_mask=mask))
    assert_outputs_match(got, ref)


@pytest.mark.parametrize("attention_type", ["block_sparse", "original_full"])
def test_pretraining_with_both_losses(attention_type):
    hf = build(transformers.BigBirdForPreTraining, attention_type=attention_type)
    ids, mask, tt = make_inputs(77, seed=4)
    labels = np.where(np.random.RandomState(5).rand(*ids.shape) < 0.2, ids, -100)
    inputs = dict(input_ids=ids, attention_mask=mask, token_type_ids=tt, labels=labels,
                  next_sentence_label=np.array([0, 1, 1]))
    got, ref = run_both(hf, inputs, **FLAGS)
    assert isinstance(got, BigBirdForPreTrainingOutput)
    assert_outputs_match(got, cut(ref, 77))
    mlm_only, ref_mlm = run_both(hf, dict(inputs, next_sentence_label=None))
    assert_outputs_match(mlm_only, ref_mlm)


@pytest.mark.parametrize("attention_type", ["block_sparse", "original_full"])
@pytest.mark.parametrize("problem_type,num_labels", [
    ("single_label_classification", 3), ("regression", 1), ("multi_label_classification", 3)])
def test_sequence_classification(attention_type, problem_type, num_labels):
    hf = build(transformers.BigBirdForSequenceClassification, attention_type=attention_type,
               num_labels=num_labels, problem_type=problem_type)
    ids, mask, _ = make_inputs(77, seed=6)
    rng = np.random.RandomState(7)
    labels = {"single_label_classification": rng.randint(0, 3, 3),
              "regression": rng.randn(3).astype(np.float32),
              "multi_label_classification": (rng.rand(3, 3) > 0.5).astype(np.float32)}[problem_type]
    got, ref = run_both(hf, dict(input_ids=ids, attention_mask=mask, labels=labels), **FLAGS)
    assert_outputs_match(got, cut(ref, 77))


@pytest.mark.parametrize("attention_type", ["block_sparse", "original_full"])
def test_token_classification(attention_type):
    hf = build(transformers.BigBirdForTokenClassification, attention_type=attention_type, num_labels=5)
    ids, mask, _ = make_inputs(77, seed=8)
    labels = np.where(mask == 1, np.random.RandomState(9).randint(0, 5, ids.shape), -100)
    got, ref = run_both(hf, dict(input_ids=ids, attention_mask=mask, labels=labels), **FLAGS)
    assert_outputs_match(got, cut(ref, 77))


@pytest.mark.parametrize("attention_type", ["block_sparse", "original_full"])
def test_multiple_choice(attention_type):
    hf = build(transformers.BigBirdForMultipleChoice, attention_type=attention_type)
    ids, mask, tt = make_inputs(77, seed=10)
    stack = lambda x: np.stack([x, x[::-1]], axis=1)  # [3, 2 choices, L]
    inputs = dict(input_ids=stack(ids), attention_mask=stack(mask), token_type_ids=stack(tt),
                  labels=np.array([0, 1, 1]))
    got, ref = run_both(hf, inputs, **FLAGS)
    assert got.logits.shape == (3, 2)
    assert_outputs_match(got, cut(ref, 77))


@pytest.mark.parametrize("attention_type", ["block_sparse", "original_full"])
def test_question_answering_masks_the_question(attention_type):
    hf = build(transformers.BigBirdForQuestionAnswering, attention_type=attention_type)
    ids, mask, _ = make_inputs(77, seed=11)
    inputs = dict(input_ids=ids, attention_mask=mask, start_positions=np.array([10, 3, 200]),
                  end_positions=np.array([12, 40, 20]))
    got, ref = run_both(hf, inputs, **FLAGS)  # question lengths from the first SEP (position 7)
    assert isinstance(got, BigBirdForQuestionAnsweringModelOutput)
    assert_outputs_match(got, cut(ref, 77))
    assert float(got.start_logits[0, 3]) < -1e5  # inside the question
    explicit = dict(inputs, question_lengths=np.array([[4], [9], [1]]))
    got, ref = run_both(hf, explicit)
    assert_outputs_match(got, ref)


def test_inputs_embeds_and_position_ids_padded_like_hf():
    hf = build(transformers.BigBirdModel)
    ids, mask, _ = make_inputs(77, seed=12)
    with torch.no_grad():
        embeds = hf.embeddings.word_embeddings(torch.from_numpy(ids)).numpy()
    got, ref = run_both(hf, dict(inputs_embeds=embeds, attention_mask=mask), **FLAGS)
    assert_outputs_match(got, cut(ref, 77))
    positions = np.tile(np.arange(77)[::-1] + 3, (3, 1))
    got, ref = run_both(hf, dict(input_ids=ids, attention_mask=mask, position_ids=positions))
    assert_outputs_match(got, ref)


def test_rescale_embeddings_and_no_bias():
    hf = build(transformers.BigBirdForMaskedLM, rescale_embeddings=True, use_bias=False)
    ids, mask, _ = make_inputs(77, seed=13)
    got, ref = run_both(hf, dict(input_ids=ids, attention_mask=mask), **FLAGS)
    assert_outputs_match(got, cut(ref, 77))


def test_causal_lm_with_loss():
    hf = build(transformers.BigBirdForCausalLM, is_decoder=True, attention_type="original_full")
    ids, mask, _ = make_inputs(20, seed=14, pad=(0, 3, 5))
    got, ref = run_both(hf, dict(input_ids=ids, attention_mask=mask, labels=ids), **FLAGS)
    assert_outputs_match(got, ref)


def test_causal_lm_kv_cache_step_by_step_equals_full_forward():
    hf = build(transformers.BigBirdForCausalLM, is_decoder=True)
    module, params = to_zoo(hf)
    ids, _, _ = make_inputs(12, batch=2, seed=16, pad=())
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        full = module.apply(params, input_ids=ids)
        step = jax.jit(lambda p, tok, cache: module.apply(
            p, input_ids=tok, past_key_values=cache, use_cache=True))
        cache = module.init_cache(2, 12)
        o = step(params, ids[:, :5], cache)
        logits, cache = [o.logits], o.past_key_values
        for t in range(5, 12):
            o = step(params, ids[:, t:t + 1], cache)
            logits.append(o.logits)
            cache = o.past_key_values
    incremental = jnp.concatenate(logits, axis=1)
    assert max_diff(incremental, full.logits) <= 1e-5
    with torch.no_grad():
        ref = hf(input_ids=torch.from_numpy(ids))
    assert max_diff(incremental, ref.logits) <= 1e-5


def test_decoder_never_runs_block_sparse():
    cfg = BigBirdConfig.from_dict(hf_config(is_decoder=True).to_dict())
    from zoo.models.big_bird import uses_block_sparse

    with pytest.warns(UserWarning, match="future tokens"):
        assert not uses_block_sparse(cfg, 4096)


def test_unsupported_config_values_are_named():
    from zoo.config import UnsupportedConfigError

    with pytest.raises(UnsupportedConfigError, match="attention_type"):
        BigBirdConfig.from_dict(dict(hf_config().to_dict(), attention_type="longformer"))
    with pytest.raises(UnsupportedConfigError, match="add_cross_attention"):
        BigBirdConfig.from_dict(dict(hf_config().to_dict(), add_cross_attention=True, is_decoder=True))


# ------------------------------------------------------------------------- training mode
def _train_apply(module, params, inputs, rng, **kw):
    return module.apply(params, **inputs, deterministic=False,
                        rngs={"dropout": jax.random.key(0), "random_blocks": rng}, **kw)


@pytest.mark.parametrize("length", [80, 100, 1000, 1024])
def test_random_attention_is_active_in_training_at_every_length(length):
    """Regression test for FlaxBigBird, whose random blocks were off except at 1024/3072/4096."""
    hf = build(transformers.BigBirdModel, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    module, params = to_zoo(hf)
    ids, mask, _ = make_inputs(length, batch=2, seed=17)
    inputs = dict(input_ids=ids, attention_mask=mask)
    evaluation = module.apply(params, **inputs).last_hidden_state
    a = _train_apply(module, params, inputs, jax.random.key(1)).last_hidden_state
    b = _train_apply(module, params, inputs, jax.random.key(2)).last_hidden_state
    again = _train_apply(module, params, inputs, jax.random.key(1)).last_hidden_state
    assert max_diff(a, evaluation) > 1e-3
    assert max_diff(a, b) > 1e-3
    assert max_diff(a, again) == 0.0


def test_layers_draw_their_own_random_blocks():
    hf = build(transformers.BigBirdModel, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    module, params = to_zoo(hf)
    ids, _, _ = make_inputs(96, batch=1, seed=18, pad=())
    o = _train_apply(module, params, dict(input_ids=ids), jax.random.key(3), output_attentions=True)
    patterns = [np.asarray(a[0] > 0) for a in o.attentions]  # [H, L, L] non-zero pattern
    assert not np.array_equal(patterns[0], patterns[1])
    assert any(not np.array_equal(patterns[0][0], patterns[0][h]) for h in range(1, 4))


def test_inference_random_seed_gives_a_fixed_plan():
    hf = build(transformers.BigBirdModel)
    module, params = to_zoo(hf, inference_random_seed=7)
    plain, _ = to_zoo(hf)
    ids, mask, _ = make_inputs(96, batch=2, seed=19)
    inputs = dict(input_ids=ids, attention_mask=mask)
    a = module.apply(params, **inputs).last_hidden_state
    b = module.apply(params, **inputs).last_hidden_state
    zero_plan = plain.apply(params, **inputs).last_hidden_state
    assert max_diff(a, b) == 0.0
    assert max_diff(a, zero_plan) > 1e-3


def test_training_gradients_are_finite():
    hf = build(transformers.BigBirdForSequenceClassification, num_labels=3)
    module, params = to_zoo(hf)
    ids, mask, _ = make_inputs(77, seed=20)
    labels = np.array([0, 2, 1])

    def loss_fn(p, rng):
        return module.apply(p, input_ids=ids, attention_mask=mask, labels=labels,
                            deterministic=False, rngs={"dropout": rng, "random_blocks": rng}).loss

    loss, grads = jax.jit(jax.value_and_grad(loss_fn))(params, jax.random.key(0))
    assert np.isfinite(float(loss))
    flat = {"/".join(map(str, k)): v for k, v in jax.tree_util.tree_leaves_with_path(grads)}
    assert all(bool(jnp.isfinite(g).all()) for g in flat.values())
    dead = [k for k, g in flat.items() if float(jnp.abs(g).sum()) == 0]
    assert all("pooler" in k for k in dead), dead  # the pooler is not used by this head (as in HF)


def test_jit_matches_eager_block_sparse():
    hf = build(transformers.BigBirdForMaskedLM)
    module, params = to_zoo(hf)
    ids, mask, _ = make_inputs(77, seed=21)
    eager = module.apply(params, input_ids=ids, attention_mask=mask)
    jitted = jax.jit(lambda p, i, m: module.apply(p, input_ids=i, attention_mask=m))(params, ids, mask)
    assert max_diff(jitted.logits, eager.logits) <= 1e-6


# ------------------------------------------------------------------------- checkpoints
@pytest.mark.parametrize("hf_cls", [transformers.BigBirdForPreTraining, transformers.BigBirdForQuestionAnswering])
def test_checkpoint_round_trip_is_bit_exact(hf_cls, tmp_path):
    import zoo
    from safetensors.numpy import load_file

    hf = build(hf_cls)
    hf.save_pretrained(tmp_path / "hf")
    module, params = zoo.from_pretrained(tmp_path / "hf")
    assert type(module).__name__ == hf_cls.__name__
    zoo.save_pretrained(tmp_path / "zoo", module, params)
    module, params = zoo.from_pretrained(tmp_path / "zoo")
    zoo.export_pytorch(tmp_path / "pt", module, params)
    original = load_file(str(tmp_path / "hf" / "model.safetensors"))
    exported = load_file(str(tmp_path / "pt" / "model.safetensors"))
    assert sorted(original) == sorted(exported)
    for key, value in original.items():
        assert np.array_equal(exported[key], value), key
    ids, mask, _ = make_inputs(77, seed=22)
    got, ref = run_both(hf, dict(input_ids=ids, attention_mask=mask))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        loaded = module.apply(params, input_ids=ids, attention_mask=mask)
    assert_outputs_match(loaded, ref)


def test_pretrained_body_into_classifier_initialises_only_the_head(tmp_path):
    import zoo

    hf = build(transformers.BigBirdForMaskedLM)
    hf.save_pretrained(tmp_path)
    module, params = loaded = zoo.from_pretrained(tmp_path, "BigBirdForSequenceClassification")
    report = loaded.report
    assert report.missing and all(p.startswith("classifier/") for p in report.missing)
    assert any(k.startswith("cls.") for k in report.unused)


def test_training_without_random_blocks_rng_names_the_stream():
    hf = build(transformers.BigBirdModel)
    module, params = to_zoo(hf)
    ids, _, _ = make_inputs(96, batch=1, seed=23, pad=())
    with pytest.raises(ValueError, match="random_blocks"):
        module.apply(params, input_ids=ids, deterministic=False, rngs={"dropout": jax.random.key(0)})
