"""zoo.preprocessing.image against HF transformers' BeitImageProcessor (PIL backend); PNG / image IO."""

import json
import os
import types
import warnings

import numpy as np
import pytest

from zoo.preprocessing import BeitImageProcessor, load_image, segmentation_to_png
from zoo.preprocessing.image import voc_palette

transformers = pytest.importorskip("transformers")
Image = pytest.importorskip("PIL.Image")
transformers.logging.set_verbosity_error()

DATA2VEC = dict(size=256, crop_size=224, do_center_crop=True)  # data2vec-vision / BEiT fine-tuning recipe
IMAGENET = dict(image_mean=[0.485, 0.456, 0.406], image_std=[0.229, 0.224, 0.225])


# ==================================================================== helpers
def _rng(seed=0):
    return np.random.default_rng(seed)


def _pil(h, w, seed=0, mode="RGB"):
    img = Image.fromarray(_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8))
    return img if mode == "RGB" else img.convert(mode)


def _hf(**init):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return transformers.BeitImageProcessor(**init)


def _pair(**init):
    return _hf(**init), BeitImageProcessor(**init)


def _run_hf(hf, images, seg=None, **kw):
    if isinstance(seg, list):  # HF reduces labels in place (0 -> 255 in the caller's array): give it copies
        seg = [m.copy() if isinstance(m, np.ndarray) else m for m in seg]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return hf(images, segmentation_maps=seg, return_tensors="np", **kw)


def _check(hf, ours, images, seg=None, **kw):
    ref = _run_hf(hf, images, seg, **kw)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "already rescaled" hints on float inputs
        out = ours(images, seg, segmentation_resample=None, **kw)
    assert set(out) == set(ref.keys())
    ref_pv = ref["pixel_values"]
    assert out["pixel_values"].dtype == ref_pv.dtype
    assert out["pixel_values"].shape == ref_pv.shape
    np.testing.assert_allclose(out["pixel_values"], ref_pv, atol=1e-6, rtol=0)
    if "labels" in ref:
        assert out["labels"].dtype == np.int64 == ref["labels"].dtype
        np.testing.assert_array_equal(out["labels"], ref["labels"])
    return out


# ==================================================================== pixel values
INPUTS = {
    "pil_37x53": lambda: _pil(37, 53),
    "pil_300x200": lambda: _pil(300, 200, seed=1),
    "np_hwc_uint8": lambda: _rng(2).integers(0, 256, (41, 29, 3), dtype=np.uint8),
    "np_chw_uint8": lambda: _rng(3).integers(0, 256, (3, 29, 41), dtype=np.uint8),
    "np_hwc_float32_01": lambda: _rng(4).random((33, 47, 3), dtype=np.float32),
    "np_chw_float64_01": lambda: _rng(5).random((3, 20, 31)),
    "np_int64_0_255": lambda: _rng(6).integers(0, 256, (25, 35, 3)),
    "np_batch_bhwc": lambda: _rng(7).integers(0, 256, (3, 30, 40, 3), dtype=np.uint8),
    "list_mixed": lambda: [_pil(37, 53), _rng(8).integers(0, 256, (3, 64, 48), dtype=np.uint8), _pil(300, 200, 9)],
}


@pytest.mark.parametrize("name", sorted(INPUTS))
def test_default_settings_match_hf(name):
    hf, ours = _pair()
    out = _check(hf, ours, INPUTS[name]())
    assert out["pixel_values"].dtype == np.float32 and out["pixel_values"].shape[1:] == (3, 224, 224)


@pytest.mark.parametrize("init", [DATA2VEC, dict(DATA2VEC, **IMAGENET), dict(size=224, crop_size=224, **IMAGENET),
                                  dict(size={"height": 96, "width": 128}, image_mean=0.5, image_std=0.25)],
                         ids=["data2vec", "data2vec_imagenet", "224_imagenet", "rect_scalar_stats"])
def test_data2vec_like_settings_match_hf(init):
    hf, ours = _pair(**init)
    _check(hf, ours, [_pil(37, 53), _pil(300, 200, 1), _rng(2).random((50, 60, 3), dtype=np.float32)])


@pytest.mark.parametrize("resample", [0, 1, 2, 3, 4, 5])
def test_resample_modes_match_hf(resample):
    hf, ours = _pair(resample=resample, size=(48, 40))
    _check(hf, ours, [_pil(37, 53), _pil(300, 200, 1), _rng(2).random((3, 20, 31), dtype=np.float32)])


