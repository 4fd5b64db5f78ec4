"""PyTorch state-dict keys <-> Flax parameter paths: generic rules plus one table per family.

Generic rules (both directions):

* module paths: ``encoder.layer.3.attention`` <-> ``encoder/layer_3/attention``
* ``weight`` of a Linear <-> ``kernel`` transposed; of a Conv <-> ``kernel`` with the
  spatial axes first (``[out, in, k]`` <-> ``[k, in, out]``); of a LayerNorm <-> ``scale``;
  of an Embedding <-> ``embedding``. Which one applies is read off the target tree.
* weight norm: ``parametrizations.weight.original0/1`` <-> ``weight_g``/``weight_v``.
* legacy spellings (import only, :data:`LEGACY_RENAMES`): before matching, a key is
  respelled as HF 5.23's ``legacy`` renamings do on load (``LayerNorm.gamma``/``beta`` ->
  ``LayerNorm.weight``/``bias``, ``.weight_g``/``.weight_v`` ->
  ``.parametrizations.weight.original0/1``), and the wrapper prefixes of
  ``torch.compile`` (``_orig_mod.``) and DDP (``module.``) are dropped; HF 5.23 itself
  does *not* drop those two (it initialises every parameter afresh). Each respelled key
  is listed in ``ConversionReport.renamed``; two spellings of one key in one checkpoint
  are an error. Export always writes today's spelling.
* batch norm: ``running_mean``/``running_var``/``num_batches_tracked`` <->
  ``batch_stats/<module>/mean``/``var``/``num_batches_tracked`` (Flax's ``batch_stats``
  collection; the counter is int32 in JAX and exported as PyTorch's int64).

A :class:`KeyTable` adds what the rules cannot know: renamed modules, tied weights
(aliases), buffers that may be dropped and head parameters that may be freshly
initialised. The same table runs forwards (import) and backwards (export).

Import is planned before anything is read: :func:`plan_params` gives every Flax
path a :class:`TensorSource` (checkpoint key + transpose), from which
:func:`torch_to_flax` reads whole tensors one at a time and ``zoo.parallel`` reads only
each device's slice.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable, Iterable, Mapping

import numpy as np

from converters.errors import KeyMappingError

_WEIGHT_LEAVES = ("kernel", "scale", "embedding", "weight")
_WEIGHT_NORM = {"parametrizations.weight.original0": "weight_g", "parametrizations.weight.original1": "weight_v"}
# Batch-norm running statistics live in Flax's "batch_stats" collection; flat paths of
# that collection carry it as a prefix ("batch_stats/decode_head/.../normalization/mean").
BATCH_STATS = "batch_stats"
_BATCH_STATS = {"running_mean": "mean", "running_var": "var", "num_batches_tracked": "num_batches_tracked"}
# torch weight [out, in, *spatial] -> flax kernel [*spatial, in, out]
_TO_FLAX_AXES = {2: (1, 0), 3: (2, 1, 0), 4: (2, 3, 1, 0), 5: (2, 3, 4, 1, 0)}


@dataclasses.dataclass(frozen=True)
class LegacyRename:
    """One respelling of an old checkpoint key into today's (``name`` is what reports show)."""

    name: str
    pattern: re.Pattern
    replacement: str

    def apply(self, key: str) -> str | None:
        """The respelled key, or None when the rule does not apply. Like HF's
        ``WeightRenaming``: the first match anywhere in the key, ending on a name boundary."""
        m = self.pattern.search(key)
        return None if m is None else key.replace(m.group(0), self.replacement, 1)


def _hf_rename(source: str, target: str) -> LegacyRename:
    # HF's patterns are regexes as written ("." matches any character) ending on a name boundary
    return LegacyRename(f"{source.lstrip('.')} -> {target.lstrip('.')}", re.compile(source + r"(?!\w)"), target)


# In HF 5.23's order (transformers.conversion_mapping, mapping["legacy"], applied on every load).
# Its last legacy rule (``^model.language_model.model`` of ALM checkpoints) concerns no family here.
LEGACY_RENAMES: tuple[LegacyRename, ...] = (
    LegacyRename("_orig_mod. prefix", re.compile(r"^_orig_mod\."), ""),  # torch.compile wrapper (not HF)
    LegacyRename("module. prefix", re.compile(r"^module\."), ""),  # DistributedDataParallel wrapper (not HF)
    _hf_rename("LayerNorm.gamma", "LayerNorm.weight"),
    _hf_rename("LayerNorm.beta", "LayerNorm.bias"),
    _hf_rename(".weight_g", ".parametrizations.weight.original0"),
    _hf_rename(".weight_v", ".parametrizations.weight.original1"),
)


