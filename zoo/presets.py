"""Architecture presets: the HF ``config.json`` of known checkpoints, usable offline.

Each preset is ``configs/<name>.json`` at the top of the repository, named after the hub
repo's model name in lower case (``data2vec-audio-base`` for ``facebook/data2vec-audio-base``;
the file's ``_name_or_path`` holds the repo id). :func:`init` builds the model of a preset
with random weights (HF's initialisers), no network and no checkpoint needed::

    model, variables = zoo.init("data2vec-audio-base", rng=0)
    model, variables = zoo.init("sew-d-tiny-100k", rng=0, num_hidden_layers=2)   # at debug depth

``ZOO_CONFIGS_DIR`` points at another directory of presets (e.g. when the package is
installed without the repository next to it).
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import os
from collections.abc import Mapping
from pathlib import Path

import jax
import jax.numpy as jnp

from zoo.config import ZooConfig
from zoo.initialization import init_params
from zoo.pretrained import Loaded, build_model
from zoo.registry import get_family

ENV_VAR = "ZOO_CONFIGS_DIR"


class UnknownPresetError(KeyError):
    """A preset name that is not in the presets directory (the message lists close names)."""

    def __str__(self) -> str:  # KeyError would print the message quoted
        return str(self.args[0]) if self.args else ""


def configs_dir() -> Path:
    """The presets directory: ``$ZOO_CONFIGS_DIR``, else ``configs/`` of the repository."""
    if os.environ.get(ENV_VAR):
        return Path(os.environ[ENV_VAR])
    return Path(__file__).resolve().parent.parent / "configs"


def _preset_files() -> dict[str, Path]:
    """Preset name -> file: the top-level ``*.json`` of the presets directory that are model
    configs (they have a ``model_type``; fine-tuning recipes beside them do not)."""
    directory = configs_dir()
    if not directory.is_dir():
        return {}
    files = {}
    for path in sorted(directory.glob("*.json")):
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        if isinstance(data, dict) and "model_type" in data:
            files[path.stem] = path
    return files


def list_presets() -> list[str]:
    """Names of the available presets, sorted."""
    return sorted(_preset_files())


def _resolve(name: str) -> Path:
    files = _preset_files()
    if not files:
        raise FileNotFoundError(
            f"no presets found in {configs_dir()}: the presets live in the repository's configs/ "
            f"directory; set {ENV_VAR} to a directory of preset config.json files")
    key = str(name).strip()
    if key in files:
        return files[key]
    # A hub repo id ("facebook/data2vec-audio-base") or any casing of a preset name.
    short = key.rsplit("/", 1)[-1].lower()
    if short in files:
        return files[short]
    close = difflib.get_close_matches(short, list(files), n=5, cutoff=0.5)
    hint = f"; did you mean {', '.join(repr(c) for c in close)}?" if close else ""
    raise UnknownPresetError(f"unknown preset {name!r}{hint} (available: {', '.join(sorted(files))})")


def preset_path(name: str) -> Path:
    """The ``config.json`` file of preset ``name`` (a preset name or its hub repo id)."""
    return _resolve(name)


def load_preset(name: str, **overrides) -> ZooConfig:
    """The validated config of preset ``name`` (a preset name or its hub repo id);
    ``overrides`` replace fields (``num_hidden_layers=2``: the architecture at debug depth)."""
    path = _resolve(name)
    data = json.loads(path.read_text(encoding="utf-8"))
    config = get_family(data.get("model_type")).config_class.from_dict(data)
    return _override(config, overrides)


def _override(config: ZooConfig, overrides: dict) -> ZooConfig:
    """``config`` with fields replaced (and validated); a dict for a sub-config field
    (IDEFICS' ``vision_config``, GroupViT's ``text_config``) updates it key by key."""
    if not overrides:
        return config
    fields = {f.name for f in dataclasses.fields(config)} - {"extra"}
    unknown = sorted(set(overrides) - fields)
    if unknown:
        raise TypeError(f"{type(config).__name__} has no field {', '.join(map(repr, unknown))}")
    changes = {}
    for key, value in overrides.items():
        current = getattr(config, key)
        if isinstance(value, Mapping) and isinstance(current, Mapping):
            value = {**current, **value}
        changes[key] = tuple(value) if isinstance(value, list) else value
    return config.replace(**changes)


def init(preset: str | ZooConfig, rng: jax.Array | int = 0, architecture: str | None = None, *,
         dtype=jnp.float32, param_dtype=jnp.float32, **overrides) -> Loaded:
    """A preset with random weights (HF's initialisers): ``model, variables = zoo.init(...)``.

    preset: a preset name (or its hub repo id), or a config;
    rng: an int seed or a ``jax.random`` key;
    architecture: another head on the same body (default: the preset's ``architectures``);
    dtype / param_dtype: compute / storage dtype;
    overrides: config fields to replace (``num_hidden_layers=2``: the architecture at debug
    depth; a dict updates a sub-config: ``vision_config={"num_hidden_layers": 2}``).
    """
    config = _override(preset if isinstance(preset, ZooConfig) else load_preset(preset), overrides)
    module = build_model(config, architecture, dtype=dtype, param_dtype=param_dtype)
    return Loaded(module, init_params(module, rng))


__all__ = ["UnknownPresetError", "configs_dir", "init", "list_presets", "load_preset", "preset_path"]