def test_center_crop_and_no_resize_match_hf():
    hf, ours = _pair(do_resize=False, do_center_crop=True, crop_size={"height": 30, "width": 64})
    _check(hf, ours, [_pil(37, 53), _pil(37, 53, 1)])  # crops the height, zero-pads the width
    hf, ours = _pair(do_resize=False)
    out = _check(hf, ours, [_pil(37, 53), _pil(37, 53, 1)])
    assert out["pixel_values"].shape == (2, 3, 37, 53)
    hf, ours = _pair()
    _check(hf, ours, _pil(37, 53), do_center_crop=True, crop_size=200)  # call-time overrides


@pytest.mark.parametrize("size, default_to_square", [
    (64, True), (64, False), ((40, 70), True), ({"shortest_edge": 40}, True),
    ({"shortest_edge": 40, "longest_edge": 50}, True), ({"max_height": 40, "max_width": 50}, True)])
def test_size_forms_match_hf(size, default_to_square):
    hf, ours = _pair(size=size, default_to_square=default_to_square)
    _check(hf, ours, [_pil(37, 53)])
    _check(hf, ours, [_pil(300, 200, 1)])


def test_rescale_normalize_flags_and_dtypes_match_hf():
    hf, ours = _pair()
    img = _pil(37, 53)
    out = _check(hf, ours, img, do_rescale=False, do_normalize=False)
    assert out["pixel_values"].dtype == np.uint8  # HF keeps the input dtype when nothing casts it
    _check(hf, ours, img, do_rescale=False)
    _check(hf, ours, img, do_normalize=False, rescale_factor=1 / 127.5)
    out = _check(hf, ours, _rng(1).random((3, 20, 20)), do_resize=False, do_rescale=False)
    assert out["pixel_values"].dtype == np.float64
    # float images in [0, 1] are rescaled a second time, as HF does; we also warn
    with pytest.warns(UserWarning, match="already rescaled"):
        out = ours(_rng(2).random((20, 20, 3), dtype=np.float32), do_resize=False, do_normalize=False)
    assert out["pixel_values"].max() <= 1 / 255 + 1e-7


def test_grayscale_and_rgba_follow_hf():
    hf, ours = _pair()
    gray, rgba = _pil(37, 53, mode="L"), _pil(30, 20, 1, mode="RGBA")
    rgba.putalpha(Image.fromarray(_rng(3).integers(0, 256, (30, 20), dtype=np.uint8)))
    _check(hf, ours, gray, do_convert_rgb=True)
    _check(hf, ours, rgba, do_convert_rgb=True)  # alpha composited onto white
    _check(hf, ours, np.array(rgba), do_convert_rgb=True)  # numpy RGBA, HWC
    _check(hf, ours, np.moveaxis(np.array(rgba), -1, 0), do_convert_rgb=True)  # numpy RGBA, CHW
    out = _check(hf, ours, gray, do_normalize=False)
    assert out["pixel_values"].shape == (1, 1, 224, 224)
    out = _check(hf, ours, rgba, do_normalize=False)
    assert out["pixel_values"].shape == (1, 4, 224, 224)
    _check(hf, ours, gray, image_mean=0.5, image_std=0.5)  # scalar stats normalize one channel
    # a 3-value mean on 1 / 4 channels: HF fails too; ours says how to fix it
    for img, n in ((gray, 1), (rgba, 4)):
        with pytest.raises(ValueError):
            _run_hf(hf, img)
        with pytest.raises(ValueError, match=rf"{n} channel\(s\).*do_convert_rgb=True"):
            ours(img)
    # 2-D numpy arrays are grayscale images (HF only takes 2-D PIL images)
    ref = _run_hf(hf, gray, do_convert_rgb=True)["pixel_values"]
    np.testing.assert_array_equal(ours(np.array(gray), do_convert_rgb=True)["pixel_values"], ref)
    ref = _run_hf(hf, gray, do_normalize=False)["pixel_values"]
    np.testing.assert_array_equal(ours([np.array(gray)], do_normalize=False)["pixel_values"], ref)


def test_input_data_format_override_matches_hf():
    hf, ours = _pair()
    img = _rng(0).integers(0, 256, (3, 20, 3), dtype=np.uint8)  # ambiguous: HF assumes channels first
    _check(hf, ours, img)
    _check(hf, ours, img, input_data_format="channels_last")


