"""zoo.preprocessing against HF: Wav2Vec2FeatureExtractor, Wav2Vec2CTCTokenizer; WAV IO."""

import ast
import json
import os
import struct
import sys

import numpy as np
import pytest

from zoo.preprocessing import AudioFeatureExtractor, CTCDecoder, WavError, read_wav, to_mono, write_wav

transformers = pytest.importorskip("transformers")
SR = 16000


# ============================================================== feature extractor
def _waves(lengths, seed=0, dtype=np.float32):
    rng = np.random.default_rng(seed)
    return [(rng.normal(size=n) * 0.3 + 0.05).astype(dtype) for n in lengths]


def _pair(**init):
    hf = transformers.Wav2Vec2FeatureExtractor(**init)
    return hf, AudioFeatureExtractor(**init)


def _check(hf, ours, speech, sr=SR, **kw):
    ref = hf(speech, sampling_rate=sr, return_tensors="np", **kw)
    out = ours(speech, sampling_rate=sr, **kw)
    assert set(out) == set(ref.keys())
    assert out["input_values"].dtype == np.float32 and ref["input_values"].dtype == np.float32
    assert out["input_values"].shape == ref["input_values"].shape
    np.testing.assert_allclose(out["input_values"], ref["input_values"], atol=1e-6, rtol=0)
    if "attention_mask" in ref:
        assert out["attention_mask"].dtype == np.int32
        np.testing.assert_array_equal(out["attention_mask"], ref["attention_mask"])
    return out


@pytest.mark.parametrize("mask", [True, False])
@pytest.mark.parametrize("normalize", [True, False])
def test_fe_padded_batch_matches_hf(mask, normalize):
    hf, ours = _pair(return_attention_mask=mask, do_normalize=normalize)
    speech = _waves([1200, 700, 1000])
    out = _check(hf, ours, speech, padding=True)
    assert out["input_values"].shape == (3, 1200)
    if mask and normalize:  # padded positions reset to padding_value after normalization
        assert np.all(out["input_values"][1, 700:] == 0.0)
        assert abs(out["input_values"][1, :700].mean()) < 1e-5
    if not mask and normalize:  # HF normalizes the padded row, padding included
        assert abs(out["input_values"][1].mean()) < 1e-5


def test_fe_call_override_and_padding_value():
    hf, ours = _pair(return_attention_mask=True, padding_value=-0.5)
    speech = _waves([300, 450])
    _check(hf, ours, speech, padding="longest")
    _check(hf, ours, speech, padding=True, return_attention_mask=False)
    hf, ours = _pair(return_attention_mask=False)
    _check(hf, ours, speech, padding=True, return_attention_mask=True)


def test_fe_max_length_truncation_and_multiple():
    hf, ours = _pair(return_attention_mask=True)
    speech = _waves([900, 400, 650], seed=1)
    _check(hf, ours, speech, padding="max_length", max_length=700, truncation=True)
    _check(hf, ours, speech, padding="max_length", max_length=1000)
    _check(hf, ours, speech, padding=True, max_length=500, truncation=True)
    out = _check(hf, ours, speech, padding=True, pad_to_multiple_of=128)
    assert out["input_values"].shape == (3, 1024)
    out = _check(hf, ours, speech, padding="max_length", max_length=650, truncation=True, pad_to_multiple_of=100)
    assert out["input_values"].shape == (3, 700)
    _check(hf, ours, _waves([900, 950]), padding=False, max_length=300, truncation=True)
    with pytest.raises(ValueError, match="truncation=True"):
        ours(speech, sampling_rate=SR, padding="max_length", max_length=500)
    with pytest.raises(ValueError, match="max_length"):
        ours(speech, sampling_rate=SR, padding="max_length")


def test_fe_single_example_and_input_forms():
    hf, ours = _pair(return_attention_mask=True)
    x = _waves([800], seed=2)[0]
    out = _check(hf, ours, x)  # 1-D array -> batch of 1
    assert out["input_values"].shape == (1, 800)
    _check(hf, ours, x.tolist())  # list of python floats
    _check(hf, ours, x.astype(np.float64), padding=False)  # HF's default padding
    speech = _waves([500, 320], seed=3)
    _check(hf, ours, [s.tolist() for s in speech], padding=True)  # list of lists
    _check(hf, ours, [s.astype(np.float64) for s in speech], padding=True)
    _check(hf, ours, tuple(speech), padding=True)
    batch = np.stack(_waves([600, 600, 600], seed=4))
    _check(hf, ours, batch, padding=False)  # [B, T] array
    _check(hf, ours, np.zeros(64, np.float32))  # silence: var 0 -> eps keeps it finite


