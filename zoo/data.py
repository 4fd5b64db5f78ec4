"""Fine-tuning datasets for ``zoo finetune``: fixed-shape numpy batches from files on disk.

numpy + stdlib at import; ``tokenizers`` (text given as strings) and Pillow (images) are
imported on first use.

    ds = load_text_classification("train.jsonl", checkpoint_dir=ckpt, config=cfg)
    # or by task name: zoo.tasks.load_dataset("text_classification", "train.jsonl", ...)
    len(ds), ds.classes, ds.describe()        # "412 examples, 3 classes, 128 tokens per example"
    idx = batch_indices(len(ds), global_batch_size=32, step=step, seed=0,
                        process_index=jax.process_index(), process_count=jax.process_count())
    batch = ds.batch(idx)                     # dict of numpy arrays, same shapes for every batch
    ds.units(batch)                           # tokens / seconds of audio / images in the batch

Every shape is fixed for the whole dataset when it is loaded (so a jitted step compiles
once); ``ds.spec`` gives ``{name: (per-example shape, dtype)}``. Bad input raises
:class:`DataError` (a ``ValueError``) or ``FileNotFoundError`` naming the file, the line
when there is one, and the problem.

Formats
=======

``text_classification`` -- PATH is a JSONL file, one JSON object per line (blank lines are
skipped; other keys are ignored)::

    {"input_ids": [0, 31, 7, 2], "label": 1}
    {"text": "a great movie", "label": "positive"}

* ``input_ids``: token ids as the model takes them (special tokens included), each in
  ``[0, config.vocab_size)``. ``text``: tokenized with ``tokenizer.json`` from
  ``checkpoint_dir`` (else the one next to PATH) by :class:`zoo.preprocessing.Tokenizer`
  (with its ``tokenizer_config.json``), special tokens added, exactly like HF's fast tokenizer
  (``tokenizer(text).input_ids``, e.g. ``<s> ... </s>`` for RoBERTa). A row has one of the
  two keys, not both; files may mix them.
* ``label``: an integer class id or a string class name, the same kind on every row.
  With ``label2id`` (name -> id, ids exactly ``0..n-1``): names map through it, integer
  ids must be below ``n``; ``classes`` is the names in id order. Without it, string labels
  give ``classes = sorted(set(names))`` with ids in that order, and integer labels are the
  ids themselves (>= 0): ``classes`` covers ``0..max(max_label, len(config.id2label) - 1)``
  and takes its names from ``config.id2label`` (``LABEL_i`` where it has none). At least
  two classes.
* Sequence length ``L``: ``max_length`` when given (an error if above the model's maximum),
  else the longest row rounded up to a multiple of 8, capped at the model's maximum
  (Data2Vec-text/RoBERTa positions: ``max_position_embeddings - pad_token_id - 1``;
  BigBird and others: ``max_position_embeddings``). Longer rows are truncated (with a
  warning): text rows by the tokenizer's own truncation (HF ``truncation=True,
  max_length=L``: content is cut, the special tokens stay); ``input_ids`` rows keep their
  first ``L - 1`` ids and their last id (the closing ``</s>``/``[SEP]``, so a single
  sequence is cut exactly as HF cuts it).
* Batch: ``input_ids`` int32 ``[b, L]`` padded with ``config.pad_token_id``,
  ``attention_mask`` int32 ``[b, L]``, ``labels`` int32 ``[b]``. Units: real tokens.

``speech_recognition_ctc`` -- PATH is a directory holding ``transcripts.jsonl``, one
``{"audio": "relative/path.wav", "text": "HELLO WORLD"}`` per line (paths relative to the
manifest's directory; absolute paths allowed); or, without that manifest, ``*.wav`` files
(searched recursively, case-insensitive extension, hidden files ignored) each with its
transcript in ``NAME.txt`` next to it. PATH may also be the ``.jsonl`` manifest itself.

* Audio: integer PCM WAV (:func:`zoo.preprocessing.read_wav`), mixed to mono. Its sample
  rate must be the feature extractor's ``sampling_rate`` (``preprocessor_config.json`` in
  ``checkpoint_dir``, else :class:`~zoo.preprocessing.AudioFeatureExtractor` defaults);
  there is no resampling. Only the WAV headers are read at load time (lengths and rates);
  samples are decoded in :meth:`~FinetuneDataset.batch`.
* ``input_values`` float32 ``[b, S]``: the extractor's output padded to ``S`` samples
  (``padding="max_length"``), so normalization is the extractor's (per utterance, over
  the real samples when its ``return_attention_mask`` is true -- as in every Data2Vec-audio
  and SEW-D config). ``S`` = the longest file, or ``max_length`` samples when given; a file
  longer than ``max_length`` is an error naming it (cutting audio under a full transcript
  would teach the model wrong alignments). ``attention_mask`` int32 ``[b, S]`` is always
  returned (``ds.uses_attention_mask`` says whether the extractor config asks for it to be
  fed to the model).
* ``labels`` int32 ``[b, T]``: ``CTCDecoder.from_pretrained(checkpoint_dir).encode(text)``
  (HF ``Wav2Vec2CTCTokenizer(text).input_ids``; needs ``vocab.json``), padded with -100;
  ``T`` = the longest label sequence. A transcript with no tokens is an error; characters
  missing from the vocabulary (they become ``<unk>``, usually a case mismatch) give a
  warning. CTC needs at least ``len(labels) + repeated neighbours`` output frames: an
  utterance too short for its transcript is an error, a warning when the config sets
  ``ctc_zero_infinity`` (its loss is then zeroed). Units: seconds of real audio.

``image_classification`` -- PATH is a directory with one subdirectory per class
holding its images (``.jpg .jpeg .png .bmp .gif .webp``, case-insensitive, searched
recursively; hidden files and folders are ignored, other files are skipped and counted
in :meth:`describe`). ``classes`` = sorted folder names, or the ``label2id`` order when
given (every folder must then be one of its names). Images are processed by
``zoo.preprocessing.image_processor_for(checkpoint_dir, config)`` (``preprocessor_config.json``,
else the family default at the model's image size), one by one in
:meth:`~FinetuneDataset.batch`, which names the file it cannot read. The processor must
give a fixed size (``size`` with height/width, or a center crop). Batch: ``pixel_values``
float32 ``[b, 3, H, W]``, ``labels`` int32 ``[b]``. Units: images.

Batches: :func:`batch_indices` -- deterministic and stateless, so a resumed run (same
seed, same global batch size) continues the exact example stream.

The loaders share one signature ``(path, *, checkpoint_dir, config, label2id=None,
max_length=None)``; :mod:`zoo.tasks` maps each task name to its loader (and its head and loss).
"""

