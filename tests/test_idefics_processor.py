"""zoo.preprocessing.IdeficsProcessor / IdeficsImageProcessor against HF transformers' IdeficsProcessor,
field by field, on a Llama tokenizer trained at test time with IDEFICS' special tokens."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import pytest

from zoo.preprocessing import IdeficsImageProcessor, IdeficsProcessor, Tokenizer

transformers = pytest.importorskip("transformers")
tokenizers = pytest.importorskip("tokenizers")
torch = pytest.importorskip("torch")
Image = pytest.importorskip("PIL.Image")
transformers.logging.set_verbosity_error()

from tokenizers import models, pre_tokenizers, trainers  # noqa: E402

SIZE = 16
CORPUS = ["User: what is in this image? Assistant: two kittens on grass.",
          "Describe the picture. A red square and a blue circle.",
          "Compare both images, then answer with one word."] * 4
IDEFICS_TOKENS = ["<fake_token_around_image>", "<image>", "<end_of_utterance>"]


def _hf_tokenizer():
    specials = ["<unk>", "<s>", "</s>"] + [f"<0x{i:02X}>" for i in range(256)]
    tok = tokenizers.Tokenizer(models.BPE(byte_fallback=True))
    tok.pre_tokenizer = pre_tokenizers.Metaspace()
    tok.train_from_iterator(CORPUS, trainers.BpeTrainer(vocab_size=400, special_tokens=specials))
    spec = json.loads(tok.to_str())["model"]
    merges = [tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in spec["merges"]]
    hf = transformers.LlamaTokenizerFast(vocab=spec["vocab"], merges=merges, add_bos_token=True,
                                         pad_token="<unk>", extra_special_tokens=IDEFICS_TOKENS)
    return hf


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """(directory, HF processor loaded from it, ours loaded from it)."""
    directory = tmp_path_factory.mktemp("idefics")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        image_processor = transformers.IdeficsImageProcessor(image_size=SIZE)
        transformers.IdeficsProcessor(image_processor, _hf_tokenizer()).save_pretrained(directory)
        hf = transformers.IdeficsProcessor.from_pretrained(directory)
    return directory, hf, IdeficsProcessor.from_pretrained(directory)


def _img(h, w, seed):
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8))


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    folder = tmp_path_factory.mktemp("images")
    pil = [_img(23, 31, 0), _img(40, 17, 1), _img(16, 16, 2), _img(9, 50, 3)]
    path = folder / "photo.png"
    _img(33, 21, 4).save(path)
    rgba = Image.fromarray(np.random.default_rng(5).integers(0, 256, (20, 30, 4), dtype=np.uint8), "RGBA")
    return {"pil": pil, "path": path, "rgba": rgba,
            "uint8": np.asarray(_img(27, 19, 6)),
            "float": np.random.default_rng(7).random((18, 25, 3)).astype(np.float32),
            "chw": np.moveaxis(np.asarray(_img(21, 24, 8)), -1, 0)}


def _for_hf(prompt):
    """HF takes PIL images where we take paths (we open them with load_image; so does the test)."""
    if isinstance(prompt, list) and prompt and isinstance(prompt[0], list):
        return [_for_hf(p) for p in prompt]
    return [Image.open(item).convert("RGB") if isinstance(item, Path) else item for item in prompt]


def _check(hf, ours, prompts, **kw):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        # a bare string is one text item for us; HF iterates its characters (dropping every space)
        want = hf(text=[prompts] if isinstance(prompts, str) else _for_hf(prompts), return_tensors="pt", **kw)
        got = ours(prompts, **kw)
    assert list(got) == ["input_ids", "attention_mask", "pixel_values", "image_attention_mask"]
    for key in got:
        ref = want[key].numpy()
        assert got[key].dtype == ref.dtype, (key, got[key].dtype, ref.dtype)
        assert got[key].shape == ref.shape, (key, got[key].shape, ref.shape)
        if key == "pixel_values":
            np.testing.assert_allclose(got[key], ref, atol=1e-5, rtol=0)
        else:
            np.testing.assert_array_equal(got[key], ref, err_msg=key)
    return got


def test_tokenizer_is_the_checkpoints(saved):
    directory, hf, ours = saved
    assert ours.tokenizer.padding_side == hf.tokenizer.padding_side == "left"
    assert ours.image_token_id == hf.image_token_id
    assert ours.image_processor.image_size == hf.image_processor.image_size == SIZE
    assert ours.default_image_dims == hf.default_image_dims
    assert hf.tokenizer_was_trained_with_end_of_utterance_token is False  # HF 5.23: so None means False


def test_prompt_shapes_match_hf(saved, images):
    _, hf, ours = saved
    a, b, c, d = images["pil"]
    cases = [
        (["User: hello there, no image."], {}),                                       # text only
        ([a, "What is this?"], {}),                                                    # image first
        (["Look at this:", a], {}),                                                    # image last
        (["User:", a, b, "Compare them.\nAssistant:"], {}),                            # two consecutive images
        (["A", a, "then", b, "and", c, "end."], {}),                                   # separated by text
        ([["User:", a, "Describe."], ["User:", b, c, d, "Compare all."], ["Only text here."]], {}),
        (["User:", "hello", a, "Assistant:", "ok", "more"], dict(add_end_of_utterance_token=True)),
        (["User:", "hello", a, "Assistant:", "ok"], dict(add_end_of_utterance_token=False)),
        ([["User:", a, "Describe this image please."], ["Hi", b, c]], dict(padding="max_length", max_length=40,
                                                                           truncation=True)),
        ([["User:", a, b, "Describe this image please with many words."], ["Hi", c]],
         dict(padding="max_length", max_length=12, truncation=True)),                # truncation cuts an image
        ([["short", a], ["a much longer prompt with", b, "and more text"]], dict(padding_side="right")),
        ([["short", a], ["a much longer prompt with", b, "and more text"]], dict(padding_side="left")),
        ([["User:", a, "q"], ["x", images["uint8"], "y"], ["z", images["path"], images["chw"]]], {}),
        ([images["float"], "float image", images["rgba"]], {}),
        ([["first part</s>", a, "after eos", b, "</s> tail"]], dict(add_eos_token=True)),  # EOS stops the mask
        ([["User: only text"], ["and more", "text"]], {}),                             # batch without images
        ([["User:", a, "text"]], {}),                                                  # batch of 1
        ("   a bare string   ", {}),
    ]
    for prompts, kw in cases:
        got = _check(hf, ours, prompts, **kw)
        assert got["pixel_values"].shape[-2:] == (SIZE, SIZE)


def test_image_text_to_text_form(saved, images):
    _, hf, ours = saved
    a, b, c, _ = images["pil"]
    for imgs, text in (([a, b], ["first", "second"]), ([[a, c], [b]], ["two images", "one"])):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            want = hf(images=imgs, text=text, return_tensors="pt")
        got = ours(text=text, images=imgs)
        for key in got:
            np.testing.assert_allclose(got[key], want[key].numpy(), atol=1e-5, rtol=0, err_msg=key)


def test_tokenizer_json_truncation_sets_the_processor_defaults(saved, images, tmp_path):
    """A tokenizer.json with truncation on: HF takes its max_length as the processor's default."""
    directory, _, _ = saved
    for name in ("tokenizer.json", "tokenizer_config.json", "processor_config.json"):
        (tmp_path / name).write_bytes((directory / name).read_bytes())
    spec = json.loads((tmp_path / "tokenizer.json").read_text())
    spec["truncation"] = {"direction": "Right", "max_length": 30, "strategy": "LongestFirst", "stride": 0}
    (tmp_path / "tokenizer.json").write_text(json.dumps(spec))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        hf = transformers.IdeficsProcessor.from_pretrained(tmp_path)
    ours = IdeficsProcessor.from_pretrained(tmp_path)
    assert ours.tokenizer.init_kwargs["max_length"] == 30
    prompts = [["User:", images["pil"][0], "hi"], ["x", images["pil"][1]]]
    assert _check(hf, ours, prompts, padding="max_length")["input_ids"].shape == (2, 30)
    _check(hf, ours, prompts)


