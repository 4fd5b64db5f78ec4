"""Input validation: bad ranks, dtypes, shapes and lengths give one line naming the argument.

Every check runs at trace time (``jax.eval_shape``: nothing compiles, nothing is
allocated); ``zoo.check_inputs`` checks values on the host.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import zoo
from zoo.models.big_bird import BigBirdConfig
from zoo.models.data2vec_audio import Data2VecAudioConfig
from zoo.models.data2vec_text import Data2VecTextConfig
from zoo.models.data2vec_vision import Data2VecVisionConfig
from zoo.models.groupvit import GroupViTConfig
from zoo.models.idefics import IdeficsConfig
from zoo.models.sew_d import SEWDConfig

S = jax.ShapeDtypeStruct
I32, F32 = jnp.int32, jnp.float32

TEXT = dict(vocab_size=99, hidden_size=32, num_hidden_layers=1, num_attention_heads=4, intermediate_size=37,
            type_vocab_size=2)
AUDIO = dict(vocab_size=12, hidden_size=32, num_hidden_layers=1, num_attention_heads=4, intermediate_size=37,
             conv_dim=(16, 16, 24), conv_stride=(5, 2, 2), conv_kernel=(10, 3, 3), num_conv_pos_embeddings=4,
             num_conv_pos_embedding_groups=2, num_labels=3)
CONFIGS = {
    "data2vec_text": Data2VecTextConfig.from_dict(dict(TEXT, max_position_embeddings=20)),  # 18 positions
    "big_bird": BigBirdConfig.from_dict(dict(TEXT, max_position_embeddings=64, block_size=8, num_random_blocks=2,
                                             attention_type="original_full")),
    "data2vec_audio": Data2VecAudioConfig.from_dict(dict(AUDIO, conv_pos_kernel_size=5)),
    "sew_d": SEWDConfig.from_dict(dict(AUDIO, squeeze_factor=2, position_buckets=8, max_position_embeddings=64)),
    "data2vec_vision": Data2VecVisionConfig.from_dict(dict(
        hidden_size=32, num_hidden_layers=4, num_attention_heads=4, intermediate_size=37, image_size=32,
        patch_size=4, use_relative_position_bias=True, out_indices=[1, 2, 3, 4], num_labels=5)),
    "groupvit": GroupViTConfig.from_dict(dict(
        text_config=dict(vocab_size=99, hidden_size=32, intermediate_size=37, num_hidden_layers=1,
                         num_attention_heads=4, max_position_embeddings=16, eos_token_id=98),
        vision_config=dict(hidden_size=32, intermediate_size=37, num_attention_heads=4, image_size=32, patch_size=4,
                           num_hidden_layers=2, depths=[1, 1], num_group_tokens=[8, 0], num_output_groups=[8, 8]),
        projection_dim=16, projection_intermediate_dim=24)),
    "idefics": IdeficsConfig.from_dict(dict(
        vocab_size=60, additional_vocab_size=2, hidden_size=16, intermediate_size=24, num_hidden_layers=1,
        num_attention_heads=2, max_position_embeddings=64, pad_token_id=0,
        vision_config=dict(embed_dim=12, image_size=16, patch_size=4, num_hidden_layers=1, num_attention_heads=2,
                           intermediate_size=20),
        perceiver_config=dict(resampler_n_latents=3, resampler_depth=1, resampler_n_heads=2,
                              resampler_head_dim=6))),
}
TEXT_IN = dict(input_ids=S((2, 7), I32), attention_mask=S((2, 7), I32), token_type_ids=S((2, 7), I32))
AUDIO_IN = dict(input_values=S((2, 1600), F32), attention_mask=S((2, 1600), I32))
IMAGE_IN = dict(pixel_values=S((2, 3, 32, 32), F32))
IDEFICS_IN = dict(input_ids=S((2, 7), I32), attention_mask=S((2, 7), I32), pixel_values=S((2, 1, 3, 16, 16), F32),
                  image_attention_mask=S((2, 7, 1), I32))
VALID = {"data2vec_text": TEXT_IN, "big_bird": TEXT_IN, "data2vec_audio": AUDIO_IN, "sew_d": AUDIO_IN,
         "data2vec_vision": IMAGE_IN,
         "groupvit": dict(input_ids=S((2, 7), I32), attention_mask=S((2, 7), I32), **IMAGE_IN),
         "idefics": IDEFICS_IN}


def trace(family, architecture=None, **inputs):
    """Trace ``init`` + ``apply`` of ``family`` on abstract ``inputs`` (shapes only, no compile)."""
    module = zoo.build_model(CONFIGS[family], architecture)
    return jax.eval_shape(lambda inp: module.init_with_output(jax.random.key(0), **inp), inputs)


def error(family, architecture=None, **inputs) -> str:
    with pytest.raises(ValueError) as info:
        trace(family, architecture, **inputs)
    message = str(info.value)
    assert "\n" not in message, message
    return message


@pytest.mark.parametrize("family", sorted(VALID))
def test_valid_inputs_pass(family):
    trace(family, **VALID[family])


BAD = [  # (family, changed inputs, words the message must contain)
    # text: rank, dtype, matching shapes, length beyond the position table
    ("data2vec_text", dict(input_ids=S((7,), I32)), ["input_ids", "integer array of rank 2 [batch, length]", "(7,)"]),
    ("data2vec_text", dict(input_ids=S((2, 7), F32)), ["input_ids", "integer", "float32"]),
    ("data2vec_text", dict(attention_mask=S((2, 5), I32)), ["attention_mask", "(2, 7)", "(2, 5)"]),
    ("data2vec_text", dict(token_type_ids=S((2, 6), I32)), ["token_type_ids", "(2, 7)", "(2, 6)"]),
    ("data2vec_text", dict(token_type_ids=S((2, 7), F32)), ["token_type_ids", "integer"]),
    ("data2vec_text", dict(position_ids=S((2, 5), I32)), ["position_ids", "(2, 7)", "(2, 5)"]),
    ("data2vec_text", dict(input_ids=S((2, 19), I32), attention_mask=None, token_type_ids=None),
     ["input_ids", "19 positions", "max_position_embeddings=20", "pad_token_id"]),
    ("big_bird", dict(input_ids=S((2, 7, 1), I32)), ["input_ids", "integer array of rank 2 [batch, length]", "(2, 7, 1)"]),
    ("big_bird", dict(attention_mask=S((3, 7), I32)), ["attention_mask", "(2, 7)", "(3, 7)"]),
    ("big_bird", dict(input_ids=S((2, 65), I32), attention_mask=None, token_type_ids=None),
     ["input_ids", "65 positions", "max_position_embeddings=64"]),
    ("big_bird", dict(input_ids=None, inputs_embeds=S((2, 7, 31), F32)), ["inputs_embeds", "[batch, length, 32]"]),
    # audio: int16 samples, rank, mask shape, too short
    ("data2vec_audio", dict(input_values=S((2, 1600), jnp.int16)), ["input_values", "float", "int16"]),
    ("data2vec_audio", dict(input_values=S((1600,), F32), attention_mask=None), ["input_values", "[batch, samples]"]),
    ("data2vec_audio", dict(attention_mask=S((2, 1599), I32)), ["attention_mask", "(2, 1600)", "(2, 1599)"]),
    ("data2vec_audio", dict(input_values=S((2, 20), F32), attention_mask=None), ["input_values", "20 samples"]),
    ("data2vec_audio", dict(mask_time_indices=S((2, 3), jnp.bool_)), ["mask_time_indices", "[batch, frames]"]),
    ("sew_d", dict(input_values=S((2, 1600), jnp.int16)), ["input_values", "float", "int16"]),
    ("sew_d", dict(attention_mask=S((2, 800), I32)), ["attention_mask", "(2, 1600)", "(2, 800)"]),
    ("sew_d", dict(input_values=S((2, 50), F32), attention_mask=None), ["input_values", "60", "2 frames"]),
    # images: HWC, wrong channels, integer pixels, rank, size without interpolation
    ("data2vec_vision", dict(pixel_values=S((2, 32, 32, 3), F32)), ["pixel_values", "channels-first", "[batch, channels=3,"]),
    ("data2vec_vision", dict(pixel_values=S((2, 1, 32, 32), F32)), ["pixel_values", "num_channels=3"]),
    ("data2vec_vision", dict(pixel_values=S((2, 3, 32, 32), jnp.uint8)), ["pixel_values", "floating", "uint8"]),
    ("data2vec_vision", dict(pixel_values=S((3, 32, 32), F32)), ["pixel_values", "[batch, channels, height, width]", "num_channels=3"]),
    ("groupvit", dict(pixel_values=S((2, 32, 32, 3), F32)), ["pixel_values", "channels-first"]),
    ("groupvit", dict(pixel_values=S((2, 3, 48, 48), F32)), ["pixel_values", "32x32", "interpolate_pos_encoding"]),
    ("groupvit", dict(attention_mask=S((2, 6), I32)), ["attention_mask", "(2, 7)", "(2, 6)"]),
    ("groupvit", dict(input_ids=S((2, 7), F32)), ["input_ids", "integer"]),
    ("groupvit", dict(input_ids=S((2, 17), I32), attention_mask=None), ["input_ids", "17 positions",
                                                                        "max_position_embeddings=16"]),
    # IDEFICS: text, images, image_attention_mask
    ("idefics", dict(input_ids=S((2, 7), F32)), ["input_ids", "integer"]),
    ("idefics", dict(attention_mask=S((2, 6), I32)), ["attention_mask", "(2, 7)"]),
    ("idefics", dict(pixel_values=S((2, 1, 16, 16, 3), F32)), ["pixel_values", "channels-first"]),
    ("idefics", dict(pixel_values=S((2, 1, 3, 16, 16), jnp.uint8)), ["pixel_values", "float"]),
    ("idefics", dict(image_attention_mask=S((2, 6, 1), I32)), ["image_attention_mask", "(2, 7, 1)"]),
    ("idefics", dict(input_ids=None, inputs_embeds=S((2, 7, 15), F32)), ["inputs_embeds", "[batch, length, 16]"]),
    ("idefics", dict(position_ids=S((2, 5), I32)), ["position_ids", "(?, 7)", "(2, 5)"]),
]


@pytest.mark.parametrize("family,changes,words", BAD, ids=lambda v: v if isinstance(v, str) else None)
def test_bad_inputs_name_the_argument(family, changes, words):
    inputs = {k: v for k, v in dict(VALID[family], **changes).items() if v is not None}
    message = error(family, **inputs)
    for word in words:
        assert word in message, message


@pytest.mark.parametrize("family", ["data2vec_text", "big_bird"])
def test_every_head_validates(family):
    """Every head runs the body's checks (multiple choice on [B, C, L] inputs)."""
    for name in sorted(zoo.registry.get_family(CONFIGS[family].model_type).architectures):
        if name.endswith("MultipleChoice"):
            bad = dict(input_ids=S((2, 2, 7), I32), attention_mask=S((2, 2, 6), I32))
        else:
            bad = dict(input_ids=S((2, 7), I32), attention_mask=S((2, 6), I32))
        assert "attention_mask" in error(family, name, **bad), name