# ==================================================================== segmentation maps
def _maps(shapes, seed=0, high=6, dtype=np.uint8):
    rng = _rng(seed)
    return [rng.integers(0, high, s).astype(dtype) for s in shapes]


@pytest.mark.parametrize("reduce", [False, True])
def test_segmentation_maps_match_hf(reduce):
    images = [_pil(37, 53), _pil(300, 200, 1)]
    maps = _maps([(37, 53), (300, 200)], dtype=np.uint8)
    maps[0][:5] = 255  # the ignore index survives reduction
    originals = [m.copy() for m in maps]
    # default: NEAREST for the maps == HF run with resample=NEAREST
    hf, ours = _pair(do_reduce_labels=reduce, **DATA2VEC)
    ref = _run_hf(hf, images, maps, resample=0)
    out = ours(images, maps)
    np.testing.assert_array_equal(out["labels"], ref["labels"])
    assert out["labels"].dtype == np.int64 and out["labels"].shape == (2, 224, 224)
    assert set(np.unique(out["labels"])) <= (set(range(-1 if reduce else 0, 6)) | {255}) - ({-1} if reduce else set())
    # segmentation_resample=None reproduces HF 5.23 exactly (maps resized with the image filter)
    _check(hf, ours, images, maps)
    _check(hf, ours, images, [Image.fromarray(m) for m in maps])  # PIL "L" maps
    _check(hf, ours, images, [m.astype(np.int64) for m in maps], do_resize=False, do_center_crop=True,
           crop_size=40)  # int64 maps, crop with zero padding
    for m, o in zip(maps, originals):  # ours never modifies its inputs
        np.testing.assert_array_equal(m, o)
    if reduce:  # ... HF does
        hf(images, segmentation_maps=maps, return_tensors="np")
        assert (maps[0] == 0).sum() == 0 and (originals[0] == 0).sum() > 0


def test_reduce_labels_values():
    ours = BeitImageProcessor(do_resize=False, do_reduce_labels=True)
    m = np.array([[0, 1, 2], [150, 254, 255]], dtype=np.uint8)
    out = ours(np.zeros((2, 3, 3), np.uint8), m)["labels"][0]
    np.testing.assert_array_equal(out, [[255, 0, 1], [149, 253, 255]])


# ==================================================================== post-processing
def _logits(seed=0, shape=(2, 5, 16, 12)):
    return _rng(seed).normal(size=shape).astype(np.float32)


def test_post_process_without_target_sizes_matches_hf():
    import torch

    hf, ours = _pair()
    logits = _logits()
    ref = hf.post_process_semantic_segmentation(types.SimpleNamespace(logits=torch.from_numpy(logits)))
    out = ours.post_process_semantic_segmentation(logits)
    assert len(out) == 2
    for o, r in zip(out, ref):
        assert o.dtype == np.int64 and o.shape == (16, 12)
        np.testing.assert_array_equal(o, r.numpy())
    out2 = ours.post_process_semantic_segmentation({"logits": logits}, return_segmentation_scores=True)
    np.testing.assert_array_equal(out2[1]["segmentation"], out[1])
    np.testing.assert_array_equal(out2[1]["segmentation_scores"], logits[1])


def test_post_process_with_target_sizes_matches_hf():
    import torch

    hf, ours = _pair()
    logits = _logits(1)
    sizes = [(64, 48), (37, 53)]
    outputs = types.SimpleNamespace(logits=torch.from_numpy(logits))
    ref = hf.post_process_semantic_segmentation(outputs, target_sizes=sizes, return_segmentation_scores=True)
    out = ours.post_process_semantic_segmentation(logits, target_sizes=np.array(sizes),
                                                  return_segmentation_scores=True)
    for o, r, hw in zip(out, ref, sizes):
        scores = r["segmentation_scores"].numpy()
        assert o["segmentation"].shape == hw and o["segmentation"].dtype == np.int64
        np.testing.assert_allclose(o["segmentation_scores"], scores, atol=1e-5, rtol=0)
        # labels agree wherever the top two scores are not a float-rounding tie
        top2 = np.sort(scores, axis=0)[-2:]
        clear = (top2[1] - top2[0]) > 1e-5
        assert clear.mean() > 0.99
        np.testing.assert_array_equal(o["segmentation"][clear], r["segmentation"].numpy()[clear])
    maps = ours.post_process_semantic_segmentation(logits, target_sizes=sizes)
    np.testing.assert_array_equal(maps[0], out[0]["segmentation"])
    import jax.numpy as jnp  # model outputs are jax arrays

    maps = ours.post_process_semantic_segmentation(types.SimpleNamespace(logits=jnp.asarray(logits)), sizes)
    for m, o in zip(maps, out):
        assert isinstance(m, np.ndarray) and m.dtype == np.int64
        np.testing.assert_array_equal(m, o["segmentation"])
    with pytest.raises(ValueError, match="target sizes"):
        ours.post_process_semantic_segmentation(logits, target_sizes=[(4, 4)])
    with pytest.raises(ValueError, match="logits"):
        ours.post_process_semantic_segmentation(logits[0])


