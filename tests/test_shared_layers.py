"""Shared layers: the variables check on ``apply``, the cuDNN refusals, the shared q/k/v
projection and text heads (no torch needed)."""

from __future__ import annotations

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from zoo import registry
from zoo.attention.dense import dot_product_attention
from zoo.models import big_bird, data2vec_text, data2vec_vision, groupvit, idefics, sew_d
from zoo.nn import text_heads
from zoo.nn.attention_projection import QKVProjection
from zoo.nn.module import PretrainedModule

TEXT = dict(vocab_size=40, hidden_size=16, num_hidden_layers=2, num_attention_heads=2, intermediate_size=20,
            max_position_embeddings=64)


def d2v_text(cls=data2vec_text.Data2VecTextForSequenceClassification, **overrides):
    model = cls(data2vec_text.Data2VecTextConfig.from_dict(dict(TEXT, **overrides)))
    variables = model.init(jax.random.PRNGKey(0), **model.dummy_inputs(model.config))
    return model, variables


def ids(batch=2, length=6):
    return jnp.asarray(np.random.RandomState(0).randint(3, TEXT["vocab_size"], (batch, length)), jnp.int32)


# ------------------------------------------------------------------ variables on apply
def every_architecture():
    return [pytest.param(family, cls, id=name) for family in registry.FAMILIES.values()
            for name, cls in family.architectures.items()]


@pytest.mark.parametrize("family, cls", every_architecture())
def test_every_architecture_checks_its_variables(family, cls):
    assert issubclass(cls, PretrainedModule)
    model = cls(family.config_class())
    # The check runs before Flax looks at the module or the inputs.
    with pytest.raises(ValueError, match="wrapped twice"):
        model.apply({"params": {"params": {}}})
    with pytest.raises(ValueError, match=rf"{cls.__name__}: expected the variables dict"):
        model.apply({"embeddings": {}})


def test_wrapped_twice_and_bare_params_errors():
    model, variables = d2v_text()
    x = ids()
    with pytest.raises(ValueError, match=r"Data2VecTextForSequenceClassification: the variables are wrapped twice"):
        model.apply({"params": variables}, x)
    with pytest.raises(ValueError, match=r"model\.apply\(\{'params': params\}"):
        model.apply(variables["params"], x)
    with pytest.raises(ValueError, match="unknown variable collections"):
        model.apply({**variables, "cache": {}}, x)
    with pytest.raises(TypeError, match="must be a dict"):
        model.apply([variables], x)


def test_apply_keeps_flax_features():
    model, variables = d2v_text()
    x = ids()
    eager = model.apply(variables, x).logits
    np.testing.assert_allclose(np.asarray(jax.jit(model.apply)(variables, x).logits), np.asarray(eager),
                               rtol=0, atol=1e-6)  # jit fuses differently: float rounding only
    # rngs and training mode
    train = model.apply(variables, x, deterministic=False, rngs={"dropout": jax.random.PRNGKey(1)})
    assert train.logits.shape == eager.shape
    # mutable collections come back as with Flax
    got, state = model.apply(variables, x, mutable=["intermediates"])
    np.testing.assert_array_equal(np.asarray(got.logits), np.asarray(eager))
    assert isinstance(state, dict)
    # method=
    causal, cvars = d2v_text(data2vec_text.Data2VecTextForCausalLM, is_decoder=True)
    cache = causal.apply(cvars, 2, 8, method=causal.init_cache)
    assert cache.max_length == 8
    # init through a jitted function, and the checked apply under jit traces once
    traces = []

    @jax.jit
    def step(v, x):
        traces.append(1)
        return model.apply(v, x).logits

    step(variables, x)
    step(jax.tree.map(lambda a: a + 0, variables), x)
    assert len(traces) == 1


def test_variables_check_leaves_scan_and_remat_alone():
    model, variables = d2v_text(data2vec_text.Data2VecTextModel)
    scanned = data2vec_text.Data2VecTextModel(model.config, scan_layers=True, remat_policy="full")
    svars = scanned.init(jax.random.PRNGKey(0), **model.dummy_inputs(model.config))
    assert "layers" in svars["params"]["encoder"]
    assert scanned.apply(svars, ids()).last_hidden_state.shape == (2, 6, TEXT["hidden_size"])


# ------------------------------------------------------------------------------ cuDNN
def qkv(batch=1, length=4, heads=2, dim=8, dtype=jnp.float32):
    q = jax.random.normal(jax.random.PRNGKey(0), (batch, length, heads, dim), dtype)
    return q, q + 1, q - 1


