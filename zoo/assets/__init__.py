"""The tiny checkpoints and data shipped with the zoo (``zoo demo``, the README, the tests).

One owner for their paths::

    from zoo.assets import TINY_TEXT_CHECKPOINT, asset_path
    zoo.from_pretrained(TINY_TEXT_CHECKPOINT)
    asset_path("tiny-speech.wav")

``scripts/make_tiny_checkpoint.py`` writes them (random weights; HF layout).
"""

from __future__ import annotations

from pathlib import Path

ASSETS_DIR = Path(__file__).resolve().parent

TINY_TEXT_CHECKPOINT = ASSETS_DIR / "tiny-data2vec-text"          # Data2VecTextForMaskedLM + RoBERTa tokenizer
TINY_TEXT_BIN_CHECKPOINT = ASSETS_DIR / "tiny-data2vec-text-bin"  # the same weights as pytorch_model.bin
TINY_AUDIO_CTC_CHECKPOINT = ASSETS_DIR / "tiny-data2vec-audio-ctc"  # Data2VecAudioForCTC + vocab, extractor
TINY_SPEECH_WAV = ASSETS_DIR / "tiny-speech.wav"                  # 1 s of 16 kHz mono PCM
TINY_TEXT_CLASSIFICATION_DATA = ASSETS_DIR / "tiny-text-classification.jsonl"  # `zoo finetune` example data
TINY_IDEFICS_CHECKPOINT = ASSETS_DIR / "tiny-idefics"            # IdeficsForVisionText2Text + tokenizer, processor
TINY_PICTURE = ASSETS_DIR / "tiny-picture.png"                    # 64 x 48 RGB
TINY_BIG_BIRD_CHECKPOINT = ASSETS_DIR / "tiny-big-bird"           # BigBirdForMaskedLM (block-sparse) + tokenizer
TINY_VISION_CHECKPOINT = ASSETS_DIR / "tiny-data2vec-vision"      # Data2VecVisionForImageClassification + processor
TINY_GROUPVIT_CHECKPOINT = ASSETS_DIR / "tiny-groupvit"           # GroupViTModel + CLIP tokenizer, image processor
TINY_SEW_D_CTC_CHECKPOINT = ASSETS_DIR / "tiny-sew-d-ctc"         # SEWDForCTC + vocab, extractor

NAMES = tuple(p.name for p in (TINY_TEXT_CHECKPOINT, TINY_TEXT_BIN_CHECKPOINT, TINY_AUDIO_CTC_CHECKPOINT,
                               TINY_SPEECH_WAV, TINY_TEXT_CLASSIFICATION_DATA, TINY_IDEFICS_CHECKPOINT, TINY_PICTURE,
                               TINY_BIG_BIRD_CHECKPOINT, TINY_VISION_CHECKPOINT, TINY_GROUPVIT_CHECKPOINT,
                               TINY_SEW_D_CTC_CHECKPOINT))


def asset_path(name: str) -> Path:
    """The path of the shipped asset ``name`` (one of :data:`NAMES`); FileNotFoundError otherwise."""
    if name not in NAMES:
        raise FileNotFoundError(f"no shipped asset {name!r}; the zoo ships {', '.join(NAMES)}")
    path = ASSETS_DIR / name
    if not path.exists():
        raise FileNotFoundError(f"{path}: the shipped asset is missing from this installation (reinstall the zoo)")
    return path


__all__ = ["ASSETS_DIR", "NAMES", "TINY_AUDIO_CTC_CHECKPOINT", "TINY_BIG_BIRD_CHECKPOINT", "TINY_GROUPVIT_CHECKPOINT",
           "TINY_IDEFICS_CHECKPOINT", "TINY_PICTURE", "TINY_SEW_D_CTC_CHECKPOINT", "TINY_SPEECH_WAV",
           "TINY_TEXT_BIN_CHECKPOINT", "TINY_TEXT_CHECKPOINT", "TINY_TEXT_CLASSIFICATION_DATA", "TINY_VISION_CHECKPOINT",
           "asset_path"]
