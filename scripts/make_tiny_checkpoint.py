"""Make the tiny random checkpoints shipped in zoo/assets (needs torch + transformers).

    python scripts/make_tiny_checkpoint.py

Writes ``zoo/assets/tiny-data2vec-text`` (config.json + model.safetensors, as
``save_pretrained`` writes it) and ``zoo/assets/tiny-data2vec-text-bin`` (config.json +
pytorch_model.bin from ``torch.save(state_dict)``, tied weights sharing storage),
``zoo/assets/tiny-data2vec-audio-ctc`` (a Data2VecAudioForCTC with vocab.json, tokenizer and
feature-extractor configs) and ``zoo/assets/tiny-speech.wav`` (1 s of synthesized 16 kHz audio).
"""

import json

import numpy as np

from pathlib import Path

import torch
import transformers

from zoo.assets import ASSETS_DIR as ASSETS
from zoo.preprocessing import write_wav


def main() -> None:
    torch.manual_seed(0)
    config = transformers.Data2VecTextConfig(
        vocab_size=128, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
        intermediate_size=64, max_position_embeddings=40, type_vocab_size=1,
    )
    model = transformers.Data2VecTextForMaskedLM(config).eval()
    model.save_pretrained(ASSETS / "tiny-data2vec-text")
    bin_dir = ASSETS / "tiny-data2vec-text-bin"
    bin_dir.mkdir(parents=True, exist_ok=True)
    config.save_pretrained(bin_dir)
    torch.save(model.state_dict(), bin_dir / "pytorch_model.bin")
    make_audio_ctc(ASSETS / "tiny-data2vec-audio-ctc")
    make_wav(ASSETS / "tiny-speech.wav")
    for path in sorted(ASSETS.rglob("*.*")):
        print(f"{path.relative_to(ASSETS)}: {path.stat().st_size:,} bytes")


VOCAB = ["<pad>", "<s>", "</s>", "<unk>", "|"] + list("abcdefghijklmnopqrstuvwxyz'")


def make_audio_ctc(directory: Path) -> None:
    torch.manual_seed(0)
    config = transformers.Data2VecAudioConfig(
        vocab_size=len(VOCAB), hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
        conv_dim=(32, 32, 32, 32), conv_stride=(5, 4, 4, 4), conv_kernel=(10, 8, 4, 4), num_conv_pos_embeddings=2,
        conv_pos_kernel_size=5, num_conv_pos_embedding_groups=4, pad_token_id=0, ctc_loss_reduction="mean",
    )
    model = transformers.Data2VecAudioForCTC(config).eval()
    with torch.no_grad():  # a wider random head, so the greedy transcription is not all blanks
        model.lm_head.weight.normal_(0.0, 1.0)
    model.save_pretrained(directory)
    (directory / "vocab.json").write_text(json.dumps({t: i for i, t in enumerate(VOCAB)}, indent=1) + "\n")
    (directory / "tokenizer_config.json").write_text(json.dumps({
        "tokenizer_class": "Wav2Vec2CTCTokenizer", "pad_token": "<pad>", "unk_token": "<unk>",
        "bos_token": "<s>", "eos_token": "</s>", "word_delimiter_token": "|", "do_lower_case": False,
    }, indent=1) + "\n")
    (directory / "preprocessor_config.json").write_text(json.dumps({
        "feature_extractor_type": "Wav2Vec2FeatureExtractor", "feature_size": 1, "sampling_rate": 16000,
        "padding_value": 0.0, "do_normalize": True, "return_attention_mask": True, "padding_side": "right",
    }, indent=1) + "\n")


def make_wav(path: Path) -> None:
    """1 s at 16 kHz: three vowel-like harmonic tones with an amplitude envelope, and a pause."""
    rate = 16000
    t = np.arange(rate) / rate
    pitch = np.where(t < 0.35, 140.0, np.where(t < 0.7, 180.0, 120.0))
    phase = 2 * np.pi * np.cumsum(pitch) / rate
    voice = sum(np.sin(k * phase) / k for k in range(1, 8))
    envelope = np.clip(np.sin(np.pi * t / 0.35 % np.pi), 0, 1) * (t < 0.9)
    noise = 0.01 * np.random.RandomState(0).randn(rate)
    write_wav(path, (0.3 * voice * envelope + noise).astype(np.float32), rate)


if __name__ == "__main__":
    main()