def test_fe_errors():
    fe = AudioFeatureExtractor(return_attention_mask=True)
    x = np.zeros(1000, np.float32)
    with pytest.raises(ValueError, match=r"8000.*16000|16000.*8000"):
        fe(x, sampling_rate=8000)
    with pytest.warns(UserWarning, match="sampling_rate"):
        fe(x)
    with pytest.raises(ValueError, match="multi-channel"):
        fe(np.zeros((1000, 2), np.float32), sampling_rate=SR)
    with pytest.raises(ValueError, match="multi-channel"):
        fe([np.zeros((1000, 2), np.float32)], sampling_rate=SR)
    with pytest.raises(ValueError, match="different lengths"):
        fe([np.zeros(10), np.zeros(12)], sampling_rate=SR, padding=False)
    with pytest.raises(ValueError, match="empty"):
        fe([np.zeros(10), np.zeros(0)], sampling_rate=SR)
    with pytest.raises(ValueError, match="empty"):
        fe([], sampling_rate=SR)
    with pytest.raises(ValueError, match="padding"):
        fe(x, sampling_rate=SR, padding="bogus")


def test_fe_left_padding_normalizes_real_samples():
    # HF takes the first `length` samples (the padding) for left padding; we take the real ones.
    speech = _waves([300, 200], seed=5)
    right = AudioFeatureExtractor(return_attention_mask=True)(speech, sampling_rate=SR)
    left = AudioFeatureExtractor(return_attention_mask=True, padding_side="left")(speech, sampling_rate=SR)
    np.testing.assert_array_equal(left["attention_mask"][1], np.r_[np.zeros(100), np.ones(200)])
    np.testing.assert_allclose(left["input_values"][1, 100:], right["input_values"][1, :200], atol=1e-6)
    assert np.all(left["input_values"][1, :100] == 0.0)


def test_fe_config_roundtrip(tmp_path):
    hf = transformers.Wav2Vec2FeatureExtractor(return_attention_mask=True, do_normalize=True, padding_value=0.0)
    hf.save_pretrained(tmp_path)
    ours = AudioFeatureExtractor.from_pretrained(tmp_path)
    assert ours == AudioFeatureExtractor(return_attention_mask=True)
    assert ours.to_dict() == json.loads((tmp_path / "preprocessor_config.json").read_text())
    assert AudioFeatureExtractor.from_dict(ours.to_dict()) == ours
    other = tmp_path / "saved"
    AudioFeatureExtractor(do_normalize=False, sampling_rate=8000).save_pretrained(other)
    hf2 = transformers.Wav2Vec2FeatureExtractor.from_pretrained(other)
    assert hf2.do_normalize is False and hf2.sampling_rate == 8000
    assert not [p for p in os.listdir(other) if p.endswith(".tmp")]
    assert AudioFeatureExtractor.from_dict({"processor_class": "Wav2Vec2Processor"}) == AudioFeatureExtractor()

    with pytest.raises(ValueError, match="feature_size"):
        AudioFeatureExtractor.from_dict({"feature_size": 80})
    with pytest.raises(ValueError, match="num_mel_bins"):
        AudioFeatureExtractor.from_dict({"num_mel_bins": 80})
    with pytest.raises(ValueError, match="feature_extractor_type"):
        AudioFeatureExtractor.from_dict({"feature_extractor_type": "WhisperFeatureExtractor"})
    with pytest.raises(ValueError, match="padding_side"):
        AudioFeatureExtractor(padding_side="middle")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="preprocessor_config.json"):
        AudioFeatureExtractor.from_pretrained(tmp_path / "empty")
    with pytest.raises(FileNotFoundError, match="nope"):
        AudioFeatureExtractor.from_pretrained(tmp_path / "nope")


