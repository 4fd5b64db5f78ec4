"""Architecture presets (configs/*.json): each loads, and the zoo builds exactly the HF
architecture at the real sizes (parameter counts equal to HF PyTorch's, built on the meta
device; nothing of the real size is ever allocated)."""

from __future__ import annotations

import functools
import json
import math

import jax
import numpy as np
import pytest

import zoo
from zoo import presets
from zoo.tree import flatten, flatten_variables
from zoo.initialization import param_shapes
from zoo.pretrained import build_model
from zoo.registry import get_family

PRESETS = presets.list_presets()

# The known checkpoints the presets must cover (hub repo model names, lower case).
REQUIRED = {
    "data2vec-text-base",
    "data2vec-audio-base", "data2vec-audio-base-960h", "data2vec-audio-large", "data2vec-audio-large-960h",
    "data2vec-vision-base", "data2vec-vision-base-ft1k", "data2vec-vision-large", "data2vec-vision-large-ft1k",
    "bigbird-roberta-base", "bigbird-roberta-large",
    "groupvit-gcc-yfcc", "groupvit-gcc-redcaps",
    "idefics-9b", "idefics-9b-instruct", "idefics-80b", "idefics-80b-instruct",
    "sew-d-tiny-100k", "sew-d-small-100k", "sew-d-mid-400k", "sew-d-base-plus-400k",
}


def _raw(name: str) -> dict:
    return json.loads(presets.preset_path(name).read_text())


def _structure_key(name: str) -> str:
    """Presets whose config.json differ only in the repo name (a checkpoint and its -instruct /
    other-data twin) share one architecture: count it once."""
    data = _raw(name)
    data.pop("_name_or_path", None)
    return json.dumps(data, sort_keys=True)


@functools.lru_cache(maxsize=None)
def _zoo_count(key: str) -> int:
    config = get_family(json.loads(key)["model_type"]).config_class.from_dict(json.loads(key))
    return sum(math.prod(s) for s in param_shapes(build_model(config), state=False).values())


@functools.lru_cache(maxsize=None)
def _hf_count(name: str) -> int:
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    config = transformers.AutoConfig.from_pretrained(str(presets.preset_path(name)))
    with torch.device("meta"):
        model = getattr(transformers, config.architectures[0])(config)
    return sum(p.numel() for p in model.parameters())


def test_known_checkpoints_are_covered():
    assert REQUIRED <= set(PRESETS), sorted(REQUIRED - set(PRESETS))
    assert len(PRESETS) == len(set(PRESETS))


@pytest.mark.parametrize("name", PRESETS)
def test_preset_loads_and_validates(name):
    config = presets.load_preset(name)
    data = _raw(name)
    family = get_family(data["model_type"])
    assert isinstance(config, family.config_class)
    # named after the hub repo (lower case); the repo id resolves to the same preset
    repo = data["_name_or_path"]
    assert repo.rsplit("/", 1)[1].lower() == name
    assert presets.load_preset(repo) == config
    assert len(data["architectures"]) == 1 and data["architectures"][0] in family.architectures
    assert type(build_model(config)).__name__ == data["architectures"][0]


@pytest.mark.parametrize("name", PRESETS)
def test_parameter_count_equals_hf(name):
    """The zoo's parameters (counted abstractly) equal HF PyTorch's for the same config.json."""
    assert _zoo_count(_structure_key(name)) == _hf_count(name)


def test_init_builds_random_weights_and_runs():
    # the real architecture at 2 of its 12 layers (a full-depth init spends ~15 s compiling on a CPU)
    model, params = zoo.init("data2vec-audio-base", rng=jax.random.key(1), num_hidden_layers=2)
    assert type(model).__name__ == "Data2VecAudioModel" and model.config.hidden_size == 768
    flat = flatten_variables(params)
    assert {k: tuple(v.shape) for k, v in flat.items()} == param_shapes(model)
    assert all(v.dtype == np.float32 for v in flat.values())
    # 93.2M (HF's count for the full model) less 10 encoder layers of 7,087,872 parameters
    assert sum(v.size for v in flat.values()) == _zoo_count(_structure_key("data2vec-audio-base")) - 10 * 7_087_872
    waveform = np.random.default_rng(0).standard_normal((1, 1600)).astype(np.float32)
    out = jax.jit(model.apply)(params, input_values=waveform)
    assert out.last_hidden_state.shape == (1, 4, 768)
    assert np.isfinite(np.asarray(out.last_hidden_state)).all()


def test_init_takes_a_config_overrides_and_a_head():
    config = presets.load_preset("sew-d-tiny-100k", num_hidden_layers=2)
    assert config.num_hidden_layers == 2 and config.hidden_size == 384
    assert presets.load_preset("asapp/sew-d-tiny-100k").replace(num_hidden_layers=2) == config
    module = build_model(config, "SEWDForCTC")
    assert type(module).__name__ == "SEWDForCTC"
    shapes = param_shapes(module)
    assert shapes["lm_head/kernel"] == (384, 32)
    assert any("/layer_1/" in k for k in shapes) and not any("/layer_2/" in k for k in shapes)
    with pytest.raises(zoo.UnsupportedConfigError, match="num_attention_heads"):
        presets.load_preset("sew-d-tiny-100k", num_attention_heads=5)
    with pytest.raises(TypeError, match="SEWDConfig has no field 'num_layers'"):
        presets.load_preset("sew-d-tiny-100k", num_layers=2)
    # a dict updates a sub-config key by key
    small = presets.load_preset("idefics-9b", num_hidden_layers=4, vision_config={"num_hidden_layers": 2})
    assert (small.vision.num_hidden_layers, small.vision.embed_dim, small.num_cross_layers) == (2, 1280, 1)
    with pytest.raises(zoo.UnsupportedModelError, match="not a sew-d architecture"):
        zoo.init(config, architecture="BigBirdModel")


def test_unknown_preset_names_close_ones():
    with pytest.raises(presets.UnknownPresetError, match="did you mean 'data2vec-audio-base'") as info:
        zoo.init("data2vec-audio-bas")
    assert isinstance(info.value, KeyError)
    assert "available:" in str(info.value) and not str(info.value).startswith("'")
    with pytest.raises(KeyError, match="unknown preset 'no-such-model'"):
        presets.load_preset("no-such-model")


def test_presets_directory_can_be_moved(tmp_path, monkeypatch):
    (tmp_path / "mine.json").write_text(presets.preset_path("sew-d-tiny-100k").read_text())
    (tmp_path / "recipe.json").write_text(json.dumps({"learning_rate": 1e-4}))  # not a preset
    monkeypatch.setenv(presets.ENV_VAR, str(tmp_path))
    assert presets.list_presets() == ["mine"]
    assert presets.load_preset("mine").hidden_size == 384
    monkeypatch.setenv(presets.ENV_VAR, str(tmp_path / "missing"))
    with pytest.raises(FileNotFoundError, match=presets.ENV_VAR):
        presets.load_preset("mine")
