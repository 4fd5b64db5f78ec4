"""zoo: JAX/Flax ports of Data2Vec, BigBird, GroupViT, IDEFICS and SEW-D with exact
parity to the Hugging Face PyTorch originals.

    import zoo
    model, params = zoo.from_pretrained("path/to/hf_checkpoint")
    model, params = zoo.init("data2vec-audio-base", rng=0)   # a preset, random weights
    out = model.apply({"params": params}, input_ids=ids, attention_mask=mask)
"""

from zoo.config import UnsupportedConfigError, ZooConfig
from zoo.pretrained import (
    as_variables,
    build_model,
    export_pytorch,
    from_pretrained,
    init_params,
    save_pretrained,
)
from zoo.registry import FAMILIES, UnsupportedModelError, list_architectures
from zoo.presets import init, list_presets, load_preset
from zoo import parallel  # noqa: E402  (after zoo.pretrained, which it builds on)

__version__ = "0.1.0"

__all__ = [
    "FAMILIES", "UnsupportedConfigError", "UnsupportedModelError", "ZooConfig", "as_variables", "build_model",
    "export_pytorch", "from_pretrained", "init", "init_params", "list_architectures", "list_presets", "load_preset",
    "parallel", "save_pretrained",
]
