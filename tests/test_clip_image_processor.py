"""zoo.preprocessing.clip_image against HF transformers' CLIPImageProcessor (PIL backend)."""

import json
import os
import warnings

import numpy as np
import pytest

from zoo.preprocessing import CLIPImageProcessor

transformers = pytest.importorskip("transformers")
Image = pytest.importorskip("PIL.Image")
transformers.logging.set_verbosity_error()


def _img(h, w, seed=0, mode="RGB"):
    arr = np.random.default_rng(seed).integers(0, 256, (h, w, 4), dtype=np.uint8)
    return Image.fromarray(arr, "RGBA").convert(mode) if mode != "RGBA" else Image.fromarray(arr, "RGBA")


def _hf(**init):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "requires torchvision; falling back to CLIPImageProcessorPil"
        return transformers.CLIPImageProcessor(**init)


def _check(images, init=None, **kw):
    init = init or {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ref = _hf(**init)(images, return_tensors="np", **kw)["pixel_values"]
        out = CLIPImageProcessor(**init)(images, **kw)
    assert list(out) == ["pixel_values"]
    assert out["pixel_values"].dtype == ref.dtype == np.float32
    assert out["pixel_values"].shape == ref.shape
    np.testing.assert_allclose(out["pixel_values"], ref, atol=1e-6, rtol=0)
    return out["pixel_values"]


def test_hf_resolves_to_pil_backend():
    assert type(_hf()).__name__ == "CLIPImageProcessorPil"
    # HF's to_dict keeps tuples for the class-default mean / std; its JSON has lists, like ours
    assert CLIPImageProcessor().to_dict() == {**json.loads(_hf().to_json_string()), "default_to_square": False}


@pytest.mark.parametrize("hw", [(37, 91), (300, 181), (224, 224), (5, 3), (1, 250), (513, 640)])
def test_pil_parity_odd_sizes(hw):
    pv = _check(_img(*hw, seed=hw[0]))
    assert pv.shape == (1, 3, 224, 224)


def test_numpy_batch_and_layouts():
    rng = np.random.default_rng(1)
    hwc = [rng.integers(0, 256, (h, w, 3), dtype=np.uint8) for h, w in [(97, 45), (33, 260), (224, 225)]]
    _check(hwc)
    _check([np.moveaxis(a, -1, 0) for a in hwc])  # channels first
    _check(np.stack([rng.integers(0, 256, (50, 61, 3), dtype=np.uint8)] * 2))  # [B, H, W, C]
    _check([_img(40, 70, seed=2), hwc[0]])  # mixed PIL / numpy
    _check(rng.random((63, 80, 3)).astype(np.float32), do_rescale=False)  # float in [0, 1]


@pytest.mark.parametrize("mode", ["L", "RGBA", "LA", "P"])
def test_convert_rgb(mode):
    _check([_img(90, 71, seed=3, mode=mode), _img(30, 40, seed=4, mode=mode)])


def test_rgba_numpy_converted():
    _check(np.random.default_rng(5).integers(0, 256, (70, 50, 4), dtype=np.uint8))


@pytest.mark.parametrize("init, kw", [
    (dict(size=288, crop_size=256), {}),
    (dict(size={"height": 100, "width": 150}, crop_size={"height": 64, "width": 96}), {}),
    (dict(size={"shortest_edge": 120, "longest_edge": 150}), dict(do_center_crop=False)),
    (dict(size=[80, 60], resample=2, image_mean=0.5, image_std=0.25), {}),
    ({}, dict(do_center_crop=False)),
    ({}, dict(crop_size=300)),  # crop larger than the resized image: zero padding
    ({}, dict(do_resize=False, do_center_crop=False, do_normalize=False)),
    (dict(default_to_square=True, size=96, do_center_crop=False), {}),
    (dict(do_pad=True, pad_size={"height": 240, "width": 256}), {}),
])
def test_custom_options(init, kw):
    _check([_img(77, 101, seed=6), _img(77, 101, seed=7)], init, **kw)
    _check(_img(130, 59, seed=8), init, **kw)


def test_pad_to_batch_max():
    pv = _check([_img(77, 101, seed=6), _img(130, 59, seed=7)], do_center_crop=False, do_pad=True)
    assert pv.shape == (2, 3, 493, 293)


def test_do_convert_rgb_off():
    _check(_img(50, 60, seed=8), dict(do_convert_rgb=False))
    img = _img(50, 60, seed=8, mode="L")
    with pytest.raises(ValueError, match="do_convert_rgb"):
        CLIPImageProcessor(do_convert_rgb=False)(img)
    # like HF: a grayscale image keeps one channel when not normalized
    _check(img, dict(do_convert_rgb=False, do_normalize=False))


def test_from_pretrained_round_trip_through_hf(tmp_path):
    init = dict(size={"shortest_edge": 160}, crop_size={"height": 150, "width": 140}, resample=2,
                image_mean=[0.1, 0.2, 0.3], image_std=[0.9, 0.8, 0.7], rescale_factor=1 / 128)
    _hf(**init).save_pretrained(tmp_path)
    ours = CLIPImageProcessor.from_pretrained(tmp_path)
    assert ours == CLIPImageProcessor(**init)
    _check(_img(99, 123, seed=9), init)
    ours.save_pretrained(tmp_path / "again")  # ours -> HF -> ours
    hf = transformers.AutoImageProcessor.from_pretrained(tmp_path / "again")
    assert type(hf).__name__ == "CLIPImageProcessorPil"
    assert CLIPImageProcessor.from_pretrained(tmp_path / "again") == ours
    np.testing.assert_array_equal(ours(_img(99, 123))["pixel_values"],
                                  hf(_img(99, 123), return_tensors="np")["pixel_values"])


def test_legacy_groupvit_config(tmp_path):
    """The nvidia/groupvit-gcc-yfcc layout: feature extractor type, int size / crop_size."""
    config = {"crop_size": 224, "do_center_crop": True, "do_normalize": True, "do_resize": True,
              "feature_extractor_type": "CLIPFeatureExtractor", "image_mean": [0.48145466, 0.4578275, 0.40821073],
              "image_std": [0.26862954, 0.26130258, 0.27577711], "resample": 3, "size": 224}
    (tmp_path / "preprocessor_config.json").write_text(json.dumps(config))
    ours = CLIPImageProcessor.from_pretrained(tmp_path)
    assert ours == CLIPImageProcessor()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        hf = transformers.AutoImageProcessor.from_pretrained(tmp_path)
    img = _img(180, 333, seed=10)
    np.testing.assert_array_equal(ours(img)["pixel_values"], hf(img, return_tensors="np")["pixel_values"])
    hf_square = _hf(use_square_size=True, size=300).size  # KOSMOS-2 legacy key: HF ignores the given size
    square = CLIPImageProcessor.from_dict({"use_square_size": True, "size": 300})
    assert square.size == {"height": hf_square.height, "width": hf_square.width} == {"height": 224, "width": 224}


def test_errors(tmp_path):
    with pytest.raises(ValueError, match=r"\['crop_pct'\]"):
        CLIPImageProcessor.from_dict({"crop_pct": 0.9})
    with pytest.raises(ValueError, match="BeitImageProcessor.*CLIPImageProcessor"):
        CLIPImageProcessor.from_dict({"image_processor_type": "BeitImageProcessor"})
    with pytest.raises(ValueError, match="Wav2Vec2FeatureExtractor"):
        CLIPImageProcessor.from_dict({"feature_extractor_type": "Wav2Vec2FeatureExtractor"})
    with pytest.raises(FileNotFoundError, match="preprocessor_config.json"):
        CLIPImageProcessor.from_pretrained(tmp_path)
    CLIPImageProcessor.from_dict({"transformers_version": "5.23.0", "processor_class": "CLIPProcessor"})
    with pytest.raises(ValueError, match="pad_size"):
        CLIPImageProcessor(pad_size={"shortest_edge": 3})
    with pytest.raises(ValueError, match="larger than pad_size"):
        CLIPImageProcessor(do_pad=True, pad_size=100)(_img(50, 50))
    with pytest.raises(TypeError, match="unexpected keyword"):
        CLIPImageProcessor()(_img(50, 50), segmentation_maps=None)
    with pytest.raises(ValueError, match="numpy arrays only"):
        CLIPImageProcessor()(_img(50, 50), return_tensors="pt")
    with pytest.raises(ValueError, match="no images"):
        CLIPImageProcessor()([])
    with pytest.raises(ValueError, match="different shapes"):
        CLIPImageProcessor(do_resize=False, do_center_crop=False)([_img(5, 6), _img(6, 5)])
    assert not os.listdir(tmp_path)
