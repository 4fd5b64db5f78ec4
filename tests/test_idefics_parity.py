"""IDEFICS parity with HF PyTorch (fp32, <= 1e-5): IdeficsModel and IdeficsForVisionText2Text
with the resampler on/off, qk layer norms on/off, cross-layer interval 1/2, both alpha types,
image attention masks with images masked out, left padding, losses, hidden states and
attentions; precomputed image inputs; the KV cache; checkpoints; HF's freezing rules."""

from __future__ import annotations

import jax
import numpy as np
import pytest
import torch
import transformers

from hf_parity import assert_outputs_match, max_diff, to_zoo
from test_data2vec_vision_parity import randomize
from zoo.config import UnsupportedConfigError
from zoo.models.idefics import IdeficsConfig, frozen_parameters

transformers.logging.set_verbosity_error()
VOCAB, IMAGE = 60, 16
FLAGS = dict(output_hidden_states=True, output_attentions=True)


def hf_config(**overrides):
    perceiver = dict(resampler_n_latents=3, resampler_depth=2, resampler_n_heads=2, resampler_head_dim=6,
                     qk_layer_norms_perceiver=overrides.pop("qk_layer_norms_perceiver", False))
    kw = dict(vocab_size=VOCAB, additional_vocab_size=0, hidden_size=16, intermediate_size=24, num_hidden_layers=2,
              num_attention_heads=2, max_position_embeddings=64, pad_token_id=0,
              vision_config=dict(embed_dim=12, image_size=IMAGE, patch_size=4, num_hidden_layers=2,
                                 num_attention_heads=2, intermediate_size=20),
              perceiver_config=perceiver, attn_implementation="eager")
    kw.update(overrides)
    return transformers.IdeficsConfig(**kw)


def build(cls=transformers.IdeficsForVisionText2Text, seed=0, **overrides):
    torch.manual_seed(seed)
    model = randomize(cls(hf_config(**overrides)).eval(), seed)
    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():  # gates of the size of a trained model's, so the images matter
        for name, p in model.named_parameters():
            if "alpha" in name:
                p.copy_(torch.randn(p.shape, generator=g))
    return model


def inputs(batch=2, length=7, num_images=2, seed=0, vocab=VOCAB):
    """Left-padded ids; image 1 of row 0 is masked out for every token, the first real token
    of row 1 sees no image at all (its cross-attention output is gated off)."""
    rng = np.random.RandomState(seed)
    ids = rng.randint(1, vocab, (batch, length))
    mask = np.ones((batch, length), np.int64)
    mask[1, :3] = 0
    ids[1, :3] = 0
    image_mask = np.ones((batch, length, num_images), np.int64)
    image_mask[0, :, num_images - 1] = 0 if num_images > 1 else 1
    image_mask[1, 3] = 0
    pixels = rng.randn(batch, num_images, 3, IMAGE, IMAGE).astype(np.float32)
    return dict(input_ids=ids, attention_mask=mask, image_attention_mask=image_mask, pixel_values=pixels)


def torch_inputs(x: dict) -> dict:
    return {k: torch.from_numpy(np.array(v)) for k, v in x.items()}


def run_both(hf, x: dict, **kwargs):
    module, params = to_zoo(hf)
    with torch.no_grad():
        ref = hf(**torch_inputs(x), **kwargs)
    got = jax.jit(lambda p, x: module.apply(p, **x, **kwargs))(params, x)
    return got, ref, module, params