@pytest.mark.parametrize("family", ["data2vec_audio", "sew_d"])
def test_every_audio_head_validates(family):
    for name in sorted(zoo.registry.get_family(CONFIGS[family].model_type).architectures):
        assert "int16" in error(family, name, input_values=S((2, 1600), jnp.int16)), name


def test_every_vision_head_validates():
    for name in sorted(zoo.registry.get_family("data2vec-vision").architectures):
        assert "channels-first" in error("data2vec_vision", name, pixel_values=S((2, 32, 32, 3), F32)), name
    bad = dict(pixel_values=S((2, 3, 32, 32), F32), labels=S((2, 32, 32), F32))
    assert "labels" in error("data2vec_vision", "Data2VecVisionForSemanticSegmentation", **bad)


def test_kv_cache_mask_spans_the_cache_and_the_cache_fits_the_positions():
    cfg = Data2VecTextConfig.from_dict(dict(TEXT, max_position_embeddings=20, is_decoder=True))
    module = zoo.build_model(cfg, "Data2VecTextForCausalLM")
    ids, key = S((2, 3), I32), jax.random.key(0)
    params = jax.eval_shape(lambda: module.init(key, input_ids=jnp.zeros((2, 3), I32)))

    def step(cache_length, mask_length):
        cache = module.init_cache(2, cache_length)
        return jax.eval_shape(lambda p, i, m: module.apply(p, input_ids=i, attention_mask=m, past_key_values=cache,
                                                           use_cache=True), params, ids, S((2, mask_length), I32))

    step(10, 10)  # the mask spans the cache's max_length, not the 3 new ids
    with pytest.raises(ValueError, match=r"attention_mask must have shape \(2, 10\) \[batch, cache max_length\]"):
        step(10, 3)
    with pytest.raises(ValueError, match="past_key_values .* 19 positions"):
        step(19, 19)