from __future__ import annotations

import functools
import json
import math
import os
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["DataError", "FinetuneDataset", "TextClassificationDataset", "SpeechCTCDataset",
           "ImageClassificationDataset", "load_text_classification", "load_speech_recognition_ctc",
           "load_image_classification", "batch_indices", "max_text_length"]

PREPROCESSOR_FILE = "preprocessor_config.json"
MANIFEST_FILE = "transcripts.jsonl"
IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp"})
LABEL_PAD = -100  # ignored label positions (HF convention; CTC loss masks them)

_TEXT_TYPES = frozenset({"data2vec-text", "big_bird"})
_AUDIO_TYPES = frozenset({"data2vec-audio", "sew-d"})
_VISION_TYPES = frozenset({"data2vec-vision", "groupvit"})


class DataError(ValueError):
    """A dataset that cannot be used as given; the message names the file (and line) and the problem."""


# ====================================================================== base class
class FinetuneDataset:
    """A dataset for one task, holding everything needed to build fixed-shape batches.

    Attributes: ``task`` (its name in :data:`zoo.tasks.TASKS`), ``classes`` (label names in id order;
    ``None`` for CTC), ``spec`` (``{name: (shape without the batch axis, dtype)}`` of every
    array :meth:`batch` returns), ``unit_name`` (what :meth:`units` counts).
    """

    task: str = ""
    classes: list[str] | None = None
    unit_name: str = "examples"
    spec: dict[str, tuple[tuple[int, ...], np.dtype]] = {}

    def __len__(self) -> int:
        raise NotImplementedError

    def batch(self, indices: Sequence[int]) -> dict[str, np.ndarray]:
        """The examples ``indices`` (any order, repeats allowed) as numpy arrays ``[len(indices), ...]``."""
        raise NotImplementedError

    def describe(self) -> str:
        raise NotImplementedError

    def units(self, batch: Mapping[str, np.ndarray]) -> float:
        """Work in a batch, for throughput logs (tokens, seconds of audio or images)."""
        raise NotImplementedError

    def _indices(self, indices) -> np.ndarray:
        idx = np.asarray(indices)
        if idx.ndim != 1 or idx.size == 0:
            raise ValueError(f"batch() takes a non-empty 1-D sequence of example indices, got shape {idx.shape}")
        if not np.issubdtype(idx.dtype, np.integer):
            raise TypeError(f"batch() takes integer example indices, got dtype {idx.dtype}")
        bad = idx[(idx < 0) | (idx >= len(self))]
        if bad.size:
            raise IndexError(f"example index {int(bad[0])} is out of range for a dataset of {len(self)} examples")
        return idx.astype(np.int64)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.describe()})"


# ====================================================================== text
class TextClassificationDataset(FinetuneDataset):
    task = "text_classification"
    unit_name = "tokens"

    def __init__(self, path: Path, sequences: list[np.ndarray], labels: np.ndarray, classes: list[str],
                 length: int, pad_token_id: int, truncated: int):
        self.path, self.classes, self.length, self.pad_token_id = path, classes, length, pad_token_id
        self._sequences, self._labels, self.truncated = sequences, labels, truncated
        self.spec = {"input_ids": ((length,), np.dtype(np.int32)), "attention_mask": ((length,), np.dtype(np.int32)),
                     "labels": ((), np.dtype(np.int32))}

    def __len__(self) -> int:
        return len(self._sequences)

    def batch(self, indices: Sequence[int]) -> dict[str, np.ndarray]:
        idx = self._indices(indices)
        ids = np.full((len(idx), self.length), self.pad_token_id, np.int32)
        mask = np.zeros((len(idx), self.length), np.int32)
        for row, i in enumerate(idx):
            seq = self._sequences[i]
            ids[row, : len(seq)] = seq
            mask[row, : len(seq)] = 1
        return {"input_ids": ids, "attention_mask": mask, "labels": self._labels[idx]}

    def units(self, batch: Mapping[str, np.ndarray]) -> float:
        return float(np.sum(batch["attention_mask"]))

    def describe(self) -> str:
        extra = f", {self.truncated} truncated" if self.truncated else ""
        return f"{len(self)} examples, {len(self.classes)} classes, {self.length} tokens per example{extra}"


