"""``zoo run GROUPVIT --image FILE --labels "..."``: zero-shot scores and segmentation, against HF."""

from __future__ import annotations

import re

import numpy as np
import torch
import transformers
from PIL import Image

from test_cli import zoo
from test_groupvit_parity import EOS, TEXT, joint

transformers.logging.set_verbosity_error()
WORDS = ["red", "square", "blue", "circle", "green", "a", "photo", "of"]
BOS, PAD = 96, 1


def write_tokenizer(directory):
    """A word-level tokenizer.json that adds BOS/EOS like CLIP's (no hub access needed)."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors

    vocab = {"<unk>": 0, "<pad>": PAD, "<bos>": BOS, "<eos>": EOS, **{w: i + 3 for i, w in enumerate(WORDS)}}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.post_processor = processors.TemplateProcessing(single="<bos> $A <eos>",
                                                       special_tokens=[("<bos>", BOS), ("<eos>", EOS)])
    tok.save(str(directory / "tokenizer.json"))


def checkpoint(tmp_path):
    hf = joint()
    src = tmp_path / "groupvit"
    hf.save_pretrained(src)
    write_tokenizer(src)
    processor = transformers.CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    processor.save_pretrained(src)
    rng = np.random.RandomState(0)
    image = tmp_path / "shapes.png"
    Image.fromarray(rng.randint(0, 256, (37, 45, 3), dtype=np.uint8)).save(image)
    return hf, src, processor, image


def test_zero_shot_scores_and_segmentation_match_hf(tmp_path):
    hf, src, processor, image = checkpoint(tmp_path)
    labels = ["a photo of red square", "blue circle", "green"]
    out_png = tmp_path / "seg.png"
    result = zoo("run", str(src), "--image", str(image), "--labels", ",".join(labels), "--output", str(out_png),
                 "--top-k", "3")
    assert result.returncode == 0, result.stderr

    tokenizer = transformers.PreTrainedTokenizerFast(tokenizer_file=str(src / "tokenizer.json"), pad_token="<pad>")
    text = tokenizer(labels, padding=True, return_tensors="pt")
    pil = Image.open(image).convert("RGB")
    with torch.no_grad():
        ref = hf(**text, **processor(pil, return_tensors="pt"), output_segmentation=True)
    probs = ref.logits_per_image[0].double().softmax(-1).numpy()
    printed = dict(re.findall(r"^  (.+): (\d\.\d{4})$", result.stdout, re.M))
    assert printed == {label: f"{p:.4f}" for label, p in zip(labels, probs)}

    seg = torch.nn.functional.interpolate(ref.segmentation_logits, size=(37, 45), mode="bilinear",
                                          align_corners=False)[0].numpy()
    written = np.asarray(Image.open(out_png))
    top2 = np.sort(seg, axis=0)[-2:]
    clear = (top2[1] - top2[0]) > 1e-4  # pixels whose winner is not a near-tie
    assert written.shape == (37, 45) and clear.mean() > 0.9
    np.testing.assert_array_equal(written[clear], seg.argmax(0)[clear])


def test_token_ids_instead_of_labels_and_errors(tmp_path):
    _, src, _, image = checkpoint(tmp_path)
    ids = f"{BOS} 3 4 {EOS}, {BOS} 5 {EOS}"
    result = zoo("run", str(src), "--image", str(image), "--input-ids", ids)
    assert result.returncode == 0, result.stderr
    assert "text 0:" in result.stdout and "text 1:" in result.stdout
    (src / "tokenizer.json").unlink()
    missing = zoo("run", str(src), "--image", str(image), "--labels", "red,blue")
    assert missing.returncode == 1 and "tokenizer.json" in missing.stderr
    none = zoo("run", str(src), "--image", str(image))
    assert none.returncode == 1 and "--labels" in none.stderr
    assert TEXT["eos_token_id"] == EOS
