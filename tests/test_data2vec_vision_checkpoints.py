"""Data2VecVision checkpoints (batch statistics included) and ``zoo run --image``."""

from __future__ import annotations

import json

import jax.numpy as jnp
import numpy as np
import torch
import transformers
from PIL import Image

from hf_parity import assert_outputs_match
from test_cli import zoo
from test_data2vec_vision_parity import build, images
from zoo import pretrained

transformers.logging.set_verbosity_error()
LABELS = {0: "wall", 1: "sky", 2: "tree", 3: "road", 4: "person"}


def hf_segmenter(tmp_path, name="hf-seg", **overrides):
    hf = build(transformers.Data2VecVisionForSemanticSegmentation, id2label=LABELS,
               label2id={v: k for k, v in LABELS.items()}, **overrides)
    hf.save_pretrained(tmp_path / name)
    return hf, tmp_path / name


def test_segmentation_checkpoint_round_trip_is_bit_exact(tmp_path):
    """PyTorch -> zoo (params + batch_stats) -> zoo directory -> PyTorch: every tensor identical."""
    hf, src = hf_segmenter(tmp_path)
    module, variables = loaded = pretrained.from_pretrained(src)
    report = loaded.report
    assert set(variables) == {"params", "batch_stats"}
    assert report.summary() == "all keys matched"
    x = images()
    with torch.no_grad():
        ref = hf(torch.from_numpy(x), output_hidden_states=True)
    assert_outputs_match(module.apply(variables, jnp.asarray(x), output_hidden_states=True), ref)

    pretrained.save_pretrained(tmp_path / "zoo", module, variables)
    again, variables2 = pretrained.from_pretrained(tmp_path / "zoo")
    assert type(again) is type(module)
    pretrained.export_pytorch(tmp_path / "pt", again, variables2)
    exported = transformers.Data2VecVisionForSemanticSegmentation.from_pretrained(tmp_path / "pt").eval()
    want, got = hf.state_dict(), exported.state_dict()
    assert set(got) == set(want)
    for key in want:
        assert got[key].dtype == want[key].dtype and torch.equal(got[key], want[key]), key


def test_head_checkpoint_loads_into_classifier_with_fresh_head(tmp_path):
    """A segmentation checkpoint's encoder feeds an image classifier (fresh pooler + classifier)."""
    hf, src = hf_segmenter(tmp_path)
    module, params = loaded = pretrained.from_pretrained(src, "Data2VecVisionForImageClassification")
    report = loaded.report
    assert set(params) == {"params"}
    assert sorted(report.missing) == ["classifier/bias", "classifier/kernel", "data2vec_vision/pooler/layernorm/bias",
                                      "data2vec_vision/pooler/layernorm/scale"]
    assert any("decode_head" in k for k in report.unused)
    np.testing.assert_array_equal(
        np.asarray(params["params"]["data2vec_vision"]["encoder"]["layer_0"]["lambda_1"]),
        hf.data2vec_vision.encoder.layer[0].lambda_1.detach().numpy())


def _png(path, size=(45, 37), seed=0):
    rng = np.random.RandomState(seed)
    Image.fromarray(rng.randint(0, 256, (size[1], size[0], 3), dtype=np.uint8)).save(path)
    return path


def test_run_image_segmentation_writes_the_hf_label_map(tmp_path):
    hf, src = hf_segmenter(tmp_path)
    hf_processor = transformers.BeitImageProcessor(size={"height": 40, "width": 40}, crop_size=32,
                                                   do_center_crop=True, image_mean=[0.5] * 3, image_std=[0.5] * 3)
    hf_processor.save_pretrained(src)
    image = _png(tmp_path / "street.png")
    out_png = tmp_path / "seg.png"
    result = zoo("run", str(src), "--image", str(image), "--output", str(out_png), "--top-k", "3")
    assert result.returncode == 0, result.stderr
    assert "Data2VecVisionForSemanticSegmentation" in result.stdout and str(out_png) in result.stdout

    pil = Image.open(image).convert("RGB")
    with torch.no_grad():
        logits = hf(**hf_processor(pil, return_tensors="pt")).logits
    want = hf_processor.post_process_semantic_segmentation(
        transformers.modeling_outputs.SemanticSegmenterOutput(logits=logits), target_sizes=[(37, 45)])[0].numpy()
    written = Image.open(out_png)
    assert written.size == (45, 37) and written.mode == "P"
    np.testing.assert_array_equal(np.asarray(written), want)
    top = [LABELS[int(c)] for c in np.argsort(-np.bincount(want.ravel(), minlength=5))[:1]]
    assert f"largest classes: {top[0]}" in result.stdout


def test_run_image_classification_prints_top_labels(tmp_path):
    hf = build(transformers.Data2VecVisionForImageClassification, id2label=LABELS,
               label2id={v: k for k, v in LABELS.items()})
    hf.save_pretrained(tmp_path / "cls")
    result = zoo("run", str(tmp_path / "cls"), "--image", str(_png(tmp_path / "cat.png")), "--top-k", "2")
    assert result.returncode == 0, result.stderr
    # no preprocessor_config.json: BEiT defaults at the config's image size
    processor = transformers.BeitImageProcessor(size={"height": 32, "width": 32})
    with torch.no_grad():
        probs = hf(**processor(Image.open(tmp_path / "cat.png").convert("RGB"), return_tensors="pt")).logits.softmax(-1)[0]
    best = int(probs.argmax())
    assert f"  {LABELS[best]}: {probs[best]:.4f}" in result.stdout.splitlines()[1]
    assert len(result.stdout.strip().splitlines()) == 3


def test_convert_verify_and_errors(tmp_path):
    _, src = hf_segmenter(tmp_path)
    result = zoo("convert", str(src), str(tmp_path / "out"), "--verify")
    assert result.returncode == 0, result.stderr
    diffs = [float(line.rsplit(None, 1)[-1]) for line in result.stdout.splitlines() if line.startswith("verify")]
    assert len(diffs) == 2 and max(diffs) <= 1e-5   # logits and hidden states, the parity contract
    assert json.loads((tmp_path / "out" / "config.json").read_text())["architectures"] == [
        "Data2VecVisionForSemanticSegmentation"]

    missing = zoo("run", str(tmp_path / "out"))
    assert missing.returncode == 1 and "pass --image FILE" in missing.stderr
    bad = tmp_path / "broken.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n not really")
    result = zoo("run", str(tmp_path / "out"), "--image", str(bad))
    assert result.returncode == 1 and len(result.stderr.strip().splitlines()) == 1 and "broken.png" in result.stderr
    text = zoo("run", str(tmp_path / "out"), "--image", str(tmp_path / "nope.png"))
    assert text.returncode == 1 and "nope.png" in text.stderr