def max_text_length(config) -> int | None:
    """Longest sequence the text model takes (``None`` when the config does not say)."""
    mpe = getattr(config, "max_position_embeddings", None)
    if mpe is None:
        return None
    if getattr(config, "model_type", "") == "data2vec-text":  # RoBERTa positions start after pad_token_id
        return int(mpe) - int(config.pad_token_id) - 1
    return int(mpe)


def load_text_classification(path: str | os.PathLike, *, checkpoint_dir: str | os.PathLike | None, config,
                             label2id: Mapping[str, int] | None = None,
                             max_length: int | None = None) -> TextClassificationDataset:
    """The ``text_classification`` JSONL file at ``path`` (the format in the module docstring).

    config: the checkpoint's zoo config; checkpoint_dir: its directory (``tokenizer.json``), or
    None. label2id: class name -> id. max_length: tokens per row.
    """
    path, checkpoint_dir = _paths(path, checkpoint_dir)
    if path.is_dir():
        raise DataError(f"{path}: is a directory; text_classification reads a JSONL file "
                        '(one {"input_ids": [...] or "text": "...", "label": ...} per line)')
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such dataset file")
    if getattr(config, "model_type", None) in _AUDIO_TYPES | _VISION_TYPES or not hasattr(config, "vocab_size"):
        raise DataError(f"text_classification needs a text model; the checkpoint is "
                        f"{getattr(config, 'model_type', type(config).__name__)!r}")
    pad_id = getattr(config, "pad_token_id", None)
    if pad_id is None:
        raise DataError("the model config has no pad_token_id; cannot pad text batches")
    vocab_size = int(config.vocab_size)

    rows = _read_jsonl(path)
    sequences: list[np.ndarray | None] = []
    texts: list[tuple[int, str]] = []  # (row, text)
    raw_labels: list[tuple[str, Any]] = []  # (where, label)
    for row, (line, obj) in enumerate(rows):
        where = f"{path}:{line}"
        has_ids, has_text = "input_ids" in obj, "text" in obj
        if has_ids == has_text:
            raise DataError(f"{where}: each row needs exactly one of \"input_ids\" (token ids) or \"text\" "
                            f"(a string), got keys {sorted(obj)}")
        if "label" not in obj:
            raise DataError(f"{where}: missing key \"label\" (got keys {sorted(obj)})")
        raw_labels.append((where, obj["label"]))
        if has_ids:
            ids = obj["input_ids"]
            if not isinstance(ids, list) or not all(_is_int(t) for t in ids):
                raise DataError(f"{where}: \"input_ids\" must be a list of integers, got {_short(ids)}")
            if not ids:
                raise DataError(f"{where}: \"input_ids\" is empty")
            bad = [t for t in ids if not 0 <= t < vocab_size]
            if bad:
                raise DataError(f"{where}: token id {bad[0]} is out of range for the model's vocabulary "
                                f"(vocab_size={vocab_size})")
            sequences.append(np.asarray(ids, np.int32))
        else:
            if not isinstance(obj["text"], str):
                raise DataError(f"{where}: \"text\" must be a string, got {_short(obj['text'])}")
            if not obj["text"].strip():
                raise DataError(f"{where}: the text is empty")
            texts.append((row, obj["text"]))
            sequences.append(None)

    tokenizer = None
    if texts:
        tokenizer, tok_file = _text_tokenizer(path, checkpoint_dir)
        encodings = tokenizer([t for _, t in texts])["input_ids"]
        for (row, _), ids in zip(texts, encodings):
            where = f"{path}:{rows[row][0]}"
            if not ids:
                raise DataError(f"{where}: the text gives no tokens with {tok_file}")
            bad = [t for t in ids if t >= vocab_size]
            if bad:
                raise DataError(f"{where}: {tok_file} gives token id {bad[0]}, out of range for the model's "
                                f"vocabulary (vocab_size={vocab_size}); is it the checkpoint's tokenizer?")
            sequences[row] = np.asarray(ids, np.int32)

    # Sequence length.
    cap = max_text_length(config)
    longest = max(len(s) for s in sequences)
    if max_length is not None:
        length = _positive_int(max_length, "max_length")
        if cap is not None and length > cap:
            raise DataError(f"max_length={length} is more than the model takes ({cap} tokens: "
                            f"max_position_embeddings={config.max_position_embeddings})")
    else:
        length = _round_up(longest, 8)
        if cap is not None:
            length = min(length, cap)
    long_rows = [row for row, s in enumerate(sequences) if len(s) > length]
    if long_rows:
        text_rows = {row: text for row, text in texts}
        to_encode = [row for row in long_rows if row in text_rows]
        if to_encode:
            try:
                encodings = tokenizer([text_rows[r] for r in to_encode], truncation=True,
                                      max_length=length)["input_ids"]
            except Exception as e:  # e.g. the special tokens alone are longer than `length`
                raise DataError(f"{path}: cannot truncate the text rows to {length} tokens with {tok_file} "
                                f"({str(e).strip()[:200]})") from None
            for row, ids in zip(to_encode, encodings):
                sequences[row] = np.asarray(ids, np.int32)
        for row in long_rows:
            if row not in text_rows:
                s = sequences[row]
                sequences[row] = np.concatenate([s[: length - 1], s[-1:]])
            if len(sequences[row]) > length:  # a tokenizer template longer than `length`
                raise DataError(f"{path}:{rows[row][0]}: cannot truncate the text to {length} tokens "
                                "(the tokenizer's special tokens alone are longer)")
        warnings.warn(f"{path}: {len(long_rows)} of {len(sequences)} rows are longer than {length} tokens and "
                      f"were truncated (first: line {rows[long_rows[0]][0]})", UserWarning, stacklevel=3)

    labels, classes = _class_labels(raw_labels, label2id, config)
    return TextClassificationDataset(path, sequences, labels, classes, length, int(pad_id), len(long_rows))


