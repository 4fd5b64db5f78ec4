"""Pre- and post-processing: audio, images, CTC, a checkpoint's tokenizer (numpy + stdlib; no torch).

* :class:`AudioFeatureExtractor` -- HF ``Wav2Vec2FeatureExtractor`` (normalize, pad, truncate).
* :func:`read_wav` / :func:`write_wav` / :func:`to_mono` -- PCM WAV IO with the ``wave`` module.
* :class:`BeitImageProcessor` -- HF ``BeitImageProcessor`` (PIL backend); :func:`load_image`,
  :func:`segmentation_to_png` (needs Pillow).
* :class:`CTCDecoder` -- HF ``Wav2Vec2CTCTokenizer`` greedy decoding and label encoding.
* :func:`image_processor_for`, :func:`audio_feature_extractor_for`, :func:`ctc_decoder_for`,
  :func:`text_tokenizer_for` -- the preprocessors of a checkpoint directory (one place for the
  CLI, fine-tuning data and users); :func:`pad_token_sequences`, :func:`tokenize_texts`.
* :class:`Tokenizer` -- HF's fast tokenizer of a checkpoint (``tokenizer.json`` + configs).
* :class:`IdeficsProcessor` / :class:`IdeficsImageProcessor` -- HF's IDEFICS processor: interleaved
  text-and-image prompts -> ``input_ids``, ``pixel_values``, ``image_attention_mask``.
* :func:`top_labels`, :func:`label_shares` -- classifier and segmentation post-processing.
"""

from zoo.preprocessing.audio import AudioFeatureExtractor
from zoo.preprocessing.clip_image import CLIPImageProcessor
from zoo.preprocessing.ctc_decode import CTCDecoder
from zoo.preprocessing.from_checkpoint import (
    audio_feature_extractor_for,
    ctc_decoder_for,
    image_processor_for,
    pad_token_sequences,
    text_tokenizer_for,
    tokenize_texts,
)
from zoo.preprocessing.idefics import IdeficsImageProcessor, IdeficsProcessor
from zoo.preprocessing.image import BeitImageProcessor, load_image, segmentation_to_png
from zoo.preprocessing.postprocess import label_shares, softmax, top_labels
from zoo.preprocessing.tokenizer import Tokenizer
from zoo.preprocessing.wav import WavError, read_wav, to_mono, write_wav

__all__ = ["AudioFeatureExtractor", "BeitImageProcessor", "CLIPImageProcessor", "CTCDecoder", "IdeficsImageProcessor",
           "IdeficsProcessor", "Tokenizer", "WavError", "read_wav", "to_mono", "write_wav", "load_image",
           "segmentation_to_png", "audio_feature_extractor_for", "ctc_decoder_for", "image_processor_for",
           "pad_token_sequences", "text_tokenizer_for", "tokenize_texts", "label_shares", "softmax", "top_labels"]
