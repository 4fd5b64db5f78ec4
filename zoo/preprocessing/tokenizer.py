"""A checkpoint's text tokenizer, equal to HF transformers 5.23's fast tokenizer (``AutoTokenizer``).

    tok = Tokenizer.from_pretrained("path/to/checkpoint")    # tokenizer.json + tokenizer_config.json
    batch = tok(["a text", "another one"], padding=True, return_tensors="np")
    batch["input_ids"], batch["attention_mask"]               # int64 [B, L]
    tok.decode(batch["input_ids"][0], skip_special_tokens=True)
    tok.save_pretrained("out/")                                # HF AutoTokenizer loads it back

The pipeline runs in the ``tokenizers`` package (HF's Rust backend, a declared dependency,
imported when a tokenizer is loaded); this module reproduces what ``transformers`` adds on
top of it: the special tokens and added tokens of ``tokenizer_config.json`` (and the legacy
``special_tokens_map.json`` / ``added_tokens.json``), padding / truncation strategies, the
padding side, ``model_input_names`` (whether ``token_type_ids`` are returned), decoding with
``clean_up_tokenization_spaces``.

Like HF 5.23, the tokenizer classes with their own pipeline rebuild it from the vocabulary
of ``tokenizer.json`` (the normalizer, pre-tokenizer, decoder and, for three of them, the
post-processor of the file are replaced by the class's): ``LlamaTokenizer`` (IDEFICS),
``RobertaTokenizer`` (Data2VecText), ``BigBirdTokenizer``, ``CLIPTokenizer`` (GroupViT), with or
without the ``Fast`` suffix. ``PreTrainedTokenizerFast`` / ``TokenizersBackend`` use the file as
it is; so does a ``LlamaTokenizer`` whose file is byte-level (HF's rule). Any other class is
loaded as ``TokenizersBackend`` with a warning (HF would run that class's own code).

Deliberate differences from ``AutoTokenizer``: without ``tokenizer_config.json`` (or without a
``tokenizer_class`` in it) the file is used as it is (HF would pick the class from
``config.json``'s ``model_type``); pairs of sequences, ``stride`` / overflowing tokens,
offsets and chat templates are not implemented (rejected, never ignored).
"""

from __future__ import annotations

import copy
import json
import os
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from zoo.preprocessing.config_file import write_atomically

__all__ = ["Tokenizer", "TOKENIZER_FILE", "TOKENIZER_CONFIG_FILE", "SPECIAL_TOKENS_MAP_FILE", "ADDED_TOKENS_FILE"]

TOKENIZER_FILE = "tokenizer.json"
TOKENIZER_CONFIG_FILE = "tokenizer_config.json"
SPECIAL_TOKENS_MAP_FILE = "special_tokens_map.json"
ADDED_TOKENS_FILE = "added_tokens.json"

SPECIAL_TOKENS_ATTRIBUTES = ("bos_token", "eos_token", "unk_token", "sep_token", "pad_token", "cls_token",
                             "mask_token")
VERY_LARGE_INTEGER = int(1e30)  # HF: model_max_length when the config has none
LARGE_INTEGER = int(1e20)
_GENERIC = ("TokenizersBackend", "PreTrainedTokenizerFast", "PreTrainedTokenizer", "PythonBackend")

# The rebuilt classes (HF 5.23 models/<m>/tokenization_<m>.py): model type, special-token
# defaults of __init__, class padding side.
_CLASSES: dict[str, dict[str, Any]] = {
    "LlamaTokenizer": dict(model="BPE", padding_side="left",
                           tokens=dict(unk_token="<unk>", bos_token="<s>", eos_token="</s>")),
    "RobertaTokenizer": dict(model="BPE", padding_side="right",
                             tokens=dict(bos_token="<s>", eos_token="</s>", sep_token="</s>", cls_token="<s>",
                                         unk_token="<unk>", pad_token="<pad>", mask_token="<mask>")),
    "BigBirdTokenizer": dict(model="Unigram", padding_side="right",
                             tokens=dict(unk_token="<unk>", bos_token="<s>", eos_token="</s>", pad_token="<pad>",
                                         sep_token="[SEP]", mask_token="[MASK]", cls_token="[CLS]")),
    "CLIPTokenizer": dict(model="BPE", padding_side="right",
                          tokens=dict(unk_token="<|endoftext|>", bos_token="<|startoftext|>",
                                      eos_token="<|endoftext|>", pad_token="<|endoftext|>")),
}
_PADDING = {"longest": "longest", "max_length": "max_length", "do_not_pad": None}
_TRUNCATION = ("longest_first", "only_first", "only_second")


def _tk():
    """The ``tokenizers`` package (imported when a tokenizer is built)."""
    try:
        import tokenizers
    except ImportError as e:  # pragma: no cover - a declared dependency
        raise ImportError("Tokenizer needs the `tokenizers` package: pip install tokenizers") from e
    return tokenizers


def _read_json(path: Path, what: str):
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"{path}: not valid JSON ({what}): {e}") from None


