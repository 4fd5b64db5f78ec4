"""GroupViT parity with HF PyTorch (fp32, <= 1e-5): the two towers, the joint model, features,
segmentation logits and the contrastive loss. (Preprocessing, CLI, notebook: issue 7, to come.)"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import transformers

from hf_parity import assert_outputs_match, max_diff, to_zoo
from test_data2vec_vision_parity import randomize
from zoo.models.groupvit import GroupViTConfig, hard_softmax


transformers.logging.set_verbosity_error()
VOCAB, EOS = 99, 98
FLAGS = dict(output_hidden_states=True, output_attentions=True)
TEXT = dict(vocab_size=VOCAB, hidden_size=32, intermediate_size=37, num_hidden_layers=2, num_attention_heads=4,
            max_position_embeddings=16, eos_token_id=EOS)
GROUPINGS = {
    "three_stages": dict(depths=[2, 1, 1], num_group_tokens=[8, 4, 0], num_output_groups=[8, 4, 4]),
    "two_stages": dict(depths=[1, 2], num_group_tokens=[6, 0], num_output_groups=[3, 3], assign_mlp_ratio=[1, 2]),
    "grouping_every_stage": dict(depths=[1, 1], num_group_tokens=[8, 4], num_output_groups=[8, 2], assign_eps=0.5),
}


def vision_config(grouping="three_stages", **overrides):
    kw = dict(hidden_size=32, intermediate_size=37, num_attention_heads=4, image_size=32, patch_size=4,
              num_hidden_layers=sum(GROUPINGS[grouping]["depths"]), **GROUPINGS[grouping])
    kw.update(overrides)
    return kw


def build(hf_cls, config, seed=0):
    torch.manual_seed(seed)
    return randomize(hf_cls(config).eval(), seed)


def text_inputs(batch=3, length=10, eos=EOS, seed=0):
    rng = np.random.RandomState(seed)
    ids = rng.randint(3, 97, (batch, length))
    mask = np.ones_like(ids)
    for row, n in enumerate([length, 7, 5][:batch]):
        ids[row, n - 1] = eos
        mask[row, n:] = 0
    return ids, mask


def images(batch=2, size=32, seed=0):
    return np.random.RandomState(seed).randn(batch, 3, size, size).astype(np.float32)


def compare_nested(got, ref):
    for name in ("text_model_output", "vision_model_output"):
        assert_outputs_match(getattr(got, name), getattr(ref, name))


@pytest.mark.parametrize("eos", [EOS, 2])
def test_text_model_parity(eos):
    """Pooling at the first ``eos_token_id``; HF's legacy rule (the largest id) when it is 2."""
    hf = build(transformers.GroupViTTextModel,
               transformers.GroupViTTextConfig(**dict(TEXT, eos_token_id=eos), attn_implementation="eager"))
    module, params = to_zoo(hf)
    ids, mask = text_inputs(eos=eos)
    with torch.no_grad():
        ref = hf(input_ids=torch.from_numpy(ids), attention_mask=torch.from_numpy(mask), **FLAGS)
    got = jax.jit(lambda p: module.apply(p, ids, mask, **FLAGS))(params)
    assert len(got.hidden_states) == 3 and got.attentions[0].shape == (3, 4, 10, 10)
    assert_outputs_match(got, ref)


@pytest.mark.parametrize("grouping", list(GROUPINGS))
def test_vision_model_parity(grouping):
    hf = build(transformers.GroupViTVisionModel, transformers.GroupViTVisionConfig(**vision_config(grouping)))
    module, params = to_zoo(hf)
    x = images(batch=3)
    with torch.no_grad():
        ref = hf(pixel_values=torch.from_numpy(x), **FLAGS)
    got = jax.jit(lambda p: module.apply(p, x, **FLAGS))(params)
    assert got.last_hidden_state.shape[1] == GROUPINGS[grouping]["num_output_groups"][-1]
    assert_outputs_match(got, ref)


def joint(grouping="three_stages", **overrides):
    cfg = transformers.GroupViTConfig(text_config=TEXT, vision_config=vision_config(grouping), projection_dim=16,
                                      projection_intermediate_dim=24, attn_implementation="eager", **overrides)
    return build(transformers.GroupViTModel, cfg)


