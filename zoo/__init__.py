"""zoo: JAX/Flax ports of Data2Vec, BigBird, GroupViT, IDEFICS and SEW-D with exact
parity to the Hugging Face PyTorch originals.

    import zoo
    model, variables = zoo.from_pretrained("path/to/hf_checkpoint")
    model, variables = zoo.init("data2vec-audio-base", rng=0)   # a preset, random weights
    zoo.check_inputs(model, input_ids=ids, attention_mask=mask)   # values, on the host
    out = model.apply(variables, input_ids=ids, attention_mask=mask)

``variables`` is always the Flax variables dict (``{"params": ...}``, plus ``"batch_stats"``
for models with batch norm), what ``model.apply`` takes.
"""

from __future__ import annotations

import importlib
import importlib.util

__version__ = "0.1.0"

# The package face is lazy (PEP 562): ``import zoo`` and ``zoo --help`` do not wait for jax
# and flax; each name imports its module on first use.
_EXPORTS = {
    "UnsupportedConfigError": "zoo.config", "ZooConfig": "zoo.config",
    "init_params": "zoo.initialization",
    "check_inputs": "zoo.nn.inputs",
    "Loaded": "zoo.pretrained", "build_model": "zoo.pretrained", "export_pytorch": "zoo.pretrained",
    "from_pretrained": "zoo.pretrained", "from_state_dict": "zoo.pretrained", "save_pretrained": "zoo.pretrained",
    "FAMILIES": "zoo.registry", "UnsupportedModelError": "zoo.registry", "list_architectures": "zoo.registry",
    "init": "zoo.presets", "list_presets": "zoo.presets", "load_preset": "zoo.presets",
}


def __getattr__(name: str):
    if name in _EXPORTS:
        value = getattr(importlib.import_module(_EXPORTS[name]), name)
    elif not name.startswith("_") and importlib.util.find_spec(f"zoo.{name}") is not None:
        value = importlib.import_module(f"zoo.{name}")  # zoo.parallel, zoo.tree, zoo.generation, ...
    else:
        raise AttributeError(f"module 'zoo' has no attribute {name!r}")
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))


__all__ = [
    "FAMILIES", "Loaded", "UnsupportedConfigError", "UnsupportedModelError", "ZooConfig", "build_model", "check_inputs",
    "export_pytorch", "from_pretrained", "from_state_dict", "init", "init_params", "list_architectures",
    "list_presets", "load_preset", "parallel", "save_pretrained", "tree",
]
