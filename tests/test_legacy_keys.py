"""Legacy key spellings: checkpoints built by respelling real state dicts of tiny HF models.

Each respelled checkpoint is loaded by HF 5.23 itself (same outputs as the original: a
spelling HF accepts) and converted by the zoo to bit-identical parameters, with the
renames listed in the report. ``_orig_mod.`` / ``module.`` prefixes are the exception:
HF 5.23 does not strip them (every parameter is initialised afresh), the zoo does.
"""

from __future__ import annotations

import re
import shutil

import numpy as np
import pytest
import torch
import transformers
from safetensors.torch import save_file

import zoo
from converters.errors import KeyMappingError
from converters.mapping import LEGACY_RENAMES, ConversionReport, legacy_respelling
from zoo.cli import main as zoo_main
from zoo.tree import flatten

transformers.logging.set_verbosity_error()


def _gamma_beta(key):
    return re.sub(r"LayerNorm\.weight$", "LayerNorm.gamma", re.sub(r"LayerNorm\.bias$", "LayerNorm.beta", key))


def _old_weight_norm(key):
    return key.replace("parametrizations.weight.original0", "weight_g").replace(
        "parametrizations.weight.original1", "weight_v")


SPELLINGS = {  # name -> respelling of today's key
    "gamma_beta": _gamma_beta,
    "weight_g_v": _old_weight_norm,
    "orig_mod": lambda k: "_orig_mod." + k,
    "ddp": lambda k: "module." + k,
    "ddp_compiled_legacy": lambda k: "module._orig_mod." + _old_weight_norm(_gamma_beta(k)),
}
PREFIXED = {"orig_mod", "ddp", "ddp_compiled_legacy"}  # spellings HF 5.23 does not load


def _text():
    cfg = transformers.Data2VecTextConfig(vocab_size=99, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                          intermediate_size=37, max_position_embeddings=64)
    model = transformers.Data2VecTextForMaskedLM(cfg)
    ids = torch.from_numpy(np.random.RandomState(0).randint(3, 99, (2, 8)))
    return model, {"input_ids": ids}


def _audio_input():
    return torch.randn(1, 800, generator=torch.Generator().manual_seed(0))


def _sew_d():
    cfg = transformers.SEWDConfig(hidden_size=16, num_hidden_layers=2, num_attention_heads=2, intermediate_size=20,
                                  conv_dim=(8, 8), conv_stride=(5, 2), conv_kernel=(10, 3),
                                  num_conv_pos_embeddings=4, num_conv_pos_embedding_groups=2, squeeze_factor=2,
                                  max_position_embeddings=64, position_buckets=8)
    return transformers.SEWDModel(cfg), {"input_values": _audio_input()}


def _audio():
    cfg = transformers.Data2VecAudioConfig(hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                                           intermediate_size=20, conv_dim=(8, 8), conv_stride=(5, 2),
                                           conv_kernel=(10, 3), num_conv_pos_embeddings=4,
                                           num_conv_pos_embedding_groups=2)
    return transformers.Data2VecAudioModel(cfg), {"input_values": _audio_input()}


def _big_bird():
    cfg = transformers.BigBirdConfig(vocab_size=99, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                     intermediate_size=37, max_position_embeddings=64, attention_type="original_full")
    ids = torch.from_numpy(np.random.RandomState(0).randint(3, 99, (2, 8)))
    return transformers.BigBirdForMaskedLM(cfg), {"input_ids": ids}


# LayerNorm.gamma/beta concern the modules HF names "LayerNorm" (Data2VecText, BigBird, SEW-D);
# weight norm only SEW-D's positional conv (Data2VecAudio's has none); prefixes any family.
FAMILIES = {"data2vec_text": _text, "sew_d": _sew_d, "data2vec_audio": _audio, "big_bird": _big_bird}
CASES = [  # (family, spelling, format); a spelling is only tried where it changes keys
    ("data2vec_text", "gamma_beta", "st"), ("data2vec_text", "gamma_beta", "bin"),
    ("sew_d", "gamma_beta", "st"), ("sew_d", "weight_g_v", "st"), ("sew_d", "weight_g_v", "bin"),
    ("data2vec_audio", "orig_mod", "st"), ("data2vec_text", "ddp", "bin"),
    ("sew_d", "ddp_compiled_legacy", "bin"), ("sew_d", "ddp_compiled_legacy", "st"),
    ("big_bird", "gamma_beta", "st"), ("big_bird", "ddp", "bin"),
]