@pytest.mark.parametrize("grouping", ["three_stages", "grouping_every_stage"])
def test_model_parity_with_segmentation_and_loss(grouping):
    hf = joint(grouping)
    module, variables = to_zoo(hf)
    assert set(variables) == {"params", "batch_stats"}
    ids, mask = text_inputs(batch=2)
    x = images(batch=2)
    kwargs = dict(return_loss=True, output_segmentation=True, **FLAGS)
    with torch.no_grad():
        ref = hf(input_ids=torch.from_numpy(ids), pixel_values=torch.from_numpy(x),
                 attention_mask=torch.from_numpy(mask), **kwargs)
    got = jax.jit(lambda v: module.apply(v, input_ids=ids, pixel_values=x, attention_mask=mask, **kwargs))(variables)
    assert got.segmentation_logits.shape == (2, 2, 32, 32)  # [images, texts, H, W] at image resolution
    assert_outputs_match(got, ref, skip=("text_model_output", "vision_model_output"))
    compare_nested(got, ref)


def test_model_parity_more_texts_than_images_without_segmentation():
    hf = joint(logit_scale_init_value=1.5)
    module, variables = to_zoo(hf)
    ids, mask = text_inputs(batch=3, seed=1)
    x = images(batch=2, seed=1)
    with torch.no_grad():
        ref = hf(input_ids=torch.from_numpy(ids), pixel_values=torch.from_numpy(x),
                 attention_mask=torch.from_numpy(mask))
    got = jax.jit(lambda v: module.apply(v, input_ids=ids, pixel_values=x, attention_mask=mask))(variables)
    assert got.logits_per_image.shape == (2, 3) and got.segmentation_logits is None and got.loss is None
    assert_outputs_match(got, ref, skip=("text_model_output", "vision_model_output"))
    compare_nested(got, ref)


def test_text_and_image_features():
    hf = joint()
    module, variables = to_zoo(hf)
    ids, mask = text_inputs()
    x = images()
    with torch.no_grad():
        text_ref = hf.get_text_features(input_ids=torch.from_numpy(ids), attention_mask=torch.from_numpy(mask))
        image_ref = hf.get_image_features(pixel_values=torch.from_numpy(x))
    text = jax.jit(lambda v: module.apply(v, ids, mask, method=module.get_text_features))(variables)
    image = jax.jit(lambda v: module.apply(v, x, method=module.get_image_features))(variables)
    assert max_diff(text, text_ref.pooler_output) <= 1e-5
    assert max_diff(image, image_ref.pooler_output) <= 1e-5


def test_hard_softmax_is_one_hot_forward_and_softmax_backward():
    logits = jnp.asarray(np.random.RandomState(0).randn(2, 5, 7).astype(np.float32))
    y = hard_softmax(logits, axis=-2)
    assert np.array_equal(np.asarray(y).argmax(-2), np.asarray(logits).argmax(-2))
    np.testing.assert_allclose(np.asarray(y).sum(-2), 1.0, atol=1e-6)
    g = jax.grad(lambda v: (hard_softmax(v, -2) * jnp.arange(7.0)).sum())(logits)
    want = jax.grad(lambda v: (jax.nn.softmax(v, -2) * jnp.arange(7.0)).sum())(logits)
    np.testing.assert_allclose(np.asarray(g), np.asarray(want), atol=1e-6)


def test_gumbel_assignment_in_training_uses_its_rng():
    hf = joint()
    module, variables = to_zoo(hf)
    x = images()
    train = jax.jit(lambda v, key: module.apply(v, input_ids=text_inputs(batch=2)[0], pixel_values=x,
                                                deterministic=False, rngs={"gumbel": key}).image_embeds)
    run = lambda seed: train(variables, jax.random.key(seed))
    a, b = run(0), run(1)
    assert np.array_equal(np.asarray(a), np.asarray(run(0))) and max_diff(a, np.asarray(b)) > 1e-6
    with pytest.raises(Exception, match="gumbel"):
        module.apply(variables, input_ids=text_inputs(batch=2)[0], pixel_values=x, deterministic=False)


