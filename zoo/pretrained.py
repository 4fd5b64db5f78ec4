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
import re
import shutil
import sys
import warnings
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from converters.errors import CheckpointError, CheckpointNotFoundError, CorruptCheckpointError, KeyMappingError
from converters.mapping import (
    ConversionReport,
    TensorSource,
    cast_dtype,
    check_shape,
    flax_to_torch,
    plan_torch_to_flax,
    read_source,
    read_sources,
)
from converters.readers import Checkpoint, open_checkpoint
from converters.writers import atomic_directory, save_safetensors, save_safetensors_streamed
from zoo.config import ZooConfig
from zoo.nn import scan
from zoo.registry import Family, UnsupportedModelError, family_of_architecture, get_family

ZOO_WEIGHTS = "flax_model.safetensors"
CONFIG_NAME = "config.json"
_HUB_PATTERNS = ["config.json", "*.safetensors", "*.safetensors.index.json", "pytorch_model*.bin",
                 "pytorch_model.bin.index.json", "vocab.json", "tokenizer.json", "*.txt"]
_DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float16": jnp.float16}


def as_dtype(dtype) -> Any:
    """``"bfloat16"`` / ``jnp.bfloat16`` / ``np.float32`` -> a jnp dtype (clear error otherwise)."""
    if isinstance(dtype, str):
        if dtype not in _DTYPES:
            raise ValueError(f"dtype {dtype!r} is not supported; choose one of {', '.join(_DTYPES)}")
        return _DTYPES[dtype]
    if jnp.dtype(dtype).name not in _DTYPES:
        raise ValueError(f"dtype {jnp.dtype(dtype).name!r} is not supported; choose one of {', '.join(_DTYPES)}")
    return jnp.dtype(dtype).type


# ------------------------------------------------------------------ parameter trees
def flatten(params: Mapping) -> dict[str, Any]:
    """Nested dict -> ``{"a/b/kernel": leaf}``."""
    flat = {}
    for key, value in params.items():
        if isinstance(value, Mapping):
            for sub, leaf in flatten(value).items():
                flat[f"{key}/{sub}"] = leaf
        else:
            flat[key] = value
    return flat


def unflatten(flat: Mapping[str, Any]) -> dict:
    tree: dict = {}
    for path, leaf in flat.items():
        node = tree
        *parents, name = path.split("/")
        for p in parents:
            node = node.setdefault(p, {})
        node[name] = leaf
    return tree


# Collections besides "params" that checkpoints carry (batch-norm running statistics).
STATE_COLLECTIONS = ("batch_stats",)


def pack_variables(flat: Mapping[str, Any]) -> dict:
    """Flat ``{"path": leaf}`` (state under ``"batch_stats/..."``) -> the tree a model applies.

    For a model with parameters only this is the params tree (``model.apply({"params": tree})``).
    For a model with batch-norm statistics it is the variables dict ``{"params": ...,
    "batch_stats": ...}`` (``model.apply(tree)``); :func:`as_variables` turns either into
    what ``apply`` takes.
    """
    tree = unflatten(flat)
    state = {c: tree.pop(c) for c in STATE_COLLECTIONS if c in tree}
    return {"params": tree, **state} if state else tree


def is_variables(tree: Mapping) -> bool:
    """True for a variables dict (``{"params": ..., "batch_stats": ...}``) rather than a params tree."""
    return "params" in tree and set(tree) <= {"params", *STATE_COLLECTIONS}


def as_variables(tree: Mapping) -> dict:
    """A params tree or a variables dict -> the variables dict for ``model.apply``."""
    return dict(tree) if is_variables(tree) else {"params": tree}


def flatten_variables(tree: Mapping) -> dict[str, Any]:
    """Inverse of :func:`pack_variables`: params paths bare, state paths prefixed by their collection."""
    if not is_variables(tree):
        return flatten(tree)
    flat = flatten(tree["params"])
    for c in STATE_COLLECTIONS:
        flat.update({f"{c}/{k}": v for k, v in flatten(tree.get(c, {})).items()})
    return flat