def _added_token(value):
    """A ``tokenizers.AddedToken`` from a tokenizer_config value (str, or dict with ``__type``)."""
    AddedToken = _tk().AddedToken
    if isinstance(value, Mapping):
        fields = {k: v for k, v in value.items() if k != "__type"}
        if "content" not in fields:
            raise ValueError(f"an added token needs a 'content', got {dict(value)!r}")
        return AddedToken(**fields)
    return value


def _is_added(value) -> bool:
    return isinstance(value, _tk().AddedToken)


class Tokenizer:
    """HF's fast tokenizer of a checkpoint (see the module docstring). Build it with
    :meth:`from_pretrained`; calling it is HF's ``tokenizer(...)``."""

    def __init__(self, backend, *, config: Mapping[str, Any], tokenizer_class: str,
                 special_tokens: Mapping[str, Any], extra_special_tokens: Sequence[Any] = (),
                 padding_side: str = "right", truncation_side: str = "right",
                 strip_end_of_word_suffix: str | None = None, init_kwargs: Mapping[str, Any] | None = None):
        """backend: a ``tokenizers.Tokenizer`` with the final pipeline and added tokens;
        config: the ``tokenizer_config.json`` dict (written back by :meth:`save_pretrained`);
        special_tokens: attribute name (``bos_token``, ..., model-specific ``image_token``) ->
        token (str / AddedToken / None); strip_end_of_word_suffix: CLIP's decode fix-up;
        init_kwargs: HF's ``tokenizer.init_kwargs`` (the config plus the padding / truncation
        defaults of ``tokenizer.json``; processors take their text defaults from it)."""
        self._backend = backend
        self._config = dict(config)
        self.tokenizer_class = tokenizer_class
        self._special = {k: v for k, v in special_tokens.items()}
        self._extra = list(extra_special_tokens)
        self.padding_side, self.truncation_side = padding_side, truncation_side
        mml = self._config.get("model_max_length", self._config.get("max_len"))
        self.model_max_length = int(mml) if mml is not None else VERY_LARGE_INTEGER
        self.model_input_names = list(self._config.get("model_input_names") or ["input_ids", "attention_mask"])
        self.clean_up_tokenization_spaces = bool(self._config.get("clean_up_tokenization_spaces", False))
        self._cleanup_bpe = bool(self._config.get(
            "clean_up_tokenization_spaces_for_bpe_even_though_it_will_corrupt_output", False))
        self.split_special_tokens = bool(self._config.get("split_special_tokens", False))
        self._strip_suffix = strip_end_of_word_suffix
        self.init_kwargs = dict(self._config if init_kwargs is None else init_kwargs)
        backend.no_padding()
        backend.no_truncation()
        backend.encode_special_tokens = self.split_special_tokens

    @property
    def padding_side(self) -> str:
        """``"left"`` or ``"right"``: where :meth:`__call__` pads by default (settable)."""
        return self._padding_side

    @padding_side.setter
    def padding_side(self, side: str) -> None:
        if side not in ("left", "right"):
            raise ValueError(f"padding_side must be 'left' or 'right', got {side!r}")
        self._padding_side = side

    @property
    def truncation_side(self) -> str:
        """``"left"`` or ``"right"``: which end truncation cuts (settable)."""
        return self._truncation_side

    @truncation_side.setter
    def truncation_side(self, side: str) -> None:
        if side not in ("left", "right"):
            raise ValueError(f"truncation_side must be 'left' or 'right', got {side!r}")
        self._truncation_side = side

    # ------------------------------------------------------------------ loading
    @classmethod
    def from_pretrained(cls, path: str | os.PathLike) -> "Tokenizer":
        """Load ``<path>/tokenizer.json`` with ``tokenizer_config.json`` (optional, like
        ``special_tokens_map.json`` and ``added_tokens.json``); ``path`` may also be the
        ``tokenizer.json`` file. FileNotFoundError / ValueError name the missing or bad file."""
        path = Path(path)
        directory = path.parent if path.is_file() else path
        tok_file = path if path.is_file() else path / TOKENIZER_FILE
        if not directory.is_dir():
            raise FileNotFoundError(f"{path}: no such tokenizer directory")
        if not tok_file.is_file():
            raise FileNotFoundError(f"{directory}: no {TOKENIZER_FILE} (the zoo reads HF fast tokenizers only)")
        try:
            text = tok_file.read_text(encoding="utf-8")
            file_json = json.loads(text)
            if not isinstance(file_json, dict) or not isinstance(file_json.get("model"), dict):
                raise ValueError("no 'model' object")
            backend = _tk().Tokenizer.from_str(text)
        except Exception as e:
            raise ValueError(f"{tok_file}: not a readable tokenizers file ({type(e).__name__}: "
                             f"{str(e).strip()[:200]})") from None
        config = {}
        if (directory / TOKENIZER_CONFIG_FILE).is_file():
            config = _read_json(directory / TOKENIZER_CONFIG_FILE, "tokenizer config")
            if not isinstance(config, dict):
                raise ValueError(f"{directory / TOKENIZER_CONFIG_FILE}: expected a JSON object")
        legacy_map = None
        if (directory / SPECIAL_TOKENS_MAP_FILE).is_file():
            legacy_map = _read_json(directory / SPECIAL_TOKENS_MAP_FILE, "special tokens map")
            if not isinstance(legacy_map, dict):
                raise ValueError(f"{directory / SPECIAL_TOKENS_MAP_FILE}: expected a JSON object")
        added_file = None
        if (directory / ADDED_TOKENS_FILE).is_file():
            added_file = _read_json(directory / ADDED_TOKENS_FILE, "added tokens")
            if not isinstance(added_file, dict) or not all(isinstance(v, int) for v in added_file.values()):
                raise ValueError(f"{directory / ADDED_TOKENS_FILE}: expected a JSON object token -> id")
        try:
            return _build(tok_file, file_json, backend, config, legacy_map, added_file, text)
        except ValueError as e:
            raise ValueError(f"{directory}: {e}") from None
        except Exception as e:  # a Rust error from an inconsistent file
            raise ValueError(f"{directory}: cannot build the tokenizer ({type(e).__name__}: "
                             f"{str(e).strip()[:200]})") from None

    # ------------------------------------------------------------------ special tokens
    def _token(self, name: str) -> str | None:
        value = self._special.get(name)
        return None if value is None else str(value)

    def _token_id(self, name: str) -> int | None:
        token = self._token(name)
        return None if token is None else self.convert_tokens_to_ids(token)

    bos_token = property(lambda self: self._token("bos_token"))
    eos_token = property(lambda self: self._token("eos_token"))
    unk_token = property(lambda self: self._token("unk_token"))
    sep_token = property(lambda self: self._token("sep_token"))
    pad_token = property(lambda self: self._token("pad_token"))
    cls_token = property(lambda self: self._token("cls_token"))
    mask_token = property(lambda self: self._token("mask_token"))
    bos_token_id = property(lambda self: self._token_id("bos_token"))
    eos_token_id = property(lambda self: self._token_id("eos_token"))
    unk_token_id = property(lambda self: self._token_id("unk_token"))
    sep_token_id = property(lambda self: self._token_id("sep_token"))
    pad_token_id = property(lambda self: self._token_id("pad_token"))
    cls_token_id = property(lambda self: self._token_id("cls_token"))
    mask_token_id = property(lambda self: self._token_id("mask_token"))

    def special_token(self, name: str) -> str | None:
        """A named special token, also a model-specific one (``"image_token"``); None if unset."""
        return self._token(name)

    def has_special_token(self, name: str) -> bool:
        """Whether ``name`` is a special-token attribute (HF ``hasattr(tokenizer, name)``)."""
        return name in self._special

    @property
    def special_tokens_map(self) -> dict[str, str]:
        """Named special tokens (HF 5.23: without the extra ones), attribute -> token."""
        return {k: str(v) for k, v in self._special.items() if v is not None}

    @property
    def extra_special_tokens(self) -> list[str]:
        return [str(t) for t in self._extra]

    @property
    def all_special_tokens(self) -> list[str]:
        out: list[str] = []
        for token in [*(v for v in self._special.values() if v is not None), *self._extra]:
            if str(token) not in out:
                out.append(str(token))
        return out

    @property
    def all_special_ids(self) -> list[int]:
        return self.convert_tokens_to_ids(self.all_special_tokens)

    # ------------------------------------------------------------------ vocabulary
    def __len__(self) -> int:
        return self._backend.get_vocab_size(with_added_tokens=True)

    @property
    def vocab_size(self) -> int:
        """Size of the base vocabulary (without added tokens)."""
        return self._backend.get_vocab_size(with_added_tokens=False)

    def get_vocab(self) -> dict[str, int]:
        return self._backend.get_vocab(with_added_tokens=True)

    @property
    def added_tokens_decoder(self) -> dict[int, Any]:
        return self._backend.get_added_tokens_decoder()

    @property
    def backend_tokenizer(self):
        """The ``tokenizers.Tokenizer`` that runs the pipeline."""
        return self._backend

    def convert_tokens_to_ids(self, tokens: str | Sequence[str]) -> int | None | list[int | None]:
        """Token(s) -> id(s); an unknown token gives ``unk_token_id`` (None without one), as in HF."""
        if isinstance(tokens, str):
            index = self._backend.token_to_id(tokens)
            return index if index is not None else self.unk_token_id
        return [self.convert_tokens_to_ids(t) for t in tokens]

    def convert_ids_to_tokens(self, ids, skip_special_tokens: bool = False):
        """Id(s) -> token(s) (None for an id outside the vocabulary)."""
        if isinstance(ids, (int, np.integer)):
            return self._backend.id_to_token(int(ids))
        skip = set(self.all_special_ids) if skip_special_tokens else set()
        return [self._backend.id_to_token(int(i)) for i in _int_list(ids) if int(i) not in skip]

    # ------------------------------------------------------------------ encoding
    def __call__(self, text: str | Sequence[str], *, padding: bool | str = False,
                 truncation: bool | str | None = None, max_length: int | None = None,
                 add_special_tokens: bool = True, padding_side: str | None = None,
                 pad_to_multiple_of: int | None = None, return_attention_mask: bool | None = None,
                 return_token_type_ids: bool | None = None, return_tensors: str | None = None) -> dict:
        """Encode one text or a batch (HF ``tokenizer(text, ...)``).

        padding: False / ``"do_not_pad"``, True / ``"longest"``, ``"max_length"`` (to
        ``max_length``, else ``model_max_length``). truncation: None (on when only
        ``max_length`` is given, as in HF), False, True / ``"longest_first"``. padding_side:
        ``"left"`` / ``"right"`` (default: the tokenizer's). return_tensors: None (lists) or
        ``"np"`` (int64 ``[B, L]``; one text gives ``[1, L]``).

        Returns a dict with ``input_ids``, ``token_type_ids`` (when asked, or when
        ``model_input_names`` has them) and ``attention_mask`` (unless turned off).
        """
        batched = isinstance(text, (list, tuple))
        texts = list(text) if batched else [text]
        for i, t in enumerate(texts):
            if not isinstance(t, str):
                where = f"text[{i}]" if batched else "text"
                raise TypeError(f"{where} is a {type(t).__name__}; expected a string (pairs and pre-tokenized "
                                "input are not supported)")
        if not texts:
            raise ValueError("text is an empty list; give at least one string")
        if return_tensors not in (None, "np"):
            raise ValueError(f"return_tensors={return_tensors!r}: the zoo's Tokenizer returns lists (None) or numpy "
                             "arrays ('np')")
        if padding_side is not None and padding_side not in ("left", "right"):
            raise ValueError(f"padding_side must be 'left' or 'right', got {padding_side!r}")
        pad, trunc, max_length = self._strategies(padding, truncation, max_length, pad_to_multiple_of)
        backend = self._backend
        if trunc is None:
            backend.no_truncation()
        else:
            backend.enable_truncation(max_length, stride=0, strategy=trunc, direction=self.truncation_side)
        if pad is None:
            backend.no_padding()
        else:
            backend.enable_padding(direction=padding_side or self.padding_side, pad_id=self.pad_token_id,
                                   pad_type_id=0, pad_token=self.pad_token,
                                   length=max_length if pad == "max_length" else None,
                                   pad_to_multiple_of=pad_to_multiple_of)
        try:
            encodings = backend.encode_batch(texts, add_special_tokens=add_special_tokens)
        except Exception as e:
            raise ValueError(f"cannot encode the text: {str(e).strip()[:300]}") from None
        finally:
            backend.no_padding()
            backend.no_truncation()
        if return_token_type_ids is None:
            return_token_type_ids = "token_type_ids" in self.model_input_names
        if return_attention_mask is None:
            return_attention_mask = "attention_mask" in self.model_input_names
        out = {"input_ids": [e.ids for e in encodings]}
        if return_token_type_ids:
            out["token_type_ids"] = [e.type_ids for e in encodings]
        if return_attention_mask:
            out["attention_mask"] = [e.attention_mask for e in encodings]
        if return_tensors == "np":
            lengths = {len(ids) for ids in out["input_ids"]}
            if len(lengths) > 1:
                raise ValueError(f"the encoded texts have different lengths {sorted(lengths)} and cannot be stacked "
                                 "into an array; pass padding=True (or 'max_length') with return_tensors='np'")
            return {k: np.asarray(v, dtype=np.int64).reshape(len(texts), -1) for k, v in out.items()}
        if not batched:
            return {k: v[0] for k, v in out.items()}
        return out

    def _strategies(self, padding, truncation, max_length, pad_to_multiple_of):
        """HF ``_get_padding_truncation_strategies`` -> (padding, truncation, max_length)."""
        if max_length is not None and (not isinstance(max_length, (int, np.integer)) or isinstance(max_length, bool)
                                       or max_length < 0):
            raise ValueError(f"max_length must be a non-negative integer or None, got {max_length!r}")
        if max_length is not None and padding is False and truncation is None:
            truncation = "longest_first"
        if padding is True:
            pad = "longest"
        elif padding is False or padding is None:
            pad = None
        elif isinstance(padding, str) and padding in _PADDING:
            pad = _PADDING[padding]
        else:
            raise ValueError(f"padding={padding!r}: expected True/'longest', 'max_length', False/'do_not_pad'")
        if truncation is True:
            trunc = "longest_first"
        elif truncation is False or truncation is None or truncation == "do_not_truncate":
            trunc = None
        elif isinstance(truncation, str) and truncation in _TRUNCATION:
            trunc = truncation
        else:
            raise ValueError(f"truncation={truncation!r}: expected True/'longest_first', 'only_first', "
                             "'only_second', False/'do_not_truncate'")
        if max_length is None:
            if pad == "max_length":
                if self.model_max_length > LARGE_INTEGER:
                    pad = None
                else:
                    max_length = self.model_max_length
            if trunc is not None:
                if self.model_max_length > LARGE_INTEGER:
                    trunc = None
                else:
                    max_length = self.model_max_length
        if pad is not None and (self.pad_token is None or self.pad_token_id is None or self.pad_token_id < 0):
            raise ValueError("asking to pad but the tokenizer has no pad_token (set one in tokenizer_config.json)")
        if pad_to_multiple_of is not None and (not isinstance(pad_to_multiple_of, int) or pad_to_multiple_of < 1):
            raise ValueError(f"pad_to_multiple_of must be a positive integer, got {pad_to_multiple_of!r}")
        if trunc is not None and pad is not None and pad_to_multiple_of is not None and max_length is not None \
                and max_length % pad_to_multiple_of:
            raise ValueError(f"truncation length ({max_length}) is not a multiple of pad_to_multiple_of "
                             f"({pad_to_multiple_of})")
        return pad, trunc, max_length

    def encode(self, text: str, *, add_special_tokens: bool = True, padding: bool | str = False,
               truncation: bool | str | None = None, max_length: int | None = None,
               padding_side: str | None = None) -> list[int]:
        """The token ids of one text (HF ``tokenizer.encode``)."""
        if not isinstance(text, str):
            raise TypeError(f"text is a {type(text).__name__}; encode takes one string")
        return self(text, add_special_tokens=add_special_tokens, padding=padding, truncation=truncation,
                    max_length=max_length, padding_side=padding_side, return_attention_mask=False,
                    return_token_type_ids=False)["input_ids"]

    def tokenize(self, text: str, *, add_special_tokens: bool = False) -> list[str]:
        """The token strings of one text."""
        return self.convert_ids_to_tokens(self.encode(text, add_special_tokens=add_special_tokens))

    # ------------------------------------------------------------------ decoding
    def decode(self, token_ids, skip_special_tokens: bool = False,
               clean_up_tokenization_spaces: bool | None = None) -> str | list[str]:
        """Ids -> text (HF ``decode``): an int, a list / 1-D array of ids, or a batch (nested list
        / 2-D array, giving a list of texts). clean_up_tokenization_spaces: None -> the
        tokenizer's default (``tokenizer_config.json``); HF ignores it for BPE models."""
        if isinstance(token_ids, Mapping):
            token_ids = token_ids["input_ids"]
        if hasattr(token_ids, "tolist") and not isinstance(token_ids, (list, tuple)):
            token_ids = np.asarray(token_ids).tolist()
        if isinstance(token_ids, (list, tuple)) and token_ids and isinstance(token_ids[0], (list, tuple)):
            return [self._decode(seq, skip_special_tokens, clean_up_tokenization_spaces) for seq in token_ids]
        return self._decode(token_ids, skip_special_tokens, clean_up_tokenization_spaces)

    def batch_decode(self, sequences, skip_special_tokens: bool = False,
                     clean_up_tokenization_spaces: bool | None = None) -> list[str]:
        """A batch of id sequences -> a list of texts."""
        out = self.decode(sequences, skip_special_tokens, clean_up_tokenization_spaces)
        return [out] if isinstance(out, str) else out

    def _decode(self, ids, skip_special_tokens, clean_up) -> str:
        ids = _int_list(ids)
        text = self._backend.decode(ids, skip_special_tokens=skip_special_tokens)
        if self._strip_suffix:
            text = text.replace(self._strip_suffix, " ").strip()
        clean_up = self.clean_up_tokenization_spaces if clean_up is None else clean_up
        if clean_up and (type(self._backend.model).__name__ != "BPE" or self._cleanup_bpe):
            text = _clean_up_tokenization(text)
        return text

    def convert_tokens_to_string(self, tokens: Sequence[str]) -> str:
        decoder = self._backend.decoder
        return decoder.decode(list(tokens)) if decoder is not None else " ".join(tokens)

    # ------------------------------------------------------------------ saving
    def to_config(self) -> dict[str, Any]:
        """The ``tokenizer_config.json`` dict :meth:`save_pretrained` writes (HF 5.23's layout)."""
        config = {k: v for k, v in self._config.items()
                  if k not in ("added_tokens_decoder", "additional_special_tokens", "tokenizer_file",
                               "name_or_path", "special_tokens_map_file", "vocab_file", "merges_file")}
        for name, value in self._special.items():
            if value is None:
                config.pop(name, None)
            else:
                config[name] = str(value)
        if self._extra:
            config["extra_special_tokens"] = self.extra_special_tokens
        else:
            config.pop("extra_special_tokens", None)
        config.update(model_max_length=self.model_max_length, padding_side=self.padding_side,
                      truncation_side=self.truncation_side,
                      clean_up_tokenization_spaces=self.clean_up_tokenization_spaces,
                      tokenizer_class=self.tokenizer_class)
        if self.model_input_names != ["input_ids", "attention_mask"] or "model_input_names" in config:
            config["model_input_names"] = list(self.model_input_names)
        return dict(sorted(config.items()))

    def save_pretrained(self, directory: str | os.PathLike) -> tuple[str, str]:
        """Write ``tokenizer.json`` and ``tokenizer_config.json`` into ``directory`` (created;
        each file written atomically); returns their paths. HF ``AutoTokenizer`` and
        :meth:`from_pretrained` load the same tokenizer back."""
        directory = Path(directory)
        if directory.exists() and not directory.is_dir():
            raise NotADirectoryError(f"{directory}: exists and is not a directory")
        directory.mkdir(parents=True, exist_ok=True)
        state = self._backend.to_str()

        def write_text(text):
            def write(tmp):
                with open(tmp, "w", encoding="utf-8") as f:
                    f.write(text)
            return write

        config_text = json.dumps(self.to_config(), indent=2, sort_keys=True, ensure_ascii=False) + "\n"
        tok = write_atomically(directory / TOKENIZER_FILE, write_text(state))
        cfg = write_atomically(directory / TOKENIZER_CONFIG_FILE, write_text(config_text))
        return tok, cfg

    def __repr__(self) -> str:
        return (f"Tokenizer(class={self.tokenizer_class!r}, vocab={len(self)}, padding_side={self.padding_side!r}, "
                f"special_tokens={self.special_tokens_map})")