def test_check_inputs_catches_values():
    text = CONFIGS["data2vec_text"]
    ok = np.array([[0, 5, 98, 2]])
    zoo.check_inputs(text, input_ids=ok, attention_mask=np.ones_like(ok), token_type_ids=np.zeros_like(ok))
    with pytest.raises(ValueError, match=r"input_ids must be in \[0, 99\) \(vocab_size=99\), got values 0..99"):
        zoo.check_inputs(text, input_ids=np.array([[0, 99]]))
    with pytest.raises(ValueError, match=r"input_ids must be in \[0, 99\).*-1"):
        zoo.check_inputs(text, input_ids=np.array([[-1, 3]]))
    with pytest.raises(ValueError, match="attention_mask must hold only 0 and 1"):
        zoo.check_inputs(text, input_ids=ok, attention_mask=np.full_like(ok, 2))
    with pytest.raises(ValueError, match=r"token_type_ids must be in \[0, 2\)"):
        zoo.check_inputs(text, input_ids=ok, token_type_ids=np.full_like(ok, 2))
    with pytest.raises(ValueError, match=r"attention_mask must have shape \(1, 4\) \[batch, length\]"):
        zoo.check_inputs(text, input_ids=ok, attention_mask=np.ones((1, 3), np.int32))
    with pytest.raises(ValueError, match="input_ids must be an integer"):
        zoo.check_inputs(text, input_ids=ok.astype(np.float32))
    # IDEFICS: the additional vocabulary counts; GroupViT: the text tower's vocabulary
    idefics = CONFIGS["idefics"]
    zoo.check_inputs(idefics, input_ids=np.array([[0, 61]]))
    with pytest.raises(ValueError, match=r"\[0, 62\)"):
        zoo.check_inputs(idefics, input_ids=np.array([[0, 62]]))
    with pytest.raises(ValueError, match=r"\[0, 99\)"):
        zoo.check_inputs(CONFIGS["groupvit"], input_ids=np.array([[120]]))
    # audio and images: finite floats, channels first; a model works as well as a config
    audio = zoo.build_model(CONFIGS["data2vec_audio"])
    wave = np.zeros((1, 1600), np.float32)
    zoo.check_inputs(audio, input_values=wave)
    with pytest.raises(ValueError, match="input_values holds 1 non-finite"):
        zoo.check_inputs(audio, input_values=np.where(np.arange(1600) == 5, np.nan, wave).astype(np.float32))
    with pytest.raises(ValueError, match=r"input_values must be \[batch, samples\], a float array.*int16"):
        zoo.check_inputs(audio, input_values=wave.astype(np.int16))
    vision = CONFIGS["data2vec_vision"]
    with pytest.raises(ValueError, match="pixel_values holds 1 non-finite"):
        zoo.check_inputs(vision, pixel_values=_one_inf())
    with pytest.raises(ValueError, match="channels-first"):
        zoo.check_inputs(vision, pixel_values=np.zeros((1, 32, 32, 3), np.float32))