def _init(module: nn.Module, rng: jax.Array) -> dict:
    """``module.init`` on its dummy inputs (their warnings, e.g. about short inputs, muted)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return module.init(rng, **type(module).dummy_inputs(module.config))


def _collections(variables: Mapping) -> dict:
    """Variables as the packed tree (params only, or params + state collections)."""
    variables = nn.unbox(variables)
    state = {c: variables[c] for c in STATE_COLLECTIONS if c in variables}
    return {"params": variables["params"], **state} if state else variables["params"]


def abstract_variables(module: nn.Module) -> dict:
    """``module.init``'s variables as shapes only (``jax.ShapeDtypeStruct`` leaves, still boxed
    with their logical axis names); nothing is allocated."""
    return jax.eval_shape(lambda: _init(module, jax.random.key(0)))


def param_shapes(module: nn.Module, *, state: bool = True,
                 abstract: Mapping | None = None) -> dict[str, tuple[int, ...]]:
    """Flax path -> shape of every parameter (and, with ``state``, of every batch statistic
    under ``"batch_stats/..."``), without allocating anything (``abstract``: the
    :func:`abstract_variables` of ``module`` if already at hand)."""
    abstract = _collections(abstract_variables(module) if abstract is None else abstract)
    if not state and is_variables(abstract):
        abstract = abstract["params"]
    return {p: tuple(v.shape) for p, v in flatten_variables(abstract).items()}


def init_params(module: nn.Module, rng: jax.Array | int = 0) -> dict:
    """Random parameters (HF's initialisers), unboxed; a variables dict for models with
    batch statistics (see :func:`pack_variables`)."""
    rng = jax.random.key(rng) if isinstance(rng, int) else rng
    return _collections(jax.jit(lambda key: _init(module, key))(rng))


def init_flat(module: nn.Module, rng: jax.Array | int, paths: Sequence[str],
              shardings: Mapping[str, jax.sharding.Sharding] | None = None) -> dict[str, jax.Array]:
    """Fresh values of the parameters at ``paths`` only (flat paths, state under
    ``"batch_stats/..."``), the same values :func:`init_params` gives them; the other
    initialisers are never run. ``shardings`` ({path: Sharding}) places each one (each
    device then holds only its shard)."""
    paths = list(paths)
    if not paths:
        return {}
    rng = jax.random.key(rng) if isinstance(rng, int) else rng

    def pick(key):
        flat = flatten_variables(_collections(_init(module, key)))
        return {p: flat[p] for p in paths}

    out = None if shardings is None else {p: shardings[p] for p in paths}
    return jax.jit(pick, out_shardings=out)(rng)


def logical_axes(module: nn.Module) -> dict:
    """The logical axis names of every parameter (a ``PartitionSpec`` tree)."""
    return nn.get_partition_spec(abstract_variables(module))["params"]


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
    family = get_family(data.get("model_type"))
    return family, family.config_class.from_dict(data)


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


def plan_params(ckpt: Checkpoint, module: nn.Module, expected: Mapping[str, tuple[int, ...]], *,
                ignore_mismatched_sizes: bool = False) -> tuple[dict[str, TensorSource], ConversionReport]:
    """Flax path -> :class:`TensorSource` of every parameter of ``module`` that ``ckpt``
    provides (``expected``: :func:`param_shapes` of ``module``), every shape checked from the
    file headers; no tensor is read. Raises :class:`KeyMappingError` on missing parameters
    (e.g. a checkpoint of another family) or shapes that do not fit, unless
    ``ignore_mismatched_sizes``: then those are initialised instead (``report.mismatched``)."""
    if Path(ckpt.path).name != ZOO_WEIGHTS:
        family = get_family(module.config.model_type)
        return plan_torch_to_flax(ckpt.keys(), family.key_table, expected, shape_of=ckpt.shape,
                                  source=str(Path(ckpt.path).parent),
                                  ignore_mismatched_sizes=ignore_mismatched_sizes)
    # a zoo directory: Flax paths already; another head of the family loads the same body
    # (the base-model prefix added or removed), and a head's own parameters may be missing
    table = get_family(module.config.model_type).key_table
    prefix = table.base_model_prefix + "/"
    expects_prefix = any(p.startswith(prefix) for p in expected)
    keys = list(ckpt.keys())
    has_prefix = any(k.startswith(prefix) for k in keys)
    report = ConversionReport(prefix=None if expects_prefix == has_prefix or not keys else
                              "added" if expects_prefix else "removed")
    sources, mismatched = {}, set()
    for key in keys:
        path = key
        if expects_prefix and not has_prefix and key.split("/")[0] not in STATE_COLLECTIONS:
            path = prefix + key
        elif has_prefix and not expects_prefix:
            path = key[len(prefix):] if key.startswith(prefix) else None
        if path not in expected:
            report.unused.append(key)
            continue
        if ignore_mismatched_sizes and tuple(ckpt.shape(key)) != tuple(expected[path]):
            report.mismatched.append(f"{key} {tuple(ckpt.shape(key))} (the model's {path} is "
                                     f"{tuple(expected[path])})")
            mismatched.add(path)
            continue
        sources[path] = TensorSource(key, path, torch_layout=False)
        check_shape(sources[path], ckpt.shape(key), expected, ckpt.path)
    allowed = [re.compile(p) for p in table.init_if_missing]
    missing = []
    for path in expected:
        if path in sources:
            continue
        if path in mismatched or any(a.search(path) for a in allowed):
            report.missing.append(path)
        else:
            missing.append(path)
    if missing:
        raise KeyMappingError(f"{ckpt.path}: {len(missing)} parameters missing (wrong family or architecture?): "
                              f"{', '.join(missing[:8])}" + (" ..." if len(missing) > 8 else ""))
    return sources, report


def checkpoint_dtype(ckpt: Checkpoint):
    """The storage dtype of most floating tensors of ``ckpt`` (float32 when it is none of
    float32, bfloat16, float16): the module's ``param_dtype`` when the checkpoint's is kept."""
    counts: dict[str, int] = {}
    for key in ckpt.keys():
        name = np.dtype(ckpt.dtype(key)).name
        if name in _DTYPES or name == "float64":
            counts[name] = counts.get(name, 0) + 1
    best = max(counts, key=counts.get, default="float32")
    return _DTYPES.get(best, jnp.float32)


def load_flat_params(
    directory: Path,
    module: nn.Module,
    *,
    param_dtype=None,
    on_tensor: Callable[[str], None] | None = None,
    place: Callable[[np.ndarray], Any] | None = None,
    ignore_mismatched_sizes: bool = False,
) -> tuple[dict[str, np.ndarray], ConversionReport]:
    """Read (and convert if needed) the weights of ``directory`` for ``module`` as numpy
    (or, with ``place``, as what ``place`` makes of each tensor right after reading it)."""
    expected = param_shapes(module)
    with open_weights(directory) as ckpt:
        sources, report = plan_params(ckpt, module, expected, ignore_mismatched_sizes=ignore_mismatched_sizes)
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
    return_report: bool = False,
    progress: bool = False,
    mesh: jax.sharding.Mesh | None = None,
    axis_rules=None,
    config: ZooConfig | None = None,
    ignore_mismatched_sizes: bool = False,
    **module_kwargs,
):
    """``(model, params)`` from a HF PyTorch checkpoint, a zoo directory or a hub repo id.

    ``params`` is the params tree (``model.apply({"params": params}, ...)``), or for a
    model with batch-norm statistics the variables dict ``{"params", "batch_stats"}``
    (``model.apply(params, ...)``); ``as_variables(params)`` gives the dict in both cases.

    progress: show a progress bar on stderr for checkpoints over 100 MB.
    dtype: compute dtype; param_dtype: storage dtype of the returned params (None keeps
    the checkpoint's: a bfloat16 checkpoint stays bfloat16).
    mesh: load straight onto this device mesh (:func:`zoo.parallel.make_mesh`): every
    parameter is sharded by its logical axis names (``axis_rules``, default
    :data:`zoo.parallel.LOGICAL_AXIS_RULES`) and each device reads only its slice of the
    checkpoint, so a model larger than one device's memory loads.
    Parameters a task head needs but the checkpoint lacks (declared by the family's key
    table, e.g. a classifier on top of a pretrained body) are initialised from ``rng``
    and listed in the report (``return_report=True`` returns ``(model, params, report)``).
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
            from zoo import parallel

            params, report = parallel.load_onto_mesh(directory, stored, mesh, param_dtype=param_dtype, rng=rng,
                                                     rules=axis_rules, on_tensor=on_tensor,
                                                     ignore_mismatched_sizes=ignore_mismatched_sizes)
            if stored is not module:  # restacked on the devices, then laid out as the module's parameters
                shardings = flatten_variables(parallel.param_shardings(
                    module, mesh, parallel.LOGICAL_AXIS_RULES if axis_rules is None else axis_rules))
                flat = _to_layout(flatten_variables(params), module, module.scan_layers, stack=jnp.stack)
                params = pack_variables({p: jax.device_put(v, shardings[p]) for p, v in flat.items()})
            return (module, params, report) if return_report else (module, params)
        # each tensor goes to the device as soon as it is read: the model is never in memory twice
        # (a layout conversion restacks on the host first)
        flat, report = load_flat_params(directory, stored, param_dtype=param_dtype, on_tensor=on_tensor,
                                        place=jax.device_put if stored is module else None,
                                        ignore_mismatched_sizes=ignore_mismatched_sizes)
    if stored is not module:
        flat = {p: jax.device_put(v) for p, v in _to_layout(flat, module, module.scan_layers).items()}
    flat.update(init_flat(module, rng, report.missing))
    params = pack_variables(flat)
    return (module, params, report) if return_report else (module, params)


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


# Files next to the weights that preprocessing needs (tokenizer, feature extractor).
AUXILIARY_FILES = ("vocab.json", "tokenizer_config.json", "special_tokens_map.json", "added_tokens.json",
                   "tokenizer.json", "preprocessor_config.json")


def auxiliary_files(directory: str | os.PathLike) -> list[Path]:
    return [Path(directory) / name for name in AUXILIARY_FILES if (Path(directory) / name).is_file()]


def save_pretrained(out_dir: str | os.PathLike, module: nn.Module, params: Mapping,
                    extra_files: Sequence[str | os.PathLike] = (), *, stacked: bool = False) -> Path:
    """Write ``config.json`` + ``flax_model.safetensors`` (+ copies of ``extra_files``); all or nothing.

    The encoder layers are written per layer (``encoder/layer_3/...``, the portable layout)
    whether or not the model scans them; ``stacked=True`` writes them stacked
    (``encoder/layers/...`` with a leading layer axis) instead. ``from_pretrained`` reads
    both into either kind of model."""
    flat = {k: np.asarray(v) for k, v in flatten_variables(nn.unbox(params)).items()}
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
        sources, report = plan_params(ckpt, module, expected)
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


def export_pytorch(out_dir: str | os.PathLike, module: nn.Module, params: Mapping, *,
                   include_aliases: bool = False, extra_files: Sequence[str | os.PathLike] = ()) -> Path:
    """Write a HF PyTorch checkpoint (``config.json`` + ``model.safetensors``); scanned
    (stacked) layers are written per layer, as HF's keys."""
    family = get_family(module.config.model_type)
    flat = {k: np.asarray(v) for k, v in flatten_variables(nn.unbox(params)).items()}
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
    "CheckpointError", "as_dtype", "as_variables", "flatten_variables", "is_variables", "pack_variables", "build_model", "export_pytorch", "flatten", "from_pretrained",
    "abstract_variables", "init_flat", "init_params", "load_flat_params", "logical_axes", "open_weights",
    "param_shapes", "plan_params", "read_config",
    "resolve_checkpoint", "save_pretrained", "unflatten",
]