def test_config_accepts_tower_configs_and_rejects_what_it_lacks():
    cfg = GroupViTConfig.from_dict(transformers.GroupViTTextConfig(**TEXT).to_dict())
    assert cfg.text.hidden_size == 32 and cfg.vision.hidden_size == 384
    with pytest.raises(ValueError, match="depths"):
        GroupViTConfig.from_dict({"model_type": "groupvit", "vision_config": vision_config(depths=[1, 1, 1, 1])})
    with pytest.raises(ValueError, match="group projector"):  # HF builds it and then crashes in forward
        GroupViTConfig.from_dict({"model_type": "groupvit", "vision_config": dict(
            depths=[1, 1], num_group_tokens=[8, 4], num_output_groups=[4, 2])})
    hf = build(transformers.GroupViTVisionModel, transformers.GroupViTVisionConfig(**vision_config()))
    module, params = to_zoo(hf)
    with pytest.raises(ValueError, match="interpolate_pos_encoding=True"):
        module.apply(params, images(size=48))
    out = jax.jit(lambda p: module.apply(p, images(size=48), interpolate_pos_encoding=True))(params)
    with torch.no_grad():  # HF's vision model does not pass the flag on: run its parts with it
        tower = hf.vision_model
        hidden = tower.embeddings(torch.from_numpy(images(size=48)), interpolate_pos_encoding=True)
        ref = tower.layernorm(tower.encoder(hidden).last_hidden_state)
    assert max_diff(out.last_hidden_state, ref) <= 1e-5


def test_checkpoint_round_trip_is_bit_exact(tmp_path):
    """PyTorch -> zoo (params + BatchNorm1d statistics) -> zoo directory -> PyTorch."""
    from zoo import pretrained

    hf = joint()
    hf.save_pretrained(tmp_path / "hf")
    module, variables = loaded = pretrained.from_pretrained(tmp_path / "hf")
    report = loaded.report
    assert report.summary() == "all keys matched" and set(variables) == {"params", "batch_stats"}
    pretrained.save_pretrained(tmp_path / "zoo", module, variables)
    again, variables = pretrained.from_pretrained(tmp_path / "zoo")
    pretrained.export_pytorch(tmp_path / "pt", again, variables)
    exported = transformers.GroupViTModel.from_pretrained(tmp_path / "pt").eval()
    want, got = hf.state_dict(), exported.state_dict()
    assert set(got) == set(want)
    for key in want:
        assert got[key].dtype == want[key].dtype and torch.equal(got[key], want[key]), key
    text_only, params = pretrained.from_pretrained(tmp_path / "hf", "GroupViTTextModel")
    assert set(params) == {"params"} and set(params["params"]) == {"text_model"}


def test_model_segmentation_at_another_image_size():
    """``interpolate_pos_encoding`` through GroupViTModel: a 40x56 image (HF's joint model does not
    pass the flag to its vision tower, so the reference runs with it forced in the embeddings)."""
    import functools

    hf = joint()
    module, variables = to_zoo(hf)
    ids, mask = text_inputs(batch=2)
    x = np.random.RandomState(3).randn(2, 3, 40, 56).astype(np.float32)
    embeddings = hf.vision_model.embeddings
    embeddings.forward = functools.partial(type(embeddings).forward, embeddings, interpolate_pos_encoding=True)
    with torch.no_grad():
        ref = hf(input_ids=torch.from_numpy(ids), pixel_values=torch.from_numpy(x),
                 attention_mask=torch.from_numpy(mask), output_segmentation=True)
    with pytest.raises(ValueError, match="interpolate_pos_encoding=True"):
        module.apply(variables, input_ids=ids, pixel_values=x, attention_mask=mask)
    got = jax.jit(lambda v: module.apply(v, input_ids=ids, pixel_values=x, attention_mask=mask,
                                         output_segmentation=True, interpolate_pos_encoding=True))(variables)
    assert got.segmentation_logits.shape == (2, 2, 40, 56)
    assert_outputs_match(got, ref, skip=("text_model_output", "vision_model_output"))
    compare_nested(got, ref)