# ====================================================================== helpers
def _int_list(ids) -> list[int]:
    if isinstance(ids, (int, np.integer)) and not isinstance(ids, bool):
        return [int(ids)]
    if hasattr(ids, "tolist") and not isinstance(ids, (list, tuple)):
        ids = np.asarray(ids).tolist()
        if isinstance(ids, int):
            return [ids]
    out = []
    for i in ids:
        if isinstance(i, bool) or not isinstance(i, (int, np.integer)):
            raise TypeError(f"token ids must be integers, got {i!r}")
        out.append(int(i))
    return out


def _clean_up_tokenization(text: str) -> str:
    """HF ``clean_up_tokenization``."""
    for a, b in ((" .", "."), (" ?", "?"), (" !", "!"), (" ,", ","), (" ' ", "'"), (" n't", "n't"),
                 (" 'm", "'m"), (" 's", "'s"), (" 've", "'ve"), (" 're", "'re")):
        text = text.replace(a, b)
    return text


def _resolve_class(config: Mapping[str, Any], file_text: str) -> str:
    """The HF class whose loading is reproduced (``TokenizersBackend`` = the file as it is)."""
    name = config.get("tokenizer_class")
    if name is None:
        return "TokenizersBackend"
    if not isinstance(name, str):
        raise ValueError(f"tokenizer_config.json: tokenizer_class must be a string, got {name!r}")
    base = name.removesuffix("Fast")
    if base == "LlamaTokenizer" and '"ByteLevel"' in file_text:
        return "TokenizersBackend"  # HF: a byte-level file declared as Llama loads as TokenizersBackend
    if base in _CLASSES or name in _GENERIC or base in _GENERIC:
        return base if base in _CLASSES else "TokenizersBackend"
    warnings.warn(f"tokenizer_class {name!r} is not one the zoo reproduces ({sorted(_CLASSES)} or "
                  "PreTrainedTokenizerFast); using tokenizer.json as it is (HF's class may change its pipeline)",
                  UserWarning, stacklevel=4)
    return "TokenizersBackend"