def legacy_respelling(key: str) -> tuple[str, tuple[str, ...]]:
    """A PyTorch key in today's spelling and the names of the :data:`LEGACY_RENAMES` applied
    (wrapper prefixes are dropped as often as they occur: ``module._orig_mod.x`` -> ``x``)."""
    applied = []
    changed = True
    while changed:
        changed = False
        for rule in LEGACY_RENAMES[:2]:
            new = rule.apply(key)
            if new is not None and new:
                key, changed = new, True
                applied.append(rule.name)
    for rule in LEGACY_RENAMES[2:]:
        new = rule.apply(key)
        if new is not None:
            key = new
            applied.append(rule.name)
    return key, tuple(applied)


def _inverse(axes: tuple[int, ...]) -> tuple[int, ...]:
    return tuple(int(i) for i in np.argsort(axes))


@dataclasses.dataclass(frozen=True)
class KeyTable:
    """Per-family exceptions to the generic rules.

    base_model_prefix: attribute of the bare model inside head models (``data2vec_text``);
      bare checkpoints load into heads and head checkpoints into bare models.
    renames: ``(torch_template, flax_template)`` module-path pairs with ``{name}``
      placeholders, e.g. ``("encoder.pos_conv_embed.conv", "encoder/pos_conv")``.
    aliases: ``(torch_key, torch_key_it_duplicates)``: tied weights, dropped on import
      when the model has no separate parameter for them, restored on export on request.
    ignore_unused: regexes of checkpoint keys that may be dropped (non-persistent buffers).
    init_if_missing: regexes of Flax paths that may be absent from a checkpoint and are
      then freshly initialised (task heads on top of a pretrained body).
    """

    base_model_prefix: str
    renames: tuple[tuple[str, str], ...] = ()
    aliases: tuple[tuple[str, str], ...] = ()
    ignore_unused: tuple[str, ...] = ()
    init_if_missing: tuple[str, ...] = ()

    def _compiled_renames(self, forward: bool):
        out = []
        for torch_t, flax_t in self.renames:
            src, dst, sep = (torch_t, flax_t, r"\.") if forward else (flax_t, torch_t, "/")
            pattern = re.escape(src).replace(r"\{", "{").replace(r"\}", "}")
            pattern = re.sub(r"{(\w+)}", lambda m: f"(?P<{m.group(1)}>[^./]+)", pattern)
            out.append((re.compile(f"^{pattern}(?={sep}|$)"), dst))
        return out


@dataclasses.dataclass
class ConversionReport:
    """What a conversion did with every key."""

    unused: list[str] = dataclasses.field(default_factory=list)  # checkpoint keys nobody wanted
    missing: list[str] = dataclasses.field(default_factory=list)  # allowed-missing flax paths
    aliased: list[str] = dataclasses.field(default_factory=list)  # tied duplicates dropped
    ignored: list[str] = dataclasses.field(default_factory=list)  # declared buffers dropped
    mismatched: list[str] = dataclasses.field(default_factory=list)  # keys dropped for their shape
    prefix: str | None = None  # "added" / "removed" when the base-model prefix was adjusted
    renamed: dict[str, str] = dataclasses.field(default_factory=dict)  # legacy spelling -> today's key

    def rename_counts(self) -> dict[str, int]:
        """Keys respelled per legacy rule, in :data:`LEGACY_RENAMES` order, e.g.
        ``{"LayerNorm.gamma -> LayerNorm.weight": 8}``."""
        counts = {rule.name: 0 for rule in LEGACY_RENAMES}  # in the rules' order
        for key in self.renamed:
            for name in legacy_respelling(key)[1]:
                counts[name] += 1
        return {name: n for name, n in counts.items() if n}

    def summary(self) -> str:
        parts = []
        if self.renamed:
            rules = ", ".join(f"{name} x {n}" for name, n in self.rename_counts().items())
            parts.append(f"{len(self.renamed)} legacy keys renamed ({rules})")
        if self.prefix:
            parts.append(f"base-model prefix {self.prefix}")
        if self.unused:
            parts.append(f"{len(self.unused)} unused checkpoint keys: {', '.join(self.unused)}")
        if self.missing:
            parts.append(f"{len(self.missing)} parameters newly initialised: {', '.join(self.missing)}")
        if self.mismatched:
            parts.append(f"{len(self.mismatched)} checkpoint keys of another shape replaced: "
                         f"{', '.join(self.mismatched)}")
        if self.aliased:
            parts.append(f"{len(self.aliased)} tied duplicates dropped")
        if self.ignored:
            parts.append(f"{len(self.ignored)} buffers dropped")
        return "; ".join(parts) if parts else "all keys matched"