def test_preprocessing_imports_only_numpy_and_stdlib():
    import zoo.preprocessing as pkg

    # Pillow: the image processor's one dependency, imported lazily (decoding and resizing);
    # tokenizers: tokenizer.json, imported lazily by text_tokenizer_for. Of the zoo, only
    # zoo.preprocessing itself, zoo.config (configs, pure Python: as_pair) and zoo.nn.resize (jax)
    # inside the segmentation post-processing.
    allowed = set(sys.stdlib_module_names) | {"numpy", "__future__", "PIL", "tokenizers"}
    folder = os.path.dirname(pkg.__file__)
    for name in sorted(os.listdir(folder)):
        if not name.endswith(".py"):
            continue
        tree = ast.parse(open(os.path.join(folder, name), encoding="utf-8").read())
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                modules = {alias.name for alias in node.names}
            elif isinstance(node, ast.ImportFrom):
                modules = {node.module or ""}
            else:
                continue
            bad = {m for m in modules if m.split(".")[0] not in allowed and not m.startswith("zoo.preprocessing")
                   and m not in ("zoo.nn.resize", "zoo.config")}
            assert not bad, (name, bad)


# ============================================================== WAV
def _int_samples(width, shape, seed=0):
    """Random integer PCM values, as the exact floats read_wav must return."""
    rng = np.random.default_rng(seed)
    half = 2 ** (8 * width - 1)
    ints = rng.integers(-half, half, size=shape)
    ints.flat[:2] = [-half, half - 1]  # extremes
    return (ints / half).astype(np.float32), ints


@pytest.mark.parametrize("width", [1, 2, 3, 4])
def test_wav_roundtrip(tmp_path, width):
    x, _ = _int_samples(width, (257,), seed=width)
    path = tmp_path / f"w{width}.wav"
    write_wav(path, x, 22050, sample_width=width)
    y, sr = read_wav(path)
    assert sr == 22050 and y.dtype == np.float32 and y.shape == (257,)
    np.testing.assert_array_equal(y, x)
    assert y.min() >= -1.0 and (y.max() < 1.0 or width == 4)  # float32(2**31 - 1) / 2**31 rounds to 1.0
    assert not [p for p in os.listdir(tmp_path) if p.endswith(".tmp")]


@pytest.mark.parametrize("width", [1, 2, 4])
def test_wav_scaling_matches_scipy(tmp_path, width):
    wavfile = pytest.importorskip("scipy.io.wavfile")
    x, _ = _int_samples(width, (100, 2), seed=10 + width)
    path = tmp_path / "s.wav"
    write_wav(path, x, SR, sample_width=width)
    rate, ints = wavfile.read(path)
    ref = (ints.astype(np.float64) - 128) / 128 if width == 1 else ints / 2 ** (8 * width - 1)
    y, sr = read_wav(path)
    assert rate == sr == SR
    np.testing.assert_array_equal(y, ref.astype(np.float32))


def test_wav_stereo_to_mono_and_clipping(tmp_path):
    x, _ = _int_samples(2, (300, 2), seed=7)
    write_wav(tmp_path / "st.wav", x, SR)
    y, _ = read_wav(tmp_path / "st.wav")
    assert y.shape == (300, 2)
    np.testing.assert_array_equal(y, x)
    mono = to_mono(y)
    assert mono.shape == (300,) and mono.dtype == np.float32
    np.testing.assert_allclose(mono, y.mean(axis=1), atol=1e-7)
    assert to_mono(mono) is mono
    write_wav(tmp_path / "clip.wav", np.array([2.0, -2.0, 1.0, 0.5]), SR)
    np.testing.assert_array_equal(read_wav(tmp_path / "clip.wav")[0], [32767 / 32768, -1.0, 32767 / 32768, 0.5])


def _riff(fmt_body, data=b"\x00\x00" * 4):
    chunks = b"fmt " + struct.pack("<I", len(fmt_body)) + fmt_body + b"data" + struct.pack("<I", len(data)) + data
    return b"RIFF" + struct.pack("<I", 4 + len(chunks)) + b"WAVE" + chunks