def _text_tokenizer(path: Path, checkpoint_dir: Path | None):
    """The checkpoint's ``tokenizer.json``, else the one next to the data file."""
    from zoo.preprocessing import text_tokenizer_for

    try:
        return text_tokenizer_for([checkpoint_dir, path.parent], hint='or give "input_ids"')
    except (FileNotFoundError, RuntimeError) as e:
        raise type(e)(f"{path}: rows with \"text\" need a tokenizer: {e}") from None
    except ValueError as e:
        raise DataError(str(e)) from None


def _class_labels(raw: list[tuple[str, Any]], label2id, config) -> tuple[np.ndarray, list[str]]:
    """Labels as ids ``[n]`` int32 and the class names in id order (see the module docstring)."""
    first_where, first = raw[0]
    kind = _label_kind(first, first_where)
    for where, value in raw:
        if _label_kind(value, where) != kind:
            raise DataError(f"{where}: label {value!r} is {'an integer' if kind == 'str' else 'a string'}, but "
                            f"{first_where} has a {'string' if kind == 'str' else 'integer'} label; use one kind")
    if label2id is not None:
        classes = _classes_from_label2id(label2id)
        if kind == "str":
            ids = []
            for where, value in raw:
                if value not in label2id:
                    raise DataError(f"{where}: unknown label {value!r}; label2id has {_short(classes, 10)}")
                ids.append(label2id[value])
        else:
            ids = [value for _, value in raw]
            for where, value in raw:
                if not 0 <= value < len(classes):
                    raise DataError(f"{where}: label {value} is out of range: label2id has {len(classes)} classes "
                                    f"(ids 0..{len(classes) - 1})")
    elif kind == "str":
        classes = sorted({value for _, value in raw})
        index = {name: i for i, name in enumerate(classes)}
        ids = [index[value] for _, value in raw]
    else:
        for where, value in raw:
            if value < 0:
                raise DataError(f"{where}: label {value} is out of range: integer labels are class ids >= 0")
        ids = [value for _, value in raw]
        id2label = dict(getattr(config, "id2label", None) or {})
        count = max(max(ids) + 1, len(id2label))
        classes = [str(id2label.get(i, f"LABEL_{i}")) for i in range(count)]
        if id2label and max(ids) >= len(id2label):
            warnings.warn(f"labels go up to {max(ids)} but the checkpoint's id2label has {len(id2label)} classes; "
                          f"the dataset has {count} classes ({', '.join(classes[len(id2label):][:5])} added)",
                          UserWarning, stacklevel=4)
    if len(classes) < 2:
        raise DataError(f"{first_where.rsplit(':', 1)[0]}: all labels are {classes[0]!r}: classification needs at "
                        "least 2 classes")
    return np.asarray(ids, np.int32), list(classes)


def _label_kind(value, where: str) -> str:
    if isinstance(value, str):
        return "str"
    if _is_int(value):
        return "int"
    raise DataError(f"{where}: label must be an integer class id or a string class name, got {_short(value)}")


def _classes_from_label2id(label2id: Mapping[str, int]) -> list[str]:
    if not isinstance(label2id, Mapping) or not label2id:
        raise ValueError(f"label2id must be a non-empty mapping name -> id, got {_short(label2id)}")
    for name, i in label2id.items():
        if not isinstance(name, str) or not _is_int(i):
            raise ValueError(f"label2id entry {name!r}: {i!r} is not a string name -> integer id")
    if sorted(label2id.values()) != list(range(len(label2id))):
        raise ValueError(f"label2id ids must be exactly 0..{len(label2id) - 1}, got {sorted(label2id.values())[:20]}")
    return [name for name, _ in sorted(label2id.items(), key=lambda kv: kv[1])]


