"""Make the tiny random checkpoints shipped in zoo/assets (needs torch + transformers).

    python scripts/make_tiny_checkpoint.py                       # all of them
    python scripts/make_tiny_checkpoint.py --only tiny-big-bird,tiny-groupvit   # only some

Every asset is made by its own seeded function (:data:`ASSETS_MADE`), so remaking one leaves
the bytes of the others alone, and remaking one gives the same bytes again. They are:

* ``tiny-data2vec-text``: a Data2VecTextForMaskedLM (config.json + model.safetensors, as
  ``save_pretrained`` writes it) with a RoBERTa tokenizer (byte-level BPE of 128 tokens learned
  here on :data:`SENTENCES`: tokenizer.json + tokenizer_config.json + special_tokens_map.json);
* ``tiny-data2vec-text-bin``: the same weights as pytorch_model.bin from
  ``torch.save(state_dict)``, tied weights sharing storage;
* ``tiny-data2vec-audio-ctc``: a Data2VecAudioForCTC with vocab.json, tokenizer and
  feature-extractor configs; ``tiny-speech.wav``: 1 s of synthesized 16 kHz audio;
* ``tiny-picture.png``: 64 x 48 RGB;
* ``tiny-idefics``: an IdeficsForVisionText2Text with a byte-level BPE tokenizer trained here and
  its processor files, taught one answer about the picture (for ``zoo generate``);
* ``tiny-big-bird``: a BigBirdForMaskedLM (block-sparse attention, block_size 4) with a BigBird
  tokenizer (a Unigram vocabulary of the words of :data:`SENTENCES`);
* ``tiny-data2vec-vision``: a Data2VecVisionForImageClassification (32 px, 8 px patches, five
  named labels) with BEiT's preprocessor_config.json;
* ``tiny-groupvit``: a GroupViTModel (32 px, two grouping stages) with a CLIP tokenizer (BPE
  learned here) and CLIP's preprocessor_config.json;
* ``tiny-sew-d-ctc``: a SEWDForCTC with vocab.json, tokenizer and feature-extractor configs.
"""

import argparse
import json
import math

import numpy as np

from pathlib import Path

import torch
import transformers

from zoo.assets import ASSETS_DIR as ASSETS
from zoo.preprocessing import write_wav


def make_text(directory: Path) -> None:
    model = _text_model()
    model.save_pretrained(directory)
    make_text_tokenizer(directory)


def make_text_bin(directory: Path) -> None:
    model = _text_model()
    directory.mkdir(parents=True, exist_ok=True)
    model.config.architectures = [type(model).__name__]  # as model.save_pretrained sets them
    model.config.dtype = torch.float32
    model.config.save_pretrained(directory)
    torch.save(model.state_dict(), directory / "pytorch_model.bin")


def _text_model():
    torch.manual_seed(0)
    config = transformers.Data2VecTextConfig(
        vocab_size=128, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
        intermediate_size=64, max_position_embeddings=40, type_vocab_size=1,
    )
    return transformers.Data2VecTextForMaskedLM(config).eval()


SENTENCES = ["the cat sat on the mat", "a dog ran in the park", "hello world", "the sky is blue and the grass is green",
             "a red square on a blue sky", "two dogs and a cat", "what is in this picture", "i see a bird in the tree",
             "she reads a good book at home", "we walk to the river every morning", "my friend likes music and coffee",
             "the quick brown fox jumps over the lazy dog"]


def _words(*, byte_level: bool) -> list[str]:
    """The words of :data:`SENTENCES`: byte-level pieces (``Ġ`` for a leading space) or plain."""
    if not byte_level:
        return [w for sentence in SENTENCES for w in sentence.split()]
    from tokenizers import pre_tokenizers

    split = pre_tokenizers.ByteLevel(add_prefix_space=False).pre_tokenize_str
    return [piece for sentence in SENTENCES for piece, _ in split(sentence)]


def learn_bpe(words: list[list[str]], specials: list[str], vocab_size: int) -> tuple[dict, list[tuple[str, str]]]:
    """A BPE vocabulary and merges learned from ``words`` (each a list of symbols), here in
    Python rather than with ``tokenizers``' trainer, whose ids depend on hash order (not
    reproducible): specials, the sorted alphabet, then the most frequent pair, ties broken
    by the pair's text, until ``vocab_size`` tokens."""
    from collections import Counter

    counts = Counter(tuple(w) for w in words)
    vocab = {t: i for i, t in enumerate(specials + sorted({c for w in counts for c in w}))}
    merges = []
    while len(vocab) < vocab_size:
        pairs = Counter()
        for word, n in counts.items():
            for pair in zip(word, word[1:]):
                pairs[pair] += n
        if not pairs:
            break
        best = min(pairs, key=lambda pair: (-pairs[pair], pair))
        merges.append(best)
        vocab.setdefault(best[0] + best[1], len(vocab))
        merged = Counter()
        for word, n in counts.items():
            out, i = [], 0
            while i < len(word):
                if word[i:i + 2] == best:
                    out.append(best[0] + best[1])
                    i += 2
                else:
                    out.append(word[i])
                    i += 1
            merged[tuple(out)] += n
        counts = merged
    return vocab, merges