def _one_inf():
    x = np.zeros((1, 3, 32, 32), np.float32)
    x[0, 1, 2, 3] = np.inf
    return x


def test_checks_add_nothing_to_the_compiled_function():
    """Every check reads static shapes and dtypes only: traced, it adds no operation."""
    from zoo.nn import inputs

    text, audio = CONFIGS["data2vec_text"], CONFIGS["data2vec_audio"]
    calls = [
        (lambda i, m: inputs.check_text(text, i, m, i, None), (S((2, 7), I32), S((2, 7), I32))),
        (lambda i, m: (inputs.check_ids("input_ids", i), inputs.check_mask("attention_mask", m, (2, 7))),
         (S((2, 7), I32), S((2, 7), F32))),
        (lambda x, m: inputs.check_audio(audio, x, m), (S((2, 1600), F32), S((2, 1600), I32))),
        (lambda x: inputs.check_images(x, 3, image_size=(32, 32)), (S((2, 3, 32, 32), F32),)),
    ]
    for fn, args in calls:
        assert jax.make_jaxpr(fn)(*args).eqns == []
    # and a whole model lowers to the same program whether or not a check had something to say
    module = zoo.build_model(text)
    ids = jnp.zeros((2, 7), I32)
    params = jax.eval_shape(lambda: module.init(jax.random.key(0), input_ids=ids))
    hlo = lambda **kw: jax.jit(lambda p, i, m: module.apply(p, input_ids=i, attention_mask=m, **kw)).lower(
        params, ids, ids).as_text()
    assert hlo() == hlo(position_ids=None)