# ==================================================================== config IO
def test_from_pretrained_round_trip_through_hf_save(tmp_path):
    init = dict(DATA2VEC, resample=2, do_reduce_labels=True, **IMAGENET)
    hf = _hf(**init)
    hf.save_pretrained(tmp_path)
    ours = BeitImageProcessor.from_pretrained(tmp_path)
    assert ours.size == {"height": 256, "width": 256} and ours.resample == 2 and ours.do_reduce_labels
    images, maps = [_pil(37, 53), _pil(300, 200, 1)], _maps([(37, 53), (300, 200)])
    _check(hf, ours, images, maps)
    # ours -> save -> HF and ours read the same thing
    ours.save_pretrained(tmp_path / "again")
    hf2 = _hf().from_pretrained(tmp_path / "again")
    _check(hf2, BeitImageProcessor.from_pretrained(tmp_path / "again" / "preprocessor_config.json"), images, maps)
    assert not [f for f in os.listdir(tmp_path / "again") if f.endswith(".tmp")]


def test_from_dict_legacy_and_unknown_keys(tmp_path):
    legacy = {"feature_extractor_type": "BeitFeatureExtractor", "size": 640, "crop_size": 640, "resample": 2,
              "do_center_crop": False, "image_mean": [0.5] * 3, "image_std": [0.5] * 3, "reduce_labels": True,
              "processor_class": "X", "data_format": "channels_first", "do_pad": True}
    with pytest.warns(UserWarning, match="reduce_labels"):
        ours = BeitImageProcessor.from_dict(legacy)
    assert ours.do_reduce_labels and ours.size == {"height": 640, "width": 640}
    with pytest.warns(UserWarning, match="using do_reduce_labels"):
        assert not BeitImageProcessor.from_dict(dict(legacy, do_reduce_labels=False)).do_reduce_labels
    assert BeitImageProcessor.from_dict({"resample": None, "do_center_crop": None}).resample == 3  # None -> default
    with pytest.raises(ValueError, match="rescale_offset"):
        BeitImageProcessor.from_dict({"rescale_offset": True})
    with pytest.raises(ValueError, match="ViTImageProcessor"):
        BeitImageProcessor.from_dict({"image_processor_type": "ViTImageProcessor"})
    with pytest.raises(ValueError, match="size"):
        BeitImageProcessor.from_dict({"size": {"longest_edge": 3}})
    with pytest.raises(ValueError, match="resample"):
        BeitImageProcessor.from_dict({"resample": 7})
    with pytest.raises(FileNotFoundError, match="preprocessor_config.json"):
        BeitImageProcessor.from_pretrained(tmp_path)
    (tmp_path / "preprocessor_config.json").write_text("{not json")
    with pytest.raises(ValueError, match="not valid JSON"):
        BeitImageProcessor.from_pretrained(tmp_path)
    d = BeitImageProcessor(**DATA2VEC).to_dict()
    assert d["image_processor_type"] == "BeitImageProcessor" and json.loads(json.dumps(d)) == d