def test_data2vec_audio_has_no_weight_norm_keys(originals):
    assert not any("parametrizations" in k or "LayerNorm." in k for k in originals["data2vec_audio"][0].state_dict())


@pytest.fixture(scope="module")
def originals(tmp_path_factory):
    """family -> (HF model, inputs, its reference outputs, save_pretrained dir, zoo params)."""
    root = tmp_path_factory.mktemp("legacy")
    out = {}
    for family, build in FAMILIES.items():
        torch.manual_seed(0)
        model, inputs = build()
        model.eval()
        model.save_pretrained(root / family)
        with torch.no_grad():
            ref = model(**inputs)[0]
        _, params = zoo.from_pretrained(root / family)
        out[family] = (model, inputs, ref, root / family, flatten(params))
    return out


def _write(model, src_dir, dst, respell, fmt):
    dst.mkdir()
    shutil.copy(src_dir / "config.json", dst / "config.json")
    state = {respell(k): v.detach().clone().contiguous() for k, v in model.state_dict().items()}
    assert len(state) == len(model.state_dict())
    if fmt == "st":
        save_file(state, str(dst / "model.safetensors"), metadata={"format": "pt"})
    else:
        torch.save(state, dst / "pytorch_model.bin")
    return state


@pytest.mark.parametrize("family,spelling,fmt", CASES)
def test_respelled_checkpoint_loads_in_hf_and_converts_bit_identically(originals, tmp_path, family, spelling, fmt):
    model, inputs, ref, src_dir, want = originals[family]
    respell = SPELLINGS[spelling]
    state = _write(model, src_dir, tmp_path / "ckpt", respell, fmt)
    renamed = {k: respell(k) for k in model.state_dict() if respell(k) != k}
    assert renamed, f"{spelling} changes no key of {family}"

    hf, info = type(model).from_pretrained(tmp_path / "ckpt", output_loading_info=True)
    with torch.no_grad():
        got = hf.eval()(**inputs)[0]
    if spelling in PREFIXED:  # HF 5.23 keeps wrapper prefixes: nothing loads, all is initialised
        assert info["missing_keys"] and info["unexpected_keys"]
    else:
        assert not info["missing_keys"] and not info["unexpected_keys"], info
        assert torch.equal(got, ref)

    module, params = loaded = zoo.from_pretrained(tmp_path / "ckpt")
    flat = flatten(params)
    assert sorted(flat) == sorted(want)
    for path, value in want.items():
        assert flat[path].dtype == value.dtype and np.array_equal(np.asarray(flat[path]), np.asarray(value)), path
    report = loaded.report
    assert report.renamed == {old: today for today, old in renamed.items() if old in state}
    assert f"{len(renamed)} legacy keys renamed (" in report.summary()


def test_zoo_convert_prints_the_renames(originals, tmp_path, capsys):
    model, _, _, src_dir, want = originals["sew_d"]
    _write(model, src_dir, tmp_path / "ckpt", SPELLINGS["ddp_compiled_legacy"], "st")
    assert zoo_main(["convert", str(tmp_path / "ckpt"), str(tmp_path / "out")]) in (0, None)
    line = capsys.readouterr().out
    n_ln = sum(k.endswith(("LayerNorm.weight", "LayerNorm.bias")) for k in model.state_dict())
    n = len(model.state_dict())
    assert (f"{n} legacy keys renamed (_orig_mod. prefix x {n}, module. prefix x {n}, "
            f"LayerNorm.gamma -> LayerNorm.weight x {n_ln // 2}, LayerNorm.beta -> LayerNorm.bias x {n_ln // 2}, "
            "weight_g -> parametrizations.weight.original0 x 1, "
            "weight_v -> parametrizations.weight.original1 x 1)") in line, line
    _, params = zoo.from_pretrained(tmp_path / "out")
    assert all(np.array_equal(np.asarray(v), np.asarray(want[k])) for k, v in flatten(params).items())


