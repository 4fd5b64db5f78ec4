"""End-to-end checkpoint conversion: formats, dtypes, tied weights, round trip, errors."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import jax.numpy as jnp
import ml_dtypes
import numpy as np
import pytest
import torch
import transformers
from safetensors.numpy import load_file

import zoo
from converters.errors import CheckpointError, CheckpointNotFoundError, KeyMappingError
from hf_parity import assert_outputs_match, max_diff
from zoo.config import UnsupportedConfigError
from zoo.tree import flatten
from zoo.registry import UnsupportedModelError


def tiny_config(**kw):
    base = dict(vocab_size=99, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                intermediate_size=37, max_position_embeddings=64, attn_implementation="eager")
    base.update(kw)
    return transformers.Data2VecTextConfig(**base)


@pytest.fixture(scope="module")
def hf_mlm():
    torch.manual_seed(0)
    return transformers.Data2VecTextForMaskedLM(tiny_config()).eval()


@pytest.fixture(scope="module")
def checkpoints(hf_mlm, tmp_path_factory):
    """The same model as safetensors, sharded safetensors, .bin and sharded .bin."""
    root = tmp_path_factory.mktemp("ckpts")
    hf_mlm.save_pretrained(root / "st")
    hf_mlm.save_pretrained(root / "st_sharded", max_shard_size="30KB")
    (root / "bin").mkdir()
    hf_mlm.config.save_pretrained(root / "bin")
    torch.save(hf_mlm.state_dict(), root / "bin" / "pytorch_model.bin")
    state = hf_mlm.state_dict()
    keys = sorted(state)
    (root / "bin_sharded").mkdir()
    hf_mlm.config.save_pretrained(root / "bin_sharded")
    weight_map = {}
    for i, part in enumerate((keys[: len(keys) // 2], keys[len(keys) // 2:])):
        name = f"pytorch_model-0000{i + 1}-of-00002.bin"
        torch.save({k: state[k] for k in part}, root / "bin_sharded" / name)
        weight_map.update({k: name for k in part})
    (root / "bin_sharded" / "pytorch_model.bin.index.json").write_text(
        json.dumps({"metadata": {}, "weight_map": weight_map}))
    return root


def inputs():
    ids = np.random.RandomState(0).randint(3, 99, (2, 8))
    mask = np.ones_like(ids)
    ids[1, 6:], mask[1, 6:] = 1, 0
    return ids, mask


@pytest.mark.parametrize("fmt", ["st", "st_sharded", "bin", "bin_sharded"])
def test_every_format_converts_to_the_same_model(checkpoints, hf_mlm, fmt):
    module, params = loaded = zoo.from_pretrained(checkpoints / fmt)
    report = loaded.report
    assert type(module).__name__ == "Data2VecTextForMaskedLM"
    assert not report.unused and not report.missing
    if fmt.startswith("bin"):  # torch.save keeps the tied decoder weight and bias
        assert sorted(report.aliased) == ["lm_head.decoder.bias", "lm_head.decoder.weight"]
    ids, mask = inputs()
    with torch.no_grad():
        ref = hf_mlm(input_ids=torch.from_numpy(ids), attention_mask=torch.from_numpy(mask),
                     output_hidden_states=True)
    got = module.apply(params, input_ids=ids, attention_mask=mask, output_hidden_states=True)
    assert_outputs_match(got, ref)


def test_bfloat16_checkpoint_kept_bit_exact(hf_mlm, tmp_path):
    bf16 = transformers.Data2VecTextForMaskedLM(tiny_config())
    bf16.load_state_dict(hf_mlm.state_dict())
    bf16 = bf16.to(torch.bfloat16)
    bf16.save_pretrained(tmp_path / "bf16")
    _, params = zoo.from_pretrained(tmp_path / "bf16", param_dtype="bfloat16")
    kernel = params["params"]["data2vec_text"]["encoder"]["layer_0"]["attention"]["self"]["query"]["kernel"]
    assert kernel.dtype == jnp.bfloat16
    want = bf16.data2vec_text.encoder.layer[0].attention.self.query.weight.detach().T.contiguous()
    assert np.array_equal(np.asarray(kernel).view(np.uint16), want.view(torch.int16).numpy().view(np.uint16))
    _, params32 = zoo.from_pretrained(tmp_path / "bf16", param_dtype="float32")
    k32 = params32["params"]["data2vec_text"]["encoder"]["layer_0"]["attention"]["self"]["query"]["kernel"]
    assert np.array_equal(np.asarray(k32), want.float().numpy())


def test_round_trip_pytorch_zoo_pytorch_is_bit_exact(checkpoints, hf_mlm, tmp_path):
    module, params = zoo.from_pretrained(checkpoints / "st")
    zoo.save_pretrained(tmp_path / "zoo", module, params)
    module2, params2 = zoo.from_pretrained(tmp_path / "zoo")
    zoo.export_pytorch(tmp_path / "pt", module2, params2)
    original = load_file(str(checkpoints / "st" / "model.safetensors"))
    exported = load_file(str(tmp_path / "pt" / "model.safetensors"))
    assert sorted(original) == sorted(exported)
    for key, value in original.items():
        assert exported[key].dtype == value.dtype and np.array_equal(exported[key], value), key
    reloaded = transformers.Data2VecTextForMaskedLM.from_pretrained(tmp_path / "pt").eval()
    for key, value in hf_mlm.state_dict().items():
        assert torch.equal(reloaded.state_dict()[key], value), key


def test_tied_bias_only_under_its_alias(hf_mlm, tmp_path):
    """Old checkpoints may carry ``lm_head.decoder.bias`` but not ``lm_head.bias``."""
    state = {k: v for k, v in hf_mlm.state_dict().items() if k != "lm_head.bias"}
    hf_mlm.config.save_pretrained(tmp_path)
    torch.save(state, tmp_path / "pytorch_model.bin")
    _, params = zoo.from_pretrained(tmp_path)
    assert np.array_equal(np.asarray(params["params"]["lm_head"]["bias"]), hf_mlm.lm_head.bias.detach().numpy())


def test_bare_checkpoint_into_head_initialises_only_the_head(tmp_path):
    torch.manual_seed(1)
    bare = transformers.Data2VecTextModel(tiny_config())
    bare.save_pretrained(tmp_path)
    module, params = loaded = zoo.from_pretrained(tmp_path, "Data2VecTextForSequenceClassification")
    report = loaded.report
    assert report.prefix == "added"
    assert report.missing and all(p.startswith("classifier/") for p in report.missing)
    got = params["params"]["data2vec_text"]["embeddings"]["word_embeddings"]["embedding"]
    assert np.array_equal(np.asarray(got), bare.embeddings.word_embeddings.weight.detach().numpy())


def test_head_checkpoint_into_bare_model(checkpoints):
    module, params = loaded = zoo.from_pretrained(checkpoints / "st", "Data2VecTextModel")
    report = loaded.report
    assert report.prefix == "removed"
    assert any(k.startswith("lm_head.") for k in report.unused)
    assert report.missing == ["pooler/dense/kernel", "pooler/dense/bias"] or sorted(report.missing) == sorted(
        ["pooler/dense/bias", "pooler/dense/kernel"])


def test_hub_repo_id_from_local_cache_offline(checkpoints, tmp_path, monkeypatch):
    cache = tmp_path / "hub"
    snap = cache / "models--someone--tiny-d2v" / "snapshots" / "abc123"
    snap.mkdir(parents=True)
    for name in ("config.json", "model.safetensors"):
        shutil.copy(checkpoints / "st" / name, snap / name)
    (cache / "models--someone--tiny-d2v" / "refs").mkdir()
    (cache / "models--someone--tiny-d2v" / "refs" / "main").write_text("abc123")
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    import huggingface_hub.constants as c

    monkeypatch.setattr(c, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(c, "HF_HUB_OFFLINE", True)
    module, params = zoo.from_pretrained("someone/tiny-d2v")
    assert type(module).__name__ == "Data2VecTextForMaskedLM"
    with pytest.raises(CheckpointNotFoundError, match="not in the Hugging Face cache"):
        zoo.from_pretrained("someone/not-cached")


# ------------------------------------------------------------------------- errors
def test_wrong_family_and_unsupported_values(checkpoints, tmp_path):
    bert = tmp_path / "bert"
    transformers.BertModel(transformers.BertConfig(
        vocab_size=99, hidden_size=32, num_hidden_layers=1, num_attention_heads=4, intermediate_size=37,
    )).save_pretrained(bert)
    with pytest.raises(UnsupportedModelError, match="model_type 'bert' is not supported"):
        zoo.from_pretrained(bert)
    # GPT-2 weights behind a data2vec-text config: the keys do not match.
    gpt2 = tmp_path / "gpt2"
    transformers.GPT2Model(transformers.GPT2Config(vocab_size=99, n_embd=32, n_layer=1, n_head=4)
                           ).save_pretrained(gpt2)
    shutil.copy(checkpoints / "st" / "config.json", gpt2 / "config.json")
    with pytest.raises(KeyMappingError, match="missing from the checkpoint"):
        zoo.from_pretrained(gpt2)

    bad = tmp_path / "bad"
    shutil.copytree(checkpoints / "st", bad)
    cfg = json.loads((bad / "config.json").read_text())
    cfg["position_embedding_type"] = "rotary"
    (bad / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(UnsupportedConfigError, match="position_embedding_type='rotary'"):
        zoo.from_pretrained(bad)
    with pytest.raises(UnsupportedModelError, match="not a data2vec-text architecture"):
        zoo.from_pretrained(checkpoints / "st", "BigBirdForMaskedLM")


def test_config_shape_mismatch_is_named(checkpoints, tmp_path):
    bad = tmp_path / "bad"
    shutil.copytree(checkpoints / "st", bad)
    cfg = json.loads((bad / "config.json").read_text())
    cfg["intermediate_size"] = 40
    (bad / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(KeyMappingError, match=r"intermediate\.dense\.(weight|bias)' has shape \((32, )?37,?\)"):
        zoo.from_pretrained(bad)


def test_truncated_and_missing_files(checkpoints, tmp_path):
    bad = tmp_path / "trunc"
    shutil.copytree(checkpoints / "st", bad)
    data = (bad / "model.safetensors").read_bytes()
    (bad / "model.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="model.safetensors"):
        zoo.from_pretrained(bad)
    with pytest.raises(CheckpointNotFoundError, match="no such checkpoint directory"):
        zoo.from_pretrained(tmp_path / "nowhere")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(CheckpointNotFoundError, match="config.json"):
        zoo.from_pretrained(empty)


def test_bad_inputs_get_clear_errors(checkpoints):
    module, params = zoo.from_pretrained(checkpoints / "st")
    apply = lambda **kw: module.apply(params, **kw)
    with pytest.raises(ValueError, match="input_ids must be an integer array of rank 2"):
        apply(input_ids=np.zeros((2, 3), np.float32))
    with pytest.raises(ValueError, match="input_ids must be an integer array of rank 2"):
        apply(input_ids=np.zeros((5,), np.int32))
    with pytest.raises(ValueError, match=r"attention_mask must have shape \(2, 4\)"):
        apply(input_ids=np.ones((2, 4), np.int32), attention_mask=np.ones((2, 5)))
    with pytest.raises(ValueError, match="exactly one of input_ids or inputs_embeds"):
        apply()
    with pytest.raises(ValueError, match=r"inputs_embeds must be \[batch, length, 32\]"):
        apply(inputs_embeds=np.zeros((2, 4, 8), np.float32))
    with pytest.raises(ValueError, match="dtype 'int8' is not supported"):
        zoo.from_pretrained(checkpoints / "st", param_dtype="int8")


def test_config_round_trip_keeps_unknown_fields():
    from zoo.models.data2vec_text import Data2VecTextConfig

    data = tiny_config(num_labels=3, problem_type="single_label_classification").to_dict()
    data["some_future_field"] = [1, 2]
    cfg = Data2VecTextConfig.from_dict(data)
    assert cfg.num_labels == 3 and cfg.extra["some_future_field"] == [1, 2]
    again = Data2VecTextConfig.from_dict(cfg.to_dict())
    assert again == cfg and hash(again) == hash(cfg)
    hf = transformers.Data2VecTextConfig.from_dict(cfg.to_dict())
    assert hf.num_labels == 3 and hf.hidden_size == 32


def tiny_architectures():
    """``(name, module)`` for every architecture of every family, on tiny configs with every
    optional parameter switched on (decoder with cross-attention where there is one)."""
    from zoo.pretrained import build_model
    from zoo.registry import FAMILIES

    for family in FAMILIES.values():
        fields = {f.name for f in __import__("dataclasses").fields(family.config_class)}
        overrides = {k: v for k, v in dict(is_decoder=True, add_cross_attention=True).items() if k in fields}
        if family.model_type == "big_bird":
            overrides.pop("add_cross_attention")
        if family.model_type == "data2vec-vision":  # 4 feature layers for segmentation; a small image
            overrides.update(num_hidden_layers=3, out_indices=[1, 2, 3, 4], image_size=32, patch_size=8)
        if family.model_type == "idefics":  # every optional part: resampler, qk norms, extra vocabulary
            overrides.update(use_resampler=True, qk_layer_norms=True, additional_vocab_size=2,
                             vision_config=dict(embed_dim=16, image_size=16, patch_size=8, num_hidden_layers=1,
                                                num_attention_heads=2, intermediate_size=20),
                             perceiver_config=dict(resampler_n_latents=2, resampler_depth=1, resampler_n_heads=2,
                                                   resampler_head_dim=4, qk_layer_norms_perceiver=True))
        cfg = family.config_class.from_dict(dict(dict(hidden_size=32, num_attention_heads=4, num_hidden_layers=2,
                                                      intermediate_size=37), **overrides))
        for name in family.architectures:
            yield name, build_model(cfg, name)


def test_logical_axis_names_on_every_parameter():
    """Every parameter of every architecture of every family carries logical axis names (a
    single number, e.g. a scalar gate, has nothing to shard)."""
    import math

    from zoo.initialization import logical_axes, param_shapes

    for name, module in tiny_architectures():
        specs = flatten(logical_axes(module))
        shapes = param_shapes(module, state=False)
        unnamed = [p for p, spec in specs.items() if (spec is None or not any(spec)) and math.prod(shapes[p]) > 1]
        assert not unnamed, f"{name}: parameters without logical axes: {unnamed}"