# ==================================================================== errors
def test_bad_inputs_raise_clear_errors():
    ours = BeitImageProcessor()
    img = _pil(37, 53)
    with pytest.raises(ValueError, match="empty list"):
        ours([])
    with pytest.raises(ValueError, match="1 dimensions"):
        ours(np.zeros(10, np.uint8))
    with pytest.raises(ValueError, match="6 dimensions"):
        ours(np.zeros((1, 1, 2, 5, 5, 3), np.uint8))
    with pytest.raises(ValueError, match="channel axis"):
        ours(np.zeros((20, 20, 2), np.uint8))
    with pytest.raises(ValueError, match="5 channels"):
        ours(np.zeros((20, 20, 5), np.uint8), input_data_format="channels_last")
    with pytest.raises(ValueError, match="str"):
        ours("not an image.png")
    with pytest.raises(ValueError, match=r"2 image\(s\) but 1 segmentation map"):
        ours([img, img], _maps([(37, 53)]))
    with pytest.raises(ValueError, match="2-D"):
        ours(img, [img])  # an RGB image as a label map
    with pytest.raises(ValueError, match="different shapes"):
        ours([img, _pil(20, 20)], do_resize=False)
    with pytest.raises(ValueError, match="outside \\[0, 1\\]"):
        ours(_rng(0).random((20, 20, 3)) * 255)
    with pytest.raises(ValueError, match="outside \\[0, 255\\]"):
        ours(img, np.full((37, 53), 300))
    with pytest.raises(TypeError, match="unexpected keyword"):
        ours(img, foo=1)
    with pytest.raises(ValueError, match="resample"):
        ours(img, resample=None)
    with pytest.raises(ValueError, match="return_tensors"):
        ours(img, return_tensors="pt")
    with pytest.raises(ValueError, match="must be a bool"):
        BeitImageProcessor(do_resize="yes")


# ==================================================================== PNG / image IO
def test_voc_palette():
    pal = voc_palette()
    assert pal.shape == (256, 3) and pal.dtype == np.uint8
    np.testing.assert_array_equal(pal[:5], [[0, 0, 0], [128, 0, 0], [0, 128, 0], [128, 128, 0], [0, 0, 128]])
    assert len({tuple(c) for c in pal}) == 256
    np.testing.assert_array_equal(voc_palette(21), pal[:21])


def test_segmentation_to_png(tmp_path):
    labels = _rng(0).integers(0, 256, (23, 31))
    path = segmentation_to_png(labels, tmp_path / "seg.png")
    assert path == str(tmp_path / "seg.png")
    with Image.open(path) as im:
        assert im.mode == "P" and im.size == (31, 23)
        np.testing.assert_array_equal(np.array(im), labels)  # pixel values are the labels
        np.testing.assert_array_equal(np.array(im.convert("RGB")), voc_palette()[labels])
    palette = _rng(1).integers(0, 256, (4, 3))
    small = _rng(2).integers(0, 4, (5, 6)).astype(np.int32)
    segmentation_to_png(small, tmp_path / "seg.png", palette=palette)  # overwrite in place
    with Image.open(tmp_path / "seg.png") as im:
        np.testing.assert_array_equal(np.array(im.convert("RGB")), palette[small])
    assert sorted(os.listdir(tmp_path)) == ["seg.png"]  # no temp files left behind
    with pytest.raises(ValueError, match="palette has 4 colours"):
        segmentation_to_png(small + 1, tmp_path / "x.png", palette=palette)
    with pytest.raises(ValueError, match=r"\[-1, "):
        segmentation_to_png(small - 1, tmp_path / "x.png")
    with pytest.raises(ValueError, match="integer labels"):
        segmentation_to_png(small.astype(np.float32), tmp_path / "x.png")
    with pytest.raises(ValueError, match="2-D"):
        segmentation_to_png(small[None], tmp_path / "x.png")
    with pytest.raises(FileNotFoundError):
        segmentation_to_png(small, tmp_path / "missing_dir" / "x.png")
    assert sorted(os.listdir(tmp_path)) == ["seg.png"]


def test_load_image(tmp_path):
    rgba = _pil(12, 9, mode="RGBA")
    rgba.save(tmp_path / "a.png")
    im = load_image(tmp_path / "a.png")
    assert im.mode == "RGB" and im.size == (9, 12)
    np.testing.assert_array_equal(np.array(im), np.array(rgba)[..., :3])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        np.testing.assert_array_equal(np.array(im), np.array(transformers.image_utils.load_image(
            str(tmp_path / "a.png"))))
    assert load_image(_pil(5, 5, mode="L")).mode == "RGB"
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_image(tmp_path / "nope.png")
    (tmp_path / "bad.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    with pytest.raises(ValueError, match="not a readable image"):
        load_image(tmp_path / "bad.png")
    data = (tmp_path / "a.png").read_bytes()
    (tmp_path / "trunc.png").write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match="not a readable image"):
        load_image(tmp_path / "trunc.png")
