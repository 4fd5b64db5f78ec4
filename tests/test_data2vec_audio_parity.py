"""Data2VecAudio parity with HF PyTorch: every head, fp32, max abs diff <= 1e-5 on every field."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import torch
import transformers

from hf_parity import assert_outputs_match, max_diff, to_zoo, torch_inputs
from zoo.nn import audio

SAMPLES = 1600  # 79 frames with the tiny conv stack below
FLAGS = dict(output_hidden_states=True, output_attentions=True)


def hf_config(**overrides):
    kw = dict(vocab_size=12, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=37,
              conv_dim=(16, 16, 24), conv_stride=(5, 2, 2), conv_kernel=(10, 3, 3), num_conv_pos_embeddings=2,
              conv_pos_kernel_size=5, num_conv_pos_embedding_groups=2, tdnn_dim=(16, 16, 24),
              tdnn_kernel=(3, 3, 1), tdnn_dilation=(1, 2, 1), xvector_output_dim=16, classifier_proj_size=12,
              num_labels=3, attn_implementation="eager")
    kw.update(overrides)
    return transformers.Data2VecAudioConfig(**kw)


def waveforms(batch=3, seed=0):
    """A padded batch: row lengths 1600, 1100, 700 samples (zeros after the end)."""
    rng = np.random.RandomState(seed)
    x = rng.randn(batch, SAMPLES).astype(np.float32)
    mask = np.ones((batch, SAMPLES), np.int64)
    for row, n in enumerate([SAMPLES, 1100, 700][:batch]):
        x[row, n:] = 0.0
        mask[row, n:] = 0
    return x, mask


def build(hf_cls, seed=0, head_std=None, **overrides):
    torch.manual_seed(seed)
    model = hf_cls(hf_config(**overrides)).eval()
    if head_std:  # HF's 0.02 init makes head outputs ~1e-10: widen them so parity means something
        with torch.no_grad():
            for name, p in model.named_parameters():
                if not name.startswith("data2vec_audio."):
                    p.normal_(0.0, head_std)
    return model


def compare(hf, inputs, **flags):
    module, params = to_zoo(hf)
    with torch.no_grad():
        ref = hf(**torch_inputs(inputs), **flags)
    got = module.apply(params, **inputs, **flags)
    diffs = assert_outputs_match(got, ref, skip=("past_key_values", "loss"))
    if getattr(ref, "loss", None) is not None:
        # Justified exception: a CTC loss summed over a batch is ~400 here, where one fp32 ulp
        # is 3e-5, so it is held to 1e-4 absolute and 1e-6 relative; other losses to 1e-5.
        loss_diff = max_diff(got.loss, ref.loss)
        scale = max(1.0, abs(float(ref.loss))) if np.isfinite(float(ref.loss)) else 1.0
        assert loss_diff <= 1e-5 or (loss_diff <= 1e-4 and loss_diff / scale <= 1e-6), (loss_diff, float(ref.loss))
        diffs["loss"] = loss_diff
    return diffs, got, ref


@pytest.mark.parametrize("with_mask", [True, False])
def test_model(with_mask):
    x, mask = waveforms()
    inputs = dict(input_values=x, attention_mask=mask if with_mask else None)
    diffs, got, _ = compare(build(transformers.Data2VecAudioModel), inputs, **FLAGS)
    assert set(diffs) == {"last_hidden_state", "extract_features", "hidden_states", "attentions"}
    assert len(got.hidden_states) == 3 and got.last_hidden_state.shape == (3, 79, 32)


def test_even_positional_kernel_layer_conv_bias_and_other_activation():
    x, mask = waveforms(2)
    hf = build(transformers.Data2VecAudioModel, conv_pos_kernel_size=4, conv_bias=True, num_conv_pos_embeddings=3,
               feat_extract_activation="relu", hidden_act="gelu_new")
    compare(hf, dict(input_values=x, attention_mask=mask), **FLAGS)


@pytest.mark.parametrize("reduction,zero_inf", [("sum", False), ("mean", False), ("mean", True)])
def test_ctc_with_loss(reduction, zero_inf):
    hf = build(transformers.Data2VecAudioForCTC, ctc_loss_reduction=reduction, ctc_zero_infinity=zero_inf)
    x, mask = waveforms()
    labels = np.random.RandomState(1).randint(1, 12, (3, 9))
    labels[1, 6:] = -100
    labels[2, 4:] = 0  # padded with the blank (= pad_token_id) is dropped as well
    diffs, got, _ = compare(hf, dict(input_values=x, attention_mask=mask, labels=labels), **FLAGS)
    assert "loss" in diffs and np.isfinite(float(got.loss))


def test_ctc_infeasible_target_is_infinite_like_torch():
    hf = build(transformers.Data2VecAudioForCTC, ctc_loss_reduction="sum")
    x, mask = waveforms(2)
    labels = np.random.RandomState(2).randint(1, 12, (2, 60))  # 60 labels > 44 frames of row 1
    _, got, ref = compare(hf, dict(input_values=x, attention_mask=mask, labels=labels))
    assert np.isinf(float(got.loss)) and np.isinf(float(ref.loss))


def test_ctc_with_adapter():
    hf = build(transformers.Data2VecAudioForCTC, add_adapter=True, output_hidden_size=24, num_adapter_layers=2,
               adapter_stride=2)
    x, mask = waveforms()
    labels = np.random.RandomState(3).randint(1, 12, (3, 5))
    diffs, got, _ = compare(hf, dict(input_values=x, attention_mask=mask, labels=labels), **FLAGS)
    assert got.logits.shape == (3, 20, 12) and "loss" in diffs


def test_model_with_adapter_same_width():
    hf = build(transformers.Data2VecAudioModel, add_adapter=True, num_adapter_layers=1)
    x, mask = waveforms(2)
    compare(hf, dict(input_values=x, attention_mask=mask), **FLAGS)


@pytest.mark.parametrize("weighted", [False, True])
def test_sequence_classification(weighted):
    hf = build(transformers.Data2VecAudioForSequenceClassification, head_std=0.3, use_weighted_layer_sum=weighted)
    if weighted:
        with torch.no_grad():
            hf.layer_weights.copy_(torch.tensor([0.2, -0.5, 1.0]))
    x, mask = waveforms()
    diffs, _, _ = compare(hf, dict(input_values=x, attention_mask=mask, labels=np.array([0, 2, 1])), **FLAGS)
    assert "loss" in diffs
    compare(hf, dict(input_values=x, labels=np.array([0, 2, 1])))  # unmasked mean pooling


@pytest.mark.parametrize("weighted", [False, True])
def test_audio_frame_classification(weighted):
    hf = build(transformers.Data2VecAudioForAudioFrameClassification, head_std=0.3, use_weighted_layer_sum=weighted)
    x, mask = waveforms()
    labels = np.eye(3)[np.random.RandomState(4).randint(0, 3, (3, 79))]
    diffs, _, _ = compare(hf, dict(input_values=x, attention_mask=mask, labels=labels), **FLAGS)
    assert "loss" in diffs


@pytest.mark.parametrize("with_mask", [True, False])
def test_xvector(with_mask):
    hf = build(transformers.Data2VecAudioForXVector, head_std=0.3)
    x, mask = waveforms()
    inputs = dict(input_values=x, attention_mask=mask if with_mask else None, labels=np.array([2, 0, 1]))
    diffs, got, _ = compare(hf, inputs, **FLAGS)
    assert {"loss", "logits", "embeddings"} <= set(diffs)
    assert float(jnp.abs(got.logits).max()) > 1e-2


def test_mask_time_indices_replace_frames_in_eval():
    hf = build(transformers.Data2VecAudioModel, mask_time_prob=0.2)
    x, mask = waveforms(2)
    time_mask = np.zeros((2, 79), bool)
    time_mask[:, 10:20] = True
    diffs, got, _ = compare(hf, dict(input_values=x, attention_mask=mask, mask_time_indices=time_mask), **FLAGS)
    module, params = to_zoo(hf)
    plain = module.apply(params, input_values=x, attention_mask=mask)
    assert max_diff(plain.last_hidden_state, np.asarray(got.last_hidden_state)) > 1e-3


def test_layer_norm_and_group_norm_feature_encoders_match_wav2vec2():
    """The shared FeatureEncoder in both variants, against wav2vec2's PyTorch encoder."""
    from transformers.models.wav2vec2.modeling_wav2vec2 import Wav2Vec2FeatureEncoder

    x, _ = waveforms(2)
    for norm in ("group", "layer"):
        cfg = transformers.Wav2Vec2Config(conv_dim=(16, 16, 24), conv_stride=(5, 2, 2), conv_kernel=(10, 3, 3),
                                          feat_extract_norm=norm, conv_bias=norm == "layer")
        torch.manual_seed(5)
        ref_module = Wav2Vec2FeatureEncoder(cfg).eval()
        state = {k: v.detach().numpy() for k, v in ref_module.state_dict().items()}
        module = audio.FeatureEncoder(cfg)
        params = _convert(module, state, dict(input_values=jnp.asarray(x)))
        got = module.apply(params, jnp.asarray(x))
        with torch.no_grad():
            ref = ref_module(torch.from_numpy(x)).transpose(1, 2)
        assert max_diff(got, ref) <= 1e-5, norm