# ====================================================================== speech (CTC)
class SpeechCTCDataset(FinetuneDataset):
    task = "speech_recognition_ctc"
    classes = None
    unit_name = "seconds of audio"

    def __init__(self, source: str, files: list[Path], lengths: np.ndarray, labels: list[np.ndarray], extractor,
                 num_samples: int, label_length: int):
        self.source, self.files, self.lengths = source, files, lengths
        self._labels, self.extractor = labels, extractor
        self.num_samples, self.label_length = num_samples, label_length
        self.sampling_rate = extractor.sampling_rate
        self.uses_attention_mask = bool(extractor.return_attention_mask)
        self.spec = {"input_values": ((num_samples,), np.dtype(np.float32)),
                     "attention_mask": ((num_samples,), np.dtype(np.int32)),
                     "labels": ((label_length,), np.dtype(np.int32))}

    def __len__(self) -> int:
        return len(self.files)

    def batch(self, indices: Sequence[int]) -> dict[str, np.ndarray]:
        from zoo.preprocessing import read_wav, to_mono

        idx = self._indices(indices)
        waves = []
        for i in idx:
            file = self.files[i]
            samples, rate = read_wav(file)
            if rate != self.sampling_rate:
                raise DataError(_rate_message(file, rate, self.sampling_rate))
            wave_ = to_mono(samples)
            if wave_.shape[0] == 0:
                raise DataError(f"{file}: holds no audio samples")
            if wave_.shape[0] > self.num_samples:
                raise DataError(f"{file}: has {wave_.shape[0]} samples, more than the dataset's {self.num_samples} "
                                "(did the file change after loading?)")
            waves.append(wave_)
        out = self.extractor(waves, sampling_rate=self.sampling_rate, padding="max_length",
                             max_length=self.num_samples, return_attention_mask=self.uses_attention_mask)
        mask = out.get("attention_mask")
        if mask is None:
            mask = np.zeros((len(idx), self.num_samples), np.int32)
            for row, w in enumerate(waves):
                if self.extractor.padding_side == "left":
                    mask[row, self.num_samples - len(w):] = 1
                else:
                    mask[row, : len(w)] = 1
        labels = np.full((len(idx), self.label_length), LABEL_PAD, np.int32)
        for row, i in enumerate(idx):
            labels[row, : len(self._labels[i])] = self._labels[i]
        return {"input_values": out["input_values"].astype(np.float32, copy=False),
                "attention_mask": mask.astype(np.int32, copy=False), "labels": labels}

    def units(self, batch: Mapping[str, np.ndarray]) -> float:
        return float(np.sum(batch["attention_mask"])) / self.sampling_rate

    def describe(self) -> str:
        hours = float(np.sum(self.lengths)) / self.sampling_rate / 3600
        total = f"{hours:.2f} h" if hours >= 0.1 else f"{hours * 3600:.1f} s"
        return (f"{len(self)} utterances ({total} of audio at {self.sampling_rate} Hz), "
                f"{self.num_samples} samples ({self.num_samples / self.sampling_rate:.2f} s) and "
                f"{self.label_length} labels per example")


def _rate_message(file, rate: int, expected: int) -> str:
    return (f"{file}: sampled at {rate} Hz, but the model's feature extractor expects {expected} Hz; "
            f"resample it first (e.g. `ffmpeg -i IN -ar {expected} -c:a pcm_s16le OUT.wav`)")


def _wav_header(file: Path) -> tuple[int, int]:
    """(frames, sample rate) from the WAV header; decodes the file only when ``wave`` refuses it."""
    import wave

    try:
        with wave.open(str(file), "rb") as w:
            return w.getnframes(), w.getframerate()
    except (wave.Error, EOFError):
        from zoo.preprocessing import read_wav  # raises a WavError naming the file, or reads extensible PCM

        samples, rate = read_wav(file)
        return samples.shape[0], rate


def _speech_items(path: Path) -> tuple[str, list[tuple[str, Path, str]]]:
    """(source description, [(where, wav path, transcript)])."""
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such dataset directory")
    manifest = path if path.is_file() else path / MANIFEST_FILE
    if path.is_file() and path.suffix.lower() != ".jsonl":
        raise DataError(f"{path}: speech_recognition_ctc reads a directory (with {MANIFEST_FILE} or *.wav + *.txt "
                        "files) or a .jsonl manifest")
    items = []
    if manifest.is_file():
        base = manifest.parent
        for line, obj in _read_jsonl(manifest):
            where = f"{manifest}:{line}"
            for key in ("audio", "text"):
                if key not in obj:
                    raise DataError(f"{where}: missing key {key!r} (each line is "
                                    '{"audio": "path.wav", "text": "TRANSCRIPT"}; got keys ' f"{sorted(obj)})")
                if not isinstance(obj[key], str):
                    raise DataError(f"{where}: {key!r} must be a string, got {_short(obj[key])}")
            file = base / obj["audio"]
            if not file.is_file():
                raise FileNotFoundError(f"{where}: audio file {file} does not exist")
            items.append((where, file, obj["text"]))
        return str(manifest), items
    wavs = sorted(f for f in _walk(path) if f.suffix.lower() == ".wav")
    if not wavs:
        raise DataError(f"{path}: no .wav files and no {MANIFEST_FILE}")
    for file in wavs:
        txt = file.with_suffix(".txt")
        if not txt.is_file():
            raise FileNotFoundError(f"{file}: no transcript {txt.name} next to it")
        try:
            text = txt.read_text(encoding="utf-8")
        except UnicodeDecodeError as e:
            raise DataError(f"{txt}: not UTF-8 text ({e})") from None
        items.append((str(txt), file, text))
    return str(path), items


