"""IDEFICS preprocessing, equal to HF transformers 5.23's ``IdeficsImageProcessor`` (PIL backend)
and ``IdeficsProcessor`` (``models/idefics/processing_idefics.py``).

    processor = IdeficsProcessor.from_pretrained("path/to/idefics")   # tokenizer + preprocessor files
    batch = processor([["User:", image, "What is this?\\nAssistant:"],
                       ["User:", Path("cat.png"), Path("dog.png"), "Compare.\\nAssistant:"]])
    batch["input_ids"], batch["attention_mask"]    # int64 [B, L]
    batch["pixel_values"]                          # float32 [B, N, 3, S, S] (zeros where a row has fewer images)
    batch["image_attention_mask"]                  # int64 [B, L, N]: 1 where token l sees image n
    processor.batch_decode(generated_ids, skip_special_tokens=True)

A prompt is a list of items: a string is text (HF strips its spaces), an image is a PIL image,
a numpy array (``[H, W, C]`` / ``[C, H, W]``, uint8 or float, as the image processors take them)
or a ``pathlib.Path`` / other ``os.PathLike`` to an image file (opened with
:func:`zoo.preprocessing.image.load_image`). A string that is a URL is refused: the zoo never
downloads (HF would fetch it). Each image becomes ``<fake_token_around_image><image>
<fake_token_around_image>`` in the text (consecutive images share the fake token between them),
the text starts with the BOS token and is tokenized without added special tokens.

``image_attention_mask``: token l sees the latest image at or before it (text before the first
image sees none), and no image after an EOS token until the next image; a row's padded (absent)
images are seen by nobody. Without any image in the batch it is all False, bool ``[B, L, 1]``
(HF's dtypes: int64 one-hot with images, bool without).

Deliberate differences from HF: ``return_tensors`` is numpy (``"np"`` / None; HF builds torch
tensors only); URLs and unknown objects are errors, not downloads or late crashes; a batch must
be a list of prompts (lists), a prompt a flat list; a tokenizer without ``<image>`` or BOS is
refused; one string is one text item (HF iterates its characters and drops every space). As in
HF 5.23, ``add_end_of_utterance_token=None`` means False (5.23 looks for the token in
``special_tokens_map``, which no longer holds the extra special tokens).
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import numpy as np

from zoo.preprocessing.clip_image import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD
from zoo.preprocessing.config_file import PREPROCESSOR_CONFIG_NAME, read_preprocessor_config, write_atomically
from zoo.preprocessing.image import (
    _NEUTRAL_KEYS,
    _call_params,
    _checked_config,
    _is_pil,
    _known_kwargs,
    _PilImageProcessor,
    _pixel_values,
    _stack,
    load_image,
)
from zoo.preprocessing.tokenizer import Tokenizer

__all__ = ["IdeficsImageProcessor", "IdeficsProcessor", "IDEFICS_STANDARD_MEAN", "IDEFICS_STANDARD_STD",
           "IMAGE_TOKEN", "FAKE_IMAGE_TOKEN", "END_OF_UTTERANCE_TOKEN"]

IMAGE_PROCESSOR_TYPE = "IdeficsImageProcessor"
PROCESSOR_CONFIG_NAME = "processor_config.json"
_UNSET = object()  # an argument the caller left out
# HF TextKwargs (+ IDEFICS' own) the tokenizer's init kwargs can set for the processor
_TEXT_KWARGS = ("add_special_tokens", "padding", "truncation", "max_length", "pad_to_multiple_of", "padding_side",
                "add_end_of_utterance_token")
_ACCEPTED_TYPES = frozenset({"IdeficsImageProcessor", "IdeficsImageProcessorPil", "IdeficsImageProcessorFast"})
IDEFICS_STANDARD_MEAN = OPENAI_CLIP_MEAN  # HF: the same numbers under IDEFICS' name
IDEFICS_STANDARD_STD = OPENAI_CLIP_STD
IMAGE_TOKEN = "<image>"
FAKE_IMAGE_TOKEN = "<fake_token_around_image>"
END_OF_UTTERANCE_TOKEN = "<end_of_utterance>"


@dataclasses.dataclass(frozen=True, repr=False)
class IdeficsImageProcessor(_PilImageProcessor):
    """IDEFICS image processor (HF ``IdeficsImageProcessor``, PIL backend): convert to RGB ->
    resize to ``image_size`` x ``image_size`` (bicubic) -> rescale -> normalize (CLIP mean/std).

    ``image_size`` (HF's alias) sets ``size`` to a square and is then ``size["height"]``;
    ``image_num_channels`` only gives the shape of the zero images of prompts without one.
    """

    size: Any = dataclasses.field(default_factory=lambda: {"height": 224, "width": 224})
    image_mean: Any = IDEFICS_STANDARD_MEAN
    image_std: Any = IDEFICS_STANDARD_STD
    do_convert_rgb: bool | None = True
    image_size: int | None = None
    image_num_channels: int = 3
    _processor_type = IMAGE_PROCESSOR_TYPE

    def __post_init__(self):
        if self.image_size is not None:
            if not isinstance(self.image_size, (int, np.integer)) or isinstance(self.image_size, bool) \
                    or self.image_size < 1:
                raise ValueError(f"image_size must be a positive integer, got {self.image_size!r}")
            object.__setattr__(self, "size", {"height": int(self.image_size), "width": int(self.image_size)})
        super().__post_init__()
        if set(self.size) != {"height", "width"}:
            raise ValueError(f"size must have keys 'height' and 'width' (IDEFICS resizes to a square), got {self.size}")
        object.__setattr__(self, "image_size", self.size["height"])
        if not isinstance(self.image_num_channels, (int, np.integer)) or self.image_num_channels < 1:
            raise ValueError(f"image_num_channels must be a positive integer, got {self.image_num_channels!r}")

    @classmethod
    def from_dict(cls, config: Mapping[str, Any]) -> "IdeficsImageProcessor":
        """Build from a ``preprocessor_config.json`` dict (unknown keys that change the
        computation raise ``ValueError`` naming them)."""
        config = _checked_config(config, _ACCEPTED_TYPES, "IdeficsImageProcessor")
        return cls(**_known_kwargs(cls, config, _NEUTRAL_KEYS, "HF IDEFICS"))

    def __call__(self, images, *, return_tensors: str | None = "np", **overrides) -> dict[str, np.ndarray]:
        """Preprocess one image or a list (PIL images / arrays). ``overrides``: any field for this
        call (``image_size=`` resizes to that square). Returns ``{"pixel_values": float32
        [N, 3, S, S]}``."""
        if overrides.get("image_size") is not None:
            size = overrides.pop("image_size")
            overrides["size"] = {"height": size, "width": size}
        p = _call_params(self, overrides, return_tensors)
        return {"pixel_values": _stack(_pixel_values(images, p), "images")}


def is_url(text: str) -> bool:
    """HF ``is_url``: no space, and a scheme and a host."""
    if " " in text:
        return False
    parsed = urlparse(text)
    return bool(parsed.scheme and parsed.netloc)


class IdeficsProcessor:
    """HF ``IdeficsProcessor``: interleaved text-and-image prompts -> model inputs (see the module
    docstring). ``tokenizer``: a :class:`~zoo.preprocessing.tokenizer.Tokenizer` (IDEFICS' Llama
    tokenizer with ``<image>``, ``<fake_token_around_image>`` [, ``<end_of_utterance>``]);
    ``image_processor``: an :class:`IdeficsImageProcessor`."""

    def __init__(self, image_processor: IdeficsImageProcessor, tokenizer: Tokenizer):
        if not isinstance(image_processor, IdeficsImageProcessor):
            raise TypeError(f"image_processor must be an IdeficsImageProcessor, got {type(image_processor).__name__}")
        if not isinstance(tokenizer, Tokenizer):
            raise TypeError(f"tokenizer must be a zoo.preprocessing.Tokenizer, got {type(tokenizer).__name__}")
        self.image_processor, self.tokenizer = image_processor, tokenizer
        if tokenizer.has_special_token("image_token"):
            image_token = tokenizer.special_token("image_token")
        else:
            image_token = IMAGE_TOKEN
        self.image_token_id = tokenizer.backend_tokenizer.token_to_id(image_token) if image_token else None
        if self.image_token_id is None:
            raise ValueError(f"the tokenizer has no {image_token or IMAGE_TOKEN!r} token; it is not an IDEFICS "
                             "tokenizer")
        if tokenizer.bos_token is None:
            raise ValueError("the tokenizer has no bos_token; IDEFICS prompts start with it")
        self.default_image_dims = (image_processor.image_num_channels, image_processor.image_size,
                                   image_processor.image_size)

    @classmethod
    def from_pretrained(cls, path: str | os.PathLike) -> "IdeficsProcessor":
        """Load ``<path>``'s ``tokenizer.json`` (+ ``tokenizer_config.json``,
        ``special_tokens_map.json``) and image processor config: the ``"image_processor"`` of
        ``processor_config.json`` (HF 5.x saves it there), else ``preprocessor_config.json``."""
        path = Path(path)
        if not path.is_dir():
            raise FileNotFoundError(f"{path}: no such processor directory")
        nested = None
        if (path / PROCESSOR_CONFIG_NAME).is_file():
            config = read_preprocessor_config(path / PROCESSOR_CONFIG_NAME)
            nested = config.get("image_processor")
            if nested is not None and not isinstance(nested, Mapping):
                raise ValueError(f"{path / PROCESSOR_CONFIG_NAME}: 'image_processor' must be an object")
        if nested is not None:
            image_processor = IdeficsImageProcessor.from_dict(nested)
        elif (path / PREPROCESSOR_CONFIG_NAME).is_file():
            image_processor = IdeficsImageProcessor.from_pretrained(path)
        else:
            raise FileNotFoundError(f"{path}: no {PREPROCESSOR_CONFIG_NAME} (nor an image_processor in "
                                    f"{PROCESSOR_CONFIG_NAME}); IDEFICS needs its image processor config")
        return cls(image_processor, Tokenizer.from_pretrained(path))

    def save_pretrained(self, directory: str | os.PathLike) -> tuple[str, ...]:
        """Write the tokenizer files, ``preprocessor_config.json`` and ``processor_config.json``
        (HF 5.x's nested layout, same image processor) -- HF's processor loads them."""
        directory = Path(directory)
        files = (*self.tokenizer.save_pretrained(directory), self.image_processor.save_pretrained(directory))
        nested = {"image_processor": self.image_processor.to_dict(), "processor_class": "IdeficsProcessor"}

        def dump(tmp):
            with open(tmp, "w", encoding="utf-8") as f:
                json.dump(nested, f, indent=2, sort_keys=True)
                f.write("\n")

        return (*files, write_atomically(directory / PROCESSOR_CONFIG_NAME, dump))

    # ------------------------------------------------------------------ call
    def __call__(self, text=None, images=None, *, add_end_of_utterance_token=_UNSET, add_eos_token: bool = False,
                 padding=_UNSET, truncation=_UNSET, max_length=_UNSET, padding_side=_UNSET,
                 pad_to_multiple_of=_UNSET, return_tensors: str | None = "np") -> dict[str, np.ndarray]:
        """Build ``input_ids``, ``attention_mask`` (int64 ``[B, L]``), ``pixel_values`` (float32
        ``[B, N, C, S, S]``, N = the most images in a row, at least 1) and
        ``image_attention_mask`` (``[B, L, N]``) from one prompt or a batch.

        text: a prompt (a list of strings and images), a batch (a list of prompts), or one
        string. images: HF's image-text-to-text form, one image (or list of images) per string
        in ``text``, placed before it. padding / truncation / max_length / padding_side: the
        tokenizer's (default ``"longest"``, as in HF). add_end_of_utterance_token: put
        ``<end_of_utterance>`` between two consecutive texts (None: False, as HF 5.23).
        add_eos_token: end each prompt with the EOS token. An argument left out takes the
        tokenizer's ``init_kwargs`` value when it has one (HF ``_merge_kwargs``), else the default.
        """
        given = dict(add_end_of_utterance_token=add_end_of_utterance_token, padding=padding, truncation=truncation,
                     max_length=max_length, padding_side=padding_side, pad_to_multiple_of=pad_to_multiple_of)
        kw = self._text_kwargs({k: v for k, v in given.items() if v is not _UNSET})
        add_end_of_utterance_token = kw.pop("add_end_of_utterance_token", None)
        if return_tensors not in (None, "np"):
            raise ValueError(f"return_tensors={return_tensors!r}: IdeficsProcessor returns numpy arrays ('np')")
        prompts = _prompts(text, images)
        add_eou = bool(add_end_of_utterance_token)
        texts, all_images = [], []
        for row, sample in enumerate(prompts):
            full_text, image_objects = self._prompt_text(sample, row, add_eou)
            if add_eos_token:
                if self.tokenizer.eos_token is None:
                    raise ValueError("add_eos_token=True but the tokenizer has no eos_token")
                full_text += self.tokenizer.eos_token
            pixels = self.image_processor(image_objects)["pixel_values"] if image_objects else None
            texts.append(full_text)
            all_images.append(pixels)

        encoding = self.tokenizer(texts, **kw, return_attention_mask=True, return_token_type_ids=False)
        ids_rows, mask_rows = encoding["input_ids"], encoding["attention_mask"]
        lengths = {len(r) for r in ids_rows}
        if len(lengths) > 1:
            raise ValueError(f"the prompts give different lengths {sorted(lengths)} and cannot be stacked; "
                             "use padding='longest' (the default) or 'max_length'")
        counts = [0 if p is None else len(p) for p in all_images]
        max_num_images = max(1, max(counts))
        pixel_values = []
        for ids, pixels in zip(ids_rows, all_images):
            keep = min(ids.count(self.image_token_id), max_num_images)
            current = pixels[:keep] if pixels is not None else None
            if current is not None and len(current):
                padded = np.zeros((max_num_images, *current.shape[1:]), np.float32)
                padded[: len(current)] = current
            else:
                padded = np.zeros((max_num_images, *self.default_image_dims), np.float32)
            pixel_values.append(padded)
        shapes = {p.shape for p in pixel_values}
        if len(shapes) > 1:
            raise ValueError(f"the rows' images have different shapes {sorted(shapes)} and cannot be stacked")
        input_ids = np.asarray(ids_rows, np.int64).reshape(len(prompts), -1)
        attention_mask = np.asarray(mask_rows, np.int64).reshape(len(prompts), -1)
        if sum(counts) > 0:
            image_attention_mask = _image_attention_mask(input_ids, self.image_token_id,
                                                         self.tokenizer.eos_token_id, max_num_images)
        else:
            image_attention_mask = np.zeros((*input_ids.shape, 1), bool)
        return {"input_ids": input_ids, "attention_mask": attention_mask,
                "pixel_values": np.stack(pixel_values), "image_attention_mask": image_attention_mask}

    def _text_kwargs(self, given: dict[str, Any]) -> dict[str, Any]:
        """HF ``_merge_kwargs`` for the text: class defaults < the tokenizer's init kwargs < ``given``."""
        out = {"add_special_tokens": False, "padding": "longest"}
        init = self.tokenizer.init_kwargs
        for key in _TEXT_KWARGS:
            if key in init:
                out[key] = self.tokenizer.padding_side if key == "padding_side" else init[key]
        out.update(given)
        return out

    def _prompt_text(self, sample, row: int, add_eou: bool) -> tuple[str, list]:
        """HF's loop over one prompt: its text (BOS + items + image tokens) and its images."""
        def image_tokens(last_was_image):
            if last_was_image:
                return IMAGE_TOKEN + FAKE_IMAGE_TOKEN
            return FAKE_IMAGE_TOKEN + IMAGE_TOKEN + FAKE_IMAGE_TOKEN

        full_text = self.tokenizer.bos_token
        images = []
        last_was_image = last_was_text = False
        for i, item in enumerate(sample):
            if i > 0:
                last_was_text = not last_was_image
            where = f"prompt {row}, item {i}"
            if isinstance(item, str):
                item = item.strip(" ")
                if is_url(item):
                    raise ValueError(f"{where} is a URL ({item[:80]!r}); the zoo never downloads: open the image "
                                     "yourself and pass a PIL image, an array or a pathlib.Path")
                if add_eou and last_was_text:
                    full_text += END_OF_UTTERANCE_TOKEN
                full_text += item
                last_was_image = False
            else:
                images.append(_image(item, where))
                full_text += image_tokens(last_was_image)
                last_was_image = True
        return full_text, images

    # ------------------------------------------------------------------ decoding
    def decode(self, token_ids, skip_special_tokens: bool = False, clean_up_tokenization_spaces=None):
        """The tokenizer's :meth:`~zoo.preprocessing.tokenizer.Tokenizer.decode`."""
        return self.tokenizer.decode(token_ids, skip_special_tokens, clean_up_tokenization_spaces)

    def batch_decode(self, sequences, skip_special_tokens: bool = False, clean_up_tokenization_spaces=None):
        """The tokenizer's :meth:`~zoo.preprocessing.tokenizer.Tokenizer.batch_decode`."""
        return self.tokenizer.batch_decode(sequences, skip_special_tokens, clean_up_tokenization_spaces)

    @property
    def model_input_names(self) -> list[str]:
        return [*self.tokenizer.model_input_names, "pixel_values", "image_attention_mask"]

    def __repr__(self) -> str:
        return f"IdeficsProcessor(image_processor={self.image_processor!r}, tokenizer={self.tokenizer!r})"


# ====================================================================== helpers
def _is_item_list(obj) -> bool:
    return isinstance(obj, (list, tuple))


def _prompts(text, images) -> list[list]:
    """HF's prompt forms -> a batch (list of flat prompts)."""
    if text is None and images is None:
        raise ValueError("give the prompts (text=...), or images= and text=")
    if images is not None:
        if text is None:
            raise ValueError("images= needs text= (one string per image or list of images)")
        images = list(images) if _is_item_list(images) else [images]
        text = [text] if isinstance(text, str) else text
        if not _is_item_list(text) or not all(isinstance(t, str) for t in text):
            raise ValueError("with images=, text must be a string or a list of strings")
        if len(text) != len(images):
            raise ValueError(f"got {len(text)} text prompt(s) and {len(images)} image entries; give one image "
                             "(or list of images) per prompt: images=[[img1, img2], [img3]] for text=[p1, p2]")
        if images and _is_item_list(images[0]):
            return _check_batch([[t, *(imgs if _is_item_list(imgs) else [imgs])] for imgs, t in zip(images, text)])
        return _check_batch([[img, t] for img, t in zip(images, text)])
    if isinstance(text, str):
        return [[text]]
    if not _is_item_list(text):
        raise TypeError(f"text must be a prompt (a list of strings and images) or a list of prompts, got "
                        f"{type(text).__name__}")
    if not text:
        raise ValueError("the prompt list is empty")
    if not any(_is_item_list(item) for item in text):
        return _check_batch([list(text)])
    if not all(_is_item_list(item) for item in text):
        bad = next(i for i, item in enumerate(text) if not _is_item_list(item))
        raise ValueError(f"text mixes prompts (lists) and items: entry {bad} is a {type(text[bad]).__name__}; a "
                         "batch is a list of prompts, each a flat list of strings and images")
    return _check_batch([list(p) for p in text])


def _check_batch(prompts: list[list]) -> list[list]:
    for row, prompt in enumerate(prompts):
        if not prompt:
            raise ValueError(f"prompt {row} is empty")
        for i, item in enumerate(prompt):
            if _is_item_list(item):
                raise ValueError(f"prompt {row}, item {i} is a {type(item).__name__}: prompts nest one level only "
                                 "(a batch is a list of flat lists of strings and images)")
    return prompts


def _image(item, where: str):
    """A prompt item that is not a string -> something the image processor takes."""
    if _is_pil(item):
        return item
    if isinstance(item, (os.PathLike, Path)):
        try:
            return load_image(item)
        except (FileNotFoundError, ValueError) as e:
            raise type(e)(f"{where}: {e}") from None
    if isinstance(item, np.ndarray):
        if item.ndim not in (2, 3):
            raise ValueError(f"{where} is an array of shape {item.shape}; one image per item ([H, W], [H, W, C] or "
                             "[C, H, W])")
        if not (np.issubdtype(item.dtype, np.number) or item.dtype == np.bool_):
            raise ValueError(f"{where} is an array of dtype {item.dtype}; expected numbers")
        return item
    if isinstance(item, bytes):
        raise TypeError(f"{where} is bytes; open the image (PIL) or pass a pathlib.Path to the file")
    raise TypeError(f"{where} is a {type(item).__name__}; expected a string (text), a PIL image, a numpy array or a "
                    "pathlib.Path to an image file")


def _image_attention_mask(input_ids: np.ndarray, image_token_id: int, eos_token_id: int | None,
                          num_images: int) -> np.ndarray:
    """HF ``image_attention_mask_for_packed_input_ids`` + ``incremental_to_binary_attention_mask``:
    int64 one-hot ``[B, L, num_images]``."""
    batch, length = input_ids.shape
    incremental = np.full((batch, length), -1, np.int64)
    for b in range(batch):
        count, seen_eod = -1, False
        for i, token in enumerate(input_ids[b].tolist()):
            if token == image_token_id:
                count += 1
                seen_eod = False
            incremental[b, i] = -1 if seen_eod else count
            if eos_token_id is not None and token == eos_token_id:
                seen_eod = True
    incremental[incremental >= num_images] = -1
    out = np.zeros((batch, length, num_images), np.int64)
    rows, cols = np.nonzero(incremental >= 0)
    out[rows, cols, incremental[rows, cols]] = 1
    return out