@pytest.mark.parametrize("kwargs, what", [
    (dict(dropout_rate=0.1, deterministic=False, dropout_rng=jax.random.PRNGKey(0)), "attention dropout in training"),
    (dict(head_mask=jnp.ones((2, 1, 1))), "head_mask"),
    (dict(return_probs=True), "attention probabilities"),
])
def test_cudnn_refuses_what_it_cannot_do(kwargs, what):
    # the check runs before jax's cuDNN call, so it is the same on CPU
    with pytest.raises(ValueError, match=rf"implementation='cudnn' cannot do .*{what}"):
        dot_product_attention(*qkv(), implementation="cudnn", **kwargs)


def test_cudnn_names_everything_it_cannot_do_and_auto_falls_back():
    with pytest.raises(ValueError, match=r"dropout in training .*head_mask.*attention probabilities"):
        dot_product_attention(*qkv(), implementation="cudnn", dropout_rate=0.1, deterministic=False,
                              dropout_rng=jax.random.PRNGKey(0), head_mask=jnp.ones((2, 1, 1)), return_probs=True)
    with pytest.raises(ValueError, match="not one of"):
        dot_product_attention(*qkv(), implementation="flash")
    # the automatic choice falls back to XLA for all three
    out, probs = dot_product_attention(*qkv(), head_mask=jnp.ones((2, 1, 1)), return_probs=True,
                                       dropout_rate=0.1, deterministic=False, dropout_rng=jax.random.PRNGKey(0))
    assert out.shape == (1, 4, 2, 8) and probs.shape == (1, 2, 4, 4)


# ------------------------------------------------------- shared q/k/v and shared heads
@pytest.mark.parametrize("name", ["MaskedLM", "CausalLM", "SequenceClassification", "TokenClassification",
                                  "MultipleChoice"])
def test_text_families_share_their_heads(name):
    shared = getattr(text_heads, f"{name}Head")
    for family, prefix in ((big_bird, "BigBird"), (data2vec_text, "Data2VecText")):
        cls = getattr(family, f"{prefix}For{name}")
        assert issubclass(cls, shared), cls
        assert "forward" not in vars(cls)  # the family only declares HF's signature
    assert issubclass(data2vec_text.Data2VecTextForQuestionAnswering, text_heads.QuestionAnsweringHead)


def counting_qkv(monkeypatch):
    """Count the q/k/v projections per (names, heads, head_dim) while models are traced."""
    calls = []
    original = QKVProjection.__call__

    def call(self, *args, **kwargs):
        calls.append((self.names, self.num_heads, self.head_dim))
        return original(self, *args, **kwargs)

    monkeypatch.setattr(QKVProjection, "__call__", call)
    return calls


def shapes_of_init(model):
    return jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), **model.dummy_inputs(model.config)))


def test_every_attention_uses_the_shared_projection(monkeypatch):
    calls = counting_qkv(monkeypatch)
    layers = TEXT["num_hidden_layers"]
    cases = [
        (big_bird.BigBirdForMaskedLM(big_bird.BigBirdConfig.from_dict(
            dict(TEXT, block_size=4, num_random_blocks=1, attention_type="original_full"))),
         [(("query", "key", "value"), 2, 8)] * layers),
        (data2vec_text.Data2VecTextForMaskedLM(data2vec_text.Data2VecTextConfig.from_dict(TEXT)),
         [(("query", "key", "value"), 2, 8)] * layers),
        (data2vec_vision.Data2VecVisionModel(data2vec_vision.Data2VecVisionConfig.from_dict(dict(
            hidden_size=16, num_hidden_layers=2, num_attention_heads=2, intermediate_size=20, image_size=8,
            patch_size=4))), [(("query", "key", "value"), 2, 8)] * 2),
        (sew_d.SEWDModel(sew_d.SEWDConfig.from_dict(dict(
            hidden_size=16, num_hidden_layers=2, num_attention_heads=2, intermediate_size=20, conv_dim=(8, 8),
            conv_stride=(5, 2), conv_kernel=(10, 3), num_conv_pos_embeddings=4, num_conv_pos_embedding_groups=2,
            squeeze_factor=2, position_buckets=8, max_position_embeddings=64, mask_time_prob=0.0))),
         [(("query_proj", "key_proj", "value_proj"), 2, 8)] * 2),
    ]
    for model, expected in cases:
        calls.clear()
        shapes_of_init(model)
        assert calls == expected, type(model).__name__


