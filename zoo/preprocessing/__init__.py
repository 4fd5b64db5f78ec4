"""Pre- and post-processing for the audio models (numpy + stdlib only; no torch, no transformers).

* :class:`AudioFeatureExtractor` -- HF ``Wav2Vec2FeatureExtractor`` (normalize, pad, truncate).
* :func:`read_wav` / :func:`write_wav` / :func:`to_mono` -- PCM WAV IO with the ``wave`` module.
* :class:`BeitImageProcessor` -- HF ``BeitImageProcessor`` (PIL backend); :func:`load_image`,
  :func:`segmentation_to_png` (needs Pillow).
* :class:`CTCDecoder` -- HF ``Wav2Vec2CTCTokenizer`` greedy decoding and label encoding.
"""

from zoo.preprocessing.audio import AudioFeatureExtractor
from zoo.preprocessing.clip_image import CLIPImageProcessor
from zoo.preprocessing.ctc_decode import CTCDecoder
from zoo.preprocessing.image import BeitImageProcessor, load_image, segmentation_to_png
from zoo.preprocessing.wav import WavError, read_wav, to_mono, write_wav

__all__ = ["AudioFeatureExtractor", "BeitImageProcessor", "CLIPImageProcessor", "CTCDecoder", "WavError", "read_wav",
           "to_mono", "write_wav", "load_image", "segmentation_to_png"]
