"""From a prompt to text: what ``zoo generate`` runs, for every causal-LM head of the zoo.

    generator = TextGenerator.from_pretrained(directory)          # model + tokenizer / processor
    prompts = [Prompt("User: <image> What is in it?", images=["cat.png"])]
    for piece in generator.stream(prompts, Settings(max_new_tokens=20)):
        print(piece.text, end="")                                  # text as tokens are produced
    result = generator.generate(prompts, settings)                 # all at once: texts + stats

The heads: ``IdeficsForVisionText2Text`` (its ``IdeficsProcessor``: ``<image>`` in a prompt
marks where each of its images goes), ``Data2VecTextForCausalLM`` and ``BigBirdForCausalLM``
(the checkpoint's ``tokenizer.json``). Prompts are tokenized as HF's processor / tokenizer
does (special tokens added), batches are padded on the left, and decoding runs
:class:`zoo.generation.DecodeLoop` (one compiled prefill, one compiled step), so greedy
output equals HF ``model.generate(**processor(prompts))`` token for token.

:class:`Settings` follow HF's ``GenerationConfig``: ``Settings.from_checkpoint(directory,
config)`` starts from the checkpoint's ``generation_config.json`` (else HF's defaults and
the model config's eos / pad ids); sampling uses HF's default ``top_k=50`` unless told.
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

IMAGE_PLACEHOLDER = "<image>"
GENERATION_CONFIG_NAME = "generation_config.json"
GENERATING_HEADS = ("IdeficsForVisionText2Text", "Data2VecTextForCausalLM", "BigBirdForCausalLM")


@dataclasses.dataclass(frozen=True)
class Prompt:
    """One prompt: ``text`` with an ``<image>`` placeholder per entry of ``images`` (file
    paths, PIL images or arrays), in order. Text-only models take no images."""

    text: str
    images: tuple = ()

    def __post_init__(self):
        if not isinstance(self.text, str):
            raise ValueError(f"a prompt's text must be a string, got {type(self.text).__name__}")
        # a string in a processor prompt is text: image files travel as paths
        object.__setattr__(self, "images", tuple(Path(i) if isinstance(i, str) else i for i in self.images))
        placeholders = self.text.count(IMAGE_PLACEHOLDER)
        if placeholders != len(self.images) and not (placeholders == 0 and len(self.images) == 1):
            raise ValueError(f"the prompt has {placeholders} {IMAGE_PLACEHOLDER} placeholder(s) for "
                             f"{len(self.images)} image(s): put one {IMAGE_PLACEHOLDER} where each image goes")

    def interleaved(self) -> list:
        """HF's processor form: strings and images in order (a single image without a
        placeholder goes first)."""
        if self.images and IMAGE_PLACEHOLDER not in self.text:
            return [self.images[0]] + ([self.text] if self.text else [])
        parts = self.text.split(IMAGE_PLACEHOLDER)
        items: list = []
        for i, part in enumerate(parts):
            if part:
                items.append(part)
            if i < len(self.images):
                items.append(self.images[i])
        return items


@dataclasses.dataclass(frozen=True)
class Settings:
    """Decoding settings, HF ``GenerationConfig`` names. ``do_sample=False`` decodes greedily."""

    max_new_tokens: int = 32
    do_sample: bool = False
    temperature: float = 1.0
    top_k: int = 50
    top_p: float = 1.0
    repetition_penalty: float = 1.0
    min_new_tokens: int = 0
    num_return_sequences: int = 1
    seed: int = 0
    eos_token_id: tuple[int, ...] | None = None
    pad_token_id: int | None = None

    def __post_init__(self):
        if self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1, got {self.max_new_tokens}")
        if self.do_sample and not self.temperature > 0:
            raise ValueError(f"temperature must be > 0, got {self.temperature}")
        if self.top_k < 0:
            raise ValueError(f"top_k must be >= 0 (0 = off), got {self.top_k}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")
        if not self.repetition_penalty > 0:
            raise ValueError(f"repetition_penalty must be > 0, got {self.repetition_penalty}")
        if self.min_new_tokens < 0 or self.min_new_tokens > self.max_new_tokens:
            raise ValueError(f"min_new_tokens must be in [0, max_new_tokens={self.max_new_tokens}], "
                             f"got {self.min_new_tokens}")
        if self.num_return_sequences < 1:
            raise ValueError(f"num_return_sequences must be >= 1, got {self.num_return_sequences}")
        if not self.do_sample and self.num_return_sequences > 1:
            raise ValueError("num_return_sequences > 1 needs sampling: greedy decoding gives the same sequence "
                             "every time")

    @classmethod
    def from_checkpoint(cls, directory: str | os.PathLike | None, config, **overrides) -> "Settings":
        """The checkpoint's ``generation_config.json`` (HF's defaults for what it leaves out;
        eos / pad ids from the model config when it has none), then ``overrides`` (None
        values ignored)."""
        stored: dict[str, Any] = {}
        path = None if directory is None else Path(directory) / GENERATION_CONFIG_NAME
        if path is not None and path.is_file():
            try:
                stored = json.loads(path.read_text())
            except (OSError, ValueError) as e:
                raise ValueError(f"{path}: not a readable JSON file ({e})") from None
            if not isinstance(stored, dict):
                raise ValueError(f"{path}: expected a JSON object")
        text_config = getattr(config, "text", config)
        values = dict(eos_token_id=stored.get("eos_token_id", getattr(text_config, "eos_token_id", None)),
                      pad_token_id=stored.get("pad_token_id", getattr(text_config, "pad_token_id", None)))
        fields = {f.name for f in dataclasses.fields(cls)}
        for key in ("max_new_tokens", "do_sample", "temperature", "top_k", "top_p", "repetition_penalty",
                    "min_new_tokens", "num_return_sequences"):
            if stored.get(key) is not None:
                values[key] = stored[key]
        values.update({k: v for k, v in overrides.items() if v is not None})
        unknown = set(values) - fields
        if unknown:
            raise ValueError(f"unknown generation settings: {sorted(unknown)}")
        eos = values.get("eos_token_id")
        values["eos_token_id"] = None if eos is None else (
            (int(eos),) if isinstance(eos, (int, np.integer)) else tuple(int(e) for e in eos))
        return cls(**values)


@dataclasses.dataclass
class Piece:
    """Newly decoded text of row ``row`` (prompt ``row // num_return_sequences``)."""

    row: int
    text: str


@dataclasses.dataclass
class Stats:
    """compile_s: compiling the prefill and the step (ahead of time); prefill_s: the first
    call (prompt through the model + the first token); decode_s: the steps after it;
    new_tokens: tokens made per row (the longest row); token_ids: each row's generated ids
    (eos and padding left out)."""

    prompt_tokens: int = 0
    batch: int = 0
    prefill_s: float = 0.0
    decode_s: float = 0.0
    new_tokens: int = 0
    compile_s: float = 0.0
    token_ids: list = dataclasses.field(default_factory=list)

    @property
    def tokens_per_s(self) -> float:
        steps = max(self.new_tokens - 1, 0)  # the first token comes with the prefill
        return steps * self.batch / self.decode_s if self.decode_s > 0 else float("nan")

    def summary(self) -> str:
        rate = "" if not self.new_tokens > 1 else (f", {self.new_tokens - 1} more in {self.decode_s * 1e3:.0f} ms: "
                                                   f"{self.tokens_per_s:.1f} tokens/s")
        return (f"batch {self.batch}, {self.prompt_tokens} prompt tokens; compile {self.compile_s:.2f} s; "
                f"prefill {self.prefill_s * 1e3:.0f} ms (first token){rate}")


@dataclasses.dataclass
class Result:
    texts: list[str]          # one per row: prompt i's r-th sequence at row i * R + r
    token_ids: list[list[int]]
    stats: Stats


class _TextStream:
    """Incremental detokenization of one row: HF's ``TextStreamer`` rule (hold back text
    that ends in an incomplete character or in whitespace until more tokens arrive)."""

    def __init__(self, tokenizer):
        self.tokenizer, self.ids, self.printed = tokenizer, [], ""

    def push(self, token: int) -> str:
        self.ids.append(int(token))
        text = self.tokenizer.decode(self.ids, skip_special_tokens=True)
        ready = text.rstrip() if not text.endswith("\ufffd") else ""
        return self._emit(ready)

    def flush(self) -> str:
        return self._emit(self.tokenizer.decode(self.ids, skip_special_tokens=True))

    def _emit(self, text: str) -> str:
        if not text.startswith(self.printed) or len(text) <= len(self.printed):
            return ""
        new, self.printed = text[len(self.printed):], text
        return new


class TextGenerator:
    """A generating head with its preprocessing: ``tokenizer`` (text heads) or ``processor``
    (IDEFICS, whose ``tokenizer`` decodes)."""

    def __init__(self, model, variables: Mapping, *, tokenizer=None, processor=None,
                 directory: str | os.PathLike | None = None):
        name = type(model).__name__
        if name not in GENERATING_HEADS:
            raise ValueError(f"{name} does not generate text; zoo generate takes {', '.join(GENERATING_HEADS)} "
                             "checkpoints")
        if (tokenizer is None) == (processor is None):
            raise ValueError("give exactly one of tokenizer or processor")
        self.model, self.variables, self.directory = model, variables, directory
        self.processor = processor
        self.tokenizer = tokenizer if tokenizer is not None else processor.tokenizer

    @classmethod
    def from_pretrained(cls, path: str | os.PathLike, architecture: str | None = None, *,
                        attention_kernel: str = "auto") -> "TextGenerator":
        """A zoo or HF checkpoint directory with its tokenizer files (``tokenizer.json`` ...;
        IDEFICS: also its image processor settings)."""
        from zoo import pretrained
        from zoo.preprocessing import IdeficsProcessor, Tokenizer

        directory = pretrained.resolve_checkpoint(path)
        model, variables = pretrained.from_pretrained(directory, architecture, attention_kernel=attention_kernel)
        name = type(model).__name__
        if name not in GENERATING_HEADS:  # before reading tokenizer files: the clearer error
            cls(model, variables, tokenizer=object())
        if name == "IdeficsForVisionText2Text":
            return cls(model, variables, processor=IdeficsProcessor.from_pretrained(directory), directory=directory)
        return cls(model, variables, tokenizer=Tokenizer.from_pretrained(directory), directory=directory)

    @property
    def takes_images(self) -> bool:
        return self.processor is not None

    def settings(self, **overrides) -> Settings:
        """:meth:`Settings.from_checkpoint` for this checkpoint."""
        return Settings.from_checkpoint(self.directory, self.model.config, **overrides)

    # -- inputs ----------------------------------------------------------------------------
    def inputs(self, prompts: Sequence[Prompt]) -> dict[str, np.ndarray]:
        """The model inputs of a batch of prompts, padded on the left (HF's processor /
        tokenizer otherwise: special tokens, ``<fake_token_around_image>``, ...)."""
        if not prompts:
            raise ValueError("no prompts")
        prompts = [p if isinstance(p, Prompt) else Prompt(p) for p in prompts]
        if not self.takes_images:
            with_images = [i for i, p in enumerate(prompts) if p.images]
            if with_images:
                raise ValueError(f"{type(self.model).__name__} takes text only; prompt {with_images[0]} has images")
            encoded = self.tokenizer([p.text for p in prompts], padding=True, padding_side="left",
                                     return_tensors="np")
        else:
            encoded = self.processor([p.interleaved() for p in prompts], padding="longest", padding_side="left",
                                     return_tensors="np")
        inputs = {k: np.asarray(v) for k, v in encoded.items()}
        if not inputs["input_ids"].size or not inputs["attention_mask"].sum(axis=1).all():
            raise ValueError("a prompt tokenized to no tokens: give some text")
        return inputs

    # -- decoding --------------------------------------------------------------------------
    def _loop(self, settings: Settings):
        from zoo.generation import DecodeLoop

        return DecodeLoop(
            self.model, self.variables, max_new_tokens=settings.max_new_tokens, do_sample=settings.do_sample,
            temperature=settings.temperature, top_k=settings.top_k if settings.do_sample else 0,
            top_p=settings.top_p if settings.do_sample else 1.0, repetition_penalty=settings.repetition_penalty,
            min_new_tokens=settings.min_new_tokens, eos_token_id=settings.eos_token_id,
            pad_token_id=settings.pad_token_id, num_return_sequences=settings.num_return_sequences)

    def stream(self, prompts: Sequence[Prompt | str], settings: Settings | None = None, *,
               stats: Stats | None = None) -> Iterator[Piece]:
        """Decoded text as it is produced, row by row (each step's new text per row);
        ``stats`` (if given) is filled in as decoding goes."""
        settings = settings or self.settings()
        inputs = self.inputs(prompts)
        length = inputs["input_ids"].shape[1]
        limit = getattr(self.model.config, "max_position_embeddings", None)
        if limit is not None and length + settings.max_new_tokens > limit:
            raise ValueError(f"prompt of {length} tokens + max_new_tokens {settings.max_new_tokens} exceeds the "
                             f"model's max_position_embeddings={limit}")
        stats = stats if stats is not None else Stats()
        stats.prompt_tokens, stats.batch = length, len(inputs["input_ids"]) * settings.num_return_sequences
        loop = self._loop(settings)
        ids, mask = inputs.pop("input_ids"), inputs.pop("attention_mask")
        stats.compile_s = loop.compile(ids, mask, rng=settings.seed, **inputs)
        start = time.perf_counter()
        state = loop.prefill(ids, mask, rng=settings.seed, **inputs)
        rows = [_TextStream(self.tokenizer) for _ in range(stats.batch)]
        tokens, unfinished = np.asarray(state.tokens), np.ones(stats.batch, bool)
        stats.prefill_s, stats.new_tokens = time.perf_counter() - start, 1
        decode_start = time.perf_counter()
        eos = set(settings.eos_token_id or ())
        while True:
            for row, token in enumerate(tokens):
                if unfinished[row]:
                    unfinished[row] = int(token) not in eos
                    if unfinished[row]:
                        text = rows[row].push(token)
                        if text:
                            yield Piece(row, text)
            if loop.done(state):
                break
            state = loop.step(state)
            tokens = np.asarray(state.tokens)
            stats.new_tokens += 1
            stats.decode_s = time.perf_counter() - decode_start
        for row, stream in enumerate(rows):
            text = stream.flush()
            if text:
                yield Piece(row, text)
        stats.token_ids = [stream.ids for stream in rows]

    def generate(self, prompts: Sequence[Prompt | str], settings: Settings | None = None) -> Result:
        """Every row's decoded continuation (special tokens skipped) and the timings."""
        stats = Stats()
        texts: dict[int, list[str]] = {}
        for piece in self.stream(prompts, settings, stats=stats):
            texts.setdefault(piece.row, []).append(piece.text)
        return Result(texts=["".join(texts.get(row, [])) for row in range(stats.batch)],
                      token_ids=stats.token_ids, stats=stats)


def read_prompts_file(path: str | os.PathLike) -> list[Prompt]:
    """A JSONL file, one prompt per line: ``{"prompt": TEXT, "images": [FILE, ...]}`` (or a
    bare JSON string). Image paths are relative to the file's directory."""
    path = Path(path)
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError as e:
        raise OSError(f"{path}: cannot read the prompts file ({e.strerror or e})") from None
    prompts = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except ValueError as e:
            raise ValueError(f"{path}:{number}: not JSON ({e.msg})") from None
        if isinstance(row, str):
            row = {"prompt": row}
        if not isinstance(row, dict) or not isinstance(row.get("prompt"), str):
            raise ValueError(f'{path}:{number}: expected {{"prompt": "...", "images": [...]}}')
        images = row.get("images", [])
        if not isinstance(images, list) or not all(isinstance(i, str) for i in images):
            raise ValueError(f"{path}:{number}: \"images\" must be a list of file paths")
        try:
            prompts.append(Prompt(row["prompt"], tuple(str(path.parent / i) for i in images)))
        except ValueError as e:
            raise ValueError(f"{path}:{number}: {e}") from None
    if not prompts:
        raise ValueError(f"{path}: no prompts")
    return prompts


__all__ = ["GENERATING_HEADS", "IMAGE_PLACEHOLDER", "Piece", "Prompt", "Result", "Settings", "Stats",
           "TextGenerator", "read_prompts_file"]