def test_image_attention_mask_semantics(saved, images):
    _, _, ours = saved
    a, b, _, _ = images["pil"]
    out = ours(["before", a, "between", b, "after"])
    ids, mask = out["input_ids"][0], out["image_attention_mask"][0]
    first, second = np.nonzero(ids == ours.image_token_id)[0]
    assert mask[:first].sum() == 0                       # text before the first image sees none
    assert (mask[first:second] == [1, 0]).all()          # then the first image only
    assert (mask[second:] == [0, 1]).all()


def test_decode_and_save_round_trip(saved, images, tmp_path):
    directory, hf, ours = saved
    prompts = [["User:", images["pil"][0], "Describe."], ["Hi there", images["pil"][1]]]
    ids = ours(prompts)["input_ids"]
    assert ours.batch_decode(ids, skip_special_tokens=True) == hf.batch_decode(ids, skip_special_tokens=True)
    assert ours.decode(ids[0]) == hf.decode(ids[0])
    ours.save_pretrained(tmp_path)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        hf_again = transformers.IdeficsProcessor.from_pretrained(tmp_path)
    _check(hf_again, IdeficsProcessor.from_pretrained(tmp_path), prompts)
    _check(hf_again, ours, prompts)


def test_image_processor_matches_hf(images):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        hf = transformers.IdeficsImageProcessor(image_size=24)
        ours = IdeficsImageProcessor(image_size=24)
        for batch in (images["pil"], [images["uint8"], images["chw"]], [images["rgba"]]):
            np.testing.assert_allclose(ours(batch)["pixel_values"], np.asarray(hf(batch, return_tensors="np")),
                                       atol=1e-5, rtol=0)
    assert ours.size == {"height": 24, "width": 24} and ours.image_size == 24
    assert IdeficsImageProcessor.from_dict({"image_size": 30, "image_processor_type": "IdeficsImageProcessor",
                                            "image_num_channels": 3}).size == {"height": 30, "width": 30}
    with pytest.raises(ValueError, match="image_processor_type='CLIPImageProcessor'"):
        IdeficsImageProcessor.from_dict({"image_processor_type": "CLIPImageProcessor"})
    with pytest.raises(ValueError, match="crop_pct"):
        IdeficsImageProcessor.from_dict({"crop_pct": 0.9})