def _fmt(tag, channels, rate, bits, sub_tag=None):
    block = channels * bits // 8
    body = struct.pack("<HHIIHH", tag, channels, rate, rate * block, block, bits)
    if sub_tag is not None:  # WAVE_FORMAT_EXTENSIBLE: cbSize, valid bits, channel mask, sub-format GUID
        guid = struct.pack("<H", sub_tag) + b"\x00\x00\x00\x00\x10\x00\x80\x00\x00\xaa\x00\x38\x9b\x71"
        body += struct.pack("<HHI", 22, bits, 0) + guid
    return body


def test_wav_extensible_pcm(tmp_path):
    _, ints = _int_samples(3, (50, 2), seed=3)
    data = ints.astype("<i4").view(np.uint8).reshape(-1, 4)[:, :3].tobytes()
    path = tmp_path / "ext.wav"
    path.write_bytes(_riff(_fmt(0xFFFE, 2, 48000, 24, sub_tag=1), data))
    y, sr = read_wav(path)
    assert sr == 48000 and y.shape == (50, 2)
    np.testing.assert_array_equal(y, (ints / 2**23).astype(np.float32))


def test_wav_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="missing.wav"):
        read_wav(tmp_path / "missing.wav")
    empty = tmp_path / "empty.wav"
    empty.write_bytes(b"")
    with pytest.raises(WavError, match="empty"):
        read_wav(empty)
    text = tmp_path / "notes.wav"
    text.write_text("hello, I am not audio\n")
    with pytest.raises(WavError, match=r"notes\.wav.*not a WAV"):
        read_wav(text)
    mp3 = tmp_path / "song.mp3"
    mp3.write_bytes(b"ID3\x04\x00\x00\x00\x00\x00\x00" + b"\xff\xfb\x90\x00" * 8)
    with pytest.raises(WavError, match="MP3"):
        read_wav(mp3)
    flt = tmp_path / "float.wav"
    flt.write_bytes(_riff(_fmt(3, 1, SR, 32), np.zeros(4, np.float32).tobytes()))
    with pytest.raises(WavError, match=r"float\.wav.*float.*PCM"):
        read_wav(flt)
    ext_flt = tmp_path / "ext_float.wav"
    ext_flt.write_bytes(_riff(_fmt(0xFFFE, 1, SR, 32, sub_tag=3), np.zeros(4, np.float32).tobytes()))
    with pytest.raises(WavError, match="float"):
        read_wav(ext_flt)
    alaw = tmp_path / "alaw.wav"
    alaw.write_bytes(_riff(_fmt(6, 1, 8000, 8), b"\x55" * 8))
    with pytest.raises(WavError, match="A-law"):
        read_wav(alaw)
    truncated = tmp_path / "trunc.wav"
    truncated.write_bytes(_riff(_fmt(1, 1, SR, 16))[:30])
    with pytest.raises(WavError, match="trunc"):
        read_wav(truncated)


def test_write_wav_errors_leave_nothing(tmp_path):
    path = tmp_path / "out.wav"
    with pytest.raises(TypeError, match="float"):
        write_wav(path, np.zeros(10, np.int16), SR)
    with pytest.raises(ValueError, match="NaN"):
        write_wav(path, np.array([0.0, np.nan]), SR)
    with pytest.raises(ValueError, match="sample_width"):
        write_wav(path, np.zeros(10), SR, sample_width=5)
    assert os.listdir(tmp_path) == []
    write_wav(path, np.zeros(10), SR)
    write_wav(path, np.full(20, 0.5), SR)  # replaces atomically
    assert read_wav(path)[0].shape == (20,)
    assert os.listdir(tmp_path) == ["out.wav"]


def test_wav_through_feature_extractor(tmp_path):
    x, _ = _int_samples(2, (1600, 2), seed=9)
    write_wav(tmp_path / "a.wav", x, 8000)
    y, sr = read_wav(tmp_path / "a.wav")
    fe = AudioFeatureExtractor(return_attention_mask=True)
    with pytest.raises(ValueError, match="8000"):
        fe(to_mono(y), sampling_rate=sr)
    hf = transformers.Wav2Vec2FeatureExtractor(return_attention_mask=True, sampling_rate=8000)
    _check(hf, AudioFeatureExtractor(return_attention_mask=True, sampling_rate=8000), to_mono(y), sr=sr)