def _write_special_tokens_map(tokenizer, directory: Path) -> None:
    """transformers 5 no longer writes it; older readers (and the zoo's Tokenizer) take it too."""
    (directory / "special_tokens_map.json").write_text(json.dumps(
        {k: str(v) for k, v in tokenizer.special_tokens_map.items()}, indent=2) + "\n")


def make_text_tokenizer(directory: Path) -> None:
    """RoBERTa's tokenizer over a byte-level BPE of exactly 128 tokens (the model's vocab_size):
    <s>=0, <pad>=1, </s>=2, <unk>=3, <mask>=4, then the corpus's characters and merges."""
    from tokenizers import AddedToken

    vocab, merges = learn_bpe([list(w) for w in _words(byte_level=True)], ["<s>", "<pad>", "</s>", "<unk>", "<mask>"],
                              128)
    assert len(vocab) == 128, len(vocab)
    tokenizer = transformers.RobertaTokenizer(vocab=vocab, merges=merges, model_max_length=38,
                                              mask_token=AddedToken("<mask>", lstrip=True, rstrip=False))
    tokenizer.save_pretrained(directory)
    _write_special_tokens_map(tokenizer, directory)


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
    _ctc_files(directory)


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


def _ctc_files(directory: Path) -> None:
    """vocab.json, the CTC tokenizer's and the feature extractor's configs of a ...ForCTC asset."""
    (directory / "vocab.json").write_text(json.dumps({t: i for i, t in enumerate(VOCAB)}, indent=1) + "\n")
    (directory / "tokenizer_config.json").write_text(json.dumps({
        "tokenizer_class": "Wav2Vec2CTCTokenizer", "pad_token": "<pad>", "unk_token": "<unk>",
        "bos_token": "<s>", "eos_token": "</s>", "word_delimiter_token": "|", "do_lower_case": False,
    }, indent=1) + "\n")
    (directory / "preprocessor_config.json").write_text(json.dumps({
        "feature_extractor_type": "Wav2Vec2FeatureExtractor", "feature_size": 1, "sampling_rate": 16000,
        "padding_value": 0.0, "do_normalize": True, "return_attention_mask": True, "padding_side": "right",
    }, indent=1) + "\n")


def make_big_bird(directory: Path) -> None:
    """A 2-layer BigBirdForMaskedLM (block-sparse, blocks of 4 tokens, one random block) with
    BigBird's tokenizer over a Unigram vocabulary: <pad>=0, <s>=1, </s>=2, <unk>=3, [SEP]=4,
    [MASK]=5, [CLS]=6 (sep_token_id 4 in the config), the characters, and each word of
    :data:`SENTENCES` (``\u2581word``) scored by its log frequency."""
    from collections import Counter

    from tokenizers import AddedToken

    specials = ["<pad>", "<s>", "</s>", "<unk>", "[SEP]", "[MASK]", "[CLS]"]
    words = Counter("\u2581" + w for w in _words(byte_level=False))
    total = sum(words.values())
    chars = sorted({c for w in words for c in w})
    pieces = ([(t, 0.0) for t in specials] + [(c, -8.0) for c in chars]
              + [(w, round(math.log(n / total), 4)) for w, n in sorted(words.items())])
    tokenizer = transformers.BigBirdTokenizer(vocab=pieces, model_max_length=64,
                                              mask_token=AddedToken("[MASK]", lstrip=True, rstrip=False))
    torch.manual_seed(0)
    config = transformers.BigBirdConfig(
        vocab_size=len(pieces), hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=48,
        max_position_embeddings=64, block_size=4, num_random_blocks=1, attention_type="block_sparse",
        pad_token_id=0, bos_token_id=1, eos_token_id=2, sep_token_id=4, hidden_act="gelu_new")
    model = transformers.BigBirdForMaskedLM(config).eval()
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    _write_special_tokens_map(tokenizer, directory)


VISION_LABELS = ["red square", "blue sky", "green grass", "cat", "dog"]