def _init_kwargs(config, legacy_map, added_file, file_json, tok_cls):
    """HF ``_from_pretrained``: special tokens, extra tokens, added_tokens_decoder, init kwargs."""
    kw = copy.deepcopy(dict(config))
    kw.pop("tokenizer_class", None)
    kw.pop("add_bos_token", None)  # HF drops these when a tokenizer.json exists
    kw.pop("add_eos_token", None)
    if "additional_special_tokens" in kw and not kw.get("extra_special_tokens"):
        kw["extra_special_tokens"] = kw.pop("additional_special_tokens")
    model_specific = {k: kw.pop(k) for k in list(kw)
                      if k not in SPECIAL_TOKENS_ATTRIBUTES and k.endswith("_token")
                      and (isinstance(kw[k], str) or (isinstance(kw[k], Mapping) and "content" in kw[k]))}
    if isinstance(kw.get("extra_special_tokens"), Mapping):
        model_specific.update(kw.pop("extra_special_tokens"))
    added: dict[int, Any] = {}
    if "added_tokens_decoder" in kw:
        decoder = kw["added_tokens_decoder"]
        if not isinstance(decoder, Mapping):
            raise ValueError("tokenizer_config.json: added_tokens_decoder must be an object id -> token")
        for idx, token in decoder.items():
            if not isinstance(token, Mapping):
                raise ValueError(f"tokenizer_config.json: added_tokens_decoder[{idx!r}] must be an object")
            added[int(idx)] = _added_token(token)
    else:
        if legacy_map is not None:
            for key, value in legacy_map.items():
                if isinstance(value, Mapping) and key != "extra_special_tokens":
                    value = _tk().AddedToken(**{k: v for k, v in value.items() if k not in ("special", "__type")},
                                             special=True)
                elif key == "extra_special_tokens" and isinstance(value, list):
                    existing = list(kw.get("extra_special_tokens") or [])
                    for tok in value:
                        tok = _tk().AddedToken(**tok, special=True) if isinstance(tok, Mapping) else tok
                        if str(tok) not in [str(t) for t in existing]:
                            existing.append(tok)
                    value = existing
                kw[key] = value
            if isinstance(kw.get("extra_special_tokens"), Mapping):
                model_specific.update(kw.pop("extra_special_tokens"))
        if added_file is not None:
            specials = {str(kw[k]) for k in SPECIAL_TOKENS_ATTRIBUTES if kw.get(k)}
            specials.update(str(t) for t in (kw.get("extra_special_tokens") or []))
            for token, index in added_file.items():
                special = token in specials
                added[index] = _tk().AddedToken(token, rstrip=False, lstrip=False, normalized=not special,
                                                special=special)
        for entry in file_json.get("added_tokens") or []:
            entry = dict(entry)
            index = int(entry.pop("id"))
            added[index] = _tk().AddedToken(**entry)
    if "additional_special_tokens" in kw and "extra_special_tokens" not in kw:
        kw["extra_special_tokens"] = kw.pop("additional_special_tokens")
    by_content = {str(t): t for t in added.values()}
    for key in SPECIAL_TOKENS_ATTRIBUTES:
        if kw.get(key) is not None:
            kw[key] = _added_token(kw[key])
            if by_content:
                kw[key] = by_content.get(str(kw[key]), kw[key])
    special = {}
    defaults = _CLASSES.get(tok_cls, {}).get("tokens", {})
    for key in SPECIAL_TOKENS_ATTRIBUTES:
        value = kw[key] if key in kw else defaults.get(key)
        if value is not None and not isinstance(value, str) and not _is_added(value):
            raise ValueError(f"tokenizer_config.json: {key} must be a string, got {value!r}")
        special[key] = value
    for key, value in model_specific.items():
        special[key] = _added_token(value)
    extra = kw.get("extra_special_tokens") or []
    if not isinstance(extra, (list, tuple)):
        raise ValueError(f"tokenizer_config.json: extra_special_tokens must be a list, got {extra!r}")
    extra = [_added_token(t) for t in extra]
    return kw, special, extra, added