def test_zoo_run_refuses_out_of_range_ids(capsys):
    """``zoo run --input-ids`` checks the ids (it used to fold them into the vocabulary)."""
    from zoo.assets import TINY_TEXT_CHECKPOINT
    from zoo.cli import main

    assert main(["run", str(TINY_TEXT_CHECKPOINT), "--input-ids", "0 5 100000"]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("zoo: error: --input-ids: input_ids must be in [0, ") and "got values 0..100000" in err
    assert main(["run", str(TINY_TEXT_CHECKPOINT), "--input-ids", "0 5 -3"]) == 1
    assert "got values -3..5" in capsys.readouterr().err


@pytest.mark.parametrize("family,architecture,labels,words", [
    ("data2vec_text", "Data2VecTextForMaskedLM", S((2, 6), I32), ["labels", "(2, 7)", "(2, 6)"]),
    ("data2vec_text", "Data2VecTextForTokenClassification", S((2, 7), F32), ["labels", "integer"]),
    ("big_bird", "BigBirdForCausalLM", S((2, 7, 1), I32), ["labels", "[batch, length]"]),
    ("data2vec_audio", "Data2VecAudioForCTC", S((3, 5), I32), ["labels", "[batch, target_length]", "(2, ?)"]),
    ("sew_d", "SEWDForCTC", S((2, 5), F32), ["labels", "integer"]),
])
def test_bad_labels_name_the_argument(family, architecture, labels, words):
    message = error(family, architecture, **VALID[family], labels=labels)
    for word in words:
        assert word in message, message


def test_multiple_choice_labels():
    inputs = dict(input_ids=S((2, 3, 7), I32), attention_mask=S((2, 3, 7), I32))
    trace("data2vec_text", "Data2VecTextForMultipleChoice", **inputs, labels=S((2,), I32))
    assert "(2,)" in error("data2vec_text", "Data2VecTextForMultipleChoice", **inputs, labels=S((3,), I32))


def test_out_of_range_ids_inside_jit_are_not_errors():
    """What the docs say happens without check_inputs: NaN rows for ids >= vocab_size, a
    negative id counts from the end (jnp.take's default modes)."""
    module = zoo.build_model(CONFIGS["data2vec_text"])
    variables = zoo.init_params(module, 0)
    run = jax.jit(lambda v, i: module.apply(v, input_ids=i).last_hidden_state)
    ids = jnp.array([[0, 5, 7, 2]])
    assert not jnp.isnan(run(variables, ids)).any()
    assert jnp.isnan(run(variables, ids.at[0, 2].set(99))).any()
    np.testing.assert_array_equal(run(variables, ids.at[0, 2].set(-1)), run(variables, ids.at[0, 2].set(98)))
