"""``preprocessor_config.json`` IO shared by the processors: read with clear errors, write atomically."""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Iterable, Mapping
from typing import Any

PREPROCESSOR_CONFIG_NAME = "preprocessor_config.json"


def read_preprocessor_config(path: str | os.PathLike) -> dict[str, Any]:
    """The dict in ``<path>/preprocessor_config.json`` (``path`` may also be the JSON file)."""
    path = os.fspath(path)
    file = os.path.join(path, PREPROCESSOR_CONFIG_NAME) if os.path.isdir(path) else path
    if not os.path.isfile(file):
        raise FileNotFoundError(
            f"no {PREPROCESSOR_CONFIG_NAME} in directory {path!r}" if os.path.isdir(path)
            else f"{path!r} does not exist (expected a directory holding {PREPROCESSOR_CONFIG_NAME})"
        )
    try:
        with open(file, encoding="utf-8") as f:
            config = json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"{file!r} is not valid JSON: {e}") from None
    if not isinstance(config, dict):
        raise ValueError(f"{file!r}: expected a JSON object")
    return config


def reject_unknown_keys(config: Mapping[str, Any], fields: Iterable[str], neutral: Iterable[str],
                        owner: str, semantics: str) -> None:
    """Keys that would change the computation but are not implemented are an error, never ignored."""
    known = set(fields) | set(neutral)
    unknown = sorted(k for k in config if k not in known)
    if unknown:
        raise ValueError(f"preprocessor config key(s) {unknown} are not implemented by {owner} "
                         f"({semantics} semantics); refusing to ignore them silently")


def write_atomically(path: str | os.PathLike, write) -> str:
    """Create ``path`` through a temporary sibling renamed at the end: all or nothing.

    write: called with the temporary path.
    """
    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=f".{os.path.basename(path)}.", suffix=".tmp")
    os.close(fd)
    try:
        os.chmod(tmp, 0o644)  # mkstemp makes 0600 files
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise
    return path


def write_preprocessor_config(directory: str | os.PathLike, config: Mapping[str, Any]) -> str:
    """Write ``<directory>/preprocessor_config.json`` atomically; returns its path."""
    def dump(tmp: str) -> None:
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(config, f, indent=2)
            f.write("\n")

    return write_atomically(os.path.join(os.fspath(directory), PREPROCESSOR_CONFIG_NAME), dump)
