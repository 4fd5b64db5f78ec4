"""Device meshes, logical-axis sharding rules, and the shardings of variables and batches.

Every parameter of every model carries logical axis names (``("embed", "heads")`` for a
query kernel ``[hidden, heads * head_dim]``); :data:`LOGICAL_AXIS_RULES` maps them to the
three mesh axes:

* ``data``: pure data parallelism (parameters replicated, the batch split);
* ``fsdp``: the batch split too, and parameters sharded along their ``embed``-like axis
  (ZeRO-3 / fully sharded data parallelism);
* ``tensor``: parameters sharded along heads / mlp / vocab (Megatron-style tensor
  parallelism).

    mesh = zoo.parallel.make_mesh("data=2,fsdp=2,tensor=2")          # 8 devices
    model, variables = zoo.from_pretrained(path, mesh=mesh, param_dtype=None)
    batch = zoo.parallel.shard_batch({"input_ids": ids, "attention_mask": mask}, mesh)
    out = jax.jit(model.apply)(variables, **batch)

This module is pure sharding: it computes layouts from shapes and logical names and
places arrays that already exist. Reading a checkpoint slice by slice onto a mesh is the
loader's job (:func:`zoo.from_pretrained` with ``mesh=``, in :mod:`zoo.pretrained`), which
asks this module where each slice goes. :func:`shard_batch` assumes this process holds
the whole batch; on many hosts see :func:`zoo.distributed.global_batch`.
"""

from __future__ import annotations

import contextlib
import json
import math
from collections.abc import Mapping, Sequence
from typing import Any

import flax.linen as nn
import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from zoo.initialization import abstract_variables, param_shapes
from zoo.tree import STATE_COLLECTIONS, check_variables, flatten, flatten_variables, pack_variables

MESH_AXES = ("data", "fsdp", "tensor")
BATCH_AXES = ("data", "fsdp")  # the batch dimension is split over both

# Logical axis name -> mesh axis, in order of precedence (Flax's rule format, so the table
# also works with ``nn.logical_axis_rules``). For each parameter the rules are tried in
# order; a rule applies to a dimension only if its mesh axis is not already used by
# another dimension of the same parameter AND divides the dimension's size; otherwise a
# later rule for the same name is tried, and a dimension no rule applies to is
# replicated. So a tiny model with odd sizes (intermediate_size=37) is replicated along
# that axis instead of failing. A name mapped to None is always replicated.
LOGICAL_AXIS_RULES: tuple[tuple[str, str | tuple[str, ...] | None], ...] = (
    ("batch", BATCH_AXES),     # activations: the batch dimension
    ("vocab", "tensor"),       # word embeddings [vocab, embed], LM-head bias/kernel
    ("heads", "tensor"),       # q/k/v kernels [embed, heads*head_dim], output [heads*head_dim, embed]
    ("mlp", "tensor"),         # feed-forward [embed, mlp] and [mlp, embed]
    ("embed", "fsdp"),         # the hidden size: every embedding, kernel, norm
    ("embed_out", "tensor"),   # a square projection's output [embed, embed_out] (pooler, LM transform)
    ("embed_out", "fsdp"),     # ... or its input when tensor is taken ([mlp, embed_out])
    ("mlp_out", "fsdp"),       # X-vector TDNN [mlp, mlp_out]
    ("conv_out", "tensor"),    # conv kernels [*k, conv_in, conv_out] and their biases / norms
    ("conv_in", "fsdp"),
    ("kv", None),              # the per-head dimension
    ("classes", None),         # classifier outputs (a handful of labels)
    ("conv_kernel", None),     # weight-norm gains over the kernel axis
    ("layers", None),          # the leading layer axis of scanned (stacked) layers; layer weights
)