# ----------------------------------------------------------------------------- paths
def _module_to_flax(module: str, table: KeyTable) -> str:
    for pattern, dst in table._compiled_renames(forward=True):
        m = pattern.match(module)
        if m:
            return dst.format(**m.groupdict()) + _module_to_flax_generic(module[m.end():])
    return _module_to_flax_generic(module)


def _module_to_flax_generic(module: str) -> str:
    out: list[str] = []
    for seg in module.split("."):
        if not seg:
            continue
        if seg.isdigit() and out:
            out[-1] = f"{out[-1]}_{seg}"
        else:
            out.append(seg)
    return "/".join(out)


def _module_to_torch(module: str, table: KeyTable) -> str:
    for pattern, dst in table._compiled_renames(forward=False):
        m = pattern.match(module)
        if m:
            rest = _module_to_torch_generic(module[m.end():].lstrip("/"))
            return dst.format(**m.groupdict()) + ("." + rest if rest else "")
    return _module_to_torch_generic(module)


def _module_to_torch_generic(module: str) -> str:
    # "layer_3" -> "layer.3", "fpn1_0" -> "fpn1.0", "blocks_0_1" -> "blocks.0.1" (nested ModuleLists)
    return ".".join(_TRAILING_INDICES.sub(lambda m: m.group(1) + m.group(2).replace("_", "."), seg)
                    for seg in module.split("/") if seg)


_TRAILING_INDICES = re.compile(r"^(.*?[^_\d]\d*)((?:_\d+)+)$")


def _split_torch_key(key: str) -> tuple[str, str]:
    for spelled, leaf in _WEIGHT_NORM.items():
        if key.endswith("." + spelled):
            return key[: -len(spelled) - 1], leaf
    module, _, leaf = key.rpartition(".")
    return module, leaf


def torch_to_flax_path(key: str, table: KeyTable, expected: Mapping[str, tuple]) -> str:
    """The Flax path of a PyTorch key (``weight`` resolved against ``expected``)."""
    module, leaf = _split_torch_key(key)
    fmodule = _module_to_flax(module, table)
    join = lambda leaf_name: f"{fmodule}/{leaf_name}" if fmodule else leaf_name
    if leaf in _BATCH_STATS:
        return f"{BATCH_STATS}/{join(_BATCH_STATS[leaf])}"
    if leaf == "weight":
        for candidate in _WEIGHT_LEAVES:
            if join(candidate) in expected:
                return join(candidate)
        return join("kernel")
    return join(leaf)


def flax_to_torch_key(path: str, table: KeyTable) -> str:
    if path.startswith(BATCH_STATS + "/"):
        module, _, leaf = path[len(BATCH_STATS) + 1:].rpartition("/")
        tmodule = _module_to_torch(module, table)
        tleaf = {v: k for k, v in _BATCH_STATS.items()}[leaf]
        return f"{tmodule}.{tleaf}" if tmodule else tleaf
    module, _, leaf = path.rpartition("/")
    tmodule = _module_to_torch(module, table)
    tleaf = {"kernel": "weight", "scale": "weight", "embedding": "weight"}.get(leaf, leaf)
    tleaf = {v: k for k, v in _WEIGHT_NORM.items()}.get(tleaf, tleaf)
    return f"{tmodule}.{tleaf}" if tmodule else tleaf


# ------------------------------------------------------------------------ tensors
def flax_axes(path: str, ndim: int) -> tuple[int, ...] | None:
    """The permutation turning an ``ndim``-d PyTorch tensor into the Flax value at ``path``
    (``value = tensor.transpose(axes)``), or None when the value is stored as is."""
    if path.endswith("/kernel") or path == "kernel":
        if ndim not in _TO_FLAX_AXES:
            raise KeyMappingError(f"cannot convert a {ndim}-d weight to a kernel at {path}")
        return _TO_FLAX_AXES[ndim]
    return None