def _vocab_and_merges(file_json, model: str, where: Path):
    spec = file_json["model"]
    kind = spec.get("type")
    if kind != model:
        raise ValueError(f"{where}: the tokenizer class needs a {model} model but {TOKENIZER_FILE} has "
                         f"{kind or 'an untyped'} model")
    vocab = spec.get("vocab")
    if model == "Unigram":
        return [tuple(item) for item in vocab], None
    if isinstance(vocab, list):
        vocab = {token[0] if isinstance(token, list) else token: i for i, token in enumerate(vocab)}
    merges = [tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in spec.get("merges") or []]
    return vocab, merges


def _rebuild(tok_cls: str, file_json, kw, special, where: Path):
    """The backend a rebuilding HF class makes (model, normalizer, pre-tokenizer, decoder)."""
    tk = _tk()
    from tokenizers import Regex, decoders, normalizers, pre_tokenizers
    from tokenizers.models import BPE, Unigram

    vocab, merges = _vocab_and_merges(file_json, _CLASSES[tok_cls]["model"], where)
    if tok_cls == "LlamaTokenizer":
        add_prefix_space = kw.get("add_prefix_space")
        add_prefix_space = True if add_prefix_space is None else add_prefix_space
        legacy = kw.get("legacy", False)
        scheme = ("first" if not legacy else "always") if add_prefix_space else "never"
        backend = tk.Tokenizer(BPE(vocab=vocab, merges=merges, fuse_unk=True, byte_fallback=True, dropout=None))
        backend.normalizer = None
        backend.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme=scheme, split=False)
        seq = [decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse()]
        if add_prefix_space:
            seq.append(decoders.Strip(content=" ", left=1))
        backend.decoder = decoders.Sequence(seq)
    elif tok_cls == "RobertaTokenizer":
        backend = tk.Tokenizer(BPE(vocab=vocab, merges=merges, dropout=None, continuing_subword_prefix="",
                                   end_of_word_suffix="", fuse_unk=False))
        backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=bool(kw.get("add_prefix_space", False)))
        backend.decoder = decoders.ByteLevel()
    elif tok_cls == "BigBirdTokenizer":
        unk = (str(special["unk_token"]), 0.0)
        unk_id = vocab.index(unk) if unk in vocab else 100
        backend = tk.Tokenizer(Unigram(vocab, unk_id=unk_id, byte_fallback=False))
        backend.normalizer = normalizers.Sequence([normalizers.Strip(left=False, right=False),
                                                   normalizers.Replace(Regex(r" {2,}"), "▁")])
        scheme = "always" if kw.get("add_prefix_space", True) else "never"
        backend.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme=scheme, split=True)
        backend.decoder = decoders.Metaspace(replacement="▁", prepend_scheme=scheme, split=True)
    else:  # CLIPTokenizer
        backend = tk.Tokenizer(BPE(vocab=vocab, merges=merges, dropout=None, continuing_subword_prefix="",
                                   end_of_word_suffix="</w>", fuse_unk=False, unk_token=str(special["unk_token"])))
        backend.normalizer = normalizers.Sequence([normalizers.NFC(), normalizers.Replace(Regex(r"\s+"), " "),
                                                   normalizers.Lowercase()])
        backend.pre_tokenizer = pre_tokenizers.Sequence([
            pre_tokenizers.Split(Regex(r"""<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|"""
                                       r"""[\p{N}]|[^\s\p{L}\p{N}]+"""), behavior="removed", invert=True),
            pre_tokenizers.ByteLevel(add_prefix_space=False),
        ])
        backend.decoder = decoders.ByteLevel()
    return backend