# ------------------------------------------------------------------------------- mesh
def make_mesh(spec: str | Mapping[str, int] = "", devices: Sequence[jax.Device] | None = None) -> Mesh:
    """A mesh with axes ``("data", "fsdp", "tensor")`` from their sizes.

    spec: ``"data=2,fsdp=2,tensor=2"`` or ``{"fsdp": 8}``; an axis left out has size 1.
    devices: the devices to lay out (default ``jax.devices()``); the sizes must multiply
      to their number.
    Raises ValueError on an unknown axis, a malformed spec or a size product that does
    not match the device count.
    """
    sizes = _parse_mesh_spec(spec)
    devices = list(jax.devices() if devices is None else devices)
    shape = tuple(sizes.get(axis, 1) for axis in MESH_AXES)
    if math.prod(shape) != len(devices):
        raise ValueError(
            f"mesh {_format_sizes(dict(zip(MESH_AXES, shape)))} needs {math.prod(shape)} devices, "
            f"but {len(devices)} {'is' if len(devices) == 1 else 'are'} given; "
            f"the axis sizes must multiply to the device count"
        )
    try:  # topology-aware order (GPU/TPU interconnect) where jax knows one
        from jax.experimental import mesh_utils

        grid = mesh_utils.create_device_mesh(shape, devices)
    except Exception:
        grid = np.array(devices, dtype=object).reshape(shape)
    return Mesh(grid, MESH_AXES)


def _parse_mesh_spec(spec: str | Mapping[str, int]) -> dict[str, int]:
    if isinstance(spec, str):
        items = []
        for part in (p.strip() for p in spec.split(",")):
            if not part:
                continue
            name, eq, size = part.partition("=")
            if not eq or not size.strip().lstrip("-").isdigit():
                raise ValueError(f"mesh spec {spec!r}: {part!r} is not AXIS=SIZE (e.g. 'data=2,fsdp=2,tensor=2')")
            items.append((name.strip(), int(size)))
    elif isinstance(spec, Mapping):
        items = list(spec.items())
    else:
        raise TypeError(f"mesh spec must be a string like 'data=2,tensor=4' or a dict, not {type(spec).__name__}")
    sizes: dict[str, int] = {}
    for name, size in items:
        if name not in MESH_AXES:
            raise ValueError(f"unknown mesh axis {name!r}; the axes are {', '.join(MESH_AXES)}")
        if name in sizes:
            raise ValueError(f"mesh axis {name!r} is given twice")
        if not isinstance(size, (int, np.integer)) or isinstance(size, bool) or size < 1:
            raise ValueError(f"mesh axis {name!r} must have a positive integer size, got {size!r}")
        sizes[name] = int(size)
    return sizes


def _format_sizes(sizes: Mapping[str, int]) -> str:
    return ",".join(f"{k}={v}" for k, v in sizes.items())


# ------------------------------------------------------------------------ partitioning
def logical_to_spec(names: Sequence[str | None], shape: Sequence[int], mesh: Mesh,
                    rules=LOGICAL_AXIS_RULES, *, what: str = "array") -> PartitionSpec:
    """The ``PartitionSpec`` of an array of ``shape`` whose dimensions have logical ``names``.

    Rules apply as described at :data:`LOGICAL_AXIS_RULES`: in order of precedence, a mesh
    axis at most once per array, and only where its size divides the dimension (the
    dimension is replicated otherwise). ``what`` names the array in errors. Raises
    ValueError for a logical name no rule mentions or a rule naming an axis the mesh lacks.
    """
    names = tuple(names)
    known = {name for name, _ in rules}
    unknown = [n for n in names if n is not None and n not in known]
    if unknown:
        raise ValueError(
            f"{what}: logical axis {unknown[0]!r} has no sharding rule; add it to the rules "
            f"(zoo.parallel.LOGICAL_AXIS_RULES) with one of {', '.join(MESH_AXES)} or None"
        )
    result: list[Any] = [None] * len(names)
    decided = [n is None for n in names]
    used: set[str] = set()
    for rule_name, mesh_axes in rules:
        for i, name in enumerate(names):
            if name != rule_name or decided[i]:
                continue
            if mesh_axes is None:
                decided[i] = True
                continue
            axes = (mesh_axes,) if isinstance(mesh_axes, str) else tuple(mesh_axes)
            missing = [a for a in axes if a not in mesh.shape]
            if missing:
                raise ValueError(f"sharding rule {rule_name!r} -> {mesh_axes!r}: the mesh has no axis "
                                 f"{missing[0]!r} (its axes: {', '.join(mesh.axis_names)})")
            if used.intersection(axes) or shape[i] % math.prod(mesh.shape[a] for a in axes):
                continue
            result[i], decided[i] = mesh_axes, True
            used.update(axes)
    return PartitionSpec(*result)