# ============================================================== CTC decoding
VOCAB = {"<pad>": 0, "<s>": 1, "</s>": 2, "<unk>": 3, "|": 4, "a": 5, "b": 6, "d": 7, "e": 8, "h": 9, "l": 10,
         "o": 11, "r": 12, "w": 13, "'": 14, ".": 15, "t": 16, "s": 17}


def _make(tmp_path, vocab=VOCAB, name="tok", save_config=True, reload=True, **kw):
    """(HF tokenizer, CTCDecoder.from_pretrained) for the same vocabulary and settings."""
    d = tmp_path / name
    d.mkdir()
    (d / "vocab.json").write_text(json.dumps(vocab))
    hf = transformers.Wav2Vec2CTCTokenizer(str(d / "vocab.json"), **kw)
    if save_config:
        hf.save_pretrained(d)
        if reload:
            hf = transformers.Wav2Vec2CTCTokenizer.from_pretrained(d)
    else:
        assert not kw
    return hf, CTCDecoder.from_pretrained(d)


V = VOCAB
SEQUENCES = [
    [V["h"], V["h"], V["e"], V["l"], V["l"], 0, V["l"], V["o"], V["o"], 4, 4, V["w"], V["o"], V["r"], V["l"], V["d"]],
    [4, 4, 0, V["a"], V["a"], 0, 0, V["b"], 4, 0, 4, V["a"], 4, 4],  # leading/trailing/double delimiters
    [0, 0, 0],  # only blanks
    [],
    [1, V["a"], 3, 3, V["b"], 2, 0, 99, 99, -100, V["e"]],  # specials, unknown ids
    [V["t"], V["h"], V["a"], V["t"], V["'"], V["s"], 4, V["s"], V["o"], 4, V["."], V["."]],
]


@pytest.mark.parametrize("save_config", [True, False])
def test_ctc_decode_matches_hf(tmp_path, save_config):
    hf, ours = _make(tmp_path, save_config=save_config)
    for seq in SEQUENCES:
        for kw in ({}, {"skip_special_tokens": True}, {"group_tokens": False},
                   {"spaces_between_special_tokens": True}, {"clean_up_tokenization_spaces": True}):
            assert ours.decode(seq, **kw) == hf.decode(seq, **kw), (seq, kw)
            assert ours.decode(np.array(seq, dtype=np.int64), **kw) == hf.decode(seq, **kw)
    assert ours.decode([V["h"], V["e"], V["l"], 0, V["l"], V["o"]]) == "hello"  # blank separates repeats
    assert ours.decode([V["l"], V["l"], V["l"]]) == "l"
    assert ours.decode([4, V["a"], 4, 4, V["b"], 4]) == "a b"
    assert (ours.pad_token_id, ours.word_delimiter_token_id, ours.unk_token_id) == (0, 4, 3)
    assert ours.vocab_size == hf.vocab_size and len(ours) == len(hf)


def test_ctc_batch_decode_and_logits(tmp_path):
    hf, ours = _make(tmp_path)
    ids = np.array([SEQUENCES[0], SEQUENCES[0][::-1], [0] * 16])
    assert ours.batch_decode(ids) == hf.batch_decode(ids)
    assert ours.batch_decode(SEQUENCES) == hf.batch_decode(SEQUENCES)  # ragged list
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(3, 16, len(VOCAB))).astype(np.float32)
    logits[np.arange(3)[:, None], np.arange(16)[None], ids] += 10.0  # hand-made winners
    assert ours.decode_logits(logits) == hf.batch_decode(ids)
    assert ours.decode_logits(logits, lengths=[5, 16, 0]) == [hf.decode(ids[0][:5]), hf.decode(ids[1]), ""]
    with pytest.raises(ValueError, match=r"\[B, T, V\]"):
        ours.decode_logits(logits[0])
    with pytest.raises(TypeError, match="integer"):
        ours.decode(np.array([1.0, 2.0]))


def test_ctc_encode_matches_hf(tmp_path):
    hf, ours = _make(tmp_path)
    texts = ["hello world", "that's so.", "  hello  ", "a <unk> b", "xyz", "a|b", "<s>hello</s>", "",
             "Hello", "wor<pad>ld", "a\tb"]
    for text in texts:
        assert ours.tokenize(text) == hf.tokenize(text), text
        assert ours.encode(text) == hf.encode(text), text
    assert ours.encode("ab ab") == [5, 6, 4, 5, 6]
    assert ours.decode(ours.encode("hello world")) == "helo world"  # CTC needs blanks between repeats


