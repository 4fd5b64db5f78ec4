"""Image processor equivalent to HF transformers 5.23's CLIP image processor (PIL backend).

Used by GroupViT (and CLIP-family) checkpoints, whose ``preprocessor_config.json`` names
``CLIPImageProcessor`` / ``CLIPFeatureExtractor``. Without torchvision,
``transformers.CLIPImageProcessor`` resolves to ``CLIPImageProcessorPil`` (plain ``PilBackend``
pipeline); this class reproduces it bit for bit with the helpers of
:mod:`zoo.preprocessing.image` (same Pillow resize calls, float64 rescale cast to float32,
float32 normalize).

    proc = CLIPImageProcessor.from_pretrained("path/to/checkpoint")
    proc([img_a, img_b])["pixel_values"]  # float32 [B, 3, 224, 224]

Order of operations per image (HF): convert to RGB -> resize (shortest edge, aspect kept) ->
center crop -> rescale -> normalize -> [pad]. Input forms, the float / grayscale / RGBA rules
and the deliberate differences (errors instead of unusable output, 2-D arrays as grayscale)
are those of :class:`zoo.preprocessing.image.BeitImageProcessor`. ``do_convert_rgb`` defaults
to True here, as in HF's CLIP processor. Legacy ``use_square_size=True`` (KOSMOS-2 configs)
sets ``size`` to ``{"height": 224, "width": 224}`` like HF.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import numpy as np

from zoo.preprocessing.image import (
    _NEUTRAL_KEYS,
    _call_params,
    _checked_config,
    _PilImageProcessor,
    _known_kwargs,
    _pixel_values,
    _size_dict,
    _stack,
)

__all__ = ["CLIPImageProcessor", "OPENAI_CLIP_MEAN", "OPENAI_CLIP_STD"]

IMAGE_PROCESSOR_TYPE = "CLIPImageProcessor"
_ACCEPTED_TYPES = frozenset({"CLIPImageProcessor", "CLIPImageProcessorPil", "CLIPImageProcessorFast",
                             "CLIPFeatureExtractor"})
OPENAI_CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
# The CLIP pipeline pads (do_pad / pad_size are fields here), so only the rest is neutral.
_CLIP_NEUTRAL_KEYS = _NEUTRAL_KEYS - {"do_pad", "pad_size"}


@dataclasses.dataclass(frozen=True, repr=False)
class CLIPImageProcessor(_PilImageProcessor):
    """CLIP / GroupViT image processor (HF ``CLIPImageProcessor``, PIL backend).

    Fields mirror ``preprocessor_config.json`` with HF 5.23 defaults. ``size`` accepts an int
    (``{"shortest_edge": n}``, or a square when ``default_to_square=True``), a ``(height,
    width)`` pair or a dict with keys ``height``+``width``, ``shortest_edge`` [+
    ``longest_edge``] or ``max_height``+``max_width``; ``crop_size`` / ``pad_size`` an int
    (square), a pair or ``{"height", "width"}``. ``do_pad``: pad (zeros, bottom/right) to
    ``pad_size``, or to the largest image of the batch when ``pad_size`` is None. A field given
    as ``None`` takes its default (HF ``_set_attributes``).
    """

    # (the other fields and their defaults -- do_resize, resample, crop_size, do_rescale,
    # rescale_factor, do_normalize, input_data_format -- come from the base class)
    size: Any = dataclasses.field(default_factory=lambda: {"shortest_edge": 224})
    do_center_crop: bool = True
    image_mean: Any = OPENAI_CLIP_MEAN
    image_std: Any = OPENAI_CLIP_STD
    do_convert_rgb: bool | None = True
    default_to_square: bool = False
    do_pad: bool | None = None
    pad_size: Any = None
    _processor_type = IMAGE_PROCESSOR_TYPE

    def __post_init__(self):
        super().__post_init__()
        if self.do_pad is not None and not isinstance(self.do_pad, (bool, np.bool_)):
            raise ValueError(f"do_pad must be a bool or None, got {self.do_pad!r}")
        object.__setattr__(self, "pad_size", _pad_size(self.pad_size))

    # ------------------------------------------------------------------ config IO
    @classmethod
    def from_dict(cls, config: Mapping[str, Any]) -> "CLIPImageProcessor":
        """Build from a ``preprocessor_config.json`` dict.

        Keys that do not change the computation are ignored; any other unknown key raises
        ``ValueError`` naming it, and so does a config of another processor type.
        """
        config = _checked_config(config, _ACCEPTED_TYPES, "CLIPImageProcessor")
        if config.pop("use_square_size", False):  # HF: KOSMOS-2 backwards compatibility
            config["size"] = {"height": 224, "width": 224}
        return cls(**_known_kwargs(cls, config, _CLIP_NEUTRAL_KEYS, "HF CLIP"))

    # ------------------------------------------------------------------ call
    def __call__(self, images, *, return_tensors: str | None = "np", **overrides) -> dict[str, np.ndarray]:
        """Preprocess one image or a batch.

        images: PIL image(s) or arrays ``[H, W]``, ``[H, W, C]``, ``[C, H, W]``, ``[B, ...]``, or a
        list. ``overrides``: any field (e.g. ``do_center_crop=False``) for this call; an explicit
        ``None`` means "off" for the ``do_*`` flags, as in HF.

        Returns ``{"pixel_values": float32 [B, C, H, W]}``.
        """
        p = _call_params(self, overrides, return_tensors)
        pixel_values = _pixel_values(images, p)
        if p["do_pad"]:
            pixel_values = _pad(pixel_values, _pad_size(p["pad_size"]))
        return {"pixel_values": _stack(pixel_values, "images")}


def _pad_size(pad_size) -> dict[str, int] | None:
    size = _size_dict(pad_size, True, "pad_size")
    if size is not None and set(size) != {"height", "width"}:
        raise ValueError(f"pad_size must have keys 'height' and 'width', got {pad_size!r}")
    return size


def _pad(images: list[np.ndarray], pad_size: dict[str, int] | None) -> list[np.ndarray]:
    """HF ``PilBackend.pad``: zeros at the bottom / right up to ``pad_size`` (default: batch max)."""
    if pad_size is None:
        height, width = (max(a.shape[i] for a in images) for i in (-2, -1))
    else:
        height, width = pad_size["height"], pad_size["width"]
    out = []
    for i, a in enumerate(images):
        h, w = a.shape[-2:]
        if h > height or w > width:
            raise ValueError(f"image {i} is {h}x{w} after resizing/cropping, larger than pad_size "
                             f"{height}x{width}; padding cannot shrink it")
        out.append(np.pad(a, ((0, 0), (0, height - h), (0, width - w))))
    return out