def param_shardings(module: nn.Module, mesh: Mesh, rules=LOGICAL_AXIS_RULES, *,
                    abstract: Mapping | None = None) -> dict:
    """A ``NamedSharding`` per variable of ``module``, in the variables dict that
    :func:`zoo.init_params` and :func:`zoo.from_pretrained` give (``{"params": ...}``, plus
    ``"batch_stats"`` replicated). Nothing is allocated (``abstract``: the
    :func:`zoo.initialization.abstract_variables` of ``module`` if already at hand). Raises
    ValueError for a logical axis name that has no rule."""
    abstract = abstract_variables(module) if abstract is None else abstract
    flat = {}
    for path, leaf in flatten(abstract["params"]).items():
        if isinstance(leaf, nn.Partitioned):
            names, shape = leaf.names, leaf.value.shape
        else:
            names, shape = (None,) * len(leaf.shape), leaf.shape
        spec = logical_to_spec(names, shape, mesh, rules, what=f"{type(module).__name__} parameter {path}")
        flat[path] = NamedSharding(mesh, spec)
    replicated = NamedSharding(mesh, PartitionSpec())
    for collection in STATE_COLLECTIONS:
        for path in flatten(nn.unbox(abstract.get(collection, {}))):
            flat[f"{collection}/{path}"] = replicated
    return pack_variables(flat)


def shard_params(variables: Mapping, module: nn.Module, mesh: Mesh, rules=LOGICAL_AXIS_RULES) -> dict:
    """``variables`` (the variables dict of ``module``) placed on ``mesh`` by :func:`param_shardings`."""
    variables = nn.unbox(variables)
    check_variables(variables, type(module).__name__)
    shardings = param_shardings(module, mesh, rules)
    return jax.device_put(dict(variables), {c: shardings[c] for c in variables})


def batch_axes(mesh: Mesh) -> tuple[str, ...]:
    """The mesh axes a batch dimension is split over: those of ``("data", "fsdp")`` ``mesh`` has."""
    return tuple(a for a in BATCH_AXES if a in mesh.shape)


def batch_sharding(mesh: Mesh) -> NamedSharding:
    """The sharding of a ``[batch, ...]`` array: rows over :func:`batch_axes`, the rest replicated."""
    return NamedSharding(mesh, PartitionSpec(batch_axes(mesh)))


def activation_rules(mesh: Mesh) -> tuple[tuple[str, Any], ...]:
    """Flax logical-axis rules for activations on ``mesh``: ``batch`` over ``("data", "fsdp")``."""
    return (("batch", batch_axes(mesh)),)


@contextlib.contextmanager
def activation_sharding(mesh: Mesh):
    """Trace (call a jitted function for the first time) inside this context to give the
    models' sharding hints a mesh: ``nn.with_logical_constraint`` calls in the zoo's layers
    (the embedding lookup keeps the batch split, see :mod:`zoo.nn.layers`) resolve by
    :func:`activation_rules`. Outside it they do nothing. :func:`zoo.train.make_train_step`
    uses it; for your own jitted forward::

        with zoo.parallel.activation_sharding(mesh):
            logits = forward(params, batch)
    """
    with jax.set_mesh(mesh), nn.logical_axis_rules(activation_rules(mesh)):
        yield


def shard_batch(batch: Any, mesh: Mesh) -> Any:
    """Every array of ``batch`` (any pytree) placed on ``mesh`` with its leading (batch)
    dimension split over ``("data", "fsdp")``: ``[B, ...]`` -> ``[B / (data * fsdp), ...]``
    per device, replicated over ``tensor``. Scalars are replicated. Raises ValueError when
    a batch dimension is not divisible by ``data * fsdp``."""
    axes = batch_axes(mesh)
    n = math.prod(mesh.shape[a] for a in axes)

    def put(x):
        x = x if isinstance(x, jax.Array) else np.asarray(x)
        if x.ndim and x.shape[0] % n:
            raise ValueError(f"an input of shape {tuple(x.shape)} has batch size {x.shape[0]}, which "
                             f"{' x '.join(axes)} = {n} devices cannot split evenly")
        return jax.device_put(x, NamedSharding(mesh, PartitionSpec(axes) if x.ndim else PartitionSpec()))

    return jax.tree.map(put, batch)


__all__ = [
    "BATCH_AXES", "LOGICAL_AXIS_RULES", "MESH_AXES", "activation_rules", "activation_sharding", "batch_axes", "batch_sharding", "logical_to_spec",
    "make_mesh", "param_shardings", "shard_batch", "shard_params",
]