@dataclasses.dataclass(frozen=True)
class TensorSource:
    """Where one Flax parameter comes from, without reading it.

    The Flax value at ``path`` is ``checkpoint[key].transpose(self.axes(ndim))``: a Linear
    weight ``[out, in]`` becomes a kernel ``[in, out]``, a Conv weight ``[out, in, *k]`` a
    kernel ``[*k, in, out]``, anything else is kept as stored, and so is every tensor
    when ``torch_layout`` is False (a zoo directory, already in Flax layout). A slice of
    the Flax value is therefore a transposed slice of the checkpoint tensor:
    :meth:`checkpoint_index` names that slice and :meth:`to_flax` turns it, or the whole
    tensor, into Flax layout.
    """

    key: str
    path: str
    torch_layout: bool = True

    def axes(self, ndim: int) -> tuple[int, ...] | None:
        """The permutation applied to the ``ndim``-d checkpoint tensor (None: none)."""
        return flax_axes(self.path, ndim) if self.torch_layout else None

    def flax_shape(self, checkpoint_shape: tuple[int, ...]) -> tuple[int, ...]:
        axes = self.axes(len(checkpoint_shape))
        return tuple(checkpoint_shape) if axes is None else tuple(checkpoint_shape[a] for a in axes)

    def checkpoint_index(self, index: tuple[slice, ...]) -> tuple[slice, ...]:
        """The checkpoint-layout index of the Flax-layout ``index`` (one slice per dimension)."""
        axes = self.axes(len(index))
        if axes is None:
            return tuple(index)
        out = [slice(None)] * len(axes)
        for flax_dim, torch_dim in enumerate(axes):
            out[torch_dim] = index[flax_dim]
        return tuple(out)

    def to_flax(self, value: np.ndarray) -> np.ndarray:
        """A checkpoint tensor (or a slice of one, see :meth:`checkpoint_index`) in Flax layout."""
        axes = self.axes(value.ndim)
        return value if axes is None else np.ascontiguousarray(value.transpose(axes))


def to_torch_value(path: str, value: np.ndarray) -> np.ndarray:
    if path.endswith("/num_batches_tracked"):
        return value.astype(np.int64)
    if path.endswith("/kernel") or path == "kernel":
        value = np.ascontiguousarray(value.transpose(_inverse(_TO_FLAX_AXES[value.ndim])))
    return value


def cast_dtype(stored, dtype) -> np.dtype:
    """The dtype :func:`cast` gives a tensor stored as ``stored``."""
    stored = np.dtype(stored)
    if dtype is None or not np.issubdtype(stored, np.floating) and stored.name != "bfloat16":
        return stored
    return np.dtype(dtype)


def cast(value: np.ndarray, dtype) -> np.ndarray:
    """``value`` as ``dtype`` if it is floating (bfloat16 included); integers, or dtype None: unchanged."""
    return value.astype(cast_dtype(value.dtype, dtype), copy=False)


def check_shape(src: TensorSource, shape: tuple[int, ...], expected: Mapping[str, tuple], source: str) -> None:
    """Raise :class:`KeyMappingError` unless ``shape`` (Flax layout) is what the model expects."""
    want = tuple(expected[src.path])
    if tuple(shape) != want:
        raise KeyMappingError(
            f"{source}: {src.key!r} has shape {tuple(shape)} after conversion, but the model "
            f"expects {want} at {src.path} (a config that does not match the weights?)"
        )


def read_source(get: Callable[[str], np.ndarray], src: TensorSource, expected: Mapping[str, tuple], *,
                dtype=None, source: str = "checkpoint") -> np.ndarray:
    """One parameter: read with ``get``, in Flax layout, shape checked, cast (see :func:`cast`)."""
    value = src.to_flax(np.asarray(get(src.key)))
    check_shape(src, value.shape, expected, source)
    return cast(value, dtype)


