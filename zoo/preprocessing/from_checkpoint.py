"""The preprocessors of a checkpoint directory, built in one place for the CLI, fine-tuning and users.

    processor = image_processor_for(directory, config)     # BEiT's, or CLIP's for GroupViT
    extractor = audio_feature_extractor_for(directory)     # preprocessor_config.json, else defaults
    decoder = ctc_decoder_for(directory)                   # vocab.json (+ tokenizer configs)
    tokenizer, file = text_tokenizer_for(directory)        # Tokenizer: tokenizer.json + tokenizer_config.json
    ids, mask = pad_token_sequences(sequences, pad_token_id)

numpy + stdlib; ``tokenizers`` is imported when a tokenizer is loaded.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from zoo.config import as_pair
from zoo.preprocessing.audio import AudioFeatureExtractor
from zoo.preprocessing.clip_image import CLIPImageProcessor
from zoo.preprocessing.config_file import PREPROCESSOR_CONFIG_NAME
from zoo.preprocessing.ctc_decode import VOCAB_NAME, CTCDecoder
from zoo.preprocessing.image import BeitImageProcessor
from zoo.preprocessing.tokenizer import TOKENIZER_FILE, Tokenizer


def image_processor_for(directory: str | os.PathLike | None, config):
    """The checkpoint's ``preprocessor_config.json``, else the family's processor (BEiT's, or
    CLIP's for GroupViT) with its defaults at the config's image size.

    directory: the checkpoint directory, or None (the defaults)."""
    clip = getattr(config, "model_type", None) == "groupvit"
    processor = CLIPImageProcessor if clip else BeitImageProcessor
    if directory is not None and (Path(directory) / PREPROCESSOR_CONFIG_NAME).is_file():
        return processor.from_pretrained(Path(directory))
    height, width = as_pair(config.vision.image_size if clip else config.image_size, "image_size")
    if clip:
        return CLIPImageProcessor(size={"shortest_edge": min(height, width)},
                                  crop_size={"height": height, "width": width})
    return BeitImageProcessor(size={"height": height, "width": width})


def audio_feature_extractor_for(directory: str | os.PathLike | None) -> AudioFeatureExtractor:
    """The checkpoint's ``preprocessor_config.json``, else :class:`AudioFeatureExtractor` defaults
    (HF ``Wav2Vec2FeatureExtractor()``: 16 kHz, normalized, with an attention mask)."""
    if directory is not None and (Path(directory) / PREPROCESSOR_CONFIG_NAME).is_file():
        return AudioFeatureExtractor.from_pretrained(Path(directory))
    return AudioFeatureExtractor()


def ctc_decoder_for(directory: str | os.PathLike) -> CTCDecoder:
    """The CTC tokenizer of a ``...ForCTC`` checkpoint (its ``vocab.json``); FileNotFoundError
    naming the directory when it has none."""
    directory = Path(directory)
    if not (directory / VOCAB_NAME).is_file():
        raise FileNotFoundError(f"{directory}: no {VOCAB_NAME} next to the CTC checkpoint; it is needed to decode "
                                "transcriptions and to encode CTC labels")
    return CTCDecoder.from_pretrained(directory)


def find_tokenizer_file(directories: Sequence[str | os.PathLike | None]) -> Path | None:
    """The first ``tokenizer.json`` among ``directories`` (None entries skipped), or None."""
    for directory in directories:
        if directory is not None and (Path(directory) / TOKENIZER_FILE).is_file():
            return Path(directory) / TOKENIZER_FILE
    return None


def text_tokenizer_for(directories: str | os.PathLike | Sequence[str | os.PathLike | None], *, hint: str = ""):
    """``(tokenizer, tokenizer_file)``: :class:`~zoo.preprocessing.tokenizer.Tokenizer` (HF's fast
    tokenizer: ``tokenizer.json`` with the ``tokenizer_config.json`` next to it) of the first of
    ``directories`` that has a ``tokenizer.json``.

    hint: appended to the errors (what to do instead). FileNotFoundError when no directory
    has one, ValueError for an unreadable file.
    """
    if isinstance(directories, (str, os.PathLike)):
        directories = [directories]
    tok_file = find_tokenizer_file(directories)
    suffix = f"; {hint}" if hint else ""
    if tok_file is None:
        looked = " and ".join(str(d) for d in directories if d is not None) or "no directory"
        raise FileNotFoundError(f"no {TOKENIZER_FILE} (looked in {looked}){suffix}")
    try:
        tokenizer = Tokenizer.from_pretrained(tok_file.parent)
    except ValueError as e:
        raise ValueError(f"{e}{suffix}") from None
    return tokenizer, tok_file


def pad_token_sequences(sequences: Sequence[Sequence[int]], pad_token_id: int) -> tuple[np.ndarray, np.ndarray]:
    """``(input_ids, attention_mask)``, int32 ``[len(sequences), longest]``, right-padded with
    ``pad_token_id``. Every sequence needs at least one token."""
    sequences = [list(s) for s in sequences]
    if not sequences or not all(sequences):
        raise ValueError("every text needs at least one token")
    length = max(len(s) for s in sequences)
    ids = np.full((len(sequences), length), pad_token_id, np.int32)
    mask = np.zeros((len(sequences), length), np.int32)
    for row, seq in enumerate(sequences):
        ids[row, : len(seq)], mask[row, : len(seq)] = seq, 1
    return ids, mask


def tokenize_texts(directory: str | os.PathLike, texts: Sequence[str], pad_token_id: int, *,
                   hint: str = "") -> tuple[np.ndarray, np.ndarray]:
    """``texts`` tokenized with the checkpoint's ``tokenizer.json`` (special tokens added), as
    padded ``(input_ids, attention_mask)`` (e.g. GroupViT's zero-shot label prompts)."""
    tokenizer, _ = text_tokenizer_for(directory, hint=hint)
    return pad_token_sequences(tokenizer(list(texts))["input_ids"], pad_token_id)


__all__ = ["TOKENIZER_FILE", "audio_feature_extractor_for", "ctc_decoder_for", "find_tokenizer_file",
           "image_processor_for", "pad_token_sequences", "text_tokenizer_for", "tokenize_texts"]
