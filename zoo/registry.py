"""Architecture name -> (config class, module class, key table), per family."""

from __future__ import annotations

import dataclasses

from converters.mapping import KeyTable
from zoo.config import ZooConfig
from zoo.models import big_bird, data2vec_audio, data2vec_text, data2vec_vision, groupvit, idefics, sew_d


@dataclasses.dataclass(frozen=True)
class Family:
    """One model family: its HF ``model_type``, config class, heads and key table."""

    model_type: str
    config_class: type[ZooConfig]
    architectures: dict[str, type]
    key_table: KeyTable
    base_architecture: str


FAMILIES: dict[str, Family] = {
    "data2vec-text": Family(
        model_type="data2vec-text",
        config_class=data2vec_text.Data2VecTextConfig,
        architectures=data2vec_text.ARCHITECTURES,
        key_table=data2vec_text.KEY_TABLE,
        base_architecture="Data2VecTextModel",
    ),
    "data2vec-audio": Family(
        model_type="data2vec-audio",
        config_class=data2vec_audio.Data2VecAudioConfig,
        architectures=data2vec_audio.ARCHITECTURES,
        key_table=data2vec_audio.KEY_TABLE,
        base_architecture="Data2VecAudioModel",
    ),
    "data2vec-vision": Family(
        model_type="data2vec-vision",
        config_class=data2vec_vision.Data2VecVisionConfig,
        architectures=data2vec_vision.ARCHITECTURES,
        key_table=data2vec_vision.KEY_TABLE,
        base_architecture="Data2VecVisionModel",
    ),
    "big_bird": Family(
        model_type="big_bird",
        config_class=big_bird.BigBirdConfig,
        architectures=big_bird.ARCHITECTURES,
        key_table=big_bird.KEY_TABLE,
        base_architecture="BigBirdModel",
    ),
    "groupvit": Family(
        model_type="groupvit",
        config_class=groupvit.GroupViTConfig,
        architectures=groupvit.ARCHITECTURES,
        key_table=groupvit.KEY_TABLE,
        base_architecture="GroupViTModel",
    ),
    "idefics": Family(
        model_type="idefics",
        config_class=idefics.IdeficsConfig,
        architectures=idefics.ARCHITECTURES,
        key_table=idefics.KEY_TABLE,
        base_architecture="IdeficsModel",
    ),
    "sew-d": Family(
        model_type="sew-d",
        config_class=sew_d.SEWDConfig,
        architectures=sew_d.ARCHITECTURES,
        key_table=sew_d.KEY_TABLE,
        base_architecture="SEWDModel",
    ),
}


class UnsupportedModelError(ValueError):
    """A family or architecture the zoo does not implement."""


# Model types of sub-configs saved on their own (a tower of a two-tower model).
MODEL_TYPE_ALIASES = {"groupvit_text_model": "groupvit", "groupvit_vision_model": "groupvit"}


def get_family(model_type: str | None) -> Family:
    family = FAMILIES.get(MODEL_TYPE_ALIASES.get(model_type, model_type)) if isinstance(model_type, str) else None
    if family is None:
        shown = repr(model_type) if len(repr(model_type)) <= 60 else repr(model_type)[:57] + "..."
        raise UnsupportedModelError(
            f"model_type {shown} is not supported; supported families: {', '.join(sorted(FAMILIES))}"
        )
    return family


def family_of_architecture(architecture: str) -> Family:
    for family in FAMILIES.values():
        if architecture in family.architectures:
            return family
    raise UnsupportedModelError(
        f"architecture {architecture!r} is not supported; run `zoo list` for the supported ones"
    )


def list_architectures() -> list[tuple[str, str]]:
    """``(model_type, architecture)`` for every supported architecture."""
    return [(f.model_type, a) for f in FAMILIES.values() for a in f.architectures]
