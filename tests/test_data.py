"""zoo.data: fine-tuning datasets (text / CTC speech / images) and the batch index stream.

Parity with HF where it means something: token ids against ``PreTrainedTokenizerFast``
(truncation included), CTC labels against ``Wav2Vec2CTCTokenizer``, audio against
``Wav2Vec2FeatureExtractor(padding="max_length")``, pixels against ``BeitImageProcessor``.
Every bad input must give an error that names the file (and line) and the problem.
"""

import ast
import json
import shutil
import warnings
from pathlib import Path

import numpy as np
import pytest

from zoo.data import (
    DataError,
    batch_indices,
    load_image_classification,
    load_speech_recognition_ctc,
    load_text_classification,
    max_text_length,
)
from zoo.models.data2vec_audio import Data2VecAudioConfig
from zoo.models.data2vec_text import Data2VecTextConfig
from zoo.models.data2vec_vision import Data2VecVisionConfig
from zoo.preprocessing import write_wav

ASSETS = Path(__file__).resolve().parent.parent / "zoo" / "assets"
AUDIO_CKPT = ASSETS / "tiny-data2vec-audio-ctc"
TEXT_CONFIG = Data2VecTextConfig.from_json_file(ASSETS / "tiny-data2vec-text" / "config.json")  # mpe 40, pad 1
AUDIO_CONFIG = Data2VecAudioConfig.from_json_file(AUDIO_CKPT / "config.json")
VISION_CONFIG = Data2VecVisionConfig.from_dict({"image_size": 32, "patch_size": 8, "hidden_size": 32,
                                                "num_attention_heads": 4, "num_hidden_layers": 1})
SR = 16000
WORDS = ["a", "great", "movie", "bad", "film", "the", "plot", "is", "fine", "really", "not"]


# ====================================================================== helpers
def _jsonl(path: Path, rows) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows), encoding="utf-8")
    return path


