"""Model-level HF parity with ``attention_kernel="pallas"``: one configuration per family.

On CPU the Pallas kernels run in Pallas' interpreter, so these are the fused kernels'
numbers (not the XLA kernels'), held to the same 1e-5 contract on every output field.
Probabilities are not asked for (the fused kernels never form them); everything else is:
padding, batch > 1, hidden states, losses. Each case also checks that the compiled forward
really contains Pallas kernels.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import transformers

import zoo

import test_big_bird_parity as big_bird
import test_data2vec_audio_parity as d2v_audio
import test_data2vec_text_parity as d2v_text
import test_data2vec_vision_parity as d2v_vision
import test_groupvit_parity as groupvit
import test_idefics_parity as idefics
import test_sew_d_parity as sew_d
from hf_parity import assert_outputs_match, torch_inputs, to_zoo

NESTED = ("text_model_output", "vision_model_output")


def _bigbird():
    hf = big_bird.build(transformers.BigBirdForMaskedLM, block_size=8, num_random_blocks=2)
    ids, mask, _ = big_bird.make_inputs(77)
    labels = np.where(mask == 1, ids, -100)
    return hf, dict(input_ids=ids, attention_mask=mask, labels=labels), lambda ref: big_bird.cut(ref, 77)


def _data2vec_text():
    hf = d2v_text.build(transformers.Data2VecTextForSequenceClassification, num_labels=3)
    ids, mask, _ = d2v_text.make_inputs()
    return hf, dict(input_ids=ids, attention_mask=mask, labels=np.array([0, 2, 1][:len(ids)])), None


def _data2vec_audio():
    hf = d2v_audio.build(transformers.Data2VecAudioForSequenceClassification, head_std=0.5, num_labels=3)
    x, mask = d2v_audio.waveforms()
    return hf, dict(input_values=x, attention_mask=mask, labels=np.array([0, 2, 1])), None


def _data2vec_vision():  # the relative position bias: the biased dense kernel, with its gradient path
    hf = d2v_vision.build(transformers.Data2VecVisionForImageClassification, num_labels=3)
    return hf, dict(pixel_values=d2v_vision.images(batch=3), labels=np.array([0, 2, 1])), None


def _groupvit():
    hf = groupvit.joint()
    ids, mask = groupvit.text_inputs()
    return hf, dict(input_ids=ids, attention_mask=mask, pixel_values=groupvit.images(batch=3), return_loss=True), None


def _idefics():
    hf = idefics.build()
    x = idefics.inputs()
    return hf, dict(x, labels=np.where(x["attention_mask"] == 1, x["input_ids"], -100)), None


def _sew_d():
    hf = sew_d.build(transformers.SEWDForSequenceClassification)
    x, mask = sew_d.waveforms()
    return hf, dict(input_values=x, attention_mask=mask, labels=np.array([0, 2, 1])), None


CASES = {"big_bird": _bigbird, "data2vec_text": _data2vec_text, "data2vec_audio": _data2vec_audio,
         "data2vec_vision": _data2vec_vision, "groupvit": _groupvit, "idefics": _idefics, "sew_d": _sew_d}


@pytest.mark.parametrize("family", list(CASES))
def test_pallas_kernels_match_hf(family):
    hf, inputs, fix_ref = CASES[family]()
    module, variables = to_zoo(hf, attention_kernel="pallas")
    flags = dict(output_hidden_states=True, **{k: v for k, v in inputs.items() if isinstance(v, bool)})
    arrays = {k: v for k, v in inputs.items() if not isinstance(v, bool)}
    fn = jax.jit(lambda v, x: module.apply(v, **x, **flags))
    jaxpr = str(jax.make_jaxpr(lambda v, x: module.apply(v, **x, **flags))(variables, arrays))
    assert "pallas_call" in jaxpr, f"{family}: no Pallas kernel in the forward"
    got = fn(variables, arrays)
    with torch.no_grad():
        ref = hf(**torch_inputs(arrays), **flags)
    ref = fix_ref(ref) if fix_ref else ref
    assert_outputs_match(got, ref, skip=("past_key_values", *NESTED))
    for name in NESTED:
        if getattr(ref, name, None) is not None:
            assert_outputs_match(getattr(got, name), getattr(ref, name))


def test_kernel_choice_and_override():
    """``auto`` is XLA on CPU; ``apply(attention_kernel=)`` switches one call; bad names are refused."""
    hf = d2v_text.build(transformers.Data2VecTextModel)
    ids, mask, _ = d2v_text.make_inputs()
    module, variables = to_zoo(hf)
    assert module.attention_kernel == "auto"
    trace = lambda **kw: str(jax.make_jaxpr(lambda v: module.apply(v, ids, mask, **kw))(variables))
    assert "pallas_call" not in trace()
    assert "pallas_call" in trace(attention_kernel="pallas")
    a = module.apply(variables, ids, mask).last_hidden_state
    b = module.apply(variables, ids, mask, attention_kernel="pallas").last_hidden_state
    assert float(np.abs(np.asarray(a) - np.asarray(b)).max()) <= 1e-5
    with pytest.raises(ValueError, match="attention_kernel 'flash' is not one of"):
        module.apply(variables, ids, mask, attention_kernel="flash")
    with pytest.raises(ValueError, match="return_probs|probabilities"):
        module.apply(variables, ids, mask, output_attentions=True, attention_kernel="pallas")


def test_cudnn_has_no_block_sparse_or_disentangled_kernel():
    hf = big_bird.build(transformers.BigBirdModel, block_size=8, num_random_blocks=2)
    ids, mask, _ = big_bird.make_inputs(77)
    module, variables = to_zoo(hf)
    with pytest.raises(ValueError, match="no block-sparse kernel"):
        module.apply(variables, ids, mask, attention_kernel="cudnn")
    hf = sew_d.build(transformers.SEWDModel)
    x, mask = sew_d.waveforms()
    module, variables = to_zoo(hf)
    with pytest.raises(ValueError, match="no disentangled kernel"):
        module.apply(variables, x, mask, attention_kernel="cudnn")


def test_from_pretrained_sets_the_kernel():
    from zoo.assets import TINY_TEXT_CHECKPOINT

    model, variables = zoo.from_pretrained(TINY_TEXT_CHECKPOINT, attention_kernel="pallas")
    assert model.attention_kernel == "pallas"
    ids = np.array([[0, 31, 7, 4, 2]])
    assert "pallas_call" in str(jax.make_jaxpr(lambda v: model.apply(v, ids))(variables))
    with pytest.raises(ValueError, match="attention_kernel 'fast' is not one of"):
        zoo.from_pretrained(TINY_TEXT_CHECKPOINT, attention_kernel="fast")


def test_cudnn_is_given_masks_with_both_lengths_in_full(monkeypatch):
    """jax's cuDNN wrapper rejects a [B, 1, 1, Lk] key-padding mask ("Bias must have same seq
    length as QKV"); the dense kernel broadcasts it over the queries first. (No GPU here: the
    call is captured, not run.)"""
    from zoo.attention import dense

    seen = {}
    monkeypatch.setattr(dense.jax.nn, "dot_product_attention",
                        lambda q, k, v, **kw: seen.update(kw) or q)
    q, k = np.zeros((2, 5, 3, 8), np.float32), np.zeros((2, 7, 3, 8), np.float32)
    dense.dot_product_attention(q, k, k, mask=np.ones((2, 1, 1, 7), bool), bias=np.zeros((3, 5, 7), np.float32),
                                implementation="cudnn")
    assert seen["implementation"] == "cudnn"
    assert seen["mask"].shape == (2, 1, 5, 7) and seen["bias"].shape == (1, 3, 5, 7)


@pytest.mark.parametrize("platform", ["cpu", "gpu", "tpu"])
def test_auto_choice_per_platform(platform, monkeypatch):
    """What ``auto`` picks, decided from static facts (the platform faked: no GPU/TPU here)."""
    from zoo.attention import kernels

    monkeypatch.setattr(kernels, "_platform", lambda: platform)
    q32, q16 = np.zeros((1, 8, 2, 64), np.float32), np.zeros((1, 8, 2, 64), jnp.bfloat16)
    dense, fused = kernels.DenseAttention(), kernels.DisentangledAttention()
    train = dict(dropout_rate=0.1, deterministic=False)
    accel = platform != "cpu"
    assert dense.choose(q16, {}) == {"cpu": "xla", "gpu": "cudnn", "tpu": "pallas"}[platform]
    assert dense.choose(q32, {}) == ("pallas" if accel else "xla")
    assert dense.choose(q32, dict(return_probs=True)) == "xla"
    assert dense.choose(q32, train) == "xla"
    assert dense.choose(q32, dict(head_mask=np.ones((1, 2, 8, 8)))) == "xla"  # not per head
    assert fused.choose({}) == ("pallas" if accel else "xla") and fused.choose(train) == "xla"
    assert kernels.BlockSparseAttention(8, 1).choose(dict(return_probs=True)) == "xla"
    assert kernels.DenseAttention("xla").choose(q16, {}) == "xla"