def load_speech_recognition_ctc(path: str | os.PathLike, *, checkpoint_dir: str | os.PathLike | None, config,
                                label2id: Mapping[str, int] | None = None,
                                max_length: int | None = None) -> SpeechCTCDataset:
    """The ``speech_recognition_ctc`` data at ``path`` (the format in the module docstring).

    config: the checkpoint's zoo config; checkpoint_dir: its directory (``vocab.json``, and
    ``preprocessor_config.json`` when it has one). max_length: samples per row. label2id:
    not for CTC (an error when given).
    """
    from zoo.preprocessing import audio_feature_extractor_for, ctc_decoder_for

    if label2id is not None:
        raise ValueError("label2id is for classification tasks, not speech_recognition_ctc")
    path, checkpoint_dir = _paths(path, checkpoint_dir)
    if getattr(config, "model_type", None) in _TEXT_TYPES | _VISION_TYPES or not hasattr(config, "conv_kernel"):
        raise DataError(f"speech_recognition_ctc needs an audio model; the checkpoint is "
                        f"{getattr(config, 'model_type', type(config).__name__)!r}")
    if checkpoint_dir is None:
        raise DataError("speech_recognition_ctc needs the checkpoint directory (its vocab.json)")
    source, items = _speech_items(path)
    extractor = audio_feature_extractor_for(checkpoint_dir)
    decoder = ctc_decoder_for(checkpoint_dir)
    vocab_size = getattr(config, "vocab_size", None)
    unk = decoder.unk_token_id

    files, lengths, labels = [], [], []
    unknown_chars: dict[str, int] = {}
    for where, file, text in items:
        text = text.strip()
        ids = decoder.encode(text)
        if not ids:
            raise DataError(f"{where}: the transcript is empty (no label tokens)")
        if unk is not None and unk in ids:
            tokens = decoder.tokenize(text)
            for t, i in zip(tokens, ids):
                if i == unk and t != decoder.unk_token:
                    unknown_chars[t] = unknown_chars.get(t, 0) + 1
        if vocab_size is not None and max(ids) >= vocab_size:
            raise DataError(f"{where}: label id {max(ids)} (from {checkpoint_dir / 'vocab.json'}) is out of range "
                            f"for the model's vocab_size={vocab_size}")
        frames, rate = _wav_header(file)
        if rate != extractor.sampling_rate:
            raise DataError(_rate_message(file, rate, extractor.sampling_rate))
        if frames == 0:
            raise DataError(f"{file}: holds no audio samples")
        files.append(file)
        lengths.append(frames)
        labels.append(np.asarray(ids, np.int32))
    if unknown_chars:
        shown = ", ".join(f"{c!r} ({n}x)" for c, n in sorted(unknown_chars.items(), key=lambda kv: -kv[1])[:8])
        warnings.warn(f"{source}: transcripts contain characters missing from vocab.json, encoded as "
                      f"{decoder.unk_token!r}: {shown}" + (" -- check the case of the transcripts"
                                                           if any(c.swapcase() in decoder.encoder
                                                                  for c in unknown_chars) else ""),
                      UserWarning, stacklevel=3)
    lengths = np.asarray(lengths, np.int64)
    if max_length is not None:
        num_samples = _positive_int(max_length, "max_length")
        too_long = np.flatnonzero(lengths > num_samples)
        if too_long.size:
            i = int(too_long[0])
            raise DataError(f"{files[i]}: {lengths[i]} samples ({lengths[i] / extractor.sampling_rate:.2f} s) is "
                            f"longer than max_length={num_samples} samples; {too_long.size} file(s) are -- raise "
                            "max_length, or split or drop them (audio is never cut under a full transcript)")
    else:
        num_samples = int(lengths.max())
    _check_ctc_lengths(config, files, lengths, labels, extractor.sampling_rate)
    label_length = max(len(x) for x in labels)
    return SpeechCTCDataset(source, files, lengths, labels, extractor, num_samples, label_length)


def output_frames(config, num_samples) -> np.ndarray:
    """Frames the model's feature encoder gives for ``num_samples`` (HF ``_get_feat_extract_output_lengths``)."""
    n = np.asarray(num_samples, np.int64)
    for k, s in zip(config.conv_kernel, config.conv_stride):
        n = (n - k) // s + 1
    if getattr(config, "add_adapter", False):
        for _ in range(config.num_adapter_layers):
            n = (n - 1) // config.adapter_stride + 1
    return n