def _build(tok_file: Path, file_json, file_backend, config, legacy_map, added_file, file_text) -> Tokenizer:
    """HF 5.23 ``AutoTokenizer.from_pretrained`` for the resolved class, on our side."""
    from tokenizers import processors

    tok_cls = _resolve_class(config, file_text)
    kw, special, extra, added = _init_kwargs(config, legacy_map, added_file, file_json, tok_cls)
    if tok_cls == "BigBirdTokenizer":  # its __init__ wraps string tokens (the mask strips on the left)
        for name in SPECIAL_TOKENS_ATTRIBUTES:
            if isinstance(special[name], str):
                special[name] = _tk().AddedToken(special[name], lstrip=name == "mask_token", rstrip=False,
                                                 normalized=False, special=True)
    json_padding, json_truncation = file_backend.padding, file_backend.truncation
    if tok_cls in _CLASSES:
        backend = _rebuild(tok_cls, file_json, kw, special, tok_file)
        if file_backend.post_processor is not None:
            backend.post_processor = file_backend.post_processor
    else:
        backend = file_backend
    if backend.post_processor is None:  # HF update_post_processor with add_bos/eos off
        backend.post_processor = processors.TemplateProcessing(single="$A:0", pair="$A:0 $B:1", special_tokens=[])

    # padding / truncation stored in tokenizer.json set the defaults (HF TokenizersBackend.__init__)
    if json_truncation is not None:
        kw.setdefault("max_length", json_truncation["max_length"])
        kw.setdefault("truncation_side", json_truncation["direction"])
        kw.setdefault("stride", json_truncation["stride"])
    if json_padding is not None:
        if special.get("pad_token") is None and "pad_token" not in kw:
            special["pad_token"] = json_padding["pad_token"]
        kw.setdefault("padding_side", json_padding["direction"])
        kw.setdefault("max_length", json_padding["length"])
        kw.setdefault("pad_to_multiple_of", json_padding["pad_to_multiple_of"])
    padding_side = kw.get("padding_side") or _CLASSES.get(tok_cls, {}).get("padding_side", "right")
    truncation_side = kw.get("truncation_side") or "right"

    # added tokens of the config, then the special tokens the backend lacks (HF order)
    AddedToken = _tk().AddedToken
    to_add = [t for _, t in sorted(added.items())]  # HF re-adds them all (existing ones are kept)
    encoder = [t.content for t in backend.get_added_tokens_decoder().values()] + [str(t) for t in to_add]
    for value in [*special.values(), *extra]:
        if value is not None and str(value) not in encoder and value not in to_add:
            to_add.append(value)
    if to_add:
        named = [str(v) for v in special.values() if v is not None]
        tokens = []
        for token in to_add:
            if isinstance(token, str):
                token = AddedToken(token, special=True)
            elif not token.special and str(token) in named:
                token = AddedToken(token.content, single_word=token.single_word, lstrip=token.lstrip,
                                   rstrip=token.rstrip, normalized=token.normalized, special=True)
            tokens.append(token)
        backend.add_tokens(tokens)

    def token_id(name):
        value = special.get(name)
        if value is None:
            return None
        index = backend.token_to_id(str(value))
        return index if index is not None else (backend.token_to_id(str(special["unk_token"]))
                                                if special.get("unk_token") is not None else None)

    strip_suffix = None
    if tok_cls == "RobertaTokenizer":
        backend.post_processor = processors.RobertaProcessing(
            (str(special["sep_token"]), token_id("sep_token")), (str(special["cls_token"]), token_id("cls_token")),
            trim_offsets=bool(kw.get("trim_offsets", True)), add_prefix_space=bool(kw.get("add_prefix_space", False)))
    elif tok_cls == "BigBirdTokenizer":
        cls_t, sep_t = str(special["cls_token"]), str(special["sep_token"])
        backend.post_processor = processors.TemplateProcessing(
            single=f"{cls_t}:0 $A:0 {sep_t}:0", pair=f"{cls_t}:0 $A:0 {sep_t}:0 $B:1 {sep_t}:1",
            special_tokens=[(cls_t, token_id("cls_token")), (sep_t, token_id("sep_token"))])
    elif tok_cls == "CLIPTokenizer":
        backend.post_processor = processors.RobertaProcessing(
            (str(special["eos_token"]), token_id("eos_token")), (str(special["bos_token"]), token_id("bos_token")),
            trim_offsets=False, add_prefix_space=False)
        strip_suffix = "</w>"

    out_class = tok_cls if tok_cls in _CLASSES else (config.get("tokenizer_class") or "TokenizersBackend")
    saved = {k: v for k, v in config.items() if k not in ("padding_side", "truncation_side")}
    return Tokenizer(backend, config=saved, tokenizer_class=out_class, special_tokens=special,
                     extra_special_tokens=extra, padding_side=padding_side, truncation_side=truncation_side,
                     strip_end_of_word_suffix=strip_suffix, init_kwargs=kw)

