"""config.json values of the wrong type or range are refused before anything is built, in one
line naming the field (and config.json when read from a checkpoint)."""

import json

import pytest

from zoo.config import MAX_LAYERS, InvalidConfigError, UnsupportedConfigError
from zoo.models.big_bird import BigBirdConfig
from zoo.models.data2vec_audio import Data2VecAudioConfig
from zoo.models.data2vec_text import Data2VecTextConfig
from zoo.models.groupvit import GroupViTConfig
from zoo.models.idefics import IdeficsConfig
from zoo.models.sew_d import SEWDConfig
from zoo.pretrained import read_config
from zoo.registry import UnsupportedModelError

TEXT = {"model_type": "data2vec-text", "vocab_size": 100, "hidden_size": 32, "num_hidden_layers": 2,
        "num_attention_heads": 4, "intermediate_size": 37, "max_position_embeddings": 20}


@pytest.mark.parametrize("change,words", [
    ({"hidden_size": "32"}, "hidden_size='32' is invalid: expected an integer, got a string"),
    ({"hidden_size": 32.0}, "hidden_size=32.0 is invalid: expected an integer, got a number"),
    ({"hidden_size": True}, "expected an integer, got a boolean"),
    ({"num_hidden_layers": None}, "num_hidden_layers=None is invalid: expected an integer, got null"),
    ({"num_attention_heads": 0}, "num_attention_heads=0 is invalid: must be at least 1"),
    ({"intermediate_size": -1}, "intermediate_size=-1 is invalid: must not be negative"),
    ({"vocab_size": 2**62}, "beyond the int32 range"),
    ({"num_hidden_layers": MAX_LAYERS + 1}, f"more than {MAX_LAYERS} layers"),
    ({"hidden_dropout_prob": 1.5}, "a probability must lie in [0, 1]"),
    ({"layer_norm_eps": float("nan")}, "not a finite number"),
    ({"hidden_act": {}}, "hidden_act={} is invalid: expected a string, got an object"),
    ({"architectures": [["Data2VecTextForMaskedLM"]]}, "expected a list of strings or null, got a list of lists"),
    ({"architectures": "Data2VecTextForMaskedLM"}, "expected a list of strings or null, got a string"),
    ({"id2label": {"a": "positive"}}, "the key 'a' is not a class id"),
    ({"id2label": ["negative", "positive"]}, "expected an object mapping class ids to names"),
    ({"eos_token_id": "2"}, "eos_token_id='2' is invalid: expected an integer or a list of integers or null"),
    ({"pad_token_id": 100}, "the padding index must be a token id in [0, vocab_size=100)"),
    ({"pad_token_id": 19}, "positions start after pad_token_id=19"),
])
def test_text_config_values_are_checked(change, words):
    with pytest.raises(InvalidConfigError) as info:
        Data2VecTextConfig.from_dict({**TEXT, **change})
    message = str(info.value)
    assert words in message and "\n" not in message and len(message) < 200, message
    assert message.startswith("data2vec-text config field ")


def test_ints_stand_for_floats_and_values_round_trip():
    config = Data2VecTextConfig.from_dict({**TEXT, "layer_norm_eps": 1, "hidden_dropout_prob": 0})
    assert config.layer_norm_eps == 1.0 and type(config.layer_norm_eps) is float
    assert type(config.hidden_dropout_prob) is float
    again = Data2VecTextConfig.from_dict(json.loads(config.to_json_string()))
    assert again == config
    assert Data2VecTextConfig.from_dict({**TEXT, "eos_token_id": [2, 3]}).eos_token_id == (2, 3)


def test_replace_checks_too():
    config = Data2VecTextConfig.from_dict(TEXT)
    with pytest.raises(InvalidConfigError, match="num_hidden_layers='2'"):
        config.replace(num_hidden_layers="2")


@pytest.mark.parametrize("cls,data,words", [
    (BigBirdConfig, {"block_size": 0}, "block_size=0 is invalid: must be at least 1"),
    (BigBirdConfig, {"num_random_blocks": -1}, "num_random_blocks=-1 is invalid: must not be negative"),
    (Data2VecAudioConfig, {"conv_stride": [5, 0, 2]}, "conv_stride=[5, 0, 2] is invalid: must be at least 1"),
    (Data2VecAudioConfig, {"conv_dim": [512, "512"]}, "expected a list of integers, got a list of integers and strings"),
    (Data2VecAudioConfig, {"layerdrop": -0.1}, "layerdrop=-0.1 is invalid: a probability must lie in [0, 1]"),
    (Data2VecAudioConfig, {"layer_norm_eps": -1e-5}, "layer_norm_eps=-1e-05 is invalid: must not be negative"),
    (Data2VecAudioConfig, {"mask_time_prob": 2}, "a probability must lie in [0, 1]"),
    (SEWDConfig, {"squeeze_factor": 0}, "squeeze_factor=0 is invalid: must be at least 1"),
    (IdeficsConfig, {"cross_layer_interval": 0}, "cross_layer_interval=0 is invalid"),
    (IdeficsConfig, {"vision_config": {"embed_dim": "768"}}, "idefics_vision config field embed_dim='768' is invalid"),
    (IdeficsConfig, {"perceiver_config": {"resampler_depth": 5000}}, "more than 1000 layers"),
    (GroupViTConfig, {"vision_config": {"depths": [6, 3, -3]}}, "depths=[6, 3, -3] is invalid: must not be negative"),
    (GroupViTConfig, {"text_config": {"vocab_size": 0}}, "vocab_size=0 is invalid: must be at least 1"),
])
def test_every_family_checks_its_fields(cls, data, words):
    with pytest.raises(InvalidConfigError) as info:
        cls.from_dict({"model_type": cls.model_type, **data})
    assert words in str(info.value), str(info.value)


def test_what_may_be_negative_or_zero_stays_accepted():
    assert SEWDConfig.from_dict({"model_type": "sew-d", "max_relative_positions": -1}).position_buckets == 256
    assert IdeficsConfig.from_dict({"model_type": "idefics", "additional_vocab_size": 0}).additional_vocab_size == 0
    vision = GroupViTConfig.from_dict({"model_type": "groupvit"}).vision
    assert vision.num_group_tokens[-1] == 0


@pytest.mark.parametrize("data,error,words", [
    ({**TEXT, "hidden_size": "32"}, InvalidConfigError, "hidden_size='32' is invalid"),
    ({**TEXT, "model_type": ["data2vec-text"]}, UnsupportedModelError, "model_type ['data2vec-text'] is not"),
    ({**TEXT, "model_type": 7}, UnsupportedModelError, "model_type 7 is not supported"),
    ({**TEXT, "position_embedding_type": "rotary"}, UnsupportedConfigError, "is not supported"),
])
def test_read_config_names_the_file(tmp_path, data, error, words):
    (tmp_path / "config.json").write_text(json.dumps(data))
    with pytest.raises(error) as info:
        read_config(tmp_path)
    message = str(info.value)
    assert message.startswith(f"{tmp_path / 'config.json'}: ") and words in message, message


def test_convert_cli_refuses_a_bad_config_in_one_line(tmp_path, capsys):
    from zoo.cli import main

    source = tmp_path / "source"
    source.mkdir()
    (source / "config.json").write_text(json.dumps({**TEXT, "num_attention_heads": "4"}))
    (source / "model.safetensors").write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{}      ")
    code = main(["convert", str(source), str(tmp_path / "out")])
    err = capsys.readouterr().err.strip()
    assert code != 0 and not (tmp_path / "out").exists()
    assert len(err.splitlines()) == 1 and "config.json" in err and "num_attention_heads='4'" in err, err