def test_weight_norm_positional_conv_matches_wav2vec2():
    """The weight-normed positional conv (SEW-D's), both checkpoint spellings, even kernel."""
    from transformers.models.wav2vec2.modeling_wav2vec2 import Wav2Vec2PositionalConvEmbedding

    cfg = transformers.Wav2Vec2Config(hidden_size=32, num_conv_pos_embeddings=4, num_conv_pos_embedding_groups=4)
    torch.manual_seed(6)
    ref_module = Wav2Vec2PositionalConvEmbedding(cfg).eval()
    state = {k: v.detach().numpy() for k, v in ref_module.state_dict().items()}
    assert "conv.parametrizations.weight.original0" in state
    old_spelling = {k.replace("parametrizations.weight.original0", "weight_g")
                     .replace("parametrizations.weight.original1", "weight_v"): v for k, v in state.items()}
    hidden = np.random.RandomState(7).randn(2, 30, 32).astype(np.float32)
    module = audio.WeightNormPositionalConv(cfg)
    with torch.no_grad():
        ref = ref_module(torch.from_numpy(hidden))
    for spelling in (state, old_spelling):
        params = _convert(module, spelling, dict(x=jnp.asarray(hidden)))
        assert max_diff(module.apply(params, jnp.asarray(hidden)), ref) <= 1e-5