def test_bad_inputs(saved, images, tmp_path):
    directory, _, ours = saved
    a = images["pil"][0]
    with pytest.raises(ValueError, match="prompt 0, item 1 is a URL.*never downloads"):
        ours(["User:", "https://example.com/cat.jpg", "what?"])
    with pytest.raises(FileNotFoundError, match=r"prompt 0, item 1: image file .*missing.png"):
        ours(["User:", tmp_path / "missing.png"])
    (tmp_path / "not-an-image.png").write_text("hello")
    with pytest.raises(ValueError, match="not a readable image file"):
        ours(["User:", tmp_path / "not-an-image.png"])
    with pytest.raises(ValueError, match="prompt 0, item 1 is a list: prompts nest one level only"):
        ours([["User:", [a], "x"]])
    with pytest.raises(ValueError, match="mixes prompts"):
        ours(["User:", ["x", a]])
    with pytest.raises(TypeError, match="prompt 0, item 1 is a dict"):
        ours(["User:", {"image": a}])
    with pytest.raises(TypeError, match="prompt 0, item 0 is a float"):
        ours([3.5])
    with pytest.raises(ValueError, match="shape \\(2, 8, 8, 3\\); one image per item"):
        ours(["x", np.zeros((2, 8, 8, 3), np.uint8)])
    with pytest.raises(ValueError, match="prompt 1 is empty"):
        ours([["x"], []])
    with pytest.raises(ValueError, match="different lengths"):
        ours([["a"], ["a much longer prompt"]], padding=False)
    with pytest.raises(ValueError, match="return_tensors='pt'"):
        ours(["x"], return_tensors="pt")
    with pytest.raises(ValueError, match="2 text prompt.*1 image entries"):
        ours(text=["a", "b"], images=[a])
    bare = tmp_path / "bare"
    Tokenizer.from_pretrained(directory).save_pretrained(bare)
    with pytest.raises(FileNotFoundError, match="preprocessor_config.json"):
        IdeficsProcessor.from_pretrained(bare)