def test_export_writes_todays_spelling(originals, tmp_path):
    model, _, _, src_dir, _ = originals["sew_d"]
    _write(model, src_dir, tmp_path / "ckpt", SPELLINGS["ddp_compiled_legacy"], "bin")
    module, params = zoo.from_pretrained(tmp_path / "ckpt")
    zoo.export_pytorch(tmp_path / "pt", module, params)
    from safetensors.numpy import load_file

    exported = load_file(str(tmp_path / "pt" / "model.safetensors"))
    assert sorted(exported) == sorted(model.state_dict())
    for key, value in model.state_dict().items():
        assert np.array_equal(exported[key], value.numpy()), key


@pytest.mark.parametrize("pair", [
    ("encoder.encoder.LayerNorm.weight", "encoder.encoder.LayerNorm.gamma"),
    ("encoder.pos_conv_embed.conv.parametrizations.weight.original0", "encoder.pos_conv_embed.conv.weight_g"),
    ("encoder.encoder.LayerNorm.bias", "module.encoder.encoder.LayerNorm.bias"),
    ("_orig_mod.encoder.encoder.LayerNorm.bias", "module.encoder.encoder.LayerNorm.beta"),
])
def test_two_spellings_of_one_key_is_an_error_naming_both(originals, tmp_path, pair):
    model, _, _, src_dir, _ = originals["sew_d"]
    state = {k: v.detach().clone().contiguous() for k, v in model.state_dict().items()}
    today = legacy_respelling(pair[0])[0]
    assert legacy_respelling(pair[1])[0] == today
    value = state.pop(today)
    state.update({key: value.clone() for key in pair})
    (tmp_path / "ckpt").mkdir()
    shutil.copy(src_dir / "config.json", tmp_path / "ckpt" / "config.json")
    save_file(state, str(tmp_path / "ckpt" / "model.safetensors"))
    with pytest.raises(KeyMappingError, match="two spellings of") as err:
        zoo.from_pretrained(tmp_path / "ckpt")
    assert repr(pair[0]) in str(err.value) and repr(pair[1]) in str(err.value) and repr(today) in str(err.value)


def test_respelling_rules():
    assert legacy_respelling("a.LayerNorm.gamma") == ("a.LayerNorm.weight", ("LayerNorm.gamma -> LayerNorm.weight",))
    assert legacy_respelling("a.LayerNorm.gamma_x")[0] == "a.LayerNorm.gamma_x"  # name boundary, as HF
    assert legacy_respelling("a.layer_norm.gamma")[0] == "a.layer_norm.gamma"  # HF renames LayerNorm only
    assert legacy_respelling("conv.weight_g")[0] == "conv.parametrizations.weight.original0"
    assert legacy_respelling("_orig_mod.module._orig_mod.x.weight")[0] == "x.weight"
    assert legacy_respelling("x.module.weight")[0] == "x.module.weight"  # prefixes only
    assert len(LEGACY_RENAMES) == 6
    report = ConversionReport(renamed={"_orig_mod.a.LayerNorm.gamma": "a.LayerNorm.weight",
                                       "_orig_mod.a.LayerNorm.beta": "a.LayerNorm.bias"})
    assert report.summary() == ("2 legacy keys renamed (_orig_mod. prefix x 2, LayerNorm.gamma -> LayerNorm.weight"
                                " x 1, LayerNorm.beta -> LayerNorm.bias x 1)")


def test_hf_has_no_other_legacy_renames_for_these_families():
    """The zoo's rules track HF 5.23: its ``legacy`` list and no per-family mapping."""
    from transformers.conversion_mapping import get_checkpoint_conversion_mapping

    legacy = get_checkpoint_conversion_mapping("legacy")
    sources = [p for t in legacy for p in t._original_source_patterns]
    assert sources[:4] == ["LayerNorm.gamma", "LayerNorm.beta", ".weight_g", ".weight_v"]
    assert all(p.startswith("^") and "language_model" in p for p in sources[4:])  # ALM only
    for name in ("data2vec", "data2vec-text", "data2vec-audio", "data2vec-vision", "big_bird", "groupvit",
                 "idefics", "sew-d", "Data2VecTextForMaskedLM", "SEWDModel", "IdeficsForVisionText2Text"):
        assert get_checkpoint_conversion_mapping(name) is None, name
