"""Make the tiny random checkpoints shipped in zoo/assets (needs torch + transformers).

    python scripts/make_tiny_checkpoint.py

Writes ``zoo/assets/tiny-data2vec-text`` (config.json + model.safetensors, as
``save_pretrained`` writes it) and ``zoo/assets/tiny-data2vec-text-bin`` (config.json +
pytorch_model.bin from ``torch.save(state_dict)``, tied weights sharing storage),
``zoo/assets/tiny-data2vec-audio-ctc`` (a Data2VecAudioForCTC with vocab.json, tokenizer and
feature-extractor configs), ``zoo/assets/tiny-speech.wav`` (1 s of synthesized 16 kHz audio),
``zoo/assets/tiny-idefics`` (an IdeficsForVisionText2Text with a byte-level BPE tokenizer
trained here and its processor files, for ``zoo generate``) and ``zoo/assets/tiny-picture.png``.
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
    make_picture(ASSETS / "tiny-picture.png")
    make_idefics(ASSETS / "tiny-idefics", ASSETS / "tiny-picture.png")
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


CAPTIONS = ["User: What is in this picture?", "Assistant: A red square on a blue sky.",
            "A cat sat on the mat.", "Describe the image.", "Two dogs ran in the green park."]


QUESTION, ANSWER = "User: What is in this picture? Assistant:", " A red square on a blue sky."


def make_idefics(directory: Path, picture: Path) -> None:
    """A 2-layer IDEFICS (CLIP tower 1 layer at 28 px, perceiver 4 latents) whose tokenizer
    (byte-level BPE, 160 tokens + ``<fake_token_around_image>`` and ``<image>`` as the two
    additional tokens) is trained on a few captions; gates drawn from N(0, 1) (HF starts
    them at 0, so the image would not matter). Then 800 Adam steps teach it one answer
    about ``picture`` (and another one without it), so that ``zoo generate`` prints words."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(CAPTIONS * 4, trainers.BpeTrainer(
        vocab_size=160, special_tokens=["<unk>", "<s>", "</s>"], initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    fast = transformers.LlamaTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>",
                                           pad_token="<unk>", add_bos_token=True, padding_side="left")
    base = len(fast)
    fast.add_special_tokens({"additional_special_tokens": ["<fake_token_around_image>", "<image>"]})
    config = transformers.IdeficsConfig(
        vocab_size=base, additional_vocab_size=2, hidden_size=32, intermediate_size=40, num_hidden_layers=2,
        num_attention_heads=4, cross_layer_interval=1, use_resampler=True, max_position_embeddings=128,
        pad_token_id=0, bos_token_id=1, eos_token_id=2,
        vision_config=dict(embed_dim=24, image_size=28, patch_size=14, num_hidden_layers=1, num_attention_heads=2,
                           intermediate_size=30),
        perceiver_config=dict(resampler_n_latents=4, resampler_depth=1, resampler_n_heads=2, resampler_head_dim=8))
    torch.manual_seed(0)
    model = transformers.IdeficsForVisionText2Text(config).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "alpha" in name:
                p.normal_(0.0, 1.0)
    processor = transformers.IdeficsProcessor(transformers.IdeficsImageProcessor(image_size=28), fast)
    teach(model, processor, picture)
    model.save_pretrained(directory)
    processor.save_pretrained(directory)


def teach(model, processor, picture: Path, steps: int = 800) -> None:
    from PIL import Image

    user, question = QUESTION.split(" ", 1)  # "User:", "What is ... Assistant:"
    prompts = [[user + " ", Image.open(picture).convert("RGB"), " " + question + ANSWER + "</s>"],
               [QUESTION + " I see no picture.</s>"]]
    batch = processor(text=prompts, padding="longest", return_tensors="pt")
    labels = batch["input_ids"].masked_fill(batch["attention_mask"] == 0, -100)
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    model.train()
    for _ in range(steps):
        optimizer.zero_grad()
        logits = model(**batch).logits[:, :-1]  # HF's own loss assumes no additional vocabulary
        loss = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), labels[:, 1:].reshape(-1))
        loss.backward()
        optimizer.step()
    model.eval()


def make_picture(path: Path) -> None:
    """64 x 48 RGB: a red square on a blue-to-white sky over green grass."""
    from PIL import Image

    y, x = np.mgrid[:48, :64]
    image = np.stack([80 + 2 * y, 120 + 2 * y, np.full_like(y, 230)], -1)
    image[y > 34] = (60, 160, 60)
    image[(abs(x - 40) < 9) & (abs(y - 22) < 9)] = (210, 30, 30)
    Image.fromarray(image.astype(np.uint8)).save(path)


if __name__ == "__main__":
    main()