def _check_ctc_lengths(config, files, lengths, labels, rate) -> None:
    frames = output_frames(config, lengths)
    needed = np.asarray([len(x) + int(np.sum(x[1:] == x[:-1])) for x in labels])
    bad = np.flatnonzero(frames < needed)
    if not bad.size:
        return
    i = int(bad[0])
    message = (f"{files[i]}: {lengths[i] / rate:.2f} s of audio gives {max(int(frames[i]), 0)} CTC frames, but its "
               f"transcript needs at least {needed[i]} ({len(labels[i])} labels + repeats); {bad.size} of "
               f"{len(files)} utterance(s) are too short for their transcripts")
    if getattr(config, "ctc_zero_infinity", False):
        warnings.warn(message + " (their loss is zeroed: ctc_zero_infinity=True)", UserWarning, stacklevel=4)
    else:
        raise DataError(message + "; drop them, or set ctc_zero_infinity=true in the config to zero their loss")


# ====================================================================== images
class ImageClassificationDataset(FinetuneDataset):
    task = "image_classification"
    unit_name = "images"

    def __init__(self, path: Path, files: list[Path], labels: np.ndarray, classes: list[str], processor,
                 image_size: tuple[int, int], skipped: int):
        self.path, self.files, self._labels, self.classes = path, files, labels, classes
        self.processor, self.image_size, self.skipped = processor, image_size, skipped
        self.spec = {"pixel_values": ((3, *image_size), np.dtype(np.float32)), "labels": ((), np.dtype(np.int32))}

    def __len__(self) -> int:
        return len(self.files)

    def batch(self, indices: Sequence[int]) -> dict[str, np.ndarray]:
        from zoo.preprocessing import load_image

        idx = self._indices(indices)
        shape = (3, *self.image_size)
        pixels = np.empty((len(idx), *shape), np.float32)
        for row, i in enumerate(idx):
            file = self.files[i]
            try:
                value = self.processor(load_image(file))["pixel_values"][0]
            except FileNotFoundError:
                raise FileNotFoundError(f"{file}: image file is gone (it was there when the dataset was loaded)") \
                    from None
            except ValueError as e:
                message = str(e)
                raise DataError(message if str(file) in message else f"{file}: {message}") from None
            if value.shape != shape:
                raise DataError(f"{file}: processed to shape {value.shape}, expected {shape}")
            pixels[row] = value
        return {"pixel_values": pixels, "labels": self._labels[idx]}

    def units(self, batch: Mapping[str, np.ndarray]) -> float:
        return float(batch["labels"].shape[0])

    def describe(self) -> str:
        h, w = self.image_size
        skipped = f" ({self.skipped} non-image files skipped)" if self.skipped else ""
        return f"{len(self)} images, {len(self.classes)} classes, 3x{h}x{w} pixels{skipped}"


def _fixed_image_size(processor) -> tuple[int, int] | None:
    """The (height, width) every processed image has, or None when it depends on the image."""
    size = None
    if processor.do_resize and processor.size and set(processor.size) == {"height", "width"}:
        size = (processor.size["height"], processor.size["width"])
    if processor.do_center_crop:
        size = (processor.crop_size["height"], processor.crop_size["width"])
    if getattr(processor, "do_pad", None):
        pad = getattr(processor, "pad_size", None)
        if pad is None:
            return size
        size = (max(pad["height"], size[0]), max(pad["width"], size[1])) if size else None
    return size