def tiny_idefics(**overrides) -> idefics.IdeficsConfig:
    return idefics.IdeficsConfig.from_dict(dict(
        vocab_size=40, additional_vocab_size=0, hidden_size=16, intermediate_size=24, num_hidden_layers=2,
        num_attention_heads=2, max_position_embeddings=64, pad_token_id=0, use_resampler=True,
        vision_config=dict(embed_dim=12, image_size=8, patch_size=4, num_hidden_layers=2, num_attention_heads=2,
                           intermediate_size=20),
        perceiver_config=dict(resampler_n_latents=3, resampler_depth=2, resampler_n_heads=2, resampler_head_dim=6),
        **overrides))


def test_idefics_attentions_all_go_through_attention_fn(monkeypatch):
    """Vision encoder, decoder self- and cross-attention and the perceiver: one projection
    module, and a swapped-in kernel reaches every one of them."""
    calls = counting_qkv(monkeypatch)
    seen = []

    def kernel(q, k, v, **kwargs):
        seen.append((q.shape[1], k.shape[1], q.shape[2], q.shape[3]))
        return dot_product_attention(q, k, v, **kwargs)

    cfg = tiny_idefics()
    model = idefics.IdeficsForVisionText2Text(cfg, attention_fn=kernel)
    shapes_of_init(model)
    vision, decoder, cross, perceiver = 2, 2, cfg.num_cross_layers, 2
    assert len(calls) == vision + decoder + cross + perceiver
    assert calls.count((("q_proj", "k_proj", "v_proj"), 2, 6)) == vision + perceiver
    assert len(seen) == len(calls)
    latents = cfg.perceiver.resampler_n_latents
    assert sum(1 for s in seen if s[0] == latents and s[2:] == (2, 6)) == perceiver


def test_groupvit_projections_and_its_own_assignment(monkeypatch):
    """GroupViT's self-attentions go through the kernel; the assignment attention (a hard
    softmax over the groups, not the keys) uses the shared projection with one head."""
    calls = counting_qkv(monkeypatch)
    cfg = groupvit.GroupViTConfig.from_dict(dict(
        projection_dim=8, projection_intermediate_dim=12,
        text_config=dict(vocab_size=40, hidden_size=16, intermediate_size=20, num_hidden_layers=1,
                         num_attention_heads=2, max_position_embeddings=8, eos_token_id=39),
        vision_config=dict(hidden_size=16, intermediate_size=20, num_attention_heads=2, image_size=8, patch_size=4,
                           depths=[1, 1], num_group_tokens=[2, 0], num_output_groups=[2, 2],
                           num_hidden_layers=2)))
    shapes_of_init(groupvit.GroupViTModel(cfg))
    assert (("q_proj", "k_proj", "v_proj"), 1, 16) in calls  # the assignment
    assert calls.count((("q_proj", "k_proj", "v_proj"), 2, 8)) >= 3  # text + vision self-attention


def test_projection_paths_and_biases():
    class Attn(nn.Module):
        @nn.compact
        def __call__(self, x):
            return QKVProjection(2, 4, use_bias=(True, False, True))(x)

    params = Attn().init(jax.random.PRNGKey(0), jnp.ones((1, 3, 6)))["params"]
    assert sorted(params) == ["key", "query", "value"]
    assert "bias" not in params["key"] and "bias" in params["query"]
    assert nn.get_partition_spec(params)["query"]["kernel"] == jax.sharding.PartitionSpec("embed", "heads")
    q, k, v = Attn().apply({"params": params}, jnp.ones((1, 3, 6)))
    assert q.shape == k.shape == v.shape == (1, 3, 2, 4)


def test_heads_build_their_bodies_with_keywords():
    """A body built positionally would break as soon as a family adds a field; check the
    keyword call gives the same parameter tree as the bare model's."""
    model, variables = d2v_text(data2vec_text.Data2VecTextForTokenClassification)
    bare = data2vec_text.Data2VecTextModel(model.config, add_pooling_layer=False)
    bare_vars = bare.init(jax.random.PRNGKey(0), **bare.dummy_inputs(bare.config))
    assert jax.tree.structure(nn.unbox(variables["params"]["data2vec_text"])) == \
        jax.tree.structure(nn.unbox(bare_vars["params"]))
    partial = functools.partial(dot_product_attention)
    assert data2vec_text.Data2VecTextForTokenClassification(model.config, attention_fn=partial).attention_fn is partial