def make_vision(directory: Path) -> None:
    """A 2-layer Data2VecVisionForImageClassification at 32 px (patches of 8, relative position
    bias per layer) with five named labels and BEiT's image processor (resize to 32 x 32)."""
    torch.manual_seed(0)
    config = transformers.Data2VecVisionConfig(
        hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=48, image_size=32,
        patch_size=8, use_relative_position_bias=True, use_mean_pooling=True, out_indices=[1, 2],
        id2label=dict(enumerate(VISION_LABELS)), label2id={n: i for i, n in enumerate(VISION_LABELS)})
    model = transformers.Data2VecVisionForImageClassification(config).eval()
    with torch.no_grad():  # a wider random head, so the top labels differ
        model.classifier.weight.normal_(0.0, 1.0)
    model.save_pretrained(directory)
    transformers.BeitImageProcessor(size={"height": 32, "width": 32}, do_center_crop=False,
                                    crop_size={"height": 32, "width": 32}).save_pretrained(directory)


def make_groupvit(directory: Path) -> None:
    """A GroupViTModel: text tower 1 layer (CLIP's tokenizer over a BPE trained here,
    <|startoftext|>=0, <|endoftext|>=1 = pad = eos), vision tower at 32 px (patches of 8) with two
    grouping stages (4 then 2 groups); CLIP's image processor (shortest edge 32, center crop)."""
    specials = ["<|startoftext|>", "<|endoftext|>"]
    words = [list(w[:-1]) + [w[-1] + "</w>"] for w in _words(byte_level=False)]
    vocab, merges = learn_bpe(words, specials, 112)
    tokenizer = transformers.CLIPTokenizer(vocab=vocab, merges=merges, model_max_length=16)
    torch.manual_seed(0)
    config = transformers.GroupViTConfig(
        text_config=dict(vocab_size=len(vocab), hidden_size=24, intermediate_size=32, num_hidden_layers=1,
                         num_attention_heads=2, max_position_embeddings=16, pad_token_id=1, bos_token_id=0,
                         eos_token_id=1),
        vision_config=dict(hidden_size=24, intermediate_size=32, num_attention_heads=2, image_size=32, patch_size=8,
                           depths=[1, 1], num_hidden_layers=2, num_group_tokens=[4, 2], num_output_groups=[4, 2]),
        projection_dim=16, projection_intermediate_dim=24)
    model = transformers.GroupViTModel(config).eval()
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    _write_special_tokens_map(tokenizer, directory)
    transformers.CLIPImageProcessor(size={"shortest_edge": 32},
                                    crop_size={"height": 32, "width": 32}).save_pretrained(directory)


def make_sew_d_ctc(directory: Path) -> None:
    """A 2-layer SEWDForCTC (squeeze factor 2, DeBERTa-v2 relative attention) with the same CTC
    vocabulary and feature extractor as ``tiny-data2vec-audio-ctc``."""
    torch.manual_seed(0)
    config = transformers.SEWDConfig(
        vocab_size=len(VOCAB), hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=48,
        conv_dim=(16, 16, 24, 24), conv_stride=(5, 4, 4, 4), conv_kernel=(10, 8, 4, 4), num_conv_pos_embeddings=4,
        num_conv_pos_embedding_groups=2, squeeze_factor=2, position_buckets=8, max_position_embeddings=64,
        pad_token_id=0, ctc_loss_reduction="mean", mask_time_prob=0.0)
    model = transformers.SEWDForCTC(config).eval()
    with torch.no_grad():  # a wider random head, so the greedy transcription is not all blanks
        model.lm_head.weight.normal_(0.0, 1.0)
    model.save_pretrained(directory)
    _ctc_files(directory)


# asset name -> its maker, in the order they are made (tiny-idefics needs tiny-picture.png)
ASSETS_MADE = {
    "tiny-data2vec-text": make_text,
    "tiny-data2vec-text-bin": make_text_bin,
    "tiny-data2vec-audio-ctc": make_audio_ctc,
    "tiny-speech.wav": make_wav,
    "tiny-picture.png": make_picture,
    "tiny-idefics": lambda directory: make_idefics(directory, ASSETS / "tiny-picture.png"),
    "tiny-big-bird": make_big_bird,
    "tiny-data2vec-vision": make_vision,
    "tiny-groupvit": make_groupvit,
    "tiny-sew-d-ctc": make_sew_d_ctc,
}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", help=f"comma-separated asset names (default: all): {', '.join(ASSETS_MADE)}")
    args = parser.parse_args(argv)
    names = [n.strip() for n in args.only.split(",") if n.strip()] if args.only else list(ASSETS_MADE)
    unknown = [n for n in names if n not in ASSETS_MADE]
    if unknown:
        parser.error(f"unknown asset {', '.join(unknown)}; choose from {', '.join(ASSETS_MADE)}")
    for name in names:
        ASSETS_MADE[name](ASSETS / name)
        path = ASSETS / name
        files = sorted(path.rglob("*")) if path.is_dir() else [path]
        for f in files:
            print(f"{f.relative_to(ASSETS)}: {f.stat().st_size:,} bytes")


if __name__ == "__main__":
    main()
