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

from zoo.config import UnsupportedConfigError, ZooConfig
from zoo.initialization import init_params
from zoo.nn.inputs import check_inputs
from zoo.pretrained import Loaded, build_model, export_pytorch, from_pretrained, from_state_dict, save_pretrained
from zoo.registry import FAMILIES, UnsupportedModelError, list_architectures
from zoo.presets import init, list_presets, load_preset
from zoo import parallel, tree

__version__ = "0.1.0"

__all__ = [
    "FAMILIES", "Loaded", "UnsupportedConfigError", "UnsupportedModelError", "ZooConfig", "build_model", "check_inputs",
    "export_pytorch", "from_pretrained", "from_state_dict", "init", "init_params", "list_architectures",
    "list_presets", "load_preset", "parallel", "save_pretrained", "tree",
]
