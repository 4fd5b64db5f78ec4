"""Load, convert, save and export checkpoints.

Two directory layouts are understood:

* a Hugging Face PyTorch checkpoint (``config.json`` + ``model.safetensors`` / sharded
  index / ``pytorch_model.bin``), converted on the fly with the family's key table;
* a zoo directory written by :func:`save_pretrained` / ``zoo convert`` (``config.json``
  + ``flax_model.safetensors`` whose keys are ``/``-joined Flax paths).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import sys
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from converters.errors import CheckpointError, CheckpointNotFoundError, CorruptCheckpointError
from converters.mapping import (
    ConversionReport,
    TensorSource,
    cast,
    cast_dtype,
    flax_to_torch,
    plan_params,
    read_source,
    read_sources,
)
from converters.readers import Checkpoint, open_checkpoint
from converters.writers import atomic_directory, save_safetensors, save_safetensors_streamed
from zoo import parallel
from zoo.config import UnsupportedConfigError, ZooConfig
from zoo.initialization import abstract_variables, init_flat, param_shapes
from zoo.nn import scan
from zoo.registry import Family, UnsupportedModelError, family_of_architecture, get_family
from zoo.tree import DTYPES, as_dtype, flatten_variables, pack_variables

ZOO_WEIGHTS = "flax_model.safetensors"
CONFIG_NAME = "config.json"
_HUB_PATTERNS = ["config.json", "*.safetensors", "*.safetensors.index.json", "pytorch_model*.bin",
                 "pytorch_model.bin.index.json", "vocab.json", "tokenizer.json", "*.txt"]

class Loaded(tuple):
    """What loading gives: unpacks as ``model, variables = zoo.from_pretrained(...)``.

    model: the Flax module (``model.config`` is its config).
    variables: the Flax variables dict for ``model.apply(variables, ...)``: ``{"params":
      ...}``, plus ``"batch_stats"`` for models with batch norm.
    report: the :class:`ConversionReport` of the load (which checkpoint keys went unused,
      which parameters were newly initialised, ...); None for random weights.
    """

    def __new__(cls, model: nn.Module, variables: dict, report: ConversionReport | None = None):
        loaded = super().__new__(cls, (model, variables))
        loaded.report = report
        return loaded

    @property
    def model(self) -> nn.Module:
        return self[0]

    @property
    def variables(self) -> dict:
        return self[1]

    def __repr__(self) -> str:
        return f"Loaded(model={type(self.model).__name__}, variables=..., report={self.report!r})"

# ------------------------------------------------------------------- resolving
def resolve_checkpoint(path_or_repo_id: str | os.PathLike) -> Path:
    """A local directory, or a hub repo id (from the local HF cache first, then the hub)."""
    path = Path(path_or_repo_id)
    if path.exists():
        if not path.is_dir():
            raise CheckpointNotFoundError(f"{path}: expected a checkpoint directory, got a file")
        return path
    repo_id = str(path_or_repo_id)
    if repo_id.startswith((".", "/", "~")) or repo_id.count("/") > 1 or not repo_id:
        raise CheckpointNotFoundError(f"{repo_id}: no such checkpoint directory")
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(repo_id, allow_patterns=_HUB_PATTERNS, local_files_only=True))
    except Exception:
        pass
    if os.environ.get("HF_HUB_OFFLINE", "0").lower() not in ("0", "false", ""):
        raise CheckpointNotFoundError(
            f"{repo_id}: not a local directory and not in the Hugging Face cache (HF_HUB_OFFLINE is set)"
        )
    try:
        return Path(snapshot_download(repo_id, allow_patterns=_HUB_PATTERNS))
    except Exception as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise CheckpointNotFoundError(
            f"{repo_id}: not a local directory, not in the Hugging Face cache, and the hub "
            f"could not be reached ({first})"
        ) from None

def read_config(directory: Path) -> tuple[Family, ZooConfig]:
    path = directory / CONFIG_NAME
    if not path.is_file():
        raise CheckpointNotFoundError(f"{path}: missing config.json")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CorruptCheckpointError(f"{path}: not valid JSON ({e})") from None
    if not isinstance(data, dict):
        raise CorruptCheckpointError(f"{path}: expected a JSON object")
    try:
        family = get_family(data.get("model_type"))
        return family, family.config_class.from_dict(data)
    except (UnsupportedModelError, UnsupportedConfigError) as e:
        raise type(e)(f"{path}: {e}") from None

def choose_architecture(family: Family, config: ZooConfig, architecture: str | None) -> str:
    if architecture is not None:
        if architecture not in family.architectures:
            owner = None
            try:
                owner = family_of_architecture(architecture).model_type
            except UnsupportedModelError:
                pass
            raise UnsupportedModelError(
                f"architecture {architecture!r} is not a {family.model_type} architecture"
                + (f" (it belongs to {owner})" if owner else "")
                + f"; choose one of {', '.join(family.architectures)}"
            )
        return architecture
    for name in config.architectures or ():
        if name in family.architectures:
            return name
    return family.base_architecture

def build_model(config: ZooConfig, architecture: str | None = None, *, dtype=jnp.float32,
                param_dtype=jnp.float32, **module_kwargs) -> nn.Module:
    """The Flax module of ``architecture`` (default: the config's, else the bare model)."""
    family = get_family(config.model_type)
    name = choose_architecture(family, config, architecture)
    return family.architectures[name](config=config, dtype=as_dtype(dtype),
                                      param_dtype=as_dtype(param_dtype), **module_kwargs)

# --------------------------------------------------------------------- loading
def open_weights(directory: Path) -> Checkpoint:
    """The weights of a checkpoint directory: the zoo file if there is one, else the HF checkpoint."""
    zoo_file = Path(directory) / ZOO_WEIGHTS
    return open_checkpoint(zoo_file if zoo_file.exists() else directory)

def plan_checkpoint(ckpt: Checkpoint, module: nn.Module, expected: Mapping[str, tuple[int, ...]], *,
                    ignore_mismatched_sizes: bool = False) -> tuple[dict[str, TensorSource], ConversionReport]:
    """Flax path -> :class:`TensorSource` of every variable of ``module`` that ``ckpt``
    provides (``expected``: :func:`param_shapes` of ``module``), every shape checked from the
    file headers; no tensor is read. The planning is :func:`converters.mapping.plan_params`'s,
    for PyTorch keys (a HF checkpoint) or Flax paths (a zoo directory)."""
    zoo_dir = Path(ckpt.path).name == ZOO_WEIGHTS
    return plan_params(ckpt.keys(), get_family(module.config.model_type).key_table, expected,
                       layout="flax" if zoo_dir else "torch", shape_of=ckpt.shape,
                       source=str(ckpt.path if zoo_dir else Path(ckpt.path).parent),
                       ignore_mismatched_sizes=ignore_mismatched_sizes)

def checkpoint_dtype(ckpt: Checkpoint):
    """The storage dtype of most floating tensors of ``ckpt`` (float32 when it is none of
    float32, bfloat16, float16): the module's ``param_dtype`` when the checkpoint's is kept."""
    counts: dict[str, int] = {}
    for key in ckpt.keys():
        name = np.dtype(ckpt.dtype(key)).name
        if name in DTYPES or name == "float64":
            counts[name] = counts.get(name, 0) + 1
    best = max(counts, key=counts.get, default="float32")
    return DTYPES.get(best, jnp.float32)

def load_flat_params(
    directory: Path,
    module: nn.Module,
    *,
    param_dtype=None,
    on_tensor: Callable[[str], None] | None = None,
    place: Callable[[np.ndarray], Any] | None = None,
    ignore_mismatched_sizes: bool = False,
) -> tuple[dict[str, np.ndarray], ConversionReport]:
    """Read (and convert if needed) the weights of ``directory`` for ``module`` as flat numpy
    arrays (or, with ``place``, as what ``place`` makes of each tensor right after reading it)."""
    expected = param_shapes(module)
    with open_weights(directory) as ckpt:
        sources, report = plan_checkpoint(ckpt, module, expected, ignore_mismatched_sizes=ignore_mismatched_sizes)
        return read_sources(ckpt.get, sources, expected, dtype=_np_dtype(param_dtype), source=ckpt.path,
                            on_tensor=on_tensor, place=place), report

def _np_dtype(param_dtype) -> np.dtype | None:
    return None if param_dtype is None else np.dtype(as_dtype(param_dtype))

def from_pretrained(
    path_or_repo_id: str | os.PathLike,
    architecture: str | None = None,
    *,
    dtype=jnp.float32,
    param_dtype=jnp.float32,
    rng: jax.Array | int = 0,
    progress: bool = False,
    mesh: jax.sharding.Mesh | None = None,
    axis_rules=None,
    config: ZooConfig | None = None,
    ignore_mismatched_sizes: bool = False,
    **module_kwargs,
) -> Loaded:
    """The model of a HF PyTorch checkpoint, a zoo directory or a hub repo id, and its variables.

    Returns :class:`Loaded`: ``model, variables = zoo.from_pretrained(path)``, then
    ``model.apply(variables, ...)``; ``.report`` says what the conversion did.

    progress: show a progress bar on stderr for checkpoints over 100 MB.
    dtype: compute dtype; param_dtype: storage dtype of the returned variables (None keeps
    the checkpoint's: a bfloat16 checkpoint stays bfloat16).
    mesh: load straight onto this device mesh (:func:`zoo.parallel.make_mesh`): every
    parameter is sharded by its logical axis names (``axis_rules``, default
    :data:`zoo.parallel.LOGICAL_AXIS_RULES`) and each device reads only its slice of the
    checkpoint, so a model larger than one device's memory loads.
    Parameters a task head needs but the checkpoint lacks (declared by the family's key
    table, e.g. a classifier on top of a pretrained body) are initialised from ``rng``
    and listed in ``report.missing``.
    config: build the model from this config instead of the checkpoint's (same family),
    e.g. with another ``num_labels``; ``ignore_mismatched_sizes=True`` then initialises the
    parameters whose checkpoint shape no longer fits (a classifier for other labels) instead
    of raising, as HF's flag of that name (listed in ``report.mismatched``).
    """
    directory = resolve_checkpoint(path_or_repo_id)
    family, stored_config = read_config(directory)
    if config is None:
        config = stored_config
    elif config.model_type != stored_config.model_type:
        raise UnsupportedModelError(f"config is a {config.model_type} config, the checkpoint {directory} is "
                                    f"{stored_config.model_type}")
    if param_dtype is None:
        with open_weights(directory) as ckpt:
            module_param_dtype = checkpoint_dtype(ckpt)
    else:
        module_param_dtype = param_dtype
    module = build_model(config, architecture, dtype=dtype, param_dtype=module_param_dtype, **module_kwargs)
    # scan_layers: the weights are read in their own layer layout (stored), then converted
    stored = _stored_layout_module(directory, module)
    with _progress_bar(directory, enabled=progress) as on_tensor:
        if mesh is not None:
            rules = parallel.LOGICAL_AXIS_RULES if axis_rules is None else axis_rules
            flat, report = _load_onto_mesh(directory, stored, mesh, param_dtype=param_dtype, rng=rng,
                                           rules=rules, on_tensor=on_tensor,
                                           ignore_mismatched_sizes=ignore_mismatched_sizes)
            if stored is not module:  # restacked on the devices, then laid out as the module's parameters
                shardings = flatten_variables(parallel.param_shardings(module, mesh, rules))
                flat = {p: jax.device_put(v, shardings[p])
                        for p, v in _to_layout(flat, module, module.scan_layers, stack=jnp.stack).items()}
            return Loaded(module, pack_variables(flat), report)
        # each tensor goes to the device as soon as it is read: the model is never in memory twice
        # (a layout conversion restacks on the host first)
        flat, report = load_flat_params(directory, stored, param_dtype=param_dtype, on_tensor=on_tensor,
                                        place=jax.device_put if stored is module else None,
                                        ignore_mismatched_sizes=ignore_mismatched_sizes)
    if stored is not module:
        flat = {p: jax.device_put(v) for p, v in _to_layout(flat, module, module.scan_layers).items()}
    flat.update(init_flat(module, rng, report.missing))
    return Loaded(module, pack_variables(flat), report)

def from_state_dict(state_dict: Mapping[str, Any], config: ZooConfig | Mapping[str, Any],
                    architecture: str | None = None, *, dtype=jnp.float32, param_dtype=jnp.float32,
                    rng: jax.Array | int = 0, **module_kwargs) -> Loaded:
    """The model of ``config`` with the weights of a PyTorch ``state_dict`` (in memory).

    state_dict: HF PyTorch keys -> numpy arrays (e.g. ``{k: v.numpy() for k, v in
      hf_model.state_dict().items()}``), converted by the family's key table as
      :func:`from_pretrained` converts a checkpoint file.
    config: a zoo config, or an HF config dict (``hf_model.config.to_dict()``).
    architecture: default the config's ``architectures``, else the bare model.
    Returns :class:`Loaded` (``model, variables``; ``.report``); a head's parameters the
    state dict lacks are initialised from ``rng`` and listed in ``report.missing``.
    """
    if not isinstance(config, ZooConfig):
        config = get_family(config.get("model_type")).config_class.from_dict(dict(config))
    module = build_model(config, architecture, dtype=dtype, param_dtype=param_dtype, **module_kwargs)
    expected = param_shapes(module)
    arrays = {k: np.asarray(v) for k, v in state_dict.items()}
    sources, report = plan_params(arrays, get_family(config.model_type).key_table, expected,
                                  shape_of=lambda k: arrays[k].shape, source="state dict")
    # jnp.array copies: a CPU device_put may alias the caller's buffers (torch's .numpy() views),
    # which the caller can change later (a torch training step updates running statistics in place)
    flat = read_sources(arrays.__getitem__, sources, expected, dtype=_np_dtype(param_dtype),
                        source="state dict", place=jnp.array)
    flat.update(init_flat(module, rng, report.missing))
    return Loaded(module, pack_variables(flat), report)

def _load_onto_mesh(directory: Path, module: nn.Module, mesh: jax.sharding.Mesh, *, param_dtype, rng, rules,
                    on_tensor: Callable[[str], None] | None,
                    ignore_mismatched_sizes: bool) -> tuple[dict[str, jax.Array], ConversionReport]:
    """The flat variables of ``directory`` for ``module`` as arrays sharded over ``mesh`` by
    ``rules``, and the report. Every shape is checked from the file headers before anything
    is read; each parameter is built with ``jax.make_array_from_callback``, so each device
    asks for its own slice, read from the memory-mapped safetensors file as a slice of the
    PyTorch tensor (a kernel is a transposed weight, so its slice is a transposed slice),
    converted and cast (``param_dtype``; None keeps the checkpoint's) on its own. The host
    holds about one parameter at a time and no device more than its shards; on many hosts
    each process reads the slices of its own devices. Parameters the checkpoint may lack (a
    fresh task head) are initialised from ``rng`` directly into their shards."""
    abstract = abstract_variables(module)
    shardings = flatten_variables(parallel.param_shardings(module, mesh, rules, abstract=abstract))
    expected = param_shapes(module, abstract=abstract)
    with open_weights(directory) as ckpt:
        sources, report = plan_checkpoint(ckpt, module, expected, ignore_mismatched_sizes=ignore_mismatched_sizes)
        flat = {}
        for path, src in sources.items():
            flat[path] = _sharded_array(ckpt, src, expected[path], shardings[path], _np_dtype(param_dtype))
            if on_tensor:
                on_tensor(src.key)
    flat.update(init_flat(module, rng, report.missing, shardings))
    return flat, report

def _sharded_array(ckpt: Checkpoint, src: TensorSource, shape: tuple[int, ...],
                   sharding: jax.sharding.NamedSharding, np_dtype) -> jax.Array:
    """One parameter built shard by shard from its checkpoint tensor.

    Each distinct shard is read once (devices that replicate it share the host copy); a
    safetensors shard reads only its slice, a PyTorch pickle (which cannot be sliced in
    place) reads its tensor whole, once.
    """
    dtype = jax.dtypes.canonicalize_dtype(cast(np.empty(0, ckpt.dtype(src.key)), np_dtype).dtype)
    shards: dict[tuple, np.ndarray] = {}
    whole: list[np.ndarray] = []  # the tensor of a shard that cannot be sliced in place

    def read(index: tuple[slice, ...]) -> np.ndarray:
        bounds = tuple(s.indices(n)[:2] for s, n in zip(index, shape))
        if bounds not in shards:
            where = src.checkpoint_index(tuple(slice(a, b) for a, b in bounds))
            if ckpt.sliceable(src.key):
                value = ckpt.read_slice(src.key, where)
            else:
                if not whole:
                    whole.append(ckpt.get(src.key))
                value = whole[0][where]
            shards[bounds] = cast(src.to_flax(value), np_dtype).astype(dtype, copy=False)
        return shards[bounds]

    return jax.make_array_from_callback(tuple(shape), sharding, read, dtype=dtype)

def _stored_layout_module(directory: Path, module: nn.Module) -> nn.Module:
    """``module``, or its clone with the other ``scan_layers`` when the weights of
    ``directory`` hold its layers in the other layout (HF checkpoints: per layer; zoo
    directories: either, see :mod:`zoo.nn.scan`)."""
    layout = scan.module_layer_layout(module)
    if layout is None:
        return module
    stored = "per_layer"
    if (Path(directory) / ZOO_WEIGHTS).exists():
        with open_checkpoint(Path(directory) / ZOO_WEIGHTS) as ckpt:
            stored = scan.layout(ckpt.keys(), *layout[1:])
    if stored is None or stored == layout[0]:
        return module
    return module.clone(scan_layers=stored == "stacked")

def _to_layout(flat: Mapping[str, Any], module: nn.Module, stacked: bool, stack=np.stack) -> dict[str, Any]:
    """Flat parameters of ``module`` (either layer layout) in the stacked or per-layer one."""
    layout = scan.module_layer_layout(module)
    if layout is None:
        if stacked:
            raise ValueError(f"{type(module).__name__} has no stacked layer layout (no scan_layers option)")
        return dict(flat)
    return scan.to_layout(flat, "stacked" if stacked else "per_layer", *layout[1:], stack=stack)

@contextlib.contextmanager
def _progress_bar(directory: Path, enabled: bool):
    """Yields an ``on_tensor`` callback (or None) that advances a tqdm bar."""
    if not enabled:
        yield None
        return
    weights = directory / ZOO_WEIGHTS
    with open_checkpoint(weights if weights.exists() else directory) as ckpt:
        total, nbytes = len(ckpt), ckpt.nbytes
    if nbytes < 100 * 2**20:
        yield None
        return
    from tqdm import tqdm

    with tqdm(total=total, unit="tensor", desc=f"loading {directory.name}", file=sys.stderr) as bar:
        yield lambda _key: bar.update()

# ---------------------------------------------------------------------- saving
def _config_dict(module: nn.Module) -> dict:
    data = module.config.to_dict()
    data["architectures"] = [type(module).__name__]
    return data

# Files next to the weights that preprocessing and generation need (tokenizer, feature
# extractor, processor, generation defaults).
AUXILIARY_FILES = ("vocab.json", "tokenizer_config.json", "special_tokens_map.json", "added_tokens.json",
                   "tokenizer.json", "preprocessor_config.json", "processor_config.json", "generation_config.json",
                   "chat_template.jinja", "chat_template.json")

def auxiliary_files(directory: str | os.PathLike) -> list[Path]:
    return [Path(directory) / name for name in AUXILIARY_FILES if (Path(directory) / name).is_file()]

def save_pretrained(out_dir: str | os.PathLike, module: nn.Module, variables: Mapping,
                    extra_files: Sequence[str | os.PathLike] = (), *, stacked: bool = False) -> Path:
    """Write ``config.json`` + ``flax_model.safetensors`` (+ copies of ``extra_files``); all or nothing.

    The encoder layers are written per layer (``encoder/layer_3/...``, the portable layout)
    whether or not the model scans them; ``stacked=True`` writes them stacked
    (``encoder/layers/...`` with a leading layer axis) instead. ``from_pretrained`` reads
    both into either kind of model."""
    flat = {k: np.asarray(v) for k, v in flatten_variables(nn.unbox(variables), type(module).__name__).items()}
    return _save_flat(out_dir, module, _to_layout(flat, module, stacked), extra_files)

def convert(src: str | os.PathLike, out_dir: str | os.PathLike, architecture: str | None = None, *,
            param_dtype=None, progress: bool = False) -> tuple[nn.Module, ConversionReport]:
    """HF checkpoint -> zoo directory, streamed: the output file's header is planned from the
    checkpoint's headers, then each tensor is read, converted, cast and written before the next
    one is read (peak memory: about one tensor; pages of the memory-mapped input and output
    aside). ``param_dtype=None`` keeps the checkpoint's dtype (bfloat16 stays bfloat16)."""
    directory = resolve_checkpoint(src)
    _, config = read_config(directory)
    np_dtype = _np_dtype(param_dtype)
    with open_weights(directory) as ckpt:
        module = build_model(config, architecture,
                             param_dtype=checkpoint_dtype(ckpt) if param_dtype is None else param_dtype)
        expected = param_shapes(module)
        sources, report = plan_checkpoint(ckpt, module, expected)
        fresh = {p: np.asarray(v) for p, v in init_flat(module, 0, report.missing).items()}
        specs = {p: (cast_dtype(ckpt.dtype(s.key), np_dtype), expected[p]) for p, s in sources.items()}
        specs.update({p: (v.dtype, v.shape) for p, v in fresh.items()})
        with _progress_bar(directory, enabled=progress) as on_tensor:
            def load(path: str) -> np.ndarray:
                if path in fresh:
                    return fresh[path]
                value = read_source(ckpt.get, sources[path], expected, dtype=np_dtype, source=ckpt.path)
                if on_tensor:
                    on_tensor(sources[path].key)
                return value

            _write_zoo_dir(out_dir, module, lambda file: save_safetensors_streamed(
                specs, load, file, metadata=_zoo_metadata(module)), auxiliary_files(directory))
    return module, report

def _zoo_metadata(module: nn.Module) -> dict[str, str]:
    return {"format": "zoo-flax", "architecture": type(module).__name__}

def _save_flat(out_dir, module: nn.Module, flat: Mapping[str, np.ndarray],
               extra_files: Sequence[str | os.PathLike]) -> Path:
    return _write_zoo_dir(out_dir, module, lambda file: save_safetensors(flat, file, _zoo_metadata(module)),
                          extra_files)

def _write_zoo_dir(out_dir, module: nn.Module, write_weights: Callable[[Path], None],
                   extra_files: Sequence[str | os.PathLike]) -> Path:
    """config.json + the weights (``write_weights(path)``) + copies of ``extra_files``; all or nothing."""
    with atomic_directory(out_dir) as tmp:
        tmp = Path(tmp)
        for path in extra_files:
            shutil.copyfile(path, tmp / Path(path).name)
        (tmp / CONFIG_NAME).write_text(json.dumps(_config_dict(module), indent=2, sort_keys=True) + "\n")
        write_weights(tmp / ZOO_WEIGHTS)
    return Path(out_dir)

def export_pytorch(out_dir: str | os.PathLike, module: nn.Module, variables: Mapping, *,
                   include_aliases: bool = False, extra_files: Sequence[str | os.PathLike] = ()) -> Path:
    """Write a HF PyTorch checkpoint (``config.json`` + ``model.safetensors``); scanned
    (stacked) layers are written per layer, as HF's keys."""
    family = get_family(module.config.model_type)
    flat = {k: np.asarray(v) for k, v in flatten_variables(nn.unbox(variables), type(module).__name__).items()}
    flat = _to_layout(flat, module, stacked=False)
    state = flax_to_torch(flat, family.key_table, include_aliases=include_aliases)
    with atomic_directory(out_dir) as tmp:
        tmp = Path(tmp)
        for path in extra_files:
            shutil.copyfile(path, tmp / Path(path).name)
        (tmp / CONFIG_NAME).write_text(json.dumps(_config_dict(module), indent=2, sort_keys=True) + "\n")
        save_safetensors(state, tmp / "model.safetensors", metadata={"format": "pt"})
    return Path(out_dir)

__all__ = [
    "CheckpointError", "Loaded", "auxiliary_files", "build_model", "checkpoint_dtype", "convert", "export_pytorch",
    "from_pretrained", "from_state_dict", "load_flat_params", "open_weights", "plan_checkpoint", "read_config",
    "resolve_checkpoint", "save_pretrained",
]
