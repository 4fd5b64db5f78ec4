"""The tiny checkpoint of every family (zoo/assets) and ``zoo demo --family F`` (issue 18, item 8)."""

from __future__ import annotations

import re
import tempfile
from pathlib import Path

import numpy as np
import pytest
import torch
import transformers
from PIL import Image

import zoo
from hf_parity import max_diff
from test_cli import ENV, zoo as zoo_command
from zoo import demo
from zoo.assets import (ASSETS_DIR, NAMES, TINY_BIG_BIRD_CHECKPOINT, TINY_GROUPVIT_CHECKPOINT, TINY_PICTURE,
                        TINY_SEW_D_CTC_CHECKPOINT, TINY_SPEECH_WAV, TINY_TEXT_CHECKPOINT, TINY_VISION_CHECKPOINT)
from zoo.cli import main
from zoo.preprocessing import Tokenizer, read_wav
from zoo.registry import FAMILIES

transformers.logging.set_verbosity_error()

# what each family's demo prints (a line of its prediction)
PREDICTION = {
    "data2vec-text": r"^  filled: '.+'$",
    "data2vec-audio": r"^  transcription: '.+'$",
    "data2vec-vision": r"^  (red square|blue sky|green grass|cat|dog): 0\.\d{4}$",
    "big_bird": r"^  filled: '.+'$",
    "groupvit": r"^  (a red square|a blue sky|green grass): 0\.\d{4}$",
    "idefics": r"^ A red square on a blue sky\.$",
    "sew-d": r"^  transcription: '.+'$",
}


@pytest.fixture
def private_tmp(tmp_path, monkeypatch):
    """tempfile's directory for this test only, so leftovers of other tests cannot be counted."""
    root = tmp_path / "tmp"
    root.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(root))
    return root


def test_every_family_has_a_demo_and_a_small_shipped_checkpoint():
    assert list(demo.FAMILIES) == list(FAMILIES)
    for family, spec in demo.FAMILIES.items():
        assert spec.asset.name in NAMES and (spec.asset / "config.json").is_file(), family
        size = sum(p.stat().st_size for p in spec.asset.iterdir())
        assert size < 330_000, (family, size)


@pytest.mark.parametrize("family", list(demo.FAMILIES))
def test_demo_family_runs_and_removes_its_temp_dir(family, private_tmp, capsys):
    assert main(["demo", "--family", family]) == 0
    out = capsys.readouterr().out
    commands = [line for line in out.splitlines() if line.startswith("# zoo ")]
    verb = "generate" if family == "idefics" else "run"
    assert [c.split()[2] for c in commands] == ["convert", "info", verb], commands
    assert str(demo.FAMILIES[family].asset) in commands[0]
    assert re.search(PREDICTION[family], out, re.M), out
    assert f"family        {family}" in out
    assert list(private_tmp.glob("zoo-demo-*")) == []  # the temporary directory is gone


def test_demo_temp_dir_is_removed_on_error_and_output_is_kept(private_tmp, tmp_path, capsys):
    out = tmp_path / "kept"
    (out / "tiny-sew-d-ctc").mkdir(parents=True)
    (out / "tiny-sew-d-ctc" / "x").write_text("in the way")
    assert main(["demo", "--family", "sew-d", "--output", str(out)]) == 1  # convert refuses a full directory
    assert "output already exists" in capsys.readouterr().err

    with pytest.raises(FileExistsError):  # the temp workspace goes away on error too
        with demo.workspace() as workdir:
            assert workdir.name.startswith(demo.TEMP_PREFIX) and workdir.parent == private_tmp
            raise FileExistsError("boom")
    assert list(private_tmp.glob("zoo-demo-*")) == []

    kept = tmp_path / "kept2"
    assert main(["demo", "--family", "data2vec-vision", "--output", str(kept)]) == 0
    assert (kept / "tiny-data2vec-vision" / "config.json").is_file()
    assert list(private_tmp.glob("zoo-demo-*")) == []


def test_unknown_family_is_one_line():
    result = zoo_command("demo", "--family", "bigbird")
    assert result.returncode == 1 and result.stdout == ""
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert "unknown family 'bigbird'" in result.stderr
    assert all(name in result.stderr for name in [*FAMILIES, "all"])


def test_run_text_fills_the_mask_with_words(tmp_path):
    result = zoo_command("run", str(TINY_TEXT_CHECKPOINT), "--text", "hello <mask>", env={**ENV, "TMPDIR": str(tmp_path)})
    assert result.returncode == 0, result.stderr
    hf_tok = transformers.AutoTokenizer.from_pretrained(TINY_TEXT_CHECKPOINT)
    hf = transformers.Data2VecTextForMaskedLM.from_pretrained(TINY_TEXT_CHECKPOINT).eval()
    batch = hf_tok("hello <mask>", return_tensors="pt")
    position = batch["input_ids"][0].tolist().index(hf_tok.mask_token_id)
    with torch.no_grad():
        top = hf(**batch).logits[0, position].topk(5).indices.tolist()
    words = [hf_tok.decode([i]).strip() for i in top]
    assert f"  position {position:3d} '<mask>': " + " | ".join(words) in result.stdout
    filled = re.search(r"^  filled: '(.+)'$", result.stdout, re.M).group(1)
    assert filled == "hello" + hf_tok.decode([top[0]])


TEXTS = ["hello <mask>", "the cat sat on the mat", "a dog ran in the [MASK]", "green grass, blue sky!", "Zebra?"]


