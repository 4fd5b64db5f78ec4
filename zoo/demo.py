"""What ``zoo demo`` runs: for each family, the shipped tiny checkpoint (:mod:`zoo.assets`) and
the ``zoo`` commands that convert it and run it.

    for step in demo.steps("groupvit", workdir):     # Step("convert", (...)), ..., Step("run", (...))
        print("#", step.shell())                     # "# zoo convert ...", "# zoo info ...", "# zoo run ..."
    with demo.workspace(output) as workdir: ...      # a zoo-demo-* temp dir, removed at the end

The command line runs each step through its own ``zoo`` subcommand; this module only knows the
plan (stdlib + :mod:`zoo.assets`; no jax, torch or transformers).
"""

from __future__ import annotations

import contextlib
import os
import shlex
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from zoo.assets import (TINY_AUDIO_CTC_CHECKPOINT, TINY_BIG_BIRD_CHECKPOINT, TINY_GROUPVIT_CHECKPOINT,
                        TINY_IDEFICS_CHECKPOINT, TINY_PICTURE, TINY_SEW_D_CTC_CHECKPOINT, TINY_SPEECH_WAV,
                        TINY_TEXT_CHECKPOINT, TINY_VISION_CHECKPOINT)

TEMP_PREFIX = "zoo-demo-"
# 32 tokens: more than (5 + 2 * num_random_blocks) * block_size = 28, so attention is block-sparse
BIG_BIRD_TEXT = "the quick brown fox jumps over the lazy dog and a dog ran in the [MASK] while the cat sat on the mat"
IDEFICS_PROMPT = "User: <image> What is in this picture? Assistant:"


@dataclass(frozen=True)
class Family:
    """A family's demo: its shipped checkpoint, the ``zoo`` subcommand that runs the converted
    copy (``run`` or ``generate``) and that command's arguments after the checkpoint."""

    asset: Path
    command: str
    arguments: tuple[str, ...]
    verify: bool = False  # ``zoo convert --verify`` (only when torch + transformers are installed)


# the registry's model_type names (zoo.registry.FAMILIES), in the order `--family all` shows them
FAMILIES: dict[str, Family] = {
    "data2vec-text": Family(TINY_TEXT_CHECKPOINT, "run", ("--text", "the cat sat on the <mask>."), verify=True),
    "data2vec-audio": Family(TINY_AUDIO_CTC_CHECKPOINT, "run", ("--audio", str(TINY_SPEECH_WAV))),
    "data2vec-vision": Family(TINY_VISION_CHECKPOINT, "run", ("--image", str(TINY_PICTURE), "--top-k", "3")),
    "big_bird": Family(TINY_BIG_BIRD_CHECKPOINT, "run", ("--text", BIG_BIRD_TEXT, "--top-k", "3")),
    "groupvit": Family(TINY_GROUPVIT_CHECKPOINT, "run",
                       ("--image", str(TINY_PICTURE), "--labels", "a red square,a blue sky,green grass")),
    "idefics": Family(TINY_IDEFICS_CHECKPOINT, "generate",
                      ("--prompt", IDEFICS_PROMPT, "--image", str(TINY_PICTURE), "--max-new-tokens", "32",
                       "--greedy")),
    "sew-d": Family(TINY_SEW_D_CTC_CHECKPOINT, "run", ("--audio", str(TINY_SPEECH_WAV))),
}
DEFAULT_FAMILIES = ("data2vec-text", "data2vec-audio")  # `zoo demo` without --family
ALL = "all"


@dataclass(frozen=True)
class Step:
    """One ``zoo`` command: ``command`` (a subcommand) and its arguments."""

    command: str
    argv: tuple[str, ...]

    def shell(self) -> str:
        """The command as a user would type it."""
        return shlex.join(["zoo", self.command, *self.argv])


def families(name: str | None) -> list[str]:
    """The families ``zoo demo --family name`` shows: one, ``all`` of them, or (None) the
    default two. ValueError (one line listing the choices) for another name."""
    if name is None:
        return list(DEFAULT_FAMILIES)
    if name == ALL:
        return list(FAMILIES)
    if name not in FAMILIES:
        raise ValueError(f"unknown family {name!r}; choose from {', '.join(FAMILIES)}, {ALL}")
    return [name]


def steps(family: str, workdir: str | os.PathLike, *, verify: bool = False) -> list[Step]:
    """Convert ``family``'s shipped checkpoint into ``workdir/<asset name>`` (``--verify``
    against PyTorch when ``verify`` and the family asks for it), show it (``zoo info``), then
    run the converted copy."""
    if family not in FAMILIES:
        families(family)  # raises the error that lists the choices
    spec = FAMILIES[family]
    out = str(Path(workdir) / spec.asset.name)
    convert = ("convert", str(spec.asset), out, "--dtype", "float32") + (("--verify",) if verify and spec.verify
                                                                          else ())
    return [Step(convert[0], convert[1:]), Step("info", (out,)), Step(spec.command, (out, *spec.arguments))]


@contextlib.contextmanager
def workspace(output: str | os.PathLike | None = None) -> Iterator[Path]:
    """``output`` (kept; created when missing), else a ``zoo-demo-*`` temporary directory that is
    removed when the block ends, also on error."""
    if output is not None:
        path = Path(output)
        path.mkdir(parents=True, exist_ok=True)
        yield path
        return
    with tempfile.TemporaryDirectory(prefix=TEMP_PREFIX) as tmp:
        yield Path(tmp)


__all__ = ["ALL", "DEFAULT_FAMILIES", "FAMILIES", "Family", "Step", "TEMP_PREFIX", "families", "steps", "workspace"]