def _convert(module, state, inputs):
    from converters.mapping import KeyTable, torch_to_flax
    from zoo.tree import flatten, unflatten

    shapes = jax.eval_shape(lambda: module.init(jax.random.key(0), **inputs))
    expected = {p: v.shape for p, v in flatten(__import__("flax").linen.unbox(shapes)["params"]).items()}
    flat, report = torch_to_flax(state.keys(), state.__getitem__, KeyTable(base_model_prefix="none"), expected)
    assert not report.unused and not report.missing, report.summary()
    return {"params": unflatten({k: jnp.asarray(v) for k, v in flat.items()})}


# ------------------------------------------------------------------------ training mode
def test_training_mode_is_stochastic_and_differentiable():
    hf = build(transformers.Data2VecAudioForCTC, mask_time_prob=0.3, mask_time_length=4, mask_feature_prob=0.2,
               mask_feature_length=4, layerdrop=0.3)
    module, params = to_zoo(hf)
    x, mask = waveforms()
    labels = np.random.RandomState(8).randint(1, 12, (3, 6))

    def loss_fn(p, key):
        return module.apply(p, input_values=x, attention_mask=mask, labels=labels,
                            deterministic=False, rngs={"dropout": key}).loss

    step = jax.jit(jax.value_and_grad(loss_fn))
    l1, grads = step(params, jax.random.key(0))
    l2, _ = step(params, jax.random.key(1))
    assert float(l1) != float(l2)
    assert all(bool(jnp.isfinite(g).all()) for g in jax.tree_util.tree_leaves(grads))
    assert float(jnp.abs(grads["params"]["lm_head"]["kernel"]).sum()) > 0


def test_freeze_feature_encoder_flag_and_optax_mask():
    from zoo.train import freeze

    hf = build(transformers.Data2VecAudioForCTC)
    x, mask = waveforms(2)
    labels = np.random.RandomState(9).randint(1, 12, (2, 5))
    module, params = to_zoo(hf)
    frozen_module, _ = to_zoo(hf, freeze_feature_encoder=True)

    def grads_of(m):
        loss = lambda p: m.apply(p, input_values=x, attention_mask=mask, labels=labels).loss
        return jax.jit(jax.grad(loss))(params)

    g = grads_of(frozen_module)["params"]["data2vec_audio"]
    assert all(float(jnp.abs(v).sum()) == 0 for v in jax.tree_util.tree_leaves(g["feature_extractor"]))
    assert float(jnp.abs(g["feature_projection"]["projection"]["kernel"]).sum()) > 0

    # The optax way: frozen parameters get no update at all (not even weight decay).
    weights = params["params"]  # the optimizer's tree
    tx = freeze(optax.adamw(1e-2, weight_decay=0.1), weights, ["data2vec_audio/feature_extractor/"])
    state = tx.init(weights)
    updates, _ = tx.update(grads_of(module)["params"], state, weights)
    new = optax.apply_updates(weights, updates)
    fe_old = jax.tree_util.tree_leaves(weights["data2vec_audio"]["feature_extractor"])
    fe_new = jax.tree_util.tree_leaves(new["data2vec_audio"]["feature_extractor"])
    assert all(bool(jnp.array_equal(a, b)) for a, b in zip(fe_old, fe_new))
    assert not bool(jnp.array_equal(new["lm_head"]["kernel"], weights["lm_head"]["kernel"]))


