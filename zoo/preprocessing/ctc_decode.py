"""Greedy CTC decoding and label encoding, equivalent to HF's ``Wav2Vec2CTCTokenizer``.

    dec = CTCDecoder.from_pretrained("path/to/checkpoint")   # vocab.json + tokenizer_config.json
    texts = dec.decode_logits(logits)                         # logits [B, T, V] -> list[str]
    texts = dec.batch_decode(pred_ids)                        # ids [B, T] -> list[str]
    labels = dec.encode("HELLO WORLD")                        # list[int] (CTC targets)

``decode`` reproduces ``Wav2Vec2CTCTokenizer.decode`` with HF's defaults: ids -> tokens
(unknown ids -> ``unk_token``), optionally drop special tokens except the word delimiter
(``skip_special_tokens``, applied *before* grouping, as in HF), collapse repeats
(``group_tokens``), drop the pad (CTC blank) token, word delimiter -> ``" "``, join,
``strip()``, lower-case when ``do_lower_case``, then HF's ``clean_up_tokenization`` when
``clean_up_tokenization_spaces`` (default from ``tokenizer_config.json``, else False).

``encode`` reproduces ``Wav2Vec2CTCTokenizer.encode``: the text is split on added tokens
(multi-character vocabulary entries such as ``<unk>`` and the special tokens; whitespace
around multi-character ones is stripped), every other chunk is upper-cased when
``do_lower_case`` (HF's convention: the vocabulary is upper-case) and split into
characters with ``" "`` -> word delimiter; unknown characters map to ``unk_token``'s id.
numpy + stdlib only.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
from collections.abc import Mapping, Sequence
from itertools import groupby
from typing import Any

import numpy as np

__all__ = ["CTCDecoder"]

VOCAB_NAME = "vocab.json"
TOKENIZER_CONFIG_NAME = "tokenizer_config.json"
SPECIAL_TOKENS_MAP_NAME = "special_tokens_map.json"
ADDED_TOKENS_NAME = "added_tokens.json"
TOKENIZER_CLASS = "Wav2Vec2CTCTokenizer"

# HF's order of named special tokens (it fixes the ids of special tokens missing from the vocab).
_SPECIAL_ATTRS = ("bos_token", "eos_token", "unk_token", "sep_token", "pad_token", "cls_token", "mask_token")


@dataclasses.dataclass(frozen=True)
class _AddedToken:
    content: str
    lstrip: bool = False
    rstrip: bool = False
    single_word: bool = False


def _token_str(value: Any) -> str | None:
    """A token as written in tokenizer files: a string, a serialized AddedToken dict, or None."""
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, Mapping) and isinstance(value.get("content"), str):
        return value["content"]
    raise ValueError(f"cannot read token {value!r}: expected a string or a dict with 'content'")


def _added_token(value: Any) -> _AddedToken:
    if isinstance(value, str):
        return _AddedToken(value)
    content = _token_str(value)
    return _AddedToken(content, bool(value.get("lstrip", False)), bool(value.get("rstrip", False)),
                       bool(value.get("single_word", False)))


def _read_json(path: str) -> Any:
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"{path!r} is not valid JSON: {e}") from None


class CTCDecoder:
    """Greedy CTC decoder / label encoder over a character vocabulary (``vocab.json``).

    Args mirror ``Wav2Vec2CTCTokenizer``; ``vocab`` maps token -> id (for a nested,
    multi-lingual vocabulary pass ``target_lang``). ``added_tokens`` maps id -> token
    (string or HF ``AddedToken`` dict) as in ``tokenizer_config.json``'s
    ``added_tokens_decoder``.
    """

    def __init__(
        self,
        vocab: Mapping[str, Any],
        *,
        bos_token: str | None = "<s>",
        eos_token: str | None = "</s>",
        unk_token: str | None = "<unk>",
        pad_token: str | None = "<pad>",
        word_delimiter_token: str | None = "|",
        replace_word_delimiter_char: str = " ",
        do_lower_case: bool = False,
        target_lang: str | None = None,
        clean_up_tokenization_spaces: bool = False,
        split_special_tokens: bool = False,
        sep_token: str | None = None,
        cls_token: str | None = None,
        mask_token: str | None = None,
        extra_special_tokens: Sequence[Any] = (),
        added_tokens: Mapping[int, Any] | None = None,
    ):
        if not isinstance(vocab, Mapping) or not vocab:
            raise ValueError("vocab must be a non-empty dict token -> id")
        if target_lang is not None:
            if target_lang not in vocab or not isinstance(vocab[target_lang], Mapping):
                raise ValueError(f"target_lang={target_lang!r} is not a language of this nested vocabulary "
                                 f"(languages: {sorted(k for k, v in vocab.items() if isinstance(v, Mapping))[:20]})")
            vocab = vocab[target_lang]
        elif any(isinstance(v, Mapping) for v in vocab.values()):
            raise ValueError("this vocab.json is a nested multi-lingual vocabulary; pass target_lang "
                             "(e.g. in tokenizer_config.json)")
        for token, index in vocab.items():
            if not isinstance(token, str) or not isinstance(index, int) or isinstance(index, bool):
                raise ValueError(f"vocab entry {token!r}: {index!r} is not a string -> integer id")
        self.encoder: dict[str, int] = dict(vocab)
        self.decoder: dict[int, str] = {v: k for k, v in self.encoder.items()}
        self.bos_token, self.eos_token, self.unk_token = map(_token_str, (bos_token, eos_token, unk_token))
        self.pad_token, self.word_delimiter_token = _token_str(pad_token), _token_str(word_delimiter_token)
        self.sep_token, self.cls_token, self.mask_token = map(_token_str, (sep_token, cls_token, mask_token))
        self.replace_word_delimiter_char = replace_word_delimiter_char
        self.do_lower_case = bool(do_lower_case)
        self.target_lang = target_lang
        self.clean_up_tokenization_spaces = bool(clean_up_tokenization_spaces)
        self.split_special_tokens = bool(split_special_tokens)

        # Special tokens, in HF's order: named ones, the word delimiter, then extras.
        named = [getattr(self, a) for a in _SPECIAL_ATTRS] + [self.word_delimiter_token]
        specials = [t for t in named if t is not None] + [_token_str(t) for t in extra_special_tokens]
        self.all_special_tokens: tuple[str, ...] = tuple(dict.fromkeys(specials))

        # Added tokens, built like PreTrainedTokenizer.__init__ + Wav2Vec2CTCTokenizer.__init__.
        self._added: dict[int, _AddedToken] = {int(i): _added_token(t) for i, t in (added_tokens or {}).items()}
        self._added_encoder: dict[str, int] = {t.content: i for i, t in self._added.items()}
        self._add([t for t in self.all_special_tokens if t not in self._added_encoder], strip=False)
        self._add([t for t in self.encoder if len(t) > 1], strip=True)  # multi-char tokens are never split
        contents = sorted({t.content for t in self._added.values() if t.content}, key=len, reverse=True)
        self._split_re = re.compile("(" + "|".join(map(re.escape, contents)) + ")") if contents else None

    def _add(self, tokens: list[str], strip: bool) -> None:
        current = self.get_vocab()
        new_index = len(current)
        for token in tokens:
            if token == "":
                continue
            if token in current:
                index = current[token]
            else:
                index = current[token] = new_index
                new_index += 1
            self._added[index] = _AddedToken(token, lstrip=strip, rstrip=strip)
            self._added_encoder[token] = index

    # ------------------------------------------------------------------ loading
    @classmethod
    def from_pretrained(cls, directory: str | os.PathLike) -> "CTCDecoder":
        """Read ``vocab.json`` and, when present, ``tokenizer_config.json``,
        ``special_tokens_map.json`` and ``added_tokens.json`` (HF's precedence)."""
        directory = os.fspath(directory)
        if not os.path.isdir(directory):
            raise FileNotFoundError(f"{directory!r} is not a directory (expected one holding {VOCAB_NAME})")
        vocab_file = os.path.join(directory, VOCAB_NAME)
        if not os.path.isfile(vocab_file):
            raise FileNotFoundError(f"no {VOCAB_NAME} in {directory!r}: a CTC decoder needs the character vocabulary")
        vocab = _read_json(vocab_file)
        if not isinstance(vocab, dict):
            raise ValueError(f"{vocab_file!r} must hold a JSON object token -> id")

        def optional(name):
            path = os.path.join(directory, name)
            return _read_json(path) if os.path.isfile(path) else None

        config = optional(TOKENIZER_CONFIG_NAME) or {}
        tokenizer_class = config.get("tokenizer_class")
        if tokenizer_class not in (None, TOKENIZER_CLASS):
            raise ValueError(f"tokenizer_class={tokenizer_class!r} in {TOKENIZER_CONFIG_NAME} is not supported: "
                             f"CTCDecoder implements {TOKENIZER_CLASS!r} only")
        config = dict(config)
        if "added_tokens_decoder" not in config:  # legacy files, ignored by HF when added_tokens_decoder exists
            special_map = optional(SPECIAL_TOKENS_MAP_NAME) or {}
            config.update(special_map)
            legacy_added = optional(ADDED_TOKENS_NAME) or {}
            config["added_tokens_decoder"] = {int(i): t for t, i in legacy_added.items()}
        extras = config.get("extra_special_tokens") or config.get("additional_special_tokens") or ()
        if isinstance(extras, Mapping):
            extras = list(extras.values())

        kwargs = {k: config[k] for k in (*_SPECIAL_ATTRS, "word_delimiter_token") if k in config}
        for key in ("replace_word_delimiter_char", "do_lower_case", "target_lang", "clean_up_tokenization_spaces",
                    "split_special_tokens"):
            if config.get(key) is not None:
                kwargs[key] = config[key]
        return cls(vocab, extra_special_tokens=extras, added_tokens=config.get("added_tokens_decoder"), **kwargs)

    # ------------------------------------------------------------------ vocabulary
    def get_vocab(self) -> dict[str, int]:
        """Vocabulary plus added tokens, token -> id."""
        vocab = dict(self.encoder)
        vocab.update({t.content: i for i, t in sorted(self._added.items())})
        return vocab

    @property
    def vocab_size(self) -> int:
        """Size of the base vocabulary (``len(vocab.json)``), like HF."""
        return len(self.decoder)

    def __len__(self) -> int:
        """Vocabulary plus added tokens."""
        return len(self.get_vocab())

    def convert_tokens_to_ids(self, tokens: str | Sequence[str]) -> int | list[int]:
        """Token(s) -> id(s); unknown tokens -> ``unk_token``'s id."""
        if isinstance(tokens, str):
            return self._token_to_id(tokens)
        return [self._token_to_id(t) for t in tokens]

    def convert_ids_to_tokens(self, ids: int | Sequence[int]) -> str | list[str]:
        """Id(s) -> token(s); unknown ids (e.g. -100) -> ``unk_token``."""
        if isinstance(ids, (int, np.integer)):
            return self._id_to_token(int(ids))
        return [self._id_to_token(int(i)) for i in ids]

    def _token_to_id(self, token: str) -> int:
        if token in self._added_encoder:
            return self._added_encoder[token]
        if token in self.encoder:
            return self.encoder[token]
        unk = self.encoder.get(self.unk_token, self._added_encoder.get(self.unk_token))
        if unk is None:
            raise ValueError(f"token {token!r} is not in the vocabulary and unk_token={self.unk_token!r} has no id")
        return unk

    def _id_to_token(self, index: int) -> str:
        if index in self.decoder:
            return self.decoder[index]
        if index in self._added:
            return self._added[index].content
        return self.unk_token

    def _maybe_id(self, token: str | None) -> int | None:
        return None if token is None else self._token_to_id(token)

    @property
    def pad_token_id(self) -> int | None:
        """Id of the CTC blank (pad) token."""
        return self._maybe_id(self.pad_token)

    @property
    def unk_token_id(self) -> int | None:
        return self._maybe_id(self.unk_token)

    @property
    def word_delimiter_token_id(self) -> int | None:
        return self._maybe_id(self.word_delimiter_token)

    # ------------------------------------------------------------------ decoding
    def decode(
        self,
        ids,
        skip_special_tokens: bool = False,
        group_tokens: bool = True,
        spaces_between_special_tokens: bool = False,
        clean_up_tokenization_spaces: bool | None = None,
    ) -> str:
        """CTC ids ``[T]`` (list or numpy/jax array) -> text. One int is decoded as ``[int]``."""
        ids = _as_ids(ids, "ids")
        tokens = [self._id_to_token(int(i)) for i in ids]
        if skip_special_tokens:
            special = set(self.all_special_tokens)
            tokens = [t for t in tokens if t not in special or t == self.word_delimiter_token]
        if not tokens:
            return ""
        if group_tokens:
            tokens = [t for t, _ in groupby(tokens)]
        chars = [
            self.replace_word_delimiter_char if t == self.word_delimiter_token else t
            for t in tokens
            if t != self.pad_token
        ]
        text = (" " if spaces_between_special_tokens else "").join(chars).strip()
        if self.do_lower_case:
            text = text.lower()
        if self.clean_up_tokenization_spaces if clean_up_tokenization_spaces is None else clean_up_tokenization_spaces:
            text = _clean_up_tokenization(text)
        return text

    def batch_decode(self, sequences, **kwargs) -> list[str]:
        """Ids ``[B, T]`` (array or list of lists, ragged allowed) -> ``B`` texts. kwargs as :meth:`decode`."""
        if isinstance(sequences, (list, tuple)):
            return [self.decode(s, **kwargs) for s in sequences]
        arr = np.asarray(sequences)
        if arr.ndim != 2:
            raise ValueError(f"batch_decode expects ids [B, T], got shape {arr.shape}")
        return [self.decode(s, **kwargs) for s in arr]

    def decode_logits(self, logits, lengths=None, **kwargs) -> list[str]:
        """Greedy decoding of CTC logits ``[B, T, V]``: argmax over ``V``, then :meth:`batch_decode`.

        ``lengths`` (optional, ``[B]`` ints) keeps only the first ``lengths[b]`` frames of
        example ``b`` (frames past the end of a padded utterance).
        """
        logits = np.asarray(logits)
        if logits.ndim != 3:
            raise ValueError(f"decode_logits expects logits [B, T, V], got shape {logits.shape} "
                             "(add a batch axis for one utterance: logits[None])")
        if not np.issubdtype(logits.dtype, np.floating):
            logits = logits.astype(np.float32)  # e.g. bfloat16 from JAX
        pred = np.argmax(logits, axis=-1)
        if lengths is None:
            return self.batch_decode(pred, **kwargs)
        lengths = np.asarray(lengths).reshape(-1)
        if lengths.shape[0] != pred.shape[0]:
            raise ValueError(f"lengths has {lengths.shape[0]} entries for a batch of {pred.shape[0]}")
        return [self.decode(p[: int(n)], **kwargs) for p, n in zip(pred, lengths)]

    # ------------------------------------------------------------------ encoding
    def tokenize(self, text: str) -> list[str]:
        """Text -> tokens (characters; ``" "`` -> word delimiter; added tokens kept whole)."""
        if not isinstance(text, str):
            raise TypeError(f"tokenize expects a string, got {type(text).__name__}")
        if self.split_special_tokens or self._split_re is None:
            return self._tokenize(text)
        chunks = [c for c in self._split_re.split(text) if c]
        for i, chunk in enumerate(chunks):
            if chunk not in self._added_encoder:
                continue
            spec = self._added[self._added_encoder[chunk]]
            left = chunks[i - 1] if i > 0 else None
            right = chunks[i + 1] if i < len(chunks) - 1 else None
            if spec.rstrip and right:
                chunks[i + 1] = right.lstrip()
            if spec.lstrip and left:
                chunks[i - 1] = left.rstrip()
            if spec.single_word:
                if left and left[-1] != " ":
                    chunks[i - 1] += chunk
                    chunks[i] = ""
                elif right and right[0] != " ":
                    chunks[i + 1] = chunk + chunks[i + 1]
                    chunks[i] = ""
        special = set(self.all_special_tokens)
        tokens: list[str] = []
        for chunk in chunks:
            if not chunk:
                continue
            if chunk in self._added_encoder or chunk in special:
                tokens.append(chunk)
            else:
                tokens.extend(self._tokenize(chunk))
        return tokens

    def _tokenize(self, text: str) -> list[str]:
        if self.do_lower_case:
            text = text.upper()
        if self.word_delimiter_token is None:
            raise ValueError("cannot tokenize text: this vocabulary has no word_delimiter_token")
        return list(text.replace(" ", self.word_delimiter_token))

    def encode(self, text: str) -> list[int]:
        """Text -> CTC label ids (no special tokens added, like HF)."""
        return self.convert_tokens_to_ids(self.tokenize(text))

    def __repr__(self) -> str:
        return (f"CTCDecoder(vocab_size={self.vocab_size}, pad_token={self.pad_token!r}, "
                f"word_delimiter_token={self.word_delimiter_token!r}, do_lower_case={self.do_lower_case})")


def _as_ids(ids, name: str) -> np.ndarray:
    if isinstance(ids, (list, tuple)) and len(ids) == 0:
        return np.zeros((0,), np.int64)
    arr = np.asarray(ids)
    if arr.ndim == 0:
        arr = arr.reshape(1)
    if arr.ndim != 1:
        raise ValueError(f"{name} must be a 1-D sequence of token ids [T], got shape {arr.shape} "
                         "(use batch_decode for [B, T])")
    if arr.size and not np.issubdtype(arr.dtype, np.integer):
        raise TypeError(f"{name} must be integer token ids, got dtype {arr.dtype}")
    return arr


def _clean_up_tokenization(text: str) -> str:
    """HF's ``PreTrainedTokenizerBase.clean_up_tokenization``."""
    return (
        text.replace(" .", ".").replace(" ?", "?").replace(" !", "!").replace(" ,", ",").replace(" ' ", "'")
        .replace(" n't", "n't").replace(" 'm", "'m").replace(" 's", "'s").replace(" 've", "'ve")
        .replace(" 're", "'re")
    )