def read_sources(get: Callable[[str], np.ndarray], sources: Mapping[str, TensorSource],
                 expected: Mapping[str, tuple], *, dtype=None, source: str = "checkpoint",
                 on_tensor: Callable[[str], None] | None = None,
                 place: Callable[[np.ndarray], object] | None = None) -> dict[str, object]:
    """Read every source in turn with ``get`` (one whole tensor at a time): Flax layout,
    shape checked, floating tensors cast to ``dtype`` (None keeps the checkpoint's).
    ``place`` (e.g. ``jax.device_put``) moves each tensor as soon as it is read, so the
    numpy copies never pile up next to the placed ones."""
    params = {}
    for path, src in sources.items():
        value = read_source(get, src, expected, dtype=dtype, source=source)
        params[path] = value if place is None else place(value)
        del value
        if on_tensor:
            on_tensor(src.key)
    return params


# ------------------------------------------------------------------------- import
def torch_to_flax(
    keys: Iterable[str],
    get: Callable[[str], np.ndarray],
    table: KeyTable,
    expected: Mapping[str, tuple[int, ...]],
    *,
    dtype=None,
    source: str = "checkpoint",
    on_tensor: Callable[[str], None] | None = None,
) -> tuple[dict[str, np.ndarray], ConversionReport]:
    """Convert a state dict into flat Flax params ``{"a/b/kernel": array}``.

    keys, get: the checkpoint's tensor names and a loader for one tensor (streamed:
      each tensor is read, transformed and cast before the next one is read).
    expected: Flax path -> shape of every parameter of the target model.
    dtype: cast floating tensors to this dtype (None keeps the checkpoint's).
    Raises :class:`KeyMappingError` on a shape mismatch or a missing parameter that the
    table does not allow to be missing.
    """
    sources, report = plan_params(keys, table, expected, source=source)
    return read_sources(get, sources, expected, dtype=dtype, source=source, on_tensor=on_tensor), report