def test_ctc_lower_case_and_added_tokens(tmp_path):
    vocab = {"<pad>": 0, "<unk>": 1, "|": 2, "A": 3, "B": 4, "C": 5, "'": 6}
    hf, ours = _make(tmp_path, vocab=vocab, do_lower_case=True)
    assert len(ours) == len(hf) == 9  # <s>, </s> added after the vocabulary
    assert ours.get_vocab() == hf.get_vocab()
    for seq in ([3, 3, 0, 3, 2, 4, 5, 6, 7, 8, 99], [7, 3, 8], [2, 5, 2]):
        for skip in (False, True):
            assert ours.decode(seq, skip_special_tokens=skip) == hf.decode(seq, skip_special_tokens=skip)
    for text in ("ab Ab c", "ABC", "it's a cab", "a <s> b"):
        assert ours.encode(text) == hf.encode(text), text


def test_ctc_config_variants(tmp_path):
    # custom special tokens, clean-up on, word delimiter replaced by another char
    # (compared with the tokenizer built directly: transformers 5.23's from_pretrained drops a custom
    # word_delimiter_token and falls back to "|"; the zoo honours tokenizer_config.json.)
    vocab = {"[PAD]": 0, "[UNK]": 1, "/": 2, "a": 3, "b": 4, ".": 5}
    hf, ours = _make(tmp_path, vocab=vocab, reload=False, pad_token="[PAD]", unk_token="[UNK]",
                     word_delimiter_token="/", clean_up_tokenization_spaces=True, bos_token=None, eos_token=None)
    assert ours.word_delimiter_token == "/" and ours.decode([3, 2, 4]) == "a b"
    for seq in ([3, 2, 5, 0, 5, 2, 4, 4], [2, 3, 0, 3, 9, 1]):
        assert ours.decode(seq) == hf.decode(seq)
        assert ours.decode(seq, skip_special_tokens=True) == hf.decode(seq, skip_special_tokens=True)
    for text in ("a b .", "ab [UNK] ba", "c"):
        assert ours.encode(text) == hf.encode(text), text
    assert len(ours) == len(hf)

    # legacy layout: no added_tokens_decoder, special tokens in special_tokens_map.json
    d = tmp_path / "legacy"
    d.mkdir()
    (d / "vocab.json").write_text(json.dumps({"<blank>": 0, "<unk>": 1, "|": 2, "x": 3, "y": 4}))
    config = {"do_lower_case": False, "tokenizer_class": "Wav2Vec2CTCTokenizer"}
    (d / "tokenizer_config.json").write_text(json.dumps(config))
    (d / "special_tokens_map.json").write_text(json.dumps({"pad_token": "<blank>", "unk_token": "<unk>",
                                                            "bos_token": "<s>", "eos_token": "</s>"}))
    hf = transformers.Wav2Vec2CTCTokenizer.from_pretrained(d)
    ours = CTCDecoder.from_pretrained(d)
    assert ours.pad_token == "<blank>" and len(ours) == len(hf)
    for seq in ([3, 0, 3, 2, 4, 5, 6], [0, 0, 4]):
        assert ours.decode(seq) == hf.decode(seq)
    assert ours.encode("xy yx <s>") == hf.encode("xy yx <s>")


def test_ctc_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="vocab.json"):
        CTCDecoder.from_pretrained(tmp_path)
    (tmp_path / "vocab.json").write_text(json.dumps(VOCAB))
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({"tokenizer_class": "Wav2Vec2PhonemeCTCTokenizer"}))
    with pytest.raises(ValueError, match="tokenizer_class"):
        CTCDecoder.from_pretrained(tmp_path)
    (tmp_path / "tokenizer_config.json").write_text("{not json")
    with pytest.raises(ValueError, match="tokenizer_config.json"):
        CTCDecoder.from_pretrained(tmp_path)
    with pytest.raises(ValueError, match="target_lang"):
        CTCDecoder({"eng": VOCAB, "fra": VOCAB})
    assert CTCDecoder({"eng": VOCAB}, target_lang="eng").decode([5, 5, 6]) == "ab"