def test_sequence_classification_rejects_adapter():
    from zoo.models.data2vec_audio import Data2VecAudioConfig, Data2VecAudioForSequenceClassification

    cfg = Data2VecAudioConfig.from_dict(hf_config(add_adapter=True).to_dict())
    with pytest.raises(ValueError, match="does not support the adapter"):
        Data2VecAudioForSequenceClassification(cfg).init(jax.random.key(0), **waveform_inputs())


def waveform_inputs():
    return {"input_values": jnp.zeros((1, SAMPLES))}


def test_frame_mask_matches_hf():
    hf = build(transformers.Data2VecAudioForCTC, add_adapter=True, output_hidden_size=24)
    _, mask = waveforms()
    mask[2, 333:] = 0
    for adapter in (False, True):
        ref = hf._get_feature_vector_attention_mask(79 if not adapter else 20, torch.from_numpy(mask), adapter)
        got = audio.frame_mask(hf.config, jnp.asarray(mask), 79 if not adapter else 20, adapter)
        assert np.array_equal(np.asarray(got), ref.numpy())


def test_feed_forward_matches_hf():
    """The shared wav2vec2-style FeedForward (intermediate_dense -> act -> output_dense)."""
    from transformers.models.data2vec.modeling_data2vec_audio import Data2VecAudioFeedForward

    cfg = hf_config(hidden_act="gelu_new")
    torch.manual_seed(10)
    ref_module = Data2VecAudioFeedForward(cfg).eval()
    state = {k: v.detach().numpy() for k, v in ref_module.state_dict().items()}
    hidden = np.random.RandomState(11).randn(2, 7, 32).astype(np.float32)
    module = audio.FeedForward(cfg)
    params = _convert(module, state, dict(x=jnp.asarray(hidden)))
    with torch.no_grad():
        ref = ref_module(torch.from_numpy(hidden))
    assert max_diff(module.apply(params, jnp.asarray(hidden)), ref) <= 1e-5


def test_gradients_of_every_parameter_match_torch():
    """The backward pass of the whole model (conv feature encoder, positional convs, attention,
    padding mask) against torch's, per parameter. The loss is the sum of squared logits, not CTC:
    float32 CTC recursions over many frames differ from float64 by 1e-5..1e-4 relative in both
    libraries (tests/test_benchmarks.py), which would hide what this test checks."""
    from converters.mapping import flax_to_torch_key, to_torch_value
    from zoo.registry import get_family
    from zoo.tree import flatten

    hf = build(transformers.Data2VecAudioForCTC)
    module, params = to_zoo(hf)
    x, mask = waveforms()
    grads = jax.jit(jax.grad(lambda p: jnp.sum(
        module.apply(p, input_values=x, attention_mask=mask).logits ** 2)))(params)
    hf.zero_grad()
    (hf(input_values=torch.from_numpy(x), attention_mask=torch.from_numpy(mask)).logits ** 2).sum().backward()
    ref = {name: p.grad.double().numpy() for name, p in hf.named_parameters() if p.grad is not None}
    table = get_family("data2vec-audio").key_table
    got = {flax_to_torch_key(path, table): to_torch_value(path, np.asarray(g, np.float64))
           for path, g in flatten(grads["params"]).items()}
    unused = got.keys() - ref.keys()  # torch gives no gradient to a parameter that is not used
    assert unused == {"data2vec_audio.masked_spec_embed"} and not got["data2vec_audio.masked_spec_embed"].any()
    # Relative per tensor (the gradients reach 1e2): measured 7.7e-7 at worst. Tensors whose
    # gradient is zero up to rounding (the key bias: softmax ignores it) are held absolutely.
    errors = {k: np.linalg.norm(got[k] - r) / max(np.linalg.norm(r), 1e-3) for k, r in ref.items()}
    assert max(errors.values()) <= 1e-5, sorted(errors.items(), key=lambda kv: -kv[1])[:3]
