"""Image processor equivalent to HF transformers 5.23's BEiT image processor (PIL backend).

Used by Data2Vec-vision (its ``preprocessor_config.json`` names ``BeitImageProcessor`` /
``BeitFeatureExtractor``). Without torchvision, ``transformers.BeitImageProcessor`` resolves
to ``BeitImageProcessorPil``; this class reproduces that one bit for bit: the same Pillow
``resize`` calls on the same uint8 arrays, float64 rescale cast to float32, float32 normalize.
numpy + Pillow (imported lazily; only needed to resize and for PNG/image IO);
``post_process_semantic_segmentation`` with ``target_sizes`` resizes with
:func:`zoo.nn.resize.resize` (jax, imported on first use).

    proc = BeitImageProcessor.from_pretrained("path/to/checkpoint")
    batch = proc([img_a, img_b], segmentation_maps=[map_a, map_b])
    batch["pixel_values"]  # float32 [B, 3, H, W] (channels first, like return_tensors="np")
    batch["labels"]        # int64 [B, H, W]
    maps = proc.post_process_semantic_segmentation(logits, target_sizes=[(h, w), ...])

Order of operations per image (HF): [reduce labels] -> resize -> center crop -> rescale ->
normalize. Images: PIL images, numpy-like arrays ``[H, W, C]`` / ``[C, H, W]`` with C in
{1, 3, 4} (channel axis inferred as HF does: first axis when ambiguous), a batch
``[B, ...]`` or a list of these. Float arrays in [0, 1] are scaled to uint8 for the PIL
resize and back (HF truncates, it does not round), and are then rescaled *again* by
``rescale_factor`` when ``do_rescale`` is on, exactly as HF does (a warning says so).
Grayscale and RGBA images keep 1 / 4 channels unless ``do_convert_rgb=True`` (RGBA is then
composited on white); normalizing them with a 3-value mean is an error, as in HF.

Deliberate differences from HF 5.23 (all where HF gives wrong or unusable results):

* Segmentation maps are resized with ``PIL NEAREST`` (``segmentation_resample``). HF 5.23
  resizes them with the *image* filter (bicubic by default), which invents label values
  (e.g. 0 and 100 -> 21, 49, 107); HF 4.x used nearest. ``segmentation_resample=None``
  reproduces HF 5.23.
* The legacy config key ``reduce_labels`` (ADE20k checkpoints) sets ``do_reduce_labels``
  when the latter is absent, as HF 4.x did; HF 5.23 silently ignores it.
* HF reduces labels in place, modifying the caller's array; this class does not.
* A 2-D numpy array is a grayscale image (HF accepts only 2-D PIL images; with
  ``do_convert_rgb=True`` it is repeated to 3 channels, like PIL ``L`` -> ``RGB``).
* Errors instead of garbage: a number of segmentation maps different from the number of
  images (HF returns mismatched batches), an empty input, images that do not stack
  (``do_resize=False`` with different sizes), a channel count outside {1, 3, 4}.
* Outputs are always stacked numpy arrays (HF ``return_tensors="np"``); dtypes follow HF:
  float32 normally, the input dtype when neither rescale nor normalize runs.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import sys
import warnings
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from zoo.preprocessing.config_file import (
    read_preprocessor_config,
    reject_unknown_keys,
    write_atomically,
    write_preprocessor_config,
)

__all__ = ["BeitImageProcessor", "load_image", "segmentation_to_png", "voc_palette"]

IMAGE_PROCESSOR_TYPE = "BeitImageProcessor"
_ACCEPTED_TYPES = frozenset({"BeitImageProcessor", "BeitImageProcessorPil", "BeitImageProcessorFast",
                             "BeitFeatureExtractor"})

# PIL resampling codes (PIL.Image.Resampling values).
NEAREST, LANCZOS, BILINEAR, BICUBIC, BOX, HAMMING = 0, 1, 2, 3, 4, 5
_RESAMPLE_NAMES = {0: "NEAREST", 1: "LANCZOS", 2: "BILINEAR", 3: "BICUBIC", 4: "BOX", 5: "HAMMING"}
IMAGENET_STANDARD_MEAN = (0.5, 0.5, 0.5)
IMAGENET_STANDARD_STD = (0.5, 0.5, 0.5)

# preprocessor_config.json keys that do not change what the HF BEiT PIL processor computes:
# bookkeeping, torchvision-only options, and ImagesKwargs the BEiT pipeline never reads
# (data_format: the PIL backend always returns channels first; do_pad/pad_size: BEiT's
# _preprocess does not pad).
_NEUTRAL_KEYS = frozenset({
    "image_processor_type", "feature_extractor_type", "processor_class", "_processor_class",
    "transformers_version", "data_format", "do_pad", "pad_size", "device", "return_tensors",
    "disable_grouping", "image_seq_length",
})
_SIZE_KEY_SETS = ({"height", "width"}, {"shortest_edge"}, {"shortest_edge", "longest_edge"},
                  {"max_height", "max_width"})
_CHANNELS = (1, 3, 4)


# ====================================================================== small helpers
def _pil():
    """``PIL.Image`` (lazy import)."""
    try:
        from PIL import Image
    except ImportError as e:  # pragma: no cover - exercised only without Pillow
        raise ImportError(
            "BeitImageProcessor needs Pillow to resize images and to read/write image files: pip install pillow"
        ) from e
    return Image


def _is_pil(obj) -> bool:
    mod = sys.modules.get("PIL.Image")  # an object can only be a PIL image if PIL is imported
    return mod is not None and isinstance(obj, mod.Image)


def _is_array(obj) -> bool:
    return isinstance(obj, np.ndarray) or (hasattr(obj, "__array__") and hasattr(obj, "shape")
                                           and not isinstance(obj, (str, bytes)))


def _is_int(v) -> bool:
    return isinstance(v, (int, np.integer)) and not isinstance(v, (bool, np.bool_))


def _is_real(v) -> bool:
    return isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, (bool, np.bool_))


def _size_dict(size, default_to_square: bool, name: str) -> dict[str, int] | None:
    """HF ``get_size_dict``: int -> square (or shortest_edge), (h, w) -> dict; validates the keys."""
    if size is None:
        return None
    if _is_int(size):
        d = {"height": int(size), "width": int(size)} if default_to_square else {"shortest_edge": int(size)}
    elif isinstance(size, (list, tuple)) and len(size) == 2:
        d = {"height": size[0], "width": size[1]}
    elif isinstance(size, Mapping):
        d = {k: v for k, v in size.items() if v is not None}  # HF SizeDict round trips write no None
    else:
        raise ValueError(f"{name} must be an int, a (height, width) pair or a dict, got {size!r}")
    if set(d) not in _SIZE_KEY_SETS:
        raise ValueError(
            f"{name}={size!r}: supported key sets are {[sorted(s) for s in _SIZE_KEY_SETS]} "
            "(HF's BEiT processor cannot resize with the others either)"
        )
    for k, v in d.items():
        if not _is_int(v) or v <= 0:
            raise ValueError(f"{name}[{k!r}] must be a positive integer, got {v!r}")
    return {k: int(v) for k, v in d.items()}


def _mean_std(value, name: str):
    if value is None:
        return None
    if _is_real(value):
        return float(value)
    if isinstance(value, (list, tuple, np.ndarray)) and len(value) > 0 and all(_is_real(v) for v in value):
        return tuple(float(v) for v in value)
    raise ValueError(f"{name} must be a number or a non-empty list of numbers, got {value!r}")


def _check_resample(value, name="resample"):
    if value is None:
        return None
    if not _is_int(value) or int(value) not in _RESAMPLE_NAMES:
        raise ValueError(f"{name} must be a PIL resampling code {dict(_RESAMPLE_NAMES)}, got {value!r}")
    return int(value)


def _channel_format(value):
    if value is None:
        return None
    v = getattr(value, "value", value)
    if v not in ("channels_first", "channels_last"):
        raise ValueError(f"input_data_format must be 'channels_first', 'channels_last' or None, got {value!r}")
    return v


def _infer_channels(image: np.ndarray, what: str) -> str:
    """HF ``infer_channel_dimension_format(image, num_channels=(1, 3, 4))`` for a 3-D array."""
    first, last = image.shape[0] in _CHANNELS, image.shape[-1] in _CHANNELS
    if first and last:
        warnings.warn(f"{what}: the channel axis of shape {image.shape} is ambiguous; assuming channels first "
                      "(like HF). Pass input_data_format to choose.", UserWarning, stacklevel=4)
        return "channels_first"
    if first:
        return "channels_first"
    if last:
        return "channels_last"
    raise ValueError(f"{what} has shape {image.shape}: cannot find a channel axis of size 1, 3 or 4 "
                     "(expected [H, W, C] or [C, H, W] with C in {1, 3, 4})")


# ====================================================================== HF image transforms
def _pil_to_rgb(img) -> np.ndarray:
    """HF ``convert_to_rgb`` on a PIL image (alpha composited onto white) -> uint8 [H, W, 3]."""
    Image = _pil()
    if "A" in img.getbands() or img.info.get("transparency") is not None:
        img = img.convert("RGBA")
        background = Image.new("RGBA", img.size, (255, 255, 255, 255))
        return np.array(Image.alpha_composite(background, img).convert("RGB"))
    return np.array(img.convert("RGB"))


def _np_to_rgb(image: np.ndarray, fmt: str | None, what: str) -> np.ndarray:
    """HF ``convert_to_rgb`` on an array (same layout out as in)."""
    if fmt is None:
        fmt = _infer_channels(image, what)
    axis = -1 if fmt == "channels_last" else 0
    image = np.moveaxis(image, axis, -1)
    c = image.shape[-1]
    if c == 1:
        rgb = np.repeat(image, 3, axis=-1)
    elif c == 4:
        if np.issubdtype(image.dtype, np.floating) and (image.min() < 0.0 or image.max() > 1.0):
            raise ValueError(f"{what}: an RGBA float image must lie in [0, 1] to be converted to RGB, "
                             f"got [{image.min()}, {image.max()}]")
        white = 255 if np.issubdtype(image.dtype, np.integer) else 1.0
        alpha = image[..., 3:4] / white
        composite = alpha * image[..., :3] + (1 - alpha) * white
        rgb = np.round(composite).astype(image.dtype) if white == 255 else composite.astype(image.dtype)
    else:
        rgb = image
    return np.moveaxis(rgb, -1, axis)


def _to_chw(image, do_convert_rgb, input_data_format, what) -> np.ndarray:
    """HF ``PilBackend.process_image``: one image -> channels-first array (dtype kept)."""
    if _is_pil(image):
        arr = _pil_to_rgb(image) if do_convert_rgb else np.array(image)
        arr = arr[None] if arr.ndim == 2 else np.moveaxis(arr, -1, 0)
    else:
        arr = np.asarray(image)
        if arr.dtype == object or not (np.issubdtype(arr.dtype, np.number) or arr.dtype == np.bool_):
            raise ValueError(f"{what} has dtype {arr.dtype}; expected a numeric array or a PIL image")
        if arr.ndim == 2:
            arr = np.repeat(arr[None], 3, axis=0) if do_convert_rgb else arr[None]
        elif arr.ndim == 3:
            if do_convert_rgb:
                arr = _np_to_rgb(arr, input_data_format, what)
            fmt = input_data_format or _infer_channels(arr, what)
            if fmt == "channels_last":
                arr = np.moveaxis(arr, -1, 0)
        else:
            raise ValueError(f"{what} has {arr.ndim} dimensions; expected [H, W], [H, W, C] or [C, H, W]")
    if arr.shape[0] not in _CHANNELS:
        raise ValueError(f"{what} has {arr.shape[0]} channels (shape {arr.shape} channels first); "
                         "expected 1 (grayscale), 3 (RGB) or 4 (RGBA)")
    if arr.shape[1] == 0 or arr.shape[2] == 0:
        raise ValueError(f"{what} is empty (height x width = {arr.shape[1]} x {arr.shape[2]})")
    return arr


def _rescale(image: np.ndarray, scale: float) -> np.ndarray:
    """HF ``rescale``: float64 multiply, then float32."""
    return (image.astype(np.float64) * scale).astype(np.float32)


def _needs_rescale_for_pil(image: np.ndarray, what: str) -> bool:
    """HF ``_rescale_for_pil_conversion``."""
    if image.dtype == np.uint8:
        return False
    if np.allclose(image, image.astype(int)):
        if np.all(image >= 0) and np.all(image <= 255):
            return False
        raise ValueError(f"{what} has integer values outside [0, 255] (got [{image.min()}, {image.max()}]); "
                         "it cannot be resized as an 8-bit image")
    if np.all(image >= 0) and np.all(image <= 1):
        return True
    raise ValueError(f"{what} has non-integer values outside [0, 1] (got [{image.min()}, {image.max()}]); "
                     "float images must lie in [0, 1] (or hold integers in [0, 255]) to be resized")


def _resize(image: np.ndarray, height: int, width: int, resample: int, what: str) -> np.ndarray:
    """HF ``image_transforms.resize`` (PIL) on a channels-first array; returns channels first."""
    Image = _pil()
    hwc = np.transpose(image, (1, 2, 0))
    if hwc.shape[-1] == 1:
        hwc = np.squeeze(hwc, axis=-1)
    do_rescale = _needs_rescale_for_pil(hwc, what)
    if do_rescale:
        hwc = _rescale(hwc, 255)
    pil = Image.fromarray(hwc.astype(np.uint8))
    out = np.array(pil.resize((width, height), resample=resample, reducing_gap=None))
    if out.ndim == 2:
        out = out[..., None]
    out = np.transpose(out, (2, 0, 1))
    return _rescale(out, 1 / 255) if do_rescale else out


def _output_size(image: np.ndarray, size: dict[str, int]) -> tuple[int, int]:
    """HF ``PilBackend.resize`` target size for a channels-first image."""
    h, w = image.shape[-2:]
    if "shortest_edge" in size and "longest_edge" in size:  # get_size_with_aspect_ratio
        s, max_size = size["shortest_edge"], size["longest_edge"]
        raw = None
        lo, hi = float(min(h, w)), float(max(h, w))
        if hi / lo * s > max_size:
            raw = max_size * lo / hi
            s = int(round(raw))
        if (h <= w and h == s) or (w <= h and w == s):
            return h, w
        if w < h:
            return (int(raw * h / w) if raw is not None else int(s * h / w)), s
        return s, (int(raw * w / h) if raw is not None else int(s * w / h))
    if "shortest_edge" in size:  # get_resize_output_image_size(default_to_square=False)
        s = size["shortest_edge"]
        short, long = (w, h) if w <= h else (h, w)
        new_short, new_long = s, int(s * long / short)
        return (new_long, new_short) if w <= h else (new_short, new_long)
    if "max_height" in size:  # get_image_size_for_max_height_width
        scale = min(size["max_height"] / h, size["max_width"] / w)
        return int(h * scale), int(w * scale)
    return size["height"], size["width"]


def _center_crop(image: np.ndarray, crop_h: int, crop_w: int) -> np.ndarray:
    """HF ``center_crop`` on a channels-first array (zero-pads when the image is smaller)."""
    h, w = image.shape[-2:]
    top, left = (h - crop_h) // 2, (w - crop_w) // 2
    bottom, right = top + crop_h, left + crop_w
    if top >= 0 and bottom <= h and left >= 0 and right <= w:
        return image[..., top:bottom, left:right]
    new_h, new_w = max(crop_h, h), max(crop_w, w)
    padded = np.zeros_like(image, shape=image.shape[:-2] + (new_h, new_w))
    top_pad, left_pad = math.ceil((new_h - h) / 2), math.ceil((new_w - w) / 2)
    padded[..., top_pad:top_pad + h, left_pad:left_pad + w] = image
    top, bottom, left, right = top + top_pad, bottom + top_pad, left + left_pad, right + left_pad
    return padded[..., max(0, top):min(new_h, bottom), max(0, left):min(new_w, right)]


def _normalize(image: np.ndarray, mean, std, what: str) -> np.ndarray:
    """HF ``normalize`` on channels first: float32 unless already floating, ``(x - mean) / std``."""
    c = image.shape[0]
    if not np.issubdtype(image.dtype, np.floating):
        image = image.astype(np.float32)
    stats = []
    for name, v in (("image_mean", mean), ("image_std", std)):
        if isinstance(v, tuple):
            if len(v) != c:
                raise ValueError(
                    f"{what} has {c} channel(s) but {name} has {len(v)} values"
                    + ("; pass do_convert_rgb=True to convert grayscale/RGBA images to RGB" if c in (1, 4) else "")
                )
        else:
            v = [v] * c
        stats.append(np.array(v, dtype=image.dtype))
    return ((image.T - stats[0]) / stats[1]).T


def _reduce_labels(label: np.ndarray) -> np.ndarray:
    """HF ``reduce_label``: 0 -> 255, others -1 (255 stays 255); on a copy."""
    label = label.copy()
    label[label == 0] = 255
    label = label - 1
    label[label == 254] = 255
    return label


def _flatten(inputs, expected_ndims: int, what: str) -> list:
    """HF ``make_flat_list_of_images``: single item, batch array, list, or list of lists -> flat list."""
    def one(item, i):
        if _is_pil(item):
            return [item]
        if _is_array(item):
            nd = len(item.shape)
            if nd == expected_ndims or (expected_ndims == 3 and nd == 2):
                return [item]
            if nd == expected_ndims + 1:
                return list(np.asarray(item))
            shapes = "[H, W]" if expected_ndims == 2 else "[H, W], [H, W, C] or [C, H, W]"
            raise ValueError(f"{what} {i} has {nd} dimensions (shape {tuple(item.shape)}); expected {shapes} "
                             "or a batch of those")
        raise ValueError(f"{what} {i} is a {type(item).__name__}; expected a PIL image or a numpy array")

    if isinstance(inputs, (list, tuple)):
        if len(inputs) == 0:
            raise ValueError(f"no {what}s given (empty list)")
        out = []
        for i, item in enumerate(inputs):
            if isinstance(item, (list, tuple)):
                for j, sub in enumerate(item):
                    out.extend(one(sub, f"{i}.{j}"))
            else:
                out.extend(one(item, i))
        if not out:
            raise ValueError(f"no {what}s given (empty nested lists)")
        return out
    return one(inputs, 0)


def _stack(arrays: list[np.ndarray], name: str) -> np.ndarray:
    shapes = {a.shape for a in arrays}
    if len(shapes) > 1:
        raise ValueError(f"processed {name} have different shapes {sorted(shapes)} and cannot be stacked into a "
                         "batch; resize them to one size (do_resize=True) or process them one at a time")
    return np.stack(arrays)


# ====================================================================== shared processor plumbing
# (the dataclass processors here and in :mod:`zoo.preprocessing.clip_image` follow HF's PilBackend)
def _init_fields(obj, bool_fields: Sequence[str]) -> None:
    """``__post_init__`` of a processor dataclass: ``None`` -> default (HF ``_set_attributes``),
    then type checks and canonical ``size`` / ``crop_size`` / mean / std / resample values."""
    def setattr_(name, value):
        object.__setattr__(obj, name, value)

    for f in dataclasses.fields(obj):
        if getattr(obj, f.name) is None:
            setattr_(f.name, f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default)
    for name in bool_fields:
        if not isinstance(getattr(obj, name), (bool, np.bool_)):
            raise ValueError(f"{name} must be a bool, got {getattr(obj, name)!r}")
    if obj.do_convert_rgb is not None and not isinstance(obj.do_convert_rgb, (bool, np.bool_)):
        raise ValueError(f"do_convert_rgb must be a bool or None, got {obj.do_convert_rgb!r}")
    if not _is_real(obj.rescale_factor):
        raise ValueError(f"rescale_factor must be a number, got {obj.rescale_factor!r}")
    setattr_("size", _size_dict(obj.size, obj.default_to_square, "size"))
    setattr_("crop_size", _size_dict(obj.crop_size, True, "crop_size"))
    setattr_("image_mean", _mean_std(obj.image_mean, "image_mean"))
    setattr_("image_std", _mean_std(obj.image_std, "image_std"))
    setattr_("resample", _check_resample(obj.resample))
    setattr_("input_data_format", _channel_format(obj.input_data_format))


def _checked_config(config, accepted_types, owner: str) -> dict[str, Any]:
    """A copy of a ``preprocessor_config.json`` dict whose processor type is one of ``accepted_types``."""
    if not isinstance(config, Mapping):
        raise TypeError(f"expected a dict (preprocessor_config.json), got {type(config).__name__}")
    config = dict(config)
    for key in ("image_processor_type", "feature_extractor_type"):
        kind = config.get(key)
        if kind is not None and kind not in accepted_types:
            raise ValueError(f"{key}={kind!r} is not supported: {owner} implements {sorted(accepted_types)} only")
    return config


def _known_kwargs(cls, config: Mapping[str, Any], neutral, semantics: str) -> dict[str, Any]:
    """The dataclass fields in ``config``; unknown keys outside ``neutral`` raise ``ValueError``."""
    fields = {f.name for f in dataclasses.fields(cls)}
    reject_unknown_keys(config, fields, neutral, cls.__name__, semantics)
    return {k: v for k, v in config.items() if k in fields}


@dataclasses.dataclass(frozen=True, repr=False)
class _PilImageProcessor:
    """Base of the processor dataclasses: the fields of HF ``PilBackend`` processors (BEiT
    defaults; subclasses redeclare the ones whose defaults differ and add their own),
    ``__post_init__``, ``from_pretrained`` / ``to_dict`` / ``save_pretrained``. Subclasses define
    ``from_dict`` and the class attribute ``_processor_type``."""

    do_resize: bool = True
    size: Any = dataclasses.field(default_factory=lambda: {"height": 224, "width": 224})
    resample: int = BICUBIC
    do_center_crop: bool = False
    crop_size: Any = dataclasses.field(default_factory=lambda: {"height": 224, "width": 224})
    do_rescale: bool = True
    rescale_factor: float = 1 / 255
    do_normalize: bool = True
    image_mean: Any = IMAGENET_STANDARD_MEAN
    image_std: Any = IMAGENET_STANDARD_STD
    do_convert_rgb: bool | None = None
    default_to_square: bool = True
    input_data_format: str | None = None

    def __post_init__(self):
        _init_fields(self, [f.name for f in dataclasses.fields(self) if f.type in ("bool", bool)])

    @classmethod
    def from_pretrained(cls, path: str | os.PathLike):
        """Read ``<path>/preprocessor_config.json`` (``path`` may also be the JSON file)."""
        return cls.from_dict(read_preprocessor_config(path))

    def to_dict(self) -> dict[str, Any]:
        """The ``preprocessor_config.json`` dict (HF layout; ``None`` fields left out)."""
        out = {k: v for k, v in dataclasses.asdict(self).items() if v is not None}
        for k in ("image_mean", "image_std"):
            if isinstance(out[k], tuple):
                out[k] = list(out[k])
        out["image_processor_type"] = self._processor_type
        return dict(sorted(out.items()))

    def save_pretrained(self, directory: str | os.PathLike) -> str:
        """Write ``<directory>/preprocessor_config.json`` atomically; returns its path."""
        return write_preprocessor_config(directory, self.to_dict())

    def __repr__(self) -> str:
        return f"{type(self).__name__}({json.dumps(self.to_dict(), sort_keys=True)})"


def _call_params(obj, overrides: Mapping[str, Any], return_tensors) -> dict[str, Any]:
    """The fields of ``obj`` with the per-call ``overrides``, canonicalised and validated like HF's
    ``validate_preprocess_arguments``."""
    owner = type(obj).__name__
    if return_tensors not in (None, "np"):
        raise ValueError(f"return_tensors={return_tensors!r}: {owner} returns numpy arrays only")
    fields = {f.name for f in dataclasses.fields(obj)}
    bad = sorted(set(overrides) - fields)
    if bad:
        raise TypeError(f"unexpected keyword argument(s) {bad}; valid ones are {sorted(fields)}")
    p = {name: getattr(obj, name) for name in fields}
    p.update(overrides)
    if "size" in overrides or "default_to_square" in overrides:
        p["size"] = _size_dict(p["size"], bool(p["default_to_square"]), "size")
    p["crop_size"] = _size_dict(p["crop_size"], True, "crop_size")
    p["image_mean"] = _mean_std(p["image_mean"], "image_mean")
    p["image_std"] = _mean_std(p["image_std"], "image_std")
    p["resample"] = _check_resample(p["resample"])
    p["input_data_format"] = _channel_format(p["input_data_format"])
    if p["rescale_factor"] is not None and not _is_real(p["rescale_factor"]):
        raise ValueError(f"rescale_factor must be a number, got {p['rescale_factor']!r}")
    if p["do_rescale"] and p["rescale_factor"] is None:
        raise ValueError("rescale_factor must be specified if do_rescale is True")
    if p["do_normalize"] and (p["image_mean"] is None or p["image_std"] is None):
        raise ValueError("image_mean and image_std must both be specified if do_normalize is True")
    if p["do_center_crop"] and p["crop_size"] is None:
        raise ValueError("crop_size must be specified if do_center_crop is True")
    if p["do_center_crop"] and set(p["crop_size"]) != {"height", "width"}:
        raise ValueError(f"crop_size must have keys 'height' and 'width', got {p['crop_size']!r}")
    if p["do_resize"] and (p["size"] is None or p["resample"] is None):
        raise ValueError("size and resample must be specified if do_resize is True")
    return p


def _transform(arr: np.ndarray, p: Mapping[str, Any], resample: int, what: str, pixels: bool = True) -> np.ndarray:
    """HF ``PilBackend._preprocess`` for one channels-first array: resize -> center crop ->
    (pixels only) rescale -> normalize."""
    if p["do_resize"]:
        arr = _resize(arr, *_output_size(arr, p["size"]), resample, what)
    if p["do_center_crop"]:
        arr = _center_crop(arr, p["crop_size"]["height"], p["crop_size"]["width"])
    if pixels:
        if p["do_rescale"]:
            arr = _rescale(arr, p["rescale_factor"])
        if p["do_normalize"]:
            arr = _normalize(arr, p["image_mean"], p["image_std"], what)
    return arr


def _pixel_values(images, p: Mapping[str, Any]) -> list[np.ndarray]:
    """Every image of ``images`` (see :func:`_flatten`) through :func:`_to_chw` and :func:`_transform`."""
    out = []
    for i, image in enumerate(_flatten(images, 3, "image")):
        what = f"image {i}"
        arr = _to_chw(image, p["do_convert_rgb"], p["input_data_format"], what)
        if p["do_rescale"] and arr.dtype != np.uint8 and arr.size and arr.min() >= 0 and arr.max() <= 1:
            warnings.warn(f"{what} looks already rescaled to [0, 1] but do_rescale=True multiplies it by "
                          f"rescale_factor={p['rescale_factor']} again (as HF does); pass do_rescale=False "
                          "if it is in [0, 1]", UserWarning, stacklevel=3)
        out.append(_transform(arr, p, p["resample"], what))
    return out


# ====================================================================== processor
@dataclasses.dataclass(frozen=True, repr=False)
class BeitImageProcessor(_PilImageProcessor):
    """BEiT / Data2Vec-vision image processor (HF ``BeitImageProcessor``, PIL backend).

    Fields mirror ``preprocessor_config.json`` with HF 5.23 defaults. ``size`` /
    ``crop_size`` accept an int (square; ``{"shortest_edge": n}`` for ``size`` when
    ``default_to_square=False``), a ``(height, width)`` pair or a dict with keys
    ``height``+``width``, ``shortest_edge`` [+ ``longest_edge``] or ``max_height``+``max_width``.
    A field given as ``None`` takes its default (HF ``_set_attributes``).
    """

    do_reduce_labels: bool = False
    _processor_type = IMAGE_PROCESSOR_TYPE

    # ------------------------------------------------------------------ config IO
    @classmethod
    def from_dict(cls, config: Mapping[str, Any]) -> "BeitImageProcessor":
        """Build from a ``preprocessor_config.json`` dict.

        Keys that do not change the computation (``_NEUTRAL_KEYS``) are ignored; any other
        unknown key raises ``ValueError`` naming it. Legacy ``reduce_labels`` sets
        ``do_reduce_labels`` when that key is absent (HF 4.x behaviour).
        """
        config = _checked_config(config, _ACCEPTED_TYPES, "BeitImageProcessor")
        if "reduce_labels" in config:
            legacy = config.pop("reduce_labels")
            if config.get("do_reduce_labels") is None:
                warnings.warn("preprocessor config key 'reduce_labels' is legacy; using it as do_reduce_labels="
                              f"{legacy!r} (HF 4.x behaviour; HF 5.x ignores the key)", UserWarning, stacklevel=2)
                config["do_reduce_labels"] = legacy
            elif bool(legacy) != bool(config["do_reduce_labels"]):
                warnings.warn(f"preprocessor config has reduce_labels={legacy!r} and do_reduce_labels="
                              f"{config['do_reduce_labels']!r}; using do_reduce_labels", UserWarning, stacklevel=2)
        return cls(**_known_kwargs(cls, config, _NEUTRAL_KEYS, "HF BEiT"))

    # ------------------------------------------------------------------ call
    def __call__(self, images, segmentation_maps=None, *, segmentation_resample: int | None = NEAREST,
                 return_tensors: str | None = "np", **overrides) -> dict[str, np.ndarray]:
        """Preprocess one image or a batch (and optionally their segmentation maps).

        images: PIL image(s) or arrays ``[H, W]``, ``[H, W, C]``, ``[C, H, W]``, ``[B, ...]``, or a
        list. segmentation_maps: one ``[H, W]`` label map per image (PIL ``L``/``P`` or integer
        array). ``overrides``: any field (e.g. ``do_resize=False``) for this call; an explicit
        ``None`` means "off" for the ``do_*`` flags, as in HF. segmentation_resample: PIL filter for
        the maps (``None`` = the image ``resample``, HF 5.23's behaviour).

        Returns ``{"pixel_values": float32 [B, C, H, W]}`` plus ``"labels": int64 [B, H, W]``.
        """
        p = _call_params(self, overrides, return_tensors)
        seg_resample = p["resample"] if segmentation_resample is None else _check_resample(
            segmentation_resample, "segmentation_resample")

        pixel_values = _pixel_values(images, p)
        out = {"pixel_values": _stack(pixel_values, "images")}

        if segmentation_maps is not None:
            maps = _flatten(segmentation_maps, 2, "segmentation map")
            if len(maps) != len(pixel_values):
                raise ValueError(f"got {len(pixel_values)} image(s) but {len(maps)} segmentation map(s); "
                                 "give one [H, W] label map per image")
            labels = []
            for i, m in enumerate(maps):
                what = f"segmentation map {i}"
                arr = np.array(m) if _is_pil(m) else np.asarray(m)
                if arr.ndim != 2:
                    raise ValueError(f"{what} has shape {arr.shape}; expected a 2-D [H, W] label map "
                                     "(PIL mode 'L'/'P' or an integer array)")
                if arr.dtype == object or not (np.issubdtype(arr.dtype, np.number) or arr.dtype == np.bool_):
                    raise ValueError(f"{what} has dtype {arr.dtype}; expected integer labels")
                if arr.shape[0] == 0 or arr.shape[1] == 0:
                    raise ValueError(f"{what} is empty (shape {arr.shape})")
                if p["do_reduce_labels"]:
                    arr = _reduce_labels(arr)
                lab = _transform(arr[None], p, seg_resample, what, pixels=False)
                labels.append(lab[0].astype(np.int64))
            out["labels"] = _stack(labels, "segmentation maps")
        return out

    # ------------------------------------------------------------------ post-processing
    def post_process_semantic_segmentation(self, outputs, target_sizes: Sequence[Sequence[int]] | None = None,
                                           return_segmentation_scores: bool = False) -> list:
        """Semantic label maps from segmentation logits (HF ``post_process_semantic_segmentation``).

        outputs: logits ``[B, num_labels, h, w]`` (numpy or jax array) or a model output with
        ``.logits``. target_sizes: one ``(H, W)`` per image; the logits are resized to it with
        PyTorch's bilinear rule (``align_corners=False``, :func:`zoo.nn.resize.resize`; within
        a few float32 ulps of ``F.interpolate``) before the argmax.

        Returns a list of B int64 arrays ``[H, W]`` (``[h, w]`` without target_sizes), or, with
        ``return_segmentation_scores``, dicts ``{"segmentation": [H, W], "segmentation_scores":
        [num_labels, H, W]}``.
        """
        logits = getattr(outputs, "logits", None)
        if logits is None:
            logits = outputs["logits"] if isinstance(outputs, Mapping) else outputs
        if not _is_array(logits) or len(logits.shape) != 4:
            raise ValueError(f"logits must be an array [batch, num_labels, height, width], got "
                             f"{getattr(logits, 'shape', type(logits).__name__)}")
        if target_sizes is None:
            scores = [np.asarray(logits[i]) for i in range(logits.shape[0])]
        else:
            if len(target_sizes) != logits.shape[0]:
                raise ValueError(f"got {len(target_sizes)} target sizes for a batch of {logits.shape[0]} logits; "
                                 "give one (height, width) per image")
            from zoo.nn.resize import resize  # PyTorch-exact F.interpolate (imports jax; only here)

            scores = []
            for i, hw in enumerate(target_sizes):
                hw = tuple(int(v) for v in np.asarray(hw).reshape(-1))
                if len(hw) != 2 or min(hw) < 1:
                    raise ValueError(f"target_sizes[{i}]={hw!r}: expected a positive (height, width)")
                x = logits[i]
                if type(x).__module__.split(".")[0] not in ("numpy", "jax", "jaxlib"):
                    x = np.asarray(x)  # torch tensors and other array-likes; jax arrays stay on device
                if not np.issubdtype(x.dtype, np.floating):
                    x = x.astype(np.float32)
                scores.append(np.asarray(resize(x, hw, axes=(1, 2), method="bilinear", align_corners=False)))
        maps = [s.argmax(axis=0).astype(np.int64) for s in scores]
        if return_segmentation_scores:
            return [{"segmentation": m, "segmentation_scores": s} for m, s in zip(maps, scores)]
        return maps


# ====================================================================== image IO
def voc_palette(num_classes: int = 256) -> np.ndarray:
    """The PASCAL VOC colour map (bit-interleaved class index) -> uint8 ``[num_classes, 3]``.

    Class 0 is black; colours are distinct for all 256 indices.
    """
    if not _is_int(num_classes) or not 1 <= num_classes <= 256:
        raise ValueError(f"num_classes must be an integer in [1, 256], got {num_classes!r}")
    idx = np.arange(num_classes)
    palette = np.zeros((num_classes, 3), dtype=np.int64)
    c = idx.copy()
    for j in range(8):
        for ch in range(3):
            palette[:, ch] |= ((c >> ch) & 1) << (7 - j)
        c >>= 3
    return palette.astype(np.uint8)


def segmentation_to_png(label_map, path: str | os.PathLike, palette=None) -> str:
    """Write a label map ``[H, W]`` (integers in [0, 255]) as a palette ("P" mode) colour PNG.

    The pixel values of the PNG are the labels; ``palette`` (``[N, 3]`` uint8-range colours,
    N <= 256; default :func:`voc_palette`) gives their colours. Written atomically (temp file
    + rename). Returns the path.
    """
    Image = _pil()
    labels = np.asarray(label_map)
    if labels.ndim != 2 or labels.shape[0] == 0 or labels.shape[1] == 0:
        raise ValueError(f"label_map must be a non-empty 2-D [H, W] array, got shape {labels.shape}")
    if not (np.issubdtype(labels.dtype, np.integer) or labels.dtype == np.bool_):
        raise ValueError(f"label_map must hold integer labels, got dtype {labels.dtype}")
    pal = voc_palette(256) if palette is None else np.asarray(palette)
    if pal.ndim != 2 or pal.shape[1] != 3 or not 1 <= pal.shape[0] <= 256:
        raise ValueError(f"palette must be [N, 3] colours with 1 <= N <= 256, got shape {pal.shape}")
    if not np.issubdtype(pal.dtype, np.integer) or pal.min() < 0 or pal.max() > 255:
        raise ValueError("palette colours must be integers in [0, 255]")
    lo, hi = int(labels.min()), int(labels.max())
    if lo < 0 or hi >= pal.shape[0]:
        raise ValueError(f"label_map values lie in [{lo}, {hi}] but the palette has {pal.shape[0]} colours "
                         f"(labels must be in [0, {pal.shape[0] - 1}])")
    image = Image.frombytes("P", (labels.shape[1], labels.shape[0]), np.ascontiguousarray(labels, np.uint8).tobytes())
    flat = np.zeros((256, 3), np.uint8)
    flat[: pal.shape[0]] = pal
    image.putpalette(flat.reshape(-1).tolist())
    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(directory):
        raise FileNotFoundError(f"directory {directory!r} does not exist")
    return write_atomically(path, lambda tmp: image.save(tmp, format="PNG"))


def load_image(path) -> Any:
    """Open an image file (or take a PIL image) -> RGB PIL image, EXIF rotation applied (HF ``load_image``).

    Local files only (HF's URL / base64 sources are not supported). Raises ``FileNotFoundError``
    for a missing file and ``ValueError`` for one Pillow cannot read.
    """
    Image = _pil()
    from PIL import ImageOps, UnidentifiedImageError

    if _is_pil(path):
        return ImageOps.exif_transpose(path).convert("RGB")
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"load_image expects a file path or a PIL image, got {type(path).__name__}")
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"image file {path!r} does not exist" if not os.path.exists(path)
                                else f"{path!r} is not a file")
    try:
        with Image.open(path) as im:
            im.load()
            return ImageOps.exif_transpose(im).convert("RGB")
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
        raise ValueError(f"{path!r} is not a readable image file ({type(e).__name__}: {e})") from None