# ------------------------------------------------------------------- partition tables
def partition_table(module: nn.Module, mesh: Mesh | jax.sharding.AbstractMesh, rules=LOGICAL_AXIS_RULES, *,
                    compact: bool = False) -> dict[str, dict]:
    """How every parameter of ``module`` is laid out on ``mesh``, as plain JSON-able data.

    ``{path: {"shape": [...], "axes": [logical name or None per dim],
    "spec": [mesh axis (a list for several) or None per dim]}}``, with the paths of
    :func:`zoo.initialization.param_shapes` (state collections such as ``batch_stats/...``
    included, their spec replicated). The specs are those of :func:`param_shardings`.
    Built from shapes only (nothing is allocated), so ``mesh`` may be a
    ``jax.sharding.AbstractMesh`` of any size, e.g. the production mesh on a laptop::

        mesh = jax.sharding.AbstractMesh((2, 4, 2), zoo.parallel.MESH_AXES)
        table = zoo.parallel.partition_table(zoo.build_model(zoo.load_preset("idefics-9b")), mesh)

    ``compact=True`` folds repeated layers: see :func:`fold_indices`.
    ``tests/golden/partition_specs/`` holds such tables (compact) for every architecture.
    """
    abstract = abstract_variables(module)
    shardings = flatten_variables(param_shardings(module, mesh, rules, abstract=abstract))
    names = {path: leaf.names for path, leaf in flatten(abstract["params"]).items()
             if isinstance(leaf, nn.Partitioned)}
    shapes = param_shapes(module, abstract=abstract)
    table = {}
    for path, sharding in shardings.items():
        shape = [int(n) for n in shapes[path]]
        spec = list(sharding.spec) + [None] * (len(shape) - len(sharding.spec))
        table[path] = {
            "shape": shape,
            "axes": list(names.get(path, (None,) * len(shape))),
            "spec": [list(a) if isinstance(a, tuple) else a for a in spec],
        }
    return fold_indices(table) if compact else table


def fold_indices(table: Mapping[str, Any]) -> dict[str, Any]:
    """``table`` (path -> JSON-able entry) with numbered modules folded, losslessly.

    A path segment other than the last with numeric parts (``layer_3``, ``blocks_0_1``)
    is a slot; paths that differ only in one slot and have identical entries become one
    path whose slot lists its indices: ``encoder/layer_{0..11}/output/dense/kernel``,
    ``gated_cross_attn_layers_{0,4}``, ``blocks_{0..5}_1``; an index list holds ints and
    inclusive ``a..b`` ranges, comma-separated. Entries that differ stay apart
    (``layer_{0..2,4..11}`` and ``layer_3``), so the folded table expands back to
    ``table`` exactly. Slots fold from the right (layers within a stage first, then
    stages), deterministically.
    """
    table = dict(table)
    slots = {(i, j) for p in table for i, seg in enumerate(p.split("/")[:-1])
             for j, part in enumerate(seg.split("_")) if j and part.isdigit()}
    for i, j in sorted(slots, reverse=True):
        groups: dict[str, dict[str, list[int]]] = {}
        for path in list(table):
            segs = path.split("/")
            parts = segs[i].split("_") if i < len(segs) - 1 else []
            if j >= len(parts) or not parts[j].isdigit():
                continue
            index, parts[j] = int(parts[j]), "{}"
            template = "/".join(segs[:i] + ["_".join(parts)] + segs[i + 1:])
            key = json.dumps(table[path], sort_keys=True)
            groups.setdefault(template, {}).setdefault(key, []).append(index)
        for template, classes in groups.items():
            for indices in classes.values():
                if len(indices) < 2:
                    continue
                segs = template.split("/")
                entry = None
                for index in indices:
                    path = "/".join(segs[:i] + [segs[i].replace("{}", str(index), 1)] + segs[i + 1:])
                    entry = table.pop(path)
                label = "{" + _format_indices(sorted(indices)) + "}"
                table["/".join(segs[:i] + [segs[i].replace("{}", label, 1)] + segs[i + 1:])] = entry
    return dict(sorted(table.items()))


def _format_indices(indices: Sequence[int]) -> str:
    """[0, 1, 2, 4, 6, 7] -> ``"0..2,4,6,7"`` (runs of three or more as ranges)."""
    runs: list[list[int]] = []
    for n in indices:
        if runs and n == runs[-1][-1] + 1:
            runs[-1].append(n)
        else:
            runs.append([n])
    return ",".join(f"{r[0]}..{r[-1]}" if len(r) > 2 else ",".join(map(str, r)) for r in runs)


__all__ += ["fold_indices", "partition_table"]