VARIANTS = {
    "plain": dict(),
    "resampler_qk_norms": dict(use_resampler=True, qk_layer_norms=True, qk_layer_norms_perceiver=True),
    "interval_2_vector_alpha": dict(num_hidden_layers=4, cross_layer_interval=2, alpha_type="vector",
                                    use_resampler=True),
}


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_lm_parity_with_loss_hidden_states_and_attentions(variant):
    hf = build(**VARIANTS[variant])
    x = inputs()
    labels = np.where(x["attention_mask"] == 1, x["input_ids"], -100)
    got, ref, _, _ = run_both(hf, dict(x, labels=labels), **FLAGS)
    cfg = hf.config
    assert len(got.hidden_states) == cfg.num_hidden_layers + 1 and len(got.attentions) == cfg.num_hidden_layers
    latents = cfg.perceiver_config.resampler_n_latents if cfg.use_resampler else (IMAGE // 4) ** 2 + 1
    assert got.image_hidden_states.shape == (2, 2, latents, 12)
    assert_outputs_match(got, ref)


def test_bare_model_and_precomputed_image_inputs():
    """IdeficsModel; ``image_encoder_embeddings`` / ``perceiver_embeddings`` instead of pixels."""
    hf = build(transformers.IdeficsModel, use_resampler=True)
    x = inputs(seed=1)
    got, ref, module, params = run_both(hf, x, **FLAGS)
    assert_outputs_match(got, ref)
    apply = jax.jit(lambda p, x: module.apply(p, **x))
    text = {k: x[k] for k in ("input_ids", "attention_mask", "image_attention_mask")}
    with torch.no_grad():
        vision = hf.vision_model(torch.from_numpy(x["pixel_values"].reshape(4, 3, IMAGE, IMAGE))).last_hidden_state
        enc = vision.reshape(2, 2, *vision.shape[1:]).numpy()
        ref_enc = hf(**torch_inputs(dict(text, image_encoder_embeddings=enc)))
        ref_per = hf(**torch_inputs(dict(text, perceiver_embeddings=np.asarray(got.image_hidden_states))))
    assert_outputs_match(apply(params, dict(text, image_encoder_embeddings=enc)), ref_enc)
    assert_outputs_match(apply(params, dict(text, perceiver_embeddings=np.asarray(got.image_hidden_states))), ref_per)
    with pytest.raises(ValueError, match="Exactly 1 of"):
        module.apply(params, **dict(x, image_encoder_embeddings=enc))
    with pytest.raises(ValueError, match="image_attention_mask must be"):
        module.apply(params, **dict(x, image_attention_mask=x["image_attention_mask"][:, :, :1]))


def test_additional_vocabulary_and_tied_head():
    """Decoupled embedding and LM head (ids above vocab_size use the additional tables), untied
    and tied. HF's loss cannot run here: it views the [.., V + A] logits as [-1, V] (it raises),
    so the zoo's loss over the whole vocabulary is checked against torch's cross entropy."""
    for tie in (False, True):
        hf = build(additional_vocab_size=3, tie_word_embeddings=tie)
        x = inputs(vocab=VOCAB + 3)
        x["input_ids"][0, -2:] = [VOCAB, VOCAB + 2]
        got, ref, module, params = run_both(hf, x)
        assert got.logits.shape[-1] == VOCAB + 3
        assert_outputs_match(got, ref)
        assert ("lm_head" in params["params"]) != tie
    labels = x["input_ids"]
    loss = module.apply(params, **x, labels=labels).loss
    want = torch.nn.functional.cross_entropy(ref.logits[:, :-1].reshape(-1, VOCAB + 3),
                                             torch.from_numpy(labels[:, 1:]).reshape(-1))
    assert abs(float(loss) - float(want)) <= 1e-5


def test_other_image_size_with_interpolate_pos_encoding():
    hf = build()
    x = inputs(num_images=1)
    x["pixel_values"] = np.random.RandomState(2).randn(2, 1, 3, 24, 20).astype(np.float32)
    got, ref, module, params = run_both(hf, x, interpolate_pos_encoding=True)
    assert got.image_hidden_states.shape == (2, 1, 6 * 5 + 1, 12)
    assert_outputs_match(got, ref)
    with pytest.raises(ValueError, match="interpolate_pos_encoding=True"):
        module.apply(params, **x)


def test_incremental_decoding_equals_full_forward():
    """Prefill + one token at a time through the fixed-size cache, left padding, images
    precomputed after the first call (``decode_inputs``) = the full forward, step by step."""
    hf = build(use_resampler=True, qk_layer_norms=True)
    module, params = to_zoo(hf)
    x = inputs(length=9)
    full = jax.jit(lambda p: module.apply(p, **x))(params)
    prompt, total = 5, 9
    cache = module.init_cache(2, total)
    mask = np.zeros((2, total), np.int64)
    mask[:, :prompt] = x["attention_mask"][:, :prompt]
    step = jax.jit(lambda p, c, m, inp: module.apply(p, past_key_values=c, attention_mask=m, **inp))
    first = {k: x[k][:, :prompt] if k != "pixel_values" else x[k] for k in x if k != "attention_mask"}
    o = step(params, cache, mask, first)
    real = x["attention_mask"][:, :prompt, None] == 1  # padded positions attend to nothing: no meaning
    assert max_diff(np.where(real, o.logits, 0), np.where(real, full.logits[:, :prompt], 0)) <= 1e-5
    rest = module.decode_inputs(o, first)
    for t in range(prompt, total):
        mask[:, t] = x["attention_mask"][:, t]
        inp = dict(rest, input_ids=x["input_ids"][:, t:t + 1], image_attention_mask=x["image_attention_mask"][:, t:t + 1])
        o = step(params, o.past_key_values, mask, inp)
        assert max_diff(o.logits[:, 0], np.asarray(full.logits[:, t])) <= 1e-5, t
    assert int(o.past_key_values.length) == total and step._cache_size() == 2  # prefill + one decode shape


def test_checkpoint_round_trip_is_bit_exact(tmp_path):
    """HF (sharded safetensors) -> zoo directory -> PyTorch, every tensor equal, dtypes kept; the
    nested perceiver blocks (``blocks.0.1``) map both ways."""
    from zoo import pretrained

    hf = build(use_resampler=True, qk_layer_norms=True, additional_vocab_size=2)
    hf.save_pretrained(tmp_path / "hf", max_shard_size="20KB")
    assert (tmp_path / "hf" / "model.safetensors.index.json").exists()
    module, params = loaded = pretrained.from_pretrained(tmp_path / "hf")
    report = loaded.report
    assert report.summary() == "all keys matched"
    pretrained.save_pretrained(tmp_path / "zoo", module, params)
    again, params = pretrained.from_pretrained(tmp_path / "zoo")
    pretrained.export_pytorch(tmp_path / "pt", again, params)
    exported = transformers.IdeficsForVisionText2Text.from_pretrained(tmp_path / "pt").eval()
    want, got = hf.state_dict(), exported.state_dict()
    assert set(got) == set(want)
    for key in want:
        assert got[key].dtype == want[key].dtype and torch.equal(got[key], want[key]), key
    bare, bare_params = pretrained.from_pretrained(tmp_path / "hf", "IdeficsModel")
    assert "lm_head" not in bare_params["params"] and "perceiver_resampler" in bare_params["params"]


@pytest.mark.parametrize("exceptions", [(), ("LayerNorm", "Linear", "Embedding")])
def test_frozen_parameters_follow_hf(exceptions):
    """``frozen_parameters(config)`` selects exactly the parameters HF sets requires_grad=False."""
    import re

    from converters.mapping import torch_to_flax_path
    from zoo.initialization import param_shapes
    from zoo.registry import get_family

    hf = transformers.IdeficsForVisionText2Text(hf_config(
        use_resampler=True, additional_vocab_size=2, freeze_lm_head=True, freeze_text_module_exceptions=exceptions,
        freeze_vision_module_exceptions=exceptions))
    config = IdeficsConfig.from_dict(hf.config.to_dict())
    module, _ = to_zoo(hf)
    expected = param_shapes(module)
    table = get_family("idefics").key_table
    patterns = [re.compile(p) for p in frozen_parameters(config)]
    for name, p in hf.named_parameters():
        path = torch_to_flax_path(name, table, expected)
        assert path in expected, name
        assert any(r.search(path) for r in patterns) == (not p.requires_grad), (name, path)


def test_config_rejects_what_it_lacks():
    base = hf_config().to_dict()
    with pytest.raises(UnsupportedConfigError, match="cross_layer_interval"):
        IdeficsConfig.from_dict(dict(base, num_hidden_layers=3, cross_layer_interval=2))
    with pytest.raises(UnsupportedConfigError, match="rope_parameters"):
        IdeficsConfig.from_dict(dict(base, rope_parameters={"rope_type": "linear", "factor": 2.0}))
    with pytest.raises(UnsupportedConfigError, match="alpha_type"):
        IdeficsConfig.from_dict(dict(base, alpha_type="matrix"))
    with pytest.raises(UnsupportedConfigError, match="alpha_initializer"):
        IdeficsConfig.from_dict(dict(base, alpha_initializer="xavier"))
    cfg = IdeficsConfig.from_dict(dict(base, rope_parameters=None, rope_theta=500.0))
    assert cfg.rope_theta == 500.0


def test_greedy_generation_equals_hf_generate():
    """``zoo.generation.generate`` (one jit, fixed cache, images computed once) = HF's greedy
    ``generate`` token for token: batch 2, left padding, two images, one row stopping at eos."""
    from zoo.generation import generate

    hf = build(use_resampler=True, cross_layer_interval=2, num_hidden_layers=4)
    module, params = to_zoo(hf)
    x = inputs(length=6)
    kwargs = dict(max_new_tokens=8, do_sample=False, pad_token_id=0)
    with torch.no_grad():
        free = hf.generate(**torch_inputs(x), **kwargs)
    eos = int(free[0, 6 + 2])  # row 0's third new token: that row stops early
    with torch.no_grad():
        ref = hf.generate(**torch_inputs(x), eos_token_id=eos, **kwargs).numpy()
    got = generate(module, params, x["input_ids"], x["attention_mask"], eos_token_id=eos,
                   image_attention_mask=x["image_attention_mask"], pixel_values=x["pixel_values"], **kwargs)
    np.testing.assert_array_equal(np.asarray(got.sequences)[:, :ref.shape[1]], ref)
    assert (np.asarray(got.sequences)[0, 6 + 3:] == 0).all()


def test_decoding_with_cached_image_keys_values():
    """The prefill's ``cross_attention_kv`` (image keys after k_layer_norm, values) passed to the
    steps by ``decode_inputs`` = projecting the images at every step, logit for logit; the steps
    then read no k_proj/v_proj weight (zeroed: same logits); greedy ``generate`` = HF's."""
    from zoo.generation import generate

    hf = build(use_resampler=True, qk_layer_norms=True, cross_layer_interval=2, num_hidden_layers=4)
    module, params = to_zoo(hf)
    x = inputs(length=6)
    prompt, total = 6, 10
    mask = np.zeros((2, total), np.int64)
    mask[:, :prompt] = x["attention_mask"]
    call = jax.jit(lambda p, c, m, inp: module.apply(p, past_key_values=c, attention_mask=m, **inp))
    first = {k: v for k, v in x.items() if k != "attention_mask"}
    o = call(params, module.init_cache(2, total), mask, first)
    cached = module.decode_inputs(o, first)
    assert len(cached["cross_attention_kv"]) == 2 and cached["cross_attention_kv"][0][0].shape == (2, 2 * 3, 2, 8)
    plain = {k: v for k, v in cached.items() if k != "cross_attention_kv"}
    no_kv = jax.tree.map(lambda a: a, params)
    for layer in no_kv["params"]["model"].values():
        if "cross_attn" in layer:
            for name in ("k_proj", "v_proj", "k_layer_norm"):
                layer["cross_attn"][name] = jax.tree.map(np.zeros_like, layer["cross_attn"][name])
    states = {"cached": o.past_key_values, "plain": o.past_key_values, "zeroed": o.past_key_values}
    token = np.asarray(o.logits[:, -1]).argmax(-1)[:, None]
    for t in range(prompt, total):
        mask[:, t] = 1
        logits = {}
        for name, p, inp in (("cached", params, cached), ("plain", params, plain), ("zeroed", no_kv, cached)):
            step = call(p, states[name], mask, dict(inp, input_ids=token))
            states[name], logits[name] = step.past_key_values, np.asarray(step.logits[:, -1])
            assert (step.cross_attention_kv is None) == (name != "plain")  # passed in: not returned again
        assert max_diff(logits["cached"], logits["plain"]) <= 1e-5, t
        np.testing.assert_array_equal(logits["cached"], logits["zeroed"])
        token = logits["plain"].argmax(-1)[:, None]
    kwargs = dict(max_new_tokens=6, do_sample=False, pad_token_id=0)
    with torch.no_grad():
        ref = hf.generate(**torch_inputs(x), **kwargs).numpy()
    got = generate(module, params, x["input_ids"], x["attention_mask"],
                   image_attention_mask=x["image_attention_mask"], pixel_values=x["pixel_values"], **kwargs)
    np.testing.assert_array_equal(np.asarray(got.sequences)[:, :ref.shape[1]], ref)
    with pytest.raises(ValueError, match="cross_attention_kv must be 2"):
        module.apply(params, **dict(plain, input_ids=token), cross_attention_kv=cached["cross_attention_kv"][:1])


IDEFICS_MESH_SCRIPT = """
import json
import jax, numpy as np
jax.config.update("jax_default_matmul_precision", "highest")
import zoo
from zoo import parallel
from zoo.tree import flatten_variables

res = {{}}
mesh = parallel.make_mesh("data=1,fsdp=4,tensor=2")
_, ref = zoo.from_pretrained({root!r}, param_dtype=None)
model, params = zoo.from_pretrained({root!r}, mesh=mesh, param_dtype=None)
a, b = flatten_variables(params), flatten_variables(ref)
res["equal"] = sorted(a) == sorted(b) and all(np.asarray(a[k]).tobytes() == np.asarray(b[k]).tobytes() for k in a)
res["dtypes"] = sorted({{str(v.dtype) for v in a.values()}})
down = params["params"]["model"]["layers_0"]["mlp"]["down_proj"]["kernel"]
res["down_fraction"] = max(int(s.data.size) for s in down.addressable_shards) / int(down.size)
x = {inputs!r}
x = {{k: np.asarray(v, dtype=np.float32 if k == "pixel_values" else np.int64) for k, v in x.items()}}
f = jax.jit(lambda p, x: model.apply(p, **x).logits.astype(np.float32))
res["max_diff"] = float(np.abs(np.asarray(f(params, x)) - np.asarray(f(ref, x))).max())
print("RESULT " + json.dumps(res))
"""


def test_bf16_checkpoint_loads_onto_a_mesh(tmp_path):
    """A sharded bf16 IDEFICS checkpoint loads straight onto a 4 x 2 (fsdp x tensor) mesh of 8
    simulated devices: bf16 kept, bit-exact, each device holding 1/8 of a decoder matrix, and a
    forward pass on the sharded params equal to the one on a single device's copy."""
    from test_parallel import On8Devices

    hf = build(use_resampler=True).to(torch.bfloat16)
    hf.save_pretrained(tmp_path / "ckpt", max_shard_size="20KB")
    x = {k: v.tolist() for k, v in inputs().items()}
    run = On8Devices(IDEFICS_MESH_SCRIPT.format(root=str(tmp_path / "ckpt"), inputs=x), tmp_path)
    try:
        res = run.result()
    finally:
        run.close()
    assert res["equal"] and res["dtypes"] == ["bfloat16"]
    assert res["down_fraction"] == 1 / 8
    assert res["max_diff"] <= 1e-5  # sharded contractions sum in another order