def plan_params(
    keys: Iterable[str],
    table: KeyTable,
    expected: Mapping[str, tuple[int, ...]],
    *,
    layout: str = "torch",
    shape_of: Callable[[str], tuple[int, ...]] | None = None,
    source: str = "checkpoint",
    ignore_mismatched_sizes: bool = False,
) -> tuple[dict[str, TensorSource], ConversionReport]:
    """Match checkpoint keys to Flax paths without reading any tensor: the one planner of
    every conversion and every load.

    layout: ``"torch"`` for PyTorch state-dict keys (``encoder.layer.0.attention...``,
      converted by the generic rules and ``table``), ``"flax"`` for ``/``-joined Flax paths
      already in Flax layout (a zoo directory; state under ``batch_stats/...``).
    Returns ``{flax_path: TensorSource}`` (in reading order: checkpoint keys first, then
    tied duplicates standing in for their target) and the report of what happened to
    every key. Either way another head of the family loads the same body: the base-model
    prefix (``table.base_model_prefix``) is added or removed as the model needs, and the
    head parameters ``table.init_if_missing`` allows are left to be initialised
    (``report.missing``). With ``shape_of`` (checkpoint key -> shape, from the file
    headers) every shape is checked here, before anything is read; without it
    :func:`read_sources` checks each one as it reads it.
    Raises :class:`KeyMappingError` when two keys map to one parameter, on a shape
    mismatch, or when a parameter the table does not allow to be missing is absent.
    ``ignore_mismatched_sizes`` (needs ``shape_of``; HF's flag of that name): a key whose
    shape does not fit is dropped instead (``report.mismatched``) and its parameter
    initialised (``report.missing``), e.g. a classifier for another number of labels.
    """
    if layout not in ("torch", "flax"):
        raise ValueError(f"layout must be 'torch' or 'flax', not {layout!r}")
    if ignore_mismatched_sizes and shape_of is None:
        raise ValueError("ignore_mismatched_sizes needs shape_of (the checkpoint's shapes)")
    torch_layout = layout == "torch"
    sep = "." if torch_layout else "/"
    stored = list(keys)  # as the checkpoint spells them: what TensorSource.key and the report name
    report = ConversionReport()
    spelled: dict[str, str] = {}  # today's spelling -> stored key
    for key in stored:
        today = legacy_respelling(key)[0] if torch_layout else key
        if today in spelled:
            raise KeyMappingError(f"{source}: keys {spelled[today]!r} and {key!r} are two spellings of "
                                  f"{today!r} (legacy and current); keep one")
        spelled[today] = key
        if today != key:
            report.renamed[key] = today
    keys = list(spelled)
    prefix = table.base_model_prefix + sep

    def body_part(key: str) -> tuple[str, str]:
        """(collection part, rest): Flax state paths keep their collection in front."""
        head, _, rest = key.partition("/")
        return (head + "/", rest) if not torch_layout and head == BATCH_STATS else ("", key)

    expects_prefix = any(p.startswith(table.base_model_prefix + "/") for p in expected)
    has_prefix = any(body_part(k)[1].startswith(prefix) for k in keys)
    if expects_prefix != has_prefix and keys:
        report.prefix = "added" if expects_prefix else "removed"

    def head_frame(key: str) -> str | None:
        """The key as the target model names it (None: belongs to an absent head)."""
        collection, rest = body_part(key)
        if expects_prefix and not has_prefix:
            return collection + prefix + rest
        if has_prefix and not expects_prefix:
            return collection + rest[len(prefix):] if rest.startswith(prefix) else None
        return key

    def frame_alias(key: str) -> str:
        return key if expects_prefix or not key.startswith(prefix) else key[len(prefix):]

    mismatched: set[str] = set()

    def make_source(key: str, path: str) -> TensorSource | None:
        key = spelled[key]
        src = TensorSource(key, path, torch_layout=torch_layout)
        if shape_of is not None:
            shape = src.flax_shape(tuple(shape_of(key)))
            if ignore_mismatched_sizes and shape != tuple(expected[path]):
                report.mismatched.append(f"{key} {shape} (the model's {path} is {tuple(expected[path])})")
                mismatched.add(path)
                return None
            check_shape(src, shape, expected, source)
        return src

    aliases = {frame_alias(a): frame_alias(b) for a, b in table.aliases} if torch_layout else {}
    ignore = [re.compile(p) for p in table.ignore_unused] if torch_layout else []
    sources: dict[str, TensorSource] = {}
    alias_sources: dict[str, str] = {}
    for key in keys:
        framed = head_frame(key)
        path = framed if framed is None or not torch_layout else torch_to_flax_path(framed, table, expected)
        if path is not None and path in expected:
            if path in sources:
                raise KeyMappingError(f"{source}: keys {sources[path].key!r} and {spelled[key]!r} both map to {path}")
            src = make_source(key, path)
            if src is not None:
                sources[path] = src
        elif framed is not None and framed in aliases:
            report.aliased.append(spelled[key])
            alias_sources[aliases[framed]] = key
        elif any(p.search(key) for p in ignore):
            report.ignored.append(spelled[key])
        else:
            report.unused.append(spelled[key])

    allowed = [re.compile(p) for p in table.init_if_missing]
    name = (lambda p: flax_to_torch_key(p, table)) if torch_layout else (lambda p: p)
    for path in expected:
        if path in sources:
            continue
        target = flax_to_torch_key(path, table)
        if target in alias_sources and path not in mismatched:  # only the tied duplicate is in the checkpoint
            key = alias_sources[target]
            src = make_source(key, path)
            report.aliased.remove(spelled[key])
            if src is not None:
                sources[path] = src
                continue
        if path in mismatched or any(p.search(path) for p in allowed):
            report.missing.append(path)
        else:
            missing = [p for p in expected if p not in sources and p not in mismatched
                       and not any(a.search(p) for a in allowed)]
            raise KeyMappingError(
                f"{source}: {len(missing)} parameters missing from the checkpoint "
                f"(wrong family or architecture?): {', '.join(name(p) for p in missing[:3])}"
                + (f" and {len(missing) - 3} more" if len(missing) > 3 else "")
            )
    return sources, report


# ------------------------------------------------------------------------- export
def flax_to_torch(
    params: Mapping[str, np.ndarray], table: KeyTable, *, include_aliases: bool = False
) -> dict[str, np.ndarray]:
    """Flat Flax params -> PyTorch state dict (the inverse of :func:`torch_to_flax`).

    Tied duplicates are left out (as ``save_pretrained`` does) unless ``include_aliases``.
    """
    state = {}
    for path, value in params.items():
        key = flax_to_torch_key(path, table)
        if key in state:
            raise KeyMappingError(f"two parameters map to the PyTorch key {key!r}")
        state[key] = to_torch_value(path, np.asarray(value))
    if include_aliases:
        for alias, target in table.aliases:
            if target in state and alias not in state:
                state[alias] = state[target]
    return state