@pytest.mark.parametrize("asset", [TINY_TEXT_CHECKPOINT, TINY_BIG_BIRD_CHECKPOINT, TINY_GROUPVIT_CHECKPOINT],
                         ids=lambda p: p.name)
def test_shipped_tokenizer_is_hf_autotokenizer(asset):
    hf = transformers.AutoTokenizer.from_pretrained(asset)
    ours = Tokenizer.from_pretrained(asset)
    config = transformers.AutoConfig.from_pretrained(asset)
    vocab_size = getattr(config, "text_config", config).vocab_size
    assert len(hf) == len(ours) == vocab_size
    for text in TEXTS:
        ids = hf(text)["input_ids"]
        assert list(ours(text)["input_ids"]) == ids, text
        assert ours.decode(ids) == hf.decode(ids)
    padded = ours(TEXTS, padding=True, return_tensors="np")
    assert padded["input_ids"].tolist() == hf(TEXTS, padding=True)["input_ids"]
    if asset == TINY_TEXT_CHECKPOINT:  # RoBERTa's ids, as the model's config expects
        assert [hf.convert_tokens_to_ids(t) for t in ("<s>", "<pad>", "</s>", "<unk>")] == [0, 1, 2, 3]
        assert hf.mask_token == "<mask>" and config.pad_token_id == hf.pad_token_id


def _logits_match(asset, hf_cls, hf_inputs, zoo_inputs, field="logits"):
    hf = hf_cls.from_pretrained(asset).eval()
    model, variables = zoo.from_pretrained(asset)
    with torch.no_grad():
        ref = getattr(hf(**hf_inputs), field)
    got = getattr(model.apply(variables, **zoo_inputs), field)
    assert max_diff(got, ref) <= 1e-5


def _text_batch(asset, texts):
    batch = transformers.AutoTokenizer.from_pretrained(asset)(texts, padding=True, return_tensors="np")
    return ({k: torch.from_numpy(v) for k, v in batch.items()},
            {k: v.astype(np.int32) for k, v in batch.items() if k in ("input_ids", "attention_mask")})


def test_text_checkpoint_matches_hf():
    hf_in, zoo_in = _text_batch(TINY_TEXT_CHECKPOINT, ["hello <mask>", "the cat sat on the <mask> in the park"])
    _logits_match(TINY_TEXT_CHECKPOINT, transformers.Data2VecTextForMaskedLM, hf_in, zoo_in)


def test_big_bird_checkpoint_matches_hf_block_sparse():
    long = "the quick brown fox jumps over the lazy dog and a dog ran in the [MASK] while the cat sat on the mat"
    hf_in, zoo_in = _text_batch(TINY_BIG_BIRD_CHECKPOINT, [long, long + " and we walk"])
    assert zoo_in["input_ids"].shape[1] > 28  # more than (5 + 2 * num_random_blocks) * block_size: block-sparse
    assert transformers.AutoConfig.from_pretrained(TINY_BIG_BIRD_CHECKPOINT).attention_type == "block_sparse"
    _logits_match(TINY_BIG_BIRD_CHECKPOINT, transformers.BigBirdForMaskedLM, hf_in, zoo_in)


def _pictures():
    first = Image.open(TINY_PICTURE).convert("RGB")
    return [first, Image.fromarray(np.random.RandomState(0).randint(0, 256, (40, 50, 3), dtype=np.uint8))]


def test_vision_checkpoint_matches_hf():
    pixels = transformers.AutoImageProcessor.from_pretrained(TINY_VISION_CHECKPOINT)(
        _pictures(), return_tensors="np")["pixel_values"]
    _logits_match(TINY_VISION_CHECKPOINT, transformers.Data2VecVisionForImageClassification,
                  {"pixel_values": torch.from_numpy(pixels)}, {"pixel_values": pixels})
    labels = transformers.AutoConfig.from_pretrained(TINY_VISION_CHECKPOINT).id2label
    assert labels[0] == "red square" and len(labels) == 5


def test_groupvit_checkpoint_matches_hf():
    pixels = transformers.AutoImageProcessor.from_pretrained(TINY_GROUPVIT_CHECKPOINT)(
        _pictures(), return_tensors="np")["pixel_values"]
    hf_in, zoo_in = _text_batch(TINY_GROUPVIT_CHECKPOINT, ["a red square", "a blue sky", "green grass"])
    _logits_match(TINY_GROUPVIT_CHECKPOINT, transformers.GroupViTModel,
                  {**hf_in, "pixel_values": torch.from_numpy(pixels)}, {**zoo_in, "pixel_values": pixels},
                  field="logits_per_image")


def test_sew_d_checkpoint_matches_hf():
    samples, rate = read_wav(TINY_SPEECH_WAV)
    extractor = transformers.AutoFeatureExtractor.from_pretrained(TINY_SEW_D_CTC_CHECKPOINT)
    batch = extractor([samples, samples[: rate // 2]], sampling_rate=rate, padding=True, return_tensors="np",
                      return_attention_mask=True)
    _logits_match(TINY_SEW_D_CTC_CHECKPOINT, transformers.SEWDForCTC,
                  {k: torch.from_numpy(v) for k, v in batch.items()},
                  {"input_values": batch["input_values"].astype(np.float32),
                   "attention_mask": batch["attention_mask"].astype(np.int32)})


def test_assets_dir_holds_only_named_assets():
    shipped = {p.name for p in ASSETS_DIR.iterdir() if not p.name.startswith(("__", "."))}
    assert shipped == set(NAMES)
    assert all(isinstance(getattr(zoo.assets, n), Path) for n in zoo.assets.__all__ if n.startswith("TINY_"))