def _tokenizer_dir(root: Path) -> Path:
    """A checkpoint dir with a tiny RoBERTa-style WordLevel tokenizer.json (<s> ... </s>)."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors

    vocab = {"<s>": 0, "<pad>": 1, "</s>": 2, "<unk>": 3, **{w: i + 4 for i, w in enumerate(WORDS)}}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.post_processor = processors.RobertaProcessing(("</s>", 2), ("<s>", 0))
    ckpt = root / "ckpt"
    ckpt.mkdir()
    tok.save(str(ckpt / "tokenizer.json"))
    return ckpt


def _text(path, ckpt=None, **kw):
    return load_text_classification(path, checkpoint_dir=ckpt, config=kw.pop("config", TEXT_CONFIG), **kw)


def _speech(path, ckpt=AUDIO_CKPT, **kw):
    return load_speech_recognition_ctc(path, checkpoint_dir=ckpt, config=kw.pop("config", AUDIO_CONFIG), **kw)


def _images(path, ckpt, **kw):
    return load_image_classification(path, checkpoint_dir=ckpt, config=kw.pop("config", VISION_CONFIG), **kw)


def _wave(n, seed=0, sr=SR, path=None):
    x = (np.random.default_rng(seed).normal(size=n) * 0.2).clip(-0.9, 0.9).astype(np.float32)
    if path is not None:
        write_wav(path, x, sr)
    return x


def _speech_dir(root: Path, items) -> Path:
    """items: [(name, samples, transcript)] -> NAME.wav + NAME.txt."""
    root.mkdir(parents=True, exist_ok=True)
    for i, (name, n, text) in enumerate(items):
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        _wave(n, seed=i, path=root / f"{name}.wav")
        (root / f"{name}.txt").write_text(text + "\n", encoding="utf-8")
    return root


def _image(path: Path, h, w, seed=0):
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)).save(path)


def _vision_ckpt(root: Path, **processor) -> Path:
    ckpt = root / "vision-ckpt"
    ckpt.mkdir()
    if processor:
        (ckpt / "preprocessor_config.json").write_text(json.dumps(
            {"image_processor_type": "BeitImageProcessor", **processor}))
    return ckpt


def _image_dir(root: Path) -> Path:
    data = root / "images"
    _image(data / "dog" / "a.png", 40, 50, 0)
    _image(data / "dog" / "nested" / "b.JPG", 30, 30, 1)
    _image(data / "cat" / "c.jpeg", 60, 20, 2)
    _image(data / "bird" / "d.bmp", 33, 31, 3)
    (data / "cat" / "notes.txt").write_text("not an image")
    (data / "cat" / ".hidden.png").write_bytes(b"ignored")
    (data / ".cache").mkdir()
    (data / "README").write_text("top-level files are not classes")
    return data


def _raises(exc, *fragments):
    """pytest.raises whose message must contain every fragment."""
    class _Ctx:
        def __enter__(self):
            self.ctx = pytest.raises(exc)
            self.info = self.ctx.__enter__()
            return self.info

        def __exit__(self, *args):
            out = self.ctx.__exit__(*args)
            message = str(self.info.value)
            for f in fragments:
                assert str(f) in message, f"{f!r} not in {message!r}"
            return out
    return _Ctx()


# ====================================================================== batch_indices
def test_batch_indices_epochs_are_permutations_and_batches_straddle():
    n, b, seed = 10, 4, 7
    stream = np.concatenate([batch_indices(n, b, step, seed) for step in range(5)])  # 20 = two epochs
    perms = [np.random.default_rng([seed, e]).permutation(n) for e in range(2)]
    np.testing.assert_array_equal(stream, np.concatenate(perms))
    for e in range(2):
        assert sorted(stream[e * n:(e + 1) * n]) == list(range(n))  # nothing dropped or repeated in an epoch
    np.testing.assert_array_equal(batch_indices(n, b, 2, seed), np.concatenate([perms[0][8:], perms[1][:2]]))
    # a batch larger than the dataset spans several epochs
    big = batch_indices(3, 8, 1, 0)
    ref = np.concatenate([np.random.default_rng([0, e]).permutation(3) for e in range(6)])[8:16]
    np.testing.assert_array_equal(big, ref)
    assert big.dtype == np.int64


def test_batch_indices_deterministic_and_process_slices():
    a, b = batch_indices(1000, 64, 123, 5), batch_indices(1000, 64, 123, 5)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, batch_indices(1000, 64, 123, 6))
    for n, gb, step in [(1000, 64, 15), (10, 8, 3), (7, 12, 2)]:
        for count in (1, 2, 4):
            parts = [batch_indices(n, gb, step, 3, process_index=p, process_count=count) for p in range(count)]
            assert all(len(p) == gb // count for p in parts)
            np.testing.assert_array_equal(np.concatenate(parts), batch_indices(n, gb, step, 3))


@pytest.mark.parametrize("args,kw,fragment", [
    ((10, 6, 0, 0), {"process_count": 4}, "not divisible by process_count=4"),
    ((10, 4, 0, 0), {"process_index": 2, "process_count": 2}, "process_index=2"),
    ((0, 4, 0, 0), {}, "num_examples"),
    ((10, 0, 0, 0), {}, "global_batch_size"),
    ((10, 4, -1, 0), {}, "step"),
    ((10, 4, 0, -3), {}, "seed"),
])
def test_batch_indices_errors(args, kw, fragment):
    with _raises(ValueError, fragment):
        batch_indices(*args, **kw)


# ====================================================================== text
def test_text_input_ids_batch(tmp_path):
    rows = [{"input_ids": [0, 31, 7, 2], "label": 1}, {"input_ids": [0, 5, 6, 7, 8, 9, 10, 11, 12, 2], "label": 0},
            {"input_ids": [0, 4, 2], "label": 2, "id": "extra keys are ignored"}]
    path = _jsonl(tmp_path / "train.jsonl", rows[:2] + [""] + rows[2:])  # a blank line is skipped
    ds = _text(path)
    assert ds.task == "text_classification" and len(ds) == 3
    assert ds.length == 16  # longest row (10) rounded up to a multiple of 8
    assert ds.classes == ["LABEL_0", "LABEL_1", "LABEL_2"]
    batch = ds.batch([2, 0])
    assert set(batch) == {"input_ids", "attention_mask", "labels"}
    assert batch["input_ids"].shape == (2, 16) and batch["input_ids"].dtype == np.int32
    np.testing.assert_array_equal(batch["input_ids"][0], [0, 4, 2] + [1] * 13)  # padded with pad_token_id=1
    np.testing.assert_array_equal(batch["attention_mask"][1], [1] * 4 + [0] * 12)
    np.testing.assert_array_equal(batch["labels"], np.array([2, 1], np.int32))
    assert ds.units(batch) == 7.0
    assert ds.spec["input_ids"] == ((16,), np.dtype(np.int32))
    assert ds.describe() == "3 examples, 3 classes, 16 tokens per example"
    assert ds.batch(np.array([1, 1, 1]))["input_ids"].shape == (3, 16)
    with _raises(IndexError, "index 3"):
        ds.batch([3])


def test_text_tokenized_like_hf_with_truncation(tmp_path):
    transformers = pytest.importorskip("transformers")
    ckpt = _tokenizer_dir(tmp_path)
    texts = ["a great movie", "the plot is not fine really", "bad film", "the plot is really really really bad"]
    path = _jsonl(tmp_path / "train.jsonl", [{"text": t, "label": lab} for t, lab in
                                             zip(texts, ["pos", "neg", "neg", "neg"])])
    hf = transformers.PreTrainedTokenizerFast(tokenizer_file=str(ckpt / "tokenizer.json"), bos_token="<s>",
                                              eos_token="</s>", pad_token="<pad>", unk_token="<unk>")
    ds = _text(path, ckpt)
    assert ds.length == 16 and ds.classes == ["neg", "pos"]
    batch = ds.batch(range(4))
    ref = hf(texts, padding="max_length", max_length=16)
    np.testing.assert_array_equal(batch["input_ids"], np.array(ref["input_ids"]))
    np.testing.assert_array_equal(batch["attention_mask"], np.array(ref["attention_mask"]))
    np.testing.assert_array_equal(batch["labels"], [1, 0, 0, 0])
    # truncation is HF's (content cut, </s> kept)
    with pytest.warns(UserWarning, match="2 of 4 rows are longer than 5 tokens"):
        short = _text(path, ckpt, max_length=5)
    ref = hf(texts, truncation=True, max_length=5, padding="max_length")
    np.testing.assert_array_equal(short.batch(range(4))["input_ids"], np.array(ref["input_ids"]))
    assert "2 truncated" in short.describe()


def test_text_tokenizer_next_to_data_and_mixed_rows(tmp_path):
    ckpt = _tokenizer_dir(tmp_path)
    data = tmp_path / "data"
    data.mkdir()
    shutil.copy(ckpt / "tokenizer.json", data / "tokenizer.json")
    path = _jsonl(data / "train.jsonl", [{"text": "bad film", "label": 0}, {"input_ids": [0, 9, 2], "label": 1}])
    ds = _text(path, tmp_path / "no-tokenizer-here")
    np.testing.assert_array_equal(ds.batch([0])["input_ids"][0, :4], [0, 7, 8, 2])


def test_text_length_capped_and_truncation_keeps_last_id(tmp_path):
    assert max_text_length(TEXT_CONFIG) == 38  # 40 - pad_token_id(1) - 1
    long = [0] + list(range(4, 60)) + [2]
    path = _jsonl(tmp_path / "t.jsonl", [{"input_ids": long, "label": 0}, {"input_ids": [0, 5, 2], "label": 1}])
    with pytest.warns(UserWarning, match="truncated"):
        ds = _text(path)
    assert ds.length == 38
    np.testing.assert_array_equal(ds.batch([0])["input_ids"][0], long[:37] + [2])
    with pytest.warns(UserWarning):
        assert _text(path, max_length=6).batch([0])["input_ids"][0].tolist() == [0, 4, 5, 6, 7, 2]
    with _raises(DataError, "max_length=39", "38"):
        _text(path, max_length=39)
    # 37 tokens round up to 40 > 38: the cap wins
    path = _jsonl(tmp_path / "u.jsonl", [{"input_ids": long[:36] + [2], "label": 0}, {"input_ids": [3], "label": 1}])
    assert _text(path).length == 38


def test_text_labels(tmp_path):
    rows = [{"input_ids": [0, 2], "label": name} for name in ("b", "c", "a", "b")]
    path = _jsonl(tmp_path / "s.jsonl", rows)
    ds = _text(path)
    assert ds.classes == ["a", "b", "c"]
    np.testing.assert_array_equal(ds.batch(range(4))["labels"], [1, 2, 0, 1])
    ds = _text(path, label2id={"c": 0, "b": 1, "a": 2, "d": 3})
    assert ds.classes == ["c", "b", "a", "d"]
    np.testing.assert_array_equal(ds.batch(range(4))["labels"], [1, 0, 2, 1])
    # integer labels take their names from the config's id2label
    config = TEXT_CONFIG.replace(id2label={0: "neg", 1: "pos", 2: "neutral"}, num_labels=3)
    path = _jsonl(tmp_path / "i.jsonl", [{"input_ids": [0, 2], "label": i} for i in (0, 1)])
    assert _text(path, config=config).classes == ["neg", "pos", "neutral"]
    path = _jsonl(tmp_path / "j.jsonl", [{"input_ids": [0, 2], "label": i} for i in (0, 4)])
    with pytest.warns(UserWarning, match="labels go up to 4"):
        assert _text(path, config=config).classes == ["neg", "pos", "neutral", "LABEL_3", "LABEL_4"]
    assert _text(path, label2id={str(i): i for i in range(5)}).classes == ["0", "1", "2", "3", "4"]
    with _raises(ValueError, "label2id ids must be exactly 0..1"):
        _text(path, label2id={"a": 0, "b": 2})


@pytest.mark.parametrize("rows,kw,exc,fragments", [
    ([], {}, DataError, ["no examples"]),
    (["{not json"], {}, DataError, [":1:", "malformed JSON"]),
    ([{"input_ids": [0, 2], "label": 0}, "[1, 2]"], {}, DataError, [":2:", "expected a JSON object"]),
    ([{"input_ids": [0, 2], "label": 0}, {"input_ids": [0, 2]}], {}, DataError, [":2:", 'missing key "label"']),
    ([{"label": 0}], {}, DataError, [":1:", "exactly one of"]),
    ([{"input_ids": [0, 2], "text": "x", "label": 0}], {}, DataError, ["exactly one of"]),
    ([{"input_ids": [], "label": 0}], {}, DataError, ['"input_ids" is empty']),
    ([{"input_ids": [0, "x"], "label": 0}], {}, DataError, ["list of integers"]),
    ([{"input_ids": [0, 128], "label": 0}], {}, DataError, ["token id 128", "vocab_size=128"]),
    ([{"input_ids": [0, 2], "label": 0}, {"input_ids": [0, 2], "label": "x"}], {}, DataError,
     [":2:", "string", "use one kind"]),
    ([{"input_ids": [0, 2], "label": 1.5}], {}, DataError, ["integer class id or a string"]),
    ([{"input_ids": [0, 2], "label": True}], {}, DataError, ["integer class id or a string"]),
    ([{"input_ids": [0, 2], "label": -1}, {"input_ids": [0, 2], "label": 1}], {}, DataError,
     [":1:", "label -1 is out of range"]),
    ([{"input_ids": [0, 2], "label": "a"}, {"input_ids": [0, 2], "label": "zzz"}], {"label2id": {"a": 0, "b": 1}},
     DataError, [":2:", "unknown label 'zzz'", "'a'"]),
    ([{"input_ids": [0, 2], "label": 2}], {"label2id": {"a": 0, "b": 1}}, DataError, ["label 2 is out of range"]),
    ([{"input_ids": [0, 2], "label": "only"}] * 2, {}, DataError, ["at least 2 classes"]),
    ([{"text": "a movie", "label": 0}, {"input_ids": [0, 2], "label": 1}], {}, FileNotFoundError,
     ["tokenizer.json", ":"]),
])
def test_text_errors(tmp_path, rows, kw, exc, fragments):
    path = _jsonl(tmp_path / "bad.jsonl", rows)
    with _raises(exc, str(path), *fragments):
        _text(path, tmp_path, **kw)


def test_text_errors_files_and_tokens(tmp_path):
    with _raises(FileNotFoundError, "missing.jsonl"):
        _text(tmp_path / "missing.jsonl")
    with _raises(DataError, "is a directory"):
        _text(tmp_path)
    ckpt = _tokenizer_dir(tmp_path)
    path = _jsonl(tmp_path / "t.jsonl", [{"text": "a movie", "label": 0}, {"text": "   ", "label": 1}])
    with _raises(DataError, f"{path}:2", "text is empty"):
        _text(path, ckpt)
    from tokenizers import Tokenizer, normalizers

    bare = Tokenizer.from_file(str(ckpt / "tokenizer.json"))  # no specials, "~" deleted
    bare.post_processor = None
    bare.normalizer = normalizers.Replace("~", "")
    (tmp_path / "bare").mkdir()
    bare.save(str(tmp_path / "bare" / "tokenizer.json"))
    path = _jsonl(tmp_path / "t.jsonl", [{"text": "a movie", "label": 0}, {"text": "~~", "label": 1}])
    with _raises(DataError, f"{path}:2", "gives no tokens"):
        _text(path, tmp_path / "bare")
    (ckpt / "tokenizer.json").write_text("{broken")
    with _raises(DataError, "tokenizer.json", "not a readable"):
        _text(path, ckpt)
    with _raises(DataError, "needs a text model", "data2vec-audio"):
        _text(path, ckpt, config=AUDIO_CONFIG)


# ====================================================================== speech (CTC)
def test_speech_dir_matches_hf(tmp_path):
    transformers = pytest.importorskip("transformers")
    from zoo.preprocessing import read_wav

    items = [("spk1/u1", 9000, "hello world"), ("u2", 6400, "abc"), ("u3", 12000, "it's a test")]
    data = _speech_dir(tmp_path / "speech", items)
    (data / ".hidden.wav").write_bytes(b"ignored")
    ds = _speech(data)
    assert len(ds) == 3 and ds.classes is None and ds.task == "speech_recognition_ctc"
    assert [f.name for f in ds.files] == ["u1.wav", "u2.wav", "u3.wav"]  # sorted by path (spk1/ first)
    assert ds.num_samples == 12000 and ds.label_length == len("it's a test")
    batch = ds.batch([2, 0, 1])
    assert batch["input_values"].shape == (3, 12000) and batch["input_values"].dtype == np.float32
    assert batch["attention_mask"].dtype == np.int32 and batch["labels"].dtype == np.int32

    tok = transformers.Wav2Vec2CTCTokenizer.from_pretrained(str(AUDIO_CKPT))
    order = [2, 0, 1]
    for row, i in enumerate(order):
        ids = tok(items[i][2]).input_ids
        np.testing.assert_array_equal(batch["labels"][row, : len(ids)], ids)
        assert np.all(batch["labels"][row, len(ids):] == -100)
    fe = transformers.Wav2Vec2FeatureExtractor.from_pretrained(str(AUDIO_CKPT))
    waves = [read_wav(data / f"{items[i][0]}.wav")[0] for i in order]
    ref = fe(waves, sampling_rate=SR, padding="max_length", max_length=12000, return_tensors="np")
    np.testing.assert_allclose(batch["input_values"], ref["input_values"], atol=1e-6, rtol=0)
    np.testing.assert_array_equal(batch["attention_mask"], ref["attention_mask"])
    assert ds.units(batch) == pytest.approx((12000 + 9000 + 6400) / SR)
    assert ds.uses_attention_mask
    assert "3 utterances" in ds.describe() and "12000 samples" in ds.describe()


def test_speech_manifest_wins_and_max_length(tmp_path):
    data = _speech_dir(tmp_path / "speech", [("a", 8000, "zzz"), ("b", 7000, "yyy")])
    (data / "clips").mkdir()
    _wave(9000, seed=5, path=data / "clips" / "c.wav")
    manifest = _jsonl(data / "transcripts.jsonl", [{"audio": "clips/c.wav", "text": "hi there"},
                                                   {"audio": str(data / "a.wav"), "text": "ab"}])
    ds = _speech(data)
    assert [f.name for f in ds.files] == ["c.wav", "a.wav"] and ds.num_samples == 9000
    assert _speech(manifest).num_samples == 9000  # the manifest file itself
    ds = _speech(data, max_length=10000)
    assert ds.batch([1])["input_values"].shape == (1, 10000)
    with _raises(DataError, "c.wav", "9000 samples", "max_length=8500"):
        _speech(data, max_length=8500)


def test_speech_transcript_checks(tmp_path):
    data = _speech_dir(tmp_path / "upper", [("a", 8000, "HELLO"), ("b", 8000, "ok")])
    with pytest.warns(UserWarning, match="missing from vocab.json.*check the case"):
        _speech(data)
    # 3000 samples give 9 CTC frames: too few for a 12-character transcript
    data = _speech_dir(tmp_path / "short", [("a", 3000, "abcdefghijkl"), ("b", 8000, "ok")])
    with _raises(DataError, "a.wav", "9 CTC frames", "needs at least 12", "ctc_zero_infinity"):
        _speech(data)
    with pytest.warns(UserWarning, match="too short"):
        _speech(data, config=AUDIO_CONFIG.replace(ctc_zero_infinity=True))


def test_speech_errors(tmp_path):
    with _raises(FileNotFoundError, "nowhere"):
        _speech(tmp_path / "nowhere")
    empty = tmp_path / "empty"
    empty.mkdir()
    with _raises(DataError, "no .wav files"):
        _speech(empty)
    data = _speech_dir(tmp_path / "d1", [("a", 8000, "ab")])
    _wave(8000, path=data / "orphan.wav")
    with _raises(FileNotFoundError, "orphan.wav", "no transcript orphan.txt"):
        _speech(data)
    data = _speech_dir(tmp_path / "d2", [("a", 8000, "ab")])
    _wave(8000, sr=8000, path=data / "a.wav")
    with _raises(DataError, "a.wav", "8000 Hz", "16000 Hz"):
        _speech(data)
    data = _speech_dir(tmp_path / "d3", [("a", 8000, "ab")])
    (data / "a.wav").write_bytes(b"this is not a wav file at all")
    with _raises(ValueError, "a.wav", "not a WAV file"):
        _speech(data)
    data = _speech_dir(tmp_path / "d4", [("a", 8000, "ab"), ("b", 8000, "  ")])
    with _raises(DataError, "b.txt", "transcript is empty"):
        _speech(data)
    data = _speech_dir(tmp_path / "d5", [("a", 8000, "ab")])
    with _raises(FileNotFoundError, "vocab.json"):
        _speech(data, ckpt=tmp_path / "empty")
    with _raises(DataError, "needs an audio model"):
        _speech(data, config=TEXT_CONFIG)


@pytest.mark.parametrize("rows,fragments", [
    ([{"audio": "a.wav"}], [":1:", "missing key 'text'"]),
    ([{"audio": "a.wav", "text": "ab"}, {"text": "ab"}], [":2:", "missing key 'audio'"]),
    ([{"audio": "gone.wav", "text": "ab"}], [":1:", "gone.wav", "does not exist"]),
    ([{"audio": "a.wav", "text": 3}], [":1:", "'text' must be a string"]),
    (["{oops"], [":1:", "malformed JSON"]),
    ([], ["no examples"]),
])
def test_speech_manifest_errors(tmp_path, rows, fragments):
    data = _speech_dir(tmp_path / "speech", [("a", 8000, "ab")])
    manifest = _jsonl(data / "transcripts.jsonl", rows)
    with _raises((DataError, FileNotFoundError), str(manifest), *fragments):
        _speech(data)


def test_speech_unreadable_at_batch_time(tmp_path):
    data = _speech_dir(tmp_path / "speech", [("a", 8000, "ab"), ("b", 8000, "cd")])
    ds = _speech(data)
    (data / "b.wav").write_bytes(b"RIFF....WAVEjunk")
    with _raises(ValueError, "b.wav"):
        ds.batch([0, 1])


# ====================================================================== images
def test_images_match_hf(tmp_path):
    transformers = pytest.importorskip("transformers")
    from zoo.preprocessing import load_image

    data = _image_dir(tmp_path)
    proc = {"size": {"height": 24, "width": 20}, "image_mean": [0.485, 0.456, 0.406],
            "image_std": [0.229, 0.224, 0.225]}
    ckpt = _vision_ckpt(tmp_path, **proc)
    with pytest.warns(UserWarning, match="24x20 images but the model's image_size is 32x32"):
        ds = _images(data, ckpt)
    assert ds.classes == ["bird", "cat", "dog"] and len(ds) == 4
    assert [f.name for f in ds.files] == ["d.bmp", "c.jpeg", "a.png", "b.JPG"]
    assert ds.skipped == 1 and "1 non-image files skipped" in ds.describe()
    batch = ds.batch([3, 0, 2])
    assert batch["pixel_values"].shape == (3, 3, 24, 20) and batch["pixel_values"].dtype == np.float32
    np.testing.assert_array_equal(batch["labels"], np.array([2, 0, 2], np.int32))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        hf = transformers.BeitImageProcessor(**proc)
        ref = hf([load_image(ds.files[i]) for i in (3, 0, 2)], return_tensors="np")["pixel_values"]
    np.testing.assert_allclose(batch["pixel_values"], ref, atol=1e-6, rtol=0)
    assert ds.units(batch) == 3.0
    assert ds.spec["pixel_values"] == ((3, 24, 20), np.dtype(np.float32))


def test_images_default_processor_and_label2id(tmp_path):
    data = _image_dir(tmp_path)
    ckpt = _vision_ckpt(tmp_path)  # no preprocessor_config.json: BEiT defaults at the model's 32x32
    ds = _images(data, ckpt, label2id={"dog": 0, "cat": 1, "bird": 2, "fish": 3})
    assert ds.classes == ["dog", "cat", "bird", "fish"]
    np.testing.assert_array_equal(ds.batch(range(4))["labels"], [2, 1, 0, 0])
    assert ds.batch([0])["pixel_values"].shape == (1, 3, 32, 32)
    with _raises(DataError, "'bird'", "not a class of label2id"):
        _images(data, ckpt, label2id={"dog": 0, "cat": 1})


def test_images_errors(tmp_path):
    ckpt = _vision_ckpt(tmp_path)
    with _raises(FileNotFoundError, "nowhere"):
        _images(tmp_path / "nowhere", ckpt)
    (tmp_path / "file.png").write_bytes(b"x")
    with _raises(DataError, "file.png", "one subdirectory of images per class"):
        _images(tmp_path / "file.png", ckpt)
    empty = tmp_path / "empty"
    empty.mkdir()
    with _raises(DataError, "no class subdirectories"):
        _images(empty, ckpt)
    one = tmp_path / "one"
    _image(one / "only" / "a.png", 8, 8)
    with _raises(DataError, "only one class folder"):
        _images(one, ckpt)
    two = tmp_path / "two"
    _image(two / "a" / "x.png", 8, 8)
    (two / "b").mkdir()
    (two / "b" / "x.txt").write_text("no images")
    with _raises(DataError, str(two / "b"), "has no images"):
        _images(two, ckpt)
    (two / "b" / "broken.png").write_bytes(b"not a png")
    ds = _images(two, ckpt)
    with _raises(ValueError, "broken.png", "not a readable image"):
        ds.batch([0, 1])
    (tmp_path / "v").mkdir()
    variable = _vision_ckpt(tmp_path / "v", size={"shortest_edge": 32}, default_to_square=False)
    with _raises(DataError, "different sizes", "do_center_crop"):
        _images(two, variable)
    with _raises(DataError, "needs a vision model"):
        _images(two, ckpt, config=TEXT_CONFIG)


# ====================================================================== misc
def test_load_dataset_arguments(tmp_path):
    from zoo.tasks import TASKS, load_dataset

    with _raises(ValueError, "unknown task 'summarization'", "text_classification"):
        load_dataset("summarization", tmp_path, checkpoint_dir=None, config=TEXT_CONFIG)
    with _raises(ValueError, "unknown task 'text_clasification'", "did you mean 'text_classification'"):
        load_dataset("text_clasification", tmp_path, checkpoint_dir=None, config=TEXT_CONFIG)
    with _raises(ValueError, "max_length"):
        load_dataset("image_classification", tmp_path, checkpoint_dir=None, config=VISION_CONFIG, max_length=3)
    with _raises(ValueError, "label2id", "speech_recognition_ctc"):
        load_dataset("speech_recognition_ctc", tmp_path, checkpoint_dir=None, config=AUDIO_CONFIG, label2id={"a": 0})
    path = _jsonl(tmp_path / "t.jsonl", [{"input_ids": [0, 5, 2], "label": 0}, {"input_ids": [0, 2], "label": 1}])
    ds = load_dataset("text_classification", path, checkpoint_dir=None, config=TEXT_CONFIG)
    assert ds.task == "text_classification" and len(ds) == 2
    assert set(TASKS) == {"text_classification", "speech_recognition_ctc", "image_classification"}


def test_module_imports_only_numpy_and_stdlib():
    tree = ast.parse((Path(__file__).resolve().parent.parent / "zoo" / "data.py").read_text())
    top = set()
    for node in tree.body:
        if isinstance(node, ast.Import):
            top |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            top.add((node.module or "").split(".")[0])
    assert top <= {"__future__", "functools", "json", "math", "os", "warnings", "collections", "pathlib",
                   "typing", "numpy"}, top