def load_image_classification(path: str | os.PathLike, *, checkpoint_dir: str | os.PathLike | None, config,
                              label2id: Mapping[str, int] | None = None,
                              max_length: int | None = None) -> ImageClassificationDataset:
    """The ``image_classification`` directory at ``path`` (the format in the module docstring).

    config: the checkpoint's zoo config; checkpoint_dir: its directory (its
    ``preprocessor_config.json``), or None (the family's processor at the model's image size).
    label2id: class name -> id. max_length: not for images (an error when given).
    """
    if max_length is not None:
        raise ValueError("max_length is for text and audio; image sizes come from the image processor")
    path, checkpoint_dir = _paths(path, checkpoint_dir)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such dataset directory")
    if not path.is_dir():
        raise DataError(f"{path}: image_classification reads a directory with one subdirectory of images per class")
    if getattr(config, "model_type", None) in _TEXT_TYPES | _AUDIO_TYPES:
        raise DataError(f"image_classification needs a vision model; the checkpoint is {config.model_type!r}")
    folders = sorted(p.name for p in path.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not folders:
        raise DataError(f"{path}: no class subdirectories (expected {path}/CLASS_NAME/image.jpg ...)")
    if label2id is not None:
        classes = _classes_from_label2id(label2id)
        unknown = [f for f in folders if f not in label2id]
        if unknown:
            raise DataError(f"{path / unknown[0]}: folder {unknown[0]!r} is not a class of label2id "
                            f"({_short(classes, 10)})")
        index = dict(label2id)
    else:
        classes = folders
        index = {name: i for i, name in enumerate(classes)}
    if len(classes) < 2:
        raise DataError(f"{path}: only one class folder ({classes[0]!r}); classification needs at least 2 classes")
    files, labels, skipped = [], [], 0
    for name in folders:
        found = 0
        for file in sorted(_walk(path / name)):
            if file.suffix.lower() in IMAGE_EXTENSIONS:
                files.append(file)
                labels.append(index[name])
                found += 1
            else:
                skipped += 1
        if not found:
            raise DataError(f"{path / name}: class folder has no images "
                            f"({', '.join(sorted(IMAGE_EXTENSIONS))})")
    from zoo.preprocessing import image_processor_for

    processor = image_processor_for(checkpoint_dir, config)
    size = _fixed_image_size(processor)
    if size is None:
        raise DataError(f"the image processor ({checkpoint_dir / PREPROCESSOR_FILE if checkpoint_dir else 'default'})"
                        " gives images of different sizes; set size to {\"height\": H, \"width\": W} or enable "
                        "do_center_crop so that every batch has one shape")
    model_size = getattr(config, "image_size", None)
    if model_size is not None:
        model_size = tuple(model_size) if isinstance(model_size, (list, tuple)) else (model_size, model_size)
        if tuple(model_size) != size:
            warnings.warn(f"the image processor gives {size[0]}x{size[1]} images but the model's image_size is "
                          f"{model_size[0]}x{model_size[1]}", UserWarning, stacklevel=3)
    return ImageClassificationDataset(path, files, np.asarray(labels, np.int32), list(classes), processor, size,
                                      skipped)


# ====================================================================== batches
@functools.lru_cache(maxsize=4)
def _epoch_permutation(num_examples: int, seed: int, epoch: int) -> np.ndarray:
    perm = np.random.default_rng([seed, epoch]).permutation(num_examples)
    perm.setflags(write=False)
    return perm


def batch_indices(num_examples: int, global_batch_size: int, step: int, seed: int, *,
                  process_index: int = 0, process_count: int = 1) -> np.ndarray:
    """Example indices of this process's share of the global batch number ``step`` (0-based).

    The example stream is the concatenation of per-epoch permutations
    ``np.random.default_rng([seed, epoch]).permutation(num_examples)``; global batch ``step``
    is ``stream[step * B:(step + 1) * B]`` (it may straddle two epochs; nothing is dropped or
    repeated within an epoch), and process ``p`` of ``P`` gets its contiguous slice
    ``[p * B / P:(p + 1) * B / P]``. Stateless, so a resumed run continues exactly.
    Returns int64 ``[B / P]``.
    """
    n = _positive_int(num_examples, "num_examples")
    b = _positive_int(global_batch_size, "global_batch_size")
    count = _positive_int(process_count, "process_count")
    for name, value in (("step", step), ("seed", seed), ("process_index", process_index)):
        if not _is_int(value) or value < 0:
            raise ValueError(f"{name} must be a non-negative integer, got {value!r}")
    if process_index >= count:
        raise ValueError(f"process_index={process_index} must be below process_count={count}")
    if b % count:
        raise ValueError(f"global_batch_size={b} is not divisible by process_count={count}")
    share = b // count
    start = int(step) * b + int(process_index) * share
    end = start + share
    parts = []
    for epoch in range(start // n, (end - 1) // n + 1):
        lo, hi = max(start, epoch * n) - epoch * n, min(end, (epoch + 1) * n) - epoch * n
        parts.append(_epoch_permutation(n, int(seed), epoch)[lo:hi])
    return np.concatenate(parts).astype(np.int64)


# ====================================================================== helpers
def _paths(path, checkpoint_dir) -> tuple[Path, Path | None]:
    return Path(path), None if checkpoint_dir is None else Path(checkpoint_dir)


def _read_jsonl(path: Path) -> list[tuple[int, dict]]:
    """[(1-based line number, object)] of a JSONL file; blank lines skipped."""
    rows = []
    try:
        with open(path, encoding="utf-8") as f:
            for line_no, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    obj = json.loads(line)
                except json.JSONDecodeError as e:
                    raise DataError(f"{path}:{line_no}: malformed JSON ({e.msg} at column {e.colno})") from None
                if not isinstance(obj, dict):
                    raise DataError(f"{path}:{line_no}: expected a JSON object, got {_short(obj)}")
                rows.append((line_no, obj))
    except UnicodeDecodeError as e:
        raise DataError(f"{path}: not UTF-8 text ({e})") from None
    if not rows:
        raise DataError(f"{path}: no examples (the file is empty)")
    return rows


def _walk(directory: Path):
    """Files under ``directory``, recursively, skipping hidden files and folders."""
    for root, dirs, names in os.walk(directory, followlinks=True):
        dirs[:] = [d for d in dirs if not d.startswith(".")]
        for name in names:
            if not name.startswith("."):
                yield Path(root) / name


def _is_int(value) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_))


def _positive_int(value, name: str) -> int:
    if not _is_int(value) or value <= 0:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return int(value)


def _round_up(n: int, multiple: int) -> int:
    return int(math.ceil(n / multiple) * multiple)


def _short(value, items: int | None = None) -> str:
    """repr for error messages: at most ``items`` list entries, at most ~80 characters otherwise."""
    if items is not None and isinstance(value, list) and len(value) > items:
        return repr(value[:items])[:-1] + f", ... ({len(value)} in all)]"
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."
